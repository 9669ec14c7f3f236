// The install pipeline: artifact bytes from a file or HTTPS URL, through the artifact reader
// (decompression, SHA-256, signature and manifest checks), into the standby partition.
//
//   source (io_context: file reads or Beast download)
//     → bounded channel of fixed chunks →
//   reader (its own thread: tar, decompression, hashing)
//     → bounded queue of fixed chunks →
//   writer (its own thread: pwrite, periodic flush)
//
// Three stages on three threads, so decompression and hashing overlap the network and the disk on
// two cores. The queues' capacities are the memory budget: about depth × chunk per queue, whatever
// the image size.
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
#include "artifacts/reader.hpp"
#include "common/error.hpp"

#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <functional>
#include <string>

namespace tern::agent {

struct PipelineSource {
  std::string location;       ///< a file path, or an http:// or https:// URL
  DownloadOptions download;   ///< for URLs
  std::uint64_t expected_size = 0;  ///< artifact size in bytes when known (0: unchecked)
  std::string expected_sha256;      ///< hex SHA-256 of the whole artifact when known (empty: unchecked)
};

struct PipelineOptions {
  std::size_t chunk_size = 128 * 1024;  ///< bytes per buffer
  std::size_t depth = 16;               ///< buffers per queue
};

struct PipelineProgress {
  std::uint64_t artifact_bytes = 0;    ///< artifact bytes through the source so far
  std::uint64_t artifact_total = 0;    ///< artifact size, 0 when unknown yet
  std::uint64_t network_bytes = 0;     ///< bytes received from the network over all attempts
  std::uint64_t written = 0;           ///< payload bytes written to the partition
  int attempt = 1;                     ///< connections made
};

struct PipelineResult {
  artifacts::Header header;
  std::uint64_t artifact_bytes = 0;
  std::uint64_t network_bytes = 0;
  std::uint64_t written = 0;
  int attempts = 1;
};

/// Called on the reader thread with the verified header; an error refuses the artifact.
using HeaderCheck = std::function<Result<void>(const artifacts::Header&)>;
/// Called on the io_context thread, at most every few hundred milliseconds.
using ProgressFn = std::function<void(const PipelineProgress&)>;

/// Streams `source` into `writer`. Errors: the source's (download, file), the reader's
/// (artifacts::ArtifactErrc), the header check's, the writer's, a size or checksum mismatch of the
/// whole artifact against `expected_*`, Errc::cancelled. Errc::protocol with "changed on the
/// server" when the artifact was replaced mid-download: the caller may restart from scratch.
/// The writer is synced (finish()) on success.
boost::asio::awaitable<Result<PipelineResult>> run_pipeline(const PipelineSource& source,
                                                            const artifacts::ReaderOptions& reader_options,
                                                            const HeaderCheck& check, PartitionWriter& writer,
                                                            const ProgressFn& progress,
                                                            const PipelineOptions& options);

bool is_url(const std::string& location);

}  // namespace tern::agent
