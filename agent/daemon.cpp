#include "agent/daemon.hpp"

#include "agent/cli.hpp"
#include "agent/inventory.hpp"
#include "agent/update/reboot_gate.hpp"
#include "agent/update/updater.hpp"
#include "common/blocking.hpp"
#include "common/clock.hpp"
#include "common/file.hpp"
#include "common/log.hpp"
#include "common/log_protocol.hpp"
#include "common/mqtt/client.hpp"
#include "common/process.hpp"
#include "common/protocol.hpp"
#include "common/supervise.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/experimental/channel.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <variant>

namespace tern::agent {
namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;
using namespace std::chrono_literals;
using namespace tern::protocol;

namespace {

// RebootCommand gets this long to return (a real reboot kills us sooner).
constexpr std::chrono::seconds reboot_command_timeout{60};

/// A wake-up between two of the daemon's tasks: ring() never blocks and rings coalesce; the
/// waiter then looks at the state it cares about (the doorbell carries nothing).
class Doorbell {
 public:
  explicit Doorbell(const asio::any_io_executor& ex) : ch_(ex, 1) {}
  void ring() { ch_.try_send(boost::system::error_code{}); }
  /// Forgets a ring not waited for yet (the waiter is about to look at the state anyway).
  void clear() { ch_.try_receive([](boost::system::error_code) {}); }
  asio::awaitable<void> wait() { co_await ch_.async_receive(asio::use_awaitable); }

 private:
  asio::experimental::channel<void(boost::system::error_code)> ch_;
};

/// The latest message on the deployment topic: a deployment to run, or a withdrawal (empty).
using DeploymentMessage = std::optional<Deployment>;

/// After a restart: an install written and waiting for its reboot window or go-ahead.
struct Paused {
  InstallJob job;
};

/// `op`, with an exception turned into an error value.
template <class T>
asio::awaitable<Result<T>> catching(asio::awaitable<Result<T>> op) {
  try {
    co_return co_await std::move(op);
  } catch (const std::exception& e) {
    co_return fail(Errc::internal, e.what());
  }
}

InstallJob job_for(const Deployment& d, std::uint32_t attempt) {
  return InstallJob{.deployment_id = d.deployment_id,
                    .artifact_name = d.artifact_name,
                    .source = d.url,
                    .size = d.size,
                    .sha256 = d.sha256,
                    .attempt = attempt,
                    .max_rate = d.max_rate,
                    .reboot = d.reboot};
}

class Daemon {
 public:
  Daemon(asio::io_context& io, AgentConfig config, std::unique_ptr<Updater> updater)
      : io_(io), config_(std::move(config)), updater_(std::move(updater)), deployment_bell_(io.get_executor()),
        inventory_bell_(io.get_executor()), reboot_bell_(io.get_executor()) {}

  asio::awaitable<int> run();

 private:
  // --- blocking work -------------------------------------------------------------------------------
  /// The state store and the boot environment, one call at a time, off the io thread.
  template <class F>
  auto state_op(F f) {
    return offload(updater_->blocking().serial(), [f = std::move(f)](std::stop_token) mutable { return f(); });
  }

  // --- reporting -------------------------------------------------------------------------------
  /// The statuses that carry bytes fetched and reused: progress, and a finished install's.
  static bool carries_transfer(Status s) {
    return s == Status::downloading || s == Status::installing || s == Status::success;
  }

  /// `seq` 0: the next sequence number.
  void report(const InstallJob& job, Status status, std::uint64_t bytes = 0, std::uint64_t total = 0,
              const std::string& error = {}, std::uint64_t seq_number = 0, std::uint64_t eta = 0) {
    if (job.deployment_id.empty()) return;  // a command-line install: nobody to tell
    // From memory: the numbers are reserved on disk ahead (reserve_seq), so this never blocks.
    auto seq = seq_number ? Result<std::uint64_t>(seq_number) : updater_->store().next_seq();
    if (!seq) {
      log::error("allocating a status sequence number: ", seq.error().message());
      return;
    }
    StatusEvent ev{.deployment_id = job.deployment_id,
                   .status = status,
                   .bytes = bytes,
                   .total = total,
                   .attempt = job.attempt,
                   .error = error,
                   .time = unix_now(),
                   .seq = *seq,
                   .eta = eta,
                   .bytes_fetched = carries_transfer(status) ? fetched_ : 0,
                   .bytes_reused = carries_transfer(status) ? reused_ : 0};
    log::info("status ", job.deployment_id, ": ", to_string(status), error.empty() ? "" : " (" + error + ")");
    // Paho stores it (file persistence) until the broker has it, across reconnects and restarts.
    // Retained: the broker keeps each device's last status, which the bridges reconcile against
    // their store (a status lost on its way to a bridge is not lost for good).
    if (auto r = client_->enqueue({.topic = topics::status(config_.device_id), .payload = serialize(ev), .retained = true});
        !r)
      log::error(r.error().message());
  }

  /// Reports a finished install once, and remembers its deployment as done. The final status's
  /// sequence number is saved before it is sent: a power cut before `reported` is saved sends it
  /// again with the same number, which the fleet drops as a repeat.
  asio::awaitable<void> report_finished(const InstallState& s_arg) {
    if (s_arg.reported) co_return;
    auto prepared = co_await state_op([this] { return updater_->final_status_seq(); });
    if (!prepared) {
      log::error("reporting the finished install: ", prepared.error().message());
      co_return;
    }
    const InstallState s = *prepared;
    if (!s.job.deployment_id.empty()) {
      Status st = s.already_installed ? Status::already_installed
                  : s.aborted         ? Status::aborted
                  : s.success         ? Status::success
                                      : Status::failure;
      if (st == Status::failure) co_await send_log(s);  // before the status: there when it is seen
      // The install's figures, kept in the state across the reboot: the last status, which the
      // broker retains and the bridges reconcile from, says what the install cost.
      fetched_ = s.bytes_fetched;
      reused_ = s.bytes_reused;
      report(s.job, st, s.aborted ? 0 : s.job.size, s.job.size, s.success ? "" : s.error, s.final_seq);
    }
    auto r = co_await state_op([&]() -> Result<void> {
      if (!s.job.deployment_id.empty())
        if (auto a = updater_->store().add_finished_deployment(s.job.deployment_id); !a) return a;
      return updater_->mark_reported();
    });
    if (!r) log::error(r.error().message());
    inventory_changed();
  }

  /// A failed deployment's log, in pieces on tern/devices/{id}/log, queued like the statuses (the
  /// same final seq after a power cut: the bridge keeps each piece once).
  asio::awaitable<void> send_log(const InstallState& s_arg) {
    const InstallState s = s_arg;
    auto text = co_await offload(updater_->blocking().any(), [this, &s](std::stop_token) {
      return updater_->deployment_log().read(s.job.deployment_id);
    });
    if (!text) {
      log::warn("deployment ", s.job.deployment_id, ": no log to send: ", text.error().message());
      co_return;
    }
    auto pieces = split_log(*text);
    for (std::size_t i = 0; i < pieces.size(); ++i) {
      const LogPiece piece{.deployment_id = s.job.deployment_id,
                           .seq = s.final_seq,
                           .part = static_cast<std::uint32_t>(i),
                           .parts = static_cast<std::uint32_t>(pieces.size()),
                           .data = std::move(pieces[i])};
      if (auto r = client_->enqueue({.topic = topics::log(config_.device_id), .payload = serialize(piece)}); !r)
        log::error("sending the deployment log: ", r.error().message());
    }
    log::info("deployment ", s.job.deployment_id, ": sent its log (", text->size(), " bytes, ", pieces.size(), " pieces)");
  }

  void publish_presence(bool online) {
    Presence p{.online = online, .seq = presence_seq_, .time = unix_now()};
    if (auto r = client_->enqueue(
            {.topic = topics::presence(config_.device_id), .payload = serialize(p), .retained = true});
        !r)
      log::warn(r.error().message());
  }

  /// After a deployment: the inventory is sent again (the artifact and provides changed).
  void inventory_changed() {
    inventory_force_ = true;
    inventory_bell_.ring();
  }

  // --- the tasks ---------------------------------------------------------------------------------
  /// SIGTERM/SIGINT end the daemon; SIGUSR2 sends the inventory now.
  asio::awaitable<TaskExit> signals() {
    asio::signal_set signals(io_, SIGTERM, SIGINT, SIGUSR2);
    for (;;) {
      int sig = co_await signals.async_wait(asio::use_awaitable);
      if (sig == SIGUSR2) {
        log::info("SIGUSR2: sending inventory");
        inventory_changed();
        continue;
      }
      log::info(sig == SIGTERM ? "SIGTERM" : "SIGINT", ": stopping");
      co_return TaskExit{0, sig == SIGTERM ? "SIGTERM" : "SIGINT"};
    }
  }

  /// Messages from the broker. Deployments are checked here (no I/O) and handed to installs() as
  /// the latest one: the topic is retained, each message replaces the one before.
  asio::awaitable<TaskExit> deployments() {
    for (;;) {
      auto m = co_await client_->receive();
      if (!m) co_return TaskExit{1, "receiving MQTT messages: " + m.error().message()};
      if (m->topic == topics::reboot(config_.device_id)) {
        go_ahead_message(m->payload);
        continue;
      }
      if (m->topic != topics::deployment(config_.device_id)) {
        log::debug("ignoring a message on ", m->topic);
        continue;
      }
      if (m->payload.size() > max_message_size) {
        log::warn("ignoring an oversized deployment message (", m->payload.size(), " bytes)");
        continue;
      }
      DeploymentMessage latest;
      if (!m->payload.empty()) {
        auto d = parse_deployment(m->payload);
        if (!d) {
          log::warn("ignoring a malformed deployment on ", m->topic, ": ", d.error().message());
          continue;
        }
        if (current_ && current_->deployment_id == d->deployment_id) continue;  // already running
        log::debug("deployment ", d->deployment_id, " received");
        latest = std::move(*d);
      } else if (!current_) {
        latest_.reset();  // a withdrawal with nothing running: forget a deployment not started yet
        continue;
      }
      latest_ = std::move(latest);
      deployment_bell_.ring();
    }
  }

  /// The periodic inventory (sent when it changed), and at once when asked.
  asio::awaitable<TaskExit> inventory() {
    for (;;) {
      const bool force = inventory_force_;
      inventory_force_ = false;
      // Scripts may take up to their timeout each: on the pool, never in the way of statuses.
      auto inv = co_await offload(updater_->blocking().any(), [this](std::stop_token stop) -> Result<Inventory> {
        auto installed = updater_->installed();
        if (!installed) return installed.error();
        return collect_inventory(config_, *installed, updater_->slots(), stop);
      });
      if (!inv) {
        log::error("collecting the inventory: ", inv.error().message());
      } else if (force || *inv != last_inventory_) {
        last_inventory_ = *inv;
        if (auto r = client_->enqueue(
                {.topic = topics::inventory(config_.device_id), .payload = serialize(*inv), .retained = true});
            !r)
          log::error(r.error().message());
      }
      // Test hook: a task that throws must end the daemon with its error, never leave it half
      // alive. Never set outside tests.
      if (const char* hook = std::getenv("TERN_TEST_THROW_IN_INVENTORY"); hook && *hook)
        throw std::runtime_error(std::string("test hook: ") + hook);
      asio::steady_timer timer(io_, config_.inventory_interval);
      co_await (timer.async_wait(asio::use_awaitable) || inventory_bell_.wait());
    }
  }

  /// Runs deployments one at a time, the latest first; ends the daemon when one needs a reboot.
  asio::awaitable<TaskExit> installs(std::optional<InstallJob> resumed, bool paused) {
    if (resumed) {
      // g++ 12: no co_await inside a conditional expression.
      std::optional<TaskExit> exit;
      if (paused) exit = co_await await_reboot(*resumed);
      else exit = co_await run_job(*resumed);
      if (exit) co_return *exit;
    }
    for (;;) {
      if (!latest_) {
        co_await deployment_bell_.wait();
        continue;
      }
      deployment_bell_.clear();  // this look at latest_ answers it
      DeploymentMessage message = std::move(*latest_);
      latest_.reset();
      if (!message) continue;  // a withdrawal with nothing running
      const Deployment d = *message;
      current_ = job_for(d, 1);  // from here on a repeat of this message is not news
      auto job = co_await admit(d);
      if (!job) {
        current_.reset();
        continue;
      }
      auto exit = co_await run_job(*job);
      if (exit) co_return *exit;
    }
  }

  /// Whether deployment `d` should run now; reports already-installed itself.
  asio::awaitable<std::optional<InstallJob>> admit(const Deployment& d_arg) {
    const Deployment d = d_arg;
    struct Look {
      bool finished = false;
      InstallState state;
      Installed installed;
    };
    auto look = co_await state_op([&]() -> Result<Look> {
      Look l;
      auto finished = updater_->store().finished_deployments();
      if (!finished) return finished.error();
      l.finished = std::find(finished->begin(), finished->end(), d.deployment_id) != finished->end();
      auto st = updater_->state();
      if (!st) return st.error();
      l.state = *st;
      auto installed = updater_->installed();
      if (!installed) return installed.error();
      l.installed = *installed;
      return l;
    });
    if (!look) {
      log::error("deployment ", d.deployment_id, ": ", look.error().message());
      co_return std::nullopt;
    }
    if (look->finished) {
      log::debug("deployment ", d.deployment_id, " already finished here; ignored");
      co_return std::nullopt;
    }
    const Phase phase = look->state.phase;
    const bool in_progress = phase != Phase::idle && phase != Phase::done;
    if (in_progress && look->state.job.deployment_id == d.deployment_id && phase != Phase::downloading)
      co_return std::nullopt;  // across a reboot: recovery drives it
    if (in_progress && phase != Phase::downloading) {
      log::warn("deployment ", d.deployment_id, " arrived while ", look->state.artifact_name,
                " waits for its reboot/commit; ignored");
      co_return std::nullopt;
    }
    const InstallJob job = job_for(d, 1);
    if (look->installed.artifact_name == d.artifact_name) {
      report(job, Status::already_installed, 0, d.size);
      auto r = co_await state_op([&] { return updater_->store().add_finished_deployment(d.deployment_id); });
      if (!r) log::error(r.error().message());
      co_return std::nullopt;
    }
    co_return job;
  }

  /// One install, raced against the next deployment message (which interrupts it). Returns how
  /// the daemon ends when the install needs a reboot.
  asio::awaitable<std::optional<TaskExit>> run_job(const InstallJob& job_arg) {
    const InstallJob job = job_arg;
    current_ = job;
    fetched_ = reused_ = 0;
    report(job, Status::downloading, 0, job.size);
    auto last = std::chrono::steady_clock::now();
    std::uint64_t last_bytes = 0;
    ProgressFn progress = [&](const PipelineProgress& p) {
      auto now = std::chrono::steady_clock::now();
      if (now - last < config_.progress_interval) return;
      const std::uint64_t total = p.artifact_total ? p.artifact_total : job.size;
      // ETA at the rate of the last interval: under a bandwidth cap, the cap.
      const double seconds = std::chrono::duration<double>(now - last).count();
      const double rate = p.artifact_bytes > last_bytes ? static_cast<double>(p.artifact_bytes - last_bytes) / seconds : 0;
      const std::uint64_t eta = rate > 0 && total > p.artifact_bytes
                                    ? static_cast<std::uint64_t>(static_cast<double>(total - p.artifact_bytes) / rate) + 1
                                    : 0;
      last = now;
      last_bytes = p.artifact_bytes;
      fetched_ = p.network_bytes;
      reused_ = p.reused;
      report(job, Status::downloading, p.artifact_bytes, total, {}, 0, eta);
    };
    // Both operands complete with a value: `||` waits for a success, so an exception escaping the
    // install would leave it waiting for the next deployment message.
    auto install = catching(updater_->install(job, progress));
    auto interrupted = deployment_bell_.wait();
    auto outcome = co_await (std::move(install) || std::move(interrupted));
    current_.reset();
    // Keep the sequence reservation ahead of the statuses (a write, on the pool).
    if (updater_->store().seq_running_low()) {
      auto r = co_await state_op([this] { return updater_->store().reserve_seq(); });
      if (!r) log::error("reserving status sequence numbers: ", r.error().message());
    }

    if (outcome.index() == 1) {
      // Past its download (an update module's states run to their end), the install is not given
      // up: it finished, or waits for its reboot.
      auto now = co_await state_op([this] { return updater_->state(); });
      if (now && now->job.deployment_id == job.deployment_id &&
          (now->phase == Phase::done || now->phase == Phase::switched)) {
        if (now->phase == Phase::done) {
          co_await report_finished(*now);
          co_return std::nullopt;
        }
        report(job, Status::rebooting);
        co_return TaskExit{exit_reboot_requested, "reboot to go on with the install"};
      }
      // A newer deployment, or the withdrawal of this one: this install is given up.
      log::info("deployment ", job.deployment_id, latest_ && *latest_ ? " replaced by " + (*latest_)->deployment_id
                                                                      : std::string(" withdrawn"),
                ": cancelled");
      auto aborted = co_await state_op([this] {
        return updater_->fail_install("cancelled by a newer or empty deployment", true);
      });
      if (aborted) co_await report_finished(*aborted);
      else log::error(aborted.error().message());
      co_return std::nullopt;
    }
    auto& result = std::get<0>(outcome);
    if (!result) {
      if (is(result.error(), AgentErrc::interrupted)) co_return std::nullopt;  // we are stopping
      if (!is(result.error(), AgentErrc::already_installed)) log::error(result.error().message());
      auto st = co_await state_op([this] { return updater_->state(); });
      if (st) co_await report_finished(*st);
      co_return std::nullopt;
    }
    fetched_ = result->stats.network_bytes;
    reused_ = result->stats.reused;
    report(job, Status::installing, result->stats.artifact_bytes, result->stats.artifact_bytes);
    if (result->finished) {  // an update module that needed no reboot: committed already
      co_await report_finished(*result->finished);
      co_return std::nullopt;
    }
    if (result->paused) {
      auto exit = co_await await_reboot(job);
      co_return exit;
    }
    report(job, Status::rebooting);
    co_return TaskExit{exit_reboot_requested, "reboot into the new partition"};
  }

  /// tern/devices/{id}/reboot: the operator's go-ahead (retained; one for another deployment is
  /// kept too, and matters only if that deployment is the one waiting).
  void go_ahead_message(const std::string& payload) {
    if (payload.empty()) return;
    auto cmd = parse_reboot_command(payload);
    if (!cmd) {
      log::warn("ignoring a malformed reboot command: ", cmd.error().message());
      return;
    }
    go_ahead_ = cmd->deployment_id;
    reboot_bell_.ring();
  }

  /// The go-ahead for `deployment_id`, whenever it comes.
  asio::awaitable<void> go_ahead_for(const std::string& deployment_id) {
    while (go_ahead_ != deployment_id) co_await reboot_bell_.wait();
  }

  /// An install written and paused: waits for its window or the go-ahead, raced against the next
  /// deployment message (a withdrawal or a newer deployment gives it up: nothing was switched).
  asio::awaitable<std::optional<TaskExit>> await_reboot(const InstallJob& job_arg) {
    const InstallJob job = job_arg;
    current_ = job;
    auto policy = parse_reboot_policy(job.reboot);
    if (!policy) policy = RebootPolicy{.kind = RebootPolicy::Kind::on_command};  // checked on arrival
    const RebootGate gate(*policy, system_local_clock());
    // An open window goes straight on: no pause to report.
    if (!gate.open_now()) {
      report(job, Status::pause_before_rebooting, job.size, job.size);
      log::info("deployment ", job.deployment_id, ": written; waiting to reboot (", to_string(*policy), ")");
    }
    auto ex = co_await asio::this_coro::executor;
    auto window = gate.wait_for_window(ex);
    auto command = go_ahead_for(job.deployment_id);
    auto interrupted = deployment_bell_.wait();
    auto outcome = co_await (std::move(window) || std::move(command) || std::move(interrupted));
    current_.reset();
    if (outcome.index() == 2) {
      log::info("deployment ", job.deployment_id, " withdrawn or replaced while waiting to reboot: cancelled");
      auto aborted = co_await state_op([this] {
        return updater_->fail_install("cancelled by a newer or empty deployment", true);
      });
      if (aborted) co_await report_finished(*aborted);
      else log::error(aborted.error().message());
      co_return std::nullopt;
    }
    auto ahead = co_await state_op([this] { return updater_->go_ahead(); });
    if (!ahead) {
      log::error("deployment ", job.deployment_id, ": ", ahead.error().message());
      co_return std::nullopt;
    }
    auto rec = co_await offload(updater_->blocking().serial(),
                                [this](std::stop_token stop) { return updater_->recover(stop); });
    if (!rec || !rec->reboot) {
      log::error("deployment ", job.deployment_id, ": storing the switch: ",
                 rec ? "no reboot asked" : rec.error().message());
      auto st = co_await state_op([this] { return updater_->state(); });
      if (st && st->phase == Phase::done) co_await report_finished(*st);
      co_return std::nullopt;
    }
    report(job, Status::rebooting);
    co_return TaskExit{exit_reboot_requested, "reboot into the new partition"};
  }

  /// After a start: the state machine goes on (a reboot may have happened). Returns how the daemon
  /// ends when it needs a reboot right away, or the interrupted install to run again.
  asio::awaitable<std::variant<std::monostate, TaskExit, InstallJob, Paused>> recover() {
    using Out = std::variant<std::monostate, TaskExit, InstallJob, Paused>;
    // The health check may take minutes: on the pool, stopped (and killed) if the daemon stops.
    auto rec = co_await offload(updater_->blocking().serial(),
                                [this](std::stop_token stop) { return updater_->recover(stop); });
    if (!rec) {
      if (rec.error().code() == make_error_code(Errc::cancelled)) co_return Out{TaskExit{0, "stopped"}};
      log::error("resuming the install: ", rec.error().message());
      co_return Out{};
    }
    auto st = co_await state_op([this] { return updater_->state(); });
    if (!st) co_return Out{};
    if (rec->interrupted) {
      // An interrupted command-line install (no deployment) is not the daemon's to run again.
      const bool give_up = st->job.deployment_id.empty();
      auto next = co_await state_op([this, give_up] { return updater_->next_attempt(give_up); });
      if (!next) {
        log::error("resuming the install: ", next.error().message());
        co_return Out{};
      }
      if (*next) co_return Out{**next};
      auto failed = co_await state_op([this] { return updater_->state(); });
      if (failed) co_await report_finished(*failed);
      co_return Out{};
    }
    if (rec->paused) co_return Out{Paused{st->job}};
    if (rec->reboot) {
      report(st->job, Status::rebooting);
      co_return Out{TaskExit{exit_reboot_requested, "reboot to go on with the install"}};
    }
    if (rec->finished) co_await report_finished(*rec->finished);
    else if (st->phase == Phase::done) co_await report_finished(*st);
    co_return Out{};
  }

  /// Recovery, the broker session, then the tasks that run until one of them ends the daemon.
  asio::awaitable<TaskExit> session() {
    auto recovered = co_await recover();
    if (auto* exit = std::get_if<TaskExit>(&recovered)) co_return *exit;
    std::optional<InstallJob> resumed;
    if (auto* job = std::get_if<InstallJob>(&recovered)) resumed = *job;
    const bool paused = std::holds_alternative<Paused>(recovered);
    if (paused) resumed = std::get<Paused>(recovered).job;

    auto c = co_await client_->connect();
    if (!c) co_return TaskExit{1, c.error().message()};
    auto s = co_await client_->subscribe(topics::deployment(config_.device_id), 1);
    if (!s) log::error(s.error().message());
    if (auto r = co_await client_->subscribe(topics::reboot(config_.device_id), 1); !r) log::error(r.error().message());
    inventory_force_ = true;
    auto ended = co_await (guarded("deployments", deployments()) || guarded("inventory", inventory()) ||
                           guarded("installs", installs(resumed, paused)));
    co_return first_exit(ended);
  }

  asio::io_context& io_;
  AgentConfig config_;
  std::unique_ptr<Updater> updater_;
  std::unique_ptr<mqtt::Client> client_;
  std::optional<InstallJob> current_;  // the install running now
  std::uint64_t fetched_ = 0, reused_ = 0;  // of the install running now, for its status events
  std::optional<DeploymentMessage> latest_;  // the newest deployment message not acted on yet
  Doorbell deployment_bell_;  // deployments() → installs(): latest_ changed
  Doorbell inventory_bell_;   // → inventory(): send it now
  Doorbell reboot_bell_;      // deployments() → await_reboot(): go_ahead_ changed
  std::string go_ahead_;      // the deployment the latest go-ahead names
  bool inventory_force_ = true;
  Inventory last_inventory_;
  std::uint64_t presence_seq_ = 0;
};

asio::awaitable<int> Daemon::run() {
  if (config_.device_id.empty() || config_.broker_uri.empty()) {
    log::error("the daemon needs DeviceID and BrokerURI in its configuration");
    co_return 1;
  }
  // The presence sequence of this run: higher than any earlier run's, so a late last will of an
  // earlier connection never overwrites this run's "online".
  auto reserved = co_await state_op([this] { return updater_->store().reserve_seq(); });
  if (!reserved) {
    log::error(reserved.error().message());
    co_return 1;
  }
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

  // Every task under one parent: the first to end (SIGTERM, a reboot, a failure) ends the others.
  auto ended = co_await (guarded("signals", signals()) || guarded("session", session()));
  TaskExit exit = first_exit(ended);
  if (exit.code == 1) log::error("stopping: ", exit.reason);
  else log::info("stopping: ", exit.reason);

  if (exit.code == 0 || exit.code == exit_reboot_requested) {
    if (client_->connected()) {
      // A clean goodbye: the broker does not publish the will after DISCONNECT.
      if (exit.code == 0) publish_presence(false);
      // Give the broker a moment to take the last statuses now; Paho keeps them otherwise.
      asio::steady_timer t(io_, 500ms);
      co_await t.async_wait(asio::use_awaitable);
      co_await client_->disconnect();  // bounded inside
    }
  }
  if (exit.code == exit_reboot_requested && !config_.reboot_command.empty()) {
    log::info("rebooting: ", config_.reboot_command);
    const auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(reboot_command_timeout);
    const std::vector<std::string> argv{"sh", "-c", config_.reboot_command};
    auto run = co_await offload(updater_->blocking().any(), [&](std::stop_token stop) {
      return run_program(argv, {.timeout = timeout, .stop = stop});
    });
    if (!run || run->exit_code != 0 || run->timed_out) {
      log::error("RebootCommand '", config_.reboot_command, "' failed: ",
                 run ? describe_exit(*run, timeout) + (run->output.empty() ? "" : ": " + run->output)
                     : run.error().message());
      co_return 1;
    }
    co_return 0;
  }
  co_return exit.code;
}

}  // namespace

int run_daemon(const AgentConfig& config) {
  auto updater = Updater::open(config);
  if (!updater) {
    log::error(updater.error().message());
    return 1;
  }
  if (auto r = write_file_atomic(config.data_dir / "daemon.pid", std::to_string(::getpid()) + "\n"); !r)
    log::warn(r.error().message());
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
