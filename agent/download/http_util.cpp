// The agent's shared HTTP helpers (see http_util.hpp).
#include "agent/download/http_util.hpp"

#include "common/text.hpp"

#include <boost/asio/ssl.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/url/parse.hpp>
#include <boost/url/url.hpp>

#include <openssl/err.h>
#include <openssl/ssl.h>

namespace tern::agent::detail {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace ssl = asio::ssl;

Result<Target> parse_target(const std::string& url) {
  auto parsed = boost::urls::parse_uri(url);
  if (!parsed) {
    return fail(Errc::invalid_argument, "malformed URL '" + url + "': " + parsed.error().message());
  }
  const boost::urls::url_view& u = *parsed;
  Target t;
  const std::string scheme = u.scheme();
  if (scheme == "https") {
    t.tls = true;
  } else if (scheme != "http") {
    return fail(Errc::invalid_argument, "unsupported URL scheme '" + scheme + "' in '" + url + "'");
  }
  t.host = u.host_address();
  if (t.host.empty()) return fail(Errc::invalid_argument, "URL '" + url + "' has no host");
  t.port = u.has_port() ? std::string(u.port()) : std::string(t.tls ? "443" : "80");
  t.host_header = std::string(u.encoded_host_and_port());
  t.target = std::string(u.encoded_target());
  if (t.target.empty()) t.target = "/";
  return t;
}

/// Resolves `location` (absolute or relative) against `base`.
Result<std::string> resolve_location(const std::string& base, std::string_view location) {
  auto b = boost::urls::parse_uri(base);
  auto ref = boost::urls::parse_uri_reference(location);
  if (!b || !ref) {
    return fail(Errc::protocol, "bad redirect Location '" + std::string(location) + "' from " + base);
  }
  boost::urls::url dest;
  auto r = boost::urls::resolve(*b, *ref, dest);
  if (!r) {
    return fail(Errc::protocol, "cannot resolve redirect Location '" + std::string(location) +
                                    "' against " + base + ": " + r.error().message());
  }
  dest.remove_fragment();
  return std::string(dest.buffer());
}

std::optional<ContentRange> parse_content_range(std::string_view v) {
  if (!v.starts_with("bytes ")) return std::nullopt;
  v.remove_prefix(6);
  const auto slash = v.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  const std::string_view range = v.substr(0, slash), size = v.substr(slash + 1);
  ContentRange cr;
  if (size != "*") {
    cr.complete = parse_u64(size);
    if (!cr.complete) return std::nullopt;
  }
  if (range == "*") return cr;  // the 416 form; first/last unused
  const auto dash = range.find('-');
  if (dash == std::string_view::npos) return std::nullopt;
  auto a = parse_u64(range.substr(0, dash)), b = parse_u64(range.substr(dash + 1));
  if (!a || !b || *b < *a) return std::nullopt;
  cr.first = *a;
  cr.last = *b;
  return cr;
}

bool certificate_error(const boost::system::error_code& ec) {
  if (ec.category() != asio::error::get_ssl_category()) return false;
  switch (ERR_GET_REASON(static_cast<unsigned long>(ec.value()))) {
    case SSL_R_CERTIFICATE_VERIFY_FAILED:
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
    case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
    case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
      return true;
    default:
      return false;
  }
}

std::string describe(const boost::system::error_code& ec) {
  if (ec == beast::error::timeout) return "timed out";
  std::string m = ec.message();
  if (ec.category() == asio::error::get_ssl_category()) {
    char buf[256];
    ERR_error_string_n(static_cast<unsigned long>(ec.value()), buf, sizeof buf);
    m = std::string("TLS error: ") + buf;
  }
  return m;
}

Result<void> configure_client_tls(ssl::context& ctx, const DownloadOptions& opts) {
  boost::system::error_code ec;
  ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                  ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
  ctx.set_verify_mode(ssl::verify_peer, ec);
  if (opts.ca_file.empty()) {
    ctx.set_default_verify_paths(ec);
    if (ec) return fail(Errc::invalid_argument, "loading the system CA certificates: " + ec.message());
  } else {
    ctx.load_verify_file(opts.ca_file, ec);
    if (ec) {
      return fail(Errc::invalid_argument, "loading CA file " + opts.ca_file + ": " + describe(ec));
    }
  }
  if (!opts.cert_file.empty()) {
    ctx.use_certificate_chain_file(opts.cert_file, ec);
    if (ec) {
      return fail(Errc::invalid_argument,
                  "loading client certificate " + opts.cert_file + ": " + describe(ec));
    }
    ctx.use_private_key_file(opts.key_file.empty() ? opts.cert_file : opts.key_file,
                             ssl::context::pem, ec);
    if (ec) {
      return fail(Errc::invalid_argument, "loading client key " + opts.key_file + ": " + describe(ec));
    }
  }
  return {};
}

}  // namespace tern::agent::detail
