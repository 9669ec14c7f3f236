// The shipped mosquitto.conf and ACL, on a real broker: who may read and write what.
#include <gtest/gtest.h>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <thread>

#include "common/mqtt/client.hpp"
#include "tests/support/broker.hpp"
#include "tests/support/coro.hpp"

namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;

namespace tern::test {
namespace {

using Msg = mqtt::Message;

// The next message within `within`, or nullopt ("nothing arrives within T" is how Mosquitto shows
// a denied subscription).
asio::awaitable<std::optional<Msg>> next_message(mqtt::Client& c, std::chrono::milliseconds within) {
  asio::steady_timer t(co_await asio::this_coro::executor, within);
  auto r = co_await (c.receive() || t.async_wait(asio::use_awaitable));
  if (r.index() == 0) {
    auto& m = std::get<0>(r);
    if (m) co_return *m;
  }
  co_return std::nullopt;
}

asio::awaitable<std::unique_ptr<mqtt::Client>> connected(const Broker& b, std::string_view identity) {
  auto ex = co_await asio::this_coro::executor;  // not inside a larger expression: g++ 12 mishandles
  // temporaries of a full-expression that contains co_await
  auto c = mqtt::Client::create(ex, b.client_options(identity)).value();
  auto r = co_await c->connect();
  EXPECT_TRUE(r) << identity << ": " << (r ? "" : r.error().message());
  co_return std::move(c);
}

TEST(BrokerAcl, DeviceIsConfinedToItsOwnTopics) {
  Broker broker;
  run_coro(
      [&]() -> asio::awaitable<void> {
        auto bridge = co_await connected(broker, "bridge");
        auto d1 = co_await connected(broker, "device-1");
        auto d2 = co_await connected(broker, "device-2");
        {
          auto r_ = co_await bridge->subscribe("tern/devices/+/status");
          EXPECT_TRUE(r_) << (r_ ? "" : r_.error().message());
        }
        const mqtt::Message msg1{"tern/devices/device-2/status", "forged", 1, false};

        // Writing another device's status is refused (PUBACK 135) and reaches nobody.
        auto denied = co_await d1->publish(msg1);
        CO_ASSERT_FALSE(denied);
        EXPECT_NE(denied.error().message().find("reason code 135"), std::string::npos)
            << denied.error().message();
        // Its own status is allowed and arrives at the bridge (and only that one).
        {
          const mqtt::Message msg2{"tern/devices/device-1/status", "mine", 1, false};
          auto r_ = co_await d1->publish(msg2);
          EXPECT_TRUE(r_) << (r_ ? "" : r_.error().message());
        }
        auto got = co_await next_message(*bridge, 5s);
        CO_ASSERT_TRUE(got);
        EXPECT_EQ(got->topic, "tern/devices/device-1/status");
        EXPECT_EQ(got->payload, "mine");

        // Reading another device's deployment: granted in the SUBACK, but nothing is ever delivered;
        // the owner gets it (positive control).
        auto op = co_await connected(broker, "operator");
        {
          const mqtt::Message msg3{"tern/devices/device-2/deployment", "{\"for\":\"device-2\"}", 1, true};
          auto r_ = co_await op->publish(msg3);
          EXPECT_TRUE(r_) << (r_ ? "" : r_.error().message());
        }
        {
          auto r_ =
              co_await d1->subscribe("tern/devices/device-2/deployment");  // co_await never inside a gtest
                                                                           // macro: g++ 12 miscompiles it
          EXPECT_TRUE(r_) << (r_ ? "" : r_.error().message());
        }
        {
          auto r_ =
              co_await d2->subscribe("tern/devices/device-2/deployment");  // co_await never inside a gtest
                                                                           // macro: g++ 12 miscompiles it
          EXPECT_TRUE(r_) << (r_ ? "" : r_.error().message());
        }
        auto own = co_await next_message(*d2, 5s);
        CO_ASSERT_TRUE(own);
        EXPECT_EQ(own->payload, "{\"for\":\"device-2\"}");
        EXPECT_TRUE(own->retained);
        {
          auto r_ = co_await next_message(*d1, 1500ms);
          EXPECT_FALSE(r_);
        }

        // A device cannot set its own deployment, nor publish fleet commands.
        {
          const mqtt::Message msg4{"tern/devices/device-1/deployment", "{}", 1, true};
          auto r_ = co_await d1->publish(msg4);
          EXPECT_FALSE(r_);
        }
        {
          const mqtt::Message msg5{"tern/fleet/deployments/create", "{}", 1, false};
          auto r_ = co_await d1->publish(msg5);
          EXPECT_FALSE(r_);
        }
      },
      60s);
}

TEST(BrokerAcl, OperatorDrivesTheFleetTopicsAndBridgeHearsThem) {
  Broker broker;
  run_coro(
      [&]() -> asio::awaitable<void> {
        auto bridge = co_await connected(broker, "bridge");
        auto op = co_await connected(broker, "operator");
        {
          auto r_ = co_await bridge->subscribe("tern/fleet/deployments/create");
          EXPECT_TRUE(r_) << (r_ ? "" : r_.error().message());
        }
        Msg cmd{"tern/fleet/deployments/create",
                "{\"artifact_name\":\"r2\"}",
                1,
                false,
                "tern/fleet/replies/op",
                "c1"};
        {
          auto r_ = co_await op->publish(cmd);
          EXPECT_TRUE(r_) << (r_ ? "" : r_.error().message());
        }
        auto got = co_await next_message(*bridge, 5s);
        CO_ASSERT_TRUE(got);
        EXPECT_EQ(got->payload, cmd.payload);
        EXPECT_EQ(got->response_topic, "tern/fleet/replies/op");  // MQTT 5 properties pass through
        EXPECT_EQ(got->correlation_data, "c1");
        // Operators may not impersonate a device.
        {
          const mqtt::Message msg6{"tern/devices/device-1/status", "forged", 1, false};
          auto r_ = co_await op->publish(msg6);
          EXPECT_FALSE(r_);
        }
      },
      60s);
}

// A device certificate with another device's client id: the broker makes its client id its CN, so
// the other device's session is untouched and the topics stay the CN's.
TEST(BrokerAcl, DeviceCertificateCannotUseAnotherClientIdOrItsTopics) {
  Broker broker;
  run_coro(
      [&]() -> asio::awaitable<void> {
        auto bridge = co_await connected(broker, "bridge");
        {
          auto r_ = co_await bridge->subscribe("tern/devices/+/status");
          EXPECT_TRUE(r_) << (r_ ? "" : r_.error().message());
        }
        auto d2 = co_await connected(broker, "device-2");
        auto o = broker.client_options("device-1");
        o.client_id = "device-2";  // trying to take over device-2's session
        auto ex = co_await asio::this_coro::executor;
        auto thief = mqtt::Client::create(ex, o).value();
        auto c = co_await thief->connect();
        CO_ASSERT_TRUE(c, c.error().message());
        const mqtt::Message forged{"tern/devices/device-2/status", "forged", 1, false};
        auto denied = co_await thief->publish(forged);
        CO_ASSERT_FALSE(denied);
        EXPECT_NE(denied.error().message().find("reason code 135"), std::string::npos)
            << denied.error().message();
        // device-2 was not kicked off: still connected, its own status goes through, first.
        EXPECT_TRUE(d2->connected());
        const mqtt::Message own{"tern/devices/device-2/status", "mine", 1, false};
        auto ok = co_await d2->publish(own);
        EXPECT_TRUE(ok) << (ok ? "" : ok.error().message());
        auto got = co_await next_message(*bridge, 5s);
        CO_ASSERT_TRUE(got);
        EXPECT_EQ(got->payload, "mine");
        auto log = broker.log();
        EXPECT_EQ(log.find("Client device-2 already connected"), std::string::npos) << log;
        // The broker gave the thief its CN as client id.
        EXPECT_NE(log.find("as device-1 (p5"), std::string::npos) << log;
        co_await thief->disconnect();
      },
      60s);
}

// Devices and services have their own listeners and CAs: a device certificate is refused on the
// services listener (where client ids are free), a service certificate on the devices listener.
TEST(BrokerAcl, EachListenerTakesOnlyItsOwnCertificates) {
  Broker broker;
  auto ca = shell_quote((certs() / "ca.crt").string());
  auto as = [&](int port, const std::string& id) {
    return "mosquitto_pub -h 127.0.0.1 -p " + std::to_string(port) + " -V mqttv5 --cafile " + ca +
           " --cert " + shell_quote((certs() / (id + ".crt")).string()) + " --key " +
           shell_quote((certs() / (id + ".key")).string()) + " -q 1 ";
  };
  auto dev_on_services =
      run(as(broker.services_port(), "device-1") + "-i tern-bridge -t tern/fleet/x -m hi 2>&1");
  EXPECT_NE(dev_on_services.exit_code, 0) << dev_on_services.output;
  auto op_on_devices = run(as(broker.port(), "operator") + "-t tern/fleet/x -m hi 2>&1");
  EXPECT_NE(op_on_devices.exit_code, 0) << op_on_devices.output;
  auto bridge_on_devices = run(as(broker.port(), "bridge") + "-t tern/devices/device-1/status -m hi 2>&1");
  EXPECT_NE(bridge_on_devices.exit_code, 0) << bridge_on_devices.output;
  // Positive controls: each on its own listener.
  auto op = run(as(broker.services_port(), "operator") + "-t tern/fleet/x -m hi 2>&1");
  EXPECT_EQ(op.exit_code, 0) << op.output;
  auto dev = run(as(broker.port(), "device-1") + "-t tern/devices/device-1/status -m hi 2>&1");
  EXPECT_EQ(dev.exit_code, 0) << dev.output;
}

// One operator identity, many clients: a watcher stays connected while 20 more clients with the
// same certificate come and go, and receives every one of their messages. The broker log names the
// certificate (username) of each.
TEST(BrokerAcl, OneOperatorIdentityRunsManyClientsAtOnce) {
  Broker broker;
  TempDir work;
  Process watcher(
      {"sh", "-c",
       "exec mosquitto_sub " + broker.client_args("operator") + " -q 1 -v -t 'tern/fleet/test/#'"},
      work / "watcher.log");
  // Ready when a probe arrives (a subscription cannot be observed otherwise).
  bool ready = false;
  for (int i = 0; i < 100 && !ready; ++i) {
    run("mosquitto_pub " + broker.client_args("operator") + " -q 1 -t tern/fleet/test/probe -m p");
    std::this_thread::sleep_for(100ms);
    ready = watcher.log().find("tern/fleet/test/probe p") != std::string::npos;
  }
  ASSERT_TRUE(ready) << watcher.log();
  std::string batch;
  for (int i = 1; i <= 20; ++i)
    batch += "mosquitto_pub " + broker.client_args("operator") + " -q 1 -t tern/fleet/test/c" +
             std::to_string(i) + " -m m" + std::to_string(i) + " & ";
  auto r = run(batch + "wait");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::string log;
  for (int i = 0; i < 100; ++i) {
    log = watcher.log();
    int seen = 0;
    for (int k = 1; k <= 20; ++k)
      seen += log.find("tern/fleet/test/c" + std::to_string(k) + " m" + std::to_string(k) + "\n") !=
              std::string::npos;
    if (seen == 20) break;
    std::this_thread::sleep_for(100ms);
  }
  for (int k = 1; k <= 20; ++k)
    EXPECT_NE(log.find("tern/fleet/test/c" + std::to_string(k) + " m" + std::to_string(k) + "\n"),
              std::string::npos)
        << "message " << k << " missing; watcher saw:\n"
        << log;
  EXPECT_TRUE(watcher.running()) << watcher.log();
  auto blog = broker.log();
  EXPECT_EQ(blog.find("already connected, closing old connection"), std::string::npos) << blog;
  EXPECT_NE(blog.find("u'tern-operator')"), std::string::npos) << blog;
}

TEST(BrokerAcl, ClientsWithoutAFleetCertificateAreRefused) {
  Broker broker;
  auto ca = shell_quote((certs() / "ca.crt").string());
  // No client certificate at all: the TLS handshake fails.
  auto none = run("mosquitto_pub -h 127.0.0.1 -p " + std::to_string(broker.port()) + " --cafile " + ca +
                  " -t tern/fleet/x -m hi -q 1");
  EXPECT_NE(none.exit_code, 0) << none.output;
  // A certificate from another CA, even with a valid device name.
  TempDir rogue;
  ASSERT_EQ(run(shell_quote((source_dir() / "scripts/gen-certs").string()) + " " +
                shell_quote(rogue.path().string()) + " --devices 1")
                .exit_code,
            0);
  auto other =
      run("mosquitto_pub -h 127.0.0.1 -p " + std::to_string(broker.port()) + " --cafile " + ca + " --cert " +
          shell_quote((rogue / "device-1.crt").string()) + " --key " +
          shell_quote((rogue / "device-1.key").string()) + " -t tern/devices/device-1/status -m hi -q 1");
  EXPECT_NE(other.exit_code, 0) << other.output;
  EXPECT_NE(broker.log().find("certificate"), std::string::npos);
  // The same command with a fleet certificate works (so the refusals above are about identity).
  auto ok =
      run("mosquitto_pub " + broker.client_args("device-1") + " -t tern/devices/device-1/status -m hi -q 1");
  EXPECT_EQ(ok.exit_code, 0) << ok.output;

  // The same through our client: a clear error, not a hang.
  run_coro(
      [&]() -> asio::awaitable<void> {
        auto o = broker.client_options("device-1");
        o.cert_file = (rogue / "device-1.crt").string();
        o.key_file = (rogue / "device-1.key").string();
        auto ex = co_await asio::this_coro::executor;
        auto c = mqtt::Client::create(ex, o).value();
        auto r = co_await c->connect();
        EXPECT_FALSE(r);
        EXPECT_FALSE(c->connected());
      },
      60s);
}

}  // namespace
}  // namespace tern::test
