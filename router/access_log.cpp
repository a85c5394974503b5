#include "access_log.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>

#include "liege/balancer.hpp"
#include "liege/log.hpp"

namespace liege::router {

namespace {
constexpr size_t kFlushAt = 16 * 1024;
}

void AccessLog::flush() {
    size_t off = 0;
    while (off < buf_.size()) {
        ssize_t n = ::write(fd_, buf_.data() + off, buf_.size() - off);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            break; // a full disk or closed stderr must not stop the proxy
        }
        off += static_cast<size_t>(n);
    }
    buf_.clear();
}

std::string_view AccessLog::timestamp() {
    time_t now = ::time(nullptr);
    if (now != stamp_second_) {
        stamp_second_ = now;
        tm t{};
        gmtime_r(&now, &t);
        stamp_len_ = strftime(stamp_, sizeof(stamp_), "[%d/%b/%Y:%H:%M:%S +0000]", &t);
    }
    return {stamp_, stamp_len_};
}

void AccessLog::append(const Entry& e) {
    std::string& b = buf_;
    char num[96];
    b.append(e.peer).append(" - - ").append(timestamp()).append(" \"");
    b.append(e.request_line.empty() ? std::string_view("-") : e.request_line);
    int n = std::snprintf(num, sizeof(num), "\" %d %llu", e.status,
                          static_cast<unsigned long long>(e.bytes));
    b.append(num, static_cast<size_t>(n));
    b.append(e.agent.empty() ? std::string_view(" \"-\" \"-\"") : e.agent);
    if (!e.vassal.empty()) {
        b.append(" vassal=").append(e.vassal);
        n = std::snprintf(num, sizeof(num), " gen=%llu",
                          static_cast<unsigned long long>(e.generation));
        b.append(num, static_cast<size_t>(n));
    }
    n = std::snprintf(num, sizeof(num), " rt=%.3f urt=%.3f qt=%.3f backend=", e.seconds,
                      e.upstream_seconds, e.queue_seconds);
    b.append(num, static_cast<size_t>(n));
    b.append(e.backend.empty() ? std::string_view("-") : e.backend);
    b.push_back('\n');
    if (b.size() >= kFlushAt) {
        flush();
    }
}

int AccessLogFiles::vassal_fd(const std::string& vassal) {
    std::lock_guard lock(mu_);
    auto it = vassal_fds_.find(vassal);
    if (it != vassal_fds_.end()) {
        return it->second;
    }
    const int64_t now = steady_now_ms();
    auto failed = vassal_retry_.find(vassal);
    if (failed != vassal_retry_.end() && now < failed->second) {
        return -1;
    }
    std::string path = dir + "/" + vassal + ".access.log";
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        spdlog::error("router: cannot open access log {}: {}; trying again in {} ms", path,
                      std::strerror(errno), kRetryMs);
        vassal_retry_[vassal] = now + kRetryMs;
        return -1;
    }
    if (failed != vassal_retry_.end()) {
        spdlog::info("router: access log {} open", path);
        vassal_retry_.erase(failed);
    }
    vassal_fds_[vassal] = fd;
    return fd;
}

void AccessLogFiles::reopen() {
    std::lock_guard lock(mu_);
    auto reopen_one = [](int fd, const std::string& path) {
        int fresh = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fresh < 0) {
            spdlog::error("router: cannot reopen {}: {}", path, std::strerror(errno));
            return;
        }
        ::dup3(fresh, fd, O_CLOEXEC);
        ::close(fresh);
    };
    if (main_fd >= 0 && !main_path.empty()) {
        reopen_one(main_fd, main_path);
    }
    for (auto& [vassal, fd] : vassal_fds_) {
        if (fd >= 0) {
            reopen_one(fd, dir + "/" + vassal + ".access.log");
        }
    }
}

} // namespace liege::router
