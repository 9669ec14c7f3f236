// The update state machine, sans-io, in one place: the forward transitions the Updater makes while
// it runs, and what to do after a (re)start given the persisted state and what the device observes
// (which partition it runs, the boot variables). Every transition is saved before it is acted on.
//
// Forward (advance(): each row is a transition the Updater saves, then acts on):
//
//   phase         event               → phase          then the Updater
//   idle, done    start               → downloading    streams the artifact into the standby partition
//   downloading   start               → downloading    runs an interrupted install again (next attempt)
//   downloading   already_installed   → done (success, already installed)
//   downloading   payload_written     → switching      stores the boot switch (upgrade_available=1)
//   downloading   pause               → paused         waits for the reboot window or go-ahead
//   paused        payload_written     → switching      (the go-ahead) stores the boot switch
//   switching     switch_stored       → switched       reboots into the new partition
//   switched      healthy             → committing     stores the commit (upgrade_available=0)
//   committing    commit_stored       → done (success)
//   switching,
//   switched      unhealthy           → rolling_back   stores the switch back, reboots
//   switching,
//   switched,
//   rolling_back  rolled_back         → done (failure) the old partition runs again
//   any but idle
//   and done      failed              → done (failure) (the boot environment still boots the old one)
//
// Recovery (decide(): after any restart):
//
//   phase         running   boot variables                       → action
//   idle, done    any       any                                  → none
//   downloading   any       any (never switched)                 → interrupted (retry or fail)
//   paused        previous  any (never switched)                 → await_reboot (wait again)
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
  await_reboot,    ///< written, waiting for the reboot window or the operator's go-ahead
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

/// What happened, for advance().
enum class Event {
  start,              ///< an install (or its next attempt) begins
  already_installed,  ///< the artifact's header names the running artifact
  payload_written,    ///< the payload is written, verified and synced (or, paused: the go-ahead)
  pause,              ///< the payload is written; the deployment's reboot policy says wait
  switch_stored,      ///< the boot environment tries the new partition once
  healthy,            ///< the new partition passed its health check
  commit_stored,      ///< the boot environment keeps the new partition
  unhealthy,          ///< the new partition failed its health check (or the operator gave up on it)
  rolled_back,        ///< the old partition runs again, or will on the next boot
  failed,             ///< the install failed before the new partition was tried
};
std::string_view to_string(Event e);

/// The phase after `e` in `from`, from the forward table above. Errors: Errc::internal for a
/// transition the table does not have (a bug: the caller acts on nothing).
Result<Phase> advance(Phase from, Event e);

/// `running_part` is the mender_boot_part number of the running root partition; `vars` the boot
/// environment (mender_boot_part, upgrade_available, ...).
Decision decide(const InstallState& state, int running_part, const std::map<std::string, std::string>& vars);

std::string_view to_string(Action a);

}  // namespace tern::agent
