#include "agent/daemon.hpp"

#include "agent/boot/run_program.hpp"
#include "agent/cli.hpp"
#include "agent/inventory.hpp"
#include "agent/update/updater.hpp"
#include "common/clock.hpp"
#include "common/log.hpp"
#include "common/mqtt/client.hpp"
#include "common/protocol.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <unistd.h>

#include <fstream>
#include <optional>

namespace tern::agent {
namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;
using namespace std::chrono_literals;
using namespace tern::protocol;

namespace {

class Daemon {
 public:
  Daemon(asio::io_context& io, AgentConfig config, std::unique_ptr<Updater> updater)
      : io_(io), config_(std::move(config)), updater_(std::move(updater)), cancel_timer_(io),
        install_ended_(io, asio::steady_timer::time_point::max()) {}

  asio::awaitable<int> run();

 private:
  // --- reporting -------------------------------------------------------------------------------
  void report(const std::string& deployment_id, Status status, std::uint64_t bytes = 0, std::uint64_t total = 0,
              std::uint32_t attempt = 0, const std::string& error = {}) {
    if (deployment_id.empty()) return;  // a command-line install: nobody to tell
    auto seq = updater_->store().next_seq();
    if (!seq) {
      log::error("allocating a status sequence number: ", seq.error().message());
      return;
    }
    StatusEvent ev{.deployment_id = deployment_id,
                   .status = status,
                   .bytes = bytes,
                   .total = total,
                   .attempt = attempt,
                   .error = error,
                   .time = unix_now(),
                   .seq = *seq};
    log::info("status ", deployment_id, ": ", to_string(status), error.empty() ? "" : " (" + error + ")");
    // Paho stores it (file persistence) until the broker has it, across reconnects and restarts.
    if (auto r = client_->enqueue({.topic = topics::status(config_.device_id), .payload = serialize(ev)}); !r)
      log::error(r.error().message());
  }

  /// Reports a finished install once, and remembers its deployment as done.
  void report_finished(const InstallState& s) {
    if (s.reported) return;
    if (!s.deployment_id.empty()) {
      Status st = s.already_installed ? Status::already_installed : s.success ? Status::success : Status::failure;
      report(s.deployment_id, st, s.total, s.total, s.attempt, s.success ? "" : s.error);
      if (auto r = updater_->store().add_finished_deployment(s.deployment_id); !r) log::error(r.error().message());
    }
    if (auto r = updater_->mark_reported(); !r) log::error(r.error().message());
    inventory_dirty_ = true;
  }

  void publish_inventory(bool force) {
    auto installed = updater_->installed();
    if (!installed) {
      log::error(installed.error().message());
      return;
    }
    auto inv = collect_inventory(config_, *installed, updater_->slots());
    if (!force && inv == last_inventory_) return;
    last_inventory_ = inv;
    if (auto r = client_->enqueue(
            {.topic = topics::inventory(config_.device_id), .payload = serialize(inv), .retained = true});
        !r)
      log::error(r.error().message());
  }

  void publish_presence(bool online) {
    Presence p{.online = online, .seq = presence_seq_, .time = unix_now()};
    if (auto r = client_->enqueue(
            {.topic = topics::presence(config_.device_id), .payload = serialize(p), .retained = true});
        !r)
      log::warn(r.error().message());
  }

  // --- the update --------------------------------------------------------------------------------
  /// What to do once an install (or the recovery after a reboot) wants a reboot.
  asio::awaitable<void> reboot(const std::string& deployment_id, std::uint32_t attempt) {
    report(deployment_id, Status::rebooting, 0, 0, attempt);
    // Give the broker a moment to take the statuses now; Paho keeps them otherwise.
    asio::steady_timer t(io_, 500ms);
    co_await t.async_wait(asio::use_awaitable);
    if (config_.reboot_command.empty()) {
      exit_code_ = exit_reboot_requested;
      stop();
      co_return;
    }
    log::info("rebooting: ", config_.reboot_command);
    auto run = run_program({"sh", "-c", config_.reboot_command});
    int rc = run ? run->exit_code : -1;
    if (rc != 0) log::error("RebootCommand '", config_.reboot_command, "' failed with status ", rc);
    exit_code_ = rc == 0 ? 0 : 1;
    stop();
  }

  /// After a start: continue the state machine; returns false when the daemon must stop (reboot).
  asio::awaitable<bool> recover() {
    auto rec = updater_->recover();
    if (!rec) {
      log::error("resuming the install: ", rec.error().message());
      co_return true;
    }
    auto st = updater_->state();
    if (!st) co_return true;
    if (rec->interrupted) {
      // An interrupted command-line install (no deployment) is not the daemon's to run again.
      auto next = updater_->next_attempt(st->deployment_id.empty());
      if (!next) {
        log::error("resuming the install: ", next.error().message());
      } else if (*next) {
        Deployment d{.deployment_id = (*next)->deployment_id,
                     .artifact_name = st->artifact_name,
                     .url = (*next)->source,
                     .size = (*next)->expected_size,
                     .sha256 = (*next)->expected_sha256};
        start_install(d, (*next)->attempt);
      } else if (auto f = updater_->state(); f) {
        report_finished(*f);
      }
      co_return true;
    }
    if (rec->reboot) {
      co_await reboot(st->deployment_id, st->attempt);
      co_return false;
    }
    if (rec->finished) report_finished(*rec->finished);
    else if (st->phase == Phase::done) report_finished(*st);
    co_return true;
  }

  void start_install(const Deployment& d, std::uint32_t attempt) {
    current_ = d;
    cancel_signal_.emplace();
    ++install_generation_;
    asio::co_spawn(io_, install(d, attempt, install_generation_),
                   asio::bind_cancellation_slot(cancel_signal_->slot(), [](std::exception_ptr e) {
                     if (e) try {
                         std::rethrow_exception(e);
                       } catch (const std::exception& ex) {
                         log::error("install task: ", ex.what());
                       }
                   }));
  }

  /// Cancels the running install; waits until it has stopped.
  asio::awaitable<void> cancel_install() {
    if (!current_ || !cancel_signal_) co_return;
    cancel_signal_->emit(asio::cancellation_type::terminal);
    // install() fires install_ended_ (never expiring: only cancel() wakes its waiters) as it ends.
    while (current_) co_await install_ended_.async_wait(asio::as_tuple(asio::use_awaitable));
  }

  asio::awaitable<void> install(Deployment d, std::uint32_t attempt, std::uint64_t generation) {
    report(d.deployment_id, Status::downloading, 0, d.size, attempt);
    auto last = std::chrono::steady_clock::now();
    ProgressFn progress = [&](const PipelineProgress& p) {
      auto now = std::chrono::steady_clock::now();
      if (now - last < config_.progress_interval) return;
      last = now;
      report(d.deployment_id, Status::downloading, p.artifact_bytes, p.artifact_total ? p.artifact_total : d.size,
             static_cast<std::uint32_t>(attempt));
    };
    InstallRequest req{.source = d.url,
                       .deployment_id = d.deployment_id,
                       .expected_size = d.size,
                       .expected_sha256 = d.sha256,
                       .attempt = attempt};
    auto result = co_await updater_->install(req, progress);
    bool cancelled = !result && result.error().code() == make_error_code(Errc::cancelled);
    if (generation == install_generation_) {
      current_.reset();
      install_ended_.cancel();
    }

    if (cancelled && stopping_) co_return;  // SIGTERM: retried on the next start
    if (cancelled) {
      // Cancelled by the operator (empty deployment) or by a newer deployment.
      auto f = updater_->fail_install("aborted: " + result.error().message());
      report(d.deployment_id, Status::aborted, 0, d.size, attempt, "cancelled by a newer or empty deployment");
      if (auto r = updater_->store().add_finished_deployment(d.deployment_id); !r) log::error(r.error().message());
      if (f) (void)updater_->mark_reported();
      co_return;
    }
    if (!result) {
      log::error(result.error().message());
      auto st = updater_->state();
      if (st) report_finished(*st);
      publish_inventory(false);
      co_return;
    }
    if (result->already_installed) {
      auto st = updater_->state();
      if (st) report_finished(*st);
      co_return;
    }
    report(d.deployment_id, Status::installing, result->stats.artifact_bytes, result->stats.artifact_bytes, attempt);
    co_await reboot(d.deployment_id, attempt);
  }

  /// A message on our deployment topic.
  asio::awaitable<void> on_deployment(const mqtt::Message& m) {
    if (m.payload.empty()) {
      if (current_) {
        log::info("deployment ", current_->deployment_id, " withdrawn: cancelling");
        co_await cancel_install();
      }
      co_return;
    }
    auto d = parse_deployment(m.payload);
    if (!d) {
      log::warn("ignoring a malformed deployment on ", m.topic, ": ", d.error().message());
      co_return;
    }
    if (current_ && current_->deployment_id == d->deployment_id) co_return;  // already running
    auto finished = updater_->store().finished_deployments();
    if (finished && std::find(finished->begin(), finished->end(), d->deployment_id) != finished->end()) {
      log::debug("deployment ", d->deployment_id, " already finished here; ignored");
      co_return;
    }
    auto st = updater_->state();
    if (st && st->deployment_id == d->deployment_id && st->phase != Phase::idle && st->phase != Phase::done)
      co_return;  // in progress across a reboot: recover() drives it
    if (st && st->phase != Phase::idle && st->phase != Phase::done && st->phase != Phase::downloading) {
      log::warn("deployment ", d->deployment_id, " arrived while ", st->artifact_name, " waits for its reboot/commit; ignored");
      co_return;
    }
    if (current_) {
      log::info("deployment ", d->deployment_id, " replaces ", current_->deployment_id);
      co_await cancel_install();
    }
    auto installed = updater_->installed();
    if (installed && installed->artifact_name == d->artifact_name) {
      report(d->deployment_id, Status::already_installed, 0, d->size, 1);
      if (auto r = updater_->store().add_finished_deployment(d->deployment_id); !r) log::error(r.error().message());
      co_return;
    }
    start_install(*d, 1);
  }

  asio::awaitable<void> receive_loop() {
    for (;;) {
      auto m = co_await client_->receive();
      if (!m) co_return;
      if (m->topic == topics::deployment(config_.device_id)) {
        if (m->payload.size() > max_message_size) {
          log::warn("ignoring an oversized deployment message (", m->payload.size(), " bytes)");
          continue;
        }
        co_await on_deployment(*m);
      } else {
        log::debug("ignoring a message on ", m->topic);
      }
    }
  }

  asio::awaitable<void> inventory_loop() {
    for (;;) {
      asio::steady_timer t(io_, config_.inventory_interval);
      auto [ec] = co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
      if (ec || stopping_) co_return;
      publish_inventory(inventory_dirty_);
      inventory_dirty_ = false;
    }
  }

  asio::awaitable<void> signal_loop() {
    asio::signal_set signals(io_, SIGTERM, SIGINT, SIGUSR2);
    for (;;) {
      auto [ec, sig] = co_await signals.async_wait(asio::as_tuple(asio::use_awaitable));
      if (ec) co_return;
      if (sig == SIGUSR2) {
        log::info("SIGUSR2: sending inventory");
        publish_inventory(true);
        continue;
      }
      log::info(sig == SIGTERM ? "SIGTERM" : "SIGINT", ": stopping");
      stopping_ = true;
      co_await cancel_install();
      stop();
      co_return;
    }
  }

  void stop() {
    stopping_ = true;
    cancel_timer_.cancel();
  }

  asio::io_context& io_;
  AgentConfig config_;
  std::unique_ptr<Updater> updater_;
  std::unique_ptr<mqtt::Client> client_;
  asio::steady_timer cancel_timer_;  // run() waits on it; stop() fires it
  asio::steady_timer install_ended_;  // cancel_install() waits on it; install() fires it
  std::optional<Deployment> current_;
  std::optional<asio::cancellation_signal> cancel_signal_;
  std::uint64_t install_generation_ = 0;
  std::uint64_t presence_seq_ = 0;
  Inventory last_inventory_;
  bool inventory_dirty_ = true;
  bool stopping_ = false;
  int exit_code_ = 0;
};

asio::awaitable<int> Daemon::run() {
  if (config_.device_id.empty() || config_.broker_uri.empty()) {
    log::error("the daemon needs DeviceID and BrokerURI in its configuration");
    co_return 1;
  }
  // The presence sequence of this run: higher than any earlier run's, so a late last will of an
  // earlier connection never overwrites this run's "online".
  auto seq = updater_->store().next_seq();
  if (!seq) {
    log::error(seq.error().message());
    co_return 1;
  }
  presence_seq_ = *seq;
  mqtt::Options o{.server_uri = config_.broker_uri,
                  .client_id = config_.device_id,
                  .ca_file = config_.server_ca,
                  .cert_file = config_.client_cert,
                  .key_file = config_.client_key,
                  .session_expiry = config_.session_expiry,
                  .keepalive = config_.keepalive};
  o.will = mqtt::Message{.topic = topics::presence(config_.device_id),
                         .payload = serialize(Presence{.online = false, .seq = presence_seq_, .time = unix_now()}),
                         .retained = true};
  o.persistence_dir = config_.data_dir / "mqtt";
  o.min_retry = config_.retry_min;
  o.max_retry = config_.retry_max;
  o.on_connected = [this] {
    log::info("connected to ", config_.broker_uri);
    publish_presence(true);
  };
  o.on_connection_lost = [](const std::string& cause) { log::warn("connection lost: ", cause); };
  auto client = mqtt::Client::create(io_.get_executor(), o);
  if (!client) {
    log::error(client.error().message());
    co_return 1;
  }
  client_ = std::move(*client);

  asio::co_spawn(io_, signal_loop(), asio::detached);
  // First the state machine (a reboot may have happened): its outcome is queued for the broker.
  bool go_on = co_await recover();
  if (go_on && !stopping_) {
    auto c = co_await client_->connect();
    if (!c) {
      log::error(c.error().message());
      co_return 1;
    }
    auto s = co_await client_->subscribe(topics::deployment(config_.device_id), 1);
    if (!s) log::error(s.error().message());
    publish_inventory(true);
    inventory_dirty_ = false;
    asio::co_spawn(io_, receive_loop(), asio::detached);
    asio::co_spawn(io_, inventory_loop(), asio::detached);
  }
  // Wait until stop().
  cancel_timer_.expires_at(std::chrono::steady_clock::time_point::max());
  if (!stopping_) co_await cancel_timer_.async_wait(asio::as_tuple(asio::use_awaitable));
  if (exit_code_ == 0 || exit_code_ == exit_reboot_requested) {
    if (client_->connected()) {
      // A clean goodbye: the broker does not publish the will after DISCONNECT.
      if (exit_code_ == 0) publish_presence(false);
      asio::steady_timer t(io_, 300ms);
      co_await t.async_wait(asio::use_awaitable);
      // Bounded: with the broker gone the DISCONNECT never completes, and SIGTERM must not hang.
      asio::steady_timer limit(io_, 2s);
      auto bye = client_->disconnect();
      auto give_up = limit.async_wait(asio::use_awaitable);
      co_await (std::move(bye) || std::move(give_up));
    }
  }
  co_return exit_code_;
}

}  // namespace

int run_daemon(const AgentConfig& config) {
  auto updater = Updater::open(config);
  if (!updater) {
    log::error(updater.error().message());
    return 1;
  }
  {
    std::ofstream pid(config.data_dir / "daemon.pid");
    pid << ::getpid() << "\n";
  }
  asio::io_context io;
  Daemon daemon(io, config, std::move(*updater));
  int rc = 1;
  asio::co_spawn(io, daemon.run(), [&](std::exception_ptr e, int code) {
    if (e) {
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        log::error("daemon: ", ex.what());
      }
      rc = 1;
    } else {
      rc = code;
    }
    io.stop();
  });
  io.run();
  std::filesystem::remove(config.data_dir / "daemon.pid");
  return rc;
}

}  // namespace tern::agent
