#include "common/error.hpp"

#include <cstring>

namespace tern {
namespace {

class TernCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "tern"; }
  std::string message(int ev) const override {
    switch (static_cast<Errc>(ev)) {
      case Errc::ok: return "success";
      case Errc::invalid_argument: return "invalid argument";
      case Errc::io: return "input/output error";
      case Errc::protocol: return "protocol error";
      case Errc::not_found: return "not found";
      case Errc::cancelled: return "cancelled";
      case Errc::timeout: return "timed out";
      case Errc::unsupported: return "unsupported";
      case Errc::internal: return "internal error";
      case Errc::conflict: return "conflict";
    }
    return "unknown tern error";
  }
};

}  // namespace

const std::error_category& tern_category() noexcept {
  static const TernCategory category;
  return category;
}

Error Error::from_errno(std::string_view what, int err) {
  return Error(std::error_code(err, std::generic_category()),
               std::string(what) + ": " + std::strerror(err));
}

}  // namespace tern
