// The per-deployment log (agent/update/deployment_log.hpp): one file per deployment, appended
// across restarts, bounded by dropping the middle with a marker, the newest few kept.
#include "agent/update/deployment_log.hpp"
#include "tests/support/testenv.hpp"

#include <gtest/gtest.h>

namespace tern::test {
namespace {

TEST(DeploymentLog, AppendsAcrossRestartsAndStartsFreshForANewDeployment) {
  TempDir tmp;
  {
    agent::DeploymentLog log(tmp / "logs");
    log.line('I', "before anything began: dropped");
    log.begin("dep-1", true);
    log.line('I', "installing\nsecond line");
  }
  agent::DeploymentLog log(tmp / "logs");  // the agent after a reboot
  log.begin("dep-1", false);
  log.line('E', "rolled back");
  auto text = log.read("dep-1");
  ASSERT_TRUE(text) << text.error().message();
  EXPECT_EQ(text->find("dropped"), std::string::npos);
  EXPECT_NE(text->find("Z I installing\n"), std::string::npos) << *text;
  EXPECT_NE(text->find("Z I second line\n"), std::string::npos) << *text;
  EXPECT_NE(text->find("Z E rolled back\n"), std::string::npos) << *text;
  log.begin("dep-1", true);
  log.line('I', "again");
  EXPECT_EQ(log.read("dep-1")->find("rolled back"), std::string::npos);
  EXPECT_FALSE(log.read("dep-9"));
  log.begin("", true);
  log.line('I', "from the command line");
  EXPECT_TRUE(fs::exists(tmp / "logs/local.log"));
}

TEST(DeploymentLog, StaysUnderItsLimitKeepingTheStartAndTheNewestLines) {
  TempDir tmp;
  const std::size_t limit = 64 * 1024;
  agent::DeploymentLog log(tmp / "logs", limit);
  log.begin("dep-1", true);
  log.line('I', "the first line");
  for (int i = 0; i < 5000; ++i) log.line('I', "line " + std::to_string(i) + std::string(40, '.'));
  auto text = log.read("dep-1");
  ASSERT_TRUE(text);
  EXPECT_LE(text->size(), limit);
  EXPECT_NE(text->find("the first line"), std::string::npos);
  EXPECT_NE(text->find("line 4999."), std::string::npos);
  EXPECT_EQ(text->find("line 2000."), std::string::npos) << "the middle went";
  EXPECT_NE(text->find("bytes dropped here"), std::string::npos);
}

TEST(DeploymentLog, KeepsTheNewestLogs) {
  TempDir tmp;
  agent::DeploymentLog log(tmp / "logs", 1u << 20, 3);
  for (int i = 1; i <= 6; ++i) {
    log.begin("dep-" + std::to_string(i), true);
    log.line('I', "x");
    fs::last_write_time(tmp / ("logs/dep-" + std::to_string(i) + ".log"),
                        fs::file_time_type::clock::now() - std::chrono::hours(10 - i));
  }
  EXPECT_FALSE(log.read("dep-3"));
  EXPECT_TRUE(log.read("dep-4"));
  EXPECT_TRUE(log.read("dep-6"));
}

}  // namespace
}  // namespace tern::test
