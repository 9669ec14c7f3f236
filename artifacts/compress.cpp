#include "artifacts/compress.hpp"

#include "artifacts/codecs.hpp"

#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

#include <array>
#include <memory>
#include <cstring>
#include <vector>

namespace tern::artifacts {
namespace {

constexpr std::size_t chunk = detail::codec_chunk;
using detail::corrupt;

class NoneDecompressor final : public Decompressor {
 public:
  Result<void> feed(std::span<const std::uint8_t> in, const Output& out) override {
    if (in.empty()) return {};
    return out(in);
  }
  Result<void> finish() override { return {}; }
  bool at_frame_boundary() const override { return true; }
  std::string save_state() const override { return "none"; }
};

class ZstdDecompressor final : public Decompressor {
 public:
  ZstdDecompressor() : ctx_(ZSTD_createDCtx()) {}
  ~ZstdDecompressor() override { ZSTD_freeDCtx(ctx_); }
  Result<void> feed(std::span<const std::uint8_t> in, const Output& out) override {
    if (auto r = decode(in, out, false); !r) return r.error();
    return {};
  }
  Result<void> finish() override {
    // ZSTD_decompressStream returns 0 exactly when a frame is complete and flushed.
    if (last_ != 0) return corrupt("zstd", "truncated stream (ends inside a frame)");
    return {};
  }
  bool at_frame_boundary() const override { return last_ == 0; }
  std::string save_state() const override { return last_ == 0 ? "zstd" : ""; }
  Result<std::size_t> feed_to_frame_end(std::span<const std::uint8_t> in, const Output& out) override {
    return decode(in, out, true);
  }

 private:
  // Decodes `in` into `out`; returns how many bytes of `in` it consumed. Goes on while input
  // remains, or while a full output buffer may hide more of the current frame. After a frame ends
  // (rc == 0) another call with no input would return the next frame's header-size hint, which must
  // not count as "inside a frame". stop_at_frame_end: return right after a frame's last byte
  // (ZSTD_decompressStream returns 0 there and never reads into the next frame in that call).
  Result<std::size_t> decode(std::span<const std::uint8_t> in, const Output& out, bool stop_at_frame_end) {
    ZSTD_inBuffer ib{in.data(), in.size(), 0};
    for (;;) {
      ZSTD_outBuffer ob{buf_.data(), buf_.size(), 0};
      std::size_t rc = ZSTD_decompressStream(ctx_, &ob, &ib);
      if (ZSTD_isError(rc)) return corrupt("zstd", ZSTD_getErrorName(rc));
      last_ = rc;
      if (ob.pos)
        if (auto r = out({buf_.data(), ob.pos}); !r) return r.error();
      const bool drained = ib.pos == ib.size && (ob.pos < ob.size || rc == 0);
      if (drained || (stop_at_frame_end && rc == 0)) return ib.pos;
    }
  }

  ZSTD_DCtx* ctx_;
  std::array<std::uint8_t, chunk> buf_;
  std::size_t last_ = 1;  // nothing decoded yet: an empty stream is truncated
};

class NoneCompressor final : public Compressor {
 public:
  Result<void> feed(std::span<const std::uint8_t> in, const Output& out) override {
    return in.empty() ? Result<void>{} : out(in);
  }
  Result<void> end_frame(const Output&) override { return {}; }
  Result<void> finish(const Output&) override { return {}; }
};

class GzipCompressor final : public Compressor {
 public:
  explicit GzipCompressor(int level) {
    std::memset(&zs_, 0, sizeof zs_);
    deflateInit2(&zs_, level < 0 ? 6 : level, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
  }
  ~GzipCompressor() override { deflateEnd(&zs_); }
  Result<void> feed(std::span<const std::uint8_t> in, const Output& out) override { return run(in, Z_NO_FLUSH, out); }
  Result<void> end_frame(const Output&) override { return {}; }
  Result<void> finish(const Output& out) override { return run({}, Z_FINISH, out); }

 private:
  Result<void> run(std::span<const std::uint8_t> in, int flush, const Output& out) {
    zs_.next_in = const_cast<Bytef*>(in.data());
    zs_.avail_in = static_cast<uInt>(in.size());
    for (;;) {
      zs_.next_out = buf_.data();
      zs_.avail_out = static_cast<uInt>(buf_.size());
      int rc = deflate(&zs_, flush);
      if (rc == Z_STREAM_ERROR) return fail(Errc::internal, "gzip: deflate failed");
      std::size_t n = buf_.size() - zs_.avail_out;
      if (n)
        if (auto r = out({buf_.data(), n}); !r) return r;
      if (flush == Z_FINISH ? rc == Z_STREAM_END : (zs_.avail_in == 0 && zs_.avail_out != 0)) return {};
    }
  }
  z_stream zs_;
  std::array<Bytef, chunk> buf_;
};

class XzCompressor final : public Compressor {
 public:
  explicit XzCompressor(int level) { init_ok_ = lzma_easy_encoder(&ls_, level < 0 ? 6 : level, LZMA_CHECK_CRC64) == LZMA_OK; }
  ~XzCompressor() override { lzma_end(&ls_); }
  Result<void> feed(std::span<const std::uint8_t> in, const Output& out) override { return run(in, LZMA_RUN, out); }
  Result<void> end_frame(const Output&) override { return {}; }
  Result<void> finish(const Output& out) override { return run({}, LZMA_FINISH, out); }

 private:
  Result<void> run(std::span<const std::uint8_t> in, lzma_action action, const Output& out) {
    if (!init_ok_) return fail(Errc::internal, "xz: encoder initialisation failed");
    ls_.next_in = in.data();
    ls_.avail_in = in.size();
    for (;;) {
      ls_.next_out = buf_.data();
      ls_.avail_out = buf_.size();
      lzma_ret rc = lzma_code(&ls_, action);
      if (rc != LZMA_OK && rc != LZMA_STREAM_END) return fail(Errc::internal, "xz: encoder error " + std::to_string(rc));
      std::size_t n = buf_.size() - ls_.avail_out;
      if (n)
        if (auto r = out({buf_.data(), n}); !r) return r;
      if (action == LZMA_FINISH ? rc == LZMA_STREAM_END : (ls_.avail_in == 0 && ls_.avail_out != 0)) return {};
    }
  }
  lzma_stream ls_ = LZMA_STREAM_INIT;
  std::array<std::uint8_t, chunk> buf_;
  bool init_ok_ = false;
};

class ZstdCompressor final : public Compressor {
 public:
  explicit ZstdCompressor(int level) : ctx_(ZSTD_createCCtx()) {
    ZSTD_CCtx_setParameter(ctx_, ZSTD_c_compressionLevel, level < 0 ? 3 : level);
    ZSTD_CCtx_setParameter(ctx_, ZSTD_c_checksumFlag, 1);
  }
  ~ZstdCompressor() override { ZSTD_freeCCtx(ctx_); }
  Result<void> feed(std::span<const std::uint8_t> in, const Output& out) override {
    in_frame_ = in_frame_ || !in.empty();
    return run(in, ZSTD_e_continue, out);
  }
  Result<void> end_frame(const Output& out) override {
    if (!in_frame_) return {};
    in_frame_ = false;
    return run({}, ZSTD_e_end, out);
  }
  Result<void> finish(const Output& out) override {
    in_frame_ = false;
    return run({}, ZSTD_e_end, out);
  }

 private:
  Result<void> run(std::span<const std::uint8_t> in, ZSTD_EndDirective mode, const Output& out) {
    ZSTD_inBuffer ib{in.data(), in.size(), 0};
    for (;;) {
      ZSTD_outBuffer ob{buf_.data(), buf_.size(), 0};
      std::size_t rc = ZSTD_compressStream2(ctx_, &ob, &ib, mode);
      if (ZSTD_isError(rc)) return fail(Errc::internal, std::string("zstd: ") + ZSTD_getErrorName(rc));
      if (ob.pos)
        if (auto r = out({buf_.data(), ob.pos}); !r) return r;
      bool done = mode == ZSTD_e_continue ? ib.pos == ib.size : rc == 0;
      if (done) return {};
    }
  }
  ZSTD_CCtx* ctx_;
  std::array<std::uint8_t, chunk> buf_;
  bool in_frame_ = false;
};

}  // namespace

std::string_view to_string(Compression c) {
  switch (c) {
    case Compression::none: return "none";
    case Compression::gzip: return "gzip";
    case Compression::xz: return "xz";
    case Compression::zstd: return "zstd";
  }
  return "?";
}

Result<Compression> parse_compression(std::string_view n) {
  if (n == "none") return Compression::none;
  if (n == "gzip" || n == "gz") return Compression::gzip;
  if (n == "lzma" || n == "xz") return Compression::xz;
  if (n == "zstd" || n == "zstd_better" || n == "zstd_best" || n == "zstd_fastest") return Compression::zstd;
  return fail(Errc::invalid_argument, "unknown compression '" + std::string(n) + "' (none, gzip, lzma, zstd)");
}

std::string_view suffix(Compression c) {
  switch (c) {
    case Compression::none: return "";
    case Compression::gzip: return ".gz";
    case Compression::xz: return ".xz";
    case Compression::zstd: return ".zst";
  }
  return "";
}

Compression detect(std::span<const std::uint8_t> h) {
  if (h.size() >= 2 && h[0] == 0x1f && h[1] == 0x8b) return Compression::gzip;
  if (h.size() >= 6 && std::memcmp(h.data(), "\xfd" "7zXZ\0", 6) == 0) return Compression::xz;
  if (h.size() >= 4 && h[0] == 0x28 && h[1] == 0xb5 && h[2] == 0x2f && h[3] == 0xfd) return Compression::zstd;
  return Compression::none;
}

std::unique_ptr<Decompressor> make_decompressor(Compression c) {
  switch (c) {
    case Compression::gzip: return detail::make_gzip_decompressor();
    case Compression::xz: return detail::make_xz_decompressor();
    case Compression::zstd: return std::make_unique<ZstdDecompressor>();
    case Compression::none: break;
  }
  return std::make_unique<NoneDecompressor>();
}

Result<std::unique_ptr<Decompressor>> resume_decompressor(Compression c, std::string_view state) {
  auto name = state.substr(0, state.find(' '));
  const bool ours = c == Compression::gzip ? name == "gzip1" : c == Compression::xz ? name == "xz1" : name == to_string(c);
  if (!ours)
    return fail(Errc::invalid_argument, "the resume state is for '" + std::string(name) + "', the data is " +
                                            std::string(to_string(c)));
  switch (c) {
    case Compression::gzip: return detail::resume_gzip_decompressor(state);
    case Compression::xz: return detail::resume_xz_decompressor(state);
    case Compression::zstd:
    case Compression::none: break;
  }
  // zstd restarts at a frame, uncompressed data anywhere: a fresh decoder.
  if (state != name) return fail(Errc::invalid_argument, "the " + std::string(name) + " resume state has extra fields");
  return make_decompressor(c);
}

std::unique_ptr<Compressor> make_compressor(Compression c, int level) {
  switch (c) {
    case Compression::gzip: return std::make_unique<GzipCompressor>(level);
    case Compression::xz: return std::make_unique<XzCompressor>(level);
    case Compression::zstd: return std::make_unique<ZstdCompressor>(level);
    case Compression::none: break;
  }
  return std::make_unique<NoneCompressor>();
}

Result<std::string> compress_all(Compression c, std::string_view data) {
  std::string out;
  if (c == Compression::zstd) {
    // One shot, so the frame records its size and decompress_all() allocates it once (header.tar
    // holds the chunk index: megabytes).
    std::unique_ptr<ZSTD_CCtx, decltype(&ZSTD_freeCCtx)> ctx(ZSTD_createCCtx(), ZSTD_freeCCtx);
    ZSTD_CCtx_setParameter(ctx.get(), ZSTD_c_compressionLevel, 3);
    ZSTD_CCtx_setParameter(ctx.get(), ZSTD_c_checksumFlag, 1);
    out.resize(ZSTD_compressBound(data.size()));
    std::size_t n = ZSTD_compress2(ctx.get(), out.data(), out.size(), data.data(), data.size());
    if (ZSTD_isError(n)) return fail(Errc::internal, std::string("zstd: ") + ZSTD_getErrorName(n));
    out.resize(n);
    return out;
  }
  auto sink = [&](std::span<const std::uint8_t> b) -> Result<void> {
    out.append(reinterpret_cast<const char*>(b.data()), b.size());
    return {};
  };
  auto z = make_compressor(c);
  if (auto r = z->feed({reinterpret_cast<const std::uint8_t*>(data.data()), data.size()}, sink); !r) return r.error();
  if (auto r = z->finish(sink); !r) return r.error();
  return out;
}

Result<std::string> decompress_all(Compression c, std::string_view data, std::size_t limit) {
  std::string out;
  if (c == Compression::zstd) {
    auto n = ZSTD_getFrameContentSize(data.data(), data.size());
    if (n != ZSTD_CONTENTSIZE_UNKNOWN && n != ZSTD_CONTENTSIZE_ERROR && n <= limit) out.reserve(n);
  }
  auto sink = [&](std::span<const std::uint8_t> b) -> Result<void> {
    if (out.size() + b.size() > limit)
      return fail(Errc::invalid_argument, "decompressed size is over the limit of " + std::to_string(limit));
    out.append(reinterpret_cast<const char*>(b.data()), b.size());
    return {};
  };
  auto z = make_decompressor(c);
  if (auto r = z->feed({reinterpret_cast<const std::uint8_t*>(data.data()), data.size()}, sink); !r) return r.error();
  if (auto r = z->finish(); !r) return r.error();
  return out;
}

namespace detail {

Error corrupt(std::string_view fmt, std::string msg) {
  return fail(Errc::invalid_argument, std::string(fmt) + " data: " + std::move(msg));
}

std::vector<std::string_view> split_words(std::string_view s) {
  std::vector<std::string_view> words;
  for (std::size_t pos = 0; pos <= s.size();) {
    auto sp = s.find(' ', pos);
    if (sp == std::string_view::npos) sp = s.size();
    words.push_back(s.substr(pos, sp - pos));
    pos = sp + 1;
  }
  return words;
}

std::optional<std::uint64_t> parse_u64(std::string_view s) {
  if (s.empty() || s.size() > 19 || s.find_first_not_of("0123456789") != std::string_view::npos) return std::nullopt;
  std::uint64_t v = 0;
  for (char c : s) v = v * 10 + static_cast<std::uint64_t>(c - '0');
  return v;
}

}  // namespace detail
}  // namespace tern::artifacts
