#include "common/file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

namespace tern {

void UniqueFd::reset(int fd) noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

Result<std::string> read_file(const std::filesystem::path& path, std::size_t max_size) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Error::from_errno("reading " + path.string(), errno);
  struct stat st {};
  std::string out;
  if (::fstat(fd.get(), &st) == 0 && S_ISREG(st.st_mode)) {
    if (max_size && static_cast<std::uint64_t>(st.st_size) > max_size)
      return fail(Errc::invalid_argument, path.string() + " is " + std::to_string(st.st_size) +
                                              " bytes, more than the " + std::to_string(max_size) + " expected");
    out.reserve(static_cast<std::size_t>(st.st_size));
  }
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::from_errno("reading " + path.string(), errno);
    if (n == 0) break;
    out.append(buf, static_cast<std::size_t>(n));
    if (max_size && out.size() > max_size)
      return fail(Errc::invalid_argument, path.string() + " is larger than the " + std::to_string(max_size) +
                                              " bytes expected");
  }
  return out;
}

Result<std::string> read_head(const std::filesystem::path& path, std::size_t bytes) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Error::from_errno("reading " + path.string(), errno);
  std::string out(bytes, '\0');
  std::size_t got = 0;
  while (got < bytes) {
    ssize_t n = ::read(fd.get(), out.data() + got, bytes - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::from_errno("reading " + path.string(), errno);
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  out.resize(got);
  return out;
}

Result<void> write_file_atomic(const std::filesystem::path& path, std::string_view content) {
  auto tmp = path;
  tmp += ".tmp";
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd) return Error::from_errno("creating " + tmp.string(), errno);
  std::size_t done = 0;
  while (done < content.size()) {
    auto n = ::write(fd.get(), content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::from_errno("writing " + tmp.string(), errno);
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return Error::from_errno("syncing " + tmp.string(), errno);
  fd.reset();
  if (::rename(tmp.c_str(), path.c_str()) != 0) return Error::from_errno("renaming " + tmp.string(), errno);
  auto parent = path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path();
  UniqueFd dir(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir) return Error::from_errno("opening " + parent.string(), errno);
  if (::fsync(dir.get()) != 0) return Error::from_errno("syncing " + parent.string(), errno);
  return {};
}

}  // namespace tern
