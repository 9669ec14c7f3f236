// Multi-range answers, sans-io (see byteranges.hpp).
#include "agent/download/byteranges.hpp"

#include <algorithm>
#include <cctype>

namespace tern::agent {
namespace {

constexpr std::size_t kMaxLine = 4096;     // a part header line, or the preamble
constexpr std::size_t kMaxHeaders = 4096;  // a part's header block

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

std::string spec(const ByteRange& r) {
  return std::to_string(r.offset) + "-" + std::to_string(r.offset + r.length - 1);
}

std::string show(const detail::ContentRange& cr) {
  return "bytes " + std::to_string(cr.first) + "-" + std::to_string(cr.last) + "/" +
         (cr.complete ? std::to_string(*cr.complete) : std::string("*"));
}

}  // namespace

std::string range_header(std::span<const ByteRange> ranges) {
  std::string h = "bytes=";
  for (std::size_t i = 0; i < ranges.size(); ++i) {
    if (i) h += ',';
    h += spec(ranges[i]);
  }
  return h;
}

std::optional<std::string> multipart_boundary(std::string_view content_type) {
  auto semi = content_type.find(';');
  if (!iequals(trim(content_type.substr(0, semi)), "multipart/byteranges")) return std::nullopt;
  while (semi != std::string_view::npos) {
    content_type.remove_prefix(semi + 1);
    semi = content_type.find(';');
    const auto param = trim(content_type.substr(0, semi));
    const auto eq = param.find('=');
    if (eq == std::string_view::npos || !iequals(trim(param.substr(0, eq)), "boundary")) continue;
    auto value = trim(param.substr(eq + 1));
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') value = value.substr(1, value.size() - 2);
    if (value.empty() || value.size() > 70) return std::nullopt;  // RFC 2046: 1 to 70 characters
    return std::string(value);
  }
  return std::nullopt;
}

// ---- RangeCursor ----

RangeCursor::RangeCursor(std::span<const ByteRange> ranges) : ranges_(ranges.begin(), ranges.end()) {
  if (!ranges_.empty()) pos_ = delivered_end_ = ranges_.front().offset;
}

Result<void> RangeCursor::check() const {
  for (std::size_t i = 0; i < ranges_.size(); ++i) {
    const auto& r = ranges_[i];
    if (r.length == 0) return fail(Errc::invalid_argument, "range " + std::to_string(i) + " is empty");
    if (r.offset + r.length < r.offset) {
      return fail(Errc::invalid_argument, "range " + std::to_string(i) + " goes past 2^64");
    }
    if (i > 0 && r.offset < ranges_[i - 1].offset + ranges_[i - 1].length) {
      return fail(Errc::invalid_argument, "range " + std::to_string(i) + " (bytes " + spec(r) +
                                              ") does not come after range " + std::to_string(i - 1) +
                                              " (bytes " + spec(ranges_[i - 1]) + ")");
    }
  }
  return {};
}

std::vector<ByteRange> RangeCursor::next_request(std::size_t max_ranges, std::size_t max_header) const {
  std::vector<ByteRange> out;
  std::size_t chars = 6;  // "bytes="
  for (std::size_t i = index_; i < ranges_.size() && out.size() < std::max<std::size_t>(max_ranges, 1); ++i) {
    ByteRange r = ranges_[i];
    if (i == index_) r = {pos_, r.offset + r.length - pos_};
    const std::size_t add = spec(r).size() + (out.empty() ? 0 : 1);
    if (!out.empty() && chars + add > max_header) break;
    chars += add;
    out.push_back(r);
  }
  return out;
}

Result<void> RangeCursor::begin_part(const detail::ContentRange& cr, std::uint64_t asked_last,
                                     std::optional<std::uint64_t> total) {
  const std::string part = "Content-Range '" + show(cr) + "'";
  if (done()) return fail(Errc::protocol, part + " after every range asked was delivered");
  if (total && cr.complete && *total != *cr.complete) {
    return fail(Errc::protocol, part + " gives another size than the " + std::to_string(*total) + " bytes known");
  }
  if (cr.first > pos_ || cr.first < delivered_end_ || cr.last < pos_) {
    return fail(Errc::protocol, part + " where bytes from " + std::to_string(pos_) + " (range " +
                                    std::to_string(index_) + ") were expected");
  }
  if (cr.last > asked_last) {
    return fail(Errc::protocol, part + " goes past the last byte asked (" + std::to_string(asked_last) + ")");
  }
  part_pos_ = cr.first;
  part_end_ = cr.last + 1;
  return {};
}

std::optional<RangeCursor::Piece> RangeCursor::take(std::span<const std::uint8_t>& in) {
  const std::uint64_t n = std::min<std::uint64_t>(in.size(), part_left());
  if (n == 0) return std::nullopt;
  if (part_pos_ < pos_ || done()) {  // a gap the server sent along (coalesced ranges): skip it
    const auto k = static_cast<std::size_t>(done() ? n : std::min<std::uint64_t>(n, pos_ - part_pos_));
    in = in.subspan(k);
    part_pos_ += k;
    return std::nullopt;
  }
  const auto& r = ranges_[index_];
  const auto k = static_cast<std::size_t>(std::min<std::uint64_t>(n, r.offset + r.length - pos_));
  Piece piece{index_, in.first(k)};
  in = in.subspan(k);
  part_pos_ += k;
  advance(k);
  return piece;
}

void RangeCursor::advance(std::uint64_t n) {
  pos_ += n;
  delivered_ += n;
  delivered_end_ = pos_;
  if (pos_ == ranges_[index_].offset + ranges_[index_].length && ++index_ < ranges_.size()) {
    pos_ = ranges_[index_].offset;
  }
}

// ---- MultipartParser ----

MultipartParser::MultipartParser(std::string boundary) : dash_boundary_("--" + std::move(boundary)) {}

Result<bool> MultipartParser::read_line(std::span<const std::uint8_t>& in) {
  const auto lf = std::find(in.begin(), in.end(), std::uint8_t('\n'));
  const bool whole = lf != in.end();
  const std::size_t k = static_cast<std::size_t>(lf - in.begin()) + (whole ? 1 : 0);
  if (line_.size() + k > kMaxLine) {
    return fail(Errc::protocol, "multipart body: a line of more than " + std::to_string(kMaxLine) +
                                    " bytes around part " + std::to_string(parts_ + 1));
  }
  line_.append(reinterpret_cast<const char*>(in.data()), whole ? k - 1 : k);
  in = in.subspan(k);
  return whole;
}

Result<MultipartParser::Event> MultipartParser::next(std::span<const std::uint8_t>& in) {
  using Kind = Event::Kind;
  const std::string part = "multipart body, part " + std::to_string(parts_ + (state_ == State::headers ? 1 : 0));
  while (!in.empty()) {
    if (state_ == State::end) {
      in = {};  // the epilogue
      return Event{Kind::end, {}, {}};
    }
    if (state_ == State::data) {
      const auto k = static_cast<std::size_t>(std::min<std::uint64_t>(in.size(), data_left_));
      Event ev{Kind::data, {}, in.first(k)};
      in = in.subspan(k);
      data_left_ -= k;
      if (data_left_ == 0) {
        state_ = State::after_data;
        blank_seen_ = false;
      }
      return ev;
    }
    auto whole = read_line(in);
    if (!whole) return whole.error();
    if (state_ == State::after_data && blank_seen_ && trim(line_) == dash_boundary_ + "--") {
      state_ = State::end;  // the close delimiter (its CRLF may be missing at the body's end)
      line_.clear();
      continue;
    }
    if (!*whole) break;
    const std::string_view line = trim(line_);
    switch (state_) {
      case State::preamble:
        if (line == dash_boundary_) {
          state_ = State::headers;
          header_bytes_ = 0;
          part_range_.reset();
        } else if (line == dash_boundary_ + "--") {
          return fail(Errc::protocol, "multipart body closes before its first part");
        } else if ((header_bytes_ += line_.size() + 1) > kMaxLine) {
          return fail(Errc::protocol, "multipart body: no boundary line '" + dash_boundary_ + "' in its first " +
                                          std::to_string(kMaxLine) + " bytes");
        }
        break;
      case State::headers:
        if ((header_bytes_ += line_.size() + 1) > kMaxHeaders) {
          return fail(Errc::protocol, part + ": headers longer than " + std::to_string(kMaxHeaders) + " bytes");
        }
        if (line.empty()) {
          if (!part_range_) return fail(Errc::protocol, part + " has no Content-Range");
          state_ = State::data;
          data_left_ = part_range_->last - part_range_->first + 1;
          ++parts_;
          line_.clear();
          return Event{Kind::part, *part_range_, {}};
        }
        if (const auto colon = line.find(':'); colon != std::string_view::npos &&
                                               iequals(trim(line.substr(0, colon)), "content-range")) {
          const auto value = trim(line.substr(colon + 1));
          auto cr = detail::parse_content_range(value);
          if (!cr || value.substr(6).starts_with("*")) {
            return fail(Errc::protocol, part + ": bad Content-Range '" + std::string(value) + "'");
          }
          part_range_ = *cr;
        }
        break;
      case State::after_data:
        if (!blank_seen_ && line.empty()) {
          blank_seen_ = true;  // the CRLF that ends the part's bytes
        } else if (blank_seen_ && line == dash_boundary_) {
          state_ = State::headers;
          header_bytes_ = 0;
          part_range_.reset();
        } else {
          return fail(Errc::protocol, "multipart body, part " + std::to_string(parts_) +
                                          ": expected the boundary after its " +
                                          std::to_string(part_range_->last - part_range_->first + 1) +
                                          " bytes (Content-Range " + show(*part_range_) + "), got '" +
                                          std::string(line.substr(0, 80)) + "'");
        }
        break;
      case State::data:
      case State::end:
        break;
    }
    line_.clear();
  }
  return Event{state_ == State::end ? Kind::end : Kind::need_more, {}, {}};
}

}  // namespace tern::agent
