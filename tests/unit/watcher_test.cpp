// The vassal directory watcher's pure logic: the diff of two snapshots (what was added, changed,
// removed), and what it says of entries it skips.
#include <gtest/gtest.h>

#include <cerrno>
#include <filesystem>
#include <vector>

#include <sys/stat.h>

#include "liege/watcher.hpp"

using liege::DirChange;
using liege::DirSnapshot;

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

TEST(SkippedFiles, EachIsNewsOncePerReason) {
    liege::SkippedFiles first{{"loop.toml", "a symlink that loops"}, {"x.toml", "a directory"}};
    using News = std::vector<std::pair<std::string, std::string>>;
    EXPECT_EQ(liege::newly_skipped({}, first), News(first.begin(), first.end()));
    EXPECT_TRUE(liege::newly_skipped(first, first).empty()) << "skipped again: no news";

    // Another reason is news; so is a file skipped again after a scan that did not skip it
    // (valid, or gone, in between).
    liege::SkippedFiles second{{"x.toml", "a dangling symlink to y"}};
    EXPECT_EQ(liege::newly_skipped(first, second), (News{{"x.toml", "a dangling symlink to y"}}));
    EXPECT_EQ(liege::newly_skipped(second, first),
              (News{{"loop.toml", "a symlink that loops"}, {"x.toml", "a directory"}}));
    EXPECT_TRUE(liege::newly_skipped(first, {}).empty());
}

TEST(SkippedFiles, ReasonNamesWhatTheEntryIs) {
    EXPECT_EQ(liege::skip_reason(0, S_IFREG | 0644, false), "");
    EXPECT_EQ(liege::skip_reason(0, S_IFREG | 0644, true), "") << "a symlink to a file is fine";
    EXPECT_EQ(liege::skip_reason(0, S_IFDIR | 0755, false), "a directory, not a file");
    EXPECT_EQ(liege::skip_reason(0, S_IFDIR | 0755, true), "a symlink to a directory, not a file");
    EXPECT_EQ(liege::skip_reason(0, S_IFIFO | 0600, false), "a FIFO, not a file");
    EXPECT_EQ(liege::skip_reason(0, S_IFSOCK | 0600, false), "a socket, not a file");
    EXPECT_EQ(liege::skip_reason(0, S_IFCHR | 0600, true), "a symlink to a device, not a file");
    EXPECT_EQ(liege::skip_reason(ELOOP, 0, true), "a symlink that loops");
    EXPECT_EQ(liege::skip_reason(ENOENT, 0, true), "a dangling symlink");
    EXPECT_EQ(liege::skip_reason(EACCES, 0, false), "cannot stat it: permission denied");
}
