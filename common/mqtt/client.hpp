// An MQTT 5 client for Asio C++20 coroutines (TLS with client certificates), with two engines:
//   Engine::paho  Paho MQTT C++ (its own threads; file persistence of QoS 1 messages across process
//                 restarts): the agent, which must not lose a status when it is restarted.
//   Engine::asio  Tern's own (common/mqtt/asio_client.cpp): one connection driven on the caller's
//                 executor, no thread, many packets per TLS write. The bridge, whose ingest rate was
//                 bounded by Paho's per-message cost (README, "Fleet scale, measured"). No file
//                 persistence (create() refuses persistence_dir): QoS 1 messages wait in memory.
// Both keep the behaviour described below; the differences are noted where they are.
//
//   auto client = tern::mqtt::Client::create(io.get_executor(), options).value();
//   co_await client->connect();                       // retries with backoff per Options
//   co_await client->subscribe("tern/devices/d1/deployment");
//   auto msg = co_await client->receive();            // Result<Message>
//   co_await client->publish({.topic = "...", .payload = "..."});
//
// Sessions are persistent (clean start off, session expiry). After the first connection Paho
// reconnects by itself with exponential backoff; subscriptions are renewed on every reconnect (with
// MQTT 5 "retained only if new", so a kept session does not replay retained messages). QoS 1
// publishes made while disconnected are buffered by Paho, in files under Options::persistence_dir
// when it is set, so they survive a restart of the process and are sent on the next connection.
//
// Thread safety (both engines): a Client is used from one executor (all coroutines on the io_context it was
// created with). Paho's threads never touch caller state: they post into that executor or push into
// the inbox channel, which blocks Paho's receive thread while full (back-pressure to the broker
// instead of dropping QoS 1 messages).
//
// Arguments of the coroutine functions are read before their first suspension, so temporaries are
// fine when the result is awaited at once (`co_await c.publish({...})`), as everywhere in Tern.
// (They are taken by reference because g++ 12 miscompiles by-value class parameters of coroutines
// that are initialised from a braced temporary.)
//
// Cancellation: receive() and connect() support Asio cancellation (e.g. `||` with a timer);
// with Engine::paho, publish(), subscribe() and disconnect() complete when Paho reports the outcome.
// With Engine::asio every wait is cancellable, subscribe() and unsubscribe() fail after
// Options::ack_timeout without an answer, and a single-threaded executor is required (the
// client's state is not locked).
#pragma once

#include "common/error.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace tern::mqtt {

using namespace std::chrono_literals;

struct Message {
  std::string topic;
  std::string payload;
  int qos = 1;
  bool retained = false;
  std::string response_topic;    ///< MQTT 5 response topic (request/response, e.g. mosquitto_rr)
  std::string correlation_data;  ///< MQTT 5 correlation data, echoed in replies
};

enum class Engine { paho, asio };

struct Options {
  Engine engine = Engine::paho;
  std::string server_uri;  ///< "ssl://127.0.0.1:8883" (or "tcp://..." without TLS)
  std::string client_id;   ///< with Tern's broker, the CN of cert_file
  std::string ca_file;     ///< CA that signed the broker's certificate
  std::string cert_file;   ///< client certificate (PEM)
  std::string key_file;    ///< its private key (PEM)
  bool clean_start = false;
  std::chrono::seconds session_expiry{7 * 24 * 3600};
  std::chrono::seconds keepalive{60};
  std::chrono::seconds connect_timeout{10};
  std::optional<Message> will;  ///< last will, published by the broker when the client vanishes
  /// Paho's file persistence for in-flight and offline QoS 1 messages; empty keeps them in memory.
  std::filesystem::path persistence_dir;
  std::chrono::milliseconds min_retry{500};  ///< first reconnect delay
  std::chrono::milliseconds max_retry{60s};  ///< reconnect delays double up to this
  /// connect() gives up after this many failed attempts (0: keeps trying until cancelled).
  unsigned connect_attempts = 0;
  std::size_t inbox_capacity = 256;  ///< incoming messages waiting for receive()
  int max_buffered = 10000;          ///< QoS 1 publishes buffered while disconnected
  /// Engine::asio: how long subscribe() and unsubscribe() wait for the broker's answer.
  std::chrono::seconds ack_timeout{30};
  /// Called on the client's executor after every successful (re)connection.
  std::function<void()> on_connected;
  /// Called on the client's executor when an established connection drops.
  std::function<void(const std::string& cause)> on_connection_lost;
};

class Client {
 public:
  /// Creates the client (no network yet). Errors: an invalid URI or options, or a persistence
  /// directory that cannot be created.
  static Result<std::unique_ptr<Client>> create(boost::asio::any_io_executor ex, Options options);
  virtual ~Client() = default;
  Client() = default;
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  /// Connects, retrying with backoff between min_retry and max_retry (bounded by connect_attempts).
  /// Errors: the last connection failure (refused TLS handshake, unreachable broker, ...).
  virtual boost::asio::awaitable<Result<void>> connect() = 0;

  /// Publishes and waits for the broker's acknowledgement (QoS 1) or for the client to send it
  /// (QoS 0). While disconnected the message waits in the client's buffer and this completes after
  /// the reconnect.
  /// Errors: refused by the broker (e.g. reason code 135, not authorized), buffer full.
  virtual boost::asio::awaitable<Result<void>> publish(const Message& msg) = 0;

  /// Queues the message and returns at once; it is delivered (and, with Engine::paho, persisted for
  /// QoS 1) whenever a connection exists. (Paho's publish can block while Paho reconnects, so that
  /// engine hands messages over on a publisher thread.) Errors: max_buffered messages are waiting
  /// already.
  virtual Result<void> enqueue(const Message& msg) = 0;

  /// Subscribes and remembers the filter, so it is renewed after reconnects.
  /// Errors: the broker refused the subscription (note: Mosquitto grants denied subscriptions and
  /// then delivers nothing).
  virtual boost::asio::awaitable<Result<void>> subscribe(const std::string& filter, int qos = 1) = 0;

  /// Unsubscribes and forgets the filter (it is not renewed after reconnects any more).
  /// Errors: the broker did not acknowledge it (e.g. disconnected meanwhile).
  virtual boost::asio::awaitable<Result<void>> unsubscribe(const std::string& filter) = 0;

  /// The next incoming message. Errors: the client was closed (Errc::cancelled).
  virtual boost::asio::awaitable<Result<Message>> receive() = 0;

  /// A message already waiting in the inbox, without waiting for one (e.g. to take a burst in one
  /// go after receive()); nullopt when the inbox is empty or closed.
  virtual std::optional<Message> try_receive() = 0;

  /// Sends DISCONNECT (the will is not published) and stops reconnecting.
  virtual boost::asio::awaitable<void> disconnect() = 0;

  virtual bool connected() const = 0;
  virtual const Options& options() const = 0;
};

}  // namespace tern::mqtt
