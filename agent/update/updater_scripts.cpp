// The Updater's state-script steps and Mender's error paths (docs.mender.io "State scripts",
// "State transition ordering"): a failing state runs its Error scripts, then, for the Artifact
// states (rootfs images support rollback), ArtifactRollback[Reboot] and ArtifactFailure. Scripts of
// the error states only log their failures. Called from the Updater's blocking work.
#include "agent/update/updater.hpp"

#include "common/log.hpp"

namespace tern::agent {

void Updater::note(char level, const std::string& text) {
  if (level == 'E') log::error(text);
  else if (level == 'W') log::warn(text);
  else log::info(text);
  dlog_.line(level, text);
}

Result<void> Updater::run_scripts(ScriptState state, ScriptAction action, std::stop_token stop, bool ignore_errors) {
  // Each failing script is in the deployment log already; the caller logs what it does next.
  return scripts_.run(state, action, stop, ignore_errors);
}

Result<InstallState> Updater::fail_unswitched(InstallState s, const std::string& why, ScriptState failed,
                                              std::stop_token stop) {
  note('E', why);
  (void)run_scripts(failed, ScriptAction::Error, stop);
  const bool artifact_state = failed != ScriptState::Download;
  if (artifact_state) {
    // Nothing was switched yet: the rollback has nothing to undo, but its scripts run as in Mender.
    (void)run_scripts(ScriptState::ArtifactRollback, ScriptAction::Enter, stop, true);
    (void)run_scripts(ScriptState::ArtifactRollback, ScriptAction::Leave, stop, true);
    (void)run_scripts(ScriptState::ArtifactFailure, ScriptAction::Enter, stop, true);
  }
  auto f = finish_failure(std::move(s), why);
  if (artifact_state) (void)run_scripts(ScriptState::ArtifactFailure, ScriptAction::Leave, stop, true);
  dlog_.sync();
  return f;
}

Result<InstallState> Updater::fail_switched(InstallState s, const std::string& why, ScriptState failed,
                                            std::stop_token stop) {
  note('E', why + ": switching back to partition " + std::to_string(s.previous_part));
  (void)run_scripts(failed, ScriptAction::Error, stop);
  (void)run_scripts(ScriptState::ArtifactRollback, ScriptAction::Enter, stop, true);
  if (auto r = env_->write(vars_for_rollback(s.previous_part)); !r) return r.error().context("rolling back");
  s.success = false;
  s.error = why;
  s.reported = false;
  auto done = advance(std::move(s), Event::rolled_back);
  (void)run_scripts(ScriptState::ArtifactRollback, ScriptAction::Leave, stop, true);
  (void)run_scripts(ScriptState::ArtifactFailure, ScriptAction::Enter, stop, true);
  (void)run_scripts(ScriptState::ArtifactFailure, ScriptAction::Leave, stop, true);
  dlog_.sync();
  return done;
}

Result<void> Updater::roll_back_after_reboot(InstallState s, const std::string& why, ScriptState failed,
                                             std::stop_token stop) {
  note('W', why + ": rolling back to partition " + std::to_string(s.previous_part));
  (void)run_scripts(failed, ScriptAction::Error, stop);
  (void)run_scripts(ScriptState::ArtifactRollback, ScriptAction::Enter, stop, true);
  s.error = why;
  if (auto r = advance(s, Event::unhealthy); !r) return r.error();
  if (auto r = env_->write(vars_for_rollback(s.previous_part)); !r) return r.error();
  (void)run_scripts(ScriptState::ArtifactRollback, ScriptAction::Leave, stop, true);
  (void)run_scripts(ScriptState::ArtifactRollbackReboot, ScriptAction::Enter, stop, true);
  dlog_.sync();
  return {};
}

Result<InstallState> Updater::finish_failure_with_scripts(InstallState s, const std::string& why, std::stop_token stop) {
  if (s.phase == Phase::rolling_back)
    (void)run_scripts(ScriptState::ArtifactRollbackReboot, ScriptAction::Leave, stop, true);
  (void)run_scripts(ScriptState::ArtifactFailure, ScriptAction::Enter, stop, true);
  auto f = finish_failure(std::move(s), why);
  (void)run_scripts(ScriptState::ArtifactFailure, ScriptAction::Leave, stop, true);
  dlog_.sync();
  return f;
}

}  // namespace tern::agent
