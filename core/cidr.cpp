#include "liege/cidr.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <charconv>
#include <cstring>
#include <stdexcept>

namespace liege {

Cidr parse_cidr(std::string_view text) {
    auto bad = [&](std::string_view why) {
        return std::invalid_argument("invalid address range '" + std::string(text) +
                                     "': " + std::string(why));
    };
    Cidr c;
    if (text == "unix") {
        c.family = Cidr::Family::Unix;
        return c;
    }
    const size_t slash = text.find('/');
    const std::string host(text.substr(0, slash));
    unsigned bits = 0;
    if (inet_pton(AF_INET, host.c_str(), c.bytes.data()) == 1) {
        c.family = Cidr::Family::V4;
        bits = 32;
    } else if (inet_pton(AF_INET6, host.c_str(), c.bytes.data()) == 1) {
        c.family = Cidr::Family::V6;
        bits = 128;
    } else {
        throw bad("expected an IPv4 or IPv6 address with an optional /PREFIX, or unix");
    }
    c.prefix = bits;
    if (slash != std::string_view::npos) {
        const std::string_view p = text.substr(slash + 1);
        auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), c.prefix);
        if (p.empty() || ec != std::errc{} || end != p.data() + p.size() || c.prefix > bits) {
            throw bad("the prefix must be a number from 0 to " + std::to_string(bits));
        }
    }
    for (unsigned i = c.prefix; i < bits; ++i) {
        if ((c.bytes[i / 8] >> (7 - i % 8)) & 1) {
            throw bad("address bits are set beyond the /" + std::to_string(c.prefix) + " prefix");
        }
    }
    return c;
}

std::string Cidr::str() const {
    if (family == Family::Unix) {
        return "unix";
    }
    char buf[INET6_ADDRSTRLEN] = {};
    inet_ntop(family == Family::V4 ? AF_INET : AF_INET6, bytes.data(), buf, sizeof(buf));
    return std::string(buf) + "/" + std::to_string(prefix);
}

namespace {

bool prefix_matches(const uint8_t* range, const uint8_t* addr, unsigned prefix) {
    const unsigned whole = prefix / 8;
    if (std::memcmp(range, addr, whole) != 0) {
        return false;
    }
    const unsigned rest = prefix % 8;
    if (rest == 0) {
        return true;
    }
    const auto mask = static_cast<uint8_t>(0xff << (8 - rest));
    return (range[whole] & mask) == (addr[whole] & mask);
}

} // namespace

bool cidr_contains(const Cidr& range, const sockaddr* sa) {
    if (sa == nullptr) {
        return false;
    }
    switch (sa->sa_family) {
    case AF_UNIX:
        return range.family == Cidr::Family::Unix;
    case AF_INET: {
        const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
        return range.family == Cidr::Family::V4 &&
               prefix_matches(range.bytes.data(), reinterpret_cast<const uint8_t*>(&in->sin_addr),
                              range.prefix);
    }
    case AF_INET6: {
        const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
        const auto* a = reinterpret_cast<const uint8_t*>(&in6->sin6_addr);
        if (range.family == Cidr::Family::V6) {
            return prefix_matches(range.bytes.data(), a, range.prefix);
        }
        return range.family == Cidr::Family::V4 && IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) &&
               prefix_matches(range.bytes.data(), a + 12, range.prefix);
    }
    default:
        return false;
    }
}

bool any_cidr_contains(const std::vector<Cidr>& ranges, const sockaddr* sa) {
    for (const auto& r : ranges) {
        if (cidr_contains(r, sa)) {
            return true;
        }
    }
    return false;
}

} // namespace liege
