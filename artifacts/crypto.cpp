#include "artifacts/crypto.hpp"

#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include <vector>

namespace tern::artifacts {
namespace {

struct Free {
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
  void operator()(ECDSA_SIG* p) const { ECDSA_SIG_free(p); }
  void operator()(BIGNUM* p) const { BN_free(p); }
};
template <class T>
using Ptr = std::unique_ptr<T, Free>;

std::string openssl_error() {
  unsigned long e = ERR_get_error();
  if (!e) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

Error sig_error(std::string msg) { return fail(Errc::invalid_argument, std::move(msg)); }

Result<Ptr<EVP_PKEY>> load_key(std::string_view pem, bool is_private) {
  Ptr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  EVP_PKEY* key = is_private ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr)
                             : PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr);
  if (!key && !is_private) {
    // A certificate is fine too.
    Ptr<BIO> again(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
    if (X509* cert = PEM_read_bio_X509(again.get(), nullptr, nullptr, nullptr)) {
      key = X509_get_pubkey(cert);
      X509_free(cert);
    }
  }
  if (!key) {
    ERR_clear_error();
    return sig_error(std::string("not a PEM ") + (is_private ? "private" : "public") + " key");
  }
  return Ptr<EVP_PKEY>(key);
}

Result<std::vector<unsigned char>> unbase64(std::string_view b64) {
  auto raw = base64_decode(b64);
  if (!raw) return sig_error("manifest.sig: not valid base64");
  return std::vector<unsigned char>(raw->begin(), raw->end());
}

}  // namespace

// SHA256_CTX rather than EVP: its state is plain data that can be saved and restored; EVP's is
// opaque. The low-level calls are deprecated in OpenSSL 3.0 but present, and run the same
// assembly (SHA-NI where the CPU has it).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

struct Sha256::Impl {
  SHA256_CTX ctx;
  Impl() { SHA256_Init(&ctx); }
};

Sha256::Sha256() : impl_(std::make_unique<Impl>()) {}
Sha256::~Sha256() = default;
Sha256::Sha256(const Sha256& o) : impl_(std::make_unique<Impl>(*o.impl_)) {}
Sha256& Sha256::operator=(const Sha256& o) {
  if (this != &o) impl_ = std::make_unique<Impl>(*o.impl_);
  return *this;
}
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::update(std::span<const std::uint8_t> d) { SHA256_Update(&impl_->ctx, d.data(), d.size()); }

namespace {
constexpr char hex_digits[] = "0123456789abcdef";

void put_hex(std::string& out, std::uint64_t v, int digits) {
  for (int i = digits - 1; i >= 0; --i) out += hex_digits[(v >> (4 * i)) & 15];
}

// Parses exactly `digits` hex digits at `pos`.
bool get_hex(std::string_view s, std::size_t pos, int digits, std::uint64_t& v) {
  if (pos + static_cast<std::size_t>(digits) > s.size()) return false;
  v = 0;
  for (int i = 0; i < digits; ++i) {
    char c = s[pos + static_cast<std::size_t>(i)];
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return false;
    v = v << 4 | static_cast<unsigned>(d);
  }
  return true;
}

constexpr std::string_view state_prefix = "sha256-state:";
}  // namespace

std::string Sha256::hex_final() {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256_Final(md, &impl_->ctx);
  SHA256_Init(&impl_->ctx);
  std::string out;
  for (unsigned char c : md) put_hex(out, c, 2);
  return out;
}

std::uint64_t Sha256::size() const {
  const auto& c = impl_->ctx;
  return ((std::uint64_t{c.Nh} << 32) | c.Nl) / 8;
}

std::string Sha256::save_state() const {
  const auto& c = impl_->ctx;
  std::string out(state_prefix);
  for (auto w : c.h) put_hex(out, w, 8);
  out += ':';
  put_hex(out, size(), 16);
  out += ':';
  // md32_common keeps the unfinished block as bytes in `data`.
  const auto* block = reinterpret_cast<const unsigned char*>(c.data);
  for (unsigned i = 0; i < c.num; ++i) put_hex(out, block[i], 2);
  return out;
}

Result<Sha256> Sha256::restore_state(std::string_view s) {
  auto bad = [](std::string why) { return fail(Errc::invalid_argument, "SHA-256 state: " + std::move(why)); };
  if (!s.starts_with(state_prefix)) return bad("does not start with '" + std::string(state_prefix) + "'");
  std::size_t pos = state_prefix.size();
  Sha256 h;
  auto& c = h.impl_->ctx;
  for (auto& w : c.h) {
    std::uint64_t v = 0;
    if (!get_hex(s, pos, 8, v)) return bad("the chaining words are not 64 hex digits");
    w = static_cast<SHA_LONG>(v);
    pos += 8;
  }
  std::uint64_t count = 0;
  if (pos >= s.size() || s[pos] != ':' || !get_hex(s, pos + 1, 16, count))
    return bad("the byte count is not 16 hex digits after ':'");
  pos += 17;
  if (count >> 61) return bad("byte count " + std::to_string(count) + " is out of range");
  if (pos >= s.size() || s[pos] != ':') return bad("no ':' before the pending bytes");
  ++pos;
  const std::size_t pending = static_cast<std::size_t>(count % SHA256_CBLOCK);
  if (s.size() - pos != 2 * pending)
    return bad(std::to_string((s.size() - pos) / 2) + " pending bytes for a byte count of " + std::to_string(count) +
               " (expected " + std::to_string(pending) + ")");
  auto* block = reinterpret_cast<unsigned char*>(c.data);
  for (std::size_t i = 0; i < pending; ++i, pos += 2) {
    std::uint64_t v = 0;
    if (!get_hex(s, pos, 2, v)) return bad("the pending bytes are not hex");
    block[i] = static_cast<unsigned char>(v);
  }
  const std::uint64_t bits = count * 8;
  c.Nl = static_cast<SHA_LONG>(bits & 0xffffffffu);
  c.Nh = static_cast<SHA_LONG>(bits >> 32);
  c.num = static_cast<unsigned>(pending);
  return h;
}

#pragma GCC diagnostic pop

std::string Sha256::hex(std::string_view data) {
  Sha256 h;
  h.update(data);
  return h.hex_final();
}

Result<std::string> sign_base64(std::string_view message, std::string_view private_key_pem) {
  auto key = load_key(private_key_pem, true);
  if (!key) return key.error().context("signing");
  int type = EVP_PKEY_base_id(key->get());
  if (type != EVP_PKEY_RSA && type != EVP_PKEY_EC && type != EVP_PKEY_ED25519)
    return sig_error("signing: unsupported key type (RSA, EC P-256 or Ed25519)");
  Ptr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
  const EVP_MD* md = type == EVP_PKEY_ED25519 ? nullptr : EVP_sha256();
  if (EVP_DigestSignInit(ctx.get(), nullptr, md, nullptr, key->get()) != 1)
    return sig_error("signing: " + openssl_error());
  std::size_t len = 0;
  auto msg = reinterpret_cast<const unsigned char*>(message.data());
  if (EVP_DigestSign(ctx.get(), nullptr, &len, msg, message.size()) != 1) return sig_error("signing: " + openssl_error());
  std::vector<unsigned char> sig(len);
  if (EVP_DigestSign(ctx.get(), sig.data(), &len, msg, message.size()) != 1)
    return sig_error("signing: " + openssl_error());
  sig.resize(len);
  if (type == EVP_PKEY_EC) {
    // DER → raw r||s, 32 bytes each, as mender-artifact writes ECDSA P-256 signatures.
    const unsigned char* p = sig.data();
    Ptr<ECDSA_SIG> es(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(sig.size())));
    if (!es) return sig_error("signing: " + openssl_error());
    std::vector<unsigned char> raw(64);
    BN_bn2binpad(ECDSA_SIG_get0_r(es.get()), raw.data(), 32);
    BN_bn2binpad(ECDSA_SIG_get0_s(es.get()), raw.data() + 32, 32);
    sig = std::move(raw);
  }
  return base64_encode({sig.data(), sig.size()});
}

Result<void> verify_base64(std::string_view message, std::string_view signature_b64, std::string_view public_key_pem) {
  auto key = load_key(public_key_pem, false);
  if (!key) return key.error().context("verifying manifest.sig");
  auto sig = unbase64(signature_b64);
  if (!sig) return sig.error();
  int type = EVP_PKEY_base_id(key->get());
  if (type == EVP_PKEY_EC && sig->size() == 64) {
    // Raw r||s → DER for OpenSSL.
    Ptr<ECDSA_SIG> es(ECDSA_SIG_new());
    BIGNUM* r = BN_bin2bn(sig->data(), 32, nullptr);
    BIGNUM* s = BN_bin2bn(sig->data() + 32, 32, nullptr);
    ECDSA_SIG_set0(es.get(), r, s);
    unsigned char* der = nullptr;
    int n = i2d_ECDSA_SIG(es.get(), &der);
    if (n <= 0) return sig_error("verifying manifest.sig: " + openssl_error());
    sig->assign(der, der + n);
    OPENSSL_free(der);
  }
  Ptr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
  const EVP_MD* md = type == EVP_PKEY_ED25519 ? nullptr : EVP_sha256();
  if (EVP_DigestVerifyInit(ctx.get(), nullptr, md, nullptr, key->get()) != 1)
    return sig_error("verifying manifest.sig: " + openssl_error());
  int rc = EVP_DigestVerify(ctx.get(), sig->data(), sig->size(), reinterpret_cast<const unsigned char*>(message.data()),
                            message.size());
  ERR_clear_error();
  if (rc != 1) return sig_error("manifest.sig: signature does not verify with the configured key");
  return {};
}

Result<std::string> public_key_of(std::string_view private_key_pem) {
  auto key = load_key(private_key_pem, true);
  if (!key) return key.error();
  Ptr<BIO> bio(BIO_new(BIO_s_mem()));
  if (PEM_write_bio_PUBKEY(bio.get(), key->get()) != 1) return sig_error(openssl_error());
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

std::string base64_encode(std::span<const std::uint8_t> raw) {
  std::string out(4 * ((raw.size() + 2) / 3), '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), raw.data(), static_cast<int>(raw.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

std::optional<std::string> base64_decode(std::string_view b64) {
  std::string stripped;
  std::string_view s = b64;
  if (b64.find_first_of("\n\r ") != std::string_view::npos) {
    stripped.reserve(b64.size());
    for (char c : b64)
      if (c != '\n' && c != '\r' && c != ' ') stripped += c;
    s = stripped;
  }
  if (s.empty() || s.size() % 4) return std::nullopt;
  std::string out(s.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(s.data()),
                          static_cast<int>(s.size()));
  if (n < 0) return std::nullopt;
  std::size_t pad = (s.end()[-1] == '=') + (s.end()[-2] == '=');
  out.resize(static_cast<std::size_t>(n) - pad);
  return out;
}

}  // namespace tern::artifacts
