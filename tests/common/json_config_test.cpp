#include "common/config.hpp"
#include "common/json.hpp"
#include "tests/support/testenv.hpp"

#include <gtest/gtest.h>

namespace tern {
namespace {

TEST(Json, TypedGettersAndErrorsNameTheField) {
  auto doc = json::Document::parse(R"({"name":"a","size":42,"neg":-3,"ok":true,"list":["x","y"],"n":null})",
                                   "test message");
  ASSERT_TRUE(doc) << doc.error().message();
  auto o = doc->root().value();
  EXPECT_EQ(o.string("name").value(), "a");
  EXPECT_EQ(o.u64("size").value(), 42u);
  EXPECT_EQ(o.i64("neg").value(), -3);
  EXPECT_TRUE(o.boolean("ok").value());
  EXPECT_EQ(o.strings("list").value(), (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(o.string_or("n", "dflt").value(), "dflt");  // null counts as missing
  EXPECT_EQ(o.u64_or("absent", 7).value(), 7u);

  auto wrong = o.u64("name");
  ASSERT_FALSE(wrong);
  EXPECT_EQ(wrong.error().message(), "test message: field 'name': expected an unsigned integer");
  EXPECT_EQ(o.u64("neg").error().message(), "test message: field 'neg': expected an unsigned integer");
  EXPECT_EQ(o.string("absent").error().message(), "test message: missing field 'absent'");
  EXPECT_FALSE(o.string_or("size", "x"));  // present with the wrong type is an error, not the default
}

TEST(Json, RejectsInvalidAndOversizedDocuments) {
  auto bad = json::Document::parse("{\"a\":", "status message");
  ASSERT_FALSE(bad);
  EXPECT_TRUE(bad.error().message().starts_with("status message: not valid JSON"));
  auto big = json::Document::parse(std::string(100, ' ') + "{}", "x", 50);
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error().message(), "x: 102 bytes is over the limit of 50");
  auto arr = json::Document::parse("[1,2]", "inventory");
  ASSERT_TRUE(arr);
  EXPECT_EQ(arr->root().error().message(), "inventory: expected a JSON object");
}

TEST(Json, StringMapRendersScalarsAndRejectsNesting) {
  auto doc = json::Document::parse(R"({"a":{"s":"v","i":-1,"u":18446744073709551615,"b":false}})", "m").value();
  auto m = doc.root().value().string_map_or_empty("a").value();
  EXPECT_EQ(m.at("s"), "v");
  EXPECT_EQ(m.at("i"), "-1");
  EXPECT_EQ(m.at("u"), "18446744073709551615");
  EXPECT_EQ(m.at("b"), "false");
  auto nested = json::Document::parse(R"({"x":[1]})", "m").value().root().value().string_map();
  ASSERT_FALSE(nested);
  EXPECT_EQ(nested.error().message(), "m: field 'x': expected a string, integer or boolean");
}

TEST(Json, WriteKeepsIntegersIntegral) {
  boost::json::object o;
  o["bytes"] = std::uint64_t{42};
  o["time"] = std::int64_t{1764028800};
  EXPECT_EQ(json::write(o), R"({"bytes":42,"time":1764028800})");
}

TEST(Config, LoadsFileWithDefaults) {
  test::TempDir dir;
  test::write_file(dir / "agent.conf",
                   R"({"ServerURI":"ssl://broker:8883","InventoryPollIntervalSeconds":60,"Typo":1})");
  auto cfg = Config::load(dir / "agent.conf");
  ASSERT_TRUE(cfg) << cfg.error().message();
  EXPECT_EQ(cfg->string("ServerURI", "").value(), "ssl://broker:8883");
  EXPECT_EQ(cfg->seconds("InventoryPollIntervalSeconds", std::chrono::seconds(1)).value().count(), 60);
  EXPECT_EQ(cfg->string("DeviceType", "generic").value(), "generic");
  EXPECT_EQ(cfg->unknown_keys({"ServerURI", "InventoryPollIntervalSeconds"}), std::vector<std::string>{"Typo"});
  auto wrong = cfg->boolean("ServerURI", false);
  ASSERT_FALSE(wrong);
  EXPECT_NE(wrong.error().message().find("agent.conf: field 'ServerURI': expected true or false"),
            std::string::npos);
}

TEST(Config, ErrorsNameTheFile) {
  test::TempDir dir;
  auto missing = Config::load(dir / "nope.conf");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message().find("nope.conf"), std::string::npos);
  test::write_file(dir / "bad.conf", "{ not json");
  auto bad = Config::load(dir / "bad.conf");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("configuration " + (dir / "bad.conf").string() + ": not valid JSON"),
            std::string::npos);
}

}  // namespace
}  // namespace tern
