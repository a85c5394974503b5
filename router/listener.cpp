#include "listener.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "liege/balancer.hpp"
#include "liege/log.hpp"

namespace liege::router {

Listener::Listener(uv_loop_t* loop, int fd, bool owns_fd, bool is_unix, bool tls,
                   AcceptFn on_accept, ExhaustedFn on_exhausted)
    : fd_(fd), owns_fd_(owns_fd), is_unix_(is_unix), tls_(tls), on_accept_(std::move(on_accept)),
      on_exhausted_(std::move(on_exhausted)) {
    uv_poll_init_socket(loop, poll_.get(), fd);
    poll_->data = this;
}

Listener::~Listener() {
    close();
}

void Listener::start() {
    if (!polling_ && fd_ >= 0) {
        polling_ = uv_poll_start(poll_.get(), UV_READABLE, on_readable) == 0;
    }
}

void Listener::stop() {
    if (polling_) {
        uv_poll_stop(poll_.get());
        polling_ = false;
    }
}

void Listener::close() {
    stop();
    poll_.reset(); // uv_poll_stop has already taken the fd out of epoll: closing it is safe
    if (owns_fd_ && fd_ >= 0) {
        ::close(fd_);
    }
    fd_ = -1;
}

void Listener::on_readable(uv_poll_t* handle, int status, int) {
    auto* l = static_cast<Listener*>(handle->data);
    if (l == nullptr || status < 0) {
        return;
    }
    for (int i = 0; i < 64 && l->polling_; ++i) {
        int fd = ::accept4(l->fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            l->on_accept_(fd, l->is_unix_, l->tls_);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED) {
            continue;
        }
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            const int err = errno;
            if (l->on_exhausted_()) {
                continue; // idle connections were closed to make room
            }
            // The kernel keeps the connection queued; try again shortly or when one closes.
            static std::atomic<int64_t> last_warn{0};
            const int64_t now = steady_now_ms();
            if (now - last_warn.load() > 5000) {
                last_warn = now;
                spdlog::warn("accept: {}; pausing accepts", std::strerror(err));
            }
        }
        return; // EAGAIN, or paused
    }
}

} // namespace liege::router
