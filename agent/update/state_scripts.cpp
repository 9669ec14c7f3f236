#include "agent/update/state_scripts.hpp"

#include "common/file.hpp"
#include "common/log.hpp"
#include "common/process.hpp"

#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <regex>

namespace tern::agent {
namespace fs = std::filesystem;
using std::chrono::milliseconds;

namespace {

constexpr int retry_later_exit = 21;

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ' || s.back() == '\t')) s.pop_back();
  std::size_t i = 0;
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
  return s.substr(i);
}

bool is_artifact_state(ScriptState s) { return s != ScriptState::Download; }

/// Sleeps `d`, or less when a stop is requested; returns false then.
bool sleep_for(milliseconds d, const std::stop_token& stop) {
  std::mutex m;
  std::condition_variable_any cv;
  std::unique_lock lock(m);
  return !cv.wait_for(lock, stop, d, [] { return false; }) && !stop.stop_requested();
}

}  // namespace

std::string_view to_string(ScriptState s) {
  switch (s) {
    case ScriptState::Download: return "Download";
    case ScriptState::ArtifactInstall: return "ArtifactInstall";
    case ScriptState::ArtifactReboot: return "ArtifactReboot";
    case ScriptState::ArtifactCommit: return "ArtifactCommit";
    case ScriptState::ArtifactRollback: return "ArtifactRollback";
    case ScriptState::ArtifactRollbackReboot: return "ArtifactRollbackReboot";
    case ScriptState::ArtifactFailure: return "ArtifactFailure";
  }
  return "?";
}

std::string_view to_string(ScriptAction a) {
  switch (a) {
    case ScriptAction::Enter: return "Enter";
    case ScriptAction::Leave: return "Leave";
    case ScriptAction::Error: return "Error";
  }
  return "?";
}

StateScripts::StateScripts(StateScriptOptions options, DeploymentLog& log) : options_(std::move(options)), log_(log) {}

Result<void> StateScripts::run(ScriptState state, ScriptAction action, std::stop_token stop, bool ignore_errors) {
  const std::string name = std::string(to_string(state)) + "_" + std::string(to_string(action));
  const fs::path dir = is_artifact_state(state) ? options_.artifact_dir : options_.rootfs_dir;
  if (dir.empty()) return {};
  ignore_errors = ignore_errors || action == ScriptAction::Error;

  // Collect: STATE_ACTION_NN[_desc], executable regular files, in name order.
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return {};  // no directory, no scripts (as Mender)
  if (auto v = dir / "version"; fs::exists(v, ec)) {
    auto text = read_file(v, 64);
    if (!text) return text.error().context(name);
    if (trim(*text) != "3")
      return fail(Errc::io, name + ": " + v.string() + " says state script version '" + trim(*text) +
                                "'; only version 3 scripts run (as in Mender 3 and 4)");
  }
  const std::regex pattern(name + "_[0-9][0-9](_\\S+)?");
  std::vector<fs::path> scripts;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const auto file = e.path().filename().string();
    if (!std::regex_match(file, pattern)) continue;
    if (!e.is_regular_file(ec) || ::access(e.path().c_str(), X_OK) != 0) {
      log_.line('W', "state script " + e.path().string() + " is not an executable file: skipped");
      continue;
    }
    scripts.push_back(e.path());
  }
  if (ec) return fail(Errc::io, name + ": reading " + dir.string() + ": " + ec.message());
  std::sort(scripts.begin(), scripts.end());

  std::string failures;
  for (const auto& script : scripts) {
    const auto started = std::chrono::steady_clock::now();
    for (int run = 1;; ++run) {
      log::info("running state script ", script.string());
      log_.line('I', "running state script " + script.string() + (run > 1 ? " (retry " + std::to_string(run - 1) + ")" : ""));
      auto out = run_program({script.string()},
                             {.timeout = options_.timeout, .stop = stop, .max_output = options_.max_output});
      if (out && !out->output.empty()) log_.line('I', script.filename().string() + ": " + trim(out->output));
      if (out && out->stopped) {
        log_.line('W', "state script " + script.filename().string() + " stopped (the agent is stopping)");
        return fail(Errc::cancelled, name + ": stopped");
      }
      if (out && out->exit_code == retry_later_exit && !out->timed_out) {
        if (std::chrono::steady_clock::now() - started + options_.retry_interval > options_.retry_timeout) {
          const std::string why = "state script " + script.filename().string() + " asked to retry later for longer than " +
                                  std::to_string(options_.retry_timeout.count() / 1000) +
                                  " s (StateScriptRetryTimeoutSeconds)";
          log_.line('E', why);
          if (!ignore_errors) return fail(Errc::io, why);
          failures += (failures.empty() ? "" : "; ") + why;
          break;
        }
        log_.line('I', "state script " + script.filename().string() + " exited with 21 (retry later): again in " +
                           std::to_string(options_.retry_interval.count() / 1000) + " s");
        if (!sleep_for(options_.retry_interval, stop)) return fail(Errc::cancelled, name + ": stopped");
        continue;
      }
      if (out && out->exit_code == 0 && !out->timed_out) {
        log_.line('I', "state script " + script.filename().string() + " succeeded");
        break;
      }
      const std::string why = "state script " + script.filename().string() + " " +
                              (out ? (out->timed_out ? describe_exit(*out, options_.timeout)
                                                     : "failed with " + describe_exit(*out, options_.timeout))
                                   : "could not run: " + out.error().message());
      log_.line('E', why);
      log::warn(why);
      if (!ignore_errors) return fail(Errc::io, why);
      failures += (failures.empty() ? "" : "; ") + why;
      break;
    }
  }
  if (!failures.empty()) log::warn(name, ": ignored: ", failures);
  return {};
}

Result<void> StateScripts::store_artifact_scripts(const std::vector<std::pair<std::string, std::string>>& scripts) {
  const fs::path& dir = options_.artifact_dir;
  if (dir.empty()) return {};
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (ec) return fail(Errc::io, "removing the previous artifact's scripts in " + dir.string() + ": " + ec.message());
  fs::create_directories(dir, ec);
  if (ec) return fail(Errc::io, "creating " + dir.string() + ": " + ec.message());
  for (const auto& [name, content] : scripts) {
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == ".." || name == "version")
      return fail(Errc::invalid_argument, "the artifact's state script name '" + name + "' is not a plain file name");
    const fs::path p = dir / name;
    if (auto r = write_file_atomic(p, content); !r) return r.error().context("storing the artifact's state scripts");
    fs::permissions(p, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec, ec);
    if (ec) return fail(Errc::io, "making " + p.string() + " executable: " + ec.message());
  }
  if (auto r = write_file_atomic(dir / "version", "3\n"); !r) return r.error();
  if (!scripts.empty()) log_.line('I', "stored " + std::to_string(scripts.size()) + " artifact state script(s) in " + dir.string());
  return {};
}

}  // namespace tern::agent
