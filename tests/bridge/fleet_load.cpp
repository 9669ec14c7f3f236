// tern-fleet-load: N simulated device sessions (MQTT 5 over TLS with client certificates) driven by
// ONE thread and ONE event loop, for scripts/bench-fleet. Not an agent: each session is a TCP socket,
// an OpenSSL SSL object (released buffers while idle) and a small MQTT codec of our own (CONNECT,
// SUBSCRIBE, PUBLISH QoS 1, PUBACK, PINGREQ, DISCONNECT). The SSL objects are driven directly
// (non-blocking SSL_read/SSL_write, Asio only waits for readiness), so an idle session costs a few
// KiB instead of the 34 KiB of buffers an asio::ssl::stream keeps.
//
// Device certificates are minted in memory at connect time (CN=device-N, one shared P-256 key,
// signed with CERTS/ca.key), so 50,000 devices need no 50,000 files. The operator is a
// tern::mqtt::Client (Paho; one client) with CERTS/operator.crt, for MQTT 5 request/response.
//
//   tern-fleet-load URI SERVICES_URI CERTS N [--broker-pid P] [--db-pid P] [--sources K] [--handshakes H]
//
// Phases, one line of key=value figures on stdout after each:
//   connected  every session has its TLS handshake, CONNACK and SUBACK (tern/devices/ID/deployment)
//   baseline   each device publishes 5 statuses (retained, QoS 1); one consumer on the services
//              listener (the bridge's identity) receives all 5N. No bridge runs yet. The retained
//              statuses are then cleared.
//   -- then the program reads one line "go [PID...]" on stdin: the caller has started the bridges
//      (their PIDs are measured from now on) --
//   deployed   devices preauthorized (not measured); a deployment for all is created: until every
//              device has received its retained deployment
//   ingested   each device publishes 5 statuses at once (as in the baseline): until the bridges'
//              retained summary says finished with N successes
// Every line has the phase's wall time and the CPU time of this process, the broker, PostgreSQL
// (--db-pid: its postmaster and backends) and the bridges in it, and the broker's write calls, so
// the caller can show that the load side is not the bottleneck and what is.
// Any failure (a refused handshake, a dropped session, a refused publish) ends the program with an
// error naming the device; nothing is retried silently.
#include "common/log.hpp"
#include "common/mqtt/client.hpp"
#include "common/mqtt/codec.hpp"
#include "common/protocol.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <netinet/in.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace asio = boost::asio;
using asio::ip::tcp;
using namespace tern;
using Clock = std::chrono::steady_clock;

namespace {

[[noreturn]] void fatal(const std::string& what) {
  std::cerr << "tern-fleet-load: " << what << std::endl;
  std::_Exit(1);
}

std::string ssl_errors() {
  std::string s;
  while (auto e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    s += s.empty() ? "" : "; ";
    s += buf;
  }
  return s.empty() ? "unknown TLS error" : s;
}

// --- measurements -------------------------------------------------------------------------------

/// /proc/{pid}/{file}; pid 0 is this process.
std::string proc_path(int pid, const char* file) {
  return "/proc/" + (pid ? std::to_string(pid) : std::string("self")) + "/" + file;
}

/// Fields 3 to 17 of a /proc/{pid}/stat file (state, ppid, ..., utime, stime, cutime, cstime), as numbers
/// (state as 0): field k is [k - 3]. Empty if the process is gone.
std::vector<long long> stat_fields(const std::string& path) {
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), {});
  auto p = text.rfind(')');
  if (p == std::string::npos) return {};
  std::istringstream rest(text.substr(p + 2));
  std::vector<long long> f;
  std::string field;
  for (int i = 3; i <= 17 && rest >> field; ++i) f.push_back(i == 3 ? 0 : std::stoll(field));
  return f.size() == 15 ? f : std::vector<long long>{};
}

std::int64_t ticks_to_ms(long long ticks) { return ticks * 1000 / ::sysconf(_SC_CLK_TCK); }

/// CPU time (user + system) of a process in milliseconds, from /proc (0 if it is gone).
std::int64_t cpu_ms(int pid) {
  auto f = stat_fields(proc_path(pid, "stat"));
  return f.empty() ? 0 : ticks_to_ms(f[14 - 3] + f[15 - 3]);
}

/// CPU time of a process and all its descendants, with the children they have reaped: PostgreSQL's
/// postmaster and its backends.
std::int64_t tree_cpu_ms(int root) {
  std::map<long long, std::vector<long long>> children;
  std::map<long long, long long> ticks;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    const std::string name = e.path().filename();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    auto f = stat_fields(e.path() / "stat");
    if (f.empty()) continue;
    const long long pid = std::stoll(name);
    children[f[4 - 3]].push_back(pid);
    ticks[pid] = f[14 - 3] + f[15 - 3] + f[16 - 3] + f[17 - 3];
  }
  long long sum = 0;
  std::vector<long long> todo{root};
  while (!todo.empty()) {
    const long long pid = todo.back();
    todo.pop_back();
    sum += ticks[pid];
    for (long long c : children[pid]) todo.push_back(c);
  }
  return ticks_to_ms(sum);
}

/// The number after `key` in a "key value" file of /proc/{pid} (0 if it is missing).
std::int64_t proc_field(int pid, const char* file, std::string_view key) {
  std::ifstream in(proc_path(pid, file));
  std::string line;
  while (std::getline(in, line))
    if (line.starts_with(key)) return std::stoll(line.substr(key.size()));
  return 0;
}

std::int64_t rss_kib(int pid) { return proc_field(pid, "status", "VmRSS:"); }

/// write(2) calls the process has made (/proc/{pid}/io; the broker writes each MQTT packet it
/// sends with its own write, so this counts its packets out, and each one is its costliest work).
std::int64_t write_calls(int pid) { return proc_field(pid, "io", "syscw:"); }

std::int64_t ms_since(Clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
}

/// CPU of this process, the broker and the bridges over one phase.
struct Meter {
  std::vector<int> bridges;
  int broker = 0;
  int db = 0;  // PostgreSQL's postmaster, if the bridges use it
  Clock::time_point t0;
  std::int64_t self0 = 0, broker0 = 0, broker_writes0 = 0, db0 = 0;
  std::vector<std::int64_t> bridge0;

  void start() {
    t0 = Clock::now();
    self0 = cpu_ms(0);
    broker0 = broker ? cpu_ms(broker) : 0;
    broker_writes0 = broker ? write_calls(broker) : 0;
    db0 = db ? tree_cpu_ms(db) : 0;
    bridge0.clear();
    for (int b : bridges) bridge0.push_back(cpu_ms(b));
  }
  /// "ms=T load_cpu_ms=C broker_cpu_ms=B broker_writes=W db_cpu_ms=D bridge_cpu_ms=X,Y"
  std::string line() const {
    std::string s = "ms=" + std::to_string(ms_since(t0)) + " load_cpu_ms=" + std::to_string(cpu_ms(0) - self0);
    if (broker) {
      s += " broker_cpu_ms=" + std::to_string(cpu_ms(broker) - broker0);
      s += " broker_writes=" + std::to_string(write_calls(broker) - broker_writes0);
    }
    if (db) s += " db_cpu_ms=" + std::to_string(tree_cpu_ms(db) - db0);
    if (!bridges.empty()) {
      s += " bridge_cpu_ms=";
      for (std::size_t i = 0; i < bridges.size(); ++i)
        s += (i ? "," : "") + std::to_string(cpu_ms(bridges[i]) - bridge0[i]);
    }
    return s;
  }
};

// --- certificates minted in memory --------------------------------------------------------------

struct Minter {
  X509* ca = nullptr;
  EVP_PKEY* ca_key = nullptr;
  EVP_PKEY* key = nullptr;  // one key for every device (only the certificate names the device)
  std::uint64_t serial_base = 0;

  explicit Minter(const std::string& dir) {
    auto read = [&](const std::string& name, auto fn) {
      FILE* f = std::fopen((dir + "/" + name).c_str(), "r");
      if (!f) fatal("cannot open " + dir + "/" + name + " (make the PKI with scripts/gen-certs)");
      auto* v = fn(f);
      std::fclose(f);
      if (!v) fatal("cannot read " + dir + "/" + name + ": " + ssl_errors());
      return v;
    };
    ca = read("ca.crt", [](FILE* f) { return PEM_read_X509(f, nullptr, nullptr, nullptr); });
    ca_key = read("ca.key", [](FILE* f) { return PEM_read_PrivateKey(f, nullptr, nullptr, nullptr); });
    key = EVP_EC_gen("P-256");
    if (!key) fatal("generating a device key: " + ssl_errors());
    serial_base = std::random_device{}() * 1000003ULL + 1;
  }

  /// A certificate with CN=cn signed by the fleet CA; the caller owns it.
  X509* mint(const std::string& cn, std::uint64_t n) const {
    X509* x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set_uint64(X509_get_serialNumber(x), serial_base + n);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 30L * 86400);
    X509_NAME* name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("Tern"), -1, -1, 0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1,
                               -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(ca));
    X509_set_pubkey(x, key);
    if (X509_sign(x, ca_key, EVP_sha256()) == 0) fatal("signing a device certificate: " + ssl_errors());
    return x;
  }
};

// --- MQTT 5 packets (common/mqtt/codec.hpp, the bridge's own client's codec) ---------------------

namespace codec = tern::mqtt::codec;

std::string connect_packet(const std::string& client_id, std::uint16_t keepalive) {
  std::string out;
  codec::ConnectParams p;
  p.client_id = client_id;  // identity from the certificate
  p.keepalive = keepalive;
  p.clean_start = true;     // no properties: session expiry 0, receive maximum 65535
  codec::connect(out, p);
  return out;
}
std::string subscribe_packet(std::uint16_t pid, const std::string& filter) {
  std::string out;
  codec::subscribe(out, pid, filter, 1, 0);  // QoS 1, retained messages sent on subscribe
  return out;
}
std::string publish_packet(std::uint16_t pid, const std::string& topic, const std::string& payload, bool retain) {
  std::string out;
  codec::set_packet_id(out, codec::publish(out, topic, payload, 1, retain), pid);
  return out;
}
std::string puback_packet(std::uint16_t pid) {
  std::string out;
  codec::puback(out, pid);
  return out;
}

/// A received PUBLISH as the phases see it: its payload in `body`.
struct Packet {
  std::uint8_t flags = 0;
  std::string_view body;
};

// --- sessions -----------------------------------------------------------------------------------

struct Load;

struct Session {
  Session(asio::io_context& io, std::string cid) : id(std::move(cid)), sock(io) {}
  ~Session() {
    if (ssl) SSL_free(ssl);
  }
  std::string id;
  tcp::socket sock;
  SSL* ssl = nullptr;
  std::string in;              // bytes not parsed yet
  std::string out, sending;    // queued, being written
  bool writing = false, closing = false;
  bool connacked = false, subscribed = false;
  std::uint16_t next_pid = 1;
  std::string deployment;      // the last deployment id received (empty: none)
  std::function<void(Session&, const Packet&)> on_publish;

  std::uint16_t pid() {
    if (next_pid == 0) next_pid = 1;
    return next_pid++;
  }
};

struct Load {
  asio::io_context io{1};
  SSL_CTX* ctx = nullptr;          // devices: the fleet CA's broker
  SSL_CTX* services_ctx = nullptr; // the consumer: bridge.crt on the services listener
  std::unique_ptr<Minter> minter;
  tcp::endpoint devices_ep, services_ep;
  // Handshakes in flight: Mosquitto listens with a backlog of 100; more makes SYNs overflow and wait
  // for TCP's one-second retransmission.
  int n = 0, sources = 1, handshakes = 64;
  std::vector<std::unique_ptr<Session>> sessions;
  std::uint64_t acks = 0, refused_acks = 0;  // PUBACKs of device publishes
  int deployments_received = 0;
  Meter meter;

  std::string device_id(int i) const { return "device-" + std::to_string(i + 1); }
};

Load* g = nullptr;

// Writes everything queued on the session; one writer per session at a time.
asio::awaitable<void> flush(Session& s) {
  s.writing = true;
  while (!s.out.empty() && !s.closing) {
    s.sending.swap(s.out);
    s.out.clear();
    std::size_t off = 0;
    while (off < s.sending.size()) {
      ERR_clear_error();
      int r = SSL_write(s.ssl, s.sending.data() + off, static_cast<int>(s.sending.size() - off));
      if (r > 0) {
        off += static_cast<std::size_t>(r);
        continue;
      }
      int e = SSL_get_error(s.ssl, r);
      boost::system::error_code ec;
      if (e == SSL_ERROR_WANT_WRITE)
        co_await s.sock.async_wait(tcp::socket::wait_write, asio::redirect_error(asio::use_awaitable, ec));
      else if (e == SSL_ERROR_WANT_READ)
        co_await s.sock.async_wait(tcp::socket::wait_read, asio::redirect_error(asio::use_awaitable, ec));
      else
        fatal(s.id + ": writing to the broker failed: " + ssl_errors());
      if (ec) fatal(s.id + ": writing to the broker failed: " + ec.message());
    }
    s.sending.clear();
  }
  s.writing = false;
}

void send(Session& s, std::string bytes) {
  s.out += bytes;
  if (!s.writing) asio::co_spawn(g->io, flush(s), asio::detached);
}

void on_packet(Session& s, const codec::Frame& f) {
  auto check = [&](const auto& r) {
    if (!r) fatal(s.id + ": " + r.error().message());
  };
  switch (f.type) {
    case codec::Type::connack: {
      auto c = codec::parse_connack(f);
      check(c);
      if (c->reason != 0) fatal(s.id + ": the broker refused the connection, reason code " + std::to_string(c->reason));
      s.connacked = true;
      break;
    }
    case codec::Type::suback: {
      auto a = codec::parse_ack(f);
      check(a);
      if (a->reasons.front() >= 0x80) fatal(s.id + ": subscription refused");
      s.subscribed = true;
      break;
    }
    case codec::Type::publish: {
      auto p = codec::parse_publish(f);
      check(p);
      if (s.on_publish) s.on_publish(s, Packet{f.flags, p->payload});
      if (p->qos > 0) send(s, puback_packet(p->id));
      break;
    }
    case codec::Type::puback: {
      ++g->acks;
      auto a = codec::parse_ack(f);
      check(a);
      if (a->reasons.front() >= 0x80) {
        ++g->refused_acks;
        fatal(s.id + ": publish refused, reason code " + std::to_string(a->reasons.front()));
      }
      break;
    }
    case codec::Type::pingresp:
      break;
    case codec::Type::disconnect: {  // from the broker
      auto d = codec::parse_disconnect(f);
      fatal(s.id + ": the broker disconnected the session, reason code " + std::to_string(d ? d->reason : 0));
    }
    default:
      fatal(s.id + ": unexpected MQTT packet type " + std::to_string(static_cast<int>(f.type)));
  }
}

/// Reads what the socket has (waiting for it if nothing) and handles every complete packet.
/// Returns false when the connection is closed.
asio::awaitable<bool> read_some(Session& s) {
  // One buffer for every session (one thread; the bytes are copied out at once): 16 KiB in each
  // session's coroutine frame would cost 160 MB at 10,000 sessions.
  static char buf[16384];
  for (;;) {
    ERR_clear_error();
    int r = SSL_read(s.ssl, buf, sizeof buf);
    if (r > 0) {
      s.in.append(buf, static_cast<std::size_t>(r));
      std::size_t at = 0;
      for (;;) {
        codec::Frame f;
        auto used = codec::split(std::string_view(s.in).substr(at), f, 1 << 20);
        if (!used) fatal(s.id + ": " + used.error().message());
        if (!*used) break;
        on_packet(s, f);
        at += *used;
      }
      s.in.erase(0, at);
      if (s.in.empty() && s.in.capacity() > 4096) s.in.shrink_to_fit();
      co_return true;
    }
    int e = SSL_get_error(s.ssl, r);
    boost::system::error_code ec;
    if (e == SSL_ERROR_WANT_READ)
      co_await s.sock.async_wait(tcp::socket::wait_read, asio::redirect_error(asio::use_awaitable, ec));
    else if (e == SSL_ERROR_WANT_WRITE)
      co_await s.sock.async_wait(tcp::socket::wait_write, asio::redirect_error(asio::use_awaitable, ec));
    else
      co_return false;
    if (ec) co_return false;
  }
}

asio::awaitable<void> reader(Session& s) {
  for (;;) {
    const bool open = co_await read_some(s);  // not in the loop condition (g++ 12)
    if (!open) break;
  }
  if (!s.closing) fatal(s.id + ": the broker closed the session");
}

/// TCP connect (from one of the loopback source addresses), TLS handshake with `cert`, CONNECT,
/// SUBSCRIBE `filter`; returns when the SUBACK is in, then the session reads on its own.
asio::awaitable<void> open_session(Session& s, SSL_CTX* ctx, const tcp::endpoint& ep, int source, X509* cert,
                                   EVP_PKEY* key, const std::string& filter) {
  s.sock.open(tcp::v4());
  int one = 1;
  ::setsockopt(s.sock.native_handle(), IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
  // The whole 127/8 is local: spreading sessions over source addresses lifts the limit of about
  // 28,000 ephemeral ports per source address.
  s.sock.bind(tcp::endpoint(asio::ip::address_v4(0x7f000001u + static_cast<unsigned>(source)), 0));
  boost::system::error_code ec;
  co_await s.sock.async_connect(ep, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) fatal(s.id + ": connecting to " + ep.address().to_string() + ":" + std::to_string(ep.port()) + ": " + ec.message());
  s.sock.set_option(tcp::no_delay(true));
  s.sock.native_non_blocking(true);
  s.ssl = SSL_new(ctx);
  SSL_set_fd(s.ssl, s.sock.native_handle());
  if (cert && (SSL_use_certificate(s.ssl, cert) != 1 || SSL_use_PrivateKey(s.ssl, key) != 1))
    fatal(s.id + ": using its certificate: " + ssl_errors());
  for (;;) {
    ERR_clear_error();
    int r = SSL_connect(s.ssl);
    if (r == 1) break;
    int e = SSL_get_error(s.ssl, r);
    if (e == SSL_ERROR_WANT_READ)
      co_await s.sock.async_wait(tcp::socket::wait_read, asio::redirect_error(asio::use_awaitable, ec));
    else if (e == SSL_ERROR_WANT_WRITE)
      co_await s.sock.async_wait(tcp::socket::wait_write, asio::redirect_error(asio::use_awaitable, ec));
    else
      fatal(s.id + ": TLS handshake failed: " + ssl_errors());
    if (ec) fatal(s.id + ": TLS handshake failed: " + ec.message());
  }
  send(s, connect_packet(s.id, 600) + subscribe_packet(s.pid(), filter));
  while (!s.subscribed) {
    auto ok = co_await read_some(s);
    if (!ok) fatal(s.id + ": the broker closed the session before its SUBACK");
  }
  asio::co_spawn(g->io, reader(s), asio::detached);
}

asio::awaitable<void> connect_worker(int& next) {
  while (next < g->n) {
    const int i = next++;
    auto& s = *g->sessions[i];
    X509* cert = g->minter->mint(s.id, static_cast<std::uint64_t>(i));
    co_await open_session(s, g->ctx, g->devices_ep, i % g->sources, cert, g->minter->key,
                          std::string(protocol::topics::deployment(s.id)));
    X509_free(cert);  // the SSL object keeps its own reference
  }
}

/// Waits until `done()` holds, checking every few milliseconds (the event loop keeps running).
asio::awaitable<void> until(const std::function<bool()>& done, std::chrono::seconds limit, const std::string& what) {
  asio::steady_timer t(g->io);
  const auto deadline = Clock::now() + limit;
  while (!done()) {
    if (Clock::now() > deadline) fatal("timed out after " + std::to_string(limit.count()) + " s waiting for " + what);
    t.expires_after(std::chrono::milliseconds(5));
    co_await t.async_wait(asio::use_awaitable);
  }
}

/// Sends PINGREQ on every session every `period` (keepalive 600 s).
asio::awaitable<void> pinger(std::chrono::seconds period) {
  asio::steady_timer t(g->io);
  for (;;) {
    t.expires_after(period);
    co_await t.async_wait(asio::use_awaitable);
    for (auto& s : g->sessions)
      if (s->subscribed && !s->closing) send(*s, std::string("\xc0\x00", 2));
  }
}

std::string status_event(const std::string& dep, protocol::Status st, std::uint64_t seq) {
  protocol::StatusEvent e;
  e.deployment_id = dep;
  e.status = st;
  e.seq = seq;
  e.bytes = seq * 200;
  e.total = 1000;
  e.attempt = 1;
  e.time = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  return protocol::serialize(e);
}

const protocol::Status five[] = {protocol::Status::downloading, protocol::Status::downloading,
                                 protocol::Status::installing, protocol::Status::rebooting, protocol::Status::success};

/// Every device publishes its 5 statuses (retained, as the agent does) for `dep`.
void publish_five_each(const std::string& dep) {
  for (auto& s : g->sessions) {
    std::string batch;
    const auto topic = protocol::topics::status(s->id);
    std::uint64_t seq = 0;
    for (auto st : five) batch += publish_packet(s->pid(), topic, status_event(dep, st, ++seq), true);
    send(*s, std::move(batch));
  }
}

asio::awaitable<std::string> read_line(asio::posix::stream_descriptor& in, asio::streambuf& buf) {
  boost::system::error_code ec;
  co_await asio::async_read_until(in, buf, '\n', asio::redirect_error(asio::use_awaitable, ec));
  if (ec) fatal("reading the go line on stdin: " + ec.message());
  std::istream is(&buf);
  std::string line;
  std::getline(is, line);
  co_return line;
}

mqtt::Options operator_options(const std::string& uri, const std::string& certs) {
  mqtt::Options o;
  o.server_uri = uri;
  o.client_id = "tern-fleet-load-operator";
  o.ca_file = certs + "/ca.crt";
  o.cert_file = certs + "/operator.crt";
  o.key_file = certs + "/operator.key";
  o.clean_start = true;
  o.session_expiry = std::chrono::seconds(0);
  o.connect_attempts = 5;
  o.inbox_capacity = 1 << 16;
  return o;
}

/// Sends a command and waits for its reply on `replies`; fatal unless it says ok.
asio::awaitable<std::string> command(mqtt::Client& op, const std::string& replies, const std::string& topic,
                                     const std::string& body) {
  mqtt::Message m;
  m.topic = topic;
  m.payload = body;
  m.response_topic = replies;
  auto r = op.enqueue(m);
  if (!r) fatal("operator: " + r.error().message());
  for (;;) {
    auto reply = co_await op.receive();
    if (!reply) fatal("operator: " + reply.error().message());
    if (reply->topic != replies) continue;
    if (reply->payload.find("\"ok\":true") == std::string::npos) fatal(topic + " refused: " + reply->payload);
    co_return reply->payload;
  }
}

asio::awaitable<void> run(const std::string& services_uri, const std::string& certs) {
  auto& L = *g;
  // 1. Connect every device session.
  for (int i = 0; i < L.n; ++i) L.sessions.push_back(std::make_unique<Session>(L.io, L.device_id(i)));
  L.meter.start();
  {
    int next = 0, running = 0;
    for (int w = 0; w < std::min(L.handshakes, L.n); ++w) {
      ++running;
      asio::co_spawn(L.io, connect_worker(next), [&](std::exception_ptr e) {
        if (e) std::rethrow_exception(e);
        --running;
      });
    }
    co_await until([&] { return running == 0; }, std::chrono::seconds(3600), "the sessions to connect");
  }
  std::cout << "connected sessions=" << L.n << " " << L.meter.line() << " load_rss_kib=" << rss_kib(0)
            << " broker_rss_kib=" << (L.meter.broker ? rss_kib(L.meter.broker) : 0) << std::endl;
  asio::co_spawn(L.io, pinger(std::chrono::seconds(240)), asio::detached);

  // 2. Baseline: 5N retained statuses to one consumer, no bridge.
  std::int64_t received = 0;
  Session consumer(L.io, "tern-fleet-load-consumer");
  consumer.on_publish = [&](Session&, const Packet& p) {
    if (!p.body.empty()) ++received;
  };
  {
    FILE* f = nullptr;
    X509* cert = nullptr;
    EVP_PKEY* key = nullptr;
    if ((f = std::fopen((certs + "/bridge.crt").c_str(), "r"))) {
      cert = PEM_read_X509(f, nullptr, nullptr, nullptr);
      std::fclose(f);
    }
    if ((f = std::fopen((certs + "/bridge.key").c_str(), "r"))) {
      key = PEM_read_PrivateKey(f, nullptr, nullptr, nullptr);
      std::fclose(f);
    }
    if (!cert || !key) fatal("cannot read " + certs + "/bridge.crt and bridge.key");
    co_await open_session(consumer, L.services_ctx, L.services_ep, 0, cert, key, "tern/devices/+/status");
    X509_free(cert);
    EVP_PKEY_free(key);
  }
  const std::int64_t want = 5LL * L.n;
  L.acks = 0;
  L.meter.start();
  publish_five_each("baseline");
  co_await until([&] { return received >= want && L.acks >= static_cast<std::uint64_t>(want); },
                 std::chrono::seconds(3600), "the baseline statuses");
  std::cout << "baseline msgs=" << want << " " << L.meter.line() << std::endl;
  // Clear the retained statuses, so the bridges start from nothing.
  L.acks = 0;
  for (auto& s : L.sessions) send(*s, publish_packet(s->pid(), protocol::topics::status(s->id), "", true));
  co_await until([&] { return L.acks >= static_cast<std::uint64_t>(L.n); }, std::chrono::seconds(3600),
                 "the cleared statuses");
  consumer.closing = true;
  send(consumer, std::string("\xe0\x00", 2));

  // 3. The caller starts the bridges and says "go PID...".
  asio::posix::stream_descriptor in(L.io, ::dup(0));
  asio::streambuf buf;
  std::cout << "waiting for go" << std::endl;
  auto go = co_await read_line(in, buf);
  {
    std::istringstream words(go);
    std::string w;
    words >> w;
    if (w != "go") fatal("expected 'go [PID...]' on stdin, got '" + go + "'");
    int pid;
    while (words >> pid) L.meter.bridges.push_back(pid);
  }
  std::string rss_idle;
  for (int b : L.meter.bridges) rss_idle += (rss_idle.empty() ? "" : ",") + std::to_string(rss_kib(b));

  auto op = mqtt::Client::create(L.io.get_executor(), operator_options(services_uri, certs)).value();
  auto rc = co_await op->connect();
  if (!rc) fatal("operator: " + rc.error().message());
  const std::string replies = "tern/fleet/replies/fleet-load";
  const std::string dep_id =
      "bench-" + std::to_string(std::chrono::system_clock::now().time_since_epoch().count() / 1000000);
  auto s1 = co_await op->subscribe(replies, 1);
  auto s2 = co_await op->subscribe(protocol::topics::fleet_deployment(dep_id), 1);
  if (!s1 || !s2) fatal("operator: subscribing failed");
  for (int first = 0; first < L.n; first += 5000) {
    std::string ids;
    for (int i = first; i < std::min(L.n, first + 5000); ++i) ids += (ids.empty() ? "\"" : ",\"") + L.device_id(i) + "\"";
    co_await command(*op, replies, "tern/fleet/devices/preauthorize", "{\"devices\":[" + ids + "]}");
  }

  // 4. Fan-out: create -> every device has its retained deployment.
  for (auto& s : L.sessions)
    s->on_publish = [](Session& s, const Packet& p) {
      if (p.body.empty()) return;  // cleared after the device's success
      auto d = protocol::parse_deployment(p.body);
      if (!d) fatal(s.id + ": " + d.error().message());
      if (s.deployment.empty()) ++g->deployments_received;
      s.deployment = d->deployment_id;
    };
  L.meter.start();
  co_await command(*op, replies, std::string(protocol::topics::deployments_create),
                   "{\"id\":\"" + dep_id + "\",\"artifact_name\":\"bench-1\",\"all\":true}");
  co_await until([&] { return L.deployments_received == L.n; }, std::chrono::seconds(3600), "the deployments");
  std::cout << "deployed devices=" << L.n << " " << L.meter.line() << std::endl;

  // 5. Ingest: 5N statuses at once; until the summary says finished with N successes.
  L.acks = 0;
  L.meter.start();
  for (auto& s : L.sessions) {
    std::string batch;
    const auto topic = protocol::topics::status(s->id);
    std::uint64_t seq = 0;
    for (auto st : five) batch += publish_packet(s->pid(), topic, status_event(s->deployment, st, ++seq), true);
    send(*s, std::move(batch));
  }
  const std::string success = "\"success\":" + std::to_string(L.n);
  for (;;) {
    auto m = co_await op->receive();
    if (!m) fatal("operator: " + m.error().message());
    if (m->topic == replies) continue;
    if (m->payload.find("\"state\":\"finished\"") == std::string::npos) continue;
    if (m->payload.find(success) == std::string::npos) fatal("finished without " + std::to_string(L.n) + " successes: " + m->payload);
    break;
  }
  const auto ingest_line = L.meter.line();
  std::string rss_after;
  for (int b : L.meter.bridges) rss_after += (rss_after.empty() ? "" : ",") + std::to_string(rss_kib(b));
  std::cout << "ingested msgs=" << want << " " << ingest_line << " acks=" << L.acks
            << " bridge_rss_idle_kib=" << rss_idle << " bridge_rss_kib=" << rss_after
            << " load_rss_kib=" << rss_kib(0) << " broker_rss_kib=" << (L.meter.broker ? rss_kib(L.meter.broker) : 0)
            << std::endl;
  co_await op->disconnect();
  for (auto& s : L.sessions) {
    s->closing = true;
    SSL_write(s->ssl, "\xe0\x00", 2);  // DISCONNECT, best effort: the process ends now
  }
  std::cout.flush();
  std::_Exit(0);
}

tcp::endpoint endpoint_of(const std::string& uri) {
  // ssl://HOST:PORT
  auto p = uri.find("://");
  auto hostport = p == std::string::npos ? uri : uri.substr(p + 3);
  auto c = hostport.rfind(':');
  if (c == std::string::npos) fatal("no port in " + uri);
  boost::system::error_code ec;
  auto addr = asio::ip::make_address(hostport.substr(0, c), ec);
  if (ec) fatal("'" + hostport.substr(0, c) + "' is not an IP address (in " + uri + ")");
  return {addr, static_cast<unsigned short>(std::stoi(hostport.substr(c + 1)))};
}

SSL_CTX* client_context(const std::string& ca_file) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx || SSL_CTX_load_verify_locations(ctx, ca_file.c_str(), nullptr) != 1)
    fatal("loading " + ca_file + ": " + ssl_errors());
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  // Idle sessions give their record buffers back; writes may be partial and retried from a new address.
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  return ctx;
}

}  // namespace

int main(int argc, char** argv) {
  log::set_program("tern-fleet-load");
  std::signal(SIGPIPE, SIG_IGN);
  auto usage = [] {
    std::cerr << "usage: tern-fleet-load URI SERVICES_URI CERTS N [--broker-pid P] [--db-pid P] [--sources K] [--handshakes H]\n";
    return 2;
  };
  if (argc < 5) return usage();
  Load L;
  g = &L;
  std::string uri = argv[1], services_uri = argv[2], certs = argv[3];
  L.n = std::atoi(argv[4]);
  for (int i = 5; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    int v = std::atoi(argv[i + 1]);
    if (k == "--broker-pid") L.meter.broker = v;
    else if (k == "--db-pid") L.meter.db = v;
    else if (k == "--sources") L.sources = std::max(1, v);
    else if (k == "--handshakes") L.handshakes = std::max(1, v);
    else return usage();
  }
  if (L.n <= 0) return usage();
  L.devices_ep = endpoint_of(uri);
  L.services_ep = endpoint_of(services_uri);
  L.minter = std::make_unique<Minter>(certs);
  L.ctx = client_context(certs + "/ca.crt");
  L.services_ctx = client_context(certs + "/ca.crt");

  asio::co_spawn(L.io, run(services_uri, certs), [](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      fatal(ex.what());
    }
  });
  L.io.run();
  return 0;
}
