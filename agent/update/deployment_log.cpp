#include "agent/update/deployment_log.hpp"

#include "common/file.hpp"
#include "common/log.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <chrono>
#include <ctime>
#include <vector>

namespace tern::agent {
namespace fs = std::filesystem;

namespace {

std::string stamp() {
  auto secs = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string file_name(const std::string& deployment_id) {
  return (deployment_id.empty() ? std::string("local") : deployment_id) + ".log";
}

bool write_all(int fd, std::string_view s) {
  while (!s.empty()) {
    auto n = ::write(fd, s.data(), s.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    s.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

}  // namespace

DeploymentLog::DeploymentLog(fs::path dir, std::size_t limit, std::size_t keep)
    : dir_(std::move(dir)), limit_(std::max<std::size_t>(limit, 4096)), keep_(std::max<std::size_t>(keep, 1)) {}

fs::path DeploymentLog::path_of(const std::string& deployment_id) const { return dir_ / file_name(deployment_id); }

void DeploymentLog::begin(const std::string& deployment_id, bool fresh) {
  std::lock_guard lock(m_);
  std::error_code ec;
  fs::create_directories(dir_, ec);
  current_ = path_of(deployment_id);
  if (fresh) fs::remove(current_, ec);
  prune_locked();
}

void DeploymentLog::line(char level, std::string_view text) {
  std::lock_guard lock(m_);
  if (current_.empty()) return;
  const std::string prefix = stamp() + " " + level + " ";
  std::string out;
  out.reserve(text.size() + prefix.size() + 1);
  while (!text.empty() || out.empty()) {
    auto nl = text.find('\n');
    out += prefix;
    out += text.substr(0, nl);
    out += '\n';
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
  UniqueFd fd(::open(current_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640));
  if (!fd || !write_all(fd.get(), out)) {
    log::warn("writing the deployment log ", current_.string(), ": ", std::strerror(errno));
    return;
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) == 0 && static_cast<std::size_t>(st.st_size) > limit_) {
    fd.reset();
    compact_locked();
  }
}

void DeploymentLog::sync() {
  std::lock_guard lock(m_);
  if (current_.empty()) return;
  UniqueFd fd(::open(current_.c_str(), O_WRONLY | O_CLOEXEC));
  if (fd) ::fdatasync(fd.get());
}

// Keeps the first eighth (how the deployment started) and the newest half of the limit, so the
// log goes back under the limit with room to grow before the next compaction.
void DeploymentLog::compact_locked() {
  auto text = tern::read_file(current_);
  if (!text) return;
  std::size_t head = text->rfind('\n', limit_ / 8);
  head = head == std::string::npos ? 0 : head + 1;
  std::size_t tail = text->size() - limit_ / 2;
  auto nl = text->find('\n', tail);
  tail = nl == std::string::npos ? text->size() : nl + 1;
  if (tail <= head) return;
  std::string out = text->substr(0, head);
  out += stamp() + " W [deployment log: " + std::to_string(tail - head) +
         " bytes dropped here to keep it under " + std::to_string(limit_) + " bytes]\n";
  out += text->substr(tail);
  if (auto r = write_file_atomic(current_, out); !r) log::warn("compacting the deployment log: ", r.error().message());
}

void DeploymentLog::prune_locked() {
  std::error_code ec;
  std::vector<std::pair<fs::file_time_type, fs::path>> logs;
  for (const auto& e : fs::directory_iterator(dir_, ec))
    if (e.path().extension() == ".log" && e.path() != current_) logs.emplace_back(e.last_write_time(ec), e.path());
  if (logs.size() < keep_) return;
  std::sort(logs.begin(), logs.end());
  for (std::size_t i = 0; i + keep_ - 1 < logs.size(); ++i) fs::remove(logs[i].second, ec);
}

Result<std::string> DeploymentLog::read(const std::string& deployment_id) const {
  const auto p = path_of(deployment_id);
  std::error_code ec;
  if (!fs::exists(p, ec)) return fail(Errc::not_found, "no deployment log for " + file_name(deployment_id));
  std::lock_guard lock(m_);
  return tern::read_file(p);
}

}  // namespace tern::agent
