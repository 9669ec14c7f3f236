// Status ingest: a burst of statuses in one store transaction.
//
// The bridge hands over what arrived together (Bridge drains its inbox after each wait); every
// status is applied in arrival order to records read once for the whole batch, exactly as it would
// be alone (seq only grows per device deployment, a superseded attempt or an ended deployment
// changes nothing but the device's last_seen, a failure with retries left is sent again), and the
// batch is written back in a few multi-row statements. Locks: the "device:ID" of every device and
// the "deployment:ID" of every deployment the batch may touch, in one statement and one global
// order (Store::lock_all), before anything is read; so with several bridges a device's statuses
// are applied one batch at a time, and a deployment's counters (kept by the store's triggers) and
// its evaluation in tick() never interleave. If the batch fails (a database error, a deadlock
// between bridges), it is rolled back and every status is ingested again in its own transaction,
// so one bad status costs only itself.
#include "broker-bridge/fleet.hpp"
#include "broker-bridge/fleet_queries.hpp"

#include "common/log.hpp"

#include <charconv>
#include <map>
#include <utility>

namespace tern::bridge {

namespace {

mqtt::Message cleared(std::string topic) {
  mqtt::Message m;
  m.topic = std::move(topic);
  m.qos = 1;
  m.retained = true;
  return m;
}

// "{id}-retry-N" → {id, N}; nullopt if `wire` has no such suffix.
std::optional<std::pair<std::string, int>> split_retry(const std::string& wire) {
  constexpr std::string_view marker = "-retry-";
  auto pos = wire.rfind(marker);
  if (pos == std::string::npos || pos == 0) return std::nullopt;
  std::string_view num(wire);
  num.remove_prefix(pos + marker.size());
  int n = 0;
  auto [end, ec] = std::from_chars(num.data(), num.data() + num.size(), n);
  if (ec != std::errc{} || end != num.data() + num.size() || n < 2) return std::nullopt;
  return std::pair{wire.substr(0, pos), n};
}

using RowKey = std::pair<std::string, std::string>;  // deployment, device

}  // namespace

Outgoing Fleet::handle_status(const std::string& device, const mqtt::Message& msg, std::int64_t now) {
  if (msg.payload.empty()) return {};  // a cleared retained status (decommission): nothing to learn
  auto ev = protocol::parse_status(msg.payload);
  if (!ev) {
    log::warn("dropping status of ", device, ": ", ev.error().message());
    return {};
  }
  return ingest_statuses({StatusIn{device, std::move(*ev)}}, now);
}

Outgoing Fleet::handle_batch(const std::vector<mqtt::Message>& msgs, std::int64_t now) {
  Outgoing out;
  std::vector<StatusIn> run;
  auto flush = [&] {
    if (run.empty()) return;
    auto step = ingest_statuses(run, now);
    out.insert(out.end(), std::make_move_iterator(step.begin()), std::make_move_iterator(step.end()));
    run.clear();
  };
  for (auto& m : msgs) {
    auto dt = protocol::topics::parse_device_topic(m.topic);
    if (dt && dt->kind == "status") {
      if (m.payload.empty()) continue;
      auto ev = protocol::parse_status(m.payload);
      if (!ev) {
        log::warn("dropping status of ", dt->device_id, ": ", ev.error().message());
        continue;
      }
      run.push_back(StatusIn{dt->device_id, std::move(*ev)});
      continue;
    }
    // Anything else keeps its place in the order: the statuses before it are ingested first.
    flush();
    auto step = handle(m, now);
    out.insert(out.end(), std::make_move_iterator(step.begin()), std::make_move_iterator(step.end()));
  }
  flush();
  return out;
}

Outgoing Fleet::ingest_statuses(const std::vector<StatusIn>& batch, std::int64_t now) {
  if (batch.empty()) return {};
  Outgoing out;
  std::set<std::string> dirty, ended;
  auto r = store_.transaction([&]() -> Result<void> { return ingest_batch(batch, now, out, dirty, ended); });
  if (r) {
    dirty_.merge(dirty);
    for (auto& id : ended) advance_now(id, now, out);
    return out;
  }
  if (batch.size() == 1) {
    log::error("status of ", batch.front().device, ": ", r.error().message());
    return {};
  }
  log::warn("a batch of ", batch.size(), " statuses failed (", r.error().message(), "): ingesting them one by one");
  out.clear();
  for (auto& s : batch) {
    auto step = ingest_statuses({s}, now);
    out.insert(out.end(), std::make_move_iterator(step.begin()), std::make_move_iterator(step.end()));
  }
  return out;
}

Result<void> Fleet::ingest_batch(const std::vector<StatusIn>& batch, std::int64_t now, Outgoing& out,
                                 std::set<std::string>& dirty, std::set<std::string>& ended) {
  // What the batch may touch: its devices, and for each status the deployment it names and, for a
  // retry id "{id}-retry-N", {id}.
  std::set<std::string> device_ids, deployment_ids;
  for (auto& s : batch) {
    device_ids.insert(s.device);
    deployment_ids.insert(s.ev.deployment_id);
    if (auto split = split_retry(s.ev.deployment_id)) deployment_ids.insert(split->first);
  }
  std::vector<std::string> keys;
  for (auto& d : device_ids) keys.push_back("device:" + d);
  for (auto& d : deployment_ids) keys.push_back("deployment:" + d);
  if (auto l = store_.lock_all(keys); !l) return l;

  const std::vector<std::string> devs(device_ids.begin(), device_ids.end());
  const std::vector<std::string> deps(deployment_ids.begin(), deployment_ids.end());
  std::map<std::string, DeviceRecord> devices;
  auto found_devices = store_.devices_in(devs);
  if (!found_devices) return found_devices.error();
  for (auto& d : *found_devices) devices.emplace(d.id, std::move(d));
  // Only what the statuses change is written back. last_seen is in seconds, so a device's statuses
  // in the same second as its last write leave its row as it is.
  const std::map<std::string, DeviceRecord> devices_as_read = devices;
  std::map<RowKey, DeviceDeploymentRecord> rows;
  auto found_rows = store_.device_deployments_in(deps, devs);
  if (!found_rows) return found_rows.error();
  for (auto& r : *found_rows) rows.emplace(RowKey{r.deployment, r.device}, std::move(r));
  std::map<std::string, DeploymentRecord> deployments;
  auto found_deployments = store_.deployments_in(deps);
  if (!found_deployments) return found_deployments.error();
  for (auto& d : *found_deployments) deployments.emplace(d.id, std::move(d));

  std::set<RowKey> changed_rows;
  std::vector<HistoryRecord> history;
  std::map<RowKey, TransferRecord> transfers;

  for (auto& [device, ev] : batch) {
    log::debug("status of ", device, " seq ", ev.seq, " for ", ev.deployment_id);
    auto dit = devices.find(device);
    if (dit == devices.end()) {
      DeviceRecord rec;
      rec.id = device;
      log::info("new device ", device, " (pending admission)");
      dit = devices.emplace(device, std::move(rec)).first;
      publish_device(dit->second, out);
    }
    DeviceRecord& dev = dit->second;
    dev.last_seen = now;

    // Which deployment and attempt: the id as sent, or "{id}-retry-N".
    int wire_attempt = 1;
    auto rit = rows.find(RowKey{ev.deployment_id, device});
    if (rit == rows.end()) {
      if (auto split = split_retry(ev.deployment_id)) {
        rit = rows.find(RowKey{split->first, device});
        wire_attempt = split->second;
      }
    }
    if (rit == rows.end()) {
      log::warn("status of ", device, " for unknown deployment ", ev.deployment_id, ": dropped");
      continue;
    }
    auto& rr = rit->second;
    const std::string word(protocol::to_string(ev.status));
    // Idempotence under QoS 1 redelivery and ordering per device: seq only grows.
    if (ev.seq != 0 && ev.seq <= rr.last_seq) {
      log::debug("status of ", device, " seq ", ev.seq, ": duplicate or older than ", rr.last_seq);
      continue;
    }
    if (wire_attempt < rr.attempt) {
      log::debug("status of ", device, ": attempt ", wire_attempt, " is superseded by ", rr.attempt);
      continue;
    }
    if (is_final_status(rr.status)) {
      log::debug("status of ", device, ": ", rr.deployment, " already ended with ", rr.status);
      continue;
    }
    auto dep = deployments.find(rr.deployment);
    if (dep == deployments.end()) return fail(Errc::internal, "device deployment without deployment " + rr.deployment);

    history.push_back(
        HistoryRecord{rr.deployment, device, ev.seq, word, ev.time ? ev.time : now, ev.error, wire_attempt});
    if (ev.bytes_fetched || ev.bytes_reused)
      transfers[rit->first] = TransferRecord{.deployment = rr.deployment, .device = device,
                                             .fetched = ev.bytes_fetched, .reused = ev.bytes_reused,
                                             .artifact = ev.total};
    rr.status = word;
    rr.bytes = ev.bytes;
    rr.total = ev.total;
    rr.error = ev.error;
    if (ev.seq) rr.last_seq = ev.seq;
    rr.updated = now;
    if (rr.attempt == 0) rr.attempt = wire_attempt;
    changed_rows.insert(rit->first);

    const DeploymentRecord& d = dep->second;
    const bool running = d.state == "running" || d.state == "paused";
    if (ev.status == protocol::Status::failure && running && rr.attempt <= d.retries) {
      // Another attempt: a new deployment id so the device runs it again.
      log::info("deployment ", rr.deployment, " failed on ", device, " (attempt ", rr.attempt, "): retrying");
      if (auto w = send(rr, d, rr.attempt + 1, now, out); !w) return w;
    } else if (is_final_status(word)) {
      // Done on this device: nothing left for it to run.
      out.push_back(cleared(protocol::topics::deployment(device)));
      if (d.state == "running") ended.insert(rr.deployment);
      if (ev.status == protocol::Status::success || ev.status == protocol::Status::already_installed) {
        if (dev.artifact_name != d.artifact) {
          dev.artifact_name = d.artifact;
          publish_device(dev, out);
        }
      }
    }
    dirty.insert(rr.deployment);
  }

  // Written back once each, in key order (the order of the locks, too).
  std::vector<DeviceRecord> device_rows;
  for (auto& [id, d] : devices)
    if (auto r = devices_as_read.find(id); r == devices_as_read.end() || r->second != d) device_rows.push_back(d);
  if (auto w = store_.put_devices(device_rows); !w) return w;
  std::vector<DeviceDeploymentRecord> dd_rows;
  for (auto& k : changed_rows) dd_rows.push_back(rows.at(k));
  if (auto w = store_.put_device_deployments(dd_rows); !w) return w;
  if (auto w = store_.add_history(history); !w) return w;
  std::vector<TransferRecord> transfer_rows;
  for (auto& [k, t] : transfers) transfer_rows.push_back(t);
  return store_.put_transfers(transfer_rows);
}

void Fleet::advance_now(const std::string& id, std::int64_t now, Outgoing& out) {
  Outgoing step;
  auto published = evaluate_locked(id, now, false, step);
  if (!published) {
    // The statuses are committed; the tick evaluates the deployment again (it is dirty).
    log::warn("deployment ", id, ": ", published.error().message(), " (evaluated again at the next tick)");
    return;
  }
  if (!*published) return;
  out.insert(out.end(), std::make_move_iterator(step.begin()), std::make_move_iterator(step.end()));
  dirty_.erase(id);  // its summary went out just now
}

}  // namespace tern::bridge
