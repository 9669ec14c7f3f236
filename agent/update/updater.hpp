// The device's update logic: install into the standby partition and switch the boot environment,
// then after the reboot verify, commit or roll back. Every transition is saved to the StateStore
// before it is acted on; decide() (state_machine.hpp) says what to do after any restart.
//
//   auto u = Updater::open(config).value();
//   auto r = co_await u->install({.source = "https://..."}, progress);   // switched: reboot now
//   ... reboot ...
//   auto next = u->recover();   // health check + commit, or rollback; tells whether to reboot
//
// Used by the CLI (install/commit/rollback) and the daemon. Not thread-safe; blocking file and
// environment I/O happens on the calling thread (small, bounded: a few fsyncs per transition).
#pragma once

#include "agent/agent_config.hpp"
#include "agent/boot/bootenv.hpp"
#include "agent/install/pipeline.hpp"
#include "agent/state.hpp"
#include "agent/update/state_machine.hpp"

#include <boost/asio/awaitable.hpp>

#include <memory>
#include <optional>

namespace tern::agent {

struct InstallRequest {
  std::string source;                ///< file path or URL
  std::string deployment_id;         ///< empty from the command line
  std::uint64_t expected_size = 0;   ///< from the deployment (0: unchecked)
  std::string expected_sha256;       ///< from the deployment (empty: unchecked)
  std::uint32_t attempt = 1;
};

struct InstallReport {
  bool already_installed = false;  ///< the artifact is the one running: nothing was written
  artifacts::Header header;
  PipelineResult stats;
};

/// What recover() did and what the caller must do now.
struct Recovery {
  Action action = Action::none;  ///< what decide() said
  bool reboot = false;           ///< reboot now to continue
  bool interrupted = false;      ///< a download was cut short: the caller retries or calls fail_install()
  std::optional<InstallState> finished;  ///< the install ended (success or failure) in this call
};

class Updater {
 public:
  /// Resolves partitions, opens the boot environment and the state directory, and locks the latter
  /// (DirLock) for as long as the Updater lives: a second one on the same data directory fails.
  static Result<std::unique_ptr<Updater>> open(const AgentConfig& config);

  /// Streams `request.source` into the standby partition and switches the boot environment to try
  /// it once. Refuses when an install is already in progress. On failure the running partition and
  /// the boot environment are untouched and the state records the failure (phase done).
  boost::asio::awaitable<Result<InstallReport>> install(const InstallRequest& request, const ProgressFn& progress);

  /// Continues whatever the saved state says after a (re)start; see state_machine.hpp.
  Result<Recovery> recover();

  /// Commits the running trial partition (`tern-agent commit`). Errors: nothing to commit.
  Result<InstallState> commit();
  /// Gives up on the new partition (`tern-agent rollback`); returns whether a reboot is needed.
  Result<bool> rollback(const std::string& reason);
  /// Records a failed install (phase done) whose download was interrupted.
  Result<InstallState> fail_install(const std::string& reason);
  /// After recover() reported `interrupted`: the request that runs the install again as its next
  /// attempt (install() goes on from its checkpoint when it has one). Nothing once InstallAttempts
  /// are used up, or at once with `give_up`: the install is then failed ("interrupted N time(s)"),
  /// to be reported like any other failure (state()).
  Result<std::optional<InstallRequest>> next_attempt(bool give_up = false);
  /// Marks the finished install as reported to the fleet.
  Result<void> mark_reported();

  Result<InstallState> state() const { return store_.load_install(); }
  Result<Installed> installed() const { return store_.load_installed(config_.initial_artifact_name); }
  /// mender_boot_part number of the running root partition.
  Result<int> running_part() const;
  const AgentConfig& config() const { return config_; }
  StateStore& store() { return store_; }
  const Slots& slots() const { return slots_; }
  BootEnv& bootenv() { return *env_; }

 private:
  Updater(AgentConfig config, Slots slots, std::unique_ptr<BootEnv> env, StateStore store, DirLock lock);
  Result<InstallState> save(InstallState s);
  Result<InstallState> finish_commit(InstallState s);
  Result<InstallState> finish_failure(InstallState s, const std::string& error);
  Result<void> run_health_check(std::string& why);
  const PartitionRef& partition_of(int part) const;

  AgentConfig config_;
  Slots slots_;
  std::unique_ptr<BootEnv> env_;
  StateStore store_;
  DirLock lock_;  // held while this Updater lives
};

}  // namespace tern::agent
