// The update state machine's transition table, sans-io: given the persisted install state and what
// the device observes after a (re)start — which partition it runs and the boot variables — decide
// what to do next. The Updater performs the action and saves the next state before acting on it.
//
//   phase         running   boot variables                       → action
//   idle, done    any       any                                  → none
//   downloading   any       any (never switched)                 → interrupted (retry or fail)
//   switching     previous  any                                  → store_switch (payload is complete)
//   switched      previous  boot_part=target, upgrade_available=1→ reboot (not rebooted yet)
//   switched      previous  otherwise                            → fail: the bootloader rolled back
//   switched      target    upgrade_available=1                  → verify (health check, commit)
//   switched      target    upgrade_available=0                  → finish_commit
//   committing    target    any                                  → finish_commit
//   committing    previous  any                                  → fail: rolled back before commit
//   rolling_back  target    any                                  → store_rollback (then reboot)
//   rolling_back  previous  any                                  → fail with the recorded reason
//
// "running" is neither the target nor the previous partition only if the configuration changed
// under an install: that fails the install without touching the boot environment.
#pragma once

#include "agent/state.hpp"

#include <map>
#include <string>

namespace tern::agent {

enum class Action {
  none,            ///< nothing in progress
  interrupted,     ///< a download was cut short by a restart: run it again or report failure
  store_switch,    ///< (re)write the boot switch to the target partition, then reboot
  reboot,          ///< the switch is stored; reboot into the new partition
  verify,          ///< running the new partition on trial: health check, then commit or roll back
  finish_commit,   ///< (re)write the commit and record the new artifact
  store_rollback,  ///< (re)write the switch back to the previous partition, then reboot
  fail,            ///< the install failed; `error` says why; record it
};

struct Decision {
  Action action = Action::none;
  std::string error;  ///< for fail
};

/// `running_part` is the mender_boot_part number of the running root partition; `vars` the boot
/// environment (mender_boot_part, upgrade_available, ...).
Decision decide(const InstallState& state, int running_part, const std::map<std::string, std::string>& vars);

std::string_view to_string(Action a);

}  // namespace tern::agent
