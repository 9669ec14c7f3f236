// The bridge's server with a static folder (the dashboard), probed with curl --path-as-is (which
// sends ".." as it is, unlike a browser): content types and headers, index.html, traversal in
// every spelling, hidden files, symlinks out of the folder, and artifacts beside it.
#include "broker-bridge/artifact_server.hpp"
#include "tests/net/net_util.hpp"
#include "tests/support/testenv.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <gtest/gtest.h>

#include <thread>

namespace tern::test {
namespace {

namespace asio = boost::asio;

class DashboardServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(site / "vendor");
    write_file(site / "index.html", "<!doctype html><title>t</title>");
    write_file(site / "app.js", "'use strict';");
    write_file(site / "style.css", "body{}");
    write_file(site / "vendor" / "lib.js", "var lib;");
    write_file(site / ".secret", "hidden");
    write_file(outside / "secret.txt", "outside the folder");
    fs::create_symlink(outside / "secret.txt", site / "escape.txt");
    write_file(artifacts / "a.mender", "artifact bytes");
  }
  void start(bool with_artifacts) {
    bridge::ArtifactServerOptions o = served_options(with_artifacts ? artifacts.path() : fs::path(), true, false);
    o.static_root = site.path();
    server = std::make_unique<bridge::ArtifactServer>(io.get_executor(), o);
    auto p = server->start();
    ASSERT_TRUE(p) << p.error().message();
    port = *p;
    thread = std::thread([this] { io.run(); });
  }
  void TearDown() override {
    if (server) server->stop();
    guard.reset();
    io.stop();
    if (thread.joinable()) thread.join();
  }
  struct Response {
    int status = 0;
    std::string headers, body;
  };
  Response get(const std::string& path) {
    const std::string h = (tmp / "h").string(), b = (tmp / "b").string();
    std::error_code ec;
    fs::remove(b, ec);
    fs::remove(h, ec);
    const auto r = run("curl -sS --path-as-is --cacert " + shell_quote((certs() / "ca.crt").string()) + " -D " +
                       shell_quote(h) + " -o " + shell_quote(b) + " -w '%{http_code}' " +
                       shell_quote("https://127.0.0.1:" + std::to_string(port) + path));
    Response res;
    res.status = std::atoi(r.output.c_str());
    if (fs::exists(h)) {
      res.headers = read_file(h);
      for (auto& c : res.headers) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    if (fs::exists(b)) res.body = read_file(b);
    return res;
  }

  TempDir site{"tern-dashboard"}, outside{"tern-outside"}, artifacts{"tern-artifacts"}, tmp{"tern-curl"};
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> guard{io.get_executor()};
  std::unique_ptr<bridge::ArtifactServer> server;
  std::uint16_t port = 0;
  std::thread thread;
};

TEST_F(DashboardServerTest, ServesFilesWithTheirTypesAndSafetyHeaders) {
  start(false);
  auto index = get("/");
  EXPECT_EQ(index.status, 200);
  EXPECT_EQ(index.body, "<!doctype html><title>t</title>");
  EXPECT_NE(index.headers.find("content-type: text/html; charset=utf-8"), std::string::npos) << index.headers;
  EXPECT_NE(index.headers.find("x-content-type-options: nosniff"), std::string::npos);
  EXPECT_NE(index.headers.find("content-security-policy: default-src 'self'"), std::string::npos);
  EXPECT_EQ(get("/index.html?broker=wss://x").body, index.body);
  auto js = get("/app.js");
  EXPECT_EQ(js.status, 200);
  EXPECT_NE(js.headers.find("content-type: text/javascript; charset=utf-8"), std::string::npos) << js.headers;
  EXPECT_NE(get("/style.css").headers.find("content-type: text/css"), std::string::npos);
  auto lib = get("/vendor/lib.js");
  EXPECT_EQ(lib.status, 200);
  EXPECT_EQ(lib.body, "var lib;");
  EXPECT_EQ(get("/vendor/").status, 404) << "no index.html there, and no listing";
  EXPECT_EQ(get("/nope.js").status, 404);
}

TEST_F(DashboardServerTest, NothingOutsideTheFolder) {
  start(false);
  for (const char* path : {"/../secret.txt", "/vendor/../../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E%2Fsecret.txt",
                           "/vendor/%2e%2e/%2e%2e/etc/passwd", "/..%5c..%5cetc%5cpasswd", "/.secret", "//etc/passwd",
                           "/vendor//lib.js", "/%00index.html", "/%zz"}) {
    auto r = get(path);
    EXPECT_EQ(r.status, 400) << path;
    EXPECT_EQ(r.body.find("outside the folder"), std::string::npos) << path;
    EXPECT_EQ(r.body.find("hidden"), std::string::npos) << path;
  }
  auto link = get("/escape.txt");
  EXPECT_EQ(link.status, 404) << "a symlink leaving the folder is not followed";
  EXPECT_EQ(link.body.find("outside the folder"), std::string::npos);
  EXPECT_EQ(get("/artifacts/a.mender").status, 404) << "no artifacts without a root";
}

TEST_F(DashboardServerTest, ArtifactsStillServedBeside) {
  start(true);
  auto a = get("/artifacts/a.mender");
  EXPECT_EQ(a.status, 200);
  EXPECT_EQ(a.body, "artifact bytes");
  EXPECT_NE(a.headers.find("content-type: application/octet-stream"), std::string::npos);
  EXPECT_EQ(a.headers.find("content-security-policy"), std::string::npos);
  EXPECT_EQ(get("/artifacts/../index.html").status, 400);
  EXPECT_EQ(get("/app.js").status, 200);
}

TEST_F(DashboardServerTest, StartFailsWithoutTheFolder) {
  bridge::ArtifactServerOptions o;
  o.static_root = site / "missing";
  bridge::ArtifactServer s(io.get_executor(), o);
  auto r = s.start();
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("missing"), std::string::npos) << r.error().message();
}

}  // namespace
}  // namespace tern::test
