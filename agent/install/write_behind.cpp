#include "agent/install/write_behind.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

namespace tern::agent {

WriteBehind::WriteBehind(PartitionWriter writer, std::size_t buffers, std::size_t buffer_size)
    : writer_(std::move(writer)), pool_(std::max<std::size_t>(buffers, 1), buffer_size) {
  for (std::size_t i = 0; i < pool_.count(); ++i) empty_.push(Block{i, 0});
  thread_ = std::thread([this] { run(); });
}

WriteBehind::~WriteBehind() {
  full_.abort();
  empty_.abort();
  thread_.join();
}

void WriteBehind::run() {
  while (auto b = full_.pop()) {
    auto r = writer_.write(pool_.bytes(*b));
    if (!r) {
      {
        std::lock_guard l(m_);
        error_ = r.error();
      }
      // Nothing more is written after an error; put() and drain() see it.
      full_.abort();
      empty_.abort();
      return;
    }
    written_.fetch_add(b->size, std::memory_order_relaxed);
    empty_.push(Block{b->index, 0});
  }
}

Error WriteBehind::failure() {
  std::lock_guard l(m_);
  return error_ ? *error_ : fail(Errc::internal, "writing behind: stopped");
}

Result<void> WriteBehind::put(std::span<const std::uint8_t> bytes) {
  while (!bytes.empty()) {
    if (!current_) {
      current_ = empty_.pop();
      if (!current_) return failure();
    }
    const std::size_t n = std::min(bytes.size(), pool_.block_size() - current_->size);
    std::memcpy(pool_.data(*current_) + current_->size, bytes.data(), n);
    current_->size += n;
    bytes = bytes.subspan(n);
    if (current_->size == pool_.block_size()) {
      if (!full_.push(*current_)) return failure();
      current_.reset();
    }
  }
  {
    std::lock_guard l(m_);
    if (error_) return *error_;
  }
  return {};
}

Result<void> WriteBehind::drain() {
  if (current_ && current_->size) {
    if (!full_.push(*current_)) return failure();
    current_.reset();
  }
  // Everything is written when every block is back empty: take them all, then give them back.
  std::vector<Block> taken;
  taken.reserve(pool_.count());
  for (std::size_t i = current_ ? 1 : 0; i < pool_.count(); ++i) {
    auto b = empty_.pop();
    if (!b) return failure();
    taken.push_back(*b);
  }
  for (auto b : taken) empty_.push(b);
  return {};
}

Result<void> WriteBehind::finish() {
  if (auto r = drain(); !r) return r.error();
  return writer_.finish();
}

}  // namespace tern::agent
