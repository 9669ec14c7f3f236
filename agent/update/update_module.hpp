// Update modules, Mender's protocol v3: an artifact whose payload type is not `rootfs-image` is
// installed by the executable named after the type in ModulesDir (default
// /usr/share/mender/modules/v3), called as `MODULE STATE WORKDIR` with WORKDIR as its working
// directory, one state at a time. WORKDIR (DataDir/modules/v3/payloads/0000/tree) holds what
// Mender gives a module:
//
//   version            "3"
//   artifact_name      the artifact installed now
//   device_type        this device's type
//   header/            header-info, type-info, meta-data of the artifact, verbatim
//   files/             the payload's files, all verified (SHA-256 against the signed manifest)
//   tmp/               empty scratch space, removed with the tree after Cleanup
//
// Only the files tree is offered: there is no streams/ tree and no stream-next pipe, so a module
// that streams its payload in Download finds nothing to read and fails (Mender falls back to
// files/ when a module does not read the streams; Tern always does).
//
// The states, as Mender runs them (ModuleStep is what module.json records; a step is saved
// before it is run, so a restart knows where it was):
//
//   step             calls                                   then
//   (download)       Download (no streams), files/ written   install; failure: Cleanup, failed
//   install          ArtifactInstall, NeedsArtifactReboot,   No: commit; Automatic: reboot by Tern;
//                    SupportsRollback                        Yes: ArtifactReboot, then verify
//   reboot           (after the reboot)                      verify
//   verify           ArtifactVerifyReboot                    commit
//   commit           ArtifactCommit                          cleanup (success)
//   rollback         ArtifactRollback (if SupportsRollback)  rollback_reboot if past a reboot, else failure
//   rollback_reboot  ArtifactRollbackReboot (Yes), or a      verify_rollback
//                    reboot by Tern (Automatic)
//   verify_rollback  ArtifactVerifyRollbackReboot            failure
//   failure          ArtifactFailure                         cleanup (failure)
//   cleanup          Cleanup                                 done
//
// A failing ArtifactInstall, ArtifactReboot, ArtifactVerifyReboot or ArtifactCommit goes to
// rollback, which runs ArtifactRollback only when the module answered SupportsRollback with Yes
// (else straight to failure). A non-zero exit, a timeout (ModuleTimeoutSeconds) or an answer that
// is not in the protocol fails the state; errors of the error states are logged and the path goes
// on. After a restart: a step that was cut short runs again, except install (the install failed:
// rollback), reboot (the reboot happened: verify) and rollback_reboot (verify_rollback).
//
// Threads: drive() and the module calls block (each call has a deadline); the Updater runs them on
// its BlockingPool, never on the io thread.
#pragma once

#include "agent/update/updater.hpp"
#include "artifacts/reader.hpp"
#include "common/error.hpp"

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <filesystem>
#include <functional>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>

namespace tern::agent {

enum class ModuleStep { install, reboot, verify, commit, rollback, rollback_reboot, verify_rollback, failure, cleanup, done };
std::string_view to_string(ModuleStep s);

/// NeedsArtifactReboot's answers.
enum class RebootNeed { no, automatic, yes };

/// A module install's progress, saved in DataDir/module.json beside install.json.
struct ModuleRecord {
  std::string deployment_id, source;  ///< the InstallState's job it belongs to
  std::string type;                   ///< the payload type: the module's name
  ModuleStep step = ModuleStep::install;
  RebootNeed reboot = RebootNeed::no;
  std::optional<bool> supports_rollback;  ///< asked once
  bool rebooted = false;                  ///< past a reboot: a rollback needs a rollback reboot
  bool success = false;                   ///< how it ends (cleanup, done)
  std::string error;                      ///< the first failure
};

/// Parses NeedsArtifactReboot's output ("No", "Automatic", "Yes"; nothing is "No"). Errors:
/// Errc::protocol naming the answer.
Result<RebootNeed> parse_reboot_need(std::string_view output);
/// Parses SupportsRollback's output ("Yes", "No"; nothing is "No"). Errors: Errc::protocol.
Result<bool> parse_supports_rollback(std::string_view output);

/// The step to run after a restart that found the record in `step`.
ModuleStep resume_step(const ModuleRecord& r);

/// Calls the module with a state; returns its output. Errors: a non-zero exit, a timeout, a module
/// that cannot be started, each naming the module and the state.
using ModuleCall = std::function<Result<std::string>(std::string_view state)>;
/// Persists the record (before each step is run).
using SaveRecord = std::function<Result<void>(const ModuleRecord&)>;

struct ModuleOutcome {
  bool reboot = false;    ///< reboot now; the record says where to go on
  bool finished = false;  ///< done: record.success says how
};

/// Runs the steps from `rec.step` until a reboot is needed or the install is done (see the table
/// above). Errors: only the SaveRecord's (the module's own failures are the outcome).
Result<ModuleOutcome> drive(ModuleRecord& rec, const ModuleCall& call, const SaveRecord& save);

/// DataDir/module.json: saved atomically before each step. load: nothing when there is none;
/// errors name the file and what is wrong in it.
std::filesystem::path module_record_path(const AgentConfig& c);
Result<void> save_module_record(const AgentConfig& c, const ModuleRecord& r);
Result<std::optional<ModuleRecord>> load_module_record(const AgentConfig& c);

/// Calls `executable STATE work_dir` in work_dir with a deadline; the output is logged.
Result<std::string> call_module(const std::filesystem::path& executable, const std::filesystem::path& work_dir,
                                std::string_view state, std::chrono::milliseconds timeout, std::stop_token stop = {});

/// The Updater's module path (a friend of Updater).
class ModuleInstall {
 public:
  /// After the Updater found a module payload in the artifact of `job` (header), with the state
  /// `s` saved in downloading: runs Download, streams the artifact again into files/, then the
  /// module's states. Returns the report with `finished` set when the install ended without a
  /// reboot (success); nothing finished: reboot now (NeedsArtifactReboot Automatic). Errors as
  /// Updater::install(), with the state recorded as failed.
  static boost::asio::awaitable<Result<InstallReport>> install(Updater& u, const InstallJob& job, InstallState s,
                                                               const artifacts::Header& header,
                                                               const artifacts::ReaderOptions& ro,
                                                               const ProgressFn& progress);
  /// Updater::recover() for a module install: nothing when `s` is not one (the caller goes on with
  /// the rootfs table). Blocks while the module runs.
  static std::optional<Result<Recovery>> recover(Updater& u, const InstallState& s);

  /// Whether `s` is an update module's install waiting for its states (after its download).
  static bool owns(const Updater& u, const InstallState& s);

  /// DataDir/modules/v3/payloads/0000/tree.
  static std::filesystem::path work_dir(const AgentConfig& c);
};

}  // namespace tern::agent
