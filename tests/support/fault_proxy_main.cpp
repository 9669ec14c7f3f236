// tern-fault-proxy: the FaultProxy as a process, for the demo's flaky mode and system tests.
//
//   tern-fault-proxy --listen PORT --target HOST:PORT [--cut-min N --cut-max N] [--stall-after N]
//                    [--rate BPS] [--seed S]
//
// Prints the bound port on stdout (one line) once it accepts connections; runs until SIGINT/SIGTERM.
#include "tests/support/fault_proxy.hpp"

#include <csignal>
#include <cstdlib>
#include <iostream>
#include <string>

namespace {

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "tern-fault-proxy: " << why << "\n"
            << "usage: tern-fault-proxy --listen PORT --target HOST:PORT [--cut-min N --cut-max N]\n"
            << "                        [--stall-after N] [--rate BPS] [--seed S]\n";
  std::exit(2);
}

std::uint64_t number(const std::string& flag, const char* v) {
  char* end = nullptr;
  const unsigned long long n = std::strtoull(v, &end, 10);
  if (!*v || *end) usage("bad number '" + std::string(v) + "' for " + flag);
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t listen = 0, cut_min = 0, cut_max = 0, stall = 0, rate = 0, seed = 1;
  std::string target;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") usage("help");
    if (i + 1 >= argc) usage("missing value for " + a);
    const char* v = argv[++i];
    if (a == "--listen") listen = number(a, v);
    else if (a == "--target") target = v;
    else if (a == "--cut-min") cut_min = number(a, v);
    else if (a == "--cut-max") cut_max = number(a, v);
    else if (a == "--stall-after") stall = number(a, v);
    else if (a == "--rate") rate = number(a, v);
    else if (a == "--seed") seed = number(a, v);
    else usage("unknown flag " + a);
  }
  const auto colon = target.rfind(':');
  if (colon == std::string::npos || colon == 0) usage("--target must be HOST:PORT");
  const std::uint64_t target_port = number("--target", target.c_str() + colon + 1);
  std::string host = target.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (listen > 65535 || target_port == 0 || target_port > 65535) usage("port out of range");
  if (cut_max && cut_min > cut_max) usage("--cut-min is larger than --cut-max");
  if (cut_min && !cut_max) cut_max = cut_min;

  // Block the stop signals before the proxy's thread starts, so only sigwait() sees them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  try {
    tern::test::FaultProxy proxy(static_cast<std::uint16_t>(target_port), host,
                                 static_cast<std::uint16_t>(listen), seed);
    proxy.set_cut(cut_min, cut_max);
    proxy.set_stall_after(stall);
    proxy.set_rate(rate);
    std::cout << proxy.port() << std::endl;
    int sig = 0;
    sigwait(&set, &sig);
    std::cerr << "tern-fault-proxy: " << proxy.connections() << " connections, "
              << proxy.bytes_downstream() << " bytes down, " << proxy.bytes_upstream() << " bytes up, "
              << proxy.cuts() << " cuts\n";
  } catch (const std::exception& e) {
    std::cerr << "tern-fault-proxy: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
