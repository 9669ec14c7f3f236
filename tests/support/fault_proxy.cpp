// FaultProxy: one io_context on its own thread. Each accepted connection gets a Conn with both
// sockets and two pump coroutines (upstream, downstream) awaited together; whichever ends first
// closes both sockets, which ends the other. Faults are read from atomics, so setters need no lock.
#include "tests/support/fault_proxy.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <array>
#include <atomic>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <stdexcept>
#include <thread>

namespace tern::test {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using namespace asio::experimental::awaitable_operators;

namespace {
constexpr auto kAwait = asio::as_tuple(asio::use_awaitable);
constexpr std::size_t kChunk = 16 * 1024;

struct Conn {
  explicit Conn(asio::io_context& io) : client(io), server(io), stall_timer(io) {}
  tcp::socket client, server;
  asio::steady_timer stall_timer;  ///< a stalled pump waits on it until the connection closes
  std::uint64_t down = 0;          ///< downstream bytes forwarded on this connection
  std::uint64_t cut_at = 0;        ///< 0: never
  std::uint64_t stall_at = 0;      ///< 0: never
  bool stalled = false;
  void close() {
    boost::system::error_code ec;
    client.close(ec);
    server.close(ec);
    stall_timer.cancel();
  }
};
}  // namespace

struct FaultProxy::Impl {
  asio::io_context io;
  tcp::acceptor acceptor{io};
  tcp::endpoint target;
  std::uint16_t port = 0;
  std::thread thread;

  std::atomic<std::uint64_t> cut_min{0}, cut_max{0}, stall_after{0}, rate{0};
  std::atomic<bool> refuse{false};
  std::atomic<std::uint64_t> down{0}, up{0}, accepted{0}, cuts{0};

  std::mutex rng_mutex;
  std::mt19937_64 rng;

  // On the io thread only.
  std::map<std::uint64_t, std::shared_ptr<Conn>> conns;
  std::uint64_t next_id = 0;

  std::uint64_t pick_cut() {
    const std::uint64_t lo = cut_min, hi = cut_max;
    if (hi == 0) return 0;
    std::lock_guard lock(rng_mutex);
    return std::uniform_int_distribution<std::uint64_t>(std::min(lo, hi), hi)(rng);
  }

  asio::awaitable<void> accept_loop() {
    for (;;) {
      auto c = std::make_shared<Conn>(io);
      auto [ec] = co_await acceptor.async_accept(c->client, kAwait);
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
      if (ec) continue;
      ++accepted;
      if (refuse) {
        c->close();
        continue;
      }
      c->cut_at = pick_cut();
      c->stall_at = stall_after;
      asio::co_spawn(io, handle(c), [](std::exception_ptr) {});
    }
  }

  asio::awaitable<void> handle(std::shared_ptr<Conn> c) {
    const std::uint64_t id = next_id++;
    conns[id] = c;
    auto [ec] = co_await c->server.async_connect(target, kAwait);
    if (!ec) {
      boost::system::error_code ignored;
      c->client.set_option(tcp::no_delay(true), ignored);
      c->server.set_option(tcp::no_delay(true), ignored);
      co_await (pump_up(c) && pump_down(c));
    }
    c->close();
    conns.erase(id);
  }

  asio::awaitable<void> pump_up(std::shared_ptr<Conn> c) {
    std::array<char, kChunk> buf;
    for (;;) {
      auto [ec, n] = co_await c->client.async_read_some(asio::buffer(buf), kAwait);
      if (ec) break;
      if (c->stalled) continue;  // a stalled link swallows what the client sends
      auto [wec, wn] = co_await asio::async_write(c->server, asio::buffer(buf.data(), n), kAwait);
      up += wn;
      if (wec) break;
    }
    c->close();
  }

  asio::awaitable<void> pump_down(std::shared_ptr<Conn> c) {
    std::array<char, kChunk> buf;
    for (;;) {
      if (c->stall_at && c->down >= c->stall_at) {
        // Half-open: both sockets stay open, nothing moves, until someone closes the connection.
        c->stalled = true;
        c->stall_timer.expires_at(asio::steady_timer::time_point::max());
        auto [tec] = co_await c->stall_timer.async_wait(kAwait);
        (void)tec;
        break;
      }
      if (c->cut_at && c->down >= c->cut_at) {
        ++cuts;
        break;
      }
      // Read no more than may be forwarded before the next fault point.
      std::size_t want = buf.size();
      if (c->cut_at) want = static_cast<std::size_t>(std::min<std::uint64_t>(want, c->cut_at - c->down));
      if (c->stall_at) {
        want = static_cast<std::size_t>(std::min<std::uint64_t>(want, c->stall_at - c->down));
      }
      const std::uint64_t r = rate;
      if (r) want = static_cast<std::size_t>(std::clamp<std::uint64_t>(r / 20, 1, want));
      auto [ec, n] = co_await c->server.async_read_some(asio::buffer(buf.data(), want), kAwait);
      if (ec) break;
      auto [wec, wn] = co_await asio::async_write(c->client, asio::buffer(buf.data(), n), kAwait);
      c->down += wn;
      down += wn;
      if (wec) break;
      if (r) {
        asio::steady_timer t(io);
        t.expires_after(std::chrono::microseconds(wn * 1000000 / r));
        auto [tec] = co_await t.async_wait(kAwait);
        (void)tec;
      }
    }
    c->close();
  }
};

FaultProxy::FaultProxy(std::uint16_t target_port, std::string target_host, std::uint16_t listen_port,
                       std::uint64_t seed)
    : impl_(std::make_shared<Impl>()) {
  auto& i = *impl_;
  i.rng.seed(seed);
  boost::system::error_code ec;
  tcp::resolver resolver(i.io);
  auto results = resolver.resolve(target_host, std::to_string(target_port), ec);
  if (ec || results.empty()) {
    throw std::runtime_error("fault proxy: cannot resolve " + target_host + ": " + ec.message());
  }
  i.target = results.begin()->endpoint();
  const tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), listen_port);
  i.acceptor.open(ep.protocol(), ec);
  if (!ec) i.acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) i.acceptor.bind(ep, ec);
  if (!ec) i.acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    throw std::runtime_error("fault proxy: listening on 127.0.0.1:" + std::to_string(listen_port) + ": " +
                             ec.message());
  }
  i.port = i.acceptor.local_endpoint().port();
  asio::co_spawn(i.io, i.accept_loop(), [](std::exception_ptr) {});
  i.thread = std::thread([&i] { i.io.run(); });
}

FaultProxy::~FaultProxy() {
  auto& i = *impl_;
  asio::post(i.io, [&i] {
    boost::system::error_code ec;
    i.acceptor.close(ec);
    for (auto& [id, c] : i.conns) c->close();
  });
  // Let the pumps see their sockets closed, then stop whatever is left.
  asio::post(i.io, [&i] { i.io.stop(); });
  i.thread.join();
}

std::uint16_t FaultProxy::port() const { return impl_->port; }

void FaultProxy::set_cut(std::uint64_t min_bytes, std::uint64_t max_bytes) {
  impl_->cut_min = min_bytes;
  impl_->cut_max = max_bytes;
}
void FaultProxy::set_stall_after(std::uint64_t bytes) { impl_->stall_after = bytes; }
void FaultProxy::set_rate(std::uint64_t bytes_per_second) { impl_->rate = bytes_per_second; }
void FaultProxy::set_refuse(bool refuse) { impl_->refuse = refuse; }
void FaultProxy::clear_faults() {
  set_cut(0, 0);
  set_stall_after(0);
  set_rate(0);
  set_refuse(false);
}
void FaultProxy::drop_all() {
  // Synchronous, so that a test knows every connection is gone when this returns.
  std::promise<void> done;
  auto impl = impl_;
  asio::post(impl->io, [impl, &done] {
    for (auto& [id, c] : impl->conns) c->close();
    done.set_value();
  });
  done.get_future().wait();
}

std::uint64_t FaultProxy::bytes_downstream() const { return impl_->down; }
std::uint64_t FaultProxy::bytes_upstream() const { return impl_->up; }
std::uint64_t FaultProxy::connections() const { return impl_->accepted; }
std::uint64_t FaultProxy::cuts() const { return impl_->cuts; }

}  // namespace tern::test
