// The update module protocol's driver (agent/update/update_module.hpp), sans-io: a scripted module
// answers each state, and the test checks the states called, in order, what is saved, and the
// outcome. The real modules run in module_daemon_test.cpp.
#include "agent/update/update_module.hpp"

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>
#include <vector>

namespace tern::agent {
namespace {

/// A module that logs every call, prints `answers[state]` and fails the states in `failing`.
struct ScriptedModule {
  std::map<std::string, std::string> answers;
  std::set<std::string> failing;
  std::vector<std::string> calls;
  std::vector<ModuleStep> saved;

  ModuleCall call() {
    return [this](std::string_view state) -> Result<std::string> {
      calls.emplace_back(state);
      if (failing.contains(std::string(state))) return fail(Errc::io, std::string(state) + " failed with exit status 1");
      auto it = answers.find(std::string(state));
      return it == answers.end() ? std::string() : it->second;
    };
  }
  SaveRecord save() {
    return [this](const ModuleRecord& r) -> Result<void> {
      saved.push_back(r.step);
      return {};
    };
  }
};

using Calls = std::vector<std::string>;

TEST(UpdateModuleTest, AModuleThatNeedsNoRebootCommitsWithoutOne) {
  ScriptedModule m{.answers = {{"NeedsArtifactReboot", "No\n"}, {"SupportsRollback", "Yes\n"}}};
  ModuleRecord rec{.type = "single-file"};
  auto out = drive(rec, m.call(), m.save());
  ASSERT_TRUE(out) << out.error().message();
  EXPECT_TRUE(out->finished);
  EXPECT_FALSE(out->reboot);
  EXPECT_TRUE(rec.success);
  EXPECT_EQ(m.calls, (Calls{"ArtifactInstall", "NeedsArtifactReboot", "SupportsRollback", "ArtifactCommit", "Cleanup"}));
  EXPECT_EQ(m.saved, (std::vector<ModuleStep>{ModuleStep::commit, ModuleStep::cleanup, ModuleStep::done}));
}

TEST(UpdateModuleTest, AFailingInstallRollsBackWhenTheModuleSupportsIt) {
  ScriptedModule m{.answers = {{"SupportsRollback", "Yes"}}, .failing = {"ArtifactInstall"}};
  ModuleRecord rec{.type = "directory"};
  auto out = drive(rec, m.call(), m.save());
  ASSERT_TRUE(out);
  EXPECT_TRUE(out->finished);
  EXPECT_FALSE(rec.success);
  EXPECT_NE(rec.error.find("ArtifactInstall failed"), std::string::npos) << rec.error;
  EXPECT_EQ(m.calls, (Calls{"ArtifactInstall", "SupportsRollback", "ArtifactRollback", "ArtifactFailure", "Cleanup"}));
}

TEST(UpdateModuleTest, AFailingInstallWithoutRollbackSupportReportsFailure) {
  // Nothing printed for SupportsRollback means No (the protocol's default).
  ScriptedModule m{.failing = {"ArtifactInstall"}};
  ModuleRecord rec{.type = "script"};
  auto out = drive(rec, m.call(), m.save());
  ASSERT_TRUE(out);
  EXPECT_FALSE(rec.success);
  EXPECT_EQ(m.calls, (Calls{"ArtifactInstall", "SupportsRollback", "ArtifactFailure", "Cleanup"}));
}

TEST(UpdateModuleTest, AutomaticRebootStopsForTheRebootAndGoesOnAtVerifyAfterIt) {
  ScriptedModule m{.answers = {{"NeedsArtifactReboot", "Automatic"}, {"SupportsRollback", "Yes"}}};
  ModuleRecord rec{.type = "rootfs-v2"};
  auto out = drive(rec, m.call(), m.save());
  ASSERT_TRUE(out);
  EXPECT_TRUE(out->reboot);
  EXPECT_FALSE(out->finished);
  EXPECT_EQ(rec.step, ModuleStep::reboot);
  EXPECT_EQ(m.calls, (Calls{"ArtifactInstall", "NeedsArtifactReboot", "SupportsRollback"}));
  // The restart: the record as saved, then where the protocol goes on.
  m.calls.clear();
  rec.step = resume_step(rec);
  out = drive(rec, m.call(), m.save());
  ASSERT_TRUE(out);
  EXPECT_TRUE(out->finished);
  EXPECT_TRUE(rec.success);
  EXPECT_EQ(m.calls, (Calls{"ArtifactVerifyReboot", "ArtifactCommit", "Cleanup"}));
}

TEST(UpdateModuleTest, YesRebootCallsArtifactRebootThenVerifies) {
  ScriptedModule m{.answers = {{"NeedsArtifactReboot", "Yes"}}};
  ModuleRecord rec{.type = "peripheral"};
  auto out = drive(rec, m.call(), m.save());
  ASSERT_TRUE(out);
  EXPECT_TRUE(out->finished);
  EXPECT_TRUE(rec.success);
  EXPECT_EQ(m.calls, (Calls{"ArtifactInstall", "NeedsArtifactReboot", "SupportsRollback", "ArtifactReboot",
                            "ArtifactVerifyReboot", "ArtifactCommit", "Cleanup"}));
}

TEST(UpdateModuleTest, AFailedVerifyAfterARebootRollsBackWithARollbackReboot) {
  ScriptedModule m{.answers = {{"NeedsArtifactReboot", "Automatic"}, {"SupportsRollback", "Yes"}},
                   .failing = {"ArtifactVerifyReboot"}};
  ModuleRecord rec{.type = "rootfs-v2", .step = ModuleStep::reboot};
  rec.step = resume_step(rec);
  rec.reboot = RebootNeed::automatic;
  auto out = drive(rec, m.call(), m.save());
  ASSERT_TRUE(out);
  EXPECT_TRUE(out->reboot) << "Tern reboots for an Automatic module's rollback";
  EXPECT_EQ(rec.step, ModuleStep::rollback_reboot);
  EXPECT_EQ(m.calls, (Calls{"ArtifactVerifyReboot", "SupportsRollback", "ArtifactRollback"}));
  m.calls.clear();
  rec.step = resume_step(rec);
  out = drive(rec, m.call(), m.save());
  ASSERT_TRUE(out);
  EXPECT_TRUE(out->finished);
  EXPECT_FALSE(rec.success);
  EXPECT_EQ(m.calls, (Calls{"ArtifactVerifyRollbackReboot", "ArtifactFailure", "Cleanup"}));
}

TEST(UpdateModuleTest, AYesModuleRollsBackThroughItsOwnRollbackReboot) {
  ScriptedModule m{.answers = {{"NeedsArtifactReboot", "Yes"}, {"SupportsRollback", "Yes"}},
                   .failing = {"ArtifactCommit"}};
  ModuleRecord rec{.type = "peripheral"};
  auto out = drive(rec, m.call(), m.save());
  ASSERT_TRUE(out);
  EXPECT_TRUE(out->finished);
  EXPECT_FALSE(rec.success);
  EXPECT_EQ(m.calls, (Calls{"ArtifactInstall", "NeedsArtifactReboot", "SupportsRollback", "ArtifactReboot",
                            "ArtifactVerifyReboot", "ArtifactCommit", "ArtifactRollback", "ArtifactRollbackReboot",
                            "ArtifactVerifyRollbackReboot", "ArtifactFailure", "Cleanup"}));
}

TEST(UpdateModuleTest, AnAnswerOutsideTheProtocolFailsTheInstall) {
  ScriptedModule m{.answers = {{"NeedsArtifactReboot", "Maybe"}, {"SupportsRollback", "Yes"}}};
  ModuleRecord rec{.type = "odd"};
  auto out = drive(rec, m.call(), m.save());
  ASSERT_TRUE(out);
  EXPECT_FALSE(rec.success);
  EXPECT_NE(rec.error.find("'Maybe'"), std::string::npos) << rec.error;
  EXPECT_EQ(m.calls, (Calls{"ArtifactInstall", "NeedsArtifactReboot", "SupportsRollback", "ArtifactRollback",
                            "ArtifactFailure", "Cleanup"}));
}

TEST(UpdateModuleTest, ARestartDuringArtifactInstallCountsAsAFailedInstall) {
  ScriptedModule m{.answers = {{"SupportsRollback", "Yes"}}};
  ModuleRecord rec{.type = "directory", .step = ModuleStep::install};
  rec.step = resume_step(rec);
  auto out = drive(rec, m.call(), m.save());
  ASSERT_TRUE(out);
  EXPECT_FALSE(rec.success);
  EXPECT_EQ(rec.error, "the agent stopped during ArtifactInstall");
  EXPECT_EQ(m.calls, (Calls{"SupportsRollback", "ArtifactRollback", "ArtifactFailure", "Cleanup"}));
}

TEST(UpdateModuleTest, AFailedSaveStopsTheDriver) {
  ScriptedModule m;
  ModuleRecord rec{.type = "x"};
  auto out = drive(rec, m.call(), [](const ModuleRecord&) -> Result<void> { return fail(Errc::io, "disk full"); });
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().message(), "disk full");
}

TEST(UpdateModuleTest, ParsesTheProtocolsAnswers) {
  EXPECT_EQ(parse_reboot_need("").value(), RebootNeed::no);
  EXPECT_EQ(parse_reboot_need("Automatic\n").value(), RebootNeed::automatic);
  EXPECT_EQ(parse_reboot_need("Yes").value(), RebootNeed::yes);
  EXPECT_FALSE(parse_reboot_need("yes"));
  EXPECT_TRUE(parse_supports_rollback("Yes\n").value());
  EXPECT_FALSE(parse_supports_rollback("").value());
  EXPECT_FALSE(parse_supports_rollback("AutomaticDualRootfs"));
}

}  // namespace
}  // namespace tern::agent
