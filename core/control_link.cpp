#include "liege/control_link.hpp"

#include <unistd.h>

namespace liege::control {

namespace {

constexpr size_t kReadBuffer = 64 * 1024;

} // namespace

ControlLink::ControlLink(uv_loop_t* loop, int fd, LineFn on_line, ClosedFn on_closed)
    : read_buf_(new char[kReadBuffer]), on_line_(std::move(on_line)),
      on_closed_(std::move(on_closed)) {
    uv_pipe_init(loop, pipe_.get(), 0);
    if (uv_pipe_open(pipe_.get(), fd) != 0) {
        ::close(fd);
        pipe_.reset();
        return;
    }
    pipe_->data = this;
    uv_read_start(
        pipe_.stream(),
        [](uv_handle_t* h, size_t, uv_buf_t* buf) {
            auto* self = static_cast<ControlLink*>(h->data);
            *buf = uv_buf_init(self->read_buf_.get(), kReadBuffer);
        },
        [](uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
            if (s->data != nullptr) {
                static_cast<ControlLink*>(s->data)->on_read(n, buf);
            }
        });
}

void ControlLink::on_read(ssize_t n, const uv_buf_t* buf) {
    if (n < 0) {
        uv_read_stop(pipe_.stream());
        if (on_closed_) {
            auto closed = std::move(on_closed_);
            on_closed_ = nullptr;
            closed(static_cast<int>(n));
        }
        return;
    }
    in_.append({buf->base, static_cast<size_t>(n)});
    std::string line;
    while (open() && in_.next(line)) {
        on_line_(line);
    }
}

bool ControlLink::send(std::string line) {
    if (!open() || uv_is_closing(pipe_.base())) {
        return false;
    }
    struct Write {
        uv_write_t req;
        std::string data;
    };
    auto* w = new Write{{}, std::move(line)};
    w->req.data = w;
    uv_buf_t buf = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
    if (uv_write(&w->req, pipe_.stream(), &buf, 1,
                 [](uv_write_t* req, int) { delete static_cast<Write*>(req->data); }) != 0) {
        delete w;
        return false;
    }
    return true;
}

} // namespace liege::control
