// Whole-fleet system tests: the real broker (TLS, ACLs), tern-bridge as a process with its HTTPS
// artifact server, and simulated devices running tern-agent daemons, with fault-injecting proxies
// between the devices and both the broker and the artifact server. Operators act through
// scripts/tern-fleet and scripts/tern-deploy, as the README shows.
#include "tests/agent/sim_agent.hpp"
#include "tests/support/broker.hpp"
#include "tests/support/ext4_image.hpp"
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
    for (int i = 1; i <= n; ++i) add_device("device-" + std::to_string(i), verify_key);
  }
  void add_device(const std::string& id, const std::string& verify_key = "", DeviceSimOptions sim = {}) {
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
    devices.push_back(std::make_unique<SimAgent>(tmp / id, cfg, sim));
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

// Adaptive updates through the whole chain: two devices run v1 (a real ext4), the bridge serves v2
// (v1's tree with files rewritten and added, made again with mkfs.ext4 -d so the layout moves;
// tern-artifact wrote its chunk index), the operator deploys it with tern-deploy, and each daemon
// builds most of v2 from its running partition, fetches the rest from the bridge's HTTPS server,
// reboots, commits and reports. A third device, whose running partition holds nothing of v1,
// comes online later and downloads (nearly) the whole artifact. What the server sent, what the
// devices reported, the bridge's summary and tern-fleet's saved line must all agree.
TEST_F(Fleet, AdaptiveInstallsFetchAFractionAndTheSummaryAndTernFleetShowWhatWasSaved) {
  // v1: 160 files of 16-400 KiB in 8 directories (about 33 MiB); v2: 8 rewritten, 3 added.
  for (int i = 0; i < 160; ++i) {
    auto p = tmp / "tree1" / ("d" + std::to_string(i % 8)) / ("f" + std::to_string(i));
    fs::create_directories(p.parent_path());
    write_file(p, file_text(16384 + (i * 7919) % (384 * 1024), static_cast<unsigned>(i)));
  }
  ASSERT_EQ(run("cp -a " + q(tmp / "tree1") + " " + q(tmp / "tree2")).exit_code, 0);
  for (int i : {3, 21, 44, 70, 95, 118, 133, 152})
    write_file(tmp / "tree2" / ("d" + std::to_string(i % 8)) / ("f" + std::to_string(i)),
               file_text(50000 + i * 1000, 5000u + static_cast<unsigned>(i)));
  write_file(tmp / "tree2/d2/new-a", file_text(300000, 6001));
  write_file(tmp / "tree2/d5/new-b", file_text(120000, 6002));
  write_file(tmp / "tree2/new-c", file_text(40000, 6003));
  make_ext4(tmp / "tree1", tmp / "v1.img", 64);
  make_ext4(tmp / "tree2", tmp / "v2.img", 64);
  const std::string v2 = read_file(tmp / "v2.img");
  const auto key = (certs() / "artifact-key.pem").string(), pub = (certs() / "artifact-key.pub").string();
  auto art = make_artifact(tmp.path(), "release-2", v2, "qemu", "-k " + q(key));
  fs::copy_file(art, tmp / "artifacts/release-2.mender");
  const std::uint64_t size = fs::file_size(art);

  // Every byte the artifact server sends goes through this proxy (the deployment's URL).
  server_link = std::make_unique<FaultProxy>(static_cast<std::uint16_t>(server_port));
  start_bridge(pub);
  const DeviceSimOptions running_v1{.rootfs_mib = 64, .initial_image = tmp / "v1.img"};
  add_device("device-1", pub, running_v1);
  add_device("device-2", pub, running_v1);
  add_device("device-3", pub, {.rootfs_mib = 64});  // its factory image: a marker, then zeroes
  daemons.push_back(std::make_unique<SimDaemon>(*devices[0]));
  daemons.push_back(std::make_unique<SimDaemon>(*devices[1]));
  for (int i : {1, 2, 3}) ASSERT_EQ(fleet("accept device-" + std::to_string(i)).exit_code, 0);
  ASSERT_TRUE(wait_until([&] { return count(fleet("devices").output, "\"presence\":\"online\"") >= 2; }, 60s))
      << fleet("devices").output;
  auto r = deploy("release-2 --all --id adaptive-1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::string s;
  ASSERT_TRUE(wait_until(
      [&] { return (s = summary("adaptive-1")).find("\"success\":2") != std::string::npos; }, 120s))
      << s << "\n"
      << daemons[0]->log() << daemons[1]->log();
  const std::uint64_t served_two = server_link->bytes_downstream(),
                      connections_two = server_link->connections();

  // device-3 was off; it comes online, gets the deployment kept for it, and installs it.
  daemons.push_back(std::make_unique<SimDaemon>(*devices[2]));
  ASSERT_TRUE(wait_until([&] { return finished(s = summary("adaptive-1")); }, 120s))
      << s << daemons[2]->log();
  const std::uint64_t served_third = server_link->bytes_downstream() - served_two;
  const std::uint64_t connections_third = server_link->connections() - connections_two;

  // Each device booted v2 from its other partition and committed it.
  for (auto& d : devices) {
    EXPECT_EQ(d->installed(), "release-2") << d->dir();
    EXPECT_EQ(d->env()["mender_boot_part"], "3") << d->dir();
    EXPECT_EQ(d->env()["upgrade_available"], "0") << d->dir();
    EXPECT_TRUE(d->read_partition(3, v2.size()) == v2) << d->dir() << ": partition 3 is not v2 byte for byte";
  }
  EXPECT_NE(daemons[0]->log().find("adaptive install: "), std::string::npos) << "device-1 logs its plan";

  // The final status each device sent (retained by the broker, reconciled from by the bridges).
  struct Figures {
    std::uint64_t fetched = 0, reused = 0;
  };
  std::vector<Figures> reported;
  for (int i : {1, 2, 3}) {
    auto id = "device-" + std::to_string(i);
    auto st = run("mosquitto_sub " + broker.client_args("operator") +
                  " -C 1 -W 5 --retained-only -t tern/devices/" + id + "/status");
    ASSERT_EQ(st.exit_code, 0) << st.output;
    auto o = boost::json::parse(st.output).as_object();
    EXPECT_EQ(o.at("status").as_string(), "success") << st.output;
    EXPECT_EQ(o.at("total").to_number<std::uint64_t>(), size) << st.output;
    reported.push_back({o.contains("bytes_fetched") ? o.at("bytes_fetched").to_number<std::uint64_t>() : 0,
                        o.contains("bytes_reused") ? o.at("bytes_reused").to_number<std::uint64_t>() : 0});
    RecordProperty(id + "_fetched_fraction", std::to_string(double(reported.back().fetched) / double(size)));
  }
  ASSERT_EQ(reported.size(), 3u);
  // device-1 and device-2 fetched a small part of the artifact and built the rest of v2 from v1.
  for (int i : {0, 1}) {
    EXPECT_GT(reported[i].fetched, 0u) << "device-" << i + 1;
    EXPECT_LT(double(reported[i].fetched), 0.4 * double(size)) << "device-" << i + 1 << " of " << size;
    EXPECT_GT(double(reported[i].reused), 0.5 * double(v2.size())) << "device-" << i + 1;
  }
  // The server's side agrees: it sent the bodies the devices counted, plus a TLS handshake and
  // HTTP headers per connection (about 3 KiB; each range request opens one).
  const std::uint64_t fetched_two = reported[0].fetched + reported[1].fetched, per_connection = 8u << 10;
  RecordProperty("served_fraction_per_adaptive_device",
                 std::to_string(double(served_two) / 2.0 / double(size)));
  EXPECT_LT(double(served_two), 2 * 0.4 * double(size)) << "served " << served_two << " for 2 x " << size;
  EXPECT_GE(served_two, fetched_two);
  EXPECT_LE(served_two, fetched_two + connections_two * per_connection)
      << "devices counted " << fetched_two << ", " << connections_two << " connections";
  // device-3 had nothing to build from: it fetched (nearly) the whole artifact, and counted the
  // prefix its adaptive attempt fetched before falling back too.
  RecordProperty("served_fraction_device_3", std::to_string(double(served_third) / double(size)));
  EXPECT_GE(double(reported[2].fetched), 0.9 * double(size)) << daemons[2]->log();
  EXPECT_GE(served_third, reported[2].fetched);
  EXPECT_LE(served_third, reported[2].fetched + connections_third * per_connection)
      << connections_third << " connections\n"
      << daemons[2]->log();

  // The bridge's summary: every device counted once, with the figures it reported.
  auto text = summary("adaptive-1");
  const auto json_end = text.find('\n');
  auto sum = boost::json::parse(text.substr(0, json_end)).as_object();
  EXPECT_EQ(sum.at("counts").at("success").as_int64(), 3) << text;
  ASSERT_TRUE(sum.contains("transfer")) << text;
  const auto& t = sum.at("transfer").as_object();
  std::uint64_t fetched_all = 0, reused_all = 0;
  for (auto& f : reported) {
    fetched_all += f.fetched;
    reused_all += f.reused;
  }
  EXPECT_EQ(t.at("devices").to_number<std::uint64_t>(), 3u) << text;
  EXPECT_EQ(t.at("bytes_fetched").to_number<std::uint64_t>(), fetched_all) << text;
  EXPECT_EQ(t.at("bytes_reused").to_number<std::uint64_t>(), reused_all) << text;
  const std::uint64_t saved = 3 * size > fetched_all ? 3 * size - fetched_all : 0;
  EXPECT_EQ(t.at("bytes_saved").to_number<std::uint64_t>(), saved) << text;
  EXPECT_GT(double(saved), 2 * 0.6 * double(size)) << text;
  // tern-fleet prints it as a line.
  auto mib = [](std::uint64_t n) {
    char b[32];
    std::snprintf(b, sizeof b, "%.1f MiB", double(n) / 1048576.0);
    return std::string(b);
  };
  const std::string line = "saved " + mib(saved) + ": 3 device(s) fetched " + mib(fetched_all) +
                           " and reused " + mib(reused_all) + " of their own data";
  EXPECT_NE(text.find(line), std::string::npos) << "expected \"" << line << "\" in:\n" << text;
}

}  // namespace
}  // namespace tern::test
