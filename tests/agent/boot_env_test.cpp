// BootEnv on file-backed U-Boot environments (libubootenv) and GRUB environment blocks.
#include <gtest/gtest.h>

#include <fstream>

#include "agent/boot/bootenv.hpp"
#include "tests/support/testenv.hpp"

namespace tern::agent {
namespace {

using test::run;
using test::shell_quote;
using test::TempDir;
namespace fs = std::filesystem;

std::string slurp(const fs::path& p) {
  return test::read_file(p);
}

/// Overwrites `n` bytes at `offset` of a file with a pattern (a torn or rotten write).
void corrupt(const fs::path& p, std::uint64_t offset, std::size_t n = 32) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f) << p;
  f.seekp(static_cast<std::streamoff>(offset));
  std::string junk(n, '\x5a');
  f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
}

class UBootEnvTest : public ::testing::Test {
 protected:
  void SetUp() override {
    test::write_file(dir_ / "defaults.txt",
                     "mender_boot_part=2\nmender_boot_part_hex=2\nupgrade_available=0\n"
                     "bootcount=0\nbootlimit=1\nkeep=me\n");
    for (const auto& copy : {copy0(), copy1()}) {
      auto r = run("mkenvimage -r -s 0x4000 -o " + shell_quote(copy.string()) + " " +
                   shell_quote((dir_ / "defaults.txt").string()));
      ASSERT_EQ(r.exit_code, 0) << r.output;
    }
    config_.device1 = copy0().string();
    config_.device2 = copy1().string();
    config_.size = 0x4000;
  }
  fs::path copy0() const { return dir_ / "env.0"; }
  fs::path copy1() const { return dir_ / "env.1"; }
  std::unique_ptr<BootEnv> open() {
    auto env = open_uboot_env(config_);
    EXPECT_TRUE(env) << env.error().message();
    return env ? std::move(*env) : nullptr;
  }

  TempDir dir_{"tern-bootenv"};
  UBootEnvConfig config_;
};

TEST_F(UBootEnvTest, ReadsDefaults) {
  auto env = open();
  auto vars = env->read();
  ASSERT_TRUE(vars) << vars.error().message();
  EXPECT_EQ(vars->at("mender_boot_part"), "2");
  EXPECT_EQ(vars->at("keep"), "me");
  EXPECT_EQ(vars->size(), 6u);
}

TEST_F(UBootEnvTest, RoundTripAndRemove) {
  auto env = open();
  ASSERT_TRUE(env->write(vars_for_trial(3)));
  ASSERT_TRUE(env->write({{"note", "two words = fine"}, {"keep", ""}}));
  // A fresh handle reads from the files, not from a cache.
  auto vars = open()->read();
  ASSERT_TRUE(vars) << vars.error().message();
  EXPECT_EQ(vars->at("mender_boot_part"), "3");
  EXPECT_EQ(vars->at("mender_boot_part_hex"), "3");
  EXPECT_EQ(vars->at("upgrade_available"), "1");
  EXPECT_EQ(vars->at("bootcount"), "0");
  EXPECT_EQ(vars->at("note"), "two words = fine");
  EXPECT_EQ(vars->at("bootlimit"), "1");
  EXPECT_EQ(vars->count("keep"), 0u) << "an empty value removes the variable";
}

TEST_F(UBootEnvTest, ManyVariablesInOneStore) {
  auto env = open();
  const std::string before0 = slurp(copy0()), before1 = slurp(copy1());
  ASSERT_TRUE(env->write({{"a", "1"}, {"b", "2"}, {"c", "3"}, {"mender_boot_part", "3"}}));
  const bool changed0 = slurp(copy0()) != before0, changed1 = slurp(copy1()) != before1;
  // One store writes exactly one copy (the older one); the other keeps the previous state until
  // the next store, which is what makes a power cut during the store safe.
  EXPECT_NE(changed0, changed1);
  auto vars = env->read();
  ASSERT_TRUE(vars);
  EXPECT_EQ(vars->at("a"), "1");
  EXPECT_EQ(vars->at("c"), "3");
  EXPECT_EQ(vars->at("mender_boot_part"), "3");
}

TEST_F(UBootEnvTest, CorruptNewestCopyFallsBackToTheOther) {
  auto env = open();
  const std::string before0 = slurp(copy0());
  ASSERT_TRUE(env->write({{"mender_boot_part", "3"}}));
  const fs::path newest = slurp(copy0()) != before0 ? copy0() : copy1();
  const fs::path older = newest == copy0() ? copy1() : copy0();
  corrupt(newest, 100);
  auto vars = env->read();
  ASSERT_TRUE(vars) << vars.error().message();
  EXPECT_EQ(vars->at("mender_boot_part"), "2") << "the older, intact copy";

  // And the other way round: the older copy rotten, the newest is read.
  ASSERT_TRUE(env->write({{"mender_boot_part", "3"}}));  // repairs by writing over the bad copy
  corrupt(older, 100);
  vars = env->read();
  ASSERT_TRUE(vars) << vars.error().message();
  EXPECT_EQ(vars->at("mender_boot_part"), "3");
}

TEST_F(UBootEnvTest, BothCopiesCorruptIsAnError) {
  corrupt(copy0(), 100);
  corrupt(copy1(), 100);
  auto vars = open()->read();
  ASSERT_FALSE(vars);
  EXPECT_NE(vars.error().message().find(copy0().string()), std::string::npos) << vars.error().message();
}

TEST_F(UBootEnvTest, MissingDeviceIsNamed) {
  config_.device2 = (dir_ / "nope").string();
  auto env = open_uboot_env(config_);
  ASSERT_FALSE(env);
  EXPECT_EQ(env.error().code(), make_error_code(Errc::not_found));
  EXPECT_NE(env.error().message().find("nope"), std::string::npos) << env.error().message();
}

TEST_F(UBootEnvTest, RejectsBadNamesAndValuesWithoutStoring) {
  auto env = open();
  const std::string before0 = slurp(copy0()), before1 = slurp(copy1());
  EXPECT_FALSE(env->write({{"ok", "1"}, {"bad=name", "1"}}));
  EXPECT_FALSE(env->write({{"ok", "1"}, {"multi", "line\nvalue"}}));
  EXPECT_EQ(slurp(copy0()), before0);
  EXPECT_EQ(slurp(copy1()), before1);
}

TEST_F(UBootEnvTest, FromFwEnvConfigAndInteropWithFwPrintenv) {
  test::write_file(dir_ / "fw_env.config", "# two copies\n" + copy0().string() + "\t0x0\t0x4000\n\n" +
                                               copy1().string() + " 0 4000 # redundant; sizes are hex\n");
  auto env = open_uboot_env_from_file(dir_ / "fw_env.config");
  ASSERT_TRUE(env) << env.error().message();
  ASSERT_TRUE((*env)->write({{"mender_boot_part", "3"}, {"upgrade_available", "1"}}));
  // U-Boot's own user-space tool reads what we stored...
  auto r = run("fw_printenv -c " + shell_quote((dir_ / "fw_env.config").string()) + " mender_boot_part");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "mender_boot_part=3\n");
  // ...and we read what it stores.
  r = run("fw_setenv -c " + shell_quote((dir_ / "fw_env.config").string()) + " bootcount 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto vars = (*env)->read();
  ASSERT_TRUE(vars);
  EXPECT_EQ(vars->at("bootcount"), "1");
  EXPECT_EQ(vars->at("upgrade_available"), "1");
}

TEST(UBootEnvOffsets, TwoCopiesAtOffsetsInOneFileTouchNothingElse) {
  TempDir dir("tern-bootenv");
  const fs::path file = dir / "flash.bin";
  // 256 KiB of 0xEE with copies at 64 KiB and 128 KiB, as on a raw eMMC.
  test::write_file(file, std::string(256 * 1024, '\xee'));
  test::write_file(dir / "defaults.txt", "mender_boot_part=2\n");
  auto r = run("mkenvimage -r -s 0x4000 -o " + shell_quote((dir / "img").string()) + " " +
               shell_quote((dir / "defaults.txt").string()) +
               " && for off in 64 128; do dd if=" + shell_quote((dir / "img").string()) +
               " of=" + shell_quote(file.string()) + " bs=1024 seek=$off conv=notrunc status=none; done");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  UBootEnvConfig config{
      .device1 = file.string(), .offset1 = 0x10000, .device2 = file.string(), .offset2 = 0x20000};
  auto env = open_uboot_env(config);
  ASSERT_TRUE(env) << env.error().message();
  ASSERT_TRUE((*env)->write({{"mender_boot_part", "3"}}));
  ASSERT_TRUE((*env)->write({{"bootcount", "4"}}));
  auto vars = (*env)->read();
  ASSERT_TRUE(vars) << vars.error().message();
  EXPECT_EQ(vars->at("mender_boot_part"), "3");
  EXPECT_EQ(vars->at("bootcount"), "4");
  const std::string bytes = test::read_file(file);
  ASSERT_EQ(bytes.size(), 256u * 1024);
  EXPECT_EQ(bytes.substr(0, 0x10000), std::string(0x10000, '\xee'));
  EXPECT_EQ(bytes.substr(0x14000, 0xc000), std::string(0xc000, '\xee'));
  EXPECT_EQ(bytes.substr(0x24000), std::string(256 * 1024 - 0x24000, '\xee'));
}

TEST(UBootEnvSingleCopy, RoundTrip) {
  TempDir dir("tern-bootenv");
  test::write_file(dir / "defaults.txt", "bootcount=0\n");
  auto r = run("mkenvimage -s 0x2000 -o " + shell_quote((dir / "env").string()) + " " +
               shell_quote((dir / "defaults.txt").string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto env = open_uboot_env({.device1 = (dir / "env").string(), .size = 0x2000});
  ASSERT_TRUE(env) << env.error().message();
  ASSERT_TRUE((*env)->write({{"bootcount", "2"}, {"upgrade_available", "1"}}));
  auto vars = (*env)->read();
  ASSERT_TRUE(vars) << vars.error().message();
  EXPECT_EQ(vars->at("bootcount"), "2");
  EXPECT_EQ(vars->at("upgrade_available"), "1");
}

TEST(FwEnvConfig, Parses) {
  auto c = parse_fw_env_config("# comment\n/dev/mmcblk0 0x400000 0x4000 0x200\n/dev/mmcblk0 4210688 4000\n",
                               "cfg");
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_EQ(c->device1, "/dev/mmcblk0");
  EXPECT_EQ(c->offset1, 0x400000u);
  EXPECT_EQ(c->size, 0x4000u);
  EXPECT_EQ(c->sector_size, 0x200u);
  EXPECT_EQ(c->device2, "/dev/mmcblk0");
  EXPECT_EQ(c->offset2, 4210688u);
  // Offsets take C prefixes (010 is octal 8), sizes are hex with or without 0x.
  c = parse_fw_env_config("/dev/x 010 2000 10000\n", "cfg");
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_EQ(c->offset1, 8u);
  EXPECT_EQ(c->size, 0x2000u);
  EXPECT_EQ(c->sector_size, 0x10000u);
}

TEST(FwEnvConfig, ErrorsNameTheLine) {
  auto c = parse_fw_env_config("\n/dev/x 0x0\n", "my.config");
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message().find("my.config line 2"), std::string::npos) << c.error().message();
  c = parse_fw_env_config("/dev/x 0xZZ 0x4000\n", "my.config");
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message().find("0xZZ"), std::string::npos) << c.error().message();
  EXPECT_FALSE(parse_fw_env_config("# nothing\n", "my.config"));
  EXPECT_FALSE(parse_fw_env_config("/a 0 0x4000\n/b 0 0x2000\n", "my.config")) << "sizes differ";
  EXPECT_FALSE(parse_fw_env_config("/a 0 0x4000\n/b 0 0x4000\n/c 0 0x4000\n", "my.config"));
  EXPECT_FALSE(open_uboot_env_from_file("/nonexistent/fw_env.config"));
}

TEST(GrubEnv, RoundTripAndRemove) {
  TempDir dir("tern-grubenv");
  const fs::path file = dir / "grubenv";
  auto r = run("grub-editenv " + shell_quote(file.string()) + " create");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto env = open_grub_env(file);
  ASSERT_TRUE(env) << env.error().message();
  auto vars = (*env)->read();
  ASSERT_TRUE(vars) << vars.error().message();
  EXPECT_TRUE(vars->empty());

  ASSERT_TRUE((*env)->write(vars_for_trial(3)));
  ASSERT_TRUE((*env)->write({{"bootcount", ""}, {"extra", "x y"}}));
  vars = (*env)->read();
  ASSERT_TRUE(vars) << vars.error().message();
  EXPECT_EQ(vars->at("mender_boot_part"), "3");
  EXPECT_EQ(vars->at("upgrade_available"), "1");
  EXPECT_EQ(vars->at("extra"), "x y");
  EXPECT_EQ(vars->count("bootcount"), 0u);
  // Still a valid 1 KiB environment block that grub-editenv itself reads.
  EXPECT_EQ(fs::file_size(file), 1024u);
  r = run("grub-editenv " + shell_quote(file.string()) + " list");
  EXPECT_NE(r.output.find("mender_boot_part=3"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "grubenv.tern-tmp"));
}

TEST(GrubEnv, MissingFileIsNotFound) {
  auto env = open_grub_env("/nonexistent/grubenv");
  ASSERT_FALSE(env);
  EXPECT_EQ(env.error().code(), make_error_code(Errc::not_found));
  EXPECT_NE(env.error().message().find("/nonexistent/grubenv"), std::string::npos);
}

TEST(BootVars, PartNumberAndHelpers) {
  EXPECT_EQ(boot_part_number({{"mender_boot_part", "3"}}).value(), 3);
  EXPECT_FALSE(boot_part_number({}));
  auto bad = boot_part_number({{"mender_boot_part", "3x"}});
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("'3x'"), std::string::npos);
  EXPECT_EQ(vars_for_trial(10).at("mender_boot_part_hex"), "a");
  EXPECT_EQ(vars_for_trial(10).at("mender_boot_part"), "10");
  EXPECT_EQ(vars_for_commit().at("upgrade_available"), "0");
  EXPECT_EQ(vars_for_rollback(2).at("upgrade_available"), "0");
  EXPECT_EQ(vars_for_rollback(2).at("mender_boot_part"), "2");
}

}  // namespace
}  // namespace tern::agent
