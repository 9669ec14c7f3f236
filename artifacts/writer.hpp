// Writes rootfs-image artifacts in Mender's format version 3, as mender-artifact 4.4 does
// (header-info and type-info key for key), with zstd by default as independent frames of a fixed
// uncompressed size so an interrupted install can restart at a frame boundary.
#pragma once

#include "artifacts/compress.hpp"
#include "common/error.hpp"

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace tern::artifacts {

struct WriterOptions {
  std::filesystem::path payload;           ///< the image file
  std::vector<std::string> device_types;   ///< artifact_depends.device_type (at least one)
  std::string artifact_name;
  std::string artifact_group;              ///< artifact_provides.artifact_group, optional
  std::vector<std::string> depends_artifact_names;  ///< artifact_depends.artifact_name
  std::vector<std::string> depends_groups;          ///< artifact_depends.artifact_group
  std::map<std::string, std::string> provides;      ///< extra type-info provides (-p K:V)
  std::map<std::string, std::string> depends;       ///< type-info depends (-d K:V)
  std::string software_version;            ///< rootfs-image.version; default: the artifact name
  /// Default: mender-artifact's ["artifact_group", "rootfs_image_checksum", "rootfs-image.*"].
  std::optional<std::vector<std::string>> clears_provides;
  std::vector<std::filesystem::path> scripts;  ///< state scripts (Mender's names)
  Compression compression = Compression::zstd;
  int level = -1;                          ///< compression level, -1 for the format's default
  std::uint64_t frame_size = 4 * 1024 * 1024;  ///< zstd: uncompressed bytes per independent frame
  std::optional<std::string> signing_key_pem;  ///< RSA, EC P-256 or Ed25519 private key
  /// Called as the payload is written: (bytes done, total).
  std::function<void(std::uint64_t, std::uint64_t)> progress;
};

/// Writes the artifact to `out` (replaced atomically: written to out.tmp, then renamed).
/// Errors: unreadable payload or script, invalid options, a bad key, a write error.
Result<void> write_rootfs_artifact(const WriterOptions& options, const std::filesystem::path& out);

/// Adds (or replaces) manifest.sig of an existing artifact; `out` may equal `in`.
Result<void> sign_artifact(const std::filesystem::path& in, const std::string& private_key_pem,
                           const std::filesystem::path& out);

}  // namespace tern::artifacts
