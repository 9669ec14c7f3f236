// Resume after kill -9 for artifacts made by Debian's mender-artifact: gzip (its default) goes on
// from the last deflate-block checkpoint; xz (one block, as mender-artifact writes it) starts again
// from byte 0 and says why. Real tern-agent install over HTTPS (nginx behind a throttling proxy)
// into a simulated device.
#include "tests/agent/sim_agent.hpp"
#include "tests/support/fault_proxy.hpp"
#include "tests/support/nginx.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <thread>

namespace tern::test {
namespace {

class MenderArtifactResume : public ::testing::Test {
 protected:
  TempDir tmp;
  Nginx nginx;
  FaultProxy proxy{static_cast<std::uint16_t>(nginx.port())};

  // An artifact of `image` written by mender-artifact with `flags`, served as NAME.mender.
  std::uint64_t serve(const std::string& name, const std::string& image, const std::string& flags) {
    write_file(tmp / (name + ".img"), image);
    auto out = nginx.root() / (name + ".mender");
    auto r = run("mender-artifact write rootfs-image -f " + q(tmp / (name + ".img")) + " -t qemu -n " + name + " -o " +
                 q(out) + " " + flags);
    if (r.exit_code != 0) throw std::runtime_error("mender-artifact write: " + r.output);
    fs::remove(tmp / (name + ".img"));
    return fs::file_size(out);
  }
  std::string url(const std::string& name) const {
    return "https://127.0.0.1:" + std::to_string(proxy.port()) + "/artifacts/" + name + ".mender";
  }
  SimAgent device(std::uint64_t rootfs_mib) {
    boost::json::object cfg;
    cfg["ServerCertificate"] = (certs() / "ca.crt").string();
    return SimAgent(tmp / "device-1", cfg, DeviceSimOptions{.rootfs_mib = rootfs_mib});
  }
  // Starts `tern-agent install`, waits until half the artifact has been served and for the next
  // checkpoint to be saved after that; then kill -9. Returns the saved checkpoint's offset.
  std::uint64_t kill_at_half(SimAgent& dev, const std::string& u, std::uint64_t size) {
    Process p({agent_bin(), "--config", dev.config_path().string(), "install", u}, dev.dir() / "agent.log");
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(180);
    std::uint64_t before = 0;
    bool half = false;
    while (p.running() && std::chrono::steady_clock::now() < deadline) {
      auto offset = saved_checkpoint_offset(dev.dir() / "state");
      if (!half && proxy.bytes_downstream() >= size / 2) {
        half = true;
        before = offset;
      }
      if (half && offset != before) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    p.kill();
    return saved_checkpoint_offset(dev.dir() / "state");
  }
};

TEST_F(MenderArtifactResume, GzipKilledHalfwayFetchesAtMostFivePercentMore) {
  // 128 MiB, a quarter zeros: about 96 MiB of gzip.
  const auto image = make_image(128u << 20, 21);
  const auto size = serve("mender-gz", image, "");  // mender-artifact's default: gzip
  proxy.set_rate(32u << 20);  // slow enough for the kill to land half-way
  auto dev = device(160);

  const auto offset = kill_at_half(dev, url("mender-gz"), size);
  const auto served_before = proxy.bytes_downstream();
  ASSERT_GT(offset, size / 2) << "no checkpoint past half-way before the kill";
  ASSERT_LT(served_before, size) << "the install ended before the kill";

  proxy.clear_faults();
  auto r = dev.agent("resume");
  ASSERT_EQ(r.exit_code, 4) << r.output;
  EXPECT_NE(r.output.find("resuming the interrupted download"), std::string::npos) << r.output;
  EXPECT_TRUE(dev.read_partition(3, image.size()) == image) << "partition 3 holds the image";
  const auto served = proxy.bytes_downstream();
  std::printf("gzip artifact by mender-artifact: %llu bytes; killed with %llu served, checkpoint at %llu; "
              "%llu served in all (%.3fx)\n",
              static_cast<unsigned long long>(size), static_cast<unsigned long long>(served_before),
              static_cast<unsigned long long>(offset), static_cast<unsigned long long>(served),
              double(served) / double(size));
  RecordProperty("artifact_bytes", std::to_string(size));
  RecordProperty("served_bytes", std::to_string(served));
  EXPECT_LE(double(served), 1.05 * double(size)) << "served " << served << " for an artifact of " << size;
  EXPECT_EQ(dev.boot(), 3);
  ASSERT_EQ(dev.agent("commit").exit_code, 0);
  EXPECT_EQ(dev.installed(), "mender-gz");
}

TEST_F(MenderArtifactResume, XzInOneBlockStartsAgainFromByteZeroAndSaysWhy) {
  // 40 MiB: half-way is past twice the agent's 8 MiB checkpoint interval, where the install's
  // log says that this stream has no point to resume from. Mostly zeros (4 KiB of random bytes
  // per 64 KiB): mender-artifact's xz is slow on random data, and 2.5 MiB of it is enough.
  std::string image(40u << 20, '\0');
  const auto noise = make_image(image.size() / 16, 22);
  for (std::size_t i = 0; i < noise.size(); i += 4096) image.replace(i * 16, 4096, noise, i, 4096);
  const auto size = serve("mender-xz", image, "--compression lzma");
  proxy.set_rate(256u << 10);  // about 10 s for the whole artifact
  auto dev = device(48);

  // Killed once the install has said it has no point to resume from.
  Process p({agent_bin(), "--config", dev.config_path().string(), "install", url("mender-xz")}, dev.dir() / "agent.log");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  bool said = false;
  while (!said && p.running() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    said = read_file(dev.dir() / "agent.log").find("data/0000.tar.xz: no point to resume from") != std::string::npos;
  }
  p.kill();
  const auto log = read_file(dev.dir() / "agent.log");
  ASSERT_TRUE(said) << log;
  EXPECT_NE(log.find("an xz stream written as one block"), std::string::npos) << log;
  EXPECT_LT(proxy.bytes_downstream(), size) << "killed before the whole artifact was served";
  EXPECT_EQ(saved_checkpoint_offset(dev.dir() / "state"), 0u) << "one xz block: no checkpoint";
  proxy.clear_faults();
  auto r = dev.agent("resume");
  ASSERT_EQ(r.exit_code, 4) << r.output;
  EXPECT_NE(r.output.find("starts again from byte 0: no checkpoint was saved"), std::string::npos) << r.output;
  EXPECT_TRUE(dev.read_partition(3, image.size()) == image);
}

}  // namespace
}  // namespace tern::test
