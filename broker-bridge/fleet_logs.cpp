// Deployment logs: devices send the log of a failed deployment in pieces on tern/devices/{id}/log
// (common/log_protocol.hpp); the bridge keeps them per device and deployment (the newest log, by
// the failure status's seq), marks the deployment's summary, and hands them to operators on
// tern/fleet/devices/{id}/log.
#include "broker-bridge/fleet.hpp"

#include "common/json.hpp"
#include "common/log.hpp"
#include "common/log_protocol.hpp"
#include "common/protocol.hpp"

namespace tern::bridge {

Outgoing Fleet::handle_log(const std::string& device, const mqtt::Message& msg, std::int64_t now) {
  auto piece = protocol::parse_log_piece(msg.payload);
  if (!piece) {
    log::warn("dropping a log piece of ", device, ": ", piece.error().message());
    return {};
  }
  auto r = store_.transaction([&]() -> Result<void> {
    if (auto l = store_.lock("device:" + device); !l) return l;
    auto dev = store_.device(device);
    if (!dev) return dev.error();
    if (!*dev || (*dev)->admission != "accepted") {
      log::warn("log of ", piece->deployment_id, " from ", device, ": not an accepted device; dropped");
      return {};
    }
    // Its deployment: the id as sent, or the deployment of a retry ("{id}-retry-N").
    auto row = store_.device_deployment(piece->deployment_id, device);
    if (!row) return row.error();
    if (auto pos = piece->deployment_id.rfind("-retry-"); !*row && pos != std::string::npos && pos > 0) {
      row = store_.device_deployment(piece->deployment_id.substr(0, pos), device);
      if (!row) return row.error();
    }
    if (!*row) {
      log::warn("log of ", device, " for unknown deployment ", piece->deployment_id, ": dropped");
      return {};
    }
    auto fresh = store_.put_log_piece(device, piece->deployment_id, piece->seq, static_cast<int>(piece->part),
                                      static_cast<int>(piece->parts), piece->data, now);
    if (!fresh) return fresh.error();
    if (*fresh) {
      log::debug("log of ", piece->deployment_id, " from ", device, ": piece ", piece->part + 1, " of ", piece->parts);
      dirty_.insert((*row)->deployment);  // the summary's failure entry says a log exists
    }
    return {};
  });
  if (!r) log::error("log of ", device, ": ", r.error().message());
  return {};
}

Result<Fleet::Reply> Fleet::device_log(const std::string& device, std::string_view body) {
  const std::string what = "log command for " + device;
  if (!protocol::valid_id(device)) return fail(Errc::invalid_argument, what + ": '" + device + "' is not a valid id");
  auto doc = json::Document::parse(body.empty() ? std::string_view("{}") : body, what);
  if (!doc) return doc.error();
  auto o = doc->root();
  if (!o) return o.error();
  auto deployment = o->string("deployment_id");
  if (!deployment) return deployment.error();
  auto rec = store_.deployment_log(device, *deployment);
  if (!rec) return rec.error();
  if (!*rec) return fail(Errc::not_found, "no log from " + device + " for deployment " + *deployment);
  const auto& l = **rec;
  std::string text;
  int received = 0;
  for (std::size_t i = 0; i < l.pieces.size(); ++i) {
    if (l.received[i]) {
      text += l.pieces[i];
      ++received;
    } else {
      text += "[tern-bridge: piece " + std::to_string(i + 1) + " of " + std::to_string(l.parts) +
              " of this log has not arrived]\n";
    }
  }
  return Reply{{"device", device},      {"deployment_id", *deployment}, {"sent_as", l.deployment},
               {"parts", l.parts},      {"received", received},         {"complete", l.complete()},
               {"updated", l.updated},  {"log", text}};
}

}  // namespace tern::bridge
