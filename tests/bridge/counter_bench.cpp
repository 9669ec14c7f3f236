// tern-counter-bench [N...] (default 10000 30000): on a private PostgreSQL server (the tests'
// fixture, tests/bridge/test_store.hpp), what the deployment_counts triggers cost the bridge, with
// migration 5's row trigger and with migration 6's statement triggers, in one run:
//   create  deployments/create to N accepted devices (N rows inserted, then marked sent);
//   ingest  one "downloading" status from every device, in batches of 256 (as the bridge takes a
//           burst: one transaction, multi-row statements);
//   single  then an "installing" status from 2,000 of them one at a time (a status that arrives
//           alone: one transaction, one row per statement), per status;
//   abort   deployments/abort (multi-row statements, in one transaction);
//   sql1    then, in SQL alone (one psql DO block), 2,000 one-row upserts each committed on its
//           own: moving a row to another status, and changing only its bytes; per statement.
//           What a trigger adds to a status ingested alone, without the bridge's round trips.
// Prints milliseconds per step and the row/statement ratio; exits 1 if the counters of either
// differ from a recount of the rows. Times are printed, never checked.
#include "broker-bridge/fleet.hpp"
#include "broker-bridge/store.hpp"
#include "common/protocol.hpp"
#include "tests/bridge/count_triggers.hpp"
#include "tests/bridge/test_artifact.hpp"
#include "tests/bridge/test_store.hpp"
#include "tests/support/testenv.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace tern::test {
namespace {

struct Times {
  double create = 0, ingest = 0, single = 0, abort = 0, sql_move = 0, sql_same = 0;
  bool counted_right = false;
};

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

mqtt::Message command(const std::string& topic, const std::string& body) {
  mqtt::Message m;
  m.topic = topic;
  m.payload = body;
  m.response_topic = "tern/fleet/replies/bench";
  m.correlation_data = "bench";
  return m;
}

bool replied_ok(const bridge::Outgoing& out) {
  for (auto& m : out)
    if (m.topic == "tern/fleet/replies/bench") return m.payload.find("\"ok\":true") != std::string::npos;
  return false;
}

Times run(int devices, bool row_trigger) {
  TempDir dir{"tern-counter-bench"};
  fs::create_directories(dir / "artifacts");
  write_test_artifact(dir / "artifacts", "release-1", std::string(4096, 'x'));

  const std::string where = Postgres::shared().new_database();
  auto store = bridge::Store::open(where).value();
  if (row_trigger) back_to_schema_five(where);
  bridge::FleetOptions o;
  o.artifact_base_url = "https://127.0.0.1:1/artifacts";
  o.artifact_dir = dir / "artifacts";
  bridge::Fleet fleet(*store, o);
  if (!fleet.rescan_artifacts()) throw std::runtime_error("rescanning the artifacts failed");
  std::vector<bridge::DeviceRecord> all;
  for (int i = 0; i < devices; ++i) {
    bridge::DeviceRecord d;
    d.id = "device-" + std::to_string(1000000 + i);
    d.admission = "accepted";
    all.push_back(d);
  }
  if (!store->put_devices(all)) throw std::runtime_error("writing the devices failed");

  // Device i's status for the deployment "big".
  auto status = [&](int i, protocol::Status st, std::uint64_t seq) {
    protocol::StatusEvent e;
    e.deployment_id = "big";
    e.status = st;
    e.seq = seq;
    mqtt::Message m;
    m.topic = "tern/devices/" + all[static_cast<std::size_t>(i)].id + "/status";
    m.payload = protocol::serialize(e);
    return m;
  };

  Times t;
  std::int64_t now = 1000;
  auto t0 = std::chrono::steady_clock::now();
  if (!replied_ok(fleet.handle(command("tern/fleet/deployments/create",
                                       R"({"id":"big","artifact_name":"release-1","all":true})"),
                               now)))
    throw std::runtime_error("the create failed");
  t.create = ms_since(t0);

  t0 = std::chrono::steady_clock::now();
  for (int at = 0; at < devices; at += 256) {
    std::vector<mqtt::Message> batch;
    for (int i = at; i < devices && i < at + 256; ++i) batch.push_back(status(i, protocol::Status::downloading, 1));
    fleet.handle_batch(batch, ++now);
  }
  t.ingest = ms_since(t0);
  const std::string downloading = store_query(where, "SELECT n FROM deployment_counts WHERE deployment = 'big' "
                                                     "AND status = 'downloading'");

  const int alone = std::min(devices, 2000);
  t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < alone; ++i) fleet.handle(status(i, protocol::Status::installing, 2), ++now);
  t.single = ms_since(t0) / alone;
  const std::string installing = store_query(where, "SELECT n FROM deployment_counts WHERE deployment = 'big' "
                                                    "AND status = 'installing'");

  t0 = std::chrono::steady_clock::now();
  if (!replied_ok(fleet.handle(command("tern/fleet/deployments/big/abort", ""), ++now)))
    throw std::runtime_error("the abort failed");
  t.abort = ms_since(t0);
  const std::string db = where.substr(where.rfind('/') + 1);
  auto one_row_statements = [&](const std::string& set) {
    const auto s0 = std::chrono::steady_clock::now();
    Postgres::shared().psql(db, "DO $$ BEGIN FOR i IN 0.." + std::to_string(alone - 1) +
                                    " LOOP INSERT INTO device_deployments (deployment, device, phase, status) "
                                    "VALUES ('big', 'device-' || (1000000 + i), 0, 'aborted') "
                                    "ON CONFLICT (deployment, device) DO UPDATE SET " + set + "; COMMIT; END LOOP; END $$");
    return ms_since(s0) / alone;
  };
  t.sql_move = one_row_statements("status = CASE WHEN device_deployments.status = 'success' THEN 'failure' "
                                  "ELSE 'success' END");
  t.sql_same = one_row_statements("bytes = device_deployments.bytes + 1");
  t.counted_right = downloading == std::to_string(devices) + "\n" && installing == std::to_string(alone) + "\n" &&
                    counters(where) == recount(where) &&
                    counters(where) == (devices > alone ? "big|0|aborted|" + std::to_string(devices - alone) + "\n"
                                                        : std::string()) +
                                           "big|0|success|" + std::to_string(alone) + "\n";
  return t;
}

}  // namespace
}  // namespace tern::test

int main(int argc, char** argv) {
  using namespace tern::test;
  std::vector<int> sizes;
  for (int i = 1; i < argc; ++i) sizes.push_back(std::atoi(argv[i]));
  if (sizes.empty()) sizes = {10000, 30000};
  bool right = true;
  std::printf("%8s  %-10s %10s %10s %10s %10s %10s %10s\n", "devices", "triggers", "create ms", "ingest ms",
              "single ms", "abort ms", "sql1 move", "sql1 same");
  for (int n : sizes) {
    if (n <= 0) {
      std::fprintf(stderr, "tern-counter-bench: not a number of devices: %d\n", n);
      return 2;
    }
    try {
      const Times row = run(n, true);
      const Times statement = run(n, false);
      std::printf("%8d  %-10s %10.0f %10.0f %10.2f %10.0f %10.3f %10.3f\n", n, "row", row.create, row.ingest,
                  row.single, row.abort, row.sql_move, row.sql_same);
      std::printf("%8d  %-10s %10.0f %10.0f %10.2f %10.0f %10.3f %10.3f\n", n, "statement", statement.create,
                  statement.ingest, statement.single, statement.abort, statement.sql_move, statement.sql_same);
      std::printf("%8d  %-10s %10.2f %10.2f %10.2f %10.2f %10.2f %10.2f\n", n, "row/stmt",
                  row.create / statement.create, row.ingest / statement.ingest, row.single / statement.single,
                  row.abort / statement.abort, row.sql_move / statement.sql_move, row.sql_same / statement.sql_same);
      std::fflush(stdout);
      for (auto* t : {&row, &statement})
        if (!t->counted_right) {
          std::fprintf(stderr, "tern-counter-bench: %d devices, %s triggers: the counters differ from a recount\n", n,
                       t == &row ? "row" : "statement");
          right = false;
        }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "tern-counter-bench: %d devices: %s\n", n, e.what());
      return 1;
    }
  }
  return right ? 0 : 1;
}
