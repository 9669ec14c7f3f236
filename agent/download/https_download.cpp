// Resumable HTTP(S) download on Beast. One translation unit on purpose: Beast + Asio + SSL +
// coroutines cost ~25 s to compile per TU.
//
// Shape: download() copies its arguments into a Downloader and runs its loop. Each pass of the loop
// makes one connection (attempt), sends one GET (with Range/If-Range when resuming), reads the
// header and classifies the response, then streams the body into a fixed 64 KiB buffer and on to the
// sink. An attempt ends with an Outcome: done, retry (after backoff), redirect, restart (content
// changed: start again from 0 at once) or fatal.
#include "agent/download/https_download.hpp"
#include "agent/download/http_util.hpp"
#include "agent/download/rate_limit.hpp"

#include "agent/errors.hpp"
#include "common/backoff.hpp"
#include "common/text.hpp"

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

#include <algorithm>
#include <array>
#include <charconv>
#include <random>

namespace tern::agent {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using std::chrono::steady_clock;
using detail::certificate_error;
using detail::Target;
using detail::describe;
using detail::parse_content_range;
using detail::parse_target;
using detail::resolve_location;
using detail::weak_etag;

constexpr std::size_t kChunk = 64 * 1024;
constexpr auto kAwait = asio::as_tuple(asio::use_awaitable);

enum class Kind { done, retry, fatal, redirect, restart };
struct Outcome {
  Kind kind = Kind::done;
  Error error;
  std::string location;  ///< for redirect
};
Outcome retry(Errc c, std::string m) { return {Kind::retry, Error(c, std::move(m)), {}}; }
Outcome fatal(Errc c, std::string m) { return {Kind::fatal, Error(c, std::move(m)), {}}; }

class Downloader {
 public:
  Downloader(const DownloadOptions& o, DownloadState& s, const BodySink& sink,
             const RestartHandler& restart, const ProgressHandler& progress)
      : opts_(o), state_(s), sink_(sink), on_restart_(restart), on_progress_(progress),
        backoff_(o.backoff_initial, o.backoff_max, o.seed), limit_(o.max_bytes_per_second) {}

  asio::awaitable<Result<void>> run();

 private:
  Result<void> make_tls_context();
  asio::awaitable<Outcome> attempt(const std::string& url);
  template <class Stream>
  asio::awaitable<Outcome> exchange(Stream& stream, beast::tcp_stream& tcp, const std::string& url,
                                    const Target& t);
  void progress() {
    if (on_progress_) on_progress_(state_);
  }
  bool cancelled() const { return cancel_.cancelled() != asio::cancellation_type::none; }
  Outcome check_cancel(Outcome o) const {
    if (cancelled()) return fatal(Errc::cancelled, "download of " + state_.url + " cancelled");
    return o;
  }
  /// Content changed under us: the consumer resets, we start again at byte 0.
  Result<void> restart(const std::string& why);

  DownloadOptions opts_;
  DownloadState& state_;
  BodySink sink_;
  RestartHandler on_restart_;
  ProgressHandler on_progress_;
  Backoff backoff_;
  std::optional<ssl::context> tls_;
  asio::cancellation_state cancel_;
  std::array<std::uint8_t, kChunk> buf_;
  RateLimiter limit_;  // across attempts: a reconnect does not reset the cap
};

Result<void> Downloader::make_tls_context() {
  if (tls_) return {};
  tls_.emplace(ssl::context::tls_client);
  return detail::configure_client_tls(*tls_, opts_);
}

Result<void> Downloader::restart(const std::string& why) {
  if (on_restart_) {
    auto r = on_restart_();
    if (!r) return r.error().context("restarting download of " + state_.url + " (" + why + ")");
  }
  state_.offset = 0;
  state_.etag.clear();
  state_.last_modified.clear();
  state_.total.reset();
  ++state_.restarts;
  progress();
  return {};
}

asio::awaitable<Result<void>> Downloader::run() {
  cancel_ = co_await asio::this_coro::cancellation_state;
  const auto start = steady_clock::now();
  int redirects = 0;
  std::string url = state_.url;
  std::string last_error = "no attempt made";
  int made = 0;  // this call's connections; state_.attempts also counts earlier runs
  for (;;) {
    if (made >= opts_.max_attempts) {
      co_return fail(Errc::timeout, "downloading " + state_.url + ": giving up after " +
                                        std::to_string(made) + " attempts: " + last_error);
    }
    if (steady_clock::now() - start > opts_.max_total) {
      co_return fail(Errc::timeout, "downloading " + state_.url + ": giving up after " +
                                        std::to_string(opts_.max_total.count()) + " s: " + last_error);
    }
    const std::uint64_t offset_before = state_.offset;
    ++made;
    ++state_.attempts;
    Outcome o = co_await attempt(url);
    o = check_cancel(std::move(o));
    switch (o.kind) {
      case Kind::done:
        co_return Result<void>{};
      case Kind::fatal:
        co_return o.error;
      case Kind::redirect: {
        if (++redirects > opts_.max_redirects) {
          co_return fail(Errc::protocol, "downloading " + state_.url + ": more than " +
                                             std::to_string(opts_.max_redirects) + " redirects");
        }
        auto next = resolve_location(url, o.location);
        if (!next) co_return next.error();
        url = *next;
        continue;
      }
      case Kind::restart:
        redirects = 0;
        continue;  // at once: the server answered, the link is fine
      case Kind::retry:
        break;
    }
    last_error = o.error.message();
    state_.last_error = last_error;
    progress();
    // Start again from the URL as given: a redirect may have been temporary.
    url = state_.url;
    redirects = 0;
    if (state_.offset > offset_before) backoff_.reset();  // the link works again
    const auto wait = backoff_.next();
    asio::steady_timer timer(co_await asio::this_coro::executor);
    timer.expires_after(wait);
    auto [ec] = co_await timer.async_wait(kAwait);
    (void)ec;  // aborted or expired: the cancellation check below tells which
    if (cancelled()) co_return fail(Errc::cancelled, "download of " + state_.url + " cancelled");
  }
}

asio::awaitable<Outcome> Downloader::attempt(const std::string& url) {
  auto t = parse_target(url);
  if (!t) co_return Outcome{Kind::fatal, t.error(), {}};
  auto ex = co_await asio::this_coro::executor;

  // Resolve and connect under the connect deadline.
  tcp::resolver resolver(ex);
  auto [rec, endpoints] = co_await resolver.async_resolve(t->host, t->port, kAwait);
  if (rec) co_return check_cancel(retry(Errc::io, "resolving " + t->host + " for " + url + ": " + describe(rec)));

  if (!t->tls) {
    beast::tcp_stream stream(ex);
    stream.expires_after(opts_.connect_timeout);
    auto [cec, ep] = co_await stream.async_connect(endpoints, kAwait);
    if (cec) co_return check_cancel(retry(Errc::io, "connecting to " + url + ": " + describe(cec)));
    co_return co_await exchange(stream, stream, url, *t);
  }

  if (auto r = make_tls_context(); !r) co_return Outcome{Kind::fatal, r.error(), {}};
  beast::ssl_stream<beast::tcp_stream> stream(ex, *tls_);
  auto& tcp = beast::get_lowest_layer(stream);
  tcp.expires_after(opts_.connect_timeout);
  auto [cec, ep] = co_await tcp.async_connect(endpoints, kAwait);
  if (cec) co_return check_cancel(retry(Errc::io, "connecting to " + url + ": " + describe(cec)));

  // SNI for names only (RFC 6066 forbids IP literals), and check the certificate against the host.
  boost::system::error_code aec;
  asio::ip::make_address(t->host, aec);
  if (aec && !SSL_set_tlsext_host_name(stream.native_handle(), t->host.c_str())) {
    co_return fatal(Errc::internal, "setting TLS SNI for " + url);
  }
  stream.set_verify_callback(ssl::host_name_verification(t->host));
  auto [hec] = co_await stream.async_handshake(ssl::stream_base::client, kAwait);
  if (hec) {
    std::string m = "TLS handshake with " + url + ": " + describe(hec);
    if (certificate_error(hec)) co_return check_cancel(fatal(Errc::protocol, std::move(m)));
    co_return check_cancel(retry(Errc::io, std::move(m)));
  }
  Outcome o = co_await exchange(stream, tcp, url, *t);
  // The response was length-delimited (or failed); a TLS close_notify would only cost a round trip.
  tcp.close();
  co_return o;
}

template <class Stream>
asio::awaitable<Outcome> Downloader::exchange(Stream& stream, beast::tcp_stream& tcp,
                                              const std::string& url, const Target& t) {
  // Request: one GET per connection; Range/If-Range when resuming.
  http::request<http::empty_body> req{http::verb::get, t.target, 11};
  req.set(http::field::host, t.host_header);
  req.set(http::field::user_agent, "tern-agent/0.1");
  req.set(http::field::accept_encoding, "identity");
  req.set(http::field::connection, "close");
  const std::uint64_t resume_from = state_.offset;
  const bool bounded = state_.end.has_value();  // a byte range of the file, not its rest
  if (resume_from > 0 || bounded) {
    req.set(http::field::range,
            "bytes=" + std::to_string(resume_from) + "-" + (bounded ? std::to_string(*state_.end) : ""));
    if (!state_.etag.empty() && !weak_etag(state_.etag)) {
      req.set(http::field::if_range, state_.etag);
    } else if (!state_.last_modified.empty()) {
      req.set(http::field::if_range, state_.last_modified);
    }
  }
  tcp.expires_after(opts_.connect_timeout);
  auto [wec, wn] = co_await http::async_write(stream, req, kAwait);
  if (wec) co_return check_cancel(retry(Errc::io, "sending request to " + url + ": " + describe(wec)));

  // Header. Reserve the buffer's whole size at once: Beast sizes each read by the buffer's free
  // capacity (at least 512 bytes), and a buffer grown only as far as the header would read the body
  // 512 bytes at a time, a full handler round trip each (30 per TLS record).
  beast::flat_buffer buffer(16 * 1024);
  buffer.reserve(16 * 1024);
  http::response_parser<http::buffer_body> parser;
  parser.body_limit(boost::none);
  auto [hec, hn] = co_await http::async_read_header(stream, buffer, parser, kAwait);
  if (hec) {
    std::string m = "reading response header from " + url + ": " + describe(hec);
    if (certificate_error(hec)) co_return check_cancel(fatal(Errc::protocol, std::move(m)));
    co_return check_cancel(retry(Errc::io, std::move(m)));
  }
  const auto& res = parser.get();
  const unsigned status = res.result_int();
  const std::string status_text = std::to_string(status) + " " + std::string(res.reason());
  const std::string etag(res[http::field::etag]);
  const std::string last_modified(res[http::field::last_modified]);
  const auto length = parser.content_length();

  if (status >= 300 && status < 400 && status != 304) {
    const auto loc = res[http::field::location];
    if (loc.empty()) {
      co_return fatal(Errc::protocol, "HTTP " + status_text + " without Location from " + url);
    }
    co_return Outcome{Kind::redirect, {}, std::string(loc)};
  }
  if (status >= 500) co_return retry(Errc::io, "HTTP " + status_text + " from " + url);
  if (status == 416 && resume_from > 0) {
    // Asked for the bytes after the end: complete if the size matches what we delivered.
    auto cr = parse_content_range(res[http::field::content_range]);
    if (cr && cr->complete && *cr->complete == resume_from && state_.total == resume_from) {
      co_return Outcome{Kind::done, {}, {}};
    }
  }
  if (status >= 400) {
    co_return fatal(Errc::protocol, "HTTP " + status_text + " for " + url);
  }

  std::uint64_t skip = 0;  // bytes at the start of this body the sink already has
  if (status == 206) {
    auto cr = parse_content_range(res[http::field::content_range]);
    if ((resume_from == 0 && !bounded) || !cr || !cr->complete) {
      co_return fatal(Errc::protocol, "unexpected 206 response (Content-Range '" +
                                          std::string(res[http::field::content_range]) + "') from " + url);
    }
    const bool etag_changed = !state_.etag.empty() && !etag.empty() && etag != state_.etag;
    const bool size_changed = state_.total && *state_.total != *cr->complete;
    if (etag_changed || size_changed) {
      auto r = restart(etag_changed ? "ETag changed" : "size changed");
      if (!r) co_return Outcome{Kind::fatal, r.error(), {}};
      co_return Outcome{Kind::restart, {}, {}};
    }
    if (bounded && *state_.end >= *cr->complete) state_.end = *cr->complete - 1;  // asked past the end
    if (cr->first != resume_from || (bounded && cr->last != *state_.end)) {
      co_return fatal(Errc::protocol, "asked " + url + " for bytes from " + std::to_string(resume_from) +
                                          ", got Content-Range '" +
                                          std::string(res[http::field::content_range]) + "'");
    }
    state_.total = *cr->complete;
    if (state_.etag.empty() && state_.last_modified.empty()) {  // the first range of a file
      state_.etag = etag;
      state_.last_modified = last_modified;
    }
  } else if (status == 200 && bounded) {
    // The whole file instead of the range: changed (If-Range did not match) or no Range support.
    if ((!state_.etag.empty() && etag != state_.etag) ||
        (!state_.last_modified.empty() && last_modified != state_.last_modified)) {
      auto r = restart("content changed on the server");
      if (!r) co_return Outcome{Kind::fatal, r.error(), {}};
    }
    co_return Outcome{Kind::fatal, fail(AgentErrc::range_ignored, url + " answered a Range request with the whole file"), {}};
  } else if (status == 200) {
    if (resume_from > 0) {
      // A strong ETag equal to ours means the server ignores Range: skip what the sink has.
      // Anything else means If-Range did not match: the content changed.
      if (!etag.empty() && !weak_etag(etag) && etag == state_.etag &&
          (!length || !state_.total || *length == *state_.total)) {
        skip = resume_from;
      } else {
        auto r = restart("content changed on the server");
        if (!r) co_return Outcome{Kind::fatal, r.error(), {}};
      }
    }
    state_.etag = etag;
    state_.last_modified = last_modified;
    if (length) state_.total = *length; else state_.total.reset();
  } else {
    co_return fatal(Errc::protocol, "unexpected HTTP " + status_text + " for " + url);
  }
  progress();

  // Body: into the fixed buffer, chunk by chunk, to the sink.
  while (!parser.is_done()) {
    const std::size_t ask = limit_.read_size(buf_.size());
    parser.get().body().data = buf_.data();
    parser.get().body().size = ask;
    tcp.expires_after(opts_.read_timeout);
    auto [ec, n] = co_await http::async_read_some(stream, buffer, parser, kAwait);
    if (ec == http::error::need_buffer) ec = {};
    const std::size_t got = ask - parser.get().body().size;
    state_.bytes_received += got;
    std::span<const std::uint8_t> chunk(buf_.data(), got);
    const std::size_t dropped = static_cast<std::size_t>(std::min<std::uint64_t>(skip, got));
    skip -= dropped;
    chunk = chunk.subspan(dropped);
    if (!chunk.empty()) {
      auto r = co_await sink_(chunk);
      if (!r) co_return check_cancel(Outcome{Kind::fatal, r.error(), {}});
      state_.offset += chunk.size();
      progress();
    }
    if (const auto wait = limit_.consume(got, std::chrono::steady_clock::now()); wait.count() > 0) {
      // The cap: not reading lets the kernel's receive window slow the server down.
      asio::steady_timer pause(tcp.get_executor(), wait);
      auto [waited] = co_await pause.async_wait(kAwait);
      if (waited || cancelled()) co_return check_cancel(retry(Errc::io, "waiting for the bandwidth cap"));
    }
    if (ec) {
      std::string m = "reading body of " + url + " at byte " + std::to_string(state_.offset) + ": ";
      m += ec == beast::error::timeout
               ? "no data for " + std::to_string(opts_.read_timeout.count()) + " ms"
               : describe(ec);
      if (certificate_error(ec)) co_return check_cancel(fatal(Errc::protocol, std::move(m)));
      co_return check_cancel(retry(Errc::io, std::move(m)));
    }
  }
  const auto until = bounded ? std::optional<std::uint64_t>(*state_.end + 1) : state_.total;
  if (until && state_.offset != *until) {
    co_return retry(Errc::protocol, "body of " + url + " ended at byte " + std::to_string(state_.offset) +
                                        " of " + std::to_string(*until));
  }
  if (!state_.total) state_.total = state_.offset;
  progress();
  co_return Outcome{Kind::done, {}, {}};
}

}  // namespace

asio::awaitable<Result<void>> download(const DownloadOptions& opts, DownloadState& state,
                                       const BodySink& sink, const RestartHandler& on_restart,
                                       const ProgressHandler& on_progress) {
  // Copies everything before the first suspension (g++ 12 rules in README).
  Downloader d(opts, state, sink, on_restart, on_progress);
  if (!sink) co_return fail(Errc::invalid_argument, "download of " + state.url + ": no body sink");
  if (state.end && state.offset > *state.end) co_return Result<void>{};  // the range is complete
  if (opts.max_attempts < 1) {
    co_return fail(Errc::invalid_argument, "download of " + state.url + ": max_attempts must be >= 1");
  }
  std::optional<Error> error;
  try {
    auto r = co_await d.run();
    co_return r;
  } catch (const ErrorException& e) {
    error = e.error().context("downloading " + state.url);
  } catch (const boost::system::system_error& e) {
    if (e.code() == asio::error::operation_aborted) {
      error = Error(Errc::cancelled, "download of " + state.url + " cancelled");
    } else {
      error = Error(Errc::io, "downloading " + state.url + ": " + e.what());
    }
  } catch (const std::exception& e) {
    error = Error(Errc::internal, "downloading " + state.url + ": " + e.what());
  }
  co_return *error;
}

}  // namespace tern::agent
