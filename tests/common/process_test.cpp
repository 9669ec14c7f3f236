// The daemon's building blocks for never blocking and never hanging: run_program's deadline and
// process-group kill, offload() to the blocking pool with cancellation, guarded() tasks under one
// parent, the backoff, and the file helpers.
#include "common/backoff.hpp"
#include "common/blocking.hpp"
#include "common/file.hpp"
#include "common/process.hpp"
#include "common/supervise.hpp"
#include "tests/support/coro.hpp"
#include "tests/support/testenv.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <gtest/gtest.h>

#include <signal.h>

#include <atomic>
#include <thread>

namespace tern::test {
namespace {
namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;
using namespace std::chrono_literals;

bool alive(pid_t pid) { return process_alive(pid); }

/// Waits (bounded) until a pid file written by a test script appears and holds a pid.
pid_t pid_from(const fs::path& file) {
  for (int i = 0; i < 500; ++i) {
    if (fs::exists(file)) {
      auto text = read_file(file);
      if (!text.empty() && text.back() == '\n') return static_cast<pid_t>(std::stol(text));
    }
    std::this_thread::sleep_for(10ms);
  }
  return 0;
}

TEST(RunProgram, CapturesOutputExitStatusAndInput) {
  auto r = run_program({"sh", "-c", "read x; echo got $x; echo oops >&2; exit 3"}, {.input = "hello\n", .timeout = 30s});
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_FALSE(r->timed_out);
  EXPECT_NE(r->output.find("got hello"), std::string::npos) << r->output;
  EXPECT_NE(r->output.find("oops"), std::string::npos) << r->output;
  EXPECT_EQ(describe_exit(*r, 30s), "exit status 3");

  auto missing = run_program({"/nonexistent/tern-program"});
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message().find("/nonexistent/tern-program"), std::string::npos);
}

TEST(RunProgram, ADeadlineKillsTheProgramAndEverythingItStarted) {
  TempDir tmp;
  // The script starts a grandchild that would outlive a plain kill of the script itself.
  const auto pids = tmp / "pids";
  auto r = run_program({"sh", "-c", "sleep 1000 & echo $! > " + pids.string() + "; echo started; wait"},
                       {.timeout = 3s, .kill_grace = 500ms});
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_TRUE(r->timed_out);
  EXPECT_NE(r->exit_code, 0);
  EXPECT_NE(r->output.find("started"), std::string::npos) << "output before the deadline is kept";
  EXPECT_EQ(describe_exit(*r, 3s), "timed out after 3 s");
  pid_t grandchild = pid_from(pids);
  ASSERT_GT(grandchild, 0);
  EXPECT_FALSE(alive(grandchild)) << "the sleep the script started was killed with its group";
}

TEST(RunProgram, AProgramIgnoringSigtermIsKilledAfterTheGrace) {
  auto r = run_program({"sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"},
                       {.timeout = 300ms, .kill_grace = 300ms});
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_TRUE(r->timed_out);
  EXPECT_EQ(r->exit_code, 128 + SIGKILL);
}

TEST(RunProgram, AStopRequestEndsItLikeATimeout) {
  std::stop_source stop;
  std::thread stopper([&] {
    std::this_thread::sleep_for(200ms);
    stop.request_stop();
  });
  auto r = run_program({"sleep", "1000"}, {.timeout = 600s, .stop = stop.get_token()});
  stopper.join();
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_TRUE(r->stopped);
  EXPECT_FALSE(r->timed_out);
}

TEST(RunProgram, ABackgroundChildHoldingTheOutputDoesNotHoldTheCaller) {
  // The program exits at once; what it started keeps stdout open for 1000 s.
  TempDir tmp;
  const auto pids = tmp / "pids";
  auto r = run_program({"sh", "-c", "echo done; sleep 1000 & echo $! > " + pids.string()}, {.timeout = 600s});
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->exit_code, 0);
  EXPECT_FALSE(r->timed_out);
  EXPECT_NE(r->output.find("done"), std::string::npos);
  pid_t background = pid_from(pids);
  ASSERT_GT(background, 0);
  EXPECT_TRUE(alive(background)) << "a program that exits normally keeps what it started";
  ::kill(background, SIGKILL);
}

TEST(RunProgram, OutputIsCapped) {
  auto r = run_program({"sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x"}, {.timeout = 30s, .max_output = 1000});
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->exit_code, 0) << "the rest is read, so the program does not block on a full pipe";
  EXPECT_EQ(r->output.size(), 1000u);
}

TEST(Offload, RunsOffTheIoThreadAndCancellationStopsTheWork) {
  BlockingPool pool(2);
  run_coro(
      [&]() -> asio::awaitable<void> {
        const auto io_thread = std::this_thread::get_id();
        auto where = co_await offload(pool.any(), [](std::stop_token) -> Result<std::thread::id> {
          return std::this_thread::get_id();
        });
        EXPECT_TRUE(where);
        EXPECT_NE(*where, io_thread);
        EXPECT_EQ(std::this_thread::get_id(), io_thread) << "the coroutine resumes on its own thread";

        // A program that would run 1000 s, raced against a 200 ms timer: the timer wins, the
        // cancellation reaches run_program as a stop, and the await ends once the program is dead.
        std::atomic<bool> stopped{false};
        auto work = offload(pool.any(), [&](std::stop_token stop) -> Result<ProgramOutput> {
          auto r = run_program({"sleep", "1000"}, {.timeout = 1000s, .stop = stop});
          if (r && r->stopped) stopped = true;
          return r;
        });
        asio::steady_timer timer(co_await asio::this_coro::executor, 200ms);
        auto waited = timer.async_wait(asio::use_awaitable);
        auto outcome = co_await (std::move(work) || std::move(waited));
        EXPECT_EQ(outcome.index(), 1u);
        EXPECT_TRUE(stopped) << "the program was stopped before the await completed";

        auto thrown = co_await offload(pool.serial(), [](std::stop_token) -> Result<int> {
          throw std::runtime_error("boom");
        });
        EXPECT_FALSE(thrown);
        if (!thrown) {
          EXPECT_NE(thrown.error().message().find("boom"), std::string::npos);
        }
      },
      30s);
}

asio::awaitable<TaskExit> throws_soon() {
  asio::steady_timer t(co_await asio::this_coro::executor, 50ms);
  co_await t.async_wait(asio::use_awaitable);
  throw std::runtime_error("the inventory went away");
}

asio::awaitable<TaskExit> runs_forever(bool& cancelled) {
  asio::steady_timer t(co_await asio::this_coro::executor, 1000s);
  try {
    co_await t.async_wait(asio::use_awaitable);
  } catch (const boost::system::system_error&) {
    cancelled = true;
    throw;
  }
  co_return TaskExit{0, "never"};
}

TEST(Supervise, ATaskThatThrowsEndsThemAllWithItsError) {
  run_coro(
      [&]() -> asio::awaitable<void> {
        bool cancelled = false;
        auto ended = co_await (guarded("inventory", throws_soon()) || guarded("deployments", runs_forever(cancelled)));
        TaskExit e = first_exit(ended);
        EXPECT_EQ(e.code, 1);
        EXPECT_EQ(e.reason, "inventory failed: the inventory went away");
        EXPECT_TRUE(cancelled) << "the other task was cancelled and awaited";
      },
      30s);
}

TEST(Backoff, DoublesWithJitterUpToTheMaximumAndResets) {
  Backoff b(100ms, 1000ms, 42);
  std::vector<std::chrono::milliseconds> waits;
  for (int i = 0; i < 8; ++i) waits.push_back(b.next());
  const std::int64_t steps[] = {100, 200, 400, 800, 1000, 1000, 1000, 1000};
  for (int i = 0; i < 8; ++i) {
    EXPECT_GE(waits[i].count(), steps[i] / 2) << i;
    EXPECT_LE(waits[i].count(), steps[i]) << i;
  }
  b.reset();
  EXPECT_LE(b.next().count(), 100);
  // Two devices that lost the broker together do not come back in lockstep.
  Backoff x(10000ms, 60000ms, 1), y(10000ms, 60000ms, 2);
  int same = 0;
  for (int i = 0; i < 5; ++i) same += x.next() == y.next();
  EXPECT_LT(same, 5);
}

TEST(Files, AtomicWriteAndBoundedRead) {
  TempDir tmp;
  ASSERT_TRUE(write_file_atomic(tmp / "a.json", "{\"x\":1}\n"));
  auto back = tern::read_file(tmp / "a.json");
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, "{\"x\":1}\n");
  EXPECT_FALSE(fs::exists(tmp / "a.json.tmp"));
  auto too_big = tern::read_file(tmp / "a.json", 4);
  ASSERT_FALSE(too_big);
  EXPECT_NE(too_big.error().message().find("a.json"), std::string::npos);
  auto head = read_head(tmp / "a.json", 4);
  ASSERT_TRUE(head);
  EXPECT_EQ(*head, "{\"x\"");
  auto whole = read_head(tmp / "a.json", 1000);
  ASSERT_TRUE(whole);
  EXPECT_EQ(*whole, "{\"x\":1}\n") << "a shorter file is read whole";
  auto missing = tern::read_file(tmp / "missing");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message().find("missing"), std::string::npos);
  auto no_dir = write_file_atomic(tmp / "no/such/dir/f", "x");
  ASSERT_FALSE(no_dir);
  EXPECT_NE(no_dir.error().message().find("no/such/dir"), std::string::npos);
}

}  // namespace
}  // namespace tern::test
