// SHA-256 and artifact signatures with OpenSSL's EVP: RSA PKCS#1 v1.5 with SHA-256, ECDSA P-256
// with SHA-256 (written as raw 64-byte r||s like mender-artifact; DER accepted when reading), and
// Ed25519 (a Tern extension). Keys are PEM.
#pragma once

#include "common/error.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace tern::artifacts {

/// Incremental SHA-256 whose running state can be saved and restored (an interrupted install
/// resumes its hashes from a checkpoint, see reader.hpp). Copyable: a copy is a snapshot.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&);
  Sha256& operator=(const Sha256&);
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  void update(std::span<const std::uint8_t> data);
  void update(std::string_view data) {
    update({reinterpret_cast<const std::uint8_t*>(data.data()), data.size()});
  }
  /// Lowercase hex digest; the object is reset for reuse.
  std::string hex_final();
  static std::string hex(std::string_view data);

  /// Bytes hashed since the start (or the last hex_final()).
  std::uint64_t size() const;
  /// The running state as text: "sha256-state:" + the eight chaining words, the byte count and the
  /// bytes of the unfinished block, all hex. Independent of OpenSSL's struct layout.
  std::string save_state() const;
  /// Rebuilds a hash from save_state()'s text. Errors: Errc::invalid_argument naming what is
  /// malformed (prefix, length, hex digit, a byte count that disagrees with the pending block).
  static Result<Sha256> restore_state(std::string_view state);

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

/// Base64 (with padding, no newlines), as manifest.sig and the chunk index use it.
std::string base64_encode(std::span<const std::uint8_t> raw);
/// Decodes base64 (newlines and spaces ignored); nullopt when it is not valid base64.
std::optional<std::string> base64_decode(std::string_view b64);

/// Derives the PEM public key of a PEM private key (for tests and `tern-artifact`).
Result<std::string> public_key_of(std::string_view private_key_pem);

}  // namespace tern::artifacts
