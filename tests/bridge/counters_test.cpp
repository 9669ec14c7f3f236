// deployment_counts against a recount of device_deployments: across migration 6 (PostgreSQL's row
// trigger replaced by statement triggers) and for statements that move rows of several
// deployments, phases and statuses at once. Runs on SQLite and, as pg.*, on PostgreSQL.
#include <gtest/gtest.h>

#include "broker-bridge/store.hpp"
#include "tests/bridge/count_triggers.hpp"
#include "tests/bridge/test_store.hpp"
#include "tests/support/testenv.hpp"

namespace tern::test {
namespace {

using bridge::Store;

void add_deployment(Store& store, const std::string& id) {
  bridge::DeploymentRecord d;
  d.id = id;
  d.artifact = "release-1";
  d.targets = "{}";
  d.phases = {50, 100};
  d.state = "running";
  d.created = 1;
  ASSERT_TRUE(store.insert_deployment(d));
}

bridge::DeviceDeploymentRecord row(const std::string& deployment, const std::string& device, int phase,
                                   const std::string& status) {
  bridge::DeviceDeploymentRecord r;
  r.deployment = deployment;
  r.device = device;
  r.phase = phase;
  r.status = status;
  return r;
}

// Three deployments, 40 rows each over two phases and four statuses: ("dA", "device-07", 1, "sent").
std::vector<bridge::DeviceDeploymentRecord> some_rows() {
  const char* statuses[] = {"pending", "sent", "downloading", "success"};
  std::vector<bridge::DeviceDeploymentRecord> rows;
  for (const char* dep : {"dA", "dB", "dC"})
    for (int i = 0; i < 40; ++i)
      rows.push_back(row(dep, "device-" + std::string(i < 10 ? "0" : "") + std::to_string(i), i % 2, statuses[i % 4]));
  return rows;
}

std::string negatives(const std::string& where) {
  return store_query(where, "SELECT deployment, phase, status, n FROM deployment_counts WHERE n < 0");
}

TEST(BridgeCounters, ASchemaFiveStoreWithRowsMigratesToSixAndKeepsCounting) {
  TempDir dir;
  const auto where = test_store(dir.path());
  {
    auto s = Store::open(where).value();
    for (const char* dep : {"dA", "dB", "dC"}) add_deployment(*s, dep);
  }
  back_to_schema_five(where);
  // Rows written at schema 5, counted by its triggers (the row trigger on PostgreSQL).
  store_exec(where,
             "INSERT INTO device_deployments (deployment, device, phase, status) VALUES "
             "('dA', 'x1', 0, 'success'), ('dA', 'x2', 0, 'sent'), ('dA', 'x3', 1, 'pending'), "
             "('dB', 'x1', 0, 'failure'), ('dB', 'x4', 1, 'pending'); "
             "UPDATE device_deployments SET status = 'downloading' WHERE deployment = 'dA' AND device = 'x2'; "
             "DELETE FROM device_deployments WHERE deployment = 'dB' AND device = 'x4'");
  ASSERT_EQ(counters(where), "dA|0|downloading|1\ndA|0|success|1\ndA|1|pending|1\ndB|0|failure|1\n");

  auto s = Store::open(where);
  ASSERT_TRUE(s) << s.error().message();
  Store& store = **s;
  EXPECT_EQ(store.version().value(), 6);
  EXPECT_EQ(counters(where), recount(where));
  if (where.starts_with("postgresql")) {
    EXPECT_EQ(store_query(where, "SELECT tgname FROM pg_trigger WHERE tgrelid = 'device_deployments'::regclass "
                                 "AND NOT tgisinternal ORDER BY tgname"),
              "device_deployments_count_delete\ndevice_deployments_count_insert\ndevice_deployments_count_update\n");
  }

  // New rows and moves of old ones in one multi-row upsert (inserted and updated rows together).
  std::vector<bridge::DeviceDeploymentRecord> batch = some_rows();
  batch.push_back(row("dA", "x1", 0, "success"));      // unchanged
  batch.push_back(row("dA", "x2", 1, "installing"));   // another phase and status
  batch.push_back(row("dA", "x3", 1, "sent"));         // another status
  batch.push_back(row("dB", "x1", 0, "failure"));      // unchanged
  ASSERT_TRUE(store.put_device_deployments(batch));
  EXPECT_EQ(counters(where), recount(where));
  EXPECT_NE(counters(where).find("dA|1|installing|1\n"), std::string::npos) << counters(where);

  // One row at a time, as a reject or a retry writes it.
  ASSERT_TRUE(store.put_device_deployment(row("dC", "device-05", 0, "aborted")));
  ASSERT_TRUE(store.put_device_deployment(row("dC", "late", 1, "pending")));
  EXPECT_EQ(counters(where), recount(where));

  // Inside a transaction, several statements.
  ASSERT_TRUE(store.transaction([&]() -> Result<void> {
    if (auto w = store.put_device_deployment(row("dB", "device-03", 1, "success")); !w) return w;
    return store.put_device_deployments({row("dB", "device-04", 0, "failure"), row("dC", "device-04", 1, "failure")});
  }));
  EXPECT_EQ(counters(where), recount(where));

  // Deletes.
  store_exec(where, "DELETE FROM device_deployments WHERE device IN ('x1', 'device-01', 'device-02')");
  EXPECT_EQ(counters(where), recount(where));
  EXPECT_EQ(negatives(where), "");
  EXPECT_EQ(store_query(where, "SELECT COUNT(*) FROM device_deployments"), "117\n");
}

TEST(BridgeCounters, OneStatementOverSeveralDeploymentsPhasesAndStatusesKeepsTheCounters) {
  TempDir dir;
  const auto where = test_store(dir.path());
  auto store = Store::open(where).value();
  for (const char* dep : {"dA", "dB", "dC"}) add_deployment(*store, dep);
  ASSERT_TRUE(store->put_device_deployments(some_rows()));
  EXPECT_EQ(counters(where), recount(where));
  EXPECT_NE(counters(where).find("dB|1|sent|10\n"), std::string::npos) << counters(where);

  // A status change in every deployment and both phases.
  store_exec(where, "UPDATE device_deployments SET status = 'aborted' WHERE status IN ('pending', 'sent')");
  EXPECT_EQ(counters(where), recount(where));
  // Rows moving between phases (and statuses) in one statement.
  store_exec(where,
             "UPDATE device_deployments SET phase = 1 - phase, status = CASE status WHEN 'aborted' THEN 'pending' "
             "ELSE status END WHERE device < 'device-20'");
  EXPECT_EQ(counters(where), recount(where));
  // Statuses swapped within one statement: each counter loses and gains the same rows.
  const std::string before = counters(where);
  store_exec(where,
             "UPDATE device_deployments SET status = CASE status WHEN 'success' THEN 'downloading' "
             "WHEN 'downloading' THEN 'success' ELSE status END, bytes = bytes + 1");
  EXPECT_EQ(counters(where), recount(where));
  // Each deployment and phase has as many success rows as downloading rows: the swap changes no counter.
  EXPECT_EQ(counters(where), before);
  // Only columns outside the key.
  store_exec(where, "UPDATE device_deployments SET bytes = 7, total = 9, updated = 3");
  EXPECT_EQ(counters(where), before);
  // A multi-row upsert over all deployments, inserting and updating at once.
  auto rows = some_rows();
  for (auto& r : rows) r.status = r.phase == 0 ? "installing" : r.status;
  rows.push_back(row("dA", "new-1", 1, "pending"));
  rows.push_back(row("dC", "new-2", 0, "pending"));
  ASSERT_TRUE(store->put_device_deployments(rows));
  EXPECT_EQ(counters(where), recount(where));
  // Deletes across deployments, phases and statuses.
  store_exec(where, "DELETE FROM device_deployments WHERE device LIKE '%1' OR device LIKE '%4' OR deployment = 'dB'");
  EXPECT_EQ(counters(where), recount(where));
  store_exec(where, "DELETE FROM device_deployments");
  EXPECT_EQ(counters(where), "");
  EXPECT_EQ(negatives(where), "");
}

// Rows written behind the triggers' back (a counter missing): as migration 5's row triggers did,
// rows leaving that key decrement nothing (no negative counter), and the counters agree with a
// recount again once those rows are gone.
TEST(BridgeCounters, RowsLeavingAMissingCounterLeaveNoNegativeCount) {
  TempDir dir;
  const auto where = test_store(dir.path());
  auto store = Store::open(where).value();
  add_deployment(*store, "dA");
  ASSERT_TRUE(store->put_device_deployments({row("dA", "r1", 0, "sent"), row("dA", "r2", 0, "sent"),
                                             row("dA", "r3", 0, "sent"), row("dA", "r4", 1, "pending")}));
  store_exec(where, "DELETE FROM deployment_counts WHERE deployment = 'dA' AND status = 'sent'");
  store_exec(where, "UPDATE device_deployments SET status = 'downloading' WHERE device IN ('r1', 'r2')");
  EXPECT_EQ(counters(where), "dA|0|downloading|2\ndA|1|pending|1\n");
  store_exec(where, "DELETE FROM device_deployments WHERE device IN ('r3', 'r4')");
  EXPECT_EQ(counters(where), "dA|0|downloading|2\n");
  EXPECT_EQ(counters(where), recount(where));
  EXPECT_EQ(negatives(where), "");
}

}  // namespace
}  // namespace tern::test
