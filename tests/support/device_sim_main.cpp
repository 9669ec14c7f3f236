// tern-device-sim: a simulated A/B device for tests, demos and by-hand experiments.
//
//   tern-device-sim create DIR [--rootfs-mib N] [--data-mib N] [--image FILE]
//   tern-device-sim boot DIR [--partuuid]     power-on; prints the partition booted
//   tern-device-sim env DIR                   prints the U-Boot environment
//   tern-device-sim setenv DIR NAME=VALUE...  sets variables in one store (empty value removes)
//   tern-device-sim read-part DIR N OUT       copies partition N of the disk image to OUT
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "tests/support/device_sim.hpp"

namespace {

using tern::test::DeviceSim;

int usage() {
  std::cerr << "usage: tern-device-sim create DIR [--rootfs-mib N] [--data-mib N] [--image FILE]\n"
               "       tern-device-sim boot DIR [--partuuid]\n"
               "       tern-device-sim env DIR\n"
               "       tern-device-sim setenv DIR NAME=VALUE...\n"
               "       tern-device-sim read-part DIR N OUT\n";
  return 2;
}

int report(const tern::Error& e) {
  std::cerr << "tern-device-sim: " << e.message() << "\n";
  return 1;
}

bool parse_mib(const std::string& s, std::uint64_t& out) {
  try {
    std::size_t used = 0;
    out = std::stoull(s, &used);
    return used == s.size() && out > 0;
  } catch (const std::exception&) {
    return false;
  }
}

int cmd_create(const std::vector<std::string>& args) {
  tern::test::DeviceSimOptions options;
  for (std::size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (i + 1 >= args.size()) return usage();
    if (a == "--rootfs-mib") {
      if (!parse_mib(args[++i], options.rootfs_mib)) return usage();
    } else if (a == "--data-mib") {
      if (!parse_mib(args[++i], options.data_mib)) return usage();
    } else if (a == "--image") {
      options.initial_image = args[++i];
    } else {
      return usage();
    }
  }
  auto sim = DeviceSim::create(args[0], options);
  if (!sim) return report(sim.error());
  std::cout << sim->disk().string() << "\n";
  return 0;
}

int cmd_boot(const std::vector<std::string>& args) {
  auto style = tern::test::RootStyle::device;
  if (args.size() == 2 && args[1] == "--partuuid")
    style = tern::test::RootStyle::partuuid;
  else if (args.size() != 1)
    return usage();
  auto sim = DeviceSim::open(args[0]);
  if (!sim) return report(sim.error());
  auto booted = sim->boot(style);
  if (!booted) return report(booted.error());
  if (booted->ran_altbootcmd) std::cerr << "bootcount passed bootlimit: ran altbootcmd\n";
  std::cout << booted->partition << "\n";
  return 0;
}

int cmd_env(const std::vector<std::string>& args) {
  if (args.size() != 1) return usage();
  auto sim = DeviceSim::open(args[0]);
  if (!sim) return report(sim.error());
  auto vars = sim->env();
  if (!vars) return report(vars.error());
  for (const auto& [k, v] : *vars) std::cout << k << "=" << v << "\n";
  return 0;
}

int cmd_setenv(const std::vector<std::string>& args) {
  if (args.size() < 2) return usage();
  std::map<std::string, std::string> vars;
  for (std::size_t i = 1; i < args.size(); ++i) {
    auto eq = args[i].find('=');
    if (eq == std::string::npos) return usage();
    vars[args[i].substr(0, eq)] = args[i].substr(eq + 1);
  }
  auto sim = DeviceSim::open(args[0]);
  if (!sim) return report(sim.error());
  auto env = sim->boot_env();
  if (!env) return report(env.error());
  if (auto ok = (*env)->write(vars); !ok) return report(ok.error());
  return 0;
}

int cmd_read_part(const std::vector<std::string>& args) {
  if (args.size() != 3) return usage();
  auto sim = DeviceSim::open(args[0]);
  if (!sim) return report(sim.error());
  int number = 0;
  try {
    number = std::stoi(args[1]);
  } catch (const std::exception&) {
    return usage();
  }
  auto part = sim->partition(number);
  if (!part) return report(part.error());
  std::ifstream in(part->path, std::ios::binary);
  std::ofstream out(args[2], std::ios::binary | std::ios::trunc);
  if (!in || !out) {
    std::cerr << "tern-device-sim: cannot open " << part->path << " or " << args[2] << "\n";
    return 1;
  }
  in.seekg(static_cast<std::streamoff>(part->offset));
  std::vector<char> buf(1 << 20);
  for (std::uint64_t left = part->size; left > 0;) {
    auto n = static_cast<std::streamsize>(std::min<std::uint64_t>(left, buf.size()));
    if (!in.read(buf.data(), n) || !out.write(buf.data(), n)) {
      std::cerr << "tern-device-sim: copying partition " << number << " to " << args[2] << " failed\n";
      return 1;
    }
    left -= static_cast<std::uint64_t>(n);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return usage();
  const std::string cmd = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  if (cmd == "create") return cmd_create(args);
  if (cmd == "boot") return cmd_boot(args);
  if (cmd == "env") return cmd_env(args);
  if (cmd == "setenv") return cmd_setenv(args);
  if (cmd == "read-part") return cmd_read_part(args);
  return usage();
}
