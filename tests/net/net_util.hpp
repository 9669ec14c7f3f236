// Helpers shared by the network tests: deterministic data, hashes, atomic file replacement.
#pragma once

#include "agent/download/https_download.hpp"
#include "broker-bridge/artifact_server.hpp"
#include "tests/support/testenv.hpp"

#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <chrono>

#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>

namespace tern::test {

/// Makes the test PKI before any test starts, so gen-certs never runs inside a coroutine's deadline.
/// Each test binary registers it once: AddGlobalTestEnvironment(new CertsEnvironment).
class CertsEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { certs(); }
};

/// Download options for loopback servers: the test CA, short timeouts and backoff, a fixed seed.
inline agent::DownloadOptions fast_options(int max_attempts = 100) {
  using namespace std::chrono_literals;
  agent::DownloadOptions o;
  o.ca_file = (certs() / "ca.crt").string();
  o.connect_timeout = 5s;
  o.read_timeout = 5s;
  o.backoff_initial = 10ms;
  o.backoff_max = 200ms;
  o.max_attempts = max_attempts;
  o.max_total = std::chrono::seconds(120);
  o.seed = 7;
  return o;
}

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
