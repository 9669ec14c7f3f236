// The device's update logic: install into the standby partition and switch the boot environment,
// then after the reboot verify, commit or roll back. Every transition (state_machine.hpp's forward
// table) is saved to the StateStore before it is acted on; decide() says what to do after any
// restart.
//
//   auto u = Updater::open(config).value();
//   auto r = co_await u->install(job, progress);   // switched: reboot now
//   ... reboot ...
//   auto next = u->recover(stop);                  // health check + commit, or rollback
//
// Used by the CLI (install/commit/rollback) and the daemon.
//
// Threads: install() is a coroutine for the caller's io thread; every blocking step in it (state
// files and their fsyncs, the boot environment, the partition table, reading the partition back)
// runs on the Updater's BlockingPool, so the io thread never blocks. The other members block; the
// daemon calls them through offload(blocking().serial(), ...), one at a time. Not thread-safe
// otherwise.
#pragma once

#include "agent/agent_config.hpp"
#include "agent/boot/bootenv.hpp"
#include "agent/boot/slots.hpp"
#include "agent/errors.hpp"
#include "agent/install/adaptive_source.hpp"
#include "agent/install/pipeline.hpp"
#include "agent/state.hpp"
#include "agent/update/deployment_log.hpp"
#include "agent/update/state_machine.hpp"
#include "agent/update/state_scripts.hpp"
#include "common/blocking.hpp"

#include <boost/asio/awaitable.hpp>

#include <memory>
#include <optional>
#include <stop_token>

namespace tern::agent {

struct InstallReport {
  artifacts::Header header;
  PipelineResult stats;
  bool paused = false;  ///< written, not switched: the deployment's reboot policy says wait (go_ahead())
  /// Set when the install already ended (an update module that needs no reboot): report it, do
  /// not reboot.
  std::optional<InstallState> finished;
};

/// What recover() did and what the caller must do now.
struct Recovery {
  Action action = Action::none;  ///< what decide() said
  bool reboot = false;           ///< reboot now to continue
  bool interrupted = false;      ///< a download was cut short: the caller retries or calls fail_install()
  bool paused = false;           ///< written, waiting for the reboot window or go-ahead: then go_ahead()
  std::optional<InstallState> finished;  ///< the install ended (success or failure) in this call
};

class Updater {
 public:
  /// Resolves partitions, opens the boot environment and the state directory, and locks the latter
  /// (DirLock) for as long as the Updater lives: a second one on the same data directory fails
  /// with AgentErrc::busy.
  static Result<std::unique_ptr<Updater>> open(const AgentConfig& config);
  ~Updater();

  /// Streams `job.source` into the standby partition and switches the boot environment to try it
  /// once. On failure the running partition and the boot environment are untouched and the state
  /// records the failure (phase done). Errors the caller branches on:
  ///   AgentErrc::already_installed  the artifact is the running one (recorded as done, success)
  ///   AgentErrc::busy               another install waits for its reboot or commit
  ///   AgentErrc::interrupted        cancelled from outside: the state stays in downloading with
  ///                                 its checkpoint, to be resumed (next_attempt) or failed
  boost::asio::awaitable<Result<InstallReport>> install(const InstallJob& job, const ProgressFn& progress);

  /// Continues whatever the saved state says after a (re)start; see state_machine.hpp. Runs the
  /// health check (HealthCheckTimeoutSeconds; a stop request ends it as a failed check would not:
  /// the state stays switched, to be verified on the next start).
  Result<Recovery> recover(std::stop_token stop = {});

  /// Commits the running trial partition (`tern-agent commit`). Errors: nothing to commit.
  Result<InstallState> commit();
  /// Gives up on the new partition (`tern-agent rollback`); returns whether a reboot is needed.
  Result<bool> rollback(const std::string& reason);
  /// Records the interrupted install as failed (phase done); `aborted`: withdrawn or replaced by
  /// the operator rather than failed.
  Result<InstallState> fail_install(const std::string& reason, bool aborted = false);
  /// After recover() reported `interrupted`: the job that runs the install again as its next
  /// attempt (install() goes on from its checkpoint when it has one). Nothing once InstallAttempts
  /// are used up, or at once with `give_up`: the install is then failed ("interrupted N time(s)"),
  /// to be reported like any other failure (state()).
  Result<std::optional<InstallJob>> next_attempt(bool give_up = false);
  /// The finished install, with the sequence number of its final status allocated and saved
  /// (once: after a power cut the status is sent again with the same number, so the fleet sees
  /// one final status). Errors: nothing finished to report.
  Result<InstallState> final_status_seq();
  /// Marks the finished install as reported to the fleet.
  Result<void> mark_reported();
  /// A paused install may switch now (its reboot window opened, or the operator said so): moves it
  /// to `switching`; recover() then stores the switch and asks for the reboot. Errors: nothing
  /// paused (Errc::invalid_argument). In agent/update/reboot_gate.cpp.
  Result<InstallState> go_ahead();

  Result<InstallState> state() const { return store_.load_install(); }
  Result<Installed> installed() const { return store_.load_installed(config_.initial_artifact_name); }
  /// mender_boot_part number of the running root partition.
  Result<int> running_part() const;
  const AgentConfig& config() const { return config_; }
  StateStore& store() { return store_; }
  const Slots& slots() const { return slots_; }
  BootEnv& bootenv() { return *env_; }
  /// Called with the plan of an adaptive install before it starts (`tern-agent install` prints it).
  void on_adaptive_plan(std::function<void(const AdaptivePlanSummary&)> f) { on_plan_ = std::move(f); }
  /// Where blocking work runs: serial() for the state store and the boot environment.
  BlockingPool& blocking() { return pool_; }
  /// Each deployment's log (DataDir/deployment-logs), with the output of its state scripts.
  DeploymentLog& deployment_log() { return dlog_; }

 private:
  friend class ModuleInstall;  // update modules (update_module.hpp): the same state and store
  Updater(AgentConfig config, Slots slots, std::unique_ptr<BootEnv> env, StateStore store, DirLock lock);
  /// Moves `s` along the forward table and saves it.
  Result<InstallState> advance(InstallState s, Event e);
  Result<InstallState> save(InstallState s);
  Result<InstallState> finish_commit(InstallState s);
  Result<InstallState> finish_failure(InstallState s, const std::string& error);
  Result<void> run_health_check(std::string& why, std::stop_token stop);
  const PartitionRef& partition_of(int part) const;

  // State scripts and the deployment log (updater_scripts.cpp). Blocking.
  /// Logs `text` to the agent's log and the deployment's.
  void note(char level, const std::string& text);
  /// Runs STATE_ACTION's scripts (see state_scripts.hpp).
  Result<void> run_scripts(ScriptState state, ScriptAction action, std::stop_token stop, bool ignore_errors = false);
  /// Mender's error path for `failed` before the boot switch: its Error scripts, ArtifactRollback
  /// and ArtifactFailure scripts (not for Download), and the install recorded as failed.
  Result<InstallState> fail_unswitched(InstallState s, const std::string& why, ScriptState failed, std::stop_token stop);
  /// The same after the switch was stored, before the reboot: the switch is taken back.
  Result<InstallState> fail_switched(InstallState s, const std::string& why, ScriptState failed, std::stop_token stop);
  /// The same on the new partition after the reboot: rolling back, a reboot to follow.
  Result<void> roll_back_after_reboot(InstallState s, const std::string& why, ScriptState failed, std::stop_token stop);
  /// After a restart that ends the install as failed (`fail`): ArtifactRollbackReboot_Leave when
  /// it rolled back, ArtifactFailure scripts around recording the failure.
  Result<InstallState> finish_failure_with_scripts(InstallState s, const std::string& why, std::stop_token stop);

  AgentConfig config_;
  Slots slots_;
  std::unique_ptr<BootEnv> env_;
  StateStore store_;
  DirLock lock_;  // held while this Updater lives
  DownloadOptions download_;  // from the configuration, for every install
  DeploymentLog dlog_;
  StateScripts scripts_;
  std::function<void(const AdaptivePlanSummary&)> on_plan_;
  BlockingPool pool_;         // last: its threads stop before the members they use go
};

}  // namespace tern::agent
