// The simulated device: U-Boot's bootcount/bootlimit/altbootcmd logic driven through the same
// BootEnv and PartitionWriter the agent uses, and the tern-device-sim command line.
#include <gtest/gtest.h>

#include <fstream>
#include <optional>

#include "agent/boot/bootenv.hpp"
#include "agent/boot/partitions.hpp"
#include "tests/support/device_sim.hpp"
#include "tests/support/testenv.hpp"

namespace tern::test {
namespace {

namespace fs = std::filesystem;
using agent::PartitionWriter;

class DeviceSimTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto sim = DeviceSim::create(dir_ / "dev", {.rootfs_mib = 4, .data_mib = 2});
    ASSERT_TRUE(sim) << sim.error().message();
    sim_.emplace(std::move(*sim));
  }

  std::map<std::string, std::string> env() {
    auto vars = sim_->env();
    EXPECT_TRUE(vars) << vars.error().message();
    return vars ? *vars : std::map<std::string, std::string>{};
  }

  int boot(bool expect_altbootcmd = false) {
    auto b = sim_->boot();
    EXPECT_TRUE(b) << b.error().message();
    if (!b) return -1;
    EXPECT_EQ(b->ran_altbootcmd, expect_altbootcmd);
    return b->partition;
  }

  /// Which slot the agent would detect from the files the simulator wrote.
  int running_slot() {
    auto a = sim_->slot(0), b = sim_->slot(1);
    EXPECT_TRUE(a && b);
    auto slot = agent::active_slot(sim_->active_detect(), *a, *b);
    EXPECT_TRUE(slot) << slot.error().message();
    return slot ? *slot : -1;
  }

  /// What an install does: write the image to the standby partition, then switch in one store.
  void install(const std::string& image, int part) {
    auto p = sim_->partition(part);
    ASSERT_TRUE(p) << p.error().message();
    auto w = PartitionWriter::open(*p);
    ASSERT_TRUE(w) << w.error().message();
    ASSERT_TRUE(w->write({reinterpret_cast<const std::uint8_t*>(image.data()), image.size()}));
    ASSERT_TRUE(w->finish());
    auto e = sim_->boot_env();
    ASSERT_TRUE(e) << e.error().message();
    ASSERT_TRUE((*e)->write(agent::vars_for_trial(part)));
  }

  TempDir dir_{"tern-sim"};
  std::optional<DeviceSim> sim_;
};

TEST_F(DeviceSimTest, FreshDeviceBootsA) {
  auto vars = env();
  EXPECT_EQ(vars["mender_boot_part"], "2");
  EXPECT_EQ(vars["mender_boot_part_hex"], "2");
  EXPECT_EQ(vars["upgrade_available"], "0");
  EXPECT_EQ(vars["bootcount"], "0");
  EXPECT_EQ(vars["bootlimit"], "1");
  EXPECT_NE(vars["altbootcmd"].find("mender_altbootcmd"), std::string::npos);
  EXPECT_NE(vars["bootcmd"].find("mender_setup"), std::string::npos);

  EXPECT_EQ(boot(), 2);
  EXPECT_EQ(read_file(sim_->cmdline()), "console=ttyS0,115200 root=/dev/sim-disk-p2 rootwait ro\n");
  EXPECT_EQ(running_slot(), 0);
  EXPECT_EQ(boot(), 2);
  EXPECT_EQ(env()["bootcount"], "0") << "no counting without an upgrade on trial";

  auto a = sim_->partition(2).value();
  EXPECT_EQ(a.label, "rootfs-a");
  EXPECT_EQ(a.size, 4u << 20);
  const std::string marker = "tern-sim initial rootfs-a\n";
  EXPECT_EQ(agent::sha256_of(a, marker.size()).value(),
            agent::sha256_of(agent::PartitionRef{.path =
                                                     [&] {
                                                       write_file(dir_ / "marker", marker);
                                                       return dir_ / "marker";
                                                     }()},
                             marker.size())
                .value());
}

TEST_F(DeviceSimTest, UncommittedUpdateRollsBackOnSecondBoot) {
  ASSERT_EQ(boot(), 2);
  install("new image", 3);
  // First boot of the new partition: on trial, counted.
  EXPECT_EQ(boot(), 3);
  EXPECT_EQ(running_slot(), 1);
  auto vars = env();
  EXPECT_EQ(vars["bootcount"], "1");
  EXPECT_EQ(vars["upgrade_available"], "1");
  // No commit (the new system did not come up healthy): the next boot passes bootlimit.
  EXPECT_EQ(boot(/*expect_altbootcmd=*/true), 2);
  EXPECT_EQ(running_slot(), 0);
  vars = env();
  EXPECT_EQ(vars["mender_boot_part"], "2");
  EXPECT_EQ(vars["mender_boot_part_hex"], "2");
  EXPECT_EQ(vars["upgrade_available"], "0");
  EXPECT_EQ(vars["bootcount"], "2");
  // And it stays there.
  EXPECT_EQ(boot(), 2);
  EXPECT_EQ(boot(), 2);
}

TEST_F(DeviceSimTest, CommittedUpdateStays) {
  ASSERT_EQ(boot(), 2);
  install("new image", 3);
  EXPECT_EQ(boot(), 3);
  auto e = sim_->boot_env().value();
  ASSERT_TRUE(e->write(agent::vars_for_commit()));
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(boot(), 3);
    EXPECT_EQ(running_slot(), 1);
  }
  auto vars = env();
  EXPECT_EQ(vars["bootcount"], "0");
  EXPECT_EQ(vars["upgrade_available"], "0");

  // The next update goes back to A, and its rollback returns to B.
  install("newer image", 2);
  EXPECT_EQ(boot(), 2);
  EXPECT_EQ(boot(true), 3);
}

TEST_F(DeviceSimTest, PartuuidCommandLine) {
  auto b = sim_->boot(RootStyle::partuuid);
  ASSERT_TRUE(b) << b.error().message();
  EXPECT_NE(read_file(sim_->cmdline()).find(" root=PARTUUID=" + b->partuuid + " "), std::string::npos);
  EXPECT_EQ(b->partuuid, sim_->partition(2)->partuuid);
  EXPECT_EQ(running_slot(), 0);
}

TEST_F(DeviceSimTest, BootsWithOneEnvironmentCopyCorrupt) {
  install("x", 3);
  // Rot in both copies in turn: U-Boot (and libubootenv) use whichever copy is intact.
  auto newest = dir_ / "dev" / "uboot-env.1";
  {
    std::fstream f(newest, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(64);
    f.write("garbage!", 8);
  }
  auto b = sim_->boot();
  ASSERT_TRUE(b) << b.error().message();
  EXPECT_TRUE(b->partition == 2 || b->partition == 3);
}

TEST_F(DeviceSimTest, BadBootPartIsAnError) {
  auto e = sim_->boot_env().value();
  ASSERT_TRUE(e->write({{"mender_boot_part", "4"}}));
  auto b = sim_->boot();
  ASSERT_FALSE(b);
  EXPECT_NE(b.error().message().find("mender_boot_part=4"), std::string::npos) << b.error().message();
}

TEST(DeviceSimCreate, InitialImageAndSizes) {
  TempDir dir("tern-sim");
  const std::string image(100'000, 'I');
  write_file(dir / "image", image);
  auto sim = DeviceSim::create(dir / "dev", {.rootfs_mib = 2, .data_mib = 1, .initial_image = dir / "image"});
  ASSERT_TRUE(sim) << sim.error().message();
  const std::string disk = read_file(sim->disk());
  auto a = sim->partition(2).value();
  EXPECT_EQ(disk.substr(a.offset, image.size()), image);
  EXPECT_EQ(sim->partition(3)->size, 2u << 20);
  EXPECT_EQ(sim->partition(4)->label, "data");
  EXPECT_EQ(sim->partition(4)->size, 1u << 20);

  write_file(dir / "huge", std::string(3u << 20, 'H'));
  auto too_big =
      DeviceSim::create(dir / "dev2", {.rootfs_mib = 2, .data_mib = 1, .initial_image = dir / "huge"});
  ASSERT_FALSE(too_big);
  EXPECT_NE(too_big.error().message().find("does not fit"), std::string::npos) << too_big.error().message();
  EXPECT_FALSE(DeviceSim::open(dir / "nothing-here"));
}

TEST(DeviceSimCli, CreateBootEnvReadPart) {
  TempDir dir("tern-sim");
  const std::string tool = shell_quote((build_dir() / "tests/support/tern-device-sim").string());
  const std::string dev = shell_quote((dir / "dev").string());
  write_file(dir / "image", "cli image");
  auto r = run(tool + " create " + dev + " --rootfs-mib 2 --data-mib 1 --image " +
               shell_quote((dir / "image").string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run(tool + " boot " + dev);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "2\n");
  r = run(tool + " setenv " + dev + " mender_boot_part=3 mender_boot_part_hex=3 upgrade_available=1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run(tool + " boot " + dev + " 2>/dev/null");
  EXPECT_EQ(r.output, "3\n");
  r = run(tool + " boot " + dev + " 2>&1");
  EXPECT_NE(r.output.find("altbootcmd"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("2\n"), std::string::npos) << r.output;
  r = run(tool + " env " + dev);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\nmender_boot_part=2\n"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\nupgrade_available=0\n"), std::string::npos) << r.output;
  // U-Boot's own tool sees the same environment.
  r = run("fw_printenv -c " + shell_quote((dir / "dev" / "fw_env.config").string()) + " bootcount");
  EXPECT_EQ(r.output, "bootcount=2\n");

  r = run(tool + " read-part " + dev + " 2 " + shell_quote((dir / "a.img").string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string a = read_file(dir / "a.img");
  EXPECT_EQ(a.size(), 2u << 20);
  EXPECT_EQ(a.substr(0, 9), "cli image");

  r = run(tool + " boot " + shell_quote((dir / "missing").string()));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("missing"), std::string::npos) << r.output;
  EXPECT_EQ(run(tool + " frobnicate x").exit_code, 2);
}

}  // namespace
}  // namespace tern::test
