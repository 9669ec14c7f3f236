// Helpers shared by the network tests: deterministic data, hashes, atomic file replacement.
#pragma once

#include "broker-bridge/artifact_server.hpp"
#include "tests/support/testenv.hpp"

#include <openssl/evp.h>

#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>

namespace tern::test {

/// `n` pseudo-random bytes from `seed` (the same every run).
inline std::string random_bytes(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const std::uint64_t v = rng();
    for (int k = 0; k < 8; ++k) s[i + k] = static_cast<char>(v >> (8 * k));
  }
  for (; i < n; ++i) s[i] = static_cast<char>(rng());
  return s;
}

/// Lower-case hex SHA-256 of `data`.
inline std::string sha256_hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1) {
    throw std::runtime_error("EVP_Digest failed");
  }
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out += digits[md[i] >> 4];
    out += digits[md[i] & 15];
  }
  return out;
}

/// Writes `contents` beside `p` and renames it over `p`: a new inode, as a real artifact upload.
inline void replace_file(const fs::path& p, std::string_view contents) {
  const fs::path tmp = p.string() + ".new";
  write_file(tmp, contents);
  fs::rename(tmp, p);
}

/// Options of an ArtifactServer serving `root` with the tests' PKI: TLS with its server
/// certificate (or plain HTTP), and client certificates of its CA required when asked.
inline bridge::ArtifactServerOptions served_options(const std::filesystem::path& root, bool tls, bool client_certs) {
  bridge::ArtifactServerOptions o{.root = root};
  if (tls) {
    o.cert_file = (certs() / "server.crt").string();
    o.key_file = (certs() / "server.key").string();
  }
  if (client_certs) o.client_ca_file = (certs() / "ca.crt").string();
  return o;
}

}  // namespace tern::test
