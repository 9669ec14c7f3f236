// Errors as values at module edges.
//
// tern::Error carries a machine-readable code (a std::error_code, so each module can define its own
// enum and category) and a human message that says what was being done ("reading manifest: line 3 is
// not '<sha256>  <name>'"). Layers add context with Error::context(), innermost last:
//   "installing artifact: verifying payload: sha256 mismatch (expected ..., got ...)".
//
// tern::Result<T> is boost::system::result<T, tern::Error>. `.value()` on an error throws
// tern::ErrorException, so coroutine bodies may use exceptions internally and convert at their top.
#pragma once

#include <boost/system/result.hpp>

#include <source_location>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>

namespace tern {

/// Generic codes for errors that do not belong to a module's own enum.
enum class Errc {
  ok = 0,
  invalid_argument,   ///< caller passed something malformed (bad config, bad CLI flag, bad message)
  io,                 ///< a file or device operation failed (message names the path)
  protocol,           ///< a peer sent something that breaks the protocol
  not_found,          ///< a named thing does not exist
  cancelled,          ///< the operation was cancelled
  timeout,            ///< a deadline passed
  unsupported,        ///< valid but not supported by this build
  internal,           ///< a bug: an invariant did not hold
  conflict,           ///< what was read changed before it could be acted on: the same call may succeed again
};

}  // namespace tern

template <>
struct std::is_error_code_enum<tern::Errc> : std::true_type {};

namespace tern {

const std::error_category& tern_category() noexcept;
inline std::error_code make_error_code(Errc e) noexcept { return {static_cast<int>(e), tern_category()}; }

class Error {
 public:
  Error() = default;
  Error(std::error_code code, std::string message) : code_(code), message_(std::move(message)) {}
  Error(Errc code, std::string message) : Error(make_error_code(code), std::move(message)) {}

  const std::error_code& code() const noexcept { return code_; }
  const std::string& message() const noexcept { return message_; }

  /// Prefixes what the caller was doing: Error{...,"bad tar header"}.context("reading artifact")
  /// gives "reading artifact: bad tar header". Returns a copy so it chains in return statements.
  Error context(std::string_view what) const {
    return Error(code_, std::string(what) + ": " + message_);
  }

  /// Builds an Error from errno (or an explicit error number) and a description of the operation.
  static Error from_errno(std::string_view what, int err);

 private:
  std::error_code code_;
  std::string message_;
};

/// Thrown by Result<T>::value() on an error, and by code that prefers exceptions inside a coroutine.
class ErrorException : public std::runtime_error {
 public:
  explicit ErrorException(Error e) : std::runtime_error(e.message()), error_(std::move(e)) {}
  const Error& error() const noexcept { return error_; }

 private:
  Error error_;
};

[[noreturn]] inline void throw_exception_from_error(const Error& e, const boost::source_location&) {
  throw ErrorException(e);
}

template <class T = void>
using Result = boost::system::result<T, Error>;

/// Convenience for `return tern::fail(Errc::io, "opening " + path);`
inline Error fail(Errc code, std::string message) { return Error(code, std::move(message)); }

}  // namespace tern
