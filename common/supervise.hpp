// One structured parent for a daemon's long-running tasks: each task returns how the daemon should
// end (TaskExit), never throws past guarded(), and the daemon awaits all of them at once with
// awaitable operators, so the first task to end ends the daemon and the others are cancelled and
// awaited:
//
//   auto ended = co_await (guarded("signals", signals()) || guarded("deployments", receive()));
//   TaskExit e = std::visit([](auto& x) { return x; }, ended);
//
// A task that throws becomes TaskExit{1, "<name> failed: <what>"}: the daemon stops with a logged
// error and a non-zero status that systemd restarts, never half alive with a loop gone.
#pragma once

#include <boost/asio/awaitable.hpp>

#include <string>
#include <variant>

namespace tern {

struct TaskExit {
  int code = 0;        ///< the process exit status the daemon should end with
  std::string reason;  ///< for the log: "SIGTERM", "deployments failed: ..."
};

/// Awaits `task`; an exception (other than the cancellation of a task that lost the race) becomes
/// TaskExit{1, ...} and is logged at error level with `name`.
boost::asio::awaitable<TaskExit> guarded(std::string name, boost::asio::awaitable<TaskExit> task);

/// The TaskExit of whichever task ended first (the result of `||` over guarded tasks).
template <class... T>
TaskExit first_exit(const std::variant<T...>& v) {
  return std::visit([](const TaskExit& e) { return e; }, v);
}

}  // namespace tern
