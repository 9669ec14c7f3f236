// Resumable decoders (compress.hpp): a decoder rebuilt with resume_decompressor() from the state
// saved at a boundary, fed the rest of the stream, gives exactly the bytes of a straight decode and
// ends with the same checks. gzip from zlib and from Debian's gzip; xz with several blocks from
// Debian's xz (-T2 and --block-size).
#include "artifacts/compress.hpp"
#include "tests/artifacts/fixtures.hpp"

#include <gtest/gtest.h>

#include <random>

namespace tern::test {
namespace {

using artifacts::Compression;

std::span<const std::uint8_t> bytes_of(std::string_view s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

// Random bytes, runs, and copies of earlier bytes from up to 32 KiB back: a resumed inflate gets
// them right only with the right window.
std::string window_heavy(std::size_t size, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s;
  s.reserve(size);
  while (s.size() < size) {
    auto kind = rng() % 3;
    std::size_t n = 16 + rng() % 2000;
    if (kind == 0 || s.size() < 40000) {
      for (std::size_t i = 0; i < n; ++i) s += static_cast<char>(rng() & 0xff);
    } else if (kind == 1) {
      s.append(n, static_cast<char>('a' + rng() % 26));
    } else {
      std::size_t back = 1000 + rng() % 31000;
      std::size_t from = s.size() - back;
      for (std::size_t i = 0; i < n; ++i) s += s[from + i];
    }
  }
  s.resize(size);
  return s;
}

struct Boundary {
  std::size_t in = 0;   // compressed bytes before it
  std::size_t out = 0;  // decompressed bytes before it
  std::string state;
};
struct Straight {
  Result<void> result;
  std::string out;
  std::vector<Boundary> boundaries;
};

// Decodes `data` fed in pieces of `chunk`, stopping at every boundary to note its state.
Straight decode_straight(Compression c, std::string_view data, std::size_t chunk) {
  Straight s;
  auto d = artifacts::make_decompressor(c);
  artifacts::Output sink = [&](std::span<const std::uint8_t> b) -> Result<void> {
    s.out.append(reinterpret_cast<const char*>(b.data()), b.size());
    return {};
  };
  for (std::size_t pos = 0; pos < data.size();) {
    auto piece = bytes_of(data.substr(pos, chunk));
    while (!piece.empty()) {
      auto n = d->feed_to_frame_end(piece, sink);
      if (!n) {
        s.result = n.error();
        return s;
      }
      piece = piece.subspan(*n);
      pos += *n;
      if (d->at_frame_boundary() && (s.boundaries.empty() || s.boundaries.back().in != pos))
        s.boundaries.push_back({pos, s.out.size(), d->save_state()});
      if (*n == 0 && !piece.empty()) {
        s.result = fail(Errc::internal, "no progress");
        return s;
      }
    }
  }
  s.result = d->finish();
  return s;
}

// A decoder resumed at `b`, fed data[b.in..] in pieces of `chunk`.
Result<std::string> decode_resumed(Compression c, std::string_view data, const Boundary& b, std::size_t chunk = 7001) {
  auto d = artifacts::resume_decompressor(c, b.state);
  if (!d) return d.error();
  std::string out;
  artifacts::Output sink = [&](std::span<const std::uint8_t> x) -> Result<void> {
    out.append(reinterpret_cast<const char*>(x.data()), x.size());
    return {};
  };
  for (std::size_t pos = b.in; pos < data.size(); pos += chunk)
    if (auto r = (*d)->feed(bytes_of(data.substr(pos, chunk)), sink); !r) return r.error();
  if (auto r = (*d)->finish(); !r) return r.error();
  return out;
}

std::string field(const std::string& state, std::size_t i) {
  std::size_t pos = 0;
  for (std::size_t k = 0; k < i; ++k) pos = state.find(' ', pos) + 1;
  return state.substr(pos, state.find(' ', pos) - pos);
}

class CodecResume : public ::testing::Test {
 protected:
  TempDir dir;
  std::string data = window_heavy(3u << 20, 5);

  // Compresses `data` with a command line tool reading stdin.
  std::string compress_cli(const std::string& command) {
    write_file(dir / "in.bin", data);
    auto r = run(command + " < " + shell_quote((dir / "in.bin").string()) + " > " + shell_quote((dir / "out").string()));
    EXPECT_EQ(r.exit_code, 0) << command << ": " << r.output;
    return read_file(dir / "out");
  }

  // Resumes at every boundary (the first and last few, and every `step`th) and compares.
  void resume_everywhere(Compression c, const std::string& compressed, const Straight& s, std::size_t step = 1) {
    for (std::size_t i = 0; i < s.boundaries.size(); ++i) {
      if (i > 3 && i + 3 < s.boundaries.size() && i % step != 0) continue;
      const auto& b = s.boundaries[i];
      SCOPED_TRACE("boundary " + std::to_string(i) + " at compressed byte " + std::to_string(b.in));
      auto r = decode_resumed(c, compressed, b);
      ASSERT_TRUE(r) << r.error().message();
      ASSERT_EQ(r->size(), data.size() - b.out);
      EXPECT_TRUE(*r == std::string_view(data).substr(b.out)) << "the resumed output differs";
    }
  }
};

TEST_F(CodecResume, GzipFromZlibAndDebiansGzipResumesAtEveryDeflateBlock) {
  auto ours = artifacts::compress_all(Compression::gzip, data);
  ASSERT_TRUE(ours) << ours.error().message();
  for (const auto& [name, gz] : std::vector<std::pair<std::string, std::string>>{
           {"zlib level 6", *ours}, {"gzip -9", compress_cli("gzip -9 -c")}, {"gzip -1", compress_cli("gzip -1 -c")}}) {
    SCOPED_TRACE(name);
    auto s = decode_straight(Compression::gzip, gz, 65536);
    ASSERT_TRUE(s.result) << s.result.error().message();
    ASSERT_TRUE(s.out == data);
    // Deflate blocks end every few tens of KiB: many boundaries, none at the very end.
    ASSERT_GE(s.boundaries.size(), 20u);
    EXPECT_LT(s.boundaries.back().out, data.size());
    bool primed = false;
    for (const auto& b : s.boundaries) {
      EXPECT_EQ(field(b.state, 0), "gzip1");
      EXPECT_EQ(field(b.state, 1), std::to_string(b.out));
      primed = primed || field(b.state, 3) != "0";
      EXPECT_LE(b.state.size(), 44u * 1024 + 100) << "a window of 32 KiB, base64";
    }
    EXPECT_TRUE(primed) << "some block ends inside a byte (inflatePrime)";
    resume_everywhere(Compression::gzip, gz, s, 3);
  }
}

TEST_F(CodecResume, GzipBoundariesDoNotDependOnHowTheInputIsCut) {
  std::string small = data.substr(0, 300 * 1024);
  auto gz = artifacts::compress_all(Compression::gzip, small);
  ASSERT_TRUE(gz);
  auto a = decode_straight(Compression::gzip, *gz, gz->size());
  auto b = decode_straight(Compression::gzip, *gz, 1);
  auto c = decode_straight(Compression::gzip, *gz, 4099);
  ASSERT_TRUE(a.result && b.result && c.result);
  ASSERT_GE(a.boundaries.size(), 3u);
  for (const auto* other : {&b, &c}) {
    ASSERT_EQ(other->boundaries.size(), a.boundaries.size());
    for (std::size_t i = 0; i < a.boundaries.size(); ++i) {
      EXPECT_EQ(other->boundaries[i].in, a.boundaries[i].in);
      EXPECT_EQ(other->boundaries[i].state, a.boundaries[i].state);
    }
  }
}

TEST_F(CodecResume, AResumedGzipStreamStillChecksItsTrailerAndTheWindowMatters) {
  auto gz = artifacts::compress_all(Compression::gzip, data);
  ASSERT_TRUE(gz);
  auto s = decode_straight(Compression::gzip, *gz, 65536);
  ASSERT_TRUE(s.result);
  ASSERT_GE(s.boundaries.size(), 10u);
  const auto& b = s.boundaries[s.boundaries.size() / 2];

  auto flipped = [&](std::size_t from_end) {
    auto x = *gz;
    x[x.size() - from_end] = static_cast<char>(x[x.size() - from_end] ^ 0x01);
    return x;
  };
  auto crc = decode_resumed(Compression::gzip, flipped(8), b);  // first byte of the CRC-32
  ASSERT_FALSE(crc);
  EXPECT_NE(crc.error().message().find("incorrect data check"), std::string::npos) << crc.error().message();
  auto size = decode_resumed(Compression::gzip, flipped(4), b);  // first byte of ISIZE
  ASSERT_FALSE(size);
  EXPECT_NE(size.error().message().find("incorrect length check"), std::string::npos) << size.error().message();
  auto cut = decode_resumed(Compression::gzip, std::string_view(*gz).substr(0, gz->size() - 3), b);
  ASSERT_FALSE(cut);
  EXPECT_NE(cut.error().message().find("truncated"), std::string::npos) << cut.error().message();
  auto trailing = decode_resumed(Compression::gzip, *gz + "x", b);
  ASSERT_FALSE(trailing);
  EXPECT_NE(trailing.error().message().find("trailing bytes"), std::string::npos) << trailing.error().message();

  // Another window (the state of another stream's boundary, same offsets): the copies from it
  // come out wrong, and the CRC-32 carried in the state catches it at the end.
  auto other_data = window_heavy(data.size(), 6);
  auto other = artifacts::compress_all(Compression::gzip, other_data);
  ASSERT_TRUE(other);
  auto os = decode_straight(Compression::gzip, *other, 65536);
  ASSERT_TRUE(os.result);
  ASSERT_GE(b.out, 32768u);
  const auto& ob = os.boundaries[os.boundaries.size() / 2];
  ASSERT_GE(ob.out, 32768u);
  auto forged = b;
  forged.state = b.state.substr(0, b.state.rfind(' ')) + ob.state.substr(ob.state.rfind(' '));
  auto r = decode_resumed(Compression::gzip, *gz, forged);
  ASSERT_FALSE(r) << "a wrong window must not give a stream that passes its checks";
  EXPECT_NE(r.error().message().find("gzip data:"), std::string::npos) << r.error().message();
}

TEST_F(CodecResume, MalformedStatesAreRefusedWithTheReason) {
  auto gz = artifacts::compress_all(Compression::gzip, data.substr(0, 200000));
  ASSERT_TRUE(gz);
  auto s = decode_straight(Compression::gzip, *gz, 65536);
  ASSERT_TRUE(s.result);
  ASSERT_FALSE(s.boundaries.empty());
  const auto good = s.boundaries.back().state;
  auto with = [&](std::size_t i, const std::string& v) {
    auto w = good;
    std::size_t pos = 0;
    for (std::size_t k = 0; k < i; ++k) pos = w.find(' ', pos) + 1;
    return w.replace(pos, w.find(' ', pos) - pos, v);
  };
  struct Case {
    Compression c;
    std::string state, says;
  };
  for (const auto& k : std::vector<Case>{
           {Compression::gzip, "zstd", "the resume state is for 'zstd'"},
           {Compression::zstd, good, "the resume state is for 'gzip1'"},
           {Compression::zstd, "zstd 1", "extra fields"},
           {Compression::gzip, "gzip1 1 2", "not a 'gzip1' state of 6 fields"},
           {Compression::gzip, with(3, "8"), "bad leftover bits"},
           {Compression::gzip, with(2, "x"), "bad byte count or CRC-32"},
           {Compression::gzip, with(5, "@@@@"), "not base64"},
           {Compression::gzip, with(1, "100"), "a window of 32768 bytes after 100 bytes"},
           {Compression::xz, "xz1 4 2 100 200", "the block count does not match"},
           {Compression::xz, "xz1 99 1 100 200", "bad check type"},
           {Compression::xz, "xz1 4 1 0 200", "impossible sizes"},
       }) {
    auto r = artifacts::resume_decompressor(k.c, k.state);
    ASSERT_FALSE(r) << k.says;
    EXPECT_NE(r.error().message().find(k.says), std::string::npos) << r.error().message();
  }
}

TEST_F(CodecResume, XzWithSeveralBlocksResumesAtEveryBlockAndChecksTheIndex) {
  data.resize(1200 * 1024);  // xz is slow: a smaller stream in smaller blocks
  for (const std::string cmd : {"xz -T2 --block-size=98304 -c", "xz -T1 --block-size=80000 -3 -c"}) {
    SCOPED_TRACE(cmd);
    auto xz = compress_cli(cmd);
    auto s = decode_straight(Compression::xz, xz, 65536);
    ASSERT_TRUE(s.result) << s.result.error().message();
    ASSERT_TRUE(s.out == data);
    ASSERT_GE(s.boundaries.size(), 10u) << "one per block";
    for (const auto& b : s.boundaries) EXPECT_EQ(field(b.state, 0), "xz1");
    resume_everywhere(Compression::xz, xz, s, 2);

    // The index must list the blocks before the checkpoint too: a state that lies about one
    // of them is caught at the end.
    const auto& b = s.boundaries[3];
    auto forged = b;
    auto sizes_at = forged.state.rfind(' ');
    forged.state = forged.state.substr(0, sizes_at) + " " +
                   std::to_string(std::stoull(forged.state.substr(sizes_at + 1)) + 1);
    auto r = decode_resumed(Compression::xz, xz, forged);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message().find("the index does not match the blocks"), std::string::npos) << r.error().message();
    // A flipped byte after the checkpoint: the block's check or LZMA2 refuses it.
    auto bad = xz;
    auto at = b.in + (s.boundaries[4].in - b.in) / 2;
    bad[at] = static_cast<char>(bad[at] ^ 0x10);
    EXPECT_FALSE(decode_resumed(Compression::xz, bad, b));
  }
}

TEST_F(CodecResume, XzInOneBlockHasNoBoundaryAndStillDecodes) {
  // What a plain `xz` and mender-artifact write.
  data.resize(1200 * 1024);
  auto xz = compress_cli("xz -6 -c");
  auto s = decode_straight(Compression::xz, xz, 65536);
  ASSERT_TRUE(s.result) << s.result.error().message();
  EXPECT_TRUE(s.out == data);
  // Only after the single block, where nothing is left to resume.
  ASSERT_LE(s.boundaries.size(), 1u);
  if (!s.boundaries.empty()) {
    EXPECT_EQ(s.boundaries[0].out, data.size());
  }
  // Corruptions a straight decode catches: the footer, the index, the stream header.
  for (std::size_t from_end : {std::size_t{3}, std::size_t{14}}) {
    auto bad = xz;
    bad[bad.size() - from_end] = static_cast<char>(bad[bad.size() - from_end] ^ 0x01);
    EXPECT_FALSE(decode_straight(Compression::xz, bad, 65536).result) << from_end << " bytes from the end";
  }
  EXPECT_FALSE(decode_straight(Compression::xz, xz + std::string(4, '\0'), 65536).result) << "trailing bytes";
  EXPECT_FALSE(decode_straight(Compression::xz, std::string_view(xz).substr(0, xz.size() - 1), 65536).result);
}

}  // namespace
}  // namespace tern::test
