// Byte ranges of one artifact over a kept-alive HTTP(S) connection: what an adaptive install
// fetches (the frames it cannot build from local data).
//
//   RangeClient client(options, "https://host/artifacts/a.mender");
//   const std::vector<ByteRange> ranges = plan.ranges;          // ascending, non-overlapping
//   auto r = co_await client.fetch(ranges, sink);               // sink(index, bytes), in order
//
// Requests: one connection, kept alive across requests and fetch() calls (HTTP/1.1; a new one
// when the server closes it, says `Connection: close`, or a request on it fails). Each request
// asks for several ranges (`Range: bytes=a-b,c-d,...`, at most kMaxRangesPerRequest of them and a
// header under kMaxRangeHeader characters) and reads the `206 multipart/byteranges` answer part by
// part, or a single-part 206 whose Content-Range covers what was asked (a server may coalesce
// ranges: the bytes between them are skipped). A server that answers several ranges with the
// whole file (200: nginx with `max_ranges 1`) gets that connection closed unread, then one range
// per request from then on (still kept alive). Every request carries If-Range with the known
// validator (strong ETag, else Last-Modified) once one is known: from the first answer, or from
// assume().
//
// Failures: a cut link, a read timeout (half-open TCP) or a 5xx reconnects with DownloadOptions'
// backoff, jitter, max_attempts and max_total (per fetch() call, as download()) and asks only for
// the bytes not delivered yet: no byte reaches the sink twice, and none is fetched twice beyond
// what was in flight. A request on a reused connection that fails before any answer (the server
// closed it while idle) is sent again on a new connection at once. The body goes through a fixed
// 64 KiB buffer under DownloadOptions::max_bytes_per_second (rate_limit.hpp); memory stays flat.
//
// Errors (tern::Error, the message names the URL):
//   Errc::invalid_argument       ranges not ascending/non-overlapping/non-empty, past the known
//                                size, malformed URL, bad TLS files
//   AgentErrc::range_ignored     the server answered a single-range request with the whole file
//   AgentErrc::source_changed    the artifact changed: other validators (ETag, Last-Modified, size)
//                                than the known ones, or a 200 to an If-Range request without them
//   Errc::protocol               4xx/416, a malformed or mismatched answer (a multipart part whose
//                                Content-Range is not what was asked, a bad boundary), a TLS
//                                certificate failure, too many redirects
//   Errc::timeout                max_attempts or max_total exhausted (the last failure named)
//   Errc::cancelled              the awaiting operation was cancelled (per-operation cancellation);
//                                returns promptly, the connection is closed
//   anything the sink returns, passed through
//
// Thread safety: none. One fetch() at a time, always on the same executor; the sink runs on it.
#pragma once

#include "agent/download/https_download.hpp"
#include "artifacts/adaptive.hpp"
#include "common/error.hpp"

#include <boost/asio/awaitable.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>

namespace tern::agent {

/// Called with the bytes of ranges[index], in order: every range's bytes in full (in one or more
/// calls), ranges in the order given. The span is valid until the awaitable completes; an error
/// ends fetch() with it.
using RangeSink =
    std::function<boost::asio::awaitable<Result<void>>(std::size_t index, std::span<const std::uint8_t> bytes)>;

/// Byte ranges of one artifact URL over a kept-alive HTTPS connection (see the file comment).
class RangeClient {
 public:
  static constexpr std::size_t kMaxRangesPerRequest = 100;
  static constexpr std::size_t kMaxRangeHeader = 3000;  ///< characters of the Range value

  RangeClient(const DownloadOptions& options, std::string url);
  ~RangeClient();
  RangeClient(const RangeClient&) = delete;
  RangeClient& operator=(const RangeClient&) = delete;

  /// Delivers `ranges` (artifact offsets; ascending, non-overlapping, non-empty) to `sink`.
  /// Both must stay valid until the awaitable completes.
  boost::asio::awaitable<Result<void>> fetch(std::span<const artifacts::ByteRange> ranges, const RangeSink& sink);

  /// Validators kept from an earlier run: every request carries If-Range with them, and an
  /// answer with others fails with source_changed.
  void assume(std::string etag, std::string last_modified, std::uint64_t total);
  std::optional<std::uint64_t> total() const;  ///< the artifact's size, once known
  const std::string& etag() const;
  const std::string& last_modified() const;
  bool has_validators() const;
  std::uint64_t received() const;  ///< body bytes received from the network (all attempts)
  int attempts() const;            ///< connections made
  std::uint64_t requests() const;  ///< GETs sent
  bool multi_range() const;        ///< false once the server refused several ranges per request

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace tern::agent
