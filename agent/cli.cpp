#include "agent/cli.hpp"

#include "agent/daemon.hpp"
#include "agent/update/updater.hpp"
#include "common/log.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <unistd.h>

namespace tern::agent {
namespace asio = boost::asio;

namespace {

constexpr const char* usage_text =
    "usage: tern-agent [--config FILE] [--log-level debug|info|warn|error] COMMAND\n"
    "       tern-agent --version | --help\n"
    "  daemon                  run as a fleet member (MQTT deployments, status, inventory)\n"
    "  install FILE|URL [--reboot-exit-code]\n"
    "                          install an artifact into the standby partition and switch to it\n"
    "  resume                  after a reboot or power loss: continue an interrupted download,\n"
    "                          or run the health check, then commit or roll back\n"
    "  commit                  commit the running trial partition\n"
    "  rollback                give up on the new partition (reboot to finish)\n"
    "  show-artifact           print the installed artifact's name\n"
    "  show-provides           print the installed artifact's provides (key=value)\n"
    "  send-inventory          ask the running daemon to send its inventory now\n";

int usage(const std::string& why) {
  if (!why.empty()) std::cerr << "tern-agent: " << why << "\n";
  std::cerr << usage_text;
  return 2;
}

int failed(const Error& e) {
  std::cerr << "tern-agent: " << e.message() << "\n";
  return 1;
}

std::string human_bytes(std::uint64_t n) {
  char buf[32];
  if (n >= (1ull << 30)) std::snprintf(buf, sizeof buf, "%.1f GiB", double(n) / double(1ull << 30));
  else if (n >= (1ull << 20)) std::snprintf(buf, sizeof buf, "%.1f MiB", double(n) / double(1ull << 20));
  else std::snprintf(buf, sizeof buf, "%.1f KiB", double(n) / 1024.0);
  return buf;
}

int cmd_install(const AgentConfig& cfg, const InstallJob& job, bool reboot_exit_code) {
  auto updater = Updater::open(cfg);
  if (!updater) return failed(updater.error());
  const bool tty = ::isatty(STDERR_FILENO);
  ProgressFn progress = [&](const PipelineProgress& p) {
    if (!tty) return;
    int pct = p.artifact_total ? int(100.0 * double(p.artifact_bytes) / double(p.artifact_total)) : 0;
    std::fprintf(stderr, "\r%3d%% %s of %s, %s written", pct, human_bytes(p.artifact_bytes).c_str(),
                 p.artifact_total ? human_bytes(p.artifact_total).c_str() : "?", human_bytes(p.written).c_str());
    std::fflush(stderr);
  };
  (*updater)->on_adaptive_plan([](const AdaptivePlanSummary& plan) { std::cout << plan.describe() << std::endl; });
  asio::io_context io;
  auto fut = asio::co_spawn(io, (*updater)->install(job, progress), asio::use_future);
  io.run();
  auto r = fut.get();
  if (tty) std::fprintf(stderr, "\n");
  if (!r && is(r.error(), AgentErrc::already_installed)) {
    std::cout << "The artifact is already installed; nothing to do.\n";
    return 0;
  }
  if (!r) return failed(r.error());
  if (r->finished) {  // an update module that needed no reboot
    std::cout << "Installed and committed " << r->header.artifact_name << " (update module " << r->header.payload_type
              << ").\n";
    return 0;
  }
  if (r->stats.adaptive)
    std::cout << "Fetched " << human_bytes(r->stats.network_bytes) << " of " << human_bytes(r->stats.artifact_bytes)
              << ", reused " << human_bytes(r->stats.reused) << " from the running partition.\n";
  std::cout << "Installed " << r->header.artifact_name << " (" << human_bytes(r->stats.written)
            << "). Reboot to try the new partition, then run 'tern-agent commit' (or let the daemon do it).\n";
  return reboot_exit_code ? exit_reboot_needed : 0;
}

int cmd_resume(const AgentConfig& cfg) {
  auto updater = Updater::open(cfg);
  if (!updater) return failed(updater.error());
  auto rec = (*updater)->recover();
  if (!rec) return failed(rec.error());
  if (rec->interrupted) {
    // A download cut by a power loss or a kill: run it again, from its last checkpoint when it
    // has one (see Updater::install), as the next attempt.
    auto next = (*updater)->next_attempt();
    if (!next) return failed(next.error());
    if (!*next) {  // InstallAttempts used up, as the daemon counts them
      auto st = (*updater)->state();
      if (!st) return failed(st.error());
      std::cout << "failure: " << st->error << "\n";
      return 1;
    }
    std::cout << "Continuing the interrupted install of " << (*next)->source << "." << std::endl;
    InstallJob job = std::move(**next);
    updater->reset();  // cmd_install opens the state store (and its lock) again
    return cmd_install(cfg, job, true);
  }
  if (rec->reboot) {
    std::cout << "Reboot needed to continue.\n";
    return exit_reboot_needed;
  }
  if (rec->finished) {
    if (rec->finished->success) {
      std::cout << "success: " << rec->finished->artifact_name << " committed\n";
      return 0;
    }
    std::cout << "failure: " << rec->finished->error << "\n";
    return 1;
  }
  std::cout << "Nothing to do.\n";
  return 0;
}

int cmd_commit(const AgentConfig& cfg) {
  auto updater = Updater::open(cfg);
  if (!updater) return failed(updater.error());
  auto r = (*updater)->commit();
  if (!r) return failed(r.error());
  std::cout << "Committed " << r->artifact_name << ".\n";
  return 0;
}

int cmd_rollback(const AgentConfig& cfg) {
  auto updater = Updater::open(cfg);
  if (!updater) return failed(updater.error());
  auto r = (*updater)->rollback("rolled back by the operator");
  if (!r) return failed(r.error());
  if (*r) {
    std::cout << "Rolled back; reboot to run the previous partition.\n";
    return exit_reboot_needed;
  }
  std::cout << "Rolled back.\n";
  return 0;
}

int cmd_show(const AgentConfig& cfg, bool provides) {
  auto store = StateStore::open(cfg.data_dir);
  if (!store) return failed(store.error());
  auto i = store->load_installed(cfg.initial_artifact_name);
  if (!i) return failed(i.error());
  if (!provides) {
    std::cout << i->artifact_name << "\n";
    return 0;
  }
  std::cout << "artifact_name=" << i->artifact_name << "\n";
  for (const auto& [k, v] : i->provides) std::cout << k << "=" << v << "\n";
  return 0;
}

int cmd_send_inventory(const AgentConfig& cfg) {
  std::ifstream in(cfg.data_dir / "daemon.pid");
  pid_t pid = 0;
  if (!(in >> pid) || pid <= 0) {
    std::cerr << "tern-agent: no running daemon (no pid in " << (cfg.data_dir / "daemon.pid").string() << ")\n";
    return 1;
  }
  if (::kill(pid, SIGUSR2) != 0) {
    std::cerr << "tern-agent: signalling daemon " << pid << ": " << std::strerror(errno) << "\n";
    return 1;
  }
  std::cout << "Asked the daemon (pid " << pid << ") to send its inventory.\n";
  return 0;
}

}  // namespace

int cli_main(int argc, char** argv) {
  log::set_program("tern-agent");
  std::string config_path = "/etc/tern/agent.conf";
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "--config" || a == "-c") && i + 1 < argc) {
      config_path = argv[++i];
    } else if (a == "--log-level" && i + 1 < argc) {
      log::Level level;
      if (!log::parse_level(argv[++i], level)) return usage("unknown log level '" + std::string(argv[i]) + "'");
      log::set_level(level);
    } else if (a == "-h" || a == "--help") {
      std::cout << usage_text;
      return 0;
    } else if (a == "--version") {
      std::cout << "tern-agent " TERN_VERSION "\n";
      return 0;
    } else {
      args.push_back(a);
    }
  }
  if (args.empty()) return usage("no command given");
  auto cfg = AgentConfig::load(config_path);
  if (!cfg) return failed(cfg.error());
  const std::string& cmd = args[0];
  if (cmd == "install") {
    bool reboot_code = false;
    std::string source;
    for (std::size_t i = 1; i < args.size(); ++i) {
      if (args[i] == "--reboot-exit-code") reboot_code = true;
      else if (source.empty()) source = args[i];
      else return usage("install takes one FILE or URL");
    }
    if (source.empty()) return usage("install needs a FILE or URL");
    return cmd_install(*cfg, InstallJob{.source = source}, reboot_code);
  }
  if (args.size() != 1) return usage("'" + cmd + "' takes no arguments");
  if (cmd == "daemon") return run_daemon(*cfg);
  if (cmd == "resume") return cmd_resume(*cfg);
  if (cmd == "commit") return cmd_commit(*cfg);
  if (cmd == "rollback") return cmd_rollback(*cfg);
  if (cmd == "show-artifact") return cmd_show(*cfg, false);
  if (cmd == "show-provides") return cmd_show(*cfg, true);
  if (cmd == "send-inventory") return cmd_send_inventory(*cfg);
  return usage("unknown command '" + cmd + "'");
}

}  // namespace tern::agent
