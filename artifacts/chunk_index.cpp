#include "artifacts/chunk_index.hpp"

#include <openssl/evp.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <cstring>

#include "artifacts/crypto.hpp"
#include "artifacts/header_info.hpp"

namespace tern::artifacts {

namespace {

constexpr std::string_view magic = "TERNCIX1";
constexpr std::size_t fixed_size = 8 + 4 + 4 + 8 + 1 + 1 + 2 + 8 + 4;
constexpr std::size_t frame_record = 4 + 32;
// Hard limits a parser applies before allocating: 64 MiB frames, 64 KiB blocks, 16 M frames.
constexpr std::uint32_t max_frame_size = 64u << 20;
constexpr std::uint32_t max_block_size = 64u << 10;
constexpr std::uint64_t max_frames = 16u << 20;
// The decoded index is held in memory: refuse more than this.
constexpr std::size_t max_index_bytes = 64u << 20;

Error bad(std::string m) {
  return detail::artifact_error(ArtifactErrc::malformed, "chunk index: " + std::move(m));
}

template <class T>
void put(std::string& out, T v) {
  for (std::size_t i = 0; i < sizeof(T); ++i)
    out.push_back(static_cast<char>((static_cast<std::uint64_t>(v) >> (8 * i)) & 0xff));
}

struct Cursor {
  std::string_view in;
  bool ok = true;
  template <class T>
  T get() {
    if (in.size() < sizeof(T)) {
      ok = false;
      return 0;
    }
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i)
      v |= std::uint64_t(static_cast<std::uint8_t>(in[i])) << (8 * i);
    in.remove_prefix(sizeof(T));
    return static_cast<T>(v);
  }
};

bool power_of_two(std::uint32_t v) {
  return v && (v & (v - 1)) == 0;
}
std::uint64_t ceil_div(std::uint64_t a, std::uint64_t b) {
  return (a + b - 1) / b;
}

}  // namespace

std::uint32_t ChunkIndex::frame_length(std::size_t i) const {
  return static_cast<std::uint32_t>(
      std::min<std::uint64_t>(frame_size, payload_size - frame_payload_offset(i)));
}

std::uint64_t ChunkIndex::compressed_size() const {
  std::uint64_t n = 0;
  for (auto& f : frames) n += f.size;
  return n;
}

std::string ChunkIndex::serialize() const {
  std::string out(magic);
  put<std::uint32_t>(out, block_size);
  put<std::uint32_t>(out, frame_size);
  put<std::uint64_t>(out, payload_size);
  put<std::uint8_t>(out, compression == Compression::zstd ? 1 : 0);
  put<std::uint8_t>(out, block_hash_size);
  put<std::uint8_t>(out, static_cast<std::uint8_t>(block_hash_kind));
  put<std::uint8_t>(out, 0);
  put<std::uint64_t>(out, frames_offset);
  put<std::uint32_t>(out, static_cast<std::uint32_t>(frames.size()));
  for (auto& f : frames) {
    put<std::uint32_t>(out, f.size);
    out.append(reinterpret_cast<const char*>(f.sha256.data()), f.sha256.size());
  }
  for (auto h : block_hashes) put<std::uint64_t>(out, h);
  return out;
}

std::string ChunkIndex::encode() const {
  auto z = compress_all(Compression::zstd, serialize());
  // compress_all only fails on an internal zstd error; an index without compression is valid too.
  std::string raw = z ? *z : serialize();
  return base64_encode({reinterpret_cast<const std::uint8_t*>(raw.data()), raw.size()});
}

Result<ChunkIndex> ChunkIndex::parse(std::string_view binary) {
  if (!binary.starts_with(magic))
    return bad("does not start with '" + std::string(magic) + "' (unknown format)");
  if (binary.size() < fixed_size) return bad("shorter than its fixed header");
  Cursor c{binary.substr(magic.size())};
  ChunkIndex x;
  x.block_size = c.get<std::uint32_t>();
  x.frame_size = c.get<std::uint32_t>();
  x.payload_size = c.get<std::uint64_t>();
  auto comp = c.get<std::uint8_t>();
  auto hash_size = c.get<std::uint8_t>();
  auto hash_kind = c.get<std::uint8_t>();
  auto reserved = c.get<std::uint8_t>();
  x.frames_offset = c.get<std::uint64_t>();
  auto frame_count = c.get<std::uint32_t>();
  if (!power_of_two(x.block_size) || x.block_size < 512 || x.block_size > max_block_size)
    return bad("block size " + std::to_string(x.block_size) + " is not a power of two from 512 to 65536");
  if (x.frame_size == 0 || x.frame_size % x.block_size || x.frame_size > max_frame_size)
    return bad("frame size " + std::to_string(x.frame_size) +
               " is not a multiple of the block size up to 64 MiB");
  if (comp > 1) return bad("unknown compression " + std::to_string(comp));
  x.compression = comp == 1 ? Compression::zstd : Compression::none;
  if (hash_size != block_hash_size)
    return bad("block hash size " + std::to_string(hash_size) + " (8 expected)");
  if (hash_kind > 1) return bad("unknown block hash kind " + std::to_string(hash_kind));
  x.block_hash_kind = static_cast<BlockHashKind>(hash_kind);
  if (reserved != 0) return bad("reserved field is not zero");
  if (x.payload_size == 0) return bad("payload size is zero");
  const std::uint64_t frames = ceil_div(x.payload_size, x.frame_size);
  if (frames > max_frames || frame_count != frames)
    return bad(std::to_string(frame_count) + " frames for " + std::to_string(x.payload_size) +
               " bytes in frames of " + std::to_string(x.frame_size) + " (" + std::to_string(frames) +
               " expected)");
  const std::uint64_t blocks = ceil_div(x.payload_size, x.block_size);
  const std::uint64_t want = fixed_size + frames * frame_record + blocks * block_hash_size;
  if (binary.size() != want)
    return bad(std::to_string(binary.size()) + " bytes, " + std::to_string(want) + " expected for " +
               std::to_string(frames) + " frames and " + std::to_string(blocks) + " blocks");
  x.frames.resize(frames);
  std::uint64_t at = x.frames_offset;
  for (std::size_t i = 0; i < frames; ++i) {
    auto& f = x.frames[i];
    f.offset = at;
    f.size = c.get<std::uint32_t>();
    if (f.size == 0) return bad("frame " + std::to_string(i) + " has zero compressed bytes");
    if (x.compression == Compression::none && f.size != x.frame_length(i))
      return bad("frame " + std::to_string(i) + " of an uncompressed payload is " + std::to_string(f.size) +
                 " bytes, not " + std::to_string(x.frame_length(i)));
    std::memcpy(f.sha256.data(), c.in.data(), 32);
    c.in.remove_prefix(32);
    at += f.size;
  }
  x.block_hashes.resize(blocks);
  for (auto& h : x.block_hashes) h = c.get<std::uint64_t>();
  if (!c.ok) return bad("truncated");
  return x;
}

Result<ChunkIndex> ChunkIndex::decode(std::string_view text) {
  auto raw = base64_decode(text);
  if (!raw) return bad("not valid base64");
  if (raw->starts_with(magic)) return parse(*raw);
  auto bin = decompress_all(Compression::zstd, *raw, max_index_bytes);
  if (!bin) return bad("not zstd-compressed: " + bin.error().message());
  raw.reset();  // megabytes: gone before the table is built
  return parse(*bin);
}

// ---- BlockHasher ------------------------------------------------------------------------------

struct BlockHasher::Impl {
  EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ~Impl() {
    EVP_MD_CTX_free(ctx);
    EVP_MD_free(md);
  }
};

BlockHasher::BlockHasher() : impl_(std::make_unique<Impl>()) {
  if (!impl_->md || !impl_->ctx) throw std::bad_alloc();
}
BlockHasher::~BlockHasher() = default;

std::array<std::uint8_t, 32> BlockHasher::sha256(std::span<const std::uint8_t> data) {
  std::array<std::uint8_t, 32> out{};
  unsigned len = 0;
  EVP_DigestInit_ex2(impl_->ctx, impl_->md, nullptr);
  EVP_DigestUpdate(impl_->ctx, data.data(), data.size());
  EVP_DigestFinal_ex(impl_->ctx, out.data(), &len);
  return out;
}

std::uint64_t BlockHasher::block_hash(BlockHashKind kind, std::span<const std::uint8_t> block) {
  if (kind == BlockHashKind::xxh3) return XXH3_64bits(block.data(), block.size());
  auto d = sha256(block);
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < 8; ++i) v |= std::uint64_t(d[i]) << (8 * i);
  return v;
}

std::optional<std::uint32_t> ext4_block_size(std::span<const std::uint8_t> head) {
  // The superblock starts at byte 1024: s_log_block_size at +0x18, s_magic (0xEF53) at +0x38.
  if (head.size() < 1024 + 0x3a) return std::nullopt;
  auto sb = head.subspan(1024);
  if (sb[0x38] != 0x53 || sb[0x39] != 0xef) return std::nullopt;
  std::uint32_t log = sb[0x18] | (sb[0x19] << 8) | (sb[0x1a] << 16) | (std::uint32_t(sb[0x1b]) << 24);
  if (log > 6) return std::nullopt;  // 64 KiB is the largest ext4 block
  return 1024u << log;
}

// ---- ChunkIndexBuilder --------------------------------------------------------------------------

ChunkIndexBuilder::ChunkIndexBuilder(std::uint32_t block_size, std::uint32_t frame_size,
                                     std::uint64_t payload_size, Compression compression,
                                     std::uint64_t frames_offset, BlockHashKind kind) {
  index_.block_size = block_size;
  index_.block_hash_kind = kind;
  index_.frame_size = frame_size;
  index_.payload_size = payload_size;
  index_.compression = compression;
  index_.frames_offset = frames_offset;
  index_.block_hashes.reserve(static_cast<std::size_t>(ceil_div(payload_size, block_size)));
  block_.reserve(block_size);
  frame_bytes_.reserve(frame_size);
}

void ChunkIndexBuilder::end_block() {
  index_.block_hashes.push_back(hasher_.block_hash(index_.block_hash_kind, block_));
  block_.clear();
}

void ChunkIndexBuilder::feed(std::span<const std::uint8_t> payload) {
  frame_bytes_.append(reinterpret_cast<const char*>(payload.data()), payload.size());
  while (!payload.empty()) {
    auto n = std::min<std::size_t>(payload.size(), index_.block_size - block_.size());
    block_.insert(block_.end(), payload.begin(), payload.begin() + static_cast<std::ptrdiff_t>(n));
    payload = payload.subspan(n);
    if (block_.size() == index_.block_size) end_block();
  }
}

void ChunkIndexBuilder::frame_done(std::uint64_t compressed_size) {
  if (!block_.empty()) end_block();  // the payload's short last block
  ChunkIndex::Frame f;
  f.size = static_cast<std::uint32_t>(compressed_size);
  f.sha256 =
      hasher_.sha256({reinterpret_cast<const std::uint8_t*>(frame_bytes_.data()), frame_bytes_.size()});
  f.offset =
      index_.frames.empty() ? index_.frames_offset : index_.frames.back().offset + index_.frames.back().size;
  index_.frames.push_back(f);
  frame_bytes_.clear();
}

Result<ChunkIndex> ChunkIndexBuilder::finish() {
  auto frames = ceil_div(index_.payload_size, index_.frame_size);
  if (index_.frames.size() != frames ||
      index_.block_hashes.size() != ceil_div(index_.payload_size, index_.block_size))
    return fail(Errc::internal, "chunk index: " + std::to_string(index_.frames.size()) + " frames and " +
                                    std::to_string(index_.block_hashes.size()) +
                                    " blocks do not cover the payload");
  return std::move(index_);
}

}  // namespace tern::artifacts
