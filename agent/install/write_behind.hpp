// Writes a partition behind the thread that produces the bytes: put() copies them into one of a
// few fixed buffers and returns; a thread of its own writes full buffers in order through a
// PartitionWriter, whose flush windows wait for the device there, not in the producer. The
// adaptive install builds, checks and hashes the next frames while the previous ones reach the
// disk (adaptive_source.cpp).
//
//   WriteBehind out(std::move(writer));
//   out.put(frame);      // any sizes; blocks only while every buffer waits for the disk
//   out.finish();        // the rest written, then PartitionWriter::finish() (fdatasync)
//
// Errors: the writer's, returned by the put() or finish() after it happened; nothing more is
// written after an error. Thread safety: put() and finish() from one thread at a time (any);
// written() from any thread. Destruction stops the thread after the buffer being written; what
// is still queued is dropped (a cancelled install).
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <thread>

#include "agent/boot/partitions.hpp"
#include "agent/install/block_queue.hpp"
#include "common/error.hpp"

namespace tern::agent {

class WriteBehind {
 public:
  explicit WriteBehind(PartitionWriter writer, std::size_t buffers = 4, std::size_t buffer_size = 512 * 1024);
  ~WriteBehind();
  WriteBehind(const WriteBehind&) = delete;
  WriteBehind& operator=(const WriteBehind&) = delete;

  Result<void> put(std::span<const std::uint8_t> bytes);
  /// Returns when everything put so far has been written (handed to the kernel: it survives the
  /// process being killed; not a power cut, for that finish() syncs).
  Result<void> drain();
  /// drain(), then PartitionWriter::finish() (fdatasync).
  Result<void> finish();
  /// Bytes on their way to the device (written through the PartitionWriter).
  std::uint64_t written() const { return written_.load(std::memory_order_relaxed); }

 private:
  void run();
  Error failure();

  PartitionWriter writer_;
  BlockPool pool_;
  BlockQueue full_;   // put() → the writer thread
  BlockQueue empty_;  // the writer thread → put()
  std::optional<Block> current_;  // the block put() fills (the producer's only)
  std::mutex m_;
  std::optional<Error> error_;  // guarded by m_
  std::atomic<std::uint64_t> written_{0};
  std::thread thread_;  // last: starts after the members it uses
};

}  // namespace tern::agent
