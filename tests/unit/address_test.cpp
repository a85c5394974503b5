#include <gtest/gtest.h>

#include <stdexcept>

#include "liege/address.hpp"

using liege::Address;
using liege::parse_address;

TEST(Address, ParsesIpv4HostAndPort) {
    Address a = parse_address("127.0.0.1:8080");
    EXPECT_EQ(a.kind, Address::Kind::Tcp);
    EXPECT_EQ(a.host, "127.0.0.1");
    EXPECT_EQ(a.port, 8080);
    EXPECT_EQ(a.str(), "127.0.0.1:8080");
}

TEST(Address, ParsesBracketedIpv6) {
    Address a = parse_address("[::1]:0");
    EXPECT_EQ(a.host, "::1");
    EXPECT_EQ(a.port, 0);
    EXPECT_EQ(a.str(), "[::1]:0");
}

TEST(Address, ParsesUnixPath) {
    Address a = parse_address("unix:./liege.sock");
    EXPECT_TRUE(a.is_unix());
    EXPECT_EQ(a.path, "./liege.sock");
    EXPECT_EQ(a.str(), "unix:./liege.sock");
}

TEST(Address, ParsesHostName) {
    Address a = parse_address("localhost:80");
    EXPECT_EQ(a.host, "localhost");
    EXPECT_EQ(a.port, 80);
}

TEST(Address, RejectsMalformed) {
    for (const char* bad :
         {"", "8080", ":80", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:8o", "::1:80",
          "[::1]80", "[::1]", "[nothost]:80", "unix:"}) {
        EXPECT_THROW(parse_address(bad), std::invalid_argument) << bad;
    }
}

TEST(Address, ErrorSaysWhatWasExpected) {
    try {
        parse_address("nonsense");
        FAIL();
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("HOST:PORT"), std::string::npos);
    }
}

TEST(Address, ConvertsToSockaddr) {
    sockaddr_storage ss{};
    socklen_t len = 0;
    EXPECT_EQ(liege::to_sockaddr(parse_address("127.0.0.1:80"), ss, len), 0);
    EXPECT_EQ(ss.ss_family, AF_INET);
    EXPECT_EQ(liege::to_sockaddr(parse_address("[::1]:80"), ss, len), 0);
    EXPECT_EQ(ss.ss_family, AF_INET6);
    EXPECT_EQ(liege::to_sockaddr(parse_address("unix:/tmp/x.sock"), ss, len), 0);
    EXPECT_EQ(ss.ss_family, AF_UNIX);
}

TEST(DefaultAdminAddress, PerUserRuntimeDirectory) {
    EXPECT_EQ(liege::default_admin_address(0, "/run/user/0"), "unix:/run/liege/liege.sock");
    EXPECT_EQ(liege::default_admin_address(1000, "/run/user/1000"),
              "unix:/run/user/1000/liege/liege.sock");
    EXPECT_EQ(liege::default_admin_address(1000, "/run/user/1000/"),
              "unix:/run/user/1000/liege/liege.sock");
    EXPECT_EQ(liege::default_admin_address(1000, nullptr), "unix:/tmp/liege-1000/liege.sock");
    EXPECT_EQ(liege::default_admin_address(1000, ""), "unix:/tmp/liege-1000/liege.sock");
    EXPECT_EQ(liege::default_admin_address(1000, "relative"), "unix:/tmp/liege-1000/liege.sock")
        << "XDG_RUNTIME_DIR must be absolute";
}
