// Fixed pools of buffers and blocking queues of them between threads: the links between the
// install pipeline's stages (pipeline.cpp) and WriteBehind's writer thread (write_behind.hpp).
// A stage takes an empty block from one queue, fills it, and pushes it to the next; the consumer
// pushes it back empty. Memory is the pool's, allocated once.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <span>

namespace tern::agent {

/// One buffer of a BlockPool: which one, and how many bytes of it are used.
struct Block {
  std::size_t index = 0;
  std::size_t size = 0;
};

/// `count` buffers of `block_size` bytes, allocated once and recycled between two stages; the
/// pool is the memory budget of its link.
class BlockPool {
 public:
  BlockPool(std::size_t count, std::size_t block_size)
      : count_(count), block_size_(block_size),
        memory_(std::make_unique_for_overwrite<std::uint8_t[]>(count * block_size)) {}
  std::uint8_t* data(const Block& b) { return memory_.get() + b.index * block_size_; }
  std::span<const std::uint8_t> bytes(const Block& b) { return {data(b), b.size}; }
  std::size_t count() const { return count_; }
  std::size_t block_size() const { return block_size_; }

 private:
  std::size_t count_, block_size_;
  std::unique_ptr<std::uint8_t[]> memory_;
};

/// Blocking FIFO of blocks between two threads. It never holds more than its pool's blocks, so
/// push() never waits; pop() waits for a block, the end (close) or an abort.
class BlockQueue {
 public:
  /// False once aborted.
  bool push(Block b) {
    std::lock_guard lock(m_);
    if (aborted_) return false;
    q_.push_back(b);
    ready_.notify_one();
    return true;
  }
  /// Nothing once closed and drained, or aborted.
  std::optional<Block> pop() {
    std::unique_lock lock(m_);
    ready_.wait(lock, [&] { return aborted_ || closed_ || !q_.empty(); });
    if (aborted_ || q_.empty()) return std::nullopt;
    Block b = q_.front();
    q_.pop_front();
    return b;
  }
  /// No more pushes; the consumer drains what is queued.
  void close() {
    std::lock_guard lock(m_);
    closed_ = true;
    ready_.notify_all();
  }
  /// Stop both sides now.
  void abort() {
    std::lock_guard lock(m_);
    aborted_ = true;
    ready_.notify_all();
  }
  bool closed_cleanly() {
    std::lock_guard lock(m_);
    return closed_ && !aborted_;
  }

 private:
  std::mutex m_;
  std::condition_variable ready_;
  std::deque<Block> q_;
  bool closed_ = false, aborted_ = false;
};

}  // namespace tern::agent
