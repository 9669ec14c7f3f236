// SHA-256 and artifact signatures with OpenSSL's EVP: RSA PKCS#1 v1.5 with SHA-256, ECDSA P-256
// with SHA-256 (written as raw 64-byte r||s like mender-artifact; DER accepted when reading), and
// Ed25519 (a Tern extension). Keys are PEM.
#pragma once

#include "common/error.hpp"

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace tern::artifacts {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  void update(std::span<const std::uint8_t> data);
  void update(std::string_view data) {
    update({reinterpret_cast<const std::uint8_t*>(data.data()), data.size()});
  }
  /// Lowercase hex digest; the object is reset for reuse.
  std::string hex_final();
  static std::string hex(std::string_view data);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Signs `message` with a PEM private key (RSA, EC P-256 or Ed25519) and returns the signature
/// base64-encoded, as manifest.sig holds it. Errors: unreadable key, unsupported key type.
Result<std::string> sign_base64(std::string_view message, std::string_view private_key_pem);

/// Verifies a base64 signature over `message` with a PEM public key (or certificate's key).
/// Errors: unreadable key, malformed base64, and "signature does not verify".
Result<void> verify_base64(std::string_view message, std::string_view signature_b64,
                           std::string_view public_key_pem);

/// Derives the PEM public key of a PEM private key (for tests and `tern-artifact`).
Result<std::string> public_key_of(std::string_view private_key_pem);

}  // namespace tern::artifacts
