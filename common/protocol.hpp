// The messages and topics of DESIGN.md's wire contract, as types with parse and serialize.
//
// parse_* never throw: anything malformed (not JSON, a missing field, a wrong type, an id that
// cannot stand in a topic, an oversized payload) is an Error naming the message and the field, so a
// receiver logs it and drops the message.
#pragma once

#include "common/error.hpp"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace tern::protocol {

/// Largest payload a receiver parses; larger ones are rejected unparsed.
inline constexpr std::size_t max_message_size = 64 * 1024;

/// Mender's deployment status words.
enum class Status { downloading, installing, rebooting, success, failure, already_installed, aborted,
                    pause_before_rebooting };

std::string_view to_string(Status s);
Result<Status> parse_status_word(std::string_view word);
/// success, failure, already-installed and aborted end a deployment on a device.
bool is_final(Status s);

/// Device and deployment ids stand in topics: 1 to 128 of [A-Za-z0-9._-], not "." or "..".
bool valid_id(std::string_view id);

/// tern/devices/{id}/deployment: what the device should run (an empty payload cancels).
struct Deployment {
  std::string deployment_id;
  std::string artifact_name;
  std::string url;      ///< http:// or https://
  std::uint64_t size = 0;  ///< artifact size in bytes
  std::string sha256;   ///< lowercase hex of the whole artifact file, 64 characters
  std::uint64_t max_rate = 0;  ///< `max_rate`: download cap in bytes per second (0 or absent: none)
  std::string reboot;          ///< `reboot`: RebootPolicy text (common/reboot_policy.hpp); empty: immediate
  bool operator==(const Deployment&) const = default;
};
Result<Deployment> parse_deployment(std::string_view payload);
std::string serialize(const Deployment& d);

/// tern/devices/{id}/status: one step of a deployment on a device.
struct StatusEvent {
  std::string deployment_id;
  Status status = Status::downloading;
  std::uint64_t bytes = 0;   ///< bytes downloaded so far
  std::uint64_t total = 0;   ///< artifact size, 0 if unknown
  std::uint32_t attempt = 0; ///< 1 for the first try, counting retries
  std::string error;         ///< why, for failure and aborted
  std::int64_t time = 0;     ///< Unix time in seconds
  std::uint64_t seq = 0;     ///< increases with every event the device sends; orders and dedups
  std::uint64_t eta = 0;     ///< downloading: seconds left at the recent rate (0: unknown; sent only if set)
  std::uint64_t bytes_fetched = 0;  ///< artifact bytes received from the network (all attempts)
  std::uint64_t bytes_reused = 0;   ///< payload bytes built from the device's own partition (adaptive)
  bool operator==(const StatusEvent&) const = default;
};
Result<StatusEvent> parse_status(std::string_view payload);
std::string serialize(const StatusEvent& s);

/// tern/devices/{id}/presence (retained; the offline one is the device's last will).
struct Presence {
  bool online = false;
  std::uint64_t seq = 0;  ///< a late last will carries an older seq than the newest online
  std::int64_t time = 0;
  bool operator==(const Presence&) const = default;
};
Result<Presence> parse_presence(std::string_view payload);
std::string serialize(const Presence& p);

/// tern/devices/{id}/inventory (retained): attribute name to value.
using Inventory = std::map<std::string, std::string>;
Result<Inventory> parse_inventory(std::string_view payload);
std::string serialize(const Inventory& inv);

/// tern/devices/{id}/reboot (retained, operator or bridge → device): the go-ahead to switch and
/// reboot for the deployment named, when that deployment's `reboot` is "on-command".
struct RebootCommand {
  std::string deployment_id;
  bool operator==(const RebootCommand&) const = default;
};
Result<RebootCommand> parse_reboot_command(std::string_view payload);
std::string serialize(const RebootCommand& c);

namespace topics {
std::string reboot(std::string_view device_id);
/// tern/fleet/deployments/{dep}/reboot: the operator's go-ahead for every device of a deployment.
std::string fleet_deployment_reboot(std::string_view deployment_id);
std::string deployment(std::string_view device_id);
std::string status(std::string_view device_id);
std::string inventory(std::string_view device_id);
std::string presence(std::string_view device_id);
std::string fleet_deployment(std::string_view deployment_id);
std::string fleet_device(std::string_view device_id);
inline constexpr std::string_view deployments_create = "tern/fleet/deployments/create";

/// "tern/devices/{id}/{kind}" split into its id and kind (deployment, status, inventory, presence,
/// log: common/log_protocol.hpp);
/// nullopt for any other topic or an invalid id.
struct DeviceTopic {
  std::string device_id;
  std::string kind;
};
std::optional<DeviceTopic> parse_device_topic(std::string_view topic);
}  // namespace topics

}  // namespace tern::protocol
