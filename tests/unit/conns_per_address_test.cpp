// The per-address connection cap (router/conns_per_address.hpp): counting, refusals, and when a
// refusal is news for the log.
#include <gtest/gtest.h>

#include "../../router/conns_per_address.hpp"

using liege::router::ConnsPerAddress;
using Admit = ConnsPerAddress::Admit;

TEST(ConnsPerAddress, AnAddressAtTheCapIsRefusedAndOthersAreNot) {
    ConnsPerAddress cap(2);
    EXPECT_TRUE(cap.enabled());
    EXPECT_EQ(cap.admit("10.0.0.1"), Admit::Yes);
    EXPECT_EQ(cap.admit("10.0.0.1"), Admit::Yes);
    EXPECT_EQ(cap.admit("10.0.0.1"), Admit::NoFirst);
    EXPECT_EQ(cap.admit("10.0.0.1"), Admit::No) << "only the first refusal is news";
    EXPECT_EQ(cap.admit("10.0.0.2"), Admit::Yes);
    EXPECT_EQ(cap.addresses(), 2u);
}

TEST(ConnsPerAddress, AClosedConnectionMakesRoomAndTheNextRefusalIsNewsAgain) {
    ConnsPerAddress cap(1);
    EXPECT_EQ(cap.admit("::1"), Admit::Yes);
    EXPECT_EQ(cap.admit("::1"), Admit::NoFirst);
    cap.release("::1");
    EXPECT_EQ(cap.addresses(), 0u) << "an address with no connection is forgotten";
    EXPECT_EQ(cap.admit("::1"), Admit::Yes);
    EXPECT_EQ(cap.admit("::1"), Admit::NoFirst);
    cap.release("unknown"); // a release without an admit changes nothing
    EXPECT_EQ(cap.addresses(), 1u);
}

TEST(ConnsPerAddress, ZeroIsOff) {
    EXPECT_FALSE(ConnsPerAddress(0).enabled());
}
