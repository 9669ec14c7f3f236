// The parts of POSIX tar that Mender artifacts use: ustar headers (with the prefix field), PAX 'x'
// records for long names and sizes of 8 GiB and more, GNU 'L' long names and base-256 sizes.
// Parsing works on one 512-byte block at a time so the streaming reader never buffers more.
#pragma once

#include "common/error.hpp"

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace tern::artifacts::tar {

inline constexpr std::size_t block = 512;

enum class Kind { file, directory, pax_extended, pax_global, gnu_long_name, other };

struct Header {
  std::string name;
  std::uint64_t size = 0;
  Kind kind = Kind::file;
  std::uint32_t mode = 0600;
  std::int64_t mtime = 0;
};

/// True if the block is all zeros (end-of-archive marker or padding).
bool is_zero_block(std::span<const std::uint8_t, block> b);

/// Parses one header block. Errors: bad checksum, not a ustar/GNU/v7 header, malformed numbers.
Result<Header> parse_header(std::span<const std::uint8_t, block> b);

/// Parses the records of a PAX extended header ("LEN key=value\n"...). Errors: malformed records.
Result<std::map<std::string, std::string>> parse_pax(std::string_view records);

/// Applies PAX records (path, size) to the header that follows them.
Result<void> apply_pax(Header& h, const std::map<std::string, std::string>& pax);

/// Bytes of padding after `size` bytes of content to reach a block boundary.
inline std::uint64_t padding(std::uint64_t size) { return (block - size % block) % block; }

/// Appends the header block(s) for a regular file to `out`: a PAX record first when the name is
/// longer than 100 bytes or the size does not fit 11 octal digits. mode/mtime as given.
void write_file_header(std::string& out, std::string_view name, std::uint64_t size, std::uint32_t mode = 0600,
                       std::int64_t mtime = 0);

/// Appends a PAX extended header member holding `records` (already formatted).
void write_pax(std::string& out, std::string_view records);

/// Formats one PAX record ("LEN key=value\n").
std::string pax_record(std::string_view key, std::string_view value);

/// Appends a whole regular file (header, content, padding).
void write_file(std::string& out, std::string_view name, std::string_view content, std::uint32_t mode = 0600,
                std::int64_t mtime = 0);

/// Appends the end-of-archive marker (two zero blocks).
void write_end(std::string& out);

/// Parses a whole in-memory tar (for header.tar): name → content of each regular file, in order.
/// Errors name the member. Limits: `max_files` members.
Result<std::vector<std::pair<std::string, std::string>>> read_all(std::string_view archive,
                                                                  std::size_t max_files = 1000);

}  // namespace tern::artifacts::tar
