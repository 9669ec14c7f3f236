// Wall-clock time as Tern records and sends it.
#pragma once

#include <chrono>
#include <cstdint>

namespace tern {

/// Whole seconds since the Unix epoch: the `time` of status and presence messages, the times in the
/// agent's state files and the bridge's records. An integer, because Boost.JSON writes doubles in
/// exponent form.
inline std::int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace tern
