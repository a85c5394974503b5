#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <stdexcept>
#include <string>

#include "liege/cidr.hpp"

using liege::Cidr;
using liege::cidr_contains;
using liege::parse_cidr;

namespace {

sockaddr_storage peer(const std::string& ip) {
    sockaddr_storage ss{};
    if (inet_pton(AF_INET, ip.c_str(), &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr) == 1) {
        ss.ss_family = AF_INET;
    } else if (inet_pton(AF_INET6, ip.c_str(), &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr) ==
               1) {
        ss.ss_family = AF_INET6;
    } else {
        ss.ss_family = AF_UNIX;
    }
    return ss;
}

bool contains(const std::string& range, const std::string& ip) {
    sockaddr_storage ss = peer(ip);
    return cidr_contains(parse_cidr(range), reinterpret_cast<const sockaddr*>(&ss));
}

} // namespace

TEST(Cidr, MatchesAddressesInsideThePrefix) {
    EXPECT_TRUE(contains("10.0.0.0/8", "10.200.3.4"));
    EXPECT_FALSE(contains("10.0.0.0/8", "11.0.0.1"));
    EXPECT_TRUE(contains("192.168.4.0/22", "192.168.7.255"));
    EXPECT_FALSE(contains("192.168.4.0/22", "192.168.8.0"));
    EXPECT_TRUE(contains("0.0.0.0/0", "8.8.8.8"));
    EXPECT_TRUE(contains("fd00::/8", "fd12:3456::1"));
    EXPECT_FALSE(contains("fd00::/8", "fe80::1"));
}

TEST(Cidr, ASingleAddressIsAWholePrefix) {
    EXPECT_EQ(parse_cidr("127.0.0.1").prefix, 32u);
    EXPECT_EQ(parse_cidr("::1").prefix, 128u);
    EXPECT_TRUE(contains("127.0.0.1", "127.0.0.1"));
    EXPECT_FALSE(contains("127.0.0.1", "127.0.0.2"));
    EXPECT_TRUE(contains("::1", "::1"));
}

TEST(Cidr, AMappedIpv6PeerMatchesIpv4Ranges) {
    EXPECT_TRUE(contains("10.0.0.0/8", "::ffff:10.1.2.3"));
    EXPECT_FALSE(contains("10.0.0.0/8", "::ffff:11.1.2.3"));
    EXPECT_FALSE(contains("::1", "127.0.0.1")) << "families do not mix otherwise";
}

TEST(Cidr, UnixNamesUnixSocketPeers) {
    EXPECT_TRUE(contains("unix", "unix-peer"));
    EXPECT_FALSE(contains("127.0.0.1", "unix-peer"));
    EXPECT_FALSE(contains("unix", "127.0.0.1"));
}

TEST(Cidr, CanonicalForm) {
    EXPECT_EQ(parse_cidr("10.0.0.0/8").str(), "10.0.0.0/8");
    EXPECT_EQ(parse_cidr("fd00:0::/8").str(), "fd00::/8");
    EXPECT_EQ(parse_cidr("unix").str(), "unix");
}

TEST(Cidr, MistakesSayWhatWasExpected) {
    for (const char* bad : {"", "10.0.0/8", "10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/x",
                            "host.example", "10.1.2.3/8"}) {
        EXPECT_THROW(parse_cidr(bad), std::invalid_argument) << bad;
    }
    try {
        parse_cidr("10.1.2.3/8");
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("beyond the /8 prefix"), std::string::npos)
            << e.what();
    }
}
