// Built for cellular, the sans-io parts: reboot policies and windows (with a fake clock), the
// download's token bucket (with fake time), the paused phase of the state machine, and the
// deployment fields on the wire.
#include "agent/download/rate_limit.hpp"
#include "agent/update/reboot_gate.hpp"
#include "agent/update/state_machine.hpp"
#include "common/protocol.hpp"
#include "common/reboot_policy.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <gtest/gtest.h>

namespace tern {
namespace {

using namespace std::chrono_literals;
using agent::RateLimiter;

constexpr std::int64_t hour = 3600;

TEST(RebootPolicy, ParsesTheThreeFormsAndRefusesAnythingElseNamingWhatIsAccepted) {
  EXPECT_EQ(parse_reboot_policy("")->kind, RebootPolicy::Kind::immediate);
  EXPECT_EQ(parse_reboot_policy("immediate")->kind, RebootPolicy::Kind::immediate);
  EXPECT_EQ(parse_reboot_policy("on-command")->kind, RebootPolicy::Kind::on_command);
  auto w = parse_reboot_policy("02:00-04:30");
  ASSERT_TRUE(w);
  EXPECT_EQ(w->kind, RebootPolicy::Kind::window);
  EXPECT_EQ(w->start_minute, 120);
  EXPECT_EQ(w->end_minute, 270);
  EXPECT_EQ(to_string(*w), "02:00-04:30");
  for (const char* bad : {"2:00-4:00", "24:00-01:00", "02:60-03:00", "02:00_04:00", "02:00-04:00 ", "soon", "02:00"}) {
    auto r = parse_reboot_policy(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_NE(r.error().message().find(std::string("'") + bad + "'"), std::string::npos) << r.error().message();
    EXPECT_NE(r.error().message().find("HH:MM-HH:MM"), std::string::npos) << r.error().message();
  }
}

TEST(RebootPolicy, ADailyWindowOpensAtItsStartAndClosesAtItsEnd) {
  auto w = *parse_reboot_policy("02:00-04:00");
  EXPECT_FALSE(w.allows(119));
  EXPECT_TRUE(w.allows(120));
  EXPECT_TRUE(w.allows(239));
  EXPECT_FALSE(w.allows(240));
  EXPECT_EQ(w.seconds_until_open(2 * hour), 0);
  EXPECT_EQ(w.seconds_until_open(1 * hour + 59 * 60 + 30), 30);
  EXPECT_EQ(w.seconds_until_open(4 * hour), 22 * hour) << "just closed: tomorrow's";
  EXPECT_EQ(w.seconds_until_open(23 * hour), 3 * hour) << "across midnight";
}

TEST(RebootPolicy, AWindowCrossingMidnightWrapsAround) {
  auto w = *parse_reboot_policy("22:30-01:15");
  EXPECT_TRUE(w.allows(22 * 60 + 30));
  EXPECT_TRUE(w.allows(23 * 60 + 59));
  EXPECT_TRUE(w.allows(0));
  EXPECT_TRUE(w.allows(60 + 14));
  EXPECT_FALSE(w.allows(60 + 15));
  EXPECT_FALSE(w.allows(12 * 60));
  EXPECT_EQ(w.seconds_until_open(0), 0);
  EXPECT_EQ(w.seconds_until_open(2 * hour), 20 * hour + 30 * 60);
  EXPECT_EQ(w.seconds_until_open(22 * hour), 30 * 60);
  EXPECT_TRUE(parse_reboot_policy("03:00-03:00")->allows(12 * 60)) << "start == end: all day";
  EXPECT_FALSE(parse_reboot_policy("on-command")->allows(0));
}

/// A local clock the test moves: starts at `start` and jumps `step` on every look.
struct FakeClock {
  std::int64_t now;
  std::int64_t step;
  int looks = 0;
  std::int64_t operator()() {
    const std::int64_t t = now;
    now = (now + step) % (24 * hour);
    ++looks;
    return t;
  }
};

TEST(RebootGate, WaitsUntilTheFakeClockReachesTheWindowAndThenGoesAhead) {
  boost::asio::io_context io;
  auto clock = std::make_shared<FakeClock>(FakeClock{.now = 22 * hour, .step = hour});
  // 22:00 → the window 02:00-04:00 opens four looks later; each real sleep is at most 1 ms.
  agent::RebootGate gate(*parse_reboot_policy("02:00-04:00"), [clock] { return (*clock)(); }, 1ms);
  EXPECT_FALSE(gate.open_now());  // looks at 22:00, the clock moves to 23:00
  bool opened = false;
  boost::asio::co_spawn(io, gate.wait_for_window(io.get_executor()), [&](std::exception_ptr e) {
    EXPECT_FALSE(e);
    opened = true;
  });
  io.run_for(10s);
  EXPECT_TRUE(opened);
  EXPECT_EQ(clock->looks, 5) << "23:00, 00:00, 01:00 closed; 02:00 open";
  EXPECT_EQ(clock->now, 3 * hour);
}

TEST(RebootGate, OnCommandNeverOpensByItself) {
  boost::asio::io_context io;
  FakeClock clock{.now = 3 * hour, .step = hour};
  agent::RebootGate gate(*parse_reboot_policy("on-command"), std::ref(clock), 1ms);
  EXPECT_FALSE(gate.open_now());
  bool opened = false;
  boost::asio::co_spawn(io, gate.wait_for_window(io.get_executor()), [&](std::exception_ptr) { opened = true; });
  io.run_for(50ms);
  EXPECT_FALSE(opened);
}

TEST(RateLimiter, HoldsAnyChunkingToTheCapOverAWholeTransfer) {
  for (std::uint64_t cap : {10'000ull, 250'000ull, 4'000'000ull}) {
    RateLimiter limit(cap);
    // A fast link: chunks arrive back to back; the caller sleeps what consume() says.
    auto t = RateLimiter::clock::time_point{} + 1h;
    const auto start = t;
    std::uint64_t sent = 0;
    std::size_t chunk = limit.read_size(64 * 1024);
    EXPECT_LE(chunk, std::max<std::uint64_t>(1024, cap / 4) + 1);
    while (sent < cap * 20) {
      sent += chunk;
      t += limit.consume(chunk, t);
      t += 50us;  // the read itself
    }
    const double rate = static_cast<double>(sent) / std::chrono::duration<double>(t - start).count();
    EXPECT_NEAR(rate / static_cast<double>(cap), 1.0, 0.05) << cap;
  }
}

TEST(RateLimiter, UnlimitedNeverWaitsAndTheSmallerCapWins) {
  RateLimiter none(0);
  EXPECT_FALSE(none.limited());
  EXPECT_EQ(none.read_size(65536), 65536u);
  EXPECT_EQ(none.consume(1u << 30, RateLimiter::clock::now()).count(), 0);
  EXPECT_EQ(agent::combined_cap(0, 0), 0u);
  EXPECT_EQ(agent::combined_cap(500, 0), 500u);
  EXPECT_EQ(agent::combined_cap(0, 700), 700u);
  EXPECT_EQ(agent::combined_cap(500, 700), 500u);
  EXPECT_EQ(agent::combined_cap(900, 700), 700u);
}

TEST(RateLimiter, AnIdlePauseEarnsAtMostAQuarterSecondOfBurst) {
  RateLimiter limit(100'000);
  auto t = RateLimiter::clock::time_point{} + 1h;
  (void)limit.consume(25'000, t);
  t += 10s;  // idle (a reconnect): the bucket refills to its size only
  EXPECT_EQ(limit.consume(25'000, t).count(), 0);
  EXPECT_GT(limit.consume(25'000, t).count(), 0) << "no credit beyond the bucket";
}

TEST(PausedInstall, WaitsOnThePreviousPartitionAndSwitchesOnTheGoAhead) {
  using agent::Phase, agent::Event, agent::Action;
  EXPECT_EQ(*agent::advance(Phase::downloading, Event::pause), Phase::paused);
  EXPECT_EQ(*agent::advance(Phase::paused, Event::payload_written), Phase::switching);
  EXPECT_EQ(*agent::advance(Phase::paused, Event::failed), Phase::done) << "withdrawn while waiting";
  EXPECT_FALSE(agent::advance(Phase::paused, Event::switch_stored)) << "no switch before the go-ahead";
  agent::InstallState s;
  s.phase = Phase::paused;
  s.previous_part = 2;
  s.target_part = 3;
  // Power cut while waiting: the boot environment was never switched, the old system runs.
  EXPECT_EQ(agent::decide(s, 2, {{"mender_boot_part", "2"}, {"upgrade_available", "0"}}).action,
            Action::await_reboot);
  EXPECT_EQ(agent::decide(s, 3, {{"mender_boot_part", "3"}}).action, Action::fail);
}

TEST(DeploymentWire, CarriesTheCapAndTheRebootPolicyOnlyWhenSet) {
  protocol::Deployment d{.deployment_id = "d1", .artifact_name = "r2", .url = "https://h/a.mender", .size = 10,
                         .sha256 = std::string(64, 'a')};
  const auto plain = protocol::serialize(d);
  EXPECT_EQ(plain.find("max_rate"), std::string::npos);
  EXPECT_EQ(plain.find("reboot"), std::string::npos);
  EXPECT_EQ(*protocol::parse_deployment(plain), d);
  d.max_rate = 65536;
  d.reboot = "22:00-02:00";
  auto back = protocol::parse_deployment(protocol::serialize(d));
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, d);
  auto bad = protocol::parse_deployment(
      R"({"deployment_id":"d1","artifact_name":"r2","url":"https://h/a","size":1,"sha256":")" + std::string(64, 'a') +
      R"(","reboot":"at night"})");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("'at night'"), std::string::npos) << bad.error().message();
  EXPECT_EQ(*protocol::parse_status_word("pause_before_rebooting"), protocol::Status::pause_before_rebooting);
  EXPECT_FALSE(protocol::is_final(protocol::Status::pause_before_rebooting));
  EXPECT_EQ(protocol::parse_reboot_command(R"({"deployment_id":"d1"})")->deployment_id, "d1");
  EXPECT_FALSE(protocol::parse_reboot_command(R"({"deployment_id":"../x"})"));
}

}  // namespace
}  // namespace tern
