#include <gtest/gtest.h>

#include <stdexcept>

#include "liege/duration.hpp"

using namespace std::chrono_literals;
using liege::parse_duration;
using liege::parse_size;

TEST(Duration, ParsesUnits) {
    EXPECT_EQ(parse_duration("250ms"), 250ms);
    EXPECT_EQ(parse_duration("2s"), 2000ms);
    EXPECT_EQ(parse_duration("1.5s"), 1500ms);
    EXPECT_EQ(parse_duration("5m"), 300'000ms);
    EXPECT_EQ(parse_duration("1h"), 3'600'000ms);
    EXPECT_EQ(parse_duration("1m30s"), 90'000ms);
}

TEST(Duration, RejectsMissingOrUnknownUnit) {
    for (const char* bad : {"", "10", "s", "10 s", "10sec", "-1s", "1d"}) {
        EXPECT_THROW(parse_duration(bad), std::invalid_argument) << bad;
    }
}

TEST(Duration, FormatsRoundTrip) {
    EXPECT_EQ(liege::format_duration(30'000ms), "30s");
    EXPECT_EQ(liege::format_duration(100ms), "100ms");
    EXPECT_EQ(liege::format_duration(120'000ms), "2m");
}

TEST(Size, ParsesSuffixes) {
    EXPECT_EQ(parse_size("512"), 512u);
    EXPECT_EQ(parse_size("64k"), 64u * 1024);
    EXPECT_EQ(parse_size("10M"), 10u * 1024 * 1024);
    EXPECT_EQ(parse_size("1G"), 1024ull * 1024 * 1024);
    EXPECT_THROW(parse_size("ten"), std::invalid_argument);
    EXPECT_THROW(parse_size("10X"), std::invalid_argument);
}
