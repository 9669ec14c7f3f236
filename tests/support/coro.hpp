// Runs a coroutine test body on its own io_context with a hard deadline, so a hang fails the test
// instead of blocking ctest until its timeout.
//
//   TEST(X, Y) { tern::test::run_coro([&]() -> boost::asio::awaitable<void> { ... }, 30s); }
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <functional>

namespace tern::test {

/// Runs `body` to completion on a fresh io_context. Exceptions thrown by the body are reported as
/// test failures; if it has not finished after `deadline`, the test fails and the io_context is
/// stopped.
void run_coro(std::function<boost::asio::awaitable<void>()> body, std::chrono::milliseconds deadline);

/// Same, on a caller's io_context (to share it with objects created before the body runs).
void run_coro(boost::asio::io_context& io, std::function<boost::asio::awaitable<void>()> body,
              std::chrono::milliseconds deadline);

/// Awaits `d` on the current executor (for bounded waits in polling loops, never for readiness).
boost::asio::awaitable<void> sleep_for(std::chrono::milliseconds d);

}  // namespace tern::test

/// ASSERT_* for coroutine bodies (gtest's ASSERT_* use `return`, which a coroutine cannot):
///   CO_ASSERT_TRUE(m, "message " << i << " did not arrive");
#define CO_ASSERT_TRUE(cond, ...)                                                   \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      ADD_FAILURE() << "expected true: " #cond " " __VA_OPT__(<< __VA_ARGS__);      \
      co_return;                                                                    \
    }                                                                               \
  } while (0)
#define CO_ASSERT_FALSE(cond, ...) CO_ASSERT_TRUE(!(cond) __VA_OPT__(, __VA_ARGS__))
