// MQTT 5 packets: the encoders and decoders Tern's own client needs (common/mqtt/asio_client.cpp).
// Encoders append one whole packet to a byte string, so a writer can send many in one write.
// Decoders take a packet body (views into the caller's buffer) and return an Error naming what is
// malformed; nothing here trusts a length from the wire.
//
//   std::string out;
//   codec::puback(out, 7);
//   codec::Frame f;
//   auto n = codec::split(in, f, 1 << 20);   // 0: incomplete, error: malformed or too large
//   if (n && *n && f.type == codec::Type::publish) auto p = codec::parse_publish(f);
#pragma once

#include "common/error.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tern::mqtt::codec {

enum class Type : std::uint8_t {
  connect = 1, connack, publish, puback, pubrec, pubrel, pubcomp, subscribe, suback, unsubscribe,
  unsuback, pingreq, pingresp, disconnect, auth,
};

/// The properties Tern reads; every other valid property is skipped.
struct Properties {
  std::optional<std::uint16_t> receive_maximum, server_keepalive, topic_alias;
  std::optional<std::uint32_t> maximum_packet_size;
  std::string_view response_topic, correlation_data, reason_string;
};

struct Will {
  std::string_view topic, payload;
  int qos = 1;
  bool retain = false;
};

struct ConnectParams {
  std::string_view client_id;
  std::uint16_t keepalive = 60;  ///< seconds
  bool clean_start = false;
  std::uint32_t session_expiry = 0;  ///< seconds
  const Will* will = nullptr;
};

void connect(std::string& out, const ConnectParams& p);
/// Returns the offset of the packet identifier in `out` (for QoS 1, to be set when the message
/// gets one: set_packet_id), or std::string::npos for QoS 0.
std::size_t publish(std::string& out, std::string_view topic, std::string_view payload, int qos, bool retain,
                    std::string_view response_topic = {}, std::string_view correlation_data = {});
void set_packet_id(std::string& packet, std::size_t at, std::uint16_t id);
/// Marks a PUBLISH that starts at packet[0] as a redelivery (DUP).
void set_dup(std::string& packet);
void puback(std::string& out, std::uint16_t id);
/// retain_handling: 0 sends retained messages on every subscribe, 1 only for a new subscription.
void subscribe(std::string& out, std::uint16_t id, std::string_view filter, int qos, int retain_handling);
void unsubscribe(std::string& out, std::uint16_t id, std::string_view filter);
void pingreq(std::string& out);
void disconnect(std::string& out, std::uint8_t reason = 0);

/// One packet: its type, the flags of its first byte and its body (a view into the input).
struct Frame {
  Type type{};
  std::uint8_t flags = 0;
  std::string_view body;
};

/// Splits the packet at the front of `in`: the bytes it takes, 0 when `in` holds only part of it.
/// Errors: a malformed length, or a packet over `max_size` bytes.
Result<std::size_t> split(std::string_view in, Frame& f, std::size_t max_size);

struct Connack {
  bool session_present = false;
  std::uint8_t reason = 0;
  Properties props;
};
struct Publish {
  std::string_view topic, payload;
  int qos = 0;
  bool retain = false, dup = false;
  std::uint16_t id = 0;
  Properties props;
};
/// PUBACK (one reason), SUBACK and UNSUBACK (one reason per filter).
struct Ack {
  std::uint16_t id = 0;
  std::vector<std::uint8_t> reasons;
  Properties props;
};
struct Disconnect {
  std::uint8_t reason = 0;
  Properties props;
};

Result<Connack> parse_connack(const Frame& f);
Result<Publish> parse_publish(const Frame& f);
Result<Ack> parse_ack(const Frame& f);  ///< PUBACK, SUBACK or UNSUBACK
Result<Disconnect> parse_disconnect(const Frame& f);

/// "not authorized", "quota exceeded", ... for a reason code (MQTT 5, section 2.4).
std::string_view reason_name(std::uint8_t code);

}  // namespace tern::mqtt::codec
