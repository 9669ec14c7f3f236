// Small-file helpers shared by the agent, the bridge and the tools: one reader, one durable writer,
// one descriptor guard. All of them block on I/O: the daemons call them off their io threads.
#pragma once

#include "common/error.hpp"

#include <filesystem>
#include <string>
#include <string_view>

namespace tern {

/// Owns a file descriptor and closes it on destruction (or reset()).
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  /// Gives the descriptor up without closing it.
  int release() noexcept {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  /// Closes the current descriptor (if any) and takes `fd`.
  void reset(int fd = -1) noexcept;

 private:
  int fd_ = -1;
};

/// Reads a whole file. `max_size` bounds what is read (0: no bound). Errors: Errc::io naming the
/// path (missing, unreadable), Errc::invalid_argument when the file is larger than `max_size`.
Result<std::string> read_file(const std::filesystem::path& path, std::size_t max_size = 0);

/// Reads the first `bytes` bytes of a file (fewer when the file is shorter). Errors: Errc::io naming
/// the path.
Result<std::string> read_head(const std::filesystem::path& path, std::size_t bytes);

/// Replaces `path` with `content` atomically and durably: a temporary beside it, fsync, rename,
/// fsync of the directory. A power cut at any instant leaves the old or the new file, never a torn
/// one. Errors: Errc::io naming the step and the path.
Result<void> write_file_atomic(const std::filesystem::path& path, std::string_view content);

}  // namespace tern
