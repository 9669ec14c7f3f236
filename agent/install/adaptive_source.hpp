// Adaptive install: the new image built from the running partition where it can, and only the
// rest fetched with HTTP Range requests (README "Adaptive updates"). The I/O shell around the
// sans-io planner of artifacts/adaptive.hpp:
//
//   1. The artifact's prefix (version, manifest, signature, header.tar with the chunk index, the
//      payload's tar header) is fetched with Range requests and verified by the artifact reader,
//      exactly as a full install verifies it; the HeaderCheck runs there.
//   2. The running partition is indexed (streamed once, on the blocking pool) and a plan made.
//   3. Frame by frame, in payload order: built from local blocks (runs of blocks that follow each
//      other locally read at once, each block checked against its index hash), or fetched
//      (coalesced neighbouring frames; the runs go several per request over one kept-alive
//      connection, RangeClient of range_fetch.hpp, and local frames between them are built while
//      the answer waits) and checked against the frame's SHA-256; written to the standby partition
//      behind the builder (WriteBehind); the payload's SHA-256 from the signed manifest checked over
//      all of it.
//
// Never worse than a full download: no index, a server that ignores Range, an unreadable running
// partition, a plan fetching more than `full_threshold` of the artifact, or an unsigned artifact
// whose deployment carries a SHA-256 of the whole file (which only a full download can check)
// all return `fallback` with the reason, before anything is written; the caller streams. So does
// a built payload whose SHA-256 differs from the manifest's, after writing (XXH3 block hashes are
// not cryptographic, chunk_index.hpp; only a block forged to match one gets there): the stream
// overwrites it.
//
// Resume: only the prefix is kept (prefix_cache). An install run again after a kill or a power cut
// (`resuming`) verifies the kept prefix again, checks each frame the standby partition already
// holds against the index and keeps those, so only frames still missing are fetched; the ranges
// carry If-Range with the kept validators, so a changed artifact is noticed. A cut link resumes
// the range it was fetching at the byte where it stopped. A kill loses what was fetched and not yet
// written: at most one batch of compressed frames (64 KiB) and what was in the socket buffers.
//
// Threads: runs on the caller's io executor; partition reads, hashing, decompression and writes run
// on `blocking` (whole runs of frames per hand-off). Cancellation: per-operation cancellation of
// the awaiting operation stops the transfer or the blocking work; returns Errc::cancelled.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include "agent/boot/partitions.hpp"
#include "agent/install/pipeline.hpp"
#include "artifacts/adaptive.hpp"

namespace tern::agent {

/// What the plan is, for the log and the command line (`tern-agent install` prints it).
struct AdaptivePlanSummary {
  std::uint64_t frames = 0, frames_local = 0, frames_on_standby = 0, frames_fetched = 0;
  std::uint64_t bytes_reused = 0;    ///< payload bytes built locally (running or standby partition)
  std::uint64_t bytes_to_fetch = 0;  ///< artifact bytes: the prefix plus the ranges
  std::uint64_t ranges = 0;
  std::uint64_t artifact_size = 0;
  std::string describe() const;  ///< one line for people
};

struct AdaptiveOptions {
  PartitionRef active;                     ///< the running partition (read only)
  bool resuming = false;                   ///< an earlier run of this install wrote part of the target
  boost::asio::any_io_executor blocking;   ///< where partition I/O, hashing and decoding run
  std::uint64_t coalesce_gap = 16 * 1024;  ///< fetch a gap this small rather than make two requests
  double full_threshold = 0.9;             ///< above this fraction of the artifact: stream it whole
  std::function<void(const AdaptivePlanSummary&)> on_plan;  ///< before the first frame (io thread)
  /// Where the fetched prefix is kept (with the URL and validators it came with) so that a resumed
  /// run verifies it again from the disk instead of fetching it again; removed when the install
  /// ends. Empty: not kept.
  std::filesystem::path prefix_cache;
};

struct AdaptiveOutcome {
  std::optional<PipelineResult> result;  ///< installed (written and synced)
  std::string fallback;                  ///< else why not: stream the artifact instead
  std::uint64_t fetched = 0;             ///< with a fallback: artifact bytes received first (the prefix)
};

/// Installs source.job.source (an http(s) URL) into `target` adaptively, or says why not.
/// Errors: the reader's (a bad artifact is refused as in a full install), the header check's,
/// download errors of the prefix or the frames, AgentErrc::source_changed (the artifact changed on
/// the server: start over), ArtifactErrc::manifest_mismatch (a fetched frame or the whole payload
/// does not match the signed index or manifest), the partition writer's, Errc::cancelled.
boost::asio::awaitable<Result<AdaptiveOutcome>> run_adaptive(
    const PipelineSource& source, const artifacts::ReaderOptions& reader_options, const HeaderCheck& check,
    const PartitionRef& target, const ProgressFn& progress, const AdaptiveOptions& options);

}  // namespace tern::agent
