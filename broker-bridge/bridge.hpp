// tern-bridge's MQTT shell: connects with its own identity, subscribes to device and operator
// topics, feeds every message to the Fleet logic and publishes what it returns.
//
//   auto bridge = tern::bridge::Bridge::create(io.get_executor(), options).value();
//   co_spawn(io, bridge->run(), ...);     // until stop()
//
// Subscriptions (shared_group "tern-bridge" gives "$share/tern-bridge/<filter>"):
//   $share/G/tern/devices/+/status                 device statuses, split between bridges
//   tern/devices/+/inventory, tern/devices/+/presence
//       non-shared when retained_device_state is set (the default, for one bridge): retained
//       inventory and presence are then delivered on the first start, so devices that announced
//       themselves before the bridge ever ran are known. MQTT 5 does not deliver retained messages
//       on shared subscriptions, so with several bridges (retained_device_state off) these are
//       shared too and a bridge learns devices from their next message.
//   $share/G/tern/fleet/...                        operator commands (see fleet.hpp)
// The session is persistent (clean start off), so statuses sent while the bridge was down are
// delivered when it comes back; the database is the state, retained topics are only its output.
// Outgoing messages are handed to Paho's queue (enqueue), so they survive a reconnect; after a
// crash between a commit and its publishes, run() republishes from the store (Fleet::recover):
// device records, retained deployments of devices in progress, cleared ones, summaries.
//
// Reconciliation (shared_group set): Mosquitto 2.0.11 drops what is published to a shared
// subscription while no member is subscribed (after a broker restart, until the bridges are back),
// and a bridge killed between receiving and committing loses what it held. Devices publish their
// statuses, inventory and presence retained, so the broker keeps each device's last word. After
// every (re)connection and every reconcile_interval a bridge subscribes to those topics without the
// share (MQTT 5 sends retained messages only to such subscriptions; Mosquitto 2.0.11 also sends
// them when a shared one is made, other brokers do not), feeds what arrives to the
// same idempotent ingest (an old or repeated sequence number is a no-op), then publishes a marker
// to tern/fleet/reconcile/{client_id}: Mosquitto queues a client's messages in order, so when the
// marker is back every retained message has been handled, and the temporary subscriptions are
// dropped. The pass has a deadline (reconcile_deadline); one that misses it is logged and retried
// at the next connection or interval. The store thus converges on what the devices last reported.
//
// Inbox: with "mqtt_client": "paho", mqtt.inbox_capacity must be large (main sets 131072).
// tern::mqtt::Client blocks Paho's receive thread while its inbox is full, and Paho holds its client
// lock there, so an enqueue() from the executor thread (every outgoing message) would wait for that
// lock while the thread that could empty the inbox is the one waiting: a deadlock, seen with a small
// inbox under load. The asio engine (the default) only stops reading while its inbox is full.
//
// Batches: after each wait the receive loop also takes what is already in the inbox (up to
// BridgeOptions::batch) and hands it to Fleet::handle_batch, so a burst of statuses is one store
// transaction.
//
// Thread safety: create, run and stop on one executor (stop may be called from any thread: it
// posts); the executor must be single-threaded (the MQTT client's asio engine requires it). The
// store and the fleet work on a store thread of the bridge's own: every call into them from the
// bridge goes there and back (Impl::on_store), so a transaction never stalls MQTT traffic.
#pragma once

#include "broker-bridge/fleet.hpp"
#include "broker-bridge/store.hpp"
#include "common/error.hpp"
#include "common/mqtt/client.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>

namespace tern::bridge {

struct BridgeOptions {
  /// Engine::asio unless told otherwise (main's "mqtt_client"): Paho's per-message cost bounded the
  /// bridge's ingest (README, "Fleet scale, measured").
  mqtt::Options mqtt = [] {
    mqtt::Options o;
    o.engine = mqtt::Engine::asio;
    return o;
  }();
  std::filesystem::path db_path;
  FleetOptions fleet;
  /// Empty (the default): plain subscriptions, kept by Mosquitto over a restart. "tern-bridge":
  /// shared between bridges, but Mosquitto 2.0.11 drops them on a restart until resubscribed.
  std::string shared_group;
  bool retained_device_state = true;         ///< see the header comment
  std::chrono::milliseconds tick{200};       ///< rollout evaluation and summary coalescing period
  /// Most messages taken from the inbox at once; the statuses among them are ingested in one
  /// store transaction (Fleet::handle_batch).
  std::size_t batch = 512;
  /// Under continuous traffic, at most one batch per batch_interval goes to the store: a store
  /// that finishes a batch quickly would otherwise be handed the next one or two messages, and
  /// every batch costs a commit and a TLS record of publishes that the broker must read. A message
  /// arriving after a quiet batch_interval is handed over at once. 0: no pacing.
  std::chrono::milliseconds batch_interval{5};
  /// Reconciliation (with a shared_group only; see below): a pass after every (re)connection and
  /// then every reconcile_interval (0: only after connections); a pass that has not seen its
  /// marker within reconcile_deadline is reported and given up.
  std::chrono::seconds reconcile_interval{300};
  std::chrono::seconds reconcile_deadline{60};
};

class Bridge {
 public:
  /// Opens the store and creates the MQTT client. Errors: database, client options.
  static Result<std::unique_ptr<Bridge>> create(boost::asio::any_io_executor ex, BridgeOptions options);
  ~Bridge();

  /// Scans artifacts, connects (retrying until it succeeds or stop()), republishes what the store
  /// says must be out there, subscribes, then processes messages until stop(). Errors: the
  /// connection could not be made (with connect_attempts set), a subscription was refused.
  boost::asio::awaitable<Result<void>> run();

  /// Makes run() disconnect and return. Safe from any thread.
  void stop();

  /// Messages processed so far (for tests and benchmarks).
  std::uint64_t processed() const;

  /// The store; only while run() is not running (the store thread uses it then).
  Store& store();

 private:
  struct Impl;
  explicit Bridge(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

/// The subscription filters for `options` (exposed for tests and documentation).
std::vector<std::string> subscription_filters(const BridgeOptions& options);

}  // namespace tern::bridge
