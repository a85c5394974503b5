// Access logs: a thread's buffered log (one per destination), the files all threads share, and
// the line format (combined log format, then total time, upstream time, time queued and
// backend).
//
// Descriptors are shared by all threads (appends of whole lines); reopening (SIGUSR1, after
// logrotate) puts a new file under the same descriptor number with dup2, so threads never see a
// closed descriptor and no line is lost.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>

namespace liege::router {

class AccessLog {
public:
    // fd < 0 disables the log.
    explicit AccessLog(int fd) : fd_(fd) {}
    bool enabled() const { return fd_ >= 0; }
    bool empty() const { return buf_.empty(); }
    void flush();

    // What one line says about one exchange.
    struct Entry {
        std::string_view peer;
        std::string_view request_line; // METHOD URL HTTP/x.y; empty when none was parsed
        int status = 0;
        uint64_t bytes = 0;
        std::string_view agent;  // ` "referer" "user-agent"`, or empty
        std::string_view vassal; // empty without a route
        uint64_t generation = 0;
        double seconds = 0;          // total
        double upstream_seconds = 0; // to the response head
        double queue_seconds = 0;    // waiting in the vassal's queue
        std::string_view backend;    // empty when none was tried
    };
    void append(const Entry& e); // buffered; flushed when large or by the thread's housekeeping

private:
    // "[25/Nov/2026:12:00:00 +0000]" for the current second, cached.
    std::string_view timestamp();

    int fd_;
    std::string buf_;
    int64_t stamp_second_ = -1;
    char stamp_[40] = {};
    size_t stamp_len_ = 0;
};

// The access-log files of the router: the main one, and DIR/VASSAL.access.log with
// --access-log-dir, opened on first use.
class AccessLogFiles {
public:
    std::string dir; // empty: no per-vassal logs
    int main_fd = -1;
    std::string main_path; // empty when the main log is stderr or off

    // The descriptor of DIR/VASSAL.access.log; -1 while it cannot be opened (out of
    // descriptors, or a bad directory). A failed open is tried again on a later request, at
    // most once per kRetryMs, so a vassal's log resumes once the cause is gone.
    int vassal_fd(const std::string& vassal);
    void reopen();
    static constexpr int64_t kRetryMs = 1000;

private:
    std::mutex mu_;
    std::map<std::string, int> vassal_fds_;       // guarded by mu_; only open ones
    std::map<std::string, int64_t> vassal_retry_; // guarded by mu_: failed, retry after
};

} // namespace liege::router
