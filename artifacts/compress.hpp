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
  /// True when the input so far ends exactly at a point an interrupted install can resume from,
  /// with every output byte before it handed out: the end of a zstd frame, of a deflate block
  /// (gzip, not the last block), of an xz block, or anywhere in uncompressed data.
  virtual bool at_frame_boundary() const { return false; }
  /// Like feed(), but stops right after such a boundary, so the caller knows its exact input
  /// offset (at_frame_boundary() is then true). Returns how many bytes of `in` were consumed.
  virtual Result<std::size_t> feed_to_frame_end(std::span<const std::uint8_t> in, const Output& out) {
    if (auto r = feed(in, out); !r) return r.error();
    return in.size();
  }
  /// At a boundary: what resume_decompressor() needs to go on from it, one line of printable
  /// ASCII starting with the format's name. zstd and none: the name alone. gzip: the uncompressed
  /// byte count, the running CRC-32, the bits left in the last byte and the last 32 KiB of output
  /// (base64, at most 44 KiB of text). xz: the check type and the sizes of the blocks before it.
  /// Empty when this point cannot be resumed from (xz past resumable_xz_blocks blocks).
  virtual std::string save_state() const { return {}; }
};

std::unique_ptr<Decompressor> make_decompressor(Compression c);

/// A decoder that goes on from a boundary described by `state` (save_state()); feed it the input
/// bytes after that boundary. It ends with the same checks as a straight decode: a gzip stream's
/// CRC-32 and size in its trailer, an xz stream's block checks, index and footer, a zstd frame's
/// checksum. Errors: Errc::invalid_argument naming what in the state is malformed, or a state of
/// another format than `c`.
Result<std::unique_ptr<Decompressor>> resume_decompressor(Compression c, std::string_view state);

/// The most blocks an xz stream may have before a checkpoint (each block's two sizes are in the
/// state, to check the stream's index at its end); past them, no checkpoints.
inline constexpr std::size_t resumable_xz_blocks = 4096;

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
