#include "agent/boot/run_program.hpp"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

extern char** environ;

namespace tern::agent {

namespace {

struct Fd {
  int fd = -1;
  ~Fd() { reset(); }
  void reset() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};

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

}  // namespace

Result<ProgramOutput> run_program(const std::vector<std::string>& argv, const std::string& input) {
  if (argv.empty()) return fail(Errc::invalid_argument, "running a program: empty command line");
  const std::string& name = argv.front();

  int out_pipe[2];
  int in_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) return Error::from_errno("running " + name + ": pipe", errno);
  Fd out_r{out_pipe[0]}, out_w{out_pipe[1]};
  if (::pipe2(in_pipe, O_CLOEXEC) != 0) return Error::from_errno("running " + name + ": pipe", errno);
  Fd in_r{in_pipe[0]}, in_w{in_pipe[1]};

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in_r.fd, 0);
  posix_spawn_file_actions_adddup2(&actions, out_w.fd, 1);
  posix_spawn_file_actions_adddup2(&actions, out_w.fd, 2);

  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);

  pid_t pid = -1;
  int rc = ::posix_spawnp(&pid, name.c_str(), &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return Error::from_errno("starting " + name, rc);
  in_r.reset();
  out_w.reset();

  // Feed stdin and drain stdout/stderr together so a chatty child never blocks on a full pipe.
  std::size_t fed = 0;
  if (input.empty()) in_w.reset();
  ProgramOutput result;
  char buf[4096];
  while (out_r.fd >= 0) {
    pollfd fds[2];
    int n = 0;
    fds[n++] = {out_r.fd, POLLIN, 0};
    if (in_w.fd >= 0) fds[n++] = {in_w.fd, POLLOUT, 0};
    if (::poll(fds, n, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (n == 2 && (fds[1].revents & (POLLOUT | POLLERR | POLLHUP))) {
      ssize_t w = write_without_sigpipe(in_w.fd, input.data() + fed, input.size() - fed);
      if (w > 0) fed += static_cast<std::size_t>(w);
      if (w < 0 || fed == input.size()) in_w.reset();
    }
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t r = ::read(out_r.fd, buf, sizeof buf);
      if (r > 0) {
        result.output.append(buf, static_cast<std::size_t>(r));
      } else if (r == 0 || errno != EINTR) {
        out_r.reset();
      }
    }
  }
  in_w.reset();

  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return Error::from_errno("waiting for " + name, errno);
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

}  // namespace tern::agent
