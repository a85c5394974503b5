// The vassal directory watcher against a real directory: the first report, add, change and
// remove reported once each and within a second, saves through temporary files, ignored names,
// rescans, a directory that appears, or goes and comes back, and which scans read a file.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "liege/vassal.hpp"
#include "liege/watcher.hpp"
#include "loop_fixture.hpp"

namespace fs = std::filesystem;
using namespace liege::test;

namespace {

class Watch : public LoopTest {
protected:
    void SetUp() override {
        LoopTest::SetUp();
        root_ = make_temp_dir("liege-emperor-test");
        dir_ = root_ / "vassals.d";
        fs::create_directory(dir_);
    }
    void TearDown() override {
        LoopTest::TearDown();
        fs::remove_all(root_);
    }
    void release() override { watcher_.reset(); }

    void start(const fs::path& dir, Millis rescan_every = std::chrono::hours(1)) {
        starting_ = true;
        watcher_ = liege::watch_directory(
            loop(), dir,
            [this](const std::vector<liege::DirChange>& changes) {
                EXPECT_FALSE(starting_) << "reported from inside watch_directory()";
                reports_.push_back(changes);
            },
            150ms, rescan_every);
        starting_ = false;
        EXPECT_TRUE(reports_.empty());
    }

    // Waits for report number `n` (1-based), within a second as the emperor promises.
    bool wait_reports(std::size_t n, Millis timeout = 1s) {
        return run_until([&] { return reports_.size() >= n; }, timeout);
    }

    const liege::DirChange& only_change(std::size_t report) {
        EXPECT_EQ(reports_.at(report).size(), 1u);
        return reports_.at(report).at(0);
    }

    // Shows that nothing was reported after the `seen` reports so far: adds the vassal file
    // marker.toml and expects report number seen + 1 to be its addition alone. Reports follow
    // the order of the changes, so a report that should not have come would have come before the
    // marker's, or been merged into it: a positive event bounds the wait, not a fixed time.
    void expect_no_report_before_a_marker(std::size_t seen) {
        EXPECT_EQ(reports_.size(), seen);
        write_file(dir_ / "marker.toml", "marker = 1\n");
        ASSERT_TRUE(wait_reports(seen + 1)) << "the marker was not reported";
        ASSERT_EQ(reports_.size(), seen + 1);
        ASSERT_EQ(reports_[seen].size(), 1u) << "more changes reported than the marker";
        EXPECT_EQ(reports_[seen][0].name, "marker") << "a report came before the marker's";
        EXPECT_EQ(reports_[seen][0].kind, liege::DirChange::Kind::Added);
    }

    fs::path root_;
    fs::path dir_;
    std::unique_ptr<liege::DirWatcher> watcher_;
    std::vector<std::vector<liege::DirChange>> reports_;
    bool starting_ = false;
};

TEST_F(Watch, FirstReportListsExistingFilesAsAdded) {
    write_file(dir_ / "a.toml", "command = [\"a\"]\n");
    write_file(dir_ / "b.toml", "command = [\"b\"]\n");
    for (const char* ignored : {".x.toml", "_x.toml", "x.toml~", "x.toml.swp", "notes.txt"}) {
        write_file(dir_ / ignored, "ignored\n");
    }
    fs::create_directory(dir_ / "sub.toml");
    start(dir_);
    ASSERT_TRUE(wait_reports(1));
    ASSERT_EQ(reports_[0].size(), 2u);
    EXPECT_EQ(reports_[0][0].kind, liege::DirChange::Kind::Added);
    EXPECT_EQ(reports_[0][0].name, "a");
    EXPECT_EQ(reports_[0][0].file, dir_ / "a.toml");
    EXPECT_EQ(reports_[0][0].content_hash, liege::content_hash("command = [\"a\"]\n"));
    EXPECT_EQ(reports_[0][1].name, "b");
    expect_no_report_before_a_marker(1);
}

TEST_F(Watch, AnEmptyDirectoryIsReportedOnceAsEmpty) {
    start(dir_);
    ASSERT_TRUE(wait_reports(1));
    EXPECT_TRUE(reports_[0].empty());
}

TEST_F(Watch, ReportsAddChangeAndRemoveOnceEachWithinASecond) {
    start(dir_); // no periodic rescan within the test: inotify alone
    ASSERT_TRUE(wait_reports(1));

    // Once each: the report after each one is the next change's (a second report of a change
    // would come before it), and after the last one the marker's.
    write_file(dir_ / "app.toml", "workers = 1\n");
    ASSERT_TRUE(wait_reports(2));
    EXPECT_EQ(only_change(1).kind, liege::DirChange::Kind::Added);
    EXPECT_EQ(only_change(1).name, "app");

    write_file(dir_ / "app.toml", "workers = 2\n");
    ASSERT_TRUE(wait_reports(3));
    EXPECT_EQ(only_change(2).kind, liege::DirChange::Kind::Changed);
    EXPECT_EQ(only_change(2).content_hash, liege::content_hash("workers = 2\n"));

    fs::remove(dir_ / "app.toml");
    ASSERT_TRUE(wait_reports(4));
    EXPECT_EQ(only_change(3).kind, liege::DirChange::Kind::Removed);
    EXPECT_EQ(only_change(3).content_hash, 0u);
    expect_no_report_before_a_marker(4);
}

TEST_F(Watch, RewritingIdenticalContentIsNotAChange) {
    write_file(dir_ / "app.toml", "workers = 1\n");
    start(dir_);
    ASSERT_TRUE(wait_reports(1));
    write_file(dir_ / "app.toml", "workers = 1\n");
    fs::last_write_time(dir_ / "app.toml", fs::file_time_type::clock::now() + 1h);
    expect_no_report_before_a_marker(1);
    watcher_->rescan();
    EXPECT_EQ(reports_.size(), 2u) << "a rescan finds no change either";
}

TEST_F(Watch, ASaveThroughATempFileAndRenameIsOneChange) {
    write_file(dir_ / "app.toml", "workers = 1\n");
    start(dir_);
    ASSERT_TRUE(wait_reports(1));
    // What editors and deploy tools do: backup, swap file, temp file, rename over the original.
    write_file(dir_ / "app.toml~", "workers = 1\n");
    write_file(dir_ / ".app.toml.swp", "swap");
    write_file(dir_ / ".app.toml.tmp", "workers = 3\n");
    fs::rename(dir_ / ".app.toml.tmp", dir_ / "app.toml");
    fs::remove(dir_ / ".app.toml.swp");
    ASSERT_TRUE(wait_reports(2));
    EXPECT_EQ(only_change(1).kind, liege::DirChange::Kind::Changed);
    EXPECT_EQ(only_change(1).content_hash, liege::content_hash("workers = 3\n"));
    expect_no_report_before_a_marker(2);
}

TEST_F(Watch, IgnoredNamesAreNeverReported) {
    start(dir_, 100ms); // rescans too, to be sure they would have been seen
    ASSERT_TRUE(wait_reports(1));
    for (const char* ignored : {".x.toml", "_x.toml", "x.toml~", "x.toml.swp"}) {
        write_file(dir_ / ignored, "command = [\"x\"]\n");
    }
    expect_no_report_before_a_marker(1);
    watcher_->rescan();
    EXPECT_EQ(reports_.size(), 2u) << "nor does an explicit rescan report them";
}

TEST_F(Watch, RescanReportsAtOnce) {
    start(dir_);
    ASSERT_TRUE(wait_reports(1));
    write_file(dir_ / "now.toml", "x = 1\n");
    watcher_->rescan(); // SIGHUP: no debounce
    ASSERT_EQ(reports_.size(), 2u);
    EXPECT_EQ(only_change(1).kind, liege::DirChange::Kind::Added);
    expect_no_report_before_a_marker(2); // the inotify event that follows finds nothing new
}

TEST_F(Watch, ADirectoryThatAppearsLaterIsWatched) {
    fs::path later = root_ / "later.d";
    start(later);
    ASSERT_TRUE(wait_reports(1));
    EXPECT_TRUE(reports_[0].empty());
    fs::create_directory(later);
    write_file(later / "app.toml", "a = 1\n");
    ASSERT_TRUE(wait_reports(2));
    // The directory and its file may show up in one scan or the file in a second one.
    run_until([&] { return !reports_.back().empty(); }, 1s);
    EXPECT_EQ(reports_.back().size(), 1u);
    EXPECT_EQ(reports_.back().at(0).kind, liege::DirChange::Kind::Added);
}

TEST_F(Watch, ARemovedAndRecreatedDirectoryIsWatchedAgain) {
    write_file(dir_ / "app.toml", "a = 1\n");
    start(dir_);
    ASSERT_TRUE(wait_reports(1));
    fs::remove_all(dir_);
    ASSERT_TRUE(wait_reports(2));
    EXPECT_EQ(only_change(1).kind, liege::DirChange::Kind::Removed);

    fs::create_directory(dir_);
    write_file(dir_ / "app.toml", "a = 2\n");
    ASSERT_TRUE(run_until([&] { return reports_.size() >= 3 && !reports_.back().empty(); }, 1s));
    EXPECT_EQ(reports_.back().at(0).kind, liege::DirChange::Kind::Added);
    std::size_t seen = reports_.size();

    write_file(dir_ / "app.toml", "a = 3\n"); // the new directory's inode is watched
    ASSERT_TRUE(wait_reports(seen + 1));
    EXPECT_EQ(only_change(seen).kind, liege::DirChange::Kind::Changed);
}

// The periodic rescan reads only what stat() says may have changed. Files here are symlinks to
// files outside the directory, so editing them raises no inotify event in it and only the
// rescan can see an edit: one that keeps size and mtime goes unread (a rescan that read and
// hashed every file would report it), one that changes either is read.
TEST_F(Watch, APeriodicRescanReadsOnlyFilesWhoseSizeOrMtimeChanged) {
    const fs::path real = root_ / "real";
    fs::create_directory(real);
    write_file(real / "app.toml", "workers = 1\n");
    write_file(real / "other.toml", "workers = 1\n");
    fs::create_symlink(real / "app.toml", dir_ / "app.toml");
    fs::create_symlink(real / "other.toml", dir_ / "other.toml");
    start(dir_, 100ms);
    ASSERT_TRUE(wait_reports(1));
    ASSERT_EQ(reports_[0].size(), 2u);

    // Same size, the mtime put back, the same inode (written in place): unread.
    const auto mtime = fs::last_write_time(real / "app.toml");
    write_file(real / "app.toml", "workers = 2\n");
    fs::last_write_time(real / "app.toml", mtime);
    // Another size: read. Its report is the next one, and holds only this file.
    write_file(real / "other.toml", "workers = 10\n");
    ASSERT_TRUE(wait_reports(2, 5s));
    ASSERT_EQ(reports_[1].size(), 1u) << "app.toml was read though its stat did not change";
    EXPECT_EQ(reports_[1][0].name, "other");
    EXPECT_EQ(reports_[1][0].content_hash, liege::content_hash("workers = 10\n"));

    // Another mtime alone: read, and its new bytes reported.
    fs::last_write_time(real / "app.toml", mtime + 1h);
    ASSERT_TRUE(wait_reports(3, 5s));
    ASSERT_EQ(reports_[2].size(), 1u);
    EXPECT_EQ(reports_[2][0].name, "app");
    EXPECT_EQ(reports_[2][0].kind, liege::DirChange::Kind::Changed);
    EXPECT_EQ(reports_[2][0].content_hash, liege::content_hash("workers = 2\n"));
}

// An inotify event for a file has it read, whatever stat() says: a same-size write within one
// mtime tick is still seen.
TEST_F(Watch, AnEventForAFileHasItReadWhateverItsStat) {
    write_file(dir_ / "app.toml", "workers = 1\n");
    start(dir_); // no periodic rescan within the test: inotify alone
    ASSERT_TRUE(wait_reports(1));
    const auto mtime = fs::last_write_time(dir_ / "app.toml");
    write_file(dir_ / "app.toml", "workers = 2\n");
    fs::last_write_time(dir_ / "app.toml", mtime);
    ASSERT_TRUE(wait_reports(2));
    EXPECT_EQ(only_change(1).kind, liege::DirChange::Kind::Changed);
    EXPECT_EQ(only_change(1).content_hash, liege::content_hash("workers = 2\n"));
    expect_no_report_before_a_marker(2);
}

// SIGHUP reads every file, for what neither an event nor stat() can show.
TEST_F(Watch, AnExplicitRescanReadsEveryFile) {
    const fs::path real = root_ / "real";
    fs::create_directory(real);
    write_file(real / "app.toml", "workers = 1\n");
    fs::create_symlink(real / "app.toml", dir_ / "app.toml");
    start(dir_);
    ASSERT_TRUE(wait_reports(1));
    const auto mtime = fs::last_write_time(real / "app.toml");
    write_file(real / "app.toml", "workers = 2\n");
    fs::last_write_time(real / "app.toml", mtime);
    watcher_->rescan();
    ASSERT_EQ(reports_.size(), 2u);
    EXPECT_EQ(only_change(1).content_hash, liege::content_hash("workers = 2\n"));
}

TEST_F(Watch, TheCallbackMayDestroyTheWatcher) {
    write_file(dir_ / "app.toml", "a = 1\n");
    bool called = false;
    watcher_ = liege::watch_directory(loop(), dir_, [&](const std::vector<liege::DirChange>&) {
        called = true;
        watcher_.reset();
    });
    EXPECT_TRUE(run_until([&] { return called; }));
    EXPECT_EQ(watcher_, nullptr);
}

} // namespace
