// The artifact catalog: artifacts in a directory, read and verified with the artifacts library.
//
// Every regular file directly in the directory whose name ends in ".mender" is read once (again
// only when its size or modification time changes): artifact name, device types, size, SHA-256 of
// the whole file (the checksum devices verify), and the manifest signature checked against the
// fleet key when one is configured (an unsigned or badly signed artifact is then refused). The
// payload is hashed and discarded as it streams, so memory stays flat whatever the size.
//
// Thread safety: none; the bridge calls it from its one executor. Reading is blocking file I/O.
#pragma once

#include "broker-bridge/store.hpp"
#include "common/error.hpp"

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace tern::bridge {

/// Reads and verifies one artifact; `file` is relative to `dir`. Errors name the file and what is
/// wrong (malformed, manifest mismatch, unsigned or bad signature when `verify_key_pem` is set).
Result<ArtifactRecord> read_artifact(const std::filesystem::path& dir, const std::string& file,
                                     const std::optional<std::string>& verify_key_pem);

struct ScanReport {
  std::vector<std::string> added;    ///< artifact names new or changed
  std::vector<std::string> removed;  ///< artifact names whose file is gone
  std::vector<std::string> errors;   ///< files refused, with the reason
};

/// Brings the store's artifacts table in line with `dir`. Errors only when the directory cannot be
/// listed or the store fails; refused files are listed in the report.
Result<ScanReport> scan_artifacts(Store& store, const std::filesystem::path& dir,
                                  const std::optional<std::string>& verify_key_pem);

}  // namespace tern::bridge
