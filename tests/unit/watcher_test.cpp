// The vassal directory watcher's diff of two snapshots: what was added, changed, removed.
#include <gtest/gtest.h>

#include <filesystem>
#include <vector>

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
