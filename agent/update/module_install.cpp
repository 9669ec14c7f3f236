// The Updater's side of update modules: the file tree, the download into files/, the state and
// the module's states run through drive() (update_module.hpp has the protocol).
#include "agent/update/update_module.hpp"

#include "agent/download/https_download.hpp"
#include "common/file.hpp"
#include "common/log.hpp"

#include <boost/asio/this_coro.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

namespace tern::agent {
namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace {

void remove_record_and_tree(const AgentConfig& c) {
  std::error_code ec;
  fs::remove(module_record_path(c), ec);
  if (ec) log::warn("removing ", module_record_path(c).string(), ": ", ec.message());
  fs::remove_all(ModuleInstall::work_dir(c), ec);
  if (ec) log::warn("removing ", ModuleInstall::work_dir(c).string(), ": ", ec.message());
}

/// The module for `type`: an executable file in ModulesDir. Errors: Errc::not_found naming it.
Result<fs::path> find_module(const AgentConfig& c, const std::string& type) {
  if (type.empty() || type == "." || type == ".." || type.find('/') != std::string::npos)
    return fail(Errc::invalid_argument, "payload type '" + type + "' cannot name an update module");
  auto path = c.modules_dir / type;
  if (::access(path.c_str(), X_OK) != 0 || !fs::is_regular_file(path))
    return fail(Errc::not_found, "no update module for payload type '" + type + "': " + path.string() +
                                     " is not an executable file");
  return fs::absolute(path);
}

Result<void> write_text(const fs::path& p, std::string_view text) {
  UniqueFd fd(::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd) return Error::from_errno("creating " + p.string(), errno);
  while (!text.empty()) {
    ssize_t n = ::write(fd.get(), text.data(), text.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::from_errno("writing " + p.string(), errno);
    text.remove_prefix(static_cast<std::size_t>(n));
  }
  return {};
}

/// A fresh tree for the module: version, artifact_name, device_type, header/, tmp/, files/.
Result<void> prepare_tree(const fs::path& dir, const artifacts::Header& h, const std::string& current_artifact,
                          const std::string& device_type) {
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (ec) return Error(ec, "removing the old module tree " + dir.string());
  for (auto sub : {"header", "tmp", "files"}) {
    fs::create_directories(dir / sub, ec);
    if (ec) return Error(ec, "creating " + (dir / sub).string());
  }
  for (auto [name, text] : {std::pair<const char*, std::string_view>{"version", "3"},
                            {"artifact_name", current_artifact},
                            {"device_type", device_type},
                            {"header/header-info", h.header_info_json},
                            {"header/type-info", h.type_info_json},
                            {"header/meta-data", h.meta_data_json}})
    if (auto r = write_text(dir / name, text); !r) return r.error().context("preparing the module tree");
  return {};
}

/// Writes the payload's files into files/, one after the other, each synced when it is complete.
class FilesSink {
 public:
  explicit FilesSink(fs::path dir) : dir_(std::move(dir)) {}
  Result<void> open(const std::string& name) {
    if (auto r = close(); !r) return r;
    path_ = dir_ / name;
    fd_ = UniqueFd(::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (!fd_) return Error::from_errno("creating " + path_.string(), errno);
    return {};
  }
  Result<void> write(std::span<const std::uint8_t> b) {
    if (!fd_) return fail(Errc::internal, "payload bytes before the first file");
    while (!b.empty()) {
      ssize_t n = ::write(fd_.get(), b.data(), b.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Error::from_errno("writing " + path_.string(), errno);
      b = b.subspan(static_cast<std::size_t>(n));
    }
    return {};
  }
  Result<void> close() {
    if (!fd_) return {};
    if (::fsync(fd_.get()) != 0) return Error::from_errno("syncing " + path_.string(), errno);
    fd_.reset();
    return {};
  }
  Result<void> finish() {
    if (auto r = close(); !r) return r;
    UniqueFd d(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!d || ::fsync(d.get()) != 0) return Error::from_errno("syncing " + dir_.string(), errno);
    return {};
  }

 private:
  fs::path dir_, path_;
  UniqueFd fd_;
};

/// Streams `job.source` (a file or URL) through the reader into `files_dir`. The reader's work and
/// the file writes run on `pool`; the download on the caller's executor.
asio::awaitable<Result<std::uint64_t>> stream_files(const InstallJob& job, const DownloadOptions& dl,
                                           const artifacts::ReaderOptions& ro_arg, const fs::path& files_dir,
                                           const asio::any_io_executor& pool, const ProgressFn& progress) {
  artifacts::ReaderOptions ro = ro_arg;
  ro.hash_artifact = !job.sha256.empty();
  FilesSink sink(files_dir);
  artifacts::Reader reader(ro, nullptr, [&sink](std::span<const std::uint8_t> b) { return sink.write(b); });
  reader.set_file_handler([&sink](const std::string& name, std::uint64_t) { return sink.open(name); });
  PipelineProgress seen;
  std::uint64_t total = 0;

  if (!is_url(job.source)) {
    auto r = co_await offload(pool, [&](std::stop_token stop) -> Result<void> {
      UniqueFd fd(::open(job.source.c_str(), O_RDONLY | O_CLOEXEC));
      if (!fd) return Error::from_errno("opening artifact " + job.source, errno);
      std::vector<std::uint8_t> buf(128 * 1024);
      for (;;) {
        if (stop.stop_requested()) return fail(Errc::cancelled, "install cancelled");
        ssize_t n = ::read(fd.get(), buf.data(), buf.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return Error::from_errno("reading artifact " + job.source, errno);
        if (n == 0) return {};
        total += static_cast<std::uint64_t>(n);
        if (auto f = reader.feed({buf.data(), static_cast<std::size_t>(n)}); !f) return f;
      }
    });
    if (!r) co_return r.error();
  } else {
    DownloadState state{.url = job.source};
    BodySink body = [&](std::span<const std::uint8_t> bytes) -> asio::awaitable<Result<void>> {
      total += bytes.size();
      co_return co_await offload(pool, [&](std::stop_token) { return reader.feed(bytes); });
    };
    RestartHandler on_restart = [&]() -> Result<void> {
      return fail(AgentErrc::source_changed, "the artifact at " + job.source + " changed on the server during the download");
    };
    ProgressHandler on_progress = [&](const DownloadState& st) {
      seen.artifact_bytes = st.offset;
      seen.artifact_total = st.total.value_or(0);
      seen.network_bytes = st.bytes_received;
      seen.attempt = std::max(1, st.attempts);
      if (progress) progress(seen);
    };
    auto r = co_await download(dl, state, body, on_restart, on_progress);
    if (!r) co_return r.error();
  }
  auto done = co_await offload(pool, [&](std::stop_token) -> Result<void> {
    if (auto f = reader.finish(); !f) return f;
    return sink.finish();
  });
  if (!done) co_return done.error();
  if (job.size && total != job.size)
    co_return fail(Errc::protocol, "artifact " + job.source + " is " + std::to_string(total) +
                                       " bytes, the deployment says " + std::to_string(job.size));
  if (!job.sha256.empty() && reader.artifact_sha256() != job.sha256)
    co_return fail(Errc::protocol, "artifact " + job.source + " has SHA-256 " + reader.artifact_sha256() +
                                       ", the deployment says " + job.sha256);
  co_return total;
}

}  // namespace

fs::path ModuleInstall::work_dir(const AgentConfig& c) { return c.data_dir / "modules" / "v3" / "payloads" / "0000" / "tree"; }

namespace {

/// Ends a module install in the Updater's state: committed (the provides applied) or failed.
Result<InstallState> finish(Updater& u, StateStore& store, InstallState s, const ModuleRecord& rec,
                            const std::function<Result<InstallState>(InstallState, Event)>& advance) {
  const AgentConfig& c = u.config();
  if (rec.success) {
    auto committing = advance(s, Event::healthy);
    if (!committing) return committing.error();
    auto installed = u.installed();
    if (!installed) return installed.error();
    Installed now{s.artifact_name, merge_provides(installed->provides, s.provides, s.clears_provides)};
    if (auto r = store.save_installed(now); !r) return r.error();
    s = *committing;
    s.success = true;
    s.error.clear();
    s.reported = false;
    log::info("committed ", s.artifact_name, " (update module ", rec.type, ")");
    auto done = advance(std::move(s), Event::commit_stored);
    if (done) remove_record_and_tree(c);
    return done;
  }
  s.error = rec.error.empty() ? "the update module failed" : rec.error;
  auto rolling = advance(s, Event::unhealthy);
  if (!rolling) return rolling.error();
  s = *rolling;
  s.success = false;
  s.reported = false;
  log::warn("install of ", s.artifact_name, " failed: ", s.error);
  auto done = advance(std::move(s), Event::rolled_back);
  if (done) remove_record_and_tree(c);
  return done;
}

}  // namespace

asio::awaitable<Result<InstallReport>> ModuleInstall::install(Updater& u, const InstallJob& job_arg, InstallState s_arg,
                                                              const artifacts::Header& header_arg,
                                                              const artifacts::ReaderOptions& ro_arg,
                                                              const ProgressFn& progress) {
  const InstallJob job = job_arg;
  InstallState s = std::move(s_arg);
  const artifacts::Header header = header_arg;
  const artifacts::ReaderOptions ro = ro_arg;
  const auto serial = u.pool_.serial();
  const AgentConfig& c = u.config_;
  const fs::path tree = work_dir(c);
  const auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(c.module_timeout);
  auto advance = [&u](InstallState st, Event e) { return u.advance(std::move(st), e); };
  auto failed = [&](const Error& err) -> asio::awaitable<Result<InstallReport>> {
    auto f = co_await offload(serial, [&](std::stop_token) { return u.finish_failure(s, err.message()); });
    if (!f) co_return f.error();
    co_return err;
  };

  // The module, and a fresh tree for it.
  auto module = co_await offload(serial, [&](std::stop_token) -> Result<fs::path> {
    auto m = find_module(c, header.payload_type);
    if (!m) return m.error();
    auto installed = u.installed();
    if (!installed) return installed.error();
    if (auto r = prepare_tree(tree, header, installed->artifact_name, c.device_type); !r) return r.error();
    return m;
  });
  if (!module) co_return co_await failed(module.error().context("installing " + job.source));
  log::info("installing ", job.source, " (", header.artifact_name, ") with update module ", module->string());
  const fs::path exe = *module;

  // Download (no streams: the files are stored in files/ by the agent), then the files.
  auto downloaded = co_await offload(u.pool_.any(), [&](std::stop_token stop) -> Result<std::uint64_t> {
    auto r = call_module(exe, tree, "Download", timeout, stop);
    if (!r) return r.error();
    return 0;
  });
  if (downloaded) downloaded = co_await stream_files(job, u.download_, ro, tree / "files", u.pool_.any(), progress);
  if (!downloaded) {
    const bool cancelled = downloaded.error().code() == make_error_code(Errc::cancelled);
    auto cleaned = co_await offload(u.pool_.any(), [&](std::stop_token) -> Result<void> {
      if (auto r = call_module(exe, tree, "Cleanup", timeout); !r) log::warn(r.error().message());
      std::error_code ec;
      fs::remove_all(tree, ec);
      return {};
    });
    (void)cleaned;
    if (cancelled)  // as the rootfs path: the state stays in downloading, to run again or fail
      co_return fail(AgentErrc::interrupted, "installing " + job.source + ": " + downloaded.error().message());
    co_return co_await failed(downloaded.error().context("installing " + job.source));
  }

  // Verified and stored: the module's states from here on, never cancelled halfway (a newer
  // deployment waits for them; the caller finds the outcome in the state).
  co_await asio::this_coro::throw_if_cancelled(false);
  s.artifact_name = header.artifact_name;
  s.provides = header.provides;
  if (!header.artifact_group.empty()) s.provides["artifact_group"] = header.artifact_group;
  s.clears_provides = header.clears_provides;
  ModuleRecord rec{.deployment_id = job.deployment_id, .source = job.source, .type = header.payload_type};
  auto ready = co_await offload(serial, [&](std::stop_token) -> Result<InstallState> {
    if (auto r = save_module_record(c, rec); !r) return r.error();
    auto switching = advance(s, Event::payload_written);
    if (!switching) return switching.error();
    return advance(*switching, Event::switch_stored);
  });
  if (!ready) co_return ready.error();
  s = *ready;

  auto ran = co_await offload(u.pool_.any(), [&](std::stop_token) -> Result<ModuleOutcome> {
    return drive(
        rec, [&](std::string_view state) { return call_module(exe, tree, state, timeout); },
        [&](const ModuleRecord& r) { return save_module_record(c, r); });
  });
  if (!ran) co_return ran.error();
  InstallReport report;
  report.header = header;
  report.stats.artifact_bytes = *downloaded;
  if (ran->reboot) {
    log::info("installed ", s.artifact_name, " with update module ", rec.type, "; reboot to go on");
    co_return report;
  }
  auto ended = co_await offload(serial, [&](std::stop_token) { return finish(u, u.store_, s, rec, advance); });
  if (!ended) co_return ended.error();
  if (!ended->success) co_return fail(Errc::io, "installing " + job.source + ": " + ended->error);
  report.finished = *ended;
  co_return report;
}

bool ModuleInstall::owns(const Updater& u, const InstallState& s) {
  if (s.phase != Phase::switching && s.phase != Phase::switched && s.phase != Phase::committing &&
      s.phase != Phase::rolling_back)
    return false;
  auto rec = load_module_record(u.config_);
  return rec && *rec && (*rec)->deployment_id == s.job.deployment_id && (*rec)->source == s.job.source;
}

std::optional<Result<Recovery>> ModuleInstall::recover(Updater& u, const InstallState& s_arg) {
  if (s_arg.phase != Phase::switching && s_arg.phase != Phase::switched && s_arg.phase != Phase::committing &&
      s_arg.phase != Phase::rolling_back)
    return std::nullopt;
  const AgentConfig& c = u.config_;
  auto loaded = load_module_record(c);
  if (!loaded) return Result<Recovery>(loaded.error());
  if (!*loaded || (*loaded)->deployment_id != s_arg.job.deployment_id || (*loaded)->source != s_arg.job.source)
    return std::nullopt;  // a rootfs install (a stale record is of an older install)
  ModuleRecord rec = std::move(**loaded);
  InstallState s = s_arg;
  auto advance = [&u](InstallState st, Event e) { return u.advance(std::move(st), e); };
  Recovery out;
  out.action = Action::verify;
  log::info("resuming install of ", s.artifact_name, " with update module ", rec.type, " (", to_string(rec.step),
            ")");
  if (s.phase == Phase::switching) {
    auto r = advance(s, Event::switch_stored);
    if (!r) return Result<Recovery>(r.error());
    s = *r;
  }
  auto module = find_module(c, rec.type);
  const fs::path exe = module ? *module : c.modules_dir / rec.type;
  const fs::path tree = work_dir(c);
  const auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(c.module_timeout);
  rec.step = resume_step(rec);
  auto ran = drive(
      rec, [&](std::string_view state) { return call_module(exe, tree, state, timeout); },
      [&](const ModuleRecord& r) { return save_module_record(c, r); });
  if (!ran) return Result<Recovery>(ran.error());
  if (ran->reboot) {
    out.reboot = true;
    return Result<Recovery>(out);
  }
  auto ended = finish(u, u.store_, s, rec, advance);
  if (!ended) return Result<Recovery>(ended.error());
  out.finished = *ended;
  return Result<Recovery>(out);
}

}  // namespace tern::agent
