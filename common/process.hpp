// Runs a helper program (grub-editenv, a health check, an inventory script, the reboot command)
// without a shell, captures its output, and bounds it: a deadline, a stop request, and a cap on the
// output kept.
//
// The child is the leader of a new process group. When the deadline passes or a stop is requested,
// the whole group gets SIGTERM, and SIGKILL after `kill_grace`: a hung script and whatever it
// started are gone before the call returns. A program that exits normally leaves any background
// children it started alone (a state script may restart a service).
//
// Blocking (the daemons run it on their blocking pool, never on an io thread); thread-safe.
#pragma once

#include "common/error.hpp"

#include <chrono>
#include <stop_token>
#include <string>
#include <vector>

namespace tern {

struct ProgramOptions {
  std::string input;                        ///< written to the program's stdin
  std::chrono::milliseconds timeout{0};     ///< 0: no deadline (only for short tools run by hand)
  std::stop_token stop;                     ///< a stop request ends the program as a timeout does
  std::chrono::milliseconds kill_grace{2000};  ///< between SIGTERM and SIGKILL of the group
  std::size_t max_output = 1u << 20;        ///< output bytes kept; the rest is read and dropped
  std::string cwd;                          ///< the program's working directory (empty: ours)
};

struct ProgramOutput {
  int exit_code = 0;      ///< exit status, or 128+signal
  std::string output;     ///< stdout and stderr interleaved (at most max_output bytes)
  bool timed_out = false;  ///< killed because the deadline passed
  bool stopped = false;    ///< killed because a stop was requested
};

/// Runs argv[0] (looked up in PATH) and waits for it within the options' bounds. A non-zero exit or
/// a timeout is not an error here (the caller decides from ProgramOutput); Errc::io only when the
/// program cannot be started, Errc::invalid_argument for an empty argv.
Result<ProgramOutput> run_program(const std::vector<std::string>& argv, const ProgramOptions& options = {});

/// "timed out after 30 s", "exit status 3", "killed by signal 9" (for messages).
std::string describe_exit(const ProgramOutput& out, std::chrono::milliseconds timeout);

}  // namespace tern
