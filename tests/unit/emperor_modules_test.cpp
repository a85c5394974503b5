// Pure logic of the emperor's spawner, watcher and health probe: no processes, no sockets.
#include <gtest/gtest.h>

#include <csignal>
#include <string>
#include <vector>

#include "liege/health.hpp"
#include "liege/spawner.hpp"
#include "liege/watcher.hpp"

using liege::DirChange;
using liege::DirSnapshot;
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

TEST(DirDiff, ReportsAddedChangedAndRemovedSortedByName) {
    DirSnapshot before{{"a.toml", 1}, {"b.toml", 2}, {"c.toml", 3}};
    DirSnapshot after{{"b.toml", 2}, {"c.toml", 30}, {"d.toml", 4}};
    std::vector<DirChange> changes = liege::diff_snapshots("vassals.d", before, after);
    ASSERT_EQ(changes.size(), 3u);
    EXPECT_EQ(changes[0].kind, DirChange::Kind::Removed);
    EXPECT_EQ(changes[0].name, "a");
    EXPECT_EQ(changes[0].file, std::filesystem::path("vassals.d/a.toml"));
    EXPECT_EQ(changes[0].content_hash, 0u);
    EXPECT_EQ(changes[1].kind, DirChange::Kind::Changed);
    EXPECT_EQ(changes[1].name, "c");
    EXPECT_EQ(changes[1].content_hash, 30u);
    EXPECT_EQ(changes[2].kind, DirChange::Kind::Added);
    EXPECT_EQ(changes[2].name, "d");
    EXPECT_EQ(changes[2].content_hash, 4u);
}

TEST(DirDiff, EqualHashesAreNoChange) {
    DirSnapshot same{{"a.toml", 7}};
    EXPECT_TRUE(liege::diff_snapshots("d", same, same).empty());
    EXPECT_TRUE(liege::diff_snapshots("d", {}, {}).empty());
}

TEST(DirDiff, EverythingIsAddedFromNothing) {
    std::vector<DirChange> changes =
        liege::diff_snapshots("d", {}, DirSnapshot{{"x.toml", 1}, {"y.toml", 2}});
    ASSERT_EQ(changes.size(), 2u);
    EXPECT_EQ(changes[0].kind, DirChange::Kind::Added);
    EXPECT_EQ(changes[1].kind, DirChange::Kind::Added);
    EXPECT_EQ(changes[1].name, "y");
}

TEST(HttpStatusLine, ParsesTheStatus) {
    EXPECT_EQ(liege::parse_http_status_line("HTTP/1.1 200 OK\r\n"), 200);
    EXPECT_EQ(liege::parse_http_status_line("HTTP/1.0 503 Service Unavailable\r\nX: y\r\n"), 503);
    EXPECT_EQ(liege::parse_http_status_line("HTTP/1.1 204\r\n"), 204);
    EXPECT_EQ(liege::parse_http_status_line("HTTP/1.1 302 Found\n"), 302);
}

TEST(HttpStatusLine, AsksForMoreUntilTheLineIsComplete) {
    EXPECT_EQ(liege::parse_http_status_line(""), 0);
    EXPECT_EQ(liege::parse_http_status_line("HTT"), 0);
    EXPECT_EQ(liege::parse_http_status_line("HTTP/1.1 200 O"), 0);
}

TEST(HttpStatusLine, RejectsWhatIsNotHttp1) {
    EXPECT_EQ(liege::parse_http_status_line("SSH-2.0-OpenSSH\r\n"), -1);
    EXPECT_EQ(liege::parse_http_status_line("HTTP/2 200\r\n"), -1);
    EXPECT_EQ(liege::parse_http_status_line("HTTP/1.1 20 OK\r\n"), -1);
    EXPECT_EQ(liege::parse_http_status_line("HTTP/1.1 2000 OK\r\n"), -1);
    EXPECT_EQ(liege::parse_http_status_line("HTTP/1.1 099 Low\r\n"), -1);
    EXPECT_EQ(liege::parse_http_status_line("HTTP/1.1 " + std::string(2000, '1')), -1);
}
