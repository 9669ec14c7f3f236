#include "common/config.hpp"

#include "common/file.hpp"

#include <algorithm>
#include <cerrno>

namespace tern {

Result<Config> Config::load(const std::filesystem::path& path) {
  auto text = read_file(path, 4 * 1024 * 1024);
  if (!text) return text.error().context("configuration");
  return parse(*text, path.string());
}

Result<Config> Config::parse(std::string_view text, std::string origin) {
  // Configuration may be larger than a protocol message, but not unboundedly so.
  auto doc = json::Document::parse(text, "configuration " + origin, 4 * 1024 * 1024);
  if (!doc) return doc.error();
  auto root = doc->root();
  if (!root) return root.error();
  return Config(std::move(*doc), std::move(*root), std::move(origin));
}

Result<std::chrono::seconds> Config::seconds(std::string_view key, std::chrono::seconds fallback) const {
  auto v = root_.u64_or(key, static_cast<std::uint64_t>(fallback.count()));
  if (!v) return v.error();
  return std::chrono::seconds(*v);
}

std::vector<std::string> Config::unknown_keys(std::initializer_list<std::string_view> known) const {
  std::vector<std::string> out;
  for (auto& k : root_.keys())
    if (std::find(known.begin(), known.end(), k) == known.end()) out.push_back(k);
  return out;
}

}  // namespace tern
