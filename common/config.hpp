// A JSON configuration file with typed, defaulted getters whose errors name the file and the key.
//
//   auto cfg = tern::Config::load("/etc/tern/agent.conf");         // Result<Config>
//   auto uri = cfg->string("ServerURI", "ssl://localhost:8883");  // Result<std::string>
//
// Keys are top-level members of one JSON object; nested objects are reached with object().
// unknown_keys() lists members a program does not know, so it can warn about typos.
#pragma once

#include "common/error.hpp"
#include "common/json.hpp"

#include <chrono>
#include <filesystem>
#include <initializer_list>
#include <string>
#include <vector>

namespace tern {

class Config {
 public:
  /// Reads and parses `path`. Errors: the file cannot be read, is not JSON, or is not an object.
  static Result<Config> load(const std::filesystem::path& path);
  /// Parses configuration text; `origin` names it in errors.
  static Result<Config> parse(std::string_view text, std::string origin);

  Result<std::string> string(std::string_view key, std::string fallback) const {
    return root_.string_or(key, std::move(fallback));
  }
  Result<std::string> required_string(std::string_view key) const { return root_.string(key); }
  Result<std::uint64_t> u64(std::string_view key, std::uint64_t fallback) const {
    return root_.u64_or(key, fallback);
  }
  Result<bool> boolean(std::string_view key, bool fallback) const { return root_.boolean_or(key, fallback); }
  Result<std::vector<std::string>> strings(std::string_view key, std::vector<std::string> fallback) const {
    return root_.strings_or(key, std::move(fallback));
  }
  /// A duration given as whole seconds.
  Result<std::chrono::seconds> seconds(std::string_view key, std::chrono::seconds fallback) const;
  /// A nested object, or an error if missing.
  Result<json::Object> object(std::string_view key) const { return root_.object(key); }
  bool has(std::string_view key) const { return root_.has(key); }

  /// Members of the file not in `known`.
  std::vector<std::string> unknown_keys(std::initializer_list<std::string_view> known) const;

  const std::string& origin() const { return origin_; }

 private:
  Config(json::Document doc, json::Object root, std::string origin)
      : doc_(std::move(doc)), root_(std::move(root)), origin_(std::move(origin)) {}
  json::Document doc_;
  json::Object root_;
  std::string origin_;
};

}  // namespace tern
