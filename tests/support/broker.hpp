// A real Mosquitto with the project's mosquitto.conf and ACLs (started through scripts/run-broker)
// on two ephemeral loopback ports (the devices and the services listener), in its own state
// directory, with the test PKI from certs().
//
//   tern::test::Broker broker;                 // started and accepting connections
//   broker.uri();                              // devices: "ssl://127.0.0.1:PORT"
//   broker.services_uri();                     // bridges and operators: "ssl://127.0.0.1:PORT2"
//   run("mosquitto_pub " + broker.client_args("operator") + " -t tern/fleet/x -m hi");
//   broker.stop(); ...; broker.start();        // same port, same persistence
//
// The broker's log is printed when the test that owns it has failed, and only then.
#pragma once

#include "common/mqtt/client.hpp"
#include "tests/support/testenv.hpp"

#include <memory>
#include <string>

namespace tern::test {

class Broker {
 public:
  /// Starts the broker; throws std::runtime_error (with the broker log) if it does not accept
  /// connections within 10 s.
  Broker();
  ~Broker();
  Broker(const Broker&) = delete;
  Broker& operator=(const Broker&) = delete;

  /// The devices listener (fleet CA certificates, client id = CN).
  int port() const { return port_; }
  std::string uri() const { return "ssl://127.0.0.1:" + std::to_string(port_); }
  /// The services listener (services CA certificates: bridges, operators; client ids free).
  int services_port() const { return services_port_; }
  std::string services_uri() const { return "ssl://127.0.0.1:" + std::to_string(services_port_); }
  /// The listener `identity` connects to: services for "bridge", "operator" and "operator-NAME",
  /// devices for everything else.
  int port_for(std::string_view identity) const;
  /// The dashboard listener (TLS WebSockets; operators with passwords from certs()/operators.passwd).
  int websockets_port() const { return websockets_port_; }
  const fs::path& state_dir() const { return state_.path(); }

  /// (Re)starts on the same port with the same persistence; waits until it accepts.
  void start();
  /// SIGTERM: Mosquitto saves its persistence file and exits.
  void stop();
  /// SIGKILL: a crash; only what autosave wrote survives.
  void kill();
  bool running();

  /// Arguments for mosquitto_pub/sub/rr that connect as `identity` ("operator", "bridge",
  /// "device-1", ...; files from certs()) to its listener (port_for), with MQTT 5.
  std::string client_args(std::string_view identity) const;

  /// Options for tern::mqtt::Client connecting as `identity` to its listener (client id: the CN;
  /// "tern-operator" and "tern-bridge" for "operator" and "bridge"), with Paho file
  /// persistence in `persistence_dir` if given, and a quick reconnect for tests.
  mqtt::Options client_options(std::string_view identity, fs::path persistence_dir = {}) const;

  std::string log() const;

 private:
  TempDir state_{"tern-broker"};
  int port_;
  int services_port_;
  int websockets_port_;
  std::unique_ptr<Process> process_;
};

}  // namespace tern::test
