// Adaptive installs by tern-agent on simulated devices: real ext4 images (mkfs.ext4 -d; v2 is v1's
// tree with files rewritten and added, so the layout moves), v1 on the running partition, v2's
// artifact served by nginx or the bridge's artifact server, bytes counted on the server side (a
// counting proxy in front, or the artifact server's own counter).
#include <gtest/gtest.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <regex>
#include <thread>

#include "broker-bridge/artifact_server.hpp"
#include "tests/agent/sim_agent.hpp"
#include "tests/support/ext4_image.hpp"
#include "tests/support/fault_proxy.hpp"
#include "tests/support/nginx.hpp"

namespace tern::test {
namespace {

// Artifact bytes the plan line says it fetches ("fetching 1.2 MiB of ..."), and chunks reused.
struct PlanLine {
  std::uint64_t reused = 0, frames = 0;
  bool found = false;
};
PlanLine plan_line(const std::string& output) {
  std::smatch m;
  static const std::regex re("adaptive install: ([0-9]+) of ([0-9]+) chunks");
  if (!std::regex_search(output, m, re)) return {};
  return {std::stoull(m[1]), std::stoull(m[2]), true};
}

class AdaptiveInstall : public ::testing::Test {
 protected:
  TempDir tmp;
  fs::path v1 = tmp / "v1.img", v2 = tmp / "v2.img";
  std::string v1_bytes, v2_bytes;
  fs::path artifact, artifact_no_index;
  std::uint64_t artifact_size = 0;

  void SetUp() override {
    // v1: 60 files of 10-200 KiB in 4 directories; v2: 3 rewritten (other content and size), 2 added.
    for (int i = 0; i < 60; ++i) {
      auto p = tmp / "tree1" / ("d" + std::to_string(i % 4)) / ("f" + std::to_string(i));
      fs::create_directories(p.parent_path());
      write_file(p, file_text(10000 + (i * 7919) % (190 * 1024), static_cast<unsigned>(i)));
    }
    ASSERT_EQ(run("cp -a " + q(tmp / "tree1") + " " + q(tmp / "tree2")).exit_code, 0);
    for (int i : {5, 22, 41})
      write_file(tmp / "tree2" / ("d" + std::to_string(i % 4)) / ("f" + std::to_string(i)),
                 file_text(60000 + i * 333, 900u + static_cast<unsigned>(i)));
    write_file(tmp / "tree2/d1/new-a", file_text(180000, 3001));
    write_file(tmp / "tree2/new-b", file_text(40000, 3002));
    make_ext4(tmp / "tree1", v1, 12);
    make_ext4(tmp / "tree2", v2, 12);
    v1_bytes = read_file(v1);
    v2_bytes = read_file(v2);
    artifact = make_artifact(tmp.path(), "v2", v2_bytes);
    fs::create_directories(tmp / "plain");
    artifact_no_index = make_artifact(tmp / "plain", "v2", v2_bytes, "qemu", "--no-chunk-index");
    artifact_size = fs::file_size(artifact);
  }

  /// A device running v1 from partition 2.
  SimAgent device(const std::string& name, boost::json::object extra = {}) {
    extra["ServerCertificate"] = (certs() / "ca.crt").string();
    extra["RetryMinMilliseconds"] = 20;
    return SimAgent(tmp / name, extra, DeviceSimOptions{.rootfs_mib = 16, .initial_image = v1});
  }
  bool standby_is_v2(SimAgent& d) { return d.read_partition(3, v2_bytes.size()) == v2_bytes; }
  static std::string proxied(const FaultProxy& p, const std::string& name) {
    return "https://127.0.0.1:" + std::to_string(p.port()) + "/artifacts/" + name;
  }
};

TEST_F(AdaptiveInstall, FromNginxFetchesAFractionAndTheStandbyIsV2ByteForByte) {
  Nginx nginx;
  fs::copy_file(artifact, nginx.root() / "v2.mender");
  FaultProxy proxy(static_cast<std::uint16_t>(nginx.port()));
  auto dev = device("device-1");
  auto r = dev.agent("install " + proxied(proxy, "v2.mender"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto plan = plan_line(r.output);
  ASSERT_TRUE(plan.found) << "tern-agent install prints the plan before it starts:\n" << r.output;
  EXPECT_GT(plan.reused * 2, plan.frames) << r.output;
  EXPECT_TRUE(standby_is_v2(dev));
  const double fraction = double(proxy.bytes_downstream()) / double(artifact_size);
  RecordProperty("served_fraction", std::to_string(fraction));
  EXPECT_LT(fraction, 0.4) << "served " << proxy.bytes_downstream() << " bytes for an artifact of "
                           << artifact_size;
  // The new partition boots and commits like after a full install.
  EXPECT_EQ(dev.boot(), 3);
  ASSERT_EQ(dev.agent("commit").exit_code, 0);
  EXPECT_EQ(dev.installed(), "v2");
}

TEST_F(AdaptiveInstall, FromTheBridgesArtifactServerCountedByTheServer) {
  fs::create_directories(tmp / "served");
  fs::copy_file(artifact, tmp / "served/v2.mender");
  boost::asio::io_context io;
  bridge::ArtifactServerOptions o{.root = tmp / "served"};
  o.cert_file = (certs() / "server.crt").string();
  o.key_file = (certs() / "server.key").string();
  bridge::ArtifactServer server(io.get_executor(), o);
  auto port = server.start();
  ASSERT_TRUE(port) << port.error().message();
  auto work = boost::asio::make_work_guard(io);
  std::thread t([&] { io.run(); });
  auto dev = device("device-1");
  auto r = dev.agent("install https://127.0.0.1:" + std::to_string(*port) + "/artifacts/v2.mender");
  const auto served = server.bytes_served("v2.mender");
  server.stop();
  work.reset();
  io.stop();
  t.join();
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(plan_line(r.output).found) << r.output;
  EXPECT_TRUE(standby_is_v2(dev));
  EXPECT_GT(served, 0u);
  EXPECT_LT(double(served), 0.4 * double(artifact_size)) << "served " << served << " of " << artifact_size;
}

TEST_F(AdaptiveInstall, AFlippedBitOnTheRunningPartitionIsFetchedNotTrusted) {
  Nginx nginx;
  fs::copy_file(artifact, nginx.root() / "v2.mender");
  auto clean = device("clean");
  auto a = clean.agent("install " + nginx.url("v2.mender"));
  ASSERT_EQ(a.exit_code, 0) << a.output;
  const auto clean_plan = plan_line(a.output);

  // One bit of an unchanged file's data, on the running partition of a second device.
  auto dev = device("flipped");
  const std::string file = read_file(tmp / "tree1/d0/f8");
  const auto at = v1_bytes.find(file.substr(0, 4096));
  ASSERT_NE(at, std::string::npos);
  std::string byte(1, static_cast<char>(v1_bytes[at + 2000] ^ 0x10));
  dev.write_partition(2, at + 2000, byte);
  auto b = dev.agent("install " + nginx.url("v2.mender"));
  ASSERT_EQ(b.exit_code, 0) << b.output;
  const auto flipped_plan = plan_line(b.output);
  ASSERT_TRUE(clean_plan.found && flipped_plan.found) << a.output << b.output;
  EXPECT_LT(flipped_plan.reused, clean_plan.reused) << "the chunk holding the flipped bit is fetched";
  EXPECT_TRUE(standby_is_v2(dev));
}

TEST_F(AdaptiveInstall, AServerWithoutRangeAndAnArtifactWithoutIndexFallBackToTheFullStream) {
  NginxOptions no;
  no.extra_server_conf = "    max_ranges 0;\n";  // nginx then answers every Range request with 200
  Nginx nginx(no);
  fs::copy_file(artifact, nginx.root() / "v2.mender");
  auto dev = device("device-1");
  auto r = dev.agent("install " + nginx.url("v2.mender"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("ignores Range"), std::string::npos) << r.output;
  EXPECT_FALSE(plan_line(r.output).found);
  EXPECT_TRUE(standby_is_v2(dev));
  ASSERT_EQ(dev.agent("rollback").exit_code, 0);

  Nginx plain;
  fs::copy_file(artifact_no_index, plain.root() / "v2.mender");
  FaultProxy proxy(static_cast<std::uint16_t>(plain.port()));
  auto s = dev.agent("install " + proxied(proxy, "v2.mender"));
  ASSERT_EQ(s.exit_code, 0) << s.output;
  EXPECT_NE(s.output.find("no chunk index"), std::string::npos) << s.output;
  EXPECT_TRUE(standby_is_v2(dev));
  EXPECT_GE(proxy.bytes_downstream(), fs::file_size(artifact_no_index));
}

// Block hashes are XXH3, not cryptographic: what makes a built image trusted is the payload's
// SHA-256 in the manifest. An artifact whose manifest disagrees with its payload (what a block forged
// to match its XXH3 hash would look like to the agent) is built adaptively, refused, then streamed and
// refused again; the device keeps booting v1.
TEST_F(AdaptiveInstall, ABuiltPayloadThatFailsTheManifestIsStreamedInsteadAndNeverBooted) {
  std::string bytes = read_file(artifact);
  const auto line = bytes.find("  data/0000/");
  ASSERT_NE(line, std::string::npos);
  ASSERT_GE(line, 64u);
  char& digit = bytes[line - 1];
  digit = digit == '0' ? '1' : '0';  // the payload's SHA-256 in the manifest, one hex digit changed
  Nginx nginx;
  write_file(nginx.root() / "v2.mender", bytes);
  auto dev = device("device-1");
  auto r = dev.agent("install " + nginx.url("v2.mender"));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_TRUE(plan_line(r.output).found) << r.output;
  EXPECT_NE(r.output.find("not installing adaptively (the payload built adaptively has SHA-256"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(dev.boot(), 2);  // not switched: v1 still runs
}

// Body bytes the agent says it fetched ("Fetched 196.0 KiB of ..."), in bytes.
double fetched_bytes(const std::string& output) {
  std::smatch m;
  static const std::regex re("Fetched ([0-9.]+) (KiB|MiB) of");
  if (!std::regex_search(output, m, re)) return -1;
  return std::stod(m[1]) * (m[2] == "MiB" ? 1048576.0 : 1024.0);
}

// Half of the running partition is zeroed on both devices so that the fetch is about 0.6 MiB, and
// the link is cut every 64-192 KiB of it.
TEST_F(AdaptiveInstall, ALinkCutEveryFewHundredKiBStillEndsWithV2AndFetchesNothingTwice) {
  Nginx nginx;
  fs::copy_file(artifact, nginx.root() / "v2.mender");
  const std::string zeros(6u << 20, '\0');
  FaultProxy proxy(static_cast<std::uint16_t>(nginx.port()));
  auto dev = device("clean");
  dev.write_partition(2, 4u << 20, zeros);
  auto c = dev.agent("install " + proxied(proxy, "v2.mender"));
  ASSERT_EQ(c.exit_code, 0) << c.output;
  const double clean = fetched_bytes(c.output);
  ASSERT_GT(clean, 300.0 * 1024) << c.output;

  FaultProxy cutting(static_cast<std::uint16_t>(nginx.port()));
  cutting.set_cut(64u << 10, 192u << 10);
  auto flaky = device("flaky");
  flaky.write_partition(2, 4u << 20, zeros);
  auto r = flaky.agent("install " + proxied(cutting, "v2.mender"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(standby_is_v2(flaky));
  EXPECT_GE(cutting.cuts(), 2u);
  // Each range goes on at the byte where the link was cut: the body bytes stay within the plan's.
  EXPECT_LE(fetched_bytes(r.output), 1.05 * clean) << "clean:\n" << c.output << "with cuts:\n" << r.output;
  // On the wire, each reconnect adds a TLS handshake and the bytes in flight when the link broke.
  EXPECT_LE(double(cutting.bytes_downstream()), 2.0 * double(proxy.bytes_downstream()))
      << "clean " << proxy.bytes_downstream() << ", with " << cutting.cuts() << " cuts "
      << cutting.bytes_downstream();
}

TEST_F(AdaptiveInstall, KilledMidInstallResumesAndKeepsTheFramesAlreadyWritten) {
  Nginx nginx;
  fs::copy_file(artifact, nginx.root() / "v2.mender");
  FaultProxy proxy(static_cast<std::uint16_t>(nginx.port()));
  auto ref = device("reference");
  ASSERT_EQ(ref.agent("install " + proxied(proxy, "v2.mender")).exit_code, 0);
  const auto clean = proxy.bytes_downstream();

  FaultProxy slow(static_cast<std::uint16_t>(nginx.port()));
  slow.set_rate(clean * 2);  // about half a second for the whole fetch
  auto dev = device("device-1");
  const auto url = proxied(slow, "v2.mender");
  {
    Process p({agent_bin(), "--config", dev.config_path().string(), "install", url}, dev.dir() / "agent.log");
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    // Past the prefix (kept for the resume) and half of the fetch.
    while (p.running() && (slow.bytes_downstream() < clean / 2 || !fs::exists(dev.dir() / "state/adaptive-prefix.bin")) &&
           std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    ASSERT_TRUE(p.running()) << "the install ended before the kill: " << read_file(dev.dir() / "agent.log");
    p.kill();
  }
  const auto before = slow.bytes_downstream();
  slow.clear_faults();
  auto r = dev.agent("resume");
  ASSERT_EQ(r.exit_code, 4) << r.output;  // installed: reboot to go on
  EXPECT_NE(r.output.find("Continuing the interrupted install"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("using the artifact prefix kept by the interrupted install"), std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(dev.dir() / "state/adaptive-prefix.bin")) << "removed once the install is done";
  EXPECT_TRUE(standby_is_v2(dev));
  // The resumed run verifies the kept prefix again, keeps the frames the first run wrote and
  // fetches only those still missing. What a kill loses is what was fetched but not yet written:
  // at most one batch of compressed frames (64 KiB) and what sat in the socket buffers.
  EXPECT_NE(r.output.find("already on the target"), std::string::npos) << r.output;
  EXPECT_LE(double(slow.bytes_downstream()), 1.05 * double(clean) + 64.0 * 1024)
      << "clean " << clean << ", killed at " << before << ", in all " << slow.bytes_downstream();
  EXPECT_EQ(dev.boot(), 3);
  ASSERT_EQ(dev.agent("commit").exit_code, 0);
  EXPECT_EQ(dev.installed(), "v2");
}

}  // namespace
}  // namespace tern::test
