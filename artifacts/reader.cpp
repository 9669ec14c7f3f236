// The streaming reader: two tar state machines (the outer artifact, and data/0000.tar inside the
// decompressed data member), each fed in whatever pieces arrive, one 512-byte header block at a
// time. Small members are collected with limits; the payload only passes through.
#include "artifacts/reader.hpp"

#include "artifacts/crypto.hpp"
#include "artifacts/header_info.hpp"
#include "artifacts/tar.hpp"
#include "common/json.hpp"
#include "common/log.hpp"

#include <array>
#include <cstring>
#include <fstream>

namespace tern::artifacts {

using detail::artifact_error;

namespace {

constexpr std::size_t max_version = 4 * 1024;
constexpr std::size_t max_manifest = 1024 * 1024;
constexpr std::size_t max_signature = 16 * 1024;
constexpr std::size_t max_header_compressed = 16 * 1024 * 1024;
constexpr std::size_t max_header_uncompressed = 16 * 1024 * 1024;
constexpr std::size_t max_pax = 64 * 1024;
// A prefix this large (a huge header.tar) is not worth saving: no checkpoints then. The chunk index
// makes headers of a few MiB normal (8 bytes per 1 KiB block of a 511 MiB image: 4 MiB).
constexpr std::size_t max_prefix = 16 * 1024 * 1024;

Error malformed(std::string m) { return artifact_error(ArtifactErrc::malformed, std::move(m)); }

std::string_view sv(std::span<const std::uint8_t> b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

bool is_header_name(std::string_view n) {
  return n == "header.tar" || n == "header.tar.gz" || n == "header.tar.xz" || n == "header.tar.zst";
}
bool is_data_name(std::string_view n) {
  return n == "data/0000.tar" || n == "data/0000.tar.gz" || n == "data/0000.tar.xz" || n == "data/0000.tar.zst";
}
Compression by_name(std::string_view n) {
  if (n.ends_with(".gz")) return Compression::gzip;
  if (n.ends_with(".xz")) return Compression::xz;
  if (n.ends_with(".zst")) return Compression::zstd;
  return Compression::none;
}

// Collects one tar header block from a byte stream.
struct BlockBuffer {
  std::array<std::uint8_t, tar::block> data;
  std::size_t fill = 0;
  // Takes bytes from `in` (advancing it); true when a whole block is there.
  bool take(std::span<const std::uint8_t>& in) {
    std::size_t n = std::min(in.size(), tar::block - fill);
    std::memcpy(data.data() + fill, in.data(), n);
    fill += n;
    in = in.subspan(n);
    return fill == tar::block;
  }
  std::span<const std::uint8_t, tar::block> block() const { return std::span<const std::uint8_t, tar::block>(data); }
};

}  // namespace

struct Reader::Impl {
  ReaderOptions opt;
  HeaderHandler on_header;
  PayloadSink on_payload;
  std::optional<Error> error;
  std::uint64_t consumed = 0;
  std::uint64_t payload_count = 0;

  // ---- outer tar -----------------------------------------------------------------------------
  enum class State { header, content, padding, end } state = State::header;
  enum class Member { version, manifest, signature, header, data, pax, long_name };
  // What comes next, in the order mender-artifact writes and reads them.
  enum class Stage { version, manifest, signature_or_header, header, data, done } stage = Stage::version;
  BlockBuffer blk;
  std::optional<std::map<std::string, std::string>> pax;
  std::optional<std::string> long_name;
  Member member = Member::version;
  std::string member_name;
  std::uint64_t remaining = 0;
  std::uint64_t pad = 0;
  std::string small;
  Sha256 member_hash;
  std::string version_digest;
  std::string manifest_text;
  std::map<std::string, std::string> manifest;
  Header header;
  bool header_reported = false;

  // ---- data member: decompressor and the inner tar -----------------------------------------
  std::string data_head;  // first bytes, to detect the compression
  std::unique_ptr<Decompressor> dec;
  enum class InnerState { header, content, padding, end } inner = InnerState::header;
  enum class InnerMember { payload, pax, long_name, skip } inner_member = InnerMember::skip;
  BlockBuffer iblk;
  std::optional<std::map<std::string, std::string>> ipax;
  std::optional<std::string> ilong_name;
  std::uint64_t iremaining = 0;
  std::uint64_t ipad = 0;
  std::string ismall;
  bool payload_seen = false;
  bool payload_done = false;
  Sha256 payload_hash;
  // The file being read (update modules: one of several), and how many of them are done.
  std::string file_name, file_sha256;
  std::size_t files_done = 0;
  FileHandler on_file;

  // ---- checkpoints and the whole-artifact hash -------------------------------------------------
  std::uint64_t ckpt_every = 0;   // 0: no checkpoints
  PrefixHandler on_prefix;
  CheckpointHandler on_checkpoint;
  bool recording = false;         // collecting the prefix
  std::string prefix;
  std::string prefix_sha256;      // set once the prefix is complete (and usable)
  bool data_starting = false;     // outer_header just read the data member's header
  bool noted_no_boundary = false;  // the "no point to resume from" line was logged
  std::uint64_t data_start = 0;   // artifact offset of the data member's content
  std::uint64_t data_in = 0;      // data member bytes consumed by the decompressor
  std::uint64_t last_ckpt_payload = 0;
  Sha256 artifact_hash;
  std::uint64_t hashed_to = 0;    // artifact bytes hashed so far
  std::uint64_t cur_base = 0;     // artifact offset of cur_in, the span being fed
  std::span<const std::uint8_t> cur_in;
  std::string artifact_digest;

  Impl(ReaderOptions o, HeaderHandler h, PayloadSink p)
      : opt(std::move(o)), on_header(std::move(h)), on_payload(std::move(p)) {}

  std::string expected_name() const {
    switch (stage) {
      case Stage::version: return "version";
      case Stage::manifest: return "manifest";
      case Stage::signature_or_header: return "manifest.sig or header.tar";
      case Stage::header: return "header.tar";
      case Stage::data: return "data/0000.tar";
      case Stage::done: return "the end of the artifact";
    }
    return "?";
  }

  // ---- outer ------------------------------------------------------------------------------------

  Result<void> feed(std::span<const std::uint8_t> in) {
    while (!in.empty()) {
      const auto before = in;
      auto r = step(in);
      if (recording || data_starting)
        if (auto p = after_step(before.first(before.size() - in.size()), in); !p) return p;
      if (!r) return r;
    }
    return {};
  }

  // One state's worth of `in` (advancing it).
  Result<void> step(std::span<const std::uint8_t>& in) {
    switch (state) {
      case State::header:
        if (blk.take(in)) {
          blk.fill = 0;
          return outer_header();
        }
        return {};
      case State::content: {
        auto n = static_cast<std::size_t>(std::min<std::uint64_t>(remaining, in.size()));
        if (auto r = member_bytes(in.first(n)); !r) return r;
        in = in.subspan(n);
        remaining -= n;
        if (remaining == 0) return member_end();
        return {};
      }
      case State::padding: {
        auto n = static_cast<std::size_t>(std::min<std::uint64_t>(pad, in.size()));
        in = in.subspan(n);
        pad -= n;
        if (pad == 0) state = stage == Stage::done ? State::end : State::header;
        return {};
      }
      case State::end:
        if (blk.take(in)) {
          blk.fill = 0;
          if (!tar::is_zero_block(blk.block())) {
            auto h = tar::parse_header(blk.block());
            if (h && h->name.starts_with("data/"))
              return artifact_error(ArtifactErrc::unsupported,
                                    "'" + h->name + "': more than one payload (Tern installs one rootfs-image)");
            return malformed("trailing garbage after the end of the artifact");
          }
        }
        return {};
    }
    return {};
  }

  // Collects the prefix and notes where the data member's content starts.
  Result<void> after_step(std::span<const std::uint8_t> consumed_now, std::span<const std::uint8_t> rest) {
    if (recording) {
      prefix.append(sv(consumed_now));
      if (prefix.size() > max_prefix) stop_checkpoints();
    }
    if (!data_starting) return {};
    data_starting = false;
    data_start = cur_base + static_cast<std::uint64_t>(rest.data() - cur_in.data());
    if (!recording) return {};
    recording = false;
    prefix_sha256 = Sha256::hex(prefix);
    auto saved = on_prefix ? on_prefix({reinterpret_cast<const std::uint8_t*>(prefix.data()), prefix.size()})
                           : Result<void>{};
    std::string().swap(prefix);
    if (!saved) stop_checkpoints();  // without its prefix no checkpoint could be resumed from
    return {};
  }

  void stop_checkpoints() {
    recording = false;
    ckpt_every = 0;
    std::string().swap(prefix);
  }

  // Hashes the artifact bytes of the current feed up to absolute offset `to`.
  void hash_upto(std::uint64_t to) {
    if (!opt.hash_artifact || to <= hashed_to) return;
    auto from = static_cast<std::size_t>(hashed_to - cur_base);
    artifact_hash.update(cur_in.subspan(from, static_cast<std::size_t>(to - hashed_to)));
    hashed_to = to;
  }

  Result<void> start_member(Member m, std::size_t limit) {
    if (m != Member::data && remaining > limit)
      return malformed("'" + member_name + "' is " + std::to_string(remaining) + " bytes, over the limit of " +
                       std::to_string(limit));
    member = m;
    small.clear();
    return {};
  }

  Result<void> outer_header() {
    if (tar::is_zero_block(blk.block())) {
      if (stage == Stage::done) {
        state = State::end;
        return {};
      }
      return artifact_error(ArtifactErrc::truncated,
                            "the artifact's tar archive ends before " + expected_name());
    }
    auto h = tar::parse_header(blk.block());
    if (!h) return malformed("artifact: " + h.error().message());
    if (pax) {
      if (auto r = tar::apply_pax(*h, *pax); !r) return malformed(r.error().message());
      pax.reset();
    }
    if (long_name) {
      h->name = *long_name;
      long_name.reset();
    }
    member_name = h->name;
    remaining = h->size;
    pad = tar::padding(h->size);
    Result<void> r;
    if (h->kind == tar::Kind::pax_extended) r = start_member(Member::pax, max_pax);
    else if (h->kind == tar::Kind::gnu_long_name) r = start_member(Member::long_name, max_pax);
    else if (h->kind != tar::Kind::file)
      return malformed("artifact: '" + h->name + "' is not a regular file");
    else if (stage == Stage::version && h->name == "version") r = start_member(Member::version, max_version);
    else if (stage == Stage::manifest && h->name == "manifest") r = start_member(Member::manifest, max_manifest);
    else if (stage == Stage::signature_or_header && h->name == "manifest.sig")
      r = start_member(Member::signature, max_signature);
    else if ((stage == Stage::signature_or_header || stage == Stage::header) && is_header_name(h->name)) {
      if (opt.verify_key_pem && !header.signed_manifest)
        return artifact_error(ArtifactErrc::signature,
                              "the artifact is not signed (no manifest.sig), but a verification key is configured");
      r = start_member(Member::header, max_header_compressed);
    } else if (stage == Stage::data && is_data_name(h->name)) {
      r = start_member(Member::data, 0);
      data_starting = true;
      header.data_size = h->size;
    } else if (stage == Stage::done && h->name.starts_with("data/")) {
      return artifact_error(ArtifactErrc::unsupported,
                            "'" + h->name + "': more than one payload (Tern installs one rootfs-image)");
    } else {
      return malformed("expected " + expected_name() + ", found '" + h->name + "'");
    }
    if (!r) return r;
    if (member == Member::data || member == Member::header || member == Member::version) member_hash = Sha256();
    state = State::content;
    if (remaining == 0) return member_end();
    return {};
  }

  Result<void> member_bytes(std::span<const std::uint8_t> b) {
    switch (member) {
      case Member::data: return data_bytes(b);
      case Member::header:
      case Member::version: member_hash.update(b); [[fallthrough]];
      default: small.append(sv(b)); return {};
    }
  }

  Result<void> member_end() {
    state = pad ? State::padding : State::header;
    switch (member) {
      case Member::pax: {
        auto p = tar::parse_pax(small);
        if (!p) return malformed("artifact: " + p.error().message());
        pax = std::move(*p);
        return {};
      }
      case Member::long_name: long_name = std::string(small.c_str()); return {};
      case Member::version: {
        version_digest = member_hash.hex_final();
        auto doc = json::Document::parse(small, "version");
        if (!doc) return malformed(doc.error().message());
        auto root = doc->root();
        if (!root) return malformed(root.error().message());
        auto format = root->string("format");
        auto version = root->u64("version");
        if (!format || *format != "mender") return malformed("version: format is not \"mender\"");
        if (!version) return malformed(version.error().message());
        if (*version != 3)
          return artifact_error(ArtifactErrc::unsupported,
                                "version: artifact format version " + std::to_string(*version) + " (Tern reads 3)");
        stage = Stage::manifest;
        return {};
      }
      case Member::manifest: {
        auto m = detail::parse_manifest(small);
        if (!m) return m.error();
        manifest = std::move(*m);
        manifest_text = std::move(small);
        if (auto r = check_digest("version", version_digest); !r) return r;
        stage = Stage::signature_or_header;
        return {};
      }
      case Member::signature: {
        header.signed_manifest = true;
        if (opt.verify_key_pem) {
          auto v = verify_base64(manifest_text, small, *opt.verify_key_pem);
          if (!v) return artifact_error(ArtifactErrc::signature, v.error().message());
          header.signature_verified = true;
        }
        stage = Stage::header;
        return {};
      }
      case Member::header: return header_end();
      case Member::data: return data_end();
    }
    return {};
  }

  Result<void> check_digest(const std::string& name, const std::string& digest) {
    auto it = manifest.find(name);
    if (it == manifest.end()) return malformed("manifest: no entry for '" + name + "'");
    if (it->second != digest)
      return artifact_error(ArtifactErrc::manifest_mismatch,
                            name + ": checksum " + digest + " does not match the manifest (" + it->second + ")");
    return {};
  }

  Result<void> header_end() {
    if (auto r = check_digest(member_name, member_hash.hex_final()); !r) return r;
    auto head = std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(small.data()), small.size());
    Compression c = small.size() >= 6 ? detect(head) : by_name(member_name);
    header.compression = c;
    auto raw = decompress_all(c, small, max_header_uncompressed);
    if (!raw) return malformed(member_name + ": " + raw.error().message());
    // Megabytes with a chunk index: each copy is dropped as soon as the next one is made.
    std::string().swap(small);
    auto files = tar::read_all(*raw);
    if (!files) return malformed(member_name + ": " + files.error().message());
    std::string().swap(*raw);
    if (auto r = detail::parse_header_tar(*files, header); !r) return r;
    if (auto r = detail::check_compatible(header, opt); !r) return r;
    small.clear();
    stage = Stage::data;
    return {};
  }

  // ---- data member ------------------------------------------------------------------------------

  Result<void> data_bytes(std::span<const std::uint8_t> b) {
    if (!dec) {
      // Detect the compression from the content, not only from the name.
      std::size_t need = std::min<std::uint64_t>(6, remaining + data_head.size());
      std::size_t take = std::min(b.size(), need - data_head.size());
      data_head.append(sv(b.first(take)));
      b = b.subspan(take);
      if (data_head.size() < need) return {};
      start_decompressor();
      auto head = data_head;
      if (auto r = decompress(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(head.data()), head.size())); !r)
        return r;
    }
    return decompress(b);
  }

  void start_decompressor() {
    auto head = std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(data_head.data()), data_head.size());
    Compression c = data_head.size() >= 6 ? detect(head) : by_name(member_name);
    dec = make_decompressor(c);
  }

  Result<void> decompress(std::span<const std::uint8_t> b) {
    // Errors of the tar parser, the handler and the sink pass through; the codec's get a prefix.
    bool downstream = false;
    Output out = [this, &downstream](std::span<const std::uint8_t> o) {
      auto x = inner_feed(o);
      downstream = !x;
      return x;
    };
    auto codec = [&](const Error& e) -> Error { return downstream ? e : malformed("data/0000.tar: " + e.message()); };
    while (!b.empty()) {
      std::size_t n = b.size();
      if (ckpt_every) {
        // Frame by frame, so a checkpoint's offset is the exact start of the next frame.
        auto r = dec->feed_to_frame_end(b, out);
        if (!r) return codec(r.error());
        n = *r;
      } else if (auto r = dec->feed(b, out); !r) {
        return codec(r.error());
      }
      data_in += n;
      b = b.subspan(n);
      if (ckpt_every && dec->at_frame_boundary())
        if (auto r = maybe_checkpoint(); !r) return r;
      if (ckpt_every && !noted_no_boundary && payload_count - last_ckpt_payload >= 2 * ckpt_every &&
          !prefix_sha256.empty()) {
        noted_no_boundary = true;
        log::info(member_name, ": no point to resume from in ", (payload_count - last_ckpt_payload) >> 20,
                  " MiB of payload: until one comes, an interrupted install starts again from byte 0",
                  by_name(member_name) == Compression::xz
                      ? " (an xz stream written as one block, as mender-artifact and single-threaded xz write it, has none)"
                      : "");
      }
      if (n == 0 && !b.empty()) return malformed("data/0000.tar: the decoder consumed no input");
    }
    return {};
  }

  Result<void> maybe_checkpoint() {
    if (prefix_sha256.empty() || !header.is_rootfs() || inner != InnerState::content || inner_member != InnerMember::payload ||
        iremaining == 0 || payload_count - last_ckpt_payload < ckpt_every ||
        header.payload_name.find('\n') != std::string::npos)
      return {};
    last_ckpt_payload = payload_count;
    Checkpoint c;
    c.offset = data_start + data_in;
    c.prefix_size = data_start;
    c.prefix_sha256 = prefix_sha256;
    c.payload_name = header.payload_name;
    c.payload_size = header.payload_size;
    c.payload_bytes = payload_count;
    c.payload_hash = payload_hash.save_state();
    c.codec_state = dec->save_state();
    if (c.codec_state.empty() || c.codec_state.find('\n') != std::string::npos) return {};
    if (opt.hash_artifact) {
      hash_upto(c.offset);
      c.artifact_hash = artifact_hash.save_state();
    }
    return on_checkpoint ? on_checkpoint(c) : Result<void>{};
  }

  Result<void> resume(std::span<const std::uint8_t> bytes, const Checkpoint& c) {
    auto bad = [](const std::string& m) { return malformed("resuming from a checkpoint: " + m); };
    if (bytes.size() != c.prefix_size)
      return bad("the saved prefix is " + std::to_string(bytes.size()) + " bytes, the checkpoint says " +
                 std::to_string(c.prefix_size));
    auto digest = Sha256::hex(sv(bytes));
    if (digest != c.prefix_sha256) return bad("the saved prefix's SHA-256 is not the checkpoint's");
    // The prefix goes through the normal checks: signature, manifest, header, compatibility.
    recording = false;  // the prefix is already saved: no new one is collected
    cur_base = 0;
    cur_in = bytes;
    if (auto r = feed(bytes); !r) return r;
    if (state != State::content || member != Member::data || data_start != bytes.size())
      return bad("the prefix does not end at the start of the data member's content");
    // Checkpoints from before codec_state existed were all zstd.
    const Compression codec = by_name(member_name);
    auto resumed = resume_decompressor(codec, c.codec_state.empty() ? "zstd" : c.codec_state);
    if (!resumed) return bad("data member '" + member_name + "': " + resumed.error().message());
    const std::uint64_t data_size = remaining;
    if (c.offset <= data_start || c.offset >= data_start + data_size)
      return bad("offset " + std::to_string(c.offset) + " is outside the data member (bytes " +
                 std::to_string(data_start) + " to " + std::to_string(data_start + data_size) + ")");
    if (c.payload_bytes == 0 || c.payload_bytes >= c.payload_size)
      return bad(std::to_string(c.payload_bytes) + " payload bytes done of " + std::to_string(c.payload_size));
    auto ph = Sha256::restore_state(c.payload_hash);
    if (!ph) return bad("payload hash: " + ph.error().message());
    if (ph->size() != c.payload_bytes)
      return bad("the payload hash covers " + std::to_string(ph->size()) + " bytes, the checkpoint says " +
                 std::to_string(c.payload_bytes));
    Sha256 ah;
    if (opt.hash_artifact) {
      auto a = Sha256::restore_state(c.artifact_hash);
      if (!a) return bad("artifact hash: " + a.error().message());
      if (a->size() != c.offset)
        return bad("the artifact hash covers " + std::to_string(a->size()) + " bytes, the checkpoint says " +
                   std::to_string(c.offset));
      ah = std::move(*a);
    }
    // The payload's tar header was in the first frame: present it again (manifest entry, size
    // limit and the HeaderHandler all apply).
    tar::Header h;
    h.name = c.payload_name;
    h.size = c.payload_size;
    if (auto r = payload_start(h); !r) return r;
    data_in = c.offset - data_start;
    remaining = data_size - data_in;
    data_head = to_string(codec);  // the decoder is started: no detection from the first bytes
    dec = std::move(*resumed);
    inner = InnerState::content;
    inner_member = InnerMember::payload;
    iremaining = c.payload_size - c.payload_bytes;
    ipad = tar::padding(c.payload_size);
    payload_count = c.payload_bytes;
    last_ckpt_payload = c.payload_bytes;
    payload_hash = std::move(*ph);
    artifact_hash = std::move(ah);
    hashed_to = c.offset;
    prefix_sha256 = digest;
    return {};
  }

  Result<void> data_end() {
    if (!dec) start_decompressor();  // an empty member
    if (auto r = dec->finish(); !r) return artifact_error(ArtifactErrc::truncated, "data/0000.tar: " + r.error().message());
    if (!header.is_rootfs()) {
      if (payload_seen && !payload_done)
        return artifact_error(ArtifactErrc::truncated, "data/0000.tar: the file '" + file_name + "' is cut short");
      if (files_done != header.files.size())
        return malformed("data/0000.tar: " + std::to_string(files_done) + " files, the manifest lists " +
                         std::to_string(header.files.size()));
      if (!header_reported)  // a module payload without files: the header is reported here
        if (auto r = report_header(); !r) return r;
      stage = Stage::done;
      if (state == State::header) state = State::end;
      return {};
    }
    if (!payload_seen) return malformed("data/0000.tar: no payload file");
    if (!payload_done)
      return artifact_error(ArtifactErrc::truncated, "data/0000.tar: the payload file '" + header.payload_name + "' is cut short");
    stage = Stage::done;
    if (state == State::header) state = State::end;
    return {};
  }

  // ---- inner tar (data/0000.tar) --------------------------------------------------------------

  Result<void> inner_feed(std::span<const std::uint8_t> in) {
    while (!in.empty()) {
      switch (inner) {
        case InnerState::header:
          if (iblk.take(in)) {
            iblk.fill = 0;
            if (auto r = inner_header(); !r) return r;
          }
          break;
        case InnerState::content: {
          auto n = static_cast<std::size_t>(std::min<std::uint64_t>(iremaining, in.size()));
          if (auto r = inner_bytes(in.first(n)); !r) return r;
          in = in.subspan(n);
          iremaining -= n;
          if (iremaining == 0)
            if (auto r = inner_end(); !r) return r;
          break;
        }
        case InnerState::padding: {
          auto n = static_cast<std::size_t>(std::min<std::uint64_t>(ipad, in.size()));
          in = in.subspan(n);
          ipad -= n;
          if (ipad == 0) inner = InnerState::header;
          break;
        }
        case InnerState::end:
          for (auto c : in)
            if (c != 0) return malformed("data/0000.tar: data after the end of the archive");
          in = {};
          break;
      }
    }
    return {};
  }

  Result<void> inner_header() {
    if (tar::is_zero_block(iblk.block())) {
      if (!payload_seen && header.is_rootfs()) return malformed("data/0000.tar: no payload file");
      inner = InnerState::end;
      return {};
    }
    auto h = tar::parse_header(iblk.block());
    if (!h) return malformed("data/0000.tar: " + h.error().message());
    if (ipax) {
      if (auto r = tar::apply_pax(*h, *ipax); !r) return malformed("data/0000.tar: " + r.error().message());
      ipax.reset();
    }
    if (ilong_name) {
      h->name = *ilong_name;
      ilong_name.reset();
    }
    iremaining = h->size;
    ipad = tar::padding(h->size);
    ismall.clear();
    switch (h->kind) {
      case tar::Kind::pax_extended: inner_member = InnerMember::pax; break;
      case tar::Kind::gnu_long_name: inner_member = InnerMember::long_name; break;
      case tar::Kind::file:
        if (auto r = payload_start(*h); !r) return r;
        inner_member = InnerMember::payload;
        break;
      default: inner_member = InnerMember::skip; break;
    }
    if ((inner_member == InnerMember::pax || inner_member == InnerMember::long_name) && iremaining > max_pax)
      return malformed("data/0000.tar: extended header too large");
    inner = InnerState::content;
    if (iremaining == 0) return inner_end();
    return {};
  }

  Result<void> payload_start(const tar::Header& h) {
    if (payload_seen && header.is_rootfs())
      return artifact_error(ArtifactErrc::unsupported, "data/0000.tar: more than one file ('" + h.name +
                                                           "'); a rootfs-image payload is one file");
    std::string name = h.name.starts_with("./") ? h.name.substr(2) : h.name;
    if (!header.is_rootfs() && (name.empty() || name.find('/') != std::string::npos || name == "." || name == ".."))
      return malformed("data/0000.tar: '" + h.name + "' is not a plain file name");
    auto it = manifest.find("data/0000/" + name);
    if (it == manifest.end()) return malformed("manifest: no entry for the payload 'data/0000/" + name + "'");
    if (h.size > opt.max_payload_size)
      return artifact_error(ArtifactErrc::too_large, "payload '" + name + "' is " + std::to_string(h.size) +
                                                         " bytes, over the limit of " +
                                                         std::to_string(opt.max_payload_size));
    if (payload_seen && !payload_done)
      return artifact_error(ArtifactErrc::truncated, "data/0000.tar: the file '" + file_name + "' is cut short");
    if (name == file_name) return malformed("data/0000.tar: '" + name + "' appears twice");
    file_name = name;
    file_sha256 = it->second;
    payload_done = false;
    payload_hash = Sha256();
    if (!payload_seen) {
      payload_seen = true;
      header.payload_name = name;
      header.payload_size = h.size;
      header.payload_sha256 = it->second;
      if (auto r = report_header(); !r) return r;
    }
    if (on_file)
      if (auto r = on_file(name, h.size); !r) return r;
    return {};
  }

  Result<void> report_header() {
    header.data_offset = data_start;
    header.files.clear();
    for (auto& [entry, digest] : manifest)
      if (entry.starts_with("data/0000/")) header.files.push_back(entry.substr(10));
    if (auto r = check_index(); !r) return r;
    if (on_header)
      if (auto r = on_header(header); !r) return r;
    header_reported = true;
    return {};
  }

  // The chunk index must describe this payload and this data member.
  Result<void> check_index() const {
    const auto* x = header.chunk_index.get();
    if (!x) return {};
    auto bad = [](const std::string& m) { return malformed("headers/0000/meta-data: chunk index: " + m); };
    if (x->payload_size != header.payload_size)
      return bad("it is for a payload of " + std::to_string(x->payload_size) + " bytes, the payload has " +
                 std::to_string(header.payload_size));
    Compression c = by_name(member_name);
    if (x->compression != c || (c != Compression::zstd && c != Compression::none))
      return bad("its frames are " + std::string(to_string(x->compression)) + ", the data member is " +
                 std::string(to_string(c)));
    if (x->frames_offset + x->compressed_size() > header.data_size)
      return bad("its frames end at byte " + std::to_string(x->frames_offset + x->compressed_size()) +
                 " of data/0000.tar, which has " + std::to_string(header.data_size));
    return {};
  }

  Result<void> inner_bytes(std::span<const std::uint8_t> b) {
    switch (inner_member) {
      case InnerMember::payload:
        payload_hash.update(b);
        payload_count += b.size();
        if (on_payload) return on_payload(b);
        return {};
      case InnerMember::pax:
      case InnerMember::long_name: ismall.append(sv(b)); return {};
      case InnerMember::skip: return {};
    }
    return {};
  }

  Result<void> inner_end() {
    inner = ipad ? InnerState::padding : InnerState::header;
    switch (inner_member) {
      case InnerMember::pax: {
        auto p = tar::parse_pax(ismall);
        if (!p) return malformed("data/0000.tar: " + p.error().message());
        ipax = std::move(*p);
        return {};
      }
      case InnerMember::long_name: ilong_name = std::string(ismall.c_str()); return {};
      case InnerMember::payload: {
        payload_done = true;
        ++files_done;
        auto digest = payload_hash.hex_final();
        if (digest != file_sha256)
          return artifact_error(ArtifactErrc::manifest_mismatch,
                                "data/0000/" + file_name + ": sha256 " + digest +
                                    " does not match the manifest (" + file_sha256 + ")");
        return {};
      }
      case InnerMember::skip: return {};
    }
    return {};
  }

  Result<void> finish() {
    if (stage == Stage::done && (state == State::end || state == State::header || state == State::padding)) {
      // Any zero padding may follow; a partial block of zeros is fine too.
      for (std::size_t i = 0; i < blk.fill; ++i)
        if (blk.data[i] != 0) return malformed("trailing garbage after the end of the artifact");
      if (opt.hash_artifact) artifact_digest = artifact_hash.hex_final();
      return {};
    }
    if (state == State::content)
      return artifact_error(ArtifactErrc::truncated, "the artifact is truncated inside '" + member_name + "'");
    return artifact_error(ArtifactErrc::truncated, "the artifact is truncated before " + expected_name());
  }
};

Reader::Reader(ReaderOptions o, HeaderHandler h, PayloadSink p)
    : impl_(std::make_unique<Impl>(std::move(o), std::move(h), std::move(p))) {}
Reader::~Reader() = default;
Reader::Reader(Reader&&) noexcept = default;
Reader& Reader::operator=(Reader&&) noexcept = default;

void Reader::set_file_handler(FileHandler on_file) { impl_->on_file = std::move(on_file); }

void Reader::enable_checkpoints(std::uint64_t every, PrefixHandler on_prefix, CheckpointHandler on_checkpoint) {
  impl_->ckpt_every = every;
  impl_->on_prefix = std::move(on_prefix);
  impl_->on_checkpoint = std::move(on_checkpoint);
  impl_->recording = every > 0 && impl_->consumed == 0;
}

Result<void> Reader::resume(std::span<const std::uint8_t> prefix, const Checkpoint& checkpoint) {
  if (impl_->error) return *impl_->error;
  auto r = impl_->consumed == 0 ? impl_->resume(prefix, checkpoint)
                                : Result<void>(malformed("resuming from a checkpoint: the reader has already read bytes"));
  if (!r) {
    impl_->error = r.error();
    return r;
  }
  impl_->consumed = checkpoint.offset;
  return r;
}

Result<void> Reader::feed(std::span<const std::uint8_t> bytes) {
  if (impl_->error) return *impl_->error;
  impl_->cur_base = impl_->consumed;
  impl_->cur_in = bytes;
  auto r = impl_->feed(bytes);
  impl_->consumed += bytes.size();
  if (r) impl_->hash_upto(impl_->consumed);
  impl_->cur_in = {};
  if (!r) impl_->error = r.error();
  return r;
}

Result<void> Reader::finish() {
  if (impl_->error) return *impl_->error;
  auto r = impl_->finish();
  if (!r) impl_->error = r.error();
  return r;
}

const Header* Reader::header() const { return impl_->header_reported ? &impl_->header : nullptr; }
std::uint64_t Reader::bytes_consumed() const { return impl_->consumed; }
std::uint64_t Reader::payload_bytes() const { return impl_->payload_count; }
std::string Reader::artifact_sha256() const { return impl_->artifact_digest; }

// ---- Checkpoint text ------------------------------------------------------------------------------

namespace {
constexpr std::string_view checkpoint_magic = "tern-checkpoint 1";
}

std::string Checkpoint::serialize() const {
  std::string body = std::string(checkpoint_magic) + "\n";
  body += "offset " + std::to_string(offset) + "\n";
  body += "prefix_size " + std::to_string(prefix_size) + "\n";
  body += "prefix_sha256 " + prefix_sha256 + "\n";
  body += "payload_name " + payload_name + "\n";
  body += "payload_size " + std::to_string(payload_size) + "\n";
  body += "payload_bytes " + std::to_string(payload_bytes) + "\n";
  body += "payload_hash " + payload_hash + "\n";
  body += "artifact_hash " + artifact_hash + "\n";
  if (!codec_state.empty()) body += "codec " + codec_state + "\n";
  return body + "check " + Sha256::hex(body) + "\n";
}

Result<Checkpoint> Checkpoint::parse(std::string_view text) {
  auto bad = [](const std::string& m) { return malformed("checkpoint: " + m); };
  auto check_at = text.rfind("check ");
  if (!text.starts_with(checkpoint_magic) || check_at == std::string_view::npos || check_at == 0 ||
      text[check_at - 1] != '\n')
    return bad("not a checkpoint (no '" + std::string(checkpoint_magic) + "' header or 'check' line)");
  std::string_view body = text.substr(0, check_at);
  std::string_view check = text.substr(check_at + 6);
  if (check.ends_with('\n')) check.remove_suffix(1);
  if (check != Sha256::hex(body)) return bad("the check line does not match its content (torn or edited)");

  Checkpoint c;
  std::map<std::string, std::string_view> seen;
  std::size_t pos = checkpoint_magic.size() + 1;
  while (pos < body.size()) {
    auto eol = body.find('\n', pos);
    std::string_view line = body.substr(pos, eol - pos);
    pos = eol + 1;
    auto sp = line.find(' ');
    if (sp == std::string_view::npos) return bad("line '" + std::string(line) + "' has no value");
    std::string key(line.substr(0, sp));
    if (!seen.emplace(key, line.substr(sp + 1)).second) return bad("'" + key + "' appears twice");
  }
  auto text_of = [&](const char* key) -> Result<std::string> {
    auto it = seen.find(key);
    if (it == seen.end()) return bad(std::string("no '") + key + "' line");
    return std::string(it->second);
  };
  auto number = [&](const char* key) -> Result<std::uint64_t> {
    auto t = text_of(key);
    if (!t) return t.error();
    if (t->empty() || t->size() > 19 || t->find_first_not_of("0123456789") != std::string::npos)
      return bad(std::string("'") + key + "' is not a number: '" + *t + "'");
    return std::stoull(*t);
  };
#define TERN_CKPT(field, getter)                 \
  {                                              \
    auto v = getter(#field);                     \
    if (!v) return v.error();                    \
    c.field = std::move(*v);                     \
  }
  TERN_CKPT(offset, number)
  TERN_CKPT(prefix_size, number)
  TERN_CKPT(prefix_sha256, text_of)
  TERN_CKPT(payload_name, text_of)
  TERN_CKPT(payload_size, number)
  TERN_CKPT(payload_bytes, number)
  TERN_CKPT(payload_hash, text_of)
  TERN_CKPT(artifact_hash, text_of)
#undef TERN_CKPT
  // "codec" is optional: checkpoints saved before it existed are zstd.
  if (auto it = seen.find("codec"); it != seen.end()) {
    if (it->second.empty()) return bad("'codec' is empty");
    c.codec_state = std::string(it->second);
  }
  if (seen.size() != 8u + (c.codec_state.empty() ? 0u : 1u)) return bad("unknown keys (expected 8, and codec)");
  return c;
}

Result<Header> read_file(const std::filesystem::path& path, ReaderOptions options, Reader::PayloadSink sink) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Error::from_errno("opening " + path.string(), errno);
  Header header;
  Reader reader(std::move(options), [&](const Header& h) -> Result<void> {
    header = h;
    return {};
  }, std::move(sink));
  std::vector<std::uint8_t> buf(256 * 1024);
  while (in) {
    in.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
    auto n = static_cast<std::size_t>(in.gcount());
    if (n == 0) break;
    if (auto r = reader.feed({buf.data(), n}); !r) return r.error().context(path.string());
  }
  if (in.bad()) return Error::from_errno("reading " + path.string(), errno);
  if (auto r = reader.finish(); !r) return r.error().context(path.string());
  return header;
}

Result<Header> read_header(const std::filesystem::path& path, ReaderOptions options) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Error::from_errno("opening " + path.string(), errno);
  std::optional<Header> header;
  // The handler stops the reader once it has the header.
  Reader reader(std::move(options), [&](const Header& h) -> Result<void> {
    header = h;
    return fail(Errc::cancelled, "header read");
  }, nullptr);
  std::vector<std::uint8_t> buf(64 * 1024);
  while (in && !header) {
    in.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
    auto n = static_cast<std::size_t>(in.gcount());
    if (n == 0) break;
    if (auto r = reader.feed({buf.data(), n}); !r && !header) return r.error().context(path.string());
  }
  if (in.bad()) return Error::from_errno("reading " + path.string(), errno);
  if (!header)
    return artifact_error(ArtifactErrc::truncated, path.string() + ": the artifact ends before its payload");
  return std::move(*header);
}

}  // namespace tern::artifacts
