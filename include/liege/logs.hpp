// Log files for `liege run --log-dir DIR`: DIR/emperor.log holds the emperor's own log (an spdlog
// sink) and DIR/NAME.log each vassal's workers' stdout and stderr, one timestamped line tagged
// with the worker. Without --log-dir, worker lines go to stderr through spdlog, tagged.
//
// Reopening (SIGUSR1, logrotate's `postrotate`) opens every file again by its path and swaps the
// new descriptor in under the same lock a writer holds for its whole line. Each line is one
// write(2) with O_APPEND, so it lands whole in either the renamed file or the new one: none is
// lost, split or interleaved. A file that cannot be reopened keeps the old descriptor, so lines
// still go somewhere, and the failure is logged.
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

namespace spdlog::sinks {
class sink;
} // namespace spdlog::sinks

namespace liege {

// "2026-11-25T12:58:10.409" in local time, as the emperor's own log lines start.
std::string log_timestamp(std::chrono::system_clock::time_point t);

// One worker output line as written to its vassal's file, with the trailing newline:
// "TIMESTAMP [app/1] text" for stdout and "TIMESTAMP [app/1 stderr] text" for stderr.
std::string format_worker_line(std::string_view timestamp, std::string_view tag,
                               std::string_view line, bool is_stderr);

// The vassal a worker tag ("NAME/SLOT") belongs to: the part before the last '/'.
std::string_view vassal_of_tag(std::string_view tag);

// A file opened for appending (O_APPEND | O_CLOEXEC) that can be reopened by its path. Safe to
// use from several threads.
class ReopenableFile {
public:
    // Opens (creating) `path`; nullptr and *err = negative errno when it cannot.
    static std::unique_ptr<ReopenableFile> open(const std::filesystem::path& path, int* err);
    ReopenableFile(const ReopenableFile&) = delete;
    ReopenableFile& operator=(const ReopenableFile&) = delete;
    ~ReopenableFile();

    // Appends `data` in one write (retried on a short write). Returns 0 or a negative errno.
    int write(std::string_view data);
    // Opens the path again and swaps the new descriptor in. Returns 0, or a negative errno (the
    // old descriptor is kept then).
    int reopen();
    const std::filesystem::path& path() const { return path_; }

private:
    ReopenableFile(std::filesystem::path path, int fd) : path_(std::move(path)), fd_(fd) {}

    std::filesystem::path path_;
    std::mutex mutex_;
    int fd_;
};

// The log files of one `liege run`.
class LogFiles {
public:
    // An empty `dir` means stderr only.
    explicit LogFiles(std::filesystem::path dir);
    LogFiles(const LogFiles&) = delete;
    LogFiles& operator=(const LogFiles&) = delete;
    // Takes emperor.log off the default logger again.
    ~LogFiles();

    // Creates the directory and emperor.log and adds it to spdlog's default logger (which keeps
    // writing warnings and errors to stderr too). Returns 0 or a negative errno (logged).
    int open();
    // A worker's output line; `tag` is "VASSAL/SLOT".
    void worker_line(std::string_view tag, std::string_view line, bool is_stderr);
    // Reopens every file; returns how many could not be reopened.
    int reopen();
    bool to_files() const { return !dir_.empty(); }

private:
    std::filesystem::path dir_;
    std::shared_ptr<spdlog::sinks::sink> emperor_sink_;
    std::shared_ptr<ReopenableFile> emperor_file_;
    std::map<std::string, std::unique_ptr<ReopenableFile>, std::less<>> vassal_files_;
};

// The process's log files, set by run_emperor; Emperor::log_line and reopen_logs go through
// these. Without any installed, worker lines go to spdlog (stderr).
void install_log_files(LogFiles* files);
void log_worker_line(std::string_view tag, std::string_view line, bool is_stderr);
void reopen_log_files();

} // namespace liege
