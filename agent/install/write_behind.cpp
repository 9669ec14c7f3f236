#include "agent/install/write_behind.hpp"

#include <algorithm>
#include <cstring>

namespace tern::agent {

WriteBehind::WriteBehind(PartitionWriter writer, std::size_t buffers, std::size_t buffer_size)
    : writer_(std::move(writer)),
      size_(buffer_size),
      memory_(std::make_unique_for_overwrite<std::uint8_t[]>(buffers * buffer_size)),
      used_(buffers, 0) {
  for (std::size_t i = 0; i < buffers; ++i) free_.push_back(i);
  thread_ = std::thread([this] { run(); });
}

WriteBehind::~WriteBehind() {
  {
    std::lock_guard l(m_);
    closing_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void WriteBehind::run() {
  for (;;) {
    std::size_t b = none;
    {
      std::unique_lock l(m_);
      cv_.wait(l, [&] { return closing_ || !ready_.empty(); });
      if (closing_) return;
      b = ready_.front();
      ready_.pop_front();
      ++busy_;
    }
    auto r = writer_.write({memory_.get() + b * size_, used_[b]});
    if (r) written_.fetch_add(used_[b], std::memory_order_relaxed);
    {
      std::lock_guard l(m_);
      --busy_;
      if (!r && !error_) error_ = r.error();
      if (error_) ready_.clear();  // nothing more is written after an error
      free_.push_back(b);
    }
    cv_.notify_all();
  }
}

std::optional<Error> WriteBehind::failure() {
  std::lock_guard l(m_);
  return error_;
}

void WriteBehind::submit() {
  {
    std::lock_guard l(m_);
    ready_.push_back(current_);
  }
  current_ = none;
  cv_.notify_all();
}

Result<void> WriteBehind::put(std::span<const std::uint8_t> bytes) {
  while (!bytes.empty()) {
    if (current_ == none) {
      std::unique_lock l(m_);
      cv_.wait(l, [&] { return error_ || !free_.empty(); });
      if (error_) return *error_;
      current_ = free_.front();
      free_.pop_front();
      used_[current_] = 0;
    }
    const std::size_t n = std::min(bytes.size(), size_ - used_[current_]);
    std::memcpy(memory_.get() + current_ * size_ + used_[current_], bytes.data(), n);
    used_[current_] += n;
    bytes = bytes.subspan(n);
    if (used_[current_] == size_) submit();
  }
  if (auto e = failure()) return *e;
  return {};
}

Result<void> WriteBehind::drain() {
  if (current_ != none) {
    if (used_[current_]) {
      submit();
    } else {
      std::lock_guard l(m_);
      free_.push_back(current_);
      current_ = none;
    }
  }
  {
    std::unique_lock l(m_);
    cv_.wait(l, [&] { return error_ || (ready_.empty() && busy_ == 0); });
    if (error_) return *error_;
  }
  return {};
}

Result<void> WriteBehind::finish() {
  if (auto r = drain(); !r) return r.error();
  return writer_.finish();
}

}  // namespace tern::agent
