// Readiness by sd_notify: the socket a worker with `[health] notify = true` sends READY=1 to.
//
// systemd's protocol (sd_notify(3)): the service finds a unix datagram socket's path in
// $NOTIFY_SOCKET and sends it datagrams of newline-separated KEY=VALUE assignments. liege reads
// only READY=1; STATUS=..., MAINPID=..., WATCHDOG=1 and anything else are accepted and ignored,
// so an app written for systemd runs unchanged.
//
// One socket per worker process, made at its spawn and gone with it (per worker is simpler than
// one shared socket telling senders apart by SCM_CREDENTIALS, and no datagram of a previous run
// can make a new one ready). Any process that can reach the path may send, like systemd's
// NotifyAccess=all, since an app's READY=1 often comes from a child (`systemd-notify --ready` in
// a start script, a pre-forking server's master after it forked); the socket file is 0600 in
// the emperor's runtime directory, so that is the emperor's user.
#pragma once

#include <uv.h>

#include <functional>
#include <string>
#include <string_view>

#include "liege/uv.hpp"

namespace liege {

// Whether one notification datagram says READY=1: a line exactly "READY=1" (a trailing "\r" or
// surrounding blank lines are fine; "READY=10" or "XREADY=1" are not).
bool notify_says_ready(std::string_view datagram);

class NotifySocket {
public:
    NotifySocket() = default;
    ~NotifySocket() { close(); }
    NotifySocket(const NotifySocket&) = delete;
    NotifySocket& operator=(const NotifySocket&) = delete;

    // Binds a datagram socket at `path` (replacing a stale file there) and reads it on `loop`;
    // `on_ready` runs from the loop for each datagram that says READY=1 (the caller acts on the
    // first). Returns 0 or a negative errno (the path too long for a unix socket: -ENAMETOOLONG).
    int open(uv_loop_t* loop, const std::string& path, std::function<void()> on_ready);
    // Stops reading, closes the socket and removes its file. Safe to call twice, or from inside
    // on_ready.
    void close();
    bool is_open() const { return fd_ >= 0; }
    const std::string& path() const { return path_; }

private:
    void readable();

    int fd_ = -1;
    std::string path_;
    std::function<void()> on_ready_;
    UvHandle<uv_poll_t> poll_;
};

} // namespace liege
