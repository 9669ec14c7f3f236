#include "agent/install/pipeline.hpp"

#include "agent/errors.hpp"
#include "agent/install/block_queue.hpp"
#include "common/blocking.hpp"
#include "common/file.hpp"
#include "common/log.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace tern::agent {
namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;

namespace {

// Why plain threads and blocking queues between the stages, and not an Asio channel into a
// thread_pool: a cross-thread channel hand-off per network read (16 KiB, one TLS record) cost more
// than the work it moved (tens of futex wake-ups per record, 3.5 s of a 4 s install of 256 MiB).
// Now the stages hand each other whole blocks from fixed pools, one wake-up per block at most, and
// the io_context thread only ever awaits one channel: the one the reader returns empty blocks on.

/// Empty raw blocks back to the io_context thread, which awaits them without blocking. The reader
/// thread only calls try_send (it always succeeds: the capacity is the pool's size).
using FreeChannel = asio::experimental::concurrent_channel<void(boost::system::error_code, Block)>;
/// Tells the io_context thread that the reader and writer threads have returned, or (Links::aborted)
/// that a stage has failed.
using DoneChannel = asio::experimental::concurrent_channel<void(boost::system::error_code)>;

/// The links between the stages: source → raw_full → reader → payload_full → writer, and the
/// empty blocks back the other way.
struct Links {
  Links(const asio::any_io_executor& ex, const PipelineOptions& o)
      : raw_pool(std::max<std::size_t>(o.depth, 2), std::max<std::size_t>(o.chunk_size, 4096)),
        payload_pool(std::max<std::size_t>(o.depth, 2), std::max<std::size_t>(o.chunk_size, 4096)),
        raw_free(ex, raw_pool.count()), aborted(ex, 1) {
    for (std::size_t i = 0; i < raw_pool.count(); ++i)
      raw_free.try_send(boost::system::error_code{}, Block{i, 0});
    for (std::size_t i = 0; i < payload_pool.count(); ++i) payload_free.push(Block{i, 0});
  }
  /// Any stage that fails stops them all; safe from any thread.
  void abort() {
    raw_full.abort();
    payload_full.abort();
    payload_free.abort();
    raw_free.close();
    aborted.try_send(boost::system::error_code{});  // stops a download waiting in its backoff
  }

  BlockPool raw_pool, payload_pool;
  BlockQueue raw_full;      // source → reader: artifact bytes
  FreeChannel raw_free;     // reader → source
  BlockQueue payload_full;  // reader → writer: payload bytes
  BlockQueue payload_free;  // writer → reader
  DoneChannel aborted;      // abort() → the source
};

/// What the stages share: the first error wins.
struct Shared {
  std::mutex m;
  std::optional<Error> error;
  std::atomic<std::uint64_t> written{0};
  bool reader_done = false;  // finish() succeeded; guarded by m
  std::optional<artifacts::Header> header;
  std::string artifact_sha256;  // the reader's, after finish(); guarded by m

  // Resume checkpoints: the newest the reader passed, until the writer has written up to it.
  std::function<Result<void>(const PipelineCheckpoint&)> on_checkpoint;
  std::atomic<bool> checkpoint_waiting{false};
  std::optional<PipelineCheckpoint> checkpoint;  // guarded by m
  std::string etag, last_modified;               // download validators; written on the io thread under m
  std::uint64_t total = 0;                       // guarded by m

  void set_error(Error e) {
    std::lock_guard lock(m);
    if (!error) error = std::move(e);
  }
  bool failed() {
    std::lock_guard lock(m);
    return error.has_value();
  }
};

/// On the io_context thread: packs artifact bytes into raw blocks and hands full ones to the reader.
class RawSink {
 public:
  explicit RawSink(Links& links) : links_(links) {}

  /// An empty block, awaiting one from the reader when all are in use. Errors: Errc::cancelled
  /// (the install was cancelled, or another stage stopped the pipeline: its error is recorded).
  asio::awaitable<Result<Block>> take() {
    std::optional<Block> got;
    links_.raw_free.try_receive([&](boost::system::error_code ec, Block b) {
      if (!ec) got = b;
    });
    if (got) co_return *got;
    auto [ec, b] = co_await links_.raw_free.async_receive(asio::as_tuple(asio::use_awaitable));
    if (ec == asio::error::operation_aborted) co_return fail(Errc::cancelled, "install cancelled");
    if (ec) co_return fail(Errc::cancelled, "the install pipeline stopped");
    co_return b;
  }
  /// Hands a filled block to the reader.
  Result<void> push(Block b) {
    if (!links_.raw_full.push(b)) return fail(Errc::cancelled, "the install pipeline stopped");
    return {};
  }
  /// Copies `bytes` into blocks, handing each full one on.
  asio::awaitable<Result<void>> append(std::span<const std::uint8_t> bytes) {
    const std::size_t block_size = links_.raw_pool.block_size();
    while (!bytes.empty()) {
      if (!current_) {
        auto b = co_await take();
        if (!b) co_return b.error();
        current_ = Block{b->index, 0};
      }
      const std::size_t n = std::min(bytes.size(), block_size - current_->size);
      std::memcpy(links_.raw_pool.data(*current_) + current_->size, bytes.data(), n);
      current_->size += n;
      bytes = bytes.subspan(n);
      if (current_->size == block_size) {
        auto r = push(*current_);
        current_.reset();
        if (!r) co_return r;
      }
    }
    co_return Result<void>{};
  }
  /// Hands on the partly filled block, if any.
  Result<void> flush() {
    if (!current_ || current_->size == 0) return {};
    auto r = push(*current_);
    current_.reset();
    return r;
  }

 private:
  Links& links_;
  std::optional<Block> current_;
};

/// Runs a blocking read on `pool` (awaited), or here when there is no pool (the command line).
template <class F>
asio::awaitable<std::invoke_result_t<const F&>> read_blocking(const asio::any_io_executor& pool, const F& read) {
  if (!pool) co_return read();
  co_return co_await offload(pool, [&read](std::stop_token) { return read(); });
}

// Stage 1, on the caller's executor: artifact bytes into raw blocks; raw_full is closed at the end.
asio::awaitable<void> source_stage(const PipelineSource& source, const PipelineOptions& options, Links& links,
                                   Shared& shared, PipelineProgress& progress, ProgressGate& gate) {
  const std::uint64_t start = source.resume ? source.resume->checkpoint.offset : 0;
  const std::string& location = source.job.source;
  RawSink raw(links);
  auto stop = [&](Error e) {
    shared.set_error(std::move(e));
    links.abort();
  };

  if (!is_url(location)) {
    // File reads block: on the pool when there is one, read straight into the raw blocks.
    auto opened = co_await read_blocking(options.blocking, [&]() -> Result<UniqueFd> {
      UniqueFd fd(::open(location.c_str(), O_RDONLY | O_CLOEXEC));
      if (!fd) return Error::from_errno("opening artifact " + location, errno);
      struct stat st {};
      if (::fstat(fd.get(), &st) != 0) return Error::from_errno("opening artifact " + location, errno);
      progress.artifact_total = static_cast<std::uint64_t>(st.st_size);
      return fd;
    });
    if (!opened) {
      stop(opened.error());
      co_return;
    }
    const UniqueFd fd = std::move(*opened);
    progress.artifact_bytes = start;
    for (;;) {
      auto b = co_await raw.take();
      if (!b) {
        stop(b.error());
        co_return;
      }
      auto got = co_await read_blocking(options.blocking, [&]() -> Result<std::size_t> {
        for (;;) {
          ssize_t n = ::pread(fd.get(), links.raw_pool.data(*b), links.raw_pool.block_size(),
                              static_cast<off_t>(progress.artifact_bytes));
          if (n < 0 && errno == EINTR) continue;
          if (n < 0) return Error::from_errno("reading artifact " + location, errno);
          return static_cast<std::size_t>(n);
        }
      });
      if (!got) {
        stop(got.error());
        co_return;
      }
      b->size = *got;
      if (b->size == 0) break;
      progress.artifact_bytes += b->size;
      progress.written = shared.written.load();
      if (auto r = raw.push(*b); !r) {
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
    DownloadState state{.url = location};
    if (source.resume) {
      state.offset = start;
      state.etag = source.resume->etag;
      state.last_modified = source.resume->last_modified;
      if (source.resume->total) state.total = source.resume->total;
      progress.artifact_bytes = start;
    }
    BodySink sink = [&](std::span<const std::uint8_t> bytes) -> asio::awaitable<Result<void>> {
      progress.artifact_bytes += bytes.size();
      co_return co_await raw.append(bytes);
    };
    RestartHandler on_restart = [&]() -> Result<void> {
      return fail(AgentErrc::source_changed, "the artifact at " + location + " changed on the server during the download");
    };
    ProgressHandler on_progress = [&](const DownloadState& st) {
      progress.artifact_total = st.total.value_or(0);
      progress.network_bytes = st.bytes_received;
      progress.attempt = std::max(1, st.attempts);
      progress.written = shared.written.load();
      gate.report(progress);
      // Validators for the checkpoints. Only this thread writes them, so it may compare unlocked
      // and lock only for a change (this runs for every network read).
      if (shared.on_checkpoint && (shared.etag != st.etag || shared.last_modified != st.last_modified ||
                                   shared.total != st.total.value_or(0))) {
        std::lock_guard lock(shared.m);
        shared.etag = st.etag;
        shared.last_modified = st.last_modified;
        shared.total = st.total.value_or(0);
      }
    };
    // Raced with abort(): after a reader or writer error the download must not go on retrying a
    // dead link for hours before the pipeline can report it.
    auto transfer = download(source.download, state, sink, on_restart, on_progress);
    auto stopped = links.aborted.async_receive(asio::use_awaitable);
    auto outcome = co_await (std::move(transfer) || std::move(stopped));
    progress.network_bytes = state.bytes_received;
    progress.attempt = std::max(1, state.attempts);
    if (outcome.index() == 1) co_return;  // the failing stage recorded its error
    auto& r = std::get<0>(outcome);
    if (!r) {
      stop(r.error());
      co_return;
    }
    if (auto f = raw.flush(); !f) {
      stop(f.error());
      co_return;
    }
  }
  if (source.job.size && progress.artifact_bytes != source.job.size) {
    stop(fail(Errc::protocol, "artifact " + location + " is " + std::to_string(progress.artifact_bytes) +
                                  " bytes, the deployment says " + std::to_string(source.job.size)));
    co_return;
  }
  links.raw_full.close();  // end of stream
}

// Stage 2, on its own thread: the reader (tar, decompression, hashes), payload into payload blocks.
void reader_stage(const artifacts::ReaderOptions& reader_options, const HeaderCheck& check,
                  const PartitionWriter& writer, const PipelineOptions& options,
                  const std::optional<PipelineResume>& resume, Links& links, Shared& shared) {
  auto stop = [&](Error e) {
    shared.set_error(std::move(e));
    links.abort();
  };
  std::optional<Block> out;  // the payload block being filled
  auto hand_on = [&]() -> Result<void> {
    if (!out || out->size == 0) return {};
    bool ok = links.payload_full.push(*out);
    out.reset();
    if (!ok) return fail(Errc::cancelled, "the partition writer stopped");
    return {};
  };
  // A resumed writer starts at the checkpoint's payload byte: what is left must fit from there.
  const std::uint64_t payload_start = resume ? resume->checkpoint.payload_bytes : 0;
  auto on_header = [&](const artifacts::Header& h) -> Result<void> {
    if (auto r = writer.check_fits(h.payload_size - std::min(h.payload_size, payload_start)); !r)
      return r.error().context("payload " + h.payload_name + " of " + h.artifact_name + " does not fit");
    if (check)
      if (auto r = check(h); !r) return r.error();
    std::lock_guard lock(shared.m);
    shared.header = h;
    return {};
  };
  const std::size_t block_size = links.payload_pool.block_size();
  auto on_payload = [&](std::span<const std::uint8_t> bytes) -> Result<void> {
    while (!bytes.empty()) {
      if (!out) {
        out = links.payload_free.pop();
        if (!out) return fail(Errc::cancelled, "the partition writer stopped");
        out->size = 0;
      }
      const std::size_t n = std::min(bytes.size(), block_size - out->size);
      std::memcpy(links.payload_pool.data(*out) + out->size, bytes.data(), n);
      out->size += n;
      bytes = bytes.subspan(n);
      if (out->size == block_size)
        if (auto r = hand_on(); !r) return r;
    }
    return {};
  };
  artifacts::Reader reader(reader_options, on_header, on_payload);
  if (options.checkpoint_every && options.on_checkpoint) {
    reader.enable_checkpoints(options.checkpoint_every, options.on_prefix, [&](const artifacts::Checkpoint& c) -> Result<void> {
      // Hand the writer every payload byte before the checkpoint now, then let it persist the
      // checkpoint once those bytes are on disk.
      if (auto r = hand_on(); !r) return r;
      std::lock_guard lock(shared.m);
      shared.checkpoint = PipelineCheckpoint{.checkpoint = c};
      shared.checkpoint_waiting = true;
      return {};
    });
  }
  if (resume)
    if (auto r = reader.resume({reinterpret_cast<const std::uint8_t*>(resume->prefix.data()), resume->prefix.size()},
                               resume->checkpoint);
        !r) {
      stop(r.error().context("resuming the install"));
      return;
    }

  while (auto block = links.raw_full.pop()) {
    auto r = reader.feed(links.raw_pool.bytes(*block));
    links.raw_free.try_send(boost::system::error_code{}, Block{block->index, 0});
    if (!r) {
      stop(r.error());
      return;
    }
  }
  if (!links.raw_full.closed_cleanly()) return;  // aborted: the error is recorded
  if (auto r = reader.finish(); !r) {
    stop(r.error());
    return;
  }
  if (auto r = hand_on(); !r) return;
  {
    std::lock_guard lock(shared.m);
    shared.reader_done = true;
    shared.artifact_sha256 = reader.artifact_sha256();
  }
  links.payload_full.close();
}

/// Beside the writer, on its own thread: syncs the partition and saves each checkpoint the writer
/// has written past, while the writer goes on writing. A checkpoint waiting behind a slow sync is
/// replaced by a newer one; the newest always gets saved.
class CheckpointSyncer {
 public:
  CheckpointSyncer(const PartitionWriter& writer, Shared& shared, Links& links)
      : writer_(writer), shared_(shared), links_(links), thread_([this] { run(); }) {}
  ~CheckpointSyncer() { stop(true); }
  CheckpointSyncer(const CheckpointSyncer&) = delete;
  CheckpointSyncer& operator=(const CheckpointSyncer&) = delete;

  /// `c`'s payload bytes are all written (not yet synced).
  void submit(PipelineCheckpoint c) {
    std::lock_guard lock(m_);
    next_ = std::move(c);
    wake_.notify_one();
  }
  /// Waits for the thread. keep_waiting: still save a checkpoint not yet started (an interrupted
  /// install resumes from it); else drop it (the install is complete, or the partition failed).
  void stop(bool keep_waiting) {
    {
      std::lock_guard lock(m_);
      if (stopping_ && !thread_.joinable()) return;
      stopping_ = true;
      if (!keep_waiting) next_.reset();
      wake_.notify_one();
    }
    if (thread_.joinable()) thread_.join();
  }

 private:
  void run() {
    for (;;) {
      std::optional<PipelineCheckpoint> c;
      {
        std::unique_lock lock(m_);
        wake_.wait(lock, [&] { return stopping_ || next_; });
        if (!next_) return;
        c = std::move(next_);
        next_.reset();
      }
      // The sync starts after the writer wrote every byte before the checkpoint: they are durable.
      if (auto r = writer_.sync_written(); !r) {
        shared_.set_error(r.error());
        links_.abort();
        return;
      }
      if (auto r = shared_.on_checkpoint(*c); !r)
        log::warn("saving the resume checkpoint at byte ", c->checkpoint.offset, ": ", r.error().message());
    }
  }

  const PartitionWriter& writer_;
  Shared& shared_;
  Links& links_;
  std::mutex m_;
  std::condition_variable wake_;
  std::optional<PipelineCheckpoint> next_;
  bool stopping_ = false;
  std::thread thread_;  // last: starts after the members it uses
};

// On the writer thread: hands the waiting checkpoint to the syncer once the partition has every
// payload byte before it.
void pass_checkpoint(const PartitionWriter& writer, Shared& shared, CheckpointSyncer& syncer) {
  std::optional<PipelineCheckpoint> c;
  {
    std::lock_guard lock(shared.m);
    if (!shared.checkpoint || writer.position() < shared.checkpoint->checkpoint.payload_bytes) return;
    c = std::move(shared.checkpoint);
    shared.checkpoint.reset();
    shared.checkpoint_waiting = false;
    c->etag = shared.etag;
    c->last_modified = shared.last_modified;
    c->total = shared.total;
  }
  syncer.submit(std::move(*c));
}

// Stage 3, on its own thread: payload blocks into the partition, then fdatasync.
void writer_stage(PartitionWriter& writer, Links& links, Shared& shared) {
  std::optional<CheckpointSyncer> syncer;
  if (shared.on_checkpoint) syncer.emplace(writer, shared, links);
  while (auto block = links.payload_full.pop()) {
    if (auto r = writer.write(links.payload_pool.bytes(*block)); !r) {
      shared.set_error(r.error());
      links.abort();
      if (syncer) syncer->stop(false);
      return;
    }
    shared.written += block->size;
    links.payload_free.push(Block{block->index, 0});
    if (syncer && shared.checkpoint_waiting.load(std::memory_order_relaxed))
      pass_checkpoint(writer, shared, *syncer);
  }
  const bool complete = links.payload_full.closed_cleanly();
  if (syncer) syncer->stop(!complete);
  if (!complete) return;
  if (auto r = writer.finish(); !r) shared.set_error(r.error());
}

/// Owns the reader and writer threads; on the way out (also by an exception or the frame's
/// destruction) it stops the links and joins them.
class Workers {
 public:
  /// `count`: how many start() calls follow; `done` fires once that many bodies have returned.
  Workers(Links& links, DoneChannel& done, int count) : links_(links), done_(done), running_(count) {}
  ~Workers() {
    links_.abort();
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }
  Workers(const Workers&) = delete;
  Workers& operator=(const Workers&) = delete;

  /// Runs `body` on a new thread; an exception becomes the pipeline's error.
  template <class F>
  void start(Shared& shared, F body) {
    threads_.emplace_back([this, &shared, body = std::move(body)] {
      try {
        body();
      } catch (const std::exception& e) {
        shared.set_error(fail(Errc::internal, std::string("install pipeline: ") + e.what()));
        links_.abort();
      }
      if (running_.fetch_sub(1) == 1) done_.try_send(boost::system::error_code{});
    });
  }
  void join() {
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }

 private:
  Links& links_;
  DoneChannel& done_;
  std::atomic<int> running_{0};
  std::vector<std::thread> threads_;
};

}  // namespace

bool is_url(const std::string& location) {
  return location.starts_with("https://") || location.starts_with("http://");
}

asio::awaitable<Result<PipelineResult>> run_pipeline(const PipelineSource& source,
                                                     const artifacts::ReaderOptions& reader_options,
                                                     const HeaderCheck& check, PartitionWriter& writer,
                                                     const ProgressFn& progress_fn, const PipelineOptions& options) {
  auto ex = co_await asio::this_coro::executor;
  Links links(ex, options);
  DoneChannel done(ex, 1);
  Shared shared;
  PipelineProgress progress;
  ProgressGate gate(progress_fn);
  if (options.checkpoint_every && options.on_checkpoint) shared.on_checkpoint = options.on_checkpoint;

  {
    Workers workers(links, done, 2);
    // The whole artifact's SHA-256 (restorable at a checkpoint), when there is one to compare with.
    auto ro = reader_options;
    ro.hash_artifact = !source.job.sha256.empty();
    workers.start(shared, [&] { reader_stage(ro, check, writer, options, source.resume, links, shared); });
    workers.start(shared, [&] { writer_stage(writer, links, shared); });

    try {
      co_await source_stage(source, options, links, shared, progress, gate);
    } catch (const boost::system::system_error& e) {
      shared.set_error(e.code() == asio::error::operation_aborted
                           ? fail(Errc::cancelled, "install cancelled")
                           : fail(Errc::internal, std::string("install pipeline: ") + e.what()));
      links.abort();
    } catch (const std::exception& e) {
      shared.set_error(fail(Errc::internal, std::string("install pipeline: ") + e.what()));
      links.abort();
    }
    // The reader and writer drain what the source handed on (or stop at once after an error); wait
    // for them without blocking the io_context thread.
    bool finished = false;
    auto cs = co_await asio::this_coro::cancellation_state;
    if (cs.cancelled() == asio::cancellation_type::none) {
      try {
        auto [ec] = co_await done.async_receive(asio::as_tuple(asio::use_awaitable));
        finished = !ec;
      } catch (const boost::system::system_error&) {
        // cancelled while waiting (co_await throws once the coroutine is cancelled)
      }
    }
    if (!finished) {
      shared.set_error(fail(Errc::cancelled, "install cancelled"));
      links.abort();
      // The threads return after their current write or sync, seconds on slow storage: await that
      // too, without blocking the io thread and without letting the cancellation cut it short.
      co_await asio::this_coro::throw_if_cancelled(false);
      co_await done.async_receive(
          asio::bind_cancellation_slot(asio::cancellation_slot(), asio::as_tuple(asio::use_awaitable)));
    }
    workers.join();  // they have returned: nothing to wait for
  }

  progress.written = shared.written.load();
  gate.report(progress, true);
  std::lock_guard lock(shared.m);
  if (shared.error) co_return *shared.error;
  if (!shared.reader_done || !shared.header)
    co_return fail(Errc::internal, "install pipeline ended without a verified artifact");
  const auto& digest = shared.artifact_sha256;
  if (!source.job.sha256.empty() && digest != source.job.sha256)
    co_return fail(Errc::protocol, "artifact " + source.job.source + " has SHA-256 " + digest +
                                       ", the deployment says " + source.job.sha256);
  PipelineResult result;
  result.header = *shared.header;
  result.artifact_bytes = progress.artifact_bytes;
  result.network_bytes = is_url(source.job.source) ? progress.network_bytes : 0;
  result.written = shared.written.load();
  result.attempts = progress.attempt;
  co_return result;
}

}  // namespace tern::agent
