// Stream's TLS half: what a stream of an HTTPS listener does between its socket and its owner.
//
// The owner sees plaintext exactly as a plain stream gives it: on_stream_read with a pooled
// chunk, send() with the same results (1 written, 0 queued and on_stream_written follows, < 0 an
// error), shutdown() (preceded by a close_notify), and queued() counts the records libuv holds,
// so the owner's backpressure works unchanged: a slow TLS reader stops the response at the
// high-water mark as a plain one does, and the session holds no plaintext of its own.
//
// Reading: ciphertext chunks go into the TlsSession and are decrypted into fresh chunks while
// the owner wants to read. When the owner stops reading with records still undecrypted (a
// pipelined request behind the one in progress), they wait in the session; read(true) resumes
// them from the loop through an idle handle, never from inside read().
//
// Failures end the connection with one info line naming the peer: a handshake the client gives
// up on, one that fails (the reason as OpenSSL says it), or plain HTTP on the HTTPS port, which
// is answered with a 400 first, as nginx does.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdio>
#include <cstring>

#include "liege/log.hpp"
#include "router_thread.hpp"
#include "stream.hpp"
#include "tls_session.hpp"

namespace liege::router {

namespace {

std::string peer_of(const uv_handle_t* h) {
    uv_os_fd_t fd = -1;
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    if (uv_fileno(h, &fd) != 0 || getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
        return "-";
    }
    char buf[INET6_ADDRSTRLEN] = "unix";
    if (ss.ss_family == AF_INET) {
        inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr, buf, sizeof(buf));
    } else if (ss.ss_family == AF_INET6) {
        inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr, buf, sizeof(buf));
    }
    return buf;
}

constexpr char kPlainHttpResponse[] =
    "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    "Content-Length: 66\r\nConnection: close\r\n\r\n"
    "400 Bad Request\nThe plain HTTP request was sent to the HTTPS port\n";
static_assert(sizeof("400 Bad Request\nThe plain HTTP request was sent to the HTTPS port\n") - 1 ==
              66);

} // namespace

Stream::Stream(RouterThread& thread, Owner& owner) : thread_(thread), owner_(owner) {}

Stream::~Stream() = default;

void Stream::start_tls(std::shared_ptr<const TlsSnapshot> certs) {
    tls_ = std::make_unique<TlsSession>(std::move(certs), thread_.chunks());
}

void Stream::tls_input(Chunk* chunk) {
    tls_->feed(chunk);
    tls_pump();
}

void Stream::tls_pump() {
    while (!closing_ && reading_) {
        Chunk* out = thread_.chunks().get();
        const int n = tls_->read(out);
        if (tls_flush() < 0) {
            thread_.chunks().unref(out);
            owner_.on_stream_read(UV_EPIPE, nullptr);
            return;
        }
        if (n > 0) {
            owner_.on_stream_read(n, out); // the owner takes the reference
            continue;
        }
        thread_.chunks().unref(out);
        if (n == TlsSession::kClosed) {
            owner_.on_stream_read(UV_EOF, nullptr);
        } else if (n == TlsSession::kFailed) {
            tls_failed();
        }
        return;
    }
}

void Stream::tls_failed() {
    const std::string peer = peer_of(sock_.base());
    if (tls_->plain_http()) {
        spdlog::info("tls: {}: plain HTTP on the HTTPS port, answered 400", peer);
        WriteOp* op = thread_.ops().get();
        op->bufs[0] =
            uv_buf_init(const_cast<char*>(kPlainHttpResponse), sizeof(kPlainHttpResponse) - 1);
        op->nbufs = 1;
        op->bytes = sizeof(kPlainHttpResponse) - 1;
        send_raw(op);
    } else {
        spdlog::info("tls: {}: {} failed: {}", peer,
                     tls_->handshake_done() ? "connection" : "handshake", tls_->failure());
    }
    owner_.on_stream_read(UV_EPROTO, nullptr);
}

void Stream::tls_input_ended(ssize_t nread) {
    if (!tls_->handshake_done() && tls_->handshake_started()) {
        spdlog::info("tls: {}: {} during the TLS handshake", peer_of(sock_.base()),
                     nread == UV_EOF ? "closed" : uv_strerror(static_cast<int>(nread)));
    }
    owner_.on_stream_read(nread, nullptr);
}

int Stream::tls_send(WriteOp* op) {
    // Pieces that fit one record together (a response head and a small body) are encrypted as
    // one: a record per piece would cost its own encryption call and 22 bytes on the wire.
    static constexpr size_t kRecord = 16 * 1024;
    char gathered[kRecord];
    size_t held = 0;
    bool ok = true;
    for (unsigned i = 0; i < op->nbufs && ok; ++i) {
        const uv_buf_t& b = op->bufs[i];
        if (held + b.len <= kRecord) {
            std::memcpy(gathered + held, b.base, b.len);
            held += b.len;
            continue;
        }
        ok = (held == 0 || tls_->write(gathered, held)) && tls_->write(b.base, b.len);
        held = 0;
    }
    ok = ok && (held == 0 || tls_->write(gathered, held));
    thread_.ops().put(op, thread_.chunks()); // the plaintext is encrypted: its chunks go back
    return ok ? tls_flush() : UV_EPROTO;
}

int Stream::tls_flush() {
    Chunk* list = tls_->take_output();
    int result = 1;
    while (list != nullptr) {
        WriteOp* op = thread_.ops().get();
        while (list != nullptr && op->nbufs < WriteOp::kMaxBufs) {
            Chunk* c = list;
            list = c->next_free;
            op->refs[op->nrefs++] = c; // the op takes the session's reference
            op->bufs[op->nbufs++] = uv_buf_init(c->data, c->len);
            op->bytes += c->len;
        }
        const int rc = send_raw(op);
        if (rc < 0) {
            while (list != nullptr) {
                Chunk* c = list;
                list = c->next_free;
                thread_.chunks().unref(c);
            }
            return rc;
        }
        if (rc == 0) {
            result = 0;
        }
    }
    return result;
}

void Stream::tls_resume_later() {
    if (!tls_->input_pending()) {
        return;
    }
    if (!tls_resume_) {
        uv_idle_init(thread_.loop(), tls_resume_.emplace().get());
        (*tls_resume_)->data = this;
    }
    uv_idle_start(tls_resume_->get(), [](uv_idle_t* h) {
        uv_idle_stop(h);
        static_cast<Stream*>(h->data)->tls_pump();
    });
}

void Stream::tls_close_notify() {
    tls_->close_notify();
    tls_flush();
}

} // namespace liege::router
