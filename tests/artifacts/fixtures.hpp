// Shared by the artifact tests: payload files, signing keys and artifacts made on the fly.
#pragma once

#include "artifacts/reader.hpp"
#include "artifacts/writer.hpp"
#include "tests/support/testenv.hpp"

#include <random>
#include <string>

namespace tern::test {

/// Deterministic pseudo-random bytes (compressible enough to exercise the codecs: runs mixed in).
inline std::string payload_bytes(std::size_t size, unsigned seed = 1) {
  std::mt19937 rng(seed);
  std::string s(size, '\0');
  for (std::size_t i = 0; i < size; ++i) s[i] = static_cast<char>((i / 64) % 3 == 0 ? 'A' : rng() & 0xff);
  return s;
}

/// Keys made once per test process with the openssl CLI: rsa.key/.pub (traditional PEM, which
/// mender-artifact 3.9 needs), ec.key/.pub (P-256), ed.key/.pub (Ed25519).
inline const fs::path& keys() {
  static TempDir dir("tern-keys");
  static bool made = [] {
    auto d = shell_quote(dir.path().string());
    auto r = run("cd " + d +
                 " && openssl genrsa -traditional -out rsa.key 2048 && openssl rsa -in rsa.key -pubout -out rsa.pub"
                 " && openssl ecparam -genkey -name prime256v1 -noout -out ec.key && openssl ec -in ec.key -pubout -out ec.pub"
                 " && openssl genpkey -algorithm ED25519 -out ed.key && openssl pkey -in ed.key -pubout -out ed.pub");
    if (r.exit_code != 0) throw std::runtime_error("making keys: " + r.output);
    return true;
  }();
  (void)made;
  return dir.path();
}

inline std::string key(const std::string& name) { return read_file(keys() / name); }

/// Reads an artifact held in memory, fed in chunks of `chunk` bytes; the payload is collected.
struct ReadResult {
  Result<void> result;
  std::string payload;
  std::optional<artifacts::Header> header;
  bool header_before_payload = true;
};
inline ReadResult read_chunked(std::string_view artifact, artifacts::ReaderOptions options, std::size_t chunk) {
  ReadResult out;
  artifacts::Reader reader(
      std::move(options),
      [&](const artifacts::Header& h) -> Result<void> {
        if (!out.payload.empty()) out.header_before_payload = false;
        out.header = h;
        return {};
      },
      [&](std::span<const std::uint8_t> b) -> Result<void> {
        if (!out.header) out.header_before_payload = false;
        out.payload.append(reinterpret_cast<const char*>(b.data()), b.size());
        return {};
      });
  for (std::size_t pos = 0; pos < artifact.size(); pos += chunk) {
    auto piece = artifact.substr(pos, chunk);
    out.result = reader.feed({reinterpret_cast<const std::uint8_t*>(piece.data()), piece.size()});
    if (!out.result) return out;
  }
  out.result = reader.finish();
  return out;
}

}  // namespace tern::test
