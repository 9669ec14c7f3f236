// The Range header as the artifact server answers it (RFC 9110 14), sans-io.
//
//   auto set = parse_ranges(req[Range], size, kMaxRanges);
//   whole:         200 with the whole file (no Range, a unit other than bytes, which RFC 9110 14.2
//                  says to ignore, too many ranges, overlapping ranges out of order)
//   unsatisfiable: 416 + `Content-Range: bytes */size` (a malformed bytes range, or no range
//                  inside the file)
//   partial:       one range: 206 + Content-Range; several: 206 multipart/byteranges, the parts
//                  written with part_header() ... closing_delimiter(), in multipart_length() bytes
//
// Ranges past the end are clipped, ranges wholly past it dropped; ranges asked in ascending order
// that overlap or touch are merged into one part, so a body never holds a byte twice. Ranges out
// of order are answered in the order asked unless two of them overlap (then: whole). The bytes of
// a multipart answer are thus at most the file's size plus the part headers.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tern::bridge {

struct FileRange {
  std::uint64_t first = 0, length = 0;
  bool operator==(const FileRange&) const = default;
};

struct RangeSet {
  enum class Answer { whole, partial, unsatisfiable } answer = Answer::whole;
  std::vector<FileRange> ranges;  ///< partial: the parts to send, in order
};

/// `header` is the Range value ("bytes=0-9,20-,-5"); `max_ranges`: more range-specs than this are
/// ignored (the whole file), as a request for many small pieces is a way to make a server work.
RangeSet parse_ranges(std::string_view header, std::uint64_t size, std::size_t max_ranges);

/// CRLF "--boundary" CRLF Content-Type CRLF Content-Range CRLF CRLF, before a part's bytes.
std::string part_header(std::string_view boundary, std::string_view content_type, const FileRange& r,
                        std::uint64_t size);
/// CRLF "--boundary--" CRLF, after the last part.
std::string closing_delimiter(std::string_view boundary);
/// The Content-Length of the multipart body for `ranges`.
std::uint64_t multipart_length(std::string_view boundary, std::string_view content_type,
                               const std::vector<FileRange>& ranges, std::uint64_t size);

}  // namespace tern::bridge
