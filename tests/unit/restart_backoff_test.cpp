// The wait before a crashed worker or router starts again: 100 ms doubling to 30 s, back to
// 100 ms once the process has been healthy for a minute.
#include "liege/restart_backoff.hpp"

#include <gtest/gtest.h>

namespace {

using namespace std::chrono_literals;
using liege::restart_backoff;
using liege::RestartBackoff;

TEST(RestartBackoff, StartsAt100MsAndDoubles) {
    EXPECT_EQ(restart_backoff(1), 100ms);
    EXPECT_EQ(restart_backoff(2), 200ms);
    EXPECT_EQ(restart_backoff(3), 400ms);
    EXPECT_EQ(restart_backoff(9), 25'600ms);
}

TEST(RestartBackoff, IsCappedAt30Seconds) {
    EXPECT_EQ(restart_backoff(10), 30s);
    EXPECT_EQ(restart_backoff(1000), 30s);
}

TEST(RestartBackoff, ConsecutiveFailuresGrowTheWait) {
    RestartBackoff b;
    EXPECT_EQ(b.failed(1'000), 100ms);
    EXPECT_EQ(b.failed(2'000), 200ms);
    EXPECT_EQ(b.failed(3'000), 400ms);
    EXPECT_EQ(b.failures(), 3);
}

TEST(RestartBackoff, AMinuteHealthyStartsOverAt100Ms) {
    RestartBackoff b;
    b.failed(1'000);
    b.failed(2'000);
    b.failed(3'000);
    const int64_t healthy_since = 10'000;
    EXPECT_EQ(b.failed(healthy_since + 60'000, healthy_since), 100ms);
    EXPECT_EQ(b.failures(), 1);
}

TEST(RestartBackoff, LessThanAMinuteHealthyKeepsGrowing) {
    RestartBackoff b;
    b.failed(1'000);
    b.failed(2'000);
    const int64_t healthy_since = 10'000;
    EXPECT_EQ(b.failed(healthy_since + 59'999, healthy_since), 400ms);
}

TEST(RestartBackoff, AProcessThatNeverBecameHealthyNeverStartsOver) {
    RestartBackoff b;
    b.failed(1'000);
    EXPECT_EQ(b.failed(1'000'000, 0), 200ms);
}

TEST(RestartBackoff, TheRouterWaitsAtMostASecondAndTenSecondsServingMakeItHealthy) {
    // Every app's requests wait while the router is down: a router killed again and again (a
    // few seconds up each time) must not be left down for longer and longer.
    RestartBackoff b(liege::kRouterBackoff);
    int64_t now = 0;
    std::chrono::milliseconds wait{0};
    for (int kill = 0; kill < 9; ++kill) {
        const int64_t started = now + wait.count();
        now = started + 5'000;
        wait = b.failed(now, started);
        EXPECT_LE(wait, 1000ms) << "kill " << kill;
    }
    EXPECT_EQ(wait, 1000ms);
    EXPECT_EQ(b.failed(now + 1'000 + 10'000, now + 1'000), 100ms) << "10 s up: healthy again";
}

} // namespace
