// A token bucket for the download's bandwidth cap (DownloadMaxBytesPerSecond, or a deployment's
// `max_rate`). Sans-io: the caller says how many bytes arrived and when, and sleeps for the delay it
// gets back before reading again; the kernel's receive window then slows the sender, so nothing is
// buffered in the agent and memory stays flat.
//
//   RateLimiter limit(64 * 1024);                 // bytes per second; 0: unlimited
//   buffer_size = limit.read_size(buffer_size);   // at most about a quarter second's worth
//   ... read n bytes ...
//   co_await sleep(limit.consume(n, steady_clock::now()));
//
// The bucket holds at most a quarter second of tokens (and at least 1 KiB), so a link that was idle
// (a reconnect, a slow sink) does not burst far above the cap afterwards, and the rate measured
// over any few seconds stays within a few percent of the cap.
//
// Thread safety: none; one limiter per download.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

namespace tern::agent {

/// The cap of one download: the smaller of the two that are set (0: neither is).
constexpr std::uint64_t combined_cap(std::uint64_t a, std::uint64_t b) {
  return a == 0 ? b : b == 0 ? a : (a < b ? a : b);
}

class RateLimiter {
 public:
  using clock = std::chrono::steady_clock;

  explicit RateLimiter(std::uint64_t bytes_per_second = 0);

  bool limited() const { return rate_ != 0; }
  std::uint64_t rate() const { return rate_; }

  /// The largest read worth asking for: `buffer` when unlimited, else the bucket's size.
  std::size_t read_size(std::size_t buffer) const;

  /// Takes `bytes` that arrived at `now`; returns how long to wait before the next read (zero
  /// when unlimited or when the bucket still had the tokens).
  std::chrono::nanoseconds consume(std::uint64_t bytes, clock::time_point now);

 private:
  std::uint64_t rate_;
  double burst_;    ///< bucket capacity in bytes
  double tokens_;   ///< may go negative: a debt paid by waiting
  clock::time_point last_{};
  bool started_ = false;
};

}  // namespace tern::agent
