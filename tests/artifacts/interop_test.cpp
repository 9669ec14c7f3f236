// Interoperability with Debian's mender-artifact 3.9, and the tern-artifact command line.
#include "artifacts/crypto.hpp"
#include "tests/artifacts/fixtures.hpp"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

namespace tern::test {
namespace {

std::string tool() { return (build_dir() / "artifacts/tern-artifact").string(); }
std::string q(const fs::path& p) { return shell_quote(p.string()); }

class Interop : public ::testing::Test {
 protected:
  TempDir dir;
  std::string payload = payload_bytes(200 * 1024 + 17, 7);
  fs::path image = dir / "rootfs.ext4";
  fs::path script = dir / "ArtifactInstall_Enter_00";
  void SetUp() override {
    write_file(image, payload);
    write_file(script, "#!/bin/sh\necho installing\n");
  }
};

TEST_F(Interop, TernReadsWhatMenderArtifactWrites) {
  for (std::string comp : {"gzip", "lzma", "none"}) {
    for (std::string k : {"", "rsa", "ec"}) {
      auto out = dir / ("m-" + comp + "-" + (k.empty() ? "unsigned" : k) + ".mender");
      auto cmd = "mender-artifact write rootfs-image -f " + q(image) + " -t qemu -t rpi4 -n mender-" + comp +
                 " -o " + q(out) + " --compression " + comp + " -p build:42 -d bootloader:2024.01 -s " + q(script) +
                 (k.empty() ? "" : " -k " + q(keys() / (k + ".key")));
      auto w = run(cmd);
      ASSERT_EQ(w.exit_code, 0) << cmd << "\n" << w.output;

      artifacts::ReaderOptions ro;
      if (!k.empty()) ro.verify_key_pem = key(k + ".pub");
      ro.device_type = "rpi4";
      std::string got;
      auto h = artifacts::read_file(out, ro, [&](std::span<const std::uint8_t> b) -> Result<void> {
        got.append(reinterpret_cast<const char*>(b.data()), b.size());
        return {};
      });
      ASSERT_TRUE(h) << comp << "/" << k << ": " << h.error().message();
      EXPECT_EQ(got, payload) << comp << "/" << k;  // byte-exact
      EXPECT_EQ(h->artifact_name, "mender-" + comp);
      EXPECT_EQ(h->device_types, (std::vector<std::string>{"qemu", "rpi4"}));
      EXPECT_EQ(h->provides.at("build"), "42");
      EXPECT_EQ(h->provides.at("rootfs-image.checksum"), artifacts::Sha256::hex(payload));
      EXPECT_EQ(h->depends.at("bootloader"), std::vector<std::string>{"2024.01"});
      ASSERT_EQ(h->scripts.size(), 1u);
      EXPECT_EQ(h->scripts[0].first, "ArtifactInstall_Enter_00");
      EXPECT_EQ(h->signature_verified, !k.empty());
      EXPECT_EQ(h->compression, comp == "gzip"   ? artifacts::Compression::gzip
                                : comp == "lzma" ? artifacts::Compression::xz
                                                 : artifacts::Compression::none);
      if (!k.empty()) {  // and the other key is refused
        ro.verify_key_pem = key(k == "rsa" ? "ec.pub" : "rsa.pub");
        auto wrong = artifacts::read_file(out, ro);
        ASSERT_FALSE(wrong);
        EXPECT_EQ(wrong.error().code(), artifacts::ArtifactErrc::signature);
      }
    }
  }
}

TEST_F(Interop, MenderArtifactValidatesWhatTernWrites) {
  for (std::string comp : {"gzip", "lzma", "none"}) {
    for (std::string k : {"rsa", "ec"}) {
      auto out = dir / ("t-" + comp + "-" + k + ".mender");
      auto w = run(tool() + " write rootfs-image -f " + q(image) + " -t qemu -n tern-" + comp + " -o " + q(out) +
                   " --compression " + comp + " -k " + q(keys() / (k + ".key")) + " -p build:42 -d bootloader:1 -s " +
                   q(script));
      ASSERT_EQ(w.exit_code, 0) << w.output;
      auto v = run("mender-artifact validate -k " + q(keys() / (k + ".pub")) + " " + q(out));
      EXPECT_EQ(v.exit_code, 0) << comp << "/" << k << ": " << v.output;
      auto r = run("mender-artifact read -k " + q(keys() / (k + ".pub")) + " " + q(out));
      EXPECT_EQ(r.exit_code, 0) << r.output;
      EXPECT_NE(r.output.find("Name: tern-" + comp), std::string::npos) << r.output;
      EXPECT_NE(r.output.find("signed and verified correctly"), std::string::npos) << r.output;
      EXPECT_NE(r.output.find("rootfs-image.checksum: " + artifacts::Sha256::hex(payload)), std::string::npos)
          << r.output;
      EXPECT_NE(r.output.find("ArtifactInstall_Enter_00"), std::string::npos) << r.output;
      // The uncompressed artifact carries the chunk index (in meta-data), signed with the rest;
      // gzip and xz streams cannot be entered mid-way, so they have none.
      EXPECT_EQ(r.output.find(std::string(artifacts::chunk_index_key)) != std::string::npos, comp == "none")
          << r.output.substr(0, 2000);
      auto ours = artifacts::read_file(out, {});
      ASSERT_TRUE(ours) << ours.error().message();
      EXPECT_EQ(ours->chunk_index != nullptr, comp == "none");
      // The wrong key makes mender-artifact refuse it too: the signature is really checked.
      auto bad = run("mender-artifact validate -k " + q(keys() / (k == "rsa" ? "ec.pub" : "rsa.pub")) + " " + q(out));
      EXPECT_NE(bad.exit_code, 0) << bad.output;
    }
  }
}

TEST_F(Interop, TernSignMakesMenderArtifactsVerifiable) {
  auto out = dir / "m.mender";
  ASSERT_EQ(run("mender-artifact write rootfs-image -f " + q(image) + " -t qemu -n plain -o " + q(out)).exit_code, 0);
  auto s = run(tool() + " sign " + q(out) + " -k " + q(keys() / "ec.key") + " -o " + q(dir / "s.mender"));
  ASSERT_EQ(s.exit_code, 0) << s.output;
  auto v = run("mender-artifact validate -k " + q(keys() / "ec.pub") + " " + q(dir / "s.mender"));
  EXPECT_EQ(v.exit_code, 0) << v.output;
}

TEST_F(Interop, CommandLineValidateReadAndErrors) {
  auto out = dir / "z.mender";
  auto w = run(tool() + " write rootfs-image -f " + q(image) + " -t qemu -n zstd-1 -o " + q(out) + " -k " +
               q(keys() / "ed.key"));
  ASSERT_EQ(w.exit_code, 0) << w.output;
  auto v = run(tool() + " validate " + q(out) + " -k " + q(keys() / "ed.pub"));
  EXPECT_EQ(v.exit_code, 0) << v.output;
  EXPECT_NE(v.output.find("validated successfully"), std::string::npos);
  auto r = run(tool() + " read " + q(out));
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("Name: zstd-1"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("Compression: zstd"), std::string::npos) << r.output;
  // The index is summarised, not dumped (it is most of the meta-data).
  EXPECT_NE(r.output.find("Chunk index: 4 frames of 65536 bytes, 51 blocks of 4096 bytes"), std::string::npos)
      << r.output;
  EXPECT_LT(r.output.size(), 4000u) << r.output;

  auto wrong = run(tool() + " validate " + q(out) + " -k " + q(keys() / "ec.pub"));
  EXPECT_EQ(wrong.exit_code, 1);
  EXPECT_NE(wrong.output.find("signature does not verify"), std::string::npos) << wrong.output;
  auto data = read_file(out);
  write_file(dir / "cut.mender", data.substr(0, data.size() / 2));
  auto cut = run(tool() + " validate " + q(dir / "cut.mender"));
  EXPECT_EQ(cut.exit_code, 1);
  EXPECT_NE(cut.output.find("truncated"), std::string::npos) << cut.output;
  auto missing = run(tool() + " write rootfs-image -f " + q(dir / "nope") + " -t qemu -n x -o " + q(dir / "x.mender"));
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.output.find("opening payload"), std::string::npos) << missing.output;
  EXPECT_NE(run(tool() + " frobnicate").exit_code, 0);
}

TEST_F(Interop, ReaderMemoryStaysFlatForALargePayload) {
  // 256 MiB of payload through `tern-artifact validate`: its peak RSS must not grow with it.
  auto big = dir / "big.img";
  ASSERT_EQ(run("head -c 268435456 /dev/urandom > " + q(big)).exit_code, 0);
  auto out = dir / "big.mender";
  ASSERT_EQ(run(tool() + " write rootfs-image -f " + q(big) + " -t qemu -n big -o " + q(out) + " --compression zstd")
                .exit_code,
            0);
  fs::remove(big);
  // Run the validator alone so its rusage is not mixed with the writer's.
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    dup2(null, 2);
    execl(tool().c_str(), "tern-artifact", "validate", out.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  rusage ru{};
  ASSERT_EQ(wait4(pid, &status, 0, &ru), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "validate failed: " << status;
  EXPECT_LT(ru.ru_maxrss, 48 * 1024) << "validator peak RSS " << ru.ru_maxrss << " KiB";
}

}  // namespace
}  // namespace tern::test
