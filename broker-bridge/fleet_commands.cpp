// Operator commands: parsing, validation, replies. Every command runs in one store transaction and
// changes nothing when it is refused.
#include "broker-bridge/catalog.hpp"
#include "broker-bridge/fleet.hpp"
#include "broker-bridge/fleet_queries.hpp"
#include "common/json.hpp"
#include "common/log.hpp"
#include "common/protocol.hpp"
#include "common/reboot_policy.hpp"

#include <boost/json/array.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>

namespace tern::bridge {

namespace fs = std::filesystem;

namespace {

Error invalid(std::string msg) { return fail(Errc::invalid_argument, std::move(msg)); }

mqtt::Message retained(std::string topic, std::string payload) {
  mqtt::Message m;
  m.topic = std::move(topic);
  m.payload = std::move(payload);
  m.retained = true;
  return m;
}

std::vector<std::string> split_topic(std::string_view topic) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  for (;;) {
    auto slash = topic.find('/', start);
    parts.emplace_back(topic.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start));
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return parts;
}

Result<json::Object> parse_body(std::string_view body, const std::string& what, json::Document& doc) {
  auto d = json::Document::parse(body.empty() ? std::string_view("{}") : body, what);
  if (!d) return d.error();
  doc = std::move(*d);
  return doc.root();
}

Result<void> only_known_keys(const json::Object& o, const std::string& what,
                             std::initializer_list<std::string_view> known) {
  for (auto& k : o.keys())
    if (std::find(known.begin(), known.end(), k) == known.end())
      return invalid(what + ": unknown field '" + k + "'");
  return {};
}

// "phases": [10, 50, 100] as minified JSON text: cumulative percentages, increasing, 1..100.
Result<std::vector<int>> parse_phases(const std::string& raw) {
  const std::string what = "field 'phases'";
  if (raw.size() < 2 || raw.front() != '[' || raw.back() != ']')
    return invalid(what + ": expected an array of percentages like [10,50,100]");
  std::vector<int> out;
  std::string_view rest(raw.data() + 1, raw.size() - 2);
  while (!rest.empty()) {
    auto comma = rest.find(',');
    auto item = rest.substr(0, comma);
    int v = 0;
    auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (ec != std::errc{} || end != item.data() + item.size())
      return invalid(what + ": '" + std::string(item) + "' is not a whole percentage");
    if (v < 1 || v > 100) return invalid(what + ": " + std::to_string(v) + " is not between 1 and 100");
    if (!out.empty() && v <= out.back())
      return invalid(what + ": percentages must increase (" + std::to_string(out.back()) + " then " +
                     std::to_string(v) + ")");
    out.push_back(v);
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  if (out.empty()) return invalid(what + ": is empty");
  if (out.back() != 100) out.push_back(100);  // the last phase covers every target
  return out;
}

constexpr std::size_t max_listed_skips = 100;
// Runs of an admission command whose device changed deployment while it locked (admit()).
constexpr int max_admission_attempts = 5;
// Ids in one devices/preauthorize command (the 256 KiB message cap allows about this many).
constexpr std::size_t max_preauthorize = 10000;

}  // namespace

Outgoing Fleet::handle_command(const mqtt::Message& msg, std::int64_t now) {
  auto parts = split_topic(msg.topic);  // tern, fleet, kind, ...
  Outgoing out;
  std::string command = msg.topic.substr(std::string_view("tern/fleet/").size());

  // Where the reply goes: the MQTT 5 response topic, else "reply_to" in the body.
  std::string reply_topic = msg.response_topic;
  if (reply_topic.empty() && !msg.payload.empty()) {
    if (auto doc = json::Document::parse(msg.payload, "command")) {
      if (auto root = doc->root()) {
        if (auto rt = root->string_or("reply_to", ""); rt && !rt->empty()) {
          if (rt->starts_with("tern/fleet/") && rt->find_first_of("+#") == std::string::npos) reply_topic = *rt;
          else log::warn("command ", command, ": ignoring reply_to '", *rt, "' (must be a topic under tern/fleet/)");
        }
      }
    }
  }

  Result<Reply> result = invalid("unknown command topic " + msg.topic);
  Outgoing effects;
  const std::size_t n = parts.size();
  auto tx = [&](auto&& f) {
    // Effects are kept only when the transaction commits.
    Result<Reply> r = invalid("not run");
    auto t = store_.transaction([&]() -> Result<void> {
      r = f();
      if (!r) return r.error();
      return {};
    });
    if (!t) {
      effects.clear();
      return Result<Reply>(t.error());
    }
    return r;
  };
  if (n == 4 && parts[2] == "deployments" && parts[3] == "create") {
    result = tx([&] { return create(msg.payload, now, effects); });
  } else if (n == 4 && parts[2] == "deployments" && parts[3] == "list") {
    result = list_deployments();
  } else if (n == 5 && parts[2] == "deployments" && parts[4] == "abort") {
    result = tx([&] { return abort(parts[3], now, effects); });
  } else if (n == 5 && parts[2] == "deployments" && parts[4] == "reboot") {
    result = tx([&] { return reboot_go_ahead(parts[3], effects); });
  } else if (n == 5 && parts[2] == "deployments" && parts[4] == "resume") {
    result = tx([&] { return resume(parts[3], now, effects); });
  } else if (n == 4 && parts[2] == "devices" && parts[3] == "list") {
    result = list_devices();
  } else if (n == 4 && parts[2] == "devices" && parts[3] == "preauthorize") {
    result = tx([&] { return preauthorize(msg.payload, now, effects); });
  } else if (n == 5 && parts[2] == "devices" &&
             (parts[4] == "accept" || parts[4] == "reject" || parts[4] == "decommission" || parts[4] == "group")) {
    // Run again (a few times) if the device's deployment changed while admission() locked it.
    for (int attempt = 1;; ++attempt) {
      result = tx([&] { return admission(parts[3], parts[4], msg.payload, now, effects); });
      if (result || result.error().code() != Errc::conflict || attempt == max_admission_attempts) break;
      log::info("command ", command, ": ", result.error().message(), ": running it again");
    }
  } else if (n == 5 && parts[2] == "devices" && parts[4] == "log") {
    result = device_log(parts[3], msg.payload);
  } else if (n == 4 && parts[2] == "artifacts" && parts[3] == "list") {
    result = list_artifacts();
  } else if (n == 4 && parts[2] == "artifacts" && parts[3] == "rescan") {
    auto r = rescan_artifacts();
    if (r) result = Reply{{"result", *r}};
    else result = r.error();
  } else if (n == 4 && parts[2] == "artifacts" && parts[3] == "add") {
    result = add_artifact(msg.payload);
  } else if (n == 4 && parts[2] == "devices" && parts[3] == "page") {
    result = page_devices(store_, msg.payload);  // fleet_queries.hpp
  } else if (n == 5 && parts[2] == "deployments" && parts[4] == "progress") {
    result = deployment_progress(store_, parts[3]);
  }

  boost::json::object reply;
  if (result) {
    reply["ok"] = true;
    for (auto& kv : *result) reply[kv.key()] = kv.value();
    log::info("command ", command, ": done");
  } else {
    reply["ok"] = false;
    reply["error"] = result.error().message();
    log::warn("command ", command, ": refused: ", result.error().message());
  }
  out = std::move(effects);
  if (!reply_topic.empty()) {
    mqtt::Message m;
    m.topic = reply_topic;
    m.payload = json::write(reply);
    m.correlation_data = msg.correlation_data;
    out.push_back(std::move(m));
  }
  return out;
}

// --- deployments ------------------------------------------------------------------------------------

Result<Fleet::Reply> Fleet::create(std::string_view body, std::int64_t now, Outgoing& out) {
  const std::string what = "create command";
  json::Document doc;
  auto o = parse_body(body, what, doc);
  if (!o) return o.error();
  if (auto r = only_known_keys(*o, what,
                               {"id", "artifact_name", "devices", "group", "device_type", "all", "phases",
                                "pause_seconds", "failure_threshold", "on_threshold", "retries", "reply_to",
                                "max_rate", "reboot"});
      !r)
    return r.error();

  DeploymentRecord d;
  auto id = o->string_or("id", "");
  if (!id) return id.error();
  if (id->empty()) {
    do d.id = "dep-" + std::to_string(now) + "-" + std::to_string(++id_counter_);
    while (store_.deployment(d.id) && *store_.deployment(d.id));
  } else {
    if (!protocol::valid_id(*id) || *id == "create" || *id == "list")
      return invalid(what + ": field 'id': '" + *id + "' is not a valid deployment id");
    auto existing = store_.deployment(*id);
    if (!existing) return existing.error();
    if (*existing) return invalid(what + ": deployment '" + *id + "' exists already");
    d.id = *id;
  }

  auto name = o->string("artifact_name");
  if (!name) return name.error();
  auto art = store_.artifact(*name);
  if (!art) return art.error();
  if (!*art) return fail(Errc::not_found, what + ": unknown artifact '" + *name + "' (not in the catalog)");
  d.artifact = *name;

  auto devices = o->strings_or("devices", {});
  if (!devices) return devices.error();
  for (auto& id_ : *devices)
    if (!protocol::valid_id(id_)) return invalid(what + ": field 'devices': '" + id_ + "' is not a valid device id");
  auto group = o->string_or("group", "");
  if (!group) return group.error();
  auto type = o->string_or("device_type", "");
  if (!type) return type.error();
  auto all = o->boolean_or("all", false);
  if (!all) return all.error();
  const bool explicit_list = o->has("devices");
  if (!explicit_list && group->empty() && type->empty() && !*all)
    return invalid(what + ": no targets: give 'devices', 'group', 'device_type' or \"all\": true");
  if (explicit_list && devices->empty()) return invalid(what + ": field 'devices' is empty");

  if (o->has("phases")) {
    auto raw = o->raw("phases");
    if (!raw) return raw.error();
    auto ph = parse_phases(*raw);
    if (!ph) return ph.error().context(what);
    d.phases = *ph;
  } else {
    d.phases = {100};
  }
  auto pause = o->u64_or("pause_seconds", 0);
  if (!pause) return pause.error();
  if (*pause > 365u * 24 * 3600) return invalid(what + ": field 'pause_seconds' is over a year");
  d.pause_seconds = static_cast<std::int64_t>(*pause);
  auto threshold = o->u64_or("failure_threshold", 100);
  if (!threshold) return threshold.error();
  if (*threshold > 100) return invalid(what + ": field 'failure_threshold': " + std::to_string(*threshold) +
                                       " is not a percentage (0 to 100)");
  d.threshold = static_cast<int>(*threshold);
  auto on = o->string_or("on_threshold", "pause");
  if (!on) return on.error();
  if (*on != "pause" && *on != "abort")
    return invalid(what + ": field 'on_threshold': expected \"pause\" or \"abort\", got '" + *on + "'");
  d.on_threshold = *on;
  auto retries = o->u64_or("retries", 0);
  if (!retries) return retries.error();
  if (*retries > 100) return invalid(what + ": field 'retries': " + std::to_string(*retries) + " is over 100");
  d.retries = static_cast<int>(*retries);
  auto max_rate = o->u64_or("max_rate", 0);
  if (!max_rate) return max_rate.error();
  d.max_rate = *max_rate;
  auto reboot = o->string_or("reboot", "");
  if (!reboot) return reboot.error();
  if (auto p = parse_reboot_policy(*reboot); !p) return invalid(what + ": field " + p.error().message());
  d.reboot = *reboot == "immediate" ? "" : *reboot;

  // Locks, in the one global order of every transaction (README "Fleet commands"): the fleet-wide
  // "admission" lock first and alone, then the rest in one statement (Store::lock_all) or a single
  // lock. Create holds "admission" exclusively: every transaction that changes whether or where a
  // device may be targeted (accept, reject, decommission, preauthorize, set_group: admit() and
  // set_group()) holds it shared, so none of them runs while a create reads and writes, and each
  // statement below (READ COMMITTED) sees all they committed before. Two creates wait for each
  // other, so a device is never targeted twice. One lock whatever the number of devices: no
  // per-device lock (each took a slot of PostgreSQL's shared lock table). Ingest does not take it
  // and never waits for a create: it changes no admission, group or deployment (a new device is
  // pending; a device type an inventory changes meanwhile counts as changed just after the create).
  if (auto l = store_.lock("admission"); !l) return l.error();
  if (auto l = store_.lock("deployment:" + d.id); !l) return l.error();
  if (auto again = store_.deployment(d.id); !again) return again.error();
  else if (*again) return invalid(what + ": deployment '" + d.id + "' exists already");  // created meanwhile

  // Targets: the listed devices or every device matching the filters, then only accepted devices
  // that can run the artifact and are not busy with another deployment.
  auto known = store_.devices();
  if (!known) return known.error();
  std::map<std::string, const DeviceRecord*> by_id;
  for (auto& dev : *known) by_id[dev.id] = &dev;
  std::vector<std::pair<std::string, std::string>> skipped;
  std::vector<const DeviceRecord*> candidates;
  if (explicit_list) {
    std::vector<std::string> ids = *devices;
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    for (auto& id_ : ids) {
      auto it = by_id.find(id_);
      if (it == by_id.end()) skipped.emplace_back(id_, "unknown device");
      else candidates.push_back(it->second);
    }
  } else {
    for (auto& dev : *known) candidates.push_back(&dev);
  }
  // Why a device is not a target (nullopt: it is one; "": not listed among the skipped).
  auto excluded = [&](const DeviceRecord& dev) -> std::optional<std::string> {
    if (!group->empty() && dev.group != *group)
      return explicit_list ? "not in group '" + *group + "'" : std::string();
    if (!type->empty() && dev.device_type != *type)
      return explicit_list ? "not of device type '" + *type + "'" : std::string();
    if (dev.admission != "accepted") return "not accepted (" + dev.admission + ")";
    const auto& types = (*art)->device_types;
    if (!types.empty() && !dev.device_type.empty() &&
        std::find(types.begin(), types.end(), dev.device_type) == types.end())
      return "device type '" + dev.device_type + "' is not one the artifact supports";
    return std::nullopt;
  };
  std::vector<std::optional<std::string>> why(candidates.size());
  std::vector<std::string> prospective;  // in device id order, as candidates
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    why[i] = excluded(*candidates[i]);
    if (!why[i]) prospective.push_back(candidates[i]->id);
  }
  auto busy = store_.active_deployments_of(prospective);
  if (!busy) return busy.error();
  std::vector<std::string> targets;
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    const std::string& id_ = candidates[i]->id;
    if (!why[i]) {
      if (auto b = busy->find(id_); b != busy->end()) why[i] = "busy with deployment " + b->second;
    }
    if (!why[i]) targets.push_back(id_);
    else if (!why[i]->empty()) skipped.emplace_back(id_, *why[i]);
  }
  if (targets.empty()) {
    std::string why;
    for (std::size_t i = 0; i < skipped.size() && i < 5; ++i)
      why += (i ? "; " : " (") + skipped[i].first + ": " + skipped[i].second;
    if (!skipped.empty()) why += skipped.size() > 5 ? "; ...)" : ")";
    return invalid(what + ": no device to deploy to: the target set is empty after keeping accepted, free "
                          "devices of a matching type" + why);
  }

  boost::json::object spec;
  if (explicit_list) {
    boost::json::array a;
    for (auto& id_ : *devices) a.emplace_back(id_);
    spec["devices"] = std::move(a);
  }
  if (!group->empty()) spec["group"] = *group;
  if (!type->empty()) spec["device_type"] = *type;
  if (*all) spec["all"] = true;
  d.targets = json::write(spec);
  d.created = now;
  d.state = "created";
  if (auto w = store_.insert_deployment(d); !w) return w.error();

  // Phase i covers the targets up to ceil(phases[i]% of them), in device id order.
  const std::size_t total = targets.size();
  std::size_t begin = 0;
  std::vector<DeviceDeploymentRecord> rows;
  for (std::size_t i = 0; i < d.phases.size(); ++i) {
    std::size_t end = (total * static_cast<std::size_t>(d.phases[i]) + 99) / 100;
    if (i + 1 == d.phases.size()) end = total;
    for (; begin < end; ++begin) {
      DeviceDeploymentRecord row;
      row.deployment = d.id;
      row.device = targets[begin];
      row.phase = static_cast<int>(i);
      row.updated = now;
      rows.push_back(std::move(row));
    }
  }
  if (auto w = store_.put_device_deployments(rows); !w) return w.error();  // multi-row statements
  if (auto w = start_phase(d, 0, now, out); !w) return w.error();
  if (auto w = evaluate(d, now, out); !w) return w.error();  // an empty first phase moves on
  if (auto w = publish_summary(d, out); !w) return w.error();
  log::info("deployment ", d.id, ": created for ", total, " devices, artifact ", d.artifact);

  Reply r;
  r["id"] = d.id;
  r["devices"] = total;
  boost::json::array sk;
  for (std::size_t i = 0; i < skipped.size() && i < max_listed_skips; ++i)
    sk.push_back(boost::json::object{{"device", skipped[i].first}, {"reason", skipped[i].second}});
  r["skipped"] = std::move(sk);
  r["skipped_count"] = skipped.size();
  auto s = summary(d);
  if (!s) return s.error();
  r["summary"] = std::move(*s);
  return r;
}

Result<Fleet::Reply> Fleet::reboot_go_ahead(const std::string& id, Outgoing& out) {
  auto d = store_.deployment(id);
  if (!d) return d.error();
  if (!*d) return fail(Errc::not_found, "reboot: unknown deployment '" + id + "'");
  auto rows = store_.device_deployments(id);
  if (!rows) return rows.error();
  // Every device sent the deployment and not finished: the go-ahead is retained, so a device still
  // downloading, or offline, finds it when it gets to the pause.
  boost::json::array devices;
  for (auto& row : *rows) {
    if (row.status == "pending" || is_final_status(row.status)) continue;
    const protocol::RebootCommand cmd{wire_id(id, row.attempt)};
    out.push_back(retained(protocol::topics::reboot(row.device), protocol::serialize(cmd)));
    devices.emplace_back(row.device);
  }
  log::info("deployment ", id, ": reboot go-ahead for ", devices.size(), " device(s)");
  return Reply{{"id", id}, {"devices", std::move(devices)}};
}

Result<Fleet::Reply> Fleet::abort(const std::string& id, std::int64_t now, Outgoing& out) {
  if (auto l = store_.lock("deployment:" + id); !l) return l.error();
  auto d = store_.deployment(id);
  if (!d) return d.error();
  if (!*d) return fail(Errc::not_found, "abort: unknown deployment '" + id + "'");
  if ((*d)->state == "finished" || (*d)->state == "aborted")
    return invalid("abort: deployment '" + id + "' is already " + (*d)->state);
  if (auto w = abort_rows(**d, "aborted by an operator", now, out); !w) return w.error();
  if (auto w = publish_summary(**d, out); !w) return w.error();
  log::info("deployment ", id, ": aborted by an operator");
  auto s = summary(**d);
  if (!s) return s.error();
  return Reply{{"id", id}, {"summary", std::move(*s)}};
}

Result<Fleet::Reply> Fleet::resume(const std::string& id, std::int64_t now, Outgoing& out) {
  if (auto l = store_.lock("deployment:" + id); !l) return l.error();
  auto d = store_.deployment(id);
  if (!d) return d.error();
  if (!*d) return fail(Errc::not_found, "resume: unknown deployment '" + id + "'");
  auto& dep = **d;
  if (dep.state != "paused") return invalid("resume: deployment '" + id + "' is " + dep.state + ", not paused");
  // The operator accepted the failures so far: move on to the next phase (or finish).
  if (dep.phase + 1 < static_cast<int>(dep.phases.size())) {
    if (auto w = start_phase(dep, dep.phase + 1, now, out); !w) return w.error();
  } else {
    dep.state = "finished";
    if (auto w = store_.update_deployment(dep); !w) return w.error();
  }
  if (auto w = evaluate(dep, now, out); !w) return w.error();
  if (auto w = publish_summary(dep, out); !w) return w.error();
  auto s = summary(dep);
  if (!s) return s.error();
  return Reply{{"id", id}, {"summary", std::move(*s)}};
}

Result<Fleet::Reply> Fleet::list_deployments() {
  auto all = store_.deployments();
  if (!all) return all.error();
  boost::json::array a;
  for (auto& d : *all) {
    auto s = summary(d);
    if (!s) return s.error();
    a.push_back(std::move(*s));
  }
  return Reply{{"deployments", std::move(a)}};
}

// --- devices ----------------------------------------------------------------------------------------

Result<Fleet::Reply> Fleet::list_devices() {
  auto all = store_.devices();
  if (!all) return all.error();
  boost::json::array a;
  for (auto& d : *all)
    a.push_back(device_json(d));
  return Reply{{"devices", std::move(a)}};
}

Result<Fleet::Reply> Fleet::admission(const std::string& id, const std::string& verb, std::string_view body,
                                      std::int64_t now, Outgoing& out) {
  const std::string what = verb + " command for " + id;
  if (!protocol::valid_id(id)) return invalid(what + ": '" + id + "' is not a valid device id");
  json::Document doc;
  auto o = parse_body(body, what, doc);
  if (!o) return o.error();
  if (auto r = only_known_keys(*o, what, {"group", "reply_to"}); !r) return r.error();
  std::optional<std::string> group;
  if (verb == "group" || o->has("group")) {
    auto g = o->string("group");
    if (!g) return g.error().context(what);
    if (g->size() > 128) return invalid(what + ": field 'group' is longer than 128 characters");
    group = *g;
  }
  if (verb == "group") return set_group(id, *group, what, out);
  return admit(id, verb, group, what, now, out);
}

Result<Fleet::Reply> Fleet::set_group(const std::string& id, const std::string& group, const std::string& what,
                                      Outgoing& out) {
  // The group decides whether a create by group targets the device: "admission" shared first (see
  // create()), then the device's lock before its record is read, so a change another bridge makes
  // to the device meanwhile (ingest, accept, reject) is not overwritten.
  if (auto l = store_.lock_shared("admission"); !l) return l.error();
  if (auto l = store_.lock("device:" + id); !l) return l.error();
  auto found = store_.device(id);
  if (!found) return found.error();
  if (!*found) return fail(Errc::not_found, what + ": unknown device '" + id + "'");
  DeviceRecord d = **found;
  d.group = group;
  if (auto w = store_.put_device(d); !w) return w.error();
  publish_device(d, out);
  return Reply{{"device", id}, {"admission", d.admission}, {"group", d.group}};
}

Result<Fleet::Reply> Fleet::admit(const std::string& id, const std::string& verb,
                                  const std::optional<std::string>& group, const std::string& what,
                                  std::int64_t now, Outgoing& out) {
  const std::string admission = verb == "accept" ? "accepted" : verb == "reject" ? "rejected" : "decommissioned";
  // Locks, in the global order (see create()): "admission" shared first, so a create that is
  // choosing its targets has committed before this reads the device and its deployment (a reject
  // then sees the new deployment and takes the device out of it), or waits until this commits
  // (and then sees the device rejected). Held already when called from preauthorize(): granted at
  // once. Then a device that stays accepted changes only its record: its own lock. A rejected or
  // decommissioned one also leaves its deployment, whose row and counters it changes: that
  // deployment's lock too, taken with the device's in one statement and in the global order of
  // status ingest (Store::lock_all), so a reject and another bridge's abort, tick or ingest of the
  // same deployment wait for each other instead of deadlocking. Which deployment is read before
  // locking and checked again after: if it changed meanwhile, the locks held are the wrong ones
  // and only the end of the transaction releases them, so the command runs again (handle_command).
  if (auto l = store_.lock_shared("admission"); !l) return l.error();
  std::optional<std::string> locked_deployment;
  if (admission == "accepted") {
    if (auto l = store_.lock("device:" + id); !l) return l.error();
  } else {
    auto before = store_.active_deployment_of(id);
    if (!before) return before.error();
    locked_deployment = *before;
    std::vector<std::string> keys{"device:" + id};
    if (locked_deployment) keys.push_back("deployment:" + *locked_deployment);
    if (auto l = store_.lock_all(keys); !l) return l.error();
  }
  auto found = store_.device(id);
  if (!found) return found.error();
  DeviceRecord d;
  if (*found) {
    d = **found;
  } else if (verb == "accept" || verb == "reject") {
    // Decided before the device ever connected (preauthorization, or a known-bad id): the record
    // is created now and the device's first message finds it.
    d.id = id;
    log::info("device ", id, ": ", verb == "accept" ? "accepted" : "rejected", " before it was seen");
  } else {
    return fail(Errc::not_found, what + ": unknown device '" + id + "'");
  }
  d.admission = admission;
  if (group) d.group = *group;

  if (d.admission != "accepted") {
    // A rejected or decommissioned device leaves the deployment it was in.
    auto busy = store_.active_deployment_of(id);
    if (!busy) return busy.error();
    if (*busy && *busy != locked_deployment) {
      return fail(Errc::conflict, what + ": the device's deployment changed while locking (" +
                                      locked_deployment.value_or("none") + ", now " + **busy + ")");
    }
    if (*busy) {
      auto row = store_.device_deployment(**busy, id);
      if (!row) return row.error();
      if (*row) {
        bool was_sent = (*row)->status != "pending";
        (*row)->status = "aborted";
        (*row)->error = "device " + d.admission;
        (*row)->updated = now;
        if (auto w = store_.put_device_deployment(**row); !w) return w.error();
        if (was_sent && d.admission != "decommissioned")
          out.push_back(retained(protocol::topics::deployment(id), ""));
        dirty_.insert(**busy);
      }
    }
  }
  if (d.admission == "decommissioned") {
    // A retired device leaves nothing behind on the broker: its retained deployment, inventory,
    // presence, go-ahead and last status are cleared (the bridge's record of it stays, saying
    // decommissioned).
    for (const char* kind : {"deployment", "inventory", "presence", "reboot", "status"})
      out.push_back(retained("tern/devices/" + id + "/" + kind, ""));
  }
  if (auto w = store_.put_device(d); !w) return w.error();
  publish_device(d, out);
  return Reply{{"device", id}, {"admission", d.admission}, {"group", d.group}};
}

Result<Fleet::Reply> Fleet::preauthorize(std::string_view body, std::int64_t now, Outgoing& out) {
  const std::string what = "preauthorize command";
  json::Document doc;
  auto o = parse_body(body, what, doc);
  if (!o) return o.error();
  if (auto r = only_known_keys(*o, what, {"devices", "group", "reply_to"}); !r) return r.error();
  auto ids = o->strings("devices");
  if (!ids) return ids.error().context(what);
  if (ids->empty()) return invalid(what + ": field 'devices' is empty");
  if (ids->size() > max_preauthorize)
    return invalid(what + ": " + std::to_string(ids->size()) + " devices in one command, at most " +
                   std::to_string(max_preauthorize));
  std::optional<std::string> group;
  if (o->has("group")) {
    auto g = o->string("group");
    if (!g) return g.error().context(what);
    if (g->size() > 128) return invalid(what + ": field 'group' is longer than 128 characters");
    group = *g;
  }
  // All or nothing: one bad id refuses the whole list (the transaction rolls back).
  for (auto& id : *ids)
    if (!protocol::valid_id(id)) return invalid(what + ": '" + id + "' is not a valid device id");
  // Locks, in the global order (see create()): "admission" shared first, then every device's lock
  // at once in one statement (Store::lock_all), before admit() takes each again (a lock held
  // already is granted at once): taken one by one in the list's order, they deadlocked with an
  // ingest batch holding some of the same devices. (At most max_preauthorize keys, a slot of
  // PostgreSQL's shared lock table each: 10,000 fit a default server's, README "Fleet commands".)
  if (auto l = store_.lock_shared("admission"); !l) return l.error();
  std::vector<std::string> keys;
  for (auto& id : *ids) keys.push_back("device:" + id);
  if (auto l = store_.lock_all(keys); !l) return l.error();
  boost::json::array accepted;
  for (auto& id : *ids) {
    auto r = admit(id, "accept", group, what + " (" + id + ")", now, out);
    if (!r) return r.error();
    accepted.push_back(boost::json::string(id));
  }
  Reply reply{{"devices", std::move(accepted)}, {"admission", "accepted"}};
  if (group) reply["group"] = *group;
  return reply;
}

// --- artifacts --------------------------------------------------------------------------------------

Result<Fleet::Reply> Fleet::list_artifacts() {
  auto all = store_.artifacts();
  if (!all) return all.error();
  const std::string signed_by = public_key_fingerprint(options_.verify_key_pem);  // the key it was checked with
  boost::json::array a;
  for (auto& art : *all) {
    boost::json::array types;
    for (auto& t : art.device_types) types.emplace_back(t);
    a.push_back(boost::json::object{{"name", art.name},
                                    {"file", art.file},
                                    {"size", art.size},
                                    {"sha256", art.sha256},
                                    {"device_types", std::move(types)},
                                    {"signed", art.is_signed},
                                    {"signed_by", art.is_signed ? signed_by : std::string()}});
  }
  return Reply{{"artifacts", std::move(a)}};
}

Result<Fleet::Reply> Fleet::add_artifact(std::string_view body) {
  const std::string what = "artifacts/add command";
  json::Document doc;
  auto o = parse_body(body, what, doc);
  if (!o) return o.error();
  if (auto r = only_known_keys(*o, what, {"path", "reply_to"}); !r) return r.error();
  auto path = o->string("path");
  if (!path) return path.error();
  if (options_.artifact_dir.empty()) return invalid(what + ": no artifact directory configured");
  fs::path src(*path);
  if (!src.is_absolute()) return invalid(what + ": field 'path': '" + *path + "' is not an absolute path");
  const std::string file = src.filename().string();
  if (!file.ends_with(".mender")) return invalid(what + ": field 'path': the file name must end in .mender");

  // Verified where it is before it enters the served directory.
  auto checked = read_artifact(src.parent_path(), file, options_.verify_key_pem);
  if (!checked) return checked.error().context(what);
  std::error_code ec;
  const fs::path dst = options_.artifact_dir / file;
  if (!fs::equivalent(src, dst, ec)) {
    const fs::path tmp = options_.artifact_dir / ("." + file + ".tmp");
    fs::copy_file(src, tmp, fs::copy_options::overwrite_existing, ec);
    if (!ec) fs::rename(tmp, dst, ec);
    if (ec) {
      fs::remove(tmp);
      return fail(Errc::io, what + ": copying " + src.string() + " to " + dst.string() + ": " + ec.message());
    }
  }
  auto rec = read_artifact(options_.artifact_dir, file, options_.verify_key_pem);
  if (!rec) return rec.error().context(what);
  if (auto w = store_.put_artifact(*rec); !w) return w.error();
  log::info("artifact catalog: added ", rec->name, " from ", src.string());
  return Reply{{"name", rec->name}, {"file", rec->file}, {"size", rec->size}, {"sha256", rec->sha256},
               {"signed", rec->is_signed}};
}

}  // namespace tern::bridge
