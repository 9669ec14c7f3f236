// RangeClient on Beast. Its own translation unit (Beast + Asio + SSL + coroutines compile slowly).
//
// Shape: fetch() keeps a RangeCursor (byteranges.hpp: which bytes are still to deliver) and loops:
// connect if there is no open connection, then one exchange: a GET for the next ranges, its header
// classified, its body read through a fixed 64 KiB buffer, part by part (MultipartParser), into
// the sink. An exchange ends with an Outcome: done (the connection stays open if the server
// allows), retry (after backoff), stale (a kept-alive connection the server had closed: at once on
// a new one), single (the server answered several ranges with the whole file), redirect or fatal.
#include "agent/download/range_fetch.hpp"

#include "agent/download/byteranges.hpp"
#include "agent/download/http_util.hpp"
#include "agent/download/rate_limit.hpp"
#include "agent/errors.hpp"
#include "common/backoff.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include <openssl/ssl.h>

#include <array>

namespace tern::agent {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using std::chrono::steady_clock;
using detail::certificate_error;
using detail::describe;

constexpr std::size_t kChunk = 64 * 1024;
constexpr std::size_t kHeaderBuffer = 16 * 1024;
constexpr auto kAwait = asio::as_tuple(asio::use_awaitable);

enum class Kind { done, retry, stale, single, redirect, fatal };
struct Outcome {
  Kind kind = Kind::done;
  Error error;
  std::string location;  ///< redirect
  bool keep = true;      ///< done: the connection may serve the next request
};
Outcome retry(Errc c, std::string m) { return {Kind::retry, Error(c, std::move(m)), {}, false}; }
Outcome fatal(Error e) { return {Kind::fatal, std::move(e), {}, false}; }
Outcome fatal(Errc c, std::string m) { return fatal(Error(c, std::move(m))); }

/// Read failures on a kept-alive connection that mean "the server closed it while it was idle".
bool closed_while_idle(const boost::system::error_code& ec) {
  return ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset ||
         ec == asio::error::broken_pipe || ec == ssl::error::stream_truncated;
}

}  // namespace

struct RangeClient::Impl {
  Impl(const DownloadOptions& o, std::string u)
      : opts(o), url(std::move(u)), backoff(o.backoff_initial, o.backoff_max, o.seed), limit(o.max_bytes_per_second) {}

  DownloadOptions opts;
  std::string url;
  std::string etag, last_modified;
  std::optional<std::uint64_t> total;
  std::uint64_t received = 0, requests = 0;
  int attempts = 0;
  bool multi = true;  // several ranges per request until the server refuses them

  Backoff backoff;
  RateLimiter limit;  // across requests and reconnects
  std::optional<ssl::context> tls;
  asio::cancellation_state cancel;

  // The connection (at most one of plain/secure) and what it was made for.
  std::optional<beast::tcp_stream> plain;
  std::optional<beast::ssl_stream<beast::tcp_stream>> secure;
  std::optional<detail::Target> target;
  std::string conn_url;
  beast::flat_buffer buffer{kHeaderBuffer};
  std::array<std::uint8_t, kChunk> buf;

  bool connected() const { return plain || secure; }
  beast::tcp_stream& lowest() { return secure ? beast::get_lowest_layer(*secure) : *plain; }
  void close() {
    if (connected()) {
      boost::system::error_code ec;
      lowest().socket().close(ec);  // a TLS close_notify would only cost a round trip
    }
    plain.reset();
    secure.reset();
    buffer.clear();
  }
  bool cancelled() const { return cancel.cancelled() != asio::cancellation_type::none; }
  Outcome check_cancel(Outcome o) const {
    if (cancelled()) return fatal(Errc::cancelled, "fetching ranges of " + url + " cancelled");
    return o;
  }
  bool has_validators() const { return !etag.empty() || !last_modified.empty(); }
  /// If-Range: a strong ETag, else Last-Modified, else nothing.
  std::string validator() const {
    if (!etag.empty() && !detail::weak_etag(etag)) return etag;
    return last_modified;
  }
  /// Whether an answer's validators say the artifact is not the one known.
  std::optional<std::string> changed(std::string_view e, std::string_view lm, std::optional<std::uint64_t> size) const {
    if (!etag.empty() && !e.empty() && e != etag) return "ETag " + std::string(e) + " instead of " + etag;
    if (!last_modified.empty() && !lm.empty() && lm != last_modified)
      return "Last-Modified " + std::string(lm) + " instead of " + last_modified;
    if (total && size && *size != *total)
      return std::to_string(*size) + " bytes instead of " + std::to_string(*total);
    return std::nullopt;
  }
  Error source_changed(const std::string& why) const {
    return fail(AgentErrc::source_changed, "the artifact at " + url + " changed on the server (" + why + ")");
  }

  asio::awaitable<Result<void>> run(std::span<const ByteRange> ranges, const RangeSink& sink);
  asio::awaitable<Outcome> connect(const std::string& to);
  template <class Stream>
  asio::awaitable<Outcome> exchange(Stream& stream, RangeCursor& cursor, const RangeSink& sink, bool reused);
  asio::awaitable<void> pause(std::chrono::nanoseconds wait);
};

asio::awaitable<void> RangeClient::Impl::pause(std::chrono::nanoseconds wait) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  timer.expires_after(wait);
  auto [ec] = co_await timer.async_wait(kAwait);
  (void)ec;  // aborted or expired: the caller checks cancelled()
}

asio::awaitable<Result<void>> RangeClient::Impl::run(std::span<const ByteRange> ranges, const RangeSink& sink) {
  RangeCursor cursor(ranges);  // copies the ranges before the first suspension
  cancel = co_await asio::this_coro::cancellation_state;
  if (auto ok = cursor.check(); !ok) co_return ok.error().context("fetching ranges of " + url);
  if (ranges.empty()) co_return Result<void>{};
  if (total && ranges.back().offset + ranges.back().length > *total) {
    co_return fail(Errc::invalid_argument, "fetching ranges of " + url + ": bytes up to " +
                                               std::to_string(ranges.back().offset + ranges.back().length) +
                                               " asked of a " + std::to_string(*total) + "-byte artifact");
  }
  if (!sink) co_return fail(Errc::invalid_argument, "fetching ranges of " + url + ": no sink");
  if (opts.max_attempts < 1) co_return fail(Errc::invalid_argument, "fetching ranges of " + url + ": max_attempts must be >= 1");

  const auto start = steady_clock::now();
  int made = 0, redirects = 0;
  std::string to = connected() ? conn_url : url;
  std::string last_error = "no attempt made";
  while (!cursor.done()) {
    if (cancelled()) co_return fail(Errc::cancelled, "fetching ranges of " + url + " cancelled");
    const std::uint64_t before = cursor.delivered();
    const bool reused = connected();
    Outcome o;
    if (!reused) {
      if (made >= opts.max_attempts) {
        co_return fail(Errc::timeout, "fetching ranges of " + url + ": giving up after " + std::to_string(made) +
                                          " attempts: " + last_error);
      }
      if (steady_clock::now() - start > opts.max_total) {
        co_return fail(Errc::timeout, "fetching ranges of " + url + ": giving up after " +
                                          std::to_string(opts.max_total.count()) + " s: " + last_error);
      }
      ++made;
      ++attempts;
      o = co_await connect(to);
      o = check_cancel(std::move(o));
    }
    if (o.kind == Kind::done) {
      if (secure) {
        o = co_await exchange(*secure, cursor, sink, reused);
      } else {
        o = co_await exchange(*plain, cursor, sink, reused);
      }
      o = check_cancel(std::move(o));
    }
    if (!o.keep) close();
    switch (o.kind) {
      case Kind::done:
        if (cursor.delivered() == before) {
          close();
          co_return fail(Errc::protocol, "fetching ranges of " + url + ": the answer held none of the bytes asked");
        }
        continue;
      case Kind::fatal:
        co_return o.error;
      case Kind::single:
        multi = false;  // from now on one range per request
        continue;       // at once: the server answered, the link works
      case Kind::stale:
        continue;  // at once, on a new connection
      case Kind::redirect: {
        if (++redirects > opts.max_redirects) {
          co_return fail(Errc::protocol, "fetching ranges of " + url + ": more than " +
                                             std::to_string(opts.max_redirects) + " redirects");
        }
        auto next = detail::resolve_location(to, o.location);
        if (!next) co_return next.error();
        to = *next;
        continue;
      }
      case Kind::retry:
        break;
    }
    last_error = o.error.message();
    to = url;  // a redirect may have been temporary
    redirects = 0;
    if (cursor.delivered() > before) backoff.reset();  // the link works again
    co_await pause(backoff.next());
    if (cancelled()) co_return fail(Errc::cancelled, "fetching ranges of " + url + " cancelled");
  }
  co_return Result<void>{};
}

asio::awaitable<Outcome> RangeClient::Impl::connect(const std::string& to) {
  close();
  auto t = detail::parse_target(to);
  if (!t) co_return fatal(t.error());
  auto ex = co_await asio::this_coro::executor;
  tcp::resolver resolver(ex);
  auto [rec, endpoints] = co_await resolver.async_resolve(t->host, t->port, kAwait);
  if (rec) co_return retry(Errc::io, "resolving " + t->host + " for " + to + ": " + describe(rec));

  if (!t->tls) {
    plain.emplace(ex);
    plain->expires_after(opts.connect_timeout);
    auto [cec, ep] = co_await plain->async_connect(endpoints, kAwait);
    if (cec) co_return retry(Errc::io, "connecting to " + to + ": " + describe(cec));
  } else {
    if (!tls) {
      tls.emplace(ssl::context::tls_client);
      if (auto r = detail::configure_client_tls(*tls, opts); !r) {
        tls.reset();
        co_return fatal(r.error());
      }
    }
    secure.emplace(ex, *tls);
    auto& low = beast::get_lowest_layer(*secure);
    low.expires_after(opts.connect_timeout);
    auto [cec, ep] = co_await low.async_connect(endpoints, kAwait);
    if (cec) co_return retry(Errc::io, "connecting to " + to + ": " + describe(cec));
    // SNI for names only (RFC 6066 forbids IP literals), and check the certificate against the host.
    boost::system::error_code aec;
    asio::ip::make_address(t->host, aec);
    if (aec && !SSL_set_tlsext_host_name(secure->native_handle(), t->host.c_str())) {
      co_return fatal(Errc::internal, "setting TLS SNI for " + to);
    }
    secure->set_verify_callback(ssl::host_name_verification(t->host));
    auto [hec] = co_await secure->async_handshake(ssl::stream_base::client, kAwait);
    if (hec) {
      std::string m = "TLS handshake with " + to + ": " + describe(hec);
      if (certificate_error(hec)) co_return fatal(Errc::protocol, std::move(m));
      co_return retry(Errc::io, std::move(m));
    }
  }
  boost::system::error_code nec;
  lowest().socket().set_option(tcp::no_delay(true), nec);
  buffer.clear();
  buffer.reserve(kHeaderBuffer);  // see https_download.cpp: reads are sized by the free capacity
  target = *t;
  conn_url = to;
  co_return Outcome{};
}

template <class Stream>
asio::awaitable<Outcome> RangeClient::Impl::exchange(Stream& stream, RangeCursor& cursor, const RangeSink& sink,
                                                     bool reused) {
  auto& low = lowest();
  const std::string& to = conn_url;

  // The request: the next ranges, If-Range once a validator is known.
  const auto ask = cursor.next_request(multi ? kMaxRangesPerRequest : 1, kMaxRangeHeader);
  const std::uint64_t asked_last = ask.back().offset + ask.back().length - 1;
  const bool several = ask.size() > 1;
  http::request<http::empty_body> req{http::verb::get, target->target, 11};
  req.set(http::field::host, target->host_header);
  req.set(http::field::user_agent, "tern-agent/0.1");
  req.set(http::field::accept_encoding, "identity");
  req.set(http::field::range, range_header(ask));
  const std::string if_range = validator();
  if (!if_range.empty()) req.set(http::field::if_range, if_range);
  low.expires_after(opts.connect_timeout);
  ++requests;
  auto [wec, wn] = co_await http::async_write(stream, req, kAwait);
  if (wec) {
    if (reused && wec != beast::error::timeout) co_return Outcome{Kind::stale, {}, {}, false};
    co_return retry(Errc::io, "sending a request to " + to + ": " + describe(wec));
  }

  // The header.
  http::response_parser<http::buffer_body> parser;
  parser.body_limit(boost::none);
  auto [hec, hn] = co_await http::async_read_header(stream, buffer, parser, kAwait);
  if (hec) {
    if (reused && !parser.got_some() && closed_while_idle(hec)) co_return Outcome{Kind::stale, {}, {}, false};
    std::string m = "reading the response header from " + to + ": " + describe(hec);
    if (certificate_error(hec)) co_return fatal(Errc::protocol, std::move(m));
    co_return retry(Errc::io, std::move(m));
  }
  const auto& res = parser.get();
  const unsigned status = res.result_int();
  const std::string status_text = std::to_string(status) + " " + std::string(res.reason());
  const std::string res_etag(res[http::field::etag]);
  const std::string res_modified(res[http::field::last_modified]);
  const std::string content_range(res[http::field::content_range]);

  if (status >= 300 && status < 400 && status != 304) {
    const auto loc = res[http::field::location];
    if (loc.empty()) co_return fatal(Errc::protocol, "HTTP " + status_text + " without Location from " + to);
    co_return Outcome{Kind::redirect, {}, std::string(loc), false};
  }
  if (status >= 500) co_return retry(Errc::io, "HTTP " + status_text + " from " + to);
  if (status == 416) {
    auto cr = detail::parse_content_range(content_range);
    if (cr && cr->complete && total && *cr->complete != *total) {
      co_return fatal(source_changed(std::to_string(*cr->complete) + " bytes instead of " + std::to_string(*total)));
    }
    co_return fatal(Errc::protocol, "HTTP " + status_text + " for " + to + " (Range " + range_header(ask).substr(0, 60) +
                                        (several ? "..." : "") + ")");
  }
  if (status == 200) {
    // The whole file. Never read: close the connection.
    const auto length = parser.content_length();
    auto why = changed(res_etag, res_modified, length ? std::optional<std::uint64_t>(*length) : std::nullopt);
    const bool same = if_range == etag ? res_etag == etag : res_modified == last_modified;
    if (!why && !if_range.empty() && !same) why = "a 200 to If-Range " + if_range;  // it did not match
    if (why) co_return fatal(source_changed(*why));
    if (!has_validators()) {
      etag = res_etag;
      last_modified = res_modified;
    }
    if (several) co_return Outcome{Kind::single, {}, {}, false};
    co_return fatal(fail(AgentErrc::range_ignored, to + " answered a Range request with the whole file"));
  }
  if (status != 206) co_return fatal(Errc::protocol, "unexpected HTTP " + status_text + " for " + to);

  // 206: one part (Content-Range) or several (multipart/byteranges).
  const auto boundary = multipart_boundary(res[http::field::content_type]);
  std::optional<MultipartParser> multipart;
  if (boundary) {
    if (auto why = changed(res_etag, res_modified, std::nullopt)) co_return fatal(source_changed(*why));
    multipart.emplace(*boundary);
  } else {
    auto cr = detail::parse_content_range(content_range);
    if (!cr || std::string_view(content_range).substr(6).starts_with("*")) {
      co_return fatal(Errc::protocol, "HTTP 206 from " + to + " with neither a multipart body nor a valid Content-Range ('" +
                                          content_range + "')");
    }
    if (auto why = changed(res_etag, res_modified, cr->complete)) co_return fatal(source_changed(*why));
    if (auto r = cursor.begin_part(*cr, asked_last, total); !r) {
      co_return fatal(r.error().context("reading the answer of " + to));
    }
    const auto length = parser.content_length();
    if (length && *length != cr->last - cr->first + 1) {
      co_return fatal(Errc::protocol, "HTTP 206 from " + to + ": Content-Length " + std::to_string(*length) +
                                          " for Content-Range '" + content_range + "'");
    }
    if (!total && cr->complete) total = cr->complete;
  }
  if (!has_validators()) {  // the first answer names the artifact from now on
    etag = res_etag;
    last_modified = res_modified;
  }

  // The body: fixed chunks, part by part, into the sink.
  while (!parser.is_done()) {
    const std::size_t want = limit.read_size(buf.size());
    parser.get().body().data = buf.data();
    parser.get().body().size = want;
    low.expires_after(opts.read_timeout);
    auto [ec, n] = co_await http::async_read_some(stream, buffer, parser, kAwait);
    if (ec == http::error::need_buffer) ec = {};
    const std::size_t got = want - parser.get().body().size;
    received += got;
    std::span<const std::uint8_t> chunk(buf.data(), got);
    while (!chunk.empty()) {
      std::span<const std::uint8_t> data;
      if (multipart) {
        auto ev = multipart->next(chunk);
        if (!ev) co_return fatal(ev.error().context("reading the answer of " + to));
        if (ev->kind == MultipartParser::Event::Kind::part) {
          if (auto r = cursor.begin_part(ev->range, asked_last, total); !r) {
            co_return fatal(r.error().context("reading the answer of " + to + ", part " +
                                              std::to_string(multipart->parts())));
          }
          if (!total && ev->range.complete) total = ev->range.complete;
        }
        if (ev->kind == MultipartParser::Event::Kind::data) data = ev->data;
      } else {
        data = chunk;
        chunk = {};
      }
      while (!data.empty()) {
        if (cursor.part_left() == 0) {  // the multipart parser never hands out more than a part
          co_return fatal(Errc::protocol, "HTTP 206 from " + to + ": more bytes than Content-Range '" + content_range + "'");
        }
        const auto piece = cursor.take(data);
        if (!piece) continue;  // bytes between two ranges
        auto r = co_await sink(piece->index, piece->bytes);
        if (!r) co_return check_cancel(fatal(r.error()));
      }
    }
    if (const auto wait = limit.consume(got, steady_clock::now()); wait.count() > 0) {
      // The cap: not reading lets the kernel's receive window slow the server down.
      co_await pause(wait);
      if (cancelled()) co_return retry(Errc::io, "waiting for the bandwidth cap");
    }
    if (ec) {
      std::string m = "reading the answer of " + to + " at byte " + std::to_string(cursor.position()) + ": ";
      m += ec == beast::error::timeout ? "no data for " + std::to_string(opts.read_timeout.count()) + " ms" : describe(ec);
      if (certificate_error(ec)) co_return fatal(Errc::protocol, std::move(m));
      co_return retry(Errc::io, std::move(m));
    }
  }
  if (multipart && !multipart->finished()) {
    co_return fatal(Errc::protocol, "the multipart answer of " + to + " ended before its closing boundary (after " +
                                        std::to_string(multipart->parts()) + " parts)");
  }
  if (!multipart && cursor.part_left() != 0) {
    co_return retry(Errc::protocol, "the answer of " + to + " ended " + std::to_string(cursor.part_left()) +
                                        " bytes before the end of its Content-Range");
  }
  co_return Outcome{Kind::done, {}, {}, parser.keep_alive()};
}

RangeClient::RangeClient(const DownloadOptions& options, std::string url)
    : impl_(std::make_unique<Impl>(options, std::move(url))) {}

RangeClient::~RangeClient() = default;

asio::awaitable<Result<void>> RangeClient::fetch(std::span<const artifacts::ByteRange> ranges, const RangeSink& sink) {
  const std::string url = impl_->url;
  std::optional<Error> error;
  try {
    auto r = co_await impl_->run(ranges, sink);
    if (!r) impl_->close();  // mid-answer, or cancelled: the connection's state is unknown
    co_return r;
  } catch (const ErrorException& e) {
    error = e.error().context("fetching ranges of " + url);
  } catch (const boost::system::system_error& e) {
    if (e.code() == asio::error::operation_aborted) {
      error = Error(Errc::cancelled, "fetching ranges of " + url + " cancelled");
    } else {
      error = Error(Errc::io, "fetching ranges of " + url + ": " + e.what());
    }
  } catch (const std::exception& e) {
    error = Error(Errc::internal, "fetching ranges of " + url + ": " + e.what());
  }
  impl_->close();
  co_return *error;
}

void RangeClient::assume(std::string etag, std::string last_modified, std::uint64_t total) {
  impl_->etag = std::move(etag);
  impl_->last_modified = std::move(last_modified);
  impl_->total = total;
}
std::optional<std::uint64_t> RangeClient::total() const { return impl_->total; }
const std::string& RangeClient::etag() const { return impl_->etag; }
const std::string& RangeClient::last_modified() const { return impl_->last_modified; }
bool RangeClient::has_validators() const { return impl_->has_validators(); }
std::uint64_t RangeClient::received() const { return impl_->received; }
int RangeClient::attempts() const { return impl_->attempts; }
std::uint64_t RangeClient::requests() const { return impl_->requests; }
bool RangeClient::multi_range() const { return impl_->multi; }

}  // namespace tern::agent
