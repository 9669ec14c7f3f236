// tern::mqtt::Client against the real broker: delivery, retained messages, offline buffering across
// a broker restart and across a client process restart, last will, malformed payloads.
#include <gtest/gtest.h>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/write.hpp>
#include "tests/support/testenv.hpp"
#include <array>
#include <atomic>
#include <functional>
#include <random>
#include <set>
#include <thread>

#include "common/mqtt/client.hpp"
#include "common/mqtt/codec.hpp"
#include "common/protocol.hpp"
#include "tests/support/broker.hpp"
#include "tests/support/coro.hpp"

namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;

namespace tern::test {
namespace {

asio::awaitable<std::optional<mqtt::Message>> next_message(mqtt::Client& c,
                                                           std::chrono::milliseconds within) {
  asio::steady_timer t(co_await asio::this_coro::executor, within);
  auto r = co_await (c.receive() || t.async_wait(asio::use_awaitable));
  if (r.index() == 0 && std::get<0>(r)) co_return *std::get<0>(r);
  co_return std::nullopt;
}

asio::awaitable<std::unique_ptr<mqtt::Client>> connected(mqtt::Options o) {
  auto ex = co_await asio::this_coro::executor;  // not inside a larger expression: g++ 12 mishandles
  // temporaries of a full-expression that contains co_await
  auto c = mqtt::Client::create(ex, std::move(o)).value();
  auto r = co_await c->connect();
  EXPECT_TRUE(r) << (r ? "" : r.error().message());
  co_return std::move(c);
}

// Subscribes `filter` (QoS 1), expecting the broker to grant it.
asio::awaitable<void> subscribe_ok(mqtt::Client& c, std::string_view filter) {
  const std::string f(filter);
  auto r = co_await c.subscribe(f);
  EXPECT_TRUE(r) << (r ? "" : r.error().message());
}

// Polls every 50 ms, for at most `within`, until c.connected() is `want`.
asio::awaitable<void> until_connected(mqtt::Client& c, bool want, std::chrono::milliseconds within) {
  for (auto waited = 0ms; c.connected() != want && waited < within; waited += 50ms) co_await sleep_for(50ms);
}

mqtt::Options opts_for(const Broker& b, std::string_view identity) {
  auto o = b.client_options(identity);
  o.engine = mqtt::Engine::asio;
  return o;
}

// The tests that hold for both engines (client.hpp) run once with each.
class MqttEngines : public ::testing::TestWithParam<mqtt::Engine> {
 protected:
  mqtt::Options opts(const Broker& b, std::string_view identity, fs::path persistence_dir = {}) const {
    auto o = b.client_options(identity, std::move(persistence_dir));
    o.engine = GetParam();
    return o;
  }
};

INSTANTIATE_TEST_SUITE_P(, MqttEngines, ::testing::Values(mqtt::Engine::paho, mqtt::Engine::asio),
                         [](const auto& info) { return info.param == mqtt::Engine::paho ? "Paho" : "Asio"; });

std::string tool() {
  return (build_dir() / "tests/common/tern-mqtt-tool").string();
}

std::vector<std::string> tool_args(const Broker& b, std::string mode, std::string id) {
  return {tool(),
          std::move(mode),
          b.uri(),
          id,
          (certs() / "ca.crt").string(),
          (certs() / (id + ".crt")).string(),
          (certs() / (id + ".key")).string()};
}

TEST_P(MqttEngines, PublishSubscribeRoundTrip) {
  Broker broker;
  run_coro(
      [&]() -> asio::awaitable<void> {
        auto bridge = co_await connected(opts(broker, "bridge"));
        auto dev = co_await connected(opts(broker, "device-1"));
        EXPECT_TRUE(dev->connected());
        co_await subscribe_ok(*bridge, "tern/devices/+/status");
        for (int i = 0; i < 20; ++i) {
          const mqtt::Message event{"tern/devices/device-1/status", "event-" + std::to_string(i)};
          auto r_ = co_await dev->publish(event);
          EXPECT_TRUE(r_) << (r_ ? "" : r_.error().message());
        }
        for (int i = 0; i < 20; ++i) {
          auto m = co_await next_message(*bridge, 5s);
          CO_ASSERT_TRUE(m, "message " << i << " did not arrive");
          EXPECT_EQ(m->payload, "event-" + std::to_string(i));  // QoS 1 in order from one client
          EXPECT_EQ(m->topic, "tern/devices/device-1/status");
        }
      },
      60s);
}

TEST_P(MqttEngines, RetainedMessageIsDeliveredOnSubscribe) {
  Broker broker;
  run_coro(
      [&]() -> asio::awaitable<void> {
        auto op = co_await connected(opts(broker, "operator"));
        {
          const mqtt::Message msg1{"tern/devices/device-3/deployment", "{\"deployment_id\":\"d1\"}", 1, true};
          auto r_ = co_await op->publish(msg1);
          EXPECT_TRUE(r_) << (r_ ? "" : r_.error().message());
        }
        auto dev = co_await connected(opts(broker, "device-3"));
        {
          auto r_ =
              co_await dev->subscribe("tern/devices/device-3/deployment");  // co_await never inside a gtest
                                                                            // macro: g++ 12 miscompiles it
          EXPECT_TRUE(r_) << (r_ ? "" : r_.error().message());
        }
        auto m = co_await next_message(*dev, 5s);
        CO_ASSERT_TRUE(m);
        EXPECT_TRUE(m->retained);
        EXPECT_EQ(m->payload, "{\"deployment_id\":\"d1\"}");
      },
      60s);
}

TEST_P(MqttEngines, MessagesQueuedWhileBrokerIsDownArriveAfterRestart) {
  Broker broker;
  TempDir persist;
  run_coro(
      [&]() -> asio::awaitable<void> {
        auto bridge = co_await connected(opts(broker, "bridge"));
        co_await subscribe_ok(*bridge, "tern/devices/+/status");
        // Named before the co_await: g++ 12 destroys a full-expression's temporaries twice there.
        const auto dev_options = opts(broker, "device-1", GetParam() == mqtt::Engine::paho ? persist.path() : fs::path());
        auto dev = co_await connected(dev_options);

        broker.stop();
        // Wait (bounded) until the device notices the broker is gone.
        co_await until_connected(*dev, false, 10s);
        EXPECT_FALSE(dev->connected());
        for (int i = 0; i < 5; ++i)
          EXPECT_TRUE(dev->enqueue({"tern/devices/device-1/status", "offline-" + std::to_string(i)}));
        broker.start();

        // Both clients reconnect by themselves; the bridge's persistent session kept its subscription.
        std::vector<std::string> got;
        while (got.size() < 5) {
          auto m = co_await next_message(*bridge, 20s);
          if (!m) break;
          got.push_back(m->payload);
        }
        EXPECT_EQ(
            got, (std::vector<std::string>{"offline-0", "offline-1", "offline-2", "offline-3", "offline-4"}));
      },
      90s);
}

TEST(MqttClient, QueuedMessagesSurviveAClientProcessRestart) {
  Broker broker;
  TempDir work;
  auto persist = (work / "paho").string();
  run_coro(
      [&]() -> asio::awaitable<void> {
        auto bridge = co_await connected(broker.client_options("bridge"));
        co_await subscribe_ok(*bridge, "tern/devices/+/status");
        broker.stop();

        // Process 1 queues while the broker is down, then exits: only Paho's files remain.
        auto args = tool_args(broker, "queue", "device-2");
        args.insert(args.end(), {persist, "tern/devices/device-2/status", "3"});
        Process queue(args, work / "queue.log");
        auto st = queue.wait(30s);
        EXPECT_TRUE(st && WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << queue.log();

        broker.start();
        // Process 2, same client id and persistence directory, sends them.
        auto fargs = tool_args(broker, "flush", "device-2");
        fargs.push_back(persist);
        Process flush(fargs, work / "flush.log");

        std::vector<std::string> got;
        while (got.size() < 4) {
          auto m = co_await next_message(*bridge, 30s);
          if (!m) break;
          got.push_back(m->payload);
        }
        EXPECT_EQ(got, (std::vector<std::string>{"queued-0", "queued-1", "queued-2", "flush-marker"}))
            << "queue: " << queue.log() << "\nflush: " << flush.log();
        auto fst = flush.wait(30s);
        EXPECT_TRUE(fst && WIFEXITED(*fst) && WEXITSTATUS(*fst) == 0) << flush.log();
      },
      120s);
}

// A broker that goes away while a client is in the middle of connecting (TCP accepted, TLS or
// CONNECT under way) must not leave the client waiting forever: Paho 1.3 sometimes never reports
// the outcome of such an attempt. Every round stops the broker a few milliseconds after connect()
// starts, so some rounds hit the handshake.
TEST_P(MqttEngines, ConnectSurvivesTheBrokerStoppingMidHandshake) {
  Broker broker;
  std::mt19937 rng(7);
  run_coro(
      [&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        for (int round = 0; round < 12; ++round) {
          auto o = opts(broker, "device-1");
          o.connect_attempts = 0;  // keep trying, as the agent and the bridge do
          o.connect_timeout = 2s;
          o.min_retry = 200ms;
          o.max_retry = 1s;
          auto c = mqtt::Client::create(ex, o).value();
          std::optional<Result<void>> outcome;
          asio::co_spawn(ex, [&]() -> asio::awaitable<void> { outcome = co_await c->connect(); }, asio::detached);
          co_await sleep_for(std::chrono::milliseconds(rng() % 12));
          broker.stop();
          co_await sleep_for(300ms);
          broker.start();
          for (int i = 0; i < 300 && !outcome; ++i) co_await sleep_for(50ms);
          CO_ASSERT_TRUE(outcome, "round " << round << ": connect() still waiting 15 s after the broker came back");
          EXPECT_TRUE(*outcome) << "round " << round << ": " << outcome->error().message();
          // And the session works: a QoS 1 publish is acknowledged.
          const mqtt::Message event{"tern/devices/device-1/status", "round-" + std::to_string(round)};
          auto pub = co_await c->publish(event);
          EXPECT_TRUE(pub) << "round " << round << ": " << (pub ? "" : pub.error().message());
          co_await c->disconnect();
        }
      },
      300s);
}

// The same for a connected client that Paho reconnects by itself: the broker restarts at random
// moments, some of them during Paho's reconnect attempts; afterwards the client is connected and
// its subscription delivers.
TEST_P(MqttEngines, ReconnectSurvivesRepeatedBrokerRestarts) {
  Broker broker;
  std::mt19937 rng(11);
  run_coro(
      [&]() -> asio::awaitable<void> {
        auto o = opts(broker, "bridge");
        o.connect_timeout = 2s;
        o.min_retry = 100ms;
        o.max_retry = 1s;
        auto c = co_await connected(o);
        co_await subscribe_ok(*c, "tern/devices/+/status");
        for (int round = 0; round < 12; ++round) {
          broker.stop();
          co_await sleep_for(std::chrono::milliseconds(800 + rng() % 400));  // Paho retries every 1 s
          broker.start();
          co_await sleep_for(std::chrono::milliseconds(rng() % 30));
        }
        auto dev = co_await connected(opts(broker, "device-2"));
        co_await until_connected(*c, true, 15s);
        EXPECT_TRUE(c->connected()) << "not reconnected 15 s after the last broker restart";
        {
          const mqtt::Message event{"tern/devices/device-2/status", "after-restarts"};
          auto r_ = co_await dev->publish(event);
          EXPECT_TRUE(r_) << (r_ ? "" : r_.error().message());
        }
        auto m = co_await next_message(*c, 15s);
        CO_ASSERT_TRUE(m, "the status published after the restarts never arrived");
        EXPECT_EQ(m->payload, "after-restarts");
      },
      300s);
}

TEST(MqttClient, LastWillIsPublishedWhenTheClientDies) {
  Broker broker;
  TempDir work;
  run_coro(
      [&]() -> asio::awaitable<void> {
        auto bridge = co_await connected(broker.client_options("bridge"));
        co_await subscribe_ok(*bridge, "tern/devices/+/presence");
        auto args = tool_args(broker, "hold", "device-4");
        args.push_back("tern/devices/device-4/presence");
        Process holder(args, work / "hold.log");
        // Bounded poll until it is connected, then a power cut.
        for (int i = 0; i < 200 && holder.log().find("connected") == std::string::npos; ++i)
          co_await sleep_for(50ms);
        CO_ASSERT_TRUE((holder.log().find("connected")) != (std::string::npos), holder.log());
        holder.kill();
        auto m = co_await next_message(*bridge, 10s);
        CO_ASSERT_TRUE(m, "no last will");
        EXPECT_EQ(m->topic, "tern/devices/device-4/presence");
        auto p = protocol::parse_presence(m->payload);
        CO_ASSERT_TRUE(p, p.error().message());
        EXPECT_FALSE(p->online);
      },
      60s);
}

TEST_P(MqttEngines, MalformedProtocolMessagesAreRejectedAndTheClientGoesOn) {
  Broker broker;
  run_coro(
      [&]() -> asio::awaitable<void> {
        auto bridge = co_await connected(opts(broker, "bridge"));
        auto dev = co_await connected(opts(broker, "device-5"));
        co_await subscribe_ok(*bridge, "tern/devices/+/status");
        const std::vector<std::string> bad = {"",
                                              "not json",
                                              "{\"deployment_id\":42}",
                                              "[1,2,3]",
                                              "{\"deployment_id\":\"d\",\"status\":\"nope\"}",
                                              std::string(70 * 1024, '{')};
        for (auto& p : bad) {
          const mqtt::Message msg2{"tern/devices/device-5/status", p};
          auto r_ = co_await dev->publish(msg2);
          EXPECT_TRUE(r_) << (r_ ? "" : r_.error().message());
        }
        protocol::StatusEvent good{"dep-9", protocol::Status::success, 1, 1, 1, "", 1, 3};
        {
          const mqtt::Message valid{"tern/devices/device-5/status", protocol::serialize(good)};
          auto r_ = co_await dev->publish(valid);
          EXPECT_TRUE(r_) << (r_ ? "" : r_.error().message());
        }

        std::size_t rejected = 0;
        std::optional<protocol::StatusEvent> accepted;
        for (std::size_t i = 0; i < bad.size() + 1; ++i) {
          auto m = co_await next_message(*bridge, 5s);
          CO_ASSERT_TRUE(m);
          auto s = protocol::parse_status(m->payload);
          if (s)
            accepted = *s;
          else {
            ++rejected;
            EXPECT_FALSE(s.error().message().empty());
            EXPECT_TRUE(s.error().message().starts_with("status message")) << s.error().message();
          }
        }
        EXPECT_EQ(rejected, bad.size());
        CO_ASSERT_TRUE(accepted);
        EXPECT_EQ(*accepted, good);
      },
      60s);
}


// A broker address that accepts TCP and never says a word (a wedged broker, a captive middlebox):
// every connect attempt is abandoned by its deadline and made again, and connect() returns.
TEST_P(MqttEngines, AConnectThatNeverCompletesIsAbandonedAndRetried) {
  asio::io_context io;
  asio::ip::tcp::acceptor silent(io, {asio::ip::make_address("127.0.0.1"), 0});
  std::vector<asio::ip::tcp::socket> held;  // accepted and kept open, never read or written
  std::function<void()> accept_next = [&] {
    silent.async_accept([&](boost::system::error_code ec, asio::ip::tcp::socket s) {
      if (ec) return;
      held.push_back(std::move(s));
      accept_next();
    });
  };
  accept_next();
  mqtt::Options o;
  o.server_uri = "ssl://127.0.0.1:" + std::to_string(silent.local_endpoint().port());
  o.client_id = "device-1";
  o.ca_file = (certs() / "ca.crt").string();
  o.cert_file = (certs() / "device-1.crt").string();
  o.key_file = (certs() / "device-1.key").string();
  o.engine = GetParam();
  o.connect_timeout = 1s;
  o.connect_attempts = 2;
  o.min_retry = 100ms;
  o.max_retry = 200ms;
  run_coro(
      io,
      [&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto c = mqtt::Client::create(ex, o).value();
        auto r = co_await c->connect();
        EXPECT_FALSE(r) << "nothing answered, yet connect() succeeded";
        if (!r) {
          EXPECT_NE(r.error().message().find("127.0.0.1"), std::string::npos) << r.error().message();
        }
        EXPECT_GE(held.size(), 2u) << "the first attempt was abandoned and a second one made";
        EXPECT_FALSE(c->connected());
        silent.close();
      },
      60s);
}

// More QoS 1 publishes at once than the broker lets a client have unacknowledged (Mosquitto's
// Receive Maximum, mosquitto.conf's max_inflight_messages): all arrive, once each, in order.
TEST_P(MqttEngines, ABurstLargerThanTheBrokersReceiveMaximumArrivesInOrder) {
  Broker broker;
  run_coro(
      [&]() -> asio::awaitable<void> {
        auto bridge = co_await connected(opts(broker, "bridge"));
        auto dev = co_await connected(opts(broker, "device-1"));
        co_await subscribe_ok(*bridge, "tern/devices/+/status");
        constexpr int n = 3000;
        for (int i = 0; i < n; ++i) {
          auto r = dev->enqueue({"tern/devices/device-1/status", std::to_string(i)});
          CO_ASSERT_TRUE(r, r.error().message());
        }
        int next = 0;
        while (next < n) {
          auto m = co_await next_message(*bridge, 20s);
          CO_ASSERT_TRUE(m, "message " << next << " of " << n << " did not arrive");
          CO_ASSERT_TRUE(m->payload == std::to_string(next), "expected " << next << ", got " << m->payload);
          ++next;
        }
        auto extra = co_await next_message(*bridge, 300ms);
        EXPECT_FALSE(extra) << "a message arrived twice: " << extra->payload;
      },
      120s);
}

// A publish the ACL denies is answered with its reason code (MQTT 5 PUBACK 135), by either engine.
TEST_P(MqttEngines, APublishTheBrokerRefusesFailsWithItsReasonCode) {
  Broker broker;
  run_coro(
      [&]() -> asio::awaitable<void> {
        auto dev = co_await connected(opts(broker, "device-1"));
        const mqtt::Message foreign{"tern/devices/device-2/status", "not mine"};
        auto denied = co_await dev->publish(foreign);
        CO_ASSERT_TRUE(!denied, "another device's topic was accepted");
        EXPECT_NE(denied.error().message().find("reason code 135"), std::string::npos) << denied.error().message();
        EXPECT_NE(denied.error().message().find("device-2/status"), std::string::npos) << denied.error().message();
        // The session goes on.
        const mqtt::Message own{"tern/devices/device-1/status", "mine"};
        auto ok = co_await dev->publish(own);
        EXPECT_TRUE(ok) << (ok ? "" : ok.error().message());
      },
      60s);
}

// Engine::asio: a subscribe while the broker is away fails at once (it never waits without a
// deadline), the filter is kept, and it is renewed when the client reconnects by itself.
TEST(MqttAsioClient, ASubscribeWhileDisconnectedFailsAtOnceAndIsRenewedOnReconnect) {
  Broker broker;
  run_coro(
      [&]() -> asio::awaitable<void> {
        auto o = broker.client_options("bridge");
        o.engine = mqtt::Engine::asio;
        o.min_retry = 100ms;
        o.max_retry = 500ms;
        auto bridge = co_await connected(o);
        broker.stop();
        co_await until_connected(*bridge, false, 10s);
        CO_ASSERT_TRUE(!bridge->connected(), "the broker stopped 10 s ago and the client still says connected");
        auto sub = co_await bridge->subscribe("tern/devices/+/status");
        CO_ASSERT_TRUE(!sub, "subscribed with no broker");
        EXPECT_NE(sub.error().message().find("not connected"), std::string::npos) << sub.error().message();
        broker.start();
        co_await until_connected(*bridge, true, 15s);
        CO_ASSERT_TRUE(bridge->connected(), "not reconnected 15 s after the broker came back");
        auto dev = co_await connected(opts_for(broker, "device-3"));
        const mqtt::Message event{"tern/devices/device-3/status", "after"};
        auto r = co_await dev->publish(event);
        EXPECT_TRUE(r) << (r ? "" : r.error().message());
        auto m = co_await next_message(*bridge, 10s);
        CO_ASSERT_TRUE(m, "the subscription made while disconnected was not renewed");
        EXPECT_EQ(m->payload, "after");
      },
      90s);
}

// Engine::asio: a client that goes away without DISCONNECT (its connection just closes, as when
// the process dies) leaves its last will to the broker; disconnect() does not.
TEST(MqttAsioClient, TheWillIsPublishedWhenTheConnectionDiesAndNotOnDisconnect) {
  Broker broker;
  run_coro(
      [&]() -> asio::awaitable<void> {
        auto watcher = co_await connected(opts_for(broker, "bridge"));
        co_await subscribe_ok(*watcher, "tern/devices/+/presence");
        for (std::string id : {"device-4", "device-5"}) {
          auto o = opts_for(broker, id);
          o.will = mqtt::Message{"tern/devices/" + id + "/presence", R"({"state":"offline","seq":1})", 1, false};
          auto c = co_await connected(o);
          if (id == "device-5") co_await c->disconnect();
          c.reset();  // device-4: the socket closes without a DISCONNECT
        }
        auto m = co_await next_message(*watcher, 10s);
        CO_ASSERT_TRUE(m, "no last will");
        EXPECT_EQ(m->topic, "tern/devices/device-4/presence");
        auto extra = co_await next_message(*watcher, 1s);
        EXPECT_FALSE(extra) << "a will after a clean disconnect: " << extra->topic;
      },
      60s);
}

// Engine::asio: a broker that answers CONNECT with CONNACK and DISCONNECT in one write (as Mosquitto
// does when it stops right after accepting a client) ends that connection as its loops start. The
// client must notice at once and reconnect, not sit until its keepalive timer (30 s here) fires.
TEST(MqttAsioClient, AConnectionEndedRightAfterItsConnackIsReplacedAtOnce) {
  asio::io_context io;
  asio::ip::tcp::acceptor server(io, {asio::ip::make_address("127.0.0.1"), 0});
  int accepted = 0;
  std::vector<std::shared_ptr<asio::ip::tcp::socket>> held;
  std::function<void()> accept_next = [&] {
    server.async_accept([&](boost::system::error_code ec, asio::ip::tcp::socket sock) {
      if (ec) return;
      auto s = std::make_shared<asio::ip::tcp::socket>(std::move(sock));
      const bool first = accepted++ == 0;
      held.push_back(s);
      auto buf = std::make_shared<std::array<char, 512>>();
      s->async_read_some(asio::buffer(*buf), [s, buf, first](boost::system::error_code rec, std::size_t) {
        if (rec) return;
        // CONNACK (no session, success, no properties), then for the first one DISCONNECT 0x8b.
        std::string reply("\x20\x03\x00\x00\x00", 5);
        if (first) reply += std::string("\xe0\x01\x8b", 3);
        auto out = std::make_shared<std::string>(std::move(reply));
        asio::async_write(*s, asio::buffer(*out), [s, out, first](boost::system::error_code, std::size_t) {
          if (first) s->close();
        });
      });
      accept_next();
    });
  };
  accept_next();
  mqtt::Options o;
  o.engine = mqtt::Engine::asio;
  o.server_uri = "tcp://127.0.0.1:" + std::to_string(server.local_endpoint().port());
  o.client_id = "device-1";
  o.keepalive = 60s;
  o.min_retry = 100ms;
  o.max_retry = 200ms;
  run_coro(
      io,
      [&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto c = mqtt::Client::create(ex, o).value();
        auto r = co_await c->connect();
        CO_ASSERT_TRUE(r, r.error().message());
        for (int i = 0; i < 200 && accepted < 2; ++i) co_await sleep_for(50ms);
        EXPECT_GE(accepted, 2) << "the connection the broker ended was not replaced within 10 s";
        co_await until_connected(*c, true, 5s);
        EXPECT_TRUE(c->connected());
        server.close();
      },
      60s);
}

// Calls f(frame) for each whole MQTT packet at the front of `data`, then drops them from it.
template <class F>
void each_frame(std::string& data, F f) {
  std::size_t at = 0;
  mqtt::codec::Frame frame;
  while (true) {
    auto size = mqtt::codec::split(std::string_view(data).substr(at), frame, 1024);
    if (!size || !*size) break;
    at += *size;
    f(frame);
  }
  data.erase(0, at);
}

// A scripted TLS peer for the asio engine's tests, on a thread of its own (a broker is another
// process, and a real broker's pacing cannot be held still): script(stream) runs once a client has
// connected and finished its TLS handshake.
struct ScriptedTlsPeer {
  using Stream = asio::ssl::stream<asio::ip::tcp::socket>;
  asio::io_context io;
  asio::ip::tcp::acceptor server{io, {asio::ip::make_address("127.0.0.1"), 0}};
  asio::ssl::context tls{asio::ssl::context::tls_server};
  std::thread thread;

  explicit ScriptedTlsPeer(std::function<asio::awaitable<void>(Stream&)> script) {
    tls.use_certificate_chain_file((certs() / "broker.crt").string());
    tls.use_private_key_file((certs() / "broker.key").string(), asio::ssl::context::pem);
    asio::co_spawn(
        io,
        [this, script = std::move(script)]() -> asio::awaitable<void> {
          auto sock = co_await server.async_accept(asio::use_awaitable);
          Stream s(std::move(sock), tls);
          co_await s.async_handshake(asio::ssl::stream_base::server, asio::use_awaitable);
          co_await script(s);
        },
        [](std::exception_ptr e) {
          if (e) ADD_FAILURE() << "the scripted peer failed";
        });
    thread = std::thread([this] { io.run_for(60s); });
  }
  ~ScriptedTlsPeer() {
    if (thread.joinable()) thread.join();
  }
  void join() { thread.join(); }
  /// Reads the client's CONNECT (one record) and answers with `connack`.
  static asio::awaitable<void> answer_connect(Stream& s, std::string connack) {
    std::string in(4096, '\0');
    co_await s.async_read_some(asio::buffer(in), asio::use_awaitable);
    co_await asio::async_write(s, asio::buffer(connack), asio::use_awaitable);
  }
  mqtt::Options client_options() const {
    mqtt::Options o;
    o.engine = mqtt::Engine::asio;
    o.server_uri = "ssl://127.0.0.1:" + std::to_string(server.local_endpoint().port());
    o.client_id = "device-1";
    o.ca_file = (certs() / "ca.crt").string();
    o.cert_file = (certs() / "device-1.crt").string();
    o.key_file = (certs() / "device-1.key").string();
    return o;
  }
};

// Engine::asio: a broker sends each message in a TLS record of its own (Mosquitto does), and the
// client decodes one per turn of its event loop. Its PUBACKs for a burst must still leave in a few
// writes, not one per message: Mosquitto wakes up for every write it reads, and at 10,000 devices
// the bridge's one-PUBACK writes made it turn its event loop 69,000 times in bench-fleet's ingest
// phase (4,800 in the baseline). The scripted peer sends 1,000 QoS 1 PUBLISHes, one record each,
// as fast as it can, and counts the records the PUBACKs come in.
TEST(MqttAsioClient, AcknowledgementsOfABurstLeaveInAFewWrites) {
  constexpr int n = 1000;
  int records = 0, acked = 0, received = 0;
  std::set<std::uint16_t> ids;
  ScriptedTlsPeer peer([&](ScriptedTlsPeer::Stream& s) -> asio::awaitable<void> {
    std::string in(64 * 1024, '\0');
    // CONNACK: no session, success, no properties.
    co_await ScriptedTlsPeer::answer_connect(s, std::string("\x20\x03\x00\x00\x00", 5));
    for (int i = 1; i <= n; ++i) {
      std::string p;
      const auto at = mqtt::codec::publish(p, "tern/burst", "message " + std::to_string(i), 1, false);
      mqtt::codec::set_packet_id(p, at, static_cast<std::uint16_t>(i));
      co_await asio::async_write(s, asio::buffer(p), asio::use_awaitable);
    }
    std::string acks;
    while (acked < n) {
      auto got = co_await s.async_read_some(asio::buffer(in), asio::use_awaitable);
      ++records;
      acks.append(in.data(), got);
      each_frame(acks, [&](const mqtt::codec::Frame& f) {
        auto a = mqtt::codec::parse_ack(f);
        if (f.type == mqtt::codec::Type::puback && a) {
          ids.insert(a->id);
          ++acked;
        }
      });
    }
  });
  run_coro(
      [&]() -> asio::awaitable<void> {
        auto c = co_await connected(peer.client_options());
        while (received < n) {
          auto m = co_await next_message(*c, 10s);
          if (!m) break;
          ++received;
        }
      },
      60s);
  peer.join();
  EXPECT_EQ(received, n);
  EXPECT_EQ(acked, n);
  EXPECT_EQ(ids.size(), static_cast<std::size_t>(n)) << "every message is acknowledged once";
  EXPECT_LT(records, n / 10) << "the PUBACKs of " << n << " messages came in " << records << " writes";
}

// Engine::asio: with the broker's Receive Maximum used up, each PUBACK lets one more publish out.
// Written at once, each of those was a TLS record of its own, and Mosquitto turned its loop and
// read twice per record: 19,400 records from the bridge in bench-fleet's ingest phase at 10,000
// devices. The scripted peer announces a Receive Maximum of 10 and acknowledges each publish in a
// record of its own, 300 µs apart (a busy broker); the 500 publishes must come in far fewer
// records than one each, every one once and in order.
TEST(MqttAsioClient, PublishesLetOutByAcknowledgementsLeaveTogether) {
  constexpr int n = 500;
  std::atomic<int> acked{0};
  int records = 0;
  std::vector<std::string> payloads;
  ScriptedTlsPeer peer([&](ScriptedTlsPeer::Stream& s) -> asio::awaitable<void> {
    std::string in(64 * 1024, '\0');
    // CONNACK: no session, success, properties: Receive Maximum (0x21) 10.
    co_await ScriptedTlsPeer::answer_connect(s, std::string("\x20\x06\x00\x00\x03\x21\x00\x0a", 8));
    asio::steady_timer pause(s.get_executor());
    std::string data;
    while (acked < n) {
      auto got = co_await s.async_read_some(asio::buffer(in), asio::use_awaitable);
      ++records;
      data.append(in.data(), got);
      std::vector<std::uint16_t> ids;
      each_frame(data, [&](const mqtt::codec::Frame& f) {
        if (f.type != mqtt::codec::Type::publish) return;
        auto p = mqtt::codec::parse_publish(f);
        if (!p) return;
        payloads.emplace_back(p->payload);
        ids.push_back(p->id);
      });
      for (auto id : ids) {
        std::string ack;
        mqtt::codec::puback(ack, id);
        co_await asio::async_write(s, asio::buffer(ack), asio::use_awaitable);
        ++acked;
        pause.expires_after(300us);
        co_await pause.async_wait(asio::use_awaitable);
      }
    }
  });
  run_coro(
      [&]() -> asio::awaitable<void> {
        auto c = co_await connected(peer.client_options());
        for (int i = 1; i <= n; ++i) {
          auto r = c->enqueue(mqtt::Message{"tern/devices/device-1/status", "status " + std::to_string(i)});
          CO_ASSERT_TRUE(r, r.error().message());
        }
        for (int i = 0; i < 300 && acked < n; ++i) co_await sleep_for(50ms);
      },
      60s);
  peer.join();
  ASSERT_EQ(acked.load(), n);
  ASSERT_EQ(payloads.size(), static_cast<std::size_t>(n)) << "a publish was sent twice or lost";
  for (int i = 0; i < n; ++i) EXPECT_EQ(payloads[static_cast<std::size_t>(i)], "status " + std::to_string(i + 1));
  EXPECT_LT(records, n / 4) << n << " publishes came in " << records << " records";
}

}  // namespace
}  // namespace tern::test
