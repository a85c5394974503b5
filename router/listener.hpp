// A listening socket as one router thread sees it: the fd is polled for readability and
// accepted by hand, so that running out of descriptors pauses accepting (the kernel keeps the
// connections queued) instead of dropping connections.
#pragma once

#include <uv.h>

#include <functional>

#include "liege/uv.hpp"

namespace liege::router {

class Listener {
public:
    // on_accept(fd, is_unix, tls) for each accepted connection (tls: an HTTPS listener's);
    // on_exhausted() when the process is out of descriptors or socket memory: true when it
    // made room (closed idle connections), and accepting goes on; false when accepting is to
    // pause.
    using AcceptFn = std::function<void(int fd, bool is_unix, bool tls)>;
    using ExhaustedFn = std::function<bool()>;

    Listener(uv_loop_t* loop, int fd, bool owns_fd, bool is_unix, bool tls, AcceptFn on_accept,
             ExhaustedFn on_exhausted);
    ~Listener();
    Listener(const Listener&) = delete;
    Listener& operator=(const Listener&) = delete;

    void start(); // idempotent
    void stop();
    // Stops, closes the poll handle and (if owned) the socket: a socket nobody accepts on would
    // complete handshakes and leave new clients hanging instead of refused.
    void close();

private:
    static void on_readable(uv_poll_t* handle, int status, int events);

    UvHandle<uv_poll_t> poll_;
    int fd_;
    bool owns_fd_;
    bool is_unix_;
    bool tls_;
    bool polling_ = false;
    AcceptFn on_accept_;
    ExhaustedFn on_exhausted_;
};

} // namespace liege::router
