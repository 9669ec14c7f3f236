// Partitions on sfdisk-made GPT and MBR images, the running-slot detection, and PartitionWriter.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <fstream>

#include "agent/boot/partitions.hpp"
#include "agent/install/write_behind.hpp"
#include "tests/support/testenv.hpp"

namespace tern::agent {
namespace {

using test::run;
using test::shell_quote;
using test::TempDir;
namespace fs = std::filesystem;

constexpr std::uint64_t MiB = 1u << 20;

/// A 12 MiB GPT image: 1 boot (1 MiB at 1 MiB), 2 rootfs-a (4 MiB), 3 rootfs-b (4 MiB), 4 data (rest).
fs::path make_gpt(const TempDir& dir, char fill = '\0') {
  const fs::path disk = dir / "disk.img";
  test::write_file(disk, std::string(12 * MiB, fill));
  auto r =
      run("printf 'label: gpt\\nstart=2048, size=2048, name=boot\\nsize=4MiB, name=rootfs-a\\n"
          "size=4MiB, name=rootfs-b\\nname=data\\n' | sfdisk -q --no-reread --no-tell-kernel " +
          shell_quote(disk.string()));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return disk;
}

std::string sfdisk_field(const fs::path& disk, const std::string& flag, int n) {
  auto r = run("sfdisk " + flag + " " + shell_quote(disk.string()) + " " + std::to_string(n));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  while (!r.output.empty() && (r.output.back() == '\n')) r.output.pop_back();
  return r.output;
}

std::string sha256_hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  std::string out;
  char buf[3];
  for (unsigned int i = 0; i < len; ++i) {
    std::snprintf(buf, sizeof buf, "%02x", md[i]);
    out += buf;
  }
  return out;
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

TEST(PartitionOnDisk, GptByNumberAndLabel) {
  TempDir dir("tern-part");
  const fs::path disk = make_gpt(dir);
  auto by_number = partition_on_disk(disk, "3");
  ASSERT_TRUE(by_number) << by_number.error().message();
  EXPECT_EQ(by_number->number, 3);
  EXPECT_EQ(by_number->label, "rootfs-b");
  EXPECT_EQ(by_number->offset, 6 * MiB);  // 1 MiB gap + 1 MiB boot + 4 MiB rootfs-a
  EXPECT_EQ(by_number->size, 4 * MiB);
  EXPECT_EQ(by_number->partuuid, lower(sfdisk_field(disk, "--part-uuid", 3)));
  EXPECT_EQ(by_number->path, disk);

  auto by_label = partition_on_disk(disk, "rootfs-a");
  ASSERT_TRUE(by_label) << by_label.error().message();
  EXPECT_EQ(by_label->number, 2);
  EXPECT_EQ(by_label->offset, 2 * MiB);
  EXPECT_EQ(by_label->size, 4 * MiB);
  EXPECT_NE(by_label->partuuid, by_number->partuuid);

  auto data = partition_on_disk(disk, "data");
  ASSERT_TRUE(data);
  EXPECT_EQ(data->offset, 10 * MiB);
  EXPECT_LE(data->offset + data->size, 12 * MiB - 33 * 512) << "the backup GPT stays outside";
}

TEST(PartitionOnDisk, UnknownPartitionListsWhatExists) {
  TempDir dir("tern-part");
  const fs::path disk = make_gpt(dir);
  for (const std::string wanted : {"7", "rootfs-c"}) {
    auto p = partition_on_disk(disk, wanted);
    ASSERT_FALSE(p);
    EXPECT_EQ(p.error().code(), make_error_code(Errc::not_found));
    EXPECT_NE(p.error().message().find("'" + wanted + "'"), std::string::npos) << p.error().message();
    EXPECT_NE(p.error().message().find("3 \"rootfs-b\""), std::string::npos) << p.error().message();
  }
}

TEST(PartitionOnDisk, Mbr) {
  TempDir dir("tern-part");
  const fs::path disk = dir / "mbr.img";
  test::write_file(disk, std::string(8 * MiB, '\0'));
  auto r =
      run("printf 'label: dos\\nlabel-id: 0x1a2b3c4d\\nstart=2048, size=2048, type=83\\n"
          "size=2MiB, type=83\\nsize=2MiB, type=83\\n' | sfdisk -q --no-reread --no-tell-kernel " +
          shell_quote(disk.string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto p = partition_on_disk(disk, "2");
  ASSERT_TRUE(p) << p.error().message();
  EXPECT_EQ(p->number, 2);
  EXPECT_EQ(p->offset, 2 * MiB);
  EXPECT_EQ(p->size, 2 * MiB);
  EXPECT_EQ(p->partuuid, "1a2b3c4d-02");  // what the kernel shows as PARTUUID for MBR
  EXPECT_TRUE(p->label.empty());
  EXPECT_FALSE(partition_on_disk(disk, "rootfs-a")) << "MBR partitions have no names";
}

TEST(PartitionOnDisk, NoTableOrNoFile) {
  TempDir dir("tern-part");
  test::write_file(dir / "blank.img", std::string(MiB, '\0'));
  auto p = partition_on_disk(dir / "blank.img", "1");
  ASSERT_FALSE(p);
  EXPECT_NE(p.error().message().find("no partition table"), std::string::npos) << p.error().message();
  p = partition_on_disk(dir / "missing.img", "1");
  ASSERT_FALSE(p);
  EXPECT_EQ(p.error().code(), make_error_code(Errc::not_found));
  EXPECT_NE(p.error().message().find("missing.img"), std::string::npos);
}

TEST(PartitionFromPath, FileSizeAndNumber) {
  TempDir dir("tern-part");
  test::write_file(dir / "mmcblk0p3", std::string(12345, 'x'));
  auto p = partition_from_path(dir / "mmcblk0p3");
  ASSERT_TRUE(p) << p.error().message();
  EXPECT_EQ(p->offset, 0u);
  EXPECT_EQ(p->size, 12345u);
  EXPECT_EQ(p->number, 3);
  test::write_file(dir / "mmcblk0", "x");
  EXPECT_EQ(partition_from_path(dir / "mmcblk0")->number, 0);
  auto missing = partition_from_path(dir / "sda9");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code(), make_error_code(Errc::not_found));
}

// ---------------------------------------------------------------------------------------------
// Running slot

class ActiveSlotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    a_.partition = {.path = "/dev/mmcblk0",
                    .offset = 2 * MiB,
                    .size = 4 * MiB,
                    .number = 2,
                    .partuuid = "1a2b3c4d-aaaa-bbbb-cccc-000000000002",
                    .label = "rootfs-a"};
    b_.partition = {.path = "/dev/mmcblk0",
                    .offset = 6 * MiB,
                    .size = 4 * MiB,
                    .number = 3,
                    .partuuid = "1a2b3c4d-aaaa-bbbb-cccc-000000000003",
                    .label = "rootfs-b"};
    where_.cmdline = dir_ / "cmdline";
    where_.mountinfo = dir_ / "mountinfo";
    where_.sys_dev_block = dir_ / "sys";
  }
  Result<int> detect(const std::string& cmdline) {
    test::write_file(where_.cmdline, cmdline);
    return active_slot(where_, a_, b_);
  }
  void mountinfo(const std::string& source, const std::string& majmin = "179:3") {
    test::write_file(where_.mountinfo,
                     "20 1 0:5 / /dev rw - devtmpfs devtmpfs rw\n"
                     "25 1 " +
                         majmin + " / / ro,relatime shared:1 - ext4 " + source +
                         " ro\n"
                         "26 25 0:22 / /proc rw - proc proc rw\n");
  }

  TempDir dir_{"tern-active"};
  SlotIdentity a_, b_;
  ActiveDetect where_;
};

TEST_F(ActiveSlotTest, DeviceName) {
  a_.device_name = "/dev/mmcblk0p2";
  b_.device_name = "/dev/mmcblk0p3";
  EXPECT_EQ(detect("console=ttyS0 root=/dev/mmcblk0p2 rootwait\n").value(), 0);
  EXPECT_EQ(detect("root=/dev/mmcblk0p3 rootwait").value(), 1);
}

TEST_F(ActiveSlotTest, PartuuidAnyCase) {
  EXPECT_EQ(detect("root=PARTUUID=1A2B3C4D-AAAA-BBBB-CCCC-000000000003 rootwait").value(), 1);
  EXPECT_EQ(detect("root=PARTUUID=1a2b3c4d-aaaa-bbbb-cccc-000000000002").value(), 0);
  EXPECT_FALSE(detect("root=PARTUUID=1a2b3c4d-aaaa-bbbb-cccc-000000000009"));
}

TEST_F(ActiveSlotTest, PartlabelAndNumberSuffix) {
  EXPECT_EQ(detect("root=PARTLABEL=rootfs-b").value(), 1);
  // No device names configured: the trailing number identifies the partition.
  EXPECT_EQ(detect("root=/dev/sim-disk-p3 rootwait").value(), 1);
  EXPECT_EQ(detect("root=/dev/mmcblk1p2").value(), 0);
  EXPECT_EQ(detect("root=/dev/sda2").value(), 0);
}

TEST_F(ActiveSlotTest, ExistingPathThroughASymlink) {
  // Slots given as device paths (offset 0); the kernel names one through a by-partuuid link.
  test::write_file(dir_ / "part-a", "a");
  test::write_file(dir_ / "part-b", "b");
  a_.partition = partition_from_path(dir_ / "part-a").value();
  b_.partition = partition_from_path(dir_ / "part-b").value();
  fs::create_symlink(dir_ / "part-b", dir_ / "by-partuuid-xyz");
  EXPECT_EQ(detect("root=" + (dir_ / "by-partuuid-xyz").string()).value(), 1);
}

TEST_F(ActiveSlotTest, MountinfoWhenCmdlineSaysNothing) {
  b_.device_name = "/dev/mmcblk0p3";
  mountinfo("/dev/mmcblk0p3");
  EXPECT_EQ(detect("console=ttyS0 rootwait\n").value(), 1);
  EXPECT_EQ(detect("root=/dev/root").value(), 1);
  fs::remove(where_.cmdline);
  EXPECT_EQ(active_slot(where_, a_, b_).value(), 1) << "cmdline unreadable";
}

TEST_F(ActiveSlotTest, DevRootResolvedThroughMajorMinor) {
  mountinfo("/dev/root", "179:2");
  fs::create_directories(where_.sys_dev_block / "179:2");
  test::write_file(where_.sys_dev_block / "179:2" / "uevent",
                   "MAJOR=179\nMINOR=2\nDEVNAME=mmcblk0p2\nDEVTYPE=partition\n");
  EXPECT_EQ(detect("rootwait").value(), 0);
}

TEST_F(ActiveSlotTest, NeitherIsAnErrorNamingWhatWasFound) {
  a_.device_name = "/dev/mmcblk0p2";
  b_.device_name = "/dev/mmcblk0p3";
  mountinfo("/dev/nvme0n1");
  auto r = detect("root=/dev/nfs nfsroot=1.2.3.4:/srv");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), make_error_code(Errc::not_found));
  EXPECT_NE(r.error().message().find("root=/dev/nfs"), std::string::npos) << r.error().message();
  EXPECT_NE(r.error().message().find("/dev/nvme0n1"), std::string::npos) << r.error().message();
  EXPECT_NE(r.error().message().find("/dev/mmcblk0p3"), std::string::npos) << r.error().message();
}

TEST_F(ActiveSlotTest, AmbiguousRuleIsSkipped) {
  b_.partition.number = 2;  // a misconfiguration: both slots claim number 2
  EXPECT_EQ(match_root_device("/dev/mmcblk0p2", a_, b_), -1);
  EXPECT_EQ(match_root_device("PARTLABEL=rootfs-a", a_, b_), 0);
}

// ---------------------------------------------------------------------------------------------
// PartitionWriter

std::string pattern(std::size_t n, unsigned seed) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + seed * 7 + (i >> 12)) & 0xff);
  return s;
}

std::span<const std::uint8_t> bytes(const std::string& s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

TEST(PartitionWriter, WritesOnlyInsideItsRange) {
  TempDir dir("tern-writer");
  const fs::path disk = make_gpt(dir, '\xa5');
  const std::string before = test::read_file(disk);
  auto part = partition_on_disk(disk, "rootfs-b");
  ASSERT_TRUE(part) << part.error().message();

  // Small flush windows so the writeback path runs many times.
  auto w = PartitionWriter::open(*part, {.flush_every = 64 * 1024});
  ASSERT_TRUE(w) << w.error().message();
  EXPECT_EQ(w->capacity(), 4 * MiB);
  const std::string payload = pattern(4 * MiB, 1);
  ASSERT_TRUE(w->check_fits(payload.size()));
  for (std::size_t off = 0; off < payload.size(); off += 100'000) {
    auto chunk = payload.substr(off, 100'000);
    ASSERT_TRUE(w->write(bytes(chunk)));
  }
  ASSERT_TRUE(w->finish());
  EXPECT_EQ(w->bytes_written(), payload.size());
  EXPECT_EQ(w->position(), payload.size());

  const std::string after = test::read_file(disk);
  ASSERT_EQ(after.size(), before.size());
  EXPECT_TRUE(after.compare(0, part->offset, before, 0, part->offset) == 0)
      << "bytes before the partition changed";
  EXPECT_TRUE(
      after.compare(part->offset + part->size, std::string::npos, before, part->offset + part->size) == 0)
      << "bytes after the partition changed";
  EXPECT_TRUE(after.compare(part->offset, part->size, payload) == 0);

  auto hash = sha256_of(*part, payload.size());
  ASSERT_TRUE(hash) << hash.error().message();
  EXPECT_EQ(*hash, sha256_hex(payload));
  EXPECT_EQ(sha256_of(*part, 1000).value(), sha256_hex(payload.substr(0, 1000)));
  EXPECT_FALSE(sha256_of(*part, part->size + 1));
}

TEST(PartitionWriter, RefusesOverflowBeforeWriting) {
  TempDir dir("tern-writer");
  const fs::path disk = make_gpt(dir, '\xa5');
  const std::string before = test::read_file(disk);
  auto part = partition_on_disk(disk, "2").value();

  auto w = PartitionWriter::open(part).value();
  auto fits = w.check_fits(part.size + 1);
  ASSERT_FALSE(fits);
  EXPECT_EQ(fits.error().code(), make_error_code(Errc::invalid_argument));
  EXPECT_NE(fits.error().message().find("does not fit"), std::string::npos) << fits.error().message();

  const std::string nearly = pattern(part.size - 10, 2);
  ASSERT_TRUE(w.write(bytes(nearly)));
  auto over = w.write(bytes(std::string(11, 'X')));  // one byte too many
  ASSERT_FALSE(over);
  EXPECT_NE(over.error().message().find("would pass the end"), std::string::npos) << over.error().message();
  EXPECT_EQ(w.bytes_written(), nearly.size()) << "nothing of the refused write was written";
  ASSERT_TRUE(w.write(bytes(std::string(10, 'Y'))));  // exactly to the end is fine
  ASSERT_TRUE(w.finish());

  const std::string after = test::read_file(disk);
  EXPECT_EQ(after.substr(part.offset + part.size - 10, 10), std::string(10, 'Y'));
  EXPECT_TRUE(after.compare(part.offset + part.size, std::string::npos, before, part.offset + part.size) == 0)
      << "the refused write touched the next partition";
}

TEST(WriteBehind, WritesEverythingInOrderWhateverThePieces) {
  TempDir dir("tern-writer");
  const fs::path disk = make_gpt(dir, '\xa5');
  const std::string before = test::read_file(disk);
  auto part = partition_on_disk(disk, "rootfs-b").value();
  const std::string payload = pattern(3 * MiB + 12345, 7);
  {
    // Small buffers and flush windows: the queue fills and the producer waits for the writer.
    WriteBehind out(PartitionWriter::open(part, {.flush_every = 64 * 1024}).value(), 2, 100'000);
    std::size_t at = 0;
    for (std::size_t n = 1; at < payload.size(); n = n * 3 + 7) {
      const std::size_t take = std::min(n % 300'000 + 1, payload.size() - at);
      ASSERT_TRUE(out.put(bytes(payload.substr(at, take))));
      at += take;
    }
    ASSERT_TRUE(out.drain());
    EXPECT_EQ(out.written(), payload.size());
    ASSERT_TRUE(out.finish());
  }
  const std::string after = test::read_file(disk);
  EXPECT_TRUE(after.compare(part.offset, payload.size(), payload) == 0);
  EXPECT_EQ(after.substr(0, part.offset), before.substr(0, part.offset));
  EXPECT_EQ(after.substr(part.offset + payload.size()), before.substr(part.offset + payload.size()));
}

TEST(WriteBehind, AWriteErrorComesBackAndNothingMoreIsWritten) {
  TempDir dir("tern-writer");
  const fs::path disk = make_gpt(dir, '\xa5');
  const std::string before = test::read_file(disk);
  auto part = partition_on_disk(disk, "rootfs-b").value();
  // 4 MiB of partition, 5 MiB of bytes: the buffer that would pass the end is refused whole.
  WriteBehind out(PartitionWriter::open(part).value(), 3, 300'000);
  const std::string chunk = pattern(MiB, 9);
  Result<void> r;
  for (int i = 0; i < 5 && r; ++i) r = out.put(bytes(chunk));
  if (r) r = out.finish();
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("would pass the end of"), std::string::npos) << r.error().message();
  EXPECT_LE(out.written(), part.size);
  EXPECT_FALSE(out.put(bytes(chunk)));  // it stays failed
  EXPECT_FALSE(out.finish());
  const std::string after = test::read_file(disk);
  EXPECT_EQ(after.substr(part.offset + part.size), before.substr(part.offset + part.size))
      << "the next partition was touched";
}

TEST(PartitionWriter, ResumesAtAPosition) {
  TempDir dir("tern-writer");
  const fs::path disk = make_gpt(dir);
  auto part = partition_on_disk(disk, "3").value();
  const std::string payload = pattern(300'000, 3);
  {
    auto w = PartitionWriter::open(part).value();
    ASSERT_TRUE(w.write(bytes(payload.substr(0, 100'000))));
    ASSERT_TRUE(w.finish());
  }
  auto w = PartitionWriter::open(part, {.start_at = 100'000}).value();
  EXPECT_EQ(w.position(), 100'000u);
  EXPECT_FALSE(w.check_fits(part.size - 100'000 + 1));
  ASSERT_TRUE(w.write(bytes(payload.substr(100'000))));
  ASSERT_TRUE(w.finish());
  EXPECT_EQ(w.bytes_written(), 200'000u);
  EXPECT_EQ(sha256_of(part, payload.size()).value(), sha256_hex(payload));
  EXPECT_FALSE(PartitionWriter::open(part, {.start_at = part.size + 1}));
}

TEST(PartitionWriter, NeverCreatesOrTruncates) {
  TempDir dir("tern-writer");
  auto missing = PartitionWriter::open({.path = dir / "mmcblk0p3"});
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code(), make_error_code(Errc::not_found));
  EXPECT_NE(missing.error().message().find("mmcblk0p3"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir / "mmcblk0p3"));

  // A whole-file partition (size 0): the file's size is the limit, and the tail survives.
  test::write_file(dir / "part", std::string(1000, 'z'));
  auto w = PartitionWriter::open({.path = dir / "part"});
  ASSERT_TRUE(w) << w.error().message();
  EXPECT_EQ(w->capacity(), 1000u);
  ASSERT_TRUE(w->write(bytes("abc")));
  EXPECT_FALSE(w->write(bytes(std::string(998, 'q'))));
  ASSERT_TRUE(w->finish());
  EXPECT_EQ(test::read_file(dir / "part"), "abc" + std::string(997, 'z'));

  // A partition that claims more than the file holds is refused at open.
  auto too_big = PartitionWriter::open({.path = dir / "part", .offset = 500, .size = 501});
  ASSERT_FALSE(too_big);
  EXPECT_NE(too_big.error().message().find("past the end"), std::string::npos) << too_big.error().message();
}

}  // namespace
}  // namespace tern::agent

namespace tern::agent {
namespace {

/// A loop device over an image file, detached on destruction; empty when loop devices are not
/// available (not root, no /dev/loop-control): the test skips.
class LoopDevice {
 public:
  explicit LoopDevice(const fs::path& image) {
    auto r = run("losetup --find --show " + shell_quote(image.string()) + " 2>/dev/null");
    if (r.exit_code == 0 && r.output.rfind("/dev/loop", 0) == 0) {
      while (!r.output.empty() && r.output.back() == '\n') r.output.pop_back();
      device_ = r.output;
    }
  }
  ~LoopDevice() {
    if (!device_.empty()) run("losetup -d " + shell_quote(device_));
  }
  const std::string& device() const { return device_; }

 private:
  std::string device_;
};

TEST(BlockDevice, SizeTableWriterAndExclusiveOpen) {
  TempDir dir("tern-loop");
  const fs::path disk = make_gpt(dir, '\x11');
  LoopDevice loop(disk);
  if (loop.device().empty()) GTEST_SKIP() << "no loop devices here";

  auto whole = partition_from_path(loop.device());
  ASSERT_TRUE(whole) << whole.error().message();
  EXPECT_EQ(whole->size, 12 * MiB) << "BLKGETSIZE64";
  auto part = partition_on_disk(loop.device(), "rootfs-b");
  ASSERT_TRUE(part) << part.error().message();
  EXPECT_EQ(part->offset, 6 * MiB);

  auto w = PartitionWriter::open(*part);
  ASSERT_TRUE(w) << w.error().message();
  const std::string payload = pattern(MiB, 9);
  ASSERT_TRUE(w->write(bytes(payload)));
  ASSERT_TRUE(w->finish());
  EXPECT_EQ(sha256_of(*part, payload.size()).value(), sha256_hex(payload));

  // Someone holds the device exclusively (as a mount does): a whole-device writer is refused.
  int holder = ::open(loop.device().c_str(), O_RDONLY | O_EXCL | O_CLOEXEC);
  ASSERT_GE(holder, 0);
  auto refused = PartitionWriter::open(*whole);
  ::close(holder);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message().find("in use"), std::string::npos) << refused.error().message();
}

}  // namespace
}  // namespace tern::agent
