// The A/B pair as the configuration names it, resolved to partitions once at start-up.
#pragma once

#include "agent/agent_config.hpp"
#include "agent/boot/partitions.hpp"
#include "common/error.hpp"

namespace tern::agent {

/// Both root partitions and their mender_boot_part values.
struct Slots {
  SlotIdentity a, b;
  int part_a = 0, part_b = 0;  ///< their mender_boot_part values
};

/// Resolves RootfsPartA/B (device paths, or numbers/labels on Disk via libfdisk), RootDeviceA/B and
/// BootPartA/B. Blocking (reads the partition table). Errors: a partition that cannot be found, or
/// both slots mapping to one mender_boot_part value.
Result<Slots> resolve_slots(const AgentConfig& cfg);

}  // namespace tern::agent
