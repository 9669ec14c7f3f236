#include "tests/support/coro.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <gtest/gtest.h>

#include <exception>

namespace asio = boost::asio;

namespace tern::test {

void run_coro(std::function<asio::awaitable<void>()> body, std::chrono::milliseconds deadline) {
  asio::io_context io;
  run_coro(io, std::move(body), deadline);
}

void run_coro(asio::io_context& io, std::function<asio::awaitable<void>()> body,
              std::chrono::milliseconds deadline) {
  bool done = false;
  asio::co_spawn(io, body(), [&](std::exception_ptr e) {
    done = true;
    if (e) {
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        ADD_FAILURE() << "coroutine threw: " << ex.what();
      }
    }
    io.stop();
  });
  auto stopped = io.run_for(deadline);
  (void)stopped;
  if (!done) ADD_FAILURE() << "coroutine test did not finish within " << deadline.count() << " ms";
  io.stop();
}

asio::awaitable<void> sleep_for(std::chrono::milliseconds d) {
  asio::steady_timer t(co_await asio::this_coro::executor, d);
  co_await t.async_wait(asio::use_awaitable);
}

}  // namespace tern::test
