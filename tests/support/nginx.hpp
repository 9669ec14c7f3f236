// A real nginx serving a directory over HTTPS on an ephemeral loopback port, with the tests'
// server certificate from certs() (server.crt/key). Files under root() are served as
// /artifacts/<name>, like the bridge's ArtifactServer. Started as `nginx -c <generated conf>
// -g 'daemon off;'` with pid, logs and temp paths under its own TempDir; stopped on destruction.
//
//   tern::test::Nginx nginx;                       // started and accepting connections
//   write_file(nginx.root() / "a.bin", data);
//   nginx.url("a.bin");                            // "https://127.0.0.1:PORT/artifacts/a.bin"
#pragma once

#include "tests/support/testenv.hpp"

#include <memory>
#include <string>

namespace tern::test {

struct NginxOptions {
  bool tls = true;                  ///< false: plain HTTP
  bool require_client_cert = false; ///< verify clients against certs()/ca.crt
  std::string extra_server_conf;    ///< appended inside the server block (e.g. redirects)
};

class Nginx {
 public:
  /// Throws std::runtime_error (with nginx's log) if nginx does not start within 10 s.
  explicit Nginx(NginxOptions opts = {});
  ~Nginx();
  Nginx(const Nginx&) = delete;
  Nginx& operator=(const Nginx&) = delete;

  int port() const { return port_; }
  /// The served directory (initially empty).
  fs::path root() const { return dir_ / "root"; }
  /// "https://127.0.0.1:PORT/artifacts/<name>" (http:// without TLS).
  std::string url(const std::string& name) const;
  std::string log() const;

 private:
  NginxOptions opts_;
  TempDir dir_{"tern-nginx"};
  int port_ = 0;
  std::unique_ptr<Process> process_;
};

}  // namespace tern::test
