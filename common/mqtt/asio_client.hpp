// Engine::asio of tern::mqtt::Client (see client.hpp): made by Client::create.
#pragma once

#include "common/mqtt/client.hpp"

namespace tern::mqtt {

/// Errors: an invalid URI, a persistence directory (this engine keeps messages in memory only), a
/// certificate, key or CA file that cannot be loaded.
Result<std::unique_ptr<Client>> make_asio_client(boost::asio::any_io_executor ex, Options options);

}  // namespace tern::mqtt
