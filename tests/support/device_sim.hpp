// A simulated A/B device in a directory: a GPT disk image, a file-backed redundant U-Boot
// environment with Mender's variables, and a boot() that does what U-Boot with Mender's integration
// does at power-on (bootcount, bootlimit, altbootcmd), then "boots" by writing the kernel command line
// the agent reads to find its running partition.
//
//   DIR/disk.img         GPT: 1 "boot" (1 MiB), 2 "rootfs-a", 3 "rootfs-b", 4 "data"
//   DIR/uboot-env.0      first copy of the environment  (mkenvimage -r, 16 KiB)
//   DIR/uboot-env.1      second copy (redundant)
//   DIR/fw_env.config    points libubootenv (and fw_printenv -c) at both copies
//   DIR/uboot-env.txt    the default environment the copies were made from (mkenvimage input)
//   DIR/cmdline          written by boot(): "root=/dev/sim-disk-p<N> rootwait"
//   DIR/mountinfo        written by boot(): "/" mounted from /dev/sim-disk-p<N>
//   DIR/booted           written by boot(): "<N> <PARTUUID>"
//
// The simulator reads and writes the environment through the agent's own BootEnv (libubootenv),
// so it sees exactly what the agent stored. Not thread-safe; blocking.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

#include "agent/boot/bootenv.hpp"
#include "agent/boot/partitions.hpp"
#include "common/error.hpp"

namespace tern::test {

struct DeviceSimOptions {
  std::uint64_t rootfs_mib = 16;  ///< size of each of rootfs-a and rootfs-b
  std::uint64_t data_mib = 8;     ///< size of the data partition
  /// Written to rootfs-a as the factory image; empty: a small marker "tern-sim initial rootfs-a\n".
  std::filesystem::path initial_image;
};

/// The kernel's name for partition N of the simulated disk: "/dev/sim-disk-p<N>".
std::string sim_device_name(int number);

/// How boot() names the root partition on the kernel command line.
enum class RootStyle {
  device,    ///< root=/dev/sim-disk-p<N>
  partuuid,  ///< root=PARTUUID=<uuid>
};

/// What boot() did.
struct SimBoot {
  int partition = 0;            ///< the partition booted (2 or 3)
  std::string partuuid;         ///< its GPT PARTUUID
  bool ran_altbootcmd = false;  ///< bootcount passed bootlimit: the bootloader switched back
};

class DeviceSim {
 public:
  /// Creates a fresh device in `dir` (created if missing; existing files of the device are replaced).
  /// Needs sfdisk and mkenvimage. Errors name the step and the command output.
  static Result<DeviceSim> create(const std::filesystem::path& dir, const DeviceSimOptions& options = {});
  /// Opens a device created earlier (checks that disk.img and fw_env.config exist).
  static Result<DeviceSim> open(const std::filesystem::path& dir);

  /// Power-on: if upgrade_available=1, bootcount += 1 and save; if bootcount > bootlimit, run
  /// altbootcmd (switch mender_boot_part 2<->3 and mender_boot_part_hex, upgrade_available=0, save);
  /// then boot mender_boot_part: write cmdline, mountinfo and booted. Errors: Errc::io (environment),
  /// Errc::invalid_argument (mender_boot_part names no rootfs partition). A new device has not
  /// booted yet: call boot() once before starting an agent on it.
  Result<SimBoot> boot(RootStyle style = RootStyle::device);

  /// The environment's variables (read fresh).
  Result<std::map<std::string, std::string>> env() const;
  /// The environment, for writing as an agent would.
  Result<std::unique_ptr<agent::BootEnv>> boot_env() const;

  /// Partition N (1..4) of disk.img.
  Result<agent::PartitionRef> partition(int number) const;
  /// A slot as an agent configuration would name it: 0 -> partition 2, 1 -> partition 3.
  Result<agent::SlotIdentity> slot(int index) const;
  /// Where the agent should look for the running partition (cmdline and mountinfo in dir).
  agent::ActiveDetect active_detect() const;

  const std::filesystem::path& dir() const { return dir_; }
  std::filesystem::path disk() const { return dir_ / "disk.img"; }
  std::filesystem::path fw_env_config() const { return dir_ / "fw_env.config"; }
  std::filesystem::path cmdline() const { return dir_ / "cmdline"; }
  std::filesystem::path mountinfo() const { return dir_ / "mountinfo"; }

 private:
  explicit DeviceSim(std::filesystem::path dir) : dir_(std::move(dir)) {}
  std::filesystem::path dir_;
};

/// Mender's U-Boot defaults as the simulator stores them (mender_boot_part=2, bootlimit=1, ...).
std::map<std::string, std::string> mender_default_env();

}  // namespace tern::test
