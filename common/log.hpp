// Minimal leveled logging to stderr, safe from any thread.
//
//   tern::log::info("connected to ", uri, " as ", client_id);
//   tern::log::warn("dropping message on ", topic, ": ", err.message());
//
// Lines look like "2026-11-24T23:59:01.123Z tern-agent W dropping message on ...". The level comes
// from set_level() or the TERN_LOG environment variable (debug, info, warn, error; default info).
#pragma once

#include <sstream>
#include <string>
#include <string_view>

namespace tern::log {

enum class Level { debug = 0, info = 1, warn = 2, error = 3, off = 4 };

void set_level(Level level);
Level level();
/// Parses "debug", "info", "warn", "error", "off"; nullopt-like false on an unknown word.
bool parse_level(std::string_view word, Level& out);
/// The program name printed in every line (default "tern").
void set_program(std::string_view name);
/// Writes one whole line; lines from different threads never interleave.
void write(Level level, std::string_view message);

template <class... Args>
void emit(Level lvl, const Args&... args) {
  if (lvl < level()) return;
  std::ostringstream os;
  (os << ... << args);
  write(lvl, os.str());
}

template <class... Args> void debug(const Args&... a) { emit(Level::debug, a...); }
template <class... Args> void info(const Args&... a) { emit(Level::info, a...); }
template <class... Args> void warn(const Args&... a) { emit(Level::warn, a...); }
template <class... Args> void error(const Args&... a) { emit(Level::error, a...); }

}  // namespace tern::log
