// The bridge's store (schema migrations, transactions) and its sans-io fleet logic (ingest
// idempotence, commands, phases, retries, abort), without sockets: messages in, messages out.
#include <gtest/gtest.h>

#include "broker-bridge/catalog.hpp"
#include "broker-bridge/fleet.hpp"
#include "broker-bridge/store.hpp"
#include "common/json.hpp"
#include "common/protocol.hpp"
#include "tests/bridge/count_triggers.hpp"
#include "tests/bridge/test_artifact.hpp"
#include "tests/bridge/test_store.hpp"
#include "tests/support/testenv.hpp"

#include <boost/json/parse.hpp>
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <latch>
#include <numeric>
#include <set>
#include <thread>
#include <tuple>

namespace tern::test {
namespace {

using bridge::Fleet;
using bridge::Store;

// Makes a small artifact "name" for device type "qemu" in `dir`, signed if a key is given.
void make_artifact(const fs::path& dir, const std::string& name, std::optional<std::string> key = std::nullopt) {
  write_test_artifact(dir, name, std::string(4096, 'x') + name, std::move(key));
}

mqtt::Message msg(std::string topic, std::string payload, std::string response = "") {
  mqtt::Message m;
  m.topic = std::move(topic);
  m.payload = std::move(payload);
  m.correlation_data = response.empty() ? "" : "corr";
  m.response_topic = std::move(response);
  return m;
}

std::string status(const std::string& dep, const std::string& word, std::uint64_t seq, std::string error = "") {
  protocol::StatusEvent e;
  e.deployment_id = dep;
  e.status = protocol::parse_status_word(word).value();
  e.seq = seq;
  e.error = std::move(error);
  return protocol::serialize(e);
}

// The last message on `topic` in `out`, if any.
std::optional<mqtt::Message> last_on(const bridge::Outgoing& out, const std::string& topic) {
  std::optional<mqtt::Message> m;
  for (auto& o : out)
    if (o.topic == topic) m = o;
  return m;
}

struct FleetEnv {
  TempDir dir{"tern-fleet"};
  std::string where;  // the store: a file, or a PostgreSQL URI
  std::unique_ptr<Store> store;
  std::unique_ptr<Fleet> fleet;
  std::int64_t now = 1000;
  bridge::Outgoing published;  // everything, in order

  FleetEnv() {
    fs::create_directories(dir / "artifacts");
    make_artifact(dir / "artifacts", "release-1");
    where = test_store(dir.path());
    store = Store::open(where).value();
    bridge::FleetOptions o;
    o.artifact_base_url = "https://127.0.0.1:1/artifacts";
    o.artifact_dir = dir / "artifacts";
    fleet = std::make_unique<Fleet>(*store, o);
    EXPECT_TRUE(fleet->rescan_artifacts());
  }

  bridge::Outgoing handle(const mqtt::Message& m) {
    auto out = fleet->handle(m, now);
    published.insert(published.end(), out.begin(), out.end());
    return out;
  }
  bridge::Outgoing tick() {
    auto out = fleet->tick(now);
    published.insert(published.end(), out.begin(), out.end());
    return out;
  }
  // Sends a command with a response topic; returns the parsed reply's text.
  std::string command(const std::string& topic, const std::string& body) {
    auto out = handle(msg(topic, body, "tern/fleet/replies/t"));
    auto reply = last_on(out, "tern/fleet/replies/t");
    EXPECT_TRUE(reply) << "no reply to " << topic;
    if (!reply) return "";
    EXPECT_EQ(reply->correlation_data, "corr");
    return reply->payload;
  }
  void accept(const std::string& id) {
    auto r = command("tern/fleet/devices/" + id + "/accept", "");
    EXPECT_NE(r.find("\"ok\":true"), std::string::npos) << r;
  }
  std::string retained_deployment(const std::string& device) {
    auto m = last_on(published, protocol::topics::deployment(device));
    return m ? m->payload : "<none>";
  }
  bridge::DeviceDeploymentRecord row(const std::string& dep, const std::string& dev) {
    auto r = store->device_deployment(dep, dev).value();
    EXPECT_TRUE(r);
    return r ? *r : bridge::DeviceDeploymentRecord{};
  }
  bridge::DeploymentRecord deployment(const std::string& id) {
    auto r = store->deployment(id).value();
    EXPECT_TRUE(r);
    return r ? *r : bridge::DeploymentRecord{};
  }
};

TEST(BridgeStore, FreshFileIsMigratedAndReopens) {
  TempDir dir;
  const auto where = test_store(dir.path());
  {
    auto s = Store::open(where);
    ASSERT_TRUE(s) << s.error().message();
    EXPECT_EQ((*s)->version().value(), bridge::schema_version);
    bridge::DeviceRecord d;
    d.id = "device-1";
    d.admission = "accepted";
    ASSERT_TRUE((*s)->put_device(d));
  }
  auto s = Store::open(where);
  ASSERT_TRUE(s) << s.error().message();
  EXPECT_EQ((*s)->version().value(), bridge::schema_version);
  auto d = (*s)->device("device-1").value();
  ASSERT_TRUE(d);
  EXPECT_EQ(d->admission, "accepted");
}

TEST(BridgeStore, RefusesASchemaFromANewerBridge) {
  TempDir dir;
  const auto where = test_store(dir.path());
  { ASSERT_TRUE(Store::open(where)); }
  store_exec(where, "UPDATE schema_version SET version = 99");
  auto s = Store::open(where);
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message().find("newer"), std::string::npos) << s.error().message();
}

TEST(BridgeStore, MigrationFiveCountsTheRowsAlreadyThere) {
  TempDir dir;
  const auto where = test_store(dir.path());
  { ASSERT_TRUE(Store::open(where)); }
  // Back to schema 4 (no counters, no triggers), with rows written meanwhile.
  const bool pg = where.starts_with("postgresql");
  store_exec(where, pg ? "DROP TRIGGER device_deployments_count_insert ON device_deployments; "
                         "DROP TRIGGER device_deployments_count_update ON device_deployments; "
                         "DROP TRIGGER device_deployments_count_delete ON device_deployments; "
                         "DROP FUNCTION tern_count_device_deployment_rows()"
                       : "DROP TRIGGER device_deployments_count_insert; DROP TRIGGER device_deployments_count_update; "
                         "DROP TRIGGER device_deployments_count_delete");
  store_exec(where,
             "DROP TABLE deployment_counts; UPDATE schema_version SET version = 4; "
             "INSERT INTO deployments (id, artifact, targets, phases, pause_seconds, threshold, on_threshold, retries, "
             "state, phase, created) VALUES ('d1', 'a', '{}', '[50,100]', 0, 100, 'pause', 0, 'running', 0, 1); "
             "INSERT INTO device_deployments (deployment, device, phase, status) VALUES "
             "('d1', 'x1', 0, 'success'), ('d1', 'x2', 0, 'success'), ('d1', 'x3', 0, 'failure'), ('d1', 'x4', 1, 'pending')");
  auto s = Store::open(where);
  ASSERT_TRUE(s) << s.error().message();
  EXPECT_EQ((*s)->version().value(), bridge::schema_version);
  std::vector<std::tuple<int, std::string, std::uint64_t>> got;
  for (auto& c : (*s)->deployment_counts("d1").value()) got.emplace_back(c.phase, c.status, c.n);
  const std::vector<std::tuple<int, std::string, std::uint64_t>> want{
      {0, "failure", 1}, {0, "success", 2}, {1, "pending", 1}};
  EXPECT_EQ(got, want);
  // And the triggers are back: a row leaving "pending" moves its count.
  auto row = (*s)->device_deployment("d1", "x4").value().value();
  row.status = "sent";
  ASSERT_TRUE((*s)->put_device_deployment(row));
  got.clear();
  for (auto& c : (*s)->deployment_counts("d1").value()) got.emplace_back(c.phase, c.status, c.n);
  EXPECT_EQ(got, (std::vector<std::tuple<int, std::string, std::uint64_t>>{
                     {0, "failure", 1}, {0, "success", 2}, {1, "sent", 1}}));
}

TEST(BridgeStore, FailedTransactionChangesNothing) {
  TempDir dir;
  auto s = Store::open(test_store(dir.path())).value();
  auto r = s->transaction([&]() -> Result<void> {
    bridge::DeviceRecord d;
    d.id = "device-1";
    if (auto w = s->put_device(d); !w) return w;
    return fail(Errc::invalid_argument, "changed my mind");
  });
  EXPECT_FALSE(r);
  EXPECT_FALSE(s->device("device-1").value());
  EXPECT_TRUE(s->devices().value().empty());
}

// Multi-row statements are cut into power-of-two sizes, so a few prepared statements serve batches
// of any size, and no row is lost or written twice at a chunk's edge.
TEST(BridgeStore, BatchesOfEverySizeReuseAFewPreparedStatements) {
  TempDir dir;
  auto s = Store::open(test_store(dir.path())).value();
  std::vector<std::size_t> sizes;
  for (std::size_t n = 1; n <= 40; ++n) sizes.push_back(n);
  for (std::size_t n : {63, 64, 65, 127, 128, 129, 255, 256, 257, 300, 513}) sizes.push_back(n);
  for (std::size_t n : sizes) {
    std::vector<bridge::DeviceRecord> batch(n);
    std::vector<std::string> ids;
    for (std::size_t i = 0; i < n; ++i) {
      batch[i].id = "d" + std::to_string(n) + "-" + std::to_string(i);
      batch[i].group = "g" + std::to_string(n);
      ids.push_back(batch[i].id);
    }
    ASSERT_TRUE(s->put_devices(batch));
    for (auto& d : batch) d.admission = "accepted";
    auto again = s->put_devices(batch);  // an upsert of every row, the same chunks
    ASSERT_TRUE(again) << n << ": " << again.error().message();
    auto read = s->devices_in(ids);
    ASSERT_TRUE(read) << read.error().message();
    ASSERT_EQ(read->size(), n);
    std::set<std::string> seen;
    for (auto& d : *read) {
      EXPECT_EQ(d.admission, "accepted") << d.id;
      EXPECT_EQ(d.group, "g" + std::to_string(n)) << d.id;
      seen.insert(d.id);
    }
    EXPECT_EQ(seen.size(), n);
  }
  EXPECT_EQ(s->devices().value().size(), std::accumulate(sizes.begin(), sizes.end(), std::size_t{0}));
  // Inserts and reads in sizes 1, 2, 4 ... 256, and the few single statements: not one per size.
  EXPECT_LE(s->prepared_statements(), 2u * 9u + 8u);
}

// A PostgreSQL session that ends between statements (a restarted server, a killed backend) is
// replaced before the next one, and the statements the old session had prepared are prepared again.
TEST(BridgeStore, AReplacedPostgresSessionPreparesItsStatementsAgain) {
  if (!test_store_is_postgres()) GTEST_SKIP() << "PostgreSQL only: runs as pg.BridgeStore.*";
  TempDir dir;
  const auto where = test_store(dir.path());
  auto s = Store::open(where).value();
  bridge::DeviceRecord d;
  d.id = "device-1";
  ASSERT_TRUE(s->put_device(d));
  ASSERT_TRUE(s->device("device-1").value());
  const auto before = s->prepared_statements();
  EXPECT_GE(before, 2u);
  store_exec(where, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()");
  // The first statement meets the ended session and fails; the next runs on a new one.
  auto lost = s->device("device-1");
  ASSERT_FALSE(lost);
  EXPECT_NE(lost.error().message().find("reading device"), std::string::npos) << lost.error().message();
  auto found = s->device("device-1");
  ASSERT_TRUE(found) << found.error().message();
  EXPECT_TRUE(found->has_value());
  d.admission = "accepted";
  auto put = s->put_device(d);
  ASSERT_TRUE(put) << put.error().message();
  EXPECT_EQ(s->device("device-1").value()->admission, "accepted");
  EXPECT_EQ(s->prepared_statements(), 2u);  // the new session's: the two statements used since
}

TEST(BridgeFleet, UnknownDeviceAppearsPendingAndGetsNothing) {
  FleetEnv env;
  env.handle(msg("tern/devices/device-9/inventory", R"({"device_type":"qemu","artifact_name":"old"})"));
  auto d = env.store->device("device-9").value();
  ASSERT_TRUE(d);
  EXPECT_EQ(d->admission, "pending");
  EXPECT_EQ(d->device_type, "qemu");
  auto reply = env.command("tern/fleet/deployments/create", R"({"artifact_name":"release-1","devices":["device-9"]})");
  EXPECT_NE(reply.find("\"ok\":false"), std::string::npos) << reply;
  EXPECT_NE(reply.find("not accepted (pending)"), std::string::npos) << reply;
  EXPECT_EQ(env.retained_deployment("device-9"), "<none>");
  EXPECT_TRUE(env.store->deployments().value().empty());
}

TEST(BridgeFleet, CreateSendsDeploymentsAndSummary) {
  FleetEnv env;
  for (auto id : {"device-1", "device-2", "device-3"}) env.accept(id);
  auto reply = env.command("tern/fleet/deployments/create",
                           R"({"id":"d1","artifact_name":"release-1","devices":["device-1","device-2","device-3"]})");
  EXPECT_NE(reply.find("\"ok\":true"), std::string::npos) << reply;
  auto art = env.store->artifact("release-1").value();
  ASSERT_TRUE(art);
  for (auto id : {"device-1", "device-2", "device-3"}) {
    auto dep = protocol::parse_deployment(env.retained_deployment(id));
    ASSERT_TRUE(dep) << id;
    EXPECT_EQ(dep->deployment_id, "d1");
    EXPECT_EQ(dep->url, "https://127.0.0.1:1/artifacts/release-1.mender");
    EXPECT_EQ(dep->sha256, art->sha256);
    EXPECT_EQ(dep->size, art->size);
  }
  auto summary = last_on(env.published, "tern/fleet/deployments/d1");
  ASSERT_TRUE(summary);
  EXPECT_NE(summary->payload.find("\"state\":\"running\""), std::string::npos) << summary->payload;
  EXPECT_NE(summary->payload.find("\"total\":3"), std::string::npos) << summary->payload;
}

TEST(BridgeFleet, DuplicateAndOlderStatusesDoNotCountTwice) {
  FleetEnv env;
  env.accept("device-1");
  env.accept("device-2");
  env.command("tern/fleet/deployments/create", R"({"id":"d1","artifact_name":"release-1","all":true})");
  const std::string topic = "tern/devices/device-1/status";
  env.handle(msg(topic, status("d1", "downloading", 5)));
  env.handle(msg(topic, status("d1", "downloading", 5)));  // QoS 1 redelivery
  env.handle(msg(topic, status("d1", "installing", 7)));
  env.handle(msg(topic, status("d1", "downloading", 6)));  // late, older
  EXPECT_EQ(env.row("d1", "device-1").status, "installing");
  EXPECT_EQ(env.row("d1", "device-1").last_seq, 7u);
  EXPECT_EQ(env.store->history("d1", "device-1").value().size(), 2u);
  env.handle(msg(topic, status("d1", "success", 9)));
  env.handle(msg(topic, status("d1", "success", 9)));
  env.handle(msg(topic, status("d1", "failure", 10)));  // after a final status: ignored
  EXPECT_EQ(env.row("d1", "device-1").status, "success");
  auto counts = env.store->status_counts("d1").value();
  EXPECT_EQ(counts["success"], 1u);
  EXPECT_EQ(counts["sent"], 1u);
  EXPECT_EQ(env.store->history("d1", "device-1").value().size(), 3u);
  // Final: the retained deployment is cleared, and the device record shows the artifact.
  EXPECT_EQ(env.retained_deployment("device-1"), "");
  EXPECT_EQ(env.store->device("device-1").value()->artifact_name, "release-1");
}

TEST(BridgeFleet, TheSummaryShowsWhatAdaptiveInstallsSaved) {
  FleetEnv env;
  env.accept("device-1");
  env.accept("device-2");
  env.command("tern/fleet/deployments/create", R"({"id":"d1","artifact_name":"release-1","all":true})");
  auto transfer = [&](const std::string& dev, std::uint64_t seq, std::uint64_t fetched, std::uint64_t reused) {
    protocol::StatusEvent e;
    e.deployment_id = "d1";
    e.status = protocol::Status::installing;
    e.bytes = e.total = 1000000;
    e.seq = seq;
    e.bytes_fetched = fetched;
    e.bytes_reused = reused;
    env.handle(msg("tern/devices/" + dev + "/status", protocol::serialize(e)));
  };
  auto summary = [&] {
    env.tick();
    auto m = last_on(env.published, "tern/fleet/deployments/d1");
    EXPECT_TRUE(m);
    return boost::json::parse(m ? m->payload : "{}").as_object();
  };
  EXPECT_FALSE(summary().contains("transfer")) << "no device reported figures yet";
  transfer("device-1", 5, 50000, 3000000);
  transfer("device-1", 6, 80000, 3500000);  // the newest figures replace the device's earlier ones
  transfer("device-2", 5, 1000000, 0);      // a full download saves nothing
  auto t = summary().at("transfer").as_object();
  EXPECT_EQ(t.at("devices").as_int64(), 2);
  EXPECT_EQ(t.at("bytes_fetched").as_int64(), 1080000);
  EXPECT_EQ(t.at("bytes_reused").as_int64(), 3500000);
  EXPECT_EQ(t.at("bytes_saved").as_int64(), 920000);
}

TEST(BridgeFleet, MalformedMessagesAreDropped) {
  FleetEnv env;
  env.accept("device-1");
  auto out = env.handle(msg("tern/devices/device-1/status", "{not json"));
  EXPECT_TRUE(out.empty());
  out = env.handle(msg("tern/devices/device-1/presence", R"({"state":"sideways"})"));
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(env.store->device("device-1").value()->presence, "unknown");
}

TEST(BridgeFleet, PresenceIsOrderedBySeq) {
  FleetEnv env;
  env.handle(msg("tern/devices/device-1/presence", R"({"state":"online","seq":5})"));
  env.handle(msg("tern/devices/device-1/presence", R"({"state":"offline","seq":4})"));  // a late will
  EXPECT_EQ(env.store->device("device-1").value()->presence, "online");
  env.handle(msg("tern/devices/device-1/presence", R"({"state":"offline","seq":5})"));  // its own will
  EXPECT_EQ(env.store->device("device-1").value()->presence, "offline");
  env.handle(msg("tern/devices/device-1/presence", R"({"state":"online","seq":6})"));
  EXPECT_EQ(env.store->device("device-1").value()->presence, "online");
}

TEST(BridgeFleet, PhaseOverThresholdPauses) {
  FleetEnv env;
  for (auto id : {"device-1", "device-2", "device-3"}) env.accept(id);
  auto reply = env.command("tern/fleet/deployments/create",
                           R"({"id":"d1","artifact_name":"release-1","all":true,"phases":[30,100],"failure_threshold":0})");
  ASSERT_NE(reply.find("\"ok\":true"), std::string::npos) << reply;
  EXPECT_NE(env.retained_deployment("device-1"), "<none>");
  EXPECT_EQ(env.retained_deployment("device-2"), "<none>");  // second phase
  env.handle(msg("tern/devices/device-1/status", status("d1", "failure", 1, "disk full")));
  env.tick();
  EXPECT_EQ(env.deployment("d1").state, "paused");
  EXPECT_EQ(env.retained_deployment("device-2"), "<none>");
  auto summary = last_on(env.published, "tern/fleet/deployments/d1");
  ASSERT_TRUE(summary);
  EXPECT_NE(summary->payload.find("\"state\":\"paused\""), std::string::npos) << summary->payload;
  EXPECT_NE(summary->payload.find("disk full"), std::string::npos) << summary->payload;
  // Resume: the operator accepts the failure and the next phase goes out.
  reply = env.command("tern/fleet/deployments/d1/resume", "");
  EXPECT_NE(reply.find("\"ok\":true"), std::string::npos) << reply;
  EXPECT_NE(env.retained_deployment("device-2"), "<none>");
  EXPECT_NE(env.retained_deployment("device-3"), "<none>");
}

TEST(BridgeFleet, PhaseWithinThresholdMovesOnAfterThePause) {
  FleetEnv env;
  for (auto id : {"device-1", "device-2"}) env.accept(id);
  env.command("tern/fleet/deployments/create",
              R"({"id":"d1","artifact_name":"release-1","all":true,"phases":[50],"pause_seconds":60})");
  env.handle(msg("tern/devices/device-1/status", status("d1", "success", 1)));
  env.tick();
  EXPECT_EQ(env.retained_deployment("device-2"), "<none>");  // pausing
  env.now += 61;
  env.tick();
  EXPECT_NE(env.retained_deployment("device-2"), "<none>");
  env.handle(msg("tern/devices/device-2/status", status("d1", "already-installed", 1)));
  env.tick();
  EXPECT_EQ(env.deployment("d1").state, "finished");
}

// The status that completes a phase moves the rollout on in the same step, not at the next tick:
// the next phase's devices get their deployment, and a finished deployment's summary goes out.
TEST(BridgeFleet, TheStatusThatCompletesAPhaseMovesTheRolloutAtOnce) {
  FleetEnv env;
  for (auto id : {"device-1", "device-2"}) env.accept(id);
  auto reply = env.command("tern/fleet/deployments/create",
                           R"({"id":"d1","artifact_name":"release-1","all":true,"phases":[50,100]})");
  ASSERT_NE(reply.find("\"ok\":true"), std::string::npos) << reply;
  EXPECT_EQ(env.retained_deployment("device-2"), "<none>");
  env.handle(msg("tern/devices/device-1/status", status("d1", "downloading", 1)));
  EXPECT_EQ(env.retained_deployment("device-2"), "<none>");  // phase 1 still open
  auto out = env.handle(msg("tern/devices/device-1/status", status("d1", "success", 2)));
  auto second = last_on(out, protocol::topics::deployment("device-2"));
  ASSERT_TRUE(second) << "the second phase waited for a tick";
  EXPECT_TRUE(protocol::parse_deployment(second->payload));
  EXPECT_EQ(env.deployment("d1").phase, 1);
  out = env.handle(msg("tern/devices/device-2/status", status("d1", "success", 1)));
  EXPECT_EQ(env.deployment("d1").state, "finished");
  auto summary = last_on(out, "tern/fleet/deployments/d1");
  ASSERT_TRUE(summary) << "the summary waited for a tick";
  EXPECT_NE(summary->payload.find("\"state\":\"finished\""), std::string::npos) << summary->payload;
  EXPECT_NE(summary->payload.find("\"success\":2"), std::string::npos) << summary->payload;
  // Published already: the next tick has nothing new to say about it.
  EXPECT_FALSE(last_on(env.tick(), "tern/fleet/deployments/d1"));
}

TEST(BridgeFleet, FailedDeviceIsRetriedWithANewId) {
  FleetEnv env;
  env.accept("device-1");
  env.command("tern/fleet/deployments/create", R"({"id":"d1","artifact_name":"release-1","all":true,"retries":1})");
  env.handle(msg("tern/devices/device-1/status", status("d1", "failure", 1, "timeout")));
  auto dep = protocol::parse_deployment(env.retained_deployment("device-1"));
  ASSERT_TRUE(dep);
  EXPECT_EQ(dep->deployment_id, Fleet::wire_id("d1", 2));
  EXPECT_EQ(env.row("d1", "device-1").attempt, 2);
  env.handle(msg("tern/devices/device-1/status", status("d1", "failure", 2)));  // late, old attempt
  EXPECT_EQ(env.row("d1", "device-1").status, "sent");
  env.handle(msg("tern/devices/device-1/status", status(dep->deployment_id, "failure", 3, "again")));
  EXPECT_EQ(env.row("d1", "device-1").status, "failure");  // no retries left
  env.tick();
  EXPECT_EQ(env.deployment("d1").state, "finished");
}

TEST(BridgeFleet, AbortClearsRetainedDeployments) {
  FleetEnv env;
  for (auto id : {"device-1", "device-2"}) env.accept(id);
  env.command("tern/fleet/deployments/create", R"({"id":"d1","artifact_name":"release-1","all":true})");
  auto reply = env.command("tern/fleet/deployments/d1/abort", "");
  EXPECT_NE(reply.find("\"ok\":true"), std::string::npos) << reply;
  EXPECT_EQ(env.retained_deployment("device-1"), "");
  EXPECT_EQ(env.retained_deployment("device-2"), "");
  EXPECT_EQ(env.deployment("d1").state, "aborted");
  reply = env.command("tern/fleet/deployments/d1/abort", "");
  EXPECT_NE(reply.find("already aborted"), std::string::npos) << reply;
}

TEST(BridgeFleet, InvalidCommandsGetErrorsAndChangeNothing) {
  FleetEnv env;
  env.accept("device-1");
  struct Case {
    const char* body;
    const char* expect;
  } cases[] = {
      {"{not json", "not valid JSON"},
      {R"({"artifact_name":"nope","all":true})", "unknown artifact 'nope'"},
      {R"({"artifact_name":"release-1"})", "no targets"},
      {R"({"artifact_name":"release-1","devices":["device-7"]})", "device-7: unknown device"},
      {R"({"artifact_name":"release-1","all":true,"phases":[50,20]})", "must increase"},
      {R"({"artifact_name":"release-1","all":true,"failure_threshold":150})", "failure_threshold"},
      {R"({"artifact_name":"release-1","all":true,"on_threshold":"explode"})", "on_threshold"},
      {R"({"artifact":"release-1","all":true})", "unknown field 'artifact'"},
      {R"({"artifact_name":"release-1","devices":["../x"]})", "not a valid device id"},
  };
  for (auto& c : cases) {
    auto reply = env.command("tern/fleet/deployments/create", c.body);
    EXPECT_NE(reply.find("\"ok\":false"), std::string::npos) << c.body << " → " << reply;
    EXPECT_NE(reply.find(c.expect), std::string::npos) << c.body << " → " << reply;
  }
  EXPECT_TRUE(env.store->deployments().value().empty());
  EXPECT_EQ(env.retained_deployment("device-1"), "<none>");
  auto reply = env.command("tern/fleet/deployments/zzz/abort", "");
  EXPECT_NE(reply.find("unknown deployment 'zzz'"), std::string::npos) << reply;
  reply = env.command("tern/fleet/devices/device-8/decommission", "");
  EXPECT_NE(reply.find("unknown device 'device-8'"), std::string::npos) << reply;
}

TEST(BridgeFleet, ReplyToInTheBodyWithoutResponseTopic) {
  FleetEnv env;
  auto out = env.handle(msg("tern/fleet/deployments/list", R"({"reply_to":"tern/fleet/replies/me"})"));
  auto reply = last_on(out, "tern/fleet/replies/me");
  ASSERT_TRUE(reply);
  EXPECT_NE(reply->payload.find("\"ok\":true"), std::string::npos) << reply->payload;
  out = env.handle(msg("tern/fleet/deployments/list", ""));
  EXPECT_TRUE(out.empty());  // nowhere to reply
}

TEST(BridgeFleet, RecoverRepublishesInProgressAndClearsFinished) {
  FleetEnv env;
  for (auto id : {"device-1", "device-2"}) env.accept(id);
  env.command("tern/fleet/deployments/create", R"({"id":"d1","artifact_name":"release-1","all":true})");
  env.handle(msg("tern/devices/device-1/status", status("d1", "success", 1)));
  // A new Fleet over the same store, as after kill -9.
  bridge::FleetOptions o;
  o.artifact_base_url = "https://127.0.0.1:1/artifacts";
  Fleet again(*env.store, o);
  auto out = again.recover(env.now);
  auto d1 = last_on(out, protocol::topics::deployment("device-1"));
  auto d2 = last_on(out, protocol::topics::deployment("device-2"));
  ASSERT_TRUE(d1);
  ASSERT_TRUE(d2);
  EXPECT_EQ(d1->payload, "");
  EXPECT_TRUE(protocol::parse_deployment(d2->payload));
  EXPECT_TRUE(last_on(out, "tern/fleet/deployments/d1"));
  EXPECT_EQ(again.recover(env.now).size(), out.size());  // idempotent
}

TEST(BridgeCatalog, OnlySignedArtifactsWhenAKeyIsConfigured) {
  TempDir dir;
  make_artifact(dir.path(), "release-s", read_file(certs() / "artifact-key.pem"));
  make_artifact(dir.path(), "release-u");
  write_file(dir / "broken.mender", "not a tar at all");
  auto store = Store::open(test_store(dir.path())).value();
  auto report = bridge::scan_artifacts(*store, dir.path(), read_file(certs() / "artifact-key.pub"));
  ASSERT_TRUE(report) << report.error().message();
  EXPECT_EQ(report->added, std::vector<std::string>{"release-s"});
  ASSERT_EQ(report->errors.size(), 2u);
  auto signed_ = store->artifact("release-s").value();
  ASSERT_TRUE(signed_);
  EXPECT_TRUE(signed_->is_signed);
  EXPECT_EQ(signed_->device_types, std::vector<std::string>{"qemu"});
  EXPECT_EQ(signed_->size, fs::file_size(dir / "release-s.mender"));
  EXPECT_FALSE(store->artifact("release-u").value());
  // Without a key both enter; a file that disappears leaves the catalog.
  report = bridge::scan_artifacts(*store, dir.path(), std::nullopt);
  ASSERT_TRUE(report);
  EXPECT_TRUE(store->artifact("release-u").value());
  fs::remove(dir / "release-u.mender");
  report = bridge::scan_artifacts(*store, dir.path(), std::nullopt);
  ASSERT_TRUE(report);
  EXPECT_EQ(report->removed, std::vector<std::string>{"release-u"});
}

TEST(BridgeFleet, AddArtifactCommandCopiesAVerifiedFile) {
  FleetEnv env;
  TempDir elsewhere;
  make_artifact(elsewhere.path(), "release-2");
  auto reply = env.command("tern/fleet/artifacts/add",
                           "{\"path\":\"" + (elsewhere / "release-2.mender").string() + "\"}");
  EXPECT_NE(reply.find("\"ok\":true"), std::string::npos) << reply;
  EXPECT_TRUE(fs::exists(env.dir / "artifacts" / "release-2.mender"));
  EXPECT_TRUE(env.store->artifact("release-2").value());
  write_file(elsewhere / "junk.mender", "junk");
  reply = env.command("tern/fleet/artifacts/add", "{\"path\":\"" + (elsewhere / "junk.mender").string() + "\"}");
  EXPECT_NE(reply.find("\"ok\":false"), std::string::npos) << reply;
  EXPECT_FALSE(fs::exists(env.dir / "artifacts" / "junk.mender"));
}

}  // namespace
}  // namespace tern::test

namespace tern::test {
namespace {

TEST(BridgeFleet, AcceptAndRejectOfANeverSeenDeviceCreateItsRecord) {
  FleetEnv env;
  auto r = env.command("tern/fleet/devices/device-7/accept", R"({"group":"field"})");
  EXPECT_NE(r.find("\"ok\":true"), std::string::npos) << r;
  r = env.command("tern/fleet/devices/device-8/reject", "");
  EXPECT_NE(r.find("\"ok\":true"), std::string::npos) << r;
  auto d7 = env.store->device("device-7").value();
  ASSERT_TRUE(d7);
  EXPECT_EQ(d7->admission, "accepted");
  EXPECT_EQ(d7->group, "field");
  auto d8 = env.store->device("device-8").value();
  ASSERT_TRUE(d8);
  EXPECT_EQ(d8->admission, "rejected");
  // Its first messages keep the decision and fill in the rest.
  env.handle(msg("tern/devices/device-7/inventory", R"({"device_type":"qemu"})"));
  env.handle(msg("tern/devices/device-8/inventory", R"({"device_type":"qemu"})"));
  EXPECT_EQ(env.store->device("device-7").value()->admission, "accepted");
  EXPECT_EQ(env.store->device("device-7").value()->device_type, "qemu");
  EXPECT_EQ(env.store->device("device-8").value()->admission, "rejected");
  // Decommission and group still need a known device.
  r = env.command("tern/fleet/devices/device-9/decommission", "");
  EXPECT_NE(r.find("unknown device 'device-9'"), std::string::npos) << r;
  r = env.command("tern/fleet/devices/device-9/group", R"({"group":"x"})");
  EXPECT_NE(r.find("unknown device 'device-9'"), std::string::npos) << r;
  EXPECT_FALSE(env.store->device("device-9").value());
}

TEST(BridgeFleet, PreauthorizedDevicesAreAcceptedFromTheirFirstMessage) {
  FleetEnv env;
  auto r = env.command("tern/fleet/devices/preauthorize", R"({"devices":["device-1","device-2"],"group":"lab"})");
  EXPECT_NE(r.find("\"ok\":true"), std::string::npos) << r;
  EXPECT_NE(r.find("\"devices\":[\"device-1\",\"device-2\"]"), std::string::npos) << r;
  // A status of a deployment it does not have yet is its first message: it stays accepted.
  env.handle(msg("tern/devices/device-1/presence", R"({"state":"online","seq":1})"));
  auto d1 = env.store->device("device-1").value();
  ASSERT_TRUE(d1);
  EXPECT_EQ(d1->admission, "accepted");
  EXPECT_EQ(d1->group, "lab");
  EXPECT_EQ(d1->presence, "online");
  // Deployable by group before device-2 was ever seen.
  r = env.command("tern/fleet/deployments/create", R"({"id":"g1","artifact_name":"release-1","group":"lab"})");
  EXPECT_NE(r.find("\"ok\":true"), std::string::npos) << r;
  EXPECT_NE(env.retained_deployment("device-2"), "<none>");
  // One bad id refuses the whole list; nothing of it is stored.
  r = env.command("tern/fleet/devices/preauthorize", R"({"devices":["device-5","bad id"]})");
  EXPECT_NE(r.find("\"ok\":false"), std::string::npos) << r;
  EXPECT_NE(r.find("'bad id' is not a valid device id"), std::string::npos) << r;
  EXPECT_FALSE(env.store->device("device-5").value());
  r = env.command("tern/fleet/devices/preauthorize", R"({"devices":[]})");
  EXPECT_NE(r.find("field 'devices' is empty"), std::string::npos) << r;
  r = env.command("tern/fleet/devices/preauthorize", R"({"group":"lab"})");
  EXPECT_NE(r.find("'devices'"), std::string::npos) << r;
  r = env.command("tern/fleet/devices/preauthorize", R"({"devices":["device-5"],"colour":"red"})");
  EXPECT_NE(r.find("colour"), std::string::npos) << r;
  EXPECT_FALSE(env.store->device("device-5").value());
}

TEST(BridgeFleet, DecommissionClearsTheDevicesRetainedState) {
  FleetEnv env;
  env.accept("device-1");
  env.handle(msg("tern/devices/device-1/inventory", R"({"device_type":"qemu"})"));
  auto r = env.command("tern/fleet/deployments/create", R"({"id":"x1","artifact_name":"release-1","all":true})");
  ASSERT_NE(r.find("\"ok\":true"), std::string::npos) << r;
  env.published.clear();
  r = env.command("tern/fleet/devices/device-1/decommission", "");
  EXPECT_NE(r.find("\"admission\":\"decommissioned\""), std::string::npos) << r;
  for (const char* kind : {"deployment", "inventory", "presence"}) {
    auto m = last_on(env.published, std::string("tern/devices/device-1/") + kind);
    ASSERT_TRUE(m) << kind << " not cleared";
    EXPECT_TRUE(m->payload.empty()) << kind;
    EXPECT_TRUE(m->retained) << kind;
  }
  EXPECT_EQ(env.row("x1", "device-1").status, "aborted");
  EXPECT_EQ(env.store->device("device-1").value()->admission, "decommissioned");
}

}  // namespace
}  // namespace tern::test

namespace tern::test {
namespace {

TEST(BridgeFleet, CapAndRebootPolicyReachTheDevicesAndTheGoAheadReachesThoseNotFinished) {
  FleetEnv env;
  for (auto id : {"device-1", "device-2", "device-3"}) env.accept(id);
  auto bad = env.command("tern/fleet/deployments/create",
                         R"({"id":"d0","artifact_name":"release-1","all":true,"reboot":"tonight"})");
  EXPECT_NE(bad.find("\"ok\":false"), std::string::npos) << bad;
  EXPECT_NE(bad.find("'tonight'"), std::string::npos) << bad;
  EXPECT_EQ(env.retained_deployment("device-1"), "<none>") << "nothing sent for a refused deployment";

  auto reply = env.command("tern/fleet/deployments/create",
                           R"({"id":"d1","artifact_name":"release-1","all":true,"max_rate":65536,"reboot":"on-command"})");
  ASSERT_NE(reply.find("\"ok\":true"), std::string::npos) << reply;
  for (auto id : {"device-1", "device-2", "device-3"}) {
    auto dep = protocol::parse_deployment(env.retained_deployment(id));
    ASSERT_TRUE(dep) << id;
    EXPECT_EQ(dep->max_rate, 65536u);
    EXPECT_EQ(dep->reboot, "on-command");
  }
  EXPECT_EQ(env.store->deployment("d1").value()->reboot, "on-command") << "kept in the store";

  env.handle(msg("tern/devices/device-1/status", status("d1", "pause_before_rebooting", 5)));
  env.handle(msg("tern/devices/device-2/status", status("d1", "pause_before_rebooting", 5)));
  env.handle(msg("tern/devices/device-3/status", status("d1", "failure", 5, "disk full")));
  env.tick();
  auto summary = last_on(env.published, "tern/fleet/deployments/d1");
  ASSERT_TRUE(summary);
  EXPECT_NE(summary->payload.find("\"pause_before_rebooting\""), std::string::npos) << summary->payload;

  env.published.clear();
  auto go = env.command("tern/fleet/deployments/d1/reboot", "{}");
  EXPECT_NE(go.find("\"ok\":true"), std::string::npos) << go;
  for (auto id : {"device-1", "device-2"}) {
    auto m = last_on(env.published, protocol::topics::reboot(id));
    ASSERT_TRUE(m) << id;
    EXPECT_TRUE(m->retained);
    EXPECT_EQ(protocol::parse_reboot_command(m->payload)->deployment_id, "d1");
  }
  EXPECT_FALSE(last_on(env.published, protocol::topics::reboot("device-3"))) << "finished: no go-ahead";
  auto unknown = env.command("tern/fleet/deployments/nope/reboot", "{}");
  EXPECT_NE(unknown.find("\"ok\":false"), std::string::npos) << unknown;
}

// The counters (migration 5) summed by status, to compare with the scan of status_counts().
std::map<std::string, std::uint64_t> counted(Store& store, const std::string& deployment) {
  std::map<std::string, std::uint64_t> by_status;
  for (auto& c : store.deployment_counts(deployment).value()) by_status[c.status] += c.n;
  return by_status;
}

// "device-00" .. "device-99": ids that sort as their numbers.
std::string dev(int i) { return "device-" + std::string(i < 10 ? "0" : "") + std::to_string(i); }

// A burst for 30 devices of deployment d1 (retries 1): every device downloads, installs and ends
// (every fifth fails and is retried under "d1-retry-2"), interleaved across devices, with QoS 1
// redeliveries, late older statuses, a status after the final one, one under a superseded
// attempt, one for an unknown deployment, one from a device never seen, and an inventory message
// in the middle.
std::vector<mqtt::Message> burst() {
  std::vector<mqtt::Message> out;
  auto st = [](const std::string& dep, const std::string& word, std::uint64_t seq, std::uint64_t fetched = 0) {
    protocol::StatusEvent e;
    e.deployment_id = dep;
    e.status = protocol::parse_status_word(word).value();
    e.seq = seq;
    e.bytes_fetched = fetched;
    e.total = fetched ? 4096 : 0;
    if (word == "failure") e.error = "disk full";
    return protocol::serialize(e);
  };
  const std::vector<std::string> words{"downloading", "installing", "success"};
  for (std::uint64_t step = 0; step < 3; ++step) {
    for (int i = 0; i < 30; ++i) {
      const std::string topic = "tern/devices/" + dev(i) + "/status";
      const bool fails = i % 5 == 0;
      const std::string word = step == 2 && fails ? "failure" : words[step];
      out.push_back(msg(topic, st("d1", word, step + 1, i == 7 && step == 2 ? 3000 : 0)));
      if (i == 3) out.push_back(msg(topic, st("d1", word, step + 1)));  // redelivered
      if (i == 4 && step == 1) out.push_back(msg(topic, st("d1", "downloading", 1)));  // late, older
    }
    if (step == 1) out.push_back(msg("tern/devices/device-03/inventory", R"({"device_type":"qemu","artifact_name":"old"})"));
  }
  out.push_back(msg("tern/devices/device-01/status", st("d1", "failure", 9)));            // after its success
  out.push_back(msg("tern/devices/device-05/status", st("d1-retry-2", "downloading", 4)));  // the retry
  out.push_back(msg("tern/devices/device-10/status", st("d1", "downloading", 5)));        // superseded attempt
  out.push_back(msg("tern/devices/device-11/status", st("nope", "downloading", 6)));      // unknown deployment
  out.push_back(msg("tern/devices/stranger/status", st("d1", "downloading", 1)));         // never seen
  out.push_back(msg("tern/devices/device-15/status", "not json"));                        // malformed
  return out;
}

struct BurstEnv : FleetEnv {
  BurstEnv() {
    for (int i = 0; i < 30; ++i) accept("device-" + std::string(i < 10 ? "0" : "") + std::to_string(i));
    command("tern/fleet/deployments/create", R"({"id":"d1","artifact_name":"release-1","all":true,"retries":1})");
    published.clear();
  }
};

TEST(BridgeFleet, ABurstIngestedInOneBatchEndsExactlyAsOneByOne) {
  BurstEnv one, batch;
  const auto msgs = burst();
  for (auto& m : msgs) one.handle(m);
  auto out = batch.fleet->handle_batch(msgs, batch.now);
  batch.published.insert(batch.published.end(), out.begin(), out.end());

  // What was published, in order: device records, cleared deployments, the retries (each env
  // made its own artifact: its checksum differs).
  auto same_artifact = [](FleetEnv& env, std::string payload) {
    const auto sha = env.store->artifact("release-1").value()->sha256;
    if (auto at = payload.find(sha); at != std::string::npos) payload.replace(at, sha.size(), "SHA");
    return payload;
  };
  ASSERT_EQ(one.published.size(), batch.published.size());
  for (std::size_t i = 0; i < one.published.size(); ++i) {
    EXPECT_EQ(one.published[i].topic, batch.published[i].topic) << i;
    EXPECT_EQ(same_artifact(one, one.published[i].payload), same_artifact(batch, batch.published[i].payload)) << i;
    EXPECT_EQ(one.published[i].retained, batch.published[i].retained) << i;
  }
  // What was stored: every device, row and history.
  EXPECT_EQ(one.store->devices().value(), batch.store->devices().value());
  EXPECT_EQ(one.store->device_deployments("d1").value(), batch.store->device_deployments("d1").value());
  for (auto& d : one.store->devices().value()) {
    auto a = one.store->history("d1", d.id).value();
    auto b = batch.store->history("d1", d.id).value();
    ASSERT_EQ(a.size(), b.size()) << d.id;
    for (std::size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].seq, b[i].seq) << d.id;
      EXPECT_EQ(a[i].status, b[i].status) << d.id;
      EXPECT_EQ(a[i].attempt, b[i].attempt) << d.id;
    }
  }
  EXPECT_EQ(batch.store->transfer_totals("d1").value().fetched, 3000u);

  // The outcome itself, not only the agreement.
  EXPECT_EQ(batch.row("d1", "device-03").status, "success");
  EXPECT_EQ(batch.store->history("d1", "device-03").value().size(), 3u);  // redeliveries not counted
  EXPECT_EQ(batch.row("d1", "device-04").last_seq, 3u);
  EXPECT_EQ(batch.row("d1", "device-01").status, "success");              // the late failure ignored
  EXPECT_EQ(batch.row("d1", "device-05").status, "downloading");          // retried, running again
  EXPECT_EQ(batch.row("d1", "device-05").attempt, 2);
  EXPECT_EQ(batch.row("d1", "device-10").status, "sent");                 // old attempt ignored
  EXPECT_EQ(batch.row("d1", "device-10").attempt, 2);
  EXPECT_EQ(batch.retained_deployment("device-10").find("d1-retry-2") != std::string::npos, true);
  EXPECT_EQ(batch.retained_deployment("device-02"), "");                  // done: cleared
  EXPECT_EQ(batch.store->device("stranger").value()->admission, "pending");
  EXPECT_EQ(batch.store->device("device-03").value()->artifact_name, "release-1");

  // The counters agree with a scan of the rows, and the summaries are the same.
  const auto scanned = batch.store->status_counts("d1").value();
  EXPECT_EQ(counted(*batch.store, "d1"), scanned);
  EXPECT_EQ(scanned.at("success"), 24u);
  EXPECT_EQ(counted(*one.store, "d1"), scanned);
  one.tick();
  batch.tick();
  auto a = last_on(one.published, "tern/fleet/deployments/d1");
  auto b = last_on(batch.published, "tern/fleet/deployments/d1");
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->payload, b->payload);
  EXPECT_NE(b->payload.find("\"success\":24"), std::string::npos) << b->payload;
  EXPECT_EQ(batch.deployment("d1").state, "running");  // six devices are on their second attempt
}

TEST(BridgeFleet, ABatchWithABadStatusLosesOnlyThatStatus) {
  BurstEnv env;
  // A row whose deployment does not exist cannot be ingested (an internal error); written around
  // the foreign key (and the counters: SQLite's tool connection has foreign keys off, PostgreSQL's
  // replica role skips both triggers).
  store_exec(env.where, std::string(env.where.starts_with("postgresql") ? "SET session_replication_role = replica; " : "") +
                            "INSERT INTO device_deployments (deployment, device, phase, status) "
                            "VALUES ('ghost', 'device-01', 0, 'sent')");
  const std::vector<mqtt::Message> msgs{msg("tern/devices/device-02/status", status("d1", "downloading", 1)),
                                        msg("tern/devices/device-01/status", status("ghost", "downloading", 1)),
                                        msg("tern/devices/device-03/status", status("d1", "success", 2))};
  auto out = env.fleet->handle_batch(msgs, env.now);
  // The batch was rolled back, then each status ingested alone: only the bad one is lost.
  EXPECT_EQ(env.row("d1", "device-02").status, "downloading");
  EXPECT_EQ(env.row("d1", "device-03").status, "success");
  EXPECT_EQ(env.row("ghost", "device-01").status, "sent");
  EXPECT_EQ(env.store->history("d1", "device-02").value().size(), 1u);
  EXPECT_EQ(env.store->history("ghost", "device-01").value().size(), 0u);
  EXPECT_TRUE(last_on(out, protocol::topics::deployment("device-03")));  // cleared once, in the retry
  std::size_t clears = 0;
  for (auto& m : out) clears += m.topic == protocol::topics::deployment("device-03") ? 1 : 0;
  EXPECT_EQ(clears, 1u);
  EXPECT_EQ(counted(*env.store, "d1"), env.store->status_counts("d1").value());
}

TEST(BridgeFleet, AStatusRewritesItsDeviceOnlyWhenTheDeviceChanges) {
  BurstEnv env;
  // Every UPDATE of a devices row (an upsert's update too) counted behind the bridge's back.
  store_exec(env.where, env.where.starts_with("postgresql")
                            ? "CREATE TABLE device_writes (n INTEGER NOT NULL); INSERT INTO device_writes VALUES (0); "
                              "CREATE FUNCTION count_device_write() RETURNS trigger LANGUAGE plpgsql AS "
                              "$$ BEGIN UPDATE device_writes SET n = n + 1; RETURN NULL; END $$; "
                              "CREATE TRIGGER count_device_write AFTER UPDATE ON devices "
                              "FOR EACH ROW EXECUTE FUNCTION count_device_write();"
                            : "CREATE TABLE device_writes (n INTEGER NOT NULL); INSERT INTO device_writes VALUES (0); "
                              "CREATE TRIGGER count_device_write AFTER UPDATE ON devices "
                              "BEGIN UPDATE device_writes SET n = n + 1; END;");
  auto writes = [&] { return std::stoi(store_query(env.where, "SELECT n FROM device_writes")); };
  auto one = [&](const std::string& word, std::uint64_t seq, std::int64_t now) {
    env.fleet->handle_batch({msg("tern/devices/device-01/status", status("d1", word, seq))}, now);
  };
  const std::int64_t t = env.now + 10;
  one("downloading", 1, t);  // last_seen moves to t
  EXPECT_EQ(writes(), 1);
  one("installing", 2, t);  // the same second: the device is as it was
  EXPECT_EQ(writes(), 1);
  EXPECT_EQ(env.row("d1", "device-01").status, "installing");
  one("success", 3, t);  // its artifact changes
  EXPECT_EQ(writes(), 2);
  one("success", 4, t + 1);  // ignored (the deployment ended on it), but the device was seen
  EXPECT_EQ(writes(), 3);
  const auto d = env.store->device("device-01").value();
  ASSERT_TRUE(d);
  EXPECT_EQ(d->last_seen, t + 1);
  EXPECT_EQ(d->artifact_name, "release-1");
  EXPECT_EQ(env.store->history("d1", "device-01").value().size(), 3u);
}

TEST(BridgeFleet, TheCountersFollowEveryWriteOfTheRows) {
  BurstEnv env;
  env.fleet->handle_batch(burst(), env.now);
  EXPECT_EQ(counted(*env.store, "d1"), env.store->status_counts("d1").value());
  // Rejecting a device aborts its row (admission path), then the operator aborts the rest.
  env.command("tern/fleet/devices/device-05/reject", "");
  EXPECT_EQ(env.row("d1", "device-05").status, "aborted");
  EXPECT_EQ(counted(*env.store, "d1"), env.store->status_counts("d1").value());
  env.command("tern/fleet/deployments/d1/abort", "");
  const auto scanned = env.store->status_counts("d1").value();
  EXPECT_EQ(counted(*env.store, "d1"), scanned);
  EXPECT_EQ(scanned.at("aborted"), 6u);
  // Phases: a second deployment with two phases counts its pending phase apart.
  env.command("tern/fleet/deployments/create", R"({"id":"d2","artifact_name":"release-1","all":true,"phases":[10,100]})");
  std::uint64_t pending = 0, sent = 0;
  for (auto& c : env.store->deployment_counts("d2").value()) {
    if (c.status == "pending") {
      EXPECT_EQ(c.phase, 1);
      pending += c.n;
    }
    if (c.status == "sent") {
      EXPECT_EQ(c.phase, 0);
      sent += c.n;
    }
  }
  EXPECT_EQ(sent, 3u);  // ceil(10% of 30 accepted devices, minus the rejected one: 29)
  EXPECT_EQ(pending, 26u);
}

}  // namespace
}  // namespace tern::test

// --- locks between bridges on one PostgreSQL database ------------------------------------------------

namespace tern::test {
namespace {

// A second bridge on the same database: its own connection and Fleet, the same artifact directory.
struct SecondBridge {
  std::unique_ptr<Store> store;
  std::unique_ptr<Fleet> fleet;
  explicit SecondBridge(FleetEnv& env) {
    store = Store::open(env.where).value();
    bridge::FleetOptions o;
    o.artifact_base_url = "https://127.0.0.1:1/artifacts";
    o.artifact_dir = env.dir / "artifacts";
    fleet = std::make_unique<Fleet>(*store, o);
  }
  std::string command(const std::string& topic, std::int64_t now) {
    auto out = fleet->handle(msg(topic, "", "tern/fleet/replies/b"), now);
    auto reply = last_on(out, "tern/fleet/replies/b");
    return reply ? reply->payload : "<no reply>";
  }
};

// The lock tests below: SQLite's BEGIN IMMEDIATE already serialises every writer, so they test
// PostgreSQL's locks and run in the pg.* pass only.
#define TERN_LOCKS_ARE_POSTGRESQLS(env)       \
  if (!(env).where.starts_with("postgresql")) \
  GTEST_SKIP() << "SQLite's BEGIN IMMEDIATE serialises every writer; the locks are PostgreSQL's (pg.* run)"

// Sessions waiting for the bridge's advisory lock `key` (Store::lock: the 64-bit key is
// hashtext(key), whose low 32 bits pg_locks shows as objid).
int waiting_for(const std::string& where, const std::string& key) {
  const auto n = Postgres::shared().psql(
      where.substr(where.rfind('/') + 1),
      "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND "
      "objid::text::bigint = (hashtext('" + key + "')::bigint & 4294967295)");
  return std::atoi(n.c_str());
}

// Rejecting a device aborts its row in its deployment, which moves that deployment's counters:
// the reject must hold the deployment's lock like every other writer of those rows (abort, resume,
// tick, ingest), so while another bridge holds "deployment:x1" the reject waits for it.
TEST(BridgeFleet, RejectWaitsForTheLockOfTheDeploymentItLeaves) {
  FleetEnv env;
  TERN_LOCKS_ARE_POSTGRESQLS(env);
  env.accept("device-1");
  env.accept("device-2");
  auto created = env.command("tern/fleet/deployments/create", R"({"id":"x1","artifact_name":"release-1","all":true})");
  ASSERT_NE(created.find("\"ok\":true"), std::string::npos) << created;

  // Another bridge's abort or tick of x1, holding its lock until told to end.
  auto other = Store::open(env.where).value();
  std::atomic<bool> held{false}, release{false};
  std::thread holder([&] {
    auto t = other->transaction([&]() -> Result<void> {
      if (auto l = other->lock("deployment:x1"); !l) return l;
      held = true;
      while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      return {};
    });
    EXPECT_TRUE(t) << t.error().message();
  });
  while (!held) std::this_thread::sleep_for(std::chrono::milliseconds(5));

  std::atomic<bool> done{false};
  std::string reply;
  std::thread reject([&] {
    reply = env.command("tern/fleet/devices/device-1/reject", "");
    done = true;
  });
  // Until the reject ends (the old code: at once, holding only "device:device-1") or waits.
  bool waiting = false;
  while (!done && !waiting) {
    waiting = waiting_for(env.where, "deployment:x1") > 0;
    if (!waiting) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(waiting) << "the reject changed deployment x1 without its lock: " << reply;
  EXPECT_FALSE(done);
  release = true;
  holder.join();
  reject.join();
  EXPECT_NE(reply.find("\"ok\":true"), std::string::npos) << reply;
  EXPECT_EQ(env.row("x1", "device-1").status, "aborted");
  EXPECT_EQ(env.row("x1", "device-2").status, "sent");
  EXPECT_EQ(counted(*env.store, "x1"), env.store->status_counts("x1").value());
}

// The deployment a reject locks is read before locking; if it changes before the locks are granted
// (here: another bridge, holding the device, moves it from x1 to a new deployment x2), the reject
// runs again and locks x2, the deployment it then changes: it waits while a third bridge holds x2.
TEST(BridgeFleet, RejectLocksAgainWhenTheDevicesDeploymentChangedWhileItWaited) {
  FleetEnv env;
  TERN_LOCKS_ARE_POSTGRESQLS(env);
  env.accept("device-1");
  auto created = env.command("tern/fleet/deployments/create", R"({"id":"x1","artifact_name":"release-1","all":true})");
  ASSERT_NE(created.find("\"ok\":true"), std::string::npos) << created;

  auto mover_store = Store::open(env.where).value();
  auto x2_store = Store::open(env.where).value();
  std::atomic<bool> device_held{false}, move{false}, x2_held{false}, release_x2{false};
  std::thread mover([&] {  // holds device-1, then moves it to x2 and commits
    auto t = mover_store->transaction([&]() -> Result<void> {
      if (auto l = mover_store->lock("device:device-1"); !l) return l;
      device_held = true;
      while (!move) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      auto row = mover_store->device_deployment("x1", "device-1").value().value();
      row.status = "aborted";
      if (auto w = mover_store->put_device_deployment(row); !w) return w;
      bridge::DeploymentRecord d = mover_store->deployment("x1").value().value();
      d.id = "x2";
      if (auto w = mover_store->insert_deployment(d); !w) return w;
      row.deployment = "x2";
      row.status = "sent";
      return mover_store->put_device_deployment(row);
    });
    EXPECT_TRUE(t) << t.error().message();
  });
  std::thread x2_holder([&] {
    auto t = x2_store->transaction([&]() -> Result<void> {
      if (auto l = x2_store->lock("deployment:x2"); !l) return l;
      x2_held = true;
      while (!release_x2) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      return {};
    });
    EXPECT_TRUE(t) << t.error().message();
  });
  while (!device_held || !x2_held) std::this_thread::sleep_for(std::chrono::milliseconds(5));

  std::atomic<bool> done{false};
  std::string reply;
  std::thread reject([&] {
    reply = env.command("tern/fleet/devices/device-1/reject", "");
    done = true;
  });
  // The reject read x1 and waits for device-1 (with x1's lock in the same statement).
  while (!done && waiting_for(env.where, "device:device-1") == 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_FALSE(done) << reply;
  move = true;
  mover.join();  // committed: device-1's lock is the reject's now
  bool waiting = false;
  while (!done && !waiting) {
    waiting = waiting_for(env.where, "deployment:x2") > 0;
    if (!waiting) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(waiting) << "the reject changed deployment x2 without its lock: " << reply;
  release_x2 = true;
  x2_holder.join();
  reject.join();
  EXPECT_NE(reply.find("\"ok\":true"), std::string::npos) << reply;
  EXPECT_EQ(env.row("x2", "device-1").status, "aborted");
  EXPECT_EQ(env.row("x2", "device-1").error, "device rejected");
  EXPECT_EQ(counted(*env.store, "x2"), env.store->status_counts("x2").value());
  EXPECT_EQ(counted(*env.store, "x1"), env.store->status_counts("x1").value());
}

// Runs `a` and `b` on two threads released at the same instant; their replies, once both ended.
std::pair<std::string, std::string> at_once(const std::function<std::string()>& a, const std::function<std::string()>& b) {
  std::latch start(2);
  std::string ra, rb;
  std::thread ta([&] {
    start.arrive_and_wait();
    ra = a();
  });
  std::thread tb([&] {
    start.arrive_and_wait();
    rb = b();
  });
  ta.join();
  tb.join();
  return {std::move(ra), std::move(rb)};
}

// Two bridges, one rejecting the last device of a deployment while the other aborts it, round after
// round: both commands succeed every time (no deadlock between the reject's row and counter writes
// and the abort's), and the counters equal a recount of the rows.
TEST(BridgeFleet, TwoBridgesRejectAndAbortOneDeploymentWithoutDeadlock) {
  FleetEnv env;
  TERN_LOCKS_ARE_POSTGRESQLS(env);
  constexpr int devices = 20;
  for (int i = 0; i < devices; ++i) env.accept(dev(i));
  const std::string last = dev(devices - 1);  // the last row the abort writes
  SecondBridge b(env);
  for (int round = 0; round < 30; ++round) {
    const std::string id = "r" + std::to_string(round);
    auto created = env.command("tern/fleet/deployments/create",
                               R"({"id":")" + id + R"(","artifact_name":"release-1","all":true})");
    ASSERT_NE(created.find("\"ok\":true"), std::string::npos) << created;
    auto [rejected, aborted] = at_once([&] { return env.command("tern/fleet/devices/" + last + "/reject", ""); },
                                       [&] { return b.command("tern/fleet/deployments/" + id + "/abort", env.now); });
    EXPECT_NE(rejected.find("\"ok\":true"), std::string::npos) << "round " << round << ": " << rejected;
    EXPECT_NE(aborted.find("\"ok\":true"), std::string::npos) << "round " << round << ": " << aborted;
    const auto scanned = env.store->status_counts(id).value();
    EXPECT_EQ(counted(*env.store, id), scanned) << "round " << round;
    EXPECT_EQ(scanned, (std::map<std::string, std::uint64_t>{{"aborted", devices}})) << "round " << round;
    env.tick();
    b.fleet->tick(env.now);
    env.accept(last);
  }
}

}  // namespace
}  // namespace tern::test

// --- set_group and create against other bridges' changes (PostgreSQL) -----------------------------

namespace tern::test {
namespace {

// Sessions of database `where` waiting for any lock (an advisory lock, or a row another
// transaction changed): a command that blocks, for whatever reason.
int waiting_in(const std::string& where) {
  const std::string db = where.substr(where.rfind('/') + 1);
  const auto n = Postgres::shared().psql(
      db, "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE NOT l.granted AND "
          "a.datname = '" + db + "'");
  return std::atoi(n.c_str());
}

// Another bridge's transaction on `store` that changes device `id` (under its lock, as ingest does;
// with `admission`, first "admission" shared, as the admission commands do) and holds it until
// release() (then commits).
struct HeldDeviceChange {
  std::atomic<bool> held{false}, go{false};
  std::thread thread;
  HeldDeviceChange(Store& store, const std::string& id, std::function<void(bridge::DeviceRecord&)> change,
                   bool admission = false) {
    thread = std::thread([&store, id, change, admission, this] {
      auto t = store.transaction([&]() -> Result<void> {
        if (admission)
          if (auto l = store.lock_shared("admission"); !l) return l;
        if (auto l = store.lock("device:" + id); !l) return l;
        auto d = store.device(id).value().value();
        change(d);
        if (auto w = store.put_device(d); !w) return w;
        held = true;
        while (!go) std::this_thread::sleep_for(std::chrono::milliseconds(5));
        return {};
      });
      EXPECT_TRUE(t) << t.error().message();
      held = true;  // also when it failed: nobody waits for ever
    });
    while (!held) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  void release() {
    go = true;
    thread.join();
  }
};

// Runs `command` on another thread; returns once it has ended or is blocked on a lock in the
// database (so whatever it read before blocking was read).
struct RunningCommand {
  std::atomic<bool> done{false};
  std::string reply;
  std::thread thread;
  bool blocked_on_lock = false;  // waiting for `lock` (an advisory lock), seen while blocked
  RunningCommand(const std::string& where, const std::string& lock, std::function<std::string()> command) {
    thread = std::thread([this, command] {
      reply = command();
      done = true;
    });
    while (!done && waiting_in(where) == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    blocked_on_lock = !done && waiting_for(where, lock) > 0;
  }
  void join() { thread.join(); }
};

// A group change while another bridge is changing the same device (here: an ingest that recorded
// a new artifact and last_seen) waits for that bridge's lock and then reads the record again, so
// both changes are kept. Before, it wrote back the record it had read without a lock, and the other
// bridge's change was lost.
TEST(BridgeFleet, SetGroupWaitsForTheDevicesLockAndKeepsAnotherBridgesChange) {
  FleetEnv env;
  TERN_LOCKS_ARE_POSTGRESQLS(env);
  env.accept("device-1");
  auto other = Store::open(env.where).value();
  HeldDeviceChange change(*other, "device-1", [](bridge::DeviceRecord& d) {
    d.artifact_name = "release-2";
    d.last_seen = 5000;
  });
  RunningCommand group(env.where, "device:device-1", [&] {
    return env.command("tern/fleet/devices/device-1/group", R"({"group":"lab"})");
  });
  EXPECT_TRUE(group.blocked_on_lock) << "set_group did not wait for device:device-1: " << group.reply;
  change.release();
  group.join();
  EXPECT_NE(group.reply.find("\"ok\":true"), std::string::npos) << group.reply;
  auto d = env.store->device("device-1").value().value();
  EXPECT_EQ(d.group, "lab");
  EXPECT_EQ(d.artifact_name, "release-2") << "the other bridge's change was overwritten";
  EXPECT_EQ(d.last_seen, 5000);
  EXPECT_EQ(d.admission, "accepted");
}

// A deployment created while another bridge rejects one of its would-be targets waits for the
// reject (which holds "admission" shared), then reads the devices and skips the rejected one: a
// rejected device is never sent a deployment. Before the locks, create read the device (still
// accepted: the reject had not committed) and targeted it.
TEST(BridgeFleet, CreateSkipsADeviceAnotherBridgeRejectsMeanwhile) {
  FleetEnv env;
  TERN_LOCKS_ARE_POSTGRESQLS(env);
  env.accept("device-1");
  env.accept("device-2");
  auto other = Store::open(env.where).value();
  HeldDeviceChange reject(
      *other, "device-2", [](bridge::DeviceRecord& d) { d.admission = "rejected"; }, true);
  RunningCommand create(env.where, "admission", [&] {
    return env.command("tern/fleet/deployments/create", R"({"id":"x1","artifact_name":"release-1","all":true})");
  });
  EXPECT_TRUE(create.blocked_on_lock) << "create did not wait for the admission lock: " << create.reply;
  reject.release();
  create.join();
  EXPECT_NE(create.reply.find("\"ok\":true"), std::string::npos) << create.reply;
  EXPECT_NE(create.reply.find(R"x({"device":"device-2","reason":"not accepted (rejected)"})x"), std::string::npos)
      << create.reply;
  EXPECT_TRUE(env.store->device_deployment("x1", "device-1").value());
  EXPECT_FALSE(env.store->device_deployment("x1", "device-2").value()) << "the rejected device was targeted";
  EXPECT_EQ(env.retained_deployment("device-2"), "<none>");
  EXPECT_EQ(counted(*env.store, "x1"), env.store->status_counts("x1").value());
}

// Two bridges, one creating a deployment to every device while the other rejects one of them,
// round after round: both commands succeed, and a rejected device never has a deployment to run
// (create skipped it, or the reject, coming after, aborted its row).
TEST(BridgeFleet, TwoBridgesCreateAndRejectNeverLeaveARejectedDeviceTargeted) {
  FleetEnv env;
  TERN_LOCKS_ARE_POSTGRESQLS(env);
  constexpr int devices = 20;
  for (int i = 0; i < devices; ++i) env.accept(dev(i));
  SecondBridge b(env);
  for (int round = 0; round < 20; ++round) {
    const std::string id = "c" + std::to_string(round);
    const std::string victim = dev(round % devices);
    auto [created, rejected] = at_once(
        [&] {
          return env.command("tern/fleet/deployments/create",
                             R"({"id":")" + id + R"(","artifact_name":"release-1","all":true})");
        },
        [&] { return b.command("tern/fleet/devices/" + victim + "/reject", env.now); });
    EXPECT_NE(created.find("\"ok\":true"), std::string::npos) << "round " << round << ": " << created;
    EXPECT_NE(rejected.find("\"ok\":true"), std::string::npos) << "round " << round << ": " << rejected;
    EXPECT_EQ(env.store->device(victim).value().value().admission, "rejected");
    EXPECT_EQ(env.store->active_deployment_of(victim).value(), std::nullopt)
        << "round " << round << ": rejected " << victim << " is still targeted by " << id;
    EXPECT_EQ(counted(*env.store, id), env.store->status_counts(id).value()) << "round " << round;
    auto aborted = env.command("tern/fleet/deployments/" + id + "/abort", "");
    EXPECT_NE(aborted.find("\"ok\":true"), std::string::npos) << aborted;
    env.accept(victim);
  }
}

// Two bridges creating deployments to the same devices at once: each device ends in one of them
// only (the second create waits for the first's "admission" lock, then finds those devices busy).
TEST(BridgeFleet, TwoBridgesCreatingAtOnceNeverTargetADeviceTwice) {
  FleetEnv env;
  TERN_LOCKS_ARE_POSTGRESQLS(env);
  constexpr int devices = 20;
  for (int i = 0; i < devices; ++i) env.accept(dev(i));
  SecondBridge b(env);
  auto create_on_b = [&](const std::string& id) {
    auto out = b.fleet->handle(msg("tern/fleet/deployments/create",
                                   R"({"id":")" + id + R"(","artifact_name":"release-1","all":true})",
                                   "tern/fleet/replies/b"),
                               env.now);
    auto reply = last_on(out, "tern/fleet/replies/b");
    return reply ? reply->payload : "<no reply>";
  };
  for (int round = 0; round < 10; ++round) {
    const std::string a_id = "a" + std::to_string(round), b_id = "b" + std::to_string(round);
    auto [a_reply, b_reply] = at_once(
        [&] {
          return env.command("tern/fleet/deployments/create",
                             R"({"id":")" + a_id + R"(","artifact_name":"release-1","all":true})");
        },
        [&] { return create_on_b(b_id); });
    std::size_t in_a = 0, in_b = 0;
    for (int i = 0; i < devices; ++i) {
      const bool a = env.store->device_deployment(a_id, dev(i)).value().has_value();
      const bool b2 = env.store->device_deployment(b_id, dev(i)).value().has_value();
      EXPECT_FALSE(a && b2) << "round " << round << ": " << dev(i) << " is in " << a_id << " and " << b_id;
      in_a += a;
      in_b += b2;
    }
    // Each device in exactly one; the create that came second found none free and was refused.
    EXPECT_EQ(in_a + in_b, static_cast<std::size_t>(devices)) << a_reply << "\n" << b_reply;
    for (auto* id : {&a_id, &b_id}) {
      auto d = env.store->deployment(*id).value();
      if (!d) continue;
      auto aborted = env.command("tern/fleet/deployments/" + *id + "/abort", "");
      EXPECT_NE(aborted.find("\"ok\":true"), std::string::npos) << aborted;
    }
  }
}

// A deployment to 10,000 devices takes a constant number of locks: on PostgreSQL, a trigger the
// test adds counts the advisory locks the create's transaction holds when it writes the deployment
// (after choosing its targets): "admission" and "deployment:big", not one per device (the previous
// create held 10,001 there, a slot of PostgreSQL's shared lock table each: a default server ran out
// of shared memory at 10,000 to 20,000). Prints how long the create took (not asserted: machines
// are shared).
TEST(BridgeFleet, CreateForTenThousandDevicesTakesTwoLocksNotOnePerDevice) {
  FleetEnv env;
  constexpr int devices = 10000;
  const bool postgres = env.where.starts_with("postgresql");
  if (postgres)
    store_exec(env.where,
               "CREATE TABLE lock_probe (n BIGINT); "
               "CREATE FUNCTION probe_locks() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
               "INSERT INTO lock_probe SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
               "pid = pg_backend_pid(); RETURN NULL; END $$; "
               "CREATE TRIGGER probe_locks AFTER INSERT ON deployments FOR EACH ROW EXECUTE FUNCTION probe_locks()");
  std::vector<bridge::DeviceRecord> all;
  for (int i = 0; i < devices; ++i) {
    bridge::DeviceRecord d;
    d.id = "device-" + std::to_string(100000 + i);
    d.admission = i % 100 == 7 ? "rejected" : "accepted";
    all.push_back(d);
  }
  ASSERT_TRUE(env.store->put_devices(all));
  const auto t0 = std::chrono::steady_clock::now();
  auto created = env.command("tern/fleet/deployments/create", R"({"id":"big","artifact_name":"release-1","all":true})");
  const auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_NE(created.find("\"ok\":true"), std::string::npos) << created.substr(0, 300);
  EXPECT_NE(created.find("\"devices\":9900"), std::string::npos) << created.substr(0, 300);
  EXPECT_NE(created.find("\"skipped_count\":100"), std::string::npos) << created.substr(0, 300);
  EXPECT_EQ(env.store->status_counts("big").value().size(), 1u);
  if (postgres) {
    const std::string db = env.where.substr(env.where.rfind('/') + 1);
    EXPECT_EQ(Postgres::shared().psql(db, "SELECT n FROM lock_probe"), "2\n")
        << "advisory locks held by the create when it wrote the deployment";
  }
  std::printf("create to %d devices (%s): %.0f ms\n", devices, postgres ? "postgresql" : "sqlite", ms);
}

// A device in two open deployments (create prevents it; a store written by an older bridge or by
// hand may hold it): active_deployment_of and active_deployments_of both name the oldest, whatever
// order the rows were written in. Before, LIMIT 1 without ORDER BY named the row found first.
TEST(BridgeStore, TheActiveDeploymentOfADeviceInTwoIsTheOldest) {
  FleetEnv env;
  for (auto [id, created] : {std::pair<const char*, std::int64_t>{"a-new", 2000}, {"z-old", 1000}, {"m-same", 1000}}) {
    bridge::DeploymentRecord d;
    d.id = id;
    d.artifact = "release-1";
    d.targets = "{}";
    d.phases = {100};
    d.state = "running";
    d.created = created;
    ASSERT_TRUE(env.store->insert_deployment(d));
  }
  // The newest row first, so the one a scan meets first is the wrong one.
  for (const char* dep : {"a-new", "z-old", "m-same"}) {
    bridge::DeviceDeploymentRecord row;
    row.deployment = dep;
    row.device = "device-1";
    row.status = "sent";
    ASSERT_TRUE(env.store->put_device_deployment(row));
  }
  bridge::DeviceDeploymentRecord other;
  other.deployment = "a-new";
  other.device = "device-2";
  other.status = "downloading";
  ASSERT_TRUE(env.store->put_device_deployment(other));
  EXPECT_EQ(env.store->active_deployment_of("device-1").value(), std::optional<std::string>("m-same"));
  EXPECT_EQ(env.store->active_deployments_of({"device-1", "device-2", "device-3"}).value(),
            (std::map<std::string, std::string>{{"device-1", "m-same"}, {"device-2", "a-new"}}));
}

// A third session holding the lock `key` until release() (then commits).
struct HeldLock {
  std::atomic<bool> held{false}, go{false};
  std::thread thread;
  HeldLock(Store& store, const std::string& key) {
    thread = std::thread([&store, key, this] {
      auto t = store.transaction([&]() -> Result<void> {
        if (auto l = store.lock(key); !l) return l;
        held = true;
        while (!go) std::this_thread::sleep_for(std::chrono::milliseconds(5));
        return {};
      });
      EXPECT_TRUE(t) << t.error().message();
      held = true;
    });
    while (!held) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  void release() {
    go = true;
    thread.join();
  }
};

// Waits until a session of the database waits for `key` (or `command` ended); true if one does.
bool wait_until_waiting_for(const std::string& where, const std::string& key, const RunningCommand& command) {
  while (!command.done && waiting_for(where, key) == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return !command.done;
}

// A create held half-way: it holds "admission" and waits for its deployment's lock, which a third
// session holds until release().
struct HeldCreate {
  std::unique_ptr<Store> third;
  std::unique_ptr<HeldLock> deployment_lock;
  std::unique_ptr<RunningCommand> create;
  HeldCreate(FleetEnv& env, const std::string& id) {
    third = Store::open(env.where).value();
    deployment_lock = std::make_unique<HeldLock>(*third, "deployment:" + id);
    create = std::make_unique<RunningCommand>(env.where, "deployment:" + id, [&env, id] {
      return env.command("tern/fleet/deployments/create",
                         R"({"id":")" + id + R"(","artifact_name":"release-1","all":true})");
    });
  }
  std::string finish() {
    deployment_lock->release();
    create->join();
    return create->reply;
  }
};

// Preauthorizing devices while a create on another bridge is choosing them as targets: the
// preauthorize waits for the create's "admission" lock (it takes it shared, first), then runs;
// neither deadlocks. (Before the admission lock, preauthorize and create both took the devices'
// locks, and preauthorize taking them in the list's order deadlocked with create.)
TEST(BridgeFleet, PreauthorizeAndCreateOfTheSameDevicesDoNotDeadlock) {
  FleetEnv env;
  TERN_LOCKS_ARE_POSTGRESQLS(env);
  env.accept("device-1");
  env.accept("device-2");
  HeldCreate create(env, "x1");
  ASSERT_TRUE(create.create->blocked_on_lock) << "create did not wait for deployment:x1: " << create.create->reply;
  SecondBridge b(env);
  RunningCommand preauthorize(env.where, "admission", [&] {
    auto out = b.fleet->handle(msg("tern/fleet/devices/preauthorize", R"({"devices":["device-2","device-1"]})",
                                   "tern/fleet/replies/b"),
                               env.now);
    auto reply = last_on(out, "tern/fleet/replies/b");
    return reply ? reply->payload : "<no reply>";
  });
  // RunningCommand returns when any session of the database waits: wait for preauthorize's own.
  EXPECT_TRUE(wait_until_waiting_for(env.where, "admission", preauthorize))
      << "preauthorize did not wait for the create's admission lock: " << preauthorize.reply;
  const std::string created = create.finish();
  preauthorize.join();
  EXPECT_NE(created.find("\"ok\":true"), std::string::npos) << created;
  EXPECT_NE(preauthorize.reply.find("\"ok\":true"), std::string::npos) << preauthorize.reply;
  EXPECT_TRUE(env.store->device_deployment("x1", "device-1").value());
  EXPECT_TRUE(env.store->device_deployment("x1", "device-2").value());
}

// A reject on another bridge while a create is choosing its targets waits for the create (the
// reject takes "admission" shared, first), then finds the device in the new deployment and takes it
// out: a rejected device is never left with a deployment to run.
TEST(BridgeFleet, RejectWaitsForARunningCreateAndTakesTheDeviceOutOfIt) {
  FleetEnv env;
  TERN_LOCKS_ARE_POSTGRESQLS(env);
  env.accept("device-1");
  env.accept("device-2");
  HeldCreate create(env, "x1");
  ASSERT_TRUE(create.create->blocked_on_lock) << "create did not wait for deployment:x1: " << create.create->reply;
  SecondBridge b(env);
  RunningCommand reject(env.where, "admission",
                        [&] { return b.command("tern/fleet/devices/device-1/reject", env.now); });
  EXPECT_TRUE(wait_until_waiting_for(env.where, "admission", reject))
      << "the reject did not wait for the create's admission lock: " << reject.reply;
  const std::string created = create.finish();
  reject.join();
  EXPECT_NE(created.find("\"ok\":true"), std::string::npos) << created;
  EXPECT_NE(reject.reply.find("\"ok\":true"), std::string::npos) << reject.reply;
  auto row = env.store->device_deployment("x1", "device-1").value();
  ASSERT_TRUE(row) << "create did not target device-1 (it was accepted when create read it)";
  EXPECT_EQ(row->status, "aborted");
  EXPECT_EQ(row->error, "device rejected");
  EXPECT_EQ(env.store->active_deployment_of("device-1").value(), std::nullopt);
  EXPECT_EQ(env.store->active_deployment_of("device-2").value(), std::optional<std::string>("x1"));
  EXPECT_EQ(counted(*env.store, "x1"), env.store->status_counts("x1").value());
}

// Ingest does not take the admission lock: a device's inventory from another bridge is stored while
// a create holds it.
TEST(BridgeFleet, IngestDoesNotWaitForARunningCreate) {
  FleetEnv env;
  TERN_LOCKS_ARE_POSTGRESQLS(env);
  env.accept("device-1");
  HeldCreate create(env, "x1");
  ASSERT_TRUE(create.create->blocked_on_lock) << "create did not wait for deployment:x1: " << create.create->reply;
  SecondBridge b(env);
  RunningCommand ingest(env.where, "admission", [&] {
    b.fleet->handle(msg("tern/devices/device-9/inventory", R"({"device_type":"qemu","artifact_name":"old"})"),
                    env.now);
    return std::string("stored");
  });
  EXPECT_FALSE(wait_until_waiting_for(env.where, "admission", ingest)) << "the ingest waited for the create";
  const bool ended_first = ingest.done;  // before the create was let go
  auto seen = b.store->device("device-9").value();  // env.store is the waiting create's connection
  const std::string created = create.finish();
  ingest.join();
  EXPECT_TRUE(ended_first);
  ASSERT_TRUE(seen) << "the ingest did not store device-9 while the create held the admission lock";
  EXPECT_EQ(seen->device_type, "qemu");
  EXPECT_NE(created.find("\"ok\":true"), std::string::npos) << created;
}

}  // namespace
}  // namespace tern::test
