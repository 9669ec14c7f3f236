#include "artifacts/adaptive.hpp"

#include <fcntl.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "artifacts/crypto.hpp"
#include "artifacts/header_info.hpp"

namespace tern::artifacts {

using detail::artifact_error;

std::size_t LocalTable::slot(std::uint64_t hash) const {
  const std::size_t k = static_cast<std::size_t>(hash >> 48);
  if (k + 1 >= buckets.size()) return SIZE_MAX;
  auto first = hashes.begin() + buckets[k], last = hashes.begin() + buckets[k + 1];
  auto it = std::lower_bound(first, last, hash);
  return it != last && *it == hash ? static_cast<std::size_t>(it - hashes.begin()) : SIZE_MAX;
}

std::optional<std::uint64_t> LocalTable::find(std::uint64_t hash) const {
  const std::size_t s = slot(hash);
  if (s == SIZE_MAX || where[s] == none) return std::nullopt;
  return std::uint64_t(where[s]) * block_size;
}

std::size_t LocalTable::found() const {
  return static_cast<std::size_t>(std::count_if(where.begin(), where.end(), [](auto w) { return w != none; }));
}

// ---- LocalIndexer -----------------------------------------------------------------------------

LocalIndexer::LocalIndexer(const ChunkIndex& wanted) {
  table_.block_size = wanted.block_size;
  table_.kind = wanted.block_hash_kind;
  table_.hashes = wanted.block_hashes;
  std::sort(table_.hashes.begin(), table_.hashes.end());
  table_.hashes.erase(std::unique(table_.hashes.begin(), table_.hashes.end()), table_.hashes.end());
  table_.hashes.shrink_to_fit();
  table_.where.assign(table_.hashes.size(), LocalTable::none);
  table_.buckets.assign((std::size_t(1) << 16) + 1, 0);
  std::size_t at = 0;
  for (std::size_t k = 0; k < (std::size_t(1) << 16); ++k) {
    table_.buckets[k] = static_cast<std::uint32_t>(at);
    while (at < table_.hashes.size() && (table_.hashes[at] >> 48) == k) ++at;
  }
  table_.buckets.back() = static_cast<std::uint32_t>(at);
  partial_.reserve(wanted.block_size);
}

void LocalIndexer::add_block(std::span<const std::uint8_t> block) {
  table_.bytes_indexed += block.size();
  const std::uint64_t n = block_number_++;
  if (n >= LocalTable::none) return;  // past 2^32 blocks (4 TiB at 1 KiB): not indexed
  const std::size_t s = table_.slot(hasher_.block_hash(table_.kind, block));
  if (s != SIZE_MAX && table_.where[s] == LocalTable::none) table_.where[s] = static_cast<std::uint32_t>(n);
}

void LocalIndexer::feed(std::span<const std::uint8_t> bytes) {
  const std::size_t bs = table_.block_size;
  if (!partial_.empty()) {
    auto n = std::min(bytes.size(), bs - partial_.size());
    partial_.insert(partial_.end(), bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n));
    bytes = bytes.subspan(n);
    if (partial_.size() < bs) return;
    add_block(partial_);
    partial_.clear();
  }
  while (bytes.size() >= bs) {
    add_block(bytes.first(bs));
    bytes = bytes.subspan(bs);
  }
  partial_.assign(bytes.begin(), bytes.end());
}

LocalTable LocalIndexer::finish() {
  return std::move(table_);
}

Result<LocalTable> index_local_file(const std::filesystem::path& path, const ChunkIndex& index,
                                    std::uint64_t max_bytes) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Error::from_errno("indexing local data: opening " + path.string(), errno);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  LocalIndexer ix(index);
  std::vector<std::uint8_t> buf(1 << 20);
  std::uint64_t done = 0;
  while (done < max_bytes) {
    auto want = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), max_bytes - done));
    ssize_t n = ::read(fd, buf.data(), want);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::from_errno("indexing local data: reading " + path.string(), errno);
    if (n == 0) break;
    ix.feed({buf.data(), static_cast<std::size_t>(n)});
    done += static_cast<std::uint64_t>(n);
  }
  return ix.finish();
}

// ---- the plan ---------------------------------------------------------------------------------

ByteRange Plan::frame_range(const ChunkIndex& index, std::size_t i) const {
  return {data_offset + index.frames[i].offset, index.frames[i].size};
}

Plan plan_full(std::uint64_t artifact_size, std::string reason) {
  Plan p;
  p.artifact_size = artifact_size;
  p.bytes_to_fetch = artifact_size;
  p.fetch_fraction = 1.0;
  p.full_download = true;
  p.reason = std::move(reason);
  return p;
}

Plan plan_adaptive(const ChunkIndex& index, const LocalTable& table, const PlanOptions& o) {
  if (table.block_size != index.block_size)
    return plan_full(o.artifact_size, "the local data was indexed with " + std::to_string(table.block_size) +
                                          "-byte blocks, the artifact's index has " +
                                          std::to_string(index.block_size));
  Plan p;
  p.artifact_size = o.artifact_size;
  p.data_offset = o.data_offset;
  p.prefix_bytes = o.data_offset + index.frames_offset;
  p.local.resize(index.frames.size());
  const std::size_t bpf = index.blocks_per_frame();
  for (std::size_t i = 0; i < index.frames.size(); ++i) {
    std::size_t first = i * bpf, last = std::min(first + bpf, index.block_hashes.size());
    bool all = true;
    for (std::size_t b = first; b < last && all; ++b) all = table.find(index.block_hashes[b]).has_value();
    // A short last block cannot be in a table of whole blocks.
    if (last == index.block_hashes.size() && index.payload_size % index.block_size) all = false;
    p.local[i] = all;
    if (all) {
      ++p.frames_local;
      p.bytes_reused += index.frame_length(i);
      continue;
    }
    ++p.frames_fetched;
    auto r = p.frame_range(index, i);
    if (!p.ranges.empty() && r.offset <= p.ranges.back().offset + p.ranges.back().length + o.coalesce_gap)
      p.ranges.back().length = r.offset + r.length - p.ranges.back().offset;
    else
      p.ranges.push_back(r);
  }
  p.bytes_to_fetch = p.prefix_bytes;
  for (auto& r : p.ranges) p.bytes_to_fetch += r.length;
  p.fetch_fraction = o.artifact_size ? double(p.bytes_to_fetch) / double(o.artifact_size) : 1.0;
  if (p.fetch_fraction > o.full_threshold) {
    p.full_download = true;
    p.reason = "the plan fetches " + std::to_string(static_cast<int>(p.fetch_fraction * 100 + 0.5)) +
               "% of the artifact (over " + std::to_string(static_cast<int>(o.full_threshold * 100 + 0.5)) +
               "%)";
  }
  return p;
}

// ---- building frames --------------------------------------------------------------------------

struct FrameBuilder::Zstd {
  ZSTD_DCtx* ctx = ZSTD_createDCtx();
  ~Zstd() { ZSTD_freeDCtx(ctx); }
};

FrameBuilder::FrameBuilder(const ChunkIndex& index, const LocalTable& table)
    : index_(index), table_(table), zstd_(std::make_unique<Zstd>()) {
  frame_.reserve(index.frame_size);
}
FrameBuilder::~FrameBuilder() = default;

Result<void> FrameBuilder::check_frame(std::size_t i) {
  if (hasher_.sha256(frame_) != index_.frames[i].sha256)
    return artifact_error(ArtifactErrc::manifest_mismatch,
                          "frame " + std::to_string(i) + ": its SHA-256 does not match the chunk index");
  return {};
}

Result<void> FrameBuilder::build_local(std::size_t i, const LocalReader& read) {
  if (i >= index_.frames.size())
    return artifact_error(ArtifactErrc::malformed,
                          "frame " + std::to_string(i) + " is not in the chunk index");
  const std::uint32_t len = index_.frame_length(i);
  frame_.resize(len);
  const std::size_t bs = index_.block_size;
  const std::size_t first = i * index_.blocks_per_frame();
  auto source = [&](std::size_t at) -> Result<std::uint64_t> {
    const std::size_t b = first + at / bs;
    auto where = table_.find(index_.block_hashes[b]);
    if (!where)
      return artifact_error(ArtifactErrc::malformed, "frame " + std::to_string(i) + ": block " +
                                                         std::to_string(b) + " is not in the local data");
    return *where;
  };
  // Blocks that follow each other locally are read with one call.
  auto next = source(0);
  for (std::size_t at = 0; at < len;) {
    if (!next) return next.error();
    const std::uint64_t from = *next;
    std::size_t end = std::min<std::size_t>(at + bs, len);
    for (; end < len; end = std::min<std::size_t>(end + bs, len)) {
      next = source(end);
      if (!next || *next != from + (end - at)) break;
    }
    if (end >= len) next = std::uint64_t{0};
    if (auto r = read(from, std::span<std::uint8_t>(frame_).subspan(at, end - at)); !r)
      return r.error().context("frame " + std::to_string(i));
    at = end;
  }
  if (index_.block_hash_kind == BlockHashKind::sha256) return check_frame(i);
  for (std::size_t at = 0, b = first; at < len; at += bs, ++b) {
    auto block = std::span<const std::uint8_t>(frame_).subspan(at, std::min<std::size_t>(bs, len - at));
    if (hasher_.block_hash(index_.block_hash_kind, block) != index_.block_hashes[b])
      return artifact_error(ArtifactErrc::manifest_mismatch,
                            "frame " + std::to_string(i) + ": the local block read for block " +
                                std::to_string(b) + " no longer matches the chunk index");
  }
  return {};
}

Result<void> FrameBuilder::decode_fetched(std::size_t i, std::span<const std::uint8_t> compressed) {
  if (i >= index_.frames.size())
    return artifact_error(ArtifactErrc::malformed,
                          "frame " + std::to_string(i) + " is not in the chunk index");
  const std::uint32_t len = index_.frame_length(i);
  auto what = "fetched frame " + std::to_string(i);
  if (compressed.size() != index_.frames[i].size)
    return artifact_error(ArtifactErrc::malformed, what + ": " + std::to_string(compressed.size()) +
                                                       " bytes, the chunk index says " +
                                                       std::to_string(index_.frames[i].size));
  frame_.resize(len);
  if (index_.compression == Compression::none) {
    std::memcpy(frame_.data(), compressed.data(), len);
  } else {
    // One whole frame, exactly `len` bytes: ZSTD_decompressDCtx refuses anything else.
    ZSTD_DCtx_reset(zstd_->ctx, ZSTD_reset_session_only);
    if (ZSTD_findFrameCompressedSize(compressed.data(), compressed.size()) != compressed.size())
      return artifact_error(ArtifactErrc::malformed, what + ": not exactly one zstd frame");
    std::size_t n =
        ZSTD_decompressDCtx(zstd_->ctx, frame_.data(), frame_.size(), compressed.data(), compressed.size());
    if (ZSTD_isError(n))
      return artifact_error(ArtifactErrc::malformed, what + ": zstd: " + ZSTD_getErrorName(n));
    if (n != len)
      return artifact_error(
          ArtifactErrc::malformed,
          what + ": " + std::to_string(n) + " bytes decompressed, " + std::to_string(len) + " expected");
  }
  return check_frame(i);
}

// ---- the reference loop -------------------------------------------------------------------------

Result<ApplyStats> apply_plan(const ChunkIndex& index, const LocalTable& table, const Plan& plan,
                              const std::string& payload_sha256, const FrameBuilder::LocalReader& read_local,
                              const RangeFetcher& fetch, const PayloadWriter& write) {
  if (plan.local.size() != index.frames.size())
    return fail(Errc::invalid_argument, "applying a plan: it has " + std::to_string(plan.local.size()) +
                                            " frames, the index " + std::to_string(index.frames.size()));
  ApplyStats st;
  FrameBuilder b(index, table);
  Sha256 whole;
  for (std::size_t i = 0; i < index.frames.size(); ++i) {
    bool built = false;
    if (plan.local[i]) {
      built = static_cast<bool>(b.build_local(i, read_local));
      if (built) {
        ++st.frames_local;
        st.bytes_reused += b.frame().size();
      } else {
        ++st.frames_refetched;
      }
    }
    if (!built) {
      auto range = plan.frame_range(index, i);
      auto bytes = fetch(i, range);
      if (!bytes) return bytes.error().context("fetching frame " + std::to_string(i));
      st.bytes_fetched += bytes->size();
      if (auto r = b.decode_fetched(i, *bytes); !r) return r.error();
      if (!plan.local[i]) ++st.frames_fetched;
    }
    whole.update(b.frame());
    if (auto r = write(index.frame_payload_offset(i), b.frame()); !r) return r.error();
  }
  auto digest = whole.hex_final();
  if (digest != payload_sha256)
    return artifact_error(
        ArtifactErrc::manifest_mismatch,
        "the rebuilt payload's sha256 " + digest + " does not match the manifest (" + payload_sha256 + ")");
  return st;
}

}  // namespace tern::artifacts
