// tern-agent's configuration: a JSON file (default /etc/tern/agent.conf), keys in Mender's style.
// Every key, its meaning and its default are listed in the README ("Agent configuration").
#pragma once

#include "common/error.hpp"

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace tern::agent {

struct AgentConfig {
  // Identity
  std::string device_id;    ///< DeviceID: the CN of the client certificate
  std::string device_type;  ///< DeviceType: matched against artifacts' device types
  std::filesystem::path data_dir = "/var/lib/tern";  ///< DataDir: state files, MQTT persistence

  // Partitions: paths, or numbers/labels on Disk
  std::string disk;          ///< Disk: a block device or disk image holding both root partitions
  std::string rootfs_a, rootfs_b;  ///< RootfsPartA/B: device paths, or numbers/labels on Disk
  std::string root_device_a, root_device_b;  ///< RootDeviceA/B: names in root= (default: the paths)
  std::filesystem::path cmdline = "/proc/cmdline";             ///< KernelCmdline
  std::filesystem::path mountinfo = "/proc/self/mountinfo";    ///< Mountinfo
  int boot_part_a = 0, boot_part_b = 0;  ///< BootPartA/B: mender_boot_part values (default: numbers)

  // Boot environment
  std::string bootloader = "uboot";  ///< Bootloader: "uboot" or "grub"
  std::filesystem::path fw_env_config = "/etc/fw_env.config";  ///< FwEnvConfig (uboot)
  std::filesystem::path grubenv = "/boot/grub/grubenv";       ///< GrubEnv (grub)

  // Update policy
  std::filesystem::path verify_key;        ///< ArtifactVerifyKey: PEM public key; set: signed only
  std::string health_check_command;        ///< HealthCheckCommand: run before commit; non-zero rolls back
  std::chrono::seconds health_check_timeout{300};  ///< HealthCheckTimeoutSeconds: past it the check failed
  std::string reboot_command = "reboot";   ///< RebootCommand: empty: exit with status 75 instead
  std::string initial_artifact_name = "unknown";  ///< ArtifactName: before the first commit

  // Network
  std::string server_ca;     ///< ServerCertificate: CA for the broker and the artifact server
  std::string client_cert;   ///< ClientCertificate: device certificate (MQTT, optional HTTPS)
  std::string client_key;    ///< ClientKey
  std::string broker_uri;    ///< BrokerURI: ssl://host:8883
  std::chrono::seconds keepalive{1200};         ///< KeepaliveSeconds: under cellular NAT timeouts
  std::chrono::seconds session_expiry{604800};  ///< SessionExpirySeconds
  std::chrono::milliseconds retry_min{500};     ///< RetryMinMilliseconds: first reconnect delay
  std::chrono::seconds retry_max{60};           ///< RetryMaxSeconds: largest reconnect delay
  std::chrono::seconds read_timeout{30};        ///< DownloadReadTimeoutSeconds
  int download_attempts = 100;                  ///< DownloadMaxAttempts
  std::chrono::seconds download_max_time{6 * 3600};  ///< DownloadMaxSeconds
  std::uint64_t download_max_rate = 0;  ///< DownloadMaxBytesPerSecond: bandwidth cap (0: none)
  std::uint32_t install_attempts = 3;   ///< InstallAttempts: tries of one deployment across restarts
  bool adaptive_install = true;  ///< AdaptiveInstall: build what it can from the running partition (README)

  // Reporting
  std::chrono::seconds progress_interval{5};     ///< ProgressIntervalSeconds: downloading events
  std::chrono::seconds inventory_interval{3600};  ///< InventoryPollIntervalSeconds
  std::filesystem::path inventory_scripts;       ///< InventoryScriptsDir
  std::chrono::seconds inventory_script_timeout{30};  ///< InventoryScriptTimeoutSeconds: per script

  // State scripts (Mender's keys and defaults; agent/update/state_scripts.hpp)
  std::filesystem::path rootfs_scripts_dir = "/etc/mender/scripts";  ///< RootfsScriptsPath: Download scripts
  std::filesystem::path artifact_scripts_dir;  ///< ArtifactScriptsPath: the artifact's scripts (default DataDir/scripts)
  std::chrono::seconds state_script_timeout{3600};         ///< StateScriptTimeoutSeconds: per script
  std::chrono::seconds state_script_retry_timeout{1800};   ///< StateScriptRetryTimeoutSeconds: exit 21 budget
  std::chrono::seconds state_script_retry_interval{60};    ///< StateScriptRetryIntervalSeconds
  // Update modules (agent/update/update_module.hpp)
  std::filesystem::path modules_dir = "/usr/share/mender/modules/v3";  ///< ModulesDir
  std::chrono::seconds module_timeout{14400};  ///< ModuleTimeoutSeconds: per call of a module

  /// Loads and validates a configuration file. Errors name the file and the key.
  static Result<AgentConfig> load(const std::filesystem::path& path);
  static Result<AgentConfig> parse(std::string_view text, const std::string& origin);
};

}  // namespace tern::agent
