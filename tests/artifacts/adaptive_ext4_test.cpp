// Adaptive installs on real ext4 images (mkfs.ext4 -d, a few MiB): v2 is v1's tree with files
// replaced and added, so mkfs lays files out anew. The plan must build most frames from v1, the
// rebuilt payload must equal v2 byte for byte, a flipped bit in v1 must make its frame fetched,
// and an artifact without an index must mean a full download.
#include <gtest/gtest.h>

#include <map>

#include "artifacts/adaptive.hpp"
#include "tests/artifacts/fixtures.hpp"
#include "tests/support/ext4_image.hpp"

namespace tern::test {
namespace {

std::string q(const fs::path& p) {
  return shell_quote(p.string());
}
std::string tool() {
  return (build_dir() / "artifacts/tern-artifact").string();
}

class AdaptiveExt4 : public ::testing::Test {
 protected:
  TempDir dir;
  fs::path v1 = dir / "v1.img", v2 = dir / "v2.img", artifact = dir / "v2.mender";

  void SetUp() override {
    // v1: 40 files of 8-120 KiB in 3 directories.
    for (int i = 0; i < 40; ++i) {
      auto p = dir / "tree1" / ("d" + std::to_string(i % 3)) / ("f" + std::to_string(i));
      fs::create_directories(p.parent_path());
      write_file(p, file_text(8192 + (i * 2909) % (112 * 1024), static_cast<unsigned>(i)));
    }
    // v2: 3 files rewritten (new content, other sizes), 2 added; copied so mkfs allocates afresh.
    ASSERT_EQ(run("cp -a " + q(dir / "tree1") + " " + q(dir / "tree2")).exit_code, 0);
    for (int i : {3, 17, 31})
      write_file(dir / "tree2" / ("d" + std::to_string(i % 3)) / ("f" + std::to_string(i)),
                 file_text(50000 + i * 100, 1000u + static_cast<unsigned>(i)));
    write_file(dir / "tree2/d0/new-a", file_text(150000, 2001));
    write_file(dir / "tree2/new-b", file_text(30000, 2002));
    make_ext4(dir / "tree1", v1, 8);
    make_ext4(dir / "tree2", v2, 8);
  }

  artifacts::Header write_artifact(const std::string& extra = "") {
    auto r = run(tool() + " write rootfs-image -f " + q(v2) + " -t qemu -n v2 -o " + q(artifact) +
                 " --frame-size 16384 " + extra);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    auto h = artifacts::read_header(artifact, {});
    EXPECT_TRUE(h) << h.error().message();
    return h ? *h : artifacts::Header{};
  }

  struct Applied {
    artifacts::Plan plan;
    Result<artifacts::ApplyStats> stats;
    std::string rebuilt;
  };
  // Plans and runs the install: local frames from `local`, fetches from the artifact file.
  Applied apply(const artifacts::Header& h, const std::string& local) {
    Applied out;
    const auto& x = *h.chunk_index;
    artifacts::LocalIndexer ix(x);
    for (std::size_t at = 0; at < local.size(); at += 100000)
      ix.feed({reinterpret_cast<const std::uint8_t*>(local.data()) + at,
               std::min<std::size_t>(100000, local.size() - at)});
    auto table = ix.finish();
    const auto bytes = read_file(artifact);
    out.plan =
        artifacts::plan_adaptive(x, table, {.artifact_size = bytes.size(), .data_offset = h.data_offset});
    out.rebuilt.assign(h.payload_size, '\0');
    out.stats = artifacts::apply_plan(
        x, table, out.plan, h.payload_sha256,
        [&](std::uint64_t off, std::span<std::uint8_t> b) -> Result<void> {
          std::memcpy(b.data(), local.data() + off, b.size());
          return {};
        },
        [&](std::size_t, artifacts::ByteRange r) -> Result<std::vector<std::uint8_t>> {
          return std::vector<std::uint8_t>(bytes.begin() + static_cast<std::ptrdiff_t>(r.offset),
                                           bytes.begin() + static_cast<std::ptrdiff_t>(r.offset + r.length));
        },
        [&](std::uint64_t off, std::span<const std::uint8_t> b) -> Result<void> {
          std::memcpy(out.rebuilt.data() + off, b.data(), b.size());
          return {};
        });
    return out;
  }
};

TEST_F(AdaptiveExt4, MostFramesAreBuiltLocallyAndTheResultIsV2) {
  auto h = write_artifact();
  ASSERT_TRUE(h.chunk_index);
  EXPECT_EQ(h.chunk_index->block_size, 1024u);  // from v2's superblock
  const auto old = read_file(v1), want = read_file(v2);
  ASSERT_NE(old, want);
  auto a = apply(h, old);
  ASSERT_TRUE(a.stats) << a.stats.error().message();
  EXPECT_EQ(a.rebuilt, want);
  EXPECT_FALSE(a.plan.full_download) << a.plan.reason;
  EXPECT_GT(a.plan.frames_local, 3 * a.plan.frames_fetched)
      << a.plan.frames_local << " local, " << a.plan.frames_fetched << " fetched";
  EXPECT_EQ(a.stats->frames_local, a.plan.frames_local);
  EXPECT_EQ(a.stats->frames_refetched, 0u);
  // The fetched share is well under the whole artifact (the new and rewritten files, the
  // metadata blocks mkfs rewrote, and the index in the header).
  EXPECT_LT(a.plan.fetch_fraction, 0.5) << a.plan.bytes_to_fetch << " of " << a.plan.artifact_size;
  // Matching only at the same offset would find far less: the layout moved.
  std::size_t same_offset = 0;
  for (std::size_t i = 0; i < want.size(); i += 1024) same_offset += want.compare(i, 1024, old, i, 1024) == 0;
  std::size_t found = 0;
  for (std::size_t i = 0; i < want.size() / 16384; ++i)
    if (a.plan.local[i]) found += 16;
  EXPECT_GT(found, same_offset) << "content-addressed " << found << " blocks, same offset " << same_offset;
}

TEST_F(AdaptiveExt4, AFlippedBitInTheLocalImageMakesThatFrameFetched) {
  auto h = write_artifact();
  ASSERT_TRUE(h.chunk_index);
  auto old = read_file(v1);
  auto clean = apply(h, old);
  ASSERT_TRUE(clean.stats);
  // Flip a bit in a v1 block that a local frame uses: that frame's block is no longer found.
  const auto& x = *h.chunk_index;
  artifacts::LocalIndexer ix(x);
  ix.feed({reinterpret_cast<const std::uint8_t*>(old.data()), old.size()});
  auto table = ix.finish();
  // A block that occurs once in v1 and once in v2, in a frame built locally.
  artifacts::BlockHasher hasher;
  std::map<std::uint64_t, int> in_v1, in_v2;
  for (std::size_t off = 0; off < old.size(); off += 1024)
    ++in_v1[hasher.block_hash(x.block_hash_kind, {reinterpret_cast<const std::uint8_t*>(old.data()) + off, 1024})];
  for (auto hsh : x.block_hashes) ++in_v2[hsh];
  std::size_t frame = 0;
  std::optional<std::uint64_t> at;
  for (std::size_t b = 0; b < x.block_hashes.size() && !at; ++b) {
    frame = b / x.blocks_per_frame();
    if (clean.plan.local[frame] && in_v1[x.block_hashes[b]] == 1 && in_v2[x.block_hashes[b]] == 1)
      at = table.find(x.block_hashes[b]);
  }
  ASSERT_TRUE(at) << "no local frame has a block that is unique in v1 and v2";
  old[*at + 100] ^= 0x04;
  auto flipped = apply(h, old);
  ASSERT_TRUE(flipped.stats) << flipped.stats.error().message();
  EXPECT_FALSE(flipped.plan.local[frame]);
  EXPECT_EQ(flipped.plan.frames_fetched, clean.plan.frames_fetched + 1);
  EXPECT_EQ(flipped.rebuilt, read_file(v2));  // fetched, not trusted
}

TEST_F(AdaptiveExt4, NoIndexMeansAFullDownloadAndTheToolSaysSo) {
  auto h = write_artifact("--no-chunk-index");
  EXPECT_FALSE(h.chunk_index);
  auto r = run(tool() + " plan --local " + q(v1) + " " + q(artifact));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("decision: full download: the artifact has no chunk index"), std::string::npos)
      << r.output;

  // With the index, the tool plans and builds v2 from v1 and the artifact file.
  write_artifact();
  auto built = run(tool() + " plan --local " + q(v1) + " " + q(artifact) + " --build " + q(dir / "out.img"));
  EXPECT_EQ(built.exit_code, 0) << built.output;
  EXPECT_NE(built.output.find("decision: adaptive"), std::string::npos) << built.output;
  EXPECT_NE(built.output.find("sha256 matches the manifest"), std::string::npos) << built.output;
  EXPECT_EQ(read_file(dir / "out.img"), read_file(v2));
  // A local image that cannot be read: a full download, with the reason.
  auto missing = run(tool() + " plan --local " + q(dir / "nope.img") + " " + q(artifact));
  EXPECT_NE(missing.output.find("full download: no usable local data"), std::string::npos) << missing.output;
}

}  // namespace
}  // namespace tern::test
