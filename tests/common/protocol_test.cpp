#include "common/protocol.hpp"

#include <gtest/gtest.h>

namespace tern::protocol {
namespace {

const std::string sha(64, 'a');

TEST(Protocol, DeploymentRoundTrip) {
  Deployment d{"dep-1", "release-2", "https://127.0.0.1:8443/artifacts/release-2.mender", 123456, sha};
  auto parsed = parse_deployment(serialize(d));
  ASSERT_TRUE(parsed) << parsed.error().message();
  EXPECT_EQ(*parsed, d);
}

TEST(Protocol, DeploymentRejectsEachBadField) {
  struct Case {
    std::string payload;
    std::string expected;
  } cases[] = {
      {"", "deployment message: not valid JSON"},
      {"[]", "deployment message: expected a JSON object"},
      {R"({"artifact_name":"a","url":"https://x","size":1,"sha256":")" + sha + "\"}",
       "deployment message: missing field 'deployment_id'"},
      {R"({"deployment_id":"../x","artifact_name":"a","url":"https://x","size":1,"sha256":")" + sha + "\"}",
       "deployment message: field 'deployment_id': '../x' is not a valid id"},
      {R"({"deployment_id":"d","artifact_name":"a","url":"ftp://x","size":1,"sha256":")" + sha + "\"}",
       "deployment message: field 'url': 'ftp://x' is not an http(s) URL"},
      {R"({"deployment_id":"d","artifact_name":"a","url":"https://x","size":-1,"sha256":")" + sha + "\"}",
       "deployment message: field 'size': expected an unsigned integer"},
      {R"({"deployment_id":"d","artifact_name":"a","url":"https://x","size":1,"sha256":"abc"})",
       "deployment message: field 'sha256': expected 64 lowercase hex digits"},
      {R"({"deployment_id":"d","artifact_name":"","url":"https://x","size":1,"sha256":")" + sha + "\"}",
       "deployment message: field 'artifact_name' is empty"},
  };
  for (auto& c : cases) {
    auto r = parse_deployment(c.payload);
    ASSERT_FALSE(r) << c.payload;
    EXPECT_TRUE(r.error().message().starts_with(c.expected)) << r.error().message() << " for " << c.payload;
    EXPECT_EQ(r.error().code(), Errc::invalid_argument);
  }
}

TEST(Protocol, OversizedPayloadIsRejectedUnparsed) {
  std::string huge = R"({"deployment_id":"d","pad":")" + std::string(max_message_size, 'x') + "\"}";
  auto r = parse_status(huge);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("over the limit"), std::string::npos);
}

TEST(Protocol, StatusRoundTripAndWords) {
  StatusEvent s{"dep-1", Status::already_installed, 10, 20, 2, "", 1764028800, 7};
  auto json = serialize(s);
  EXPECT_NE(json.find("\"status\":\"already-installed\""), std::string::npos);
  auto parsed = parse_status(json);
  ASSERT_TRUE(parsed) << parsed.error().message();
  EXPECT_EQ(*parsed, s);
  for (auto st : {Status::downloading, Status::installing, Status::rebooting, Status::success,
                  Status::failure, Status::already_installed, Status::aborted})
    EXPECT_EQ(parse_status_word(to_string(st)).value(), st);
  EXPECT_TRUE(is_final(Status::failure));
  EXPECT_FALSE(is_final(Status::rebooting));
  auto bad = parse_status(R"({"deployment_id":"d","status":"exploded"})");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message(), "status message: field 'status': 'exploded' is not a deployment status");
}

TEST(Protocol, StatusCarriesTheBytesFetchedAndReusedOfAnAdaptiveInstall) {
  StatusEvent s{.deployment_id = "dep-1",
                .status = Status::installing,
                .bytes = 900,
                .total = 900,
                .attempt = 1,
                .time = 1764028800,
                .seq = 8,
                .bytes_fetched = 123456,
                .bytes_reused = 7890123};
  auto json = serialize(s);
  EXPECT_NE(json.find("\"bytes_fetched\":123456"), std::string::npos) << json;
  EXPECT_NE(json.find("\"bytes_reused\":7890123"), std::string::npos) << json;
  EXPECT_EQ(parse_status(json).value(), s);
  // Older agents send neither: both read as 0, and the fields are not written when 0.
  auto old = parse_status(R"({"deployment_id":"d","status":"downloading","bytes":5})");
  ASSERT_TRUE(old) << old.error().message();
  EXPECT_EQ(old->bytes_fetched, 0u);
  EXPECT_EQ(serialize(*old).find("bytes_fetched"), std::string::npos);
  EXPECT_FALSE(parse_status(R"({"deployment_id":"d","status":"downloading","bytes_reused":"lots"})"));
}

TEST(Protocol, PresenceAndInventory) {
  Presence p{true, 5, 100};
  EXPECT_EQ(parse_presence(serialize(p)).value(), p);
  EXPECT_FALSE(parse_presence(R"({"state":"maybe"})"));
  Inventory inv{{"device_type", "qemu"}, {"artifact_name", "r1"}};
  EXPECT_EQ(parse_inventory(serialize(inv)).value(), inv);
  EXPECT_EQ(parse_inventory(R"({"rootfs_size":1024,"ok":true})").value().at("rootfs_size"), "1024");
  EXPECT_FALSE(parse_inventory(R"({"x":{"nested":1}})"));
}

TEST(Protocol, Topics) {
  EXPECT_EQ(topics::deployment("device-1"), "tern/devices/device-1/deployment");
  EXPECT_EQ(topics::fleet_deployment("d1"), "tern/fleet/deployments/d1");
  auto t = topics::parse_device_topic("tern/devices/device-7/status");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->device_id, "device-7");
  EXPECT_EQ(t->kind, "status");
  EXPECT_FALSE(topics::parse_device_topic("tern/devices/device-7/other"));
  EXPECT_FALSE(topics::parse_device_topic("tern/devices/+/status"));
  EXPECT_FALSE(topics::parse_device_topic("tern/fleet/devices/x"));
  EXPECT_TRUE(valid_id("device_1.a-b"));
  EXPECT_FALSE(valid_id(""));
  EXPECT_FALSE(valid_id("a/b"));
  EXPECT_FALSE(valid_id(std::string(129, 'a')));
}

}  // namespace
}  // namespace tern::protocol
