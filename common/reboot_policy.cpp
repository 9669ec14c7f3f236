#include "common/reboot_policy.hpp"

#include <cstdio>

namespace tern {
namespace {

constexpr int minutes_per_day = 24 * 60;

/// "HH:MM" (two digits each, 00:00 to 23:59) to minutes after midnight; -1 if malformed.
int parse_clock(std::string_view t) {
  if (t.size() != 5 || t[2] != ':') return -1;
  for (std::size_t i : {0u, 1u, 3u, 4u})
    if (t[i] < '0' || t[i] > '9') return -1;
  const int h = (t[0] - '0') * 10 + (t[1] - '0');
  const int m = (t[3] - '0') * 10 + (t[4] - '0');
  if (h > 23 || m > 59) return -1;
  return h * 60 + m;
}

}  // namespace

bool RebootPolicy::allows(int minute) const {
  switch (kind) {
    case Kind::immediate: return true;
    case Kind::on_command: return false;
    case Kind::window: break;
  }
  if (start_minute == end_minute) return true;
  if (start_minute < end_minute) return minute >= start_minute && minute < end_minute;
  return minute >= start_minute || minute < end_minute;  // crosses midnight
}

std::int64_t RebootPolicy::seconds_until_open(std::int64_t second_of_day) const {
  if (kind != Kind::window || allows(static_cast<int>(second_of_day / 60))) return 0;
  const std::int64_t start = std::int64_t{start_minute} * 60;
  const std::int64_t day = std::int64_t{minutes_per_day} * 60;
  return ((start - second_of_day) % day + day) % day;
}

Result<RebootPolicy> parse_reboot_policy(std::string_view text) {
  if (text.empty() || text == "immediate") return RebootPolicy{};
  if (text == "on-command") return RebootPolicy{.kind = RebootPolicy::Kind::on_command};
  const int start = text.size() == 11 && text[5] == '-' ? parse_clock(text.substr(0, 5)) : -1;
  const int end = start >= 0 ? parse_clock(text.substr(6)) : -1;
  if (start < 0 || end < 0)
    return fail(Errc::invalid_argument, "reboot '" + std::string(text) +
                                            "': expected \"immediate\", \"on-command\" or a daily window "
                                            "\"HH:MM-HH:MM\" in the device's local time");
  return RebootPolicy{.kind = RebootPolicy::Kind::window, .start_minute = start, .end_minute = end};
}

std::string to_string(const RebootPolicy& p) {
  switch (p.kind) {
    case RebootPolicy::Kind::immediate: return "immediate";
    case RebootPolicy::Kind::on_command: return "on-command";
    case RebootPolicy::Kind::window: break;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%02d:%02d-%02d:%02d", p.start_minute / 60, p.start_minute % 60, p.end_minute / 60,
                p.end_minute % 60);
  return buf;
}

}  // namespace tern
