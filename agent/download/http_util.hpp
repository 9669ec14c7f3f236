// Helpers shared by the agent's HTTP clients (download() in https_download.cpp, RangeClient in
// range_fetch.cpp): URL targets, redirects, Content-Range, ETags, TLS setup and error text.
// Internal to agent/download; no Beast templates here, so including it costs little.
#pragma once

#include "agent/download/https_download.hpp"
#include "common/error.hpp"

#include <boost/system/error_code.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace boost::asio::ssl {
class context;
}

namespace tern::agent::detail {

/// The parts of an http(s) URL a request needs.
struct Target {
  bool tls = false;
  std::string host;         ///< for DNS, SNI and certificate verification (no brackets)
  std::string port;         ///< numeric or service name
  std::string host_header;  ///< Host: value
  std::string target;       ///< path and query
};

/// Errors: Errc::invalid_argument (malformed URL, unsupported scheme, no host).
Result<Target> parse_target(const std::string& url);

/// Resolves `location` (absolute or relative) against `base`. Errors: Errc::protocol.
Result<std::string> resolve_location(const std::string& base, std::string_view location);

/// "bytes a-b/N", "bytes a-b/*" or "bytes */N" (the 416 form: first/last unused).
struct ContentRange {
  std::uint64_t first = 0, last = 0;
  std::optional<std::uint64_t> complete;
};
/// nullopt if malformed (also when last < first).
std::optional<ContentRange> parse_content_range(std::string_view v);

inline bool weak_etag(std::string_view etag) { return etag.starts_with("W/"); }

/// TLS failures about certificates (ours or theirs) do not go away by retrying.
bool certificate_error(const boost::system::error_code& ec);

/// An error code as text, with OpenSSL's reason for TLS errors and "timed out" for Beast's timeout.
std::string describe(const boost::system::error_code& ec);

/// Sets up a client TLS context from the options: TLS 1.2+, peer verification against ca_file (or
/// the system CAs), the client certificate when given. Errors: Errc::invalid_argument naming the file.
Result<void> configure_client_tls(boost::asio::ssl::context& ctx, const DownloadOptions& opts);

}  // namespace tern::agent::detail
