// Partitions of an A/B layout: where they are, which one is running, and how to write one.
//
// A partition is a byte range of a file: a block device (/dev/mmcblk0p3, offset 0) or a whole disk
// or disk image with the partition's start as offset (found with libfdisk, GPT or MBR). Tests use
// `sfdisk`-made image files; nothing here needs root or a loop device.
//
// Thread safety: free functions are thread-safe; a PartitionWriter is used by one thread at a time.
// Every call blocks on I/O (run it on a worker pool, never on the io_context thread).
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <stop_token>
#include <string>

#include "common/error.hpp"

namespace tern::agent {

struct PartitionRef {
  std::filesystem::path path;  ///< the file or device holding the partition
  std::uint64_t offset = 0;    ///< first byte of the partition within `path`
  std::uint64_t size = 0;      ///< length in bytes; 0: up to the end of `path`
  int number = 0;              ///< partition number on its disk (1-based), 0 if unknown
  std::string partuuid;        ///< GPT partition UUID or MBR "xxxxxxxx-NN", lower case; may be empty
  std::string label;           ///< GPT partition name; may be empty

  /// "disk.img partition 3 (offset 1048576, 16777216 bytes)" or "/dev/mmcblk0p3", for messages.
  std::string describe() const;
};

/// A device path (a file or block device) as a whole: offset 0, size = file size or BLKGETSIZE64.
/// A trailing partition number in the name (mmcblk0p3, sda3) fills `number`.
/// Errors: Errc::not_found (no such file), Errc::io (cannot stat or query the size).
Result<PartitionRef> partition_from_path(const std::filesystem::path& device);

/// A partition on a disk (an image file or block device) given as a number ("3") or a GPT
/// partition name ("rootfs-b"), read with libfdisk. Errors: Errc::io (unreadable disk or no
/// partition table), Errc::not_found (no such partition; the message lists the partitions found).
Result<PartitionRef> partition_on_disk(const std::filesystem::path& disk, const std::string& number_or_label);

/// One slot of the A/B pair, as the configuration names it.
struct SlotIdentity {
  PartitionRef partition;   ///< where it is (partuuid, label and number are used for matching)
  std::string device_name;  ///< how the running kernel names it ("/dev/mmcblk0p2"); may be empty
};

/// Where to look for the running root file system (files, so tests can simulate them).
struct ActiveDetect {
  std::filesystem::path cmdline = "/proc/cmdline";
  std::filesystem::path mountinfo = "/proc/self/mountinfo";
  /// For a "/" mounted from /dev/root: the kernel's name of its major:minor (MAJ:MIN/uevent).
  std::filesystem::path sys_dev_block = "/sys/dev/block";
};

/// Which slot is running: 0 for A, 1 for B. Reads `root=` from the kernel command line and matches
/// it, in order, against: the slot's device_name; PARTUUID=/PARTLABEL= against partuuid/label (or
/// through udev's /dev/disk/by-partuuid|by-partlabel links); the same existing device as
/// partition.path or device_name (symlinks resolved); the trailing partition number
/// ("/dev/sim-disk-p3", "/dev/sda3") against partition.number. A rule that matches both slots is
/// skipped. Without a usable root= (missing, /dev/root, or matching neither) the mount source of
/// "/" in mountinfo is tried the same way, then the kernel's name for its major:minor.
/// Errors: Errc::not_found naming what was found ("root=/dev/sdb1 matches neither slot").
Result<int> active_slot(const ActiveDetect& where, const SlotIdentity& a, const SlotIdentity& b);

/// Matches one root device string (a root= value or a mount source) against the slots: 0, 1, or
/// -1 for neither. Exposed for tests.
int match_root_device(const std::string& root, const SlotIdentity& a, const SlotIdentity& b);

struct PartitionWriterOptions {
  /// Dirty data is pushed to the device (sync_file_range) and dropped from the page cache
  /// (posix_fadvise DONTNEED) every this many bytes, so dirty memory stays bounded.
  std::uint64_t flush_every = 8u << 20;
  /// Position (relative to the partition start) of the first write: resumes an interrupted install.
  std::uint64_t start_at = 0;
};

/// Writes a partition sequentially with pwrite, never outside [offset, offset+size).
/// The file is opened O_WRONLY without O_CREAT or O_TRUNC: a missing partition is an error, and
/// neighbouring bytes of a disk image are never touched. A partition block device (offset 0) is
/// opened O_EXCL, so a mounted one (the running root) is refused.
class PartitionWriter {
 public:
  /// Errors: Errc::not_found / Errc::io naming the path; Errc::invalid_argument when the partition
  /// lies (partly) past the end of its file or start_at is past its end.
  static Result<PartitionWriter> open(const PartitionRef& part, PartitionWriterOptions options = {});

  PartitionWriter(PartitionWriter&& other) noexcept;
  PartitionWriter& operator=(PartitionWriter&& other) noexcept;
  PartitionWriter(const PartitionWriter&) = delete;
  PartitionWriter& operator=(const PartitionWriter&) = delete;
  ~PartitionWriter();

  /// Refuses (Errc::invalid_argument, nothing written) when `total` bytes from the current position
  /// would not fit: call it with the payload size before the first write.
  Result<void> check_fits(std::uint64_t total) const;
  /// Appends `data` at the current position. Refuses the whole write (nothing written) if it would
  /// pass the end of the partition. Errors: Errc::io naming the partition and position.
  Result<void> write(std::span<const std::uint8_t> data);
  /// Flushes everything written to stable storage (fdatasync). Call before the boot switch.
  Result<void> finish();
  /// Makes every byte written before the call durable (fdatasync) without touching the writer's
  /// state: the one call that may run on another thread while write() runs (resume checkpoints
  /// are synced beside the writer, so the pipeline never stalls on the disk cache flush).
  /// Errors: Errc::io naming the partition.
  Result<void> sync_written() const;

  /// Bytes written through this writer (not counting start_at).
  std::uint64_t bytes_written() const { return written_; }
  /// Current position relative to the partition start (start_at + bytes_written()).
  std::uint64_t position() const { return pos_; }
  /// Size of the partition in bytes.
  std::uint64_t capacity() const { return size_; }

 private:
  PartitionWriter(int fd, PartitionRef part, std::uint64_t size, PartitionWriterOptions options);
  void close_fd() noexcept;
  Result<void> flush_window();

  int fd_ = -1;
  PartitionRef part_;
  std::uint64_t size_ = 0;
  PartitionWriterOptions options_;
  std::uint64_t pos_ = 0;
  std::uint64_t written_ = 0;
  std::uint64_t flushed_to_ = 0;  ///< writeback started up to here
  std::uint64_t waited_to_ = 0;   ///< written back and dropped from the page cache up to here
};

/// Hex SHA-256 of the first `length` bytes of the partition, read from the storage (not the page
/// cache). Errors: Errc::invalid_argument when `length` exceeds the partition; Errc::io naming the
/// path; Errc::cancelled when `stop` is requested (checked between reads).
Result<std::string> sha256_of(const PartitionRef& part, std::uint64_t length, std::stop_token stop = {});

}  // namespace tern::agent
