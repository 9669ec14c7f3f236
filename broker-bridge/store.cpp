#include "broker-bridge/store.hpp"

#include "common/json.hpp"

#include <boost/json/array.hpp>
#include <libpq-fe.h>
#include <sqlite3.h>

#include <array>
#include <charconv>
#include <unordered_map>
#include <variant>

namespace tern::bridge {

// Migration 5's PostgreSQL counter trigger (see count_triggers_sqlite below for both dialects).
const char* const migration5_count_trigger_postgres = R"sql(
CREATE FUNCTION tern_count_device_deployments() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND OLD.deployment = NEW.deployment AND OLD.phase = NEW.phase AND OLD.status = NEW.status THEN
    RETURN NULL;
  END IF;
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    UPDATE deployment_counts SET n = n - 1
      WHERE deployment = OLD.deployment AND phase = OLD.phase AND status = OLD.status;
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    INSERT INTO deployment_counts (deployment, phase, status, n) VALUES (NEW.deployment, NEW.phase, NEW.status, 1)
      ON CONFLICT (deployment, phase, status) DO UPDATE SET n = deployment_counts.n + 1;
  END IF;
  RETURN NULL;
END
$$;
CREATE TRIGGER device_deployments_count AFTER INSERT OR UPDATE OR DELETE ON device_deployments
  FOR EACH ROW EXECUTE FUNCTION tern_count_device_deployments();
)sql";

namespace {

// Numbered migrations: entry i brings the schema from version i to i + 1. Append, never edit.
const std::array<const char*, schema_version> migrations = {
    // 1: the initial schema.
    R"sql(
CREATE TABLE devices (
  id TEXT PRIMARY KEY,
  admission TEXT NOT NULL DEFAULT 'pending',
  grp TEXT NOT NULL DEFAULT '',
  device_type TEXT NOT NULL DEFAULT '',
  inventory TEXT NOT NULL DEFAULT '{}',
  last_seen BIGINT NOT NULL DEFAULT 0,
  presence TEXT NOT NULL DEFAULT 'unknown',
  presence_seq BIGINT NOT NULL DEFAULT 0,
  artifact_name TEXT NOT NULL DEFAULT ''
);
CREATE TABLE artifacts (
  name TEXT PRIMARY KEY,
  file TEXT NOT NULL,
  size BIGINT NOT NULL,
  sha256 TEXT NOT NULL,
  device_types TEXT NOT NULL,
  signed INTEGER NOT NULL,
  mtime BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE deployments (
  id TEXT PRIMARY KEY,
  artifact TEXT NOT NULL,
  targets TEXT NOT NULL,
  phases TEXT NOT NULL,
  pause_seconds BIGINT NOT NULL,
  threshold INTEGER NOT NULL,
  on_threshold TEXT NOT NULL,
  retries INTEGER NOT NULL,
  state TEXT NOT NULL,
  phase INTEGER NOT NULL,
  next_phase_at BIGINT NOT NULL DEFAULT 0,
  created BIGINT NOT NULL,
  reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE device_deployments (
  deployment TEXT NOT NULL REFERENCES deployments(id),
  device TEXT NOT NULL,
  phase INTEGER NOT NULL,
  status TEXT NOT NULL,
  bytes BIGINT NOT NULL DEFAULT 0,
  total BIGINT NOT NULL DEFAULT 0,
  attempt INTEGER NOT NULL DEFAULT 0,
  error TEXT NOT NULL DEFAULT '',
  last_seq BIGINT NOT NULL DEFAULT 0,
  updated BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (deployment, device)
);
CREATE INDEX device_deployments_by_device ON device_deployments (device, status);
CREATE INDEX device_deployments_by_status ON device_deployments (deployment, status);
CREATE TABLE history (
  @HISTORY_ID@
  deployment TEXT NOT NULL,
  device TEXT NOT NULL,
  seq BIGINT NOT NULL,
  status TEXT NOT NULL,
  time BIGINT NOT NULL,
  error TEXT NOT NULL DEFAULT '',
  attempt INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX history_by_device ON history (deployment, device, seq);
)sql",
    // 2: deployment logs sent by devices when a deployment fails, in pieces.
    R"sql(
CREATE TABLE deployment_logs (
  device TEXT NOT NULL,
  deployment TEXT NOT NULL,
  seq BIGINT NOT NULL,
  parts INTEGER NOT NULL,
  updated BIGINT NOT NULL,
  PRIMARY KEY (device, deployment)
);
CREATE TABLE deployment_log_parts (
  device TEXT NOT NULL,
  deployment TEXT NOT NULL,
  part INTEGER NOT NULL,
  data TEXT NOT NULL,
  PRIMARY KEY (device, deployment, part)
);
)sql",
    // 3: a deployment's download cap and reboot policy, passed to its devices (issue 17).
    R"sql(
ALTER TABLE deployments ADD COLUMN max_rate BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deployments ADD COLUMN reboot TEXT NOT NULL DEFAULT '';
)sql",
    // 4: bytes fetched and reused per device (adaptive installs).
    R"sql(
CREATE TABLE transfers (
  deployment TEXT NOT NULL,
  device TEXT NOT NULL,
  fetched BIGINT NOT NULL DEFAULT 0,
  reused BIGINT NOT NULL DEFAULT 0,
  artifact BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (deployment, device)
);
)sql",
    // 5: per deployment, phase and status, how many device rows there are, kept by triggers on
    // device_deployments so a rollout is evaluated from a few counters instead of a scan of its rows.
    R"sql(
CREATE TABLE deployment_counts (
  deployment TEXT NOT NULL,
  phase INTEGER NOT NULL,
  status TEXT NOT NULL,
  n BIGINT NOT NULL,
  PRIMARY KEY (deployment, phase, status)
);
INSERT INTO deployment_counts (deployment, phase, status, n)
  SELECT deployment, phase, status, COUNT(*) FROM device_deployments GROUP BY deployment, phase, status;
@COUNT_TRIGGERS@
)sql",
    // 6: the counters moved once per statement instead of once per row (PostgreSQL; SQLite keeps
    // migration 5's row triggers, having no others).
    R"sql(
@COUNT_STATEMENTS@
)sql",
};

// Migration 5's triggers, in each dialect: a row's (deployment, phase, status) leaving one counter
// and entering another. Every writer of a deployment's rows holds its "deployment:ID" lock (see
// Store::lock_all), so two bridges do not wait on each other's counters.
constexpr const char* count_triggers_sqlite = R"sql(
CREATE TRIGGER device_deployments_count_insert AFTER INSERT ON device_deployments BEGIN
  INSERT INTO deployment_counts (deployment, phase, status, n) VALUES (NEW.deployment, NEW.phase, NEW.status, 1)
    ON CONFLICT (deployment, phase, status) DO UPDATE SET n = deployment_counts.n + 1;
END;
CREATE TRIGGER device_deployments_count_update AFTER UPDATE ON device_deployments
  WHEN OLD.deployment <> NEW.deployment OR OLD.phase <> NEW.phase OR OLD.status <> NEW.status BEGIN
  UPDATE deployment_counts SET n = n - 1 WHERE deployment = OLD.deployment AND phase = OLD.phase AND status = OLD.status;
  INSERT INTO deployment_counts (deployment, phase, status, n) VALUES (NEW.deployment, NEW.phase, NEW.status, 1)
    ON CONFLICT (deployment, phase, status) DO UPDATE SET n = deployment_counts.n + 1;
END;
CREATE TRIGGER device_deployments_count_delete AFTER DELETE ON device_deployments BEGIN
  UPDATE deployment_counts SET n = n - 1 WHERE deployment = OLD.deployment AND phase = OLD.phase AND status = OLD.status;
END;
)sql";
// PostgreSQL's: migration5_count_trigger_postgres, at the top (tests use it too).

// Migration 6 on PostgreSQL: a row trigger updates the same few counter rows once per device row,
// and in one transaction each update is a new version of the row that later updates must step
// over, so a create to N devices cost O(N^2) (30,000 devices: 71 s). Statement triggers see the
// statement's rows as transition tables and apply one delta per (deployment, phase, status): a
// multi-row statement of 256 rows updates each counter once. (PostgreSQL 15 allows transition
// tables only on single-event triggers; an INSERT ... ON CONFLICT DO UPDATE fires the INSERT
// trigger with the inserted rows and the UPDATE trigger with the updated ones.) Deltas that cancel
// out (a row updated without changing its key) write nothing; as with migration 5, a decrement of a
// counter that does not exist (rows written behind the triggers' back) is dropped, not stored as a
// negative count. The counter rows are written in key order, so two statements touching the same
// deployments lock them in the same order.
constexpr const char* count_statements_postgres = R"sql(
DROP TRIGGER device_deployments_count ON device_deployments;
DROP FUNCTION tern_count_device_deployments();
CREATE FUNCTION tern_count_device_deployment_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO deployment_counts (deployment, phase, status, n)
      SELECT deployment, phase, status, COUNT(*) FROM tern_new_rows
        GROUP BY deployment, phase, status ORDER BY deployment, phase, status
      ON CONFLICT (deployment, phase, status) DO UPDATE SET n = deployment_counts.n + excluded.n;
  ELSIF TG_OP = 'UPDATE' THEN
    INSERT INTO deployment_counts (deployment, phase, status, n)
      SELECT m.deployment, m.phase, m.status, m.d FROM (
          SELECT deployment, phase, status, SUM(d) AS d FROM (
              SELECT deployment, phase, status, -1 AS d FROM tern_old_rows
              UNION ALL
              SELECT deployment, phase, status, 1 AS d FROM tern_new_rows) AS moved
            GROUP BY deployment, phase, status) AS m
        WHERE m.d > 0 OR (m.d < 0 AND EXISTS (SELECT FROM deployment_counts c WHERE c.deployment = m.deployment
                                                AND c.phase = m.phase AND c.status = m.status))
        ORDER BY m.deployment, m.phase, m.status
      ON CONFLICT (deployment, phase, status) DO UPDATE SET n = deployment_counts.n + excluded.n;
  ELSE
    INSERT INTO deployment_counts (deployment, phase, status, n)
      SELECT m.deployment, m.phase, m.status, m.d FROM (
          SELECT deployment, phase, status, -COUNT(*) AS d FROM tern_old_rows
            GROUP BY deployment, phase, status) AS m
        WHERE EXISTS (SELECT FROM deployment_counts c WHERE c.deployment = m.deployment
                        AND c.phase = m.phase AND c.status = m.status)
        ORDER BY m.deployment, m.phase, m.status
      ON CONFLICT (deployment, phase, status) DO UPDATE SET n = deployment_counts.n + excluded.n;
  END IF;
  RETURN NULL;
END
$$;
CREATE TRIGGER device_deployments_count_insert AFTER INSERT ON device_deployments
  REFERENCING NEW TABLE AS tern_new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION tern_count_device_deployment_rows();
CREATE TRIGGER device_deployments_count_update AFTER UPDATE ON device_deployments
  REFERENCING OLD TABLE AS tern_old_rows NEW TABLE AS tern_new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION tern_count_device_deployment_rows();
CREATE TRIGGER device_deployments_count_delete AFTER DELETE ON device_deployments
  REFERENCING OLD TABLE AS tern_old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION tern_count_device_deployment_rows();
)sql";

using DbPtr = std::unique_ptr<sqlite3, decltype(&sqlite3_close)>;
using StmtPtr = std::unique_ptr<sqlite3_stmt, decltype(&sqlite3_finalize)>;
using PgPtr = std::unique_ptr<PGconn, decltype(&PQfinish)>;
using PgResult = std::unique_ptr<PGresult, decltype(&PQclear)>;

[[noreturn]] void throw_io(std::string_view what, std::string_view message) {
  throw ErrorException(fail(Errc::io, std::string(what) + ": " + std::string(message)));
}

// Inside this file database failures throw ErrorException; every public method converts at its top.
[[noreturn]] void throw_db(sqlite3* db, std::string_view what) { throw_io(what, sqlite3_errmsg(db)); }

std::string pg_message(const PGresult* r, PGconn* c) {
  std::string m = r ? PQresultErrorMessage(r) : "";
  if (m.empty() && c) m = PQerrorMessage(c);
  while (!m.empty() && (m.back() == '\n' || m.back() == ' ')) m.pop_back();
  return m.empty() ? "unknown error" : m;
}

bool is_pg_uri(std::string_view s) { return s.starts_with("postgresql://") || s.starts_with("postgres://"); }

}  // namespace

// One connection, SQLite or PostgreSQL: the SQL is the same except where dialect() is asked.
struct Store::Impl {
  DbPtr db{nullptr, &sqlite3_close};
  PgPtr pg{nullptr, &PQfinish};
  std::string where;  // the file, or the URI without its password (for messages)
  int depth = 0;      // transaction nesting

  // Statements prepared once per connection and kept, by their SQL text: parsing (and
  // PostgreSQL's planning) cost more than running most of the bridge's statements. Multi-row
  // statements come in power-of-two sizes, so the texts are few; past max_prepared a new text is
  // prepared for its one use, as if uncached.
  struct Prepared {
    StmtPtr sqlite{nullptr, &sqlite3_finalize};
    bool busy = false;    // SQLite: a Stmt is stepping it (a second user of the text prepares its own)
    std::string pg_name;  // PostgreSQL: the statement's name on the server
  };
  static constexpr std::size_t max_prepared = 256;
  std::unordered_map<std::string, Prepared> prepared;  // after db: finalized before the close
  std::uint64_t pg_statements = 0;                     // names "tern_N", never reused on a connection

  bool postgres() const { return pg != nullptr; }

  // A dropped PostgreSQL connection is re-established before the next statement (outside a
  // transaction; inside one the statement fails and the transaction is rolled back). The new
  // session has none of the old one's prepared statements.
  void ensure_connected() {
    if (pg && PQstatus(pg.get()) != CONNECTION_OK && depth == 0) {
      PQreset(pg.get());
      prepared.clear();
      if (PQstatus(pg.get()) == CONNECTION_OK) start_session();
    }
  }
  // A PostgreSQL session's settings. Prepared statements are planned for their parameters every
  // time: after five runs PostgreSQL may keep a generic plan, and for the batch reads that was
  // slower than parsing again (bench-fleet 10,000 on PostgreSQL: ingest 6.8 s against 4.2 s).
  void start_session() {
    exec("SET client_min_messages = warning; SET plan_cache_mode = force_custom_plan", "setting up the session");
  }

  void exec(const char* text, std::string_view what) {
    if (pg) {
      ensure_connected();
      PgResult r(PQexec(pg.get(), text), &PQclear);
      auto st = PQresultStatus(r.get());
      if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) throw_io(what, pg_message(r.get(), pg.get()));
      return;
    }
    char* msg = nullptr;
    if (sqlite3_exec(db.get(), text, nullptr, nullptr, &msg) != SQLITE_OK) {
      std::string m = msg ? msg : "unknown error";
      sqlite3_free(msg);
      throw_io(what, m);
    }
  }
  void rollback() {
    if (pg) PgResult(PQexec(pg.get(), "ROLLBACK"), &PQclear);
    else sqlite3_exec(db.get(), "ROLLBACK", nullptr, nullptr, nullptr);
  }
  const char* begin_sql() const { return pg ? "BEGIN" : "BEGIN IMMEDIATE"; }
};

namespace {

// A statement with positional '?' parameters (bound in call order) and column getters; runs on
// the first step(). It borrows the connection's prepared statement for its text (Impl::prepared)
// and resets it when done. PostgreSQL gets '$n' placeholders and text parameters; its whole result
// is read at once (the bridge's queries are bounded by the fleet size).
class Stmt {
 public:
  Stmt(Store::Impl& db, std::string_view sql) : db_(db), sql_(sql) {}
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  ~Stmt() {
    if (!borrowed_) return;
    sqlite3_reset(st_);
    sqlite3_clear_bindings(st_);
    borrowed_->busy = false;
  }

  Stmt& bind(std::string_view v) {
    params_.emplace_back(std::string(v));
    return *this;
  }
  Stmt& bind(const std::string& v) { return bind(std::string_view(v)); }
  Stmt& bind(const char* v) { return bind(std::string_view(v)); }
  Stmt& bind(std::int64_t v) {
    params_.emplace_back(v);
    return *this;
  }
  Stmt& bind(std::uint64_t v) { return bind(static_cast<std::int64_t>(v)); }
  Stmt& bind(int v) { return bind(static_cast<std::int64_t>(v)); }
  Stmt& bind(bool v) { return bind(static_cast<std::int64_t>(v ? 1 : 0)); }

  /// Steps once: true if a row is available.
  bool step() {
    if (db_.postgres()) {
      if (!result_) execute_pg();
      return ++row_ < PQntuples(result_.get());
    }
    if (!st_) prepare_sqlite();
    int rc = sqlite3_step(st_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    throw_db(db_.db.get(), "running '" + sql_.substr(0, 60) + "'");
  }
  void run() {
    while (step()) {
    }
  }
  std::string text(int col) const {
    if (result_) {
      return std::string(PQgetvalue(result_.get(), row_, col),
                         static_cast<std::size_t>(PQgetlength(result_.get(), row_, col)));
    }
    auto p = sqlite3_column_text(st_, col);
    return p ? std::string(reinterpret_cast<const char*>(p), sqlite3_column_bytes(st_, col)) : "";
  }
  std::int64_t i64(int col) const {
    if (result_) {
      const char* v = PQgetvalue(result_.get(), row_, col);
      std::int64_t out = 0;
      std::from_chars(v, v + PQgetlength(result_.get(), row_, col), out);
      return out;
    }
    return sqlite3_column_int64(st_, col);
  }
  std::uint64_t u64(int col) const { return static_cast<std::uint64_t>(i64(col)); }
  int i32(int col) const { return static_cast<int>(i64(col)); }

 private:
  using Param = std::variant<std::string, std::int64_t>;

  // The cached statement for the text if it is free, else a new one (cached if there is room).
  void prepare_sqlite() {
    auto* db = db_.db.get();
    auto it = db_.prepared.find(sql_);
    if (it != db_.prepared.end() && !it->second.busy) {
      borrowed_ = &it->second;
    } else {
      const bool keep = it == db_.prepared.end() && db_.prepared.size() < Store::Impl::max_prepared;
      sqlite3_stmt* st = nullptr;
      if (sqlite3_prepare_v3(db, sql_.data(), static_cast<int>(sql_.size()), keep ? SQLITE_PREPARE_PERSISTENT : 0,
                             &st, nullptr) != SQLITE_OK) {
        sqlite3_finalize(st);
        throw_db(db, "preparing '" + sql_.substr(0, 60) + "'");
      }
      if (keep) {
        borrowed_ = &db_.prepared[sql_];
        borrowed_->sqlite.reset(st);
      } else {
        owned_.reset(st);
      }
    }
    if (borrowed_) {
      borrowed_->busy = true;
      st_ = borrowed_->sqlite.get();
    } else {
      st_ = owned_.get();
    }
    int i = 0;
    for (auto& p : params_) {
      int rc = std::holds_alternative<std::string>(p)
                   ? sqlite3_bind_text(st_, ++i, std::get<std::string>(p).data(),
                                       static_cast<int>(std::get<std::string>(p).size()), SQLITE_TRANSIENT)
                   : sqlite3_bind_int64(st_, ++i, std::get<std::int64_t>(p));
      if (rc != SQLITE_OK) throw_db(db, "binding a parameter");
    }
  }

  // "... ? ... ?" -> "... $1 ... $2"
  std::string dollar_text() const {
    std::string text;
    text.reserve(sql_.size() + sql_.size() / 4);
    int n = 0;
    for (char c : sql_) {
      if (c == '?') text += "$" + std::to_string(++n);
      else text += c;
    }
    return text;
  }

  // Prepared on the server on first use (if there is room), then executed by name.
  void execute_pg() {
    std::vector<std::string> values;
    values.reserve(params_.size());
    for (auto& p : params_)
      values.push_back(std::holds_alternative<std::string>(p) ? std::get<std::string>(p)
                                                              : std::to_string(std::get<std::int64_t>(p)));
    std::vector<const char*> ptrs;
    ptrs.reserve(values.size());
    for (auto& v : values) ptrs.push_back(v.c_str());
    db_.ensure_connected();
    PGconn* conn = db_.pg.get();
    const int n = static_cast<int>(ptrs.size());
    auto it = db_.prepared.find(sql_);
    if (it == db_.prepared.end() && db_.prepared.size() < Store::Impl::max_prepared) {
      std::string name = "tern_" + std::to_string(++db_.pg_statements);
      result_.reset(PQprepare(conn, name.c_str(), dollar_text().c_str(), n, nullptr));
      if (PQresultStatus(result_.get()) != PGRES_COMMAND_OK) fail_pg("preparing");
      it = db_.prepared.emplace(sql_, Store::Impl::Prepared{}).first;
      it->second.pg_name = std::move(name);
    }
    if (it != db_.prepared.end())
      result_.reset(PQexecPrepared(conn, it->second.pg_name.c_str(), n, ptrs.data(), nullptr, nullptr, 0));
    else
      result_.reset(PQexecParams(conn, dollar_text().c_str(), n, nullptr, ptrs.data(), nullptr, nullptr, 0));
    auto st = PQresultStatus(result_.get());
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) fail_pg("running");
  }
  [[noreturn]] void fail_pg(std::string_view doing) {
    auto m = pg_message(result_.get(), db_.pg.get());
    result_.reset();
    throw_io(std::string(doing) + " '" + sql_.substr(0, 60) + "'", m);
  }

  Store::Impl& db_;
  std::string sql_;
  std::vector<Param> params_;
  Store::Impl::Prepared* borrowed_ = nullptr;  // SQLite: the cached statement in use
  StmtPtr owned_{nullptr, &sqlite3_finalize};  // SQLite: an uncached one
  sqlite3_stmt* st_ = nullptr;                 // SQLite: whichever of the two
  PgResult result_{nullptr, &PQclear};
  int row_ = -1;
};

template <class F>
auto guard(std::string_view what, F&& f) -> Result<decltype(f())> {
  try {
    if constexpr (std::is_void_v<decltype(f())>) {
      f();
      return {};
    } else {
      return f();
    }
  } catch (const ErrorException& e) {
    return e.error().context(what);
  }
}

std::string strings_json(const std::vector<std::string>& v) {
  boost::json::array a;
  for (auto& s : v) a.emplace_back(s);
  return json::write(a);
}

std::vector<std::string> strings_from_json(const std::string& text) {
  auto doc = json::Document::parse("{\"v\":" + text + "}", "stored list");
  if (!doc) return {};
  auto root = doc->root();
  if (!root) return {};
  auto v = root->strings("v");
  return v ? *v : std::vector<std::string>{};
}

std::string ints_json(const std::vector<int>& v) {
  boost::json::array a;
  for (int i : v) a.emplace_back(i);
  return json::write(a);
}

// Phases are written by ints_json: "[10,50,100]".
std::vector<int> ints_from_json(std::string_view text) {
  std::vector<int> out;
  const char* p = text.data();
  const char* end = p + text.size();
  while (p < end) {
    if (*p >= '0' && *p <= '9') {
      int v = 0;
      auto [next, ec] = std::from_chars(p, end, v);
      if (ec != std::errc{}) break;
      out.push_back(v);
      p = next;
    } else {
      ++p;
    }
  }
  return out;
}

constexpr std::string_view device_columns =
    "id, admission, grp, device_type, inventory, last_seen, presence, presence_seq, artifact_name";
DeviceRecord read_device(const Stmt& s) {
  return DeviceRecord{s.text(0), s.text(1), s.text(2), s.text(3), s.text(4),
                      s.i64(5),  s.text(6), s.u64(7),  s.text(8)};
}

constexpr std::string_view artifact_columns = "name, file, size, sha256, device_types, signed, mtime";
ArtifactRecord read_artifact(const Stmt& s) {
  return ArtifactRecord{s.text(0), s.text(1), s.u64(2), s.text(3), strings_from_json(s.text(4)),
                        s.i64(5) != 0, s.i64(6)};
}

constexpr std::string_view deployment_columns =
    "id, artifact, targets, phases, pause_seconds, threshold, on_threshold, retries, state, phase, "
    "next_phase_at, created, reason, max_rate, reboot";
DeploymentRecord read_deployment(const Stmt& s) {
  return DeploymentRecord{s.text(0), s.text(1), s.text(2), ints_from_json(s.text(3)), s.i64(4),
                          s.i32(5),  s.text(6), s.i32(7),  s.text(8),                s.i32(9),
                          s.i64(10), s.i64(11), s.text(12), s.u64(13),               s.text(14)};
}

constexpr std::string_view dd_columns =
    "deployment, device, phase, status, bytes, total, attempt, error, last_seq, updated";
DeviceDeploymentRecord read_dd(const Stmt& s) {
  return DeviceDeploymentRecord{s.text(0), s.text(1), s.i32(2), s.text(3), s.u64(4),
                                s.u64(5),  s.i32(6),  s.text(7), s.u64(8), s.i64(9)};
}

std::string sql(std::string_view a, std::string_view b = {}, std::string_view c = {}) {
  return std::string(a) + std::string(b) + std::string(c);
}

}  // namespace

bool is_final_status(std::string_view s) {
  return s == "success" || s == "failure" || s == "already-installed" || s == "aborted";
}

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Store::~Store() = default;

namespace {

// Brings the schema up to date, one migration per transaction. With PostgreSQL several bridges may
// start at once: the version is read again under a lock on schema_version, so each migration runs
// once.
void migrate(Store::Impl& impl) {
  if (impl.postgres()) {
    // CREATE TABLE IF NOT EXISTS is not safe against itself in PostgreSQL: two bridges starting on
    // a new database at once can both try to create the table (a duplicate key in pg_type).
    impl.exec("BEGIN", "creating schema_version");
    try {
      impl.exec("SELECT pg_advisory_xact_lock(hashtext('tern:schema_version'))", "locking the schema");
      impl.exec("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", "creating schema_version");
      impl.exec("COMMIT", "creating schema_version");
    } catch (...) {
      impl.rollback();
      throw;
    }
  } else {
    impl.exec("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", "creating schema_version");
  }
  for (;;) {
    impl.exec(impl.begin_sql(), "starting migration");
    try {
      if (impl.postgres()) impl.exec("LOCK TABLE schema_version IN EXCLUSIVE MODE", "locking schema_version");
      int current = 0;
      bool has_row = false;
      {
        Stmt s(impl, "SELECT version FROM schema_version");
        if (s.step()) {
          current = s.i32(0);
          has_row = true;
        }
      }
      if (current > schema_version)
        throw ErrorException(fail(Errc::unsupported, "schema version " + std::to_string(current) +
                                                         " is newer than this bridge's (" +
                                                         std::to_string(schema_version) + ")"));
      if (current == schema_version) {
        impl.exec("COMMIT", "committing");
        return;
      }
      std::string text = migrations[static_cast<std::size_t>(current)];
      if (auto at = text.find("@HISTORY_ID@"); at != std::string::npos)
        text.replace(at, 12, impl.postgres() ? "hid BIGSERIAL PRIMARY KEY," : "");
      if (auto at = text.find("@COUNT_TRIGGERS@"); at != std::string::npos)
        text.replace(at, 16, impl.postgres() ? migration5_count_trigger_postgres : count_triggers_sqlite);
      if (auto at = text.find("@COUNT_STATEMENTS@"); at != std::string::npos)
        text.replace(at, 18, impl.postgres() ? count_statements_postgres : "");
      impl.exec(text.c_str(), "migrating to schema " + std::to_string(current + 1));
      if (!has_row) Stmt(impl, "INSERT INTO schema_version (version) VALUES (?)").bind(current + 1).run();
      else Stmt(impl, "UPDATE schema_version SET version = ?").bind(current + 1).run();
      impl.exec("COMMIT", "committing migration");
    } catch (...) {
      impl.rollback();
      throw;
    }
  }
}

// "postgresql://user:secret@host/db" → "postgresql://user@host/db" for messages.
std::string without_password(std::string uri) {
  const auto scheme = uri.find("://");
  const auto at = uri.find('@');
  if (scheme == std::string::npos || at == std::string::npos) return uri;
  const auto colon = uri.find(':', scheme + 3);
  if (colon != std::string::npos && colon < at) uri.erase(colon, at - colon);
  return uri;
}

}  // namespace

Result<std::unique_ptr<Store>> Store::open(const std::filesystem::path& path) {
  auto impl = std::make_unique<Impl>();
  const std::string target = path.string();
  if (is_pg_uri(target)) {
    impl->where = without_password(target);
    impl->pg.reset(PQconnectdb(target.c_str()));
    if (!impl->pg || PQstatus(impl->pg.get()) != CONNECTION_OK)
      return fail(Errc::io, "connecting to database " + impl->where + ": " + pg_message(nullptr, impl->pg.get()));
    std::unique_ptr<Store> store(new Store(std::move(impl)));
    auto r = guard("opening database " + store->impl_->where, [&] {
      store->impl_->start_session();
      migrate(*store->impl_);
    });
    if (!r) return r.error();
    return store;
  }
  impl->where = target;
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                           nullptr);
  impl->db.reset(raw);
  if (rc != SQLITE_OK)
    return fail(Errc::io, "opening database " + path.string() + ": " +
                              (raw ? sqlite3_errmsg(raw) : sqlite3_errstr(rc)));
  std::unique_ptr<Store> store(new Store(std::move(impl)));
  auto r = guard("opening database " + path.string(), [&] {
    sqlite3_busy_timeout(store->impl_->db.get(), 5000);
    // WAL: readers (tools, a backup) do not block the bridge; NORMAL sync is durable across a
    // process crash (kill -9), which is what the bridge must survive; a power cut may lose the
    // last transactions, which the devices' persistent status sessions then redeliver.
    store->impl_->exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;",
                       "setting WAL mode");
    migrate(*store->impl_);
  });
  if (!r) return r.error();
  return store;
}

Result<void> Store::lock(std::string_view key) {
  if (!impl_->postgres()) return {};
  return guard("locking " + std::string(key), [&] {
    // hashtext() maps the name to the advisory lock's integer key (collisions only over-serialise).
    Stmt(*impl_, "SELECT pg_advisory_xact_lock(hashtext(?))").bind(key).run();
  });
}

Result<void> Store::lock_shared(std::string_view key) {
  if (!impl_->postgres()) return {};
  return guard("locking " + std::string(key) + " (shared)", [&] {
    Stmt(*impl_, "SELECT pg_advisory_xact_lock_shared(hashtext(?))").bind(key).run();
  });
}

Result<int> Store::version() {
  return guard("reading the schema version", [&] {
    Stmt s(*impl_, "SELECT version FROM schema_version");
    return s.step() ? s.i32(0) : 0;
  });
}

std::size_t Store::prepared_statements() const { return impl_->prepared.size(); }

Result<void> Store::transaction(const std::function<Result<void>()>& body) {
  if (impl_->depth > 0) {
    // Joined: the outermost call commits or rolls back.
    ++impl_->depth;
    Result<void> r = fail(Errc::internal, "transaction body threw");
    try {
      r = body();
    } catch (...) {
      --impl_->depth;
      throw;
    }
    --impl_->depth;
    return r;
  }
  auto begin = guard("starting a transaction", [&] { impl_->exec(impl_->begin_sql(), "BEGIN"); });
  if (!begin) return begin;
  impl_->depth = 1;
  Result<void> r = fail(Errc::internal, "transaction body threw");
  try {
    r = body();
  } catch (const ErrorException& e) {
    r = e.error();
  } catch (const std::exception& e) {
    r = fail(Errc::internal, std::string("transaction body threw: ") + e.what());
  }
  impl_->depth = 0;
  if (!r) {
    impl_->rollback();
    return r;
  }
  auto commit = guard("committing", [&] { impl_->exec("COMMIT", "COMMIT"); });
  if (!commit) impl_->rollback();
  return commit;
}

// --- devices ---------------------------------------------------------------------------------------

Result<std::optional<DeviceRecord>> Store::device(const std::string& id) {
  return guard("reading device " + id, [&]() -> std::optional<DeviceRecord> {
    Stmt s(*impl_, sql("SELECT ", device_columns, " FROM devices WHERE id = ?"));
    s.bind(id);
    if (!s.step()) return std::nullopt;
    return read_device(s);
  });
}

Result<void> Store::put_device(const DeviceRecord& d) {
  return guard("writing device " + d.id, [&] {
    Stmt s(*impl_,
           sql("INSERT INTO devices (", device_columns,
               ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
               "admission = excluded.admission, grp = excluded.grp, device_type = excluded.device_type, "
               "inventory = excluded.inventory, last_seen = excluded.last_seen, presence = excluded.presence, "
               "presence_seq = excluded.presence_seq, artifact_name = excluded.artifact_name"));
    s.bind(d.id).bind(d.admission).bind(d.group).bind(d.device_type).bind(d.inventory).bind(d.last_seen);
    s.bind(d.presence).bind(d.presence_seq).bind(d.artifact_name).run();
  });
}

Result<std::vector<DeviceRecord>> Store::devices() {
  return guard("listing devices", [&] {
    Stmt s(*impl_, sql("SELECT ", device_columns, " FROM devices ORDER BY id"));
    std::vector<DeviceRecord> out;
    while (s.step()) out.push_back(read_device(s));
    return out;
  });
}

// --- artifacts -------------------------------------------------------------------------------------

Result<std::optional<ArtifactRecord>> Store::artifact(const std::string& name) {
  return guard("reading artifact " + name, [&]() -> std::optional<ArtifactRecord> {
    Stmt s(*impl_, sql("SELECT ", artifact_columns, " FROM artifacts WHERE name = ?"));
    s.bind(name);
    if (!s.step()) return std::nullopt;
    return read_artifact(s);
  });
}

Result<void> Store::put_artifact(const ArtifactRecord& a) {
  return guard("writing artifact " + a.name, [&] {
    Stmt s(*impl_,
           sql("INSERT INTO artifacts (", artifact_columns,
               ") VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET file = excluded.file, "
               "size = excluded.size, sha256 = excluded.sha256, device_types = excluded.device_types, "
               "signed = excluded.signed, mtime = excluded.mtime"));
    s.bind(a.name).bind(a.file).bind(a.size).bind(a.sha256).bind(strings_json(a.device_types));
    s.bind(a.is_signed).bind(a.mtime).run();
  });
}

Result<void> Store::remove_artifact(const std::string& name) {
  return guard("removing artifact " + name,
               [&] { Stmt(*impl_, "DELETE FROM artifacts WHERE name = ?").bind(name).run(); });
}

Result<std::vector<ArtifactRecord>> Store::artifacts() {
  return guard("listing artifacts", [&] {
    Stmt s(*impl_, sql("SELECT ", artifact_columns, " FROM artifacts ORDER BY name"));
    std::vector<ArtifactRecord> out;
    while (s.step()) out.push_back(read_artifact(s));
    return out;
  });
}

// --- deployments -----------------------------------------------------------------------------------

Result<std::optional<DeploymentRecord>> Store::deployment(const std::string& id) {
  return guard("reading deployment " + id, [&]() -> std::optional<DeploymentRecord> {
    Stmt s(*impl_, sql("SELECT ", deployment_columns, " FROM deployments WHERE id = ?"));
    s.bind(id);
    if (!s.step()) return std::nullopt;
    return read_deployment(s);
  });
}

Result<void> Store::insert_deployment(const DeploymentRecord& d) {
  return guard("inserting deployment " + d.id, [&] {
    Stmt s(*impl_, sql("INSERT INTO deployments (", deployment_columns,
                                ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"));
    s.bind(d.id).bind(d.artifact).bind(d.targets).bind(ints_json(d.phases)).bind(d.pause_seconds);
    s.bind(d.threshold).bind(d.on_threshold).bind(d.retries).bind(d.state).bind(d.phase);
    s.bind(d.next_phase_at).bind(d.created).bind(d.reason).bind(d.max_rate).bind(d.reboot).run();
  });
}

Result<void> Store::update_deployment(const DeploymentRecord& d) {
  return guard("updating deployment " + d.id, [&] {
    Stmt s(*impl_,
           "UPDATE deployments SET state = ?, phase = ?, next_phase_at = ?, reason = ? WHERE id = ?");
    s.bind(d.state).bind(d.phase).bind(d.next_phase_at).bind(d.reason).bind(d.id).run();
  });
}

Result<std::vector<DeploymentRecord>> Store::deployments(std::optional<std::string> state) {
  return guard("listing deployments", [&] {
    std::string q = sql("SELECT ", deployment_columns, " FROM deployments");
    if (state) q += " WHERE state = ?";
    q += " ORDER BY created DESC, id";
    Stmt s(*impl_, q);
    if (state) s.bind(*state);
    std::vector<DeploymentRecord> out;
    while (s.step()) out.push_back(read_deployment(s));
    return out;
  });
}

// --- device deployments ----------------------------------------------------------------------------

Result<std::optional<DeviceDeploymentRecord>> Store::device_deployment(const std::string& deployment,
                                                                       const std::string& device) {
  return guard("reading deployment " + deployment + " of " + device,
               [&]() -> std::optional<DeviceDeploymentRecord> {
                 Stmt s(*impl_, sql("SELECT ", dd_columns,
                                             " FROM device_deployments WHERE deployment = ? AND device = ?"));
                 s.bind(deployment).bind(device);
                 if (!s.step()) return std::nullopt;
                 return read_dd(s);
               });
}

Result<void> Store::put_device_deployment(const DeviceDeploymentRecord& r) {
  return guard("writing deployment " + r.deployment + " of " + r.device, [&] {
    Stmt s(*impl_,
           sql("INSERT INTO device_deployments (", dd_columns,
               ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (deployment, device) DO UPDATE SET "
               "phase = excluded.phase, status = excluded.status, bytes = excluded.bytes, "
               "total = excluded.total, attempt = excluded.attempt, error = excluded.error, "
               "last_seq = excluded.last_seq, updated = excluded.updated"));
    s.bind(r.deployment).bind(r.device).bind(r.phase).bind(r.status).bind(r.bytes).bind(r.total);
    s.bind(r.attempt).bind(r.error).bind(r.last_seq).bind(r.updated).run();
  });
}

Result<std::vector<DeviceDeploymentRecord>> Store::device_deployments(const std::string& deployment) {
  return guard("listing devices of deployment " + deployment, [&] {
    Stmt s(*impl_,
           sql("SELECT ", dd_columns, " FROM device_deployments WHERE deployment = ? ORDER BY phase, device"));
    s.bind(deployment);
    std::vector<DeviceDeploymentRecord> out;
    while (s.step()) out.push_back(read_dd(s));
    return out;
  });
}

Result<std::map<std::string, std::uint64_t>> Store::status_counts(const std::string& deployment) {
  return guard("counting statuses of deployment " + deployment, [&] {
    Stmt s(*impl_,
           "SELECT status, COUNT(*) FROM device_deployments WHERE deployment = ? GROUP BY status");
    s.bind(deployment);
    std::map<std::string, std::uint64_t> out;
    while (s.step()) out[s.text(0)] = s.u64(1);
    return out;
  });
}

Result<std::optional<std::string>> Store::active_deployment_of(const std::string& device) {
  // One definition of "active" (and of which one wins, should a device be in two): the batch's.
  auto found = active_deployments_of({device});
  if (!found) return found.error();
  if (found->empty()) return std::optional<std::string>{};
  return std::optional<std::string>(found->begin()->second);
}

// --- deployment logs -------------------------------------------------------------------------------

Result<bool> Store::put_log_piece(const std::string& device, const std::string& deployment, std::uint64_t seq,
                                  int part, int parts, const std::string& data, std::int64_t now) {
  return guard("storing the log of " + deployment + " from " + device, [&]() -> bool {
    std::optional<std::uint64_t> stored;
    {
      Stmt s(*impl_, "SELECT seq FROM deployment_logs WHERE device = ? AND deployment = ?");
      s.bind(device).bind(deployment);
      if (s.step()) stored = s.u64(0);
    }
    if (stored && *stored > seq) return false;  // a piece of an older log
    if (!stored || *stored < seq) {
      Stmt(*impl_, "DELETE FROM deployment_log_parts WHERE device = ? AND deployment = ?").bind(device).bind(deployment).run();
      Stmt s(*impl_,
             "INSERT INTO deployment_logs (device, deployment, seq, parts, updated) VALUES (?, ?, ?, ?, ?) "
             "ON CONFLICT (device, deployment) DO UPDATE SET seq = excluded.seq, parts = excluded.parts, "
             "updated = excluded.updated");
      s.bind(device).bind(deployment).bind(seq).bind(parts).bind(now).run();
    }
    bool had = false;
    {
      Stmt s(*impl_, "SELECT 1 FROM deployment_log_parts WHERE device = ? AND deployment = ? AND part = ?");
      s.bind(device).bind(deployment).bind(part);
      had = s.step();
    }
    if (had) return false;
    Stmt(*impl_, "INSERT INTO deployment_log_parts (device, deployment, part, data) VALUES (?, ?, ?, ?)")
        .bind(device).bind(deployment).bind(part).bind(data).run();
    Stmt(*impl_, "UPDATE deployment_logs SET updated = ? WHERE device = ? AND deployment = ?")
        .bind(now).bind(device).bind(deployment).run();
    return true;
  });
}

Result<std::optional<DeploymentLogRecord>> Store::deployment_log(const std::string& device,
                                                                 const std::string& deployment, bool with_data) {
  return guard("reading the log of " + deployment + " from " + device, [&]() -> std::optional<DeploymentLogRecord> {
    const std::string retry = deployment + "-retry-";
    DeploymentLogRecord rec;
    {
      Stmt s(*impl_,
             "SELECT deployment, seq, parts, updated FROM deployment_logs WHERE device = ? AND "
             "(deployment = ? OR substr(deployment, 1, ?) = ?) ORDER BY seq DESC LIMIT 1");
      s.bind(device).bind(deployment).bind(static_cast<std::int64_t>(retry.size())).bind(retry);
      if (!s.step()) return std::nullopt;
      rec.device = device;
      rec.deployment = s.text(0);
      rec.seq = s.u64(1);
      rec.parts = s.i32(2);
      rec.updated = s.i64(3);
    }
    rec.pieces.assign(static_cast<std::size_t>(std::max(rec.parts, 0)), std::string());
    rec.received.assign(rec.pieces.size(), false);
    Stmt s(*impl_, std::string("SELECT part") + (with_data ? ", data" : "") +
                       " FROM deployment_log_parts WHERE device = ? AND deployment = ? ORDER BY part");
    s.bind(device).bind(rec.deployment);
    while (s.step()) {
      auto part = static_cast<std::size_t>(s.i64(0));
      if (part >= rec.pieces.size()) continue;
      if (with_data) rec.pieces[part] = s.text(1);
      rec.received[part] = true;
    }
    return rec;
  });
}

// --- history ---------------------------------------------------------------------------------------

Result<void> Store::put_transfer(const TransferRecord& t) {
  return guard("recording the transfer of " + t.deployment + " to " + t.device, [&] {
    Stmt s(*impl_,
           "INSERT INTO transfers (deployment, device, fetched, reused, artifact) VALUES (?, ?, ?, ?, ?) "
           "ON CONFLICT (deployment, device) DO UPDATE SET fetched = excluded.fetched, reused = excluded.reused, "
           "artifact = excluded.artifact");
    s.bind(t.deployment).bind(t.device).bind(t.fetched).bind(t.reused).bind(t.artifact).run();
  });
}

Result<TransferRecord> Store::transfer_totals(const std::string& deployment) {
  return guard("summing the transfers of " + deployment, [&] {
    Stmt s(*impl_,
           "SELECT COALESCE(SUM(fetched), 0), COALESCE(SUM(reused), 0), COALESCE(SUM(artifact), 0), COUNT(*) "
           "FROM transfers WHERE deployment = ?");
    s.bind(deployment);
    TransferRecord t{.deployment = deployment};
    if (s.step()) {
      t.fetched = s.u64(0);
      t.reused = s.u64(1);
      t.artifact = s.u64(2);
      t.devices = s.u64(3);
    }
    return t;
  });
}

Result<void> Store::add_history(const HistoryRecord& h) {
  return guard("recording history of " + h.device, [&] {
    Stmt s(*impl_,
           "INSERT INTO history (deployment, device, seq, status, time, error, attempt) VALUES (?, ?, ?, ?, ?, ?, ?)");
    s.bind(h.deployment).bind(h.device).bind(h.seq).bind(h.status).bind(h.time).bind(h.error).bind(h.attempt).run();
  });
}

Result<std::vector<HistoryRecord>> Store::history(const std::string& deployment, const std::string& device) {
  return guard("reading history of " + device, [&] {
    Stmt s(*impl_,
           "SELECT deployment, device, seq, status, time, error, attempt FROM history "
           "WHERE deployment = ? AND device = ? ORDER BY " +
               std::string(impl_->postgres() ? "hid" : "rowid"));
    s.bind(deployment).bind(device);
    std::vector<HistoryRecord> out;
    while (s.step())
      out.push_back(HistoryRecord{s.text(0), s.text(1), s.u64(2), s.text(3), s.i64(4), s.text(5), s.i32(6)});
    return out;
  });
}

// --- batches ---------------------------------------------------------------------------------------

namespace {

// Rows per multi-row statement: well under both databases' parameter limits (SQLite 32766,
// PostgreSQL 65535) for the widest row (devices, 9 columns).
constexpr std::size_t rows_per_statement = 256;

// "(?, ?, ?)" for `columns` parameters.
std::string row_placeholders(int columns) {
  std::string r = "(";
  for (int i = 0; i < columns; ++i) r += i ? ", ?" : "?";
  return r + ")";
}

// Statement sizes are powers of two so that their texts, and so the prepared statements, are few:
// the largest such size for `left` rows (inserts split into such chunks) ...
std::size_t chunk_for(std::size_t left) {
  std::size_t n = 1;
  while (n * 2 <= left && n * 2 <= rows_per_statement) n *= 2;
  return n;
}
// ... and the smallest one that holds `left` values, up to rows_per_statement (lists of keys are
// padded with their last key, which changes nothing in an IN list or a DISTINCT).
std::size_t padded_for(std::size_t left) {
  std::size_t n = 1;
  while (n < left && n < rows_per_statement) n *= 2;
  return n;
}

// "?, ?, ?" for `n` parameters.
std::string list_placeholders(std::size_t n) {
  std::string r;
  for (std::size_t i = 0; i < n; ++i) r += i ? ", ?" : "?";
  return r;
}

// INSERT `head` VALUES (...), (...) `tail` for `rows`, in chunks; `bind` binds one row.
template <class Row, class Bind>
void insert_rows(Store::Impl& impl, std::string_view head, int columns, std::string_view tail,
                 const std::vector<Row>& rows, Bind bind) {
  const std::string one = row_placeholders(columns);
  for (std::size_t at = 0, n = 0; at < rows.size(); at += n) {
    n = chunk_for(rows.size() - at);
    std::string q(head);
    q += " VALUES ";
    for (std::size_t i = 0; i < n; ++i) {
      if (i) q += ", ";
      q += one;
    }
    q += tail;
    Stmt s(impl, q);
    for (std::size_t i = 0; i < n; ++i) bind(s, rows[at + i]);
    s.run();
  }
}

// SELECT `head` IN (?, ...) `tail` for `ids`, in chunks; `read` takes each result row.
template <class Read>
void select_in(Store::Impl& impl, std::string_view head, std::string_view tail, const std::vector<std::string>& ids,
               Read read) {
  for (std::size_t at = 0; at < ids.size(); at += rows_per_statement) {
    const std::size_t n = std::min(rows_per_statement, ids.size() - at);
    const std::size_t slots = padded_for(n);
    Stmt s(impl, sql(head, " IN (" + list_placeholders(slots) + ")", tail));
    for (std::size_t i = 0; i < slots; ++i) s.bind(ids[at + std::min(i, n - 1)]);
    while (s.step()) read(s);
  }
}

}  // namespace

Result<void> Store::lock_all(const std::vector<std::string>& keys) {
  if (!impl_->postgres() || keys.empty()) return {};
  return guard("locking " + std::to_string(keys.size()) + " keys", [&] {
    // One round trip; the locks are taken in the order of their integer keys, the same in every
    // bridge. (Stmt turns each ? into $n; the cast types the VALUES column.)
    // Padded to a power of two with the last key, as select_in does, for few statement texts.
    std::size_t slots = 1;
    while (slots < keys.size()) slots *= 2;
    std::string values;
    for (std::size_t i = 0; i < slots; ++i) values += i ? ", (?::text)" : "(?::text)";
    Stmt s(*impl_, "SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT hashtext(k) AS h FROM (VALUES " + values +
                       ") AS v(k) ORDER BY h) AS ordered");
    for (std::size_t i = 0; i < slots; ++i) s.bind(keys[std::min(i, keys.size() - 1)]);
    s.run();
  });
}

Result<std::map<std::string, std::string>> Store::active_deployments_of(const std::vector<std::string>& devices) {
  return guard("finding the active deployments of " + std::to_string(devices.size()) + " devices", [&] {
    std::map<std::string, std::string> out;
    // The same choice as active_deployment_of: per device, the oldest (emplace keeps the first).
    select_in(*impl_,
              "SELECT dd.device, dd.deployment FROM device_deployments dd JOIN deployments d ON d.id = dd.deployment "
              "WHERE d.state IN ('created', 'running', 'paused') "
              "AND dd.status NOT IN ('success', 'failure', 'already-installed', 'aborted') AND dd.device",
              " ORDER BY dd.device, d.created, d.id", devices,
              [&](const Stmt& s) { out.emplace(s.text(0), s.text(1)); });
    return out;
  });
}

Result<std::vector<DeviceRecord>> Store::devices_in(const std::vector<std::string>& ids) {
  return guard("reading " + std::to_string(ids.size()) + " devices", [&] {
    std::vector<DeviceRecord> out;
    select_in(*impl_, sql("SELECT ", device_columns, " FROM devices WHERE id"), "", ids,
              [&](const Stmt& s) { out.push_back(read_device(s)); });
    return out;
  });
}

Result<std::vector<DeploymentRecord>> Store::deployments_in(const std::vector<std::string>& ids) {
  return guard("reading " + std::to_string(ids.size()) + " deployments", [&] {
    std::vector<DeploymentRecord> out;
    select_in(*impl_, sql("SELECT ", deployment_columns, " FROM deployments WHERE id"), "", ids,
              [&](const Stmt& s) { out.push_back(read_deployment(s)); });
    return out;
  });
}

Result<std::vector<DeviceDeploymentRecord>> Store::device_deployments_in(const std::vector<std::string>& deployments,
                                                                         const std::vector<std::string>& devices) {
  return guard("reading the deployments of " + std::to_string(devices.size()) + " devices", [&] {
    std::vector<DeviceDeploymentRecord> out;
    if (deployments.empty()) return out;
    // A batch names few deployments: each chunk of devices is read with all of them.
    for (std::size_t at = 0; at < deployments.size(); at += rows_per_statement) {
      const std::size_t n = std::min(rows_per_statement, deployments.size() - at);
      const std::size_t n_slots = padded_for(n);
      const std::string head = sql("SELECT ", dd_columns, " FROM device_deployments WHERE deployment IN (") +
                               list_placeholders(n_slots) + ") AND device";
      for (std::size_t d = 0; d < devices.size(); d += rows_per_statement) {
        const std::size_t m = std::min(rows_per_statement, devices.size() - d);
        const std::size_t m_slots = padded_for(m);
        Stmt s(*impl_, head + " IN (" + list_placeholders(m_slots) + ")");
        for (std::size_t i = 0; i < n_slots; ++i) s.bind(deployments[at + std::min(i, n - 1)]);
        for (std::size_t i = 0; i < m_slots; ++i) s.bind(devices[d + std::min(i, m - 1)]);
        while (s.step()) out.push_back(read_dd(s));
      }
    }
    return out;
  });
}

Result<void> Store::put_devices(const std::vector<DeviceRecord>& ds) {
  return guard("writing " + std::to_string(ds.size()) + " devices", [&] {
    insert_rows(*impl_, sql("INSERT INTO devices (", device_columns, ")"), 9,
                " ON CONFLICT (id) DO UPDATE SET "
                "admission = excluded.admission, grp = excluded.grp, device_type = excluded.device_type, "
                "inventory = excluded.inventory, last_seen = excluded.last_seen, presence = excluded.presence, "
                "presence_seq = excluded.presence_seq, artifact_name = excluded.artifact_name",
                ds, [](Stmt& s, const DeviceRecord& d) {
                  s.bind(d.id).bind(d.admission).bind(d.group).bind(d.device_type).bind(d.inventory);
                  s.bind(d.last_seen).bind(d.presence).bind(d.presence_seq).bind(d.artifact_name);
                });
  });
}

Result<void> Store::put_device_deployments(const std::vector<DeviceDeploymentRecord>& rs) {
  return guard("writing " + std::to_string(rs.size()) + " device deployments", [&] {
    insert_rows(*impl_, sql("INSERT INTO device_deployments (", dd_columns, ")"), 10,
                " ON CONFLICT (deployment, device) DO UPDATE SET "
                "phase = excluded.phase, status = excluded.status, bytes = excluded.bytes, "
                "total = excluded.total, attempt = excluded.attempt, error = excluded.error, "
                "last_seq = excluded.last_seq, updated = excluded.updated",
                rs, [](Stmt& s, const DeviceDeploymentRecord& r) {
                  s.bind(r.deployment).bind(r.device).bind(r.phase).bind(r.status).bind(r.bytes).bind(r.total);
                  s.bind(r.attempt).bind(r.error).bind(r.last_seq).bind(r.updated);
                });
  });
}

Result<void> Store::add_history(const std::vector<HistoryRecord>& hs) {
  return guard("recording " + std::to_string(hs.size()) + " history rows", [&] {
    insert_rows(*impl_, "INSERT INTO history (deployment, device, seq, status, time, error, attempt)", 7, "", hs,
                [](Stmt& s, const HistoryRecord& h) {
                  s.bind(h.deployment).bind(h.device).bind(h.seq).bind(h.status).bind(h.time).bind(h.error);
                  s.bind(h.attempt);
                });
  });
}

Result<void> Store::put_transfers(const std::vector<TransferRecord>& ts) {
  return guard("recording " + std::to_string(ts.size()) + " transfers", [&] {
    insert_rows(*impl_, "INSERT INTO transfers (deployment, device, fetched, reused, artifact)", 5,
                " ON CONFLICT (deployment, device) DO UPDATE SET fetched = excluded.fetched, "
                "reused = excluded.reused, artifact = excluded.artifact",
                ts, [](Stmt& s, const TransferRecord& t) {
                  s.bind(t.deployment).bind(t.device).bind(t.fetched).bind(t.reused).bind(t.artifact);
                });
  });
}

Result<std::vector<StatusCount>> Store::deployment_counts(const std::string& deployment) {
  return guard("reading the counters of deployment " + deployment, [&] {
    Stmt s(*impl_,
           "SELECT phase, status, n FROM deployment_counts WHERE deployment = ? AND n <> 0 ORDER BY phase, status");
    s.bind(deployment);
    std::vector<StatusCount> out;
    while (s.step()) out.push_back(StatusCount{s.i32(0), s.text(1), s.u64(2)});
    return out;
  });
}

Result<std::vector<DeviceDeploymentRecord>> Store::failed_device_deployments(const std::string& deployment,
                                                                             std::size_t limit) {
  return guard("listing the failures of deployment " + deployment, [&] {
    Stmt s(*impl_, sql("SELECT ", dd_columns,
                       " FROM device_deployments WHERE deployment = ? AND status IN ('failure', 'aborted') "
                       "ORDER BY phase, device LIMIT ?"));
    s.bind(deployment).bind(static_cast<std::uint64_t>(limit));
    std::vector<DeviceDeploymentRecord> out;
    while (s.step()) out.push_back(read_dd(s));
    return out;
  });
}

Result<std::vector<PhaseBytes>> Store::phase_bytes(const std::string& deployment) {
  return guard("summing the bytes of deployment " + deployment, [&] {
    // Bytes change with every progress status: summed here on demand rather than kept by a
    // trigger on every write of a row. (PostgreSQL's SUM of BIGINT is NUMERIC: read as text.)
    Stmt s(*impl_,
           "SELECT phase, SUM(CASE WHEN status IN ('installing', 'rebooting', 'success') AND total > bytes "
           "THEN total ELSE bytes END), SUM(total) FROM device_deployments WHERE deployment = ? "
           "GROUP BY phase ORDER BY phase");
    s.bind(deployment);
    std::vector<PhaseBytes> out;
    while (s.step()) out.push_back(PhaseBytes{s.i32(0), s.u64(1), s.u64(2)});
    return out;
  });
}

}  // namespace tern::bridge
