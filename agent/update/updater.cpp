#include "agent/update/updater.hpp"

#include "agent/download/rate_limit.hpp"
#include "agent/install/adaptive_source.hpp"
#include "agent/update/update_module.hpp"

#include "artifacts/crypto.hpp"
#include "common/clock.hpp"
#include "common/file.hpp"
#include "common/log.hpp"
#include "common/process.hpp"

#include <boost/asio/this_coro.hpp>

#include <csignal>
#include <cstdlib>

namespace tern::agent {
namespace asio = boost::asio;

namespace {

/// The artifact's provides as Mender records them: type-info provides plus artifact_group.
std::map<std::string, std::string> provides_of(const artifacts::Header& h) {
  auto p = h.provides;
  if (!h.artifact_group.empty()) p["artifact_group"] = h.artifact_group;
  return p;
}

// Payload bytes between resume checkpoints: each costs an fdatasync of the partition and a small
// state file write; a power cut re-downloads at most about this much (compressed).
constexpr std::uint64_t checkpoint_every = 8u << 20;

// The saved checkpoint of an interrupted install of `job`, checked as far as it can be before the
// download: same install, well-formed, and a prefix that verifies and fits the checkpoint.
Result<PipelineResume> saved_resume_point(const StateStore& store, const InstallJob& job,
                                          const artifacts::ReaderOptions& ro) {
  auto rec = store.load_resume();
  if (!rec) return rec.error();
  if (!*rec) return fail(Errc::not_found, "no checkpoint was saved");
  if ((*rec)->deployment_id != job.deployment_id || (*rec)->source != job.source)
    return fail(Errc::invalid_argument, "the checkpoint belongs to another install (" + (*rec)->source + ")");
  auto checkpoint = artifacts::Checkpoint::parse((*rec)->checkpoint);
  if (!checkpoint) return checkpoint.error();
  // The source must still be the artifact the checkpoint was taken from.
  if (is_url(job.source)) {
    if ((*rec)->etag.empty() && (*rec)->last_modified.empty())
      return fail(Errc::invalid_argument, "the server sent no ETag or Last-Modified to resume against");
  } else {
    // Only the prefix the checkpoint vouches for (a few KiB to a few MiB), never the artifact.
    auto head = read_head(job.source, static_cast<std::size_t>(std::min<std::uint64_t>(checkpoint->prefix_size, 64u << 20)));
    if (!head || head->size() != checkpoint->prefix_size || artifacts::Sha256::hex(*head) != checkpoint->prefix_sha256)
      return fail(Errc::invalid_argument, job.source + " is not the file the checkpoint was taken from");
  }
  auto prefix = store.load_resume_prefix();
  if (!prefix) return prefix.error().context("reading the saved artifact prefix");
  // A dry run of the resume: signature, manifest, header and the checkpoint's consistency.
  auto probe_options = ro;
  probe_options.hash_artifact = !job.sha256.empty();  // as run_pipeline sets it
  artifacts::Reader probe(probe_options, nullptr, nullptr);
  if (auto r = probe.resume({reinterpret_cast<const std::uint8_t*>(prefix->data()), prefix->size()}, *checkpoint); !r)
    return r.error();
  return PipelineResume{.prefix = std::move(*prefix),
                        .checkpoint = std::move(*checkpoint),
                        .etag = (*rec)->etag,
                        .last_modified = (*rec)->last_modified,
                        .total = (*rec)->total};
}

/// What install() reads before it writes anything.
struct InstallStart {
  InstallState current;  ///< the saved state
  int running = 0;       ///< mender_boot_part of the running partition
  Installed installed;
  artifacts::ReaderOptions reader;
};

}  // namespace

Updater::Updater(AgentConfig config, Slots slots, std::unique_ptr<BootEnv> env, StateStore store, DirLock lock)
    : config_(std::move(config)),
      slots_(std::move(slots)),
      env_(std::move(env)),
      store_(std::move(store)),
      lock_(std::move(lock)),
      dlog_(config_.data_dir / "deployment-logs"),
      scripts_(StateScriptOptions{.rootfs_dir = config_.rootfs_scripts_dir,
                                  .artifact_dir = config_.artifact_scripts_dir,
                                  .timeout = config_.state_script_timeout,
                                  .retry_interval = config_.state_script_retry_interval,
                                  .retry_timeout = config_.state_script_retry_timeout},
               dlog_) {
  download_.ca_file = config_.server_ca;
  download_.cert_file = config_.client_cert;
  download_.key_file = config_.client_key;
  download_.read_timeout = config_.read_timeout;
  download_.backoff_initial = config_.retry_min;
  download_.backoff_max = config_.retry_max;
  download_.max_attempts = config_.download_attempts;
  download_.max_total = config_.download_max_time;
}

Updater::~Updater() = default;

Result<std::unique_ptr<Updater>> Updater::open(const AgentConfig& config) {
  auto slots = resolve_slots(config);
  if (!slots) return slots.error();
  auto env = config.bootloader == "grub" ? open_grub_env(config.grubenv)
                                         : open_uboot_env_from_file(config.fw_env_config);
  if (!env) return env.error().context("opening the boot environment");
  auto store = StateStore::open(config.data_dir);
  if (!store) return store.error();
  auto lock = DirLock::acquire(config.data_dir);
  if (!lock) return lock.error();
  return std::unique_ptr<Updater>(
      new Updater(config, std::move(*slots), std::move(*env), std::move(*store), std::move(*lock)));
}

Result<int> Updater::running_part() const {
  auto slot = active_slot(ActiveDetect{config_.cmdline, config_.mountinfo}, slots_.a, slots_.b);
  if (!slot) return slot.error().context("finding the running root partition");
  return *slot == 0 ? slots_.part_a : slots_.part_b;
}

const PartitionRef& Updater::partition_of(int part) const {
  return part == slots_.part_a ? slots_.a.partition : slots_.b.partition;
}

Result<InstallState> Updater::save(InstallState s) {
  s.updated = unix_now();
  if (auto r = store_.save_install(s); !r) return r.error().context("saving the install state");
  log::debug("install state: ", to_string(s.phase));
  // Out of the download, its checkpoint is of no use any more.
  if (s.phase != Phase::downloading)
    if (auto r = store_.clear_resume(); !r) log::warn("clearing the resume checkpoint: ", r.error().message());
  // Test hook for the power-cut tests: die right after this state reached the disk, as a power
  // cut would, so every persisted state can be resumed from. Never set outside tests.
  if (const char* kill_at = std::getenv("TERN_TEST_KILL_AT"); kill_at && to_string(s.phase) == kill_at)
    std::raise(SIGKILL);
  return s;
}

Result<InstallState> Updater::advance(InstallState s, Event e) {
  auto next = agent::advance(s.phase, e);
  if (!next) return next.error();
  dlog_.line('I', "state " + std::string(to_string(s.phase)) + " -> " + std::string(to_string(*next)) + " (" +
                      std::string(to_string(e)) + ")");
  s.phase = *next;
  return save(std::move(s));
}

asio::awaitable<Result<InstallReport>> Updater::install(const InstallJob& job_arg, const ProgressFn& progress) {
  const InstallJob job = job_arg;  // kept: the caller's may not outlive the first suspension
  const auto serial = pool_.serial();

  // What is there now: the saved state, the running partition, the boot environment.
  auto start = co_await offload(serial, [&](std::stop_token) -> Result<InstallStart> {
    InstallStart st;
    auto current = store_.load_install();
    if (!current) return current.error();
    st.current = *current;
    // downloading: an interrupted install (the caller decided to run it again).
    if (current->phase != Phase::idle && current->phase != Phase::done && current->phase != Phase::downloading)
      return fail(AgentErrc::busy, "an install of " + current->artifact_name + " is in progress (" +
                                       std::string(to_string(current->phase)) +
                                       "): commit, roll back or reboot first");
    auto running = running_part();
    if (!running) return running.error();
    st.running = *running;
    auto vars = env_->read();
    if (!vars) return vars.error().context("reading the boot environment");
    if ((*vars)[bootvar::upgrade_available] == "1")
      return fail(AgentErrc::busy,
                  "the boot environment has an uncommitted update (upgrade_available=1): commit or roll back first");
    auto installed = this->installed();
    if (!installed) return installed.error();
    st.installed = *installed;
    st.reader.device_type = config_.device_type;
    auto device_provides = installed->provides;
    device_provides["artifact_name"] = installed->artifact_name;
    st.reader.device_provides = std::move(device_provides);
    if (!config_.verify_key.empty()) {
      auto key = read_file(config_.verify_key, 1u << 20);
      if (!key) return key.error().context("reading ArtifactVerifyKey");
      st.reader.verify_key_pem = *key;
    }
    return st;
  });
  if (!start) co_return start.error();
  const InstallState current = start->current;
  const Installed installed = start->installed;
  const artifacts::ReaderOptions ro = start->reader;
  const int target = start->running == slots_.part_a ? slots_.part_b : slots_.part_a;

  InstallState s;
  s.phase = current.phase;
  s.job = job;
  s.target_part = target;
  s.previous_part = start->running;
  s.reported = false;

  // An interrupted install of the same artifact goes on from its last checkpoint when it can.
  auto resumed = co_await offload(serial, [&](std::stop_token) -> Result<std::optional<PipelineResume>> {
    // A new deployment starts its log; another attempt of the same one goes on with it.
    dlog_.begin(job.deployment_id, job.attempt <= 1 && current.phase != Phase::downloading);
    auto saved = advance(s, Event::start);
    if (!saved) return saved.error();
    std::optional<PipelineResume> resume;
    if (current.phase == Phase::downloading) {
      auto point = current.job.deployment_id != job.deployment_id || current.job.source != job.source
                       ? Result<PipelineResume>(fail(Errc::invalid_argument, "another artifact was being installed"))
                   : current.target_part != target
                       ? Result<PipelineResume>(fail(Errc::invalid_argument,
                                                     "it was writing partition " + std::to_string(current.target_part) +
                                                         ", the standby partition is now " + std::to_string(target)))
                       : saved_resume_point(store_, job, ro);
      if (point) {
        log::info("resuming the interrupted download of ", job.source, " at byte ", point->checkpoint.offset, " (",
                  point->checkpoint.payload_bytes, " payload bytes already written)");
        resume = std::move(*point);
      } else {
        log::info("the interrupted download of ", job.source, " starts again from byte 0: ", point.error().message());
      }
    }
    if (!resume)
      if (auto r = store_.clear_resume(); !r) return r.error();
    return resume;
  });
  if (!resumed) co_return resumed.error();
  std::optional<PipelineResume> resume = std::move(*resumed);
  s.phase = Phase::downloading;
  // Download_Enter: the root filesystem's scripts may veto (exit 1) or delay (21) the download.
  auto entered = co_await offload(pool_.any(), [&](std::stop_token stop) {
    note('I', "installing " + job.source + " into " + partition_of(target).describe() + " (running partition " +
                  std::to_string(start->running) + ", attempt " + std::to_string(job.attempt) + ")");
    return run_scripts(ScriptState::Download, ScriptAction::Enter, stop);
  });
  if (!entered) {
    if (entered.error().code() == make_error_code(Errc::cancelled))
      co_return fail(AgentErrc::interrupted, "installing " + job.source + ": stopped in Download_Enter");
    auto err = entered.error().context("Download_Enter");
    auto f = co_await offload(serial, [&](std::stop_token stop) {
      return fail_unswitched(s, err.message(), ScriptState::Download, stop);
    });
    if (!f) co_return f.error();
    co_return err;
  }

  std::optional<artifacts::Header> module_header;  // the artifact is for an update module
  HeaderCheck check = [&](const artifacts::Header& h) -> Result<void> {
    if (h.artifact_name == installed.artifact_name)
      return fail(AgentErrc::already_installed, h.artifact_name + " is the running artifact");
    if (!h.is_rootfs()) {
      module_header = h;
      return fail(Errc::unsupported, "payload type " + h.payload_type + " is installed by its update module");
    }
    return {};
  };

  // Adaptive first when it can apply (a URL, no streaming checkpoint to go on from); it says why
  // not before writing anything, and the artifact is then streamed (adaptive_source.hpp).
  bool adaptive = config_.adaptive_install && is_url(job.source) && !resume;
  const bool adaptive_resuming = current.phase == Phase::downloading && current.job.source == job.source &&
                                 current.job.deployment_id == job.deployment_id && current.target_part == target;
  DownloadOptions download = download_;
  download.max_bytes_per_second = combined_cap(config_.download_max_rate, job.max_rate);
  Result<PipelineResult> result = fail(Errc::internal, "not run");
  std::uint64_t fallback_fetched = 0;  // what an adaptive attempt fetched before the full stream
  for (int restart = 0; restart < 3; ++restart) {
    if (adaptive) {
      AdaptiveOptions ao{.active = partition_of(start->running), .resuming = adaptive_resuming, .blocking = pool_.any()};
      ao.on_plan = on_plan_;
      ao.prefix_cache = config_.data_dir / "adaptive-prefix.bin";
      const PipelineSource source{.job = job, .download = download, .resume = std::nullopt};
      auto a = co_await run_adaptive(source, ro, check, partition_of(target), progress, ao);
      if (a && a->result) {
        result = std::move(*a->result);
        break;
      }
      if (!a && is(a.error(), AgentErrc::source_changed)) {
        log::warn(a.error().message(), ": starting over");
        continue;
      }
      if (!a) {
        result = a.error();
        break;
      }
      log::info("not installing adaptively (", a->fallback, "): streaming the whole artifact");
      fallback_fetched += a->fetched;
      adaptive = false;
    }
    PartitionWriterOptions writer_options;
    if (resume) writer_options.start_at = resume->checkpoint.payload_bytes;
    auto opened = co_await offload(serial, [&](std::stop_token) -> Result<std::unique_ptr<PartitionWriter>> {
      auto w = PartitionWriter::open(partition_of(target), writer_options);
      if (!w) return w.error();
      return std::make_unique<PartitionWriter>(std::move(*w));
    });
    if (!opened) {
      result = opened.error();
      break;
    }
    std::unique_ptr<PartitionWriter> writer = std::move(*opened);
    PipelineOptions options;
    options.checkpoint_every = checkpoint_every;
    options.blocking = pool_.any();
    options.on_prefix = [this](std::span<const std::uint8_t> prefix) -> Result<void> {
      auto r = store_.save_resume_prefix({reinterpret_cast<const char*>(prefix.data()), prefix.size()});
      if (!r) log::warn("no resume checkpoints for this install: ", r.error().message());
      return r;  // an error turns the checkpoints off; the install goes on
    };
    options.on_checkpoint = [this, &job](const PipelineCheckpoint& c) {
      return store_.save_resume(ResumeRecord{.deployment_id = job.deployment_id,
                                             .source = job.source,
                                             .checkpoint = c.checkpoint.serialize(),
                                             .etag = c.etag,
                                             .last_modified = c.last_modified,
                                             .total = c.total});
    };
    const PipelineSource source{.job = job, .download = download, .resume = resume};
    result = co_await run_pipeline(source, ro, check, *writer, progress, options);
    // The writer's descriptor is closed on the pool: closing a partition may flush.
    auto closed = co_await offload(serial, [&](std::stop_token) -> Result<void> {
      writer.reset();
      return {};
    });
    (void)closed;
    if (result && resume) {
      // The bytes before the checkpoint were written by the interrupted run and only its hash
      // state vouches for them: read the whole payload back from the partition before trusting it.
      // Minutes on slow storage: on the pool, where the io thread and the MQTT session never wait.
      log::info("verifying the resumed install: reading ", result->header.payload_size, " bytes back from ",
                partition_of(target).describe());
      const auto length = result->header.payload_size;
      auto on_disk = co_await offload(pool_.any(), [&](std::stop_token stop) {
        return sha256_of(partition_of(target), length, stop);
      });
      if (!on_disk) {
        result = on_disk.error().context("verifying the resumed install");
        break;
      }
      if (*on_disk == result->header.payload_sha256) break;
      log::warn("partition ", target, " does not hold the payload after the resumed download (SHA-256 ", *on_disk,
                ", the manifest says ", result->header.payload_sha256, "): starting over from byte 0");
    } else if (result || !is(result.error(), AgentErrc::source_changed)) {
      break;
    } else {
      log::warn(result.error().message(), resume ? ": discarding the checkpoint, starting over from byte 0" : ": starting over");
    }
    resume.reset();
    auto cleared = co_await offload(serial, [&](std::stop_token) { return store_.clear_resume(); });
    if (!cleared) {
      result = cleared.error();
      break;
    }
  }

  if (result) result->network_bytes += fallback_fetched;  // every byte this install received
  // Not a rootfs image: its update module installs it (the pipeline stopped at its header).
  if (module_header) co_return co_await ModuleInstall::install(*this, job, s, *module_header, ro, progress);
  if (!result && is(result.error(), AgentErrc::already_installed)) {
    auto done = co_await offload(serial, [&](std::stop_token) -> Result<InstallState> {
      InstallState d = s;
      d.already_installed = true;
      d.success = true;
      return advance(std::move(d), Event::already_installed);
    });
    if (!done) co_return done.error();
    co_return result.error();
  }
  if (!result && result.error().code() == make_error_code(Errc::cancelled)) {
    // Stopped from outside (SIGTERM, a newer or withdrawn deployment): the state stays in
    // downloading with its checkpoint, so the next run resumes; a caller that gives the install
    // up calls fail_install().
    co_return fail(AgentErrc::interrupted, "installing " + job.source + ": " + result.error().message());
  }
  if (!result) {
    auto err = result.error().context("installing " + job.source);
    auto f = co_await offload(serial, [&](std::stop_token stop) {
      return fail_unswitched(s, err.message(), ScriptState::Download, stop);
    });
    if (!f) co_return f.error();
    co_return err;
  }

  // Payload written and synced: store the switch, then the state that says it was stored.
  s.artifact_name = result->header.artifact_name;
  s.provides = provides_of(result->header);
  s.clears_provides = result->header.clears_provides;
  // Kept for the final status, sent after the reboot by the next daemon.
  s.bytes_fetched = result->network_bytes;
  s.bytes_reused = result->reused;
  // Download_Leave; then the artifact's scripts take over, kept on the data partition for the
  // states after the reboot; ArtifactInstall_Enter.
  ScriptState failed_state = ScriptState::Download;
  auto ready = co_await offload(pool_.any(), [&](std::stop_token stop) -> Result<void> {
    if (auto r = run_scripts(ScriptState::Download, ScriptAction::Leave, stop); !r) return r;
    if (auto r = scripts_.store_artifact_scripts(result->header.scripts); !r) return r;
    failed_state = ScriptState::ArtifactInstall;
    return run_scripts(ScriptState::ArtifactInstall, ScriptAction::Enter, stop);
  });
  if (!ready) {
    if (ready.error().code() == make_error_code(Errc::cancelled))
      co_return fail(AgentErrc::interrupted, "installing " + job.source + ": stopped in a state script");
    auto err = ready.error().context("installing " + job.source);
    auto f = co_await offload(serial, [&](std::stop_token stop) {
      return fail_unswitched(s, err.message(), failed_state, stop);
    });
    if (!f) co_return f.error();
    co_return err;
  }
  if (!job.reboot.empty() && job.reboot != "immediate") {
    // The deployment chooses when to reboot: keep the written partition, switch nothing yet.
    auto paused = co_await offload(serial, [&](std::stop_token) { return advance(s, Event::pause); });
    if (!paused) co_return paused.error();
    log::info("installed ", s.artifact_name, " into partition ", target, "; the switch waits (reboot: ", job.reboot, ")");
    co_return InstallReport{.header = result->header, .stats = *result, .paused = true};
  }
  auto switched = co_await offload(serial, [&](std::stop_token) -> Result<InstallState> {
    auto switching = advance(s, Event::payload_written);
    if (!switching) return switching.error();
    if (auto r = env_->write(vars_for_trial(target)); !r) {
      auto err = r.error().context("switching the boot environment to partition " + std::to_string(target));
      if (auto f = finish_failure(*switching, err.message()); !f) return f.error();
      return err;
    }
    return advance(*switching, Event::switch_stored);
  });
  if (!switched) co_return switched.error();
  // ArtifactInstall_Leave and ArtifactReboot_Enter: a failure switches back.
  auto left = co_await offload(pool_.any(), [&](std::stop_token stop) -> Result<void> {
    if (auto r = run_scripts(ScriptState::ArtifactInstall, ScriptAction::Leave, stop); !r) return r;
    failed_state = ScriptState::ArtifactReboot;
    if (auto r = run_scripts(ScriptState::ArtifactReboot, ScriptAction::Enter, stop); !r) return r;
    note('I', "installed " + s.artifact_name + " into partition " + std::to_string(target) + "; reboot to try it");
    dlog_.sync();
    return {};
  });
  if (!left) {
    if (left.error().code() == make_error_code(Errc::cancelled))
      co_return fail(AgentErrc::interrupted, "installing " + job.source + ": stopped in a state script");
    auto err = left.error().context("installing " + job.source);
    const InstallState at = *switched;
    auto f = co_await offload(serial, [&](std::stop_token stop) {
      return fail_switched(at, err.message(), failed_state, stop);
    });
    if (!f) co_return f.error();
    co_return err;
  }
  InstallReport report;
  report.header = result->header;
  report.stats = *result;
  co_return report;
}

Result<InstallState> Updater::finish_failure(InstallState s, const std::string& error) {
  s.success = false;
  s.error = error;
  s.reported = false;
  return advance(std::move(s), Event::failed);
}

Result<InstallState> Updater::finish_commit(InstallState s) {
  if (s.phase != Phase::committing) {
    auto r = advance(s, Event::healthy);
    if (!r) return r.error();
    s = *r;
  }
  if (auto r = env_->write(vars_for_commit()); !r) return r.error().context("storing the commit");
  auto installed = this->installed();
  if (!installed) return installed.error();
  Installed now{s.artifact_name, merge_provides(installed->provides, s.provides, s.clears_provides)};
  if (auto r = store_.save_installed(now); !r) return r.error();
  // Committed: too late for an error path (Mender ignores ArtifactCommit_Leave failures); a power
  // cut before the next line runs it again.
  (void)run_scripts(ScriptState::ArtifactCommit, ScriptAction::Leave, {}, true);
  s.success = true;
  s.error.clear();
  s.reported = false;
  note('I', "committed " + s.artifact_name + " on partition " + std::to_string(s.target_part));
  return advance(std::move(s), Event::commit_stored);
}

Result<void> Updater::run_health_check(std::string& why, std::stop_token stop) {
  if (config_.health_check_command.empty()) return {};
  const auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(config_.health_check_timeout);
  auto run = run_program({"sh", "-c", config_.health_check_command}, {.timeout = timeout, .stop = stop});
  if (run && run->stopped) return fail(Errc::cancelled, "the health check was stopped");
  if (run && run->exit_code == 0 && !run->timed_out) return {};
  std::string output = run ? run->output : run.error().message();
  while (!output.empty() && (output.back() == '\n' || output.back() == '\r')) output.pop_back();
  why = "health check '" + config_.health_check_command + "' " +
        (run ? (run->timed_out ? describe_exit(*run, timeout) : "failed with " + describe_exit(*run, timeout))
             : "could not run") +
        (output.empty() ? "" : ": " + output.substr(0, 400));
  return fail(Errc::io, why);
}

Result<Recovery> Updater::recover(std::stop_token stop) {
  auto s = store_.load_install();
  if (!s) return s.error();
  Recovery out;
  if (s->phase == Phase::idle || s->phase == Phase::done) return out;
  if (auto m = ModuleInstall::recover(*this, *s)) return *m;  // an update module's install
  auto vars = env_->read();
  if (!vars) return vars.error().context("reading the boot environment");
  auto running = running_part();
  if (!running) return running.error();
  auto d = decide(*s, *running, *vars);
  out.action = d.action;
  dlog_.begin(s->job.deployment_id, false);
  dlog_.line('I', "agent started: " + std::string(to_string(s->phase)) + ", running partition " +
                      std::to_string(*running) + ": " + std::string(to_string(d.action)));
  log::info("resuming install of ", s->artifact_name.empty() ? s->job.source : s->artifact_name, " (",
            to_string(s->phase), ", running partition ", *running, "): ", to_string(d.action));

  switch (d.action) {
    case Action::none:
      return out;
    case Action::interrupted:
      out.interrupted = true;
      return out;
    case Action::await_reboot:
      out.paused = true;
      return out;
    case Action::store_switch: {
      if (auto r = env_->write(vars_for_trial(s->target_part)); !r) return r.error();
      auto stored = advance(*s, Event::switch_stored);
      if (!stored) return stored.error();
      // After a pause for the reboot window or go-ahead (or a cut before the switch was stored):
      // ArtifactInstall_Leave and ArtifactReboot_Enter, as an install that goes straight on runs
      // them. A failure switches back.
      ScriptState failed_state = ScriptState::ArtifactInstall;
      auto left = [&]() -> Result<void> {
        if (auto r = run_scripts(ScriptState::ArtifactInstall, ScriptAction::Leave, stop); !r) return r;
        failed_state = ScriptState::ArtifactReboot;
        return run_scripts(ScriptState::ArtifactReboot, ScriptAction::Enter, stop);
      }();
      if (!left) {
        if (left.error().code() == make_error_code(Errc::cancelled)) return left.error();
        auto f = fail_switched(*stored, left.error().message(), failed_state, stop);
        if (!f) return f.error();
        out.finished = *f;
        return out;
      }
      out.reboot = true;
      return out;
    }
    case Action::reboot:
      out.reboot = true;
      return out;
    case Action::verify: {
      if (s->phase == Phase::switching) {
        auto r = advance(*s, Event::switch_stored);
        if (!r) return r.error();
        s = *r;
      }
      // ArtifactReboot_Leave, ArtifactCommit_Enter, the health check: any failure rolls back.
      std::string why;
      ScriptState failed_state = ScriptState::ArtifactReboot;
      auto checked = [&]() -> Result<void> {
        if (auto r = run_scripts(ScriptState::ArtifactReboot, ScriptAction::Leave, stop); !r) return r;
        failed_state = ScriptState::ArtifactCommit;
        if (auto r = run_scripts(ScriptState::ArtifactCommit, ScriptAction::Enter, stop); !r) return r;
        return run_health_check(why, stop);
      }();
      if (!checked) {
        if (checked.error().code() == make_error_code(Errc::cancelled)) return checked.error();  // verified on the next start
        if (why.empty()) why = checked.error().message();
        if (auto r = roll_back_after_reboot(*s, why, failed_state, stop); !r) return r.error();
        out.reboot = true;
        return out;
      }
      auto c = finish_commit(*s);
      if (!c) return c.error();
      out.finished = *c;
      return out;
    }
    case Action::finish_commit: {
      auto c = finish_commit(*s);
      if (!c) return c.error();
      out.finished = *c;
      return out;
    }
    case Action::store_rollback:
      if (auto r = env_->write(vars_for_rollback(s->previous_part)); !r) return r.error();
      out.reboot = true;
      return out;
    case Action::fail: {
      if ((*vars)[bootvar::upgrade_available] == "1" && *running == s->previous_part)
        if (auto r = env_->write(vars_for_rollback(s->previous_part)); !r) return r.error();
      auto f = finish_failure_with_scripts(*s, d.error, stop);
      if (!f) return f.error();
      note('W', "install of " + s->artifact_name + " failed: " + d.error);
      out.finished = *f;
      return out;
    }
  }
  return out;
}

Result<InstallState> Updater::commit() {
  auto s = store_.load_install();
  if (!s) return s.error();
  auto running = running_part();
  if (!running) return running.error();
  if (ModuleInstall::owns(*this, *s))
    return fail(Errc::invalid_argument, "an update module's install commits by itself: run 'tern-agent resume'");
  if ((s->phase != Phase::switched && s->phase != Phase::committing) || *running != s->target_part)
    return fail(Errc::invalid_argument, "nothing to commit: no new partition is running on trial");
  return finish_commit(*s);
}

Result<bool> Updater::rollback(const std::string& reason) {
  auto s = store_.load_install();
  if (!s) return s.error();
  auto running = running_part();
  if (!running) return running.error();
  if (ModuleInstall::owns(*this, *s))
    return fail(Errc::invalid_argument, "an update module's install rolls back by itself: run 'tern-agent resume'");
  if (s->phase != Phase::switched && s->phase != Phase::switching && s->phase != Phase::rolling_back)
    return fail(Errc::invalid_argument, "nothing to roll back: no install is waiting for commit");
  if (*running == s->previous_part) {
    // Not rebooted yet: point the bootloader back at the running partition; done.
    if (auto r = env_->write(vars_for_rollback(s->previous_part)); !r) return r.error();
    s->success = false;
    s->error = reason;
    s->reported = false;
    if (auto f = advance(*s, Event::rolled_back); !f) return f.error();
    return false;
  }
  if (s->phase != Phase::rolling_back) {
    s->error = reason;
    auto r = advance(*s, Event::unhealthy);
    if (!r) return r.error();
  }
  if (auto r = env_->write(vars_for_rollback(s->previous_part)); !r) return r.error();
  return true;
}

Result<InstallState> Updater::fail_install(const std::string& reason, bool aborted) {
  auto s = store_.load_install();
  if (!s) return s.error();
  s->aborted = aborted;
  return finish_failure(*s, reason);
}

Result<InstallState> Updater::final_status_seq() {
  auto s = store_.load_install();
  if (!s) return s.error();
  if (s->phase != Phase::done) return fail(Errc::internal, "no finished install to report");
  if (s->final_seq != 0) return s;
  auto seq = store_.next_seq();
  if (!seq) return seq.error();
  s->final_seq = *seq;
  return save(*s);
}

Result<std::optional<InstallJob>> Updater::next_attempt(bool give_up) {
  auto s = store_.load_install();
  if (!s) return s.error();
  if (s->phase != Phase::downloading || s->job.source.empty())
    return fail(Errc::internal, "there is no interrupted install to run again");
  if (give_up || s->job.attempt >= config_.install_attempts) {
    auto f = finish_failure(*s, "the install was interrupted " + std::to_string(s->job.attempt) +
                                    " time(s) (agent restart or power loss)");
    if (!f) return f.error();
    return std::optional<InstallJob>{};
  }
  InstallJob next = s->job;
  ++next.attempt;
  return std::optional<InstallJob>(std::move(next));
}

Result<void> Updater::mark_reported() {
  auto s = store_.load_install();
  if (!s) return s.error();
  if (s->phase != Phase::done || s->reported) return {};
  s->reported = true;
  auto r = save(*s);
  if (!r) return r.error();
  return {};
}

}  // namespace tern::agent
