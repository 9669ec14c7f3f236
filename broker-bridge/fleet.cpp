// Device ingest (status, inventory, presence), rollout (phases, threshold, retries), summaries and
// recovery. Operator commands are in fleet_commands.cpp.
#include "broker-bridge/fleet.hpp"
#include "broker-bridge/fleet_queries.hpp"

#include "broker-bridge/catalog.hpp"
#include "common/json.hpp"
#include "common/log.hpp"
#include "common/protocol.hpp"

#include <boost/json/array.hpp>

#include <tuple>

namespace tern::bridge {

namespace {

mqtt::Message retained(std::string topic, std::string payload) {
  mqtt::Message m;
  m.topic = std::move(topic);
  m.payload = std::move(payload);
  m.qos = 1;
  m.retained = true;
  return m;
}

bool counts_as_failure(const std::string& status) { return status == "failure" || status == "aborted"; }

}  // namespace

Fleet::Fleet(Store& store, FleetOptions options) : store_(store), options_(std::move(options)) {}

std::string Fleet::wire_id(const std::string& deployment, int attempt) {
  return attempt <= 1 ? deployment : deployment + "-retry-" + std::to_string(attempt);
}

Outgoing Fleet::handle(const mqtt::Message& msg, std::int64_t now) {
  if (auto dt = protocol::topics::parse_device_topic(msg.topic)) {
    if (dt->kind == "status") return handle_status(dt->device_id, msg, now);
    if (dt->kind == "inventory") return handle_inventory(dt->device_id, msg, now);
    if (dt->kind == "presence") return handle_presence(dt->device_id, msg, now);
    if (dt->kind == "log") return handle_log(dt->device_id, msg, now);
    return {};  // deployment: the bridge's own output
  }
  if (msg.topic.starts_with("tern/fleet/")) return handle_command(msg, now);
  log::debug("ignoring a message on ", msg.topic);
  return {};
}

// --- devices ----------------------------------------------------------------------------------------

Result<DeviceRecord> Fleet::seen_device(const std::string& id, bool& created) {
  auto d = store_.device(id);
  if (!d) return d.error();
  created = !d->has_value();
  if (*d) return std::move(**d);
  DeviceRecord rec;
  rec.id = id;
  log::info("new device ", id, " (pending admission)");
  return rec;
}

void Fleet::publish_device(const DeviceRecord& d, Outgoing& out) {
  const boost::json::object o = device_json(d);
  // The inventory is stored as normalised JSON text: spliced in as it is.
  std::string text = json::write(o);
  text.pop_back();
  text += ",\"inventory\":" + d.inventory + "}";
  out.push_back(retained(protocol::topics::fleet_device(d.id), std::move(text)));
}

Outgoing Fleet::update_device(const std::string& device, std::string_view what, const DeviceChange& change) {
  Outgoing out;
  auto r = store_.transaction([&]() -> Result<void> {
    if (auto l = store_.lock("device:" + device); !l) return l;
    bool created = false;
    auto d = seen_device(device, created);
    if (!d) return d.error();
    auto store = change(*d, created, out);
    if (!store) return store.error();
    if (!*store) return {};
    return store_.put_device(*d);
  });
  if (!r) {
    log::error(what, " of ", device, ": ", r.error().message());
    return {};
  }
  return out;
}

Outgoing Fleet::handle_inventory(const std::string& device, const mqtt::Message& msg, std::int64_t now) {
  if (msg.payload.empty()) return {};  // a cleared retained inventory: nothing to learn
  auto inv = protocol::parse_inventory(msg.payload);
  if (!inv) {
    log::warn("dropping inventory of ", device, ": ", inv.error().message());
    return {};
  }
  return update_device(device, "inventory", [&](DeviceRecord& d, bool created, Outgoing& out) -> Result<bool> {
    DeviceRecord before = d;
    d.inventory = protocol::serialize(*inv);
    if (auto it = inv->find("device_type"); it != inv->end()) d.device_type = it->second;
    if (auto it = inv->find("artifact_name"); it != inv->end()) d.artifact_name = it->second;
    if (!msg.retained) d.last_seen = now;  // a retained copy may be old
    if (created || before.inventory != d.inventory || before.device_type != d.device_type ||
        before.artifact_name != d.artifact_name)
      publish_device(d, out);
    return true;
  });
}

Outgoing Fleet::handle_presence(const std::string& device, const mqtt::Message& msg, std::int64_t now) {
  if (msg.payload.empty()) return {};
  auto p = protocol::parse_presence(msg.payload);
  if (!p) {
    log::warn("dropping presence of ", device, ": ", p.error().message());
    return {};
  }
  return update_device(device, "presence", [&](DeviceRecord& d, bool created, Outgoing& out) -> Result<bool> {
    const std::string state = p->online ? "online" : "offline";
    // Ordered by seq: an older one is stale (a late last will). With the same seq, offline wins:
    // a session's will carries the seq of its own online message and is published after it.
    bool newer = p->seq > d.presence_seq || d.presence == "unknown" ||
                 (p->seq == d.presence_seq && !p->online && d.presence == "online");
    if (!newer && !created) {
      log::debug("presence of ", device, ": ignoring ", state, " seq ", p->seq, " (have seq ", d.presence_seq, ")");
      return false;
    }
    bool changed = created || d.presence != state;
    if (newer) {
      d.presence = state;
      d.presence_seq = p->seq;
    }
    if (!msg.retained) d.last_seen = now;
    if (changed) publish_device(d, out);
    return true;
  });
}

// Status ingest (handle_status, handle_batch): fleet_ingest.cpp.

// --- rollout ----------------------------------------------------------------------------------------

void Fleet::mark_sent(DeviceDeploymentRecord& row, const DeploymentRecord& d, const ArtifactRecord& art, int attempt,
                      std::int64_t now, Outgoing& out) {
  row.attempt = attempt;
  row.status = "sent";
  row.bytes = 0;
  row.updated = now;
  protocol::Deployment m;
  m.deployment_id = wire_id(d.id, attempt);
  m.artifact_name = art.name;
  m.url = options_.artifact_base_url + "/" + art.file;
  m.size = art.size;
  m.sha256 = art.sha256;
  m.max_rate = d.max_rate;
  m.reboot = d.reboot;
  out.push_back(retained(protocol::topics::deployment(row.device), protocol::serialize(m)));
}

Result<void> Fleet::send(DeviceDeploymentRecord& row, const DeploymentRecord& d, int attempt, std::int64_t now,
                         Outgoing& out) {
  auto art = store_.artifact(d.artifact);
  if (!art) return art.error();
  if (!*art) return fail(Errc::not_found, "artifact " + d.artifact + " is no longer in the catalog");
  mark_sent(row, d, **art, attempt, now, out);
  return store_.put_device_deployment(row);
}

Result<void> Fleet::start_phase(DeploymentRecord& d, int phase, std::int64_t now, Outgoing& out) {
  d.phase = phase;
  d.next_phase_at = 0;
  d.state = "running";
  d.reason.clear();
  if (auto w = store_.update_deployment(d); !w) return w;
  auto rows = store_.device_deployments(d.id);
  if (!rows) return rows.error();
  std::vector<DeviceDeploymentRecord> sent;
  for (auto& row : *rows) {
    if (row.phase != phase || row.status != "pending") continue;
    sent.push_back(std::move(row));
  }
  if (!sent.empty()) {
    auto art = store_.artifact(d.artifact);
    if (!art) return art.error();
    if (!*art) return fail(Errc::not_found, "artifact " + d.artifact + " is no longer in the catalog");
    for (auto& row : sent) mark_sent(row, d, **art, 1, now, out);
    if (auto w = store_.put_device_deployments(sent); !w) return w;  // a few multi-row statements
  }
  log::info("deployment ", d.id, ": phase ", phase + 1, " of ", d.phases.size(), " (", sent.size(), " devices)");
  dirty_.insert(d.id);
  return {};
}

Result<void> Fleet::evaluate(DeploymentRecord& d, std::int64_t now, Outgoing& out) {
  // A phase may be empty (few devices, close percentages): loop until one has devices in flight.
  for (;;) {
    if (d.state != "running") return {};
    auto counts = store_.deployment_counts(d.id);
    if (!counts) return counts.error();
    std::uint64_t started = 0, open = 0, failed = 0;
    for (auto& c : *counts) {
      if (c.phase > d.phase) continue;
      started += c.n;
      if (!is_final_status(c.status)) open += c.n;
      else if (counts_as_failure(c.status)) failed += c.n;
    }
    if (open > 0) return {};
    if (started > 0 && failed * 100 > static_cast<std::uint64_t>(d.threshold) * started) {
      std::string reason = std::to_string(failed) + " of " + std::to_string(started) +
                           " devices failed, over the failure threshold of " + std::to_string(d.threshold) + "%";
      log::warn("deployment ", d.id, ": ", reason, ": ", d.on_threshold == "abort" ? "aborting" : "pausing");
      if (d.on_threshold == "abort") return abort_rows(d, reason, now, out);
      d.state = "paused";
      d.reason = reason;
      dirty_.insert(d.id);
      return store_.update_deployment(d);
    }
    if (d.phase + 1 >= static_cast<int>(d.phases.size())) {
      d.state = "finished";
      d.reason = failed ? std::to_string(failed) + " of " + std::to_string(started) + " devices failed" : "";
      log::info("deployment ", d.id, ": finished", d.reason.empty() ? "" : " (" + d.reason + ")");
      dirty_.insert(d.id);
      return store_.update_deployment(d);
    }
    if (d.pause_seconds > 0) {
      if (d.next_phase_at == 0) {
        d.next_phase_at = now + d.pause_seconds;
        dirty_.insert(d.id);
        return store_.update_deployment(d);
      }
      if (now < d.next_phase_at) return {};
    }
    if (auto w = start_phase(d, d.phase + 1, now, out); !w) return w;
  }
}

Result<void> Fleet::abort_rows(DeploymentRecord& d, const std::string& reason, std::int64_t now, Outgoing& out) {
  auto rows = store_.device_deployments(d.id);
  if (!rows) return rows.error();
  std::vector<DeviceDeploymentRecord> aborted;
  for (auto& row : *rows) {
    if (is_final_status(row.status)) continue;
    bool was_sent = row.status != "pending";
    row.status = "aborted";
    row.error = reason;
    row.updated = now;
    if (was_sent) out.push_back(retained(protocol::topics::deployment(row.device), ""));
    aborted.push_back(std::move(row));
  }
  // Multi-row statements: PostgreSQL's counters move once per statement (store migration 6).
  if (auto w = store_.put_device_deployments(aborted); !w) return w;
  d.state = "aborted";
  d.reason = reason;
  d.next_phase_at = now;  // when it ended, for recover()
  dirty_.insert(d.id);
  return store_.update_deployment(d);
}

Result<bool> Fleet::evaluate_locked(const std::string& id, std::int64_t now, bool always, Outgoing& out) {
  bool published = false;
  auto r = store_.transaction([&]() -> Result<void> {
    // Several bridges: a rollout advances in one of them at a time, on the state committed last.
    if (auto l = store_.lock("deployment:" + id); !l) return l;
    auto d = store_.deployment(id);
    if (!d) return d.error();
    if (!*d) return {};
    const auto before = std::tuple((*d)->state, (*d)->phase, (*d)->next_phase_at);
    if (auto w = evaluate(**d, now, out); !w) return w;
    published = always || before != std::tuple((*d)->state, (*d)->phase, (*d)->next_phase_at);
    return published ? publish_summary(**d, out) : Result<void>{};
  });
  if (!r) return r.error();
  return published;
}

Outgoing Fleet::tick(std::int64_t now) {
  Outgoing out;
  // Deployments waiting for a pause to end are not dirty: look at them too.
  auto waiting = store_.deployments("running");
  if (waiting) {
    for (auto& d : *waiting)
      if (d.next_phase_at != 0 && now >= d.next_phase_at) dirty_.insert(d.id);
  }
  auto ids = std::move(dirty_);
  dirty_.clear();
  std::set<std::string> failed;
  for (auto& id : ids) {
    Outgoing step;
    auto r = evaluate_locked(id, now, true, step);
    if (!r) {
      log::error("deployment ", id, ": ", r.error().message());
      failed.insert(id);  // e.g. a deadlock between bridges: evaluated again at the next tick
      continue;
    }
    out.insert(out.end(), std::make_move_iterator(step.begin()), std::make_move_iterator(step.end()));
  }
  for (auto& id : ids) dirty_.erase(id);  // published just now, with everything evaluate() changed
  dirty_.merge(failed);
  return out;
}

Outgoing Fleet::recover(std::int64_t now) {
  Outgoing out;
  // Device records: one may have been committed but not published when the bridge died.
  if (auto devices = store_.devices()) {
    for (auto& d : *devices) publish_device(d, out);
  } else {
    log::error("recovering: ", devices.error().message());
  }
  auto all = store_.deployments();
  if (!all) {
    log::error("recovering: ", all.error().message());
    return out;
  }
  for (auto& d : *all) {
    const bool open = d.state == "running" || d.state == "paused" || d.state == "created";
    const bool recently_aborted =
        d.state == "aborted" && now - d.next_phase_at < options_.recover_aborted_seconds;
    if (!open && !recently_aborted) continue;
    Outgoing step;
    auto r = store_.transaction([&]() -> Result<void> {
      if (auto l = store_.lock("deployment:" + d.id); !l) return l;
      auto art = store_.artifact(d.artifact);
      if (!art) return art.error();
      auto rows = store_.device_deployments(d.id);
      if (!rows) return rows.error();
      for (auto& row : *rows) {
        if (row.status == "pending") continue;
        if (!open || is_final_status(row.status)) {
          step.push_back(retained(protocol::topics::deployment(row.device), ""));
        } else if (*art) {
          // In progress: the same message again (retained, so idempotent for the device).
          protocol::Deployment m{wire_id(d.id, row.attempt), (*art)->name,
                                 options_.artifact_base_url + "/" + (*art)->file, (*art)->size, (*art)->sha256,
                                 d.max_rate, d.reboot};
          step.push_back(retained(protocol::topics::deployment(row.device), protocol::serialize(m)));
        }
      }
      if (d.state == "created") {
        // Died between creating and starting: start now.
        if (auto w = start_phase(d, 0, now, step); !w) return w;
      }
      if (auto w = evaluate(d, now, step); !w) return w;
      return publish_summary(d, step);
    });
    if (!r) {
      log::error("recovering deployment ", d.id, ": ", r.error().message());
      continue;
    }
    out.insert(out.end(), std::make_move_iterator(step.begin()), std::make_move_iterator(step.end()));
  }
  return out;
}

// --- summaries --------------------------------------------------------------------------------------

Result<boost::json::object> Fleet::summary(const DeploymentRecord& d) {
  // From the counters; only the failures listed are read as rows.
  auto by_phase = store_.deployment_counts(d.id);
  if (!by_phase) return by_phase.error();
  std::map<std::string, std::uint64_t> by_status;
  std::uint64_t total = 0;
  for (auto& c : *by_phase) {
    by_status[c.status] += c.n;
    total += c.n;
  }
  boost::json::object counts;
  for (auto& [status, n] : by_status) counts[status] = n;
  boost::json::array failures;
  auto failed = store_.failed_device_deployments(d.id, options_.summary_failures);
  if (!failed) return failed.error();
  for (auto& r : *failed) {
    boost::json::object f;
    f["device"] = r.device;
    f["status"] = r.status;
    f["error"] = r.error;
    f["attempt"] = r.attempt;
    auto log = store_.deployment_log(r.device, d.id, false);
    if (!log) return log.error();
    if (*log) {
      f["log"] = true;  // tern-fleet log DEVICE DEPLOYMENT prints it
      f["log_complete"] = (*log)->complete();
    }
    failures.push_back(std::move(f));
  }
  boost::json::array phases;
  for (int p : d.phases) phases.push_back(p);
  boost::json::object o;
  o["id"] = d.id;
  o["artifact"] = d.artifact;
  o["state"] = d.state;
  o["phase"] = d.phase + 1;
  o["phases"] = std::move(phases);
  o["counts"] = std::move(counts);
  o["total"] = total;
  o["failures"] = std::move(failures);
  // What the devices downloaded against what full downloads would have (adaptive installs).
  auto transfers = store_.transfer_totals(d.id);
  if (!transfers) return transfers.error();
  if (transfers->devices) {
    boost::json::object t;
    t["devices"] = transfers->devices;
    t["bytes_fetched"] = transfers->fetched;
    t["bytes_reused"] = transfers->reused;
    t["bytes_saved"] = transfers->artifact > transfers->fetched ? transfers->artifact - transfers->fetched : 0;
    o["transfer"] = std::move(t);
  }
  o["failure_threshold"] = d.threshold;
  o["on_threshold"] = d.on_threshold;
  o["retries"] = d.retries;
  o["created"] = d.created;
  if (!d.reason.empty()) o["reason"] = d.reason;
  if (d.state == "running" && d.next_phase_at) o["next_phase_at"] = d.next_phase_at;
  return o;
}

Result<void> Fleet::publish_summary(const DeploymentRecord& d, Outgoing& out) {
  auto s = summary(d);
  if (!s) return s.error();
  out.push_back(retained(protocol::topics::fleet_deployment(d.id), json::write(*s)));
  return {};
}

Result<std::string> Fleet::rescan_artifacts() {
  if (options_.artifact_dir.empty()) return fail(Errc::invalid_argument, "no artifact directory configured");
  auto report = scan_artifacts(store_, options_.artifact_dir, options_.verify_key_pem);
  if (!report) return report.error();
  std::string text = std::to_string(report->added.size()) + " added or changed, " +
                     std::to_string(report->removed.size()) + " removed, " +
                     std::to_string(report->errors.size()) + " refused";
  for (auto& e : report->errors) text += "; " + e;
  return text;
}

}  // namespace tern::bridge
