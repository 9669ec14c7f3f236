// tern-agent: the device side of Tern. Commands in the spirit of Mender's client.
#include "agent/cli.hpp"

int main(int argc, char** argv) { return tern::agent::cli_main(argc, argv); }
