// JSON for Tern's messages and configuration: simdjson parses, Boost.JSON writes.
//
// Parsing gives a json::Object, a read-only view with typed getters that return errors naming the
// field ("field 'size': expected an unsigned integer"). Byte counts and times are integers
// (Boost.JSON would print doubles as 4.25E1).
//
// Thread safety: a Document and the Objects taken from it belong to one thread at a time.
#pragma once

#include "common/error.hpp"

#include <boost/json/value.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tern::json {

/// Largest document parse() accepts unless told otherwise: protocol messages are small.
inline constexpr std::size_t default_max_size = 256 * 1024;

class Document;

/// A JSON object inside a Document. Copyable, cheap; valid while its Document lives.
class Object {
 public:
  bool has(std::string_view key) const;
  /// Keys in document order.
  std::vector<std::string> keys() const;

  /// Required fields: an error if missing or of another type.
  Result<std::string> string(std::string_view key) const;
  Result<std::uint64_t> u64(std::string_view key) const;
  Result<std::int64_t> i64(std::string_view key) const;
  Result<bool> boolean(std::string_view key) const;
  Result<Object> object(std::string_view key) const;
  Result<std::vector<std::string>> strings(std::string_view key) const;
  /// An array of objects.
  Result<std::vector<Object>> objects(std::string_view key) const;

  /// Optional fields: `fallback` if missing (or null); an error only if present with another type.
  Result<std::string> string_or(std::string_view key, std::string fallback) const;
  Result<std::uint64_t> u64_or(std::string_view key, std::uint64_t fallback) const;
  Result<std::int64_t> i64_or(std::string_view key, std::int64_t fallback) const;
  Result<bool> boolean_or(std::string_view key, bool fallback) const;
  Result<std::vector<std::string>> strings_or(std::string_view key, std::vector<std::string> fallback) const;
  /// An object whose values are all strings, numbers or booleans, rendered as strings
  /// (inventory attributes, provides). Missing gives an empty map.
  Result<std::map<std::string, std::string>> string_map_or_empty(std::string_view key) const;
  /// This object itself as such a map.
  Result<std::map<std::string, std::string>> string_map() const;

  /// The raw JSON text of a member (minified), e.g. to store meta-data as it came.
  Result<std::string> raw(std::string_view key) const;

  struct Impl;  // internal: the simdjson view and its document

 private:
  friend class Document;
  explicit Object(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

/// A parsed document. Owns the simdjson parser and its buffers.
class Document {
 public:
  /// Parses `text`; an error names `what` ("deployment message") and the problem. Refuses
  /// documents over `max_size` bytes before parsing.
  static Result<Document> parse(std::string_view text, std::string_view what,
                                std::size_t max_size = default_max_size);
  /// The root, which must be an object.
  Result<Object> root() const;

 private:
  friend class Object;
  struct State;
  std::shared_ptr<State> state_;
};

/// Serialises a Boost.JSON value compactly.
std::string write(const boost::json::value& v);

}  // namespace tern::json
