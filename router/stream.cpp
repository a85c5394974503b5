#include "stream.hpp"

#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstring>

#include "liege/balancer.hpp"
#include "router_thread.hpp"

namespace liege::router {

int Stream::init(bool is_unix) {
    is_unix_ = is_unix;
    uv_loop_t* loop = thread_.loop();
    int rc = is_unix ? uv_pipe_init(loop, &sock_->pipe, 0) : uv_tcp_init(loop, &sock_->tcp);
    if (rc != 0) {
        return rc;
    }
    uv_timer_init(loop, timer_.get());
    sock_->handle.data = this;
    timer_->data = this;
    return 0;
}

int Stream::open(int fd, bool is_unix) {
    int rc = init(is_unix);
    if (rc == 0) {
        rc = is_unix ? uv_pipe_open(&sock_->pipe, fd) : uv_tcp_open(&sock_->tcp, fd);
    }
    if (rc != 0) {
        ::close(fd);
        return rc;
    }
    if (!is_unix) {
        uv_tcp_nodelay(&sock_->tcp, 1);
    }
    return 0;
}

int Stream::connect(const Backend& backend) {
    int rc = init(backend.address.is_unix());
    if (rc != 0) {
        return rc;
    }
    uv_connect_t* req = &sock_.requests().connect;
    if (is_unix_) {
        // A socket() failure arrives through on_connect here.
        uv_pipe_connect(req, &sock_->pipe, backend.address.path.c_str(), on_connect);
        return 0;
    }
    uv_tcp_nodelay(&sock_->tcp, 1);
    return uv_tcp_connect(req, &sock_->tcp, reinterpret_cast<const sockaddr*>(&backend.sockaddr),
                          on_connect);
}

void Stream::read(bool want) {
    if (closing_ || want == reading_) {
        return;
    }
    if (want) {
        reading_ = uv_read_start(sock_.stream(), on_alloc, on_read) == 0;
        if (tls_ != nullptr && reading_) {
            tls_resume_later();
        }
    } else {
        uv_read_stop(sock_.stream());
        reading_ = false;
    }
}

// Writing directly matters: a uv_write that completes at once still costs a deferred callback
// and an epoll_ctl when libuv re-arms the watcher, two syscalls per request on the hot path.
int Stream::send(WriteOp* op) {
    return tls_ != nullptr ? tls_send(op) : send_raw(op);
}

int Stream::send_raw(WriteOp* op) {
    op->owner = &thread_; // on_write recycles it there, also once the stream is gone
    op->req.data = op;
    if (closing_) {
        thread_.ops().put(op, thread_.chunks());
        return UV_ECANCELED;
    }
    if (queued() == 0) {
        int n = uv_try_write(sock_.stream(), op->bufs, op->nbufs);
        if (n < 0 && n != UV_EAGAIN) {
            thread_.ops().put(op, thread_.chunks());
            return n;
        }
        size_t done = n > 0 ? static_cast<size_t>(n) : 0;
        if (done == op->bytes) {
            thread_.ops().put(op, thread_.chunks());
            return 1;
        }
        unsigned first = 0;
        while (done > 0 && done >= op->bufs[first].len) {
            done -= op->bufs[first].len;
            ++first;
        }
        if (first > 0) {
            std::memmove(op->bufs, op->bufs + first, (op->nbufs - first) * sizeof(uv_buf_t));
            op->nbufs -= first;
        }
        op->bufs[0].base += done;
        op->bufs[0].len -= done;
    }
    int rc = uv_write(&op->req, sock_.stream(), op->bufs, op->nbufs, on_write);
    if (rc != 0) {
        thread_.ops().put(op, thread_.chunks());
        return rc;
    }
    ++writes_in_flight_;
    return 0;
}

size_t Stream::not_taken() const {
    size_t n = queued();
    // The kernel's send queue as well: a client that reads slowly drains it long before libuv
    // may write again (the socket turns writable only once a third of its buffer is free).
    uv_os_fd_t fd = -1;
    int in_kernel = 0;
    if (sock_.initialised() && uv_fileno(sock_.base(), &fd) == 0 &&
        ::ioctl(fd, SIOCOUTQ, &in_kernel) == 0 && in_kernel > 0) {
        n += static_cast<size_t>(in_kernel);
    }
    return n;
}

bool Stream::peer_finished() const {
    // The kernel leaves ESTABLISHED once the peer's FIN (CLOSE_WAIT) or RST (CLOSE) arrives,
    // however many of its bytes are still unread.
    uv_os_fd_t fd = -1;
    tcp_info info{};
    socklen_t len = sizeof(info);
    if (is_unix_ || !sock_.initialised() || uv_fileno(sock_.base(), &fd) != 0 ||
        ::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) {
        return false;
    }
    return info.tcpi_state != TCP_ESTABLISHED;
}

bool Stream::shutdown() {
    if (closing_ || shutdown_requested_) {
        return !closing_;
    }
    if (tls_ != nullptr) {
        tls_close_notify();
    }
    if (uv_shutdown(&sock_.requests().shutdown, sock_.stream(), on_shutdown) != 0) {
        return false;
    }
    shutdown_requested_ = true;
    return true;
}

void Stream::close() {
    if (closing_) {
        return;
    }
    closing_ = true;
    reading_ = false;
    sock_.reset();
    timer_.reset();
    tls_resume_.reset();
    thread_.retire(owner_);
}

// libuv calls neither of these once the socket is closed (its data is then null).
void Stream::on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
    auto* s = static_cast<Stream*>(h->data);
    Chunk* chunk = s->thread_.chunks().get();
    *buf = uv_buf_init(chunk->data, Chunk::kSize);
}

void Stream::on_read(uv_stream_t* h, ssize_t nread, const uv_buf_t* buf) {
    auto* s = static_cast<Stream*>(h->data);
    Chunk* chunk = buf->base != nullptr ? Chunk::from_data(buf->base) : nullptr;
    if (nread <= 0) {
        if (chunk != nullptr) {
            s->thread_.chunks().unref(chunk);
        }
        if (nread < 0) {
            if (s->tls_ != nullptr) {
                s->tls_input_ended(nread);
            } else {
                s->owner_.on_stream_read(nread, nullptr);
            }
        }
        return;
    }
    chunk->len = static_cast<uint32_t>(nread);
    if (s->tls_ != nullptr) {
        s->tls_input(chunk);
        return;
    }
    s->owner_.on_stream_read(nread, chunk);
}

// Pending writes are called back (cancelled) after close() too, when the stream may be gone: the
// op goes back to its thread's pool, and only an open stream hears of it.
void Stream::on_write(uv_write_t* req, int status) {
    auto* op = static_cast<WriteOp*>(req->data);
    auto* thread = static_cast<RouterThread*>(op->owner);
    auto* s = request_owner<Stream>(req); // before the op (and req in it) may be freed
    thread->ops().put(op, thread->chunks());
    if (s != nullptr) {
        --s->writes_in_flight_;
        s->owner_.on_stream_written(status);
    }
}

void Stream::on_timer(uv_timer_t* t) {
    auto* s = static_cast<Stream*>(t->data);
    if (s->deadline_.expired(t, on_timer)) {
        s->owner_.on_stream_deadline();
    }
}

void Stream::on_shutdown(uv_shutdown_t* req, int status) {
    if (auto* s = request_owner<Stream>(req)) {
        s->fin_sent_ = status == 0;
        s->owner_.on_stream_shutdown(status);
    }
}

void Stream::on_connect(uv_connect_t* req, int status) {
    if (auto* s = request_owner<Stream>(req)) {
        s->owner_.on_stream_connected(status);
    }
}

} // namespace liege::router
