// The MQTT 5 codec of the Asio engine: packets it writes parse back, and what a broker (or anything
// posing as one) could send malformed is refused with an error that says what is wrong.
#include <gtest/gtest.h>

#include "common/mqtt/codec.hpp"

namespace tern::test {
namespace {

namespace codec = mqtt::codec;

codec::Frame one_frame(const std::string& bytes) {
  codec::Frame f;
  auto n = codec::split(bytes, f, 1 << 20);
  EXPECT_TRUE(n) << (n ? "" : n.error().message());
  EXPECT_EQ(n ? *n : 0, bytes.size());
  return f;
}

TEST(MqttCodec, APublishWithPropertiesParsesBack) {
  std::string out;
  const auto id_at = codec::publish(out, "tern/fleet/replies/me", R"({"ok":true})", 1, true, "tern/reply/x", "corr-7");
  ASSERT_NE(id_at, std::string::npos);
  codec::set_packet_id(out, id_at, 0x1234);
  codec::set_dup(out);
  auto f = one_frame(out);
  EXPECT_EQ(f.type, codec::Type::publish);
  auto p = codec::parse_publish(f);
  ASSERT_TRUE(p) << p.error().message();
  EXPECT_EQ(p->topic, "tern/fleet/replies/me");
  EXPECT_EQ(p->payload, R"({"ok":true})");
  EXPECT_EQ(p->qos, 1);
  EXPECT_TRUE(p->retain);
  EXPECT_TRUE(p->dup);
  EXPECT_EQ(p->id, 0x1234);
  EXPECT_EQ(p->props.response_topic, "tern/reply/x");
  EXPECT_EQ(p->props.correlation_data, "corr-7");

  // QoS 0: no packet id, and a payload over 127 bytes (a two-byte remaining length).
  std::string q0;
  const std::string big(300, 'x');
  EXPECT_EQ(codec::publish(q0, "t", big, 0, false), std::string::npos);
  auto p0 = codec::parse_publish(one_frame(q0));
  ASSERT_TRUE(p0) << p0.error().message();
  EXPECT_EQ(p0->qos, 0);
  EXPECT_EQ(p0->payload, big);
}

TEST(MqttCodec, SplitWaitsForWholePacketsAndTakesThemOneByOne) {
  std::string two;
  codec::puback(two, 7);
  codec::publish(two, "a/b", "payload", 0, false);
  codec::Frame f;
  for (std::size_t cut = 0; cut < 4; ++cut) {
    auto n = codec::split(std::string_view(two).substr(0, cut), f, 1 << 20);
    ASSERT_TRUE(n);
    EXPECT_EQ(*n, 0u) << "a packet split from " << cut << " bytes";
  }
  auto n = codec::split(two, f, 1 << 20);
  ASSERT_TRUE(n && *n == 4);
  EXPECT_EQ(f.type, codec::Type::puback);
  auto a = codec::parse_ack(f);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->id, 7);
  ASSERT_EQ(a->reasons.size(), 1u);
  EXPECT_EQ(a->reasons[0], 0);  // a two-byte PUBACK means success
  auto m = codec::split(std::string_view(two).substr(*n), f, 1 << 20);
  ASSERT_TRUE(m && *m == two.size() - 4);
  EXPECT_EQ(f.type, codec::Type::publish);
}

TEST(MqttCodec, MalformedPacketsAreRefusedWithWhatIsWrong) {
  codec::Frame f;
  // A remaining length of five bytes.
  auto n = codec::split(std::string("\x30\xff\xff\xff\xff\x01", 6), f, 1 << 20);
  ASSERT_FALSE(n);
  EXPECT_NE(n.error().message().find("remaining length"), std::string::npos) << n.error().message();
  // Over the size limit, refused before it is read.
  std::string big;
  codec::publish(big, "t", std::string(5000, 'x'), 0, false);
  auto over = codec::split(big, f, 4096);
  ASSERT_FALSE(over);
  EXPECT_NE(over.error().message().find("over the limit of 4096"), std::string::npos) << over.error().message();

  // A topic length past the end of the packet.
  auto bad_topic = codec::parse_publish(codec::Frame{codec::Type::publish, 0, std::string_view("\x00\x09" "ab", 4)});
  ASSERT_FALSE(bad_topic);
  EXPECT_NE(bad_topic.error().message().find("truncated"), std::string::npos) << bad_topic.error().message();
  // QoS 3.
  auto qos3 = codec::parse_publish(codec::Frame{codec::Type::publish, 6, std::string_view("\x00\x01t\x00\x01\x00", 6)});
  ASSERT_FALSE(qos3);
  EXPECT_NE(qos3.error().message().find("QoS 3"), std::string::npos) << qos3.error().message();
  // Packet id 0 on a QoS 1 PUBLISH.
  auto id0 = codec::parse_publish(codec::Frame{codec::Type::publish, 2, std::string_view("\x00\x01t\x00\x00\x00", 6)});
  ASSERT_FALSE(id0);
  EXPECT_NE(id0.error().message().find("identifier 0"), std::string::npos) << id0.error().message();
  // An unknown property id.
  auto prop = codec::parse_publish(codec::Frame{codec::Type::publish, 0, std::string_view("\x00\x01t\x02\x7f\x00", 6)});
  ASSERT_FALSE(prop);
  EXPECT_NE(prop.error().message().find("unknown property 127"), std::string::npos) << prop.error().message();
  // A property block longer than the packet.
  auto props_len = codec::parse_publish(codec::Frame{codec::Type::publish, 0, std::string_view("\x00\x01t\x09\x01", 5)});
  ASSERT_FALSE(props_len);
  // A SUBACK without a reason code.
  auto suback = codec::parse_ack(codec::Frame{codec::Type::suback, 0, std::string_view("\x00\x01\x00", 3)});
  ASSERT_FALSE(suback);
  EXPECT_NE(suback.error().message().find("without reason codes"), std::string::npos) << suback.error().message();
}

TEST(MqttCodec, ConnackPropertiesAndAcknowledgementReasonsAreRead) {
  // CONNACK: session present, success, Receive Maximum 1000, Server Keep Alive 30, a reason string.
  const std::string connack("\x20\x12\x01\x00\x0f\x21\x03\xe8\x13\x00\x1e\x1f\x00\x06" "hello!", 20);
  auto c = codec::parse_connack(one_frame(connack));
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_TRUE(c->session_present);
  EXPECT_EQ(c->reason, 0);
  EXPECT_EQ(c->props.receive_maximum, 1000);
  EXPECT_EQ(c->props.server_keepalive, 30);
  EXPECT_EQ(c->props.reason_string, "hello!");

  // SUBACK with one granted and one refused filter; PUBACK "not authorized".
  auto s = codec::parse_ack(codec::Frame{codec::Type::suback, 0, std::string_view("\x00\x05\x00\x01\x87", 5)});
  ASSERT_TRUE(s) << s.error().message();
  EXPECT_EQ(s->id, 5);
  EXPECT_EQ(s->reasons, (std::vector<std::uint8_t>{0x01, 0x87}));
  auto p = codec::parse_ack(codec::Frame{codec::Type::puback, 0, std::string_view("\x00\x09\x87", 3)});
  ASSERT_TRUE(p);
  EXPECT_EQ(p->reasons.front(), 0x87);
  EXPECT_EQ(codec::reason_name(0x87), "not authorized");
}

TEST(MqttCodec, ConnectCarriesTheWillAndTheSessionExpiry) {
  std::string out;
  codec::Will will{"tern/devices/d/presence", "offline", 1, true};
  codec::ConnectParams p;
  p.client_id = "d";
  p.keepalive = 45;
  p.session_expiry = 604800;
  p.will = &will;
  codec::connect(out, p);
  auto f = one_frame(out);
  EXPECT_EQ(f.type, codec::Type::connect);
  const std::string_view b = f.body;
  ASSERT_GT(b.size(), 10u);
  EXPECT_EQ(b.substr(0, 7), std::string_view("\x00\x04MQTT\x05", 7));
  const auto flags = static_cast<unsigned char>(b[7]);
  EXPECT_EQ(flags & 0x02, 0) << "clean start off";
  EXPECT_EQ(flags & 0x04, 0x04) << "will flag";
  EXPECT_EQ((flags >> 3) & 3, 1) << "will QoS";
  EXPECT_EQ(flags & 0x20, 0x20) << "will retain";
  EXPECT_EQ((static_cast<unsigned char>(b[8]) << 8) | static_cast<unsigned char>(b[9]), 45);
  // Properties: length 5, Session Expiry Interval (0x11) 604800.
  EXPECT_EQ(b.substr(10, 6), std::string_view("\x05\x11\x00\x09\x3a\x80", 6));
  EXPECT_NE(b.find("tern/devices/d/presence"), std::string_view::npos);
  EXPECT_EQ(b.substr(b.size() - 7), "offline");
}

}  // namespace
}  // namespace tern::test
