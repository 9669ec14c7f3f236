#include "agent/update/reboot_gate.hpp"

#include "agent/update/updater.hpp"
#include "common/log.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <ctime>

namespace tern::agent {

namespace asio = boost::asio;

LocalClock system_local_clock() {
  return [] {
    const std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    return std::int64_t{local.tm_hour} * 3600 + local.tm_min * 60 + local.tm_sec;
  };
}

RebootGate::RebootGate(RebootPolicy policy, LocalClock clock, std::chrono::milliseconds max_step)
    : policy_(policy), clock_(std::move(clock)), max_step_(max_step) {}

bool RebootGate::open_now() const {
  if (policy_.kind == RebootPolicy::Kind::on_command) return false;
  return policy_.seconds_until_open(clock_()) == 0;
}

asio::awaitable<void> RebootGate::wait_for_window(const asio::any_io_executor& ex_arg) const {
  const asio::any_io_executor ex = ex_arg;
  asio::steady_timer timer(ex);
  for (;;) {
    std::chrono::milliseconds step = max_step_;
    if (policy_.kind != RebootPolicy::Kind::on_command) {
      const std::int64_t left = policy_.seconds_until_open(clock_());
      if (left == 0) co_return;
      step = std::min(step, std::chrono::milliseconds(left * 1000));
    }
    timer.expires_after(step);
    co_await timer.async_wait(asio::use_awaitable);
  }
}

Result<InstallState> Updater::go_ahead() {
  auto s = store_.load_install();
  if (!s) return s.error();
  if (s->phase != Phase::paused) return fail(Errc::invalid_argument, "no install waits for its reboot");
  log::info("the reboot of ", s->artifact_name, " may go ahead (reboot: ", s->job.reboot, ")");
  return advance(*s, Event::payload_written);
}

}  // namespace tern::agent
