#include "agent/boot/bootenv.hpp"

#include <fcntl.h>
#include <libuboot.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstddef>  // libuboot.h uses size_t without including it
#include <cstdio>
#include <cstring>
#include <sstream>

#include "common/process.hpp"

namespace tern::agent {

namespace fs = std::filesystem;

namespace {

Error io_error(const std::string& what, int err) {
  return fail(err == ENOENT ? Errc::not_found : Errc::io, what + ": " + std::strerror(err));
}

/// libubootenv returns negative errno values.
Error uboot_error(const std::string& what, int rc) {
  return io_error(what, rc < 0 ? -rc : EIO);
}

Result<void> check_var(const std::string& name, const std::string& value) {
  if (name.empty() || name.find_first_of("= \t\n") != std::string::npos)
    return fail(Errc::invalid_argument, "invalid variable name '" + name + "'");
  if (value.find('\n') != std::string::npos || value.find('\0') != std::string::npos)
    return fail(Errc::invalid_argument, "value of " + name + " contains a newline or NUL");
  return {};
}

/// Numbers as fw_env.config readers (U-Boot's fw_env and libubootenv) scan them: the offset with
/// C's base prefixes (%lli: 0x hex, leading 0 octal, else decimal), sizes always in hex (%lx),
/// with or without 0x.
Result<std::uint64_t> parse_number(std::string_view word, std::string_view what, bool always_hex) {
  std::uint64_t v = 0;
  int base = always_hex ? 16 : 10;
  std::string_view digits = word;
  if (digits.size() > 2 && digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'X')) {
    base = 16;
    digits.remove_prefix(2);
  } else if (!always_hex && digits.size() > 1 && digits[0] == '0') {
    base = 8;
    digits.remove_prefix(1);
  }
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v, base);
  if (ec != std::errc() || end != digits.data() + digits.size() || digits.empty())
    return fail(Errc::invalid_argument, std::string(what) + " '" + std::string(word) + "' is not a number");
  return v;
}

std::string hex(std::uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string config_text(const UBootEnvConfig& c) {
  auto line = [&](const std::string& dev, std::uint64_t off) {
    std::string l = dev + " " + hex(off) + " " + hex(c.size);
    if (c.sector_size) l += " " + hex(c.sector_size);
    return l + "\n";
  };
  std::string text = line(c.device1, c.offset1);
  if (!c.device2.empty()) text += line(c.device2, c.offset2);
  return text;
}

std::string describe_config(const UBootEnvConfig& c) {
  std::string d = "u-boot env " + c.device1 + "@" + hex(c.offset1);
  if (!c.device2.empty()) d += " + " + c.device2 + "@" + hex(c.offset2);
  return d;
}

struct CtxDeleter {
  void operator()(uboot_ctx* ctx) const noexcept { libuboot_exit(ctx); }
};
using CtxPtr = std::unique_ptr<uboot_ctx, CtxDeleter>;

/// Closes an opened environment: releases libubootenv's lock (/var/lock/fw_printenv.lock, shared with
/// fw_setenv) and frees the variable list, keeping the context.
struct OpenGuard {
  uboot_ctx* ctx;
  ~OpenGuard() { libuboot_close(ctx); }
};

class UBootEnv final : public BootEnv {
 public:
  UBootEnv(CtxPtr ctx, std::string description)
      : ctx_(std::move(ctx)), description_(std::move(description)) {}

  Result<std::map<std::string, std::string>> read() override {
    // libuboot_open takes a file lock even when it fails: always close (which unlocks).
    OpenGuard guard{ctx_.get()};
    if (int rc = libuboot_open(ctx_.get()); rc < 0)
      return uboot_error("reading " + description_ + ": no valid copy", rc);
    std::map<std::string, std::string> vars;
    for (void* e = libuboot_iterator(ctx_.get(), nullptr); e; e = libuboot_iterator(ctx_.get(), e)) {
      const char* name = libuboot_getname(e);
      const char* value = libuboot_getvalue(e);
      if (name) vars.emplace(name, value ? value : "");
    }
    return vars;
  }

  Result<void> write(const std::map<std::string, std::string>& vars) override {
    for (const auto& [name, value] : vars) {
      if (auto ok = check_var(name, value); !ok) return ok.error().context("writing " + description_);
    }
    // Start from what is stored now: the store writes the whole environment to the other copy,
    // so variables we do not name must come along unchanged.
    OpenGuard guard{ctx_.get()};
    if (int rc = libuboot_open(ctx_.get()); rc < 0)
      return uboot_error("writing " + description_ + ": reading the current environment", rc);
    for (const auto& [name, value] : vars) {
      int rc = libuboot_set_env(ctx_.get(), name.c_str(), value.empty() ? nullptr : value.c_str());
      if (rc < 0) return uboot_error("writing " + description_ + ": setting " + name, rc);
    }
    if (int rc = libuboot_env_store(ctx_.get()); rc < 0) {
      if (rc == -ENOMEM)
        return fail(Errc::invalid_argument,
                    "writing " + description_ + ": the variables do not fit in the environment");
      return uboot_error("writing " + description_ + ": storing", rc);
    }
    return {};
  }

  std::string describe() const override { return description_; }

 private:
  CtxPtr ctx_;
  std::string description_;
};

/// Opens libubootenv on a configuration file path (a real file or /proc/self/fd/N).
Result<std::unique_ptr<BootEnv>> open_with_config(const std::string& config_path, std::string description) {
  uboot_ctx* raw = nullptr;
  if (int rc = libuboot_initialize(&raw, nullptr); rc < 0 || !raw)
    return uboot_error("opening " + description + ": initialising libubootenv", rc);
  CtxPtr ctx(raw);
  if (int rc = libuboot_read_config(ctx.get(), config_path.c_str()); rc < 0)
    return uboot_error("opening " + description + ": libubootenv rejected the configuration", rc);
  return std::unique_ptr<BootEnv>(new UBootEnv(std::move(ctx), std::move(description)));
}

Result<void> check_exists(const std::string& device, const std::string& description) {
  if (::access(device.c_str(), R_OK | W_OK) != 0)
    return io_error("opening " + description + ": " + device, errno);
  return {};
}

// grub-editenv rewrites a 1 KiB file: anything near this means a hung file system.
constexpr std::chrono::seconds grub_editenv_timeout{30};

class GrubEnv final : public BootEnv {
 public:
  explicit GrubEnv(fs::path file) : file_(std::move(file)) {}

  Result<std::map<std::string, std::string>> read() override {
    auto out = run_program({"grub-editenv", file_.string(), "list"}, {.timeout = grub_editenv_timeout});
    if (!out) return out.error().context("reading grub env " + file_.string());
    if (out->exit_code != 0)
      return fail(Errc::io, "reading grub env " + file_.string() + ": grub-editenv: " + out->output);
    std::map<std::string, std::string> vars;
    std::istringstream lines(out->output);
    for (std::string line; std::getline(lines, line);) {
      auto eq = line.find('=');
      if (eq == std::string::npos || eq == 0) continue;
      vars[line.substr(0, eq)] = line.substr(eq + 1);
    }
    return vars;
  }

  Result<void> write(const std::map<std::string, std::string>& vars) override {
    const std::string what = "writing grub env " + file_.string();
    std::vector<std::string> set{"grub-editenv", "", "set"};
    std::vector<std::string> unset{"grub-editenv", "", "unset"};
    for (const auto& [name, value] : vars) {
      if (auto ok = check_var(name, value); !ok) return ok.error().context(what);
      if (value.empty())
        unset.push_back(name);
      else
        set.push_back(name + "=" + value);
    }
    // grub-editenv changes one file per call: apply everything to a copy and rename it over the
    // original, so a power cut leaves either the old or the new block.
    fs::path tmp = file_;
    tmp += ".tern-tmp";
    std::error_code ec;
    fs::copy_file(file_, tmp, fs::copy_options::overwrite_existing, ec);
    if (ec)
      return fail(ec == std::errc::no_such_file_or_directory ? Errc::not_found : Errc::io,
                  what + ": copying to " + tmp.string() + ": " + ec.message());
    auto cleanup = [&] {
      std::error_code ignored;
      fs::remove(tmp, ignored);
    };
    for (auto* cmd : {&set, &unset}) {
      if (cmd->size() == 3) continue;
      (*cmd)[1] = tmp.string();
      auto out = run_program(*cmd, {.timeout = grub_editenv_timeout});
      if (!out || out->exit_code != 0) {
        cleanup();
        return fail(Errc::io, what + ": grub-editenv " + (*cmd)[2] + ": " +
                                  (out ? out->output : out.error().message()));
      }
    }
    if (auto ok = sync_path(tmp); !ok) {
      cleanup();
      return ok.error().context(what);
    }
    if (::rename(tmp.c_str(), file_.c_str()) != 0) {
      int err = errno;
      cleanup();
      return io_error(what + ": renaming " + tmp.string(), err);
    }
    fs::path dir = file_.parent_path().empty() ? fs::path(".") : file_.parent_path();
    if (auto ok = sync_path(dir, O_DIRECTORY); !ok) return ok.error().context(what);
    return {};
  }

  std::string describe() const override { return "grub env " + file_.string(); }

 private:
  static Result<void> sync_path(const fs::path& p, int extra_flags = 0) {
    int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC | extra_flags);
    if (fd < 0) return io_error("opening " + p.string(), errno);
    int rc = ::fsync(fd);
    int err = errno;
    ::close(fd);
    if (rc != 0) return io_error("syncing " + p.string(), err);
    return {};
  }

  fs::path file_;
};

}  // namespace

Result<UBootEnvConfig> parse_fw_env_config(std::string_view text, std::string_view origin) {
  UBootEnvConfig config;
  int copies = 0;
  int line_no = 0;
  std::istringstream lines{std::string(text)};
  for (std::string line; std::getline(lines, line);) {
    ++line_no;
    if (auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream words(line);
    std::vector<std::string> w;
    for (std::string word; words >> word;) w.push_back(word);
    if (w.empty()) continue;
    auto where = [&] { return std::string(origin) + " line " + std::to_string(line_no); };
    if (w.size() < 3 || w.size() > 5)
      return fail(Errc::invalid_argument,
                  where() + ": expected 'DEVICE OFFSET SIZE [SECTOR_SIZE [SECTORS]]'");
    if (copies == 2) return fail(Errc::invalid_argument, where() + ": more than two environment copies");
    if (!w[1].empty() && w[1][0] == '-')
      return fail(Errc::invalid_argument, where() + ": negative offsets are not supported");
    auto offset = parse_number(w[1], "offset", false);
    auto size = parse_number(w[2], "size", true);
    if (!offset) return offset.error().context(where());
    if (!size) return size.error().context(where());
    std::uint64_t sector = 0;
    if (w.size() >= 4) {
      auto s = parse_number(w[3], "sector size", true);
      if (!s) return s.error().context(where());
      sector = *s;
    }
    if (copies == 0) {
      config.device1 = w[0];
      config.offset1 = *offset;
      config.size = *size;
      config.sector_size = sector;
    } else {
      if (*size != config.size)
        return fail(Errc::invalid_argument, where() + ": both copies must have the same size");
      config.device2 = w[0];
      config.offset2 = *offset;
    }
    ++copies;
  }
  if (copies == 0) return fail(Errc::invalid_argument, std::string(origin) + ": no environment device");
  if (config.size == 0) return fail(Errc::invalid_argument, std::string(origin) + ": size is 0");
  return config;
}

Result<std::unique_ptr<BootEnv>> open_uboot_env(const UBootEnvConfig& config) {
  const std::string description = describe_config(config);
  if (config.device1.empty()) return fail(Errc::invalid_argument, "opening u-boot env: no device given");
  if (config.size == 0) return fail(Errc::invalid_argument, "opening " + description + ": size is 0");
  for (const auto* dev : {&config.device1, &config.device2}) {
    if (dev->find_first_of(" \t\n#") != std::string::npos)
      return fail(Errc::invalid_argument,
                  "opening " + description + ": device name '" + *dev + "' contains whitespace or '#'");
    if (!dev->empty())
      if (auto ok = check_exists(*dev, description); !ok) return ok.error();
  }
  // libubootenv 0.3.2's libuboot_configure always takes two devices and ignores offsets on some
  // versions; its config-file parser handles one or two copies with offsets everywhere. Hand it
  // the configuration as an anonymous in-memory file.
  int fd = ::memfd_create("tern-fw-env-config", MFD_CLOEXEC);
  if (fd < 0) return io_error("opening " + description + ": memfd_create", errno);
  const std::string text = config_text(config);
  bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  int err = errno;
  if (!written) {
    ::close(fd);
    return io_error("opening " + description + ": writing the configuration", err);
  }
  auto env = open_with_config("/proc/self/fd/" + std::to_string(fd), description);
  ::close(fd);
  return env;
}

Result<std::unique_ptr<BootEnv>> open_uboot_env_from_file(const fs::path& fw_env_config) {
  const std::string what = "opening u-boot env from " + fw_env_config.string();
  FILE* f = std::fopen(fw_env_config.c_str(), "re");
  if (!f) return io_error(what, errno);
  std::string text;
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
  std::fclose(f);
  auto config = parse_fw_env_config(text, fw_env_config.string());
  if (!config) return config.error().context(what);
  auto env = open_uboot_env(*config);
  if (!env) return env.error().context(what);
  return env;
}

Result<std::unique_ptr<BootEnv>> open_grub_env(const fs::path& grubenv) {
  std::error_code ec;
  if (!fs::is_regular_file(grubenv, ec))
    return fail(Errc::not_found, "opening grub env " + grubenv.string() +
                                     ": no such file (create it with grub-editenv FILE create)");
  return std::unique_ptr<BootEnv>(new GrubEnv(grubenv));
}

Result<int> boot_part_number(const std::map<std::string, std::string>& vars) {
  auto it = vars.find(bootvar::boot_part);
  if (it == vars.end()) return fail(Errc::not_found, std::string(bootvar::boot_part) + " is not set");
  int n = 0;
  const std::string& v = it->second;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || end != v.data() + v.size() || n <= 0)
    return fail(Errc::invalid_argument,
                std::string(bootvar::boot_part) + "='" + v + "' is not a partition number");
  return n;
}

std::map<std::string, std::string> vars_for_trial(int part) {
  char hexpart[16];
  std::snprintf(hexpart, sizeof hexpart, "%x", part);
  return {{bootvar::boot_part, std::to_string(part)},
          {bootvar::boot_part_hex, hexpart},
          {bootvar::upgrade_available, "1"},
          {bootvar::bootcount, "0"}};
}

std::map<std::string, std::string> vars_for_commit() {
  return {{bootvar::upgrade_available, "0"}, {bootvar::bootcount, "0"}};
}

std::map<std::string, std::string> vars_for_rollback(int part) {
  auto vars = vars_for_trial(part);
  vars[bootvar::upgrade_available] = "0";
  return vars;
}

}  // namespace tern::agent
