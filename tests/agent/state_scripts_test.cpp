// Mender's state scripts run by tern-agent on simulated devices (sfdisk images, file-backed U-Boot
// environments, the simulator's U-Boot logic): root filesystem scripts for Download, artifact
// scripts (written into the artifact with `tern-artifact write -s`) for the Artifact states, each
// appending its name to a trace file, so the tests see which ran and in what order.
#include "tests/agent/sim_agent.hpp"

#include <gtest/gtest.h>

#include <sstream>

namespace tern::test {
namespace {

class StateScripts : public ::testing::Test {
 protected:
  TempDir tmp;
  fs::path trace = tmp / "trace.txt";
  fs::path rootfs_scripts = tmp / "rootfs-scripts";
  fs::path artifact_scripts_src = tmp / "artifact-scripts";
  std::string image = make_image(2u << 20, 31);

  void SetUp() override {
    fs::create_directories(rootfs_scripts);
    fs::create_directories(artifact_scripts_src);
  }

  /// A script that appends its own name to the trace, then runs `body` (its exit decides).
  std::string script(const std::string& body = "exit 0") {
    return "#!/bin/sh\necho \"$(basename \"$0\")\" >> " + q(trace) + "\n" + body + "\n";
  }
  void rootfs_script(const std::string& name, const std::string& body = "exit 0") {
    write_file(rootfs_scripts / name, script(body));
    fs::permissions(rootfs_scripts / name, fs::perms::owner_all);
  }
  void artifact_script(const std::string& name, const std::string& body = "exit 0") {
    write_file(artifact_scripts_src / name, script(body));
    fs::permissions(artifact_scripts_src / name, fs::perms::owner_all);
  }
  /// An artifact carrying every script written with artifact_script() so far.
  fs::path artifact(const std::string& name = "release-2") {
    std::string flags;
    for (const auto& e : fs::directory_iterator(artifact_scripts_src)) flags += " -s " + q(e.path());
    return make_artifact(tmp.path(), name, image, "qemu", flags);
  }
  std::unique_ptr<SimAgent> device(boost::json::object extra = {}) {
    boost::json::object cfg{{"RootfsScriptsPath", rootfs_scripts.string()},
                            {"StateScriptRetryIntervalSeconds", 1},
                            {"StateScriptTimeoutSeconds", 5}};
    for (const auto& [k, v] : extra) cfg[k] = v;
    return std::make_unique<SimAgent>(tmp / "device-1", cfg);
  }
  std::vector<std::string> ran() {
    std::vector<std::string> out;
    if (!fs::exists(trace)) return out;
    std::istringstream in(read_file(trace));
    for (std::string line; std::getline(in, line);) out.push_back(line);
    return out;
  }
  static std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += x + "\n";
    return s;
  }
  std::string deployment_log(SimAgent& dev) { return read_file(dev.dir() / "state/deployment-logs/local.log"); }
};

TEST_F(StateScripts, EveryStateOfASuccessfulUpdateRunsInMenderOrderAcrossTheReboot) {
  rootfs_script("Download_Enter_10_second");
  rootfs_script("Download_Enter_05_first");
  rootfs_script("Download_Leave_00");
  rootfs_script("Download_Error_00");
  rootfs_script("Download_Enter_ignored");  // no NN: not a state script
  for (auto s : {"ArtifactInstall_Enter_00", "ArtifactInstall_Leave_00", "ArtifactReboot_Enter_00",
                 "ArtifactReboot_Leave_00", "ArtifactCommit_Enter_00", "ArtifactCommit_Leave_00",
                 "ArtifactInstall_Error_00", "ArtifactFailure_Enter_00"})
    artifact_script(s);
  artifact_script("ArtifactInstall_Leave_01_output", "echo 'migrating the database' >&2");
  auto art = artifact();
  auto dev = device();

  auto r = dev->agent("install --reboot-exit-code " + q(art));
  ASSERT_EQ(r.exit_code, 4) << r.output;
  EXPECT_EQ(dev->env()["mender_boot_part"], "3");
  EXPECT_EQ(join(ran()), join({"Download_Enter_05_first", "Download_Enter_10_second", "Download_Leave_00",
                               "ArtifactInstall_Enter_00", "ArtifactInstall_Leave_00",
                               "ArtifactInstall_Leave_01_output", "ArtifactReboot_Enter_00"}));
  // The artifact's scripts were stored on the data partition for the states after the reboot.
  EXPECT_TRUE(fs::exists(dev->dir() / "state/scripts/ArtifactCommit_Enter_00"));
  EXPECT_EQ(read_file(dev->dir() / "state/scripts/version"), "3\n");

  EXPECT_EQ(dev->boot(), 3);
  auto c = dev->agent("resume");
  ASSERT_EQ(c.exit_code, 0) << c.output;
  EXPECT_EQ(dev->installed(), "release-2");
  EXPECT_EQ(join(ran()), join({"Download_Enter_05_first", "Download_Enter_10_second", "Download_Leave_00",
                               "ArtifactInstall_Enter_00", "ArtifactInstall_Leave_00",
                               "ArtifactInstall_Leave_01_output", "ArtifactReboot_Enter_00",
                               "ArtifactReboot_Leave_00", "ArtifactCommit_Enter_00", "ArtifactCommit_Leave_00"}));
  // One log across the reboot, with the scripts' output.
  auto log = deployment_log(*dev);
  EXPECT_NE(log.find("ArtifactInstall_Leave_01_output: migrating the database"), std::string::npos) << log;
  EXPECT_NE(log.find("running state script"), std::string::npos) << log;
  EXPECT_NE(log.find("agent started: switched"), std::string::npos) << log;
  EXPECT_NE(log.find("committed release-2"), std::string::npos) << log;
}

TEST_F(StateScripts, AFailingArtifactCommitEnterRollsBackThroughMendersErrorStates) {
  for (auto s : {"ArtifactReboot_Leave_00", "ArtifactCommit_Error_00", "ArtifactCommit_Leave_00",
                 "ArtifactRollback_Enter_00", "ArtifactRollback_Leave_00", "ArtifactRollbackReboot_Enter_00",
                 "ArtifactRollbackReboot_Leave_00", "ArtifactFailure_Enter_00"})
    artifact_script(s);
  artifact_script("ArtifactCommit_Enter_00", "echo 'the UI did not come up' >&2; exit 1");
  // A failing script of an error state is logged and ignored.
  artifact_script("ArtifactFailure_Leave_00", "exit 3");
  auto art = artifact();
  auto dev = device();
  ASSERT_EQ(dev->agent("install --reboot-exit-code " + q(art)).exit_code, 4);
  EXPECT_EQ(dev->boot(), 3);
  auto r = dev->agent("resume");
  EXPECT_EQ(r.exit_code, 4) << "rolled back: reboot into the old partition\n" << r.output;
  EXPECT_EQ(dev->env()["mender_boot_part"], "2");
  EXPECT_EQ(dev->boot(), 2);
  auto f = dev->agent("resume");
  EXPECT_EQ(f.exit_code, 1) << f.output;
  EXPECT_NE(f.output.find("ArtifactCommit_Enter_00 failed with exit status 1"), std::string::npos)
      << f.output;
  EXPECT_EQ(dev->installed(), "factory-image");
  EXPECT_EQ(join(ran()), join({"ArtifactReboot_Leave_00", "ArtifactCommit_Enter_00", "ArtifactCommit_Error_00",
                               "ArtifactRollback_Enter_00", "ArtifactRollback_Leave_00",
                               "ArtifactRollbackReboot_Enter_00", "ArtifactRollbackReboot_Leave_00",
                               "ArtifactFailure_Enter_00", "ArtifactFailure_Leave_00"}));
  auto log = deployment_log(*dev);
  EXPECT_NE(log.find("the UI did not come up"), std::string::npos) << log;
  EXPECT_NE(log.find("ArtifactFailure_Leave_00 failed with exit status 3"), std::string::npos) << log;
}

TEST_F(StateScripts, ADownloadEnterVetoFailsTheInstallBeforeAnythingIsWritten) {
  rootfs_script("Download_Enter_00", "echo 'vetoed: on battery' >&2; exit 1");
  rootfs_script("Download_Error_00");
  artifact_script("ArtifactFailure_Enter_00");  // Download is not an Artifact state: never runs
  auto art = artifact();
  auto dev = device();
  const auto standby = dev->partition_sha(3);
  auto r = dev->agent("install " + q(art));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("Download_Enter"), std::string::npos) << r.output;
  EXPECT_EQ(dev->partition_sha(3), standby) << "nothing written";
  EXPECT_EQ(dev->env()["mender_boot_part"], "2");
  EXPECT_EQ(dev->env()["upgrade_available"], "0");
  EXPECT_EQ(join(ran()), join({"Download_Enter_00", "Download_Error_00"}));
  EXPECT_NE(deployment_log(*dev).find("vetoed: on battery"), std::string::npos) << deployment_log(*dev);

  // A rootfs scripts directory of another version fails the state, naming the file.
  fs::remove(rootfs_scripts / "Download_Enter_00");
  write_file(rootfs_scripts / "version", "2\n");
  auto v = dev->agent("install " + q(art));
  EXPECT_EQ(v.exit_code, 1) << v.output;
  EXPECT_NE(v.output.find("version '2'"), std::string::npos) << v.output;
}

TEST_F(StateScripts, ExitCode21RetriesLaterWithinTheBudget) {
  // First run: 21 (retry later); the second goes on.
  rootfs_script("Download_Enter_00", "if [ -e " + q(tmp / "asked") + " ]; then exit 0; fi; touch " + q(tmp / "asked") +
                                         "; exit 21");
  auto art = artifact();
  auto dev = device();
  auto r = dev->agent("install " + q(art));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(join(ran()), join({"Download_Enter_00", "Download_Enter_00"}));
  EXPECT_EQ(dev->env()["mender_boot_part"], "3");
  EXPECT_NE(deployment_log(*dev).find("exited with 21 (retry later)"), std::string::npos);

  // Always 21: past StateScriptRetryTimeoutSeconds it has failed.
  auto dev2 = std::make_unique<SimAgent>(tmp / "device-2",
                                         boost::json::object{{"RootfsScriptsPath", rootfs_scripts.string()},
                                                             {"StateScriptRetryIntervalSeconds", 1},
                                                             {"StateScriptRetryTimeoutSeconds", 2}});
  rootfs_script("Download_Enter_00", "exit 21");
  auto late = dev2->agent("install " + q(art));
  EXPECT_EQ(late.exit_code, 1) << late.output;
  EXPECT_NE(late.output.find("retry later for longer than 2 s"), std::string::npos) << late.output;
  EXPECT_EQ(dev2->env()["upgrade_available"], "0");
}

TEST_F(StateScripts, AHangingScriptIsKilledAtItsTimeoutAndFailsTheInstall) {
  artifact_script("ArtifactInstall_Enter_00", "sleep 60");
  artifact_script("ArtifactInstall_Error_00");
  artifact_script("ArtifactFailure_Enter_00");
  auto art = artifact();
  auto dev = device({{"StateScriptTimeoutSeconds", 1}});
  auto r = dev->agent("install " + q(art));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("ArtifactInstall_Enter_00 timed out"), std::string::npos) << r.output;
  EXPECT_EQ(dev->env()["mender_boot_part"], "2") << "never switched";
  EXPECT_EQ(dev->env()["upgrade_available"], "0");
  EXPECT_EQ(join(ran()), join({"ArtifactInstall_Enter_00", "ArtifactInstall_Error_00", "ArtifactFailure_Enter_00"}));
  EXPECT_EQ(dev->boot(), 2);
}

}  // namespace
}  // namespace tern::test
