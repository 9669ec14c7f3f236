// tern-agent: the device side of Tern. Commands in the spirit of Mender's client.
#include "agent/cli.hpp"

#include <csignal>

int main(int argc, char** argv) {
  // A peer that closes a TLS connection while we write (a broker restarting, a link cut) must be an
  // error on that connection, not the death of the process: OpenSSL writes with plain write().
  std::signal(SIGPIPE, SIG_IGN);
  return tern::agent::cli_main(argc, argv);
}
