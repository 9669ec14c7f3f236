// The tern-agent command line:
//
//   tern-agent [--config FILE] [--log-level L] COMMAND
//     daemon                 run as a fleet member (MQTT deployments, status, inventory)
//     install FILE|URL       install an artifact into the standby partition and switch to it
//         [--reboot-exit-code]  exit with 4 when a reboot is needed to finish (like mender)
//     resume                 continue after a reboot: health check, then commit or roll back
//     commit                 commit the running trial partition
//     rollback               give up on the new partition (reboot to finish)
//     show-artifact          the installed artifact's name
//     show-provides          the installed artifact's provides, key=value lines
//     send-inventory         ask the running daemon to send its inventory now (SIGUSR2)
//
// Exit status: 0 success, 1 failure (the message names what went wrong), 2 usage, 4 reboot needed
// (with --reboot-exit-code), 75 the daemon needs a reboot and RebootCommand is empty.
#pragma once

namespace tern::agent {

inline constexpr int exit_reboot_needed = 4;
inline constexpr int exit_reboot_requested = 75;

int cli_main(int argc, char** argv);

}  // namespace tern::agent
