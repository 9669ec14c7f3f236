// Writes rootfs-image artifacts in Mender's format version 3, as mender-artifact 4.4 does
// (header-info and type-info key for key), with zstd by default as independent frames of a fixed
// uncompressed size so an interrupted install can restart at a frame boundary, and a chunk index
// of those frames (chunk_index.hpp) so a device can build most of an update from its own data.
#pragma once

#include "artifacts/chunk_index.hpp"
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
  /// zstd: uncompressed payload bytes per independent frame (the payload's tar header and the tar
  /// end have their own frames, so frames are aligned on the payload's blocks). Chosen by
  /// measurement (README "Adaptive updates"): small enough that a changed file costs little to
  /// fetch, large enough to keep the compression ratio.
  std::uint64_t frame_size = 64 * 1024;
  /// Add the chunk index (chunk_index.hpp) to headers/0000/meta-data, for zstd and uncompressed
  /// payloads (gzip and xz streams cannot be entered in the middle: no index). Left out when its
  /// text would pass 12 MiB (8 bytes per block: a payload of about 6 GiB at 4 KiB blocks).
  bool chunk_index = true;
  /// Block size of the index's hashes; 0: the payload's ext4 block size, or 4096 if not ext4.
  std::uint32_t chunk_block_size = 0;
  /// How the index hashes blocks (chunk_index.hpp): XXH3, or SHA-256 as indexes before it did.
  BlockHashKind chunk_block_hash = BlockHashKind::xxh3;
  std::optional<std::string> signing_key_pem;  ///< RSA, EC P-256 or Ed25519 private key
  /// Called as the payload is written: (bytes done, total).
  std::function<void(std::uint64_t, std::uint64_t)> progress;

  // ---- module-image only (write_module_artifact) ----
  std::string payload_type;                 ///< -T: the update module's name
  std::vector<std::filesystem::path> files;  ///< -f, any number (zero too), each by its file name
  std::optional<std::filesystem::path> meta_data;  ///< -m: a JSON object for headers/0000/meta-data
};

/// Writes the artifact to `out` (replaced atomically: written to out.tmp, then renamed).
/// Errors: unreadable payload or script, invalid options, a bad key, a write error.
Result<void> write_rootfs_artifact(const WriterOptions& options, const std::filesystem::path& out);

/// Writes an update module artifact (`mender-artifact write module-image`): type-info with the
/// type, provides `rootfs-image.<type>.version` (software_version, default the artifact name) and
/// clears `rootfs-image.<type>.*` as mender-artifact 3.9 does, every file of `files` in
/// data/0000.tar.* (one compressed stream, no chunk index), each in the manifest.
/// Errors: as write_rootfs_artifact, and a missing type, two files of one name, a type or meta-data
/// that is not what Mender accepts.
Result<void> write_module_artifact(const WriterOptions& options, const std::filesystem::path& out);

/// Adds (or replaces) manifest.sig of an existing artifact; `out` may equal `in`.
Result<void> sign_artifact(const std::filesystem::path& in, const std::string& private_key_pem,
                           const std::filesystem::path& out);

}  // namespace tern::artifacts
