// The deployment_counts triggers in tests: reading the counters beside a recount of the rows, and
// putting a PostgreSQL store back to schema 5 (migration 5's row trigger, as it installed it) to
// test migration 6 and to measure the two against each other (tern-counter-bench).
//
//   auto where = test_store(dir.path());
//   { Store::open(where).value(); }
//   back_to_schema_five(where);            // PostgreSQL: the row trigger again; SQLite: the same triggers
//   EXPECT_EQ(counters(where), recount(where));
#pragma once

#include <sqlite3.h>

#include <memory>
#include <stdexcept>
#include <string>

#include "broker-bridge/store.hpp"
#include "tests/bridge/test_store.hpp"

namespace tern::test {

/// Runs a query on the store at `where`; its rows as psql -A -t prints them: "a|b|c\n" per row.
inline std::string store_query(const std::string& where, const std::string& sql) {
  if (where.starts_with("postgresql://")) return Postgres::shared().psql(where.substr(where.rfind('/') + 1), sql);
  sqlite3* db = nullptr;
  if (sqlite3_open(where.c_str(), &db) != SQLITE_OK) throw std::runtime_error("cannot open " + where);
  std::unique_ptr<sqlite3, decltype(&sqlite3_close)> guard(db, &sqlite3_close);
  std::string out;
  auto row = [](void* to, int n, char** values, char**) {
    auto& s = *static_cast<std::string*>(to);
    for (int i = 0; i < n; ++i) s += (i ? "|" : "") + std::string(values[i] ? values[i] : "");
    s += '\n';
    return 0;
  };
  if (sqlite3_exec(db, sql.c_str(), row, &out, nullptr) != SQLITE_OK)
    throw std::runtime_error(sql + ": " + sqlite3_errmsg(db));
  return out;
}

/// Every non-zero counter, "deployment|phase|status|n" lines in key order.
inline std::string counters(const std::string& where) {
  return store_query(where,
                     "SELECT deployment, phase, status, n FROM deployment_counts WHERE n <> 0 "
                     "ORDER BY deployment, phase, status");
}

/// The same, counted from the rows.
inline std::string recount(const std::string& where) {
  return store_query(where,
                     "SELECT deployment, phase, status, COUNT(*) FROM device_deployments "
                     "GROUP BY deployment, phase, status ORDER BY deployment, phase, status");
}

/// Takes a store at schema 6 back to schema 5, counters kept: on PostgreSQL migration 6's
/// statement triggers are replaced by migration 5's row trigger; SQLite's triggers are the same in both.
inline void back_to_schema_five(const std::string& where) {
  if (where.starts_with("postgresql://")) {
    store_exec(where, std::string("BEGIN; "
                                  "DROP TRIGGER device_deployments_count_insert ON device_deployments; "
                                  "DROP TRIGGER device_deployments_count_update ON device_deployments; "
                                  "DROP TRIGGER device_deployments_count_delete ON device_deployments; "
                                  "DROP FUNCTION tern_count_device_deployment_rows(); ") +
                          bridge::migration5_count_trigger_postgres + "UPDATE schema_version SET version = 5; COMMIT;");
    return;
  }
  store_exec(where, "UPDATE schema_version SET version = 5");
}

}  // namespace tern::test
