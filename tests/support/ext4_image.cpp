#include "tests/support/ext4_image.hpp"

#include <iterator>
#include <random>
#include <stdexcept>

namespace tern::test {

std::string file_text(std::size_t size, unsigned seed) {
  static const char* words[] = {"partition ",  "rootfs ", "kernel ", "module ", "firmware ",    "\n",
                                "GLIBC_2.36 ", "0x7f3a ", "update ", "signed ", "libssl.so.3 ", "frame ",
                                "device ",     "fleet ",  "block ",  "index ",  "libc.so.6 ",   "0x1f2e "};
  std::mt19937 rng(seed);
  std::string s;
  while (s.size() < size) s += words[rng() % std::size(words)];
  s.resize(size);
  return s;
}

void make_ext4(const fs::path& tree, const fs::path& image, std::uint64_t size_mib) {
  const std::string uuid = "0d6f3c2a-5b7e-4f21-8c3d-9e1a2b3c4d5e";
  const auto t = shell_quote(tree.string()), img = shell_quote(image.string());
  auto r =
      run("find " + t + " -exec touch -h -d @1700000000 {} + && truncate -s " + std::to_string(size_mib) +
          "M " + img + " && E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -b 1024 -U " + uuid +
          " -E hash_seed=" + uuid + ",root_owner=0:0 -d " + t + " " + img);
  if (r.exit_code != 0) throw std::runtime_error("mkfs.ext4 -d " + tree.string() + ": " + r.output);
}

}  // namespace tern::test
