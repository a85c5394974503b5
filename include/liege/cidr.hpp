// Address ranges as users write them for --trusted-proxy: "10.0.0.0/8", "fd00::/8", a single
// address ("127.0.0.1", "::1"), or "unix" for clients on a unix listening socket.
#pragma once

#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace liege {

struct Cidr {
    enum class Family { V4, V6, Unix };
    Family family = Family::V4;
    std::array<uint8_t, 16> bytes{}; // network byte order; 4 used for V4
    unsigned prefix = 0;             // bits that must match

    std::string str() const; // canonical form, "10.0.0.0/8"
    bool operator==(const Cidr&) const = default;
};

// Throws std::invalid_argument saying what was expected. Host bits set below the prefix
// ("10.1.2.3/8") are an error: it is most likely a typo for a narrower range.
Cidr parse_cidr(std::string_view text);

// Whether the peer `sa` falls in `range`. An IPv4-mapped IPv6 peer (::ffff:a.b.c.d, as a dual
// stack socket reports IPv4 clients) matches IPv4 ranges.
bool cidr_contains(const Cidr& range, const sockaddr* sa);
bool any_cidr_contains(const std::vector<Cidr>& ranges, const sockaddr* sa);

} // namespace liege
