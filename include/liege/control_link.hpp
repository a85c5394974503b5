// One line-oriented control link: the emperor's end and the router's end of the control socket
// (docs/control-protocol.md) are both one of these.
//
// It owns the socket's pipe handle (UvHandle: closed on destruction, freed in the close
// callback) and its pending writes (freed in their write callbacks, which libuv runs with
// UV_ECANCELED when the pipe closes first), so neither end holds handle memory of its own.
#pragma once

#include <uv.h>

#include <functional>
#include <memory>
#include <string>

#include "liege/control.hpp"
#include "liege/uv.hpp"

namespace liege::control {

class ControlLink {
public:
    using LineFn = std::function<void(const std::string& line)>;
    // UV_EOF when the peer closed its end, another negative errno on a read error.
    using ClosedFn = std::function<void(int status)>;

    // Takes ownership of `fd` (a connected stream socket) and starts reading. on_line gets each
    // complete line without its '\n'; on_closed runs once, when reading stops for good.
    ControlLink(uv_loop_t* loop, int fd, LineFn on_line, ClosedFn on_closed);
    ~ControlLink() = default;
    ControlLink(const ControlLink&) = delete;
    ControlLink& operator=(const ControlLink&) = delete;

    // Queues `line` (which ends in '\n', as control::encode() makes it). Returns false when the
    // link is closed or the write could not be queued; the line is then dropped.
    bool send(std::string line);
    // Stops reading and closes the socket; pending writes are cancelled. Idempotent.
    void close() { pipe_.reset(); }
    bool open() const { return pipe_.get() != nullptr; }

private:
    void on_read(ssize_t n, const uv_buf_t* buf);

    UvHandle<uv_pipe_t> pipe_;
    LineBuffer in_;
    std::unique_ptr<char[]> read_buf_;
    LineFn on_line_;
    ClosedFn on_closed_;
};

} // namespace liege::control
