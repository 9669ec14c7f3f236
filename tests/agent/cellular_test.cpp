// Built for cellular, end to end: tern-agent daemon on simulated devices, the real broker (TLS,
// client certificates, ACLs), nginx serving artifacts through a byte-counting proxy, deployments
// and go-aheads published by an operator with mosquitto_pub.
#include "tests/agent/sim_agent.hpp"
#include "tests/support/broker.hpp"
#include "tests/support/fault_proxy.hpp"
#include "tests/support/nginx.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <ctime>
#include <sstream>
#include <thread>

namespace tern::test {
namespace {
using namespace std::chrono_literals;

class CellularTest : public ::testing::Test {
 protected:
  TempDir tmp;
  Broker broker;
  Nginx nginx;
  std::string image = make_image(6u << 20, 31);
  fs::path artifact = make_artifact(tmp.path(), "release-2", image, "qemu", "--compression none");
  std::unique_ptr<Process> watcher;

  void SetUp() override {
    fs::copy_file(artifact, nginx.root() / "release-2.mender");
    watcher = std::make_unique<Process>(
        std::vector<std::string>{"sh", "-c", "exec mosquitto_sub " + broker.client_args("bridge") +
                                                 " -v -t 'tern/devices/#'"},
        tmp / "watch.log");
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << "--- watch.log\n" << read_file(tmp / "watch.log") << "\n";
  }

  std::unique_ptr<SimAgent> device(const std::string& id, boost::json::object extra = {},
                                   DeviceSimOptions sim = {}) {
    auto c = certs();
    boost::json::object cfg{{"BrokerURI", broker.uri()},
                            {"ServerCertificate", (c / "ca.crt").string()},
                            {"ClientCertificate", (c / (id + ".crt")).string()},
                            {"ClientKey", (c / (id + ".key")).string()},
                            {"ProgressIntervalSeconds", 1},
                            {"RetryMinMilliseconds", 200},
                            {"RetryMaxSeconds", 2}};
    for (const auto& [k, v] : extra) cfg[k] = v;
    return std::make_unique<SimAgent>(tmp / id, cfg, sim);
  }

  /// A deployment message; `fields` is appended JSON (`,"reboot":"on-command"`).
  std::string deployment(const std::string& id, const std::string& url, const std::string& fields = "",
                         const std::string& name = "release-2") {
    const fs::path file = nginx.root() / (name + ".mender");
    return R"({"deployment_id":")" + id + R"(","artifact_name":")" + name + R"(","url":")" + url + R"(","size":)" +
           std::to_string(fs::file_size(file)) + R"(,"sha256":")" + sha256_hex(read_file(file)) + "\"" + fields +
           "}";
  }

  void publish(const std::string& topic, const std::string& payload, bool retained = true) {
    auto r = run("mosquitto_pub " + broker.client_args("operator") + " -q 1 " + (retained ? "-r " : "") + "-t " +
                 shell_quote(topic) + " -m " + shell_quote(payload));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }

  /// The status lines of `dep` on `device`, in arrival order.
  std::vector<std::string> status_lines(const std::string& device, const std::string& dep) {
    std::vector<std::string> out;
    std::istringstream in(read_file(tmp / "watch.log"));
    for (std::string line; std::getline(in, line);)
      if (line.starts_with("tern/devices/" + device + "/status ") &&
          line.find("\"deployment_id\":\"" + dep + "\"") != std::string::npos)
        out.push_back(line);
    return out;
  }
  static std::string field(const std::string& line, const std::string& key) {
    auto k = line.find("\"" + key + "\":");
    if (k == std::string::npos) return {};
    k += key.size() + 3;
    if (line[k] == '"') return line.substr(k + 1, line.find('"', k + 1) - k - 1);
    return line.substr(k, line.find_first_of(",}", k) - k);
  }
  std::vector<std::string> statuses(const std::string& device, const std::string& dep) {
    std::vector<std::string> out;
    for (auto& l : status_lines(device, dep)) out.push_back(field(l, "status"));
    return out;
  }
  std::size_t count(const std::string& device, const std::string& dep, const std::string& word) {
    auto s = statuses(device, dep);
    return static_cast<std::size_t>(std::count(s.begin(), s.end(), word));
  }

  template <class Pred>
  bool wait_until(SimDaemon& d, Pred pred, std::chrono::seconds timeout = 60s) {
    auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      d.pump();
      if (pred()) return true;
      std::this_thread::sleep_for(20ms);
    }
    return false;
  }

  /// "HH:MM-HH:MM" starting `from` minutes from now (local time), `len` minutes long.
  static std::string window_from_now(int from, int len) {
    const std::time_t now = std::time(nullptr);
    std::tm t{};
    localtime_r(&now, &t);
    const int start = ((t.tm_hour * 60 + t.tm_min + from) % 1440 + 1440) % 1440;
    const int end = (start + len) % 1440;
    char buf[32];
    std::snprintf(buf, sizeof buf, "%02d:%02d-%02d:%02d", start / 60, start % 60, end / 60, end % 60);
    return buf;
  }
};

TEST_F(CellularTest, TheDeploymentsMaxRateCapsTheDownloadAndProgressAndEtaFollowIt) {
  // 40 MiB: far more than the socket buffers between proxy and agent (several MiB on loopback),
  // so the proxy's count follows what the agent reads once they are full.
  const auto big = make_image(40u << 20, 37);
  fs::copy_file(make_artifact(tmp.path(), "release-big", big, "qemu", "--compression none"),
                nginx.root() / "release-big.mender");
  FaultProxy counter(static_cast<std::uint16_t>(nginx.port()));  // no faults: it counts
  constexpr std::uint64_t cap = 4u << 20;
  // The agent's own cap is higher: the deployment's, the smaller, wins.
  auto dev = device("device-1", {{"DownloadMaxBytesPerSecond", 4 * cap}}, DeviceSimOptions{.rootfs_mib = 48});
  SimDaemon d(*dev);
  const auto url = "https://127.0.0.1:" + std::to_string(counter.port()) + "/artifacts/release-big.mender";
  publish("tern/devices/device-1/deployment",
          deployment("dep-r", url, ",\"max_rate\":" + std::to_string(cap), "release-big"));

  // The rate between 12 and 36 MiB through the proxy (steady state: the buffers are full).
  ASSERT_TRUE(wait_until(d, [&] { return counter.bytes_downstream() >= (12u << 20); })) << d.log();
  const auto t0 = std::chrono::steady_clock::now();
  const std::uint64_t b0 = counter.bytes_downstream();
  ASSERT_TRUE(wait_until(d, [&] { return counter.bytes_downstream() >= (36u << 20); })) << d.log();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double rate = static_cast<double>(counter.bytes_downstream() - b0) / seconds;
  EXPECT_NEAR(rate / cap, 1.0, 0.10) << rate << " B/s against a cap of " << cap;

  ASSERT_TRUE(wait_until(d, [&] { return count("device-1", "dep-r", "success") == 1; })) << d.log();
  EXPECT_EQ(dev->installed(), "release-big");
  // Progress went up step by step, and the ETA said what the cap implies.
  std::uint64_t last = 0;
  int steps = 0, etas = 0;
  const double total = static_cast<double>(fs::file_size(nginx.root() / "release-big.mender"));
  for (auto& l : status_lines("device-1", "dep-r")) {
    if (field(l, "status") != "downloading") continue;
    const auto bytes = std::stoull(field(l, "bytes"));
    EXPECT_GE(bytes, last) << l;
    steps += bytes > last;
    last = bytes;
    if (auto eta = field(l, "eta"); !eta.empty() && bytes > (12u << 20) && total - static_cast<double>(bytes) > 2 * cap) {
      const double expected = (total - static_cast<double>(bytes)) / cap;
      EXPECT_NEAR(std::stod(eta) / expected, 1.0, 0.5) << l;
      ++etas;
    }
  }
  EXPECT_GE(steps, 5) << "progress while throttled";
  EXPECT_GE(etas, 1) << "an ETA mid-download";
}

TEST_F(CellularTest, OnCommandWaitsWrittenAcrossAPowerCutAndRebootsOnTheGoAhead) {
  auto dev = device("device-2");
  SimDaemon d(*dev);
  publish("tern/devices/device-2/deployment", deployment("dep-c", nginx.url("release-2.mender"), R"(,"reboot":"on-command")"));
  ASSERT_TRUE(wait_until(d, [&] { return count("device-2", "dep-c", "pause_before_rebooting") == 1; })) << d.log();
  // Written, not switched: the bootloader still boots the old system.
  EXPECT_EQ(dev->env()["mender_boot_part"], "2");
  EXPECT_NE(dev->env()["upgrade_available"], "1");
  const std::string written = sha256_hex(dev->read_partition(3, image.size()));
  EXPECT_EQ(written, sha256_hex(image));
  // A go-ahead for another deployment does not count.
  publish("tern/devices/device-2/reboot", R"({"deployment_id":"dep-other"})");

  d.kill();  // power cut while waiting
  EXPECT_EQ(dev->boot(), 2) << "the old partition boots";
  d.start();
  ASSERT_TRUE(wait_until(d, [&] { return count("device-2", "dep-c", "pause_before_rebooting") == 2; })) << d.log();
  EXPECT_EQ(sha256_hex(dev->read_partition(3, image.size())), written) << "the written partition is kept";
  EXPECT_EQ(count("device-2", "dep-c", "downloading"), 1u) << "nothing downloaded again";
  EXPECT_EQ(d.reboots(), 0);

  // The operator's go-ahead (retained: a device offline now gets it when it comes back).
  publish("tern/devices/device-2/reboot", R"({"deployment_id":"dep-c"})");
  ASSERT_TRUE(wait_until(d, [&] { return count("device-2", "dep-c", "success") == 1; })) << d.log();
  EXPECT_EQ(d.reboots(), 1);
  EXPECT_EQ(dev->installed(), "release-2");
  EXPECT_EQ(dev->env()["mender_boot_part"], "3");
  auto s = statuses("device-2", "dep-c");
  auto pause = std::find(s.begin(), s.end(), "pause_before_rebooting");
  auto reboot = std::find(s.begin(), s.end(), "rebooting");
  EXPECT_LT(pause - s.begin(), reboot - s.begin()) << "paused, then rebooting";
}

TEST_F(CellularTest, AClosedWindowKeepsTheDeviceWaitingUntilWithdrawnAndAnOpenOneRebootsAtOnce) {
  auto dev = device("device-3");
  SimDaemon d(*dev);
  // Opens in two hours: the device writes and waits.
  publish("tern/devices/device-3/deployment",
          deployment("dep-w1", nginx.url("release-2.mender"), ",\"reboot\":\"" + window_from_now(120, 60) + "\""));
  ASSERT_TRUE(wait_until(d, [&] { return count("device-3", "dep-w1", "pause_before_rebooting") == 1; })) << d.log();
  EXPECT_EQ(dev->env()["mender_boot_part"], "2");
  // Withdrawn while waiting: aborted, nothing switched.
  publish("tern/devices/device-3/deployment", "");
  ASSERT_TRUE(wait_until(d, [&] { return count("device-3", "dep-w1", "aborted") == 1; })) << d.log();
  EXPECT_EQ(d.reboots(), 0);
  EXPECT_EQ(dev->env()["mender_boot_part"], "2");
  EXPECT_EQ(dev->installed(), "factory-image");

  // A window open now (crossing midnight or not, it contains this minute): straight on.
  publish("tern/devices/device-3/deployment",
          deployment("dep-w2", nginx.url("release-2.mender"), ",\"reboot\":\"" + window_from_now(-30, 90) + "\""));
  ASSERT_TRUE(wait_until(d, [&] { return count("device-3", "dep-w2", "success") == 1; })) << d.log();
  EXPECT_EQ(d.reboots(), 1);
  EXPECT_EQ(dev->installed(), "release-2");
}

}  // namespace
}  // namespace tern::test
