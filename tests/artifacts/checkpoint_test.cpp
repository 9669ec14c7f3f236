// Resume checkpoints: serialisable SHA-256 state, the checkpoint text, and a reader rebuilt from
// (prefix + checkpoint) against a straight read of the same multi-frame zstd artifact.
#include "artifacts/crypto.hpp"
#include "tests/artifacts/fixtures.hpp"

#include <gtest/gtest.h>

namespace tern::test {
namespace {

using artifacts::ArtifactErrc;
using artifacts::Checkpoint;
using artifacts::Compression;
using artifacts::Sha256;

std::span<const std::uint8_t> bytes_of(std::string_view s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

TEST(Sha256State, SavedAndRestoredAtAnySplitGivesTheSameDigest) {
  auto data = payload_bytes(1000, 3);
  const auto straight = Sha256::hex(data);
  for (std::size_t split : {std::size_t{0}, std::size_t{1}, std::size_t{63}, std::size_t{64}, std::size_t{65},
                            std::size_t{500}, std::size_t{1000}}) {
    Sha256 first;
    first.update(std::string_view(data).substr(0, split));
    auto text = first.save_state();
    auto restored = Sha256::restore_state(text);
    ASSERT_TRUE(restored) << split << ": " << restored.error().message();
    EXPECT_EQ(restored->size(), split);
    EXPECT_EQ(restored->save_state(), text);
    restored->update(std::string_view(data).substr(split));
    EXPECT_EQ(restored->hex_final(), straight) << "split at " << split;
  }
  // A copy is a snapshot: hashing on does not change it.
  Sha256 a;
  a.update(std::string_view("abc"));
  Sha256 b = a;
  a.update(std::string_view("def"));
  EXPECT_EQ(b.hex_final(), Sha256::hex("abc"));
  EXPECT_EQ(a.hex_final(), Sha256::hex("abcdef"));
}

TEST(Sha256State, MalformedStatesAreRefusedWithTheReason) {
  Sha256 h;
  h.update(std::string_view("hello"));  // 5 pending bytes
  const auto good = h.save_state();
  struct Case {
    std::string text, says;
  };
  for (const auto& c : std::vector<Case>{
           {"", "does not start with"},
           {"md5-state:" + good.substr(13), "does not start with"},
           {good.substr(0, 40), "chaining words"},
           {good.substr(0, good.size() - 2), "pending bytes for a byte count of 5"},
           {good + "00", "pending bytes for a byte count of 5"},
           {good.substr(0, good.size() - 1) + "g", "not hex"},
       }) {
    auto r = Sha256::restore_state(c.text);
    ASSERT_FALSE(r) << c.text;
    EXPECT_NE(r.error().message().find(c.says), std::string::npos) << r.error().message();
  }
}

class CheckpointTest : public ::testing::Test {
 public:
  TempDir dir;
  std::string payload = payload_bytes(1536 * 1024 + 777, 7);
  std::string pub = key("ec.pub");

  std::string make(std::string name, const std::string& content, Compression c = Compression::zstd,
                   std::uint64_t frame = 64 * 1024) {
    write_file(dir / (name + ".img"), content);
    artifacts::WriterOptions o;
    o.payload = dir / (name + ".img");
    o.device_types = {"qemu"};
    o.artifact_name = name;
    o.compression = c;
    o.frame_size = frame;
    o.signing_key_pem = key("ec.key");
    auto out = dir / (name + ".mender");
    auto r = artifacts::write_rootfs_artifact(o, out);
    EXPECT_TRUE(r) << (r ? "" : r.error().message());
    return read_file(out);
  }

  artifacts::ReaderOptions options() const {
    artifacts::ReaderOptions o;
    o.verify_key_pem = pub;
    o.device_type = "qemu";
    o.hash_artifact = true;
    return o;
  }

  // A straight read in chunks of `chunk`, collecting the prefix and every checkpoint.
  struct Straight {
    Result<void> result;
    std::string payload, prefix, artifact_sha256;
    std::vector<Checkpoint> checkpoints;
  };
  Straight read(const std::string& artifact, std::size_t chunk, std::uint64_t every = 256 * 1024) {
    Straight s;
    artifacts::Reader reader(options(), nullptr, [&](std::span<const std::uint8_t> b) -> Result<void> {
      s.payload.append(reinterpret_cast<const char*>(b.data()), b.size());
      return {};
    });
    reader.enable_checkpoints(
        every,
        [&](std::span<const std::uint8_t> p) -> Result<void> {
          EXPECT_TRUE(s.prefix.empty()) << "the prefix is reported once";
          s.prefix.assign(reinterpret_cast<const char*>(p.data()), p.size());
          return {};
        },
        [&](const Checkpoint& c) -> Result<void> {
          // Every payload byte before the checkpoint has reached the sink.
          EXPECT_EQ(s.payload.size(), c.payload_bytes);
          s.checkpoints.push_back(c);
          return {};
        });
    for (std::size_t pos = 0; pos < artifact.size() && (s.result = reader.feed(bytes_of(std::string_view(artifact).substr(pos, chunk)))); pos += chunk) {
    }
    if (s.result) s.result = reader.finish();
    s.artifact_sha256 = reader.artifact_sha256();
    return s;
  }

  // A reader resumed from (prefix, checkpoint), fed artifact[checkpoint.offset..] in chunks.
  struct Resumed {
    Result<void> resume, result;
    std::string payload, artifact_sha256;
    bool header_seen = false;
  };
  Resumed resume(const std::string& artifact, std::string_view prefix, const Checkpoint& c, std::size_t chunk = 5000) {
    Resumed out;
    artifacts::Reader reader(
        options(),
        [&](const artifacts::Header& h) -> Result<void> {
          out.header_seen = h.payload_size == payload.size();
          return {};
        },
        [&](std::span<const std::uint8_t> b) -> Result<void> {
          out.payload.append(reinterpret_cast<const char*>(b.data()), b.size());
          return {};
        });
    out.resume = reader.resume(bytes_of(prefix), c);
    if (!out.resume) return out;
    for (std::size_t pos = c.offset; pos < artifact.size(); pos += chunk)
      if (!(out.result = reader.feed(bytes_of(std::string_view(artifact).substr(pos, chunk))))) return out;
    out.result = reader.finish();
    out.artifact_sha256 = reader.artifact_sha256();
    return out;
  }
};

TEST_F(CheckpointTest, ResumedAtEveryCheckpointYieldsTheSamePayloadAndHashes) {
  auto a = make("release-2", payload);
  auto straight = read(a, 65536);
  ASSERT_TRUE(straight.result) << straight.result.error().message();
  EXPECT_EQ(straight.payload, payload);
  EXPECT_EQ(straight.artifact_sha256, Sha256::hex(a));
  // 1.5 MiB of payload in 64 KiB frames, at most one checkpoint per 256 KiB, none at the end.
  ASSERT_GE(straight.checkpoints.size(), 4u);
  ASSERT_LE(straight.checkpoints.size(), 6u);
  EXPECT_LT(straight.checkpoints.back().payload_bytes, payload.size());
  EXPECT_LT(straight.prefix.size(), 16384u);  // header.tar holds the chunk index (~5 KiB here)
  EXPECT_EQ(a.substr(0, straight.prefix.size()), straight.prefix);

  // Fed in other chunk sizes (1 byte, odd sizes), the reader stops at the same exact offsets.
  for (std::size_t chunk : {std::size_t{1}, std::size_t{4099}, a.size()}) {
    auto other = read(a, chunk);
    ASSERT_TRUE(other.result) << chunk << ": " << other.result.error().message();
    ASSERT_EQ(other.checkpoints.size(), straight.checkpoints.size()) << chunk;
    for (std::size_t i = 0; i < other.checkpoints.size(); ++i)
      EXPECT_EQ(other.checkpoints[i].serialize(), straight.checkpoints[i].serialize()) << chunk << " #" << i;
  }

  std::uint64_t last_payload = 0;
  for (const auto& c : straight.checkpoints) {
    SCOPED_TRACE("checkpoint at " + std::to_string(c.offset));
    // The offset is a frame start (zstd magic) and the counts grow.
    EXPECT_EQ(a.substr(c.offset, 4), std::string("\x28\xb5\x2f\xfd", 4));
    EXPECT_GE(c.payload_bytes, last_payload + 256 * 1024);
    last_payload = c.payload_bytes;
    // Saved as text and read back, as the agent does.
    auto parsed = Checkpoint::parse(c.serialize());
    ASSERT_TRUE(parsed) << parsed.error().message();
    auto r = resume(a, straight.prefix, *parsed);
    ASSERT_TRUE(r.resume) << r.resume.error().message();
    ASSERT_TRUE(r.result) << r.result.error().message();
    EXPECT_TRUE(r.header_seen) << "the header handler runs again on resume";
    EXPECT_TRUE(r.payload == payload.substr(c.payload_bytes)) << "payload from byte " << c.payload_bytes;
    EXPECT_EQ(r.artifact_sha256, Sha256::hex(a));
  }
}

// Resumes at every checkpoint of a straight read of `a` (saved as text and parsed back, as the
// agent does) and compares the payload and the artifact's hash with the straight read's.
// same_points: the checkpoints do not depend on how the input is cut (not so for uncompressed
// data, where every piece fed ends at a boundary).
void expect_resumable_everywhere(CheckpointTest& t, const std::string& a, std::size_t min_checkpoints,
                                 bool same_points = true) {
  auto straight = t.read(a, 65536);
  ASSERT_TRUE(straight.result) << straight.result.error().message();
  ASSERT_TRUE(straight.payload == t.payload);
  ASSERT_GE(straight.checkpoints.size(), min_checkpoints);
  EXPECT_EQ(a.substr(0, straight.prefix.size()), straight.prefix);
  // Fed in other pieces (odd sizes, all at once), the reader stops at the same points.
  for (std::size_t chunk : {std::size_t{4099}, a.size()}) {
    if (!same_points) break;
    auto other = t.read(a, chunk);
    ASSERT_TRUE(other.result) << chunk << ": " << other.result.error().message();
    ASSERT_EQ(other.checkpoints.size(), straight.checkpoints.size()) << chunk;
    for (std::size_t i = 0; i < other.checkpoints.size(); ++i)
      EXPECT_EQ(other.checkpoints[i].serialize(), straight.checkpoints[i].serialize()) << chunk << " #" << i;
  }
  for (const auto& c : straight.checkpoints) {
    SCOPED_TRACE("checkpoint at " + std::to_string(c.offset) + ", payload byte " + std::to_string(c.payload_bytes));
    auto parsed = Checkpoint::parse(c.serialize());
    ASSERT_TRUE(parsed) << parsed.error().message();
    EXPECT_EQ(parsed->codec_state, c.codec_state);
    auto r = t.resume(a, straight.prefix, *parsed);
    ASSERT_TRUE(r.resume) << r.resume.error().message();
    ASSERT_TRUE(r.result) << r.result.error().message();
    EXPECT_TRUE(r.header_seen);
    EXPECT_TRUE(r.payload == std::string_view(t.payload).substr(c.payload_bytes)) << "payload from byte " << c.payload_bytes;
    EXPECT_EQ(r.artifact_sha256, Sha256::hex(a));
  }
}

TEST_F(CheckpointTest, GzipArtifactsResumeAtDeflateBlockBoundaries) {
  auto a = make("gz", payload, Compression::gzip);
  expect_resumable_everywhere(*this, a, 4);
  auto s = read(a, 65536);
  ASSERT_FALSE(s.checkpoints.empty());
  EXPECT_TRUE(s.checkpoints[0].codec_state.starts_with("gzip1 "));
  // The window travels with the checkpoint: bounded, whatever the payload size.
  EXPECT_LT(s.checkpoints[0].serialize().size(), 46u * 1024);
}

TEST_F(CheckpointTest, UncompressedArtifactsResumeAnywhere) {
  expect_resumable_everywhere(*this, make("none", payload, Compression::none), 4, false);
}

// mender-artifact and tern-artifact write xz in one block; `xz -T` writes several. This artifact
// is tern-artifact's xz one with its data member recompressed by Debian's xz in 256 KiB blocks
// (the manifest covers the uncompressed payload, so it stays valid and signed).
TEST_F(CheckpointTest, XzArtifactsResumeAtBlockBoundariesWhenTheyHaveSeveral) {
  auto one = make("xz", payload, Compression::xz);
  auto single = read(one, 65536);
  ASSERT_TRUE(single.result) << single.result.error().message();
  EXPECT_TRUE(single.checkpoints.empty()) << "one xz block: nothing to resume from";

  auto d = dir / "unpacked";
  fs::create_directories(d);
  auto sh = [&](const std::string& cmd) {
    auto r = run("cd " + shell_quote(d.string()) + " && " + cmd);
    ASSERT_EQ(r.exit_code, 0) << cmd << ": " << r.output;
  };
  sh("tar -xf " + shell_quote((dir / "xz.mender").string()));
  sh("xz -d data/0000.tar.xz && xz -T2 --block-size=262144 data/0000.tar");
  sh("tar --format=ustar -cf ../blocks.mender version manifest manifest.sig header.tar.xz data/0000.tar.xz");
  auto blocks = read_file(dir / "blocks.mender");
  expect_resumable_everywhere(*this, blocks, 4);
  auto s = read(blocks, 65536);
  ASSERT_FALSE(s.checkpoints.empty());
  EXPECT_TRUE(s.checkpoints[0].codec_state.starts_with("xz1 ")) << s.checkpoints[0].codec_state;
}

TEST_F(CheckpointTest, SingleFrameZstdArtifactsHaveNoCheckpoints) {
  auto one = read(make("one", payload, Compression::zstd, 16u << 20), 65536);
  ASSERT_TRUE(one.result) << one.result.error().message();
  EXPECT_TRUE(one.checkpoints.empty());
  EXPECT_EQ(one.payload, payload);
}

TEST_F(CheckpointTest, ACheckpointOfOneFormatDoesNotResumeAnother) {
  auto gz = make("release-2", payload, Compression::gzip);
  auto s = read(gz, 65536);
  ASSERT_TRUE(s.result);
  ASSERT_FALSE(s.checkpoints.empty());
  auto c = s.checkpoints[0];
  c.codec_state = "zstd";
  auto r = resume(gz, s.prefix, c);
  ASSERT_FALSE(r.resume);
  EXPECT_NE(r.resume.error().message().find("the resume state is for 'zstd', the data is gzip"), std::string::npos)
      << r.resume.error().message();
  // A checkpoint saved before codec states existed (no codec line) is a zstd one.
  c.codec_state.clear();
  auto old = Checkpoint::parse(c.serialize());
  ASSERT_TRUE(old) << old.error().message();
  EXPECT_TRUE(old->codec_state.empty());
  EXPECT_FALSE(resume(gz, s.prefix, *old).resume);
}

TEST_F(CheckpointTest, CorruptCheckpointsAndWrongPrefixesAreRefused) {
  auto a = make("release-2", payload);
  auto s = read(a, 65536);
  ASSERT_TRUE(s.result) << s.result.error().message();
  ASSERT_GE(s.checkpoints.size(), 2u);
  const auto& c = s.checkpoints[1];

  // A flipped character anywhere in the text: the check line refuses it.
  auto text = c.serialize();
  for (std::size_t i = 0; i < text.size(); i += 7) {
    auto bad = text;
    bad[i] = static_cast<char>(bad[i] ^ 0x01);
    auto r = Checkpoint::parse(bad);
    EXPECT_FALSE(r) << "flip at " << i;
  }
  auto torn = Checkpoint::parse(text.substr(0, text.size() / 2));
  ASSERT_FALSE(torn);
  EXPECT_EQ(torn.error().code(), ArtifactErrc::malformed);
  EXPECT_NE(torn.error().message().find("checkpoint:"), std::string::npos) << torn.error().message();

  // Consistent text with values that do not fit together: refused by resume(), with the reason.
  struct Case {
    std::function<void(Checkpoint&)> edit;
    std::string says;
  };
  for (const auto& k : std::vector<Case>{
           {[](Checkpoint& x) { x.offset += 1; }, "the artifact hash covers"},
           {[](Checkpoint& x) { x.payload_bytes += 1; }, "the payload hash covers"},
           {[](Checkpoint& x) { x.offset = 10; }, "outside the data member"},
           {[](Checkpoint& x) { x.payload_hash = "sha256-state:xyz"; }, "payload hash: SHA-256 state"},
           {[](Checkpoint& x) { x.payload_name = "other.img"; }, "no entry for the payload"},
       }) {
    auto edited = c;
    k.edit(edited);
    auto reparsed = Checkpoint::parse(edited.serialize());
    ASSERT_TRUE(reparsed) << reparsed.error().message();
    auto r = resume(a, s.prefix, *reparsed);
    ASSERT_FALSE(r.resume) << k.says;
    EXPECT_NE(r.resume.error().message().find(k.says), std::string::npos) << r.resume.error().message();
  }

  // The prefix of another artifact, or a cut one.
  auto other = read(make("release-3", payload), 65536);
  ASSERT_TRUE(other.result);
  auto wrong = resume(a, other.prefix, c);
  ASSERT_FALSE(wrong.resume);
  EXPECT_NE(wrong.resume.error().message().find("the saved prefix"), std::string::npos)
      << wrong.resume.error().message();
  auto cut = resume(a, std::string_view(s.prefix).substr(0, s.prefix.size() - 512), c);
  ASSERT_FALSE(cut.resume);
  EXPECT_NE(cut.resume.error().message().find("the saved prefix is"), std::string::npos) << cut.resume.error().message();

  // A prefix whose checkpoint was made for it, but whose signature no longer verifies, is
  // verified again: an edited state directory cannot skip the signature check.
  auto forged_prefix = s.prefix;
  auto at = forged_prefix.find("release-2");
  ASSERT_NE(at, std::string::npos);
  forged_prefix[at + 8] = '9';
  auto forged = c;
  forged.prefix_sha256 = Sha256::hex(forged_prefix);
  auto f = resume(a, forged_prefix, forged);
  ASSERT_FALSE(f.resume);
  EXPECT_TRUE(f.resume.error().code() == ArtifactErrc::signature ||
              f.resume.error().code() == ArtifactErrc::manifest_mismatch)
      << f.resume.error().message();
}

TEST_F(CheckpointTest, TamperingAfterAResumeStillFailsTheChecks) {
  auto a = make("release-2", payload);
  auto s = read(a, 65536);
  ASSERT_TRUE(s.result) << s.result.error().message();
  ASSERT_GE(s.checkpoints.size(), 3u);
  const auto& c = s.checkpoints[2];

  // A payload hash state of the right length but for other bytes (the partition's first part
  // was changed): the resumed read ends with the manifest mismatch.
  Sha256 other;
  other.update(std::string(c.payload_bytes, 'x'));
  auto forged = c;
  forged.payload_hash = other.save_state();
  auto r = resume(a, s.prefix, forged);
  ASSERT_TRUE(r.resume) << r.resume.error().message();
  ASSERT_FALSE(r.result);
  EXPECT_EQ(r.result.error().code(), ArtifactErrc::manifest_mismatch) << r.result.error().message();

  // A flipped byte after the checkpoint: the frame checksum or the manifest refuses it.
  auto bad = a;
  auto pos = c.offset + (a.size() - c.offset) / 2;
  bad[pos] = static_cast<char>(bad[pos] ^ 0x40);
  auto t = resume(bad, s.prefix, c);
  ASSERT_TRUE(t.resume) << t.resume.error().message();
  ASSERT_FALSE(t.result);
  EXPECT_NE(t.result.error().message().find("data/0000"), std::string::npos) << t.result.error().message();

  // And the whole-artifact hash differs from a straight read's.
  auto straight_bad = read(bad, 65536);
  EXPECT_FALSE(straight_bad.result);
}

}  // namespace
}  // namespace tern::test
