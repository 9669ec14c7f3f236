// The wait between a written standby partition and the switch to it, for deployments whose
// `reboot` is a daily window or "on-command" (common/reboot_policy.hpp).
//
// The install stops in phase `paused` (state_machine.hpp): the payload is written and synced, the
// boot environment untouched, so a power cut or an unplanned reboot while waiting boots the old
// system and the daemon waits again (recover() says Action::await_reboot). When the wait ends the
// daemon calls Updater::go_ahead() and recover(), which store the switch and ask for the reboot.
//
//   RebootGate gate(policy, local_clock());
//   co_await (gate.wait_for_window(ex) || go_ahead_bell.wait());   // window: the first to come
//
// A go-ahead (tern/devices/{id}/reboot naming the deployment) ends any wait, a window's too.
//
// Thread safety: one gate per wait, on one executor.
#pragma once

#include "common/reboot_policy.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <functional>

namespace tern::agent {

/// Seconds since local midnight, [0, 86400): the device's local time of day.
using LocalClock = std::function<std::int64_t()>;
/// The system's clock in the system's time zone (localtime_r: TZ, /etc/localtime).
LocalClock system_local_clock();

class RebootGate {
 public:
  /// `max_step` bounds each sleep, so a clock set by NTP or a change of time zone after the wait
  /// began is seen within that long.
  RebootGate(RebootPolicy policy, LocalClock clock, std::chrono::milliseconds max_step = std::chrono::minutes(10));

  const RebootPolicy& policy() const { return policy_; }
  /// Whether the policy lets the switch happen now without a go-ahead.
  bool open_now() const;
  /// Completes when the window is open: at once for "immediate" or an open window; never for
  /// "on-command" (only a go-ahead ends that wait). Cancellable (awaitable operators).
  boost::asio::awaitable<void> wait_for_window(const boost::asio::any_io_executor& ex) const;

 private:
  RebootPolicy policy_;
  LocalClock clock_;
  std::chrono::milliseconds max_step_;
};

}  // namespace tern::agent
