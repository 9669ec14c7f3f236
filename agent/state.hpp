// The agent's persistent state: the install in progress (or the last one finished), the status
// sequence counter and the deployments already run. Kept as JSON files in the data directory and
// replaced atomically (write a temporary, fsync, rename, fsync the directory), so a power cut at any
// instant leaves either the old or the new file, never a torn one.
//
// Every transition of the update state machine (agent/update/state_machine.hpp) is saved here
// before it is acted on.
//
// Thread safety: one StateStore per process; the daemon calls it from its blocking pool's serial
// executor, one call at a time. next_seq(), save_resume() and save_resume_prefix() may be called
// from any thread.
#pragma once

#include "common/error.hpp"

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tern::agent {

/// Where an install stands. See state_machine.hpp for what each means after a restart.
enum class Phase {
  idle,          ///< nothing in progress
  downloading,   ///< streaming the artifact into the standby partition
  paused,        ///< payload written and synced, boot untouched; waiting for the reboot window or
                 ///< the operator's go-ahead (agent/update/reboot_gate.hpp)
  switching,     ///< payload written and synced; the boot switch is being stored
  switched,      ///< the bootloader will boot the new partition once (upgrade_available=1)
  committing,    ///< the new partition is healthy; the commit is being stored
  rolling_back,  ///< giving up on the new partition; switching back to the previous one
  done,          ///< finished: `success` says how; `reported` once the fleet knows
};
std::string_view to_string(Phase p);
Result<Phase> parse_phase(std::string_view word);

/// One install, as it travels from the deployment message (or the command line) through the
/// pipeline into the state file, and back out of it when an interrupted install runs again.
struct InstallJob {
  std::string deployment_id;  ///< empty for `tern-agent install` from the command line
  std::string artifact_name;  ///< the name the deployment announces (empty: not announced)
  std::string source;         ///< file path or http(s) URL
  std::uint64_t size = 0;     ///< the artifact's size when known (0: unchecked)
  std::string sha256;         ///< the artifact's SHA-256 when known (empty: unchecked)
  std::uint32_t attempt = 1;  ///< 1 for the first try of this deployment
  std::uint64_t max_rate = 0;  ///< the deployment's download cap in bytes per second (0: none)
  std::string reboot;         ///< the deployment's reboot policy (common/reboot_policy.hpp; empty: immediate)
  bool operator==(const InstallJob&) const = default;
};

struct InstallState {
  Phase phase = Phase::idle;
  InstallJob job;             ///< what is (or was last) being installed
  std::string artifact_name;  ///< the artifact being installed, from its verified header
  std::map<std::string, std::string> provides;  ///< its provides, applied on commit
  std::vector<std::string> clears_provides;     ///< its clears_artifact_provides patterns
  int target_part = 0;    ///< mender_boot_part of the partition being installed
  int previous_part = 0;  ///< mender_boot_part of the partition it was installed from
  bool success = false;       ///< for done
  bool already_installed = false;  ///< for done: nothing to do, the artifact was already there
  std::string error;          ///< for done (failure) and rolling_back: why
  bool aborted = false;       ///< for done: withdrawn or replaced by a newer deployment
  std::uint64_t final_seq = 0;  ///< for done: the final status's sequence number, once allocated; a
                                ///< status sent again after a power cut reuses it (receivers dedup)
  bool reported = true;       ///< for done: whether the final status reached the daemon's queue
  std::uint64_t bytes_fetched = 0;  ///< artifact bytes the download received (for the final status)
  std::uint64_t bytes_reused = 0;   ///< payload bytes an adaptive install built locally (likewise)
  std::int64_t updated = 0;   ///< Unix time of the last transition
};

/// Where an interrupted download can go on from (resume.json; the artifact's prefix is kept beside
/// it in resume-prefix.bin). Written only after the partition holds, synced, every payload byte
/// before the checkpoint.
struct ResumeRecord {
  std::string deployment_id;  ///< of the install it belongs to (empty from the command line)
  std::string source;         ///< file path or URL
  std::string checkpoint;     ///< artifacts::Checkpoint::serialize()
  std::string etag, last_modified;  ///< download validators at the checkpoint (If-Range)
  std::uint64_t total = 0;    ///< artifact size, when the server said it
};

/// What the running system is: the artifact committed last and its provides.
struct Installed {
  std::string artifact_name;
  std::map<std::string, std::string> provides;  ///< without artifact_name itself
};

/// Mender's rule for clears_artifact_provides: patterns with `*` wildcards; matching keys of the old
/// provides are dropped before the new ones are added. Without patterns (old artifacts) all old
/// provides are cleared. Returns the provides after committing `artifact`.
std::map<std::string, std::string> merge_provides(const std::map<std::string, std::string>& old_provides,
                                                  const std::map<std::string, std::string>& new_provides,
                                                  const std::vector<std::string>& clears);
/// `*` matches any run of characters.
bool glob_match(std::string_view pattern, std::string_view text);

/// An exclusive lock on DIR/lock (flock), held until it is destroyed or the process ends, a kill
/// or power cut included: one tern-agent at a time drives a data directory, so a command run by
/// hand cannot race the daemon (or another command) through the same install.
class DirLock {
 public:
  /// Errors: Errc::invalid_argument when another process holds it (the message says so), Errc::io.
  static Result<DirLock> acquire(const std::filesystem::path& dir);
  DirLock(DirLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  DirLock& operator=(DirLock&& o) noexcept;
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;
  ~DirLock();

 private:
  explicit DirLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

class StateStore {
 public:
  /// Opens (creating) the data directory. Errors: the directory cannot be created.
  static Result<StateStore> open(const std::filesystem::path& dir);

  const std::filesystem::path& dir() const { return dir_; }

  /// The install state; idle if there is no file yet. Errors: a file that is not valid state.
  Result<InstallState> load_install() const;
  Result<void> save_install(const InstallState& s);

  /// The installed artifact; `fallback_name` when nothing was committed yet (first boot).
  Result<Installed> load_installed(const std::string& fallback_name) const;
  Result<void> save_installed(const Installed& i);

  /// Allocates the next status sequence number: strictly increasing, also across restarts and
  /// power cuts. Numbers are reserved on disk a block at a time (`seq` holds the block's end) and
  /// handed out from memory: only a call that finds the reservation used up writes (and fsyncs)
  /// the file. Thread-safe.
  Result<std::uint64_t> next_seq();
  /// Reserves the next block now if less than half of the current one is left (or none was
  /// reserved yet): the daemon calls it on its blocking pool, so next_seq() never writes on the io
  /// thread. Thread-safe.
  Result<void> reserve_seq();
  /// Less than half of the reserved block is left. Thread-safe.
  bool seq_running_low() const;

  /// The saved resume point, or nothing when none is saved. Errors: an unreadable or malformed file.
  Result<std::optional<ResumeRecord>> load_resume() const;
  /// May be called from another thread than the other members (the install pipeline's writer).
  Result<void> save_resume(const ResumeRecord& r) const;
  /// The artifact's prefix for resume.json. Errors: missing or unreadable file.
  Result<std::string> load_resume_prefix() const;
  /// May be called from another thread than the other members (the install pipeline's reader).
  Result<void> save_resume_prefix(std::string_view prefix) const;
  /// Removes resume.json and resume-prefix.bin (no error if they do not exist).
  Result<void> clear_resume();

  /// Deployments this device has finished (most recent last, bounded).
  Result<std::vector<std::string>> finished_deployments() const;
  Result<void> add_finished_deployment(const std::string& id);

 private:
  Result<void> reserve_seq_locked(std::uint64_t in_reserve);
  struct Sequence {
    std::mutex m;
    std::uint64_t next = 0, end = 0;  ///< numbers in [next, end) are reserved on disk
  };
  explicit StateStore(std::filesystem::path dir) : dir_(std::move(dir)), seq_(std::make_shared<Sequence>()) {}
  std::filesystem::path dir_;
  std::shared_ptr<Sequence> seq_;
};

}  // namespace tern::agent
