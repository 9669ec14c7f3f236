// Resumable HTTP(S) GET: the first stage of the agent's install pipeline.
//
//   DownloadState st{.url = "https://host/artifacts/a.mender"};
//   auto r = co_await download(opts, st, sink, on_restart, on_progress);
//
// The body is streamed to `sink` in chunks of at most 64 KiB; memory stays flat whatever the size.
// On a dropped connection, TLS error, read timeout (no byte for read_timeout: half-open TCP) or 5xx
// the client reconnects with exponential backoff and jitter and asks for `Range: bytes=OFFSET-` with
// `If-Range: <ETag or Last-Modified>`, so no byte is fetched or delivered twice. If the server's
// content changed (a 200 to a ranged request, or different validators), `on_restart` is called and
// the body is delivered again from byte 0. `DownloadState` is the caller's to persist: starting with
// state.offset > 0 resumes a download of an earlier run.
//
// Errors (tern::Error, message names the URL and what failed):
//   Errc::invalid_argument  malformed URL, unsupported scheme, bad options
//   Errc::protocol          4xx/416 status, too many redirects, malformed response, body shorter than
//                           announced after all attempts
//   Errc::timeout           max_attempts or max_total exhausted (the last failure is in the message)
//   Errc::cancelled         the awaiting operation was cancelled (per-operation cancellation, e.g.
//                           bind_cancellation_slot or awaitable operators ||); returns promptly
//   anything              returned by the sink or on_restart, passed through with context
//
// Thread safety: one download per DownloadState; the callbacks run on the coroutine's executor.
#pragma once

#include "common/error.hpp"

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>

namespace tern::agent {

struct DownloadOptions {
  std::string ca_file;              ///< verify the server against this CA (empty: system default)
  std::string cert_file, key_file;  ///< optional client certificate (PEM)
  std::chrono::milliseconds connect_timeout{10000};  ///< TCP connect + TLS handshake + response header
  std::chrono::milliseconds read_timeout{30000};     ///< longest silence while reading the body
  std::chrono::milliseconds backoff_initial{250}, backoff_max{30000};
  int max_attempts = 50;                ///< connections per download() call (reconnects, redirects)
  std::chrono::seconds max_total{3600};  ///< no new connection after this long (per call)
  int max_redirects = 5;                ///< per attempt
  std::uint64_t seed = 0;               ///< jitter RNG seed (0: random)
  std::uint64_t max_bytes_per_second = 0;  ///< bandwidth cap on the body (0: none; rate_limit.hpp)
};

struct DownloadState {  ///< persisted by the caller between runs
  std::string url;                     ///< as given
  std::uint64_t offset = 0;            ///< body bytes already delivered to the sink
  std::string etag, last_modified;     ///< validators from the first response
  std::optional<std::uint64_t> total;  ///< full size when known
  /// Last byte wanted (inclusive): asks `Range: bytes=offset-end` from the first request on and
  /// ends there (adaptive installs fetch frames this way). A server that answers it with the whole
  /// file (200) fails with AgentErrc::range_ignored; one whose content changed (If-Range) restarts.
  std::optional<std::uint64_t> end;
  int attempts = 0;                    ///< connections made (for status "attempt")
  std::uint64_t bytes_received = 0;    ///< body bytes actually received from the network (all attempts)
  int restarts = 0;                    ///< times the content changed and the download restarted at 0
  std::string last_error;              ///< the most recent retried failure (for logs/status)
};

/// Called with each body chunk in order; co_await-able so the consumer can apply back-pressure.
/// An error aborts the download with it. The span is valid only until the awaitable completes.
using BodySink = std::function<boost::asio::awaitable<Result<void>>(std::span<const std::uint8_t>)>;
/// Called when the server's content changed: the consumer must reset its own state; the download
/// then restarts from byte 0. Returning an error aborts the download with it.
using RestartHandler = std::function<Result<void>()>;
/// Called often (after each chunk and each state change); the caller rate-limits.
using ProgressHandler = std::function<void(const DownloadState&)>;

/// Downloads state.url to `sink`, resuming at state.offset. See the file comment for behaviour
/// and errors. `on_restart` and `on_progress` may be empty.
boost::asio::awaitable<Result<void>> download(const DownloadOptions& opts, DownloadState& state,
                                              const BodySink& sink, const RestartHandler& on_restart,
                                              const ProgressHandler& on_progress);

}  // namespace tern::agent
