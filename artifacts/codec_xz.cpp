// xz (one stream), decoded block by block so that the end of each block is a point to resume
// from. This is liblzma's own stream decoder (stream_decoder.c) taken apart with its public API:
// the stream header (lzma_stream_header_decode), then per block its header
// (lzma_block_header_decode) and data (lzma_block_decoder: LZMA2, padding and the block's
// CRC-64/SHA-256 check), each block's sizes recorded in an lzma_index_hash, then the index
// (lzma_index_hash_decode: it must list exactly the blocks decoded) and the footer (backward size
// and flags, compared with the header's).
//
// An xz block starts with a fresh LZMA2 dictionary, so a decoder can start at any block header
// with nothing but the stream's check type. To still check the index at the end, a checkpoint
// carries the (unpadded, uncompressed) sizes of the blocks before it and the resumed decoder
// appends them to its index hash first: the same state a straight decode has there.
//
// xz -T0 or -T N (multi-threaded) and xz --block-size write several blocks; a plain single-threaded
// `xz` or liblzma's lzma_easy_encoder (what mender-artifact uses) writes one, which
// has no point to resume from: its install starts again from byte 0.
#include "artifacts/codecs.hpp"

#include <lzma.h>

#include <array>
#include <cstring>
#include <vector>

namespace tern::artifacts::detail {
namespace {

constexpr std::string_view state_name = "xz1";
constexpr std::size_t stream_header_size = LZMA_STREAM_HEADER_SIZE;  // 12, the footer's too

class XzDecompressor final : public Decompressor {
 public:
  XzDecompressor() : ih_(lzma_index_hash_init(nullptr, nullptr)) {
    std::memset(&flags_, 0, sizeof flags_);
    for (auto& f : filters_) f = {LZMA_VLI_UNKNOWN, nullptr};
  }
  ~XzDecompressor() override {
    lzma_end(&ls_);
    lzma_index_hash_end(ih_, nullptr);
  }
  XzDecompressor(const XzDecompressor&) = delete;
  XzDecompressor& operator=(const XzDecompressor&) = delete;

  // Rebuilds the state at a block boundary: the check type and the blocks before it.
  Result<void> restore(std::string_view state) {
    auto bad = [](const std::string& m) { return fail(Errc::invalid_argument, "xz resume state: " + m); };
    auto w = split_words(state);
    if (w.size() < 3 || w[0] != state_name) return bad("not an '" + std::string(state_name) + "' state");
    auto check = parse_u64(w[1]);
    auto count = parse_u64(w[2]);
    if (!check || *check > LZMA_CHECK_ID_MAX) return bad("bad check type");
    if (!count || *count == 0 || *count > resumable_xz_blocks || w.size() != 3 + 2 * *count)
      return bad("the block count does not match the sizes that follow");
    if (!ih_) return fail(Errc::internal, "xz: lzma_index_hash_init failed");
    flags_.version = 0;
    flags_.check = static_cast<lzma_check>(*check);
    flags_.backward_size = LZMA_VLI_UNKNOWN;
    for (std::size_t i = 0; i < *count; ++i) {
      auto unpadded = parse_u64(w[3 + 2 * i]);
      auto uncompressed = parse_u64(w[4 + 2 * i]);
      if (!unpadded || !uncompressed || lzma_index_hash_append(ih_, *unpadded, *uncompressed) != LZMA_OK)
        return bad("block " + std::to_string(i) + " has impossible sizes");
      records_.emplace_back(*unpadded, *uncompressed);
    }
    stage_ = Stage::block_start;
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
    if (stage_ != Stage::done) return corrupt("xz", "truncated stream");
    return {};
  }
  bool at_frame_boundary() const override {
    return stage_ == Stage::block_start && !records_.empty() && records_.size() <= resumable_xz_blocks;
  }
  std::string save_state() const override {
    if (!at_frame_boundary()) return {};
    std::string s = std::string(state_name) + " " + std::to_string(flags_.check) + " " + std::to_string(records_.size());
    for (const auto& [unpadded, uncompressed] : records_)
      s += " " + std::to_string(unpadded) + " " + std::to_string(uncompressed);
    return s;
  }

 private:
  enum class Stage { stream_header, block_start, block_header, block, index, footer, done };

  // Collects a fixed-size header from `in` at `pos`; true when complete.
  bool collect(std::span<const std::uint8_t> in, std::size_t& pos, std::size_t need) {
    std::size_t n = std::min(need - fill_, in.size() - pos);
    std::memcpy(head_.data() + fill_, in.data() + pos, n);
    fill_ += n;
    pos += n;
    return fill_ == need;
  }

  static std::string why(lzma_ret rc) {
    switch (rc) {
      case LZMA_FORMAT_ERROR: return "not an xz stream";
      case LZMA_OPTIONS_ERROR: return "unsupported options";
      case LZMA_DATA_ERROR: return "corrupt data";
      case LZMA_MEM_ERROR: return "out of memory";
      default: return "decoder error " + std::to_string(rc);
    }
  }

  Result<void> start_block() {
    lzma_block block;
    std::memset(&block, 0, sizeof block);
    block_ = block;
    block_.version = 1;
    block_.check = flags_.check;
    block_.filters = filters_.data();
    block_.header_size = static_cast<std::uint32_t>(header_need_);
    if (auto rc = lzma_block_header_decode(&block_, nullptr, head_.data()); rc != LZMA_OK)
      return corrupt("xz", "block header: " + why(rc));
    const std::uint64_t memory = lzma_raw_decoder_memusage(filters_.data());
    lzma_ret rc = LZMA_OK;
    if (memory == UINT64_MAX) rc = LZMA_OPTIONS_ERROR;
    else if (memory <= max_decoder_memory) rc = lzma_block_decoder(&ls_, &block_);
    lzma_filters_free(filters_.data(), nullptr);  // the decoder keeps what it needs
    block_.filters = nullptr;
    if (memory != UINT64_MAX && memory > max_decoder_memory)
      return corrupt("xz", "decoding needs " + std::to_string(memory >> 20) + " MiB of memory, over the limit of " +
                               std::to_string(max_decoder_memory >> 20) + " MiB");
    if (rc != LZMA_OK) return corrupt("xz", "block: " + why(rc));
    return {};
  }

  // Decodes `in`; with stop_at_block, returns right after a block's last byte. Returns how many
  // bytes of `in` it consumed.
  Result<std::size_t> decode(std::span<const std::uint8_t> in, const Output& out, bool stop_at_block) {
    if (!ih_) return corrupt("xz", "decoder initialisation failed");
    std::size_t pos = 0;
    for (;;) {
      switch (stage_) {
        case Stage::stream_header:
          if (!collect(in, pos, stream_header_size)) return pos;
          fill_ = 0;
          if (auto rc = lzma_stream_header_decode(&flags_, head_.data()); rc != LZMA_OK)
            return corrupt("xz", "stream header: " + why(rc));
          stage_ = Stage::block_start;
          break;
        case Stage::block_start:
          if (pos == in.size()) return pos;
          if (in[pos] == 0x00) {  // the index indicator, where a block header would start
            stage_ = Stage::index;
            break;
          }
          header_need_ = lzma_block_header_size_decode(in[pos]);
          fill_ = 0;
          stage_ = Stage::block_header;
          break;
        case Stage::block_header:
          if (!collect(in, pos, header_need_)) return pos;
          fill_ = 0;
          if (auto r = start_block(); !r) return r.error();
          stage_ = Stage::block;
          break;
        case Stage::block: {
          ls_.next_in = in.data() + pos;
          ls_.avail_in = in.size() - pos;
          ls_.next_out = buf_.data();
          ls_.avail_out = buf_.size();
          lzma_ret rc = lzma_code(&ls_, LZMA_RUN);
          pos = in.size() - ls_.avail_in;
          std::size_t n = buf_.size() - ls_.avail_out;
          if (n)
            if (auto r = out({buf_.data(), n}); !r) return r.error();
          if (rc == LZMA_STREAM_END) {
            if (lzma_index_hash_append(ih_, lzma_block_unpadded_size(&block_), block_.uncompressed_size) != LZMA_OK)
              return corrupt("xz", "the stream grows too big");
            if (records_.size() <= resumable_xz_blocks) records_.emplace_back(lzma_block_unpadded_size(&block_), block_.uncompressed_size);
            stage_ = Stage::block_start;
            if (stop_at_block) return pos;
            break;
          }
          if (rc != LZMA_OK && rc != LZMA_BUF_ERROR) return corrupt("xz", why(rc));
          if (pos == in.size() && ls_.avail_out != 0) return pos;  // all input used, output not full
          if (rc == LZMA_BUF_ERROR) return pos;
          break;
        }
        case Stage::index: {
          if (pos == in.size()) return pos;
          lzma_ret rc = lzma_index_hash_decode(ih_, in.data(), &pos, in.size());
          if (rc == LZMA_STREAM_END) {
            stage_ = Stage::footer;
            fill_ = 0;
          } else if (rc != LZMA_OK) {
            return corrupt("xz", "the index does not match the blocks (" + why(rc) + ")");
          }
          break;
        }
        case Stage::footer: {
          if (!collect(in, pos, stream_header_size)) return pos;
          lzma_stream_flags footer;
          if (lzma_stream_footer_decode(&footer, head_.data()) != LZMA_OK) return corrupt("xz", "corrupt stream footer");
          if (footer.backward_size != lzma_index_hash_size(ih_))
            return corrupt("xz", "the stream footer's index size does not match the index");
          if (lzma_stream_flags_compare(&flags_, &footer) != LZMA_OK)
            return corrupt("xz", "the stream footer does not match the stream header");
          stage_ = Stage::done;
          break;
        }
        case Stage::done:
          if (pos != in.size()) return corrupt("xz", "trailing bytes after the end of the stream");
          return pos;
      }
    }
  }

  lzma_stream ls_ = LZMA_STREAM_INIT;
  lzma_index_hash* ih_;
  lzma_stream_flags flags_;
  lzma_block block_{};
  std::array<lzma_filter, LZMA_FILTERS_MAX + 1> filters_;
  Stage stage_ = Stage::stream_header;
  std::array<std::uint8_t, LZMA_BLOCK_HEADER_SIZE_MAX> head_{};
  std::size_t fill_ = 0;
  std::size_t header_need_ = 0;
  // Sizes of the blocks decoded so far, for checkpoints (one more than the limit marks "too many").
  std::vector<std::pair<std::uint64_t, std::uint64_t>> records_;
  std::array<std::uint8_t, codec_chunk> buf_;
};

}  // namespace

std::unique_ptr<Decompressor> make_xz_decompressor() { return std::make_unique<XzDecompressor>(); }

Result<std::unique_ptr<Decompressor>> resume_xz_decompressor(std::string_view state) {
  auto d = std::make_unique<XzDecompressor>();
  if (auto r = d->restore(state); !r) return r.error();
  return std::unique_ptr<Decompressor>(std::move(d));
}

}  // namespace tern::artifacts::detail
