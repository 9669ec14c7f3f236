// tern-agent install/resume/commit/rollback on simulated devices: disk images made with sfdisk,
// file-backed U-Boot environments, the simulator's U-Boot logic, and real HTTPS servers.
#include "tests/agent/sim_agent.hpp"
#include "tests/support/fault_proxy.hpp"
#include "tests/support/nginx.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

namespace tern::test {
namespace {

class Install : public ::testing::Test {
 protected:
  TempDir tmp;
  std::string image = make_image(6 * 1024 * 1024 + 12345, 11);
  fs::path artifact = make_artifact(tmp.path(), "release-2", image);

  bool partition_holds(SimAgent& d, int n, const std::string& bytes) { return d.read_partition(n, bytes.size()) == bytes; }

  /// Power-cycles and resumes until the agent settles (no more reboots asked). Returns the last
  /// resume's result and the partition finally booted.
  std::pair<CommandResult, int> settle(SimAgent& d) {
    CommandResult r{0, ""};
    int part = 0;
    for (int i = 0; i < 6; ++i) {
      part = d.boot();
      r = d.agent("resume");
      if (r.exit_code != 4) break;
    }
    return {r, part};
  }
};

TEST_F(Install, FromAFileThenRebootAndCommit) {
  SimAgent dev(tmp / "device-1");
  auto a_before = dev.partition_sha(2);
  auto r = dev.agent("install " + q(artifact));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("Reboot"), std::string::npos);
  auto env = dev.env();
  EXPECT_EQ(env["mender_boot_part"], "3");
  EXPECT_EQ(env["mender_boot_part_hex"], "3");
  EXPECT_EQ(env["upgrade_available"], "1");
  EXPECT_EQ(env["bootcount"], "0");
  EXPECT_TRUE(partition_holds(dev, 3, image)) << "partition 3 holds the image";
  EXPECT_EQ(dev.partition_sha(2), a_before) << "the running partition is untouched";
  EXPECT_EQ(dev.installed(), "factory-image") << "nothing is committed before the reboot";

  // A second install before the reboot is refused.
  auto again = dev.agent("install " + q(artifact));
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.output.find("in progress"), std::string::npos) << again.output;

  EXPECT_EQ(dev.boot(), 3);
  auto c = dev.agent("commit");
  ASSERT_EQ(c.exit_code, 0) << c.output;
  env = dev.env();
  EXPECT_EQ(env["upgrade_available"], "0");
  EXPECT_EQ(env["bootcount"], "0");
  EXPECT_EQ(dev.installed(), "release-2");
  auto p = dev.agent("show-provides");
  EXPECT_NE(p.output.find("artifact_name=release-2"), std::string::npos) << p.output;
  EXPECT_NE(p.output.find("rootfs-image.checksum=" + sha256_hex(image)), std::string::npos) << p.output;
  EXPECT_EQ(dev.boot(), 3) << "committed: the new partition stays";
  EXPECT_EQ(dev.boot(), 3);

  // The same artifact again is a no-op.
  auto same = dev.agent("install " + q(artifact));
  EXPECT_EQ(same.exit_code, 0) << same.output;
  EXPECT_NE(same.output.find("already installed"), std::string::npos) << same.output;
  EXPECT_EQ(dev.env()["upgrade_available"], "0");
}

TEST_F(Install, ResumeRunsTheHealthCheckAndCommits) {
  boost::json::object cfg;
  cfg["HealthCheckCommand"] = "test -f " + (tmp / "healthy").string();
  SimAgent dev(tmp / "device-1", cfg);
  write_file(tmp / "healthy", "");
  ASSERT_EQ(dev.agent("install " + q(artifact)).exit_code, 0);
  auto [r, part] = settle(dev);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(part, 3);
  EXPECT_NE(r.output.find("success"), std::string::npos) << r.output;
  EXPECT_EQ(dev.installed(), "release-2");
}

TEST_F(Install, AFailingHealthCheckRollsBackToTheOldPartition) {
  SimAgent dev(tmp / "device-1", {{"HealthCheckCommand", "echo database did not start; exit 3"}});
  ASSERT_EQ(dev.agent("install " + q(artifact)).exit_code, 0);
  EXPECT_EQ(dev.boot(), 3);
  auto r = dev.agent("resume");
  EXPECT_EQ(r.exit_code, 4) << "asks for a reboot to roll back: " << r.output;
  EXPECT_EQ(dev.env()["mender_boot_part"], "2");
  EXPECT_EQ(dev.boot(), 2);
  auto f = dev.agent("resume");
  EXPECT_EQ(f.exit_code, 1) << f.output;
  EXPECT_NE(f.output.find("database did not start"), std::string::npos) << f.output;
  EXPECT_EQ(dev.installed(), "factory-image");
  EXPECT_EQ(dev.env()["upgrade_available"], "0");
}

TEST_F(Install, ANewImageThatNeverCommitsIsRolledBackByTheBootloader) {
  SimAgent dev(tmp / "device-1");
  ASSERT_EQ(dev.agent("install " + q(artifact)).exit_code, 0);
  EXPECT_EQ(dev.boot(), 3);  // the agent "hangs": no resume, no commit
  EXPECT_EQ(dev.boot(), 2) << "bootcount passed bootlimit: altbootcmd";
  auto r = dev.agent("resume");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("rolled back"), std::string::npos) << r.output;
  EXPECT_EQ(dev.installed(), "factory-image");
}

TEST_F(Install, RollbackCommandBeforeAndAfterTheReboot) {
  SimAgent dev(tmp / "device-1");
  ASSERT_EQ(dev.agent("install " + q(artifact)).exit_code, 0);
  auto before = dev.agent("rollback");
  EXPECT_EQ(before.exit_code, 0) << before.output;
  EXPECT_EQ(dev.env()["mender_boot_part"], "2");
  EXPECT_EQ(dev.boot(), 2);

  auto art3 = make_artifact(tmp.path(), "release-3", make_image(1 << 20, 3));
  ASSERT_EQ(dev.agent("install " + q(art3)).exit_code, 0);
  EXPECT_EQ(dev.boot(), 3);
  auto after = dev.agent("rollback");
  EXPECT_EQ(after.exit_code, 4) << after.output;
  auto [r, part] = settle(dev);
  EXPECT_EQ(part, 2);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(dev.installed(), "factory-image");
  EXPECT_EQ(dev.agent("rollback").exit_code, 1) << "nothing left to roll back";
}

TEST_F(Install, BadArtifactsAreRefusedAndNothingChanges) {
  SimAgent dev(tmp / "device-1");
  auto env_before = dev.env();
  auto a_before = dev.partition_sha(2);
  auto bytes = read_file(artifact);

  struct Case {
    std::string name;
    fs::path file;
    std::string expect;
    std::string config_key;
  };
  std::vector<Case> cases;
  auto corrupt = bytes;
  corrupt[corrupt.size() / 2] ^= 0x5a;
  write_file(tmp / "corrupt.mender", corrupt);
  cases.push_back({"corrupt", tmp / "corrupt.mender", "", ""});
  write_file(tmp / "truncated.mender", bytes.substr(0, bytes.size() * 2 / 3));
  cases.push_back({"truncated", tmp / "truncated.mender", "", ""});
  cases.push_back({"wrong type", make_artifact(tmp.path(), "other-board", image, "rpi4"), "rpi4", ""});
  cases.push_back({"oversize", make_artifact(tmp.path(), "huge", std::string(17u << 20, '\0')), "does not fit", ""});
  cases.push_back({"unsigned", artifact, "sign", "key"});
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    if (!c.config_key.empty()) {
      auto keys = tmp / "keys";
      fs::create_directories(keys);
      ASSERT_EQ(run("openssl ecparam -genkey -name prime256v1 -noout -out " + q(keys / "k.pem") +
                    " && openssl ec -in " + q(keys / "k.pem") + " -pubout -out " + q(keys / "k.pub"))
                    .exit_code,
                0);
      dev.set("ArtifactVerifyKey", boost::json::string((keys / "k.pub").string()));
    }
    auto r = dev.agent("install " + q(c.file));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    if (!c.expect.empty()) {
      EXPECT_NE(r.output.find(c.expect), std::string::npos) << r.output;
    }
    EXPECT_EQ(dev.env(), env_before);
    EXPECT_EQ(dev.partition_sha(2), a_before);
    EXPECT_EQ(dev.boot(), 2);
    EXPECT_EQ(dev.installed(), "factory-image");
  }
}

TEST_F(Install, ARefusedArtifactStopsADownloadStuckOnAStalledLink) {
  // The reader refuses the artifact (another device type) while the download waits on a link that
  // went silent: the install must end then, not after the read timeout and a reconnect.
  auto other = make_artifact(tmp.path(), "other-board-release", make_image(4u << 20, 6), "other-board",
                             "--compression none");
  Nginx nginx;
  fs::copy_file(other, nginx.root() / "other.mender");
  FaultProxy proxy(static_cast<std::uint16_t>(nginx.port()));
  proxy.set_stall_after(700u << 10);  // enough for the header to reach the reader
  boost::json::object cfg;
  cfg["ServerCertificate"] = (certs() / "ca.crt").string();
  cfg["DownloadReadTimeoutSeconds"] = 30;
  cfg["AdaptiveInstall"] = false;  // the streamed download (an adaptive one refuses it in its prefix requests)
  SimAgent dev(tmp / "device-1", cfg);
  auto a_before = dev.partition_sha(2);
  auto r = dev.agent("install https://127.0.0.1:" + std::to_string(proxy.port()) + "/artifacts/other.mender");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("other-board"), std::string::npos) << r.output;
  EXPECT_EQ(proxy.connections(), 1u) << "the download went on after the artifact was refused:\n" << r.output;
  EXPECT_EQ(dev.partition_sha(2), a_before);
  EXPECT_EQ(dev.env()["upgrade_available"], "0");
}

TEST_F(Install, OverHttpsFromNginxAndThroughALinkCutEveryFewMiB) {
  auto big_image = make_image(24u << 20, 5);
  auto big = make_artifact(tmp.path(), "release-big", big_image, "qemu", "--compression none");
  Nginx nginx;
  fs::copy_file(big, nginx.root() / "release-big.mender");
  auto size = fs::file_size(big);

  boost::json::object cfg;
  cfg["ServerCertificate"] = (certs() / "ca.crt").string();
  SimAgent dev(tmp / "device-1", cfg, DeviceSimOptions{.rootfs_mib = 32});
  auto direct = dev.agent("install " + nginx.url("release-big.mender"));
  ASSERT_EQ(direct.exit_code, 0) << direct.output;
  EXPECT_TRUE(partition_holds(dev, 3, big_image));
  ASSERT_EQ(dev.agent("rollback").exit_code, 0);

  FaultProxy proxy(static_cast<std::uint16_t>(nginx.port()));
  proxy.set_cut(1u << 20, 3u << 20);
  dev.set("RetryMinMilliseconds", 50);
  auto url = "https://127.0.0.1:" + std::to_string(proxy.port()) + "/artifacts/release-big.mender";
  auto cut = dev.agent("install " + url);
  ASSERT_EQ(cut.exit_code, 0) << cut.output;
  EXPECT_TRUE(partition_holds(dev, 3, big_image));
  EXPECT_GE(proxy.cuts(), 5u);
  EXPECT_LE(double(proxy.bytes_downstream()), 1.05 * double(size))
      << "served " << proxy.bytes_downstream() << " for an artifact of " << size;
}

// Starts `tern-agent install url` and kills it (-9) once a checkpoint past `past` bytes is saved.
// Returns the checkpoint's offset (0: the install ended or stalled first).
std::uint64_t kill_after_checkpoint(SimAgent& dev, const std::string& url, std::uint64_t past) {
  Process p({agent_bin(), "--config", dev.config_path().string(), "install", url}, dev.dir() / "agent.log");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  std::uint64_t offset = 0;
  while (p.running() && std::chrono::steady_clock::now() < deadline) {
    offset = saved_checkpoint_offset(dev.dir() / "state");
    if (offset > past) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  p.kill();
  return offset > past ? offset : 0;
}

class ResumeInstall : public ::testing::Test {
 protected:
  TempDir tmp;
  // 48 MiB of payload in 1 MiB zstd frames; the agent saves a checkpoint every 8 MiB of it.
  std::string big_image = make_image(48u << 20, 9);
  fs::path big = make_artifact(tmp.path(), "release-big", big_image, "qemu", "--frame-size 1048576");
  std::uint64_t size = fs::file_size(big);
  Nginx nginx;
  FaultProxy proxy{static_cast<std::uint16_t>(nginx.port())};
  std::string url = "https://127.0.0.1:" + std::to_string(proxy.port()) + "/artifacts/release-big.mender";

  void SetUp() override {
    fs::copy_file(big, nginx.root() / "release-big.mender");
    proxy.set_rate(24u << 20);  // slow enough that the kill lands in the middle
  }
  static bool holds(SimAgent& d, const std::string& bytes) { return d.read_partition(3, bytes.size()) == bytes; }
  SimAgent device() {
    boost::json::object cfg;
    cfg["ServerCertificate"] = (certs() / "ca.crt").string();
    return SimAgent(tmp / "device-1", cfg, DeviceSimOptions{.rootfs_mib = 64});
  }
};

TEST_F(ResumeInstall, KilledDuringAnHttpsDownloadGoesOnFromTheLastCheckpoint) {
  auto dev = device();
  auto offset = kill_after_checkpoint(dev, url, size / 3);
  ASSERT_GT(offset, 0u) << "no checkpoint past a third was saved before the install ended";
  const auto served_before = proxy.bytes_downstream();
  EXPECT_LT(served_before, size) << "killed before the whole artifact was served";
  EXPECT_TRUE(fs::exists(dev.dir() / "state/resume-prefix.bin"));

  proxy.clear_faults();
  // After the power comes back, `resume` goes on with the interrupted install.
  auto r = dev.agent("resume");
  ASSERT_EQ(r.exit_code, 4) << r.output;  // installed: reboot to go on
  EXPECT_NE(r.output.find("Continuing the interrupted install of " + url), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("resuming the interrupted download"), std::string::npos) << r.output;
  EXPECT_TRUE(holds(dev, big_image)) << "partition 3 holds the image";
  EXPECT_LT(double(proxy.bytes_downstream()), 1.1 * double(size))
      << "served " << proxy.bytes_downstream() << " bytes in all (" << served_before << " before the kill, checkpoint at "
      << offset << ") for an artifact of " << size;
  RecordProperty("artifact_bytes", std::to_string(size));
  RecordProperty("served_bytes", std::to_string(proxy.bytes_downstream()));
  RecordProperty("checkpoint_offset", std::to_string(offset));
  EXPECT_FALSE(fs::exists(dev.dir() / "state/resume.json")) << "the checkpoint is cleared after the download";
  EXPECT_FALSE(fs::exists(dev.dir() / "state/resume-prefix.bin"));
  EXPECT_EQ(dev.boot(), 3);
  ASSERT_EQ(dev.agent("commit").exit_code, 0);
  EXPECT_EQ(dev.installed(), "release-big");
}

TEST_F(ResumeInstall, OneAgentAtATimeDrivesADataDirectory) {
  auto dev = device();
  Process running({agent_bin(), "--config", dev.config_path().string(), "install", url}, dev.dir() / "agent.log");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (running.running() && saved_checkpoint_offset(dev.dir() / "state") == 0 &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_TRUE(running.running()) << "the install ended before the test could race it";
  for (const char* cmd : {"rollback", "resume", "commit"}) {
    auto r = dev.agent(cmd);
    EXPECT_NE(r.exit_code, 0) << cmd << ": " << r.output;
    EXPECT_NE(r.output.find("another tern-agent (the daemon?) is using"), std::string::npos) << cmd << ": " << r.output;
  }
  EXPECT_EQ(dev.agent("show-artifact").exit_code, 0) << "reading stays possible";
  auto st = running.wait(std::chrono::seconds(60));
  ASSERT_TRUE(st && WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << read_file(dev.dir() / "agent.log");
  EXPECT_TRUE(holds(dev, big_image));
  ASSERT_EQ(dev.agent("rollback").exit_code, 0) << "the lock is released when the install exits";
  // A lock dies with its process, also with kill -9: the next command gets it.
  ASSERT_GT(kill_after_checkpoint(dev, url, size / 4), 0u);
  auto r = dev.agent("resume");
  EXPECT_EQ(r.exit_code, 4) << r.output;
}

TEST_F(ResumeInstall, PartitionBytesChangedBeforeTheCheckpointAreCaughtAndRewritten) {
  auto dev = device();
  ASSERT_GT(kill_after_checkpoint(dev, url, size / 3), 0u);
  // Something scribbles on the standby partition while the agent is down, before the checkpoint:
  // the restored hash state alone would vouch for these bytes.
  dev.write_partition(3, 4096, "not the image");
  proxy.clear_faults();
  auto r = dev.agent("resume");
  ASSERT_EQ(r.exit_code, 4) << r.output;
  EXPECT_NE(r.output.find("resuming the interrupted download"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("does not hold the payload after the resumed download"), std::string::npos) << r.output;
  EXPECT_TRUE(holds(dev, big_image)) << "rewritten from byte 0";
  EXPECT_EQ(dev.boot(), 3);
  ASSERT_EQ(dev.agent("commit").exit_code, 0);
}

// A file install interrupted after a checkpoint (made here from an interrupted HTTPS install whose
// saved source is pointed at a local copy of the same artifact: a file install is too fast to kill
// in the middle reliably).
TEST_F(ResumeInstall, AFileSourceResumesBySeekingUnlessTheFileChanged) {
  const auto local = tmp / "local.mender";
  auto interrupt_into_file = [&](SimAgent& dev) {
    ASSERT_GT(kill_after_checkpoint(dev, url, size / 3), 0u);
    for (const char* name : {"state/install.json", "state/resume.json"}) {
      auto text = read_file(dev.dir() / name);
      auto at = text.find(url);
      ASSERT_NE(at, std::string::npos) << name;
      text.replace(at, url.size(), local.string());
      write_file(dev.dir() / name, text);
    }
  };
  fs::copy_file(big, local);
  auto dev = device();
  interrupt_into_file(dev);
  auto r = dev.agent("resume");
  ASSERT_EQ(r.exit_code, 4) << r.output;
  EXPECT_NE(r.output.find("resuming the interrupted download of " + local.string()), std::string::npos) << r.output;
  EXPECT_TRUE(holds(dev, big_image));
  ASSERT_EQ(dev.agent("rollback").exit_code, 0);

  // The same path now holds another artifact: the checkpoint does not apply, it starts from byte 0.
  interrupt_into_file(dev);
  auto other_image = make_image((48u << 20) - 8192, 12);
  auto other = make_artifact(tmp.path(), "release-other", other_image, "qemu", "--frame-size 1048576");
  fs::copy_file(other, local, fs::copy_options::overwrite_existing);
  auto again = dev.agent("resume");
  ASSERT_EQ(again.exit_code, 4) << again.output;
  EXPECT_NE(again.output.find("is not the file the checkpoint was taken from"), std::string::npos) << again.output;
  EXPECT_TRUE(holds(dev, other_image));
}

TEST_F(ResumeInstall, AnArtifactReplacedOnTheServerOrACorruptCheckpointStartsFromByteZero) {
  auto dev = device();
  ASSERT_GT(kill_after_checkpoint(dev, url, size / 4), 0u);

  // A corrupt checkpoint: refused before the download, which starts from 0 and succeeds.
  auto json = read_file(dev.dir() / "state/resume.json");
  auto at = json.find("payload_bytes ");
  ASSERT_NE(at, std::string::npos);
  json[at + 14] = json[at + 14] == '1' ? '2' : '1';
  write_file(dev.dir() / "state/resume.json", json);
  proxy.clear_faults();
  const auto before = proxy.bytes_downstream();
  auto r = dev.agent("install " + url);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("starts again from byte 0: checkpoint: the check line does not match"), std::string::npos)
      << r.output;
  EXPECT_GE(proxy.bytes_downstream() - before, size);
  EXPECT_TRUE(holds(dev, big_image));
  ASSERT_EQ(dev.agent("rollback").exit_code, 0);

  // The artifact changes on the server after the kill (another size: another ETag): If-Range
  // fails, the checkpoint is dropped and the new artifact is installed from byte 0.
  proxy.set_rate(24u << 20);
  ASSERT_GT(kill_after_checkpoint(dev, url, size / 4), 0u);
  auto new_image = make_image((48u << 20) - 4096, 10);
  auto replacement = make_artifact(tmp.path(), "release-new", new_image, "qemu", "--frame-size 1048576");
  fs::copy_file(replacement, nginx.root() / "release-big.mender", fs::copy_options::overwrite_existing);
  proxy.clear_faults();
  auto again = dev.agent("install " + url);
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("resuming the interrupted download"), std::string::npos) << again.output;
  EXPECT_NE(again.output.find("starting over from byte 0"), std::string::npos) << again.output;
  EXPECT_TRUE(holds(dev, new_image));
  EXPECT_EQ(dev.boot(), 3);
  ASSERT_EQ(dev.agent("commit").exit_code, 0);
  EXPECT_EQ(dev.installed(), "release-new");
}

TEST_F(Install, APowerCutInEveryPersistedStateEndsOnAGoodPartition) {
  // Kill -9 right after each state reaches the disk, then power-cycle until the agent settles.
  for (std::string phase : {"downloading", "switching", "switched", "committing", "rolling-back", "done"}) {
    for (bool healthy : {true, false}) {
      SCOPED_TRACE(phase + (healthy ? " healthy" : " unhealthy"));
      auto dir = tmp / ("dev-" + phase + (healthy ? "-h" : "-u"));
      boost::json::object cfg;
      cfg["HealthCheckCommand"] = healthy ? "true" : "false";
      SimAgent dev(dir, cfg);
      auto a_before = dev.partition_sha(2);
      auto kill_env = "TERN_TEST_KILL_AT=" + phase;
      auto r = dev.agent("install " + q(artifact), kill_env);
      if (r.exit_code == 0) {  // the phase comes later: kill during the first resume instead
        dev.boot();
        (void)dev.agent("resume", kill_env);
      }
      auto [res, part] = settle(dev);
      auto env = dev.env();
      EXPECT_EQ(env["upgrade_available"], "0") << res.output;
      if (part == 3) {
        EXPECT_TRUE(healthy);
        EXPECT_TRUE(partition_holds(dev, 3, image));
        EXPECT_EQ(dev.installed(), "release-2");
      } else {
        EXPECT_EQ(part, 2);
        EXPECT_EQ(dev.partition_sha(2), a_before);
        EXPECT_EQ(dev.installed(), "factory-image");
        auto state = read_file(dir / "state/install.json");
        EXPECT_NE(state.find("\"phase\":\"done\""), std::string::npos) << state;
        EXPECT_NE(state.find("\"success\":false"), std::string::npos) << state;
      }
    }
  }
}

TEST_F(Install, ResumeGivesUpAfterInstallAttemptsInterruptions) {
  SimAgent dev(tmp / "device-1", {{"InstallAttempts", 3}});
  const std::string kill_env = "TERN_TEST_KILL_AT=downloading";  // a power cut in every download
  auto first = dev.agent("install " + q(artifact), kill_env);
  EXPECT_NE(first.exit_code, 0) << first.output;
  for (int attempt = 2; attempt <= 3; ++attempt) {
    auto r = dev.agent("resume", kill_env);
    EXPECT_NE(r.output.find("Continuing the interrupted install"), std::string::npos) << r.output;
    EXPECT_NE(read_file(dev.dir() / "state/install.json").find("\"attempt\":" + std::to_string(attempt)),
              std::string::npos);
  }
  auto last = dev.agent("resume");
  EXPECT_EQ(last.exit_code, 1) << last.output;
  EXPECT_NE(last.output.find("interrupted 3 time(s)"), std::string::npos) << last.output;
  auto state = read_file(dev.dir() / "state/install.json");
  EXPECT_NE(state.find("\"phase\":\"done\""), std::string::npos) << state;
  EXPECT_EQ(dev.env()["upgrade_available"], "0");
}

TEST_F(Install, KilledAtRandomMomentsTheDeviceAlwaysBootsAGoodPartition) {
  // Time-based kills land in the download, the sync or the switch; each ends bootable.
  for (int i = 0; i < 6; ++i) {
    SCOPED_TRACE("kill " + std::to_string(i));
    auto dir = tmp / ("dev-kill-" + std::to_string(i));
    SimAgent dev(dir, {{"HealthCheckCommand", "true"}});
    auto a_before = dev.partition_sha(2);
    Process p({agent_bin(), "--config", dev.config_path().string(), "install", artifact.string()}, dir / "agent.log");
    std::this_thread::sleep_for(std::chrono::milliseconds(15 * i * i));
    p.kill();
    auto [res, part] = settle(dev);
    if (part == 3) {
      EXPECT_TRUE(partition_holds(dev, 3, image));
      EXPECT_EQ(dev.installed(), "release-2");
    } else {
      EXPECT_EQ(dev.partition_sha(2), a_before);
      EXPECT_EQ(dev.installed(), "factory-image");
    }
    EXPECT_EQ(dev.env()["upgrade_available"], "0");
  }
}

}  // namespace
}  // namespace tern::test
