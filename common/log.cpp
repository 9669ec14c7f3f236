#include "common/log.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>

namespace tern::log {
namespace {

Level initial_level() {
  Level l = Level::info;
  if (const char* env = std::getenv("TERN_LOG")) parse_level(env, l);
  return l;
}

std::atomic<Level> g_level{initial_level()};
std::mutex g_mutex;
std::string g_program = "tern";

}  // namespace

void set_level(Level l) { g_level = l; }
Level level() { return g_level; }

bool parse_level(std::string_view w, Level& out) {
  if (w == "debug") out = Level::debug;
  else if (w == "info") out = Level::info;
  else if (w == "warn" || w == "warning") out = Level::warn;
  else if (w == "error") out = Level::error;
  else if (w == "off") out = Level::off;
  else return false;
  return true;
}

void set_program(std::string_view name) {
  std::lock_guard lock(g_mutex);
  g_program = name;
}

void write(Level l, std::string_view message) {
  using namespace std::chrono;
  auto now = system_clock::now();
  auto secs = system_clock::to_time_t(now);
  auto ms = duration_cast<milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
  static constexpr char letters[] = {'D', 'I', 'W', 'E', '-'};
  std::lock_guard lock(g_mutex);
  std::fprintf(stderr, "%s.%03dZ %s %c %.*s\n", stamp, static_cast<int>(ms), g_program.c_str(),
               letters[static_cast<int>(l)], static_cast<int>(message.size()), message.data());
  std::fflush(stderr);
}

}  // namespace tern::log
