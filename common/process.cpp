#include "common/process.hpp"

#include "common/file.hpp"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <optional>

extern char** environ;

namespace tern {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// A child that exits without reading its stdin must not kill us with SIGPIPE: block the signal on
// this thread for the write and consume it if it was raised.
ssize_t write_without_sigpipe(int fd, const char* data, std::size_t size) {
  sigset_t pipe_set, old_set;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
  ssize_t w = ::write(fd, data, size);
  int saved = errno;
  if (w < 0 && saved == EPIPE) {
    timespec zero{0, 0};
    sigtimedwait(&pipe_set, nullptr, &zero);
  }
  pthread_sigmask(SIG_SETMASK, &old_set, nullptr);
  errno = saved;
  return w;
}

// A descriptor that becomes readable when the child exits (Linux 5.3+); without one the loop below
// polls waitpid every few milliseconds instead.
UniqueFd open_pidfd(pid_t pid) {
#ifdef SYS_pidfd_open
  return UniqueFd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
#else
  (void)pid;
  return UniqueFd();
#endif
}

int decode_status(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

}  // namespace

std::string describe_exit(const ProgramOutput& out, milliseconds timeout) {
  if (out.timed_out) {
    auto ms = timeout.count();
    return "timed out after " + (ms % 1000 ? std::to_string(ms) + " ms" : std::to_string(ms / 1000) + " s");
  }
  if (out.stopped) return "stopped";
  if (out.exit_code > 128) return "killed by signal " + std::to_string(out.exit_code - 128);
  return "exit status " + std::to_string(out.exit_code);
}

Result<ProgramOutput> run_program(const std::vector<std::string>& argv, const ProgramOptions& options) {
  if (argv.empty()) return fail(Errc::invalid_argument, "running a program: empty command line");
  const std::string& name = argv.front();

  int out_pipe[2];
  int in_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) return Error::from_errno("running " + name + ": pipe", errno);
  UniqueFd out_r(out_pipe[0]), out_w(out_pipe[1]);
  if (::pipe2(in_pipe, O_CLOEXEC) != 0) return Error::from_errno("running " + name + ": pipe", errno);
  UniqueFd in_r(in_pipe[0]), in_w(in_pipe[1]);
  // Woken by a stop request (std::stop_callback runs on the requesting thread).
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return Error::from_errno("running " + name + ": eventfd", errno);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in_r.get(), 0);
  posix_spawn_file_actions_adddup2(&actions, out_w.get(), 1);
  posix_spawn_file_actions_adddup2(&actions, out_w.get(), 2);
  if (!options.cwd.empty()) posix_spawn_file_actions_addchdir_np(&actions, options.cwd.c_str());
  // Its own process group, so a deadline can end it and everything it started.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  posix_spawnattr_setpgroup(&attr, 0);
  sigset_t none, defaults;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);  // the daemon blocks signals on its threads; not the child
  sigemptyset(&defaults);
  for (int sig : {SIGPIPE, SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP, SIGCHLD}) sigaddset(&defaults, sig);
  posix_spawnattr_setsigdefault(&attr, &defaults);

  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);

  pid_t pid = -1;
  int rc = ::posix_spawnp(&pid, name.c_str(), &actions, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return Error::from_errno("starting " + name, rc);
  in_r.reset();
  out_w.reset();
  if (options.input.empty()) in_w.reset();

  UniqueFd pidfd = open_pidfd(pid);
  std::stop_callback on_stop(options.stop, [fd = wake.get()] {
    std::uint64_t one = 1;
    (void)!::write(fd, &one, sizeof one);
  });

  const auto start = Clock::now();
  std::optional<Clock::time_point> deadline;
  if (options.timeout.count() > 0) deadline = start + options.timeout;
  std::optional<Clock::time_point> kill_at;  // SIGKILL after the grace period
  ProgramOutput result;
  std::optional<int> status;  // the child's wait status once reaped
  std::size_t fed = 0;
  char buf[4096];

  auto reap = [&](int flags) {
    int st = 0;
    pid_t r;
    do r = ::waitpid(pid, &st, flags);
    while (r < 0 && errno == EINTR);
    if (r == pid) status = st;
  };
  auto end_group = [&](bool timed_out) {
    if (kill_at) return;
    (timed_out ? result.timed_out : result.stopped) = true;
    ::kill(-pid, SIGTERM);
    kill_at = Clock::now() + options.kill_grace;
  };

  // Until the child has exited and the output is drained. The output pipe may stay open after the
  // child exits (a background process it started holds it): then only what is readable now is read.
  while (!status || out_r) {
    if (options.stop.stop_requested()) end_group(false);
    auto now = Clock::now();
    if (deadline && now >= *deadline) end_group(true);
    if (kill_at && now >= *kill_at) {
      ::kill(-pid, SIGKILL);
      kill_at = Clock::time_point::max();
    }
    if (status) {
      // Exited: drain what is there without waiting for other holders of the pipe.
      ::fcntl(out_r.get(), F_SETFL, O_NONBLOCK);
      for (;;) {
        ssize_t n = ::read(out_r.get(), buf, sizeof buf);
        if (n > 0) {
          if (result.output.size() < options.max_output)
            result.output.append(buf, std::min(static_cast<std::size_t>(n), options.max_output - result.output.size()));
          continue;
        }
        if (n < 0 && errno == EINTR) continue;
        break;
      }
      out_r.reset();
      break;
    }

    pollfd fds[4];
    nfds_t n = 0;
    int i_out = -1, i_in = -1, i_pid = -1;
    if (out_r) { i_out = int(n); fds[n++] = {out_r.get(), POLLIN, 0}; }
    if (in_w) { i_in = int(n); fds[n++] = {in_w.get(), POLLOUT, 0}; }
    if (pidfd) { i_pid = int(n); fds[n++] = {pidfd.get(), POLLIN, 0}; }
    fds[n++] = {wake.get(), POLLIN, 0};
    // Wake for the next deadline; without a pidfd, also every few ms to look for the exit.
    auto until = Clock::time_point::max();
    if (deadline && !kill_at) until = *deadline;
    if (kill_at && *kill_at != Clock::time_point::max()) until = *kill_at;
    int wait_ms = -1;
    if (until != Clock::time_point::max())
      wait_ms = int(std::max<long long>(0, std::chrono::ceil<milliseconds>(until - Clock::now()).count()));
    if (!pidfd && !out_r) wait_ms = wait_ms < 0 ? 20 : std::min(wait_ms, 20);
    int pr = ::poll(fds, n, wait_ms);
    if (pr < 0 && errno != EINTR) return Error::from_errno("waiting for " + name, errno);
    if (pr > 0) {
      if (i_in >= 0 && (fds[i_in].revents & (POLLOUT | POLLERR | POLLHUP))) {
        ssize_t w = write_without_sigpipe(in_w.get(), options.input.data() + fed, options.input.size() - fed);
        if (w > 0) fed += static_cast<std::size_t>(w);
        if (w < 0 || fed == options.input.size()) in_w.reset();
      }
      if (i_out >= 0 && (fds[i_out].revents & (POLLIN | POLLHUP | POLLERR))) {
        ssize_t r = ::read(out_r.get(), buf, sizeof buf);
        if (r > 0) {
          if (result.output.size() < options.max_output)
            result.output.append(buf, std::min(static_cast<std::size_t>(r), options.max_output - result.output.size()));
        } else if (r == 0 || errno != EINTR) {
          out_r.reset();
        }
      }
    }
    // The pipe's end does not mean the child has exited, nor the other way round: look.
    if (!pidfd || (i_pid >= 0 && (fds[i_pid].revents & POLLIN)) || !out_r) reap(WNOHANG);
  }
  in_w.reset();
  if (!status) reap(0);
  result.exit_code = status ? decode_status(*status) : -1;
  // A program killed for its deadline may leave group members that ignored SIGTERM.
  if (kill_at) ::kill(-pid, SIGKILL);
  return result;
}

}  // namespace tern
