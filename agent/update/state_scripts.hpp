// Mender's state scripts, with Mender's contract (docs.mender.io "State scripts", and its C++
// client's script executor), so the scripts of a Mender device run unchanged:
//
// - Names: STATE_ACTION_NN[_description], STATE one of Download, ArtifactInstall, ArtifactReboot,
//   ArtifactCommit, ArtifactRollback, ArtifactRollbackReboot, ArtifactFailure (Idle and Sync have no
//   counterpart: the agent does not poll), ACTION Enter, Leave or Error, NN two digits. Only
//   executable regular files whose names match run, in the order of their names (so by NN).
// - Where: Download scripts from the root filesystem (RootfsScriptsPath, /etc/mender/scripts: the
//   running system's, so after the reboot the new partition's); Artifact* scripts from the artifact
//   (its header's scripts/, covered by the manifest and its signature), stored at install time in
//   ArtifactScriptsPath (DataDir/scripts, on the data partition) so they still run after the reboot.
//   A directory that does not exist holds no scripts. A `version` file in either directory must say
//   3 (a missing one counts as 3); any other version fails the state.
// - Exit 0: the next script. Exit 21: "retry later": run the same script again after
//   StateScriptRetryIntervalSeconds, for at most StateScriptRetryTimeoutSeconds per script, then it
//   has failed. Any other exit, or running past StateScriptTimeoutSeconds (its process group is
//   killed), fails the state: the remaining scripts do not run and the caller takes the error path.
// - Error scripts, and the states whose failures Mender ignores (ArtifactCommit_Leave,
//   ArtifactRollback*, ArtifactFailure), run every script and only log failures (ignore_errors).
// - No arguments. stdout and stderr (Mender keeps only stderr) go to the deployment log.
//
// Blocking: run() waits for the scripts (on the agent's blocking pool, never the io thread); a
// stop request kills the running script and returns Errc::cancelled. Thread-safe.
#pragma once

#include "agent/update/deployment_log.hpp"
#include "common/error.hpp"

#include <chrono>
#include <filesystem>
#include <stop_token>
#include <string>
#include <utility>
#include <vector>

namespace tern::agent {

enum class ScriptState { Download, ArtifactInstall, ArtifactReboot, ArtifactCommit, ArtifactRollback, ArtifactRollbackReboot, ArtifactFailure };
enum class ScriptAction { Enter, Leave, Error };
std::string_view to_string(ScriptState s);
std::string_view to_string(ScriptAction a);

struct StateScriptOptions {
  std::filesystem::path rootfs_dir = "/etc/mender/scripts";  ///< RootfsScriptsPath
  std::filesystem::path artifact_dir;                         ///< ArtifactScriptsPath
  std::chrono::milliseconds timeout{3600 * 1000};             ///< StateScriptTimeoutSeconds, per script
  std::chrono::milliseconds retry_interval{60 * 1000};        ///< StateScriptRetryIntervalSeconds
  std::chrono::milliseconds retry_timeout{1800 * 1000};       ///< StateScriptRetryTimeoutSeconds, per script
  std::size_t max_output = 64 * 1024;                         ///< output kept per run of a script
};

class StateScripts {
 public:
  StateScripts(StateScriptOptions options, DeploymentLog& log);

  /// Runs the scripts of STATE_ACTION. Errors: Errc::io naming the script and how it failed (exit
  /// status, timeout, retried too long), or the bad version file or unreadable directory;
  /// Errc::cancelled on a stop request. With `ignore_errors` (and always for Error scripts) every
  /// script runs and failures are only logged: the result is then success unless stopped.
  Result<void> run(ScriptState state, ScriptAction action, std::stop_token stop = {}, bool ignore_errors = false);

  /// Replaces the stored artifact scripts with `scripts` (name, content: the artifact header's
  /// scripts/), executable, with a `version` file saying 3. Errors: a name that is not a plain file
  /// name, Errc::io.
  Result<void> store_artifact_scripts(const std::vector<std::pair<std::string, std::string>>& scripts);

  const StateScriptOptions& options() const { return options_; }

 private:
  StateScriptOptions options_;
  DeploymentLog& log_;
};

}  // namespace tern::agent
