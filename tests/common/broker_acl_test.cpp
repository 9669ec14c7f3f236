// The shipped mosquitto.conf and ACL, on a real broker: who may read and write what.
#include <gtest/gtest.h>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

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
