// The bridge's artifact server: files of one directory over HTTPS (or plain HTTP for tests) as
// /artifacts/<filename>, with what a resuming downloader needs: Range requests (`bytes=a-b`, `a-`,
// `-n`; 206 + Content-Range, 416 + `Content-Range: bytes */size` when invalid or unsatisfiable, the
// whole file for a range unit other than bytes, as RFC 9110 14.2 requires),
// several ranges in one request (`bytes=a-b,c-d`: 206 multipart/byteranges, parts in the order
// asked, overlapping or touching ranges merged, more than 200 answered with the whole file: see
// byte_ranges.hpp), If-Range, a strong ETag (size, mtime, inode), Last-Modified, HEAD and
// keep-alive. Files (and each part) are streamed in fixed chunks, never buffered whole. 404 for a missing file, 400 for a path
// with subdirectories, `..` or other oddities, 405 for other methods.
//
// With `static_root` set it also serves a folder of static files (the dashboard) at every other
// path: "/" is index.html, "/vendor/x.js" the file vendor/x.js under it; a Content-Type by file
// extension, `X-Content-Type-Options: nosniff`, a Content-Security-Policy that allows scripts and
// styles only from the server itself and connections to it and to wss: (the broker). Path
// segments that are empty, start with "." or hold a backslash or control character are refused
// (400), and a file whose real path (symlinks resolved) leaves the folder is not served (404).
// `root` may then be empty: no artifacts, only the static files.
//
// Hostile clients (the server faces the internet): a connection must send its first bytes, finish
// the TLS handshake and send its first request header within `handshake_timeout` (each step gets
// it afresh, so a slow but live link passes and a silent or dribbling one is closed); between
// requests a keep-alive connection may idle for `idle_timeout`. Until its first byte arrives a
// connection holds no TLS state, only its socket and a small coroutine frame, so thousands of
// silent connections cost little memory. Connections over `max_connections`, or over
// `max_connections_per_address` from one client address, are closed at once after accept. After a
// wave of connections ends, freed heap is handed back to the system (malloc_trim); the per-socket
// state Asio pools is reserved at start for max_connections sockets, so it does not pin the pages
// a wave used.
//
// Thread safety: start() and stop() are called from any thread but not concurrently with each
// other; the counters may be read from any thread. The server runs on the given executor; the
// io_context must be run by the caller. stop() closes the acceptor and every open connection.
#pragma once

#include "common/error.hpp"

#include <boost/asio/any_io_executor.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

namespace tern::bridge {

struct ArtifactServerOptions {
  std::string bind_address = "127.0.0.1";
  std::uint16_t port = 0;          ///< 0: ephemeral
  std::filesystem::path root;      ///< files served as /artifacts/<filename> (no subdirs, no ..)
  std::string cert_file, key_file; ///< server certificate (empty: plain HTTP, tests only)
  std::string client_ca_file;      ///< non-empty: require a client certificate from this CA
  /// First byte, TLS handshake, first request header: each within this.
  std::chrono::milliseconds handshake_timeout{std::chrono::seconds(10)};
  /// Between requests on a keep-alive connection.
  std::chrono::milliseconds idle_timeout{std::chrono::seconds(30)};
  /// Writing a response (re-armed for every chunk).
  std::chrono::milliseconds io_timeout{std::chrono::seconds(60)};
  std::size_t max_connections = 4096;             ///< open at once, in total
  std::size_t max_connections_per_address = 64;   ///< open at once from one client IP address
  /// Non-empty: static files under it at every path outside /artifacts/ (see above).
  std::filesystem::path static_root;
};

class ArtifactServer {
 public:
  ArtifactServer(boost::asio::any_io_executor ex, ArtifactServerOptions opts);
  ~ArtifactServer();
  ArtifactServer(const ArtifactServer&) = delete;
  ArtifactServer& operator=(const ArtifactServer&) = delete;

  /// Loads the certificates, binds and starts accepting (co_spawn); returns the bound port.
  /// Errors: Errc::invalid_argument (bad root or certificate files), Errc::io (bind failed).
  Result<std::uint16_t> start();
  /// Stops accepting and closes open connections (asynchronously, on the server's executor).
  void stop();

  std::uint64_t bytes_served() const;  ///< body bytes sent in total
  std::uint64_t bytes_served(const std::string& filename) const;
  std::uint64_t requests() const;      ///< requests answered (any status)
  std::size_t connections() const;     ///< open now
  std::uint64_t refused() const;       ///< closed at once for being over a cap

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace tern::bridge
