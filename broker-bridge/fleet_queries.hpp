// Read-only operator commands for screens over big fleets (the dashboard), beside the commands of
// fleet_commands.cpp and answered the same way (MQTT 5 response topic or reply_to):
//
//   tern/fleet/devices/page   {"offset":0, "limit":50, "search":"dev-1", "admission":"pending",
//                              "presence":"online", "group":"lab", "device_type":"board"}
//     One page of devices in id order, matching every filter given ("search": a substring of the
//     id, group, device type or artifact name, any case). Reply: {"total": devices in the fleet,
//     "matched": devices matching, "offset", "limit", "devices": [records without inventory],
//     "admission": {word: count}, "presence": {word: count}} (counts over the whole fleet).
//     "limit" is 1..500 (default 50).
//   tern/fleet/deployments/{id}/progress   {}
//     Per phase: {"phase": 1-based, "percent", "devices", "counts": {status: n}, "bytes", "total_bytes"}
//     with bytes downloaded so far (a finished download counts as its whole size), and
//     "failures": every failed or aborted device of the deployment with its error (up to 1000),
//     "failure_count": all of them. Answered without loading the deployment's rows: counts from
//     the store's counters (migration 5), bytes summed per phase by the database, and only the
//     failure rows listed (Store::failed_device_deployments).
//
// Errors name the field or the deployment. Thread safety: none (the fleet's executor).
#pragma once

#include "broker-bridge/store.hpp"
#include "common/error.hpp"

#include <boost/json/object.hpp>

#include <optional>
#include <string>
#include <string_view>

namespace tern::bridge {

/// A device's record as operators see it (devices/list, devices/page, tern/fleet/devices/{id}),
/// without its inventory.
boost::json::object device_json(const DeviceRecord& d);

Result<boost::json::object> page_devices(Store& store, std::string_view body);
Result<boost::json::object> deployment_progress(Store& store, const std::string& id);

/// "SHA256:" + the hex SHA-256 of the key's DER SubjectPublicKeyInfo (what `openssl pkey -pubin
/// -outform DER | sha256sum` prints), naming the key that signed the cataloged artifacts; empty
/// when `pem` is not a public key.
std::string public_key_fingerprint(const std::optional<std::string>& pem);

}  // namespace tern::bridge
