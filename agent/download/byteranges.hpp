// Reading answers to multi-range requests, sans-io (RangeClient in range_fetch.hpp does the I/O):
//
//   RangeCursor cursor(ranges);                         // what the caller wants, ascending
//   auto ask = cursor.next_request(100, 3000);          // the next request's ranges (from position())
//   "Range: " + range_header(ask)
//   206 multipart/byteranges; boundary=B:
//     MultipartParser mp(B);
//     for each body chunk: while (!chunk.empty()) {
//       auto ev = mp.next(chunk);                       // consumes from chunk's front
//       part:  cursor.begin_part(ev.range, ask.back()) // checks it against what was asked
//       data:  while (!ev.data.empty()) if (auto p = cursor.take(ev.data)) sink(p->index, p->bytes)
//     }
//   206 with one Content-Range: begin_part once, then take() over the whole body.
//
// Errors (Errc::protocol, the message names the part and what was expected): a malformed
// multipart body (no boundary line, part headers over 4 KiB, no or a bad Content-Range, bytes
// other than the boundary after a part), or a part that does not continue where the delivered
// bytes end, goes past the bytes asked, or reports another total size.
//
// Thread safety: none; one cursor and one parser per transfer.
#pragma once

#include "agent/download/http_util.hpp"
#include "artifacts/adaptive.hpp"
#include "common/error.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace tern::agent {

using artifacts::ByteRange;

/// "bytes=a-b,c-d,..." for `ranges` (non-empty).
std::string range_header(std::span<const ByteRange> ranges);

/// The boundary parameter of "multipart/byteranges; boundary=..." (quoted or not); nullopt when the
/// type is another one or the boundary is missing or malformed.
std::optional<std::string> multipart_boundary(std::string_view content_type);

/// Which bytes of a list of ranges are still to deliver, and where received bytes go.
class RangeCursor {
 public:
  /// Errors of check(): ranges must be non-empty, ascending and non-overlapping.
  explicit RangeCursor(std::span<const ByteRange> ranges);
  /// Errc::invalid_argument when the ranges are not as required (names the first bad one).
  Result<void> check() const;

  bool done() const { return index_ >= ranges_.size(); }
  std::size_t index() const { return index_; }       ///< the range being delivered
  std::uint64_t position() const { return pos_; }    ///< its next undelivered byte (file offset)
  std::uint64_t delivered() const { return delivered_; }  ///< bytes delivered in total

  /// The next request's ranges: the rest of the current range, then the following ones, at most
  /// `max_ranges` of them and as many as fit in `max_header` characters of range_header().
  std::vector<ByteRange> next_request(std::size_t max_ranges, std::size_t max_header) const;

  /// A part (or a single-part 206) of the answer to a request whose last byte asked is
  /// `asked_last`: it must start at position() or in the gap before it (after the bytes already
  /// delivered), end no later than asked_last and deliver at least one byte; `total` is the size
  /// the client knows (checked against cr.complete when both are known). Errc::protocol otherwise.
  Result<void> begin_part(const detail::ContentRange& cr, std::uint64_t asked_last,
                          std::optional<std::uint64_t> total);
  /// Bytes of the part still expected.
  std::uint64_t part_left() const { return part_end_ - part_pos_; }

  struct Piece {
    std::size_t index;                    ///< range index
    std::span<const std::uint8_t> bytes;  ///< the next bytes of that range
  };
  /// Consumes bytes of the current part from `in`'s front (at most part_left()): gap bytes between
  /// ranges are skipped (nullopt), else the next piece of the current range is returned.
  std::optional<Piece> take(std::span<const std::uint8_t>& in);

 private:
  void advance(std::uint64_t n);

  std::vector<ByteRange> ranges_;
  std::size_t index_ = 0;
  std::uint64_t pos_ = 0;            ///< next byte wanted (inside ranges_[index_])
  std::uint64_t delivered_end_ = 0;  ///< one past the last byte delivered
  std::uint64_t delivered_ = 0;
  std::uint64_t part_pos_ = 0, part_end_ = 0;  ///< the current part's next byte and its end
};

/// A multipart/byteranges body, fed in chunks of any size. Only the part headers are buffered
/// (at most 4 KiB); part bytes are handed out as views into the input.
class MultipartParser {
 public:
  explicit MultipartParser(std::string boundary);

  struct Event {
    enum class Kind { need_more, part, data, end } kind = Kind::need_more;
    detail::ContentRange range;          ///< part: its Content-Range
    std::span<const std::uint8_t> data;  ///< data: the next bytes of the current part
  };
  /// Consumes bytes from `in`'s front and says what they were. need_more: `in` is used up (a
  /// partial line is kept); after `end` the epilogue is ignored.
  Result<Event> next(std::span<const std::uint8_t>& in);
  bool finished() const { return state_ == State::end; }
  std::size_t parts() const { return parts_; }

 private:
  enum class State { preamble, headers, data, after_data, end };
  /// Takes bytes up to and including a LF into line_; true when a whole line is there.
  Result<bool> read_line(std::span<const std::uint8_t>& in);

  std::string dash_boundary_;  ///< "--" + boundary
  State state_ = State::preamble;
  std::string line_;
  std::size_t header_bytes_ = 0;
  std::optional<detail::ContentRange> part_range_;
  std::uint64_t data_left_ = 0;
  std::size_t parts_ = 0;
  bool blank_seen_ = false;  ///< after_data: the CRLF ending the part's bytes
};

}  // namespace tern::agent
