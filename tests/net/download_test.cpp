// tern::agent::download against real servers on loopback: the bridge's ArtifactServer, nginx, and
// both behind the FaultProxy (cuts, stalls, throttling).
#include "agent/download/https_download.hpp"
#include "broker-bridge/artifact_server.hpp"
#include "tests/net/net_util.hpp"
#include "tests/support/coro.hpp"
#include "tests/support/fault_proxy.hpp"
#include "tests/support/nginx.hpp"
#include "tests/support/testenv.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <gtest/gtest.h>

#include <thread>

namespace tern::test {
namespace {

namespace asio = boost::asio;
using agent::BodySink;
using agent::DownloadOptions;
using agent::DownloadState;
using agent::ProgressHandler;
using agent::RestartHandler;
using bridge::ArtifactServer;

constexpr std::size_t MiB = 1024 * 1024;

[[maybe_unused]] ::testing::Environment* const kCerts =
    ::testing::AddGlobalTestEnvironment(new CertsEnvironment);

/// What a download delivered.
struct Fetched {
  Result<void> result;
  std::string body;
  int restarts = 0;
  int progress_calls = 0;
  bool out_of_order = false;  ///< a chunk arrived that did not continue at state.offset
  std::function<void(const std::string&)> on_chunk;  ///< optional hook after each chunk
  std::size_t fail_after = 0;  ///< non-zero: the sink fails once the body reaches this size
};

asio::awaitable<void> fetch(const DownloadOptions& opts, DownloadState& state, Fetched& out) {
  const DownloadOptions o = opts;
  const BodySink sink = [&out, &state](std::span<const std::uint8_t> chunk) -> asio::awaitable<Result<void>> {
    if (out.fail_after && out.body.size() >= out.fail_after) {
      co_return fail(Errc::io, "test sink full");
    }
    // The sink is called before state.offset moves: the body so far must match it exactly
    // (modulo the part delivered by an earlier run, which is not in out.body).
    if (state.offset < out.body.size()) out.out_of_order = true;
    out.body.append(reinterpret_cast<const char*>(chunk.data()), chunk.size());
    if (out.on_chunk) out.on_chunk(out.body);
    co_return Result<void>{};
  };
  const RestartHandler restart = [&out]() -> Result<void> {
    out.body.clear();
    ++out.restarts;
    return {};
  };
  const ProgressHandler progress = [&out](const DownloadState&) { ++out.progress_calls; };
  auto r = co_await agent::download(o, state, sink, restart, progress);
  out.result = r;
}

/// Runs one download with fast_options() to its end, on `io` when the test's server runs there.
void fetch_now(DownloadState& state, Fetched& out, std::chrono::milliseconds deadline,
               asio::io_context* io = nullptr) {
  auto body = [&]() -> asio::awaitable<void> {
    const auto o = fast_options();
    co_await fetch(o, state, out);
  };
  if (io) run_coro(*io, body, deadline);
  else run_coro(body, deadline);
}

std::string port_url(const std::string& scheme, std::uint16_t port, const std::string& name) {
  return scheme + "://127.0.0.1:" + std::to_string(port) + "/artifacts/" + name;
}

/// An ArtifactServer on the test's io_context serving a TempDir.
struct Served {
  explicit Served(asio::io_context& io, bool tls = true, bool client_certs = false) {
    server = std::make_unique<ArtifactServer>(io.get_executor(), served_options(dir.path(), tls, client_certs));
    auto p = server->start();
    if (!p) throw std::runtime_error(p.error().message());
    port = *p;
  }
  TempDir dir{"tern-served"};
  std::unique_ptr<ArtifactServer> server;
  std::uint16_t port = 0;
};

TEST(Download, PlainHttpFromArtifactServer) {
  asio::io_context io;
  Served s(io, false);
  const std::string data = random_bytes(3 * MiB + 17, 1);
  write_file(s.dir / "a.bin", data);
  DownloadState st{.url = port_url("http", s.port, "a.bin")};
  Fetched f;
  fetch_now(st, f, 60s, &io);
  ASSERT_TRUE(f.result) << f.result.error().message();
  EXPECT_EQ(sha256_hex(f.body), sha256_hex(data));
  EXPECT_EQ(st.offset, data.size());
  ASSERT_TRUE(st.total);
  EXPECT_EQ(*st.total, data.size());
  EXPECT_EQ(st.attempts, 1);
  EXPECT_EQ(st.bytes_received, data.size());
  EXPECT_FALSE(st.etag.empty());
  EXPECT_FALSE(st.last_modified.empty());
  EXPECT_GT(f.progress_calls, 0);
  EXPECT_FALSE(f.out_of_order);
  EXPECT_EQ(s.server->bytes_served("a.bin"), data.size());
}

TEST(Download, HttpsFromArtifactServerIsByteExact) {
  asio::io_context io;
  Served s(io);
  const std::string data = random_bytes(5 * MiB + 3, 2);
  write_file(s.dir / "a.bin", data);
  DownloadState st{.url = port_url("https", s.port, "a.bin")};
  Fetched f;
  fetch_now(st, f, 60s, &io);
  ASSERT_TRUE(f.result) << f.result.error().message();
  EXPECT_EQ(sha256_hex(f.body), sha256_hex(data));
  EXPECT_EQ(st.attempts, 1);
}

TEST(Download, EmptyFile) {
  asio::io_context io;
  Served s(io);
  write_file(s.dir / "empty.bin", "");
  DownloadState st{.url = port_url("https", s.port, "empty.bin")};
  Fetched f;
  fetch_now(st, f, 30s, &io);
  ASSERT_TRUE(f.result) << f.result.error().message();
  EXPECT_TRUE(f.body.empty());
  ASSERT_TRUE(st.total);
  EXPECT_EQ(*st.total, 0u);
}

TEST(Download, HttpsFromNginxIsByteExact) {
  Nginx nginx;
  const std::string data = random_bytes(4 * MiB + 5, 3);
  write_file(nginx.root() / "a.bin", data);
  DownloadState st{.url = nginx.url("a.bin")};
  Fetched f;
  fetch_now(st, f, 60s);
  ASSERT_TRUE(f.result) << f.result.error().message();
  EXPECT_EQ(sha256_hex(f.body), sha256_hex(data));
  EXPECT_EQ(st.attempts, 1);
  EXPECT_FALSE(st.etag.empty());
}

/// A first run stops (the sink refuses more), a second run resumes from state.offset with
/// Range + If-Range and gets only the rest.
void resume_test(const std::string& url, const std::string& data) {
  DownloadState st{.url = url};
  Fetched first;
  first.fail_after = MiB;
  fetch_now(st, first, 60s);
  ASSERT_FALSE(first.result);
  EXPECT_NE(first.result.error().message().find("test sink full"), std::string::npos)
      << first.result.error().message();
  ASSERT_EQ(st.offset, first.body.size());
  ASSERT_GE(st.offset, MiB);
  ASSERT_LT(st.offset, data.size());

  // A new run with the persisted state.
  DownloadState resumed = st;
  resumed.bytes_received = 0;
  Fetched second;
  fetch_now(resumed, second, 60s);
  ASSERT_TRUE(second.result) << second.result.error().message();
  EXPECT_EQ(second.restarts, 0);
  EXPECT_EQ(resumed.bytes_received, data.size() - st.offset) << "fetched bytes it already had";
  EXPECT_EQ(sha256_hex(first.body + second.body), sha256_hex(data));
  EXPECT_EQ(resumed.offset, data.size());
}

TEST(Download, ResumesFromArtifactServer) {
  asio::io_context io;
  Served s(io);
  const std::string data = random_bytes(3 * MiB, 4);
  write_file(s.dir / "a.bin", data);
  // The server must run while run_coro drives the client: share the io_context through a thread.
  std::thread t;
  auto guard = asio::make_work_guard(io);
  t = std::thread([&] { io.run(); });
  resume_test(port_url("https", s.port, "a.bin"), data);
  guard.reset();
  s.server->stop();
  io.stop();
  t.join();
}

TEST(Download, ResumingACompleteDownloadIsDone) {
  asio::io_context io;
  Served s(io);
  const std::string data = random_bytes(200000, 16);
  write_file(s.dir / "a.bin", data);
  DownloadState st{.url = port_url("https", s.port, "a.bin")};
  Fetched first, again;
  run_coro(io, [&]() -> asio::awaitable<void> {
    const auto o = fast_options();
    co_await fetch(o, st, first);
    co_await fetch(o, st, again);  // the persisted state says everything was delivered
  }, 30s);
  ASSERT_TRUE(first.result) << first.result.error().message();
  ASSERT_TRUE(again.result) << again.result.error().message();
  EXPECT_TRUE(again.body.empty());
  EXPECT_EQ(again.restarts, 0);
  EXPECT_EQ(st.offset, data.size());
  EXPECT_EQ(st.bytes_received, data.size());
  EXPECT_EQ(st.attempts, 2);
}

TEST(Download, ResumesFromNginx) {
  Nginx nginx;
  const std::string data = random_bytes(3 * MiB + 1, 5);
  write_file(nginx.root() / "a.bin", data);
  resume_test(nginx.url("a.bin"), data);
}

TEST(Download, SurvivesACutEveryFewMegabytes) {
  asio::io_context io;
  Served s(io);
  const std::string data = random_bytes(24 * MiB, 6);
  write_file(s.dir / "big.bin", data);
  FaultProxy proxy(s.port);
  proxy.set_cut(1 * MiB, 3 * MiB);
  DownloadState st{.url = port_url("https", proxy.port(), "big.bin")};
  Fetched f;
  fetch_now(st, f, 240s, &io);
  ASSERT_TRUE(f.result) << f.result.error().message();
  EXPECT_EQ(f.body.size(), data.size());
  EXPECT_EQ(sha256_hex(f.body), sha256_hex(data));
  EXPECT_FALSE(f.out_of_order);
  EXPECT_EQ(f.restarts, 0);
  EXPECT_GE(proxy.cuts(), 5u);
  EXPECT_GT(st.attempts, 5);
  EXPECT_LE(static_cast<double>(st.bytes_received), 1.05 * static_cast<double>(data.size()));
}

TEST(Download, ReadTimeoutCatchesAStalledLinkAndResumes) {
  asio::io_context io;
  Served s(io, false);
  const std::string data = random_bytes(3 * MiB, 7);
  write_file(s.dir / "a.bin", data);
  FaultProxy proxy(s.port);
  proxy.set_stall_after(MiB);  // every connection goes silent after 1 MiB, sockets left open
  auto opts = fast_options();
  opts.read_timeout = 300ms;
  DownloadState st{.url = port_url("http", proxy.port(), "a.bin")};
  Fetched f;
  run_coro(io, [&]() -> asio::awaitable<void> { co_await fetch(opts, st, f); }, 60s);
  ASSERT_TRUE(f.result) << f.result.error().message();
  EXPECT_EQ(sha256_hex(f.body), sha256_hex(data));
  EXPECT_GE(st.attempts, 4);  // each connection carries less than 1 MiB of body
  EXPECT_NE(st.last_error.find("no data for 300 ms"), std::string::npos) << st.last_error;
  EXPECT_EQ(st.bytes_received, data.size());
}

TEST(Download, ThrottledLinkCompletes) {
  asio::io_context io;
  Served s(io, false);
  const std::string data = random_bytes(600 * 1024, 8);
  write_file(s.dir / "a.bin", data);
  FaultProxy proxy(s.port);
  proxy.set_rate(4 * MiB);
  DownloadState st{.url = port_url("http", proxy.port(), "a.bin")};
  Fetched f;
  fetch_now(st, f, 60s, &io);
  ASSERT_TRUE(f.result) << f.result.error().message();
  EXPECT_EQ(f.body, data);
  EXPECT_EQ(st.attempts, 1);
}

TEST(Download, DroppedConnectionsResume) {
  asio::io_context io;
  Served s(io, false);
  const std::string data = random_bytes(2 * MiB, 17);
  write_file(s.dir / "a.bin", data);
  FaultProxy proxy(s.port);
  proxy.set_rate(4 * MiB);  // so that the file is not all in the client's socket buffer at once
  DownloadState st{.url = port_url("http", proxy.port(), "a.bin")};
  Fetched f;
  std::size_t next_drop = MiB / 4;
  f.on_chunk = [&](const std::string& body) {
    if (body.size() >= next_drop && next_drop < data.size()) {
      proxy.drop_all();
      next_drop += MiB / 2;
    }
  };
  fetch_now(st, f, 60s, &io);
  ASSERT_TRUE(f.result) << f.result.error().message();
  EXPECT_EQ(sha256_hex(f.body), sha256_hex(data));
  EXPECT_GE(st.attempts, 2);
  EXPECT_GE(proxy.connections(), 2u);
  EXPECT_EQ(st.bytes_received, data.size());
}

TEST(Download, RefusedConnectionsAreRetriedWithBackoff) {
  asio::io_context io;
  Served s(io, false);
  const std::string data = random_bytes(100000, 18);
  write_file(s.dir / "a.bin", data);
  FaultProxy proxy(s.port);
  proxy.set_refuse(true);
  DownloadState st{.url = port_url("http", proxy.port(), "a.bin")};
  Fetched f;
  run_coro(io, [&]() -> asio::awaitable<void> {
    const auto o = fast_options();
    asio::co_spawn(io, fetch(o, st, f), [](std::exception_ptr) {});
    for (int i = 0; i < 1000 && proxy.connections() < 3; ++i) co_await sleep_for(10ms);
    proxy.set_refuse(false);
    for (int i = 0; i < 1000 && f.body.size() < data.size(); ++i) co_await sleep_for(10ms);
  }, 60s);
  ASSERT_TRUE(f.result) << f.result.error().message();
  EXPECT_EQ(f.body, data);
  EXPECT_GE(st.attempts, 4);
  EXPECT_NE(st.last_error.find(st.url), std::string::npos) << st.last_error;
}

TEST(Download, ThroughTheFaultProxyProcess) {
  asio::io_context io;
  Served s(io);
  const std::string data = random_bytes(6 * MiB, 19);
  write_file(s.dir / "a.bin", data);
  TempDir tmp;
  Process proxy({(build_dir() / "tests/support/tern-fault-proxy").string(), "--listen", "0", "--target",
                 "127.0.0.1:" + std::to_string(s.port), "--cut-min", "500000", "--cut-max", "900000",
                 "--seed", "5"},
                tmp / "proxy.log");
  int port = 0;
  for (int i = 0; i < 500 && port == 0; ++i) {
    port = std::atoi(read_file(tmp / "proxy.log").c_str());
    if (port == 0) std::this_thread::sleep_for(10ms);
  }
  ASSERT_GT(port, 0) << proxy.log();
  DownloadState st{.url = port_url("https", static_cast<std::uint16_t>(port), "a.bin")};
  Fetched f;
  fetch_now(st, f, 120s, &io);
  ASSERT_TRUE(f.result) << f.result.error().message();
  EXPECT_EQ(sha256_hex(f.body), sha256_hex(data));
  EXPECT_GE(st.attempts, 6);  // at most 900 kB per connection
  EXPECT_EQ(st.bytes_received, data.size());
  proxy.stop();
  EXPECT_NE(proxy.log().find("cuts"), std::string::npos) << proxy.log();
}

TEST(Download, ContentReplacedMidDownloadRestartsWithTheNewFile) {
  asio::io_context io;
  Served s(io, false);
  const std::string old_data = random_bytes(4 * MiB, 9);
  const std::string new_data = random_bytes(4 * MiB + 1000, 10);
  write_file(s.dir / "a.bin", old_data);
  FaultProxy proxy(s.port);
  proxy.set_cut(MiB, MiB + MiB / 2);  // the open connection keeps sending the old file until cut
  DownloadState st{.url = port_url("http", proxy.port(), "a.bin")};
  Fetched f;
  bool replaced = false;
  f.on_chunk = [&](const std::string& body) {
    if (!replaced && body.size() >= MiB / 2) {
      replace_file(s.dir / "a.bin", new_data);
      replaced = true;
    }
  };
  fetch_now(st, f, 60s, &io);
  ASSERT_TRUE(f.result) << f.result.error().message();
  EXPECT_TRUE(replaced);
  EXPECT_EQ(f.restarts, 1);
  EXPECT_EQ(st.restarts, 1);
  EXPECT_EQ(sha256_hex(f.body), sha256_hex(new_data));
  ASSERT_TRUE(st.total);
  EXPECT_EQ(*st.total, new_data.size());
}

TEST(Download, RestartHandlerErrorAbortsTheDownload) {
  asio::io_context io;
  Served s(io, false);
  write_file(s.dir / "a.bin", random_bytes(MiB, 11));
  DownloadState st{.url = port_url("http", s.port, "a.bin"), .offset = 1000, .etag = "\"stale\""};
  const BodySink sink = [](std::span<const std::uint8_t>) -> asio::awaitable<Result<void>> {
    co_return Result<void>{};
  };
  const RestartHandler restart = []() -> Result<void> { return fail(Errc::io, "cannot reset partition"); };
  Result<void> r;
  run_coro(io, [&]() -> asio::awaitable<void> {
    const auto o = fast_options();
    const ProgressHandler no_progress;
    auto res = co_await agent::download(o, st, sink, restart, no_progress);
    r = res;
  }, 30s);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("cannot reset partition"), std::string::npos) << r.error().message();
}

TEST(Download, WrongCaIsATlsErrorAndNotRetried) {
  TempDir other;
  const auto gen = run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 "
                       "-subj /CN=Other -keyout " + shell_quote((other / "k.pem").string()) +
                       " -out " + shell_quote((other / "ca.crt").string()) + " 2>&1");
  ASSERT_EQ(gen.exit_code, 0) << gen.output;
  asio::io_context io;
  Served s(io);
  write_file(s.dir / "a.bin", "data");
  auto opts = fast_options();
  opts.ca_file = (other / "ca.crt").string();
  DownloadState st{.url = port_url("https", s.port, "a.bin")};
  Fetched f;
  run_coro(io, [&]() -> asio::awaitable<void> { co_await fetch(opts, st, f); }, 30s);
  ASSERT_FALSE(f.result);
  const std::string m = f.result.error().message();
  EXPECT_NE(m.find("TLS"), std::string::npos) << m;
  EXPECT_NE(m.find("certificate verify failed"), std::string::npos) << m;
  EXPECT_NE(m.find(st.url), std::string::npos) << m;
  EXPECT_EQ(st.attempts, 1);
  EXPECT_TRUE(f.body.empty());
}

TEST(Download, NotFoundIsAClearError) {
  asio::io_context io;
  Served s(io);
  DownloadState st{.url = port_url("https", s.port, "missing.bin")};
  Fetched f;
  fetch_now(st, f, 30s, &io);
  ASSERT_FALSE(f.result);
  const std::string m = f.result.error().message();
  EXPECT_EQ(f.result.error().code(), make_error_code(Errc::protocol));
  EXPECT_NE(m.find("404"), std::string::npos) << m;
  EXPECT_NE(m.find(st.url), std::string::npos) << m;
  EXPECT_EQ(st.attempts, 1);
}

TEST(Download, UnreachableServerGivesUpAfterMaxAttempts) {
  const int port = free_port();  // nothing listens there
  auto opts = fast_options();
  opts.max_attempts = 3;
  DownloadState st{.url = "http://127.0.0.1:" + std::to_string(port) + "/artifacts/a.bin"};
  Fetched f;
  run_coro([&]() -> asio::awaitable<void> { co_await fetch(opts, st, f); }, 30s);
  ASSERT_FALSE(f.result);
  EXPECT_EQ(f.result.error().code(), make_error_code(Errc::timeout));
  EXPECT_NE(f.result.error().message().find("3 attempts"), std::string::npos) << f.result.error().message();
  EXPECT_EQ(st.attempts, 3);
}

TEST(Download, MalformedUrlIsRejected) {
  DownloadState st{.url = "ftp://127.0.0.1/a.bin"};
  Fetched f;
  fetch_now(st, f, 10s);
  ASSERT_FALSE(f.result);
  EXPECT_EQ(f.result.error().code(), make_error_code(Errc::invalid_argument));
  EXPECT_NE(f.result.error().message().find("ftp"), std::string::npos);
}

TEST(Download, FollowsRelativeAndAbsoluteRedirectsAndBoundsThem) {
  NginxOptions no;
  no.extra_server_conf =
      "    location = /relative { return 302 /artifacts/a.bin; }\n"
      "    location = /absolute { return 301 https://127.0.0.1:$server_port/relative; }\n"
      "    location = /loop { return 307 /loop; }\n";
  Nginx nginx(no);
  const std::string data = random_bytes(MiB + 9, 12);
  write_file(nginx.root() / "a.bin", data);
  const std::string base = "https://127.0.0.1:" + std::to_string(nginx.port());

  DownloadState st{.url = base + "/absolute"};
  Fetched f;
  fetch_now(st, f, 30s);
  ASSERT_TRUE(f.result) << f.result.error().message();
  EXPECT_EQ(sha256_hex(f.body), sha256_hex(data));
  EXPECT_EQ(st.attempts, 3);  // /absolute → /relative → /artifacts/a.bin
  EXPECT_EQ(st.url, base + "/absolute") << "the URL as given is kept";

  DownloadState loop{.url = base + "/loop"};
  Fetched g;
  fetch_now(loop, g, 30s);
  ASSERT_FALSE(g.result);
  EXPECT_NE(g.result.error().message().find("redirects"), std::string::npos) << g.result.error().message();
}

TEST(Download, ClientCertificateRequiredByServer) {
  asio::io_context io;
  Served s(io, true, true);
  write_file(s.dir / "a.bin", random_bytes(100000, 13));

  auto with_cert = fast_options();
  with_cert.cert_file = (certs() / "device-1.crt").string();
  with_cert.key_file = (certs() / "device-1.key").string();
  DownloadState ok{.url = port_url("https", s.port, "a.bin")};
  Fetched f;
  run_coro(io, [&]() -> asio::awaitable<void> { co_await fetch(with_cert, ok, f); }, 30s);
  ASSERT_TRUE(f.result) << f.result.error().message();
  EXPECT_EQ(f.body.size(), 100000u);

  auto without = fast_options();
  without.max_attempts = 3;
  DownloadState refused{.url = port_url("https", s.port, "a.bin")};
  Fetched g;
  io.restart();
  run_coro(io, [&]() -> asio::awaitable<void> { co_await fetch(without, refused, g); }, 30s);
  ASSERT_FALSE(g.result);
  EXPECT_NE(g.result.error().message().find("TLS"), std::string::npos) << g.result.error().message();
  EXPECT_TRUE(g.body.empty());
}

TEST(Download, CancellationSignalStopsAStalledDownloadPromptly) {
  asio::io_context io;
  Served s(io, false);
  write_file(s.dir / "a.bin", random_bytes(4 * MiB, 14));
  FaultProxy proxy(s.port);
  proxy.set_stall_after(256 * 1024);
  auto opts = fast_options();
  opts.read_timeout = 120s;  // only cancellation can end the stalled read within the test's deadline
  opts.connect_timeout = 120s;
  DownloadState st{.url = port_url("http", proxy.port(), "a.bin")};
  Fetched f;
  bool finished = false;
  asio::cancellation_signal cancel;
  run_coro(io, [&]() -> asio::awaitable<void> {
    asio::co_spawn(io, fetch(opts, st, f),
                   asio::bind_cancellation_slot(cancel.slot(), [&](std::exception_ptr) { finished = true; }));
    // Wait (bounded) until the link is stalled: the proxy has forwarded all it will.
    for (int i = 0; i < 1000 && proxy.bytes_downstream() < 256 * 1024; ++i) co_await sleep_for(10ms);
    CO_ASSERT_TRUE(proxy.bytes_downstream() >= 256 * 1024, "the download never reached the stall");
    co_await sleep_for(50ms);
    CO_ASSERT_FALSE(finished, "download ended before it was cancelled");
    cancel.emit(asio::cancellation_type::terminal);
    for (int i = 0; i < 500 && !finished; ++i) co_await sleep_for(10ms);
    CO_ASSERT_TRUE(finished, "download did not stop within 5 s of cancellation");
  }, 60s);
  ASSERT_FALSE(f.result);
  EXPECT_EQ(f.result.error().code(), make_error_code(Errc::cancelled)) << f.result.error().message();
  EXPECT_EQ(st.attempts, 1);
}

TEST(Download, AwaitableOrCancelsTheDownload) {
  using namespace asio::experimental::awaitable_operators;
  asio::io_context io;
  Served s(io, false);
  write_file(s.dir / "a.bin", random_bytes(MiB, 15));
  FaultProxy proxy(s.port);
  proxy.set_stall_after(1);  // stalls inside the response header
  auto opts = fast_options();
  opts.read_timeout = 120s;
  opts.connect_timeout = 120s;
  DownloadState st{.url = port_url("http", proxy.port(), "a.bin")};
  const BodySink sink = [](std::span<const std::uint8_t>) -> asio::awaitable<Result<void>> {
    co_return Result<void>{};
  };
  const RestartHandler no_restart;
  const ProgressHandler no_progress;
  std::size_t winner = 99;
  run_coro(io, [&]() -> asio::awaitable<void> {
    auto dl = agent::download(opts, st, sink, no_restart, no_progress);
    auto watchdog = sleep_for(300ms);
    auto r = co_await (std::move(dl) || std::move(watchdog));
    winner = r.index();
  }, 30s);  // fails here if the download ignores cancellation (read_timeout is 120 s)
  EXPECT_EQ(winner, 1u);
  EXPECT_EQ(st.offset, 0u);
}

}  // namespace
}  // namespace tern::test
