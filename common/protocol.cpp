#include "common/protocol.hpp"

#include "common/json.hpp"
#include "common/reboot_policy.hpp"

#include <boost/json/object.hpp>

#include <array>
#include <utility>

namespace tern::protocol {
namespace {

constexpr std::array<std::pair<Status, std::string_view>, 8> status_words{{
    {Status::downloading, "downloading"},
    {Status::installing, "installing"},
    {Status::rebooting, "rebooting"},
    {Status::success, "success"},
    {Status::failure, "failure"},
    {Status::already_installed, "already-installed"},
    {Status::aborted, "aborted"},
    {Status::pause_before_rebooting, "pause_before_rebooting"},
}};

Error invalid(std::string_view what, std::string msg) {
  return fail(Errc::invalid_argument, std::string(what) + ": " + msg);
}

Result<json::Object> parse_root(std::string_view payload, std::string_view what) {
  auto doc = json::Document::parse(payload, what, max_message_size);
  if (!doc) return doc.error();
  // The Object keeps the document's buffers alive.
  return doc->root();
}

Result<std::string> checked_id(const json::Object& o, std::string_view key, std::string_view what) {
  auto id = o.string(key);
  if (!id) return id.error();
  if (!valid_id(*id)) return invalid(what, "field '" + std::string(key) + "': '" + *id + "' is not a valid id");
  return id;
}

bool is_hex64(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

}  // namespace

std::string_view to_string(Status s) {
  for (auto& [st, word] : status_words)
    if (st == s) return word;
  return "unknown";
}

Result<Status> parse_status_word(std::string_view word) {
  for (auto& [st, w] : status_words)
    if (w == word) return st;
  return fail(Errc::invalid_argument, "'" + std::string(word) + "' is not a deployment status");
}

bool is_final(Status s) {
  return s == Status::success || s == Status::failure || s == Status::already_installed ||
         s == Status::aborted;
}

bool valid_id(std::string_view id) {
  if (id.empty() || id.size() > 128 || id == "." || id == "..") return false;
  for (char c : id) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

Result<Deployment> parse_deployment(std::string_view payload) {
  constexpr std::string_view what = "deployment message";
  auto o = parse_root(payload, what);
  if (!o) return o.error();
  Deployment d;
  auto id = checked_id(*o, "deployment_id", what);
  if (!id) return id.error();
  d.deployment_id = std::move(*id);
  auto name = o->string("artifact_name");
  if (!name) return name.error();
  if (name->empty()) return invalid(what, "field 'artifact_name' is empty");
  d.artifact_name = std::move(*name);
  auto url = o->string("url");
  if (!url) return url.error();
  if (!url->starts_with("https://") && !url->starts_with("http://"))
    return invalid(what, "field 'url': '" + *url + "' is not an http(s) URL");
  d.url = std::move(*url);
  auto size = o->u64("size");
  if (!size) return size.error();
  d.size = *size;
  auto sha = o->string("sha256");
  if (!sha) return sha.error();
  if (!is_hex64(*sha)) return invalid(what, "field 'sha256': expected 64 lowercase hex digits");
  d.sha256 = std::move(*sha);
  auto rate = o->u64_or("max_rate", 0);
  if (!rate) return rate.error();
  d.max_rate = *rate;
  auto reboot = o->string_or("reboot", "");
  if (!reboot) return reboot.error();
  if (auto policy = parse_reboot_policy(*reboot); !policy) return policy.error().context(std::string(what));
  d.reboot = *reboot == "immediate" ? "" : std::move(*reboot);
  return d;
}

std::string serialize(const Deployment& d) {
  boost::json::object o;
  o["deployment_id"] = d.deployment_id;
  o["artifact_name"] = d.artifact_name;
  o["url"] = d.url;
  o["size"] = d.size;
  o["sha256"] = d.sha256;
  // Only when set: every byte of a retained message is paid for on each device's link.
  if (d.max_rate) o["max_rate"] = d.max_rate;
  if (!d.reboot.empty()) o["reboot"] = d.reboot;
  return json::write(o);
}

Result<RebootCommand> parse_reboot_command(std::string_view payload) {
  constexpr std::string_view what = "reboot command";
  auto o = parse_root(payload, what);
  if (!o) return o.error();
  auto id = checked_id(*o, "deployment_id", what);
  if (!id) return id.error();
  return RebootCommand{std::move(*id)};
}

std::string serialize(const RebootCommand& c) {
  boost::json::object o;
  o["deployment_id"] = c.deployment_id;
  return json::write(o);
}

Result<StatusEvent> parse_status(std::string_view payload) {
  constexpr std::string_view what = "status message";
  auto o = parse_root(payload, what);
  if (!o) return o.error();
  StatusEvent s;
  auto id = checked_id(*o, "deployment_id", what);
  if (!id) return id.error();
  s.deployment_id = std::move(*id);
  auto word = o->string("status");
  if (!word) return word.error();
  auto st = parse_status_word(*word);
  if (!st) return st.error().context(std::string(what) + ": field 'status'");
  s.status = *st;
  auto bytes = o->u64_or("bytes", 0);
  if (!bytes) return bytes.error();
  s.bytes = *bytes;
  auto total = o->u64_or("total", 0);
  if (!total) return total.error();
  s.total = *total;
  auto attempt = o->u64_or("attempt", 0);
  if (!attempt) return attempt.error();
  if (*attempt > 1'000'000) return invalid(what, "field 'attempt' is out of range");
  s.attempt = static_cast<std::uint32_t>(*attempt);
  auto err = o->string_or("error", "");
  if (!err) return err.error();
  s.error = std::move(*err);
  auto time = o->i64_or("time", 0);
  if (!time) return time.error();
  s.time = *time;
  auto seq = o->u64_or("seq", 0);
  if (!seq) return seq.error();
  s.seq = *seq;
  auto eta = o->u64_or("eta", 0);
  if (!eta) return eta.error();
  s.eta = *eta;
  auto fetched = o->u64_or("bytes_fetched", 0);
  if (!fetched) return fetched.error();
  s.bytes_fetched = *fetched;
  auto reused = o->u64_or("bytes_reused", 0);
  if (!reused) return reused.error();
  s.bytes_reused = *reused;
  return s;
}

std::string serialize(const StatusEvent& s) {
  boost::json::object o;
  o["deployment_id"] = s.deployment_id;
  o["status"] = std::string(to_string(s.status));
  o["bytes"] = s.bytes;
  o["total"] = s.total;
  o["attempt"] = s.attempt;
  o["error"] = s.error;
  o["time"] = s.time;
  o["seq"] = s.seq;
  if (s.eta) o["eta"] = s.eta;
  if (s.bytes_fetched) o["bytes_fetched"] = s.bytes_fetched;
  if (s.bytes_reused) o["bytes_reused"] = s.bytes_reused;
  return json::write(o);
}

Result<Presence> parse_presence(std::string_view payload) {
  constexpr std::string_view what = "presence message";
  auto o = parse_root(payload, what);
  if (!o) return o.error();
  Presence p;
  auto state = o->string("state");
  if (!state) return state.error();
  if (*state == "online") p.online = true;
  else if (*state == "offline") p.online = false;
  else return invalid(what, "field 'state': expected \"online\" or \"offline\", got '" + *state + "'");
  auto seq = o->u64_or("seq", 0);
  if (!seq) return seq.error();
  p.seq = *seq;
  auto time = o->i64_or("time", 0);
  if (!time) return time.error();
  p.time = *time;
  return p;
}

std::string serialize(const Presence& p) {
  boost::json::object o;
  o["state"] = p.online ? "online" : "offline";
  o["seq"] = p.seq;
  o["time"] = p.time;
  return json::write(o);
}

Result<Inventory> parse_inventory(std::string_view payload) {
  auto o = parse_root(payload, "inventory message");
  if (!o) return o.error();
  return o->string_map();
}

std::string serialize(const Inventory& inv) {
  boost::json::object o;
  for (auto& [k, v] : inv) o[k] = v;
  return json::write(o);
}

namespace topics {

std::string deployment(std::string_view id) { return "tern/devices/" + std::string(id) + "/deployment"; }
std::string status(std::string_view id) { return "tern/devices/" + std::string(id) + "/status"; }
std::string inventory(std::string_view id) { return "tern/devices/" + std::string(id) + "/inventory"; }
std::string presence(std::string_view id) { return "tern/devices/" + std::string(id) + "/presence"; }
std::string fleet_deployment(std::string_view dep) { return "tern/fleet/deployments/" + std::string(dep); }
std::string reboot(std::string_view id) { return "tern/devices/" + std::string(id) + "/reboot"; }
std::string fleet_deployment_reboot(std::string_view dep) {
  return "tern/fleet/deployments/" + std::string(dep) + "/reboot";
}
std::string fleet_device(std::string_view id) { return "tern/fleet/devices/" + std::string(id); }

std::optional<DeviceTopic> parse_device_topic(std::string_view topic) {
  constexpr std::string_view prefix = "tern/devices/";
  if (!topic.starts_with(prefix)) return std::nullopt;
  topic.remove_prefix(prefix.size());
  auto slash = topic.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  auto id = topic.substr(0, slash);
  auto kind = topic.substr(slash + 1);
  if (!valid_id(id)) return std::nullopt;
  if (kind != "deployment" && kind != "status" && kind != "inventory" && kind != "presence" && kind != "log")
    return std::nullopt;
  return DeviceTopic{std::string(id), std::string(kind)};
}

}  // namespace topics
}  // namespace tern::protocol
