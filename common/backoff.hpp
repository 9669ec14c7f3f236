// Exponential backoff with jitter, for every reconnect in Tern (MQTT connects, HTTPS downloads).
//
//   Backoff b(500ms, 60s);
//   for (;;) { if (try_once()) { b.reset(); ...; } co_await sleep(b.next()); }
//
// Each delay is drawn uniformly from the upper half of the current step, [step/2, step], and the step
// doubles up to `max`: a fleet that lost its broker at one instant does not come back in lockstep.
// Not thread-safe; cheap to copy.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>

namespace tern {

class Backoff {
 public:
  /// `seed` 0 draws a random seed; tests pass a fixed one.
  Backoff(std::chrono::milliseconds initial, std::chrono::milliseconds max, std::uint64_t seed = 0)
      : initial_(std::max(initial, std::chrono::milliseconds(1))),
        max_(std::max(max, initial_)),
        step_(initial_),
        rng_(seed ? seed : std::random_device{}()) {}

  /// The next delay to wait; the step after it doubles (up to max).
  std::chrono::milliseconds next() {
    const auto hi = step_.count(), lo = hi / 2;
    std::chrono::milliseconds wait{std::uniform_int_distribution<std::int64_t>(lo, hi)(rng_)};
    step_ = std::min(step_ * 2, max_);
    return wait;
  }
  /// Back to the initial step: the link works again.
  void reset() { step_ = initial_; }
  /// The step the next delay is drawn from (its upper bound).
  std::chrono::milliseconds step() const { return step_; }

 private:
  std::chrono::milliseconds initial_, max_, step_;
  std::mt19937_64 rng_;
};

}  // namespace tern
