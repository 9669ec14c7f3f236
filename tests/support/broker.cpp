#include "tests/support/broker.hpp"

#include <gtest/gtest.h>

#include <iostream>
#include <stdexcept>

namespace tern::test {

Broker::Broker() : port_(free_port()), services_port_(free_port()), websockets_port_(free_port()) {
  while (services_port_ == port_) services_port_ = free_port();
  while (websockets_port_ == port_ || websockets_port_ == services_port_) websockets_port_ = free_port();
  start();
}

Broker::~Broker() {
  if (process_) process_->stop(15, 5s);
  if (::testing::Test::HasFailure())
    std::cerr << "---- mosquitto log (" << state_.path().string() << ") ----\n" << log() << "----\n";
}

void Broker::start() {
  if (process_ && process_->running()) return;
  process_ = std::make_unique<Process>(
      std::vector<std::string>{(source_dir() / "scripts/run-broker").string(), state_.path().string(),
                               std::to_string(port_), "--services-port",
                               std::to_string(services_port_), "--websockets-port",
                               std::to_string(websockets_port_), "--bind", "127.0.0.1", "--certs", certs().string()},
      state_.path() / "broker.log");
  for (int p : {port_, services_port_, websockets_port_}) {
    if (!wait_for_port(p, 10s)) {
      process_->kill();
      throw std::runtime_error("mosquitto did not accept connections on port " + std::to_string(p) + ":\n" +
                               log());
    }
  }
}

void Broker::stop() {
  if (process_) process_->stop(15, 10s);
}

void Broker::kill() {
  if (process_) process_->kill();
}

bool Broker::running() { return process_ && process_->running(); }

int Broker::port_for(std::string_view identity) const {
  const bool service = identity == "bridge" || identity == "operator" || identity.starts_with("operator-");
  return service ? services_port_ : port_;
}

std::string Broker::client_args(std::string_view identity) const {
  auto dir = certs();
  std::string id(identity);
  return "-h 127.0.0.1 -p " + std::to_string(port_for(identity)) + " -V mqttv5 --cafile " +
         shell_quote((dir / "ca.crt").string()) + " --cert " + shell_quote((dir / (id + ".crt")).string()) +
         " --key " + shell_quote((dir / (id + ".key")).string());
}

mqtt::Options Broker::client_options(std::string_view identity, fs::path persistence_dir) const {
  mqtt::Options o;
  std::string id(identity);
  o.server_uri = "ssl://127.0.0.1:" + std::to_string(port_for(identity));
  o.client_id = id == "operator" ? "tern-operator" : id == "bridge" ? "tern-bridge" : id;
  o.ca_file = (certs() / "ca.crt").string();
  o.cert_file = (certs() / (id + ".crt")).string();
  o.key_file = (certs() / (id + ".key")).string();
  o.persistence_dir = std::move(persistence_dir);
  o.min_retry = 1s;
  o.max_retry = 2s;
  o.connect_attempts = 1;
  return o;
}

std::string Broker::log() const {
  try {
    return read_file(state_.path() / "broker.log");
  } catch (const std::exception&) {
    return "(no broker log)";
  }
}

}  // namespace tern::test
