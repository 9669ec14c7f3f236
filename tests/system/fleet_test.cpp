// Whole-fleet system tests: the real broker (TLS, ACLs), tern-bridge as a process with its HTTPS
// artifact server, and simulated devices running tern-agent daemons, with fault-injecting proxies
// between the devices and both the broker and the artifact server. Operators act through
// scripts/tern-fleet and scripts/tern-deploy, as the README shows.
#include "tests/agent/sim_agent.hpp"
#include "tests/support/broker.hpp"
#include "tests/support/fault_proxy.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <thread>

namespace tern::test {
namespace {
using namespace std::chrono_literals;

// 20 devices need 20 device certificates in the shared test PKI.
const bool enough_certs = [] { return setenv("TERN_TEST_DEVICE_CERTS", "21", 1) == 0; }();

class Fleet : public ::testing::Test {
 protected:
  TempDir tmp;
  Broker broker;
  std::unique_ptr<FaultProxy> broker_link, server_link;
  std::unique_ptr<Process> bridge;
  int server_port = free_port();
  std::vector<std::unique_ptr<SimAgent>> devices;
  std::vector<std::unique_ptr<SimDaemon>> daemons;
  std::string image = make_image(3u << 20, 77);
  std::string ops_env;

  void SetUp() override {
    ASSERT_TRUE(enough_certs);
    fs::create_directories(tmp / "artifacts");
    broker_link = std::make_unique<FaultProxy>(static_cast<std::uint16_t>(broker.port()));
    ops_env = "TERN_BROKER_HOST=127.0.0.1 TERN_BROKER_PORT=" + std::to_string(broker.services_port()) +
              " TERN_CERTS=" + q(certs()) + " ";
  }
  void TearDown() override {
    daemons.clear();
    if (bridge) bridge->stop();
    if (HasFailure() && fs::exists(tmp / "bridge.log")) std::cerr << "--- bridge.log (tail)\n" << tail(tmp / "bridge.log");
  }
  static std::string tail(const fs::path& p) {
    auto s = read_file(p);
    return s.size() > 6000 ? s.substr(s.size() - 6000) : s;
  }

  void start_bridge(const std::string& verify_key = "") {
    auto c = certs();
    boost::json::object cfg{{"broker_uri", broker.services_uri()},
                            {"ca_file", (c / "ca.crt").string()},
                            {"cert_file", (c / "bridge.crt").string()},
                            {"key_file", (c / "bridge.key").string()},
                            {"db", (tmp / "bridge.db").string()},
                            {"artifact_dir", (tmp / "artifacts").string()},
                            {"server_bind", "127.0.0.1"},
                            {"server_port", server_port},
                            {"server_cert", (c / "server.crt").string()},
                            {"server_key", (c / "server.key").string()},
                            {"require_client_cert", true}};
    if (!verify_key.empty()) cfg["verify_key"] = verify_key;
    if (server_link) cfg["public_url"] = "https://127.0.0.1:" + std::to_string(server_link->port());
    write_file(tmp / "bridge.conf", boost::json::serialize(cfg));
    bridge = std::make_unique<Process>(
        std::vector<std::string>{(build_dir() / "broker-bridge/tern-bridge").string(), "--config",
                                 (tmp / "bridge.conf").string()},
        tmp / "bridge.log");
    ASSERT_TRUE(wait_for_port(server_port)) << tail(tmp / "bridge.log");
    // The artifact server listens before the bridge has subscribed to the operator topics: a
    // command published in between reaches no one.
    ASSERT_TRUE(wait_until([&] { return read_file(tmp / "bridge.log").find(" ready: ") != std::string::npos; }, 30s))
        << tail(tmp / "bridge.log");
  }

  void add_devices(int n, const std::string& verify_key = "") {
    for (int i = 1; i <= n; ++i) {
      auto id = "device-" + std::to_string(i);
      auto c = certs();
      boost::json::object cfg{{"BrokerURI", "ssl://127.0.0.1:" + std::to_string(broker_link->port())},
                              {"ServerCertificate", (c / "ca.crt").string()},
                              {"ClientCertificate", (c / (id + ".crt")).string()},
                              {"ClientKey", (c / (id + ".key")).string()},
                              {"ProgressIntervalSeconds", 2},
                              {"RetryMinMilliseconds", 200},
                              {"RetryMaxSeconds", 2},
                              {"KeepaliveSeconds", 5},
                              {"DownloadReadTimeoutSeconds", 5},
                              {"HealthCheckCommand", "true"}};
      if (!verify_key.empty()) cfg["ArtifactVerifyKey"] = verify_key;
      devices.push_back(std::make_unique<SimAgent>(tmp / id, cfg));
    }
  }
  void start_daemons() {
    for (auto& d : devices) daemons.push_back(std::make_unique<SimDaemon>(*d));
  }
  void pump() {
    for (auto& d : daemons)
      if (d) d->pump();
  }

  CommandResult fleet(const std::string& args) { return run(ops_env + q(source_dir() / "scripts/tern-fleet") + " " + args); }
  CommandResult deploy(const std::string& args) { return run(ops_env + q(source_dir() / "scripts/tern-deploy") + " " + args); }
  std::string summary(const std::string& id) { return fleet("summary " + id).output; }

  fs::path add_artifact(const std::string& name, const std::string& extra) {
    auto a = make_artifact(tmp.path(), name, image, "qemu", extra);
    fs::copy_file(a, tmp / "artifacts" / (name + ".mender"));
    return a;
  }

  template <class Pred>
  bool wait_until(Pred pred, std::chrono::seconds timeout) {
    auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      pump();
      if (pred()) return true;
      std::this_thread::sleep_for(200ms);
    }
    return false;
  }
  static int count(const std::string& s, const std::string& what) {
    int n = 0;
    for (auto at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
    return n;
  }
  static bool finished(const std::string& s) { return s.find("\"state\":\"finished\"") != std::string::npos; }
};

TEST_F(Fleet, TwentyDevicesOnFlakyLinksThroughABridgeCrashAndABrokerRestartAllSucceed) {
  const int n = 20;
  auto key = (certs() / "artifact-key.pem").string();
  auto art = add_artifact("release-2", "--compression none -k " + q(key));
  const double size = double(fs::file_size(art));
  server_link = std::make_unique<FaultProxy>(static_cast<std::uint16_t>(server_port));
  server_link->set_cut(512u << 10, 2u << 20);  // cut every 0.5-2 MiB
  server_link->set_rate(2u << 20);            // per connection: the rollout lasts a while
  broker_link->set_cut(16u << 10, 128u << 10);
  start_bridge((certs() / "artifact-key.pub").string());
  add_devices(n, (certs() / "artifact-key.pub").string());
  start_daemons();
  for (int i = 1; i <= n; ++i) ASSERT_EQ(fleet("accept device-" + std::to_string(i)).exit_code, 0);
  ASSERT_TRUE(wait_until([&] { return count(fleet("devices").output, "\"presence\":\"online\"") >= n; }, 120s))
      << fleet("devices").output;

  auto r = deploy("release-2 --all --id fleet-1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // Mid-rollout: the bridge crashes and comes back; later the broker restarts while 20 devices and
  // the new bridge are connected, downloading and reporting.
  ASSERT_TRUE(wait_until([&] { return server_link->bytes_downstream() > (4u << 20); }, 120s));
  bridge->kill();
  start_bridge((certs() / "artifact-key.pub").string());
  ASSERT_TRUE(wait_until([&] { return server_link->bytes_downstream() > (8u << 20); }, 120s));
  broker.stop();
  std::this_thread::sleep_for(1s);
  broker.start();

  std::string s;
  ASSERT_TRUE(wait_until([&] { return finished(s = summary("fleet-1")); }, 240s)) << s;
  EXPECT_NE(s.find("\"success\":20"), std::string::npos) << s;
  EXPECT_TRUE(bridge->running()) << "the bridge died";
  for (auto& d : devices) EXPECT_EQ(d->installed(), "release-2") << d->dir();
  EXPECT_GE(server_link->cuts(), 10u);
  EXPECT_LE(double(server_link->bytes_downstream()), 1.05 * n * size)
      << "served " << server_link->bytes_downstream() << " for " << n << " x " << size;
}

TEST_F(Fleet, PowerCutDevicesUnacceptedDevicesAndForgedStatuses) {
  auto art = add_artifact("release-2", "");
  start_bridge();
  add_devices(4);
  start_daemons();
  for (int i : {1, 2, 3}) ASSERT_EQ(fleet("accept device-" + std::to_string(i)).exit_code, 0);
  // device-4 only ever connects: pending, it must get nothing.
  ASSERT_TRUE(wait_until([&] { return fleet("devices").output.find("device-4") != std::string::npos; }, 60s));
  auto r = deploy("release-2 --all --id fleet-2");
  ASSERT_EQ(r.exit_code, 0) << r.output;

  // device-2 loses power in the middle of its install and stays off for a while.
  ASSERT_TRUE(wait_until([&] { return read_file(devices[1]->dir() / "daemon.log").find("installing") != std::string::npos; },
                         60s));
  daemons[1]->kill();
  daemons[1].reset();
  // Meanwhile device-1 forges a success for device-2: the ACL refuses it.
  auto forged = run("mosquitto_pub " + broker.client_args("device-1") + " -q 1 -t tern/devices/device-2/status -m " +
                    shell_quote(R"({"deployment_id":"fleet-2","status":"success","seq":999999,"time":1})"));
  ASSERT_TRUE(wait_until([&] {
    auto s = summary("fleet-2");
    return s.find("\"success\":2") != std::string::npos;
  }, 120s)) << summary("fleet-2");
  auto s = summary("fleet-2");
  EXPECT_FALSE(finished(s)) << "device-2 has not reported yet: " << s;

  // Power comes back: the bootloader runs, the agent resumes and finishes.
  devices[1]->boot();
  daemons[1] = std::make_unique<SimDaemon>(*devices[1]);
  ASSERT_TRUE(wait_until([&] { return finished(s = summary("fleet-2")); }, 120s)) << s;
  EXPECT_NE(s.find("\"success\":3"), std::string::npos) << s;
  EXPECT_EQ(devices[1]->installed(), "release-2");
  EXPECT_EQ(devices[3]->installed(), "factory-image") << "the unaccepted device got nothing";
  auto sub = run("mosquitto_sub " + broker.client_args("operator") + " -C 1 -W 2 -t tern/devices/device-4/deployment");
  EXPECT_EQ(sub.output.find("fleet-2"), std::string::npos) << sub.output;
}

TEST_F(Fleet, ABadArtifactFailsEverywhereAndTheSummarySaysWhy) {
  // The bridge has no fleet key; the devices do: an unsigned artifact is refused by each device.
  add_artifact("release-unsigned", "");
  start_bridge();
  add_devices(3, (certs() / "artifact-key.pub").string());
  start_daemons();
  for (int i = 1; i <= 3; ++i) ASSERT_EQ(fleet("accept device-" + std::to_string(i)).exit_code, 0);
  auto r = deploy("release-unsigned --all --id fleet-bad");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::string s;
  ASSERT_TRUE(wait_until([&] { return finished(s = summary("fleet-bad")); }, 120s)) << s;
  EXPECT_NE(s.find("\"failure\":3"), std::string::npos) << s;
  EXPECT_NE(s.find("sign"), std::string::npos) << "the reason is in the summary: " << s;
  for (auto& d : devices) {
    EXPECT_EQ(d->installed(), "factory-image");
    EXPECT_EQ(d->env()["mender_boot_part"], "2");
    EXPECT_EQ(d->env()["upgrade_available"], "0");
  }
}

// Mender's Download_Enter veto on a device running the daemon: the deployment fails, the device
// sends its deployment log (with the script's output) to the bridge, and the operator reads it.
TEST_F(Fleet, AVetoedDeploymentsLogReachesTheBridgeAndTernFleetPrintsIt) {
  add_artifact("release-2", "");
  start_bridge();
  add_devices(1);
  fs::create_directories(tmp / "rootfs-scripts");
  write_file(tmp / "rootfs-scripts/Download_Enter_00_battery", "#!/bin/sh\necho 'vetoed: on battery' >&2\nexit 1\n");
  fs::permissions(tmp / "rootfs-scripts/Download_Enter_00_battery", fs::perms::owner_all);
  devices[0]->set("RootfsScriptsPath", boost::json::string((tmp / "rootfs-scripts").string()));
  start_daemons();
  ASSERT_EQ(fleet("accept device-1").exit_code, 0);
  auto r = deploy("release-2 --all --id fleet-log");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::string s;
  ASSERT_TRUE(wait_until([&] { return finished(s = summary("fleet-log")) && s.find("\"log\":true") != std::string::npos; },
                         60s))
      << s;
  EXPECT_NE(s.find("\"failure\":1"), std::string::npos) << s;
  auto log = fleet("log device-1 fleet-log");
  EXPECT_EQ(log.exit_code, 0) << log.output;
  EXPECT_NE(log.output.find("vetoed: on battery"), std::string::npos) << log.output;
  EXPECT_NE(log.output.find("Download_Enter_00_battery failed with exit status 1"), std::string::npos) << log.output;
  EXPECT_NE(log.output.find("installing https://"), std::string::npos) << log.output;
  EXPECT_EQ(devices[0]->env()["upgrade_available"], "0");
}

}  // namespace
}  // namespace tern::test
