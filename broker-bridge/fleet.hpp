// The fleet logic of tern-bridge, sans I/O: MQTT messages in, MQTT messages to publish out.
//
//   Fleet fleet(store, options);
//   for (auto& out : fleet.recover(now)) publish(out);        // once, at start
//   for (auto& out : fleet.handle(message, now)) publish(out); // every incoming message
//   for (auto& out : fleet.tick(now)) publish(out);            // every few hundred milliseconds
//
// handle() ingests device messages (status, inventory, presence) and operator commands, each in
// one store transaction (handle_batch(): a burst of statuses in one); the messages it returns are to be published after it returns (the store
// is already committed, so a crash in between is repaired by recover()). tick() moves rollouts on
// (phase completion, threshold, pause) and publishes coalesced summaries, at most once per tick
// however many statuses arrived; a deployment is evaluated from its per-phase status counters,
// which the store keeps on every write (migration 5), not from a scan of its devices.
//
// Topics (DESIGN.md): device traffic under tern/devices/{id}/{status,inventory,presence};
// commands under tern/fleet/: deployments/create, deployments/list, deployments/{id}/abort,
// deployments/{id}/resume, devices/list, devices/preauthorize,
// devices/{id}/{accept,reject,decommission,group}, devices/{id}/log, artifacts/add, artifacts/rescan,
// artifacts/list. Devices send the log of a failed deployment on tern/devices/{id}/log; the
// summary's failure entry then says "log": true.
// Admission: accept, reject and preauthorize (a list of ids, optional group) work for devices never
// seen: their record is created then, and a preauthorized device is accepted from its first
// message. Decommission clears the device's retained deployment, inventory and presence. A command's body is a JSON object (empty
// means {}); the reply goes to the MQTT 5 response topic with its correlation data, else to
// "reply_to" in the body (which must be under tern/fleet/), else nowhere. Replies are
// {"ok":true,...} or {"ok":false,"error":"..."}; a refused command changes nothing.
//
// Retries: attempt N > 1 of a device is sent with deployment id "{id}-retry-N", so a device that
// finished "{id}" runs it again; its statuses are mapped back to the deployment.
//
// Thread safety: none; one executor calls everything.
#pragma once

#include "broker-bridge/store.hpp"
#include "common/error.hpp"
#include "common/mqtt/client.hpp"
#include "common/protocol.hpp"

#include <boost/json/object.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace tern::bridge {

struct FleetOptions {
  /// Devices download artifact files from `artifact_base_url` + "/" + file name.
  std::string artifact_base_url;
  std::filesystem::path artifact_dir;
  /// PEM public key: only artifacts signed with it enter the catalog.
  std::optional<std::string> verify_key_pem;
  /// Largest number of failures listed in a summary (the counts are always complete).
  std::size_t summary_failures = 50;
  /// Aborted deployments ended less than this long ago get their retained device messages cleared
  /// again by recover() (in case the bridge died between the abort and those publishes).
  std::int64_t recover_aborted_seconds = 24 * 3600;
};

using Outgoing = std::vector<mqtt::Message>;

class Fleet {
 public:
  Fleet(Store& store, FleetOptions options);

  /// Handles one incoming message. Malformed messages are logged and dropped (nothing to publish,
  /// or an error reply for a command).
  Outgoing handle(const mqtt::Message& msg, std::int64_t now);

  /// Handles messages received together, in order, with the same outcome as handle() on each in
  /// turn; a run of consecutive statuses is ingested in one store transaction (fleet_ingest.cpp).
  Outgoing handle_batch(const std::vector<mqtt::Message>& msgs, std::int64_t now);

  /// Moves rollouts on and publishes summaries changed since the last tick.
  Outgoing tick(std::int64_t now);

  /// After a (re)start: what must be published again for the state in the store (device records,
  /// retained deployments of devices in progress, cleared ones of finished devices, summaries), and
  /// evaluates the open deployments. Idempotent.
  Outgoing recover(std::int64_t now);

  /// Scans the artifact directory into the catalog (at start; also the "artifacts/rescan" command).
  Result<std::string> rescan_artifacts();

  /// The deployment id a retry attempt is sent with.
  static std::string wire_id(const std::string& deployment, int attempt);

 private:
  Outgoing handle_status(const std::string& device, const mqtt::Message& msg, std::int64_t now);
  // Status ingest (fleet_ingest.cpp): statuses in arrival order, one transaction for all of them;
  // if it fails, each again in its own.
  struct StatusIn {
    std::string device;
    protocol::StatusEvent ev;
  };
  Outgoing ingest_statuses(const std::vector<StatusIn>& batch, std::int64_t now);
  /// `dirty`: the deployments the batch touched; `ended`: those in which a device's deployment ended.
  Result<void> ingest_batch(const std::vector<StatusIn>& batch, std::int64_t now, Outgoing& out,
                            std::set<std::string>& dirty, std::set<std::string>& ended);
  /// After a batch that ended devices' deployments: a rollout whose phase is now complete moves
  /// on (next phase, pause, threshold, finish) at once, in its own transaction, with its summary;
  /// otherwise it is left to the next tick.
  void advance_now(const std::string& id, std::int64_t now, Outgoing& out);
  Outgoing handle_inventory(const std::string& device, const mqtt::Message& msg, std::int64_t now);
  Outgoing handle_presence(const std::string& device, const mqtt::Message& msg, std::int64_t now);
  Outgoing handle_command(const mqtt::Message& msg, std::int64_t now);
  /// tern/devices/{id}/log: a piece of a failed deployment's log (fleet_logs.cpp).
  Outgoing handle_log(const std::string& device, const mqtt::Message& msg, std::int64_t now);

  // Commands: each returns the reply body's fields, or an error naming the problem.
  using Reply = boost::json::object;
  Result<Reply> create(std::string_view body, std::int64_t now, Outgoing& out);
  Result<Reply> abort(const std::string& id, std::int64_t now, Outgoing& out);
  /// tern/fleet/deployments/{id}/reboot: the go-ahead for its devices waiting on "on-command".
  Result<Reply> reboot_go_ahead(const std::string& id, Outgoing& out);
  Result<Reply> resume(const std::string& id, std::int64_t now, Outgoing& out);
  Result<Reply> list_deployments();
  Result<Reply> list_devices();
  Result<Reply> list_artifacts();
  /// devices/{id}/log: {"deployment_id": "..."}: the log the device sent for it (fleet_logs.cpp).
  Result<Reply> device_log(const std::string& device, std::string_view body);
  Result<Reply> add_artifact(std::string_view body);
  Result<Reply> admission(const std::string& device, const std::string& verb, std::string_view body,
                          std::int64_t now, Outgoing& out);
  /// accept | reject | decommission one device; accept and reject create the record of a device
  /// never seen. `group` replaces the device's group if given. Reject and decommission also lock
  /// the deployment the device leaves (with the device, in ingest's order).
  Result<Reply> admit(const std::string& device, const std::string& verb, const std::optional<std::string>& group,
                      const std::string& what, std::int64_t now, Outgoing& out);
  Result<Reply> set_group(const std::string& device, const std::string& group, const std::string& what,
                          Outgoing& out);
  /// devices/preauthorize: {"devices":[ids], "group": optional}; all accepted, or none.
  Result<Reply> preauthorize(std::string_view body, std::int64_t now, Outgoing& out);

  /// Loads or creates (pending) a device seen on the wire; `created` tells which.
  Result<DeviceRecord> seen_device(const std::string& id, bool& created);
  /// How a handler changes a device record; returns whether to store it. `created`: first sight.
  using DeviceChange = std::function<Result<bool>(DeviceRecord& d, bool created, Outgoing& out)>;
  /// In one transaction: loads (or creates) the device, applies `change`, stores it. On an error
  /// the transaction is rolled back, the error is logged as "`what` of DEVICE: ...", and nothing is
  /// published.
  Outgoing update_device(const std::string& device, std::string_view what, const DeviceChange& change);
  void publish_device(const DeviceRecord& d, Outgoing& out);
  Result<boost::json::object> summary(const DeploymentRecord& d);
  Result<void> publish_summary(const DeploymentRecord& d, Outgoing& out);
  Result<void> send(DeviceDeploymentRecord& row, const DeploymentRecord& d, int attempt, std::int64_t now,
                    Outgoing& out);
  /// The row as sent with `attempt`, and its retained deployment message (send() also stores it).
  void mark_sent(DeviceDeploymentRecord& row, const DeploymentRecord& d, const ArtifactRecord& art, int attempt,
                 std::int64_t now, Outgoing& out);
  Result<void> start_phase(DeploymentRecord& d, int phase, std::int64_t now, Outgoing& out);
  /// Phase completion, threshold and finish for a running deployment.
  Result<void> evaluate(DeploymentRecord& d, std::int64_t now, Outgoing& out);
  /// In a transaction under the deployment's lock: evaluate() it, then publish its summary,
  /// `always` or only if its state, phase or pause moved. Returns whether it was published.
  Result<bool> evaluate_locked(const std::string& id, std::int64_t now, bool always, Outgoing& out);
  /// Marks every unfinished device aborted and clears their retained deployments.
  Result<void> abort_rows(DeploymentRecord& d, const std::string& reason, std::int64_t now, Outgoing& out);

  Store& store_;
  FleetOptions options_;
  std::set<std::string> dirty_;  // deployments whose summary (and rollout) must be re-evaluated
  std::uint64_t id_counter_ = 0;
};

}  // namespace tern::bridge
