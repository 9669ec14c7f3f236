#include "common/json.hpp"

#include <boost/json/serialize.hpp>
#include <simdjson.h>

namespace tern::json {

struct Document::State {
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  std::string what;
};

struct Object::Impl {
  std::shared_ptr<const Document::State> doc;  // keeps the parser's buffers alive
  simdjson::dom::object obj;
  std::string what;
};

namespace {

Error field_error(const Object::Impl& o, std::string_view key, std::string_view expected) {
  return fail(Errc::invalid_argument,
              o.what + ": field '" + std::string(key) + "': expected " + std::string(expected));
}

// Looks a key up; nullopt if missing or null.
std::optional<simdjson::dom::element> find(const Object::Impl& o, std::string_view key) {
  simdjson::dom::element e;
  if (o.obj[key].get(e) != simdjson::SUCCESS) return std::nullopt;
  if (e.is_null()) return std::nullopt;
  return e;
}

Error missing(const Object::Impl& o, std::string_view key) {
  return fail(Errc::invalid_argument, o.what + ": missing field '" + std::string(key) + "'");
}

Result<std::string> as_string(const Object::Impl& o, std::string_view key, simdjson::dom::element e) {
  std::string_view s;
  if (e.get(s) != simdjson::SUCCESS) return field_error(o, key, "a string");
  return std::string(s);
}

Result<std::uint64_t> as_u64(const Object::Impl& o, std::string_view key, simdjson::dom::element e) {
  std::uint64_t v;
  if (e.get(v) != simdjson::SUCCESS) return field_error(o, key, "an unsigned integer");
  return v;
}

Result<std::int64_t> as_i64(const Object::Impl& o, std::string_view key, simdjson::dom::element e) {
  std::int64_t v;
  if (e.get(v) != simdjson::SUCCESS) return field_error(o, key, "an integer");
  return v;
}

Result<bool> as_bool(const Object::Impl& o, std::string_view key, simdjson::dom::element e) {
  bool v;
  if (e.get(v) != simdjson::SUCCESS) return field_error(o, key, "true or false");
  return v;
}

Result<std::vector<std::string>> as_strings(const Object::Impl& o, std::string_view key,
                                            simdjson::dom::element e) {
  simdjson::dom::array arr;
  if (e.get(arr) != simdjson::SUCCESS) return field_error(o, key, "an array of strings");
  std::vector<std::string> out;
  for (auto item : arr) {
    std::string_view s;
    if (item.get(s) != simdjson::SUCCESS) return field_error(o, key, "an array of strings");
    out.emplace_back(s);
  }
  return out;
}

}  // namespace

bool Object::has(std::string_view key) const { return find(*impl_, key).has_value(); }

std::vector<std::string> Object::keys() const {
  std::vector<std::string> out;
  for (auto field : impl_->obj) out.emplace_back(field.key);
  return out;
}

Result<std::string> Object::string(std::string_view key) const {
  auto e = find(*impl_, key);
  if (!e) return missing(*impl_, key);
  return as_string(*impl_, key, *e);
}

Result<std::uint64_t> Object::u64(std::string_view key) const {
  auto e = find(*impl_, key);
  if (!e) return missing(*impl_, key);
  return as_u64(*impl_, key, *e);
}

Result<std::int64_t> Object::i64(std::string_view key) const {
  auto e = find(*impl_, key);
  if (!e) return missing(*impl_, key);
  return as_i64(*impl_, key, *e);
}

Result<bool> Object::boolean(std::string_view key) const {
  auto e = find(*impl_, key);
  if (!e) return missing(*impl_, key);
  return as_bool(*impl_, key, *e);
}

Result<Object> Object::object(std::string_view key) const {
  auto e = find(*impl_, key);
  if (!e) return missing(*impl_, key);
  simdjson::dom::object obj;
  if (e->get(obj) != simdjson::SUCCESS) return field_error(*impl_, key, "an object");
  auto impl = std::make_shared<Impl>(Impl{impl_->doc, obj, impl_->what + ": " + std::string(key)});
  return Object(std::move(impl));
}

Result<std::vector<std::string>> Object::strings(std::string_view key) const {
  auto e = find(*impl_, key);
  if (!e) return missing(*impl_, key);
  return as_strings(*impl_, key, *e);
}

Result<std::vector<Object>> Object::objects(std::string_view key) const {
  auto e = find(*impl_, key);
  if (!e) return missing(*impl_, key);
  simdjson::dom::array arr;
  if (e->get(arr) != simdjson::SUCCESS) return field_error(*impl_, key, "an array of objects");
  std::vector<Object> out;
  std::size_t i = 0;
  for (auto item : arr) {
    simdjson::dom::object obj;
    if (item.get(obj) != simdjson::SUCCESS) return field_error(*impl_, key, "an array of objects");
    out.push_back(Object(std::make_shared<Impl>(
        Impl{impl_->doc, obj, impl_->what + ": " + std::string(key) + "[" + std::to_string(i++) + "]"})));
  }
  return out;
}

Result<std::string> Object::string_or(std::string_view key, std::string fallback) const {
  auto e = find(*impl_, key);
  if (!e) return fallback;
  return as_string(*impl_, key, *e);
}

Result<std::uint64_t> Object::u64_or(std::string_view key, std::uint64_t fallback) const {
  auto e = find(*impl_, key);
  if (!e) return fallback;
  return as_u64(*impl_, key, *e);
}

Result<std::int64_t> Object::i64_or(std::string_view key, std::int64_t fallback) const {
  auto e = find(*impl_, key);
  if (!e) return fallback;
  return as_i64(*impl_, key, *e);
}

Result<bool> Object::boolean_or(std::string_view key, bool fallback) const {
  auto e = find(*impl_, key);
  if (!e) return fallback;
  return as_bool(*impl_, key, *e);
}

Result<std::vector<std::string>> Object::strings_or(std::string_view key,
                                                    std::vector<std::string> fallback) const {
  auto e = find(*impl_, key);
  if (!e) return fallback;
  return as_strings(*impl_, key, *e);
}

Result<std::map<std::string, std::string>> Object::string_map_or_empty(std::string_view key) const {
  auto e = find(*impl_, key);
  if (!e) return std::map<std::string, std::string>{};
  simdjson::dom::object obj;
  if (e->get(obj) != simdjson::SUCCESS) return field_error(*impl_, key, "an object");
  return Object(std::make_shared<Impl>(Impl{impl_->doc, obj, impl_->what + ": " + std::string(key)}))
      .string_map();
}

Result<std::map<std::string, std::string>> Object::string_map() const {
  std::map<std::string, std::string> out;
  for (auto field : impl_->obj) {
    auto v = field.value;
    std::string_view s;
    std::int64_t i;
    std::uint64_t u;
    bool b;
    if (v.get(s) == simdjson::SUCCESS) out.emplace(field.key, s);
    else if (v.get(i) == simdjson::SUCCESS) out.emplace(field.key, std::to_string(i));
    else if (v.get(u) == simdjson::SUCCESS) out.emplace(field.key, std::to_string(u));
    else if (v.get(b) == simdjson::SUCCESS) out.emplace(field.key, b ? "true" : "false");
    else return field_error(*impl_, field.key, "a string, integer or boolean");
  }
  return out;
}

Result<std::string> Object::raw(std::string_view key) const {
  auto e = find(*impl_, key);
  if (!e) return missing(*impl_, key);
  return simdjson::minify(*e);
}

Result<Document> Document::parse(std::string_view text, std::string_view what, std::size_t max_size) {
  if (text.size() > max_size)
    return fail(Errc::invalid_argument, std::string(what) + ": " + std::to_string(text.size()) +
                                            " bytes is over the limit of " + std::to_string(max_size));
  auto state = std::make_shared<State>();
  state->what = what;
  // parse() copies into its own padded buffer (realloc_if_needed), so `text` need not be padded.
  auto err = state->parser.parse(text.data(), text.size(), true).get(state->root);
  if (err != simdjson::SUCCESS)
    return fail(Errc::invalid_argument, std::string(what) + ": not valid JSON (" +
                                            simdjson::error_message(err) + ")");
  Document d;
  d.state_ = std::move(state);
  return d;
}

Result<Object> Document::root() const {
  simdjson::dom::object obj;
  if (state_->root.get(obj) != simdjson::SUCCESS)
    return fail(Errc::invalid_argument, state_->what + ": expected a JSON object");
  auto impl = std::make_shared<Object::Impl>(Object::Impl{state_, obj, state_->what});
  return Object(std::move(impl));
}

std::string write(const boost::json::value& v) { return boost::json::serialize(v); }

}  // namespace tern::json
