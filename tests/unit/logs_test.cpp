// Worker log lines and reopening log files (logrotate): formatting and a temporary directory.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "liege/log.hpp"
#include "liege/logs.hpp"

namespace fs = std::filesystem;
using liege::format_worker_line;
using liege::log_timestamp;
using liege::ReopenableFile;
using liege::vassal_of_tag;

namespace {

std::string slurp(const fs::path& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

class TempDir {
public:
    TempDir() {
        std::string tmpl = (fs::temp_directory_path() / "liege-logs-XXXXXX").string();
        path_ = ::mkdtemp(tmpl.data());
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    const fs::path& path() const { return path_; }

private:
    fs::path path_;
};

} // namespace

TEST(Logs, WorkerLinesAreTimestampedAndTagged) {
    EXPECT_EQ(format_worker_line("2026-01-02T03:04:05.006", "app/1", "hello", false),
              "2026-01-02T03:04:05.006 [app/1] hello\n");
    EXPECT_EQ(format_worker_line("T", "app/2", "oops", true), "T [app/2 stderr] oops\n");
    EXPECT_EQ(format_worker_line("T", "app/2", "", false), "T [app/2] \n");
}

TEST(Logs, TimestampLooksLikeTheEmperorsOwn) {
    std::string ts = log_timestamp(std::chrono::system_clock::now());
    ASSERT_EQ(ts.size(), 23u) << ts;
    EXPECT_EQ(ts[4], '-');
    EXPECT_EQ(ts[10], 'T');
    EXPECT_EQ(ts[19], '.');
    auto ms = std::chrono::system_clock::time_point(std::chrono::milliseconds(1'700'000'000'007));
    EXPECT_TRUE(log_timestamp(ms).ends_with(".007"));
}

TEST(Logs, VassalOfTag) {
    EXPECT_EQ(vassal_of_tag("app/1"), "app");
    EXPECT_EQ(vassal_of_tag("my.app/12"), "my.app");
    EXPECT_EQ(vassal_of_tag("router"), "router");
}

TEST(Logs, ReopenAfterRenameWritesToANewFileAndLosesNothing) {
    TempDir dir;
    int err = 0;
    auto f = ReopenableFile::open(dir.path() / "app.log", &err);
    ASSERT_NE(f, nullptr) << err;
    EXPECT_EQ(f->write("one\n"), 0);
    fs::rename(dir.path() / "app.log", dir.path() / "app.log.1");
    EXPECT_EQ(f->write("two\n"), 0); // still the renamed file, as with logrotate
    EXPECT_EQ(f->reopen(), 0);
    EXPECT_EQ(f->write("three\n"), 0);
    EXPECT_EQ(slurp(dir.path() / "app.log.1"), "one\ntwo\n");
    EXPECT_EQ(slurp(dir.path() / "app.log"), "three\n");
}

TEST(Logs, AFailedReopenKeepsTheOldFile) {
    TempDir dir;
    fs::create_directories(dir.path() / "sub");
    int err = 0;
    auto f = ReopenableFile::open(dir.path() / "sub" / "x.log", &err);
    ASSERT_NE(f, nullptr);
    fs::rename(dir.path() / "sub", dir.path() / "gone");
    EXPECT_LT(f->reopen(), 0) << "the directory is gone";
    EXPECT_EQ(f->write("kept\n"), 0);
    EXPECT_EQ(slurp(dir.path() / "gone" / "x.log"), "kept\n");
}

TEST(Logs, OpenFailsWithAnErrno) {
    int err = 0;
    EXPECT_EQ(ReopenableFile::open("/nonexistent-dir/x.log", &err), nullptr);
    EXPECT_EQ(err, -ENOENT);
}

TEST(ChildLogLine, IsTakenApartIntoItsLevelAndMessage) {
    auto l = liege::parse_child_log_line(
        "2026-12-01T08:26:36.302 error router: cannot open access log /x: Is a directory");
    EXPECT_EQ(l.level, spdlog::level::err);
    EXPECT_EQ(l.message, "router: cannot open access log /x: Is a directory");
    l = liege::parse_child_log_line("2026-12-01T08:26:36.302 warning accept: Too many open files");
    EXPECT_EQ(l.level, spdlog::level::warn);
    EXPECT_EQ(l.message, "accept: Too many open files");
    l = liege::parse_child_log_line("2026-12-01T08:26:36.302 info listening on 127.0.0.1:80");
    EXPECT_EQ(l.level, spdlog::level::info);
    EXPECT_EQ(l.message, "listening on 127.0.0.1:80");
}

TEST(ChildLogLine, AnythingElseIsInfoWithItsWholeText) {
    for (std::string_view line :
         {"==123==ERROR: AddressSanitizer: heap-use-after-free", "", "2026-12-01T08:26:36.302",
          "2026-12-01T08:26:36.302 loud message", "2026-12-01T08:26:36.302 off x",
          "127.0.0.1 - - [01/Dec/2026:08:26:36 +0000] \"GET / HTTP/1.1\" 200 2 \"-\" \"-\"",
          "2026-12-01 error not our timestamp"}) {
        auto l = liege::parse_child_log_line(line);
        EXPECT_EQ(l.level, spdlog::level::info) << line;
        EXPECT_EQ(l.message, line);
    }
}
