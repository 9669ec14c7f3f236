// tern-bridge --config FILE: the fleet service (see bridge.hpp) and its artifact HTTPS server.
//
// Configuration (JSON object; relative paths resolve against the working directory):
//   broker_uri            "ssl://broker:8883" (required)
//   ca_file, cert_file, key_file   the bridge's TLS identity (CN tern-bridge) and the fleet CA
//   client_id             default "tern-bridge" (with Tern's broker: the certificate's CN)
//   db                    SQLite file, default "tern-bridge.db"; or a PostgreSQL connection URI
//                         ("postgresql://tern@db-host:5432/tern", libpq syntax): same schema,
//                         same migrations, same behaviour
//   mqtt_client           "asio" (default): Tern's own MQTT client on the io thread (one
//                         connection, no threads, packets batched into few TLS records); "paho":
//                         Paho MQTT C++, as before (bench-fleet at 10,000 devices: Paho's
//                         per-message cost bounded ingest; see README, "Fleet scale, measured")
//   mqtt_persistence_dir  Paho file persistence for in-flight messages (needs "mqtt_client":
//                         "paho"); default none (memory): at start the bridge republishes from its
//                         database whatever must be out there, and Paho's file persistence cut
//                         ingest throughput about tenfold (bench-fleet, 200 devices: 13 s, not 1.4 s)
//   artifact_dir          directory of *.mender files, scanned at start and on artifacts/rescan
//   verify_key            PEM public key: only artifacts signed with it are cataloged
//   serve_artifacts       default true: run the HTTPS artifact server
//   server_bind           default "0.0.0.0";  server_port  default 8443 (0: ephemeral)
//   server_cert, server_key       the HTTPS server's certificate (empty: plain HTTP, tests only)
//   require_client_cert   default false: when true devices must present a fleet certificate
//                         (checked against ca_file) to download
//   server_handshake_seconds   default 10: first byte, TLS handshake and first request header of a
//                         connection, each within this (hostile or dead clients are closed)
//   server_idle_seconds   default 30: a keep-alive connection idle between requests
//   server_max_connections        default 4096 open at once; server_max_connections_per_address 64
//                         (further connections are closed at once; see artifact_server.hpp)
//   public_url            what devices are told, default "https://127.0.0.1:<port>"; the files
//                         are at <public_url>/artifacts/<file>
//   dashboard_dir         the dashboard's static files (the dashboard/ folder; packages:
//                         /usr/share/tern/dashboard); empty (default): no dashboard. Served over
//                         HTTPS (server_cert) by a second server on dashboard_bind (default
//                         server_bind) : dashboard_port (default 8444, 0: ephemeral), with the
//                         artifact server's connection limits and never a client certificate
//                         (browsers log in to the broker's WebSockets listener with a password)
//   shared_group          default "" (plain subscriptions, one bridge); "tern-bridge" splits device
//                         traffic between bridges with $share/tern-bridge/... But Mosquitto 2.0.11
//                         does not keep shared subscriptions over a broker restart: messages
//                         published before the bridge resubscribes are lost (tests/system showed it)
//   retained_device_state default true (see bridge.hpp)
//   session_expiry_seconds  how long the broker keeps the bridge's session (and queues its
//                         messages) while it is away: default 604800 (7 days) for one bridge, 0
//                         with shared_group. Mosquitto keeps handing an offline member of a
//                         shared subscription its share of the messages (queued, not delivered to
//                         the others), so a bridge that dies would take half the statuses with it;
//                         with 0 its subscription ends with its connection and the other bridges
//                         get everything. Give every bridge its own client_id.
//   reconcile_seconds     with shared_group: a reconciliation pass (bridge.hpp) after every connection and
//                         every this many seconds, default 300 (0: after connections only)
//   reconcile_deadline_seconds  a pass not finished within this (default 60) is logged and retried
//   inbox_capacity        incoming messages buffered ahead of the store, default 131072
//   batch_interval_ms     under continuous traffic, at most one batch of messages per this many ms
//                         goes to the store (default 5; 0: none; see BridgeOptions::batch_interval)
//   log_level             debug | info | warn | error
// SIGTERM and SIGINT stop it cleanly.
#include "broker-bridge/artifact_server.hpp"
#include "broker-bridge/bridge.hpp"
#include "common/config.hpp"
#include "common/file.hpp"
#include "common/log.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>

#include <csignal>
#include <iostream>

namespace asio = boost::asio;
using namespace tern;

namespace {

constexpr const char* usage_text =
    "usage: tern-bridge --config FILE   run the fleet service (JSON; see /etc/tern/bridge.conf.example)\n"
    "       tern-bridge --version | --help\n";

int usage() {
  std::cerr << usage_text;
  return 2;
}

int run(const std::string& config_path) {
  auto cfg = Config::load(config_path);
  if (!cfg) {
    log::error(cfg.error().message());
    return 1;
  }
  for (auto& k : cfg->unknown_keys({"broker_uri", "ca_file", "cert_file", "key_file", "client_id", "db",
                                    "mqtt_client", "mqtt_persistence_dir", "artifact_dir", "verify_key", "serve_artifacts",
                                    "server_bind", "server_port", "server_cert", "server_key",
                                    "require_client_cert", "server_handshake_seconds", "server_idle_seconds",
                                    "server_max_connections", "server_max_connections_per_address", "public_url",
                                    "dashboard_dir", "dashboard_bind", "dashboard_port", "shared_group", "retained_device_state", "session_expiry_seconds",
                                    "inbox_capacity", "batch_interval_ms", "log_level", "reconcile_seconds", "reconcile_deadline_seconds"}))
    log::warn(config_path, ": unknown key '", k, "' ignored");

  // Each getter's error names the file and the key.
  auto get = [&](auto r) {
    if (!r) throw ErrorException(r.error().context(config_path));
    return *r;
  };
  try {
    auto level = get(cfg->string("log_level", "info"));
    log::Level lvl;
    if (log::parse_level(level, lvl)) log::set_level(lvl);

    bridge::BridgeOptions o;
    o.mqtt.server_uri = get(cfg->required_string("broker_uri"));
    o.mqtt.client_id = get(cfg->string("client_id", "tern-bridge"));
    o.mqtt.ca_file = get(cfg->string("ca_file", ""));
    o.mqtt.cert_file = get(cfg->string("cert_file", ""));
    o.mqtt.key_file = get(cfg->string("key_file", ""));
    // Large: while the inbox is full Paho's receive thread blocks inside its lock, and a publish
    // from the io thread then waits for that lock: the bridge would stall (see bridge.hpp).
    o.mqtt.inbox_capacity = get(cfg->u64("inbox_capacity", 131072));
    const auto interval = get(cfg->u64("batch_interval_ms", 5));
    if (interval > 1000)
      throw ErrorException(fail(Errc::invalid_argument, config_path + ": batch_interval_ms is over 1000"));
    o.batch_interval = std::chrono::milliseconds(interval);
    // Outgoing messages waiting for Paho: a deployment to N devices queues N retained messages at
    // once, and over the default of 10,000 the rest (and the reply) were dropped (bench-fleet at
    // 10,000 and 19,500 devices).
    o.mqtt.max_buffered = 4 * 1024 * 1024;
    o.mqtt.min_retry = std::chrono::seconds(1);
    o.mqtt.max_retry = std::chrono::seconds(30);
    o.db_path = get(cfg->string("db", "tern-bridge.db"));
    o.mqtt.persistence_dir = get(cfg->string("mqtt_persistence_dir", ""));
    const auto engine = get(cfg->string("mqtt_client", "asio"));
    if (engine == "asio") o.mqtt.engine = mqtt::Engine::asio;
    else if (engine == "paho") o.mqtt.engine = mqtt::Engine::paho;
    else throw ErrorException(fail(Errc::invalid_argument, config_path + ": mqtt_client is '" + engine + "', not \"asio\" or \"paho\""));
    if (o.mqtt.engine == mqtt::Engine::asio && !o.mqtt.persistence_dir.empty())
      throw ErrorException(fail(Errc::invalid_argument, config_path + ": mqtt_persistence_dir needs \"mqtt_client\": \"paho\""));
    o.shared_group = get(cfg->string("shared_group", ""));
    const auto expiry = get(cfg->u64("session_expiry_seconds", o.shared_group.empty() ? 604800 : 0));
    if (expiry > 0xffffffffull)
      throw ErrorException(fail(Errc::invalid_argument, config_path + ": session_expiry_seconds is over 4294967295"));
    o.mqtt.session_expiry = std::chrono::seconds(expiry);
    o.mqtt.clean_start = expiry == 0;
    o.retained_device_state = get(cfg->boolean("retained_device_state", true));
    o.reconcile_interval = std::chrono::seconds(get(cfg->u64("reconcile_seconds", 300)));
    o.reconcile_deadline = std::chrono::seconds(std::max<std::uint64_t>(1, get(cfg->u64("reconcile_deadline_seconds", 60))));
    o.fleet.artifact_dir = get(cfg->string("artifact_dir", ""));
    auto key_path = get(cfg->string("verify_key", ""));
    if (!key_path.empty()) {
      auto key = read_file(key_path, 1u << 20);
      if (!key) throw ErrorException(key.error().context(config_path + ": verify_key"));
      o.fleet.verify_key_pem = *key;
    }

    asio::io_context io(1);
    std::unique_ptr<bridge::ArtifactServer> server;
    std::string public_url = get(cfg->string("public_url", ""));
    if (get(cfg->boolean("serve_artifacts", true))) {
      if (o.fleet.artifact_dir.empty())
        throw ErrorException(fail(Errc::invalid_argument, config_path + ": serve_artifacts needs artifact_dir"));
      bridge::ArtifactServerOptions so;
      so.bind_address = get(cfg->string("server_bind", "0.0.0.0"));
      auto port = get(cfg->u64("server_port", 8443));
      if (port > 65535) throw ErrorException(fail(Errc::invalid_argument, config_path + ": server_port is over 65535"));
      so.port = static_cast<std::uint16_t>(port);
      so.root = o.fleet.artifact_dir;
      so.cert_file = get(cfg->string("server_cert", ""));
      so.key_file = get(cfg->string("server_key", ""));
      if (get(cfg->boolean("require_client_cert", false))) so.client_ca_file = o.mqtt.ca_file;
      auto positive = [&](const char* key, std::uint64_t fallback) {
        auto v = get(cfg->u64(key, fallback));
        if (v == 0 || v > 1000000)
          throw ErrorException(fail(Errc::invalid_argument, config_path + ": " + key + " must be between 1 and 1000000"));
        return v;
      };
      so.handshake_timeout = std::chrono::seconds(positive("server_handshake_seconds", 10));
      so.idle_timeout = std::chrono::seconds(positive("server_idle_seconds", 30));
      so.max_connections = positive("server_max_connections", 4096);
      so.max_connections_per_address = positive("server_max_connections_per_address", 64);
      const bool tls = !so.cert_file.empty();
      server = std::make_unique<bridge::ArtifactServer>(io.get_executor(), so);
      auto bound = server->start();
      if (!bound) throw ErrorException(bound.error().context("starting the artifact server"));
      if (public_url.empty()) public_url = std::string(tls ? "https" : "http") + "://127.0.0.1:" + std::to_string(*bound);
      log::info("artifact server on ", so.bind_address, ":", *bound, " (", public_url, "/artifacts/)");
    } else if (public_url.empty()) {
      throw ErrorException(fail(Errc::invalid_argument, config_path + ": public_url is required without serve_artifacts"));
    }
    std::unique_ptr<bridge::ArtifactServer> dashboard;
    if (auto dir = get(cfg->string("dashboard_dir", "")); !dir.empty()) {
      bridge::ArtifactServerOptions so;
      so.static_root = dir;
      so.bind_address = get(cfg->string("dashboard_bind", get(cfg->string("server_bind", "0.0.0.0"))));
      auto port = get(cfg->u64("dashboard_port", 8444));
      if (port > 65535) throw ErrorException(fail(Errc::invalid_argument, config_path + ": dashboard_port is over 65535"));
      so.port = static_cast<std::uint16_t>(port);
      so.cert_file = get(cfg->string("server_cert", ""));
      so.key_file = get(cfg->string("server_key", ""));
      so.handshake_timeout = std::chrono::seconds(get(cfg->u64("server_handshake_seconds", 10)));
      so.idle_timeout = std::chrono::seconds(get(cfg->u64("server_idle_seconds", 30)));
      so.max_connections = get(cfg->u64("server_max_connections", 4096));
      so.max_connections_per_address = get(cfg->u64("server_max_connections_per_address", 64));
      dashboard = std::make_unique<bridge::ArtifactServer>(io.get_executor(), so);
      auto bound = dashboard->start();
      if (!bound) throw ErrorException(bound.error().context("starting the dashboard server"));
      log::info("dashboard on ", so.cert_file.empty() ? "http" : "https", "://", so.bind_address, ":", *bound, "/");
    }
    while (public_url.ends_with('/')) public_url.pop_back();
    o.fleet.artifact_base_url = public_url + "/artifacts";

    auto b = bridge::Bridge::create(io.get_executor(), std::move(o));
    if (!b) throw ErrorException(b.error());
    auto& br = **b;

    asio::signal_set signals(io, SIGTERM, SIGINT);
    signals.async_wait([&](const boost::system::error_code& ec, int sig) {
      if (ec) return;
      log::info("signal ", sig, ": stopping");
      br.stop();
    });

    int status = 0;
    asio::co_spawn(io, br.run(), [&](std::exception_ptr e, Result<void> r) {
      if (e) {
        try {
          std::rethrow_exception(e);
        } catch (const std::exception& ex) {
          log::error("bridge: ", ex.what());
        }
        status = 1;
      } else if (!r) {
        log::error(r.error().message());
        status = 1;
      }
      signals.cancel();
      if (server) server->stop();
      if (dashboard) dashboard->stop();
    });
    io.run();
    return status;
  } catch (const ErrorException& e) {
    log::error(e.error().message());
    return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  // A peer closing a TLS connection while we write must not kill the process (OpenSSL uses write()).
  std::signal(SIGPIPE, SIG_IGN);
  log::set_program("tern-bridge");
  if (argc == 2 && (std::string_view(argv[1]) == "--help" || std::string_view(argv[1]) == "-h")) {
    std::cout << usage_text;
    return 0;
  }
  if (argc == 2 && std::string_view(argv[1]) == "--version") {
    std::cout << "tern-bridge " TERN_VERSION "\n";
    return 0;
  }
  if (argc != 3 || std::string_view(argv[1]) != "--config") return usage();
  return run(argv[2]);
}
