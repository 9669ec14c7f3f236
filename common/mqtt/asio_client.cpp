// Engine::asio: one MQTT 5 connection driven by coroutines on the caller's executor.
//
// A connection is three loops joined with `||`: the reader (splits packets, feeds the inbox,
// queues PUBACKs), the writer (sends everything queued since its last write in one write, so a
// burst of publishes and acknowledgements is a few TLS records instead of one per packet; PUBACKs
// alone wait up to kAckDelay for company) and the keepalive. Whichever ends first closes the
// socket, which ends the others; the session loop then reconnects with backoff, renews the
// subscriptions and sends again every QoS 1 publish the broker has not acknowledged (DUP, in their
// first order, so the last retained value stays the last).
//
// Outgoing QoS 1 publishes wait in `pending` until the broker's Receive Maximum leaves room, then
// move to `inflight` (send order) until their PUBACK. PUBACKs come back in order, so finding one
// looks at the front first. Publishes that a PUBACK lets out wait like PUBACKs (up to kAckDelay):
// with the window full, writing each at once made one TLS record per publish (see kAckDelay).
#include "common/mqtt/asio_client.hpp"

#include "common/backoff.hpp"
#include "common/log.hpp"
#include "common/mqtt/codec.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/experimental/channel.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <deque>
#include <unordered_map>
#include <variant>

namespace asio = boost::asio;
namespace ssl = asio::ssl;
using asio::ip::tcp;
using namespace asio::experimental::awaitable_operators;

namespace tern::mqtt {
namespace {

using Clock = std::chrono::steady_clock;
using Inbox = asio::experimental::channel<void(boost::system::error_code, Message)>;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
// Packets from the broker over this size end the connection (Mosquitto's default message_size_limit
// is 256 MiB; nothing Tern sends comes near this).
constexpr std::size_t kMaxIncoming = 64u << 20;
// PUBACKs are not written one by one. The broker sends each message in a TLS record of its own and
// a read returns one record, so a write per PUBACK was a write per message, and Mosquitto wakes up
// for every write it reads: at 10,000 devices its event loop turned 69,000 times in bench-fleet's
// ingest phase against 4,800 in the baseline, and it used 1.8 times the baseline's CPU for the same
// statuses. A PUBACK now waits up to kAckDelay for the next write (or until kWriteBurst bytes are
// queued). Waiting for the input to run dry instead did not help: a broker that is not saturated
// sends a record at a time, and the reader is dry after each. The broker's window for us
// (max_inflight_messages, 1,000 in mosquitto.conf) covers far more than kAckDelay of messages.
// The same holds the other way: once the bridge had 1,000 publishes unacknowledged (the cleared
// deployments and device records of an ingest burst), each PUBACK from Mosquitto let one publish
// out in a record of its own, and Mosquitto read 19,400 records from the bridge in bench-fleet's
// ingest phase, a turn of its loop and two reads each. Those publishes now wait as PUBACKs do.
constexpr auto kAckDelay = std::chrono::milliseconds(2);
constexpr std::size_t kWriteBurst = 256u << 10;

/// "(reason code 135, not authorized)": a broker's reason code as messages name it.
std::string reason_text(std::uint8_t code) {
  return "(reason code " + std::to_string(code) + ", " + std::string(codec::reason_name(code)) + ")";
}

/// `what` was refused with a failure reason code (CONNACK, PUBACK, SUBACK, UNSUBACK).
Error refused(std::string_view what, std::uint8_t code) {
  return fail(Errc::protocol, std::string(what) + ": refused by the broker " + reason_text(code));
}

/// One awaited outcome (a publish's PUBACK, a SUBACK, a flush): complete() wakes the waiter.
struct Waiter {
  explicit Waiter(const asio::any_io_executor& ex) : timer(ex) { timer.expires_at(Clock::time_point::max()); }
  asio::steady_timer timer;
  std::optional<Result<void>> result;
  void complete(Result<void> r) {
    if (result) return;
    result = std::move(r);
    timer.cancel();
  }
};

/// Waits for w's outcome, for at most `limit` (zero: until it comes or the wait is cancelled).
asio::awaitable<Result<void>> outcome(const std::shared_ptr<Waiter>& w, const std::string& what, std::chrono::milliseconds limit) {
  if (limit.count()) w->timer.expires_after(limit);
  if (!w->result) co_await w->timer.async_wait(use_tuple);
  if (w->result) co_return std::move(*w->result);
  if (limit.count() && Clock::now() >= w->timer.expiry())
    co_return fail(Errc::timeout, what + ": no answer within " +
                                      std::to_string(std::chrono::duration_cast<std::chrono::seconds>(limit).count()) + " s");
  co_return fail(Errc::cancelled, what + ": cancelled");
}

struct Endpoint {
  bool tls = false;
  std::string host, port;
};

Result<Endpoint> parse_uri(const std::string& uri) {
  Endpoint e;
  std::string_view rest(uri);
  if (rest.starts_with("ssl://") || rest.starts_with("mqtts://")) e.tls = true;
  else if (!rest.starts_with("tcp://") && !rest.starts_with("mqtt://"))
    return fail(Errc::invalid_argument, "mqtt client: '" + uri + "' is not ssl://, mqtts://, tcp:// or mqtt://HOST:PORT");
  rest.remove_prefix(rest.find("://") + 3);
  std::size_t colon;
  if (rest.starts_with('[')) {  // [IPv6]:port
    auto close = rest.find(']');
    if (close == std::string_view::npos) return fail(Errc::invalid_argument, "mqtt client: unclosed '[' in " + uri);
    e.host = rest.substr(1, close - 1);
    colon = close + 1;
  } else {
    colon = rest.rfind(':');
    e.host = rest.substr(0, colon);
  }
  if (colon == std::string_view::npos || colon >= rest.size() || rest[colon] != ':')
    e.port = e.tls ? "8883" : "1883";
  else
    e.port = rest.substr(colon + 1);
  if (e.host.empty()) return fail(Errc::invalid_argument, "mqtt client: no host in " + uri);
  return e;
}

/// One TCP (or TLS over TCP) connection.
class Conn {
 public:
  Conn(const asio::any_io_executor& ex, ssl::context* tls) {
    if (tls) tls_.emplace(ex, *tls);
    else plain_.emplace(ex);
  }
  tcp::socket& socket() { return tls_ ? tls_->next_layer() : *plain_; }
  ssl::stream<tcp::socket>* tls() { return tls_ ? &*tls_ : nullptr; }
  bool open() const { return open_; }
  void close() {
    open_ = false;
    boost::system::error_code ec;
    socket().shutdown(tcp::socket::shutdown_both, ec);
    socket().close(ec);
  }
  auto read_some(asio::mutable_buffer b) {
    return tls_ ? tls_->async_read_some(b, use_tuple) : plain_->async_read_some(b, use_tuple);
  }
  auto write(asio::const_buffer b) {
    return tls_ ? asio::async_write(*tls_, b, use_tuple) : asio::async_write(*plain_, b, use_tuple);
  }
  std::string in;  ///< bytes read and not parsed yet

 private:
  std::optional<ssl::stream<tcp::socket>> tls_;
  std::optional<tcp::socket> plain_;
  bool open_ = true;
};

struct Out {
  std::string packet;
  std::string topic;  ///< for messages about it
  std::size_t id_at = std::string::npos;  ///< where the packet id goes (npos: QoS 0)
  std::uint16_t id = 0;
  bool acked = false;
  std::shared_ptr<Waiter> done;  ///< publish() waits on it; enqueue() has none
};

struct Impl : std::enable_shared_from_this<Impl> {
  Impl(asio::any_io_executor e, Options o, Endpoint ep)
      : ex(std::move(e)), options(std::move(o)), endpoint(std::move(ep)), inbox(ex, options.inbox_capacity),
        write_wake(ex), retry_wake(ex), keepalive_timer(ex), ack_timer(ex), ids(65536, false) {
    write_wake.expires_at(Clock::time_point::max());
    retry_wake.expires_at(Clock::time_point::max());
  }

  asio::any_io_executor ex;
  Options options;
  Endpoint endpoint;
  std::optional<ssl::context> tls;
  Inbox inbox;

  std::shared_ptr<Conn> conn;  // the current connection, while connected
  bool is_connected = false, closing = false, session_running = false;
  std::chrono::seconds keepalive{60};
  std::uint16_t send_quota = 65535;   // the broker's Receive Maximum
  std::uint32_t max_packet = 0;       // the broker's Maximum Packet Size (0: none)
  Clock::time_point last_read, last_write;

  std::deque<Out> pending, inflight;
  std::size_t unacked = 0;  // in inflight, not acknowledged yet
  std::string wbuf;         // packets for the writer
  asio::steady_timer write_wake, retry_wake, keepalive_timer;
  asio::steady_timer ack_timer;  // PUBACKs wait for it (kAckDelay) unless a write goes first
  bool ack_armed = false;
  bool write_due = false;  // wbuf holds more than PUBACKs that may wait (wake_writer)
  std::shared_ptr<Waiter> drained, flushed;  // disconnect(): nothing left to send / wbuf written

  std::vector<bool> ids;  // packet identifiers in use
  std::uint16_t next_id = 1;
  struct AckWait {
    std::string what;
    std::shared_ptr<Waiter> waiter;  // none for renewals
  };
  std::unordered_map<std::uint16_t, AckWait> acks;  // SUBSCRIBE and UNSUBSCRIBE waiting for theirs
  std::vector<std::pair<std::string, int>> subscriptions;

  const std::string& name() const { return options.client_id; }

  std::uint16_t take_id() {
    for (int i = 0; i < 65535; ++i) {
      const std::uint16_t id = next_id;
      next_id = next_id == 65535 ? 1 : next_id + 1;
      if (!ids[id]) {
        ids[id] = true;
        return id;
      }
    }
    return 0;
  }

  /// Something in wbuf is to leave now (everything but a PUBACK: see write_soon).
  void wake_writer() {
    write_due = true;
    write_wake.cancel();
  }

  /// PUBACKs (and publishes a PUBACK let out) are queued in wbuf; they leave with the next write,
  /// at the latest kAckDelay from now.
  void write_soon() {
    if (wbuf.size() >= kWriteBurst) return wake_writer();
    if (ack_armed) return;
    ack_armed = true;
    ack_timer.expires_after(kAckDelay);
    ack_timer.async_wait([weak = weak_from_this()](boost::system::error_code) {
      if (auto self = weak.lock()) {
        self->ack_armed = false;
        self->wake_writer();
      }
    });
  }

  /// Ends connection `c`: the loop that saw it end calls this, so the other two, waiting on their
  /// timers, wake and find it closed, whether or not the cancellation from `||` reaches them.
  void finish(Conn& c) {
    c.close();
    write_wake.cancel();
    keepalive_timer.cancel();
  }

  // --- outgoing publishes -------------------------------------------------------------------------

  Result<void> queue(const Message& m, std::shared_ptr<Waiter> done) {
    if (closing) return fail(Errc::cancelled, "publishing to " + m.topic + ": the client is closed");
    if (pending.size() >= static_cast<std::size_t>(std::max(options.max_buffered, 1)))
      return fail(Errc::io, "queueing a message to " + m.topic + ": " + std::to_string(pending.size()) + " messages wait already");
    Out o;
    o.id_at = codec::publish(o.packet, m.topic, m.payload, m.qos > 0 ? 1 : 0, m.retained, m.response_topic, m.correlation_data);
    o.topic = m.topic;
    o.done = std::move(done);
    pending.push_back(std::move(o));
    pump();
    return {};
  }

  /// Moves pending publishes to the writer while the broker's Receive Maximum leaves room. `now`:
  /// write them at once (a new publish); otherwise (let out by a PUBACK) with the next write, at
  /// the latest kAckDelay from now, so that the publishes a burst of PUBACKs lets out leave together.
  void pump(bool now = true) {
    if (!is_connected) return;
    bool wrote = false;
    while (!pending.empty()) {
      Out& o = pending.front();
      if (max_packet && o.packet.size() > max_packet) {
        auto e = fail(Errc::protocol, "publishing to " + o.topic + ": " + std::to_string(o.packet.size()) +
                                          " bytes is over the broker's maximum packet size of " + std::to_string(max_packet));
        log::warn("mqtt ", name(), ": ", e.message());
        if (o.done) o.done->complete(std::move(e));
        pending.pop_front();
        continue;
      }
      if (o.id_at != std::string::npos) {
        if (unacked >= send_quota) break;
        o.id = take_id();
        if (!o.id) break;
        codec::set_packet_id(o.packet, o.id_at, o.id);
        wbuf += o.packet;
        ++unacked;
        inflight.push_back(std::move(o));
      } else {
        wbuf += o.packet;
        if (o.done) o.done->complete({});
      }
      pending.pop_front();
      wrote = true;
    }
    if (wrote) {
      if (now) wake_writer();
      else write_soon();
    }
    check_drained();
  }

  void check_drained() {
    if (drained && pending.empty() && unacked == 0) drained->complete({});
  }

  void on_puback(const codec::Ack& a) {
    auto it = inflight.begin();
    while (it != inflight.end() && (it->acked || it->id != a.id)) ++it;
    if (it == inflight.end()) {
      log::debug("mqtt ", name(), ": PUBACK for packet ", a.id, ", which is not in flight");
      return;
    }
    it->acked = true;
    ids[it->id] = false;
    --unacked;
    const auto reason = a.reasons.front();
    if (reason >= 0x80) {
      auto e = refused("publishing to " + it->topic, reason);
      if (it->done) it->done->complete(std::move(e));
      else log::warn("mqtt ", name(), ": ", e.message());
    } else if (it->done) {
      it->done->complete({});
    }
    while (!inflight.empty() && inflight.front().acked) inflight.pop_front();
    pump(false);
  }

  // --- subscriptions ------------------------------------------------------------------------------

  void remember(const std::string& filter, int qos) {
    auto it = std::find_if(subscriptions.begin(), subscriptions.end(), [&](auto& s) { return s.first == filter; });
    if (it == subscriptions.end()) subscriptions.emplace_back(filter, qos);
    else it->second = qos;
  }

  /// Sends a SUBSCRIBE or UNSUBSCRIBE and registers its answer; 0 when no packet id is free.
  std::uint16_t send_sub(const std::string& filter, int qos, int retain_handling, bool unsub, std::string what,
                         std::shared_ptr<Waiter> w) {
    const auto id = take_id();
    if (!id) return 0;
    if (unsub) codec::unsubscribe(wbuf, id, filter);
    else codec::subscribe(wbuf, id, filter, qos, retain_handling);
    acks.emplace(id, AckWait{std::move(what), std::move(w)});
    wake_writer();
    return id;
  }

  void on_suback(const codec::Ack& a) {
    auto it = acks.find(a.id);
    if (it == acks.end()) {
      log::debug("mqtt ", name(), ": an acknowledgement for packet ", a.id, ", which was not sent");
      return;
    }
    ids[a.id] = false;
    auto wait = std::move(it->second);
    acks.erase(it);
    Result<void> r;
    for (auto reason : a.reasons)
      if (reason >= 0x80)
        r = refused(wait.what, reason);
    if (wait.waiter) wait.waiter->complete(std::move(r));
    else if (!r) log::warn("mqtt ", name(), ": ", r.error().message());
  }

  // --- a connection -------------------------------------------------------------------------------

  /// Connects once: TCP, TLS, CONNECT, CONNACK, all within options.connect_timeout.
  asio::awaitable<Result<std::shared_ptr<Conn>>> attempt() {
    auto self = shared_from_this();
    auto c = std::make_shared<Conn>(ex, tls ? &*tls : nullptr);
    auto timed_out = std::make_shared<bool>(false), finished = std::make_shared<bool>(false);
    asio::steady_timer guard(ex, options.connect_timeout);
    // `finished`: an expiry already queued when the handshake completed must not close it.
    guard.async_wait([c, timed_out, finished](boost::system::error_code ec) {
      if (ec || *finished) return;
      *timed_out = true;
      c->close();
    });
    auto r = co_await handshake(*c);
    *finished = true;
    guard.cancel();
    if (*timed_out)
      co_return fail(Errc::timeout, "connecting to " + options.server_uri + ": no answer within " +
                                        std::to_string(options.connect_timeout.count()) + " s");
    if (!r) {
      c->close();
      co_return r.error().context(options.server_uri);
    }
    co_return c;
  }

  asio::awaitable<Result<void>> handshake(Conn& c) {
    tcp::resolver resolver(ex);
    auto [rec, endpoints] = co_await resolver.async_resolve(endpoint.host, endpoint.port, use_tuple);
    if (rec) co_return fail(Errc::io, "connecting: resolving " + endpoint.host + ": " + rec.message());
    auto [cec, ep] = co_await asio::async_connect(c.socket(), endpoints, use_tuple);
    if (cec) co_return fail(Errc::io, "connecting: " + cec.message());
    c.socket().set_option(tcp::no_delay(true));
    if (auto* s = c.tls()) {
      boost::system::error_code ip_ec;
      asio::ip::make_address(endpoint.host, ip_ec);
      if (ip_ec) SSL_set_tlsext_host_name(s->native_handle(), endpoint.host.c_str());  // SNI for names only
      s->set_verify_callback(ssl::host_name_verification(endpoint.host));
      auto [hec] = co_await s->async_handshake(ssl::stream_base::client, use_tuple);
      if (hec) co_return fail(Errc::io, "connecting: TLS handshake: " + hec.message());
    }
    std::string out;
    codec::Will will;
    codec::ConnectParams p;
    p.client_id = options.client_id;
    p.keepalive = static_cast<std::uint16_t>(std::min<std::int64_t>(options.keepalive.count(), 65535));
    p.clean_start = options.clean_start;
    p.session_expiry = static_cast<std::uint32_t>(std::min<std::int64_t>(options.session_expiry.count(), 0xffffffff));
    if (options.will) {
      will = {options.will->topic, options.will->payload, options.will->qos, options.will->retained};
      p.will = &will;
    }
    codec::connect(out, p);
    auto [wec, wn] = co_await c.write(asio::buffer(out));
    if (wec) co_return fail(Errc::io, "connecting: sending CONNECT: " + wec.message());
    // The CONNACK, and whatever the broker sent right behind it (kept for the reader).
    for (;;) {
      codec::Frame f;
      auto n = codec::split(c.in, f, kMaxIncoming);
      if (!n) co_return n.error();
      if (*n) {
        if (f.type != codec::Type::connack)
          co_return fail(Errc::protocol, "connecting: the broker answered CONNECT with packet type " +
                                             std::to_string(static_cast<int>(f.type)));
        auto ack = codec::parse_connack(f);
        if (!ack) co_return ack.error();
        if (ack->reason >= 0x80)
          co_return refused("connecting", ack->reason);
        send_quota = ack->props.receive_maximum.value_or(65535);
        if (send_quota == 0) send_quota = 1;
        max_packet = ack->props.maximum_packet_size.value_or(0);
        keepalive = ack->props.server_keepalive ? std::chrono::seconds(*ack->props.server_keepalive) : options.keepalive;
        c.in.erase(0, *n);
        co_return Result<void>{};
      }
      const auto have = c.in.size();
      c.in.resize(have + 4096);
      auto [rec2, got] = co_await c.read_some(asio::buffer(c.in.data() + have, 4096));
      c.in.resize(have + got);
      if (rec2) co_return fail(Errc::io, "connecting: waiting for CONNACK: " + rec2.message());
    }
  }

  /// A connection is up: renew the subscriptions, send again what the broker did not acknowledge,
  /// then the pending publishes.
  void up(std::shared_ptr<Conn> c) {
    conn = std::move(c);
    is_connected = true;
    last_read = last_write = Clock::now();
    for (auto& [filter, qos] : subscriptions)
      if (!send_sub(filter, qos, 1, false, "renewing subscription " + filter, nullptr))
        log::warn("mqtt ", name(), ": renewing subscription ", filter, ": no packet identifier free");
    for (auto& o : inflight) {
      if (o.acked) continue;
      codec::set_dup(o.packet);
      wbuf += o.packet;
    }
    wake_writer();
    pump();
    log::debug("mqtt ", name(), ": connected");
    asio::post(ex, [self = shared_from_this()] {
      if (self->options.on_connected && !self->closing) self->options.on_connected();
    });
  }

  /// The connection is gone: answers every wait for a SUBACK/UNSUBACK with `cause`.
  void down(const std::string& cause) {
    if (conn) conn->close();
    conn.reset();
    is_connected = false;
    wbuf.clear();  // packets for the old connection; unacknowledged publishes are sent again
    write_due = false;
    auto waiting = std::move(acks);
    acks.clear();
    for (auto& [id, w] : waiting) {
      ids[id] = false;
      if (w.waiter) w.waiter->complete(fail(Errc::io, w.what + ": " + cause));
    }
    if (flushed) flushed->complete({});
  }

  asio::awaitable<Result<void>> read_loop(std::shared_ptr<Conn> c) {
    co_await asio::this_coro::throw_if_cancelled(false);
    auto r = co_await read_packets(*c);
    finish(*c);
    co_return r;
  }

  asio::awaitable<Result<void>> read_packets(Conn& c) {
    std::size_t at = 0;
    for (;;) {
      // Every complete packet in the buffer.
      for (;;) {
        codec::Frame f;
        auto n = codec::split(std::string_view(c.in).substr(at), f, kMaxIncoming);
        if (!n) co_return n.error();
        if (!*n) break;
        at += *n;
        if (f.type == codec::Type::publish) {
          auto p = codec::parse_publish(f);
          if (!p) co_return p.error();
          if (p->qos == 2) co_return fail(Errc::protocol, "a QoS 2 PUBLISH on " + std::string(p->topic) + " (no subscription asked for QoS 2)");
          Message m;
          m.topic = p->topic;
          m.payload = p->payload;
          m.qos = p->qos;
          m.retained = p->retain;
          m.response_topic = p->props.response_topic;
          m.correlation_data = p->props.correlation_data;
          const auto id = p->id;
          const int qos = p->qos;
          if (!inbox.try_send(boost::system::error_code{}, std::move(m))) {
            // Full: stop reading until receive() makes room (back-pressure to the broker).
            // `m` is untouched by a failed try_send. The PUBACKs queued so far leave on write_soon's
            // timer meanwhile.
            auto [ec] = co_await inbox.async_send(boost::system::error_code{}, std::move(m), use_tuple);
            if (ec || !c.open()) co_return fail(Errc::cancelled, "the client is closed");
          }
          if (qos == 1) {
            codec::puback(wbuf, id);
            write_soon();
          }
        } else if (f.type == codec::Type::puback) {
          auto a = codec::parse_ack(f);
          if (!a) co_return a.error();
          on_puback(*a);
        } else if (f.type == codec::Type::suback || f.type == codec::Type::unsuback) {
          auto a = codec::parse_ack(f);
          if (!a) co_return a.error();
          on_suback(*a);
        } else if (f.type == codec::Type::pingresp) {
        } else if (f.type == codec::Type::disconnect) {
          auto d = codec::parse_disconnect(f);
          if (!d) co_return d.error();
          std::string why = "the broker disconnected " + reason_text(d->reason);
          if (!d->props.reason_string.empty()) why += ": " + std::string(d->props.reason_string);
          co_return fail(Errc::io, why);
        } else {
          co_return fail(Errc::protocol, "unexpected MQTT packet type " + std::to_string(static_cast<int>(f.type)) + " from the broker");
        }
      }
      if (at) {
        c.in.erase(0, at);
        at = 0;
      }
      const auto have = c.in.size();
      const std::size_t chunk = 17 * 1024;  // a TLS record
      c.in.resize(have + chunk);
      auto [ec, n] = co_await c.read_some(asio::buffer(c.in.data() + have, chunk));
      c.in.resize(have + n);
      if (ec) co_return fail(Errc::io, ec == asio::error::eof ? std::string("the broker closed the connection") : "reading: " + ec.message());
      last_read = Clock::now();
    }
  }

  asio::awaitable<Result<void>> write_loop(std::shared_ptr<Conn> c) {
    co_await asio::this_coro::throw_if_cancelled(false);
    std::string sending;
    for (;;) {
      if (!c->open()) co_return fail(Errc::io, "the connection is closed");
      if (wbuf.empty() || !write_due) {
        // PUBACKs queued during the last write wait for write_soon's timer, or for the next packet
        // that is due: writing them at once would be a write per message again.
        if (wbuf.empty() && flushed) flushed->complete({});
        write_wake.expires_at(Clock::time_point::max());
        co_await write_wake.async_wait(use_tuple);
        continue;
      }
      write_due = false;
      sending.clear();
      sending.swap(wbuf);
      auto [ec, n] = co_await c->write(asio::buffer(sending));
      if (ec) {
        finish(*c);
        co_return fail(Errc::io, "writing: " + ec.message());
      }
      last_write = Clock::now();
      if (sending.capacity() > (1u << 20)) std::string().swap(sending);  // a burst's buffer goes back
    }
  }

  asio::awaitable<Result<void>> keepalive_loop(std::shared_ptr<Conn> c) {
    co_await asio::this_coro::throw_if_cancelled(false);
    auto& t = keepalive_timer;
    const auto period = std::max<std::chrono::milliseconds>(keepalive / 2, std::chrono::milliseconds(500));
    for (;;) {
      if (!c->open()) co_return fail(Errc::io, "the connection is closed");
      if (keepalive.count() == 0) t.expires_at(Clock::time_point::max());
      else t.expires_after(period);
      co_await t.async_wait(use_tuple);
      if (!c->open()) co_return fail(Errc::io, "the connection is closed");
      if (keepalive.count() == 0) continue;
      const auto now = Clock::now();
      if (now - last_read > keepalive * 3 / 2) {
        finish(*c);
        co_return fail(Errc::timeout, "nothing from the broker for " + std::to_string((keepalive * 3 / 2).count()) + " s");
      }
      if (now - last_write >= keepalive / 2) {
        codec::pingreq(wbuf);
        wake_writer();
      }
    }
  }

  /// Runs connections until the client is closed, starting with `c` (already up()): each lost one
  /// is replaced with backoff.
  asio::awaitable<void> session(std::shared_ptr<Conn> c) {
    auto self = shared_from_this();
    Backoff backoff(options.min_retry, options.max_retry);
    for (;;) {
      auto ended = co_await (read_loop(c) || write_loop(c) || keepalive_loop(c));
      std::string cause = std::visit([](auto& r) { return r ? std::string("closed") : r.error().message(); }, ended);
      down(cause);
      if (closing) break;
      log::info("mqtt ", name(), ": connection lost: ", cause);
      if (options.on_connection_lost) options.on_connection_lost(cause);
      backoff.reset();
      for (;;) {
        retry_wake.expires_after(backoff.next());
        co_await retry_wake.async_wait(use_tuple);
        if (closing) break;
        auto next = co_await attempt();
        if (closing) {
          if (next) (*next)->close();
          break;
        }
        if (next) {
          c = std::move(*next);
          break;
        }
        log::info("mqtt ", name(), ": reconnecting: ", next.error().message());
      }
      if (closing) break;
      up(c);
    }
    session_running = false;
  }

  void close() {
    closing = true;
    if (conn) finish(*conn);
    retry_wake.cancel();
    inbox.close();
  }
};

class AsioClient final : public Client {
 public:
  explicit AsioClient(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  ~AsioClient() override { impl_->close(); }

  asio::awaitable<Result<void>> connect() override {
    auto impl = impl_;
    if (impl->is_connected || impl->session_running) co_return Result<void>{};
    Backoff backoff(impl->options.min_retry, impl->options.max_retry);
    for (unsigned attempt = 1;; ++attempt) {
      auto c = co_await impl->attempt();
      auto cs = co_await asio::this_coro::cancellation_state;
      if (cs.cancelled() != asio::cancellation_type::none || impl->closing) {
        if (c) (*c)->close();
        co_return fail(Errc::cancelled, "connecting: cancelled");
      }
      if (c) {
        impl->session_running = true;
        impl->up(*c);
        asio::co_spawn(impl->ex, impl->session(std::move(*c)), asio::detached);
        co_return Result<void>{};
      }
      if (impl->options.connect_attempts && attempt >= impl->options.connect_attempts) co_return c.error();
      const auto delay = backoff.next();
      log::info("mqtt ", impl->name(), ": ", c.error().message(), "; retrying in ", delay.count(), " ms");
      asio::steady_timer timer(impl->ex, delay);
      co_await timer.async_wait(use_tuple);
      auto after = co_await asio::this_coro::cancellation_state;
      if (after.cancelled() != asio::cancellation_type::none || impl->closing) co_return fail(Errc::cancelled, "connecting: cancelled");
    }
  }

  asio::awaitable<Result<void>> publish(const Message& msg) override {
    auto impl = impl_;
    auto w = std::make_shared<Waiter>(impl->ex);
    std::string what = "publishing to " + msg.topic;
    if (auto r = impl->queue(msg, w); !r) co_return r;
    co_return co_await outcome(w, what, std::chrono::milliseconds(0));
  }

  Result<void> enqueue(const Message& msg) override { return impl_->queue(msg, nullptr); }

  asio::awaitable<Result<void>> subscribe(const std::string& filter_arg, int qos) override {
    std::string filter = filter_arg;  // read before the first suspension (see client.hpp)
    auto impl = impl_;
    impl->remember(filter, qos);
    co_return co_await sub(filter, qos, false);
  }

  asio::awaitable<Result<void>> unsubscribe(const std::string& filter_arg) override {
    std::string filter = filter_arg;
    auto impl = impl_;
    std::erase_if(impl->subscriptions, [&](auto& s) { return s.first == filter; });
    co_return co_await sub(filter, 0, true);
  }

  asio::awaitable<Result<Message>> receive() override {
    auto impl = impl_;
    auto [ec, msg] = co_await impl->inbox.async_receive(use_tuple);
    if (ec) co_return fail(Errc::cancelled, "receiving MQTT messages: " + ec.message());
    co_return std::move(msg);
  }

  std::optional<Message> try_receive() override {
    std::optional<Message> out;
    impl_->inbox.try_receive([&](boost::system::error_code ec, Message m) {
      if (!ec) out = std::move(m);
    });
    return out;
  }

  asio::awaitable<void> disconnect() override {
    auto impl = impl_;
    impl->closing = true;
    impl->retry_wake.cancel();
    if (impl->is_connected) {
      // What is queued goes first (bounded: a broker that stopped answering does not hold us).
      impl->drained = std::make_shared<Waiter>(impl->ex);
      impl->check_drained();
      auto drained = co_await outcome(impl->drained, "disconnecting", std::chrono::seconds(2));
      if (!drained) log::debug("mqtt ", impl->name(), ": ", drained.error().message(), " (messages still in flight)");
      if (impl->is_connected) {
        impl->flushed = std::make_shared<Waiter>(impl->ex);
        codec::disconnect(impl->wbuf, 0);
        impl->wake_writer();
        auto sent = co_await outcome(impl->flushed, "disconnecting", std::chrono::seconds(2));
        if (!sent) log::debug("mqtt ", impl->name(), ": ", sent.error().message());
      }
    }
    impl->is_connected = false;
    if (impl->conn) impl->finish(*impl->conn);
  }

  bool connected() const override { return impl_->is_connected; }
  const Options& options() const override { return impl_->options; }

 private:
  asio::awaitable<Result<void>> sub(const std::string& filter, int qos, bool unsub) {
    auto impl = impl_;
    std::string what = (unsub ? "unsubscribing from " : "subscribing to ") + filter;
    if (!impl->is_connected) co_return fail(Errc::io, what + ": not connected");
    auto w = std::make_shared<Waiter>(impl->ex);
    if (!impl->send_sub(filter, qos, 0, unsub, what, w)) co_return fail(Errc::io, what + ": no packet identifier free");
    co_return co_await outcome(w, what, impl->options.ack_timeout);
  }

  std::shared_ptr<Impl> impl_;
};

}  // namespace

Result<std::unique_ptr<Client>> make_asio_client(asio::any_io_executor ex, Options options) {
  if (!options.persistence_dir.empty())
    return fail(Errc::unsupported, "mqtt client " + options.client_id +
                                       ": the asio engine keeps messages in memory; a persistence directory needs Engine::paho");
  auto ep = parse_uri(options.server_uri);
  if (!ep) return ep.error();
  auto impl = std::make_shared<Impl>(std::move(ex), std::move(options), std::move(*ep));
  if (impl->endpoint.tls) {
    const Options& o = impl->options;
    impl->tls.emplace(ssl::context::tls_client);
    auto& ctx = *impl->tls;
    boost::system::error_code ec;
    ctx.set_verify_mode(ssl::verify_peer, ec);
    auto load = [&](const std::string& what, const std::string& path, auto fn) -> Result<void> {
      if (path.empty()) return {};
      fn(path, ec);
      if (ec) return fail(Errc::invalid_argument, "mqtt client " + o.client_id + ": " + what + " " + path + ": " + ec.message());
      return {};
    };
    if (auto r = load("CA file", o.ca_file, [&](auto& f, auto& e) { ctx.load_verify_file(f, e); }); !r) return r.error();
    if (auto r = load("certificate", o.cert_file, [&](auto& f, auto& e) { ctx.use_certificate_chain_file(f, e); }); !r)
      return r.error();
    if (auto r = load("key", o.key_file, [&](auto& f, auto& e) { ctx.use_private_key_file(f, ssl::context::pem, e); }); !r)
      return r.error();
  }
  return std::unique_ptr<Client>(new AsioClient(std::move(impl)));
}

}  // namespace tern::mqtt
