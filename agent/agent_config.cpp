#include "agent/agent_config.hpp"

#include "common/config.hpp"
#include "common/log.hpp"

#include <charconv>

namespace tern::agent {
namespace {

Result<AgentConfig> from_config(const Config& c) {
  AgentConfig a;
  auto bad = [&](const Error& e) { return e.context(c.origin()); };
#define TERN_STR(field, key)                              \
  if (auto v = c.string(key, std::string(a.field)); !v) \
    return bad(v.error());                              \
  else                                                  \
    a.field = *v;
#define TERN_SECS(field, key)                  \
  if (auto v = c.seconds(key, a.field); !v)    \
    return bad(v.error());                     \
  else                                         \
    a.field = *v;
#define TERN_NUM(field, key)                                                   \
  if (auto v = c.u64(key, static_cast<std::uint64_t>(a.field)); !v)           \
    return bad(v.error());                                                     \
  else                                                                         \
    a.field = static_cast<decltype(a.field)>(*v);

  TERN_STR(device_id, "DeviceID")
  TERN_STR(device_type, "DeviceType")
  TERN_STR(data_dir, "DataDir")
  TERN_STR(disk, "Disk")
  TERN_STR(rootfs_a, "RootfsPartA")
  TERN_STR(rootfs_b, "RootfsPartB")
  TERN_STR(root_device_a, "RootDeviceA")
  TERN_STR(root_device_b, "RootDeviceB")
  TERN_STR(cmdline, "KernelCmdline")
  TERN_STR(mountinfo, "Mountinfo")
  TERN_NUM(boot_part_a, "BootPartA")
  TERN_NUM(boot_part_b, "BootPartB")
  TERN_STR(bootloader, "Bootloader")
  TERN_STR(fw_env_config, "FwEnvConfig")
  TERN_STR(grubenv, "GrubEnv")
  TERN_STR(verify_key, "ArtifactVerifyKey")
  TERN_STR(health_check_command, "HealthCheckCommand")
  TERN_SECS(health_check_timeout, "HealthCheckTimeoutSeconds")
  TERN_STR(reboot_command, "RebootCommand")
  TERN_STR(initial_artifact_name, "ArtifactName")
  TERN_STR(server_ca, "ServerCertificate")
  TERN_STR(client_cert, "ClientCertificate")
  TERN_STR(client_key, "ClientKey")
  TERN_STR(broker_uri, "BrokerURI")
  TERN_SECS(keepalive, "KeepaliveSeconds")
  TERN_SECS(session_expiry, "SessionExpirySeconds")
  TERN_SECS(retry_max, "RetryMaxSeconds")
  TERN_SECS(read_timeout, "DownloadReadTimeoutSeconds")
  TERN_NUM(download_attempts, "DownloadMaxAttempts")
  TERN_SECS(download_max_time, "DownloadMaxSeconds")
  TERN_NUM(download_max_rate, "DownloadMaxBytesPerSecond")
  TERN_NUM(install_attempts, "InstallAttempts")
  TERN_SECS(progress_interval, "ProgressIntervalSeconds")
  TERN_SECS(inventory_interval, "InventoryPollIntervalSeconds")
  TERN_STR(inventory_scripts, "InventoryScriptsDir")
  TERN_SECS(inventory_script_timeout, "InventoryScriptTimeoutSeconds")
  TERN_STR(rootfs_scripts_dir, "RootfsScriptsPath")
  TERN_STR(artifact_scripts_dir, "ArtifactScriptsPath")
  TERN_SECS(state_script_timeout, "StateScriptTimeoutSeconds")
  TERN_SECS(state_script_retry_timeout, "StateScriptRetryTimeoutSeconds")
  TERN_SECS(state_script_retry_interval, "StateScriptRetryIntervalSeconds")
  TERN_STR(modules_dir, "ModulesDir")
  TERN_SECS(module_timeout, "ModuleTimeoutSeconds")
#undef TERN_STR
#undef TERN_SECS
#undef TERN_NUM
  if (auto v = c.u64("RetryMinMilliseconds", static_cast<std::uint64_t>(a.retry_min.count())); !v)
    return bad(v.error());
  else
    a.retry_min = std::chrono::milliseconds(*v);

  if (auto v = c.boolean("AdaptiveInstall", a.adaptive_install); !v)
    return bad(v.error());
  else
    a.adaptive_install = *v;

  for (const auto& key : c.unknown_keys(
           {"DeviceID", "DeviceType", "DataDir", "Disk", "RootfsPartA", "RootfsPartB", "RootDeviceA",
            "RootDeviceB", "KernelCmdline", "Mountinfo", "BootPartA", "BootPartB", "Bootloader", "FwEnvConfig",
            "GrubEnv", "ArtifactVerifyKey", "HealthCheckCommand", "RebootCommand", "ArtifactName",
            "ServerCertificate", "ClientCertificate", "ClientKey", "BrokerURI", "KeepaliveSeconds",
            "SessionExpirySeconds", "RetryMinMilliseconds", "RetryMaxSeconds", "DownloadReadTimeoutSeconds",
            "DownloadMaxAttempts", "DownloadMaxSeconds", "InstallAttempts", "AdaptiveInstall", "ProgressIntervalSeconds",
            "InventoryPollIntervalSeconds", "InventoryScriptsDir", "HealthCheckTimeoutSeconds",
            "InventoryScriptTimeoutSeconds", "RootfsScriptsPath", "ArtifactScriptsPath", "StateScriptTimeoutSeconds",
            "StateScriptRetryTimeoutSeconds", "StateScriptRetryIntervalSeconds", "DownloadMaxBytesPerSecond",
            "ModulesDir", "ModuleTimeoutSeconds"}))
    log::warn(c.origin(), ": unknown key '", key, "' ignored");

  if (a.device_type.empty()) return fail(Errc::invalid_argument, c.origin() + ": DeviceType is required");
  if (a.rootfs_a.empty() || a.rootfs_b.empty())
    return fail(Errc::invalid_argument, c.origin() + ": RootfsPartA and RootfsPartB are required");
  if (a.rootfs_a == a.rootfs_b)
    return fail(Errc::invalid_argument, c.origin() + ": RootfsPartA and RootfsPartB are the same partition");
  if (a.health_check_timeout.count() == 0 || a.inventory_script_timeout.count() == 0)
    return fail(Errc::invalid_argument,
                c.origin() + ": HealthCheckTimeoutSeconds and InventoryScriptTimeoutSeconds must be at least 1");
  if (a.state_script_timeout.count() == 0)
    return fail(Errc::invalid_argument, c.origin() + ": StateScriptTimeoutSeconds must be at least 1");
  if (a.artifact_scripts_dir.empty()) a.artifact_scripts_dir = a.data_dir / "scripts";
  if (a.module_timeout.count() == 0)
    return fail(Errc::invalid_argument, c.origin() + ": ModuleTimeoutSeconds must be at least 1");
  if (a.bootloader != "uboot" && a.bootloader != "grub")
    return fail(Errc::invalid_argument,
                c.origin() + ": Bootloader must be \"uboot\" or \"grub\", not \"" + a.bootloader + "\"");
  return a;
}

}  // namespace

Result<AgentConfig> AgentConfig::load(const std::filesystem::path& path) {
  auto cfg = Config::load(path);
  if (!cfg) return cfg.error();
  return from_config(*cfg);
}

Result<AgentConfig> AgentConfig::parse(std::string_view text, const std::string& origin) {
  auto cfg = Config::parse(text, origin);
  if (!cfg) return cfg.error();
  return from_config(*cfg);
}

}  // namespace tern::agent
