#include "common/log_protocol.hpp"

#include "common/json.hpp"
#include "common/protocol.hpp"

#include <boost/json/object.hpp>

namespace tern::protocol {
namespace {

Error invalid(std::string msg) { return fail(Errc::invalid_argument, "log message: " + std::move(msg)); }

/// Length of the valid UTF-8 sequence at `s[i]`, or 0.
std::size_t utf8_length(std::string_view s, std::size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  std::size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  for (std::size_t k = 1; k < n; ++k)
    if ((static_cast<unsigned char>(s[i + k]) >> 6) != 0x2) return 0;
  return n;
}

std::string clean(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    auto n = utf8_length(text, i);
    const auto c = static_cast<unsigned char>(text[i]);
    if (n == 0 || (n == 1 && c < 0x20 && c != '\n' && c != '\t') || c == 0x7f) {
      out += '?';
      i += n ? n : 1;
      continue;
    }
    out.append(text.substr(i, n));
    i += n;
  }
  return out;
}

}  // namespace

Result<LogPiece> parse_log_piece(std::string_view payload) {
  auto doc = json::Document::parse(payload, "log message", max_message_size);
  if (!doc) return doc.error();
  auto o = doc->root();
  if (!o) return o.error();
  LogPiece p;
  auto id = o->string("deployment_id");
  if (!id) return id.error();
  if (!valid_id(*id)) return invalid("field 'deployment_id': '" + *id + "' is not a valid id");
  p.deployment_id = *id;
  auto seq = o->u64_or("seq", 0);
  if (!seq) return seq.error();
  p.seq = *seq;
  auto part = o->u64("part");
  if (!part) return part.error();
  auto parts = o->u64("parts");
  if (!parts) return parts.error();
  if (*parts == 0 || *parts > max_log_pieces)
    return invalid("field 'parts': " + std::to_string(*parts) + " is not in 1.." + std::to_string(max_log_pieces));
  if (*part >= *parts) return invalid("field 'part': " + std::to_string(*part) + " is not below 'parts'");
  p.part = static_cast<std::uint32_t>(*part);
  p.parts = static_cast<std::uint32_t>(*parts);
  auto data = o->string("data");
  if (!data) return data.error();
  p.data = *data;
  return p;
}

std::string serialize(const LogPiece& p) {
  boost::json::object o;
  o["deployment_id"] = p.deployment_id;
  o["seq"] = p.seq;
  o["part"] = p.part;
  o["parts"] = p.parts;
  o["data"] = p.data;
  return json::write(o);
}

std::vector<std::string> split_log(std::string_view text, std::size_t max_piece) {
  const std::string all = clean(text);
  std::string_view rest = all;
  if (max_piece < 8) max_piece = 8;
  // Keep the newest text when the log would need more pieces than allowed.
  if (rest.size() > max_piece * max_log_pieces) rest.remove_prefix(rest.size() - max_piece * max_log_pieces);
  while (!rest.empty() && (static_cast<unsigned char>(rest[0]) >> 6) == 0x2) rest.remove_prefix(1);
  std::vector<std::string> pieces;
  while (!rest.empty()) {
    std::size_t n = std::min(rest.size(), max_piece);
    if (n < rest.size()) {
      auto nl = rest.rfind('\n', n - 1);
      if (nl != std::string_view::npos && nl >= n / 2) n = nl + 1;
      else
        while (n > 1 && (static_cast<unsigned char>(rest[n]) >> 6) == 0x2) --n;  // not inside a sequence
    }
    pieces.emplace_back(rest.substr(0, n));
    rest.remove_prefix(n);
  }
  while (pieces.size() > max_log_pieces) pieces.erase(pieces.begin());
  return pieces;
}

namespace topics {
std::string log(std::string_view device_id) { return "tern/devices/" + std::string(device_id) + "/log"; }
}  // namespace topics

}  // namespace tern::protocol
