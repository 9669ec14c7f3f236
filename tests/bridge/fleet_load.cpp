// tern-fleet-load: N lightweight device sessions (tern::mqtt::Client, no agent) for
// scripts/bench-fleet. Devices are device-1..device-N with certificates from gen-certs.
//
// URI is the broker's devices listener, SERVICES_URI its services listener (bridge, operators).
//
//   tern-fleet-load baseline URI SERVICES_URI CERTS N
//       each device publishes 5 status messages; one consumer (the bridge's identity, clean
//       session) receives them: prints "baseline_ms=T" from the first publish to the last receipt.
//   tern-fleet-load bridge URI SERVICES_URI CERTS N ARTIFACT
//       with tern-bridge running: accepts the N devices (operator commands), creates a deployment
//       for all of them, each device answers the deployment it receives with 5 statuses; prints
//       "deploy_ms=T1 ingest_ms=T2": until every device had its deployment, and until the bridge's
//       summary said finished with N successes (every status ingested).
#include "common/log.hpp"
#include "common/mqtt/client.hpp"
#include "common/protocol.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <iostream>
#include <string>
#include <vector>

namespace asio = boost::asio;
using namespace tern;
using Clock = std::chrono::steady_clock;

namespace {

struct Args {
  std::string mode, uri, services_uri, certs, artifact;
  int n = 0;
};

mqtt::Options options_for(const Args& a, const std::string& file, const std::string& client_id) {
  mqtt::Options o;
  o.server_uri = file.starts_with("device") ? a.uri : a.services_uri;
  o.client_id = client_id;
  o.ca_file = a.certs + "/ca.crt";
  o.cert_file = a.certs + "/" + file + ".crt";
  o.key_file = a.certs + "/" + file + ".key";
  o.clean_start = true;
  o.session_expiry = std::chrono::seconds(0);
  o.connect_attempts = 5;
  o.min_retry = std::chrono::milliseconds(500);
  o.max_retry = std::chrono::seconds(2);
  o.inbox_capacity = 8;
  return o;
}

std::int64_t ms_since(Clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
}

void fatal(const std::string& what) {
  std::cerr << "tern-fleet-load: " << what << "\n";
  std::exit(1);
}

// Connects clients [i, n) step `stride`: a few workers keep the TLS handshakes in flight.
asio::awaitable<void> connect_slice(std::vector<std::unique_ptr<mqtt::Client>>& clients, std::size_t first,
                                    std::size_t stride) {
  for (std::size_t i = first; i < clients.size(); i += stride) {
    auto r = co_await clients[i]->connect();
    if (!r) fatal("connecting " + clients[i]->options().client_id + ": " + r.error().message());
  }
}

asio::awaitable<void> connect_all(std::vector<std::unique_ptr<mqtt::Client>>& clients) {
  constexpr std::size_t workers = 64;
  auto ex = co_await asio::this_coro::executor;
  std::size_t done = 0;
  asio::steady_timer all_done(ex, asio::steady_timer::time_point::max());
  for (std::size_t w = 0; w < workers && w < clients.size(); ++w)
    asio::co_spawn(ex, connect_slice(clients, w, workers), [&](std::exception_ptr) {
      if (++done == std::min(workers, clients.size())) all_done.cancel();
    });
  if (!clients.empty()) {
    boost::system::error_code ec;
    co_await all_done.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
}

std::string status_event(const std::string& dep, protocol::Status s, std::uint64_t seq, std::uint64_t bytes) {
  protocol::StatusEvent e;
  e.deployment_id = dep;
  e.status = s;
  e.seq = seq;
  e.bytes = bytes;
  e.total = 1000;
  e.attempt = 1;
  e.time = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  return protocol::serialize(e);
}

const protocol::Status five[] = {protocol::Status::downloading, protocol::Status::downloading,
                                 protocol::Status::installing, protocol::Status::rebooting, protocol::Status::success};

void publish_five(mqtt::Client& c, const std::string& device, const std::string& dep) {
  std::uint64_t seq = 0;
  for (auto s : five) {
    ++seq;
    mqtt::Message m;
    m.topic = protocol::topics::status(device);
    m.payload = status_event(dep, s, seq, seq * 200);
    if (auto r = c.enqueue(m); !r) fatal(r.error().message());
  }
}

std::string device_id(int i) { return "device-" + std::to_string(i + 1); }

asio::awaitable<void> baseline(const Args& a) {
  auto ex = co_await asio::this_coro::executor;
  auto consumer_options = options_for(a, "bridge", "tern-bridge");
  consumer_options.inbox_capacity = 1 << 20;
  auto consumer = mqtt::Client::create(ex, consumer_options).value();
  auto rc = co_await consumer->connect();
  if (!rc) fatal("consumer: " + rc.error().message());
  auto rs = co_await consumer->subscribe("tern/devices/+/status", 1);
  if (!rs) fatal("consumer: " + rs.error().message());
  std::vector<std::unique_ptr<mqtt::Client>> devices;
  for (int i = 0; i < a.n; ++i) devices.push_back(mqtt::Client::create(ex, options_for(a, device_id(i), device_id(i))).value());
  co_await connect_all(devices);
  std::cerr << "baseline: " << a.n << " devices connected\n";

  auto t0 = Clock::now();
  for (int i = 0; i < a.n; ++i) publish_five(*devices[i], device_id(i), "baseline");
  const long want = 5L * a.n;
  for (long got = 0; got < want; ++got) {
    auto m = co_await consumer->receive();
    if (!m) fatal("consumer: " + m.error().message());
  }
  std::cout << "baseline_ms=" << ms_since(t0) << "\n";
  co_await consumer->disconnect();
  for (auto& d : devices) co_await d->disconnect();
}

asio::awaitable<void> device_loop(mqtt::Client& c, const std::string& id, int& received, int total,
                                  Clock::time_point& t0, std::int64_t& deploy_ms) {
  for (;;) {
    auto m = co_await c.receive();
    if (!m) co_return;
    if (m->payload.empty()) continue;  // the bridge cleared it after the success
    auto dep = protocol::parse_deployment(m->payload);
    if (!dep) fatal(id + ": " + dep.error().message());
    publish_five(c, id, dep->deployment_id);
    if (++received == total) deploy_ms = ms_since(t0);
  }
}

asio::awaitable<void> with_bridge(const Args& a) {
  auto ex = co_await asio::this_coro::executor;
  auto op_options = options_for(a, "operator", "tern-operator");
  op_options.inbox_capacity = 1 << 20;  // never full: see the inbox note in broker-bridge/bridge.hpp
  auto op = mqtt::Client::create(ex, op_options).value();
  auto rc = co_await op->connect();
  if (!rc) fatal("operator: " + rc.error().message());
  const std::string replies = "tern/fleet/replies/fleet-load";
  const std::string dep_id = "bench-" + std::to_string(std::chrono::system_clock::now().time_since_epoch().count() / 1000000);
  auto s1 = co_await op->subscribe(replies, 1);
  auto s2 = co_await op->subscribe(protocol::topics::fleet_deployment(dep_id), 1);
  if (!s1 || !s2) fatal("operator: subscribing failed");

  std::vector<std::unique_ptr<mqtt::Client>> devices;
  for (int i = 0; i < a.n; ++i) devices.push_back(mqtt::Client::create(ex, options_for(a, device_id(i), device_id(i))).value());
  co_await connect_all(devices);
  for (int i = 0; i < a.n; ++i) {
    auto r = co_await devices[i]->subscribe(protocol::topics::deployment(device_id(i)), 1);
    if (!r) fatal(r.error().message());
  }
  std::cerr << "bridge: " << a.n << " devices connected\n";

  // Admission (not measured).
  for (int i = 0; i < a.n; ++i) {
    mqtt::Message m;
    m.topic = "tern/fleet/devices/" + device_id(i) + "/accept";
    m.payload = "{}";
    m.response_topic = replies;
    if (auto r = op->enqueue(m); !r) fatal(r.error().message());
  }
  for (int got = 0; got < a.n;) {
    auto m = co_await op->receive();
    if (!m) fatal(m.error().message());
    if (m->topic != replies) continue;
    if (m->payload.find("\"ok\":true") == std::string::npos) fatal("accept refused: " + m->payload);
    ++got;
  }
  std::cerr << "bridge: " << a.n << " devices accepted\n";

  int received = 0;
  std::int64_t deploy_ms = -1;
  auto t0 = Clock::now();
  std::vector<std::string> ids;  // outlive the device loops, which hold references
  for (int i = 0; i < a.n; ++i) ids.push_back(device_id(i));
  for (int i = 0; i < a.n; ++i)
    asio::co_spawn(ex, device_loop(*devices[i], ids[i], received, a.n, t0, deploy_ms), asio::detached);
  mqtt::Message create;
  create.topic = std::string(protocol::topics::deployments_create);
  create.payload = "{\"id\":\"" + dep_id + "\",\"artifact_name\":\"" + a.artifact + "\",\"all\":true}";
  create.response_topic = replies;
  if (auto r = op->enqueue(create); !r) fatal(r.error().message());
  for (;;) {
    auto m = co_await op->receive();
    if (!m) fatal(m.error().message());
    if (m->topic == replies && m->payload.find("\"ok\":true") == std::string::npos) fatal("create refused: " + m->payload);
    if (m->topic != replies && m->payload.find("\"state\":\"finished\"") != std::string::npos) {
      if (m->payload.find("\"success\":" + std::to_string(a.n)) == std::string::npos)
        fatal("finished without " + std::to_string(a.n) + " successes: " + m->payload);
      break;
    }
  }
  auto ingest_ms = ms_since(t0);
  std::cout << "deploy_ms=" << deploy_ms << " ingest_ms=" << ingest_ms << "\n";
  co_await op->disconnect();
  for (auto& d : devices) co_await d->disconnect();
}

}  // namespace

int main(int argc, char** argv) {
  log::set_program("tern-fleet-load");
  if (argc < 6) {
    std::cerr << "usage: tern-fleet-load baseline|bridge URI SERVICES_URI CERTS N [ARTIFACT]\n";
    return 2;
  }
  Args a{argv[1], argv[2], argv[3], argv[4], argc > 6 ? argv[6] : "", std::atoi(argv[5])};
  if (a.n <= 0 || (a.mode == "bridge" && a.artifact.empty())) {
    std::cerr << "usage: tern-fleet-load baseline|bridge URI SERVICES_URI CERTS N [ARTIFACT]\n";
    return 2;
  }
  asio::io_context io(1);
  bool ok = false;
  auto body = a.mode == "baseline" ? baseline(a) : with_bridge(a);
  asio::co_spawn(io, std::move(body), [&](std::exception_ptr e) {
    ok = !e;
    if (e) {
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        std::cerr << "tern-fleet-load: " << ex.what() << "\n";
      }
    }
  });
  io.run();
  return ok ? 0 : 1;
}
