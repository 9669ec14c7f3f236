// The artifact server. One translation unit on purpose (Beast + Asio + SSL compile cost).
//
// Everything runs on one strand: the accept loop, every session, stop(). Sessions register their
// socket so stop() can close them, and count themselves per client address for the caps. Responses are written as a Beast header followed by raw file
// bytes read with pread() into a fixed buffer, so memory does not grow with the file.
#include "broker-bridge/artifact_server.hpp"
#include "broker-bridge/byte_ranges.hpp"

#include "common/file.hpp"
#include "common/log.hpp"
#include "common/text.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include <fcntl.h>
#include <malloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <vector>

namespace tern::bridge {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

namespace {

constexpr std::size_t kChunk = 64 * 1024;
// Range-specs per request beyond which the whole file is sent (RFC 9110 lets a server ignore a
// Range header that asks for many small pieces). The agent asks for at most 100.
constexpr std::size_t kMaxRanges = 200;
constexpr auto kAwait = asio::as_tuple(asio::use_awaitable);
// Heap is trimmed when the open connections fall to half of a peak at least this high.
constexpr std::size_t kTrimPeak = 256;

std::string http_date(std::time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  const std::size_t n = std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return std::string(buf, n);
}

std::string hex(std::uint64_t v) {
  char buf[17];
  auto [p, ec] = std::to_chars(buf, buf + sizeof buf, v, 16);
  (void)ec;
  return std::string(buf, p);
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/// `s` with its %XX escapes decoded; nullopt for a malformed escape, or a backslash or control
/// character (escaped or not).
std::optional<std::string> percent_decoded(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '%') {
      if (i + 2 >= s.size()) return std::nullopt;
      const int hi = hex_digit(s[i + 1]), lo = hex_digit(s[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      c = static_cast<char>(hi * 16 + lo);
      i += 2;
    }
    if (c == '\\' || static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return std::nullopt;
    out += c;
  }
  return out;
}

/// The file name from "/artifacts/<name>[?query]", percent-decoded; nullopt if it is not a plain
/// file name in the root (subdirectories, "..", hidden files, control characters).
std::optional<std::string> file_name_of(std::string_view target) {
  constexpr std::string_view prefix = "/artifacts/";
  if (!target.starts_with(prefix)) return std::nullopt;
  target.remove_prefix(prefix.size());
  if (const auto q = target.find('?'); q != std::string_view::npos) target = target.substr(0, q);
  auto name = percent_decoded(target);
  if (!name || name->find('/') != std::string::npos || name->empty() || name->starts_with(".")) return std::nullopt;
  return name;
}

/// The relative path of a static file from "/a/b.js[?query]" ("/" and ".../" name index.html),
/// percent-decoded; nullopt for empty or hidden segments ("..", ".git"), backslashes, control
/// characters or more than 8 levels.
std::optional<std::string> static_path_of(std::string_view target) {
  if (!target.starts_with("/")) return std::nullopt;
  if (const auto q = target.find_first_of("?#"); q != std::string_view::npos) target = target.substr(0, q);
  auto decoded = percent_decoded(target.substr(1));
  if (!decoded) return std::nullopt;
  std::string path = std::move(*decoded);
  if (path.empty() || path.ends_with('/')) path += "index.html";
  int levels = 0;
  for (std::size_t start = 0; start <= path.size();) {
    auto slash = path.find('/', start);
    if (slash == std::string::npos) slash = path.size();
    const std::string_view seg(path.data() + start, slash - start);
    if (seg.empty() || seg.starts_with(".") || ++levels > 8) return std::nullopt;
    start = slash + 1;
  }
  return path;
}

const char* content_type_of(std::string_view name) {
  static constexpr std::pair<std::string_view, const char*> types[] = {
      {".html", "text/html; charset=utf-8"},  {".js", "text/javascript; charset=utf-8"},
      {".css", "text/css; charset=utf-8"},    {".json", "application/json"},
      {".png", "image/png"},                  {".svg", "image/svg+xml"},
      {".ico", "image/x-icon"},               {".txt", "text/plain; charset=utf-8"},
      {".md", "text/plain; charset=utf-8"},
  };
  for (auto& [ext, type] : types)
    if (name.ends_with(ext)) return type;
  return "application/octet-stream";
}

/// A boundary for one multipart answer: random, so it cannot be guessed into a file's bytes.
std::string make_boundary() {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  return "tern-" + hex(rng()) + hex(rng());
}

}  // namespace

struct ArtifactServer::Impl : std::enable_shared_from_this<ArtifactServer::Impl> {
  Impl(asio::any_io_executor ex, ArtifactServerOptions o)
      : strand(asio::make_strand(ex)), opts(std::move(o)), acceptor(strand) {}

  asio::strand<asio::any_io_executor> strand;
  ArtifactServerOptions opts;
  std::optional<ssl::context> tls;
  tcp::acceptor acceptor;
  bool stopped = false;

  // On the strand only.
  std::map<std::uint64_t, tcp::socket*> connections;
  std::map<asio::ip::address, std::size_t> per_address;
  std::size_t peak = 0;  // most connections open at once since the last trim
  std::uint64_t next_id = 0;

  std::atomic<std::uint64_t> total_bytes{0}, total_requests{0}, total_refused{0};
  std::atomic<std::size_t> open_connections{0};
  mutable std::mutex per_file_mutex;
  std::map<std::string, std::uint64_t> per_file;

  void count(const std::string& name, std::uint64_t n) {
    total_bytes += n;
    std::lock_guard lock(per_file_mutex);
    per_file[name] += n;
  }

  /// Asio keeps each socket's reactor state (about 200 bytes) in a pool that never shrinks. Made
  /// during a wave of connections, those objects land between the wave's short-lived allocations
  /// and pin their pages after the wave: 3,000 silent connections left 12 MB resident that
  /// malloc_trim could not return, though only 0.6 MB of it was in use. So the pool is filled up
  /// front, for max_connections sockets (as far as the open-files limit allows), in one run of
  /// memory that later waves reuse.
  void reserve_reactor_state() {
    std::vector<tcp::socket> warm;
    warm.reserve(opts.max_connections);
    boost::system::error_code ec;
    for (std::size_t i = 0; i < opts.max_connections; ++i) {
      tcp::socket s(strand);
      s.open(tcp::v4(), ec);  // registers with the reactor: one pooled state
      if (ec) break;          // out of descriptors: what we have is reserved
      warm.push_back(std::move(s));
    }
    warm.clear();  // closed: the states go back to the pool, next to each other
  }
  asio::awaitable<void> accept_loop();
  asio::awaitable<void> session(tcp::socket socket, asio::ip::address peer);
  /// The TLS handshake and the requests of a connection that has sent its first byte. Its own
  /// coroutine, so that its frame (TLS and HTTP state) is only allocated then: a silent connection
  /// holds just session()'s small frame.
  asio::awaitable<void> converse(tcp::socket& socket, const asio::ip::address& peer, std::uint64_t id);
  /// Whether a connection from `peer` fits under the caps; if so it is counted.
  bool admit(const asio::ip::address& peer);
  void release(std::uint64_t id, const asio::ip::address& peer);
  template <class Stream>
  asio::awaitable<void> serve(Stream& stream, beast::tcp_stream& tcp);
  template <class Stream>
  asio::awaitable<bool> respond(Stream& stream, beast::tcp_stream& tcp,
                                const http::request<http::empty_body>& req);
  template <class Stream>
  asio::awaitable<bool> simple(Stream& stream, beast::tcp_stream& tcp,
                               const http::request<http::empty_body>& req, http::status status,
                               const std::string& text);
};

asio::awaitable<void> ArtifactServer::Impl::accept_loop() {
  auto self = shared_from_this();
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(kAwait);
    if (stopped || ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
    if (ec) {
      log::warn("artifact server: accept failed: ", ec.message());
      if (ec == asio::error::no_descriptors) {
        // Out of file descriptors: wait a little instead of spinning on the same failure.
        asio::steady_timer t(strand, std::chrono::milliseconds(100));
        co_await t.async_wait(kAwait);
      }
      continue;
    }
    boost::system::error_code pec;
    const auto peer = socket.remote_endpoint(pec).address();
    if (pec || !admit(peer)) {
      ++total_refused;
      log::debug("artifact server: refusing a connection from ", peer.to_string(), " (",
                 pec ? pec.message() : "over the connection cap", ")");
      socket.close(pec);
      continue;
    }
    asio::co_spawn(strand, session(std::move(socket), peer), [self](std::exception_ptr e) {
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        log::warn("artifact server: connection failed: ", ex.what());
      }
    });
  }
}

bool ArtifactServer::Impl::admit(const asio::ip::address& peer) {
  if (connections.size() >= opts.max_connections) return false;
  auto& n = per_address[peer];
  if (n >= opts.max_connections_per_address) {
    if (n == 0) per_address.erase(peer);
    return false;
  }
  ++n;
  return true;
}

void ArtifactServer::Impl::release(std::uint64_t id, const asio::ip::address& peer) {
  connections.erase(id);
  open_connections = connections.size();
  if (auto it = per_address.find(peer); it != per_address.end() && --it->second == 0) per_address.erase(it);
  if (peak >= kTrimPeak && connections.size() <= peak / 2) {
    // A wave of connections (a fleet downloading, or a flood) has ended: give the freed heap back.
    ::malloc_trim(0);
    peak = connections.size();
  }
}

asio::awaitable<void> ArtifactServer::Impl::session(tcp::socket socket, asio::ip::address peer) {
  using namespace asio::experimental::awaitable_operators;
  auto self = shared_from_this();
  boost::system::error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);
  const std::uint64_t id = next_id++;
  connections[id] = &socket;
  open_connections = connections.size();
  peak = std::max(peak, connections.size());

  // Nothing but the socket until the client says something (no TLS state for silent clients).
  {
    asio::steady_timer deadline(strand, opts.handshake_timeout);
    auto first = co_await (socket.async_wait(tcp::socket::wait_read, kAwait) || deadline.async_wait(kAwait));
    const bool readable = first.index() == 0 && !std::get<0>(std::get<0>(first));
    if (!readable || stopped) {
      log::debug("artifact server: closing a connection from ", peer.to_string(), " that sent nothing");
      socket.close(ignored);
      release(id, peer);
      co_return;
    }
  }
  co_await converse(socket, peer, id);
}

asio::awaitable<void> ArtifactServer::Impl::converse(tcp::socket& socket, const asio::ip::address& peer,
                                                     std::uint64_t id) {
  boost::system::error_code ignored;
  if (!tls) {
    beast::tcp_stream stream(std::move(socket));
    connections[id] = &stream.socket();
    co_await serve(stream, stream);
    release(id, peer);
    co_return;
  }
  beast::ssl_stream<beast::tcp_stream> stream(std::move(socket), *tls);
  auto& tcp = beast::get_lowest_layer(stream);
  connections[id] = &tcp.socket();
  tcp.expires_after(opts.handshake_timeout);
  auto [hec] = co_await stream.async_handshake(ssl::stream_base::server, kAwait);
  if (hec) {
    log::debug("artifact server: TLS handshake with ", peer.to_string(), " failed: ", hec.message());
  } else {
    co_await serve(stream, tcp);
    if (tcp.socket().is_open()) {
      tcp.expires_after(std::chrono::seconds(2));
      auto [sec] = co_await stream.async_shutdown(kAwait);
      (void)sec;  // peers often close without close_notify
    }
  }
  tcp.socket().close(ignored);
  release(id, peer);
}

template <class Stream>
asio::awaitable<void> ArtifactServer::Impl::serve(Stream& stream, beast::tcp_stream& tcp) {
  beast::flat_buffer buffer(16 * 1024);
  for (bool first = true;; first = false) {
    http::request_parser<http::empty_body> parser;
    parser.header_limit(16 * 1024);
    // The first request header is part of getting started; later ones may wait for the client.
    tcp.expires_after(first ? opts.handshake_timeout : opts.idle_timeout);
    auto [ec, n] = co_await http::async_read(stream, buffer, parser, kAwait);
    if (ec == http::error::end_of_stream || ec == asio::ssl::error::stream_truncated) co_return;
    if (ec) {
      if (ec != asio::error::operation_aborted && ec != beast::error::timeout &&
          ec != asio::error::connection_reset && ec != asio::error::eof) {
        const http::request<http::empty_body> bad;
        co_await simple(stream, tcp, bad, http::status::bad_request, "bad request: " + ec.message());
      }
      co_return;
    }
    const bool keep = co_await respond(stream, tcp, parser.get());
    if (!keep || stopped) co_return;
  }
}

template <class Stream>
asio::awaitable<bool> ArtifactServer::Impl::simple(Stream& stream, beast::tcp_stream& tcp,
                                                   const http::request<http::empty_body>& req,
                                                   http::status status, const std::string& text) {
  ++total_requests;
  http::response<http::string_body> res{status, 11};
  res.set(http::field::server, "tern-bridge");
  res.set(http::field::content_type, "text/plain");
  if (status == http::status::method_not_allowed) res.set(http::field::allow, "GET, HEAD");
  const bool keep = req.keep_alive() && status != http::status::bad_request;
  res.keep_alive(keep);
  if (req.method() != http::verb::head) res.body() = text + "\n";
  res.prepare_payload();
  if (req.method() == http::verb::head) res.content_length(text.size() + 1);
  tcp.expires_after(opts.io_timeout);
  if (req.method() == http::verb::head) {
    http::response_serializer<http::string_body> sr(res);
    auto [ec, n] = co_await http::async_write_header(stream, sr, kAwait);
    co_return !ec && keep;
  }
  auto [ec, n] = co_await http::async_write(stream, res, kAwait);
  co_return !ec && keep;
}

template <class Stream>
asio::awaitable<bool> ArtifactServer::Impl::respond(Stream& stream, beast::tcp_stream& tcp,
                                                    const http::request<http::empty_body>& req) {
  const bool head = req.method() == http::verb::head;
  if (req.method() != http::verb::get && !head) {
    co_return co_await simple(stream, tcp, req, http::status::method_not_allowed, "only GET and HEAD");
  }
  // An artifact, or (with static_root) a static file; `name` is what the counters call it.
  const bool artifact = !opts.root.empty() && req.target().starts_with("/artifacts/");
  const auto name = artifact || opts.static_root.empty() ? file_name_of(req.target()) : static_path_of(req.target());
  if (!name) {
    co_return co_await simple(stream, tcp, req, http::status::bad_request,
                              std::string(artifact || opts.static_root.empty() ? "not an artifact path: " : "not a file path: ") +
                                  std::string(req.target()));
  }
  const std::string path = ((artifact || opts.static_root.empty() ? opts.root : opts.static_root) / *name).string();
  UniqueFd file(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  struct stat st {};
  bool inside = true;
  if (file && !artifact) {
    // A symlink may point anywhere: serve only what really lies under the static root.
    std::error_code ec;
    const auto real = std::filesystem::canonical(path, ec).string();
    const auto base = std::filesystem::canonical(opts.static_root, ec).string() + "/";
    inside = !ec && real.starts_with(base);
  }
  if (!file || !inside || ::fstat(file.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    const int err = errno;
    if (!file && err != ENOENT && err != ENOTDIR) {
      log::warn("artifact server: opening ", path, ": ", std::strerror(err));
      co_return co_await simple(stream, tcp, req, http::status::internal_server_error,
                                "cannot open " + *name);
    }
    co_return co_await simple(stream, tcp, req, http::status::not_found, "no artifact " + *name);
  }
  const auto size = static_cast<std::uint64_t>(st.st_size);
  const std::uint64_t mtime_ns = static_cast<std::uint64_t>(st.st_mtim.tv_sec) * 1000000000ull +
                                 static_cast<std::uint64_t>(st.st_mtim.tv_nsec);
  const std::string etag = "\"" + hex(size) + "-" + hex(mtime_ns) + "-" + hex(st.st_ino) + "\"";
  const std::string last_modified = http_date(st.st_mtim.tv_sec);

  http::response<http::empty_body> res{http::status::ok, 11};
  res.set(http::field::server, "tern-bridge");
  res.set(http::field::content_type, artifact ? "application/octet-stream" : content_type_of(*name));
  if (!artifact) {
    res.set("X-Content-Type-Options", "nosniff");
    res.set(http::field::cache_control, "no-cache");
    res.set("Referrer-Policy", "no-referrer");
    res.set("Content-Security-Policy",
            "default-src 'self'; connect-src 'self' wss:; img-src 'self' data:; frame-ancestors 'none'; "
            "worker-src 'self' blob:");  // MQTT.js runs its keepalive timer in a blob worker
  }
  res.set(http::field::accept_ranges, "bytes");
  res.set(http::field::etag, etag);
  res.set(http::field::last_modified, last_modified);
  res.keep_alive(req.keep_alive());

  RangeSet set;  // no Range (or one to ignore): the whole file
  const auto range_header = req[http::field::range];
  if (!range_header.empty()) {
    // If-Range: the range applies only to the representation the client already has.
    const auto if_range = req[http::field::if_range];
    const bool current = if_range.empty() || if_range == etag || if_range == last_modified;
    if (current) set = parse_ranges(range_header, size, kMaxRanges);
  }
  const std::string part_type = res[http::field::content_type];
  std::string boundary;
  std::uint64_t length = size;
  switch (set.answer) {
    case RangeSet::Answer::whole:
      set.ranges = {FileRange{0, size}};
      break;
    case RangeSet::Answer::partial:
      res.result(http::status::partial_content);
      if (set.ranges.size() == 1) {
        const auto& r = set.ranges.front();
        res.set(http::field::content_range, "bytes " + std::to_string(r.first) + "-" +
                                                std::to_string(r.first + r.length - 1) + "/" + std::to_string(size));
        length = r.length;
      } else {  // RFC 9110 14.6: the parts in the order asked, each with its Content-Range
        boundary = make_boundary();
        res.set(http::field::content_type, "multipart/byteranges; boundary=" + boundary);
        length = multipart_length(boundary, part_type, set.ranges, size);
      }
      break;
    case RangeSet::Answer::unsatisfiable:
      res.result(http::status::range_not_satisfiable);
      res.set(http::field::content_range, "bytes */" + std::to_string(size));
      set.ranges.clear();
      length = 0;
      break;
  }
  res.content_length(length);
  ++total_requests;

  tcp.expires_after(opts.io_timeout);
  http::response_serializer<http::empty_body> sr(res);
  auto [hec, hn] = co_await http::async_write_header(stream, sr, kAwait);
  if (hec) co_return false;
  if (head) co_return req.keep_alive();

  // The body: each part's header (multipart only), then its bytes in fixed chunks from the file.
  std::vector<std::uint8_t> buf(static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, length)));
  for (const auto& range : set.ranges) {
    std::size_t fill = 0;  // a part's header goes out with its first bytes
    if (!boundary.empty()) {
      const std::string head_of_part = part_header(boundary, part_type, range, size);
      std::memcpy(buf.data(), head_of_part.data(), head_of_part.size());  // buf holds >= one part
      fill = head_of_part.size();
    }
    std::uint64_t pos = range.first, left = range.length;
    while (left > 0 || fill > 0) {
      const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(left, buf.size() - fill));
      const ssize_t got = want ? ::pread(file.get(), buf.data() + fill, want, static_cast<off_t>(pos)) : 0;
      if (want && got <= 0) {
        // The file shrank or failed under us: the announced length cannot be met; close.
        log::warn("artifact server: reading ", path, " at ", pos, ": ",
                  got < 0 ? std::strerror(errno) : "unexpected end of file");
        co_return false;
      }
      tcp.expires_after(opts.io_timeout);
      auto [wec, wn] = co_await asio::async_write(
          stream, asio::buffer(buf.data(), fill + static_cast<std::size_t>(got)), kAwait);
      count(*name, wn);
      if (wec) co_return false;
      pos += static_cast<std::uint64_t>(got);
      left -= static_cast<std::uint64_t>(got);
      fill = 0;
    }
  }
  if (!boundary.empty()) {
    const std::string close = closing_delimiter(boundary);
    tcp.expires_after(opts.io_timeout);
    auto [cec, cn] = co_await asio::async_write(stream, asio::buffer(close), kAwait);
    count(*name, cn);
    if (cec) co_return false;
  }
  co_return req.keep_alive();
}

ArtifactServer::ArtifactServer(asio::any_io_executor ex, ArtifactServerOptions opts)
    : impl_(std::make_shared<Impl>(std::move(ex), std::move(opts))) {}

ArtifactServer::~ArtifactServer() { stop(); }

Result<std::uint16_t> ArtifactServer::start() {
  auto& o = impl_->opts;
  std::error_code fec;
  if ((!o.root.empty() || o.static_root.empty()) && !std::filesystem::is_directory(o.root, fec)) {
    return fail(Errc::invalid_argument, "artifact server: root " + o.root.string() + " is not a directory");
  }
  if (!o.static_root.empty() && !std::filesystem::is_directory(o.static_root, fec)) {
    return fail(Errc::invalid_argument, "artifact server: static files folder " + o.static_root.string() +
                                            " is not a directory");
  }
  boost::system::error_code ec;
  if (!o.cert_file.empty()) {
    auto& ctx = impl_->tls.emplace(ssl::context::tls_server);
    ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                    ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
    // OpenSSL's record buffers are freed whenever they are empty (idle keep-alive connections).
    SSL_CTX_set_mode(ctx.native_handle(), SSL_MODE_RELEASE_BUFFERS);
    ctx.use_certificate_chain_file(o.cert_file, ec);
    if (ec) return fail(Errc::invalid_argument, "artifact server: loading certificate " + o.cert_file + ": " + ec.message());
    ctx.use_private_key_file(o.key_file.empty() ? o.cert_file : o.key_file, ssl::context::pem, ec);
    if (ec) return fail(Errc::invalid_argument, "artifact server: loading key " + o.key_file + ": " + ec.message());
    if (!o.client_ca_file.empty()) {
      ctx.load_verify_file(o.client_ca_file, ec);
      if (ec) {
        return fail(Errc::invalid_argument,
                    "artifact server: loading client CA " + o.client_ca_file + ": " + ec.message());
      }
      ctx.set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
    }
  } else if (!o.client_ca_file.empty()) {
    return fail(Errc::invalid_argument, "artifact server: client certificates need TLS (cert_file)");
  }

  auto address = asio::ip::make_address(o.bind_address, ec);
  if (ec) return fail(Errc::invalid_argument, "artifact server: bad bind address '" + o.bind_address + "'");
  const tcp::endpoint ep(address, o.port);
  auto& acc = impl_->acceptor;
  acc.open(ep.protocol(), ec);
  if (!ec) acc.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acc.bind(ep, ec);
  if (!ec) acc.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return fail(Errc::io, "artifact server: listening on " + o.bind_address + ":" + std::to_string(o.port) +
                              ": " + ec.message());
  }
  const auto port = acc.local_endpoint().port();
  impl_->reserve_reactor_state();
  asio::co_spawn(impl_->strand, impl_->accept_loop(), [](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      log::error("artifact server: accept loop failed: ", ex.what());
    }
  });
  return port;
}

void ArtifactServer::stop() {
  if (!impl_) return;
  asio::post(impl_->strand, [impl = impl_] {
    impl->stopped = true;
    boost::system::error_code ec;
    impl->acceptor.close(ec);
    for (auto& [id, s] : impl->connections) s->close(ec);
  });
}

std::uint64_t ArtifactServer::bytes_served() const { return impl_->total_bytes; }

std::uint64_t ArtifactServer::bytes_served(const std::string& filename) const {
  std::lock_guard lock(impl_->per_file_mutex);
  auto it = impl_->per_file.find(filename);
  return it == impl_->per_file.end() ? 0 : it->second;
}

std::uint64_t ArtifactServer::requests() const { return impl_->total_requests; }

std::size_t ArtifactServer::connections() const { return impl_->open_connections; }

std::uint64_t ArtifactServer::refused() const { return impl_->total_refused; }

}  // namespace tern::bridge
