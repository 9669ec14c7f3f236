// A power-cut soak of the real `tern-agent daemon` on a simulated device, with the real broker (TLS,
// client certificates, ACLs), nginx behind a throttling proxy, and a watcher (mosquitto_sub) that
// records every status the fleet receives.
//
// Deployments run one after the other, published retained on tern/devices/{id}/deployment as an
// operator would: releases alternate, and some are "unhealthy" (the health check, which reads a
// marker at the start of the booted partition, refuses them), so both commits and rollbacks happen.
// During each deployment the daemon is cut (kill -9 of its process group) at random moments drawn
// over the measured length of a whole cycle: download, partition writes and checkpoints, the boot
// switch, the first boot on the new partition, the (slowish) health check, the commit. After each
// cut comes a simulated power-on (DeviceSim::boot(): Mender's U-Boot logic) and a fresh daemon.
//
// Once a deployment settles, the device is power-cycled once more and checked:
//   - it boots, and the partition it boots holds exactly the image of the artifact it reports as
//     installed, which is the new release (only if healthy) or the one before: else "unbootable";
//   - upgrade_available=0 and mender_boot_part names the partition booted;
//   - the fleet got exactly one final status (success or failure) for the deployment: none is
//     "unreported", two distinct ones (by seq; QoS 1 redelivery repeats the seq) "duplicated";
//   - the status agrees with the outcome (success ⇔ the new release runs): else "misreported".
//
//   TERN_SOAK_CUTS  cuts to make (default 25: about two minutes); scripts/soak-power-cut runs 200+
//   TERN_SOAK_SEED  the random seed (printed; default: random)
#include "tests/agent/sim_agent.hpp"
#include "tests/support/broker.hpp"
#include "tests/support/fault_proxy.hpp"
#include "tests/support/nginx.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

namespace tern::test {
namespace {
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

const std::string device_id = "device-1";

std::uint64_t env_u64(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  try {
    return std::stoull(v);
  } catch (const std::exception&) {
    throw std::runtime_error(std::string(name) + ": not a number: " + v);
  }
}

/// One release the soak deploys: an image whose first bytes say whether the health check accepts it.
struct Release {
  std::string name;
  bool healthy = true;
  std::string image_sha;   ///< SHA-256 of the image
  std::size_t image_size = 0;
  fs::path artifact;
  std::uint64_t artifact_size = 0;
  std::string artifact_sha;
};

/// A status event as the watcher saw it.
struct StatusSeen {
  std::string deployment_id, status, error;
  std::uint64_t seq = 0;
};

/// The watcher's log (`mosquitto_sub -v`), read incrementally: complete lines only.
class WatchLog {
 public:
  explicit WatchLog(fs::path path) : path_(std::move(path)) {}

  const std::vector<StatusSeen>& poll() {
    std::ifstream in(path_, std::ios::binary);
    if (!in) return events_;
    in.seekg(static_cast<std::streamoff>(offset_));
    std::string chunk((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::size_t at = 0;
    for (auto nl = chunk.find('\n'); nl != std::string::npos; nl = chunk.find('\n', at)) {
      parse(std::string_view(chunk).substr(at, nl - at));
      at = nl + 1;
    }
    offset_ += at;
    return events_;
  }

  /// Final statuses (success, failure) of `dep`, one per seq.
  std::vector<StatusSeen> finals(const std::string& dep) {
    std::vector<StatusSeen> out;
    for (const auto& e : poll()) {
      if (e.deployment_id != dep || (e.status != "success" && e.status != "failure")) continue;
      if (std::none_of(out.begin(), out.end(), [&](const StatusSeen& o) { return o.seq == e.seq; })) out.push_back(e);
    }
    return out;
  }

 private:
  void parse(std::string_view line) {
    const std::string prefix = "tern/devices/" + device_id + "/status ";
    if (!line.starts_with(prefix)) return;
    std::error_code ec;
    auto doc = boost::json::parse(line.substr(prefix.size()), ec);
    if (ec || !doc.is_object()) return;
    const auto& o = doc.as_object();
    StatusSeen s;
    if (auto* v = o.if_contains("deployment_id"); v && v->is_string()) s.deployment_id = v->as_string();
    if (auto* v = o.if_contains("status"); v && v->is_string()) s.status = v->as_string();
    if (auto* v = o.if_contains("error"); v && v->is_string()) s.error = v->as_string();
    if (auto* v = o.if_contains("seq"); v && v->is_number()) s.seq = v->to_number<std::uint64_t>();
    events_.push_back(std::move(s));
  }

  fs::path path_;
  std::size_t offset_ = 0;
  std::vector<StatusSeen> events_;
};

/// Where to aim a cut: a random moment of the whole cycle, or a random moment of one step.
enum class Aim { anywhere, download, checkpoint, boot_switch, before_reboot, first_boot, health_check, commit, rollback, report };
const char* name(Aim a) {
  constexpr const char* names[] = {"anywhere", "download",     "checkpoint", "switch", "before-reboot",
                                   "first-boot", "health-check", "commit",    "rollback", "report"};
  return names[static_cast<int>(a)];
}

struct Summary {
  int cuts = 0, deployments = 0, ended_new = 0, ended_old = 0;
  int unbootable = 0, unreported = 0, duplicated = 0, misreported = 0, daemon_exits = 0;
  std::map<std::string, int> cuts_by_phase;

  std::string line() const {
    std::ostringstream s;
    s << "power-cut soak: cuts " << cuts << ", deployments " << deployments << ", ended on new " << ended_new
      << ", ended on old " << ended_old << ", unbootable " << unbootable << ", unreported " << unreported
      << ", duplicated " << duplicated << ", misreported " << misreported << ", unexpected daemon exits "
      << daemon_exits;
    return s.str();
  }
  std::string phases() const {
    std::ostringstream s;
    s << "cuts by moment:";
    for (const auto& [k, v] : cuts_by_phase) s << " " << k << "=" << v;
    return s.str();
  }
};

class PowerCutSoak : public ::testing::Test {
 protected:
  TempDir tmp{"tern-soak"};
  Broker broker;
  Nginx nginx;
  FaultProxy proxy{static_cast<std::uint16_t>(nginx.port())};
  std::unique_ptr<Process> watcher;
  std::unique_ptr<WatchLog> watch;
  std::unique_ptr<SimAgent> dev;
  std::unique_ptr<SimDaemon> daemon;
  std::vector<Release> releases;
  std::map<std::string, std::pair<std::size_t, std::string>> known_good;  // name → (bytes, SHA-256)
  std::mt19937_64 rng;
  std::uint64_t seed = 0;
  Summary sum;
  std::ostringstream trace;  // what happened, deployment by deployment (printed on failure)

  // 17 MiB images in 1 MiB zstd frames: two checkpoints (every 8 MiB of payload) per download.
  static constexpr std::size_t image_bytes = (17u << 20) + 4321;

  void SetUp() override {
    seed = env_u64("TERN_SOAK_SEED", std::random_device{}());
    rng.seed(seed);
    std::cout << "power-cut soak: seed " << seed << " (TERN_SOAK_SEED)" << std::endl;
    trace << "seed " << seed << "\n";

    // Three healthy releases and two the health check refuses.
    unsigned n = 0;
    for (auto [name, healthy] : std::vector<std::pair<std::string, bool>>{
             {"release-a", true}, {"release-b", true}, {"release-c", true}, {"broken-x", false}, {"broken-y", false}}) {
      auto image = make_image(image_bytes, 100 + n++);
      const std::string marker = (healthy ? "SOAK-OK " : "SOAK-BAD ") + name + "\n";
      image.replace(0, marker.size(), marker);
      Release r{.name = name, .healthy = healthy, .image_sha = sha256_hex(image), .image_size = image.size()};
      r.artifact = make_artifact(tmp.path(), name, image, "qemu", "--frame-size 1048576");
      r.artifact_size = fs::file_size(r.artifact);
      r.artifact_sha = sha256_hex(read_file(r.artifact));
      fs::copy_file(r.artifact, nginx.root() / (name + ".mender"));
      fs::remove(tmp / (name + ".img"));
      known_good[name] = {r.image_size, r.image_sha};
      releases.push_back(std::move(r));
    }
    proxy.set_rate(12u << 20);  // about a second and a half per download

    watcher = std::make_unique<Process>(
        std::vector<std::string>{"sh", "-c", "exec mosquitto_sub " + broker.client_args("bridge") +
                                                 " -v -t 'tern/devices/+/status'"},
        tmp / "watch.log");
    watch = std::make_unique<WatchLog>(tmp / "watch.log");

    auto c = certs();
    boost::json::object cfg{{"BrokerURI", broker.uri()},
                            {"ServerCertificate", (c / "ca.crt").string()},
                            {"ClientCertificate", (c / (device_id + ".crt")).string()},
                            {"ClientKey", (c / (device_id + ".key")).string()},
                            {"ProgressIntervalSeconds", 1},
                            {"RetryMinMilliseconds", 200},
                            {"RetryMaxSeconds", 2},
                            {"DownloadReadTimeoutSeconds", 5},
                            {"HealthCheckCommand", "sh " + (tmp / "health-check").string()}};
    dev = std::make_unique<SimAgent>(tmp / device_id, cfg, DeviceSimOptions{.rootfs_mib = 20});
    write_health_check();
    auto a = dev->sim().partition(2);
    ASSERT_TRUE(a) << a.error().message();
    known_good["factory-image"] = {a->size, dev->partition_sha(2)};
  }

  // The application's health check, run on the new partition before the commit: slowish (so that
  // cuts land in it), and it refuses an image whose first bytes are not SOAK-OK.
  void write_health_check() {
    auto p2 = dev->sim().partition(2), p3 = dev->sim().partition(3);
    ASSERT_TRUE(p2 && p3);
    std::ostringstream s;
    s << "sleep 0.5\n"
      << "part=$(cut -d' ' -f1 " << q(dev->dir() / "booted") << ")\n"
      << "case \"$part\" in 2) off=" << p2->offset << ";; 3) off=" << p3->offset << ";; *) exit 2;; esac\n"
      << "dd if=" << q(p2->path) << " bs=8 count=1 skip=$off iflag=skip_bytes 2>/dev/null | grep -q '^SOAK-OK' || "
      << "{ echo \"the application on partition $part did not start\"; exit 1; }\n";
    write_file(tmp / "health-check", s.str());
  }

  void TearDown() override {
    write_file(tmp / "trace.txt", trace.str());
    if (HasFailure() && dev) {
      std::cerr << "--- trace\n" << trace.str() << "--- daemon.log (last 8 KiB)\n";
      auto log = read_file(dev->dir() / "daemon.log");
      std::cerr << (log.size() > 8192 ? log.substr(log.size() - 8192) : log) << "\n";
    }
  }

  std::string deployment_json(const std::string& id, const Release& r) {
    auto url = "https://127.0.0.1:" + std::to_string(proxy.port()) + "/artifacts/" + r.name + ".mender";
    return R"({"deployment_id":")" + id + R"(","artifact_name":")" + r.name + R"(","url":")" + url +
           R"(","size":)" + std::to_string(r.artifact_size) + R"(,"sha256":")" + r.artifact_sha + R"("})";
  }

  void publish(const std::string& payload) {
    auto r = run("mosquitto_pub " + broker.client_args("operator") + " -q 1 -r -t " +
                 shell_quote("tern/devices/" + device_id + "/deployment") + " -m " + shell_quote(payload));
    if (r.exit_code != 0) throw std::runtime_error("mosquitto_pub: " + r.output);
  }

  /// install.json, or an empty object.
  boost::json::object install_state() {
    std::error_code ec;
    auto path = dev->dir() / "state/install.json";
    if (!fs::exists(path, ec)) return {};
    auto doc = boost::json::parse(read_file(path), ec);
    return !ec && doc.is_object() ? doc.as_object() : boost::json::object{};
  }

  int booted_partition() { return std::stoi(read_file(dev->dir() / "booted")); }

  /// Where the install stood when the power went: the persisted phase, refined.
  std::string moment(const std::string& dep) {
    auto st = install_state();
    auto phase = st.contains("phase") ? std::string(st.at("phase").as_string()) : "none";
    bool ours = st.contains("deployment_id") && st.at("deployment_id").as_string() == dep;
    if (!ours) return "before-download";
    if (phase == "downloading")
      return fs::exists(dev->dir() / "state/resume.json") ? "downloading-after-checkpoint" : "downloading";
    if (phase == "switched") {
      auto target = st.contains("target_part") ? st.at("target_part").to_number<int>() : 0;
      if (booted_partition() != target) return "switched-before-reboot";
      return health_check_running() ? "health-check" : "first-boot";
    }
    if (phase == "done") return st.contains("reported") && st.at("reported").as_bool() ? "done-reported" : "done";
    return phase;
  }

  /// Handles reboot requests (exit 75) and restarts a daemon that ended otherwise, as systemd would.
  void pump() {
    try {
      daemon->pump();
    } catch (const std::exception& e) {
      trace << "  power-on after a reboot request failed: " << e.what() << "\n";
      ++sum.unbootable;
      throw;
    }
    if (!daemon->running()) {
      ++sum.daemon_exits;
      trace << "  the daemon ended on its own (see daemon.log); restarted\n";
      daemon->start();
    }
  }

  /// Pumps for `d`; returns true early if `dep` got a final status meanwhile.
  bool pump_for(Clock::duration d, const std::string& dep) {
    auto end = Clock::now() + d;
    while (Clock::now() < end) {
      pump();
      if (!watch->finals(dep).empty()) return true;
      std::this_thread::sleep_for(10ms);
    }
    return false;
  }

  /// Kill -9 of the daemon, power-on (bootloader logic), a fresh daemon.
  void cut(const std::string& dep, Aim aim) {
    auto where = moment(dep);
    daemon->kill();
    ++sum.cuts;
    ++sum.cuts_by_phase[where];
    std::ofstream(dev->dir() / "daemon.log", std::ios::app) << "--- power cut " << sum.cuts << " (" << where << ")\n";
    trace << "  cut " << sum.cuts << " aimed at " << name(aim) << ", landed in " << where;
    try {
      int part = dev->boot();
      trace << ", power-on boots partition " << part << "\n";
    } catch (const std::exception& e) {
      trace << ", power-on failed: " << e.what() << "\n";
      ++sum.unbootable;
      throw;
    }
    daemon->start();
  }

  /// Whether the health check is running now (a process running tmp/health-check).
  bool health_check_running() {
    const auto script = (tmp / "health-check").string();
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/proc", ec)) {
      std::ifstream in(e.path() / "cmdline", std::ios::binary);
      std::string cmd((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (cmd.find(script) != std::string::npos) return true;
    }
    return false;
  }

  /// Pumps until the moment `aim` of `dep` comes, then for a random part of that step. False if
  /// the deployment got its final status first (no cut then).
  bool wait_for(Aim aim, const std::string& dep, Clock::duration cycle) {
    using ms = std::chrono::milliseconds;
    auto jitter = [&](int max_ms) { return ms(std::uniform_int_distribution<int>(0, max_ms)(rng)); };
    if (aim == Aim::anywhere)
      return !pump_for(ms(std::uniform_int_distribution<std::int64_t>(
                              0, std::chrono::duration_cast<ms>(cycle).count())(rng)),
                       dep);
    const auto reboots = daemon->reboots();
    const auto resume = dev->dir() / "state/resume.json";
    std::error_code ec;
    const auto checkpoint_before = fs::exists(resume, ec) ? fs::last_write_time(resume, ec) : fs::file_time_type{};
    for (auto deadline = Clock::now() + 120s; Clock::now() < deadline; std::this_thread::sleep_for(2ms)) {
      pump();
      if (!watch->finals(dep).empty()) return false;
      auto st = install_state();
      bool ours = st.contains("deployment_id") && st.at("deployment_id").as_string() == dep;
      std::string phase = ours && st.contains("phase") ? std::string(st.at("phase").as_string()) : "";
      bool on_target = ours && st.contains("target_part") &&
                       booted_partition() == st.at("target_part").to_number<int>();
      Clock::duration extra{};
      switch (aim) {
        case Aim::download:
          if (phase != "downloading") continue;
          extra = jitter(1000);
          break;
        case Aim::checkpoint:  // just after a new checkpoint reached the disk
          if (phase != "downloading" || !fs::exists(resume, ec) || fs::last_write_time(resume, ec) == checkpoint_before)
            continue;
          extra = jitter(20);
          break;
        case Aim::boot_switch:
          if (phase != "switching") continue;
          break;
        case Aim::before_reboot:
          if (phase != "switched" || on_target) continue;
          extra = jitter(500);
          break;
        case Aim::first_boot:  // the daemon just started on the new partition
          if (daemon->reboots() == reboots || phase != "switched" || !on_target) continue;
          extra = jitter(100);
          break;
        case Aim::health_check:
          if (phase != "switched" || !on_target || !health_check_running()) continue;
          extra = jitter(500);
          break;
        case Aim::commit:
          if (phase != "committing" && !(phase == "done" && on_target)) continue;
          break;
        case Aim::rollback:
          if (phase != "rolling-back") continue;
          extra = jitter(500);
          break;
        case Aim::report:  // the outcome is recorded; the status is on its way
          if (phase != "done") continue;
          extra = jitter(10);
          break;
        case Aim::anywhere:
          break;
      }
      return !pump_for(extra, dep);
    }
    return false;
  }

  /// Runs one deployment of `r` with up to `planned_cuts` cuts, each aimed at a random moment of
  /// the whole cycle (length `cycle`, from the publication or the last power-on) or of one step
  /// of it; then power-cycles and checks the device.
  void run_deployment(const Release& r, int planned_cuts, Clock::duration cycle) {
    const auto dep = "soak-" + std::to_string(++sum.deployments);
    const auto before = dev->installed();
    trace << dep << ": " << r.name << (r.healthy ? " (healthy)" : " (unhealthy)") << " over " << before << "\n";
    publish(deployment_json(dep, r));
    std::vector<Aim> aims{Aim::download,      Aim::checkpoint, Aim::boot_switch, Aim::before_reboot,
                          Aim::first_boot,    Aim::health_check, Aim::report};
    aims.push_back(r.healthy ? Aim::commit : Aim::rollback);
    for (int i = 0; i < planned_cuts; ++i) {
      // Half the cuts anywhere in the cycle, half aimed at a step chosen at random.
      auto aim = std::bernoulli_distribution(0.5)(rng)
                     ? Aim::anywhere
                     : aims[std::uniform_int_distribution<std::size_t>(0, aims.size() - 1)(rng)];
      if (!wait_for(aim, dep, cycle)) {
        trace << "  (no cut aimed at " << name(aim) << ": the deployment ended first)\n";
        break;
      }
      cut(dep, aim);
    }
    // Settle: a final status, and the daemon done with the deployment (the outcome recorded).
    auto deadline = Clock::now() + 180s;
    while (Clock::now() < deadline) {
      pump();
      auto st = install_state();
      bool settled = st.contains("deployment_id") && st.at("deployment_id").as_string() == dep &&
                     st.contains("phase") && st.at("phase").as_string() == "done" && st.contains("reported") &&
                     st.at("reported").as_bool();
      if (settled && !watch->finals(dep).empty()) break;
      std::this_thread::sleep_for(20ms);
    }
    auto finals = watch->finals(dep);
    if (finals.empty()) {
      ++sum.unreported;
      trace << "  UNREPORTED: no final status within 180 s; install.json: " << boost::json::serialize(install_state())
            << "\n";
      ADD_FAILURE() << dep << " got no final status";
    }

    // One more power cycle, then the device must boot the image it says it runs.
    daemon->kill();
    auto env = dev->env();
    bool good = env["upgrade_available"] == "0";
    int part = 0;
    try {
      part = dev->boot();
    } catch (const std::exception& e) {
      trace << "  power-on failed: " << e.what() << "\n";
      good = false;
    }
    auto after_env = dev->env();
    auto now_installed = dev->installed();
    good = good && after_env["upgrade_available"] == "0" && after_env["mender_boot_part"] == std::to_string(part) &&
           (now_installed == before || (now_installed == r.name && r.healthy));
    if (good && known_good.contains(now_installed)) {
      auto [bytes, sha] = known_good[now_installed];
      good = sha256_hex(dev->read_partition(part, bytes)) == sha;
    } else {
      good = false;
    }
    bool on_new = now_installed == r.name;
    (on_new ? sum.ended_new : sum.ended_old) += 1;
    trace << "  ended on " << (on_new ? "new" : "old") << ": partition " << part << " runs " << now_installed
          << ", upgrade_available " << after_env["upgrade_available"] << ", finals";
    for (const auto& f : finals) trace << " " << f.status << "#" << f.seq << (f.error.empty() ? "" : " (" + f.error + ")");
    trace << "\n";
    if (!good) {
      ++sum.unbootable;
      trace << "  UNBOOTABLE or not a known good image: env before the power-on upgrade_available="
            << env["upgrade_available"] << " mender_boot_part=" << env["mender_boot_part"] << "\n";
      ADD_FAILURE() << dep << ": the device does not boot a known good image (see the trace)";
    }
    if (finals.size() == 1 && (finals[0].status == "success") != on_new) {
      ++sum.misreported;
      trace << "  MISREPORTED: " << finals[0].status << " but the device runs " << now_installed << "\n";
      ADD_FAILURE() << dep << ": reported " << finals[0].status << ", runs " << now_installed;
    }
    daemon->start();
  }

  /// Distinct final statuses for every deployment, counted once all have run (a duplicate sent by
  /// a later restart arrives late).
  void count_duplicates() {
    for (int i = 1; i <= sum.deployments; ++i) {
      auto dep = "soak-" + std::to_string(i);
      auto f = watch->finals(dep);
      if (f.size() > 1) {
        ++sum.duplicated;
        trace << "DUPLICATED: " << dep << " got " << f.size() << " final statuses:";
        for (const auto& e : f) trace << " " << e.status << "#" << e.seq;
        trace << "\n";
        ADD_FAILURE() << dep << " got " << f.size() << " distinct final statuses";
      }
    }
  }
};

TEST_F(PowerCutSoak, KilledAtRandomMomentsEveryDeploymentEndsBootableAndReportedOnce) {
  const auto target = static_cast<int>(env_u64("TERN_SOAK_CUTS", 25));
  daemon = std::make_unique<SimDaemon>(*dev);

  // The first deployment runs uncut: it measures a whole cycle, from publication to final status.
  auto t0 = Clock::now();
  run_deployment(releases[0], 0, {});
  const auto cycle = Clock::now() - t0;
  ASSERT_EQ(dev->installed(), releases[0].name) << trace.str();
  trace << "cycle " << std::chrono::duration_cast<std::chrono::milliseconds>(cycle).count() << " ms\n";
  std::cout << "power-cut soak: one uncut cycle takes "
            << std::chrono::duration_cast<std::chrono::milliseconds>(cycle).count() << " ms" << std::endl;

  // Then deployments with 1 to 3 cuts each, about one in three of an unhealthy release.
  std::uniform_int_distribution<int> cuts_per(1, 3), pick(0, 99);
  // A device that does not boot ends the run; other findings are counted and the run goes on.
  while (sum.cuts < target && sum.deployments < 20 + 4 * target && sum.unbootable == 0) {
    const auto installed = dev->installed();
    std::vector<const Release*> candidates;
    bool want_healthy = pick(rng) >= 33;
    for (const auto& r : releases)
      if (r.name != installed && r.healthy == want_healthy) candidates.push_back(&r);
    const auto& r = *candidates[std::uniform_int_distribution<std::size_t>(0, candidates.size() - 1)(rng)];
    run_deployment(r, std::min(cuts_per(rng), target - sum.cuts), cycle);
    if (sum.deployments % 10 == 0) std::cout << sum.line() << std::endl;
  }
  // Let a late duplicate arrive before counting: one more quiet stretch with the daemon up.
  pump_for(2s, "none");
  count_duplicates();

  std::cout << sum.line() << "\n" << sum.phases() << std::endl;
  RecordProperty("summary", sum.line());
  EXPECT_GE(sum.cuts, target);
  EXPECT_EQ(sum.unbootable, 0);
  EXPECT_EQ(sum.unreported, 0);
  EXPECT_EQ(sum.duplicated, 0);
  EXPECT_EQ(sum.misreported, 0);
  EXPECT_EQ(sum.daemon_exits, 0);
  EXPECT_GT(sum.ended_new, 0);
  EXPECT_GT(sum.ended_old, 0);
}

}  // namespace
}  // namespace tern::test
