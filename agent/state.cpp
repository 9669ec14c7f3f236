#include "agent/state.hpp"

#include "agent/errors.hpp"
#include "common/file.hpp"
#include "common/json.hpp"

#include <boost/json.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <array>
#include <fstream>
#include <sstream>

namespace tern::agent {
namespace {

constexpr std::array<std::pair<Phase, std::string_view>, 8> phase_words{{
    {Phase::idle, "idle"},
    {Phase::downloading, "downloading"},
    {Phase::paused, "paused"},
    {Phase::switching, "switching"},
    {Phase::switched, "switched"},
    {Phase::committing, "committing"},
    {Phase::rolling_back, "rolling-back"},
    {Phase::done, "done"},
}};

constexpr std::size_t max_finished = 64;
// Status sequence numbers reserved per write of the seq file.
constexpr std::uint64_t seq_block = 1u << 16;

boost::json::object to_json(const std::map<std::string, std::string>& m) {
  boost::json::object o;
  for (const auto& [k, v] : m) o[k] = v;
  return o;
}

boost::json::array to_json(const std::vector<std::string>& v) {
  boost::json::array a;
  for (const auto& s : v) a.emplace_back(s);
  return a;
}

std::string serialize_pretty(const boost::json::value& v) { return boost::json::serialize(v) + "\n"; }

// Reads the JSON state file `path` and hands its root object to `read` (the object lives only as
// long as its document, hence the callback). Errors name the file.
template <class T, class Read>
Result<T> read_json_file(const std::filesystem::path& path, Read read) {
  auto text = read_file(path);
  if (!text) return text.error();
  auto doc = json::Document::parse(*text, path.string());
  if (!doc) return doc.error();
  auto root = doc->root();
  if (!root) return root.error();
  Result<T> r = read(*root);
  if (!r) return r.error().context("reading " + path.string());
  return r;
}

}  // namespace

std::string_view to_string(Phase p) {
  for (const auto& [ph, word] : phase_words)
    if (ph == p) return word;
  return "unknown";
}

Result<Phase> parse_phase(std::string_view word) {
  for (const auto& [ph, w] : phase_words)
    if (w == word) return ph;
  return fail(Errc::invalid_argument, "unknown install phase '" + std::string(word) + "'");
}

bool glob_match(std::string_view pattern, std::string_view text) {
  // Iterative wildcard match with backtracking to the last '*'.
  std::size_t p = 0, t = 0, star = std::string_view::npos, mark = 0;
  while (t < text.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = t;
    } else if (p < pattern.size() && pattern[p] == text[t]) {
      ++p;
      ++t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

std::map<std::string, std::string> merge_provides(const std::map<std::string, std::string>& old_provides,
                                                  const std::map<std::string, std::string>& new_provides,
                                                  const std::vector<std::string>& clears) {
  std::map<std::string, std::string> out;
  if (!clears.empty()) {
    for (const auto& [k, v] : old_provides) {
      bool cleared = false;
      for (const auto& pattern : clears) cleared = cleared || glob_match(pattern, k);
      if (!cleared) out[k] = v;
    }
  }
  for (const auto& [k, v] : new_provides) out[k] = v;
  out.erase("artifact_name");
  return out;
}

Result<DirLock> DirLock::acquire(const std::filesystem::path& dir) {
  const auto path = dir / "lock";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return Error::from_errno("opening " + path.string(), errno);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    ::close(fd);
    if (err == EWOULDBLOCK)
      return fail(AgentErrc::busy, "another tern-agent (the daemon?) is using " + dir.string() +
                                              "; stop it first, or let it do the work");
    return Error::from_errno("locking " + path.string(), err);
  }
  return DirLock(fd);
}

DirLock& DirLock::operator=(DirLock&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

DirLock::~DirLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the last descriptor releases the flock
}

Result<StateStore> StateStore::open(const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Error(Errc::io, "creating data directory " + dir.string() + ": " + ec.message());
  return StateStore(dir);
}

Result<InstallState> StateStore::load_install() const {
  auto path = dir_ / "install.json";
  if (!std::filesystem::exists(path)) return InstallState{};
  return read_json_file<InstallState>(path, [](const json::Object& root) -> Result<InstallState> {
    InstallState s;
    auto phase = root.string("phase");
    if (!phase) return phase.error();
    auto ph = parse_phase(*phase);
    if (!ph) return ph.error();
    s.phase = *ph;
#define TERN_GET(field, getter, key, fallback) \
  {                                            \
    auto v = root.getter(key, fallback);       \
    if (!v) return v.error();                  \
    s.field = *v;                              \
  }
    TERN_GET(job.deployment_id, string_or, "deployment_id", "")
    TERN_GET(job.artifact_name, string_or, "expected_artifact_name", "")
    TERN_GET(job.source, string_or, "source", "")
    TERN_GET(artifact_name, string_or, "artifact_name", "")
    TERN_GET(clears_provides, strings_or, "clears_provides", {})
    TERN_GET(target_part, i64_or, "target_part", 0)
    TERN_GET(previous_part, i64_or, "previous_part", 0)
    TERN_GET(job.attempt, u64_or, "attempt", 0)
    TERN_GET(job.size, u64_or, "total", 0)
    TERN_GET(job.sha256, string_or, "sha256", "")
    TERN_GET(job.max_rate, u64_or, "max_rate", 0)
    TERN_GET(job.reboot, string_or, "reboot", "")
    TERN_GET(success, boolean_or, "success", false)
    TERN_GET(already_installed, boolean_or, "already_installed", false)
    TERN_GET(error, string_or, "error", "")
    TERN_GET(aborted, boolean_or, "aborted", false)
    TERN_GET(final_seq, u64_or, "final_seq", 0)
    TERN_GET(reported, boolean_or, "reported", true)
    TERN_GET(bytes_fetched, u64_or, "bytes_fetched", 0)
    TERN_GET(bytes_reused, u64_or, "bytes_reused", 0)
    TERN_GET(updated, i64_or, "updated", 0)
#undef TERN_GET
    auto provides = root.string_map_or_empty("provides");
    if (!provides) return provides.error();
    s.provides = *provides;
    return s;
  });
}

Result<void> StateStore::save_install(const InstallState& s) {
  boost::json::object o;
  o["phase"] = to_string(s.phase);
  o["deployment_id"] = s.job.deployment_id;
  o["expected_artifact_name"] = s.job.artifact_name;
  o["source"] = s.job.source;
  o["artifact_name"] = s.artifact_name;
  o["provides"] = to_json(s.provides);
  o["clears_provides"] = to_json(s.clears_provides);
  o["target_part"] = s.target_part;
  o["previous_part"] = s.previous_part;
  o["attempt"] = s.job.attempt;
  o["total"] = s.job.size;
  o["sha256"] = s.job.sha256;
  o["max_rate"] = s.job.max_rate;
  o["reboot"] = s.job.reboot;
  o["success"] = s.success;
  o["already_installed"] = s.already_installed;
  o["error"] = s.error;
  o["aborted"] = s.aborted;
  o["final_seq"] = s.final_seq;
  o["reported"] = s.reported;
  o["bytes_fetched"] = s.bytes_fetched;
  o["bytes_reused"] = s.bytes_reused;
  o["updated"] = s.updated;
  return write_file_atomic(dir_ / "install.json", serialize_pretty(o));
}

Result<Installed> StateStore::load_installed(const std::string& fallback_name) const {
  auto path = dir_ / "installed.json";
  if (!std::filesystem::exists(path)) return Installed{fallback_name, {}};
  return read_json_file<Installed>(path, [](const json::Object& root) -> Result<Installed> {
    Installed i;
    auto name = root.string("artifact_name");
    if (!name) return name.error();
    i.artifact_name = *name;
    auto provides = root.string_map_or_empty("provides");
    if (!provides) return provides.error();
    i.provides = *provides;
    return i;
  });
}

Result<void> StateStore::save_installed(const Installed& i) {
  boost::json::object o;
  o["artifact_name"] = i.artifact_name;
  o["provides"] = to_json(i.provides);
  return write_file_atomic(dir_ / "installed.json", serialize_pretty(o));
}

Result<void> StateStore::reserve_seq_locked(std::uint64_t in_reserve) {
  if (seq_->end - seq_->next >= in_reserve && seq_->end != 0) return {};
  // After a restart numbering goes on past the end of the last reservation on disk, so no number
  // is ever sent twice, whatever was handed out before a power cut.
  auto path = dir_ / "seq";
  std::uint64_t reserved = seq_->end ? seq_->end - 1 : 0;
  if (seq_->end == 0 && std::filesystem::exists(path)) {
    auto text = read_file(path, 64);
    if (!text) return text.error();
    try {
      reserved = std::stoull(*text);
    } catch (const std::exception&) {
      return fail(Errc::invalid_argument, path.string() + " does not hold a number");
    }
  }
  if (auto r = write_file_atomic(path, std::to_string(reserved + seq_block) + "\n"); !r) return r.error();
  if (seq_->end == 0) seq_->next = reserved + 1;
  seq_->end = reserved + seq_block + 1;
  return {};
}

Result<void> StateStore::reserve_seq() {
  std::lock_guard lock(seq_->m);
  return reserve_seq_locked(seq_block / 2);
}

bool StateStore::seq_running_low() const {
  std::lock_guard lock(seq_->m);
  return seq_->end - seq_->next < seq_block / 2;
}

Result<std::uint64_t> StateStore::next_seq() {
  std::lock_guard lock(seq_->m);
  if (seq_->next == seq_->end)
    if (auto r = reserve_seq_locked(1); !r) return r.error();
  return seq_->next++;
}

Result<std::optional<ResumeRecord>> StateStore::load_resume() const {
  auto path = dir_ / "resume.json";
  if (!std::filesystem::exists(path)) return std::optional<ResumeRecord>{};
  return read_json_file<std::optional<ResumeRecord>>(
      path, [](const json::Object& root) -> Result<std::optional<ResumeRecord>> {
        ResumeRecord r;
#define TERN_GET(field, getter, key) \
  {                                  \
    auto v = root.getter(key);       \
    if (!v) return v.error();        \
    r.field = *v;                    \
  }
        TERN_GET(deployment_id, string, "deployment_id")
        TERN_GET(source, string, "source")
        TERN_GET(checkpoint, string, "checkpoint")
        TERN_GET(etag, string, "etag")
        TERN_GET(last_modified, string, "last_modified")
        TERN_GET(total, u64, "total")
#undef TERN_GET
        return std::optional<ResumeRecord>(std::move(r));
      });
}

Result<void> StateStore::save_resume(const ResumeRecord& r) const {
  boost::json::object o;
  o["deployment_id"] = r.deployment_id;
  o["source"] = r.source;
  o["checkpoint"] = r.checkpoint;
  o["etag"] = r.etag;
  o["last_modified"] = r.last_modified;
  o["total"] = r.total;
  return write_file_atomic(dir_ / "resume.json", serialize_pretty(o));
}

Result<std::string> StateStore::load_resume_prefix() const { return read_file(dir_ / "resume-prefix.bin"); }

Result<void> StateStore::save_resume_prefix(std::string_view prefix) const {
  return write_file_atomic(dir_ / "resume-prefix.bin", prefix);
}

Result<void> StateStore::clear_resume() {
  // The record first: a prefix without a record is ignored, a record without its prefix is refused.
  for (const char* name : {"resume.json", "resume-prefix.bin"}) {
    std::error_code ec;
    std::filesystem::remove(dir_ / name, ec);
    if (ec) return Error(Errc::io, "removing " + (dir_ / name).string() + ": " + ec.message());
  }
  return {};
}

Result<std::vector<std::string>> StateStore::finished_deployments() const {
  auto path = dir_ / "finished";
  std::vector<std::string> out;
  if (!std::filesystem::exists(path)) return out;
  auto text = read_file(path);
  if (!text) return text.error();
  std::istringstream in(*text);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(line);
  return out;
}

Result<void> StateStore::add_finished_deployment(const std::string& id) {
  auto list = finished_deployments();
  if (!list) return list.error();
  if (std::find(list->begin(), list->end(), id) != list->end()) return {};
  list->push_back(id);
  if (list->size() > max_finished) list->erase(list->begin(), list->end() - max_finished);
  std::string text;
  for (const auto& s : *list) text += s + "\n";
  return write_file_atomic(dir_ / "finished", text);
}

}  // namespace tern::agent
