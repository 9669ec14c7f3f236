#include "agent/boot/partitions.hpp"

#include "common/file.hpp"

#include <fcntl.h>
#include <libfdisk/libfdisk.h>
#include <linux/fs.h>
#include <openssl/evp.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <memory>
#include <sstream>
#include <utility>
#include <thread>
#include <vector>

namespace tern::agent {

namespace fs = std::filesystem;

namespace {

Error io_error(const std::string& what, int err) {
  return fail(err == ENOENT ? Errc::not_found : Errc::io, what + ": " + std::strerror(err));
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

/// Size in bytes of an open regular file or block device.
Result<std::uint64_t> size_of_fd(int fd, const fs::path& path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return io_error("stat " + path.string(), errno);
  if (S_ISBLK(st.st_mode)) {
    std::uint64_t bytes = 0;
    if (::ioctl(fd, BLKGETSIZE64, &bytes) != 0) return io_error("BLKGETSIZE64 on " + path.string(), errno);
    return bytes;
  }
  if (S_ISREG(st.st_mode)) return static_cast<std::uint64_t>(st.st_size);
  return fail(Errc::invalid_argument, path.string() + " is neither a regular file nor a block device");
}

/// The partition's byte length: its size, or what remains of the file after its offset. Checks
/// that the partition lies within the file.
Result<std::uint64_t> resolve_size(int fd, const PartitionRef& part) {
  auto file_size = size_of_fd(fd, part.path);
  if (!file_size) return file_size.error();
  if (part.offset > *file_size)
    return fail(Errc::invalid_argument, part.describe() + " starts past the end of " + part.path.string() +
                                            " (" + std::to_string(*file_size) + " bytes)");
  if (part.size == 0) return *file_size - part.offset;
  if (part.size > *file_size - part.offset)
    return fail(Errc::invalid_argument, part.describe() + " extends past the end of " + part.path.string() +
                                            " (" + std::to_string(*file_size) + " bytes)");
  return part.size;
}

/// The number at the end of a partition device name: mmcblk0p3 -> 3, sda3 -> 3, sim-disk-p2 -> 2;
/// 0 for whole-disk names (mmcblk0, nvme0n1, loop0).
int trailing_partition_number(std::string_view name) {
  if (auto slash = name.rfind('/'); slash != std::string_view::npos) name.remove_prefix(slash + 1);
  std::size_t end = name.size();
  std::size_t start = end;
  while (start > 0 && std::isdigit(static_cast<unsigned char>(name[start - 1]))) --start;
  if (start == end || start == 0) return 0;
  int n = 0;
  std::from_chars(name.data() + start, name.data() + end, n);
  if (name[start - 1] == 'p') return n;  // mmcblk0p3, nvme0n1p3, loop0p3, sim-disk-p3
  // sda3, vdb2, hda1, xvda2: a letter right before the digits and a disk-style prefix.
  for (std::string_view prefix : {"sd", "vd", "hd", "xvd"}) {
    if (name.substr(0, prefix.size()) == prefix && std::isalpha(static_cast<unsigned char>(name[start - 1])))
      return n;
  }
  return 0;
}

struct ContextDeleter {
  void operator()(fdisk_context* c) const noexcept { fdisk_unref_context(c); }
};
struct TableDeleter {
  void operator()(fdisk_table* t) const noexcept { fdisk_unref_table(t); }
};
struct IterDeleter {
  void operator()(fdisk_iter* i) const noexcept { fdisk_free_iter(i); }
};
struct FreeDeleter {
  void operator()(char* p) const noexcept { std::free(p); }
};

std::string read_small_file(const fs::path& p, bool& ok) {
  auto text = read_file(p, 1u << 20);
  ok = static_cast<bool>(text);
  return text ? std::move(*text) : std::string();
}

/// The value of `root=` in a kernel command line, or "" if there is none.
std::string root_from_cmdline(const std::string& cmdline) {
  std::istringstream words(cmdline);
  std::string root;
  for (std::string w; words >> w;) {
    if (w.rfind("root=", 0) == 0) root = w.substr(5);  // the last one wins, as in the kernel
  }
  return root;
}

/// The mount source and major:minor of "/" in a mountinfo text (the last mount on "/" wins).
struct RootMount {
  std::string source;
  std::string major_minor;
};
RootMount root_from_mountinfo(const std::string& text) {
  RootMount found;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream words(line);
    std::vector<std::string> w;
    for (std::string word; words >> word;) w.push_back(word);
    // id parent major:minor root mount-point options [optional...] - fstype source super-options
    if (w.size() < 7 || w[4] != "/") continue;
    auto dash = std::find(w.begin() + 6, w.end(), "-");
    if (dash == w.end() || std::distance(dash, w.end()) < 3) continue;
    found.source = *(dash + 2);
    found.major_minor = w[2];
  }
  return found;
}

std::string slot_name(int index) {
  return index == 0 ? "A" : "B";
}

}  // namespace

std::string PartitionRef::describe() const {
  std::string d = path.string();
  if (number > 0 && offset > 0) d += " partition " + std::to_string(number);
  if (!label.empty()) d += " \"" + label + "\"";
  if (offset > 0 || size > 0)
    d += " (offset " + std::to_string(offset) + ", " +
         (size ? std::to_string(size) + " bytes" : "to the end") + ")";
  return d;
}

Result<PartitionRef> partition_from_path(const fs::path& device) {
  int fd = ::open(device.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return io_error("opening partition " + device.string(), errno);
  UniqueFd guard(fd);
  auto size = size_of_fd(fd, device);
  if (!size) return size.error();
  PartitionRef ref;
  ref.path = device;
  ref.size = *size;
  ref.number = trailing_partition_number(device.string());
  // A block device knows its own partition number (/dev/disk/by-label/... names do not show it).
  struct stat st {};
  if (::fstat(fd, &st) == 0 && S_ISBLK(st.st_mode)) {
    bool ok = false;
    std::string n = read_small_file("/sys/dev/block/" + std::to_string(major(st.st_rdev)) + ":" +
                                        std::to_string(minor(st.st_rdev)) + "/partition",
                                    ok);
    int number = 0;
    if (ok && std::from_chars(n.data(), n.data() + n.size(), number).ec == std::errc() && number > 0)
      ref.number = number;
  }
  return ref;
}

Result<PartitionRef> partition_on_disk(const fs::path& disk, const std::string& number_or_label) {
  const std::string what = "finding partition '" + number_or_label + "' on " + disk.string();
  if (number_or_label.empty()) return fail(Errc::invalid_argument, what + ": empty partition name");
  if (::access(disk.c_str(), R_OK) != 0) return io_error(what, errno);

  std::unique_ptr<fdisk_context, ContextDeleter> cxt(fdisk_new_context());
  if (!cxt) return fail(Errc::io, what + ": fdisk_new_context failed");
  if (int rc = fdisk_assign_device(cxt.get(), disk.c_str(), 1); rc < 0)
    return io_error(what + ": reading the disk", -rc);
  if (!fdisk_has_label(cxt.get())) return fail(Errc::io, what + ": no partition table");

  const bool is_gpt = fdisk_is_label(cxt.get(), GPT);
  const bool is_dos = fdisk_is_label(cxt.get(), DOS);
  const std::uint64_t sector = fdisk_get_sector_size(cxt.get());

  // MBR partitions have no UUID of their own; Linux names them "<disk id>-<NN>".
  std::string dos_id;
  if (is_dos) {
    char* raw = nullptr;
    if (fdisk_get_disklabel_id(cxt.get(), &raw) == 0 && raw) {
      std::unique_ptr<char, FreeDeleter> id(raw);
      std::string s = lower(raw);
      if (s.rfind("0x", 0) == 0) s = s.substr(2);
      dos_id = s;
    }
  }

  fdisk_table* raw_table = nullptr;
  if (int rc = fdisk_get_partitions(cxt.get(), &raw_table); rc < 0)
    return io_error(what + ": reading the partition table", -rc);
  std::unique_ptr<fdisk_table, TableDeleter> table(raw_table);
  std::unique_ptr<fdisk_iter, IterDeleter> iter(fdisk_new_iter(FDISK_ITER_FORWARD));

  int wanted_number = 0;
  {
    auto [end, ec] = std::from_chars(number_or_label.data(), number_or_label.data() + number_or_label.size(),
                                     wanted_number);
    if (ec != std::errc() || end != number_or_label.data() + number_or_label.size()) wanted_number = 0;
  }

  std::string seen;
  fdisk_partition* pa = nullptr;
  while (fdisk_table_next_partition(table.get(), iter.get(), &pa) == 0) {
    if (!fdisk_partition_has_partno(pa) || !fdisk_partition_has_start(pa) || !fdisk_partition_has_size(pa))
      continue;
    if (fdisk_partition_is_container(pa)) continue;
    PartitionRef ref;
    ref.path = disk;
    ref.number = static_cast<int>(fdisk_partition_get_partno(pa)) + 1;
    ref.offset = static_cast<std::uint64_t>(fdisk_partition_get_start(pa)) * sector;
    ref.size = static_cast<std::uint64_t>(fdisk_partition_get_size(pa)) * sector;
    if (is_gpt) {
      if (const char* name = fdisk_partition_get_name(pa)) ref.label = name;
      if (const char* uuid = fdisk_partition_get_uuid(pa)) ref.partuuid = lower(uuid);
    } else if (!dos_id.empty()) {
      char suffix[8];
      std::snprintf(suffix, sizeof suffix, "-%02d", ref.number);
      ref.partuuid = dos_id + suffix;
    }
    seen += (seen.empty() ? "" : ", ") + std::to_string(ref.number);
    if (!ref.label.empty()) seen += " \"" + ref.label + "\"";
    if ((wanted_number > 0 && ref.number == wanted_number) ||
        (!ref.label.empty() && ref.label == number_or_label))
      return ref;
  }
  return fail(Errc::not_found, what + ": no such partition (found: " + (seen.empty() ? "none" : seen) + ")");
}

int match_root_device(const std::string& root, const SlotIdentity& a, const SlotIdentity& b) {
  if (root.empty()) return -1;
  const SlotIdentity* slots[2] = {&a, &b};
  // Each rule in turn; a rule that matches both slots tells nothing.
  auto decide = [](bool ma, bool mb) { return ma == mb ? -1 : (ma ? 0 : 1); };

  int r = decide(!a.device_name.empty() && a.device_name == root,
                 !b.device_name.empty() && b.device_name == root);
  if (r >= 0) return r;

  auto tagged = [&](std::string_view tag, auto field) {
    if (root.rfind(tag, 0) != 0) return -1;
    std::string v = lower(root.substr(tag.size()));
    bool m[2];
    for (int i = 0; i < 2; ++i) {
      std::string have = lower(field(*slots[i]));
      m[i] = !have.empty() && have == v;
    }
    return decide(m[0], m[1]);
  };
  // The same device through another name: a symlink, or udev's /dev/disk/by-part* links for
  // slots configured as device paths (whose PARTUUID we do not read).
  auto same_device = [&](const fs::path& name) {
    std::error_code ec;
    if (!fs::exists(name, ec)) return -1;
    bool m[2];
    for (int i = 0; i < 2; ++i) {
      std::error_code ec2;
      const auto& p = slots[i]->partition;
      m[i] = p.offset == 0 && !p.path.empty() && fs::equivalent(name, p.path, ec2) && !ec2;
      if (!m[i] && !slots[i]->device_name.empty())
        m[i] = fs::equivalent(name, slots[i]->device_name, ec2) && !ec2;
    }
    return decide(m[0], m[1]);
  };

  if (root.rfind("PARTUUID=", 0) == 0) {
    r = tagged("PARTUUID=", [](const SlotIdentity& s) { return s.partition.partuuid; });
    return r >= 0 ? r : same_device("/dev/disk/by-partuuid/" + lower(root.substr(9)));
  }
  if (root.rfind("PARTLABEL=", 0) == 0) {
    // Labels are case-sensitive in GPT, but no two slots differ by case alone in practice.
    r = tagged("PARTLABEL=", [](const SlotIdentity& s) { return s.partition.label; });
    return r >= 0 ? r : same_device("/dev/disk/by-partlabel/" + root.substr(10));
  }

  if (root[0] == '/') {
    r = same_device(root);
    if (r >= 0) return r;
  }

  // Last: the partition number at the end of the name.
  int n = trailing_partition_number(root);
  if (n > 0) return decide(a.partition.number == n, b.partition.number == n);
  return -1;
}

Result<int> active_slot(const ActiveDetect& where, const SlotIdentity& a, const SlotIdentity& b) {
  std::string found;
  bool ok = false;
  std::string cmdline = read_small_file(where.cmdline, ok);
  if (ok) {
    std::string root = root_from_cmdline(cmdline);
    if (!root.empty() && root != "/dev/root") {
      int r = match_root_device(root, a, b);
      if (r >= 0) return r;
    }
    found = "root=" + (root.empty() ? std::string("(none)") : root) + " in " + where.cmdline.string();
  } else {
    found = where.cmdline.string() + " unreadable";
  }

  std::string mountinfo = read_small_file(where.mountinfo, ok);
  if (ok) {
    RootMount mount = root_from_mountinfo(mountinfo);
    int r = match_root_device(mount.source, a, b);
    if (r >= 0) return r;
    // "/dev/root" says nothing; the kernel's name for major:minor does.
    if (!mount.major_minor.empty()) {
      std::string uevent = read_small_file(where.sys_dev_block / mount.major_minor / "uevent", ok);
      if (ok) {
        std::istringstream lines(uevent);
        for (std::string line; std::getline(lines, line);) {
          if (line.rfind("DEVNAME=", 0) == 0) {
            std::string dev = "/dev/" + line.substr(8);
            r = match_root_device(dev, a, b);
            if (r >= 0) return r;
            mount.source += " (" + dev + ")";
          }
        }
      }
    }
    found += "; / mounted from " + (mount.source.empty() ? std::string("(not found)") : mount.source) +
             " in " + where.mountinfo.string();
  } else {
    found += "; " + where.mountinfo.string() + " unreadable";
  }
  auto slot_desc = [](int i, const SlotIdentity& s) {
    std::string d = slot_name(i) + " (" + (s.device_name.empty() ? s.partition.describe() : s.device_name);
    if (!s.partition.partuuid.empty()) d += ", PARTUUID=" + s.partition.partuuid;
    return d + ")";
  };
  return fail(Errc::not_found, "finding the running partition: " + found + " matches neither " +
                                   slot_desc(0, a) + " nor " + slot_desc(1, b));
}

// ---------------------------------------------------------------------------------------------
// PartitionWriter

PartitionWriter::PartitionWriter(int fd, PartitionRef part, std::uint64_t size,
                                 PartitionWriterOptions options)
    : fd_(fd),
      part_(std::move(part)),
      size_(size),
      options_(options),
      pos_(options.start_at),
      flushed_to_(options.start_at),
      waited_to_(options.start_at) {}

PartitionWriter::PartitionWriter(PartitionWriter&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      part_(std::move(other.part_)),
      size_(other.size_),
      options_(other.options_),
      pos_(other.pos_),
      written_(other.written_),
      flushed_to_(other.flushed_to_),
      waited_to_(other.waited_to_) {}

PartitionWriter& PartitionWriter::operator=(PartitionWriter&& other) noexcept {
  if (this != &other) {
    close_fd();
    fd_ = std::exchange(other.fd_, -1);
    part_ = std::move(other.part_);
    size_ = other.size_;
    options_ = other.options_;
    pos_ = other.pos_;
    written_ = other.written_;
    flushed_to_ = other.flushed_to_;
    waited_to_ = other.waited_to_;
  }
  return *this;
}

PartitionWriter::~PartitionWriter() {
  close_fd();
}

void PartitionWriter::close_fd() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

Result<PartitionWriter> PartitionWriter::open(const PartitionRef& part, PartitionWriterOptions options) {
  const std::string what = "opening " + part.describe() + " for writing";
  // No O_CREAT, no O_TRUNC: a missing partition is an error, and a disk image keeps its other bytes.
  // O_EXCL (honoured for block devices only) refuses a partition device that is mounted: never the
  // running root file system. Not for a partition given as a range of a whole disk, whose other
  // partitions are mounted by design.
  const int excl = part.offset == 0 ? O_EXCL : 0;
  int fd = ::open(part.path.c_str(), O_WRONLY | O_CLOEXEC | excl);
  if (fd < 0 && errno == EBUSY) return fail(Errc::io, what + ": the device is in use (mounted?)");
  if (fd < 0) return io_error(what, errno);
  UniqueFd guard(fd);
  auto size = resolve_size(fd, part);
  if (!size) return size.error().context(what);
  if (options.start_at > *size)
    return fail(Errc::invalid_argument, what + ": resume position " + std::to_string(options.start_at) +
                                            " is past the end (" + std::to_string(*size) + " bytes)");
  if (options.flush_every == 0) options.flush_every = 8u << 20;
  return PartitionWriter(guard.release(), part, *size, options);
}

Result<void> PartitionWriter::check_fits(std::uint64_t total) const {
  if (total > size_ - pos_)
    return fail(Errc::invalid_argument, "payload of " + std::to_string(total) + " bytes does not fit in " +
                                            part_.describe() + ": " + std::to_string(size_ - pos_) +
                                            " bytes left of " + std::to_string(size_));
  return {};
}

Result<void> PartitionWriter::write(std::span<const std::uint8_t> data) {
  if (fd_ < 0) return fail(Errc::internal, "writing " + part_.describe() + ": writer is closed");
  if (data.size() > size_ - pos_)
    return fail(Errc::invalid_argument, "writing " + std::to_string(data.size()) + " bytes at position " +
                                            std::to_string(pos_) + " would pass the end of " +
                                            part_.describe() + " (" + std::to_string(size_) + " bytes)");
  const std::uint8_t* p = data.data();
  std::size_t left = data.size();
  while (left > 0) {
    ssize_t n = ::pwrite(fd_, p, left, static_cast<off_t>(part_.offset + pos_));
    if (n < 0) {
      if (errno == EINTR) continue;
      return io_error("writing " + part_.describe() + " at position " + std::to_string(pos_), errno);
    }
    if (n == 0) return fail(Errc::io, "writing " + part_.describe() + ": device accepted no bytes");
    p += n;
    left -= static_cast<std::size_t>(n);
    pos_ += static_cast<std::uint64_t>(n);
    written_ += static_cast<std::uint64_t>(n);
  }
  if (pos_ - flushed_to_ >= options_.flush_every) return flush_window();
  return {};
}

// Two windows in flight at most: start writeback of the newest window, then wait for the one before
// it and drop it from the page cache. The device stays busy while dirty memory stays near
// 2 x flush_every, whatever the image size.
Result<void> PartitionWriter::flush_window() {
  const off_t base = static_cast<off_t>(part_.offset);
  if (::sync_file_range(fd_, base + static_cast<off_t>(flushed_to_), static_cast<off_t>(pos_ - flushed_to_),
                        SYNC_FILE_RANGE_WRITE) != 0)
    return io_error("flushing " + part_.describe(), errno);
  if (flushed_to_ > waited_to_) {
    const off_t len = static_cast<off_t>(flushed_to_ - waited_to_);
    if (::sync_file_range(fd_, base + static_cast<off_t>(waited_to_), len,
                          SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) !=
        0)
      return io_error("flushing " + part_.describe(), errno);
    ::posix_fadvise(fd_, base + static_cast<off_t>(waited_to_), len, POSIX_FADV_DONTNEED);
    waited_to_ = flushed_to_;
  }
  flushed_to_ = pos_;
  return {};
}

Result<void> PartitionWriter::finish() {
  if (fd_ < 0) return fail(Errc::internal, "syncing " + part_.describe() + ": writer is closed");
  if (::fdatasync(fd_) != 0) return io_error("syncing " + part_.describe(), errno);
  const off_t base = static_cast<off_t>(part_.offset);
  if (pos_ > waited_to_)
    ::posix_fadvise(fd_, base + static_cast<off_t>(waited_to_), static_cast<off_t>(pos_ - waited_to_),
                    POSIX_FADV_DONTNEED);
  waited_to_ = flushed_to_ = pos_;
  return {};
}

Result<void> PartitionWriter::sync_written() const {
  if (fd_ < 0) return fail(Errc::internal, "syncing " + part_.describe() + ": writer is closed");
  if (::fdatasync(fd_) != 0) return io_error("syncing " + part_.describe(), errno);
  return {};
}

Result<std::string> sha256_of(const PartitionRef& part, std::uint64_t length, std::stop_token stop) {
  const std::string what = "hashing " + part.describe();
  int fd = ::open(part.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return io_error(what, errno);
  UniqueFd guard(fd);
  auto size = resolve_size(fd, part);
  if (!size) return size.error().context(what);
  if (length > *size)
    return fail(Errc::invalid_argument, what + ": " + std::to_string(length) +
                                            " bytes requested, partition has " + std::to_string(*size));
  // Drop cached pages first, so the hash is over what the storage holds, not over the page cache.
  ::posix_fadvise(fd, static_cast<off_t>(part.offset), static_cast<off_t>(length), POSIX_FADV_DONTNEED);
  ::posix_fadvise(fd, static_cast<off_t>(part.offset), static_cast<off_t>(length), POSIX_FADV_SEQUENTIAL);

  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> md(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!md || EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr) != 1)
    return fail(Errc::internal, what + ": EVP_DigestInit failed");
  std::vector<std::uint8_t> buf(1u << 20);
  // Test hook: a deliberately slow partition, milliseconds per MiB read (the daemon tests show the
  // MQTT session does not notice a slow read-back). Never set outside tests.
  long slow_ms = 0;
  if (const char* slow = std::getenv("TERN_TEST_SLOW_READ_MS_PER_MIB")) slow_ms = std::atol(slow);
  std::uint64_t done = 0;
  while (done < length) {
    if (stop.stop_requested()) return fail(Errc::cancelled, what + ": stopped at position " + std::to_string(done));
    if (slow_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(slow_ms));
    std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), length - done));
    ssize_t n = ::pread(fd, buf.data(), want, static_cast<off_t>(part.offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return io_error(what + " at position " + std::to_string(done), errno);
    }
    if (n == 0) return fail(Errc::io, what + ": unexpected end of file at position " + std::to_string(done));
    EVP_DigestUpdate(md.get(), buf.data(), static_cast<std::size_t>(n));
    done += static_cast<std::uint64_t>(n);
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  EVP_DigestFinal_ex(md.get(), digest, &digest_len);
  static const char* hexdigits = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < digest_len; ++i) {
    out += hexdigits[digest[i] >> 4];
    out += hexdigits[digest[i] & 15];
  }
  return out;
}

}  // namespace tern::agent
