// Where the bridge tests keep their store: SQLite files by default, or databases of a private
// PostgreSQL server when TERN_TEST_STORE=postgresql (ctest runs the bridge suites both ways; the
// PostgreSQL runs are named "pg.*").
//
//   auto where = test_store(dir.path());     // a file in dir, or "postgresql://..." (a fresh database)
//   auto store = bridge::Store::open(where);
//   store_exec(where, "UPDATE schema_version SET version = 99");
//
// The server: Debian's PostgreSQL 15 (initdb, pg_ctl from `pg_config --bindir`), one per test
// process, started on first use in a temporary directory on a free loopback port, as user nobody
// when the tests run as root (PostgreSQL refuses to run as root), with trust authentication for
// the loopback only, stopped (immediate) when the process exits.
#pragma once

#include <sqlite3.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>

#include "tests/support/testenv.hpp"

namespace tern::test {

class Postgres {
 public:
  static Postgres& shared() {
    static Postgres pg;
    return pg;
  }
  /// A new, empty database; its connection URI.
  std::string new_database() {
    const std::string name = "t" + std::to_string(::getpid()) + "_" + std::to_string(++counter_);
    psql("postgres", "CREATE DATABASE " + name);
    return uri(name);
  }
  std::string uri(const std::string& db) const {
    return "postgresql://tern@127.0.0.1:" + std::to_string(port_) + "/" + db;
  }
  /// Runs `sql` with psql on `db`; returns its unaligned, tuples-only output ("a|b" lines); throws
  /// with psql's output on failure.
  std::string psql(const std::string& db, const std::string& sql) const {
    auto r =
        run(shell_quote(bindir_ + "/psql") + " -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p " +
            std::to_string(port_) + " -U tern -d " + shell_quote(db) + " -c " + shell_quote(sql) + " 2>&1");
    if (r.exit_code != 0) throw std::runtime_error("psql " + sql + ": " + r.output);
    return r.output;
  }
  ~Postgres() {
    run(as_user_ + shell_quote(bindir_ + "/pg_ctl") + " -D " + shell_quote((dir_ / "data").string()) +
        " -m immediate -w stop >/dev/null 2>&1");
  }

 private:
  Postgres() {
    auto b = run("pg_config --bindir");
    if (b.exit_code != 0) throw std::runtime_error("pg_config not found (install libpq-dev): " + b.output);
    bindir_ = b.output.substr(0, b.output.find('\n'));
    if (::geteuid() == 0) {
      as_user_ = "runuser -u nobody -- ";
      run("chown nobody " + shell_quote(dir_.path().string()));
    }
    const std::string data = (dir_ / "data").string();
    auto init = run(as_user_ + shell_quote(bindir_ + "/initdb") + " -D " + shell_quote(data) +
                    " -U tern --auth=trust -E UTF8 --no-sync 2>&1");
    if (init.exit_code != 0) throw std::runtime_error("initdb failed: " + init.output);
    port_ = free_port();
    const std::string opts = "-p " + std::to_string(port_) + " -k " + dir_.path().string() +
                             " -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200";
    // pg_ctl -w polls until the server accepts connections (or fails after -t seconds).
    auto start = run(as_user_ + shell_quote(bindir_ + "/pg_ctl") + " -D " + shell_quote(data) + " -l " +
                     shell_quote((dir_ / "server.log").string()) + " -w -t 60 -o " + shell_quote(opts) +
                     " start 2>&1");
    if (start.exit_code != 0) {
      std::string log;
      try {
        log = read_file(dir_ / "server.log");
      } catch (const std::exception&) {
      }
      throw std::runtime_error("pg_ctl start failed: " + start.output + "\n" + log);
    }
  }
  TempDir dir_{"tern-pg"};
  std::string bindir_, as_user_;
  int port_ = 0;
  std::atomic<int> counter_{0};
};

inline bool test_store_is_postgres() {
  const char* v = std::getenv("TERN_TEST_STORE");
  return v && std::string_view(v) == "postgresql";
}

/// A fresh store location: `dir`/`name`.db, or a new PostgreSQL database.
inline std::string test_store(const fs::path& dir, const std::string& name = "bridge") {
  if (test_store_is_postgres()) return Postgres::shared().new_database();
  return (dir / (name + ".db")).string();
}

/// Runs `sql` directly on the store at `where` (behind the bridge's back, for tests).
inline void store_exec(const std::string& where, const std::string& sql) {
  if (where.starts_with("postgresql://")) {
    Postgres::shared().psql(where.substr(where.rfind('/') + 1), sql);
    return;
  }
  sqlite3* db = nullptr;
  if (sqlite3_open(where.c_str(), &db) != SQLITE_OK) throw std::runtime_error("cannot open " + where);
  std::unique_ptr<sqlite3, decltype(&sqlite3_close)> guard(db, &sqlite3_close);
  if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK)
    throw std::runtime_error(sql + ": " + sqlite3_errmsg(db));
}

}  // namespace tern::test
