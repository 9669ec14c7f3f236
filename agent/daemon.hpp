// `tern-agent daemon`: the device as a fleet member.
//
// One persistent MQTT 5 session over TLS (client certificate, CN = DeviceID) with a retained
// last will on tern/devices/{id}/presence. The retained tern/devices/{id}/deployment starts an
// install as soon as it arrives; status events (QoS 1, sequence-numbered, kept in Paho's file
// persistence while the broker is away and across restarts) report every step; the inventory is
// published at start, after each deployment and when it changes. After a reboot the daemon resumes
// the update state machine (health check, commit or roll back) and reports the outcome.
//
// Signals: SIGTERM/SIGINT stop cleanly (a download in progress is retried on the next start, up to
// InstallAttempts); SIGUSR2 sends the inventory now.
#pragma once

#include "agent/agent_config.hpp"

namespace tern::agent {

/// Runs until SIGTERM/SIGINT (returns 0), a fatal error (1), or a reboot is needed and
/// RebootCommand is empty (returns 75, exit_reboot_requested).
int run_daemon(const AgentConfig& config);

}  // namespace tern::agent
