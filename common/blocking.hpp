// Blocking work off the io thread: file and partition I/O, fsync, the boot environment, hashing and
// child processes run on a small pool, and the coroutine that needs the result awaits it.
//
//   BlockingPool pool;
//   auto state = co_await offload(pool.serial(), [&](std::stop_token) { return store.load_install(); });
//   auto out = co_await offload(pool.any(), [&](std::stop_token stop) {
//     return run_program(argv, {.timeout = 30s, .stop = stop});
//   });
//
// Cancellation: cancelling the awaiting operation requests a stop on the std::stop_token the work
// receives; work that can end early (a child process, a long read) looks at it, short work ignores
// it. Either way the await completes only when the work has returned, so references the work holds
// stay valid: nothing is ever abandoned on the pool.
//
// serial() is a strand: work posted there never overlaps (the state store and the boot environment
// are not thread-safe). any() may run several things at once (a health check beside a state write).
#pragma once

#include "common/error.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <exception>
#include <memory>
#include <optional>
#include <stop_token>
#include <type_traits>
#include <utility>

namespace tern {

class BlockingPool {
 public:
  explicit BlockingPool(std::size_t threads = 4)
      : pool_(threads), serial_(boost::asio::make_strand(pool_.get_executor())) {}
  ~BlockingPool() { pool_.join(); }
  BlockingPool(const BlockingPool&) = delete;
  BlockingPool& operator=(const BlockingPool&) = delete;

  /// Work here may run beside other work.
  boost::asio::any_io_executor any() { return pool_.get_executor(); }
  /// Work here runs one piece at a time, in the order posted.
  boost::asio::any_io_executor serial() { return serial_; }

 private:
  boost::asio::thread_pool pool_;
  boost::asio::strand<boost::asio::thread_pool::executor_type> serial_;
};

namespace detail {
template <class T>
struct is_result : std::false_type {};
template <class T>
struct is_result<Result<T>> : std::true_type {};
}  // namespace detail

/// Runs `work(std::stop_token)` on `where` and completes with its Result on the awaiting coroutine's
/// executor. An exception thrown by `work` becomes Errc::internal.
template <class F>
auto offload(const boost::asio::any_io_executor& where, F work) {
  namespace asio = boost::asio;
  using R = std::invoke_result_t<F&, std::stop_token>;
  static_assert(detail::is_result<R>::value, "offload() runs work that returns a tern::Result");
  return asio::async_initiate<const asio::use_awaitable_t<>, void(R)>(
      [where](auto handler, F work) {
        auto stop = std::make_shared<std::stop_source>();
        auto slot = asio::get_associated_cancellation_slot(handler);
        if (slot.is_connected()) slot.assign([stop](asio::cancellation_type) { stop->request_stop(); });
        auto home = asio::make_work_guard(asio::get_associated_executor(handler));
        asio::post(where, [work = std::move(work), handler = std::move(handler), stop, home = std::move(home)]() mutable {
          std::optional<R> r;
          try {
            r.emplace(work(stop->get_token()));
          } catch (const std::exception& e) {
            r.emplace(fail(Errc::internal, std::string("blocking work: ") + e.what()));
          }
          auto ex = home.get_executor();
          asio::post(ex, [handler = std::move(handler), r = std::move(*r), home = std::move(home)]() mutable {
            std::move(handler)(std::move(r));
          });
        });
      },
      asio::use_awaitable, std::move(work));
}

}  // namespace tern
