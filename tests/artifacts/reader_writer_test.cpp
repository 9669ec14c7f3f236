// The artifact reader and writer against each other: every compression and chunk size, signatures,
// and every kind of bad input, each refused with the error that names it.
#include "artifacts/compress.hpp"
#include "artifacts/crypto.hpp"
#include "artifacts/tar.hpp"
#include "tests/artifacts/fixtures.hpp"

#include <gtest/gtest.h>
#include <zstd.h>

namespace tern::test {
namespace {

using artifacts::ArtifactErrc;
using artifacts::Compression;

class ArtifactTest : public ::testing::Test {
 protected:
  TempDir dir;
  std::string payload = payload_bytes(300 * 1024);

  std::string make(artifacts::WriterOptions o = {}) {
    write_file(dir / "rootfs.ext4", payload);
    o.payload = dir / "rootfs.ext4";
    if (o.device_types.empty()) o.device_types = {"qemu", "rpi4"};
    if (o.artifact_name.empty()) o.artifact_name = "release-1";
    auto out = dir / "a.mender";
    auto r = artifacts::write_rootfs_artifact(o, out);
    EXPECT_TRUE(r) << (r ? "" : r.error().message());
    return read_file(out);
  }
};

// Finds a member of the outer tar (its content's offset and size); for corrupting tests.
std::pair<std::size_t, std::size_t> member(const std::string& a, const std::string& name) {
  std::size_t pos = 0;
  std::optional<std::map<std::string, std::string>> pax;
  while (pos + 512 <= a.size()) {
    std::span<const std::uint8_t, 512> b(reinterpret_cast<const std::uint8_t*>(a.data()) + pos, 512);
    if (artifacts::tar::is_zero_block(b)) break;
    auto h = artifacts::tar::parse_header(b).value();
    pos += 512;
    if (h.kind == artifacts::tar::Kind::pax_extended) {
      pax = artifacts::tar::parse_pax(a.substr(pos, h.size)).value();
      pos += h.size + artifacts::tar::padding(h.size);
      continue;
    }
    if (pax) (void)artifacts::tar::apply_pax(h, *pax), pax.reset();
    if (h.name == name) return {pos, h.size};
    pos += h.size + artifacts::tar::padding(h.size);
  }
  ADD_FAILURE() << "no member " << name;
  return {0, 0};
}

TEST_F(ArtifactTest, RoundTripEveryCompressionAndChunkSize) {
  for (auto c : {Compression::zstd, Compression::gzip, Compression::xz, Compression::none}) {
    artifacts::WriterOptions o;
    o.compression = c;
    o.provides = {{"data-partition.version", "7"}};
    o.depends = {{"bootloader", "2024.01"}};
    auto a = make(o);
    for (std::size_t chunk : {std::size_t{1}, std::size_t{7}, std::size_t{512}, std::size_t{65536}, a.size()}) {
      if (chunk == 1 && c != Compression::zstd) continue;  // one byte at a time once is enough
      auto r = read_chunked(a, {}, chunk);
      ASSERT_TRUE(r.result) << to_string(c) << " chunk " << chunk << ": " << r.result.error().message();
      EXPECT_EQ(r.payload, payload) << to_string(c) << " chunk " << chunk;
      ASSERT_TRUE(r.header);
      EXPECT_TRUE(r.header_before_payload);
      EXPECT_EQ(r.header->artifact_name, "release-1");
      EXPECT_EQ(r.header->device_types, (std::vector<std::string>{"qemu", "rpi4"}));
      EXPECT_EQ(r.header->payload_size, payload.size());
      EXPECT_EQ(r.header->payload_name, "rootfs.ext4");
      EXPECT_EQ(r.header->payload_sha256, artifacts::Sha256::hex(payload));
      EXPECT_EQ(r.header->compression, c);
      EXPECT_EQ(r.header->provides.at("data-partition.version"), "7");
      EXPECT_EQ(r.header->provides.at("rootfs-image.version"), "release-1");
      EXPECT_EQ(r.header->provides.at("rootfs-image.checksum"), artifacts::Sha256::hex(payload));
      EXPECT_EQ(r.header->depends.at("bootloader"), std::vector<std::string>{"2024.01"});
      EXPECT_EQ(r.header->clears_provides,
                (std::vector<std::string>{"artifact_group", "rootfs_image_checksum", "rootfs-image.*"}));
    }
  }
}

TEST_F(ArtifactTest, ZstdPayloadIsWrittenAsIndependentFrames) {
  artifacts::WriterOptions o;
  o.frame_size = 64 * 1024;
  auto a = make(o);
  auto [off, size] = member(a, "data/0000.tar.zst");
  std::string_view data(a.data() + off, size);
  std::size_t frames = 0;
  std::vector<std::size_t> starts;
  while (!data.empty()) {
    starts.push_back(size - data.size());
    std::size_t n = ZSTD_findFrameCompressedSize(data.data(), data.size());
    ASSERT_FALSE(ZSTD_isError(n)) << ZSTD_getErrorName(n);
    // Each frame decompresses on its own.
    auto alone = artifacts::decompress_all(Compression::zstd, data.substr(0, n), 1 << 20);
    ASSERT_TRUE(alone) << alone.error().message();
    EXPECT_LE(alone->size(), o.frame_size);
    data.remove_prefix(n);
    ++frames;
  }
  // The 512-byte tar header alone, 300 KiB in 64 KiB frames aligned on the payload, the tar end.
  const std::size_t payload_frames = (payload.size() + o.frame_size - 1) / o.frame_size;
  EXPECT_EQ(frames, 1 + payload_frames + 1);
  // The chunk index says where each payload frame starts, and how long it is.
  auto r = read_chunked(a, {}, 65536);
  ASSERT_TRUE(r.result) << r.result.error().message();
  ASSERT_TRUE(r.header->chunk_index);
  const auto& x = *r.header->chunk_index;
  ASSERT_EQ(x.frames.size(), payload_frames);
  EXPECT_EQ(r.header->data_offset, off);
  EXPECT_EQ(r.header->data_size, size);
  for (std::size_t i = 0; i < payload_frames; ++i) {
    EXPECT_EQ(x.frames[i].offset, starts[i + 1]) << i;
    EXPECT_EQ(x.frames[i].offset + x.frames[i].size, starts[i + 2]) << i;
  }
}

TEST_F(ArtifactTest, SignaturesRsaEcdsaEd25519) {
  for (std::string k : {"rsa", "ec", "ed"}) {
    artifacts::WriterOptions o;
    o.signing_key_pem = key(k + ".key");
    auto a = make(o);
    artifacts::ReaderOptions ro;
    ro.verify_key_pem = key(k + ".pub");
    auto r = read_chunked(a, ro, 4096);
    ASSERT_TRUE(r.result) << k << ": " << r.result.error().message();
    EXPECT_TRUE(r.header->signed_manifest);
    EXPECT_TRUE(r.header->signature_verified);
    // Another key of another type: refused.
    ro.verify_key_pem = key(k == "rsa" ? "ec.pub" : "rsa.pub");
    auto wrong = read_chunked(a, ro, 4096);
    ASSERT_FALSE(wrong.result);
    EXPECT_EQ(wrong.result.error().code(), ArtifactErrc::signature);
    EXPECT_NE(wrong.result.error().message().find("signature does not verify"), std::string::npos);
    EXPECT_TRUE(wrong.payload.empty());
  }
}

TEST_F(ArtifactTest, EcdsaSignatureIsRawAndDerIsAccepted) {
  auto manifest = std::string("abc\n");
  auto sig = artifacts::sign_base64(manifest, key("ec.key")).value();
  auto raw_len = run("printf %s " + shell_quote(sig) + " | base64 -d | wc -c");
  EXPECT_EQ(std::stoi(raw_len.output), 64);
  // A DER signature made by the openssl CLI verifies too.
  write_file(dir / "m", manifest);
  auto der = run("cd " + shell_quote(dir.path().string()) + " && openssl dgst -sha256 -sign " +
                 shell_quote((keys() / "ec.key").string()) + " m | base64 -w0");
  ASSERT_EQ(der.exit_code, 0);
  EXPECT_TRUE(artifacts::verify_base64(manifest, der.output, key("ec.pub")));
  EXPECT_FALSE(artifacts::verify_base64("abd\n", der.output, key("ec.pub")));
}

TEST_F(ArtifactTest, UnsignedArtifactIsRefusedWhenAKeyIsConfigured) {
  auto a = make();
  artifacts::ReaderOptions ro;
  ro.verify_key_pem = key("ec.pub");
  auto r = read_chunked(a, ro, 4096);
  ASSERT_FALSE(r.result);
  EXPECT_EQ(r.result.error().code(), ArtifactErrc::signature);
  EXPECT_NE(r.result.error().message().find("not signed"), std::string::npos);
  EXPECT_TRUE(r.payload.empty());
  EXPECT_FALSE(r.header);
}

TEST_F(ArtifactTest, SwappedSignatureIsRefused) {
  artifacts::WriterOptions o;
  o.signing_key_pem = key("ec.key");
  auto a = make(o);
  o.artifact_name = "release-2";
  auto b = make(o);
  auto [aoff, asize] = member(a, "manifest.sig");
  auto [boff, bsize] = member(b, "manifest.sig");
  ASSERT_EQ(asize, bsize);
  a.replace(aoff, asize, b.substr(boff, bsize));  // b's valid signature on a's manifest
  artifacts::ReaderOptions ro;
  ro.verify_key_pem = key("ec.pub");
  auto r = read_chunked(a, ro, 4096);
  ASSERT_FALSE(r.result);
  EXPECT_EQ(r.result.error().code(), ArtifactErrc::signature);
}

TEST_F(ArtifactTest, FlippedByteInEachMemberIsRefused) {
  artifacts::WriterOptions o;
  o.compression = Compression::none;  // so a flipped data byte lands in the payload itself
  auto a = make(o);
  struct Case {
    std::string member;
    std::size_t at;  // offset inside the member's content
    ArtifactErrc expected;
  } cases[] = {
      {"version", 3, ArtifactErrc::malformed},         // JSON breaks, or the digest does
      {"manifest", 10, ArtifactErrc::manifest_mismatch},
      {"header.tar", 600, ArtifactErrc::manifest_mismatch},
      {"data/0000.tar", 512 + 1000, ArtifactErrc::manifest_mismatch},
  };
  for (auto& c : cases) {
    auto bad = a;
    auto [off, size] = member(bad, c.member);
    ASSERT_LT(c.at, size);
    bad[off + c.at] ^= 0x01;
    auto r = read_chunked(bad, {}, 4096);
    ASSERT_FALSE(r.result) << c.member;
    if (c.member == "version") {
      EXPECT_TRUE(r.result.error().code() == ArtifactErrc::malformed ||
                  r.result.error().code() == ArtifactErrc::manifest_mismatch)
          << r.result.error().message();
    } else {
      EXPECT_EQ(r.result.error().code(), c.expected) << c.member << ": " << r.result.error().message();
    }
    EXPECT_NE(r.result.error().message().find(c.member == "data/0000.tar" ? "data/0000/rootfs.ext4" : c.member),
              std::string::npos)
        << r.result.error().message();
  }
  // A flipped byte in a compressed member is caught too (manifest or codec).
  auto z = make();
  auto [off, size] = member(z, "data/0000.tar.zst");
  z[off + size / 2] ^= 0x40;
  EXPECT_FALSE(read_chunked(z, {}, 4096).result);
}

TEST_F(ArtifactTest, TruncatedAnywhereIsRefused) {
  for (auto c : {Compression::zstd, Compression::gzip, Compression::xz}) {
    artifacts::WriterOptions o;
    o.compression = c;
    auto a = make(o);
    auto [off, size] = member(a, "data/0000.tar" + std::string(artifacts::suffix(c)));
    for (std::size_t cut : {std::size_t{0}, std::size_t{100}, std::size_t{600}, off - 10, off + 1, off + size / 2,
                            off + size - 1}) {
      auto r = read_chunked(a.substr(0, cut), {}, 4096);
      ASSERT_FALSE(r.result) << to_string(c) << " cut at " << cut;
      auto code = r.result.error().code();
      EXPECT_TRUE(code == ArtifactErrc::truncated || code == ArtifactErrc::manifest_mismatch)
          << to_string(c) << " cut at " << cut << ": " << r.result.error().message();
    }
  }
}

TEST_F(ArtifactTest, ZeroPaddingAfterTheEndIsFineTrailingGarbageIsNot) {
  auto a = make();
  EXPECT_TRUE(read_chunked(a + std::string(10240, '\0'), {}, 4096).result);
  EXPECT_TRUE(read_chunked(a + std::string(100, '\0'), {}, 4096).result);
  auto r = read_chunked(a + std::string(512, 'x'), {}, 4096);
  ASSERT_FALSE(r.result);
  EXPECT_NE(r.result.error().message().find("trailing garbage"), std::string::npos);
}

TEST_F(ArtifactTest, WrongDeviceTypeAndUnmetDependsAreRefusedBeforeThePayload) {
  artifacts::WriterOptions o;
  o.depends = {{"bootloader", "2024.01"}};
  o.depends_artifact_names = {"release-0"};
  auto a = make(o);
  artifacts::ReaderOptions ro;
  ro.device_type = "beaglebone";
  auto r = read_chunked(a, ro, 4096);
  ASSERT_FALSE(r.result);
  EXPECT_EQ(r.result.error().code(), ArtifactErrc::incompatible);
  EXPECT_EQ(r.result.error().message(), "artifact is for device types [qemu, rpi4], not 'beaglebone'");
  EXPECT_TRUE(r.payload.empty());

  ro.device_type = "qemu";
  ro.device_provides = std::map<std::string, std::string>{{"artifact_name", "release-0"}, {"bootloader", "2019"}};
  r = read_chunked(a, ro, 4096);
  ASSERT_FALSE(r.result);
  EXPECT_EQ(r.result.error().code(), ArtifactErrc::incompatible);
  EXPECT_NE(r.result.error().message().find("bootloader"), std::string::npos);
  EXPECT_TRUE(r.payload.empty());

  ro.device_provides = std::map<std::string, std::string>{{"artifact_name", "release-0"}, {"bootloader", "2024.01"}};
  EXPECT_TRUE(read_chunked(a, ro, 4096).result);
}

TEST_F(ArtifactTest, OversizedPayloadIsRefusedBeforeTheFirstByte) {
  auto a = make();
  artifacts::ReaderOptions ro;
  ro.max_payload_size = payload.size() - 1;
  auto r = read_chunked(a, ro, 4096);
  ASSERT_FALSE(r.result);
  EXPECT_EQ(r.result.error().code(), ArtifactErrc::too_large);
  EXPECT_TRUE(r.payload.empty());
  EXPECT_FALSE(r.header);
}

TEST_F(ArtifactTest, HeaderHandlerCanRefuseAndErrorsAreSticky) {
  auto a = make();
  std::size_t sunk = 0;
  artifacts::Reader reader(
      {}, [](const artifacts::Header& h) -> Result<void> {
        return fail(Errc::invalid_argument, "partition too small for " + std::to_string(h.payload_size));
      },
      [&](std::span<const std::uint8_t> b) -> Result<void> {
        sunk += b.size();
        return {};
      });
  auto r = reader.feed({reinterpret_cast<const std::uint8_t*>(a.data()), a.size()});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message(), "partition too small for " + std::to_string(payload.size()));
  EXPECT_EQ(sunk, 0u);
  EXPECT_FALSE(reader.finish());
  EXPECT_EQ(reader.finish().error().message(), r.error().message());
}

TEST_F(ArtifactTest, NotAnArtifactGivesAClearError) {
  auto r = read_chunked(payload_bytes(5000), {}, 4096);
  ASSERT_FALSE(r.result);
  EXPECT_EQ(r.result.error().code(), ArtifactErrc::malformed);
  EXPECT_NE(r.result.error().message().find("checksum"), std::string::npos) << r.result.error().message();
  EXPECT_FALSE(read_chunked("", {}, 1).result);
}

TEST_F(ArtifactTest, SignCommandAddsAVerifiableSignature) {
  auto a = make();
  write_file(dir / "in.mender", a);
  ASSERT_TRUE(artifacts::sign_artifact(dir / "in.mender", key("rsa.key"), dir / "signed.mender"));
  artifacts::ReaderOptions ro;
  ro.verify_key_pem = key("rsa.pub");
  auto h = artifacts::read_file(dir / "signed.mender", ro);
  ASSERT_TRUE(h) << h.error().message();
  EXPECT_TRUE(h->signature_verified);
  // Re-signing replaces the signature.
  ASSERT_TRUE(artifacts::sign_artifact(dir / "signed.mender", key("ec.key"), dir / "signed.mender"));
  ro.verify_key_pem = key("ec.pub");
  EXPECT_TRUE(artifacts::read_file(dir / "signed.mender", ro));
}

TEST(ArtifactCodecs, RoundTripAtBufferBoundariesAndRejectTruncation) {
  // The codecs work in 64 KiB output chunks: sizes around multiples of it are the edge cases
  // (zstd returns a next-frame hint after a frame ends exactly at a buffer boundary).
  for (auto c : {Compression::zstd, Compression::gzip, Compression::xz, Compression::none}) {
    for (std::size_t n : {std::size_t{1}, std::size_t{65535}, std::size_t{65536}, std::size_t{65537},
                          std::size_t{131072}}) {
      auto data = payload_bytes(n, static_cast<unsigned>(n));
      auto z = artifacts::compress_all(c, data).value();
      auto back = artifacts::decompress_all(c, z, 1 << 20);
      ASSERT_TRUE(back) << to_string(c) << " " << n << ": " << back.error().message();
      EXPECT_EQ(*back, data) << to_string(c) << " " << n;
      if (c != Compression::none) {
        auto cut = artifacts::decompress_all(c, z.substr(0, z.size() - 1), 1 << 20);
        EXPECT_FALSE(cut) << to_string(c) << " " << n << " truncated by one byte";
      }
    }
  }
  EXPECT_EQ(artifacts::detect({reinterpret_cast<const std::uint8_t*>("\x1f\x8b\x08\0\0\0"), 6}), Compression::gzip);
}

TEST(ArtifactTar, LongNamesAndLargeSizesUsePax) {
  std::string out;
  std::string name(150, 'n');
  artifacts::tar::write_file(out, name, "hello");
  artifacts::tar::write_end(out);
  auto files = artifacts::tar::read_all(out).value();
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0].first, name);
  EXPECT_EQ(files[0].second, "hello");
  std::string big;
  artifacts::tar::write_file_header(big, "huge.img", 10ull << 30);
  // A PAX header, its record block, then the ustar header.
  ASSERT_EQ(big.size(), 3 * 512u);
  auto pax = artifacts::tar::parse_pax(std::string_view(big).substr(512, 512).substr(0, big.find('\n', 512) - 512 + 1));
  ASSERT_TRUE(pax);
  EXPECT_EQ(pax->at("size"), std::to_string(10ull << 30));
}

}  // namespace
}  // namespace tern::test
