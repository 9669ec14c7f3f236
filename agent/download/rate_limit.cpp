#include "agent/download/rate_limit.hpp"

#include <algorithm>

namespace tern::agent {

RateLimiter::RateLimiter(std::uint64_t bytes_per_second)
    : rate_(bytes_per_second),
      burst_(std::max(1024.0, static_cast<double>(bytes_per_second) / 4)),
      tokens_(burst_) {}

std::size_t RateLimiter::read_size(std::size_t buffer) const {
  if (!rate_) return buffer;
  return std::clamp<std::size_t>(static_cast<std::size_t>(burst_), 1, buffer);
}

std::chrono::nanoseconds RateLimiter::consume(std::uint64_t bytes, clock::time_point now) {
  if (!rate_) return {};
  if (started_) {
    const double elapsed = std::chrono::duration<double>(now - last_).count();
    tokens_ = std::min(burst_, tokens_ + elapsed * static_cast<double>(rate_));
  }
  started_ = true;
  last_ = now;
  tokens_ -= static_cast<double>(bytes);
  if (tokens_ >= 0) return {};
  return std::chrono::nanoseconds(static_cast<std::int64_t>(-tokens_ / static_cast<double>(rate_) * 1e9));
}

}  // namespace tern::agent
