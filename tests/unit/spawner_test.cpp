// Pure logic of the emperor's spawner: splitting a child's output into lines, describing how it
// exited. No processes.
#include <gtest/gtest.h>

#include <csignal>
#include <string>
#include <vector>

#include "liege/spawner.hpp"

using liege::ExitStatus;
using liege::LineSplitter;

namespace {

std::vector<std::string> split(const std::vector<std::string>& chunks, bool flush = true) {
    LineSplitter splitter;
    std::vector<std::string> lines;
    auto emit = [&](std::string_view line) { lines.emplace_back(line); };
    for (const std::string& chunk : chunks) {
        splitter.feed(chunk, emit);
    }
    if (flush) {
        splitter.flush(emit);
    }
    return lines;
}

using Lines = std::vector<std::string>;

} // namespace

TEST(LineSplitter, SplitsOnNewlinesAndDropsCarriageReturns) {
    EXPECT_EQ(split({"one\ntwo\r\nthree\n"}), (Lines{"one", "two", "three"}));
}

TEST(LineSplitter, JoinsLinesSplitAcrossReads) {
    EXPECT_EQ(split({"he", "llo\nwor", "ld\n"}), (Lines{"hello", "world"}));
}

TEST(LineSplitter, KeepsEmptyLines) {
    EXPECT_EQ(split({"a\n\n\nb\n"}), (Lines{"a", "", "", "b"}));
}

TEST(LineSplitter, HoldsAPartialLineUntilFlush) {
    EXPECT_EQ(split({"done\nno newline"}, false), (Lines{"done"}));
    EXPECT_EQ(split({"done\nno newline"}, true), (Lines{"done", "no newline"}));
    EXPECT_EQ(split({""}), Lines{});
}

TEST(LineSplitter, CutsLongLinesAt8KiB) {
    const std::size_t max = LineSplitter::kMaxLine;
    std::string longer(max * 2 + 10, 'x');
    Lines lines = split({longer + "\nnext\n"});
    ASSERT_EQ(lines.size(), 4u);
    EXPECT_EQ(lines[0].size(), max);
    EXPECT_EQ(lines[1].size(), max);
    EXPECT_EQ(lines[2], std::string(10, 'x'));
    EXPECT_EQ(lines[3], "next");
}

TEST(LineSplitter, ALineOfExactly8KiBIsNotFollowedByAnEmptyOne) {
    const std::size_t max = LineSplitter::kMaxLine;
    EXPECT_EQ(split({std::string(max, 'y') + "\nz\n"}), (Lines{std::string(max, 'y'), "z"}));
    // The same, with the newline arriving in a later read.
    EXPECT_EQ(split({std::string(max, 'y'), "\nz\n"}), (Lines{std::string(max, 'y'), "z"}));
}

TEST(LineSplitter, CutsALongLineFedByteByByte) {
    std::vector<std::string> chunks(LineSplitter::kMaxLine + 3, "a");
    chunks.push_back("\n");
    Lines lines = split(chunks);
    ASSERT_EQ(lines.size(), 2u);
    EXPECT_EQ(lines[0].size(), LineSplitter::kMaxLine);
    EXPECT_EQ(lines[1], "aaa");
}

TEST(ExitStatus, DescribesExitCodesAndSignals) {
    EXPECT_EQ((ExitStatus{3, 0}).str(), "exit code 3");
    EXPECT_EQ((ExitStatus{0, 0}).str(), "exit code 0");
    EXPECT_EQ((ExitStatus{-1, SIGKILL}).str(), "killed by SIGKILL");
    EXPECT_EQ((ExitStatus{-1, SIGSEGV, true}).str(), "killed by SIGSEGV (core dumped)");
    EXPECT_EQ(ExitStatus{}.str(), "exit status unknown");
}

TEST(ExitStatus, DecodesWaitStatuses) {
    // Linux's encoding: exit code in bits 8..15, signal in bits 0..6, core flag 0x80.
    ExitStatus exited = ExitStatus::from_wait_status(3 << 8);
    EXPECT_FALSE(exited.signalled());
    EXPECT_EQ(exited.exit_code, 3);
    ExitStatus killed = ExitStatus::from_wait_status(SIGTERM);
    EXPECT_TRUE(killed.signalled());
    EXPECT_EQ(killed.term_signal, SIGTERM);
    EXPECT_EQ(killed.exit_code, -1);
    EXPECT_EQ(killed.str(), "killed by SIGTERM");
    ExitStatus dumped = ExitStatus::from_wait_status(SIGABRT | 0x80);
    EXPECT_TRUE(dumped.core_dumped);
    EXPECT_EQ(dumped.str(), "killed by SIGABRT (core dumped)");
}
