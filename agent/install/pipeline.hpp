// The install pipeline: artifact bytes from a file or HTTPS URL, through the artifact reader
// (decompression, SHA-256, signature and manifest checks), into the standby partition.
//
//   source (io_context: file reads or Beast download)
//     → pool of `depth` fixed blocks of `chunk_size` bytes →
//   reader (its own thread: tar, decompression, hashing)
//     → a second such pool →
//   writer (its own thread: pwrite, periodic flush; resume checkpoints synced beside it)
//
// Three stages on three threads, so decompression and hashing overlap the network and the disk on
// two cores. Each link is a pool of blocks allocated once and recycled: a stage waits for an empty
// block when all are in flight, so the pools are the memory budget (2 × depth × chunk_size),
// whatever the image size, and nothing is allocated per chunk. The io_context thread never
// blocks: it awaits empty blocks on a channel.
//
// The header check runs on the reader thread after the artifact's header is verified and before the
// first payload byte is written: a payload larger than the partition is refused there, and the
// caller can refuse too (already installed, wrong type).
//
// Cancellation: per-operation cancellation of the awaiting operation (`||` with a timer or a
// signal) stops the source; the other stages drain and stop, and the call returns Errc::cancelled.
// Nothing is made bootable here: the caller switches the boot environment only after success.
#pragma once

#include "agent/boot/partitions.hpp"
#include "agent/download/https_download.hpp"
#include "agent/state.hpp"
#include "artifacts/reader.hpp"
#include "common/error.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>

namespace tern::agent {

/// Where an interrupted install goes on from (artifacts::Checkpoint): the reader is rebuilt from
/// `prefix` and `checkpoint` (which re-verifies signature and header), the source starts at
/// checkpoint.offset (a seek for files; Range with If-Range on the validators for URLs, and a
/// changed artifact is AgentErrc::source_changed). The caller opens the writer with
/// start_at = checkpoint.payload_bytes.
struct PipelineResume {
  std::string prefix;
  artifacts::Checkpoint checkpoint;
  std::string etag, last_modified;  ///< validators of the interrupted download
  std::uint64_t total = 0;          ///< artifact size it announced (0: unknown)
};

/// What to stream: the job's source (a file path or an http(s) URL), checked against the job's
/// size and SHA-256 when it has them.
struct PipelineSource {
  const InstallJob& job;
  const DownloadOptions& download;       ///< for URLs
  std::optional<PipelineResume> resume;  ///< continue from a checkpoint instead of byte 0
};

/// A checkpoint that is safe to persist: every payload byte before it is written and synced.
struct PipelineCheckpoint {
  artifacts::Checkpoint checkpoint;
  std::string etag, last_modified;  ///< download validators (empty for files)
  std::uint64_t total = 0;
};

struct PipelineOptions {
  std::size_t chunk_size = 128 * 1024;  ///< bytes per block
  std::size_t depth = 16;               ///< blocks per pool (two pools)
  /// Where a file source is read (blocking reads); none: on the calling coroutine's thread.
  boost::asio::any_io_executor blocking;
  /// Payload bytes between resume checkpoints (0: none); each costs an fdatasync of the partition.
  std::uint64_t checkpoint_every = 0;
  /// Called once on the reader thread with the artifact's prefix (see artifacts::Reader).
  std::function<Result<void>(std::span<const std::uint8_t>)> on_prefix;
  /// Called on a thread beside the writer after the partition is synced up to the checkpoint (the
  /// writer goes on meanwhile; a checkpoint overtaken by a newer one before its sync started is
  /// skipped). An error is logged and the install goes on (it only loses the chance to resume
  /// from there). Never called after run_pipeline returns.
  std::function<Result<void>(const PipelineCheckpoint&)> on_checkpoint;
};

struct PipelineProgress {
  std::uint64_t artifact_bytes = 0;    ///< artifact bytes through the source so far
  std::uint64_t artifact_total = 0;    ///< artifact size, 0 when unknown yet
  std::uint64_t network_bytes = 0;     ///< bytes received from the network over all attempts
  std::uint64_t written = 0;           ///< payload bytes written to the partition
  int attempt = 1;                     ///< connections made
  std::uint64_t reused = 0;            ///< payload bytes built from the running partition (adaptive)
};

struct PipelineResult {
  artifacts::Header header;
  std::uint64_t artifact_bytes = 0;
  std::uint64_t network_bytes = 0;
  std::uint64_t written = 0;
  int attempts = 1;
  std::uint64_t reused = 0;  ///< payload bytes built from the running partition (adaptive install)
  bool adaptive = false;     ///< installed adaptively (adaptive_source.hpp), not streamed
};

/// Called on the reader thread with the verified header; an error refuses the artifact.
using HeaderCheck = std::function<Result<void>(const artifacts::Header&)>;
/// Called on the io_context thread, at most every few hundred milliseconds.
using ProgressFn = std::function<void(const PipelineProgress&)>;

/// Throttles progress callbacks to one per 250 ms (`force`: report now, e.g. the last one).
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

/// Streams `source` into `writer`. Errors: the source's (download, file), the reader's
/// (artifacts::ArtifactErrc), the header check's, the writer's, a size or checksum mismatch of the
/// whole artifact against the job's, Errc::cancelled. AgentErrc::source_changed when the artifact
/// was replaced mid-download: the caller may restart from scratch.
/// The writer is synced (finish()) on success.
boost::asio::awaitable<Result<PipelineResult>> run_pipeline(const PipelineSource& source,
                                                            const artifacts::ReaderOptions& reader_options,
                                                            const HeaderCheck& check, PartitionWriter& writer,
                                                            const ProgressFn& progress,
                                                            const PipelineOptions& options);

bool is_url(const std::string& location);

}  // namespace tern::agent
