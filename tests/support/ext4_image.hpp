// Real ext4 images for adaptive-install tests: file-like content and `mkfs.ext4 -d` from a tree,
// made reproducibly (fixed time, UUID and hash seed, every file's mtime the same), so that v1 and
// v2 differ only where their trees differ and in where mkfs places the files.
#pragma once

#include <cstdint>
#include <string>

#include "tests/support/testenv.hpp"

namespace tern::test {

/// Compressible, file-like text of `size` bytes: words of a small vocabulary, seeded.
std::string file_text(std::size_t size, unsigned seed);

/// Makes `image` a `size_mib` MiB ext4 with 1 KiB blocks holding the files of `tree`
/// (mkfs.ext4 -d). Sets every mtime under `tree`. Throws std::runtime_error with mkfs's output.
void make_ext4(const fs::path& tree, const fs::path& image, std::uint64_t size_mib);

}  // namespace tern::test
