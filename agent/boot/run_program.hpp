// Runs a helper program (grub-editenv, sfdisk, ...) without a shell and captures its output.
#pragma once

#include <string>
#include <vector>

#include "common/error.hpp"

namespace tern::agent {

struct ProgramOutput {
  int exit_code = 0;   ///< exit status, or 128+signal
  std::string output;  ///< stdout and stderr interleaved
};

/// Runs argv[0] (looked up in PATH) with `input` on its stdin and waits for it. A non-zero exit is
/// not an error here (the caller decides); Errc::io only when the program cannot be started.
/// Blocking; thread-safe.
Result<ProgramOutput> run_program(const std::vector<std::string>& argv, const std::string& input = {});

}  // namespace tern::agent
