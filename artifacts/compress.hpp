// Streaming (de)compression for artifact members: none, gzip (zlib), xz (liblzma), zstd.
// Bytes in, bytes out through a callback, in fixed-size output chunks so memory stays flat.
#pragma once

#include "common/error.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace tern::artifacts {

enum class Compression { none, gzip, xz, zstd };

std::string_view to_string(Compression c);
/// "none", "gzip", "lzma"/"xz", "zstd" (mender-artifact's names and ours).
Result<Compression> parse_compression(std::string_view name);
/// The file name suffix: "", ".gz", ".xz", ".zst".
std::string_view suffix(Compression c);
/// Detects the format from the first bytes (at least 6); anything without a known magic is none.
Compression detect(std::span<const std::uint8_t> head);

using Output = std::function<Result<void>(std::span<const std::uint8_t>)>;

class Decompressor {
 public:
  virtual ~Decompressor() = default;
  /// Decompresses `in`, handing output to `out` in chunks. Errors: corrupt data, or an error `out`
  /// returned (passed through unchanged). Data after the end of the compressed stream is an error.
  virtual Result<void> feed(std::span<const std::uint8_t> in, const Output& out) = 0;
  /// End of input. Errors: the stream is truncated (ended inside a frame or block).
  virtual Result<void> finish() = 0;
  /// True when the input so far ends exactly at the end of a zstd frame (always false for the
  /// other formats): a point an interrupted install can resume from.
  virtual bool at_frame_boundary() const { return false; }
  /// Like feed(), but a zstd decoder stops right after the end of a frame, so the caller knows
  /// the exact input offset of the boundary (at_frame_boundary() is then true). Returns how many
  /// bytes of `in` were consumed; the other formats consume all of it.
  virtual Result<std::size_t> feed_to_frame_end(std::span<const std::uint8_t> in, const Output& out) {
    if (auto r = feed(in, out); !r) return r.error();
    return in.size();
  }
};

std::unique_ptr<Decompressor> make_decompressor(Compression c);

class Compressor {
 public:
  virtual ~Compressor() = default;
  virtual Result<void> feed(std::span<const std::uint8_t> in, const Output& out) = 0;
  /// Ends the current zstd frame (next input starts an independent frame); no-op for the others.
  virtual Result<void> end_frame(const Output& out) = 0;
  /// Flushes and ends the stream.
  virtual Result<void> finish(const Output& out) = 0;
};

/// level: format-specific (-1 = default: zlib 6, xz 6, zstd 3).
std::unique_ptr<Compressor> make_compressor(Compression c, int level = -1);

/// One-shot helpers for small members (header.tar). decompress_all refuses output over `limit`.
Result<std::string> compress_all(Compression c, std::string_view data);
Result<std::string> decompress_all(Compression c, std::string_view data, std::size_t limit);

}  // namespace tern::artifacts
