// A fault-injecting TCP proxy for flaky-link tests: listens on 127.0.0.1 (ephemeral port unless
// given) and forwards each connection to 127.0.0.1:target_port (or target_host), on its own thread
// and io_context. Faults can be changed at any time from any thread and apply to data forwarded
// from then on:
//
//   FaultProxy proxy(server_port);
//   proxy.set_cut(1 << 20, 3 << 20);   // each connection is cut after 1-3 MiB downstream
//   proxy.set_stall_after(4096);       // stop forwarding after 4 KiB, keep sockets open (half-open)
//   proxy.set_rate(100000);            // throttle downstream to 100 kB/s
//   proxy.set_refuse(true);            // close new connections at once
//   proxy.drop_all();                  // reset every current connection now
//   fetch("http://127.0.0.1:" + std::to_string(proxy.port()) + "/...");
//
// "Downstream" is server → client (what a downloader receives). Byte limits count downstream bytes
// per connection. Counters are totals since construction.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace tern::test {

class FaultProxy {
 public:
  /// Starts forwarding to target_host:target_port; listen_port 0 picks an ephemeral port.
  /// Throws std::runtime_error if it cannot bind.
  explicit FaultProxy(std::uint16_t target_port, std::string target_host = "127.0.0.1",
                      std::uint16_t listen_port = 0, std::uint64_t seed = 1);
  ~FaultProxy();
  FaultProxy(const FaultProxy&) = delete;
  FaultProxy& operator=(const FaultProxy&) = delete;

  std::uint16_t port() const;

  /// Cut each new connection after a random number of downstream bytes in [min, max]
  /// (seeded RNG). max == 0 disables cutting.
  void set_cut(std::uint64_t min_bytes, std::uint64_t max_bytes);
  /// Stop forwarding (in both directions) after `bytes` downstream bytes on each new connection,
  /// leaving both sockets open. 0 disables.
  void set_stall_after(std::uint64_t bytes);
  /// Throttle downstream to `bytes_per_second` per connection; 0: unlimited.
  void set_rate(std::uint64_t bytes_per_second);
  /// Accept and immediately close new connections while true.
  void set_refuse(bool refuse);
  /// Closes every current connection (both sides) now.
  void drop_all();
  /// Clears every fault (cut, stall, rate, refuse).
  void clear_faults();

  std::uint64_t bytes_downstream() const;  ///< server → client bytes forwarded
  std::uint64_t bytes_upstream() const;    ///< client → server bytes forwarded
  std::uint64_t connections() const;       ///< connections accepted (including refused ones)
  std::uint64_t cuts() const;              ///< connections cut by the cut fault

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace tern::test
