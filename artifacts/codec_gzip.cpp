// gzip (one member, as mender-artifact and tern-artifact write it), resumable at deflate block
// boundaries the way zlib's examples/zran.c builds its access points:
//
// - A straight decode inflates with Z_BLOCK when the caller wants boundaries: inflate() then
//   returns after each end-of-block code, with data_type bit 128 set (bit 64: it was the last
//   block, after which only the trailer comes, so no boundary) and data_type & 7 the bits of the
//   last input byte not used yet (they belong to the next block).
// - At a boundary the state is the uncompressed byte count, the running CRC-32 (zlib keeps it in
//   strm.adler while it reads a gzip stream), those leftover bits and the last 32 KiB of output
//   (inflateGetDictionary: the window the next block may refer back into).
// - A resumed decode is a raw inflate (windowBits -15): inflatePrime() gives it the leftover
//   bits, inflateSetDictionary() the window. Raw inflate stops after the last block; the 8-byte
//   gzip trailer (CRC-32 and size mod 2^32, little-endian) is then checked here, against the CRC
//   carried across the checkpoint and updated with every byte decoded since.
#include "artifacts/codecs.hpp"

#include "artifacts/crypto.hpp"

#include <zlib.h>

#include <array>
#include <cstring>

namespace tern::artifacts::detail {
namespace {

constexpr std::size_t window_size = 32 * 1024;  // deflate's largest distance
constexpr std::string_view state_name = "gzip1";

class GzipDecompressor final : public Decompressor {
 public:
  // raw: resumed inside the deflate stream (no gzip header; the trailer is checked here).
  explicit GzipDecompressor(bool raw) : raw_(raw) {
    std::memset(&zs_, 0, sizeof zs_);
    init_ok_ = inflateInit2(&zs_, raw ? -MAX_WBITS : 16 + MAX_WBITS) == Z_OK;
  }
  ~GzipDecompressor() override { inflateEnd(&zs_); }
  GzipDecompressor(const GzipDecompressor&) = delete;
  GzipDecompressor& operator=(const GzipDecompressor&) = delete;

  // Rebuilds the state of a boundary (see the file comment). Errors name the bad field.
  Result<void> restore(std::string_view state) {
    auto bad = [](const std::string& m) { return fail(Errc::invalid_argument, "gzip resume state: " + m); };
    auto w = split_words(state);
    if (w.size() != 6 || w[0] != state_name) return bad("not a '" + std::string(state_name) + "' state of 6 fields");
    auto total = parse_u64(w[1]);
    auto crc = parse_u64(w[2]);
    auto bits = parse_u64(w[3]);
    auto byte = parse_u64(w[4]);
    if (!total || !crc || *crc > 0xffffffffu) return bad("bad byte count or CRC-32");
    if (!bits || *bits > 7 || !byte || *byte > 255) return bad("bad leftover bits");
    auto window = base64_decode(w[5]);
    if (!window) return bad("the window is not base64");
    if (window->size() != std::min<std::uint64_t>(*total, window_size))
      return bad("a window of " + std::to_string(window->size()) + " bytes after " + std::to_string(*total) +
                 " bytes of output");
    if (!init_ok_) return fail(Errc::internal, "gzip: inflateInit2 failed");
    total_ = *total;
    crc_ = static_cast<uLong>(*crc);
    // As zran.c: the leftover bits first, then the window.
    if (*bits && inflatePrime(&zs_, static_cast<int>(*bits), static_cast<int>(*byte >> (8 - *bits))) != Z_OK)
      return fail(Errc::internal, "gzip: inflatePrime failed");
    if (!window->empty() &&
        inflateSetDictionary(&zs_, reinterpret_cast<const Bytef*>(window->data()), static_cast<uInt>(window->size())) != Z_OK)
      return fail(Errc::internal, "gzip: inflateSetDictionary failed");
    return {};
  }

  Result<void> feed(std::span<const std::uint8_t> in, const Output& out) override {
    if (auto r = decode(in, out, false); !r) return r.error();
    return {};
  }
  Result<std::size_t> feed_to_frame_end(std::span<const std::uint8_t> in, const Output& out) override {
    return decode(in, out, true);
  }
  Result<void> finish() override {
    if (!ended_ || trailer_fill_ < trailer_.size()) return corrupt("gzip", "truncated stream");
    return {};
  }
  bool at_frame_boundary() const override { return boundary_; }

  std::string save_state() const override {
    if (!boundary_) return {};
    std::array<Bytef, window_size> window;
    uInt have = 0;
    if (inflateGetDictionary(const_cast<z_stream*>(&zs_), window.data(), &have) != Z_OK) return {};
    const int bits = zs_.data_type & 7;
    const uLong crc = raw_ ? crc_ : zs_.adler;
    return std::string(state_name) + " " + std::to_string(total_) + " " + std::to_string(crc) + " " +
           std::to_string(bits) + " " + std::to_string(bits ? last_byte_ : 0) + " " +
           base64_encode({window.data(), have});
  }

 private:
  // Inflates `in`; with stop_at_block, returns right after the end of a deflate block. Returns how
  // many bytes of `in` it consumed.
  Result<std::size_t> decode(std::span<const std::uint8_t> in, const Output& out, bool stop_at_block) {
    if (!init_ok_) return corrupt("gzip", "decoder initialisation failed");
    zs_.next_in = const_cast<Bytef*>(in.data());
    zs_.avail_in = static_cast<uInt>(in.size());
    boundary_ = false;
    for (;;) {
      if (ended_) {
        if (auto r = take_trailer(); !r) return r.error();
        if (zs_.avail_in) return corrupt("gzip", "trailing bytes after the end of the stream");
        return in.size();
      }
      const Bytef* before = zs_.next_in;
      zs_.next_out = buf_.data();
      zs_.avail_out = static_cast<uInt>(buf_.size());
      int rc = inflate(&zs_, stop_at_block ? Z_BLOCK : Z_NO_FLUSH);
      if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR)
        return corrupt("gzip", zs_.msg ? zs_.msg : "inflate error " + std::to_string(rc));
      if (zs_.next_in != before) last_byte_ = zs_.next_in[-1];
      std::size_t n = buf_.size() - zs_.avail_out;
      total_ += n;
      if (raw_ && n) crc_ = crc32(crc_, buf_.data(), static_cast<uInt>(n));
      if (n)
        if (auto r = out({buf_.data(), n}); !r) return r.error();
      const std::size_t used = in.size() - zs_.avail_in;
      if (rc == Z_STREAM_END) {
        ended_ = true;
        if (!raw_) {  // zlib read and checked the trailer itself
          trailer_fill_ = trailer_.size();
          checked_ = true;
        }
        continue;
      }
      // The end of a block that is not the last one, with the whole block handed out.
      if (stop_at_block && (zs_.data_type & 0xc0) == 0x80 && total_ > 0) {
        boundary_ = true;
        return used;
      }
      if (zs_.avail_in == 0 && zs_.avail_out != 0) return used;  // all input used, output not full
      if (rc == Z_BUF_ERROR && n == 0) return used;
    }
  }

  // After a raw inflate's last block: the gzip trailer, CRC-32 then ISIZE (little-endian).
  Result<void> take_trailer() {
    while (trailer_fill_ < trailer_.size() && zs_.avail_in) {
      trailer_[trailer_fill_++] = *zs_.next_in++;
      --zs_.avail_in;
    }
    if (trailer_fill_ < trailer_.size() || checked_) return {};
    checked_ = true;
    auto le32 = [&](std::size_t at) {
      return std::uint32_t(trailer_[at]) | std::uint32_t(trailer_[at + 1]) << 8 | std::uint32_t(trailer_[at + 2]) << 16 |
             std::uint32_t(trailer_[at + 3]) << 24;
    };
    if (le32(0) != static_cast<std::uint32_t>(crc_)) return corrupt("gzip", "incorrect data check (CRC-32)");
    if (le32(4) != static_cast<std::uint32_t>(total_)) return corrupt("gzip", "incorrect length check");
    return {};
  }

  z_stream zs_;
  bool raw_;
  bool init_ok_ = false;
  bool ended_ = false;
  bool boundary_ = false;
  bool checked_ = false;
  std::uint64_t total_ = 0;  // uncompressed bytes since the start of the stream
  uLong crc_ = 0;            // raw mode: CRC-32 of those bytes (crc32(0, nullptr, 0) is 0)
  Bytef last_byte_ = 0;      // the last input byte inflate took: holds the leftover bits
  std::array<std::uint8_t, 8> trailer_{};
  std::size_t trailer_fill_ = 0;
  std::array<Bytef, codec_chunk> buf_;
};

}  // namespace

std::unique_ptr<Decompressor> make_gzip_decompressor() { return std::make_unique<GzipDecompressor>(false); }

Result<std::unique_ptr<Decompressor>> resume_gzip_decompressor(std::string_view state) {
  auto d = std::make_unique<GzipDecompressor>(true);
  if (auto r = d->restore(state); !r) return r.error();
  return std::unique_ptr<Decompressor>(std::move(d));
}

}  // namespace tern::artifacts::detail
