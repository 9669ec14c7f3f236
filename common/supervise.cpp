#include "common/supervise.hpp"

#include "common/log.hpp"

#include <boost/asio/error.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/system/system_error.hpp>

#include <exception>

namespace tern {
namespace asio = boost::asio;

asio::awaitable<TaskExit> guarded(std::string name, asio::awaitable<TaskExit> task) {
  std::string failure;
  try {
    co_return co_await std::move(task);
  } catch (const boost::system::system_error& e) {
    failure = e.code() == asio::error::operation_aborted ? std::string() : e.what();
    if (failure.empty()) co_return TaskExit{1, name + " cancelled"};
  } catch (const std::exception& e) {
    failure = e.what();
  }
  // co_await is not allowed in a catch block: decide here whether this was the cancellation of a
  // task that lost the race (its result is dropped) or a real failure.
  auto cs = co_await asio::this_coro::cancellation_state;
  if (cs.cancelled() == asio::cancellation_type::none)
    log::error(name, " failed: ", failure, "; stopping");
  co_return TaskExit{1, name + " failed: " + failure};
}

}  // namespace tern
