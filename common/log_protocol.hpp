// tern/devices/{id}/log: a failed deployment's log, sent by the device in pieces (DESIGN.md's wire
// contract, extended). Each piece is one QoS 1 message of at most 64 KiB (max_message_size), so
// a 1 MiB log is a few dozen messages, each queued in Paho's persistence like a status until the
// broker has it.
//
//   {"deployment_id":"dep-1","seq":1234,"part":0,"parts":3,"data":"2026-11-30T18:00:00Z I ..."}
//
// `seq` is the sequence number of the failure status the log belongs to: a newer attempt's log
// (a higher seq) replaces an older one; pieces of one seq are put together by `part`.
#pragma once

#include "common/error.hpp"

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tern::protocol {

/// Raw text per piece: JSON escaping (at most two bytes for one) keeps a piece under 64 KiB.
inline constexpr std::size_t log_piece_bytes = 24 * 1024;
/// Pieces of one log at most: the device's log is bounded at 1 MiB.
inline constexpr std::uint32_t max_log_pieces = 64;

struct LogPiece {
  std::string deployment_id;
  std::uint64_t seq = 0;
  std::uint32_t part = 0;   ///< 0-based
  std::uint32_t parts = 1;  ///< how many pieces the log has
  std::string data;
  bool operator==(const LogPiece&) const = default;
};
/// Errors name the field: a bad id, part >= parts, parts over max_log_pieces.
Result<LogPiece> parse_log_piece(std::string_view payload);
std::string serialize(const LogPiece& p);

/// Splits a log into pieces of at most `max_piece` bytes, at line ends where it can and never
/// inside a UTF-8 sequence. Bytes that are not valid UTF-8, and control characters other than
/// newline and tab, become '?', so every piece is valid JSON text. At most max_log_pieces pieces:
/// the oldest text beyond that is dropped (the device's log is bounded well below it).
std::vector<std::string> split_log(std::string_view text, std::size_t max_piece = log_piece_bytes);

namespace topics {
std::string log(std::string_view device_id);
}

}  // namespace tern::protocol
