#include "common/mqtt/codec.hpp"

namespace tern::mqtt::codec {
namespace {

void put_u16(std::string& b, std::uint16_t v) {
  b += static_cast<char>(v >> 8);
  b += static_cast<char>(v & 0xff);
}
void put_u32(std::string& b, std::uint32_t v) {
  put_u16(b, static_cast<std::uint16_t>(v >> 16));
  put_u16(b, static_cast<std::uint16_t>(v & 0xffff));
}
void put_str(std::string& b, std::string_view s) {
  put_u16(b, static_cast<std::uint16_t>(s.size()));
  b += s;
}
void put_varint(std::string& b, std::size_t v) {
  do {
    auto c = static_cast<unsigned char>(v % 128);
    v /= 128;
    if (v) c |= 0x80;
    b += static_cast<char>(c);
  } while (v);
}
std::size_t varint_size(std::size_t v) {
  std::size_t n = 1;
  while (v >= 128) {
    v /= 128;
    ++n;
  }
  return n;
}
void header(std::string& out, std::uint8_t first, std::size_t body) {
  out += static_cast<char>(first);
  put_varint(out, body);
}

Error malformed(std::string_view what) { return fail(Errc::protocol, "malformed MQTT packet from the broker: " + std::string(what)); }

/// Reads the body of one packet front to back; every read is checked against the end.
class Reader {
 public:
  explicit Reader(std::string_view b) : b_(b) {}
  bool empty() const { return at_ >= b_.size(); }
  std::size_t left() const { return b_.size() - at_; }
  Result<std::uint8_t> u8() {
    if (left() < 1) return malformed("truncated");
    return static_cast<std::uint8_t>(b_[at_++]);
  }
  Result<std::uint16_t> u16() {
    if (left() < 2) return malformed("truncated");
    auto v = static_cast<std::uint16_t>((static_cast<unsigned char>(b_[at_]) << 8) | static_cast<unsigned char>(b_[at_ + 1]));
    at_ += 2;
    return v;
  }
  Result<std::uint32_t> u32() {
    auto hi = u16();
    if (!hi) return hi.error();
    auto lo = u16();
    if (!lo) return lo.error();
    return (std::uint32_t{*hi} << 16) | *lo;
  }
  Result<std::size_t> varint() {
    std::size_t v = 0, mult = 1;
    for (int i = 0; i < 4; ++i) {
      auto c = u8();
      if (!c) return c.error();
      v += (*c & 0x7fu) * mult;
      if (!(*c & 0x80)) return v;
      mult *= 128;
    }
    return malformed("variable byte integer longer than 4 bytes");
  }
  Result<std::string_view> bytes(std::size_t n) {
    if (left() < n) return malformed("truncated");
    auto v = b_.substr(at_, n);
    at_ += n;
    return v;
  }
  Result<std::string_view> str() {
    auto n = u16();
    if (!n) return n.error();
    return bytes(*n);
  }
  std::string_view rest() {
    auto v = b_.substr(at_);
    at_ = b_.size();
    return v;
  }

  Result<Properties> properties() {
    auto len = varint();
    if (!len) return len.error();
    auto block = bytes(*len);
    if (!block) return block.error();
    Reader r(*block);
    Properties p;
    while (!r.empty()) {
      auto id = r.varint();
      if (!id) return id.error();
      Result<void> ok;
      switch (*id) {
        // One byte.
        case 0x01: case 0x17: case 0x19: case 0x24: case 0x25: case 0x28: case 0x29: case 0x2a:
          if (auto v = r.u8(); !v) ok = v.error();
          break;
        // Two bytes.
        case 0x13: case 0x21: case 0x22: case 0x23: {
          auto v = r.u16();
          if (!v) {
            ok = v.error();
            break;
          }
          if (*id == 0x13) p.server_keepalive = *v;
          if (*id == 0x21) p.receive_maximum = *v;
          if (*id == 0x23) p.topic_alias = *v;
          break;
        }
        // Four bytes.
        case 0x02: case 0x11: case 0x18: case 0x27: {
          auto v = r.u32();
          if (!v) ok = v.error();
          else if (*id == 0x27) p.maximum_packet_size = *v;
          break;
        }
        case 0x0b:  // subscription identifier
          if (auto v = r.varint(); !v) ok = v.error();
          break;
        // Strings and binary data.
        case 0x03: case 0x08: case 0x09: case 0x12: case 0x15: case 0x16: case 0x1a: case 0x1c: case 0x1f: {
          auto v = r.str();
          if (!v) {
            ok = v.error();
            break;
          }
          if (*id == 0x08) p.response_topic = *v;
          if (*id == 0x09) p.correlation_data = *v;
          if (*id == 0x1f) p.reason_string = *v;
          break;
        }
        case 0x26: {  // user property: a string pair
          auto k = r.str();
          auto v = k ? r.str() : Result<std::string_view>(k.error());
          if (!v) ok = v.error();
          break;
        }
        default:
          return malformed("unknown property " + std::to_string(*id));
      }
      if (!ok) return ok.error();
    }
    return p;
  }

 private:
  std::string_view b_;
  std::size_t at_ = 0;
};

}  // namespace

void connect(std::string& out, const ConnectParams& p) {
  std::string b;
  put_str(b, "MQTT");
  b += '\x05';
  std::uint8_t flags = p.clean_start ? 0x02 : 0x00;
  if (p.will) flags |= static_cast<std::uint8_t>(0x04 | (p.will->qos << 3) | (p.will->retain ? 0x20 : 0));
  b += static_cast<char>(flags);
  put_u16(b, p.keepalive);
  std::string props;
  if (p.session_expiry) {
    props += '\x11';
    put_u32(props, p.session_expiry);
  }
  put_varint(b, props.size());
  b += props;
  put_str(b, p.client_id);
  if (p.will) {
    b += '\x00';  // no will properties
    put_str(b, p.will->topic);
    put_str(b, p.will->payload);
  }
  header(out, 0x10, b.size());
  out += b;
}

std::size_t publish(std::string& out, std::string_view topic, std::string_view payload, int qos, bool retain,
                    std::string_view response_topic, std::string_view correlation_data) {
  std::size_t props = 0;
  if (!response_topic.empty()) props += 3 + response_topic.size();
  if (!correlation_data.empty()) props += 3 + correlation_data.size();
  const std::size_t body = 2 + topic.size() + (qos > 0 ? 2 : 0) + varint_size(props) + props + payload.size();
  out.reserve(out.size() + 5 + body);
  header(out, static_cast<std::uint8_t>(0x30 | (qos << 1) | (retain ? 1 : 0)), body);
  put_str(out, topic);
  std::size_t id_at = std::string::npos;
  if (qos > 0) {
    id_at = out.size();
    put_u16(out, 0);
  }
  put_varint(out, props);
  if (!response_topic.empty()) {
    out += '\x08';
    put_str(out, response_topic);
  }
  if (!correlation_data.empty()) {
    out += '\x09';
    put_str(out, correlation_data);
  }
  out += payload;
  return id_at;
}

void set_packet_id(std::string& packet, std::size_t at, std::uint16_t id) {
  packet[at] = static_cast<char>(id >> 8);
  packet[at + 1] = static_cast<char>(id & 0xff);
}

void set_dup(std::string& packet) { packet[0] = static_cast<char>(static_cast<unsigned char>(packet[0]) | 0x08); }

void puback(std::string& out, std::uint16_t id) {
  out += '\x40';
  out += '\x02';
  put_u16(out, id);
}

void subscribe(std::string& out, std::uint16_t id, std::string_view filter, int qos, int retain_handling) {
  header(out, 0x82, 2 + 1 + 2 + filter.size() + 1);
  put_u16(out, id);
  out += '\x00';
  put_str(out, filter);
  out += static_cast<char>(qos | (retain_handling << 4));
}

void unsubscribe(std::string& out, std::uint16_t id, std::string_view filter) {
  header(out, 0xa2, 2 + 1 + 2 + filter.size());
  put_u16(out, id);
  out += '\x00';
  put_str(out, filter);
}

void pingreq(std::string& out) {
  out += '\xc0';
  out += '\x00';
}

void disconnect(std::string& out, std::uint8_t reason) {
  out += '\xe0';
  out += '\x01';
  out += static_cast<char>(reason);
}

Result<std::size_t> split(std::string_view in, Frame& f, std::size_t max_size) {
  if (in.size() < 2) return std::size_t{0};
  std::size_t len = 0, mult = 1, i = 1;
  for (;; ++i) {
    if (i > 4) return malformed("remaining length longer than 4 bytes");
    if (i >= in.size()) return std::size_t{0};
    auto c = static_cast<unsigned char>(in[i]);
    len += (c & 0x7fu) * mult;
    mult *= 128;
    if (!(c & 0x80)) break;
  }
  ++i;
  if (len + i > max_size)
    return fail(Errc::protocol, "an MQTT packet of " + std::to_string(len + i) + " bytes from the broker is over the limit of " +
                                    std::to_string(max_size));
  if (in.size() - i < len) return std::size_t{0};
  const auto first = static_cast<unsigned char>(in[0]);
  if ((first >> 4) == 0) return malformed("packet type 0");
  f.type = static_cast<Type>(first >> 4);
  f.flags = first & 0x0f;
  f.body = in.substr(i, len);
  return i + len;
}

Result<Connack> parse_connack(const Frame& f) {
  Reader r(f.body);
  Connack c;
  auto flags = r.u8();
  if (!flags) return flags.error();
  auto reason = r.u8();
  if (!reason) return reason.error();
  c.session_present = *flags & 1;
  c.reason = *reason;
  if (!r.empty()) {
    auto p = r.properties();
    if (!p) return p.error();
    c.props = *p;
  }
  return c;
}

Result<Publish> parse_publish(const Frame& f) {
  Reader r(f.body);
  Publish p;
  p.qos = (f.flags >> 1) & 3;
  p.retain = f.flags & 1;
  p.dup = f.flags & 8;
  if (p.qos == 3) return malformed("PUBLISH with QoS 3");
  auto topic = r.str();
  if (!topic) return topic.error();
  p.topic = *topic;
  if (p.qos > 0) {
    auto id = r.u16();
    if (!id) return id.error();
    if (*id == 0) return malformed("PUBLISH with packet identifier 0");
    p.id = *id;
  }
  auto props = r.properties();
  if (!props) return props.error();
  p.props = *props;
  if (p.topic.empty() && !p.props.topic_alias) return malformed("PUBLISH without a topic");
  if (p.topic.empty()) return malformed("PUBLISH with a topic alias (none was allowed)");
  p.payload = r.rest();
  return p;
}

Result<Ack> parse_ack(const Frame& f) {
  Reader r(f.body);
  Ack a;
  auto id = r.u16();
  if (!id) return id.error();
  a.id = *id;
  if (f.type == Type::puback) {
    if (r.empty()) {
      a.reasons.push_back(0);  // MQTT 5: a PUBACK of two bytes means success
      return a;
    }
    auto reason = r.u8();
    if (!reason) return reason.error();
    a.reasons.push_back(*reason);
    if (!r.empty()) {
      auto p = r.properties();
      if (!p) return p.error();
      a.props = *p;
    }
    return a;
  }
  auto p = r.properties();
  if (!p) return p.error();
  a.props = *p;
  for (char c : r.rest()) a.reasons.push_back(static_cast<std::uint8_t>(c));
  if (a.reasons.empty()) return malformed("acknowledgement without reason codes");
  return a;
}

Result<Disconnect> parse_disconnect(const Frame& f) {
  Reader r(f.body);
  Disconnect d;
  if (r.empty()) return d;
  auto reason = r.u8();
  if (!reason) return reason.error();
  d.reason = *reason;
  if (!r.empty()) {
    auto p = r.properties();
    if (!p) return p.error();
    d.props = *p;
  }
  return d;
}

std::string_view reason_name(std::uint8_t code) {
  switch (code) {
    case 0x00: return "success";
    case 0x10: return "no matching subscribers";
    case 0x11: return "no subscription existed";
    case 0x80: return "unspecified error";
    case 0x81: return "malformed packet";
    case 0x82: return "protocol error";
    case 0x83: return "implementation specific error";
    case 0x84: return "unsupported protocol version";
    case 0x85: return "client identifier not valid";
    case 0x86: return "bad user name or password";
    case 0x87: return "not authorized";
    case 0x88: return "server unavailable";
    case 0x89: return "server busy";
    case 0x8a: return "banned";
    case 0x8b: return "server shutting down";
    case 0x8c: return "bad authentication method";
    case 0x8d: return "keep alive timeout";
    case 0x8e: return "session taken over";
    case 0x8f: return "topic filter invalid";
    case 0x90: return "topic name invalid";
    case 0x91: return "packet identifier in use";
    case 0x92: return "packet identifier not found";
    case 0x93: return "receive maximum exceeded";
    case 0x94: return "topic alias invalid";
    case 0x95: return "packet too large";
    case 0x96: return "message rate too high";
    case 0x97: return "quota exceeded";
    case 0x98: return "administrative action";
    case 0x99: return "payload format invalid";
    case 0x9a: return "retain not supported";
    case 0x9b: return "QoS not supported";
    case 0x9c: return "use another server";
    case 0x9d: return "server moved";
    case 0x9e: return "shared subscriptions not supported";
    case 0x9f: return "connection rate exceeded";
    case 0xa0: return "maximum connect time";
    case 0xa1: return "subscription identifiers not supported";
    case 0xa2: return "wildcard subscriptions not supported";
    default: return "unknown reason code";
  }
}

}  // namespace tern::mqtt::codec
