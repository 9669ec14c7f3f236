// When a device may switch to its new partition and reboot: a deployment's `reboot` field.
//
//   "immediate"    as soon as the payload is written (the default, and what an absent field means)
//   "HH:MM-HH:MM"  a daily window in the device's local time; start inclusive, end exclusive; a
//                  window whose end is not after its start crosses midnight ("22:00-02:00")
//   "on-command"   after the operator's go-ahead (tern/devices/{id}/reboot, or
//                  tern/fleet/deployments/{dep}/reboot through the bridge)
//
// Sans-io: the window arithmetic takes the local time as an argument, so it is tested without a
// clock.
#pragma once

#include "common/error.hpp"

#include <chrono>
#include <string>
#include <string_view>

namespace tern {

struct RebootPolicy {
  enum class Kind { immediate, window, on_command };
  Kind kind = Kind::immediate;
  int start_minute = 0;  ///< window: minutes after local midnight, [0, 1440)
  int end_minute = 0;    ///< window: minutes after local midnight, [0, 1440); == start: all day

  bool operator==(const RebootPolicy&) const = default;

  /// Whether `minute_of_day` (local, [0, 1440)) lies inside the window (always true for
  /// immediate, never for on-command).
  bool allows(int minute_of_day) const;
  /// Seconds from `second_of_day` (local, [0, 86400)) until the window opens: 0 inside it.
  /// Meaningless for on-command (returns 0).
  std::int64_t seconds_until_open(std::int64_t second_of_day) const;
};

/// Parses the `reboot` field; an empty string is "immediate". Errors name the value and what is
/// accepted (Errc::invalid_argument).
Result<RebootPolicy> parse_reboot_policy(std::string_view text);
/// The field's text: "immediate", "on-command" or "HH:MM-HH:MM".
std::string to_string(const RebootPolicy& p);

}  // namespace tern
