// The deployment-log wire format (common/log_protocol.hpp): pieces that fit a message, valid
// UTF-8 JSON text, errors naming the field.
#include "common/log_protocol.hpp"
#include "common/protocol.hpp"

#include <gtest/gtest.h>

namespace tern::protocol {
namespace {

TEST(LogProtocol, PieceRoundTripAndBadFields) {
  LogPiece p{.deployment_id = "dep-1", .seq = 42, .part = 1, .parts = 3, .data = "a \"quoted\"\nline\t\\\n"};
  auto parsed = parse_log_piece(serialize(p));
  ASSERT_TRUE(parsed) << parsed.error().message();
  EXPECT_EQ(*parsed, p);
  auto bad_part = parse_log_piece(R"({"deployment_id":"d","seq":1,"part":3,"parts":3,"data":""})");
  ASSERT_FALSE(bad_part);
  EXPECT_NE(bad_part.error().message().find("field 'part'"), std::string::npos) << bad_part.error().message();
  auto too_many = parse_log_piece(R"({"deployment_id":"d","seq":1,"part":0,"parts":65,"data":""})");
  ASSERT_FALSE(too_many);
  EXPECT_NE(too_many.error().message().find("field 'parts'"), std::string::npos);
  auto bad_id = parse_log_piece(R"({"deployment_id":"../x","part":0,"parts":1,"data":""})");
  ASSERT_FALSE(bad_id);
  EXPECT_NE(bad_id.error().message().find("'../x' is not a valid id"), std::string::npos);
}

TEST(LogProtocol, SplitCutsAtLineEndsKeepsUtf8AndEveryPieceFitsAMessage) {
  std::string text;
  for (int i = 0; i < 3000; ++i) text += "line " + std::to_string(i) + " \xc3\xa9t\xc3\xa9 \"quoted\" \\ tab\t\n";
  text += std::string("bad bytes: \xff\xfe control: \x01\x1b end\n");
  auto pieces = split_log(text);
  ASSERT_GT(pieces.size(), 1u);
  std::string joined;
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    EXPECT_LE(pieces[i].size(), log_piece_bytes);
    if (i + 1 < pieces.size()) {
      EXPECT_EQ(pieces[i].back(), '\n') << "piece " << i << " ends at a line end";
    }
    const LogPiece p{.deployment_id = "d", .seq = 1, .part = static_cast<std::uint32_t>(i),
                     .parts = static_cast<std::uint32_t>(pieces.size()), .data = pieces[i]};
    auto wire = serialize(p);
    EXPECT_LE(wire.size(), max_message_size);
    auto back = parse_log_piece(wire);  // simdjson validates UTF-8
    ASSERT_TRUE(back) << back.error().message();
    joined += back->data;
  }
  EXPECT_EQ(joined.substr(0, joined.size() - 40), text.substr(0, joined.size() - 40));
  EXPECT_NE(joined.find("bad bytes: ?? control: ?? end\n"), std::string::npos) << joined.substr(joined.size() - 80);

  // One long line with multi-byte characters: cut between characters, never inside one.
  std::string wide;
  for (int i = 0; i < 20000; ++i) wide += "\xe2\x82\xac";  // €, 3 bytes
  auto cut = split_log(wide, 1000);
  std::string again;
  for (const auto& piece : cut) {
    EXPECT_EQ(piece.size() % 3, 0u);
    again += piece;
  }
  EXPECT_EQ(again, wide.substr(wide.size() - again.size()));
  EXPECT_LE(cut.size(), std::size_t{max_log_pieces}) << "the oldest text goes beyond the piece limit";
}

}  // namespace
}  // namespace tern::protocol
