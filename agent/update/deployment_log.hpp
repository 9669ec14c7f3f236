// The log of each deployment on the device, as Mender keeps it: the agent's own lines for the
// deployment (state transitions, errors, what it decided) and the output of the state scripts it
// ran, in DataDir/deployment-logs/<deployment id>.log ("local.log" for a command-line install).
// It lives on the data partition, so it survives the reboot into the new partition and a rollback;
// the daemon sends it to the fleet when the deployment fails.
//
// Bounded like Mender's (1 MiB): past the limit the middle is dropped, keeping the first lines
// (what was started, and how) and the newest ones, with a line saying how many bytes went. The
// newest `keep` logs are kept; older ones are deleted when a new deployment begins.
//
// Lines: "2026-11-30T18:00:00Z I text". Writes are appended with write(2) (no fsync per line:
// sync() flushes, the Updater calls it before a reboot).
//
// Thread-safe: the install's stages and the blocking pool may write at once.
#pragma once

#include "common/error.hpp"

#include <cstddef>
#include <filesystem>
#include <mutex>
#include <string>
#include <string_view>

namespace tern::agent {

class DeploymentLog {
 public:
  static constexpr std::size_t default_limit = 1u << 20;

  /// `dir` is created on the first write. `limit` bounds each log; `keep` how many logs are kept.
  explicit DeploymentLog(std::filesystem::path dir, std::size_t limit = default_limit, std::size_t keep = 5);

  /// Makes `deployment_id` ("" for a command-line install) the log written from now on. `fresh`
  /// starts it empty (a new deployment); otherwise it is appended to (after a restart or reboot).
  void begin(const std::string& deployment_id, bool fresh);
  /// Appends one line (each line of a multi-line `text` gets its own prefix) to the current log;
  /// nothing when no deployment was begun. `level` is one letter: I, W, E.
  void line(char level, std::string_view text);
  /// Flushes the current log to the disk (before a reboot).
  void sync();

  /// The whole log of `deployment_id`. Errors: Errc::not_found when there is none, Errc::io.
  Result<std::string> read(const std::string& deployment_id) const;
  std::filesystem::path path_of(const std::string& deployment_id) const;
  const std::filesystem::path& dir() const { return dir_; }

 private:
  void compact_locked();
  void prune_locked();

  std::filesystem::path dir_;
  std::size_t limit_, keep_;
  mutable std::mutex m_;
  std::filesystem::path current_;  // empty: no deployment begun
};

}  // namespace tern::agent
