// Internal: the JSON members of header.tar (header-info, type-info, meta-data) and the checks of a
// header against a device (device type, artifact_depends).
#pragma once

#include "artifacts/reader.hpp"

#include <string_view>

namespace tern::artifacts::detail {

Error artifact_error(ArtifactErrc code, std::string message);

/// Fills `h` from the files of header.tar (name, content), in the order they came.
Result<void> parse_header_tar(const std::vector<std::pair<std::string, std::string>>& files, Header& h);

/// Device type and depends checks against the options (each only when configured).
Result<void> check_compatible(const Header& h, const ReaderOptions& options);

/// Parses the manifest ("<64 hex>  <name>\n" lines) into name → digest.
Result<std::map<std::string, std::string>> parse_manifest(std::string_view text);

}  // namespace tern::artifacts::detail
