// Update module artifacts (`write module-image`) between Debian's mender-artifact 3.9 and Tern:
// each reads and validates what the other writes, and Tern's reader hands over every file.
#include "artifacts/crypto.hpp"
#include "artifacts/reader.hpp"
#include "tests/artifacts/fixtures.hpp"

#include <gtest/gtest.h>

#include <map>

namespace tern::test {
namespace {

std::string tool() { return (build_dir() / "artifacts/tern-artifact").string(); }
std::string q(const fs::path& p) { return shell_quote(p.string()); }

class ModuleInterop : public ::testing::Test {
 protected:
  TempDir dir;
  std::map<std::string, std::string> files{{"app.conf", "version=2\n"},
                                           {"dest_dir", "/etc/app"},
                                           {"big.bin", payload_bytes(300 * 1024 + 5, 3)}};
  std::string file_args;
  void SetUp() override {
    for (auto& [name, content] : files) {
      write_file(dir / name, content);
      file_args += " -f " + q(dir / name);
    }
  }

  /// Reads `artifact` with Tern's reader: the header and every file's bytes by name.
  std::pair<artifacts::Header, std::map<std::string, std::string>> read(const fs::path& artifact,
                                                                        artifacts::ReaderOptions ro = {}) {
    std::map<std::string, std::string> got;
    std::string* current = nullptr;
    artifacts::Reader reader(ro, nullptr, [&](std::span<const std::uint8_t> b) -> Result<void> {
      current->append(reinterpret_cast<const char*>(b.data()), b.size());
      return {};
    });
    reader.set_file_handler([&](const std::string& name, std::uint64_t) -> Result<void> {
      current = &got[name];
      return {};
    });
    auto bytes = read_file(artifact);
    auto fed = reader.feed({reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()});
    if (!fed) throw std::runtime_error(fed.error().message());
    if (auto f = reader.finish(); !f) throw std::runtime_error(f.error().message());
    return {*reader.header(), got};
  }
};

TEST_F(ModuleInterop, TernReadsMenderArtifactsModuleImages) {
  for (std::string comp : {"gzip", "lzma", "none"}) {
    auto out = dir / ("m-" + comp + ".mender");
    auto cmd = "mender-artifact write module-image -T single-file -t qemu -t rpi4 -n app-" + comp + file_args +
               " -o " + q(out) + " --compression " + comp + " -k " + q(keys() / "ec.key") + " -p build:7";
    auto w = run(cmd);
    ASSERT_EQ(w.exit_code, 0) << cmd << "\n" << w.output;
    artifacts::ReaderOptions ro;
    ro.verify_key_pem = key("ec.pub");
    ro.device_type = "rpi4";
    auto [h, got] = read(out, ro);
    EXPECT_EQ(got, files) << comp;  // every file, byte-exact
    EXPECT_EQ(h.payload_type, "single-file");
    EXPECT_FALSE(h.is_rootfs());
    EXPECT_EQ(h.artifact_name, "app-" + comp);
    EXPECT_EQ(h.files, (std::vector<std::string>{"app.conf", "big.bin", "dest_dir"}));
    EXPECT_EQ(h.provides.at("build"), "7");
    EXPECT_EQ(h.provides.at("rootfs-image.single-file.version"), "app-" + comp);
    EXPECT_TRUE(h.signature_verified);
    EXPECT_NE(h.type_info_json.find("\"type\":\"single-file\""), std::string::npos) << h.type_info_json;
    // tern-artifact validate and read take it too.
    auto v = run(tool() + " validate " + q(out) + " -k " + q(keys() / "ec.pub"));
    EXPECT_EQ(v.exit_code, 0) << v.output;
    auto r = run(tool() + " read " + q(out));
    EXPECT_NE(r.output.find("Type:   single-file"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("name:     big.bin"), std::string::npos) << r.output;
  }
}

TEST_F(ModuleInterop, MenderArtifactValidatesAndReadsTernsModuleImages) {
  for (std::string comp : {"gzip", "lzma", "none"}) {
    auto out = dir / ("t-" + comp + ".mender");
    auto w = run(tool() + " write module-image -T directory -t qemu -n site-" + comp + file_args + " -o " + q(out) +
                 " --compression " + comp + " -k " + q(keys() / "rsa.key"));
    ASSERT_EQ(w.exit_code, 0) << w.output;
    auto v = run("mender-artifact validate -k " + q(keys() / "rsa.pub") + " " + q(out));
    EXPECT_EQ(v.exit_code, 0) << comp << ": " << v.output;
    auto r = run("mender-artifact read " + q(out));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("Type:   directory"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("rootfs-image.directory.version: site-" + comp), std::string::npos) << r.output;
    for (auto& [name, content] : files)
      EXPECT_NE(r.output.find("checksum: " + artifacts::Sha256::hex(content)), std::string::npos) << name;
    // mender-artifact's own copy of the files is byte-exact (its read of the data member).
    auto [h, got] = read(out);
    EXPECT_EQ(got, files);
  }
}

TEST_F(ModuleInterop, AModuleImageWithoutFilesAndTheWritersErrors) {
  auto out = dir / "empty.mender";
  auto w = run(tool() + " write module-image -T reboot -t qemu -n reboot-1 -o " + q(out) + " --compression gzip");
  ASSERT_EQ(w.exit_code, 0) << w.output;
  EXPECT_EQ(run("mender-artifact validate " + q(out)).exit_code, 0);
  auto [h, got] = read(out);
  EXPECT_TRUE(got.empty());
  EXPECT_TRUE(h.files.empty());
  EXPECT_EQ(h.payload_type, "reboot");

  auto no_type = run(tool() + " write module-image -t qemu -n x -o " + q(dir / "x.mender"));
  EXPECT_NE(no_type.exit_code, 0);
  EXPECT_NE(no_type.output.find("-T TYPE"), std::string::npos) << no_type.output;
  auto bad_type = run(tool() + " write module-image -T ../evil -t qemu -n x -o " + q(dir / "x.mender"));
  EXPECT_NE(bad_type.exit_code, 0);
  EXPECT_NE(bad_type.output.find("not a valid update module type"), std::string::npos) << bad_type.output;
  fs::create_directories(dir / "other");
  write_file(dir / "other/app.conf", "x");
  auto twice = run(tool() + " write module-image -T t -t qemu -n x -f " + q(dir / "app.conf") + " -f " +
                   q(dir / "other/app.conf") + " -o " + q(dir / "x.mender"));
  EXPECT_NE(twice.exit_code, 0);
  EXPECT_NE(twice.output.find("two files named 'app.conf'"), std::string::npos) << twice.output;
}

TEST_F(ModuleInterop, AModuleFileThatDoesNotMatchTheManifestIsRefused) {
  auto out = dir / "t.mender";
  ASSERT_EQ(run(tool() + " write module-image -T single-file -t qemu -n x" + file_args + " -o " + q(out) +
                " --compression none")
                .exit_code,
            0);
  // Flip one byte of big.bin inside the uncompressed data member.
  auto bytes = read_file(out);
  auto at = bytes.find(files["big.bin"].substr(0, 64));
  ASSERT_NE(at, std::string::npos);
  bytes[at + 1000] ^= 0x55;
  write_file(dir / "bad.mender", bytes);
  EXPECT_THROW(
      {
        try {
          read(dir / "bad.mender");
        } catch (const std::runtime_error& e) {
          EXPECT_NE(std::string(e.what()).find("data/0000/big.bin: sha256"), std::string::npos) << e.what();
          throw;
        }
      },
      std::runtime_error);
}

}  // namespace
}  // namespace tern::test
