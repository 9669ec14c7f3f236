// The bridge's fleet state: devices, artifacts, deployments, per-device deployment status and its
// history. In one SQLite file (WAL), the embedded default, or in PostgreSQL (libpq) for bigger
// fleets: Store::open takes a file path or a "postgresql://..." URI.
//
//   auto store = tern::bridge::Store::open("/var/lib/tern/bridge.db").value();
//   auto store = tern::bridge::Store::open("postgresql://tern@db:5432/tern").value();
//   store->transaction([&]() -> Result<void> { ...; return {}; });
//
// The schema is versioned (table schema_version, one row) and brought up to date by numbered
// migrations when the file is opened; a file from a newer bridge is refused. The SQL is plain
// (TEXT, BIGINT, INTEGER, ON CONFLICT ... DO UPDATE) and runs unchanged on both, except the
// history's insertion order (SQLite's rowid, a BIGSERIAL column on PostgreSQL) and migration 5's
// triggers (per deployment, phase and status, the number of device rows: deployment_counts(), kept
// by the database on every write, so a rollout is evaluated without a scan; since migration 6,
// PostgreSQL moves them once per statement, SQLite still once per row). On PostgreSQL the
// migrations run under a lock on schema_version, so bridges starting together migrate once; a
// dropped connection is re-established before the next statement outside a transaction.
//
// Errors: every method returns an Error naming the operation and the database's message. Thread safety:
// a Store is used by one thread at a time. SQLite's busy_timeout makes a second process (a tool
// reading the file) wait instead of failing.
#pragma once

#include "common/error.hpp"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace tern::bridge {

/// The newest schema this build knows.
inline constexpr int schema_version = 6;

struct DeviceRecord {
  std::string id;
  std::string admission = "pending";  ///< pending | accepted | rejected | decommissioned
  std::string group;
  std::string device_type;
  std::string inventory = "{}";  ///< JSON object as the device sent it (normalised)
  std::int64_t last_seen = 0;    ///< Unix seconds of the last message from the device
  std::string presence = "unknown";  ///< online | offline | unknown
  std::uint64_t presence_seq = 0;
  std::string artifact_name;  ///< installed artifact, from inventory or a successful deployment
  bool operator==(const DeviceRecord&) const = default;
};

struct ArtifactRecord {
  std::string name;
  std::string file;  ///< path relative to the artifact directory (what the server serves)
  std::uint64_t size = 0;
  std::string sha256;                     ///< of the whole file
  std::vector<std::string> device_types;  ///< stored as a JSON array
  bool is_signed = false;                 ///< signature verified against the fleet key
  std::int64_t mtime = 0;                 ///< file modification time when it was read
  bool operator==(const ArtifactRecord&) const = default;
};

struct DeploymentRecord {
  std::string id;
  std::string artifact;
  std::string targets;       ///< the targets of the create command, as JSON
  std::vector<int> phases;   ///< cumulative percentages, last is 100; stored as a JSON array
  std::int64_t pause_seconds = 0;
  int threshold = 100;       ///< failure percentage tolerated at the end of a phase
  std::string on_threshold = "pause";  ///< pause | abort
  int retries = 0;           ///< extra attempts per device after a failure
  std::string state = "created";  ///< created | running | paused | finished | aborted
  int phase = 0;             ///< index into phases of the phase being rolled out
  std::int64_t next_phase_at = 0;  ///< Unix seconds when the next phase may start (0: not waiting)
  std::int64_t created = 0;
  std::string reason;        ///< why it paused or aborted
  std::uint64_t max_rate = 0;  ///< devices' download cap, bytes per second (0: none)
  std::string reboot;          ///< devices' reboot policy (common/reboot_policy.hpp; empty: immediate)
  bool operator==(const DeploymentRecord&) const = default;
};

struct DeviceDeploymentRecord {
  std::string deployment;
  std::string device;
  int phase = 0;
  /// pending (its phase has not started) | sent (deployment published) | a status word
  std::string status = "pending";
  std::uint64_t bytes = 0;
  std::uint64_t total = 0;
  int attempt = 0;  ///< 0 before it is sent, then 1, 2, ... with retries
  std::string error;
  std::uint64_t last_seq = 0;  ///< the device's seq of the last status applied
  std::int64_t updated = 0;
  bool operator==(const DeviceDeploymentRecord&) const = default;
};

/// What a device's download of a deployment cost: artifact bytes fetched, payload bytes built from
/// its own partition, and the artifact's size (what a full download fetches).
struct TransferRecord {
  std::string deployment;
  std::string device;           ///< empty in transfer_totals()
  std::uint64_t fetched = 0;
  std::uint64_t reused = 0;
  std::uint64_t artifact = 0;
  std::uint64_t devices = 0;    ///< transfer_totals(): devices counted
};

struct HistoryRecord {
  std::string deployment;
  std::string device;
  std::uint64_t seq = 0;
  std::string status;
  std::int64_t time = 0;
  std::string error;
  int attempt = 0;
};

/// A failed deployment's log as a device sent it (common/log_protocol.hpp), possibly still partial.
struct DeploymentLogRecord {
  std::string device;
  std::string deployment;  ///< the id the device ran it under ("{id}-retry-N" for a retry)
  std::uint64_t seq = 0;   ///< the failure status's seq: a newer log replaces an older one
  int parts = 0;           ///< pieces the log has
  std::vector<std::string> pieces;  ///< by part; a piece not received yet is missing from `received`
  std::vector<bool> received;
  std::int64_t updated = 0;
  bool complete() const { return std::find(received.begin(), received.end(), false) == received.end(); }
};

/// How many of a deployment's device rows are in one phase and status (migration 5).
struct StatusCount {
  int phase = 0;
  std::string status;
  std::uint64_t n = 0;
};

/// A phase's download figures (deployment progress): bytes downloaded so far, where a device past
/// its download (installing, rebooting, success) counts its whole artifact, and the artifact bytes.
struct PhaseBytes {
  int phase = 0;
  std::uint64_t bytes = 0;
  std::uint64_t total = 0;
};

/// Deployment statuses that end a device's part of a deployment.
bool is_final_status(std::string_view status);

/// Migration 5's PostgreSQL counter trigger, as that migration installs it (one counter update per
/// row written; migration 6 replaced it). Tests use it to put a store back to schema 5.
extern const char* const migration5_count_trigger_postgres;

class Store {
 public:
  /// Opens (creating if needed) the database and migrates it. Errors: the file cannot be opened,
  /// is not a database, or has a schema newer than this build.
  static Result<std::unique_ptr<Store>> open(const std::filesystem::path& path);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  /// Inside a transaction: waits for, then holds until the transaction ends, a lock named `key`
  /// ("device:ID", "deployment:ID") shared by every bridge on the same database. PostgreSQL: an
  /// advisory transaction lock. SQLite: nothing to do (BEGIN IMMEDIATE already serialises every
  /// writer of the file).
  Result<void> lock(std::string_view key);
  /// Like lock(), in shared mode: any number of transactions hold `key` shared at once, and a
  /// lock() of the same key waits for all of them (and they for it). PostgreSQL: a shared
  /// advisory transaction lock, the same key hashing as lock(). SQLite: nothing to do.
  Result<void> lock_shared(std::string_view key);

  /// Current schema version of the open file.
  Result<int> version();
  /// How many statements the connection keeps prepared for reuse (a bounded number).
  std::size_t prepared_statements() const;

  /// Runs `body` in one transaction: committed if it returns success, rolled back otherwise (also
  /// if it throws). Nested calls join the outer transaction.
  Result<void> transaction(const std::function<Result<void>()>& body);

  // Devices
  Result<std::optional<DeviceRecord>> device(const std::string& id);
  Result<void> put_device(const DeviceRecord& d);
  Result<std::vector<DeviceRecord>> devices();

  // Artifacts
  Result<std::optional<ArtifactRecord>> artifact(const std::string& name);
  Result<void> put_artifact(const ArtifactRecord& a);
  Result<void> remove_artifact(const std::string& name);
  Result<std::vector<ArtifactRecord>> artifacts();

  // Deployments
  Result<std::optional<DeploymentRecord>> deployment(const std::string& id);
  /// Inserts; an error if the id exists.
  Result<void> insert_deployment(const DeploymentRecord& d);
  Result<void> update_deployment(const DeploymentRecord& d);
  /// All deployments, newest first; only those in `state` if given.
  Result<std::vector<DeploymentRecord>> deployments(std::optional<std::string> state = std::nullopt);

  // Per-device deployment status
  Result<std::optional<DeviceDeploymentRecord>> device_deployment(const std::string& deployment,
                                                                  const std::string& device);
  Result<void> put_device_deployment(const DeviceDeploymentRecord& r);
  /// Rows of a deployment, by phase then device.
  Result<std::vector<DeviceDeploymentRecord>> device_deployments(const std::string& deployment);
  /// Status → number of devices, for a deployment.
  Result<std::map<std::string, std::uint64_t>> status_counts(const std::string& deployment);
  /// The deployment (running, paused or created) in which `device` has not reached a final status
  /// (create keeps it to one; were there several, the oldest, then by id).
  Result<std::optional<std::string>> active_deployment_of(const std::string& device);

  // Deployment logs (migration 2)
  /// Keeps one piece of a device's log of `deployment`: a piece of a newer log (higher seq)
  /// replaces the older log, a piece of an older one is dropped, a repeated piece is kept once.
  /// Returns whether the piece was new.
  Result<bool> put_log_piece(const std::string& device, const std::string& deployment, std::uint64_t seq, int part,
                             int parts, const std::string& data, std::int64_t now);
  /// The newest log `device` sent for `deployment` or one of its retries ("{id}-retry-N").
  /// `with_data` false: which pieces arrived, without their text (for summaries).
  Result<std::optional<DeploymentLogRecord>> deployment_log(const std::string& device, const std::string& deployment,
                                                            bool with_data = true);
  
  // Transfer figures (migration 4) of adaptive installs (bytes fetched and reused per device, from its statuses)
  Result<void> put_transfer(const TransferRecord& t);
  /// Sums over the devices of a deployment that reported figures.
  Result<TransferRecord> transfer_totals(const std::string& deployment);

  // History
  Result<void> add_history(const HistoryRecord& h);
  Result<std::vector<HistoryRecord>> history(const std::string& deployment, const std::string& device);

  // Batches (a burst of statuses in one transaction): the same as the single-row calls, in a
  // few multi-row statements. Rows are written in the order given; a key given twice is an error
  // on PostgreSQL (one statement cannot upsert a row twice), so callers pass each key once.
  /// Like lock() for every key, in one statement and in one global order (so two bridges locking
  /// overlapping sets wait for each other instead of deadlocking).
  Result<void> lock_all(const std::vector<std::string>& keys);
  Result<std::vector<DeviceRecord>> devices_in(const std::vector<std::string>& ids);
  /// active_deployment_of for each of `devices`: device → deployment, only devices that have one.
  Result<std::map<std::string, std::string>> active_deployments_of(const std::vector<std::string>& devices);
  Result<std::vector<DeploymentRecord>> deployments_in(const std::vector<std::string>& ids);
  /// The rows whose deployment is one of `deployments` and whose device is one of `devices`.
  Result<std::vector<DeviceDeploymentRecord>> device_deployments_in(const std::vector<std::string>& deployments,
                                                                    const std::vector<std::string>& devices);
  Result<void> put_devices(const std::vector<DeviceRecord>& ds);
  Result<void> put_device_deployments(const std::vector<DeviceDeploymentRecord>& rs);
  Result<void> add_history(const std::vector<HistoryRecord>& hs);
  Result<void> put_transfers(const std::vector<TransferRecord>& ts);

  // Counters (migration 5), kept by the database on every write of device_deployments.
  /// Non-zero counters of a deployment, by phase then status.
  Result<std::vector<StatusCount>> deployment_counts(const std::string& deployment);
  /// Rows that failed (failure, aborted), by phase then device, at most `limit`.
  Result<std::vector<DeviceDeploymentRecord>> failed_device_deployments(const std::string& deployment,
                                                                        std::size_t limit);
  /// Per phase with rows, by phase: the sums of PhaseBytes, in one aggregate query (no row is
  /// read into the bridge).
  Result<std::vector<PhaseBytes>> phase_bytes(const std::string& deployment);

  struct Impl;

 private:
  explicit Store(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tern::bridge
