// Helpers every test executable shares: temporary directories, free loopback ports, child processes,
// shell commands, and a development PKI made once per test process with scripts/gen-certs.
// Nothing here sleeps for readiness: wait_for_port() polls, and every wait has a deadline.
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace tern::test {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

/// The source tree (scripts/, mosquitto.conf, tests/data/).
fs::path source_dir();
/// The build tree (binaries: build_dir() / "agent/tern-agent" and so on).
fs::path build_dir();

/// A fresh directory under $TMPDIR, removed with its contents on destruction
/// unless TERN_KEEP_TMP is set in the environment (for debugging a failure).
class TempDir {
 public:
  explicit TempDir(std::string_view prefix = "tern-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }
  fs::path operator/(const fs::path& p) const { return path_ / p; }

 private:
  fs::path path_;
};

/// An ephemeral TCP port on 127.0.0.1 that was free a moment ago (bind to 0, read, close).
int free_port();

/// Polls until something accepts TCP connections on 127.0.0.1:port; false after `timeout`.
bool wait_for_port(int port, std::chrono::milliseconds timeout = 10s);

/// A child process with stdout and stderr appended to a log file. Killed (SIGKILL) and reaped on
/// destruction if still running.
class Process {
 public:
  /// argv[0] is looked up in PATH if it has no slash. `env` entries are added to the environment.
  Process(std::vector<std::string> argv, fs::path log_file,
          std::map<std::string, std::string> env = {});
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  int pid() const { return pid_; }
  bool running();
  /// Sends `sig` (default SIGTERM) and waits up to `timeout` for the exit; SIGKILL after that.
  /// Returns the exit status as from waitpid (use WIFEXITED etc.), or -1 if already reaped.
  int stop(int sig = 15, std::chrono::milliseconds timeout = 10s);
  /// Sends SIGKILL and reaps: a power cut for the process.
  void kill();
  /// Waits for the process to exit on its own; nullopt if it is still running after `timeout`.
  std::optional<int> wait(std::chrono::milliseconds timeout);
  const fs::path& log_file() const { return log_; }
  /// The log's contents (for failure messages).
  std::string log() const;

 private:
  int pid_ = -1;
  int status_ = -1;
  fs::path log_;
};

struct CommandResult {
  int exit_code;       ///< exit status, or 128+signal
  std::string output;  ///< stdout and stderr interleaved
};
/// Runs `command` through /bin/sh -c and captures its output.
CommandResult run(const std::string& command);

/// Single-quotes `s` for /bin/sh.
std::string shell_quote(std::string_view s);

/// A development PKI made once per test process with scripts/gen-certs (device-1..device-5 and
/// the other identities listed there); the same directory for every caller.
const fs::path& certs();

/// Reads a whole file; throws std::runtime_error naming the path if it cannot.
std::string read_file(const fs::path& p);
/// Writes a whole file; throws std::runtime_error naming the path if it cannot.
void write_file(const fs::path& p, std::string_view contents);

/// Whether process `pid` runs: not gone, and not a zombie waiting for a reaper (a killed orphan
/// stays one where the container's init does not reap).
bool process_alive(int pid);

}  // namespace tern::test
