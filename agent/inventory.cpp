#include "agent/inventory.hpp"

#include "common/log.hpp"
#include "common/process.hpp"

#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <sstream>

namespace tern::agent {

void merge_inventory_output(std::string_view output, protocol::Inventory& inv) {
  std::map<std::string, std::vector<std::string>> seen;
  std::istringstream in{std::string(output)};
  for (std::string line; std::getline(in, line);) {
    auto eq = line.find('=');
    if (eq == std::string::npos || eq == 0) continue;
    auto key = line.substr(0, eq);
    auto value = line.substr(eq + 1);
    while (!value.empty() && (value.back() == '\r' || value.back() == ' ')) value.pop_back();
    seen[key].push_back(value);
  }
  for (auto& [k, values] : seen) {
    std::string joined;
    for (const auto& v : values) joined += (joined.empty() ? "" : ",") + v;
    inv[k] = joined;
  }
}

protocol::Inventory collect_inventory(const AgentConfig& config, const Installed& installed, const Slots& slots,
                                      std::stop_token stop) {
  protocol::Inventory inv;
  inv["device_type"] = config.device_type;
  inv["artifact_name"] = installed.artifact_name;
  for (const auto& [k, v] : installed.provides) inv[k] = v;
  inv["agent_version"] = agent_version;
  utsname u{};
  if (::uname(&u) == 0) {
    inv["kernel"] = std::string(u.sysname) + " " + u.release;
    inv["hostname"] = u.nodename;
  }
  inv["rootfs_a_size"] = std::to_string(slots.a.partition.size);
  inv["rootfs_b_size"] = std::to_string(slots.b.partition.size);

  if (!config.inventory_scripts.empty()) {
    std::error_code ec;
    std::vector<std::filesystem::path> scripts;
    for (const auto& e : std::filesystem::directory_iterator(config.inventory_scripts, ec))
      if (e.is_regular_file() && ::access(e.path().c_str(), X_OK) == 0) scripts.push_back(e.path());
    if (ec) log::warn("reading InventoryScriptsDir ", config.inventory_scripts.string(), ": ", ec.message());
    std::sort(scripts.begin(), scripts.end());
    const auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(config.inventory_script_timeout);
    for (const auto& script : scripts) {
      if (stop.stop_requested()) break;
      // Bounded: a hanging script (and what it started) is killed at its deadline and skipped.
      auto out = run_program({script.string()}, {.timeout = timeout, .stop = stop, .max_output = 64 * 1024});
      if (!out || out->exit_code != 0 || out->timed_out || out->stopped) {
        log::warn("inventory script ", script.string(), " failed (",
                  out ? describe_exit(*out, timeout) : out.error().message(), "); skipped");
        continue;
      }
      merge_inventory_output(out->output, inv);
    }
  }
  return inv;
}

}  // namespace tern::agent
