// A simulated device with an agent configuration, for tests that drive the real tern-agent binary:
// DeviceSim (disk image, file-backed U-Boot environment, bootloader logic) plus agent.conf.
#pragma once

#include "artifacts/crypto.hpp"
#include "tests/support/device_sim.hpp"
#include "tests/support/testenv.hpp"

#include <boost/json.hpp>

#include <sys/wait.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>
#include <sstream>

namespace tern::test {

inline std::string agent_bin() { return (build_dir() / "agent/tern-agent").string(); }
inline std::string artifact_bin() { return (build_dir() / "artifacts/tern-artifact").string(); }
inline std::string q(const fs::path& p) { return shell_quote(p.string()); }

/// A rootfs image: deterministic pseudo-random bytes with compressible runs, `mib` MiB.
inline std::string make_image(std::size_t bytes, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(bytes, '\0');
  for (std::size_t i = 0; i < bytes; i += 4) {
    auto v = (i / 4096) % 4 == 0 ? 0u : rng();
    for (std::size_t k = 0; k < 4 && i + k < bytes; ++k) s[i + k] = static_cast<char>((v >> (8 * k)) & 0xff);
  }
  return s;
}

/// Writes `image` and an artifact of it named `name` for device type `type` (zstd unless told).
inline fs::path make_artifact(const fs::path& dir, const std::string& name, const std::string& image,
                              const std::string& type = "qemu", const std::string& extra = "") {
  auto img = dir / (name + ".img");
  write_file(img, image);
  auto out = dir / (name + ".mender");
  auto r = run(artifact_bin() + " write rootfs-image -f " + q(img) + " -t " + type + " -n " + name + " -o " + q(out) +
               " " + extra);
  if (r.exit_code != 0) throw std::runtime_error("tern-artifact write: " + r.output);
  return out;
}

inline std::string sha256_hex(std::string_view data) { return artifacts::Sha256::hex(data); }

class SimAgent {
 public:
  /// A fresh device in `dir`, booted once, with agent.conf; `extra` adds/overrides config keys.
  explicit SimAgent(fs::path dir, boost::json::object extra = {}, DeviceSimOptions sim_options = {})
      : dir_(std::move(dir)) {
    fs::create_directories(dir_);
    sim_options.initial_image = sim_options.initial_image.empty() ? fs::path() : sim_options.initial_image;
    auto sim = DeviceSim::create(dir_, sim_options);
    if (!sim) throw std::runtime_error("DeviceSim::create: " + sim.error().message());
    sim_.emplace(std::move(*sim));
    auto b = sim_->boot();
    if (!b) throw std::runtime_error("first boot: " + b.error().message());
    boost::json::object cfg{
        {"DeviceID", dir_.filename().string()},
        {"DeviceType", "qemu"},
        {"DataDir", (dir_ / "state").string()},
        {"Disk", sim_->disk().string()},
        {"RootfsPartA", "2"},
        {"RootfsPartB", "3"},
        {"KernelCmdline", sim_->cmdline().string()},
        {"Mountinfo", sim_->mountinfo().string()},
        {"FwEnvConfig", sim_->fw_env_config().string()},
        {"RebootCommand", ""},
        {"ArtifactName", "factory-image"},
    };
    for (const auto& [k, v] : extra) cfg[k] = v;
    config_ = cfg;
    write_config();
  }

  void set(const std::string& key, boost::json::value v) {
    config_[key] = std::move(v);
    write_config();
  }
  fs::path config_path() const { return dir_ / "agent.conf"; }
  const fs::path& dir() const { return dir_; }
  DeviceSim& sim() { return *sim_; }

  /// Runs `tern-agent --config agent.conf ARGS` (with `env` prepended, e.g. "TERN_TEST_KILL_AT=x").
  CommandResult agent(const std::string& args, const std::string& env = "") {
    return run(env + (env.empty() ? "" : " ") + agent_bin() + " --config " + q(config_path()) + " " + args);
  }

  /// Bytes of partition N, first `len` bytes.
  std::string read_partition(int n, std::size_t len) {
    auto p = sim_->partition(n);
    if (!p) throw std::runtime_error(p.error().message());
    std::ifstream in(p->path, std::ios::binary);
    in.seekg(static_cast<std::streamoff>(p->offset));
    std::string s(len, '\0');
    in.read(s.data(), static_cast<std::streamsize>(len));
    s.resize(static_cast<std::size_t>(in.gcount()));
    return s;
  }
  /// Overwrites bytes of partition N at `at` (something else touching the standby partition).
  void write_partition(int n, std::uint64_t at, const std::string& bytes) {
    auto p = sim_->partition(n);
    if (!p) throw std::runtime_error(p.error().message());
    std::fstream f(p->path, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(static_cast<std::streamoff>(p->offset + at));
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  std::string partition_sha(int n) {
    auto p = sim_->partition(n);
    if (!p) throw std::runtime_error(p.error().message());
    return sha256_hex(read_partition(n, p->size));
  }
  std::map<std::string, std::string> env() {
    auto e = sim_->env();
    if (!e) throw std::runtime_error(e.error().message());
    return *e;
  }
  /// Power-cycles the device: the bootloader logic, then returns the partition booted.
  int boot() {
    auto b = sim_->boot();
    if (!b) throw std::runtime_error("boot: " + b.error().message());
    return b->partition;
  }
  std::string installed() {
    auto r = agent("show-artifact");
    auto s = r.output;
    while (!s.empty() && s.back() == '\n') s.pop_back();
    return s;
  }

 private:
  void write_config() { write_file(config_path(), boost::json::serialize(config_)); }

  fs::path dir_;
  std::optional<DeviceSim> sim_;
  boost::json::object config_;
};

/// The daemon of one simulated device, "rebooted" by the test whenever it exits with 75.
class SimDaemon {
 public:
  explicit SimDaemon(SimAgent& dev) : dev_(dev) { start(); }
  void start() {
    ++starts_;
    proc_ = std::make_unique<Process>(std::vector<std::string>{agent_bin(), "--config", dev_.config_path().string(),
                                                               "--log-level", "debug", "daemon"},
                                      dev_.dir() / "daemon.log");
  }
  /// Handles a reboot request: bootloader logic, then a fresh daemon.
  void pump() {
    if (!proc_) return;
    auto st = proc_->wait(std::chrono::milliseconds(0));
    if (!st) return;
    if (WIFEXITED(*st) && WEXITSTATUS(*st) == 75) {
      ++reboots_;
      dev_.boot();
      start();
    } else {
      exited_ = *st;
      proc_.reset();
      std::ofstream(dev_.dir() / "daemon.log", std::ios::app)
          << "--- the daemon ended: " << (WIFEXITED(*st) ? "exit status " + std::to_string(WEXITSTATUS(*st))
                                                         : "signal " + std::to_string(WTERMSIG(*st)))
          << "\n";
    }
  }
  void kill() {
    proc_->kill();
    proc_.reset();
  }
  /// SIGTERM, as systemd stops it for a reboot; returns the exit status.
  int stop() {
    auto st = proc_->stop(SIGTERM, std::chrono::seconds(20));
    proc_.reset();
    return st;
  }
  bool running() { return proc_ != nullptr; }
  int reboots() const { return reboots_; }
  std::string log() { return read_file(dev_.dir() / "daemon.log"); }

 private:
  SimAgent& dev_;
  std::unique_ptr<Process> proc_;
  int starts_ = 0, reboots_ = 0;
  int exited_ = -1;
};

// The resume checkpoint's artifact offset in state/resume.json, or 0 when there is none yet.
inline std::uint64_t saved_checkpoint_offset(const fs::path& state_dir) {
  std::error_code ec;
  if (!fs::exists(state_dir / "resume.json", ec)) return 0;
  auto doc = boost::json::parse(read_file(state_dir / "resume.json"), ec);
  if (ec || !doc.is_object() || !doc.as_object().contains("checkpoint")) return 0;
  std::string text(doc.as_object().at("checkpoint").as_string());
  auto at = text.find("\noffset ");
  return at == std::string::npos ? 0 : std::stoull(text.substr(at + 8));
}

/// Status words `device` sent for deployment `dep`, in arrival order, from a `mosquitto_sub -v -t
/// 'tern/devices/#'` log.
inline std::vector<std::string> status_words(const fs::path& watch_log, const std::string& device,
                                             const std::string& dep) {
  std::vector<std::string> out;
  std::istringstream in(read_file(watch_log));
  for (std::string line; std::getline(in, line);) {
    if (!line.starts_with("tern/devices/" + device + "/status ")) continue;
    if (line.find("\"deployment_id\":\"" + dep + "\"") == std::string::npos) continue;
    auto k = line.find("\"status\":\"");
    if (k == std::string::npos) continue;
    k += 10;
    out.push_back(line.substr(k, line.find('"', k) - k));
  }
  return out;
}

}  // namespace tern::test
