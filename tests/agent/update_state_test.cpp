// The update state machine's table, the state store and the provides rules, without I/O to devices.
#include "agent/agent_config.hpp"
#include "agent/state.hpp"
#include "agent/update/state_machine.hpp"
#include "tests/support/testenv.hpp"

#include <gtest/gtest.h>

namespace tern::test {
namespace {
using agent::Action;
using agent::InstallState;
using agent::Phase;

InstallState in(Phase p) {
  InstallState s;
  s.phase = p;
  s.target_part = 3;
  s.previous_part = 2;
  s.artifact_name = "new";
  return s;
}
const std::map<std::string, std::string> trial{{"mender_boot_part", "3"}, {"upgrade_available", "1"}};
const std::map<std::string, std::string> rolled{{"mender_boot_part", "2"}, {"upgrade_available", "0"}};
const std::map<std::string, std::string> committed{{"mender_boot_part", "3"}, {"upgrade_available", "0"}};

TEST(StateMachine, EveryPersistedPhaseHasADecision) {
  EXPECT_EQ(agent::decide(in(Phase::idle), 2, rolled).action, Action::none);
  EXPECT_EQ(agent::decide(in(Phase::done), 3, committed).action, Action::none);
  EXPECT_EQ(agent::decide(in(Phase::downloading), 2, rolled).action, Action::interrupted);
  EXPECT_EQ(agent::decide(in(Phase::switching), 2, rolled).action, Action::store_switch);
  EXPECT_EQ(agent::decide(in(Phase::switching), 3, trial).action, Action::verify);
  EXPECT_EQ(agent::decide(in(Phase::switched), 2, trial).action, Action::reboot);
  EXPECT_EQ(agent::decide(in(Phase::switched), 3, trial).action, Action::verify);
  EXPECT_EQ(agent::decide(in(Phase::switched), 3, committed).action, Action::finish_commit);
  EXPECT_EQ(agent::decide(in(Phase::committing), 3, trial).action, Action::finish_commit);
  EXPECT_EQ(agent::decide(in(Phase::rolling_back), 3, trial).action, Action::store_rollback);
}

TEST(StateMachine, ForwardTransitionsFollowTheTable) {
  using agent::Event;
  auto to = [](Phase from, Event e) {
    auto r = agent::advance(from, e);
    EXPECT_TRUE(r) << to_string(from) << " on " << to_string(e);
    return r ? *r : Phase::idle;
  };
  // The path of a successful install, and of a failed health check.
  EXPECT_EQ(to(Phase::idle, Event::start), Phase::downloading);
  EXPECT_EQ(to(Phase::done, Event::start), Phase::downloading);
  EXPECT_EQ(to(Phase::downloading, Event::start), Phase::downloading);
  EXPECT_EQ(to(Phase::downloading, Event::payload_written), Phase::switching);
  EXPECT_EQ(to(Phase::switching, Event::switch_stored), Phase::switched);
  EXPECT_EQ(to(Phase::switched, Event::healthy), Phase::committing);
  EXPECT_EQ(to(Phase::committing, Event::commit_stored), Phase::done);
  EXPECT_EQ(to(Phase::switched, Event::unhealthy), Phase::rolling_back);
  EXPECT_EQ(to(Phase::rolling_back, Event::rolled_back), Phase::done);
  EXPECT_EQ(to(Phase::downloading, Event::already_installed), Phase::done);
  for (Phase p : {Phase::downloading, Phase::switching, Phase::switched, Phase::committing, Phase::rolling_back})
    EXPECT_EQ(to(p, Event::failed), Phase::done) << to_string(p);
  // What the table does not have is refused, never silently applied.
  for (auto [p, e] : std::vector<std::pair<Phase, Event>>{{Phase::idle, Event::payload_written},
                                                         {Phase::downloading, Event::switch_stored},
                                                         {Phase::done, Event::healthy},
                                                         {Phase::idle, Event::failed},
                                                         {Phase::committing, Event::unhealthy},
                                                         {Phase::switching, Event::start}}) {
    auto r = agent::advance(p, e);
    ASSERT_FALSE(r) << to_string(p) << " on " << to_string(e);
    EXPECT_NE(r.error().message().find("no transition"), std::string::npos);
  }
}

TEST(StateMachine, BootloaderRollbackIsAFailureNamingThePartitions) {
  auto d = agent::decide(in(Phase::switched), 2, rolled);
  EXPECT_EQ(d.action, Action::fail);
  EXPECT_NE(d.error.find("partition 3 did not come up"), std::string::npos) << d.error;
  auto c = agent::decide(in(Phase::committing), 2, rolled);
  EXPECT_EQ(c.action, Action::fail);
  auto s = in(Phase::rolling_back);
  s.error = "health check 'x' failed with status 3";
  auto r = agent::decide(s, 2, rolled);
  EXPECT_EQ(r.action, Action::fail);
  EXPECT_EQ(r.error, s.error);
  auto odd = agent::decide(in(Phase::switched), 7, trial);
  EXPECT_EQ(odd.action, Action::fail);
  EXPECT_NE(odd.error.find("neither"), std::string::npos);
}

TEST(StateStore, RoundTripsAtomicallyAndCountsSequences) {
  TempDir dir;
  auto store = agent::StateStore::open(dir / "state");
  ASSERT_TRUE(store);
  auto empty = store->load_install();
  ASSERT_TRUE(empty);
  EXPECT_EQ(empty->phase, Phase::idle);
  auto s = in(Phase::switched);
  s.job.deployment_id = "dep-1";
  s.job.artifact_name = "new";
  s.job.source = "https://example.com/new.mender";
  s.job.size = 1234;
  s.job.attempt = 2;
  s.provides = {{"rootfs-image.version", "2"}};
  s.clears_provides = {"rootfs-image.*"};
  s.job.sha256 = std::string(64, 'a');
  s.bytes_fetched = 123456;
  s.bytes_reused = 7890123;
  ASSERT_TRUE(store->save_install(s));
  auto back = store->load_install();
  ASSERT_TRUE(back);
  EXPECT_EQ(back->phase, Phase::switched);
  EXPECT_EQ(back->job, s.job) << "the job goes into the state file and comes back whole";
  EXPECT_EQ(back->provides, s.provides);
  EXPECT_EQ(back->clears_provides, s.clears_provides);
  EXPECT_EQ(back->bytes_fetched, 123456u) << "kept for the final status, sent after the reboot";
  EXPECT_EQ(back->bytes_reused, 7890123u);
  EXPECT_FALSE(fs::exists(dir / "state/install.json.tmp"));

  auto a = store->next_seq(), b = store->next_seq();
  ASSERT_TRUE(a && b);
  EXPECT_LT(*a, *b);
  auto again = agent::StateStore::open(dir / "state");
  EXPECT_GT(*again->next_seq(), *b) << "sequence numbers survive a restart";
  // Numbers come from memory: only a new reservation writes the file, and it is ahead of them.
  const auto on_disk = read_file(dir / "state/seq");
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(store->next_seq());
  EXPECT_EQ(read_file(dir / "state/seq"), on_disk) << "no write per status";
  auto last = store->next_seq();
  ASSERT_TRUE(last);
  EXPECT_GT(std::stoull(on_disk), *last) << "the file holds the end of the reservation";
  const auto reserved = std::stoull(read_file(dir / "state/seq"));
  auto third = agent::StateStore::open(dir / "state");
  auto after_restart = third->next_seq();
  ASSERT_TRUE(after_restart);
  EXPECT_GT(*after_restart, reserved) << "a restart starts past every reservation";

  for (int i = 0; i < 70; ++i) ASSERT_TRUE(store->add_finished_deployment("d" + std::to_string(i)));
  auto fin = store->finished_deployments();
  ASSERT_TRUE(fin);
  EXPECT_EQ(fin->size(), 64u);
  EXPECT_EQ(fin->back(), "d69");

  write_file(dir / "state/install.json", "{\"phase\":\"exploded\"}");
  auto bad = store->load_install();
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("exploded"), std::string::npos) << bad.error().message();
}

TEST(Provides, ClearsFollowMenderRules) {
  std::map<std::string, std::string> old{{"rootfs-image.version", "1"},
                                         {"rootfs-image.checksum", "aa"},
                                         {"data-partition.x", "keep"}};
  std::map<std::string, std::string> fresh{{"rootfs-image.version", "2"}, {"artifact_name", "n"}};
  auto merged = agent::merge_provides(old, fresh, {"rootfs-image.*"});
  EXPECT_EQ(merged, (std::map<std::string, std::string>{{"rootfs-image.version", "2"}, {"data-partition.x", "keep"}}));
  EXPECT_EQ(agent::merge_provides(old, fresh, {}), (std::map<std::string, std::string>{{"rootfs-image.version", "2"}}));
  EXPECT_TRUE(agent::glob_match("a*b*c", "aXXbYc"));
  EXPECT_FALSE(agent::glob_match("a*b", "aXXbc"));
  EXPECT_TRUE(agent::glob_match("*", ""));
}

TEST(AgentConfig, ErrorsNameTheKey) {
  auto missing = agent::AgentConfig::parse(R"({"RootfsPartA":"/dev/a","RootfsPartB":"/dev/b"})", "agent.conf");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message().find("DeviceType"), std::string::npos);
  auto wrong = agent::AgentConfig::parse(R"({"DeviceType":"x","RootfsPartA":"a","RootfsPartB":"b","KeepaliveSeconds":"x"})",
                                         "agent.conf");
  ASSERT_FALSE(wrong);
  EXPECT_NE(wrong.error().message().find("KeepaliveSeconds"), std::string::npos) << wrong.error().message();
  auto boot = agent::AgentConfig::parse(R"({"DeviceType":"x","RootfsPartA":"a","RootfsPartB":"b","Bootloader":"lilo"})",
                                        "agent.conf");
  ASSERT_FALSE(boot);
  EXPECT_NE(boot.error().message().find("lilo"), std::string::npos);
  auto ok = agent::AgentConfig::parse(R"({"DeviceType":"x","RootfsPartA":"a","RootfsPartB":"b","InstallAttempts":5})",
                                      "agent.conf");
  ASSERT_TRUE(ok) << ok.error().message();
  EXPECT_EQ(ok->install_attempts, 5u);
  EXPECT_EQ(ok->reboot_command, "reboot");
}

}  // namespace
}  // namespace tern::test
