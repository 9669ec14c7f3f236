// The bridge's ArtifactServer, probed with curl (an independent HTTP client): ranges, HEAD,
// If-Range, ETag, errors, keep-alive and client certificates.
#include "broker-bridge/artifact_server.hpp"
#include "tests/net/net_util.hpp"
#include "tests/support/testenv.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <malloc.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <thread>

namespace tern::test {
namespace {

namespace asio = boost::asio;
using bridge::ArtifactServer;
using bridge::ArtifactServerOptions;

/// A server on its own thread (curl runs synchronously in the test's thread).
class ServerTest : public ::testing::Test {
 protected:
  void start(bool tls, bool client_certs = false) { start_with(served_options(dir.path(), tls, client_certs), tls); }
  void start_with(const ArtifactServerOptions& o, bool tls) {
    server = std::make_unique<ArtifactServer>(io.get_executor(), o);
    auto p = server->start();
    ASSERT_TRUE(p) << p.error().message();
    port = *p;
    scheme = tls ? "https" : "http";
    thread = std::thread([this] { io.run(); });
  }
  void TearDown() override {
    if (server) server->stop();
    guard.reset();
    io.stop();
    if (thread.joinable()) thread.join();
  }

  std::string url(const std::string& path) const {
    return scheme + "://127.0.0.1:" + std::to_string(port) + path;
  }

  struct Response {
    int status = 0;
    std::string headers;  ///< lower-cased
    std::string body;
  };
  /// curl with `args`; headers and body captured separately.
  Response curl(const std::string& args, const std::string& path = "/artifacts/a.bin") {
    const std::string h = (tmp / "h").string(), b = (tmp / "b").string();
    std::error_code ec;
    fs::remove(b, ec);
    const std::string cmd = "curl -sS --path-as-is --cacert " + shell_quote((certs() / "ca.crt").string()) +
                            " -D " + shell_quote(h) + " -o " + shell_quote(b) + " -w '%{http_code}' " + args +
                            " " + shell_quote(url(path));
    const auto r = run(cmd);
    Response res;
    res.status = std::atoi(r.output.c_str());
    if (fs::exists(h)) {
      res.headers = read_file(h);
      for (auto& c : res.headers) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    if (fs::exists(b)) res.body = read_file(b);
    last_output = r.output;
    return res;
  }
  static std::string header(const Response& r, const std::string& name) {
    const auto pos = r.headers.find(name + ": ");
    if (pos == std::string::npos) return {};
    const auto end = r.headers.find("\r\n", pos);
    return r.headers.substr(pos + name.size() + 2, end - pos - name.size() - 2);
  }

  TempDir dir{"tern-artifacts"};
  TempDir tmp{"tern-curl"};
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> guard{io.get_executor()};
  std::unique_ptr<ArtifactServer> server;
  std::uint16_t port = 0;
  std::string scheme;
  std::thread thread;
  std::string last_output;
};

const std::string kData = random_bytes(300000, 42);

TEST_F(ServerTest, FullGetHasValidatorsAndLength) {
  write_file(dir / "a.bin", kData);
  start(true);
  auto r = curl("");
  ASSERT_EQ(r.status, 200) << last_output;
  EXPECT_EQ(r.body, kData);
  EXPECT_EQ(header(r, "content-length"), std::to_string(kData.size()));
  EXPECT_EQ(header(r, "accept-ranges"), "bytes");
  EXPECT_FALSE(header(r, "etag").empty());
  EXPECT_EQ(header(r, "etag").front(), '"') << "a strong ETag";
  EXPECT_NE(header(r, "last-modified").find("gmt"), std::string::npos);
  EXPECT_EQ(server->bytes_served("a.bin"), kData.size());
  EXPECT_EQ(server->bytes_served(), kData.size());
  EXPECT_EQ(server->requests(), 1u);
}

TEST_F(ServerTest, Ranges) {
  write_file(dir / "a.bin", kData);
  start(true);
  const std::string size = std::to_string(kData.size());

  auto first = curl("-r 0-0");
  ASSERT_EQ(first.status, 206) << last_output;
  EXPECT_EQ(first.body, kData.substr(0, 1));
  EXPECT_EQ(header(first, "content-range"), "bytes 0-0/" + size);

  auto middle = curl("-r 1000-1999");
  ASSERT_EQ(middle.status, 206);
  EXPECT_EQ(middle.body, kData.substr(1000, 1000));
  EXPECT_EQ(header(middle, "content-range"), "bytes 1000-1999/" + size);
  EXPECT_EQ(header(middle, "content-length"), "1000");

  const std::string last_pos = std::to_string(kData.size() - 1);
  auto last = curl("-r " + last_pos + "-" + last_pos);
  ASSERT_EQ(last.status, 206);
  EXPECT_EQ(last.body, kData.substr(kData.size() - 1));

  auto open_end = curl("-r 299000-");
  ASSERT_EQ(open_end.status, 206);
  EXPECT_EQ(open_end.body, kData.substr(299000));

  auto past_end = curl("-r 299990-400000");  // clipped to the file
  ASSERT_EQ(past_end.status, 206);
  EXPECT_EQ(past_end.body, kData.substr(299990));
  EXPECT_EQ(header(past_end, "content-range"), "bytes 299990-299999/" + size);

  auto suffix = curl("-r -500");
  ASSERT_EQ(suffix.status, 206);
  EXPECT_EQ(suffix.body, kData.substr(kData.size() - 500));
  EXPECT_EQ(header(suffix, "content-range"), "bytes 299500-299999/" + size);
}

TEST_F(ServerTest, InvalidAndUnsatisfiableRangesAre416) {
  write_file(dir / "a.bin", kData);
  start(false);
  for (const std::string range : {"bytes=300000-", "bytes=5-4", "bytes=abc", "bytes=-0", "BYTES=300000-"}) {
    auto r = curl("-H " + shell_quote("Range: " + range));
    EXPECT_EQ(r.status, 416) << range;
    EXPECT_EQ(header(r, "content-range"), "bytes */" + std::to_string(kData.size())) << range;
    EXPECT_TRUE(r.body.empty()) << range;
  }
  EXPECT_EQ(server->bytes_served(), 0u);
}

// RFC 9110 14.2: a server MUST ignore a Range header field with a range unit it does not understand.
TEST_F(ServerTest, ARangeInAnUnknownUnitIsIgnored) {
  write_file(dir / "a.bin", kData);
  start(false);
  for (const std::string range : {"items=0-5", "items=300000-", "rows", "=0-5"}) {
    auto r = curl("-H " + shell_quote("Range: " + range));
    EXPECT_EQ(r.status, 200) << range;
    EXPECT_TRUE(r.body == kData) << range << ": " << r.body.size() << " bytes, not the whole file";
    EXPECT_EQ(header(r, "content-length"), std::to_string(kData.size())) << range;
    EXPECT_TRUE(header(r, "content-range").empty()) << range;
  }
  // The unit is case-insensitive (RFC 9110 14.1): "Bytes" is still a byte range.
  auto r = curl("-H " + shell_quote("Range: Bytes=10-19"));
  ASSERT_EQ(r.status, 206);
  EXPECT_EQ(r.body, kData.substr(10, 10));
  EXPECT_EQ(server->bytes_served(), 4 * kData.size() + 10);
}

TEST_F(ServerTest, HeadHasHeadersButNoBody) {
  write_file(dir / "a.bin", kData);
  start(true);
  auto r = curl("-I");
  ASSERT_EQ(r.status, 200) << last_output;
  EXPECT_EQ(header(r, "content-length"), std::to_string(kData.size()));
  EXPECT_FALSE(header(r, "etag").empty());
  EXPECT_EQ(server->bytes_served(), 0u);
  // With -I curl writes the header to the output: nothing else may be in it.
  for (auto& c : r.body) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  EXPECT_EQ(r.body, r.headers);
  // A body after the HEAD response would corrupt the next response on the same connection.
  const std::string ca = shell_quote((certs() / "ca.crt").string());
  const auto seq = run("curl -sS --cacert " + ca + " -I " + shell_quote(url("/artifacts/a.bin")) +
                       " --next --cacert " + ca + " -o " +
                       shell_quote((tmp / "after-head").string()) + " -w '%{http_code} %{num_connects}' " +
                       shell_quote(url("/artifacts/a.bin")));
  EXPECT_NE(seq.output.find("200 0"), std::string::npos) << seq.output;
  EXPECT_EQ(read_file(tmp / "after-head"), kData);
}

TEST_F(ServerTest, IfRange) {
  write_file(dir / "a.bin", kData);
  start(true);
  const std::string etag = header(curl("-I"), "etag");
  ASSERT_FALSE(etag.empty());

  auto current = curl("-r 10-19 -H " + shell_quote("If-Range: " + etag));
  EXPECT_EQ(current.status, 206);
  EXPECT_EQ(current.body, kData.substr(10, 10));

  auto stale = curl("-r 10-19 -H " + shell_quote("If-Range: \"stale\""));
  EXPECT_EQ(stale.status, 200);
  EXPECT_EQ(stale.body, kData);

  // A new file (new inode, size or mtime) gets a new ETag, so an old If-Range gets the whole file.
  replace_file(dir / "a.bin", kData.substr(0, 1000));
  auto replaced = curl("-r 10-19 -H " + shell_quote("If-Range: " + etag));
  EXPECT_EQ(replaced.status, 200);
  EXPECT_EQ(replaced.body, kData.substr(0, 1000));
  EXPECT_NE(header(replaced, "etag"), etag);
}

TEST_F(ServerTest, SeveralRangesAreAMultipartAnswer) {
  write_file(dir / "a.bin", kData);
  start(true);
  const std::string size = std::to_string(kData.size());
  // 100-199 and 150-299 overlap: one part; 299990-400000 is clipped; 500000- is dropped.
  auto r = curl("-r 0-9,100-199,150-299,299990-400000,500000-");
  ASSERT_EQ(r.status, 206) << last_output;
  const std::string type = header(r, "content-type");
  const std::string prefix = "multipart/byteranges; boundary=";
  ASSERT_TRUE(type.starts_with(prefix)) << type;
  const std::string boundary = type.substr(prefix.size());
  auto part = [&](std::uint64_t first, std::uint64_t last) {
    return "\r\n--" + boundary + "\r\ncontent-type: application/octet-stream\r\ncontent-range: bytes " +
           std::to_string(first) + "-" + std::to_string(last) + "/" + size + "\r\n\r\n" +
           kData.substr(first, last - first + 1);
  };
  const std::string expected = part(0, 9) + part(100, 299) + part(299990, 299999) + "\r\n--" + boundary + "--\r\n";
  // Header names in the parts as the server writes them; compare case-insensitively on those only.
  std::string body = r.body;
  for (const std::string name : {"Content-Type", "Content-Range"}) {
    std::string lower = name;
    for (auto& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    for (auto at = body.find("\r\n" + name + ": "); at != std::string::npos; at = body.find("\r\n" + name + ": ", at + 1)) {
      body.replace(at + 2, name.size(), lower);
    }
  }
  EXPECT_EQ(body.size(), expected.size());
  EXPECT_TRUE(body == expected) << "the multipart body differs";
  EXPECT_EQ(header(r, "content-length"), std::to_string(expected.size()));
  EXPECT_TRUE(header(r, "content-range").empty());

  // Ranges out of order keep their order; more than 200 get the whole file.
  auto reversed = curl("-r 1000-1009,0-9");
  ASSERT_EQ(reversed.status, 206);
  EXPECT_LT(reversed.body.find("bytes 1000-1009/"), reversed.body.find("bytes 0-9/"));
  std::string many;
  for (int i = 0; i < 201; ++i) many += (i ? "," : "") + std::to_string(i * 10) + "-" + std::to_string(i * 10 + 1);
  auto too_many = curl("-r " + many);
  ASSERT_EQ(too_many.status, 200);
  EXPECT_EQ(too_many.body, kData);
}

TEST_F(ServerTest, MissingFileIs404AndBadPathsAre400) {
  write_file(dir / "a.bin", kData);
  fs::create_directories(dir / "sub");
  write_file(dir / "sub" / "x", "x");
  start(true);
  EXPECT_EQ(curl("", "/artifacts/nope.bin").status, 404);
  EXPECT_EQ(curl("", "/artifacts/sub").status, 404) << "a directory is not an artifact";
  EXPECT_EQ(curl("", "/artifacts/../outside-secret").status, 400);
  EXPECT_EQ(curl("", "/artifacts/%2e%2e%2foutside-secret").status, 400);
  EXPECT_EQ(curl("", "/artifacts/sub/x").status, 400);
  EXPECT_EQ(curl("", "/artifacts/").status, 400);
  EXPECT_EQ(curl("", "/etc/passwd").status, 400);
  EXPECT_EQ(curl("-X DELETE").status, 405);
  EXPECT_EQ(curl("").status, 200);
}

TEST_F(ServerTest, KeepAliveServesSeveralRequestsOnOneConnection) {
  write_file(dir / "a.bin", kData);
  write_file(dir / "b.bin", "bee");
  start(true);
  const auto r = run("curl -sS --cacert " + shell_quote((certs() / "ca.crt").string()) +
                     " -o /dev/null -o /dev/null -w '%{num_connects}\\n' " + shell_quote(url("/artifacts/a.bin")) +
                     " " + shell_quote(url("/artifacts/b.bin")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "1\n0\n") << "the second request should reuse the connection";
  EXPECT_EQ(server->requests(), 2u);
  // The server counts a chunk when its write completes, which can be after curl has read it and
  // exited (seen under ASan): wait, bounded.
  for (int i = 0; i < 100 && server->bytes_served("b.bin") < 3u; ++i) std::this_thread::sleep_for(50ms);
  EXPECT_EQ(server->bytes_served("b.bin"), 3u);
}

TEST_F(ServerTest, ClientCertificateRequired) {
  write_file(dir / "a.bin", kData);
  start(true, true);
  auto none = curl("");
  EXPECT_NE(none.status, 200) << "served without a client certificate";
  EXPECT_TRUE(none.body.empty());

  const std::string fleet = "--cert " + shell_quote((certs() / "device-1.crt").string()) + " --key " +
                            shell_quote((certs() / "device-1.key").string());
  auto ok = curl(fleet);
  EXPECT_EQ(ok.status, 200) << last_output;
  EXPECT_EQ(ok.body, kData);
}

TEST_F(ServerTest, StartFailsOnBadRootOrCertificate) {
  ArtifactServer no_root(io.get_executor(), ArtifactServerOptions{.root = dir / "missing"});
  auto r = no_root.start();
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("missing"), std::string::npos) << r.error().message();

  ArtifactServerOptions bad{.root = dir.path()};
  bad.cert_file = (dir / "nope.crt").string();
  ArtifactServer no_cert(io.get_executor(), bad);
  auto c = no_cert.start();
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message().find("nope.crt"), std::string::npos) << c.error().message();
}

// --- hostile clients ---------------------------------------------------------------------------

/// A TCP connection to 127.0.0.1:port from the loopback address `source` (the whole 127/8 is
/// local on Linux, so each test client can have its own address for the per-address caps).
int connect_from(const std::string& source, std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error("socket: " + std::string(std::strerror(errno)));
  sockaddr_in src{};
  src.sin_family = AF_INET;
  ::inet_pton(AF_INET, source.c_str(), &src.sin_addr);
  sockaddr_in dst{};
  dst.sin_family = AF_INET;
  dst.sin_port = htons(port);
  dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof src) != 0 ||
      ::connect(fd, reinterpret_cast<sockaddr*>(&dst), sizeof dst) != 0) {
    const int err = errno;
    ::close(fd);
    throw std::runtime_error("connecting from " + source + ": " + std::strerror(err));
  }
  return fd;
}

/// Whether the server has closed `fd` (EOF or reset), without blocking.
bool closed_by_server(int fd) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, 0) <= 0) return false;
  char c;
  const auto n = ::recv(fd, &c, 1, MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

/// Heap the allocator has handed out and not had back (all arenas), in KiB.
std::size_t heap_in_use_kib() {
  const auto m = ::mallinfo2();
  return (m.uordblks + m.hblkhd) / 1024;
}

std::size_t rss_kib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.starts_with("VmRSS:")) return std::stoul(line.substr(6));
  return 0;
}

struct Fds {
  std::vector<int> fds;
  ~Fds() {
    for (int fd : fds) ::close(fd);
  }
};

// 3,000 connections that say nothing (and 100 that send half a TLS record) are held while a real
// client downloads a file; all of them are closed by the server after the handshake deadline, they
// cost little memory while held, and the memory is given back afterwards.
TEST_F(ServerTest, SilentConnectionsAreCheapAndClosedAfterTheHandshakeDeadline) {
  constexpr int kSilent = 2900, kHalfRecord = 100, kTotal = kSilent + kHalfRecord;
  rlimit lim{};
  ::getrlimit(RLIMIT_NOFILE, &lim);
  if (lim.rlim_cur < 2 * kTotal + 200) {
    lim.rlim_cur = std::min<rlim_t>(lim.rlim_max, 2 * kTotal + 1000);
    ::setrlimit(RLIMIT_NOFILE, &lim);
  }
  if (lim.rlim_cur < 2 * kTotal + 200) GTEST_SKIP() << "needs " << 2 * kTotal + 200 << " file descriptors";

  const std::string big = random_bytes(8 << 20, 7);
  write_file(dir / "a.bin", big);
  auto o = served_options(dir.path(), true, false);
  o.handshake_timeout = 3s;
  o.max_connections = 4000;
  o.max_connections_per_address = 40;
  start_with(o, true);
  {
    auto warm = curl("");  // TLS context and file paths warmed up before the baseline
    ASSERT_EQ(warm.status, 200) << last_output;
  }
  const auto rss_before = rss_kib();
  const auto heap_before = heap_in_use_kib();

  Fds clients;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kTotal; ++i) {
    // 100 source addresses, 30 connections each: under the per-address cap.
    clients.fds.push_back(connect_from("127.0.1." + std::to_string(1 + i % 100), port));
    if (i >= kSilent) {
      const char half[] = {0x16, 0x03, 0x01, 0x02};  // a handshake record header, then nothing
      ASSERT_EQ(::send(clients.fds.back(), half, sizeof half, MSG_NOSIGNAL), 4);
    }
  }
  for (int i = 0; i < 200 && server->connections() < static_cast<std::size_t>(kTotal); ++i)
    std::this_thread::sleep_for(20ms);
  const auto held = server->connections();
  const auto rss_held = rss_kib();
  const auto heap_held = heap_in_use_kib();
  EXPECT_GE(held, static_cast<std::size_t>(kTotal) - 50) << "the server did not hold the connections";

  {  // A real client downloads meanwhile (its 8 MiB body freed before memory is measured again).
    auto r = curl("");
    EXPECT_EQ(r.status, 200) << last_output;
    EXPECT_EQ(sha256_hex(r.body), sha256_hex(big));
  }
  EXPECT_EQ(server->refused(), 0u);

  // Every silent connection is closed by the server (not by us).
  std::size_t closed = 0;
  for (int round = 0; round < 600 && closed < clients.fds.size(); ++round) {
    closed = 0;
    for (int fd : clients.fds) closed += closed_by_server(fd);
    if (closed < clients.fds.size()) std::this_thread::sleep_for(50ms);
  }
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  EXPECT_EQ(closed, clients.fds.size());
  for (int i = 0; i < 100 && server->connections() > 0; ++i) std::this_thread::sleep_for(20ms);
  EXPECT_EQ(server->connections(), 0u);
  // The test's own freed memory (curl's output, the downloaded body) goes back too, so that what
  // remains is the server's.
  ::malloc_trim(0);
  const auto rss_after = rss_kib();
  const auto heap_after = heap_in_use_kib();

  const double per_conn = held ? double(rss_held > rss_before ? rss_held - rss_before : 0) * 1024 / double(held) : 0;
  std::cout << "hostile: " << held << " connections held, " << per_conn / 1024 << " KiB each (RSS " << rss_before
            << " -> " << rss_held << " -> " << rss_after << " KiB); all closed " << took.count()
            << " ms after the first connect (handshake deadline " << o.handshake_timeout.count() << " ms); heap in use "
            << heap_before << " -> " << heap_held << " -> " << heap_after << " KiB\n";
  // Bounded memory per idle connection (it was about 94 KB each before the server waited for a
  // first byte), and it is given back once they are gone. Measured here: 26 MB held; 12 MB of it
  // stayed resident (0.6 MB of it in use: Asio's pooled reactor state pinning the pages) until the
  // server reserved that pool up front; now all of it returns.
  EXPECT_LT(per_conn, 16 * 1024.0);
  EXPECT_LT(rss_after, rss_held);
  EXPECT_LE(rss_after, rss_before + (rss_held > rss_before ? (rss_held - rss_before) / 4 : 0));
  EXPECT_LE(heap_after, heap_before + 2048) << "the server keeps heap after its connections closed";
}

// Over the per-address cap, or the total cap, a connection is closed at once; others still work.
TEST_F(ServerTest, ConnectionCapsPerAddressAndInTotal) {
  write_file(dir / "a.bin", kData);
  auto o = served_options(dir.path(), true, false);
  o.max_connections = 10;
  o.max_connections_per_address = 4;
  start_with(o, true);
  Fds a;
  for (int i = 0; i < 6; ++i) a.fds.push_back(connect_from("127.0.2.1", port));
  for (int i = 0; i < 200 && server->refused() < 2; ++i) std::this_thread::sleep_for(20ms);
  EXPECT_EQ(server->refused(), 2u);
  int closed = 0;
  for (int i = 0; i < 100 && closed < 2; ++i) {
    closed = 0;
    for (int fd : a.fds) closed += closed_by_server(fd);
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(closed, 2) << "exactly the connections over the per-address cap are closed";
  EXPECT_EQ(server->connections(), 4u);
  // Another address is not affected...
  auto ok = curl("");
  EXPECT_EQ(ok.status, 200) << last_output;
  EXPECT_EQ(ok.body, kData);
  // ...until the total is reached: 4 + 6 from other addresses fill it, the next one is refused.
  Fds b;
  for (int i = 0; i < 6; ++i) b.fds.push_back(connect_from("127.0.3." + std::to_string(1 + i), port));
  for (int i = 0; i < 200 && server->connections() < 10; ++i) std::this_thread::sleep_for(20ms);
  EXPECT_EQ(server->connections(), 10u);
  auto refused_before = server->refused();
  auto over = curl("");
  EXPECT_NE(over.status, 200) << "served over the total cap";
  EXPECT_GT(server->refused(), refused_before);
}

}  // namespace
}  // namespace tern::test
