#include "broker-bridge/bridge.hpp"

#include "common/clock.hpp"
#include "common/log.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <atomic>

namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;

namespace tern::bridge {

std::vector<std::string> subscription_filters(const BridgeOptions& o) {
  const std::string share = o.shared_group.empty() ? "" : "$share/" + o.shared_group + "/";
  std::vector<std::string> f{share + "tern/devices/+/status"};
  const std::string state_prefix = o.retained_device_state ? "" : share;
  f.push_back(state_prefix + "tern/devices/+/inventory");
  f.push_back(state_prefix + "tern/devices/+/presence");
  f.push_back(share + "tern/devices/+/log");
  for (const char* c : {"tern/fleet/deployments/create", "tern/fleet/deployments/list",
                        "tern/fleet/deployments/+/abort", "tern/fleet/deployments/+/resume", "tern/fleet/deployments/+/reboot",
                        "tern/fleet/devices/list", "tern/fleet/devices/preauthorize", "tern/fleet/devices/+/accept", "tern/fleet/devices/+/reject",
                        "tern/fleet/devices/+/decommission", "tern/fleet/devices/+/group", "tern/fleet/devices/+/log",
                        "tern/fleet/artifacts/add", "tern/fleet/artifacts/rescan", "tern/fleet/artifacts/list"})
    f.push_back(share + c);
  // The dashboard's paged reads (fleet_queries.hpp).
  for (const char* c : {"tern/fleet/devices/page", "tern/fleet/deployments/+/progress"}) f.push_back(share + c);
  return f;
}

struct Bridge::Impl {
  Impl(asio::any_io_executor e, BridgeOptions o)
      : ex(std::move(e)), options(std::move(o)), stop_timer(ex), reconcile_wake(ex), marker_back(ex) {
    stop_timer.expires_at(asio::steady_timer::time_point::max());
  }
  ~Impl() { store_thread.join(); }
  asio::any_io_executor ex;
  // The store and the fleet are used on this thread only (on_store): their database work runs
  // while the executor's thread goes on reading, acknowledging and publishing MQTT messages, so
  // the next batch gathers meanwhile, and the io thread never waits for the database.
  asio::thread_pool store_thread{1};
  BridgeOptions options;
  std::unique_ptr<Store> store;
  std::unique_ptr<Fleet> fleet;
  std::unique_ptr<mqtt::Client> client;
  asio::steady_timer stop_timer;
  std::atomic<bool> stopping{false};
  std::atomic<std::uint64_t> processed{0};
  std::uint64_t batches = 0;  // handed to the store (receive_loop)

  // Reconciliation (see bridge.hpp); on the executor only.
  asio::steady_timer reconcile_wake;  // the wait between passes; cancelled by a reconnection
  asio::steady_timer marker_back;     // the current pass's deadline; cancelled when its marker is back
  bool reconnected = false;           // a (re)connection since the current pass began
  std::uint64_t pass = 0;             // the pass whose marker is awaited
  bool marker_seen = false;
  std::uint64_t retained_seen = 0;    // retained device messages handled during the pass

  std::string marker_topic() const { return "tern/fleet/reconcile/" + options.mqtt.client_id; }
  static std::vector<std::string> reconcile_filters() {
    return {"tern/devices/+/status", "tern/devices/+/inventory", "tern/devices/+/presence"};
  }

  /// Runs f() on the store thread; the caller resumes on its own executor with the result.
  template <class F>
  asio::awaitable<std::invoke_result_t<F&>> on_store(F f) {
    using R = std::invoke_result_t<F&>;
    // Named before the co_await (g++ 12 and temporaries of a full-expression with co_await).
    auto work = asio::co_spawn(store_thread.get_executor(), [f = std::move(f)]() mutable -> asio::awaitable<R> { co_return f(); },
                               asio::use_awaitable);
    co_return co_await std::move(work);
  }

  void publish(Outgoing& out) {
    for (auto& m : out) {
      if (auto r = client->enqueue(m); !r) log::error("publishing: ", r.error().message());
    }
  }

  // Takes what arrived together (up to options.batch messages: the one waited for, then what is
  // already in the inbox) and hands it to the fleet in one go, so a burst of statuses is one store
  // transaction. The marker of a reconciliation pass is seen here in order: the messages before it
  // are handled before the pass's coroutine runs again.
  //
  // The asio MQTT engine reads on this thread, and the broker sends each message in a TLS record
  // of its own, so the reader adds about one message per turn of the event loop: when the inbox
  // runs dry before the batch is full, the loop yields (a post, no timer) and takes what the
  // reader added meanwhile, until a turn adds nothing. Without it a burst became transactions of
  // one or two statuses (bench-fleet: a quarter of the rate). Then, if the previous batch went to
  // the store less than options.batch_interval ago, the traffic is continuous: the loop waits for
  // the rest of the interval and takes what came meanwhile (see BridgeOptions::batch_interval).
  asio::awaitable<void> receive_loop() {
    std::vector<mqtt::Message> batch;
    asio::steady_timer pace(ex);
    auto handed = std::chrono::steady_clock::time_point::min();  // when the last batch went to the store
    const auto take = [&](mqtt::Message&& m) {
      if (m.topic == marker_topic()) {
        if (m.payload == std::to_string(pass)) {
          marker_seen = true;
          marker_back.cancel();
        }
        return;
      }
      if (m.retained && m.topic.starts_with("tern/devices/")) {
        ++retained_seen;
        log::debug("reconciling ", m.topic, " from its retained message");
      }
      batch.push_back(std::move(m));
    };
    const auto take_waiting = [&] {
      while (batch.size() < options.batch) {
        auto m = client->try_receive();
        if (!m) return false;
        take(std::move(*m));
      }
      return true;
    };
    for (;;) {
      auto first = co_await client->receive();
      if (!first) co_return;
      batch.clear();
      take(std::move(*first));
      while (!take_waiting() && !batch.empty()) {
        co_await asio::post(ex, asio::use_awaitable);
        auto m = client->try_receive();
        if (!m) break;
        take(std::move(*m));
      }
      if (options.batch_interval.count() > 0 && batch.size() < options.batch &&
          handed > std::chrono::steady_clock::time_point::min()) {
        const auto due = handed + options.batch_interval;
        if (std::chrono::steady_clock::now() < due) {
          pace.expires_at(due);
          co_await pace.async_wait(asio::use_awaitable);
          take_waiting();
        }
      }
      if (batch.empty()) continue;  // only a marker
      handed = std::chrono::steady_clock::now();
      ++batches;
      auto out = co_await on_store([this, &batch] { return fleet->handle_batch(batch, unix_now()); });
      publish(out);
      processed += batch.size();
    }
  }

  asio::awaitable<void> tick_loop() {
    asio::steady_timer t(ex);
    for (;;) {
      t.expires_after(options.tick);
      co_await t.async_wait(asio::use_awaitable);
      auto out = co_await on_store([this] { return fleet->tick(unix_now()); });
      publish(out);
    }
  }

  /// One pass: temporary plain subscriptions (retained messages arrive through receive_loop), the
  /// marker, then the subscriptions are dropped again. Returns whether the marker came back in time.
  asio::awaitable<bool> reconcile_once() {
    ++pass;
    marker_seen = false;
    retained_seen = 0;
    const auto started = std::chrono::steady_clock::now();
    bool ok = true;
    auto sub = co_await client->subscribe(marker_topic(), 1);
    for (auto& f : reconcile_filters()) {
      if (!sub) break;
      sub = co_await client->subscribe(f, 1);
    }
    if (sub) {
      mqtt::Message marker;
      marker.topic = marker_topic();
      marker.payload = std::to_string(pass);
      if (auto r = client->enqueue(marker); !r) sub = r;
    }
    if (!sub) {
      log::warn("reconciliation pass ", pass, ": ", sub.error().message());
      ok = false;
    } else if (!marker_seen) {
      marker_back.expires_after(options.reconcile_deadline);
      co_await marker_back.async_wait(asio::as_tuple(asio::use_awaitable));
      if (!marker_seen) {
        log::warn("reconciliation pass ", pass, " did not finish within ", options.reconcile_deadline.count(),
                  " s (", retained_seen, " retained device messages handled); it is tried again");
        ok = false;
      }
    }
    for (auto& f : reconcile_filters()) {
      auto r = co_await client->unsubscribe(f);
      if (!r) log::warn("reconciliation pass ", pass, ": ", r.error().message());
    }
    if (ok) {
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
      log::info("reconciliation pass ", pass, ": ", retained_seen, " retained device messages in ", ms.count(), " ms");
    }
    co_return ok;
  }

  /// A pass at start, after every reconnection and every reconcile_interval.
  asio::awaitable<void> reconcile_loop() {
    for (;;) {
      reconnected = false;
      const bool ok = co_await reconcile_once();
      if (reconnected) continue;  // the connection was renewed meanwhile: the broker may have lost more
      if (!ok && !client->connected()) {
        // Wait for the reconnection (on_connected cancels this wait).
        reconcile_wake.expires_at(asio::steady_timer::time_point::max());
      } else if (options.reconcile_interval.count() > 0) {
        reconcile_wake.expires_after(options.reconcile_interval);
      } else {
        reconcile_wake.expires_at(asio::steady_timer::time_point::max());
      }
      co_await reconcile_wake.async_wait(asio::as_tuple(asio::use_awaitable));
    }
  }

  asio::awaitable<void> wait_stop() {
    co_await stop_timer.async_wait(asio::as_tuple(asio::use_awaitable));
  }

  asio::awaitable<Result<void>> connect_until_stopped() {
    auto connected = co_await (client->connect() || wait_stop());
    if (connected.index() == 1) co_return fail(Errc::cancelled, "stopped before connecting");
    co_return std::get<0>(connected);
  }
};

Bridge::Bridge(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
Bridge::~Bridge() = default;

Result<std::unique_ptr<Bridge>> Bridge::create(asio::any_io_executor ex, BridgeOptions options) {
  auto impl = std::make_shared<Impl>(ex, std::move(options));
  auto store = Store::open(impl->options.db_path);
  if (!store) return store.error();
  impl->store = std::move(*store);
  impl->fleet = std::make_unique<Fleet>(*impl->store, impl->options.fleet);
  if (!impl->options.shared_group.empty()) {
    // A (re)connection starts a reconciliation pass (after the subscriptions are renewed).
    std::weak_ptr<Impl> weak = impl;
    auto previous = impl->options.mqtt.on_connected;
    impl->options.mqtt.on_connected = [weak, previous] {
      if (previous) previous();
      if (auto i = weak.lock()) {
        i->reconnected = true;
        i->reconcile_wake.cancel();
      }
    };
  }
  auto client = mqtt::Client::create(ex, impl->options.mqtt);
  if (!client) return client.error();
  impl->client = std::move(*client);
  return std::unique_ptr<Bridge>(new Bridge(std::move(impl)));
}

asio::awaitable<Result<void>> Bridge::run() {
  auto impl = impl_;
  if (!impl->options.fleet.artifact_dir.empty()) {
    auto scanned = co_await impl->on_store([i = impl.get()] { return i->fleet->rescan_artifacts(); });
    if (scanned) log::info("artifact catalog: ", *scanned);
    else log::error("artifact catalog: ", scanned.error().message());
  }

  auto connected = co_await impl->connect_until_stopped();
  if (!connected) co_return connected.error().context("tern-bridge");
  log::info("connected to ", impl->options.mqtt.server_uri, " as ", impl->options.mqtt.client_id);

  // What the store says should be out there (a crash may have cut publishing short).
  auto recovered = co_await impl->on_store([i = impl.get()] { return i->fleet->recover(unix_now()); });
  impl->publish(recovered);

  for (auto& filter : subscription_filters(impl->options)) {
    auto r = co_await impl->client->subscribe(filter, 1);
    if (!r) {
      co_await impl->client->disconnect();
      co_return r.error().context("tern-bridge");
    }
  }
  log::info("ready: ", subscription_filters(impl->options).size(), " subscriptions");

  if (impl->options.shared_group.empty())
    co_await (impl->receive_loop() || impl->tick_loop() || impl->wait_stop());
  else
    co_await (impl->receive_loop() || impl->tick_loop() || impl->reconcile_loop() || impl->wait_stop());

  // Last summaries, then leave cleanly (queued publishes are flushed by the disconnect).
  auto out = co_await impl->on_store([i = impl.get()] { return i->fleet->tick(unix_now()); });
  impl->publish(out);
  co_await impl->client->disconnect();
  log::info("stopped after ", impl->processed.load(), " messages in ", impl->batches, " batches");
  co_return Result<void>{};
}

void Bridge::stop() {
  auto impl = impl_;
  impl->stopping = true;
  // An expiry in the past completes the current wait and any later one at once.
  asio::post(impl->ex, [impl] { impl->stop_timer.expires_at(asio::steady_timer::time_point::min()); });
}

std::uint64_t Bridge::processed() const { return impl_->processed.load(); }

Store& Bridge::store() { return *impl_->store; }

}  // namespace tern::bridge
