// The bootloader environment: the variables Mender's U-Boot and GRUB integrations read at power-on.
//
//   mender_boot_part       partition number to boot ("2" or "3")
//   mender_boot_part_hex   the same number in hex (U-Boot's `part` commands want hex)
//   upgrade_available      "1" while a new partition is on trial, "0" once committed or rolled back
//   bootcount              incremented by U-Boot on every boot while upgrade_available=1
//
// Backends: libubootenv on a device or file (redundant environments included), and GRUB's grubenv
// file through `grub-editenv`. Boards already integrated with Mender need no bootloader change.
//
// Thread safety: a BootEnv object is not thread-safe, and every call blocks on file I/O (run it on a
// worker pool, never on the io_context thread). Two processes must not write the same environment
// at the same time (the bootloader does not lock either).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "common/error.hpp"

namespace tern::agent {

/// Names of Mender's variables.
namespace bootvar {
inline constexpr const char* boot_part = "mender_boot_part";
inline constexpr const char* boot_part_hex = "mender_boot_part_hex";
inline constexpr const char* upgrade_available = "upgrade_available";
inline constexpr const char* bootcount = "bootcount";
}  // namespace bootvar

class BootEnv {
 public:
  virtual ~BootEnv() = default;

  /// Every variable of the environment, read fresh from storage (never cached).
  /// Errors: Errc::io naming the file when it cannot be read or no valid copy exists.
  virtual Result<std::map<std::string, std::string>> read() = 0;

  /// Sets all `vars` in ONE store: either all of them reach storage or none (for a redundant U-Boot
  /// environment the other copy keeps the previous state until the new one is complete). Variables
  /// not named keep their values; an empty value removes the variable. Errors: Errc::io naming
  /// the file; Errc::invalid_argument for a name containing '=' or a value containing a newline.
  virtual Result<void> write(const std::map<std::string, std::string>& vars) = 0;

  /// What this environment is stored in, for messages ("u-boot env /dev/mmcblk0:0x400000").
  virtual std::string describe() const = 0;
};

/// A U-Boot environment in one or two places (two: redundant, as U-Boot's CONFIG_ENV_OFFSET_REDUND).
/// `device2` empty: a single copy. `sector_size` 0: the environment size (a file or block device).
struct UBootEnvConfig {
  std::string device1;
  std::uint64_t offset1 = 0;
  std::string device2;
  std::uint64_t offset2 = 0;
  std::uint64_t size = 0x4000;
  std::uint64_t sector_size = 0;
};

/// Opens (without reading yet) a U-Boot environment through libubootenv. Errors: Errc::invalid_argument
/// for an empty device1 or a zero size; Errc::io if libubootenv refuses the configuration.
Result<std::unique_ptr<BootEnv>> open_uboot_env(const UBootEnvConfig& config);

/// The same from a file in /etc/fw_env.config format: one or two lines
/// `DEVICE OFFSET SIZE [SECTOR_SIZE [SECTORS]]`, '#' comments. As in U-Boot's fw_env and
/// libubootenv, OFFSET takes C prefixes (0x hex, 0 octal, else decimal) while SIZE and SECTOR_SIZE
/// are always hex ("4000" is 0x4000).
/// Errors: Errc::io (unreadable file), Errc::invalid_argument (a malformed line, with its number).
Result<std::unique_ptr<BootEnv>> open_uboot_env_from_file(const std::filesystem::path& fw_env_config);
/// Parses an fw_env.config text; `origin` names it in error messages.
Result<UBootEnvConfig> parse_fw_env_config(std::string_view text, std::string_view origin);

/// A GRUB environment block file, read and written with `grub-editenv FILE list|set|unset`.
/// The file must exist (create it with `grub-editenv FILE create`). Errors: Errc::not_found.
Result<std::unique_ptr<BootEnv>> open_grub_env(const std::filesystem::path& grubenv);

/// mender_boot_part as a number. Errors: Errc::not_found when unset, Errc::invalid_argument when
/// not a positive decimal number (the message quotes the value).
Result<int> boot_part_number(const std::map<std::string, std::string>& vars);

/// The variables an install sets to try partition `part` on the next boot:
/// mender_boot_part=N, mender_boot_part_hex=<hex N>, upgrade_available=1, bootcount=0.
std::map<std::string, std::string> vars_for_trial(int part);
/// The variables a commit sets: upgrade_available=0, bootcount=0.
std::map<std::string, std::string> vars_for_commit();
/// The variables a rollback before reboot sets: mender_boot_part(_hex)=`part` (the running one),
/// upgrade_available=0, bootcount=0.
std::map<std::string, std::string> vars_for_rollback(int part);

}  // namespace tern::agent
