#include "agent/boot/slots.hpp"

namespace tern::agent {

Result<Slots> resolve_slots(const AgentConfig& cfg) {
  Slots s;
  auto resolve = [&](const std::string& spec, const std::string& device_name, SlotIdentity& out) -> Result<void> {
    auto part = cfg.disk.empty() ? partition_from_path(spec) : partition_on_disk(cfg.disk, spec);
    if (!part) return part.error().context("resolving root partition '" + spec + "'");
    out.partition = *part;
    out.device_name = !device_name.empty() ? device_name : (cfg.disk.empty() ? spec : std::string());
    return {};
  };
  if (auto r = resolve(cfg.rootfs_a, cfg.root_device_a, s.a); !r) return r.error();
  if (auto r = resolve(cfg.rootfs_b, cfg.root_device_b, s.b); !r) return r.error();
  s.part_a = cfg.boot_part_a ? cfg.boot_part_a : (s.a.partition.number ? s.a.partition.number : 2);
  s.part_b = cfg.boot_part_b ? cfg.boot_part_b : (s.b.partition.number ? s.b.partition.number : 3);
  if (s.part_a == s.part_b)
    return fail(Errc::invalid_argument, "both root partitions map to mender_boot_part " + std::to_string(s.part_a) +
                                            ": set BootPartA and BootPartB");
  return s;
}

}  // namespace tern::agent
