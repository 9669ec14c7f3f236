// The agent's own error codes: the outcomes its callers branch on. Everything else is a tern::Errc
// (io, protocol, timeout, cancelled, ...) with a message saying what was being done.
#pragma once

#include "common/error.hpp"

#include <string>
#include <system_error>

namespace tern::agent {

enum class AgentErrc {
  already_installed = 1,  ///< the artifact is the one running: nothing was written
  source_changed,         ///< the artifact on the server changed mid-download (ETag): start over
  busy,                   ///< another install is in progress, or another tern-agent holds DataDir
  interrupted,            ///< the install was stopped from outside (SIGTERM, a newer or withdrawn
                          ///< deployment); its state stays resumable
  range_ignored,          ///< the server answered a Range request with the whole file (no Range support)
};

const std::error_category& agent_category() noexcept;
inline std::error_code make_error_code(AgentErrc e) noexcept { return {static_cast<int>(e), agent_category()}; }

inline Error fail(AgentErrc code, std::string message) { return Error(make_error_code(code), std::move(message)); }

/// Whether `e` carries `code` (compares the std::error_code, never the message).
inline bool is(const Error& e, AgentErrc code) { return e.code() == make_error_code(code); }

}  // namespace tern::agent

template <>
struct std::is_error_code_enum<tern::agent::AgentErrc> : std::true_type {};
