// libFuzzer target for the streaming artifact reader (artifacts/reader.hpp).
//
// Input layout: a 4-byte control prefix, then the artifact bytes.
//   byte 0, bits 0-1: verification key: 0 none, 1 the EC P-256 key, 2 the RSA key (keys/*.pub; the
//                     seed corpus is signed with their private halves), 3 the EC key and a
//                     device_provides map, so artifact_depends is checked too
//           bits 2-3: payload limit: 0 64 KiB, 1 256 bytes, 2 0 bytes, 3 1 MiB
//           bit  4:   the payload sink refuses the second chunk it is given
//           bit  5:   fix-ups before reading, so mutations get past the checksums: every ustar
//                     header block on the outer tar's member boundaries (and inside an
//                     uncompressed header.tar or data/0000.tar) gets a correct checksum, and the
//                     manifest's digests of version, header.tar and an uncompressed payload are
//                     recomputed (an unsigned artifact then reaches the header-info and tar
//                     parsers with mutated content)
//   bytes 1-3:       chunk sizes, used in turn: n gives n bytes, 0 gives all the rest at once
// The device type is always "fuzz" (the corpus artifacts are made for it). With
// ARTIFACT_FUZZ_VERBOSE=1 in the environment, each input's outcome is printed (to check seeds).
//
// Besides what ASan/UBSan/LSan catch, the target aborts when the reader breaks its contract:
// the header reported more than once or after payload bytes, payload bytes beyond the declared
// size or the limit, a non-sticky error, a sink error not passed through unchanged, or a finish()
// that succeeds for a payload whose size or SHA-256 does not match the header.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "artifacts/crypto.hpp"
#include "artifacts/reader.hpp"

namespace {

namespace art = tern::artifacts;

constexpr const char* ec_pub =
    "-----BEGIN PUBLIC KEY-----\n"
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEaCTH8ZjbeRWtHzirNbp1WYjEwE/O\n"
    "iqsO3OA8bzmid2tumc3qZHP7/9/3K3S58Jsk3v7QQajv72l9cwFInM56sw==\n"
    "-----END PUBLIC KEY-----\n";

constexpr const char* rsa_pub =
    "-----BEGIN PUBLIC KEY-----\n"
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAq8F+RaKWaRtgrFQMu50k\n"
    "p7nlLG3CUfFjBGwrGiE03n1eDduV7bGuZ8FzZkq0ZJhxmgV1HxVOKidzqi6aHB1Y\n"
    "GBPqZxb+zKb5IOBQEkZgpMuVrLajC7IJ+ZqST1balypHQtijfynp9mv+5XiUryFJ\n"
    "DIK/dOWAY3e3xFtqQ2EXOOuSFwQdJVSYTeB+NM31R3owoYWctLRHsGKkgplFh6q/\n"
    "rzoYMhBuEi3nXsqFcoqB4oFqD1+hHDFvN9TH+ECjq0YO0OtYEVwsxrGRKUdrKodU\n"
    "pTtCezIMyFOKWzrR9IqcD5HvcggNQO2RTP3/p2N1JFk0PB+6kATgMSRACfq0WeNS\n"
    "IwIDAQAB\n"
    "-----END PUBLIC KEY-----\n";

constexpr std::uint64_t limits[] = {64 * 1024, 256, 0, 1024 * 1024};

[[noreturn]] void broken(const char* what) {
  std::fprintf(stderr, "artifact_reader_fuzz: reader contract broken: %s\n", what);
  std::abort();
}

void check(bool ok, const char* what) {
  if (!ok) broken(what);
}

// ---- fix-ups (flag bit 5) ----------------------------------------------------------------------

constexpr std::size_t block = 512;

bool is_ustar(const std::uint8_t* b) {
  return std::memcmp(b + 257, "ustar", 5) == 0;
}

void fix_checksum(std::uint8_t* b) {
  std::memset(b + 148, ' ', 8);
  unsigned sum = 0;
  for (std::size_t i = 0; i < block; ++i) sum += b[i];
  std::snprintf(reinterpret_cast<char*>(b + 148), 8, "%06o", sum & 0777777u);
  b[155] = ' ';
}

// The octal size field; nullopt for anything else (base-256, garbage): fix-ups stop there.
std::optional<std::uint64_t> octal_size(const std::uint8_t* b) {
  std::uint64_t v = 0;
  bool any = false;
  for (std::size_t i = 124; i < 136 && b[i] >= '0' && b[i] <= '7'; ++i) {
    v = v * 8 + (b[i] - '0');
    any = true;
  }
  if (!any) return std::nullopt;
  return v;
}

struct Member {
  std::string name;
  std::size_t offset;  // of the content
  std::size_t size;
};

// Walks a tar in `buf[from, to)`, fixing header checksums; returns the members it could follow.
std::vector<Member> fix_tar(std::vector<std::uint8_t>& buf, std::size_t from, std::size_t to) {
  std::vector<Member> members;
  std::size_t pos = from;
  while (pos + block <= to) {
    std::uint8_t* b = buf.data() + pos;
    if (!is_ustar(b)) break;
    fix_checksum(b);
    auto size = octal_size(b);
    if (!size || *size > to - pos - block) break;
    members.push_back(
        {std::string(reinterpret_cast<const char*>(b), strnlen(reinterpret_cast<const char*>(b), 100)),
         pos + block, static_cast<std::size_t>(*size)});
    pos += block + static_cast<std::size_t>((*size + block - 1) / block * block);
  }
  return members;
}

std::string sha256_hex(const std::vector<std::uint8_t>& buf, const Member& m) {
  art::Sha256 h;
  h.update(std::span<const std::uint8_t>(buf.data() + m.offset, m.size));
  return h.hex_final();
}

// Rewrites the digest on the manifest line for `name`, if there is one.
void fix_manifest(std::vector<std::uint8_t>& buf, const Member& manifest, const std::string& name,
                  const std::string& digest) {
  std::string_view text(reinterpret_cast<const char*>(buf.data() + manifest.offset), manifest.size);
  std::size_t line = 0;
  while (line < text.size()) {
    std::size_t end = std::min(text.find('\n', line), text.size());
    if (end - line == 66 + name.size() && text.substr(line + 64, 2) == "  " &&
        text.substr(line + 66, name.size()) == name)
      std::memcpy(buf.data() + manifest.offset + line, digest.data(), 64);
    line = end + 1;
  }
}

void fix_up(std::vector<std::uint8_t>& buf) {
  auto outer = fix_tar(buf, 0, buf.size());
  const Member* manifest = nullptr;
  for (auto& m : outer)
    if (m.name == "manifest") manifest = &m;
  if (!manifest) return;
  for (auto& m : outer) {
    if (m.name == "header.tar") fix_tar(buf, m.offset, m.offset + m.size);  // before its digest
    if (m.name == "version" || m.name.starts_with("header.tar"))
      fix_manifest(buf, *manifest, m.name, sha256_hex(buf, m));
    if (m.name == "data/0000.tar")
      for (auto& f : fix_tar(buf, m.offset, m.offset + m.size))
        fix_manifest(buf, *manifest, "data/0000/" + f.name, sha256_hex(buf, f));
  }
}

bool verbose() {
  static const bool v = [] {
    const char* e = std::getenv("ARTIFACT_FUZZ_VERBOSE");
    return e && *e && *e != '0';
  }();
  return v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 4) return 0;
  const std::uint8_t flags = data[0];
  const std::uint8_t chunks[3] = {data[1], data[2], data[3]};
  std::vector<std::uint8_t> fixed;
  std::span<const std::uint8_t> artifact(data + 4, size - 4);
  if (flags & 0x20) {
    fixed.assign(artifact.begin(), artifact.end());
    fix_up(fixed);
    artifact = fixed;
  }

  art::ReaderOptions options;
  options.device_type = "fuzz";
  switch (flags & 3) {
    case 1:
      options.verify_key_pem = ec_pub;
      break;
    case 2:
      options.verify_key_pem = rsa_pub;
      break;
    case 3:
      options.verify_key_pem = ec_pub;
      options.device_provides = std::map<std::string, std::string>{
          {"artifact_name", "fuzz-1"}, {"artifact_group", "fuzzers"}, {"rootfs-image.version", "1"}};
      break;
    default:
      break;
  }
  options.max_payload_size = limits[(flags >> 2) & 3];
  const bool refuse_second_chunk = flags & 0x10;
  const std::uint64_t limit = options.max_payload_size;
  const bool keyed = options.verify_key_pem.has_value();

  // What the callbacks saw.
  int headers = 0;
  std::uint64_t payload = 0;
  int sink_calls = 0;
  art::Header seen;
  art::Sha256 hash;
  const std::error_code refusal = std::make_error_code(std::errc::no_space_on_device);
  const std::string refusal_text = "fuzz sink: refusing the second chunk";

  art::Reader reader(
      options,
      [&](const art::Header& h) -> tern::Result<void> {
        check(++headers == 1, "header reported twice");
        check(payload == 0, "header reported after payload bytes");
        check(h.payload_size <= limit, "header reported for a payload over the limit");
        check(std::find(h.device_types.begin(), h.device_types.end(), "fuzz") != h.device_types.end(),
              "header reported for another device type");
        check(!keyed || h.signature_verified, "header reported without a verified signature");
        seen = h;
        return {};
      },
      [&](std::span<const std::uint8_t> b) -> tern::Result<void> {
        check(headers == 1, "payload bytes before the header");
        check(!b.empty(), "empty payload chunk");
        payload += b.size();
        check(payload <= seen.payload_size, "more payload bytes than the tar header declared");
        check(payload <= limit, "more payload bytes than the limit");
        hash.update(b);
        if (refuse_second_chunk && ++sink_calls == 2) return tern::Error(refusal, refusal_text);
        return {};
      });

  // Feed in the chunk sizes the prefix asks for.
  std::size_t pos = 0;
  std::size_t turn = 0;
  tern::Result<void> result;
  while (pos < artifact.size()) {
    std::size_t n = chunks[turn++ % 3];
    if (n == 0) n = artifact.size() - pos;
    n = std::min(n, artifact.size() - pos);
    result = reader.feed(artifact.subspan(pos, n));
    pos += n;
    check(reader.bytes_consumed() == pos, "bytes_consumed differs from the bytes fed");
    if (!result) break;
  }
  if (result) result = reader.finish();

  if (verbose())
    std::fprintf(stderr, "artifact_reader_fuzz: %s (payload %llu bytes)\n",
                 result ? "accepted" : result.error().message().c_str(),
                 static_cast<unsigned long long>(payload));

  if (!result) {
    const auto& e = result.error();
    check(!e.message().empty(), "an error without a message");
    if (refuse_second_chunk && sink_calls == 2)
      check(e.code() == refusal && e.message() == refusal_text,
            "the sink's error did not pass through unchanged");
    // Sticky: the same error again, and no more callbacks.
    const int headers_before = headers;
    const std::uint64_t payload_before = payload;
    auto again = reader.feed(artifact.subspan(pos));
    check(!again && again.error().code() == e.code(), "feed() after an error did not return it again");
    auto fin = reader.finish();
    check(!fin && fin.error().code() == e.code(), "finish() after an error did not return it again");
    check(headers == headers_before && payload == payload_before, "callbacks after an error");
    return 0;
  }

  // Accepted: the whole payload arrived and matches what the manifest promised.
  check(headers == 1, "accepted without reporting a header");
  check(reader.header() != nullptr, "accepted but header() is null");
  check(reader.payload_bytes() == payload, "payload_bytes differs from the bytes given to the sink");
  check(payload == seen.payload_size, "accepted a payload shorter than declared");
  check(hash.hex_final() == seen.payload_sha256,
        "accepted a payload whose SHA-256 differs from the manifest");
  check(!keyed || seen.signature_verified, "accepted without a verified signature");
  return 0;
}
