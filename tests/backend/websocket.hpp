// The parts of RFC 6455 the test backend needs: the handshake's accept key (SHA-1 + base64).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace liege::test {

// SHA-1 digest of `data` (FIPS 180-4).
std::array<uint8_t, 20> sha1(std::string_view data);

// Standard base64 with padding (RFC 4648).
std::string base64(std::string_view data);

// Sec-WebSocket-Accept for a client's Sec-WebSocket-Key.
std::string websocket_accept(std::string_view key);

} // namespace liege::test
