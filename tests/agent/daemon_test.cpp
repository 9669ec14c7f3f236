// tern-agent daemon on simulated devices with the real broker (TLS, client certificates, ACLs),
// nginx serving artifacts, and an operator publishing with mosquitto_pub as in the README.
#include "tests/agent/sim_agent.hpp"
#include "tests/support/broker.hpp"
#include "tests/support/fault_proxy.hpp"
#include "tests/support/nginx.hpp"

#include <gtest/gtest.h>


#include <chrono>
#include <sstream>
#include <thread>

#include <signal.h>
#include <stdlib.h>

namespace tern::test {
namespace {
using namespace std::chrono_literals;

class DaemonTest : public ::testing::Test {
 protected:
  TempDir tmp;
  Broker broker;
  Nginx nginx;
  std::string image = make_image(8u << 20, 21);
  fs::path artifact = make_artifact(tmp.path(), "release-2", image, "qemu", "--compression none");
  std::unique_ptr<Process> watcher;

  void SetUp() override {
    fs::copy_file(artifact, nginx.root() / "release-2.mender");
    // Every device topic, as `mosquitto_sub -v` shows it (with the bridge identity: operators share
    // one client id, so a second operator connection would take this one over).
    watcher = std::make_unique<Process>(
        std::vector<std::string>{"sh", "-c", "exec mosquitto_sub " + broker.client_args("bridge") +
                                                 " -v -t 'tern/devices/#'"},
        tmp / "watch.log");
  }

  std::unique_ptr<SimAgent> device(const std::string& id, boost::json::object extra = {}, DeviceSimOptions sim = {}) {
    auto c = certs();
    boost::json::object cfg{{"BrokerURI", broker.uri()},
                            {"ServerCertificate", (c / "ca.crt").string()},
                            {"ClientCertificate", (c / (id + ".crt")).string()},
                            {"ClientKey", (c / (id + ".key")).string()},
                            {"ProgressIntervalSeconds", 1},
                            {"RetryMinMilliseconds", 200},
                            {"RetryMaxSeconds", 2},
                            {"DownloadReadTimeoutSeconds", 5}};
    for (const auto& [k, v] : extra) cfg[k] = v;
    return std::make_unique<SimAgent>(tmp / id, cfg, sim);
  }

  std::string deployment(const std::string& id, const std::string& url) {
    return R"({"deployment_id":")" + id + R"(","artifact_name":"release-2","url":")" + url +
           R"(","size":)" + std::to_string(fs::file_size(artifact)) + R"(,"sha256":")" +
           sha256_hex(read_file(artifact)) + R"("})";
  }

  void publish(const std::string& device, const std::string& payload, bool retained = true) {
    auto r = run("mosquitto_pub " + broker.client_args("operator") + " -q 1 " + (retained ? "-r " : "") + "-t " +
                 shell_quote("tern/devices/" + device + "/deployment") + " -m " + shell_quote(payload));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }

  /// Status words seen for `deployment` on `device`, in arrival order.
  std::vector<std::string> statuses(const std::string& device, const std::string& dep) {
    return status_words(tmp / "watch.log", device, dep);
  }
  static bool alive(int pid) { return process_alive(pid); }
  static std::size_t count_lines(const std::string& text, const std::string& prefix) {
    std::size_t n = 0;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) n += line.starts_with(prefix);
    return n;
  }
  static bool has(const std::vector<std::string>& v, const std::string& s) {
    return std::find(v.begin(), v.end(), s) != v.end();
  }

  /// Waits (pumping reboots) until `pred` holds.
  template <class Pred>
  bool wait_until(SimDaemon& d, Pred pred, std::chrono::seconds timeout = 60s) {
    auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      d.pump();
      if (pred()) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }

  void TearDown() override {
    if (HasFailure()) std::cerr << "--- watch.log\n" << read_file(tmp / "watch.log") << "\n";
  }
};

TEST_F(DaemonTest, ADeploymentPublishedWhileOfflineInstallsRebootsCommitsAndReportsSuccess) {
  fs::create_directories(tmp / "inventory.d");
  write_file(tmp / "inventory.d/mender-inventory-network", "#!/bin/sh\necho mac=00:11:22:33:44:55\necho ipv4=10.0.0.2\necho ipv4=10.0.0.3\n");
  write_file(tmp / "inventory.d/mender-inventory-broken", "#!/bin/sh\necho half=way\nexit 1\n");
  fs::permissions(tmp / "inventory.d/mender-inventory-network", fs::perms::owner_all);
  fs::permissions(tmp / "inventory.d/mender-inventory-broken", fs::perms::owner_all);
  boost::json::object extra{{"InventoryScriptsDir", (tmp / "inventory.d").string()}};
  auto dev = device("device-1", extra);
  // Published before the device ever connected: retained, it is delivered when it comes up.
  publish("device-1", deployment("dep-1", nginx.url("release-2.mender")));
  SimDaemon d(*dev);
  ASSERT_TRUE(wait_until(d, [&] { return has(statuses("device-1", "dep-1"), "success"); })) << d.log();
  auto s = statuses("device-1", "dep-1");
  std::vector<std::string> order{"downloading", "installing", "rebooting", "success"};
  std::size_t at = 0;
  for (const auto& w : s)
    if (at < order.size() && w == order[at]) ++at;
  EXPECT_EQ(at, order.size()) << "steps in order";
  EXPECT_EQ(std::count(s.begin(), s.end(), "success"), 1);
  EXPECT_EQ(dev->installed(), "release-2");
  EXPECT_EQ(dev->env()["mender_boot_part"], "3");
  EXPECT_EQ(dev->env()["upgrade_available"], "0");
  EXPECT_EQ(d.reboots(), 1);
  // Inventory (retained) reflects the new artifact; presence says online.
  EXPECT_TRUE(wait_until(d, [&] {
    auto inv = run("mosquitto_sub " + broker.client_args("operator") +
                   " -C 1 -W 3 -t tern/devices/device-1/inventory");
    return inv.output.find("\"artifact_name\":\"release-2\"") != std::string::npos;
  }));
  auto inv = run("mosquitto_sub " + broker.client_args("operator") + " -C 1 -W 3 -t tern/devices/device-1/inventory");
  EXPECT_NE(inv.output.find("\"ipv4\":\"10.0.0.2,10.0.0.3\""), std::string::npos) << inv.output;
  EXPECT_NE(inv.output.find("\"mac\":\"00:11:22:33:44:55\""), std::string::npos) << inv.output;
  EXPECT_EQ(inv.output.find("half"), std::string::npos) << "a failing script is skipped: " << inv.output;
  EXPECT_NE(inv.output.find("\"device_type\":\"qemu\""), std::string::npos) << inv.output;
  auto presence = run("mosquitto_sub " + broker.client_args("operator") + " -C 1 -W 3 -t tern/devices/device-1/presence");
  EXPECT_NE(presence.output.find("\"state\":\"online\""), std::string::npos) << presence.output;

  // The same deployment again (retained replay after a restart) is not run twice.
  auto before = statuses("device-1", "dep-1").size();
  d.kill();
  d.start();
  std::this_thread::sleep_for(2s);
  d.pump();
  EXPECT_EQ(statuses("device-1", "dep-1").size(), before) << "no second run of dep-1";
  EXPECT_EQ(d.reboots(), 1) << "no second install";
  // A deployment of the running artifact reports already-installed.
  publish("device-1", deployment("dep-2", nginx.url("release-2.mender")));
  EXPECT_TRUE(wait_until(d, [&] { return has(statuses("device-1", "dep-2"), "already-installed"); })) << d.log();
}

TEST_F(DaemonTest, BrokerRestartDuringTheDownloadLosesNoStatus) {
  FaultProxy slow(static_cast<std::uint16_t>(nginx.port()));
  slow.set_rate(1u << 20);  // about 8 s for the artifact
  auto dev = device("device-2");
  SimDaemon d(*dev);
  auto url = "https://127.0.0.1:" + std::to_string(slow.port()) + "/artifacts/release-2.mender";
  publish("device-2", deployment("dep-b", url));
  ASSERT_TRUE(wait_until(d, [&] { return has(statuses("device-2", "dep-b"), "downloading"); }));
  broker.stop();
  std::this_thread::sleep_for(3s);
  broker.start();
  ASSERT_TRUE(wait_until(d, [&] { return has(statuses("device-2", "dep-b"), "success"); }, 90s)) << d.log();
  auto s = statuses("device-2", "dep-b");
  for (auto w : {"downloading", "installing", "rebooting", "success"}) EXPECT_TRUE(has(s, w)) << w;
  EXPECT_EQ(dev->installed(), "release-2");
}

TEST_F(DaemonTest, AgentKilledDuringTheDownloadResumesOnRestart) {
  FaultProxy slow(static_cast<std::uint16_t>(nginx.port()));
  slow.set_rate(2u << 20);
  auto dev = device("device-3");
  SimDaemon d(*dev);
  auto url = "https://127.0.0.1:" + std::to_string(slow.port()) + "/artifacts/release-2.mender";
  publish("device-3", deployment("dep-k", url));
  ASSERT_TRUE(wait_until(d, [&] { return has(statuses("device-3", "dep-k"), "downloading"); }));
  std::this_thread::sleep_for(1s);
  d.kill();  // power cut in the middle of the download
  d.start();
  ASSERT_TRUE(wait_until(d, [&] {
    auto s = statuses("device-3", "dep-k");
    return has(s, "success") || has(s, "failure");
  }, 90s)) << d.log();
  EXPECT_TRUE(has(statuses("device-3", "dep-k"), "success")) << d.log();
  EXPECT_NE(read_file(tmp / "watch.log").find("\"attempt\":2"), std::string::npos) << "the second attempt is reported";
  EXPECT_EQ(dev->installed(), "release-2");
}

TEST_F(DaemonTest, StoppedWithSigtermMidDownloadItGoesOnFromTheCheckpointAfterTheRestart) {
  // 32 MiB in 1 MiB zstd frames: checkpoints every 8 MiB of payload.
  auto big_image = make_image(32u << 20, 23);
  auto big = make_artifact(tmp.path(), "release-big", big_image, "qemu", "--frame-size 1048576");
  fs::copy_file(big, nginx.root() / "release-big.mender");
  const auto size = fs::file_size(big);
  FaultProxy slow(static_cast<std::uint16_t>(nginx.port()));
  slow.set_rate(8u << 20);
  auto dev = device("device-1", {}, DeviceSimOptions{.rootfs_mib = 48});
  SimDaemon d(*dev);
  auto url = "https://127.0.0.1:" + std::to_string(slow.port()) + "/artifacts/release-big.mender";
  publish("device-1", R"({"deployment_id":"dep-t","artifact_name":"release-big","url":")" + url + R"(","size":)" +
                          std::to_string(size) + R"(,"sha256":")" + sha256_hex(read_file(big)) + R"("})");
  ASSERT_TRUE(wait_until(d, [&] { return fs::exists(dev->dir() / "state/resume.json"); }, 60s)) << d.log();
  d.stop();  // systemd stopping the agent for a reboot, in the middle of the download
  const auto served_before = slow.bytes_downstream();
  EXPECT_LT(served_before, size) << "stopped after the download ended";
  EXPECT_NE(read_file(dev->dir() / "state/install.json").find("\"phase\":\"downloading\""), std::string::npos)
      << "a stopped install is not a failed one";
  d.start();
  ASSERT_TRUE(wait_until(d, [&] {
    auto s = statuses("device-1", "dep-t");
    return has(s, "success") || has(s, "failure");
  }, 120s)) << d.log();
  auto s = statuses("device-1", "dep-t");
  EXPECT_TRUE(has(s, "success")) << d.log();
  EXPECT_FALSE(has(s, "failure"));
  EXPECT_NE(d.log().find("resuming the interrupted download"), std::string::npos) << d.log();
  EXPECT_LT(double(slow.bytes_downstream()), 1.3 * double(size))
      << "served " << slow.bytes_downstream() << " (" << served_before << " before the stop) for " << size;
  EXPECT_EQ(dev->installed(), "release-big");
}

TEST_F(DaemonTest, AnArtifactWhoseSha256DiffersFromTheDeploymentFails) {
  auto dev = device("device-2");
  SimDaemon d(*dev);
  const std::string wrong(64, '0');
  publish("device-2", R"({"deployment_id":"dep-s","artifact_name":"release-2","url":")" +
                          nginx.url("release-2.mender") + R"(","size":)" + std::to_string(fs::file_size(artifact)) +
                          R"(,"sha256":")" + wrong + R"("})");
  ASSERT_TRUE(wait_until(d, [&] { return has(statuses("device-2", "dep-s"), "failure"); })) << d.log();
  auto watch = read_file(tmp / "watch.log");
  EXPECT_NE(watch.find("has SHA-256 " + sha256_hex(read_file(artifact)) + ", the deployment says " + wrong),
            std::string::npos)
      << watch;
  EXPECT_EQ(dev->installed(), "factory-image");
  EXPECT_EQ(dev->env()["upgrade_available"], "0");
}

TEST_F(DaemonTest, AFailingHealthCheckReportsFailureAfterTheRollback) {
  boost::json::object extra{{"HealthCheckCommand", "echo app refused to start; exit 1"}};
  auto dev = device("device-4", extra);
  SimDaemon d(*dev);
  publish("device-4", deployment("dep-h", nginx.url("release-2.mender")));
  ASSERT_TRUE(wait_until(d, [&] { return has(statuses("device-4", "dep-h"), "failure"); })) << d.log();
  EXPECT_NE(read_file(tmp / "watch.log").find("app refused to start"), std::string::npos);
  EXPECT_EQ(dev->installed(), "factory-image");
  EXPECT_EQ(dev->env()["mender_boot_part"], "2");
  EXPECT_EQ(d.reboots(), 2) << "into the new partition, and back";
}

TEST_F(DaemonTest, MalformedOversizedAndCancelledDeploymentsAreHandled) {
  FaultProxy slow(static_cast<std::uint16_t>(nginx.port()));
  slow.set_rate(512u << 10);
  auto dev = device("device-5");
  SimDaemon d(*dev);
  // Not retained: they only reach a device that is connected and subscribed.
  ASSERT_TRUE(wait_until(d, [&] { return d.log().find("connected to") != std::string::npos; })) << d.log();
  std::this_thread::sleep_for(500ms);
  publish("device-5", "{not json", false);
  publish("device-5", R"({"deployment_id":"x"})", false);
  publish("device-5", std::string(100 * 1024, 'x'), false);
  ASSERT_TRUE(wait_until(d, [&] { return d.log().find("oversized") != std::string::npos; }, 20s)) << d.log();
  d.pump();
  ASSERT_TRUE(d.running()) << d.log();
  auto log = d.log();
  EXPECT_NE(log.find("malformed deployment"), std::string::npos) << log;
  EXPECT_NE(log.find("oversized"), std::string::npos) << log;

  auto url = "https://127.0.0.1:" + std::to_string(slow.port()) + "/artifacts/release-2.mender";
  publish("device-5", deployment("dep-c", url));
  ASSERT_TRUE(wait_until(d, [&] { return has(statuses("device-5", "dep-c"), "downloading"); }));
  publish("device-5", "");  // the operator withdraws it
  ASSERT_TRUE(wait_until(d, [&] { return has(statuses("device-5", "dep-c"), "aborted"); })) << d.log();
  EXPECT_EQ(dev->env()["upgrade_available"], "0");
  EXPECT_EQ(dev->installed(), "factory-image");
  EXPECT_TRUE(d.running());
}

TEST_F(DaemonTest, AHealthCheckThatNeverEndsRollsBackAfterItsTimeout) {
  boost::json::object extra{{"HealthCheckCommand", "echo checking; exec sleep 100000"}, {"HealthCheckTimeoutSeconds", 2}};
  auto dev = device("device-1", extra);
  SimDaemon d(*dev);
  publish("device-1", deployment("dep-hang", nginx.url("release-2.mender")));
  ASSERT_TRUE(wait_until(d, [&] { return has(statuses("device-1", "dep-hang"), "failure"); }, 90s)) << d.log();
  auto watch = read_file(tmp / "watch.log");
  EXPECT_NE(watch.find("timed out after 2 s"), std::string::npos) << watch;
  EXPECT_EQ(dev->installed(), "factory-image");
  EXPECT_EQ(dev->env()["mender_boot_part"], "2");
  EXPECT_EQ(dev->env()["upgrade_available"], "0");
  EXPECT_EQ(d.reboots(), 2) << "into the new partition, and back";
  EXPECT_EQ(run("pgrep -f 'sleep 10000[0]'").exit_code, 1) << "the hung check was killed";
}

TEST_F(DaemonTest, AnInventoryScriptThatHangsDoesNotDelayStatuses) {
  fs::create_directories(tmp / "inventory.d");
  const auto pids = tmp / "inventory-pids";
  write_file(tmp / "inventory.d/hangs", "#!/bin/sh\necho $$ >> " + pids.string() + "\necho slow=yes\nexec sleep 100001\n");
  fs::permissions(tmp / "inventory.d/hangs", fs::perms::owner_all);
  boost::json::object extra{{"InventoryScriptsDir", (tmp / "inventory.d").string()},
                            {"InventoryScriptTimeoutSeconds", 3600}};
  auto dev = device("device-2", extra);
  SimDaemon d(*dev);
  // The script hangs from the daemon's start; the deployment comes after it (and fails its
  // checksum, so the daemon stays up with the script still hanging).
  ASSERT_TRUE(wait_until(d, [&] { return fs::exists(pids) && !read_file(pids).empty(); }, 60s)) << d.log();
  const int hung = std::stoi(read_file(pids));
  publish("device-2", R"({"deployment_id":"dep-inv","artifact_name":"release-2","url":")" +
                          nginx.url("release-2.mender") + R"(","size":)" + std::to_string(fs::file_size(artifact)) +
                          R"(,"sha256":")" + std::string(64, '0') + R"("})");
  ASSERT_TRUE(wait_until(d, [&] { return has(statuses("device-2", "dep-inv"), "failure"); }, 90s)) << d.log();
  EXPECT_TRUE(has(statuses("device-2", "dep-inv"), "downloading"));
  EXPECT_TRUE(alive(hung)) << "the statuses went out while the script still hung";
  // Stopping the daemon kills the hung script (its process group) instead of waiting an hour.
  EXPECT_EQ(d.stop(), 0) << d.log();
  bool gone = false;
  for (int i = 0; i < 100 && !gone; ++i) {
    gone = !alive(hung);
    if (!gone) std::this_thread::sleep_for(50ms);
  }
  EXPECT_TRUE(gone) << "the script outlived the daemon";
}

// A resumed install reads the whole payload back from the partition before trusting it: on slow
// storage that takes long. The MQTT session must not notice: an inventory asked for during the
// read-back is sent during it, and the broker never loses the device.
TEST_F(DaemonTest, TheSessionStaysAliveWhileAResumedInstallReadsASlowPartitionBack) {
  auto big_image = make_image(16u << 20, 29);
  auto big = make_artifact(tmp.path(), "release-slow", big_image, "qemu", "--frame-size 1048576");
  fs::copy_file(big, nginx.root() / "release-slow.mender");
  FaultProxy slow(static_cast<std::uint16_t>(nginx.port()));
  slow.set_rate(4u << 20);
  boost::json::object extra{{"KeepaliveSeconds", 2}};
  auto dev = device("device-3", extra, DeviceSimOptions{.rootfs_mib = 32});
  auto url = "https://127.0.0.1:" + std::to_string(slow.port()) + "/artifacts/release-slow.mender";
  SimDaemon d(*dev);
  publish("device-3", R"({"deployment_id":"dep-slow","artifact_name":"release-slow","url":")" + url +
                          R"(","size":)" + std::to_string(fs::file_size(big)) + R"(,"sha256":")" +
                          sha256_hex(read_file(big)) + R"("})");
  ASSERT_TRUE(wait_until(d, [&] { return fs::exists(dev->dir() / "state/resume.json"); }, 60s)) << d.log();
  d.kill();  // a power cut after the first checkpoint
  // The partition now reads back at about 1 MiB per 600 ms: ~10 s for the payload.
  ::setenv("TERN_TEST_SLOW_READ_MS_PER_MIB", "600", 1);
  d.start();
  ::unsetenv("TERN_TEST_SLOW_READ_MS_PER_MIB");
  ASSERT_TRUE(wait_until(d, [&] { return d.log().find("verifying the resumed install") != std::string::npos; }, 60s))
      << d.log();
  const auto inventories_before = count_lines(read_file(tmp / "watch.log"), "tern/devices/device-3/inventory ");
  auto pid = std::stoi(read_file(dev->dir() / "state/daemon.pid"));
  ASSERT_EQ(::kill(pid, SIGUSR2), 0);
  ASSERT_TRUE(wait_until(d, [&] { return has(statuses("device-3", "dep-slow"), "success"); }, 120s)) << d.log();
  // In the watcher's order: the inventory asked for mid-read-back came before the install went on.
  auto watch = read_file(tmp / "watch.log");
  std::size_t at = 0;
  for (std::size_t i = 0; i < inventories_before + 1; ++i) {
    at = watch.find("tern/devices/device-3/inventory ", at);
    ASSERT_NE(at, std::string::npos) << "no inventory after SIGUSR2:\n" << watch;
    ++at;
  }
  const auto installing = watch.find(R"("status":"installing")");
  ASSERT_NE(installing, std::string::npos);
  EXPECT_LT(at, installing) << "the inventory waited for the read-back:\n" << watch;
  EXPECT_EQ(d.log().find("connection lost"), std::string::npos) << d.log();
  EXPECT_EQ(dev->installed(), "release-slow");
}

TEST_F(DaemonTest, ATaskThatThrowsEndsTheDaemonWithItsError) {
  auto dev = device("device-4");
  ::setenv("TERN_TEST_THROW_IN_INVENTORY", "the inventory task broke", 1);
  SimDaemon d(*dev);
  ::unsetenv("TERN_TEST_THROW_IN_INVENTORY");
  ASSERT_TRUE(wait_until(d, [&] { return !d.running(); }, 60s)) << d.log();
  auto log = d.log();
  EXPECT_NE(log.find("inventory failed: test hook: the inventory task broke"), std::string::npos) << log;
  EXPECT_NE(log.find("the daemon ended: exit status 1"), std::string::npos) << "a non-zero status for systemd:\n" << log;
}

// A Download_Enter script that keeps asking to retry later (exit 21, an hour between tries) holds
// the deployment, not the daemon: its scripts run off the io thread, and the operator's withdrawal
// stops the wait and reports the deployment aborted (no second run of the script, nothing written).
TEST_F(DaemonTest, AStateScriptWaitingToRetryLaterIsStoppedByAWithdrawal) {
  fs::create_directories(tmp / "scripts");
  write_file(tmp / "scripts/Download_Enter_00_wait", "#!/bin/sh\necho ran >> " + shell_quote((tmp / "ran").string()) +
                                                       "\nexit 21\n");
  fs::permissions(tmp / "scripts/Download_Enter_00_wait", fs::perms::owner_all);
  auto dev = device("device-1", {{"RootfsScriptsPath", (tmp / "scripts").string()},
                                 {"StateScriptRetryIntervalSeconds", 3600},
                                 {"StateScriptRetryTimeoutSeconds", 7200}});
  const auto standby = dev->partition_sha(3);
  SimDaemon d(*dev);
  publish("device-1", deployment("dep-w", nginx.url("release-2.mender")));
  ASSERT_TRUE(wait_until(d, [&] { return fs::exists(tmp / "ran"); })) << d.log();
  publish("device-1", "");
  ASSERT_TRUE(wait_until(d, [&] { return has(statuses("device-1", "dep-w"), "aborted"); })) << d.log();
  EXPECT_EQ(read_file(tmp / "ran"), "ran\n");
  EXPECT_EQ(dev->partition_sha(3), standby);
  EXPECT_TRUE(d.running()) << d.log();
}

}  // namespace
}  // namespace tern::test
