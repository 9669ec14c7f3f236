#include "tests/support/device_sim.hpp"

#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "common/process.hpp"

namespace tern::test {

namespace fs = std::filesystem;
using agent::PartitionRef;

namespace {

constexpr std::uint64_t MiB = 1u << 20;
constexpr const char* env_size = "0x4000";

Result<void> write_text(const fs::path& p, const std::string& text) {
  // Write then rename: a reader (an agent started by a test) never sees half a file.
  fs::path tmp = p;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out.flush()) return fail(Errc::io, "writing " + tmp.string());
  }
  std::error_code ec;
  fs::rename(tmp, p, ec);
  if (ec) return fail(Errc::io, "renaming " + tmp.string() + " to " + p.string() + ": " + ec.message());
  return {};
}

Result<void> run_checked(const std::vector<std::string>& argv, const std::string& input,
                         const std::string& what) {
  auto out = run_program(argv, {.input = input, .timeout = std::chrono::seconds(60)});
  if (!out) return out.error().context(what);
  if (out->exit_code != 0)
    return fail(Errc::io, what + ": " + argv.front() + " exited with " + std::to_string(out->exit_code) +
                              ": " + out->output);
  return {};
}

/// U-Boot's env_get_ulong(name, 10, 0): leading decimal digits, 0 when unset or not a number.
unsigned long env_ulong(const std::map<std::string, std::string>& vars, const std::string& name) {
  auto it = vars.find(name);
  if (it == vars.end()) return 0;
  unsigned long v = 0;
  std::from_chars(it->second.data(), it->second.data() + it->second.size(), v);
  return v;
}

}  // namespace

std::string sim_device_name(int number) {
  return "/dev/sim-disk-p" + std::to_string(number);
}

std::map<std::string, std::string> mender_default_env() {
  // The shape of Mender's U-Boot integration: bootcmd sets the kernel's root from mender_boot_part;
  // altbootcmd (run by U-Boot when bootcount passes bootlimit) switches to the other partition,
  // ends the trial and saves before booting.
  return {
      {"bootlimit", "1"},
      {"bootcount", "0"},
      {"upgrade_available", "0"},
      {"mender_boot_part", "2"},
      {"mender_boot_part_hex", "2"},
      {"mender_kernel_root_base", "/dev/sim-disk-p"},
      {"mender_setup",
       "setenv mender_kernel_root ${mender_kernel_root_base}${mender_boot_part}; "
       "setenv bootargs root=${mender_kernel_root} rootwait"},
      {"mender_try_to_recover", "if test ${upgrade_available} = 1; then reset; fi"},
      {"mender_altbootcmd",
       "if test ${mender_boot_part} = 2; then setenv mender_boot_part 3; setenv mender_boot_part_hex 3; "
       "else setenv mender_boot_part 2; setenv mender_boot_part_hex 2; fi; "
       "setenv upgrade_available 0; saveenv; run mender_setup"},
      {"altbootcmd", "run mender_altbootcmd; run bootcmd"},
      {"bootcmd",
       "run mender_setup; load mmc 0:${mender_boot_part_hex} ${kernel_addr_r} /boot/zImage; "
       "bootz ${kernel_addr_r} - ${fdt_addr_r}; run mender_try_to_recover"},
  };
}

Result<DeviceSim> DeviceSim::create(const fs::path& dir_in, const DeviceSimOptions& options) {
  const fs::path dir = fs::absolute(dir_in);
  const std::string what = "creating simulated device in " + dir.string();
  if (options.rootfs_mib == 0 || options.data_mib == 0)
    return fail(Errc::invalid_argument, what + ": partition sizes must be at least 1 MiB");
  if (dir.string().find_first_of(" \t\n#") != std::string::npos)
    return fail(Errc::invalid_argument,
                what + ": the path must not contain whitespace or '#' (fw_env.config)");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return fail(Errc::io, what + ": " + ec.message());
  DeviceSim sim(dir);

  // 1 MiB for the primary GPT and alignment, 1 MiB boot, A, B, data, 1 MiB for the backup GPT.
  const std::uint64_t total = (1 + 1 + 2 * options.rootfs_mib + options.data_mib + 1) * MiB;
  {
    std::ofstream disk(sim.disk(), std::ios::binary | std::ios::trunc);
    if (!disk) return fail(Errc::io, what + ": cannot create " + sim.disk().string());
  }
  fs::resize_file(sim.disk(), total, ec);
  if (ec) return fail(Errc::io, what + ": sizing " + sim.disk().string() + ": " + ec.message());

  const std::string linux_fs = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
  std::ostringstream script;
  script << "label: gpt\n"
         << "start=1MiB, size=1MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"boot\"\n"
         << "size=" << options.rootfs_mib << "MiB, type=" << linux_fs << ", name=\"rootfs-a\"\n"
         << "size=" << options.rootfs_mib << "MiB, type=" << linux_fs << ", name=\"rootfs-b\"\n"
         << "size=" << options.data_mib << "MiB, type=" << linux_fs << ", name=\"data\"\n";
  if (auto ok = run_checked({"sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", sim.disk().string()},
                            script.str(), what + ": partitioning");
      !ok)
    return ok.error();

  // The factory image on A.
  auto part_a = sim.partition(2);
  if (!part_a) return part_a.error().context(what);
  std::string image;
  if (options.initial_image.empty()) {
    image = "tern-sim initial rootfs-a\n";
  } else {
    std::ifstream in(options.initial_image, std::ios::binary);
    if (!in) return fail(Errc::io, what + ": cannot read " + options.initial_image.string());
    std::ostringstream os;
    os << in.rdbuf();
    image = os.str();
  }
  auto writer = agent::PartitionWriter::open(*part_a);
  if (!writer) return writer.error().context(what);
  if (auto ok = writer->check_fits(image.size()); !ok) return ok.error().context(what);
  auto bytes = std::span(reinterpret_cast<const std::uint8_t*>(image.data()), image.size());
  if (auto ok = writer->write(bytes); !ok) return ok.error().context(what);
  if (auto ok = writer->finish(); !ok) return ok.error().context(what);

  // Two copies of the environment, as with CONFIG_ENV_OFFSET_REDUND.
  std::string defaults;
  for (const auto& [name, value] : mender_default_env()) defaults += name + "=" + value + "\n";
  const fs::path defaults_file = dir / "uboot-env.txt";
  if (auto ok = write_text(defaults_file, defaults); !ok) return ok.error().context(what);
  std::string config = "# Simulated device: a redundant U-Boot environment in two files.\n";
  for (int copy = 0; copy < 2; ++copy) {
    const fs::path env = dir / ("uboot-env." + std::to_string(copy));
    if (auto ok =
            run_checked({"mkenvimage", "-r", "-s", env_size, "-o", env.string(), defaults_file.string()}, {},
                        what + ": making " + env.string());
        !ok)
      return ok.error();
    config += env.string() + " 0x0 " + env_size + "\n";
  }
  if (auto ok = write_text(sim.fw_env_config(), config); !ok) return ok.error().context(what);
  fs::remove(sim.cmdline(), ec);
  fs::remove(sim.mountinfo(), ec);
  fs::remove(dir / "booted", ec);
  return sim;
}

Result<DeviceSim> DeviceSim::open(const fs::path& dir_in) {
  DeviceSim sim(fs::absolute(dir_in));
  for (const auto& p : {sim.disk(), sim.fw_env_config()}) {
    std::error_code ec;
    if (!fs::exists(p, ec))
      return fail(Errc::not_found,
                  "opening simulated device " + sim.dir().string() + ": " + p.string() + " is missing");
  }
  return sim;
}

Result<std::unique_ptr<agent::BootEnv>> DeviceSim::boot_env() const {
  return agent::open_uboot_env_from_file(fw_env_config());
}

Result<std::map<std::string, std::string>> DeviceSim::env() const {
  auto e = boot_env();
  if (!e) return e.error();
  return (*e)->read();
}

Result<PartitionRef> DeviceSim::partition(int number) const {
  return agent::partition_on_disk(disk(), std::to_string(number));
}

Result<agent::SlotIdentity> DeviceSim::slot(int index) const {
  auto p = partition(2 + index);
  if (!p) return p.error();
  return agent::SlotIdentity{*p, sim_device_name(2 + index)};
}

agent::ActiveDetect DeviceSim::active_detect() const {
  agent::ActiveDetect d;
  d.cmdline = cmdline();
  d.mountinfo = mountinfo();
  d.sys_dev_block = dir_ / "no-sys-dev-block";
  return d;
}

Result<SimBoot> DeviceSim::boot(RootStyle style) {
  const std::string what = "booting simulated device " + dir_.string();
  auto env = boot_env();
  if (!env) return env.error().context(what);
  auto vars = (*env)->read();
  if (!vars) return vars.error().context(what);

  SimBoot result;
  // U-Boot with CONFIG_BOOTCOUNT_ENV: the count lives in the environment and only counts (and is
  // only saved) while an upgrade is on trial.
  const bool on_trial = env_ulong(*vars, "upgrade_available") != 0;
  const unsigned long bootcount = (on_trial ? env_ulong(*vars, "bootcount") : 0) + 1;
  if (on_trial) {
    if (auto ok = (*env)->write({{"bootcount", std::to_string(bootcount)}}); !ok)
      return ok.error().context(what);
    (*vars)["bootcount"] = std::to_string(bootcount);
  }
  // Autoboot: past the limit, U-Boot runs altbootcmd instead of bootcmd.
  const unsigned long bootlimit = env_ulong(*vars, "bootlimit");
  if (bootlimit && bootcount > bootlimit) {
    // mender_altbootcmd: the other partition, trial over, saveenv.
    const int current = static_cast<int>(env_ulong(*vars, "mender_boot_part"));
    const std::string other = current == 2 ? "3" : "2";
    std::map<std::string, std::string> change{
        {"mender_boot_part", other}, {"mender_boot_part_hex", other}, {"upgrade_available", "0"}};
    if (auto ok = (*env)->write(change); !ok) return ok.error().context(what);
    for (const auto& [k, v] : change) (*vars)[k] = v;
    result.ran_altbootcmd = true;
  }

  auto part_number = agent::boot_part_number(*vars);
  if (!part_number) return part_number.error().context(what);
  auto part = partition(*part_number);
  if (!part || (part->label != "rootfs-a" && part->label != "rootfs-b"))
    return fail(Errc::invalid_argument,
                what + ": mender_boot_part=" + std::to_string(*part_number) +
                    " is not a rootfs partition (the kernel would not find its root)");
  result.partition = *part_number;
  result.partuuid = part->partuuid;

  const std::string device = sim_device_name(*part_number);
  const std::string root = style == RootStyle::partuuid ? "PARTUUID=" + part->partuuid : device;
  if (auto ok = write_text(cmdline(), "console=ttyS0,115200 root=" + root + " rootwait ro\n"); !ok)
    return ok.error().context(what);
  const std::string mounts =
      "21 1 0:20 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n"
      "22 1 179:" +
      std::to_string(*part_number) + " / / ro,relatime shared:1 - ext4 " + device + " ro\n";
  if (auto ok = write_text(mountinfo(), mounts); !ok) return ok.error().context(what);
  if (auto ok = write_text(dir_ / "booted", std::to_string(*part_number) + " " + part->partuuid + "\n"); !ok)
    return ok.error().context(what);
  return result;
}

}  // namespace tern::test
