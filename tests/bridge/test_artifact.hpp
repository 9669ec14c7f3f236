// A small rootfs artifact for the bridge tests and benchmarks (device type "qemu").
//
//   write_test_artifact(dir / "artifacts", "release-1", std::string(4096, 'x'));   // .../release-1.mender
#pragma once

#include <optional>
#include <stdexcept>
#include <string>

#include "artifacts/writer.hpp"
#include "tests/support/testenv.hpp"

namespace tern::test {

/// Writes `dir`/`name`.mender with `payload` as its image, signed with `key` (PEM) if given. The
/// image file is made beside it and removed. Throws with the writer's message if it fails.
inline void write_test_artifact(const fs::path& dir, const std::string& name, const std::string& payload,
                                std::optional<std::string> key = std::nullopt) {
  const auto image = dir / (name + ".img");
  write_file(image, payload);
  artifacts::WriterOptions w;
  w.payload = image;
  w.device_types = {"qemu"};
  w.artifact_name = name;
  w.signing_key_pem = std::move(key);
  auto r = artifacts::write_rootfs_artifact(w, dir / (name + ".mender"));
  fs::remove(image);
  if (!r) throw std::runtime_error("writing " + name + ".mender: " + r.error().message());
}

}  // namespace tern::test
