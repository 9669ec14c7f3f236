#include "agent/install/pipeline.hpp"

#include "artifacts/crypto.hpp"
#include "common/log.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

namespace tern::agent {
namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;

namespace {

using Chunk = std::vector<std::uint8_t>;
using RawChannel = asio::experimental::concurrent_channel<void(boost::system::error_code, Chunk)>;

/// Blocking bounded queue between the reader thread and the writer thread.
class ChunkQueue {
 public:
  explicit ChunkQueue(std::size_t capacity) : capacity_(capacity) {}

  /// Blocks while full. False once aborted.
  bool push(Chunk c) {
    std::unique_lock lock(m_);
    not_full_.wait(lock, [&] { return aborted_ || q_.size() < capacity_; });
    if (aborted_) return false;
    q_.push_back(std::move(c));
    not_empty_.notify_one();
    return true;
  }
  /// Blocks while empty. Nothing once closed and drained, or aborted.
  std::optional<Chunk> pop() {
    std::unique_lock lock(m_);
    not_empty_.wait(lock, [&] { return aborted_ || closed_ || !q_.empty(); });
    if (aborted_ || q_.empty()) return std::nullopt;
    Chunk c = std::move(q_.front());
    q_.pop_front();
    not_full_.notify_one();
    return c;
  }
  /// No more pushes; the consumer drains what is queued.
  void close() {
    std::lock_guard lock(m_);
    closed_ = true;
    not_empty_.notify_all();
  }
  /// Stop both sides now.
  void abort() {
    std::lock_guard lock(m_);
    aborted_ = true;
    not_empty_.notify_all();
    not_full_.notify_all();
  }
  bool closed_cleanly() {
    std::lock_guard lock(m_);
    return closed_ && !aborted_;
  }

 private:
  std::mutex m_;
  std::condition_variable not_full_, not_empty_;
  std::deque<Chunk> q_;
  std::size_t capacity_;
  bool closed_ = false, aborted_ = false;
};

/// What the stages share: the first error wins.
struct Shared {
  std::mutex m;
  std::optional<Error> error;
  std::atomic<std::uint64_t> written{0};
  bool reader_done = false;  // finish() succeeded; guarded by m
  std::optional<artifacts::Header> header;

  void set_error(Error e) {
    std::lock_guard lock(m);
    if (!error) error = std::move(e);
  }
  bool failed() {
    std::lock_guard lock(m);
    return error.has_value();
  }
};

/// Throttles progress callbacks.
class ProgressGate {
 public:
  explicit ProgressGate(const ProgressFn& fn) : fn_(fn) {}
  void report(const PipelineProgress& p, bool force = false) {
    if (!fn_) return;
    auto now = std::chrono::steady_clock::now();
    if (!force && now - last_ < std::chrono::milliseconds(250)) return;
    last_ = now;
    fn_(p);
  }

 private:
  const ProgressFn& fn_;
  std::chrono::steady_clock::time_point last_{};
};

// Stage 1, on the caller's executor: artifact bytes into `raw`, an empty chunk at the end.
asio::awaitable<void> source_stage(const PipelineSource& source, const PipelineOptions& options, RawChannel& raw,
                                   Shared& shared, PipelineProgress& progress, ProgressGate& gate,
                                   artifacts::Sha256& artifact_hash) {
  auto send = [&](Chunk c) -> asio::awaitable<Result<void>> {
    auto [ec] = co_await raw.async_send(boost::system::error_code{}, std::move(c), asio::as_tuple(asio::use_awaitable));
    if (ec) co_return fail(Errc::cancelled, "the install pipeline stopped");  // the reader failed or we were cancelled
    co_return Result<void>{};
  };
  auto stop = [&](Error e) {
    shared.set_error(std::move(e));
    raw.close();
  };

  if (!is_url(source.location)) {
    std::ifstream in(source.location, std::ios::binary);
    if (!in) {
      stop(Error::from_errno("opening artifact " + source.location, errno));
      co_return;
    }
    in.seekg(0, std::ios::end);
    progress.artifact_total = static_cast<std::uint64_t>(in.tellg());
    in.seekg(0);
    for (;;) {
      Chunk c(options.chunk_size);
      in.read(reinterpret_cast<char*>(c.data()), static_cast<std::streamsize>(c.size()));
      auto n = static_cast<std::size_t>(in.gcount());
      if (n == 0) {
        if (in.bad()) stop(Error::from_errno("reading artifact " + source.location, errno));
        break;
      }
      c.resize(n);
      artifact_hash.update(c);
      progress.artifact_bytes += n;
      auto r = co_await send(std::move(c));
      if (!r) {
        stop(r.error());
        co_return;
      }
      gate.report(progress);
      auto cs = co_await asio::this_coro::cancellation_state;
      if (cs.cancelled() != asio::cancellation_type::none) {
        stop(fail(Errc::cancelled, "install cancelled"));
        co_return;
      }
    }
    if (shared.failed()) co_return;
  } else {
    DownloadState state{.url = source.location};
    BodySink sink = [&](std::span<const std::uint8_t> bytes) -> asio::awaitable<Result<void>> {
      artifact_hash.update(bytes);
      progress.artifact_bytes += bytes.size();
      Chunk c(bytes.begin(), bytes.end());
      auto r = co_await send(std::move(c));
      co_return r;
    };
    RestartHandler on_restart = [&]() -> Result<void> {
      return fail(Errc::protocol, "the artifact at " + source.location + " changed on the server during the download");
    };
    ProgressHandler on_progress = [&](const DownloadState& st) {
      progress.artifact_total = st.total.value_or(0);
      progress.network_bytes = st.bytes_received;
      progress.attempt = std::max(1, st.attempts);
      progress.written = shared.written.load();
      gate.report(progress);
    };
    auto r = co_await download(source.download, state, sink, on_restart, on_progress);
    progress.network_bytes = state.bytes_received;
    progress.attempt = std::max(1, state.attempts);
    if (!r) {
      stop(r.error());
      co_return;
    }
  }
  if (source.expected_size && progress.artifact_bytes != source.expected_size) {
    stop(fail(Errc::protocol, "artifact " + source.location + " is " + std::to_string(progress.artifact_bytes) +
                                  " bytes, the deployment says " + std::to_string(source.expected_size)));
    co_return;
  }
  auto r = co_await send(Chunk{});  // end of stream
  if (!r) stop(r.error());
}

// Stage 2, on its own thread: the reader (tar, decompression, hashes), payload into `out`.
asio::awaitable<void> reader_stage(const artifacts::ReaderOptions& reader_options, const HeaderCheck& check,
                                   const PartitionWriter& writer, const PipelineOptions& options, RawChannel& raw,
                                   ChunkQueue& out, Shared& shared) {
  Chunk pending;
  pending.reserve(options.chunk_size);
  auto on_header = [&](const artifacts::Header& h) -> Result<void> {
    if (auto r = writer.check_fits(h.payload_size); !r)
      return r.error().context("payload " + h.payload_name + " of " + h.artifact_name + " does not fit");
    if (check)
      if (auto r = check(h); !r) return r.error();
    std::lock_guard lock(shared.m);
    shared.header = h;
    return {};
  };
  auto on_payload = [&](std::span<const std::uint8_t> bytes) -> Result<void> {
    while (!bytes.empty()) {
      auto n = std::min(bytes.size(), options.chunk_size - pending.size());
      pending.insert(pending.end(), bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n));
      bytes = bytes.subspan(n);
      if (pending.size() == options.chunk_size) {
        if (!out.push(std::move(pending))) return fail(Errc::cancelled, "the partition writer stopped");
        pending = Chunk();
        pending.reserve(options.chunk_size);
      }
    }
    return {};
  };
  artifacts::Reader reader(reader_options, on_header, on_payload);

  for (;;) {
    auto [ec, chunk] = co_await raw.async_receive(asio::as_tuple(asio::use_awaitable));
    if (ec) {  // the source stopped early (its error is recorded) or we were cancelled
      shared.set_error(fail(Errc::cancelled, "install cancelled"));
      out.abort();
      co_return;
    }
    if (chunk.empty()) break;
    if (auto r = reader.feed(chunk); !r) {
      shared.set_error(r.error());
      raw.close();
      out.abort();
      co_return;
    }
  }
  if (auto r = reader.finish(); !r) {
    shared.set_error(r.error());
    out.abort();
    co_return;
  }
  if (!pending.empty() && !out.push(std::move(pending))) co_return;
  {
    std::lock_guard lock(shared.m);
    shared.reader_done = true;
  }
  out.close();
}

// Stage 3, on its own thread: chunks into the partition, then fdatasync.
void writer_stage(PartitionWriter& writer, ChunkQueue& in, RawChannel& raw, Shared& shared) {
  while (auto chunk = in.pop()) {
    if (auto r = writer.write(*chunk); !r) {
      shared.set_error(r.error());
      in.abort();
      raw.close();
      return;
    }
    shared.written += chunk->size();
  }
  if (!in.closed_cleanly()) return;
  if (auto r = writer.finish(); !r) shared.set_error(r.error());
}

}  // namespace

bool is_url(const std::string& location) {
  return location.starts_with("https://") || location.starts_with("http://");
}

asio::awaitable<Result<PipelineResult>> run_pipeline(const PipelineSource& source,
                                                     const artifacts::ReaderOptions& reader_options,
                                                     const HeaderCheck& check, PartitionWriter& writer,
                                                     const ProgressFn& progress_fn, const PipelineOptions& options) {
  auto ex = co_await asio::this_coro::executor;
  RawChannel raw(ex, options.depth);
  ChunkQueue queue(options.depth);
  Shared shared;
  PipelineProgress progress;
  ProgressGate gate(progress_fn);
  artifacts::Sha256 artifact_hash;

  asio::thread_pool reader_thread(1);
  std::thread writer_thread([&] { writer_stage(writer, queue, raw, shared); });

  auto reader_done = asio::co_spawn(reader_thread, reader_stage(reader_options, check, writer, options, raw, queue, shared),
                                    asio::use_awaitable);
  auto source_done = source_stage(source, options, raw, shared, progress, gate, artifact_hash);
  try {
    co_await (std::move(source_done) && std::move(reader_done));
  } catch (const std::exception& e) {
    shared.set_error(fail(Errc::internal, std::string("install pipeline: ") + e.what()));
  }
  if (shared.failed()) queue.abort();  // else the writer drains what the reader queued, then syncs
  raw.close();
  writer_thread.join();
  reader_thread.join();

  progress.written = shared.written.load();
  gate.report(progress, true);
  std::lock_guard lock(shared.m);
  if (shared.error) co_return *shared.error;
  if (!shared.reader_done || !shared.header)
    co_return fail(Errc::internal, "install pipeline ended without a verified artifact");
  auto digest = artifact_hash.hex_final();
  if (!source.expected_sha256.empty() && digest != source.expected_sha256)
    co_return fail(Errc::protocol, "artifact " + source.location + " has SHA-256 " + digest +
                                       ", the deployment says " + source.expected_sha256);
  PipelineResult result;
  result.header = *shared.header;
  result.artifact_bytes = progress.artifact_bytes;
  result.network_bytes = is_url(source.location) ? progress.network_bytes : 0;
  result.written = shared.written.load();
  result.attempts = progress.attempt;
  co_return result;
}

}  // namespace tern::agent
