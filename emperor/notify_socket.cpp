#include "liege/notify_socket.hpp"

#include <array>
#include <cerrno>
#include <cstring>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

namespace liege {

bool notify_says_ready(std::string_view datagram) {
    while (!datagram.empty()) {
        const std::size_t eol = datagram.find('\n');
        std::string_view line = datagram.substr(0, eol);
        if (!line.empty() && line.back() == '\r') {
            line.remove_suffix(1);
        }
        if (line == "READY=1") {
            return true;
        }
        if (eol == std::string_view::npos) {
            break;
        }
        datagram.remove_prefix(eol + 1);
    }
    return false;
}

int NotifySocket::open(uv_loop_t* loop, const std::string& path, std::function<void()> on_ready) {
    close();
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof(sa.sun_path)) {
        return -ENAMETOOLONG;
    }
    std::memcpy(sa.sun_path, path.data(), path.size());
    const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -errno;
    }
    ::unlink(path.c_str());
    if (::bind(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) != 0 ||
        ::chmod(path.c_str(), 0600) != 0) {
        const int err = -errno;
        ::close(fd);
        ::unlink(path.c_str());
        return err;
    }
    const int err = uv_poll_init(loop, poll_.get(), fd);
    if (err != 0) {
        poll_ = UvHandle<uv_poll_t>{};
        ::close(fd);
        ::unlink(path.c_str());
        return err;
    }
    fd_ = fd;
    path_ = path;
    on_ready_ = std::move(on_ready);
    poll_->data = this;
    uv_poll_start(poll_.get(), UV_READABLE, [](uv_poll_t* h, int status, int) {
        if (h->data != nullptr && status == 0) {
            static_cast<NotifySocket*>(h->data)->readable();
        }
    });
    return 0;
}

void NotifySocket::close() {
    if (fd_ < 0) {
        return;
    }
    poll_ = UvHandle<uv_poll_t>{}; // uv_close stops polling the fd before it is closed below
    ::close(fd_);
    fd_ = -1;
    ::unlink(path_.c_str());
    path_.clear();
    on_ready_ = nullptr;
}

void NotifySocket::readable() {
    // sd_notify's datagrams are small (systemd reads at most a page of one); a longer one is
    // truncated, which can only cut off assignments after the first page.
    std::array<char, 4096> buf{};
    while (fd_ >= 0) {
        const ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
        if (n < 0) {
            return; // EAGAIN: read dry (any other error: the next readable event tells again)
        }
        if (notify_says_ready(std::string_view(buf.data(), static_cast<std::size_t>(n))) &&
            on_ready_) {
            // It may close() this socket or destroy its owner: touch nothing after it. Any
            // datagram left keeps the fd readable, so the next poll reads on.
            auto on_ready = on_ready_;
            on_ready();
            return;
        }
    }
}

} // namespace liege
