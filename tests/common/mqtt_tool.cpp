// A separate process for the MQTT client tests that need one: queue messages while the broker is
// down and exit (Paho keeps them in its file persistence), flush them from a new process, or hold a
// connection with a last will until killed.
//
//   tern-mqtt-tool queue URI ID CA CERT KEY PERSIST_DIR TOPIC COUNT   enqueue COUNT messages, exit
//   tern-mqtt-tool flush URI ID CA CERT KEY PERSIST_DIR               connect, wait until sent
//   tern-mqtt-tool hold  URI ID CA CERT KEY WILL_TOPIC                connect with a will, wait
#include "common/log.hpp"
#include "common/mqtt/client.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <cstdio>
#include <filesystem>
#include <string>

namespace asio = boost::asio;
using namespace std::chrono_literals;

int main(int argc, char** argv) {
  if (argc < 7) {
    std::fprintf(stderr, "usage: see the header of tests/common/mqtt_tool.cpp\n");
    return 2;
  }
  std::string mode = argv[1];
  tern::mqtt::Options o;
  o.server_uri = argv[2];
  o.client_id = argv[3];
  o.ca_file = argv[4];
  o.cert_file = argv[5];
  o.key_file = argv[6];
  o.min_retry = 1s;
  o.max_retry = 2s;
  if (mode == "queue" || mode == "flush") o.persistence_dir = argv[7];
  if (mode == "hold") o.will = tern::mqtt::Message{argv[7], R"({"state":"offline","seq":1})", 1, true};

  asio::io_context io;
  auto client = tern::mqtt::Client::create(io.get_executor(), o);
  if (!client) {
    std::fprintf(stderr, "%s\n", client.error().message().c_str());
    return 1;
  }
  int rc = 0;
  if (mode == "queue") {
    // The broker is down: nothing connects; Paho persists the messages.
    int count = std::stoi(argv[9]);
    for (int i = 0; i < count; ++i) {
      auto r = (*client)->enqueue({argv[8], "queued-" + std::to_string(i), 1, false});
      if (!r) {
        std::fprintf(stderr, "%s\n", r.error().message().c_str());
        return 1;
      }
    }
    std::printf("queued %d\n", count);
    return 0;  // exit without disconnecting: as after a power cut, only the files remain
  }
  asio::co_spawn(io, [&]() -> asio::awaitable<void> {
    auto c = co_await (*client)->connect();
    if (!c) {
      std::fprintf(stderr, "%s\n", c.error().message().c_str());
      rc = 1;
      co_return;
    }
    std::printf("connected\n");
    std::fflush(stdout);
    if (mode == "flush") {
      // A publish completes after everything queued before it (QoS 1 is ordered per client).
      const tern::mqtt::Message marker{"tern/devices/" + o.client_id + "/status", "flush-marker", 1, false};
      auto r = co_await (*client)->publish(marker);
      if (!r) rc = 1;
      co_await (*client)->disconnect();
    } else {
      asio::steady_timer t(io, 1h);
      co_await t.async_wait(asio::use_awaitable);
    }
  }, asio::detached);
  io.run();
  return rc;
}
