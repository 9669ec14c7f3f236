#include "artifacts/header_info.hpp"

#include "common/json.hpp"

#include <algorithm>

namespace tern::artifacts {

namespace {
class ArtifactCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "tern-artifact"; }
  std::string message(int ev) const override {
    switch (static_cast<ArtifactErrc>(ev)) {
      case ArtifactErrc::malformed: return "malformed artifact";
      case ArtifactErrc::unsupported: return "unsupported artifact";
      case ArtifactErrc::manifest_mismatch: return "checksum does not match the manifest";
      case ArtifactErrc::signature: return "signature check failed";
      case ArtifactErrc::incompatible: return "artifact is not compatible with this device";
      case ArtifactErrc::too_large: return "payload too large";
      case ArtifactErrc::truncated: return "artifact is truncated";
    }
    return "artifact error";
  }
};
}  // namespace

const std::error_category& artifact_category() noexcept {
  static const ArtifactCategory c;
  return c;
}

namespace detail {

Error artifact_error(ArtifactErrc code, std::string message) { return Error(make_error_code(code), std::move(message)); }

namespace {

Error malformed(std::string m) { return artifact_error(ArtifactErrc::malformed, std::move(m)); }

Result<json::Object> parse_json(const std::string& text, const std::string& what, std::size_t limit = 1024 * 1024) {
  auto doc = json::Document::parse(text, what, limit);
  if (!doc) return malformed(doc.error().message());
  auto root = doc->root();
  if (!root) return malformed(root.error().message());
  return *root;
}

// A depends value is a string or a list of strings.
Result<std::map<std::string, std::vector<std::string>>> depends_map(const json::Object& o, std::string_view key,
                                                                    const std::string& what) {
  std::map<std::string, std::vector<std::string>> out;
  if (!o.has(key)) return out;
  auto obj = o.object(key);
  if (!obj) return malformed(obj.error().message());
  for (auto& k : obj->keys()) {
    if (auto s = obj->string(k)) out[k] = {*s};
    else if (auto l = obj->strings(k)) out[k] = *l;
    else return malformed(what + ": artifact_depends." + k + " must be a string or a list of strings");
  }
  return out;
}

// meta-data, with the chunk index. simdjson's DOM takes about 7 times its input in memory (16 MiB
// for an index of 256k blocks), so the index is taken out first when it is where Tern's writer puts
// it, first in the object: {"tern.chunk-index":"<base64>"...}. There it cannot be inside another
// string, and base64 needs no escapes; the rest of the object is parsed as usual. Anywhere else
// the whole document is parsed (same result, more memory).
Result<void> parse_meta_data(std::string_view content, Header& h) {
  if (content.empty()) return {};
  const std::string lead = "{\"" + std::string(chunk_index_key) + "\":\"";
  std::string rest;
  std::optional<std::string_view> fast;
  if (content.starts_with(lead)) {
    auto end = content.find('"', lead.size());
    auto value = content.substr(lead.size(), end == std::string_view::npos ? 0 : end - lead.size());
    if (end != std::string_view::npos && value.find('\\') == std::string_view::npos) {
      auto after = content.substr(end + 1);
      auto pos = after.find_first_not_of(" \t\r\n");
      if (pos != std::string_view::npos && after[pos] == '}') rest = "{" + std::string(after.substr(pos));
      else if (pos != std::string_view::npos && after[pos] == ',') rest = "{" + std::string(after.substr(pos + 1));
      if (!rest.empty()) fast = value;
    }
  }
  auto o = parse_json(fast ? rest : std::string(content), "meta-data", 48 * 1024 * 1024);
  if (!o) return o.error();
  std::string general;  // the index's text when it was found by the JSON parser
  std::string_view text;
  if (fast) {
    if (o->has(chunk_index_key)) return malformed("headers/0000/meta-data: '" + std::string(chunk_index_key) + "' appears twice");
    text = *fast;
  } else if (o->has(chunk_index_key)) {
    auto t = o->string(chunk_index_key);
    if (!t) return malformed("headers/0000/meta-data: " + t.error().message());
    general = std::move(*t);
    text = general;
  } else {
    h.meta_data_json = std::string(content);
    return {};
  }
  auto index = ChunkIndex::decode(text);
  if (!index) return index.error().context("headers/0000/meta-data");
  h.chunk_index = std::make_shared<const ChunkIndex>(std::move(*index));
  // The index (megabytes of base64) is kept once, decoded: not again in every copy of the header.
  h.meta_data_json = fast ? std::move(rest) : std::string(content);
  return {};
}

}  // namespace

Result<void> parse_header_tar(const std::vector<std::pair<std::string, std::string>>& files, Header& h) {
  bool header_info = false, type_info = false;
  std::string type_info_type;
  for (auto& [name, content] : files) {
    if (name == "header-info") {
      header_info = true;
      h.header_info_json = content;
      auto o = parse_json(content, "header-info");
      if (!o) return o.error();
      // payloads: exactly one: a rootfs image, or the type of an update module.
      auto payloads = o->objects("payloads");
      if (!payloads) return malformed(payloads.error().message());
      if (payloads->empty()) return malformed("header-info: 'payloads' is empty");
      if (payloads->size() > 1)
        return artifact_error(ArtifactErrc::unsupported,
                              "header-info: " + std::to_string(payloads->size()) +
                                  " payloads (Tern installs one rootfs-image)");
      auto t = (*payloads)[0].string("type");
      if (!t) return malformed(t.error().message());
      if (t->empty()) return malformed("header-info: the payload type is empty");
      h.payload_type = *t;

      auto prov = o->object("artifact_provides");
      if (!prov) return malformed(prov.error().message());
      auto name = prov->string("artifact_name");
      if (!name || name->empty()) return malformed("header-info: missing artifact_provides.artifact_name");
      h.artifact_name = *name;
      auto group = prov->string_or("artifact_group", "");
      if (!group) return malformed(group.error().message());
      h.artifact_group = *group;

      auto dep = o->object("artifact_depends");
      if (!dep) return malformed(dep.error().message());
      auto types = dep->strings("device_type");
      if (!types || types->empty()) return malformed("header-info: artifact_depends.device_type must list device types");
      h.device_types = *types;
      auto names = dep->strings_or("artifact_name", {});
      if (!names) return malformed(names.error().message());
      h.depends_artifact_names = *names;
      auto groups = dep->strings_or("artifact_group", {});
      if (!groups) return malformed(groups.error().message());
      h.depends_groups = *groups;
    } else if (name == "headers/0000/type-info") {
      type_info = true;
      h.type_info_json = content;
      auto o = parse_json(content, "type-info");
      if (!o) return o.error();
      auto t = o->string_or("type", "");
      if (!t) return malformed(t.error().message());
      type_info_type = *t;
      auto prov = o->string_map_or_empty("artifact_provides");
      if (!prov) return malformed(prov.error().message());
      h.provides = *prov;
      auto dep = depends_map(*o, "artifact_depends", "type-info");
      if (!dep) return dep.error();
      h.depends = *dep;
      auto clears = o->strings_or("clears_artifact_provides", {});
      if (!clears) return malformed(clears.error().message());
      h.clears_provides = *clears;
    } else if (name == "headers/0000/meta-data") {
      if (auto r = parse_meta_data(content, h); !r) return r;
    } else if (name.starts_with("scripts/")) {
      h.scripts.emplace_back(name.substr(8), content);
    } else if (name.starts_with("headers/0001/")) {
      return artifact_error(ArtifactErrc::unsupported, "header.tar: more than one payload (Tern installs one rootfs-image)");
    }
  }
  if (!header_info) return malformed("header.tar: missing header-info");
  if (!type_info) return malformed("header.tar: missing headers/0000/type-info");
  // Readers accept an empty type in type-info (old rootfs artifacts); any other must agree.
  if (!type_info_type.empty() && type_info_type != h.payload_type)
    return malformed("type-info: payload type '" + type_info_type + "' is not header-info's '" + h.payload_type + "'");
  return {};
}

Result<void> check_compatible(const Header& h, const ReaderOptions& o) {
  auto join = [](const std::vector<std::string>& v) {
    std::string s;
    for (auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s;
  };
  if (o.device_type &&
      std::find(h.device_types.begin(), h.device_types.end(), *o.device_type) == h.device_types.end())
    return artifact_error(ArtifactErrc::incompatible, "artifact is for device types [" + join(h.device_types) +
                                                          "], not '" + *o.device_type + "'");
  if (!o.device_provides) return {};
  const auto& dev = *o.device_provides;
  auto value = [&](const std::string& k) -> std::string {
    auto it = dev.find(k);
    return it == dev.end() ? std::string() : it->second;
  };
  if (!h.depends_artifact_names.empty() &&
      std::find(h.depends_artifact_names.begin(), h.depends_artifact_names.end(), value("artifact_name")) ==
          h.depends_artifact_names.end())
    return artifact_error(ArtifactErrc::incompatible, "artifact depends on artifact_name [" +
                                                          join(h.depends_artifact_names) + "], the device has '" +
                                                          value("artifact_name") + "'");
  if (!h.depends_groups.empty() &&
      std::find(h.depends_groups.begin(), h.depends_groups.end(), value("artifact_group")) == h.depends_groups.end())
    return artifact_error(ArtifactErrc::incompatible, "artifact depends on artifact_group [" + join(h.depends_groups) +
                                                          "], the device has '" + value("artifact_group") + "'");
  for (auto& [k, allowed] : h.depends) {
    auto it = dev.find(k);
    if (it == dev.end() || std::find(allowed.begin(), allowed.end(), it->second) == allowed.end())
      return artifact_error(ArtifactErrc::incompatible, "artifact depends on " + k + " = [" + join(allowed) +
                                                            "], the device has " +
                                                            (it == dev.end() ? "none" : "'" + it->second + "'"));
  }
  return {};
}

Result<std::map<std::string, std::string>> parse_manifest(std::string_view text) {
  std::map<std::string, std::string> out;
  std::size_t line_no = 0;
  while (!text.empty()) {
    ++line_no;
    auto nl = text.find('\n');
    auto line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    if (line.empty()) continue;
    auto bad = [&] {
      return malformed("manifest: line " + std::to_string(line_no) + " is not '<sha256>  <name>'");
    };
    if (line.size() < 67 || line.substr(64, 2) != "  ") return bad();
    auto digest = line.substr(0, 64);
    if (!std::all_of(digest.begin(), digest.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }))
      return bad();
    auto name = std::string(line.substr(66));
    if (!out.emplace(name, std::string(digest)).second) return malformed("manifest: '" + name + "' is listed twice");
  }
  if (out.empty()) return malformed("manifest: empty");
  return out;
}

}  // namespace detail
}  // namespace tern::artifacts
