#include "agent/update/update_module.hpp"

#include "agent/download/https_download.hpp"
#include "common/file.hpp"
#include "common/json.hpp"
#include "common/log.hpp"
#include "common/process.hpp"

#include <boost/asio/this_coro.hpp>
#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <utility>

namespace tern::agent {
namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace {

constexpr std::array<std::pair<ModuleStep, std::string_view>, 10> step_words{{
    {ModuleStep::install, "install"},
    {ModuleStep::reboot, "reboot"},
    {ModuleStep::verify, "verify"},
    {ModuleStep::commit, "commit"},
    {ModuleStep::rollback, "rollback"},
    {ModuleStep::rollback_reboot, "rollback_reboot"},
    {ModuleStep::verify_rollback, "verify_rollback"},
    {ModuleStep::failure, "failure"},
    {ModuleStep::cleanup, "cleanup"},
    {ModuleStep::done, "done"},
}};

constexpr std::array<std::pair<RebootNeed, std::string_view>, 3> reboot_words{{
    {RebootNeed::no, "No"},
    {RebootNeed::automatic, "Automatic"},
    {RebootNeed::yes, "Yes"},
}};

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  while (!s.empty() && (s.front() == '\n' || s.front() == '\r' || s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  return s;
}

fs::path record_path(const AgentConfig& c) { return c.data_dir / "module.json"; }

Result<void> save_record(const AgentConfig& c, const ModuleRecord& r) {
  boost::json::object o;
  o["deployment_id"] = r.deployment_id;
  o["source"] = r.source;
  o["type"] = r.type;
  o["step"] = std::string(to_string(r.step));
  for (auto& [need, word] : reboot_words)
    if (need == r.reboot) o["reboot"] = std::string(word);
  o["supports_rollback"] = !r.supports_rollback ? "unknown" : *r.supports_rollback ? "yes" : "no";
  o["rebooted"] = r.rebooted;
  o["success"] = r.success;
  o["error"] = r.error;
  if (auto w = write_file_atomic(record_path(c), boost::json::serialize(o) + "\n"); !w)
    return w.error().context("saving the update module's state");
  return {};
}

/// The saved record; nothing when there is none. Errors: a file that is not a record.
Result<std::optional<ModuleRecord>> load_record(const AgentConfig& c) {
  const auto path = record_path(c);
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::optional<ModuleRecord>{};
  auto text = read_file(path, 1u << 20);
  if (!text) return text.error();
  auto doc = json::Document::parse(*text, path.string());
  if (!doc) return doc.error();
  auto o = doc->root();
  if (!o) return o.error();
  ModuleRecord r;
  auto str = [&](std::string_view key, std::string& out) -> Result<void> {
    auto v = o->string_or(key, "");
    if (!v) return v.error();
    out = *v;
    return {};
  };
  std::string step, reboot, rollback;
  for (auto [key, out] : {std::pair{"deployment_id", &r.deployment_id}, std::pair{"source", &r.source},
                          std::pair{"type", &r.type}, std::pair{"step", &step}, std::pair{"reboot", &reboot},
                          std::pair{"supports_rollback", &rollback}, std::pair{"error", &r.error}})
    if (auto x = str(key, *out); !x) return x.error().context("reading " + path.string());
  auto bad = [&](std::string what) { return fail(Errc::invalid_argument, path.string() + ": " + what); };
  bool found = false;
  for (auto& [s, word] : step_words)
    if (word == step) r.step = s, found = true;
  if (!found) return bad("unknown step '" + step + "'");
  auto need = parse_reboot_need(reboot);
  if (!need) return bad("unknown reboot answer '" + reboot + "'");
  r.reboot = *need;
  if (rollback == "yes") r.supports_rollback = true;
  else if (rollback == "no") r.supports_rollback = false;
  auto rebooted = o->boolean_or("rebooted", false);
  auto success = o->boolean_or("success", false);
  if (!rebooted || !success) return bad("rebooted and success must be booleans");
  r.rebooted = *rebooted;
  r.success = *success;
  return std::optional<ModuleRecord>(std::move(r));
}

void remove_record_and_tree(const AgentConfig& c) {
  std::error_code ec;
  fs::remove(record_path(c), ec);
  if (ec) log::warn("removing ", record_path(c).string(), ": ", ec.message());
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

std::string_view to_string(ModuleStep s) {
  for (auto& [step, word] : step_words)
    if (step == s) return word;
  return "unknown";
}

Result<RebootNeed> parse_reboot_need(std::string_view output) {
  auto answer = trim(output);
  if (answer.empty()) return RebootNeed::no;
  for (auto& [need, word] : reboot_words)
    if (word == answer) return need;
  return fail(Errc::protocol, "NeedsArtifactReboot answered '" + std::string(answer.substr(0, 80)) +
                                  "', not No, Automatic or Yes");
}

Result<bool> parse_supports_rollback(std::string_view output) {
  auto answer = trim(output);
  if (answer.empty() || answer == "No") return false;
  if (answer == "Yes") return true;
  return fail(Errc::protocol, "SupportsRollback answered '" + std::string(answer.substr(0, 80)) + "', not Yes or No");
}

ModuleStep resume_step(const ModuleRecord& r) {
  switch (r.step) {
    case ModuleStep::install: return ModuleStep::rollback;  // cut short: the install failed
    case ModuleStep::reboot: return ModuleStep::verify;     // the reboot happened
    case ModuleStep::rollback_reboot: return ModuleStep::verify_rollback;
    default: return r.step;
  }
}

Result<ModuleOutcome> drive(ModuleRecord& rec, const ModuleCall& call, const SaveRecord& save) {
  auto go = [&](ModuleStep next) {
    rec.step = next;
    return save(rec);
  };
  auto failed = [&](const Error& e) {
    log::warn("update module ", rec.type, ": ", e.message());
    if (rec.error.empty()) rec.error = e.message();
  };
  // Logged only: the error path goes on whatever these states return.
  auto call_logged = [&](std::string_view state) {
    if (auto r = call(state); !r) log::warn("update module ", rec.type, ": ", r.error().message());
  };
  auto supports_rollback = [&]() {
    if (!rec.supports_rollback) {
      auto out = call("SupportsRollback");
      auto yes = out ? parse_supports_rollback(*out) : Result<bool>(out.error());
      if (!yes) log::warn("update module ", rec.type, ": ", yes.error().message(), ": no rollback");
      rec.supports_rollback = yes && *yes;
    }
    return *rec.supports_rollback;
  };

  for (;;) {
    Result<void> saved;
    switch (rec.step) {
      case ModuleStep::install: {
        auto installed = call("ArtifactInstall");
        if (!installed) {
          failed(installed.error());
          saved = go(ModuleStep::rollback);
          break;
        }
        auto out = call("NeedsArtifactReboot");
        auto need = out ? parse_reboot_need(*out) : Result<RebootNeed>(out.error());
        supports_rollback();  // asked after the install, as Mender does
        if (!need) {
          failed(need.error());
          saved = go(ModuleStep::rollback);
          break;
        }
        rec.reboot = *need;
        if (rec.reboot == RebootNeed::no) {
          saved = go(ModuleStep::commit);
          break;
        }
        if (auto r = go(ModuleStep::reboot); !r) return r.error();
        if (rec.reboot == RebootNeed::automatic) return ModuleOutcome{.reboot = true};
        // Yes: the module reboots (its device, or this one: then the restart goes on at verify).
        rec.rebooted = true;
        if (auto r = call("ArtifactReboot"); !r) {
          failed(r.error());
          saved = go(ModuleStep::rollback);
          break;
        }
        saved = go(ModuleStep::verify);
        break;
      }
      case ModuleStep::reboot:  // found after a restart: the reboot happened
        rec.rebooted = true;
        saved = go(ModuleStep::verify);
        break;
      case ModuleStep::verify:
        rec.rebooted = true;
        if (auto r = call("ArtifactVerifyReboot"); !r) {
          failed(r.error());
          saved = go(ModuleStep::rollback);
        } else {
          saved = go(ModuleStep::commit);
        }
        break;
      case ModuleStep::commit:
        if (auto r = call("ArtifactCommit"); !r) {
          failed(r.error());
          saved = go(ModuleStep::rollback);
        } else {
          rec.success = true;
          saved = go(ModuleStep::cleanup);
        }
        break;
      case ModuleStep::rollback:
        rec.success = false;
        if (rec.error.empty()) rec.error = "the agent stopped during ArtifactInstall";
        if (!supports_rollback()) {
          log::warn("update module ", rec.type, " does not support rollback: the update stays as it is");
          saved = go(ModuleStep::failure);
          break;
        }
        call_logged("ArtifactRollback");
        saved = go(rec.rebooted ? ModuleStep::rollback_reboot : ModuleStep::failure);
        break;
      case ModuleStep::rollback_reboot:
        if (rec.reboot != RebootNeed::yes) return ModuleOutcome{.reboot = true};  // Tern reboots
        call_logged("ArtifactRollbackReboot");
        saved = go(ModuleStep::verify_rollback);
        break;
      case ModuleStep::verify_rollback:
        call_logged("ArtifactVerifyRollbackReboot");
        saved = go(ModuleStep::failure);
        break;
      case ModuleStep::failure:
        rec.success = false;
        call_logged("ArtifactFailure");
        saved = go(ModuleStep::cleanup);
        break;
      case ModuleStep::cleanup:
        call_logged("Cleanup");
        saved = go(ModuleStep::done);
        break;
      case ModuleStep::done:
        return ModuleOutcome{.finished = true};
    }
    if (!saved) return saved.error();
  }
}

Result<std::string> call_module(const fs::path& executable, const fs::path& work_dir, std::string_view state,
                                std::chrono::milliseconds timeout, std::stop_token stop) {
  const std::string name = executable.filename().string() + " " + std::string(state);
  log::info("running update module ", name);
  auto run = run_program({executable.string(), std::string(state), work_dir.string()},
                         {.timeout = timeout, .stop = stop, .cwd = work_dir.string()});
  if (!run) return run.error().context("update module " + name);
  std::string_view out = trim(run->output);
  if (!out.empty()) log::info("update module ", name, ": ", out.substr(0, 4000));
  if (run->exit_code != 0 || run->timed_out || run->stopped)
    return fail(Errc::io, "update module " + name + " " +
                              (run->timed_out ? describe_exit(*run, timeout) : "failed with " + describe_exit(*run, timeout)) +
                              (out.empty() ? "" : ": " + std::string(out.substr(0, 400))));
  return std::string(out);
}

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
    if (auto r = save_record(c, rec); !r) return r.error();
    auto switching = advance(s, Event::payload_written);
    if (!switching) return switching.error();
    return advance(*switching, Event::switch_stored);
  });
  if (!ready) co_return ready.error();
  s = *ready;

  auto ran = co_await offload(u.pool_.any(), [&](std::stop_token) -> Result<ModuleOutcome> {
    return drive(
        rec, [&](std::string_view state) { return call_module(exe, tree, state, timeout); },
        [&](const ModuleRecord& r) { return save_record(c, r); });
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
  auto rec = load_record(u.config_);
  return rec && *rec && (*rec)->deployment_id == s.job.deployment_id && (*rec)->source == s.job.source;
}

std::optional<Result<Recovery>> ModuleInstall::recover(Updater& u, const InstallState& s_arg) {
  if (s_arg.phase != Phase::switching && s_arg.phase != Phase::switched && s_arg.phase != Phase::committing &&
      s_arg.phase != Phase::rolling_back)
    return std::nullopt;
  const AgentConfig& c = u.config_;
  auto loaded = load_record(c);
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
      [&](const ModuleRecord& r) { return save_record(c, r); });
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
