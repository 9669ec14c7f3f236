#include "agent/update/update_module.hpp"

#include "common/file.hpp"
#include "common/json.hpp"
#include "common/log.hpp"
#include "common/process.hpp"

#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>

#include <array>
#include <utility>

namespace tern::agent {
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

}  // namespace

fs::path module_record_path(const AgentConfig& c) { return c.data_dir / "module.json"; }

Result<void> save_module_record(const AgentConfig& c, const ModuleRecord& r) {
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
  if (auto w = write_file_atomic(module_record_path(c), boost::json::serialize(o) + "\n"); !w)
    return w.error().context("saving the update module's state");
  return {};
}

Result<std::optional<ModuleRecord>> load_module_record(const AgentConfig& c) {
  const auto path = module_record_path(c);
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

}  // namespace tern::agent
