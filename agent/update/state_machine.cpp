#include "agent/update/state_machine.hpp"

namespace tern::agent {

namespace {
std::string var(const std::map<std::string, std::string>& vars, const std::string& name) {
  auto it = vars.find(name);
  return it == vars.end() ? std::string() : it->second;
}
}  // namespace

std::string_view to_string(Action a) {
  switch (a) {
    case Action::none: return "none";
    case Action::interrupted: return "interrupted";
    case Action::await_reboot: return "await-reboot";
    case Action::store_switch: return "store-switch";
    case Action::reboot: return "reboot";
    case Action::verify: return "verify";
    case Action::finish_commit: return "finish-commit";
    case Action::store_rollback: return "store-rollback";
    case Action::fail: return "fail";
  }
  return "unknown";
}

std::string_view to_string(Event e) {
  switch (e) {
    case Event::start: return "start";
    case Event::already_installed: return "already-installed";
    case Event::payload_written: return "payload-written";
    case Event::pause: return "pause";
    case Event::switch_stored: return "switch-stored";
    case Event::healthy: return "healthy";
    case Event::commit_stored: return "commit-stored";
    case Event::unhealthy: return "unhealthy";
    case Event::rolled_back: return "rolled-back";
    case Event::failed: return "failed";
  }
  return "unknown";
}

Result<Phase> advance(Phase from, Event e) {
  struct Row {
    Phase from;
    Event event;
    Phase to;
  };
  // The forward table of the header comment, row for row.
  static constexpr Row table[] = {
      {Phase::idle, Event::start, Phase::downloading},
      {Phase::done, Event::start, Phase::downloading},
      {Phase::downloading, Event::start, Phase::downloading},
      {Phase::downloading, Event::already_installed, Phase::done},
      {Phase::downloading, Event::payload_written, Phase::switching},
      {Phase::downloading, Event::pause, Phase::paused},
      {Phase::paused, Event::payload_written, Phase::switching},
      {Phase::switching, Event::switch_stored, Phase::switched},
      {Phase::switched, Event::healthy, Phase::committing},
      {Phase::committing, Event::commit_stored, Phase::done},
      {Phase::switching, Event::unhealthy, Phase::rolling_back},
      {Phase::switched, Event::unhealthy, Phase::rolling_back},
      {Phase::switching, Event::rolled_back, Phase::done},
      {Phase::switched, Event::rolled_back, Phase::done},
      {Phase::rolling_back, Event::rolled_back, Phase::done},
  };
  for (const auto& row : table)
    if (row.from == from && row.event == e) return row.to;
  if (e == Event::failed && from != Phase::idle && from != Phase::done) return Phase::done;
  return fail(Errc::internal, "no transition from " + std::string(to_string(from)) + " on " +
                                  std::string(to_string(e)));
}

Decision decide(const InstallState& s, int running_part, const std::map<std::string, std::string>& vars) {
  const bool on_target = running_part == s.target_part;
  const bool on_previous = running_part == s.previous_part;
  const bool trial = var(vars, "upgrade_available") == "1";
  const bool boots_target = var(vars, "mender_boot_part") == std::to_string(s.target_part);
  auto failed = [](std::string why) { return Decision{Action::fail, std::move(why)}; };

  switch (s.phase) {
    case Phase::idle:
    case Phase::done:
      return {};
    case Phase::downloading:
      return {Action::interrupted, "the install was interrupted during the download"};
    default:
      break;
  }
  if (!on_target && !on_previous)
    return failed("running partition " + std::to_string(running_part) + " is neither the previous (" +
                  std::to_string(s.previous_part) + ") nor the new one (" + std::to_string(s.target_part) + ")");

  switch (s.phase) {
    case Phase::paused:
      if (on_previous) return {Action::await_reboot, {}};
      return failed("the device booted partition " + std::to_string(running_part) +
                    " while the install waited for its reboot");
    case Phase::switching:
      if (on_target) return {Action::verify, {}};  // the switch was stored and we rebooted into it
      return {Action::store_switch, {}};
    case Phase::switched:
      if (on_target) return trial ? Decision{Action::verify, {}} : Decision{Action::finish_commit, {}};
      if (boots_target && trial) return {Action::reboot, {}};
      return failed("partition " + std::to_string(s.target_part) +
                    " did not come up; the bootloader rolled back to partition " + std::to_string(running_part));
    case Phase::committing:
      if (on_target) return {Action::finish_commit, {}};
      return failed("the device rebooted into partition " + std::to_string(running_part) +
                    " before the commit was stored; rolled back");
    case Phase::rolling_back:
      if (on_target) return {Action::store_rollback, s.error};
      return failed(s.error.empty() ? "rolled back" : s.error);
    default:
      return {};
  }
}

}  // namespace tern::agent
