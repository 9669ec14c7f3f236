// Small text helpers shared by the parts.
#pragma once

#include <charconv>
#include <cstdint>
#include <optional>
#include <string_view>

namespace tern {

/// A whole string as a decimal unsigned number; nullopt if empty, not all digits, or too large.
inline std::optional<std::uint64_t> parse_u64(std::string_view s) {
  std::uint64_t v = 0;
  if (s.empty()) return std::nullopt;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace tern
