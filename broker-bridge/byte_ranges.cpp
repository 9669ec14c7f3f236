// The artifact server's Range handling (see byte_ranges.hpp).
#include "broker-bridge/byte_ranges.hpp"

#include "common/text.hpp"

#include <algorithm>
#include <cctype>

namespace tern::bridge {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

enum class Spec { ok, outside, malformed };

/// One "a-b | a- | -n" against a file of `size` bytes; `outside`: well-formed but not in the file.
Spec parse_spec(std::string_view v, std::uint64_t size, FileRange& out) {
  const auto dash = v.find('-');
  if (dash == std::string_view::npos) return Spec::malformed;
  const auto a = trim(v.substr(0, dash)), b = trim(v.substr(dash + 1));
  if (a.empty()) {  // suffix: the last n bytes
    const auto n = parse_u64(b);
    if (!n) return Spec::malformed;
    if (*n == 0 || size == 0) return Spec::outside;
    out.length = std::min(*n, size);
    out.first = size - out.length;
    return Spec::ok;
  }
  const auto first = parse_u64(a);
  if (!first) return Spec::malformed;
  std::uint64_t last = UINT64_MAX;
  if (!b.empty()) {
    const auto l = parse_u64(b);
    if (!l || *l < *first) return Spec::malformed;
    last = *l;
  }
  if (*first >= size) return Spec::outside;
  out.first = *first;
  out.length = std::min(last, size - 1) - *first + 1;
  return Spec::ok;
}

}  // namespace

RangeSet parse_ranges(std::string_view header, std::uint64_t size, std::size_t max_ranges) {
  using Answer = RangeSet::Answer;
  RangeSet set;
  auto v = trim(header);
  if (v.empty()) return set;
  // RFC 9110 14.2: a Range with a unit the server does not understand is ignored (the whole file);
  // unit names are case-insensitive.
  const auto eq = v.find('=');
  if (eq == std::string_view::npos || !iequals(trim(v.substr(0, eq)), "bytes")) return set;
  v.remove_prefix(eq + 1);
  std::size_t specs = 0;
  bool ascending = true;
  std::vector<FileRange> asked;
  while (true) {
    const auto comma = v.find(',');
    const auto item = trim(v.substr(0, comma));
    if (!item.empty()) {  // RFC 9110 5.6.1: empty list elements are ignored
      if (++specs > max_ranges) return set;  // too many: the whole file
      FileRange r;
      switch (parse_spec(item, size, r)) {
        case Spec::malformed:
          return {Answer::unsatisfiable, {}};
        case Spec::outside:
          break;
        case Spec::ok:
          if (!asked.empty() && r.first < asked.back().first) ascending = false;
          asked.push_back(r);
          break;
      }
    }
    if (comma == std::string_view::npos) break;
    v.remove_prefix(comma + 1);
  }
  if (specs == 0) return {Answer::unsatisfiable, {}};
  if (asked.empty()) return {Answer::unsatisfiable, {}};
  set.answer = Answer::partial;
  if (ascending) {
    for (const auto& r : asked) {  // overlapping or touching: one part
      if (!set.ranges.empty() && r.first <= set.ranges.back().first + set.ranges.back().length) {
        auto& last = set.ranges.back();
        last.length = std::max(last.first + last.length, r.first + r.length) - last.first;
      } else {
        set.ranges.push_back(r);
      }
    }
    return set;
  }
  auto sorted = asked;
  std::sort(sorted.begin(), sorted.end(), [](auto& a, auto& b) { return a.first < b.first; });
  for (std::size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i].first < sorted[i - 1].first + sorted[i - 1].length) return {};  // overlaps out of order: whole
  }
  set.ranges = std::move(asked);
  return set;
}

std::string part_header(std::string_view boundary, std::string_view content_type, const FileRange& r,
                        std::uint64_t size) {
  std::string h;
  h.reserve(128);
  h += "\r\n--";
  h += boundary;
  h += "\r\nContent-Type: ";
  h += content_type;
  h += "\r\nContent-Range: bytes " + std::to_string(r.first) + "-" + std::to_string(r.first + r.length - 1) + "/" +
       std::to_string(size) + "\r\n\r\n";
  return h;
}

std::string closing_delimiter(std::string_view boundary) { return "\r\n--" + std::string(boundary) + "--\r\n"; }

std::uint64_t multipart_length(std::string_view boundary, std::string_view content_type,
                               const std::vector<FileRange>& ranges, std::uint64_t size) {
  std::uint64_t n = closing_delimiter(boundary).size();
  for (const auto& r : ranges) n += part_header(boundary, content_type, r, size).size() + r.length;
  return n;
}

}  // namespace tern::bridge
