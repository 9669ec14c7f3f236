// RangeClient (agent/download/range_fetch.hpp) against nginx and the bridge's ArtifactServer:
// many ranges in a few multi-range requests over one kept-alive connection, nginx's `max_ranges`,
// cut links, a replaced artifact, cancellation, a malformed multipart answer. Also the sans-io
// parts on both sides: the agent's multipart parser and range cursor, the server's Range parser.
#include "agent/download/byteranges.hpp"
#include "agent/download/range_fetch.hpp"
#include "agent/errors.hpp"
#include "broker-bridge/artifact_server.hpp"
#include "broker-bridge/byte_ranges.hpp"
#include "tests/net/net_util.hpp"
#include "tests/support/coro.hpp"
#include "tests/support/fault_proxy.hpp"
#include "tests/support/nginx.hpp"
#include "tests/support/testenv.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <gtest/gtest.h>

#include <random>

namespace tern::test {
namespace {

namespace asio = boost::asio;
using agent::AgentErrc;
using agent::RangeClient;
using agent::RangeSink;
using artifacts::ByteRange;
using bridge::ArtifactServer;

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * 1024;

[[maybe_unused]] ::testing::Environment* const kCerts = ::testing::AddGlobalTestEnvironment(new CertsEnvironment);

/// `n` ascending ranges over a file of `size` bytes, each at most `max_len` long, with gaps.
std::vector<ByteRange> spread_ranges(std::size_t n, std::uint64_t size, std::uint64_t max_len, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<ByteRange> out;
  const std::uint64_t step = size / n;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t room = std::min(step / 2, max_len);
    const std::uint64_t len = 1 + rng() % room;
    out.push_back({i * step + rng() % (step - len), len});
  }
  return out;
}

std::uint64_t total_length(const std::vector<ByteRange>& ranges) {
  std::uint64_t n = 0;
  for (const auto& r : ranges) n += r.length;
  return n;
}

/// What a fetch delivered, per range.
struct Collected {
  explicit Collected(std::size_t n) : parts(n) {}
  std::vector<std::string> parts;
  std::size_t last_index = 0;
  bool out_of_order = false;  ///< an index lower than one already seen
  std::uint64_t bytes = 0;
  std::function<void()> on_bytes;  ///< optional hook after each call

  RangeSink sink() {
    return [this](std::size_t index, std::span<const std::uint8_t> bytes) -> asio::awaitable<Result<void>> {
      if (index < last_index || index >= parts.size()) out_of_order = true;
      last_index = index;
      if (index < parts.size()) parts[index].append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
      this->bytes += bytes.size();
      if (on_bytes) on_bytes();
      co_return Result<void>{};
    };
  }
  /// Every range's bytes exactly, once.
  ::testing::AssertionResult matches(const std::string& data, const std::vector<ByteRange>& ranges) const {
    if (out_of_order) return ::testing::AssertionFailure() << "ranges delivered out of order";
    for (std::size_t i = 0; i < ranges.size(); ++i) {
      if (parts[i] != data.substr(ranges[i].offset, ranges[i].length)) {
        return ::testing::AssertionFailure() << "range " << i << " (" << ranges[i].offset << "+" << ranges[i].length
                                             << "): got " << parts[i].size() << " bytes that differ";
      }
    }
    if (bytes != total_length(ranges)) return ::testing::AssertionFailure() << bytes << " bytes delivered";
    return ::testing::AssertionSuccess();
  }
};

/// Runs client.fetch(ranges) into `c` on `io`; returns its result.
Result<void> fetch_all(asio::io_context& io, RangeClient& client, const std::vector<ByteRange>& ranges, Collected& c,
                       std::chrono::milliseconds deadline = 120s) {
  Result<void> result = fail(Errc::internal, "fetch did not run");
  const RangeSink sink = c.sink();
  io.restart();  // run_coro stops the io_context when its body ends
  run_coro(io, [&]() -> asio::awaitable<void> {
    const std::span<const ByteRange> view(ranges);
    auto r = co_await client.fetch(view, sink);
    result = r;
  }, deadline);
  return result;
}

/// An ArtifactServer on the test's io_context serving a TempDir.
struct Served {
  explicit Served(asio::io_context& io, bool tls = true, std::chrono::milliseconds idle = 30s,
                  bool client_certs = false) {
    auto o = served_options(dir.path(), tls, client_certs);
    o.idle_timeout = idle;
    server = std::make_unique<ArtifactServer>(io.get_executor(), o);
    auto p = server->start();
    if (!p) throw std::runtime_error(p.error().message());
    port = *p;
  }
  std::string url(const std::string& name, std::uint16_t via = 0, bool tls = true) const {
    return std::string(tls ? "https" : "http") + "://127.0.0.1:" + std::to_string(via ? via : port) + "/artifacts/" + name;
  }
  TempDir dir{"tern-served"};
  std::unique_ptr<ArtifactServer> server;
  std::uint16_t port = 0;
};

// ---- the sans-io parts ----

std::span<const std::uint8_t> bytes_of(std::string_view s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

/// Feeds `body` to a parser `step` bytes at a time; returns the parts' ranges and bytes.
Result<std::vector<std::pair<std::string, std::string>>> parse_multipart(const std::string& boundary,
                                                                       std::string_view body, std::size_t step) {
  agent::MultipartParser p(boundary);
  std::vector<std::pair<std::string, std::string>> parts;
  for (std::size_t at = 0; at < body.size(); at += step) {
    auto in = bytes_of(body.substr(at, step));
    while (!in.empty()) {
      auto ev = p.next(in);
      if (!ev) return ev.error();
      if (ev->kind == agent::MultipartParser::Event::Kind::part) {
        parts.push_back({std::to_string(ev->range.first) + "-" + std::to_string(ev->range.last), ""});
      } else if (ev->kind == agent::MultipartParser::Event::Kind::data) {
        parts.back().second.append(reinterpret_cast<const char*>(ev->data.data()), ev->data.size());
      }
    }
  }
  if (!p.finished()) return fail(Errc::protocol, "not finished");
  return parts;
}

const std::string kMultipart =
    "\r\n--B0undary\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-4/100\r\n\r\nhello"
    "\r\n--B0undary\r\ncontent-range: bytes 10-14/100\r\n\r\n\r\n--B"
    "\r\n--B0undary--\r\n";

TEST(RangeMultipart, ParsesPartsFedInAnyChunks) {
  for (std::size_t step : {1u, 2u, 7u, 1000u}) {
    auto parts = parse_multipart("B0undary", kMultipart, step);
    ASSERT_TRUE(parts) << parts.error().message();
    ASSERT_EQ(parts->size(), 2u) << step;
    EXPECT_EQ((*parts)[0], (std::pair<std::string, std::string>{"0-4", "hello"}));
    EXPECT_EQ((*parts)[1], (std::pair<std::string, std::string>{"10-14", "\r\n--B"})) << "a boundary-like payload";
  }
  EXPECT_EQ(agent::multipart_boundary("multipart/byteranges; boundary=00000000001"), "00000000001");
  EXPECT_EQ(agent::multipart_boundary("Multipart/ByteRanges;charset=x; Boundary=\"a b\""), "a b");
  EXPECT_FALSE(agent::multipart_boundary("application/octet-stream"));
  EXPECT_FALSE(agent::multipart_boundary("multipart/byteranges"));
}

TEST(RangeMultipart, MalformedBodiesAreProtocolErrors) {
  struct Case {
    std::string body, what;
  };
  const std::vector<Case> cases = {
      {"\r\n--B\r\nContent-Range: bytes 0-4/100\r\n\r\nhelloX\r\n--B--\r\n", "expected the boundary"},
      {"\r\n--B\r\nContent-Type: x\r\n\r\nhello\r\n--B--\r\n", "has no Content-Range"},
      {"\r\n--B\r\nContent-Range: bytes 4-0/100\r\n\r\nhello\r\n--B--\r\n", "bad Content-Range"},
      {"\r\n--B\r\nContent-Range: bytes */100\r\n\r\nhello\r\n--B--\r\n", "bad Content-Range"},
      {"\r\n--B--\r\n", "closes before its first part"},
      {std::string(5000, 'x'), "more than 4096"},
  };
  for (const auto& c : cases) {
    auto r = parse_multipart("B", c.body, 3);
    ASSERT_FALSE(r) << c.what;
    EXPECT_EQ(r.error().code(), make_error_code(Errc::protocol));
    EXPECT_NE(r.error().message().find(c.what), std::string::npos) << r.error().message();
  }
}

TEST(RangeMultipart, CursorSkipsGapsAndChecksParts) {
  const std::vector<ByteRange> ranges = {{10, 5}, {20, 5}, {40, 10}};
  agent::RangeCursor cursor(ranges);
  ASSERT_TRUE(cursor.check());
  EXPECT_EQ(agent::range_header(cursor.next_request(100, 3000)), "bytes=10-14,20-24,40-49");
  EXPECT_EQ(cursor.next_request(2, 3000).size(), 2u);
  EXPECT_EQ(cursor.next_request(100, 12).size(), 1u) << "header length bounds the ranges";

  // A server that coalesced the first two ranges into one part: the gap is skipped.
  ASSERT_TRUE(cursor.begin_part({10, 24, 100}, 49, 100));
  std::string file(100, '\0');
  for (std::size_t i = 0; i < file.size(); ++i) file[i] = static_cast<char>('A' + i % 26);
  auto in = bytes_of(std::string_view(file).substr(10, 15));
  std::vector<std::pair<std::size_t, std::string>> got;
  while (!in.empty()) {
    if (auto p = cursor.take(in)) got.push_back({p->index, std::string(reinterpret_cast<const char*>(p->bytes.data()), p->bytes.size())});
  }
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0], (std::pair<std::size_t, std::string>{0, file.substr(10, 5)}));
  EXPECT_EQ(got[1], (std::pair<std::size_t, std::string>{1, file.substr(20, 5)}));
  EXPECT_EQ(cursor.index(), 2u);
  EXPECT_EQ(cursor.position(), 40u);

  // Parts that are not what was asked.
  for (const agent::detail::ContentRange bad : {agent::detail::ContentRange{41, 49, 100}, {20, 49, 100},
                                                {40, 60, 100}, {40, 49, 101}}) {
    auto r = cursor.begin_part(bad, 49, 100);
    ASSERT_FALSE(r) << bad.first << "-" << bad.last << "/" << *bad.complete;
    EXPECT_EQ(r.error().code(), make_error_code(Errc::protocol));
  }
  const std::vector<ByteRange> overlapping = {{10, 5}, {12, 5}};
  EXPECT_FALSE(agent::RangeCursor(overlapping).check());
  const std::vector<ByteRange> empty_range = {{10, 0}};
  EXPECT_FALSE(agent::RangeCursor(empty_range).check());
}

TEST(RangeServerParse, MergesOrdersCapsAndRefuses) {
  using bridge::FileRange;
  using A = bridge::RangeSet::Answer;
  auto p = [](std::string_view h) { return bridge::parse_ranges(h, 1000, 200); };
  auto two = p("bytes=0-9, 20-29");
  EXPECT_EQ(two.answer, A::partial);
  EXPECT_EQ(two.ranges, (std::vector<FileRange>{{0, 10}, {20, 10}}));
  EXPECT_EQ(p("bytes=0-9,10-19,15-30,,990-").ranges, (std::vector<FileRange>{{0, 31}, {990, 10}}))
      << "touching and overlapping ranges in order are merged, empty elements ignored";
  EXPECT_EQ(p("bytes=500-599,0-9").ranges, (std::vector<FileRange>{{500, 100}, {0, 10}})) << "the order asked";
  EXPECT_EQ(p("bytes=500-599,0-9,550-560").answer, A::whole) << "overlaps out of order";
  EXPECT_EQ(p("bytes=0-9,2000-3000").ranges, (std::vector<FileRange>{{0, 10}})) << "unsatisfiable ones dropped";
  EXPECT_EQ(p("bytes=2000-3000,5000-").answer, A::unsatisfiable);
  EXPECT_EQ(p("bytes=0-9,x").answer, A::unsatisfiable);
  EXPECT_EQ(p("items=0-9").answer, A::whole) << "an unknown unit is ignored (RFC 9110 14.2)";
  EXPECT_EQ(p("items=2000-3000").answer, A::whole) << "even one the file could not satisfy";
  EXPECT_EQ(p("bytes").answer, A::whole) << "no '=': not a byte range";
  EXPECT_EQ(p("ByTes=0-9").ranges, (std::vector<FileRange>{{0, 10}})) << "units are case-insensitive";
  std::string many = "bytes=";
  for (int i = 0; i < 201; ++i) many += std::to_string(i * 4) + "-" + std::to_string(i * 4 + 1) + ",";
  EXPECT_EQ(p(many).answer, A::whole) << "more than the cap";
  EXPECT_EQ(bridge::multipart_length("B", "t", {{0, 10}, {20, 10}}, 1000),
            bridge::part_header("B", "t", {0, 10}, 1000).size() + 10 +
                bridge::part_header("B", "t", {20, 10}, 1000).size() + 10 + bridge::closing_delimiter("B").size());
}

// ---- against real servers ----

TEST(RangeFetch, ManyRangesFromNginxInAFewRequestsOverOneConnection) {
  Nginx nginx;
  const std::string data = random_bytes(8 * MiB, 31);
  write_file(nginx.root() / "a.bin", data);
  const auto ranges = spread_ranges(300, data.size(), 16 * KiB, 1);
  asio::io_context io;
  RangeClient client(fast_options(200), nginx.url("a.bin"));
  Collected c(ranges.size());
  auto r = fetch_all(io, client, ranges, c);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_TRUE(c.matches(data, ranges));
  EXPECT_EQ(client.requests(), 3u) << "100 ranges per request";
  EXPECT_EQ(client.attempts(), 1);
  EXPECT_TRUE(client.multi_range());
  EXPECT_EQ(client.total(), data.size());
  EXPECT_TRUE(client.has_validators());
  EXPECT_LE(client.received(), total_length(ranges) + 300 * 150) << "the bytes asked plus part headers";

  // A second call on the same connection, with If-Range.
  const auto more = spread_ranges(50, data.size(), 4 * KiB, 2);
  Collected c2(more.size());
  auto r2 = fetch_all(io, client, more, c2);
  ASSERT_TRUE(r2) << r2.error().message();
  EXPECT_TRUE(c2.matches(data, more));
  EXPECT_EQ(client.attempts(), 1) << "kept alive across fetch() calls";
  EXPECT_EQ(client.requests(), 4u);
}

TEST(RangeFetch, ManyRangesFromTheArtifactServerMultipart) {
  asio::io_context io;
  Served s(io);
  const std::string data = random_bytes(6 * MiB, 32);
  write_file(s.dir / "a.bin", data);
  auto ranges = spread_ranges(300, data.size(), 12 * KiB, 3);
  ranges.push_back({data.size() - 10, 10});  // the last byte of the file
  RangeClient client(fast_options(200), s.url("a.bin"));
  Collected c(ranges.size());
  auto r = fetch_all(io, client, ranges, c);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_TRUE(c.matches(data, ranges));
  EXPECT_EQ(client.requests(), 4u);
  EXPECT_EQ(client.attempts(), 1);
  EXPECT_EQ(s.server->requests(), 4u);
  EXPECT_EQ(s.server->bytes_served(), client.received());
  EXPECT_LE(client.received(), total_length(ranges) + 301 * 150);
}

TEST(RangeFetch, NginxWithMaxRanges1GetsOneRangePerRequest) {
  Nginx nginx(NginxOptions{.extra_server_conf = "    max_ranges 1;"});
  const std::string data = random_bytes(4 * MiB, 33);
  write_file(nginx.root() / "a.bin", data);
  const auto ranges = spread_ranges(40, data.size(), 16 * KiB, 4);
  asio::io_context io;
  RangeClient client(fast_options(200), nginx.url("a.bin"));
  Collected c(ranges.size());
  auto r = fetch_all(io, client, ranges, c);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_TRUE(c.matches(data, ranges));
  EXPECT_FALSE(client.multi_range());
  EXPECT_EQ(client.requests(), 41u) << "one refused multi-range request, then one per range";
  EXPECT_EQ(client.attempts(), 2) << "the 200 is closed unread; the next connection is kept alive";
  EXPECT_LT(client.received(), total_length(ranges) + 64 * KiB) << "the whole file was not read";
}

TEST(RangeFetch, NginxWithoutRangesIsRangeIgnored) {
  Nginx nginx(NginxOptions{.extra_server_conf = "    max_ranges 0;"});
  const std::string data = random_bytes(2 * MiB, 34);
  write_file(nginx.root() / "a.bin", data);
  const auto ranges = spread_ranges(10, data.size(), 16 * KiB, 5);
  asio::io_context io;
  RangeClient client(fast_options(200), nginx.url("a.bin"));
  Collected c(ranges.size());
  auto r = fetch_all(io, client, ranges, c);
  ASSERT_FALSE(r);
  EXPECT_TRUE(is(r.error(), AgentErrc::range_ignored)) << r.error().message();
  EXPECT_EQ(c.bytes, 0u);
  EXPECT_LT(client.received(), 64 * KiB);
}

TEST(RangeFetch, LinkCutEveryFewHundredKiBDeliversExactBytesOnce) {
  asio::io_context io;
  Served s(io);
  const std::string data = random_bytes(24 * MiB, 35);
  write_file(s.dir / "a.bin", data);
  const auto ranges = spread_ranges(400, data.size(), 48 * KiB, 6);
  FaultProxy proxy(s.port);
  proxy.set_cut(200 * KiB, 400 * KiB);
  RangeClient client(fast_options(200), s.url("a.bin", proxy.port()));
  Collected c(ranges.size());
  auto r = fetch_all(io, client, ranges, c, 240s);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_TRUE(c.matches(data, ranges));
  EXPECT_GE(proxy.cuts(), 5u);
  EXPECT_GT(client.attempts(), 5);
  EXPECT_LE(static_cast<double>(client.received()), 1.05 * static_cast<double>(total_length(ranges)));
}

TEST(RangeFetch, NginxThroughCutsDeliversExactBytesOnce) {
  Nginx nginx;
  const std::string data = random_bytes(12 * MiB, 36);
  write_file(nginx.root() / "a.bin", data);
  const auto ranges = spread_ranges(200, data.size(), 48 * KiB, 7);
  FaultProxy proxy(static_cast<std::uint16_t>(nginx.port()));
  proxy.set_cut(200 * KiB, 400 * KiB);
  asio::io_context io;
  RangeClient client(fast_options(200), "https://127.0.0.1:" + std::to_string(proxy.port()) + "/artifacts/a.bin");
  Collected c(ranges.size());
  auto r = fetch_all(io, client, ranges, c, 240s);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_TRUE(c.matches(data, ranges));
  EXPECT_GE(proxy.cuts(), 3u);
  EXPECT_LE(static_cast<double>(client.received()), 1.05 * static_cast<double>(total_length(ranges)));
}

TEST(RangeFetch, IdleConnectionClosedByTheServerIsReplacedAtOnce) {
  asio::io_context io;
  Served s(io, true, 200ms);
  const std::string data = random_bytes(MiB, 37);
  write_file(s.dir / "a.bin", data);
  const auto first = spread_ranges(20, data.size(), 4 * KiB, 8);
  RangeClient client(fast_options(200), s.url("a.bin"));
  Collected c(first.size());
  ASSERT_TRUE(fetch_all(io, client, first, c));
  // Wait (bounded) for the server's idle timeout to close the kept-alive connection.
  io.restart();
  run_coro(io, [&]() -> asio::awaitable<void> {
    for (int i = 0; i < 500 && s.server->connections() > 0; ++i) co_await sleep_for(10ms);
  }, 10s);
  ASSERT_EQ(s.server->connections(), 0u);
  const auto second = spread_ranges(20, data.size(), 4 * KiB, 9);
  Collected c2(second.size());
  auto r = fetch_all(io, client, second, c2);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_TRUE(c2.matches(data, second));
  EXPECT_EQ(client.attempts(), 2);
}

TEST(RangeFetch, ReplacedFileBetweenCallsIsSourceChanged) {
  asio::io_context io;
  Served s(io);
  Nginx nginx;
  const std::string data = random_bytes(2 * MiB, 38);
  write_file(s.dir / "a.bin", data);
  write_file(nginx.root() / "a.bin", data);
  const auto ranges = spread_ranges(20, data.size(), 8 * KiB, 10);
  for (const std::string& url : {s.url("a.bin"), nginx.url("a.bin")}) {
    RangeClient client(fast_options(200), url);
    Collected c(ranges.size());
    ASSERT_TRUE(fetch_all(io, client, ranges, c)) << url;
    const std::string v2 = random_bytes(2 * MiB + 1, 39);  // nginx's ETag: mtime (s) and size
    replace_file(url == s.url("a.bin") ? s.dir / "a.bin" : nginx.root() / "a.bin", v2);
    Collected c2(ranges.size());
    auto r = fetch_all(io, client, ranges, c2);
    ASSERT_FALSE(r) << url;
    EXPECT_TRUE(is(r.error(), AgentErrc::source_changed)) << r.error().message();
    EXPECT_EQ(c2.bytes, 0u);

    // A new client that assumes the first version's validators notices too, on its first request.
    RangeClient resumed(fast_options(200), url);
    resumed.assume(client.etag(), client.last_modified(), data.size());
    Collected c3(ranges.size());
    auto r3 = fetch_all(io, resumed, ranges, c3);
    ASSERT_FALSE(r3) << url;
    EXPECT_TRUE(is(r3.error(), AgentErrc::source_changed)) << r3.error().message();
    replace_file(url == s.url("a.bin") ? s.dir / "a.bin" : nginx.root() / "a.bin", data);
  }
}

TEST(RangeFetch, CancellationEndsAStalledFetchPromptly) {
  asio::io_context io;
  Served s(io, false);
  const std::string data = random_bytes(4 * MiB, 40);
  write_file(s.dir / "a.bin", data);
  FaultProxy proxy(s.port);
  proxy.set_stall_after(256 * KiB);
  auto opts = fast_options(200);
  opts.read_timeout = 120s;  // only cancellation can end the stalled read within the deadline
  opts.connect_timeout = 120s;
  RangeClient client(opts, s.url("a.bin", proxy.port(), false));
  const auto ranges = spread_ranges(100, data.size(), 32 * KiB, 11);
  Collected c(ranges.size());
  const RangeSink sink = c.sink();
  Result<void> result = fail(Errc::internal, "did not run");
  bool finished = false;
  asio::cancellation_signal cancel;
  run_coro(io, [&]() -> asio::awaitable<void> {
    auto task = [&]() -> asio::awaitable<void> {
      const std::span<const ByteRange> view(ranges);
      auto r = co_await client.fetch(view, sink);
      result = r;
    };
    asio::co_spawn(io, task(), asio::bind_cancellation_slot(cancel.slot(), [&](std::exception_ptr) { finished = true; }));
    for (int i = 0; i < 1000 && proxy.bytes_downstream() < 256 * KiB; ++i) co_await sleep_for(10ms);
    CO_ASSERT_TRUE(proxy.bytes_downstream() >= 256 * KiB, "the fetch never reached the stall");
    co_await sleep_for(50ms);
    CO_ASSERT_FALSE(finished, "the fetch ended before it was cancelled");
    cancel.emit(asio::cancellation_type::terminal);
    for (int i = 0; i < 500 && !finished; ++i) co_await sleep_for(10ms);
    CO_ASSERT_TRUE(finished, "the fetch did not stop within 5 s of cancellation");
  }, 60s);
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error().code(), make_error_code(Errc::cancelled)) << result.error().message();
  EXPECT_EQ(client.attempts(), 1);
}

// Not a timed assertion: prints what one kept-alive connection with multi-range requests saves
// against a connection per range (how adaptive installs fetched before), next to a full download
// of the file, all in this invocation on this machine.
TEST(RangeFetch, PrintsTheCostAgainstOneConnectionPerRange) {
  Nginx nginx;
  const std::string data = random_bytes(32 * MiB, 42);
  write_file(nginx.root() / "a.bin", data);
  const auto ranges = spread_ranges(300, data.size(), 64 * KiB, 12);
  asio::io_context io;
  using clock = std::chrono::steady_clock;
  auto ms = [](clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };

  // A full download of the file.
  auto t0 = clock::now();
  std::uint64_t full_bytes = 0;
  agent::DownloadState full{.url = nginx.url("a.bin")};
  io.restart();
  run_coro(io, [&]() -> asio::awaitable<void> {
    const auto o = fast_options(200);
    const agent::BodySink count = [&](std::span<const std::uint8_t> b) -> asio::awaitable<Result<void>> {
      full_bytes += b.size();
      co_return Result<void>{};
    };
    const agent::RestartHandler no_restart;
    const agent::ProgressHandler no_progress;
    auto r = co_await agent::download(o, full, count, no_restart, no_progress);
    EXPECT_TRUE(r);
  }, 120s);
  const double full_ms = ms(clock::now() - t0);
  ASSERT_EQ(full_bytes, data.size());

  // One download() per range: a new connection each.
  t0 = clock::now();
  Collected per(ranges.size());
  int per_connections = 0;
  io.restart();
  run_coro(io, [&]() -> asio::awaitable<void> {
    const auto o = fast_options(200);
    for (std::size_t i = 0; i < ranges.size(); ++i) {
      agent::DownloadState st{.url = nginx.url("a.bin")};
      st.offset = ranges[i].offset;
      st.end = ranges[i].offset + ranges[i].length - 1;
      const agent::BodySink to_range = [&, i](std::span<const std::uint8_t> b) -> asio::awaitable<Result<void>> {
        per.parts[i].append(reinterpret_cast<const char*>(b.data()), b.size());
        per.bytes += b.size();
        co_return Result<void>{};
      };
      const agent::RestartHandler no_restart;
      const agent::ProgressHandler no_progress;
      auto r = co_await agent::download(o, st, to_range, no_restart, no_progress);
      CO_ASSERT_TRUE(r, r.error().message());
      per_connections += st.attempts;
    }
  }, 240s);
  const double per_ms = ms(clock::now() - t0);
  EXPECT_TRUE(per.matches(data, ranges));

  // RangeClient.
  t0 = clock::now();
  RangeClient client(fast_options(200), nginx.url("a.bin"));
  Collected c(ranges.size());
  auto r = fetch_all(io, client, ranges, c);
  const double multi_ms = ms(clock::now() - t0);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_TRUE(c.matches(data, ranges));
  EXPECT_EQ(client.attempts(), 1);
  EXPECT_EQ(per_connections, 300);

  std::printf("300 ranges, %.1f MiB of a %.0f MiB file, nginx on loopback (TLS):\n"
              "  full download of the file:      %7.0f ms (1 connection)\n"
              "  download() per range:           %7.0f ms (%d connections, %d requests)\n"
              "  RangeClient:                    %7.0f ms (%d connection, %llu requests): %.2fx a full download, "
              "%.2fx one connection per range\n",
              double(total_length(ranges)) / MiB, double(data.size()) / MiB, full_ms, per_ms, per_connections,
              int(ranges.size()), multi_ms, client.attempts(), static_cast<unsigned long long>(client.requests()),
              multi_ms / full_ms, multi_ms / per_ms);
}

/// Answers the n-th request (one per connection) with responses[n] (the last one from then on),
/// then closes: for answers no real server sends on cue (a malformed multipart body, a 503).
class CannedServer {
 public:
  CannedServer(asio::io_context& io, std::vector<std::string> responses)
      : acceptor_(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)),
        responses_(std::move(responses)) {
    asio::co_spawn(io, serve(), [](std::exception_ptr) {});
  }
  std::uint16_t port() const { return acceptor_.local_endpoint().port(); }
  int requests = 0;

 private:
  asio::awaitable<void> serve() {
    constexpr auto await = asio::as_tuple(asio::use_awaitable);
    for (;;) {
      auto [ec, socket] = co_await acceptor_.async_accept(await);
      if (ec) co_return;
      std::string request;
      auto [rec, rn] = co_await asio::async_read_until(socket, asio::dynamic_buffer(request), "\r\n\r\n", await);
      if (rec) continue;
      const std::string& response = responses_[std::min<std::size_t>(requests, responses_.size() - 1)];
      ++requests;
      auto [wec, wn] = co_await asio::async_write(socket, asio::buffer(response), await);
      (void)wec;
      boost::system::error_code ignored;
      socket.close(ignored);
    }
  }
  asio::ip::tcp::acceptor acceptor_;
  std::vector<std::string> responses_;
};

std::string multipart_response(const std::string& body) {
  return "HTTP/1.1 206 Partial Content\r\nETag: \"v1\"\r\nContent-Type: multipart/byteranges; "
         "boundary=XyZ\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

TEST(RangeFetch, MalformedMultipartAnswerIsAProtocolError) {
  const std::string data = random_bytes(1000, 41);
  const std::vector<ByteRange> ranges = {{100, 100}, {400, 50}};
  // The second part says 410-459 where 400-449 was asked.
  const std::string body = "\r\n--XyZ\r\nContent-Range: bytes 100-199/1000\r\n\r\n" + data.substr(100, 100) +
                           "\r\n--XyZ\r\nContent-Range: bytes 410-459/1000\r\n\r\n" + data.substr(410, 50) +
                           "\r\n--XyZ--\r\n";
  asio::io_context io;
  CannedServer server(io, {multipart_response(body)});
  RangeClient client(fast_options(200), "http://127.0.0.1:" + std::to_string(server.port()) + "/artifacts/a.bin");
  Collected c(ranges.size());
  auto r = fetch_all(io, client, ranges, c, 30s);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), make_error_code(Errc::protocol)) << r.error().message();
  EXPECT_NE(r.error().message().find("Content-Range 'bytes 410-459/1000'"), std::string::npos) << r.error().message();
  EXPECT_EQ(c.parts[0], data.substr(100, 100)) << "the good part was delivered";
  EXPECT_EQ(server.requests, 1) << "not retried";
}

TEST(RangeFetch, ClientCertificateWhenTheServerRequiresOne) {
  asio::io_context io;
  Served s(io, true, 30s, true);
  const std::string data = random_bytes(MiB, 43);
  write_file(s.dir / "a.bin", data);
  const auto ranges = spread_ranges(30, data.size(), 8 * KiB, 13);

  auto with_cert = fast_options(200);
  with_cert.cert_file = (certs() / "device-1.crt").string();
  with_cert.key_file = (certs() / "device-1.key").string();
  RangeClient client(with_cert, s.url("a.bin"));
  Collected c(ranges.size());
  auto r = fetch_all(io, client, ranges, c);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_TRUE(c.matches(data, ranges));

  auto without = fast_options(200);
  without.max_attempts = 3;
  RangeClient refused(without, s.url("a.bin"));
  Collected c2(ranges.size());
  auto r2 = fetch_all(io, refused, ranges, c2, 30s);
  ASSERT_FALSE(r2);
  EXPECT_NE(r2.error().message().find("TLS"), std::string::npos) << r2.error().message();
  EXPECT_EQ(c2.bytes, 0u);
}

TEST(RangeFetch, A503IsRetriedAfterBackoff) {
  const std::string data = random_bytes(1000, 44);
  const std::vector<ByteRange> ranges = {{100, 100}, {400, 50}};
  const std::string body = "\r\n--XyZ\r\nContent-Range: bytes 100-199/1000\r\n\r\n" + data.substr(100, 100) +
                           "\r\n--XyZ\r\nContent-Range: bytes 400-449/1000\r\n\r\n" + data.substr(400, 50) +
                           "\r\n--XyZ--\r\n";
  asio::io_context io;
  CannedServer server(io, {"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", multipart_response(body)});
  RangeClient client(fast_options(200), "http://127.0.0.1:" + std::to_string(server.port()) + "/artifacts/a.bin");
  Collected c(ranges.size());
  auto r = fetch_all(io, client, ranges, c, 30s);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_TRUE(c.matches(data, ranges));
  EXPECT_EQ(server.requests, 2);
  EXPECT_EQ(client.attempts(), 2);
}

TEST(RangeFetch, AStalledLinkTimesOutAndResumes) {
  asio::io_context io;
  Served s(io, false);
  const std::string data = random_bytes(8 * MiB, 45);
  write_file(s.dir / "a.bin", data);
  FaultProxy proxy(s.port);
  proxy.set_stall_after(300 * KiB);  // every connection goes silent after 300 KiB
  auto opts = fast_options(200);
  opts.read_timeout = 300ms;
  RangeClient client(opts, s.url("a.bin", proxy.port(), false));
  const auto ranges = spread_ranges(100, data.size(), 24 * KiB, 14);
  Collected c(ranges.size());
  auto r = fetch_all(io, client, ranges, c, 120s);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_TRUE(c.matches(data, ranges));
  EXPECT_GE(client.attempts(), 3);
  EXPECT_LE(static_cast<double>(client.received()), 1.05 * static_cast<double>(total_length(ranges)));
}

TEST(RangeFetch, BadRangesAreRefusedBeforeAnyRequest) {
  asio::io_context io;
  RangeClient client(fast_options(200), "https://127.0.0.1:1/artifacts/a.bin");
  const std::vector<ByteRange> ranges = {{100, 10}, {50, 10}};
  Collected c(ranges.size());
  auto r = fetch_all(io, client, ranges, c, 10s);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), make_error_code(Errc::invalid_argument)) << r.error().message();
  EXPECT_EQ(client.requests(), 0u);
}

}  // namespace
}  // namespace tern::test
