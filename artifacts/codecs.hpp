// The resumable decoders behind make_decompressor() and resume_decompressor() (compress.hpp), one
// file per format: codec_gzip.cpp, codec_xz.cpp. Internal to tern_artifacts.
#pragma once

#include "artifacts/compress.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <optional>
#include <string_view>
#include <vector>

namespace tern::artifacts::detail {

/// Output is handed out in pieces of at most this many bytes.
inline constexpr std::size_t codec_chunk = 64 * 1024;
// Most memory a decoder may ask for. An xz header can declare a dictionary of up to 1.5 GiB:
// without a limit liblzma allocates that for a 10 KiB artifact
// (tests/data/fuzz-corpus/crash-xz-1536mib-dictionary), and a large payload fills it, so memory
// would grow with the payload. xz -9 needs 65 MiB; zstd refuses windows over 128 MiB by default.
inline constexpr std::uint64_t max_decoder_memory = 128 * 1024 * 1024;

/// "<fmt> data: <msg>", Errc::invalid_argument.
Error corrupt(std::string_view fmt, std::string msg);

std::unique_ptr<Decompressor> make_gzip_decompressor();
Result<std::unique_ptr<Decompressor>> resume_gzip_decompressor(std::string_view state);
std::unique_ptr<Decompressor> make_xz_decompressor();
Result<std::unique_ptr<Decompressor>> resume_xz_decompressor(std::string_view state);

/// Splits "a b c" at single spaces.
std::vector<std::string_view> split_words(std::string_view s);
/// A decimal number of at most 19 digits, or nullopt.
std::optional<std::uint64_t> parse_u64(std::string_view s);

}  // namespace tern::artifacts::detail
