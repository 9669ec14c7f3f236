// Paho runs its own threads; everything here that Paho calls only completes handlers (posted to
// their executors) or pushes into the concurrent inbox channel. The only Paho + Asio translation
// unit of the project.
#include "common/mqtt/client.hpp"
#include "common/mqtt/asio_client.hpp"

#include "common/backoff.hpp"
#include "common/log.hpp"

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <mqtt/async_client.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

namespace asio = boost::asio;

namespace tern::mqtt {
namespace {

using namespace asio::experimental::awaitable_operators;
using Inbox = asio::experimental::concurrent_channel<void(boost::system::error_code, Message)>;
using ResultHandler = asio::any_completion_handler<void(Result<void>)>;

Error paho_failure(std::string_view what, const ::mqtt::token& tok) {
  int reason = tok.get_reason_code();
  if (reason >= 0x80)
    return fail(Errc::protocol, std::string(what) + ": refused by the broker (reason code " +
                                    std::to_string(reason) + ", " +
                                    ::mqtt::exception::reason_code_str(reason) + ")");
  return fail(Errc::io, std::string(what) + ": " + ::mqtt::exception::error_str(tok.get_return_code()) +
                            " (code " + std::to_string(tok.get_return_code()) + ")");
}

// One outstanding Paho operation. Paho calls on_success/on_failure from its thread; the result is
// posted to the waiting coroutine's executor. The listener keeps itself alive until Paho answers.
class PendingOp final : public ::mqtt::iaction_listener {
 public:
  PendingOp(ResultHandler h, asio::any_io_executor fallback, std::string what)
      : handler_(std::move(h)), fallback_(std::move(fallback)), what_(std::move(what)) {}

  void on_success(const ::mqtt::token& tok) override {
    // A QoS 1 PUBACK or SUBACK with a failure reason arrives as "success" with a reason code.
    int reason = tok.get_reason_code();
    if (reason >= 0x80) finish(paho_failure(what_, tok));
    else finish(Result<void>{});
  }
  void on_failure(const ::mqtt::token& tok) override { finish(paho_failure(what_, tok)); }

  /// Completes with `r` unless already completed; deletes this.
  void finish(Result<void> r) {
    // Coroutines using the client run on its executor (see the header's thread-safety note).
    asio::post(fallback_, [h = std::move(handler_), r = std::move(r)]() mutable { std::move(h)(std::move(r)); });
    delete this;
  }

 private:
  ResultHandler handler_;
  asio::any_io_executor fallback_;
  std::string what_;
};

// The listener of connect(). Paho keeps a connect token's listener after the connection is made and
// calls it again on automatic reconnects, so it lives as long as the client and only completes a
// connect() that is actually waiting.
class ConnectListener final : public ::mqtt::iaction_listener {
 public:
  explicit ConnectListener(asio::any_io_executor ex) : ex_(std::move(ex)) {}

  void arm(ResultHandler h) {
    std::lock_guard lock(mutex_);
    pending_.emplace(std::move(h));
  }
  void on_success(const ::mqtt::token&) override { complete(Result<void>{}); }
  void on_failure(const ::mqtt::token& tok) override { complete(paho_failure("connecting", tok)); }

  void complete(Result<void> r) {
    std::optional<ResultHandler> h;
    {
      std::lock_guard lock(mutex_);
      h.swap(pending_);
    }
    if (h) asio::post(ex_, [h = std::move(*h), r = std::move(r)]() mutable { std::move(h)(std::move(r)); });
  }

 private:
  asio::any_io_executor ex_;
  std::mutex mutex_;
  std::optional<ResultHandler> pending_;
};

// Starts a Paho operation with a listener and awaits its outcome. `start` gets the listener and
// returns nothing; if it throws (Paho refused at once), the error is returned.
template <class Start>
asio::awaitable<Result<void>> paho_op(asio::any_io_executor ex, std::string what, Start start) {
  return asio::async_initiate<decltype(asio::use_awaitable), void(Result<void>)>(
      [ex, what = std::move(what), start = std::move(start)](auto handler) mutable {
        auto* op = new PendingOp(ResultHandler(std::move(handler)), ex, what);
        try {
          start(*op);
        } catch (const ::mqtt::exception& e) {
          op->finish(fail(Errc::io, what + ": " + e.what()));
        }
      },
      asio::use_awaitable);
}

::mqtt::message_ptr to_paho(const Message& m) {
  auto msg = std::make_shared<::mqtt::message>(m.topic, m.payload, m.qos, m.retained);
  ::mqtt::properties props;
  if (!m.response_topic.empty()) props.add({::mqtt::property::RESPONSE_TOPIC, m.response_topic});
  if (!m.correlation_data.empty()) props.add({::mqtt::property::CORRELATION_DATA, m.correlation_data});
  if (props.size()) msg->set_properties(std::move(props));
  return msg;
}

Message from_paho(const ::mqtt::const_message_ptr& p) {
  Message m;
  m.topic = p->get_topic();
  m.payload = p->get_payload_str();
  m.qos = p->get_qos();
  m.retained = p->is_retained();
  const auto& props = p->get_properties();
  if (props.contains(::mqtt::property::RESPONSE_TOPIC))
    m.response_topic = ::mqtt::get<std::string>(props, ::mqtt::property::RESPONSE_TOPIC);
  if (props.contains(::mqtt::property::CORRELATION_DATA))
    m.correlation_data = ::mqtt::get<std::string>(props, ::mqtt::property::CORRELATION_DATA);
  return m;
}


struct PahoImpl final : public ::mqtt::callback, public std::enable_shared_from_this<PahoImpl> {
  PahoImpl(asio::any_io_executor e, Options o)
      : ex(std::move(e)), options(std::move(o)), inbox(ex, options.inbox_capacity), connect_listener(ex) {}

  asio::any_io_executor ex;
  Options options;
  Inbox inbox;
  ConnectListener connect_listener;
  std::unique_ptr<::mqtt::async_client> paho;
  std::atomic<bool> is_connected{false};
  std::atomic<bool> closing{false};
  std::mutex mutex;                                  // guards subscriptions
  std::vector<std::pair<std::string, int>> subscriptions;

  // enqueue() hands messages to this thread: paho->publish() can block for seconds while Paho's
  // own threads hold its lock (a reconnect in progress, a full inbox), and the io_context thread
  // must never block.
  std::mutex out_mutex;
  std::condition_variable out_ready;
  std::deque<::mqtt::message_ptr> outgoing;
  bool out_stop = false;
  std::thread publisher;

  void publisher_loop() {
    for (;;) {
      ::mqtt::message_ptr m;
      {
        std::unique_lock lock(out_mutex);
        out_ready.wait(lock, [&] { return out_stop || !outgoing.empty(); });
        if (outgoing.empty()) return;  // stopping, and everything handed to Paho
        m = outgoing.front();
        outgoing.pop_front();
      }
      try {
        paho->publish(m);
      } catch (const ::mqtt::exception& e) {
        log::warn("mqtt ", options.client_id, ": queueing a message to ", m->get_topic(), ": ", e.what());
      }
    }
  }

  // --- Paho's threads ---------------------------------------------------------------------------

  void connected(const std::string& cause) override {
    is_connected = true;
    log::debug("mqtt ", options.client_id, ": connected", cause.empty() ? "" : " (" + cause + ")");
    renew_subscriptions();
    if (options.on_connected) asio::post(ex, [self = shared_from_this()] {
        if (self->options.on_connected && !self->closing) self->options.on_connected();
      });
  }

  void connection_lost(const std::string& cause) override {
    is_connected = false;
    log::info("mqtt ", options.client_id, ": connection lost", cause.empty() ? "" : ": " + cause);
    if (options.on_connection_lost) asio::post(ex, [self = shared_from_this(), cause] {
        if (self->options.on_connection_lost && !self->closing) self->options.on_connection_lost(cause);
      });
  }

  void message_arrived(::mqtt::const_message_ptr msg) override {
    Message m = from_paho(msg);
    if (inbox.try_send(boost::system::error_code{}, m)) return;
    // Full: block Paho's receive thread until receive() makes room, so QoS 1 messages are never
    // dropped; the broker sees back-pressure. Closing the inbox releases the wait.
    try {
      inbox.async_send(boost::system::error_code{}, std::move(m), asio::use_future).get();
    } catch (const std::exception& e) {
      log::warn("mqtt ", options.client_id, ": dropped a message on ", msg->get_topic(), " (", e.what(), ")");
    }
  }

  void delivery_complete(::mqtt::delivery_token_ptr) override {}

  // Built afresh for every attempt: copying a connect_options that carries MQTT 5 properties
  // crashes paho.mqtt.cpp 1.2 (the copy's C struct points at the original's properties).
  ::mqtt::connect_options make_connect_options() const {
    const Options& o = options;
    ::mqtt::connect_options_builder b;
    b.mqtt_version(MQTTVERSION_5)
        .clean_start(o.clean_start)
        .keep_alive_interval(o.keepalive)
        .connect_timeout(o.connect_timeout)
        .automatic_reconnect(std::max(std::chrono::duration_cast<std::chrono::seconds>(o.min_retry), 1s),
                             std::max(std::chrono::duration_cast<std::chrono::seconds>(o.max_retry), 1s));
    if (o.server_uri.starts_with("ssl://") || o.server_uri.starts_with("mqtts://")) {
      b.ssl(::mqtt::ssl_options_builder()
                .trust_store(o.ca_file)
                .key_store(o.cert_file)
                .private_key(o.key_file)
                .enable_server_cert_auth(true)
                .verify(true)
                // No error_handler: Paho C keeps a pointer to the ssl_options that registered it,
                // which paho.mqtt.cpp 1.2 does not update when it copies the options, so a TLS error
                // after connect() returned called into a destroyed object (a crash when the broker
                // went away mid-handshake).
                .finalize());
    }
    if (o.will) b.will(::mqtt::will_options(*to_paho(*o.will)));
    auto opts = b.finalize();
    ::mqtt::properties props;
    props.add({::mqtt::property::SESSION_EXPIRY_INTERVAL, static_cast<int32_t>(o.session_expiry.count())});
    opts.set_properties(std::move(props));
    return opts;
  }

  /// Stops a connect attempt Paho never answered, so the next one can start.
  void abandon_connect() {
    try {
      paho->disconnect(std::chrono::seconds(0));  // not awaited: the next attempt reports a refusal
    } catch (const ::mqtt::exception& e) {
      log::debug("mqtt ", options.client_id, ": abandoning a connect attempt: ", e.what());
    }
  }

  void renew_subscriptions() {
    std::vector<std::pair<std::string, int>> subs;
    {
      std::lock_guard lock(mutex);
      subs = subscriptions;
    }
    // "Retained only if new": a session the broker kept does not replay retained messages, a lost
    // one (or a first subscription) does.
    ::mqtt::subscribe_options so(false, false, ::mqtt::subscribe_options::SEND_RETAINED_ON_NEW);
    for (auto& [filter, qos] : subs) {
      try {
        paho->subscribe(filter, qos, so);
      } catch (const ::mqtt::exception& e) {
        log::warn("mqtt ", options.client_id, ": renewing subscription ", filter, ": ", e.what());
      }
    }
  }
};

class PahoClient final : public Client {
 public:
  explicit PahoClient(std::shared_ptr<PahoImpl> impl);
  ~PahoClient() override;
  asio::awaitable<Result<void>> connect() override;
  asio::awaitable<Result<void>> publish(const Message& msg) override;
  Result<void> enqueue(const Message& msg) override;
  asio::awaitable<Result<void>> subscribe(const std::string& filter, int qos) override;
  asio::awaitable<Result<void>> unsubscribe(const std::string& filter) override;
  asio::awaitable<Result<Message>> receive() override;
  std::optional<Message> try_receive() override;
  asio::awaitable<void> disconnect() override;
  bool connected() const override;
  const Options& options() const override;

 private:
  std::shared_ptr<PahoImpl> impl_;
};

}  // namespace

Result<std::unique_ptr<Client>> Client::create(asio::any_io_executor ex, Options options) {
  if (options.client_id.empty()) return fail(Errc::invalid_argument, "mqtt client: empty client id");
  if (options.inbox_capacity == 0) options.inbox_capacity = 1;
  if (options.engine == Engine::asio) return make_asio_client(std::move(ex), std::move(options));
  auto impl = std::make_shared<PahoImpl>(std::move(ex), std::move(options));
  const Options& o = impl->options;
  try {
    auto create_opts = ::mqtt::create_options_builder()
                           .mqtt_version(MQTTVERSION_5)
                           .send_while_disconnected(true, true)
                           .max_buffered_messages(o.max_buffered)
                           .restore_messages(true)
                           .persist_qos0(false)
                           .finalize();
    if (!o.persistence_dir.empty()) {
      std::error_code ec;
      std::filesystem::create_directories(o.persistence_dir, ec);
      if (ec) return Error(ec, "mqtt client: creating persistence directory " + o.persistence_dir.string());
      impl->paho = std::make_unique<::mqtt::async_client>(o.server_uri, o.client_id, create_opts,
                                                          o.persistence_dir.string());
    } else {
      impl->paho = std::make_unique<::mqtt::async_client>(o.server_uri, o.client_id, create_opts, nullptr);
    }

    impl->paho->set_callback(*impl);
  } catch (const ::mqtt::exception& e) {
    return fail(Errc::invalid_argument, "mqtt client " + o.client_id + ": " + e.what());
  }
  return std::unique_ptr<Client>(new PahoClient(std::move(impl)));
}

namespace {

PahoClient::PahoClient(std::shared_ptr<PahoImpl> impl) : impl_(std::move(impl)) {
  impl_->publisher = std::thread([impl = impl_.get()] { impl->publisher_loop(); });
}

PahoClient::~PahoClient() {
  impl_->closing = true;
  impl_->inbox.close();  // releases a Paho thread blocked on a full inbox
  {
    // Hand what is still queued to Paho (and so to its persistence) before it goes.
    std::lock_guard lock(impl_->out_mutex);
    impl_->out_stop = true;
    impl_->out_ready.notify_all();
  }
  if (impl_->publisher.joinable()) impl_->publisher.join();
  try {
    impl_->paho->disable_callbacks();
  } catch (...) {
  }
  // Destroying the Paho client stops its threads; buffered QoS 1 messages stay in persistence.
  impl_->paho.reset();
}

asio::awaitable<Result<void>> PahoClient::connect() {
  auto impl = impl_;
  Backoff backoff(impl->options.min_retry, impl->options.max_retry);
  // Paho gives up on an attempt after connect_timeout and calls back. The watchdog is for when it
  // does not (seen with a server that accepts TCP and never answers the TLS handshake): the
  // attempt is abandoned and made again.
  const auto watchdog_after = impl->options.connect_timeout + std::chrono::seconds(5);
  Result<void> last = fail(Errc::io, "not attempted");
  for (unsigned attempt = 1;; ++attempt) {
    // Built outside the co_await expression: g++ 12 destroys temporaries of a full-expression
    // containing co_await twice (a lambda capturing a shared_ptr there corrupts its count).
    auto attempt_op = asio::async_initiate<decltype(asio::use_awaitable), void(Result<void>)>(
        [impl](auto handler) {
          auto slot = asio::get_associated_cancellation_slot(handler);
          if (slot.is_connected())
            slot.assign([impl](asio::cancellation_type) {
              impl->connect_listener.complete(fail(Errc::cancelled, "connecting: cancelled"));
            });
          impl->connect_listener.arm(ResultHandler(std::move(handler)));
          try {
            impl->paho->connect(impl->make_connect_options(), nullptr, impl->connect_listener);
          } catch (const ::mqtt::exception& e) {
            impl->connect_listener.complete(fail(Errc::io, std::string("connecting: ") + e.what()));
          }
        },
        asio::use_awaitable);
    asio::steady_timer watchdog(impl->ex, watchdog_after);
    auto expired = watchdog.async_wait(asio::as_tuple(asio::use_awaitable));
    auto outcome = co_await (std::move(attempt_op) || std::move(expired));
    if (outcome.index() == 0) {
      last = std::move(std::get<0>(outcome));
    } else {
      last = fail(Errc::timeout, "connecting: no answer within " +
                                     std::to_string(std::chrono::duration_cast<std::chrono::seconds>(watchdog_after).count()) +
                                     " s; abandoned");
      impl->abandon_connect();
    }
    if (!last && last.error().code() == make_error_code(Errc::cancelled)) {
      impl->abandon_connect();
      co_return last;
    }
    if (!last) last = last.error().context(impl->options.server_uri);
    if (last) {
      impl->is_connected = true;
      co_return last;
    }
    if (impl->options.connect_attempts && attempt >= impl->options.connect_attempts) co_return last;
    const auto delay = backoff.next();
    log::info("mqtt ", impl->options.client_id, ": ", last.error().message(), "; retrying in ", delay.count(), " ms");
    asio::steady_timer timer(impl->ex, delay);
    co_await timer.async_wait(asio::use_awaitable);
  }
}

asio::awaitable<Result<void>> PahoClient::publish(const Message& msg) {
  auto impl = impl_;
  auto m = to_paho(msg);
  auto op = paho_op(impl->ex, "publishing to " + msg.topic,
                    [&](::mqtt::iaction_listener& l) { impl->paho->publish(m, nullptr, l); });
  co_return co_await std::move(op);
}

Result<void> PahoClient::enqueue(const Message& msg) {
  auto& impl = *impl_;
  std::lock_guard lock(impl.out_mutex);
  if (impl.outgoing.size() >= static_cast<std::size_t>(std::max(impl.options.max_buffered, 1)))
    return fail(Errc::io, "queueing a message to " + msg.topic + ": " + std::to_string(impl.outgoing.size()) +
                              " messages wait already");
  impl.outgoing.push_back(to_paho(msg));
  impl.out_ready.notify_one();
  return {};
}

asio::awaitable<Result<void>> PahoClient::subscribe(const std::string& filter_arg, int qos) {
  std::string filter = filter_arg;  // read before the first suspension (see the header)
  auto impl = impl_;
  {
    std::lock_guard lock(impl->mutex);
    auto& subs = impl->subscriptions;
    auto it = std::find_if(subs.begin(), subs.end(), [&](auto& s) { return s.first == filter; });
    if (it == subs.end()) subs.emplace_back(filter, qos);
    else it->second = qos;
  }
  auto op = paho_op(impl->ex, "subscribing to " + filter,
                    [&](::mqtt::iaction_listener& l) { impl->paho->subscribe(filter, qos, nullptr, l); });
  co_return co_await std::move(op);
}

asio::awaitable<Result<void>> PahoClient::unsubscribe(const std::string& filter_arg) {
  std::string filter = filter_arg;  // read before the first suspension (see the header)
  auto impl = impl_;
  {
    std::lock_guard lock(impl->mutex);
    std::erase_if(impl->subscriptions, [&](auto& s) { return s.first == filter; });
  }
  auto op = paho_op(impl->ex, "unsubscribing from " + filter,
                    [&](::mqtt::iaction_listener& l) { impl->paho->unsubscribe(filter, nullptr, l); });
  co_return co_await std::move(op);
}

asio::awaitable<Result<Message>> PahoClient::receive() {
  auto impl = impl_;
  auto [ec, msg] = co_await impl->inbox.async_receive(asio::as_tuple(asio::use_awaitable));
  if (ec) co_return fail(Errc::cancelled, "receiving MQTT messages: " + ec.message());
  co_return msg;
}

std::optional<Message> PahoClient::try_receive() {
  std::optional<Message> out;
  // The handler runs inside try_receive when a message (or a waiting sender's) is there.
  impl_->inbox.try_receive([&](boost::system::error_code ec, Message m) {
    if (!ec) out = std::move(m);
  });
  return out;
}

asio::awaitable<void> PahoClient::disconnect() {
  auto impl = impl_;
  if (!impl->paho->is_connected()) co_return;
  auto op = paho_op(impl->ex, "disconnecting", [&](::mqtt::iaction_listener& l) {
    impl->paho->disconnect(std::chrono::seconds(2), nullptr, l);
  });
  // Bounded: with the broker gone mid-way Paho may never call the listener back, and a process
  // stopping on SIGTERM must not hang on its goodbye.
  asio::steady_timer limit(impl->ex, std::chrono::seconds(4));
  auto give_up = limit.async_wait(asio::use_awaitable);
  auto done = co_await (std::move(op) || std::move(give_up));
  impl->is_connected = false;
  if (done.index() == 1) log::debug("mqtt ", impl->options.client_id, ": disconnect timed out");
  else if (auto& r = std::get<0>(done); !r) log::debug("mqtt ", impl->options.client_id, ": ", r.error().message());
}

bool PahoClient::connected() const { return impl_->is_connected && impl_->paho->is_connected(); }

const Options& PahoClient::options() const { return impl_->options; }

}  // namespace
}  // namespace tern::mqtt
