// The router's refusal warnings: the first of a quiet period at once, then one summary line per
// vassal per second, with the clock passed in.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "../../router/refusal_log.hpp"

using namespace liege::router;

namespace {

std::string line(int i) {
    return "503 Service Unavailable for 127.0.0.1:4000 \"GET /" + std::to_string(i) +
           " HTTP/1.1\": vassal shop: queue full (100 waiting)";
}

} // namespace

TEST(RefusalLog, TheFirstRefusalIsLoggedAtOnceAndTheRestOfTheSecondIsSummarised) {
    RefusalLog log;
    EXPECT_EQ(log.refused("shop", "queue full", line(0), 10'000), line(0));
    for (int i = 1; i <= 30; ++i) {
        EXPECT_EQ(log.refused("shop", "queue full", line(i), 10'000 + i * 10), std::nullopt) << i;
    }
    for (int i = 31; i <= 37; ++i) {
        EXPECT_EQ(
            log.refused("shop", "queue timeout", "timed out " + std::to_string(i), 10'000 + i * 10),
            std::nullopt);
    }
    EXPECT_TRUE(log.due(10'999).empty()) << "the second is not over";
    EXPECT_EQ(log.due(11'000),
              std::vector<std::string>{"vassal shop: 37 more requests refused in the last second "
                                       "(queue full: 30, queue timeout: 7); last: timed out 37"});
    EXPECT_TRUE(log.due(11'200).empty()) << "each second is reported once";
}

TEST(RefusalLog, AQuietSecondMakesTheNextRefusalImmediateAgain) {
    RefusalLog log;
    EXPECT_EQ(log.refused("shop", "vassal failed", "a", 0), "a");
    EXPECT_TRUE(log.due(1'000).empty()) << "nothing was held back";
    EXPECT_EQ(log.refused("shop", "vassal failed", "b", 1'500), "b");
    // Without a look in between, the refusal after a quiet second is still immediate.
    EXPECT_EQ(log.refused("shop", "vassal failed", "c", 9'000), "c");
    EXPECT_EQ(log.refused("shop", "vassal failed", "d", 9'100), std::nullopt);
    auto summaries = log.due(10'100);
    ASSERT_EQ(summaries.size(), 1u);
    EXPECT_EQ(summaries[0], "vassal shop: 1 more request refused in the last second (vassal "
                            "failed: 1); last: d");
    EXPECT_TRUE(log.due(11'100).empty());
    EXPECT_EQ(log.refused("shop", "vassal failed", "e", 11'200), "e");
}

TEST(RefusalLog, ASteadyFloodGetsOneLinePerSecond) {
    RefusalLog log;
    int logged = 0;
    uint64_t summarised = 0;
    auto count = [&](const std::string& s) {
        ++logged;
        if (auto at = s.find(" more request"); at != std::string::npos) {
            summarised += std::stoull(s.substr(s.rfind(' ', at - 1) + 1));
        }
    };
    // 100 refusals a second for ten seconds; the caller looks every 200 ms.
    for (int64_t t = 0; t < 10'000; t += 10) {
        if (auto now = log.refused("shop", "queue full", "x", t)) {
            count(*now);
        }
        if (t % 200 == 0) {
            for (const auto& s : log.due(t)) {
                count(s);
            }
        }
    }
    for (const auto& s : log.due(20'000)) {
        count(s);
    }
    EXPECT_LE(logged, 12);
    EXPECT_EQ(summarised + 1, 1000u) << "every refusal is in a line: the first, then the counts";
}

TEST(RefusalLog, EachVassalHasItsOwnSecond) {
    RefusalLog log;
    EXPECT_EQ(log.refused("shop", "queue full", "s1", 0), "s1");
    EXPECT_EQ(log.refused("blog", "queue full", "b1", 100), "b1");
    EXPECT_EQ(log.refused("shop", "queue full", "s2", 200), std::nullopt);
    EXPECT_EQ(log.refused("", "no backend", "r1", 300), "r1");
    EXPECT_EQ(log.refused("", "no backend", "r2", 400), std::nullopt);
    auto summaries = log.due(1'000);
    ASSERT_EQ(summaries.size(), 1u) << "blog's second and the router's are not over yet";
    EXPECT_EQ(summaries[0],
              "vassal shop: 1 more request refused in the last second (queue full: 1); last: s2");
    summaries = log.due(1'300);
    ASSERT_EQ(summaries.size(), 1u);
    EXPECT_EQ(summaries[0],
              "router: 1 more request refused in the last second (no backend: 1); last: r2");
}

TEST(RefusalLog, ALateLookSaysHowLongItsSummaryCovers) {
    RefusalLog log;
    log.refused("shop", "queue full", "a", 0);
    log.refused("shop", "queue full", "b", 10);
    // The next refusal comes three seconds later: it reports the held-back one first.
    EXPECT_EQ(log.refused("shop", "queue full", "c", 3'000),
              "vassal shop: 1 more request refused in the last 3 s (queue full: 1); last: b");
    EXPECT_EQ(
        log.due(4'000),
        std::vector<std::string>{
            "vassal shop: 1 more request refused in the last second (queue full: 1); last: c"});
}

TEST(RefusalLog, WhenTheRouterStopsEveryCountIsTold) {
    RefusalLog log;
    log.refused("shop", "queue full", "a", 0);
    log.refused("shop", "queue full", "b", 100);
    log.refused("blog", "queue full", "c", 200);
    EXPECT_TRUE(log.due(300).empty());
    EXPECT_EQ(
        log.due(300, true),
        std::vector<std::string>{
            "vassal shop: 1 more request refused in the last second (queue full: 1); last: b"});
}
