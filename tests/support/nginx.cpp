// The nginx fixture: writes a configuration into its TempDir and runs nginx in the foreground.
#include "tests/support/nginx.hpp"

#include <gtest/gtest.h>

#include <unistd.h>

#include <iostream>
#include <stdexcept>

namespace tern::test {

Nginx::Nginx(NginxOptions opts) : opts_(std::move(opts)) {
  fs::create_directories(root());
  fs::create_directories(dir_ / "tmp");
  // nginx may take a moment to give up on a port someone grabbed between free_port() and bind:
  // try a few ports before failing.
  for (int tries = 0; tries < 3; ++tries) {
    port_ = free_port();
    const std::string d = dir_.path().string();
    std::string conf;
    // Workers of a root master run as nobody and could not read the TempDir.
    if (::geteuid() == 0) conf += "user root root;\n";
    conf += "worker_processes 1;\n";
    conf += "pid " + d + "/nginx.pid;\n";
    conf += "error_log " + d + "/error.log info;\n";
    conf += "events { worker_connections 512; }\n";
    conf += "http {\n";
    conf += "  access_log " + d + "/access.log;\n";
    for (const char* t : {"client_body", "proxy", "fastcgi", "uwsgi", "scgi"}) {
      conf += std::string("  ") + t + "_temp_path " + d + "/tmp/" + t + ";\n";
    }
    conf += "  default_type application/octet-stream;\n";
    conf += "  sendfile on;\n";
    conf += "  server {\n";
    conf += "    listen 127.0.0.1:" + std::to_string(port_) + (opts_.tls ? " ssl" : "") + ";\n";
    if (opts_.tls) {
      conf += "    ssl_certificate " + (certs() / "server.crt").string() + ";\n";
      conf += "    ssl_certificate_key " + (certs() / "server.key").string() + ";\n";
      if (opts_.require_client_cert) {
        conf += "    ssl_client_certificate " + (certs() / "ca.crt").string() + ";\n";
        conf += "    ssl_verify_client on;\n";
      }
    }
    conf += "    location /artifacts/ { alias " + root().string() + "/; }\n";
    conf += opts_.extra_server_conf + "\n";
    conf += "  }\n}\n";
    write_file(dir_ / "nginx.conf", conf);

    process_ = std::make_unique<Process>(
        std::vector<std::string>{"nginx", "-p", d, "-e", d + "/error.log", "-c", d + "/nginx.conf", "-g",
                                 "daemon off;"},
        dir_ / "nginx.out");
    if (wait_for_port(port_, 10s)) return;
    process_->kill();
  }
  throw std::runtime_error("nginx did not accept connections:\n" + log());
}

Nginx::~Nginx() {
  if (process_) process_->stop(15, 5s);
  if (::testing::Test::HasFailure()) {
    std::cerr << "---- nginx log (" << dir_.path().string() << ") ----\n" << log() << "----\n";
  }
}

std::string Nginx::url(const std::string& name) const {
  return std::string(opts_.tls ? "https" : "http") + "://127.0.0.1:" + std::to_string(port_) +
         "/artifacts/" + name;
}

std::string Nginx::log() const {
  std::string out;
  for (const char* f : {"nginx.out", "error.log"}) {
    std::error_code ec;
    if (fs::exists(dir_ / f, ec)) out += read_file(dir_ / f);
  }
  return out;
}

}  // namespace tern::test
