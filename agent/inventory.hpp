// The device's inventory: what it is and runs, published retained on tern/devices/{id}/inventory.
//
// Built-in attributes: device_type, artifact_name, the installed provides (as they are named, e.g.
// rootfs-image.version), agent_version, kernel, hostname, rootfs_a_size and rootfs_b_size, plus the
// key=value lines printed by every executable in InventoryScriptsDir (Mender's convention: a key
// printed several times gets its values joined with ","). A failing script is logged and skipped.
#pragma once

#include "agent/agent_config.hpp"
#include "agent/boot/slots.hpp"
#include "agent/state.hpp"
#include "common/protocol.hpp"

#include <stop_token>

namespace tern::agent {

inline constexpr const char* agent_version = "0.1.0";

/// Collects the inventory now. Runs the inventory scripts, each bounded by
/// InventoryScriptTimeoutSeconds (killed with its process group when it passes); a stop request
/// kills the running script and skips the rest. Blocking: the daemon runs it on its pool.
protocol::Inventory collect_inventory(const AgentConfig& config, const Installed& installed, const Slots& slots,
                                      std::stop_token stop = {});

/// Parses inventory script output ("key=value" lines; others ignored) into `inv`.
void merge_inventory_output(std::string_view output, protocol::Inventory& inv);

}  // namespace tern::agent
