// Update modules through the daemon: deployments published over MQTT (the real broker, TLS, client
// certificates), artifacts served by nginx, and the modules Debian's mender-client package ships in
// /usr/share/mender/modules/v3 (single-file, directory, script, deb) run as the third-party
// executables they are. Their destinations are temporary directories named in the artifacts; the
// deb module's dpkg works on a private root (DPKG_ROOT), never on this machine's packages.
#include "tests/agent/sim_agent.hpp"
#include "tests/support/broker.hpp"
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

const fs::path debian_modules = "/usr/share/mender/modules/v3";

class ModuleDaemonTest : public ::testing::Test {
 protected:
  TempDir tmp;
  Broker broker;
  Nginx nginx;
  std::unique_ptr<Process> watcher;
  fs::path modules = tmp / "modules";

  void SetUp() override {
    for (auto m : {"single-file", "directory", "script", "deb"})
      if (!fs::exists(debian_modules / m)) GTEST_SKIP() << "Debian's mender-client is not installed (scripts/setup)";
    // Debian's modules, and one written for these tests beside them.
    fs::create_directories(modules);
    for (auto& e : fs::directory_iterator(debian_modules)) fs::create_symlink(e.path(), modules / e.path().filename());
    watcher = std::make_unique<Process>(
        std::vector<std::string>{"sh", "-c", "exec mosquitto_sub " + broker.client_args("bridge") +
                                                 " -v -t 'tern/devices/+/status'"},
        tmp / "watch.log");
  }

  std::unique_ptr<SimAgent> device(const std::string& id) {
    auto c = certs();
    boost::json::object cfg{{"BrokerURI", broker.uri()},
                            {"ServerCertificate", (c / "ca.crt").string()},
                            {"ClientCertificate", (c / (id + ".crt")).string()},
                            {"ClientKey", (c / (id + ".key")).string()},
                            {"ModulesDir", modules.string()},
                            {"ModuleTimeoutSeconds", 60},
                            {"RetryMinMilliseconds", 200},
                            {"RetryMaxSeconds", 2}};
    return std::make_unique<SimAgent>(tmp / id, cfg);
  }

  /// A module-image artifact of `files` (name → content) for `type`, written by tern-artifact or,
  /// with `mender`, by Debian's mender-artifact; served by nginx.
  fs::path module_artifact(const std::string& name, const std::string& type,
                           const std::vector<std::pair<std::string, std::string>>& files, bool mender = false) {
    auto dir = tmp / ("payload-" + name);
    fs::create_directories(dir);
    std::string args;
    for (auto& [f, content] : files) {
      write_file(dir / f, content);
      args += " -f " + q(dir / f);
    }
    auto out = nginx.root() / (name + ".mender");
    auto cmd = (mender ? std::string("mender-artifact") : artifact_bin()) + " write module-image -T " + type +
               " -t qemu -n " + name + args + " -o " + q(out) + (mender ? "" : " --compression zstd");
    auto r = run(cmd);
    if (r.exit_code != 0) throw std::runtime_error(cmd + ": " + r.output);
    return out;
  }

  void deploy(const std::string& device, const std::string& dep, const fs::path& artifact) {
    auto name = artifact.stem().string();
    auto payload = R"({"deployment_id":")" + dep + R"(","artifact_name":")" + name + R"(","url":")" +
                   nginx.url(artifact.filename().string()) + R"(","size":)" +
                   std::to_string(fs::file_size(artifact)) + R"(,"sha256":")" + sha256_hex(read_file(artifact)) +
                   R"("})";
    auto r = run("mosquitto_pub " + broker.client_args("operator") + " -q 1 -r -t " +
                 shell_quote("tern/devices/" + device + "/deployment") + " -m " + shell_quote(payload));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }

  std::vector<std::string> statuses(const std::string& device, const std::string& dep) {
    return status_words(tmp / "watch.log", device, dep);
  }
  static bool has(const std::vector<std::string>& v, const std::string& s) {
    return std::find(v.begin(), v.end(), s) != v.end();
  }
  /// Waits (pumping reboots) for the final status of `dep`: "success" or "failure".
  std::string final_status(SimDaemon& d, const std::string& device, const std::string& dep) {
    auto end = std::chrono::steady_clock::now() + 60s;
    while (std::chrono::steady_clock::now() < end) {
      d.pump();
      auto s = statuses(device, dep);
      if (has(s, "success")) return "success";
      if (has(s, "failure")) return "failure";
      std::this_thread::sleep_for(50ms);
    }
    return "none";
  }

  void TearDown() override {
    if (HasFailure()) std::cerr << "--- watch.log\n" << read_file(tmp / "watch.log") << "\n";
  }
};

TEST_F(ModuleDaemonTest, SingleFileInstallsTheFileAndCommitsWithoutAReboot) {
  auto dest = tmp / "etc-app";
  fs::create_directories(dest);
  write_file(dest / "app.conf", "version=1\n");
  // As single-file-artifact-gen makes them, by Debian's mender-artifact (gzip).
  auto art = module_artifact("app-config-2", "single-file",
                             {{"app.conf", "version=2\n"}, {"dest_dir", dest.string()}, {"filename", "app.conf"},
                              {"permissions", "640"}},
                             true);
  auto dev = device("device-1");
  deploy("device-1", "dep-sf", art);
  SimDaemon d(*dev);
  ASSERT_EQ(final_status(d, "device-1", "dep-sf"), "success") << d.log();
  EXPECT_EQ(read_file(dest / "app.conf"), "version=2\n");
  EXPECT_EQ(fs::status(dest / "app.conf").permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
  EXPECT_EQ(d.reboots(), 0);
  EXPECT_FALSE(has(statuses("device-1", "dep-sf"), "rebooting"));
  EXPECT_EQ(dev->installed(), "app-config-2");
  auto provides = dev->agent("show-provides").output;
  EXPECT_NE(provides.find("rootfs-image.single-file.version=app-config-2"), std::string::npos) << provides;
  // The rootfs is untouched: no boot switch, the same partition runs.
  EXPECT_EQ(dev->env()["upgrade_available"], "0");
  EXPECT_EQ(dev->env()["mender_boot_part"], "2");
  // The module's tree is gone after Cleanup.
  EXPECT_FALSE(fs::exists(dev->dir() / "state/modules/v3/payloads/0000/tree"));
}

TEST_F(ModuleDaemonTest, DirectoryReplacesTheTreeAndABrokenUpdateRollsBackToIt) {
  auto dest = tmp / "www";
  fs::create_directories(tmp / "site");
  write_file(tmp / "site/index.html", "<h1>v2</h1>\n");
  write_file(tmp / "site/app.js", "console.log(2)\n");
  ASSERT_EQ(run("tar -cf " + q(tmp / "update.tar") + " -C " + q(tmp / "site") + " .").exit_code, 0);
  auto good = module_artifact("site-2", "directory", {{"update.tar", read_file(tmp / "update.tar")}, {"dest_dir", dest.string()}});
  // Not a tar: the module has removed the old tree when tar fails, so only its rollback restores it.
  auto broken = module_artifact("site-3", "directory", {{"update.tar", "not a tar file\n"}, {"dest_dir", dest.string()}});
  fs::create_directories(dest);
  write_file(dest / "old.html", "old\n");

  auto dev = device("device-2");
  deploy("device-2", "dep-dir", good);
  SimDaemon d(*dev);
  ASSERT_EQ(final_status(d, "device-2", "dep-dir"), "success") << d.log();
  EXPECT_EQ(read_file(dest / "index.html"), "<h1>v2</h1>\n");
  EXPECT_EQ(read_file(dest / "app.js"), "console.log(2)\n");
  EXPECT_FALSE(fs::exists(dest / "old.html"));
  EXPECT_EQ(dev->installed(), "site-2");

  deploy("device-2", "dep-broken", broken);
  ASSERT_EQ(final_status(d, "device-2", "dep-broken"), "failure") << d.log();
  EXPECT_EQ(read_file(dest / "index.html"), "<h1>v2</h1>\n") << "ArtifactRollback restored the tree";
  EXPECT_EQ(read_file(dest / "app.js"), "console.log(2)\n");
  EXPECT_EQ(dev->installed(), "site-2");
  EXPECT_EQ(d.reboots(), 0);
  EXPECT_NE(d.log().find("directory ArtifactRollback"), std::string::npos) << "the rollback ran";
}

TEST_F(ModuleDaemonTest, ScriptRunsTheScriptsAndAFailingOneReportsFailureWithoutRollback) {
  auto out = tmp / "script-out";
  fs::create_directories(out);
  auto ok = module_artifact("maint-1", "script",
                            {{"10-hello", "#!/bin/sh\necho hello from $(basename $0) > " + q(out / "hello") + "\n"}});
  auto bad = module_artifact("maint-2", "script",
                             {{"10-fails", "#!/bin/sh\necho ran > " + q(out / "fails") + "\nexit 3\n"}}, true);
  auto dev = device("device-3");
  deploy("device-3", "dep-script", ok);
  SimDaemon d(*dev);
  ASSERT_EQ(final_status(d, "device-3", "dep-script"), "success") << d.log();
  EXPECT_EQ(read_file(out / "hello"), "hello from 10-hello\n");
  EXPECT_EQ(dev->installed(), "maint-1");

  deploy("device-3", "dep-script-bad", bad);
  ASSERT_EQ(final_status(d, "device-3", "dep-script-bad"), "failure") << d.log();
  EXPECT_EQ(read_file(out / "fails"), "ran\n");
  EXPECT_EQ(dev->installed(), "maint-1");
  auto log = d.log();
  EXPECT_EQ(log.find("script ArtifactRollback"), std::string::npos) << "the script module has no rollback";
  EXPECT_NE(log.find("ArtifactInstall failed with exit status"), std::string::npos) << log;
}

TEST_F(ModuleDaemonTest, DebInstallsThePackageWithDpkgIntoAPrivateRoot) {
  // A tiny package built here; dpkg (run by the deb module) installs it under DPKG_ROOT.
  auto pkg = tmp / "pkg";
  fs::create_directories(pkg / "DEBIAN");
  fs::create_directories(pkg / "opt/tern-module-test");
  write_file(pkg / "DEBIAN/control",
             "Package: tern-module-test\nVersion: 1.0\nArchitecture: all\nMaintainer: Tern tests "
             "<tests@example.invalid>\nDescription: package for the update module tests\n");
  write_file(pkg / "opt/tern-module-test/hello", "hello from a deb\n");
  auto built = run("dpkg-deb --root-owner-group -b " + q(pkg) + " " + q(tmp / "tern-module-test_1.0_all.deb"));
  ASSERT_EQ(built.exit_code, 0) << built.output;
  auto root = tmp / "dpkg-root";
  fs::create_directories(root / "var/lib/dpkg/info");
  fs::create_directories(root / "var/lib/dpkg/updates");
  write_file(root / "var/lib/dpkg/status", "");
  write_file(root / "var/lib/dpkg/available", "");
  auto art = module_artifact("pkg-1", "deb", {{"tern-module-test_1.0_all.deb", read_file(tmp / "tern-module-test_1.0_all.deb")}});

  auto dev = device("device-4");
  deploy("device-4", "dep-deb", art);
  ::setenv("DPKG_ROOT", root.c_str(), 1);  // inherited by the daemon, its module and dpkg
  SimDaemon d(*dev);
  ::unsetenv("DPKG_ROOT");
  ASSERT_EQ(final_status(d, "device-4", "dep-deb"), "success") << d.log();
  EXPECT_EQ(read_file(root / "opt/tern-module-test/hello"), "hello from a deb\n");
  auto status = run("dpkg-query --root=" + q(root) + " -W -f='${Status} ${Version}' tern-module-test");
  EXPECT_EQ(status.output, "install ok installed 1.0");
  EXPECT_NE(run("dpkg-query -W tern-module-test").exit_code, 0) << "the host's dpkg database is untouched";
  EXPECT_EQ(dev->installed(), "pkg-1");
}

TEST_F(ModuleDaemonTest, AModuleThatAsksForARebootIsVerifiedAndCommittedAfterIt) {
  // A module written for this test: it logs each call and wants Tern to reboot (Automatic).
  auto calls = tmp / "calls.log";
  write_file(modules / "reboot-test",
             "#!/bin/sh\necho \"$1 $(cat \"$2\"/files/f 2>/dev/null)\" >> " + q(calls) +
                 "\ncase \"$1\" in\n  NeedsArtifactReboot) echo Automatic ;;\n  SupportsRollback) echo Yes ;;\n"
                 "  ArtifactVerifyReboot) test \"$(pwd)\" = \"$2\" ;;\nesac\n");
  fs::permissions(modules / "reboot-test", fs::perms::owner_all);
  auto art = module_artifact("fw-2", "reboot-test", {{"f", "payload"}});
  auto dev = device("device-5");
  deploy("device-5", "dep-reboot", art);
  SimDaemon d(*dev);
  ASSERT_EQ(final_status(d, "device-5", "dep-reboot"), "success") << d.log();
  EXPECT_EQ(d.reboots(), 1);
  EXPECT_EQ(read_file(calls),
            "Download \nArtifactInstall payload\nNeedsArtifactReboot payload\nSupportsRollback payload\n"
            "ArtifactVerifyReboot payload\nArtifactCommit payload\nCleanup payload\n");
  auto s = statuses("device-5", "dep-reboot");
  EXPECT_TRUE(has(s, "rebooting"));
  EXPECT_EQ(dev->installed(), "fw-2");
  EXPECT_EQ(dev->env()["mender_boot_part"], "2") << "a module's reboot is no boot switch";
}

/// A module written for the tests: logs each state, says it supports rollback, and holds
/// ArtifactInstall until the test creates `go` (its pid in `pid`, `started` once it is in it).
void write_gated_module(const fs::path& modules, const fs::path& dir) {
  write_file(modules / "gated",
             "#!/bin/sh\necho \"$1\" >> " + q(dir / "calls.log") +
                 "\ncase \"$1\" in\n  SupportsRollback) echo Yes ;;\n  ArtifactInstall)\n    echo $$ > " +
                 q(dir / "pid") + "\n    touch " + q(dir / "started") + "\n    while [ ! -e " + q(dir / "go") +
                 " ]; do sleep 0.05; done ;;\nesac\n");
  fs::permissions(modules / "gated", fs::perms::owner_all);
}

TEST_F(ModuleDaemonTest, AnAgentKilledDuringArtifactInstallRollsBackAfterTheRestart) {
  write_gated_module(modules, tmp.path());
  auto art = module_artifact("gated-1", "gated", {{"f", "x"}});
  auto dev = device("device-1");
  deploy("device-1", "dep-kill", art);
  SimDaemon d(*dev);
  auto end = std::chrono::steady_clock::now() + 60s;
  while (!fs::exists(tmp / "started") && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(20ms);
  ASSERT_TRUE(fs::exists(tmp / "started")) << d.log();
  d.kill();  // -9, as a power cut: the module is left mid-install
  ::kill(std::stoi(read_file(tmp / "pid")), SIGKILL);
  // By hand, commit and rollback leave a module's install to its module.
  for (auto cmd : {"commit", "rollback"}) {
    auto r = dev->agent(cmd);
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("update module's install"), std::string::npos) << r.output;
  }
  d.start();
  ASSERT_EQ(final_status(d, "device-1", "dep-kill"), "failure") << d.log();
  EXPECT_EQ(read_file(tmp / "calls.log"),
            "Download\nArtifactInstall\nSupportsRollback\nArtifactRollback\nArtifactFailure\nCleanup\n");
  EXPECT_EQ(dev->installed(), "factory-image");
  auto s = statuses("device-1", "dep-kill");
  EXPECT_EQ(std::count(s.begin(), s.end(), "failure"), 1);
}

TEST_F(ModuleDaemonTest, ADeploymentArrivingWhileAModuleRunsWaitsForItsEnd) {
  write_gated_module(modules, tmp.path());
  auto first = module_artifact("gated-1", "gated", {{"f", "x"}});
  auto second = module_artifact("gated-2", "gated", {{"f", "y"}});
  auto dev = device("device-2");
  deploy("device-2", "dep-first", first);
  SimDaemon d(*dev);
  auto end = std::chrono::steady_clock::now() + 60s;
  while (!fs::exists(tmp / "started") && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(20ms);
  ASSERT_TRUE(fs::exists(tmp / "started")) << d.log();
  deploy("device-2", "dep-second", second);
  // The daemon has the new deployment (its log says so) while the module still holds.
  end = std::chrono::steady_clock::now() + 30s;
  while (d.log().find("deployment dep-second received") == std::string::npos && std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(20ms);
  ASSERT_NE(d.log().find("deployment dep-second received"), std::string::npos) << d.log();
  write_file(tmp / "go", "");
  EXPECT_EQ(final_status(d, "device-2", "dep-first"), "success") << d.log();
  EXPECT_EQ(final_status(d, "device-2", "dep-second"), "success") << d.log();
  EXPECT_EQ(dev->installed(), "gated-2");
  EXPECT_FALSE(has(statuses("device-2", "dep-first"), "failure"));
  EXPECT_FALSE(has(statuses("device-2", "dep-first"), "aborted"));
}

}  // namespace
}  // namespace tern::test
