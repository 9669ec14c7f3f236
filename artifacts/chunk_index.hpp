// The chunk index of an artifact's payload: what a device needs to build most of a new image from
// the data it already has, and to fetch only the rest with HTTP Range requests (adaptive install).
//
// Where it lives: headers/0000/meta-data of header.tar, as {"tern.chunk-index": "<base64>"} where
// the base64 is of the zstd-compressed binary below. header.tar's SHA-256 is in the manifest and the
// manifest is what manifest.sig signs, so the index is covered by the signature; mender-artifact
// 3.9 accepts unknown meta-data keys (it refuses extra files in header.tar or the outer tar).
//
// What it says (binary, little-endian; see README "Adaptive updates"):
//   "TERNCIX1"                       magic and format version
//   u32 block_size                   hash granularity: the payload's ext4 block size (1 or 4 KiB)
//   u32 frame_size                   uncompressed payload bytes per frame (a multiple of block_size)
//   u64 payload_size                 bytes of the payload file
//   u8  compression                  0: none, 1: zstd (one independent zstd frame per frame)
//   u8  block_hash_size              8
//   u8  block_hash_kind              0: the first 8 bytes of the block's SHA-256 (indexes written
//                                    before XXH3), 1: XXH3-64 (the default since; see below)
//   u8  reserved                     0
//   u64 frames_offset                where frame 0 starts in the data member's content (bytes
//                                    before it: data/0000.tar's header for the payload file)
//   u32 frame_count                  ceil(payload_size / frame_size)
//   frame_count × { u32 compressed_size, u8[32] sha256 of the frame's uncompressed bytes }
//   ceil(payload_size / block_size) × u8[block_hash_size]
// Frame i holds payload bytes [i × frame_size, min((i+1) × frame_size, payload_size)); its
// compressed bytes follow frame i-1's in the data member. The last block may be short.
//
// Why block hashes need not be cryptographic: a block hash only says where local data that is
// probably the block lies, and each block read from the local disk is checked against it before it
// is written. What a device trusts is cryptographic: each fetched frame's SHA-256, and the SHA-256 of
// the whole payload in the signed manifest, checked before the boot switch (an install whose payload
// does not match is not switched to; the adaptive install then downloads the artifact whole). XXH3
// hashes a partition at memory speed, where SHA-256 at 1 KiB blocks costs more than the disk read
// (README "Adaptive updates", measured).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "artifacts/compress.hpp"
#include "common/error.hpp"

namespace tern::artifacts {

/// The meta-data key that holds the index.
inline constexpr std::string_view chunk_index_key = "tern.chunk-index";

/// How block hashes are computed.
enum class BlockHashKind : std::uint8_t { sha256 = 0, xxh3 = 1 };

struct ChunkIndex {
  static constexpr std::size_t block_hash_size = 8;
  struct Frame {
    std::uint64_t offset = 0;               ///< in the data member's content (frames_offset + earlier sizes)
    std::uint32_t size = 0;                 ///< compressed bytes
    std::array<std::uint8_t, 32> sha256{};  ///< of the uncompressed payload bytes it holds
  };

  std::uint32_t block_size = 4096;
  std::uint32_t frame_size = 64 * 1024;
  std::uint64_t payload_size = 0;
  Compression compression = Compression::zstd;  ///< zstd or none
  BlockHashKind block_hash_kind = BlockHashKind::xxh3;
  std::uint64_t frames_offset = 0;
  std::vector<Frame> frames;
  std::vector<std::uint64_t> block_hashes;  ///< block_hash() of each block, in payload order

  /// Payload bytes of frame i, and its first block.
  std::uint64_t frame_payload_offset(std::size_t i) const { return std::uint64_t(i) * frame_size; }
  std::uint32_t frame_length(std::size_t i) const;
  std::size_t blocks_per_frame() const { return frame_size / block_size; }
  /// Compressed bytes of the whole payload (all frames).
  std::uint64_t compressed_size() const;

  /// The binary form (uncompressed), and its meta-data form (zstd, base64).
  std::string serialize() const;
  std::string encode() const;
  /// Parses the binary form, checking every size against the others. Errors:
  /// ArtifactErrc::malformed naming the field that is wrong.
  static Result<ChunkIndex> parse(std::string_view binary);
  /// Parses the meta-data form (base64 of zstd). Errors as parse(), plus bad base64 or zstd.
  static Result<ChunkIndex> decode(std::string_view text);
};

/// Block hashes of either kind: XXH3-64, or the first 8 bytes of SHA-256 as a little-endian integer;
/// and whole SHA-256 digests. Reuses one EVP context; not thread-safe (one per thread).
class BlockHasher {
 public:
  BlockHasher();
  ~BlockHasher();
  BlockHasher(const BlockHasher&) = delete;
  BlockHasher& operator=(const BlockHasher&) = delete;
  std::uint64_t block_hash(BlockHashKind kind, std::span<const std::uint8_t> block);
  std::array<std::uint8_t, 32> sha256(std::span<const std::uint8_t> data);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// The block size an image's ext4 superblock declares (1024 << s_log_block_size), or nullopt when
/// `head` (the image's first 2 KiB or more) holds no ext2/3/4 superblock.
std::optional<std::uint32_t> ext4_block_size(std::span<const std::uint8_t> head);

/// Builds the index while the writer streams the payload: feed() the payload's bytes in order
/// (any chunking), frame_done() with each frame's compressed size as the writer ends it.
class ChunkIndexBuilder {
 public:
  ChunkIndexBuilder(std::uint32_t block_size, std::uint32_t frame_size, std::uint64_t payload_size,
                    Compression compression, std::uint64_t frames_offset,
                    BlockHashKind kind = BlockHashKind::xxh3);
  void feed(std::span<const std::uint8_t> payload);
  /// Ends the current frame (call exactly at each frame boundary, and after the last byte).
  void frame_done(std::uint64_t compressed_size);
  /// Errors: Errc::internal when the frames fed do not add up to the payload.
  Result<ChunkIndex> finish();

 private:
  void end_block();
  ChunkIndex index_;
  BlockHasher hasher_;
  std::vector<std::uint8_t> block_;
  std::string frame_bytes_;
};

}  // namespace tern::artifacts
