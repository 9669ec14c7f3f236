#include "agent/install/adaptive_source.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/this_coro.hpp>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

#include "agent/download/range_fetch.hpp"
#include "agent/errors.hpp"
#include "agent/install/write_behind.hpp"
#include "artifacts/crypto.hpp"
#include "artifacts/tar.hpp"
#include "common/blocking.hpp"
#include "common/file.hpp"
#include "common/log.hpp"

namespace tern::agent {
namespace asio = boost::asio;
using artifacts::ByteRange;
using artifacts::ChunkIndex;

namespace {

constexpr std::uint64_t kFirstPiece = 8 * 1024;    // the first Range request: version, manifest, ...
constexpr std::uint64_t kFrameMargin = 4096;       // past the data member's header: its first frame
constexpr std::uint64_t kMaxPrefix = 64ull << 20;  // a header larger than this is not worth it
constexpr std::size_t kBatch = 64 * 1024;          // fetched bytes per hand-off to the pool
constexpr std::size_t kLocalRun = 128;             // local frames per hand-off to the pool
// Fetched runs with at most this much payload built locally between them share a fetch() (and its
// requests): the answer waits while those frames are built (a few seconds on slow storage).
constexpr std::uint64_t kGroupLocal = 32ull << 20;

std::string mib(std::uint64_t n) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", double(n) / double(1 << 20));
  return buf;
}

/// The artifact's byte ranges (range_fetch.hpp): one kept-alive connection for the prefix and the
/// plan's ranges, several ranges per request; a second one, made when first needed, for a frame
/// that must be fetched while the first is in the middle of an answer (local data that changed
/// since it was indexed). Every request carries If-Range with the first answer's validators.
class Fetcher {
 public:
  Fetcher(const DownloadOptions& options, std::string url)
      : options_(options), url_(std::move(url)), main_(options_, url_) {}

  /// Delivers `ranges` (ascending) to `sink` on the main connection.
  asio::awaitable<Result<void>> fetch(std::span<const ByteRange> ranges, const RangeSink& sink) {
    co_return co_await main_.fetch(ranges, sink);
  }
  /// Delivers one range on the second connection.
  asio::awaitable<Result<void>> fetch_aside(const ByteRange& range, const RangeSink& sink) {
    if (!aside_) {
      aside_ = std::make_unique<RangeClient>(options_, url_);
      aside_->assume(main_.etag(), main_.last_modified(), main_.total().value_or(0));
    }
    const ByteRange one[] = {range};
    co_return co_await aside_->fetch(one, sink);
  }

  std::optional<std::uint64_t> total() const { return main_.total(); }
  std::string etag() const { return main_.etag(); }
  std::string last_modified() const { return main_.last_modified(); }
  /// Validators of a prefix fetched by an earlier run: every range is checked against them.
  void assume(std::string etag, std::string last_modified, std::uint64_t total) {
    main_.assume(std::move(etag), std::move(last_modified), total);
  }
  bool has_validators() const { return main_.has_validators(); }
  std::uint64_t received() const { return main_.received() + (aside_ ? aside_->received() : 0); }
  int attempts() const { return main_.attempts() + (aside_ ? aside_->attempts() : 0); }
  std::uint64_t requests() const { return main_.requests() + (aside_ ? aside_->requests() : 0); }

 private:
  const DownloadOptions& options_;
  std::string url_;
  RangeClient main_;
  std::unique_ptr<RangeClient> aside_;
};

/// Where the next prefix request should end (exclusive), from the outer tar seen so far: through
/// the end of the member being read, its successor's header and the data member's first frame.
std::uint64_t next_piece_end(std::string_view head) {
  std::uint64_t pos = 0;
  while (pos + artifacts::tar::block <= head.size()) {
    std::span<const std::uint8_t, artifacts::tar::block> b(
        reinterpret_cast<const std::uint8_t*>(head.data() + pos), artifacts::tar::block);
    auto h = artifacts::tar::parse_header(b);
    if (!h) return head.size() + kFirstPiece;  // the reader names what is wrong
    const std::uint64_t content = pos + artifacts::tar::block;
    if (h->kind == artifacts::tar::Kind::file && h->name.starts_with("data/"))
      return std::max<std::uint64_t>(content, head.size()) + kFrameMargin;
    const std::uint64_t end = content + h->size + artifacts::tar::padding(h->size);
    if (end > head.size()) return end + artifacts::tar::block + kFrameMargin;
    pos = end;
  }
  return pos + artifacts::tar::block + kFirstPiece;
}

/// Reads `out.size()` bytes at `offset` of an open file. Errors: Errc::io naming `what`.
Result<void> pread_all(int fd, std::uint64_t offset, std::span<std::uint8_t> out, const std::string& what) {
  std::size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      return Error::from_errno("reading " + what + " at byte " + std::to_string(offset + done), errno);
    if (n == 0)
      return fail(Errc::io, "reading " + what + ": it ends at byte " + std::to_string(offset + done));
    done += static_cast<std::size_t>(n);
  }
  return {};
}

Result<UniqueFd> open_read(const PartitionRef& part) {
  UniqueFd fd(::open(part.path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Error::from_errno("opening " + part.describe(), errno);
  return fd;
}

/// Bytes of a partition (its size, or its file's when 0).
Result<std::uint64_t> partition_bytes(const PartitionRef& part, int fd) {
  if (part.size) return part.size;
  struct stat st {};
  if (::fstat(fd, &st) != 0) return Error::from_errno("reading the size of " + part.describe(), errno);
  if (!S_ISREG(st.st_mode)) return fail(Errc::io, part.describe() + " has no size");
  return static_cast<std::uint64_t>(st.st_size) - std::min<std::uint64_t>(part.offset, st.st_size);
}

/// Streams the running partition through a LocalIndexer (1 MiB at a time, bounded memory).
Result<artifacts::LocalTable> index_partition(const PartitionRef& part, const ChunkIndex& index,
                                              std::stop_token stop) {
  auto fd = open_read(part);
  if (!fd) return fd.error();
  auto size = partition_bytes(part, fd->get());
  if (!size) return size.error();
  ::posix_fadvise(fd->get(), static_cast<off_t>(part.offset), static_cast<off_t>(*size),
                  POSIX_FADV_SEQUENTIAL);
  artifacts::LocalIndexer ix(index);
  std::vector<std::uint8_t> buf(1 << 20);
  for (std::uint64_t done = 0; done < *size;) {
    if (stop.stop_requested()) return fail(Errc::cancelled, "indexing " + part.describe() + " cancelled");
    auto n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), *size - done));
    if (auto r = pread_all(fd->get(), part.offset + done, {buf.data(), n}, part.describe()); !r)
      return r.error();
    ix.feed({buf.data(), n});
    done += n;
  }
  return ix.finish();
}

/// Which frames the target partition already holds (an interrupted run of this install wrote them).
Result<std::vector<bool>> frames_on(const PartitionRef& part, const ChunkIndex& index, std::stop_token stop) {
  auto fd = open_read(part);
  if (!fd) return fd.error();
  auto size = partition_bytes(part, fd->get());
  if (!size) return size.error();
  std::vector<bool> held(index.frames.size(), false);
  std::vector<std::uint8_t> buf(index.frame_size);
  artifacts::BlockHasher hasher;
  for (std::size_t i = 0; i < index.frames.size(); ++i) {
    if (stop.stop_requested()) return fail(Errc::cancelled, "checking " + part.describe() + " cancelled");
    const auto at = index.frame_payload_offset(i);
    const auto len = index.frame_length(i);
    if (at + len > *size) break;
    if (auto r = pread_all(fd->get(), part.offset + at, {buf.data(), len}, part.describe()); !r)
      return r.error();
    held[i] = hasher.sha256({buf.data(), len}) == index.frames[i].sha256;
  }
  return held;
}

/// Where each frame comes from.
enum class From : std::uint8_t { local, standby, fetch };

/// The ranges to fetch: runs of fetched frames, neighbours closer than `gap` joined (the frames
/// between come along and are decoded from the fetched bytes too).
struct Run {
  std::size_t first = 0, last = 0;  // frames [first, last)
  ByteRange range;
};
std::vector<Run> fetch_runs(const ChunkIndex& index, const artifacts::Plan& plan,
                            const std::vector<From>& from, std::uint64_t gap) {
  std::vector<Run> runs;
  for (std::size_t i = 0; i < from.size(); ++i) {
    if (from[i] != From::fetch) continue;
    auto r = plan.frame_range(index, i);
    if (!runs.empty() && r.offset <= runs.back().range.offset + runs.back().range.length + gap) {
      runs.back().range.length = r.offset + r.length - runs.back().range.offset;
      runs.back().last = i + 1;
    } else {
      runs.push_back(Run{i, i + 1, r});
    }
  }
  return runs;
}

/// The blocking half, used from one pool thread at a time: builds, checks and hashes frames in
/// order; a WriteBehind writes them meanwhile.
class FrameWriter {
 public:
  FrameWriter(const ChunkIndex& index, artifacts::LocalTable table, PartitionWriter writer, UniqueFd active,
              PartitionRef active_part, UniqueFd target, PartitionRef target_part)
      : index_(index),
        table_(std::move(table)),
        builder_(index_, table_),
        out_(std::move(writer)),
        active_(std::move(active)),
        active_part_(std::move(active_part)),
        target_(std::move(target)),
        target_part_(std::move(target_part)),
        buf_(index.frame_size) {}

  /// Frames [first, last) from local data, in order. Returns the first frame whose local data no
  /// longer matches the index (it must be fetched), or `last`.
  Result<std::size_t> build(const std::vector<From>& from, std::size_t first, std::size_t last,
                            std::stop_token stop) {
    const artifacts::FrameBuilder::LocalReader read = [&](std::uint64_t offset, std::span<std::uint8_t> out) {
      return pread_all(active_.get(), active_part_.offset + offset, out, active_part_.describe());
    };
    for (std::size_t i = first; i < last; ++i) {
      if (stop.stop_requested()) return fail(Errc::cancelled, "install cancelled");
      if (from[i] == From::standby) {
        // Checked again now: the bytes written must be the index's.
        const auto len = index_.frame_length(i);
        std::span<std::uint8_t> bytes(buf_.data(), len);
        if (auto r = pread_all(target_.get(), target_part_.offset + index_.frame_payload_offset(i), bytes,
                               target_part_.describe());
            !r)
          return r.error();
        if (hasher_.sha256(bytes) == index_.frames[i].sha256) {
          if (auto r = put(bytes); !r) return r.error();
          reused_ += len;
          continue;
        }
        return i;
      }
      auto r = builder_.build_local(i, read);
      if (!r) {
        if (is_io(r.error())) return r.error();
        log::warn("frame ", i, " from ", active_part_.describe(), ": ", r.error().message(), ": fetching it");
        return i;
      }
      if (auto w = put(builder_.frame()); !w) return w.error();
      reused_ += index_.frame_length(i);
    }
    return last;
  }

  /// Frames [first, last) from their fetched compressed bytes, which start at `bytes`.
  Result<void> decode(std::size_t first, std::size_t last, std::span<const std::uint8_t> bytes) {
    for (std::size_t i = first; i < last; ++i) {
      const auto size = index_.frames[i].size;
      if (auto r = builder_.decode_fetched(i, bytes.first(size)); !r)
        return r.error().context("fetched frame " + std::to_string(i));
      if (auto w = put(builder_.frame()); !w) return w.error();
      bytes = bytes.subspan(size);
    }
    // Fetched frames reach the kernel before more is fetched: a killed agent fetches them not again.
    return out_.drain();
  }

  /// Syncs the partition and checks the whole payload against the manifest's SHA-256.
  Result<void> finish(const std::string& payload_sha256) {
    if (auto r = out_.finish(); !r) return r.error();
    const auto got = payload_hash_.hex_final();
    if (got != payload_sha256)
      return Error(
          artifacts::make_error_code(artifacts::ArtifactErrc::manifest_mismatch),
          "the payload built adaptively has SHA-256 " + got + ", the manifest says " + payload_sha256);
    return {};
  }

  std::uint64_t written() const { return out_.written(); }
  std::uint64_t reused() const { return reused_; }

 private:
  static bool is_io(const Error& e) { return e.code() == make_error_code(Errc::io); }
  Result<void> put(std::span<const std::uint8_t> bytes) {
    payload_hash_.update(bytes);
    return out_.put(bytes);
  }

  const ChunkIndex& index_;
  artifacts::LocalTable table_;
  artifacts::FrameBuilder builder_;
  artifacts::BlockHasher hasher_;
  WriteBehind out_;
  UniqueFd active_;
  PartitionRef active_part_;
  UniqueFd target_;
  PartitionRef target_part_;
  std::vector<std::uint8_t> buf_;
  artifacts::Sha256 payload_hash_;
  std::uint64_t reused_ = 0;
};

/// The verified header from the artifact's prefix, or nullopt when the server ignores Range.
struct Prefix {
  std::optional<artifacts::Header> header;
  std::string fallback;
};

// The kept prefix: "tern-adaptive-prefix 1\n" then url, etag, last-modified, total lines, an empty
// line, the prefix bytes.
constexpr std::string_view kCacheMagic = "tern-adaptive-prefix 1\n";

std::string cache_record(const std::string& url, const Fetcher& f, std::string_view head) {
  return std::string(kCacheMagic) + url + "\n" + f.etag() + "\n" + f.last_modified() + "\n" +
         std::to_string(f.total().value_or(0)) + "\n\n" + std::string(head);
}

struct CachedPrefix {
  std::string etag, last_modified;
  std::uint64_t total = 0;
  std::string head;
};
/// The kept prefix of `url`, if there is a well-formed one.
std::optional<CachedPrefix> load_cache(const std::filesystem::path& path, const std::string& url) {
  std::error_code ec;
  if (path.empty() || !std::filesystem::exists(path, ec)) return std::nullopt;
  auto text = read_file(path, kMaxPrefix + 4096);
  if (!text || !text->starts_with(kCacheMagic)) return std::nullopt;
  std::string_view rest(*text);
  rest.remove_prefix(kCacheMagic.size());
  std::string lines[4];
  for (auto& l : lines) {
    auto nl = rest.find('\n');
    if (nl == std::string_view::npos) return std::nullopt;
    l = std::string(rest.substr(0, nl));
    rest.remove_prefix(nl + 1);
  }
  if (lines[0] != url || !rest.starts_with('\n')) return std::nullopt;
  rest.remove_prefix(1);
  std::uint64_t total = 0;
  if (auto [p, e] = std::from_chars(lines[3].data(), lines[3].data() + lines[3].size(), total);
      e != std::errc{})
    return std::nullopt;
  return CachedPrefix{lines[1], lines[2], total, std::string(rest)};
}

asio::awaitable<Result<Prefix>> fetch_prefix(Fetcher& fetcher, const artifacts::ReaderOptions& reader_options,
                                             const HeaderCheck& check, const CachedPrefix* cached,
                                             std::string& head) {
  std::optional<artifacts::Header> header;
  auto on_header = [&](const artifacts::Header& h) -> Result<void> {
    if (check)
      if (auto r = check(h); !r) return r.error();
    header = h;
    return fail(Errc::cancelled, "the header is all the prefix is fetched for");
  };
  artifacts::Reader reader(reader_options, on_header,
                           [](std::span<const std::uint8_t>) { return Result<void>{}; });
  head.clear();
  if (cached) {
    // Verified again (signature, manifest, header), exactly as if just fetched.
    auto r = reader.feed({reinterpret_cast<const std::uint8_t*>(cached->head.data()), cached->head.size()});
    if (!r && !header) co_return r.error();
    if (!header) co_return fail(Errc::invalid_argument, "the kept prefix ends before the header");
    fetcher.assume(cached->etag, cached->last_modified, cached->total);
    head = cached->head;
    co_return Prefix{std::move(header), {}};
  }
  RangeSink sink = [&](std::size_t, std::span<const std::uint8_t> bytes) -> asio::awaitable<Result<void>> {
    if (!header) {
      auto r = reader.feed(bytes);
      if (!r && !header) co_return r.error();
    }
    head.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    co_return Result<void>{};
  };
  while (!header) {
    std::uint64_t end = next_piece_end(head);
    if (fetcher.total()) {
      if (head.size() >= *fetcher.total())
        co_return Error(artifacts::make_error_code(artifacts::ArtifactErrc::truncated),
                        "the artifact ends before its payload");
      end = std::min(end, *fetcher.total());
    }
    if (end > kMaxPrefix) co_return Prefix{{}, "the artifact's header is larger than " + mib(kMaxPrefix)};
    const ByteRange piece[] = {{head.size(), end - head.size()}};
    auto r = co_await fetcher.fetch(piece, sink);
    if (!r && is(r.error(), AgentErrc::range_ignored))
      co_return Prefix{{}, "the server ignores Range requests"};
    if (!r) co_return r.error();
    if (!fetcher.has_validators())
      co_return Prefix{{}, "the server sends no ETag or Last-Modified to check the ranges against"};
  }
  co_return Prefix{std::move(header), {}};
}

}  // namespace

std::string AdaptivePlanSummary::describe() const {
  const double pct = artifact_size ? 100.0 * double(bytes_to_fetch) / double(artifact_size) : 100.0;
  char p[16];
  std::snprintf(p, sizeof p, "%.1f%%", pct);
  return "adaptive install: " + std::to_string(frames_local + frames_on_standby) + " of " +
         std::to_string(frames) + " chunks (" + mib(bytes_reused) + ") reused" +
         (frames_on_standby ? " (" + std::to_string(frames_on_standby) + " already on the target)" : "") +
         ", fetching " + mib(bytes_to_fetch) + " of " + mib(artifact_size) + " (" + p + ") in " +
         std::to_string(ranges) + " ranges";
}

namespace {

asio::awaitable<Result<AdaptiveOutcome>> run_once(const PipelineSource& source,
                                                  const artifacts::ReaderOptions& reader_options,
                                                  const HeaderCheck& check, const PartitionRef& target,
                                                  const ProgressFn& progress_fn,
                                                  const AdaptiveOptions& options) {
  const std::string url = source.job.source;
  Fetcher fetcher(source.download, url);
  ProgressGate reporter(progress_fn);
  PipelineProgress progress;
  auto fallback = [&fetcher](std::string why) {
    return AdaptiveOutcome{{}, std::move(why), fetcher.received()};
  };

  // 1. The signed header, with the chunk index: kept by an interrupted run of this install, or fetched.
  const std::filesystem::path cache = options.prefix_cache;
  std::string head;
  auto cached =
      co_await offload(options.blocking, [&](std::stop_token) -> Result<std::optional<CachedPrefix>> {
        if (!options.resuming) return std::optional<CachedPrefix>{};
        return load_cache(cache, url);
      });
  if (!cached) co_return cached.error();
  Result<Prefix> prefix = fail(Errc::internal, "not fetched");
  if (*cached) {
    prefix = co_await fetch_prefix(fetcher, reader_options, check, &**cached, head);
    if (prefix)
      log::info("using the artifact prefix kept by the interrupted install (", mib(head.size()), ")");
    else if (is(prefix.error(), AgentErrc::already_installed))
      co_return prefix.error();
    else
      log::warn("the kept artifact prefix is not usable (", prefix.error().message(), "): fetching it again");
  }
  if (!prefix) {
    prefix = co_await fetch_prefix(fetcher, reader_options, check, nullptr, head);
    if (prefix && prefix->header && !cache.empty()) {
      const std::string record = cache_record(url, fetcher, head);
      auto kept = co_await offload(options.blocking,
                                   [&](std::stop_token) { return write_file_atomic(cache, record); });
      if (!kept) log::warn("keeping the artifact prefix for a resume: ", kept.error().message());
    }
  }
  std::string().swap(head);
  if (!prefix) co_return prefix.error();
  if (!prefix->header) co_return fallback(prefix->fallback);
  const artifacts::Header header = std::move(*prefix->header);
  if (!header.chunk_index) co_return fallback("the artifact has no chunk index");
  const ChunkIndex& index = *header.chunk_index;
  const std::uint64_t total = fetcher.total().value_or(0);
  if (source.job.size && total != source.job.size)
    co_return fail(Errc::protocol, "artifact " + url + " is " + std::to_string(total) +
                                       " bytes, the deployment says " + std::to_string(source.job.size));
  if (!source.job.sha256.empty() && !header.signature_verified)
    co_return fallback("the artifact is not signed: only a full download can check the deployment's SHA-256");
  progress.artifact_total = total;
  progress.network_bytes = fetcher.received();
  progress.attempt = std::max(1, fetcher.attempts());

  // 2. What the running partition (and, when resuming, the target) already holds; the plan.
  const PartitionRef active = options.active;
  auto table = co_await offload(options.blocking,
                                [&](std::stop_token stop) { return index_partition(active, index, stop); });
  if (!table) {
    if (table.error().code() == make_error_code(Errc::cancelled)) co_return table.error();
    co_return fallback("the running partition cannot be read: " + table.error().message());
  }
  artifacts::PlanOptions po;
  po.artifact_size = total;
  po.data_offset = header.data_offset;
  po.full_threshold = options.full_threshold;
  const artifacts::Plan plan = artifacts::plan_adaptive(index, *table, po);
  if (plan.full_download) co_return fallback(plan.reason);
  std::vector<From> from(index.frames.size());
  for (std::size_t i = 0; i < from.size(); ++i) from[i] = plan.local[i] ? From::local : From::fetch;
  if (options.resuming) {
    auto held = co_await offload(options.blocking,
                                 [&](std::stop_token stop) { return frames_on(target, index, stop); });
    if (!held) co_return held.error();
    for (std::size_t i = 0; i < from.size(); ++i)
      if ((*held)[i]) from[i] = From::standby;
  }
  const std::vector<Run> runs = fetch_runs(index, plan, from, options.coalesce_gap);
  for (const auto& r : runs)  // frames in a gap between fetched neighbours come along: decoded, not built
    std::fill(from.begin() + static_cast<std::ptrdiff_t>(r.first),
              from.begin() + static_cast<std::ptrdiff_t>(r.last), From::fetch);
  AdaptivePlanSummary summary;
  summary.frames = from.size();
  summary.artifact_size = total;
  summary.ranges = runs.size();
  summary.bytes_to_fetch = fetcher.received();
  for (const auto& r : runs) summary.bytes_to_fetch += r.range.length;
  for (std::size_t i = 0; i < from.size(); ++i) {
    if (from[i] == From::fetch) {
      ++summary.frames_fetched;
      continue;
    }
    ++(from[i] == From::local ? summary.frames_local : summary.frames_on_standby);
    summary.bytes_reused += index.frame_length(i);
  }
  log::info(summary.describe());
  if (options.on_plan) options.on_plan(summary);

  // 3. Frames in order into the target.
  auto opened =
      co_await offload(options.blocking, [&](std::stop_token) -> Result<std::unique_ptr<FrameWriter>> {
        auto writer = PartitionWriter::open(target);
        if (!writer) return writer.error();
        if (auto r = writer->check_fits(header.payload_size); !r)
          return r.error().context("payload " + header.payload_name + " of " + header.artifact_name +
                                   " does not fit");
        auto a = open_read(active);
        if (!a) return a.error();
        auto t = open_read(target);
        if (!t) return t.error();
        return std::make_unique<FrameWriter>(index, std::move(*table), std::move(*writer), std::move(*a),
                                             active, std::move(*t), target);
      });
  if (!opened) co_return opened.error();
  FrameWriter& out = **opened;

  auto advance = [&](std::size_t next_frame) {
    progress.artifact_bytes =
        next_frame < index.frames.size() ? plan.frame_range(index, next_frame).offset : total;
    progress.written = out.written();
    progress.reused = out.reused();
    progress.network_bytes = fetcher.received();
    progress.attempt = std::max(1, fetcher.attempts());
    reporter.report(progress);
  };
  // Fetched bytes of frames [next, last) arrive in pieces: whole frames are decoded and written a
  // batch per hand-off to the pool.
  struct Feed {
    std::size_t next = 0, last = 0;
    std::vector<std::uint8_t> buf;
  };
  auto feed = [&](Feed& f, std::span<const std::uint8_t> bytes) -> asio::awaitable<Result<void>> {
    f.buf.insert(f.buf.end(), bytes.begin(), bytes.end());
    std::size_t upto = f.next;
    std::size_t used = 0;
    while (upto < f.last && used + index.frames[upto].size <= f.buf.size()) used += index.frames[upto++].size;
    if (upto == f.next || (used < kBatch && upto < f.last)) co_return Result<void>{};
    const std::size_t a = f.next, b = upto;
    auto r = co_await offload(options.blocking, [&](std::stop_token) {
      return out.decode(a, b, {f.buf.data(), used});
    });
    if (!r) co_return r.error();
    f.buf.erase(f.buf.begin(), f.buf.begin() + static_cast<std::ptrdiff_t>(used));
    f.next = upto;
    advance(f.next);
    co_return Result<void>{};
  };
  auto incomplete = [](const Feed& f) {
    return fail(Errc::internal, "fetched frames " + std::to_string(f.next) + " to " + std::to_string(f.last) +
                                    " are incomplete");
  };

  // Frames [i, stop_at) from local data (none of them is in a run). A frame whose local data no
  // longer matches (changed since it was indexed) is fetched on the second connection.
  std::size_t i = 0;
  auto build_upto = [&](std::size_t stop_at) -> asio::awaitable<Result<void>> {
    while (i < stop_at) {
      const std::size_t a = i, b = std::min(stop_at, i + kLocalRun);
      auto built = co_await offload(options.blocking,
                                    [&](std::stop_token stop) { return out.build(from, a, b, stop); });
      if (!built) co_return built.error();
      i = *built;
      if (i < b) {
        Feed f{i, i + 1, {}};
        RangeSink one = [&](std::size_t, std::span<const std::uint8_t> bytes) { return feed(f, bytes); };
        auto r = co_await fetcher.fetch_aside(plan.frame_range(index, i), one);
        if (r && f.next != f.last) r = incomplete(f);
        if (!r) co_return r.error();
        ++i;
      }
      advance(i);
    }
    co_return Result<void>{};
  };

  // The runs, several per fetch() (and so per request): neighbours with at most kGroupLocal of
  // local frames between them, built while the answer waits, so the connection never idles long.
  for (std::size_t g = 0; g < runs.size();) {
    std::size_t h = g + 1;
    while (h < runs.size() && index.frame_payload_offset(runs[h].first) -
                                      index.frame_payload_offset(runs[h - 1].last) <= kGroupLocal)
      ++h;
    auto before = co_await build_upto(runs[g].first);
    if (!before) co_return before.error();
    std::vector<ByteRange> ranges;
    for (std::size_t k = g; k < h; ++k) ranges.push_back(runs[k].range);
    std::size_t current = SIZE_MAX;
    Feed f;
    f.buf.reserve(kBatch + 128 * 1024);
    RangeSink sink = [&](std::size_t k, std::span<const std::uint8_t> bytes) -> asio::awaitable<Result<void>> {
      if (k != current) {
        if (current != SIZE_MAX && f.next != f.last) co_return incomplete(f);
        const Run& run = runs[g + k];
        auto built = co_await build_upto(run.first);
        if (!built) co_return built.error();
        current = k;
        f.next = run.first;
        f.last = run.last;
        f.buf.clear();
      }
      auto r = co_await feed(f, bytes);
      if (r) i = f.next;
      co_return r;
    };
    auto r = co_await fetcher.fetch(ranges, sink);
    if (r && (current != h - g - 1 || f.next != f.last)) r = incomplete(f);
    if (!r) co_return r.error();
    i = runs[h - 1].last;
    g = h;
  }
  auto rest = co_await build_upto(from.size());
  if (!rest) co_return rest.error();
  auto finished =
      co_await offload(options.blocking, [&](std::stop_token) { return out.finish(header.payload_sha256); });
  // Only a block on the running partition that matches its XXH3 hash but not the image (made so on
  // purpose) gets here: the partition is not switched to, and the artifact is streamed instead.
  if (!finished && finished.error().code() == artifacts::ArtifactErrc::manifest_mismatch)
    co_return fallback(finished.error().message());
  if (!finished) co_return finished.error();
  advance(from.size());
  reporter.report(progress, true);
  log::info("adaptive install of ", url, ": fetched ", mib(fetcher.received()), " of ", mib(total), " in ",
            fetcher.requests(), " requests, reused ", mib(out.reused()));

  PipelineResult result;
  result.header = header;
  result.artifact_bytes = total;
  result.network_bytes = fetcher.received();
  result.written = out.written();
  result.attempts = std::max(1, fetcher.attempts());
  result.reused = out.reused();
  result.adaptive = true;
  co_return AdaptiveOutcome{std::move(result), {}};
}

}  // namespace

asio::awaitable<Result<AdaptiveOutcome>> run_adaptive(const PipelineSource& source,
                                                      const artifacts::ReaderOptions& reader_options,
                                                      const HeaderCheck& check, const PartitionRef& target,
                                                      const ProgressFn& progress,
                                                      const AdaptiveOptions& options) {
  auto r = co_await run_once(source, reader_options, check, target, progress, options);
  // The kept prefix serves a resume of this install only: not after it ended, fell back to the full
  // stream, or found the artifact changed. (A kill keeps it; a failure leaves it to the next run's checks.)
  if (!options.prefix_cache.empty() && (r || is(r.error(), AgentErrc::source_changed))) {
    const auto path = options.prefix_cache;
    (void)co_await offload(options.blocking, [&](std::stop_token) -> Result<void> {
      std::error_code ec;
      std::filesystem::remove(path, ec);
      return {};
    });
  }
  co_return r;
}

}  // namespace tern::agent
