// The chunk index and the adaptive-install planner, without images: the index's binary form and
// its refusals, the reader's checks of an index against its artifact, the local indexer, the
// plan (coalescing, the full-download fallback) and the frame builder's checks.
#include "artifacts/adaptive.hpp"

#include <gtest/gtest.h>

#include "artifacts/crypto.hpp"
#include "artifacts/tar.hpp"
#include "tests/artifacts/fixtures.hpp"

namespace tern::test {
namespace {

using artifacts::ArtifactErrc;
using artifacts::ChunkIndex;
using artifacts::Compression;

std::span<const std::uint8_t> bytes_of(std::string_view s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

// 1 KiB blocks: a few distinct ones, repeated, so content-addressing has work to do.
std::string blocks(std::initializer_list<char> fill) {
  std::string s;
  for (char c : fill) s += std::string(1024, c);
  return s;
}

class AdaptiveTest : public ::testing::Test {
 protected:
  TempDir dir;

  // An artifact of `payload` with 4 KiB frames and 1 KiB blocks; returns its bytes.
  std::string make(const std::string& payload, Compression c = Compression::zstd, bool index = true) {
    write_file(dir / "new.img", payload);
    artifacts::WriterOptions o;
    o.payload = dir / "new.img";
    o.device_types = {"qemu"};
    o.artifact_name = "v2";
    o.compression = c;
    o.frame_size = 4096;
    o.chunk_block_size = 1024;
    o.chunk_index = index;
    auto r = artifacts::write_rootfs_artifact(o, dir / "new.mender");
    EXPECT_TRUE(r) << (r ? "" : r.error().message());
    return read_file(dir / "new.mender");
  }
  static artifacts::Header header_of(const std::string& artifact) {
    auto r = read_chunked(artifact, {}, 65536);
    EXPECT_TRUE(r.result) << r.result.error().message();
    return r.header.value_or(artifacts::Header{});
  }
  static artifacts::LocalTable table_of(const ChunkIndex& x, std::string_view local,
                                        std::size_t chunk = 1 << 20) {
    artifacts::LocalIndexer ix(x);
    for (std::size_t at = 0; at < local.size(); at += chunk) ix.feed(bytes_of(local.substr(at, chunk)));
    return ix.finish();
  }
};

TEST_F(AdaptiveTest, IndexRoundTripsAndDescribesEveryFrameAndBlock) {
  // 10 KiB of payload: frames of 4 KiB (the last one 2 KiB), 10 blocks.
  auto payload = blocks({'a', 'b', 'c', 'a', 'd', 'e', 'f', 'a', 'g', 'h'});
  auto h = header_of(make(payload));
  ASSERT_TRUE(h.chunk_index);
  const auto& x = *h.chunk_index;
  EXPECT_EQ(x.block_size, 1024u);
  EXPECT_EQ(x.frame_size, 4096u);
  EXPECT_EQ(x.payload_size, payload.size());
  ASSERT_EQ(x.frames.size(), 3u);
  ASSERT_EQ(x.block_hashes.size(), 10u);
  EXPECT_EQ(x.block_hashes[0], x.block_hashes[3]);  // same content, same hash
  EXPECT_NE(x.block_hashes[0], x.block_hashes[1]);
  artifacts::BlockHasher hasher;
  EXPECT_EQ(x.block_hash_kind, artifacts::BlockHashKind::xxh3);  // the default
  EXPECT_EQ(x.block_hashes[4], hasher.block_hash(x.block_hash_kind, bytes_of(std::string(1024, 'd'))));
  EXPECT_EQ(x.frames[2].sha256, hasher.sha256(bytes_of(payload.substr(8192))));
  EXPECT_EQ(x.frame_length(2), 2048u);

  auto again = ChunkIndex::decode(x.encode());
  ASSERT_TRUE(again) << again.error().message();
  EXPECT_EQ(again->serialize(), x.serialize());
}

TEST_F(AdaptiveTest, MalformedIndexesAreRefusedNamingTheField) {
  auto h = header_of(make(blocks({'a', 'b', 'c', 'd', 'e'})));
  ASSERT_TRUE(h.chunk_index);
  const std::string good = h.chunk_index->serialize();
  auto with = [&](std::size_t at, std::string_view bytes) {
    auto s = good;
    s.replace(at, bytes.size(), bytes);
    return s;
  };
  struct Case {
    std::string binary, says;
  };
  // Offsets: magic 0, block_size 8, frame_size 12, payload_size 16, compression 24, hash size 25.
  for (const auto& c : std::vector<Case>{
           {"", "does not start with"},
           {with(0, "TERNCIX9"), "does not start with"},
           {good.substr(0, 30), "shorter than its fixed header"},
           {with(8, std::string("\x00\x03\x00\x00", 4)), "block size 768"},
           {with(12, std::string("\x00\x05\x00\x00", 4)), "not a multiple of the block size"},
           {with(24, "\x07"), "unknown compression 7"},
           {with(25, "\x04"), "block hash size 4"},
           {with(26, "\x05"), "unknown block hash kind 5"},
           {with(27, "\x01"), "reserved field is not zero"},
           {with(16, std::string("\x00\x00\x01\x00\x00\x00\x00\x00", 8)), "frames for 65536 bytes"},
           {good.substr(0, good.size() - 1), "bytes, " + std::to_string(good.size()) + " expected"},
           {good + "x", "bytes, " + std::to_string(good.size()) + " expected"},
       }) {
    auto r = ChunkIndex::parse(c.binary);
    ASSERT_FALSE(r) << c.says;
    EXPECT_EQ(r.error().code(), ArtifactErrc::malformed);
    EXPECT_NE(r.error().message().find(c.says), std::string::npos) << r.error().message();
    EXPECT_NE(r.error().message().find("chunk index"), std::string::npos) << r.error().message();
  }
  EXPECT_FALSE(ChunkIndex::decode("not base64!"));
  EXPECT_FALSE(ChunkIndex::decode(artifacts::base64_encode(bytes_of("neither zstd nor an index"))));
}

// An uncompressed artifact assembled by hand, with the meta-data given: the reader's checks of an
// index against the artifact it came in (the writer never makes these).
std::string artifact_with_meta(const std::string& payload, const std::string& meta) {
  namespace tar = artifacts::tar;
  std::string header;
  tar::write_file(header, "header-info",
                  R"({"payloads":[{"type":"rootfs-image"}],"artifact_provides":{"artifact_name":"x"},)"
                  R"("artifact_depends":{"device_type":["qemu"]}})");
  tar::write_file(header, "headers/0000/type-info", R"({"type":"rootfs-image"})");
  tar::write_file(header, "headers/0000/meta-data", meta);
  tar::write_end(header);
  std::string data;
  tar::write_file(data, "rootfs.img", payload);
  tar::write_end(data);
  const std::string version = R"({"format":"mender","version":3})";
  std::string manifest = artifacts::Sha256::hex(payload) + "  data/0000/rootfs.img\n" +
                         artifacts::Sha256::hex(header) + "  header.tar\n" + artifacts::Sha256::hex(version) +
                         "  version\n";
  std::string a;
  tar::write_file(a, "version", version);
  tar::write_file(a, "manifest", manifest);
  tar::write_file(a, "header.tar", header);
  tar::write_file(a, "data/0000.tar", data);
  tar::write_end(a);
  return a;
}

TEST_F(AdaptiveTest, ReaderRefusesAnIndexThatDoesNotFitItsArtifact) {
  const auto payload = blocks({'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'});
  auto h = header_of(make(payload, Compression::none));
  ASSERT_TRUE(h.chunk_index);
  auto meta = [](const std::string& v) { return std::string(R"({"tern.chunk-index":")") + v + "\"}"; };
  // The same index in a hand-made artifact is accepted (the frames start where the writer's do).
  auto ok = read_chunked(artifact_with_meta(payload, meta(h.chunk_index->encode())), {}, 4096);
  ASSERT_TRUE(ok.result) << ok.result.error().message();
  ASSERT_TRUE(ok.header->chunk_index);
  EXPECT_EQ(ok.payload, payload);

  // Other keys beside it, and the index not first (the general JSON path): the same index.
  for (const auto& m :
       {std::string(R"({"tern.chunk-index":")") + h.chunk_index->encode() + R"(", "note":"x"})",
        std::string(R"({"note":"x","tern.chunk-index":")") + h.chunk_index->encode() + "\"}"}) {
    auto r = read_chunked(artifact_with_meta(payload, m), {}, 4096);
    ASSERT_TRUE(r.result) << r.result.error().message();
    ASSERT_TRUE(r.header->chunk_index);
    EXPECT_EQ(r.header->chunk_index->serialize(), h.chunk_index->serialize());
    // Taken out of the text when it stands first (kept decoded once), left in place otherwise.
    if (m.starts_with(R"({"tern.chunk-index")")) {
      EXPECT_EQ(r.header->meta_data_json.find("tern.chunk-index"), std::string::npos) << r.header->meta_data_json;
      EXPECT_NE(r.header->meta_data_json.find(R"("note":"x")"), std::string::npos) << r.header->meta_data_json;
    } else {
      EXPECT_EQ(r.header->meta_data_json, m);
    }
  }

  struct Case {
    std::string artifact, says;
  };
  auto other = blocks({'a', 'b', 'c'});
  auto zstd_index = *h.chunk_index;
  zstd_index.compression = Compression::zstd;
  for (const auto& c : std::vector<Case>{
           {artifact_with_meta(other, meta(h.chunk_index->encode())), "for a payload of 8192 bytes"},
           {artifact_with_meta(payload, meta(zstd_index.encode())),
            "frames are zstd, the data member is none"},
           {artifact_with_meta(payload, meta("AAAA")), "chunk index"},
           {artifact_with_meta(payload, R"({"tern.chunk-index":42})"), "headers/0000/meta-data"},
           {artifact_with_meta(
                payload, meta(h.chunk_index->encode()).substr(0, 40) + "\",\"tern.chunk-index\":\"x\"}"),
            "appears twice"},
           {artifact_with_meta(payload, meta(h.chunk_index->encode()) + "trailing"), "meta-data"},
       }) {
    auto r = read_chunked(c.artifact, {}, 4096);
    ASSERT_FALSE(r.result) << c.says;
    EXPECT_EQ(r.result.error().code(), ArtifactErrc::malformed);
    EXPECT_NE(r.result.error().message().find(c.says), std::string::npos) << r.result.error().message();
    EXPECT_NE(r.result.error().message().find("meta-data"), std::string::npos) << r.result.error().message();
    EXPECT_TRUE(r.payload.empty());  // refused before any payload byte
  }
}

TEST_F(AdaptiveTest, WriterOptionTurnsTheIndexOffAndGzipHasNone) {
  auto payload = blocks({'a', 'b', 'c', 'd'});
  EXPECT_FALSE(header_of(make(payload, Compression::zstd, false)).chunk_index);
  EXPECT_FALSE(header_of(make(payload, Compression::gzip)).chunk_index);
  EXPECT_TRUE(header_of(make(payload, Compression::none)).chunk_index);
}

TEST_F(AdaptiveTest, LocalBlocksAreFoundByContentWhereverTheyMoved) {
  // New: frames [a b c d] [e f g h] [a a x y]. Local: the same blocks shuffled, and no 'x'/'y'.
  auto payload = blocks({'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'a', 'a', 'x', 'y'});
  auto artifact = make(payload);
  auto h = header_of(artifact);
  ASSERT_TRUE(h.chunk_index);
  const auto& x = *h.chunk_index;
  const auto local = blocks({'h', 'g', 'z', 'f', 'e', 'd', 'c', 'b', 'a'}) + std::string(100, 'q');
  // Fed in any chunking, the table is the same (odd chunks cut blocks anywhere).
  auto table = table_of(x, local);
  for (std::size_t chunk : {std::size_t{1}, std::size_t{1000}, std::size_t{1025}})
    EXPECT_EQ(table_of(x, local, chunk).where, table.where) << chunk;
  EXPECT_EQ(table.found(), 8u);  // 'z' is not wanted; the partial tail is ignored
  EXPECT_EQ(table.bytes_indexed, 9u * 1024);
  artifacts::BlockHasher hasher;
  EXPECT_EQ(table.find(hasher.block_hash(x.block_hash_kind, bytes_of(std::string(1024, 'a')))), 8u * 1024);
  EXPECT_FALSE(table.find(hasher.block_hash(x.block_hash_kind, bytes_of(std::string(1024, 'x')))));

  artifacts::PlanOptions po{.artifact_size = artifact.size(), .data_offset = h.data_offset};
  auto plan = artifacts::plan_adaptive(x, table, po);
  EXPECT_EQ(plan.local, (std::vector<bool>{true, true, false}));
  EXPECT_EQ(plan.frames_local, 2u);
  EXPECT_EQ(plan.bytes_reused, 8192u);
  ASSERT_EQ(plan.ranges.size(), 1u);
  EXPECT_EQ(plan.ranges[0], plan.frame_range(x, 2));
  // The ranges are the frames' bytes in the artifact: each decodes to its frame.
  artifacts::FrameBuilder b(x, table);
  auto r = plan.ranges[0];
  ASSERT_TRUE(b.decode_fetched(2, bytes_of(std::string_view(artifact).substr(r.offset, r.length))));
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(b.frame().data()), b.frame().size()),
            payload.substr(8192));
  EXPECT_EQ(plan.bytes_to_fetch, h.data_offset + x.frames_offset + r.length);
  EXPECT_FALSE(plan.full_download);

  // Local frames are built from the shuffled blocks, each checked.
  auto read_local = [&](std::uint64_t off, std::span<std::uint8_t> out) -> Result<void> {
    std::memcpy(out.data(), local.data() + off, out.size());
    return {};
  };
  ASSERT_TRUE(b.build_local(0, read_local));
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(b.frame().data()), b.frame().size()),
            payload.substr(0, 4096));
}

TEST_F(AdaptiveTest, NeighbouringFetchesCoalesceAndABigPlanFallsBackToTheFullStream) {
  auto payload = blocks({'a', 'a', 'a', 'a', '1', '1', '1', '1', '2', '2', '2', '2',
                         'b', 'b', 'b', 'b', '3', '3', '3', '3', 'c', 'c', 'c', 'c'});
  auto artifact = make(payload, Compression::none);
  auto h = header_of(artifact);
  const auto& x = *h.chunk_index;
  auto table = table_of(x, blocks({'a', 'b', 'c'}));
  artifacts::PlanOptions po{.artifact_size = artifact.size(), .data_offset = h.data_offset};
  auto plan = artifacts::plan_adaptive(x, table, po);
  EXPECT_EQ(plan.local, (std::vector<bool>{true, false, false, true, false, true}));
  // Frames 1 and 2 are neighbours: one range. Frame 4 stands alone.
  ASSERT_EQ(plan.ranges.size(), 2u);
  EXPECT_EQ(plan.ranges[0].offset, plan.frame_range(x, 1).offset);
  EXPECT_EQ(plan.ranges[0].length, 8192u);
  EXPECT_EQ(plan.ranges[1], plan.frame_range(x, 4));
  // With a gap allowance of one frame, frame 3 comes along and everything is one range.
  po.coalesce_gap = 4096;
  auto wide = artifacts::plan_adaptive(x, table, po);
  ASSERT_EQ(wide.ranges.size(), 1u);
  EXPECT_EQ(wide.ranges[0].length, 4u * 4096);
  EXPECT_GT(wide.bytes_to_fetch, plan.bytes_to_fetch);

  // Nothing local: the plan fetches nearly everything and says to stream the artifact instead.
  auto none = artifacts::plan_adaptive(x, table_of(x, blocks({'z'})), po);
  EXPECT_TRUE(none.full_download);
  EXPECT_NE(none.reason.find("over 90%"), std::string::npos) << none.reason;
  EXPECT_EQ(none.frames_fetched, 6u);
  // A table made at another block size is no use.
  artifacts::LocalTable other = table;
  other.block_size = 4096;
  auto mismatch = artifacts::plan_adaptive(x, other, po);
  EXPECT_TRUE(mismatch.full_download);
  EXPECT_NE(mismatch.reason.find("4096-byte blocks"), std::string::npos) << mismatch.reason;
}

TEST_F(AdaptiveTest, FrameBuilderRefusesLocalDataThatChangedAndCorruptFetches) {
  auto payload = blocks({'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'});
  auto artifact = make(payload);
  auto h = header_of(artifact);
  const auto& x = *h.chunk_index;
  std::string local = payload;
  auto table = table_of(x, local);
  artifacts::FrameBuilder b(x, table);
  auto read_local = [&](std::uint64_t off, std::span<std::uint8_t> out) -> Result<void> {
    std::memcpy(out.data(), local.data() + off, out.size());
    return {};
  };
  ASSERT_TRUE(b.build_local(1, read_local));
  // A bit flipped on the disk after it was indexed: the block check catches it.
  local[5000] ^= 0x10;
  auto r = b.build_local(1, read_local);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), ArtifactErrc::manifest_mismatch);
  EXPECT_NE(r.error().message().find("frame 1: the local block read for block 4 no longer matches"),
            std::string::npos)
      << r.error().message();
  // A read error passes through with the frame named.
  auto failing = [](std::uint64_t, std::span<std::uint8_t>) -> Result<void> {
    return fail(Errc::io, "disk gone");
  };
  auto e = b.build_local(0, failing);
  ASSERT_FALSE(e);
  EXPECT_EQ(e.error().message(), "frame 0: disk gone");

  // Fetched bytes: the wrong length, a corrupt frame, another frame's bytes.
  auto range = [&](std::size_t i) {
    auto rr = artifacts::Plan{.data_offset = h.data_offset}.frame_range(x, i);
    return std::string(artifact.substr(rr.offset, rr.length));
  };
  ASSERT_TRUE(b.decode_fetched(0, bytes_of(range(0))));
  auto shorter = range(0);
  shorter.pop_back();
  EXPECT_NE(b.decode_fetched(0, bytes_of(shorter)).error().message().find("the chunk index says"),
            std::string::npos);
  auto corrupt = range(0);
  corrupt[corrupt.size() / 2] ^= 0xff;
  EXPECT_FALSE(b.decode_fetched(0, bytes_of(corrupt)));
  auto swapped = b.decode_fetched(1, bytes_of(range(0)));  // same size (equal-size frames compress alike)
  ASSERT_FALSE(swapped);
  EXPECT_TRUE(swapped.error().code() == ArtifactErrc::manifest_mismatch ||
              swapped.error().code() == ArtifactErrc::malformed)
      << swapped.error().message();
}

TEST_F(AdaptiveTest, LocalRunsAreReadWithOneCallAndSha256IndexesStillWork) {
  // New: [a b c d] [e f g h]. Local: a b c d in order, then e f, x, h g: frame 0 is one read, frame 1
  // is three (e f / g / h).
  auto payload = blocks({'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'});
  const auto local = blocks({'a', 'b', 'c', 'd', 'e', 'f', 'x', 'h', 'g'});
  for (auto kind : {artifacts::BlockHashKind::xxh3, artifacts::BlockHashKind::sha256}) {
    artifacts::WriterOptions o;
    o.payload = dir / "payload.img";
    write_file(o.payload, payload);
    o.device_types = {"qemu"};
    o.artifact_name = "v2";
    o.frame_size = 4096;
    o.chunk_block_size = 1024;
    o.chunk_block_hash = kind;
    ASSERT_TRUE(artifacts::write_rootfs_artifact(o, dir / "kind.mender"));
    auto h = header_of(read_file(dir / "kind.mender"));
    ASSERT_TRUE(h.chunk_index);
    const auto& x = *h.chunk_index;
    EXPECT_EQ(x.block_hash_kind, kind);
    auto table = table_of(x, local);
    EXPECT_EQ(table.found(), 8u);
    artifacts::FrameBuilder b(x, table);
    std::string disk = local;
    std::vector<std::pair<std::uint64_t, std::size_t>> reads;
    auto read_local = [&](std::uint64_t off, std::span<std::uint8_t> out) -> Result<void> {
      reads.emplace_back(off, out.size());
      std::memcpy(out.data(), disk.data() + off, out.size());
      return {};
    };
    ASSERT_TRUE(b.build_local(0, read_local));
    EXPECT_EQ(reads, (std::vector<std::pair<std::uint64_t, std::size_t>>{{0, 4096}}));
    reads.clear();
    ASSERT_TRUE(b.build_local(1, read_local));
    EXPECT_EQ(reads, (std::vector<std::pair<std::uint64_t, std::size_t>>{{4096, 2048}, {8192, 1024}, {7168, 1024}}));
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(b.frame().data()), b.frame().size()), payload.substr(4096));
    // A changed byte is caught: by its block's hash, or (SHA-256 block hashes) by the frame's SHA-256.
    disk[8192 + 10] ^= 1;
    auto r = b.build_local(1, read_local);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code(), ArtifactErrc::manifest_mismatch);
    EXPECT_NE(r.error().message().find(kind == artifacts::BlockHashKind::xxh3 ? "block 6 no longer matches"
                                                                               : "frame 1: its SHA-256"),
              std::string::npos)
        << r.error().message();
  }
}

TEST_F(AdaptiveTest, ApplyPlanRefetchesAFrameWhoseLocalDataChangedAndChecksTheWhole) {
  for (auto c : {Compression::zstd, Compression::none}) {
    auto payload = blocks({'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'x', 'y', 'z', 'w'});
    auto artifact = make(payload, c);
    auto h = header_of(artifact);
    ASSERT_TRUE(h.chunk_index);
    const auto& x = *h.chunk_index;
    std::string local = payload.substr(0, 8192);  // frames 0 and 1 are local, frame 2 is not
    auto table = table_of(x, local);
    auto plan =
        artifacts::plan_adaptive(x, table, {.artifact_size = artifact.size(), .data_offset = h.data_offset});
    ASSERT_EQ(plan.local, (std::vector<bool>{true, true, false}));
    local[6000] ^= 1;  // the disk changes after the plan: frame 1 must be fetched after all
    std::string out(payload.size(), '\0');
    std::vector<std::size_t> fetched;
    auto read_local = [&](std::uint64_t off, std::span<std::uint8_t> b) -> Result<void> {
      std::memcpy(b.data(), local.data() + off, b.size());
      return {};
    };
    auto fetch = [&](std::size_t i, artifacts::ByteRange r) -> Result<std::vector<std::uint8_t>> {
      fetched.push_back(i);
      return std::vector<std::uint8_t>(artifact.begin() + static_cast<std::ptrdiff_t>(r.offset),
                                       artifact.begin() + static_cast<std::ptrdiff_t>(r.offset + r.length));
    };
    auto write = [&](std::uint64_t off, std::span<const std::uint8_t> b) -> Result<void> {
      std::memcpy(out.data() + off, b.data(), b.size());
      return {};
    };
    auto st = artifacts::apply_plan(x, table, plan, h.payload_sha256, read_local, fetch, write);
    ASSERT_TRUE(st) << to_string(c) << ": " << st.error().message();
    EXPECT_EQ(out, payload) << to_string(c);
    EXPECT_EQ(fetched, (std::vector<std::size_t>{1, 2})) << to_string(c);
    EXPECT_EQ(st->frames_local, 1u);
    EXPECT_EQ(st->frames_refetched, 1u);
    EXPECT_EQ(st->frames_fetched, 1u);
    EXPECT_EQ(st->bytes_reused, 4096u);
    EXPECT_EQ(st->bytes_fetched, x.frames[1].size + x.frames[2].size);

    // The whole payload is checked against the manifest's SHA-256 too.
    auto wrong = artifacts::apply_plan(x, table, plan, std::string(64, '0'), read_local, fetch, write);
    ASSERT_FALSE(wrong);
    EXPECT_EQ(wrong.error().code(), ArtifactErrc::manifest_mismatch);
    // A fetch that fails stops it, naming the frame.
    auto down = [](std::size_t, artifacts::ByteRange) -> Result<std::vector<std::uint8_t>> {
      return fail(Errc::io, "link down");
    };
    auto cut = artifacts::apply_plan(x, table, plan, h.payload_sha256, read_local, down, write);
    ASSERT_FALSE(cut);
    EXPECT_EQ(cut.error().message(), "fetching frame 1: link down");
  }
}

}  // namespace
}  // namespace tern::test
