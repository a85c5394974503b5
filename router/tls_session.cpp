#include "tls_session.hpp"

#include <openssl/err.h>

#include <algorithm>
#include <cstring>

namespace liege::router {

BIO_METHOD* TlsSession::bio_method() {
    static BIO_METHOD* method = [] {
        BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "liege chunks");
        BIO_meth_set_read(m, bio_read);
        BIO_meth_set_write(m, bio_write);
        BIO_meth_set_ctrl(m, bio_ctrl);
        return m;
    }();
    return method;
}

TlsSession::TlsSession(std::shared_ptr<const TlsSnapshot> certs, ChunkPool& chunks)
    : chunks_(chunks), certs_(std::move(certs)) {
    ssl_ = SSL_new(certs_->fallback->ctx());
    BIO* bio = BIO_new(bio_method());
    BIO_set_data(bio, this);
    BIO_set_init(bio, 1);
    SSL_set_bio(ssl_, bio, bio); // one reference for both directions
    SSL_set_ex_data(ssl_, tls_snapshot_index(), const_cast<TlsSnapshot*>(certs_.get()));
    SSL_set_accept_state(ssl_);
}

TlsSession::~TlsSession() {
    SSL_free(ssl_);
    for (Chunk* list : {in_, out_}) {
        while (list != nullptr) {
            Chunk* next = list->next_free;
            chunks_.unref(list);
            list = next;
        }
    }
}

void TlsSession::feed(Chunk* c) {
    fed_ += c->len;
    c->next_free = nullptr;
    if (in_ == nullptr) {
        in_ = in_tail_ = c;
        in_off_ = 0;
    } else {
        in_tail_->next_free = c;
        in_tail_ = c;
    }
}

bool TlsSession::input_pending() const {
    return in_ != nullptr || SSL_pending(ssl_) > 0;
}

void TlsSession::failed(int ssl_error) {
    if (ssl_error == SSL_ERROR_SSL && ERR_GET_REASON(ERR_peek_error()) == SSL_R_HTTP_REQUEST) {
        plain_http_ = true;
    }
    failure_ =
        tls_errors(ssl_error == SSL_ERROR_SYSCALL ? "unexpected end of the stream" : "TLS failure");
}

int TlsSession::read(Chunk* out) {
    ERR_clear_error();
    if (!handshake_done()) {
        const int r = SSL_do_handshake(ssl_);
        if (r != 1) {
            const int err = SSL_get_error(ssl_, r);
            if (err == SSL_ERROR_WANT_READ) {
                return 0;
            }
            failed(err);
            return kFailed;
        }
    }
    size_t total = 0;
    while (out->len + total < Chunk::kSize) {
        size_t n = 0;
        const int r =
            SSL_read_ex(ssl_, out->data + out->len + total, Chunk::kSize - out->len - total, &n);
        if (r == 1) {
            total += n;
            continue;
        }
        const int err = SSL_get_error(ssl_, r);
        if (err == SSL_ERROR_WANT_READ) {
            break;
        }
        if (total > 0) {
            break; // the close or failure shows again on the next call
        }
        if (err == SSL_ERROR_ZERO_RETURN) {
            return kClosed;
        }
        failed(err);
        return kFailed;
    }
    out->len += static_cast<uint32_t>(total);
    return static_cast<int>(total);
}

bool TlsSession::write(const char* data, size_t len) {
    if (!handshake_done()) {
        return false;
    }
    ERR_clear_error();
    while (len > 0) {
        size_t n = 0;
        if (SSL_write_ex(ssl_, data, len, &n) != 1) {
            failed(SSL_get_error(ssl_, 0));
            return false;
        }
        data += n;
        len -= n;
    }
    return true;
}

void TlsSession::close_notify() {
    if (handshake_done()) {
        ERR_clear_error();
        SSL_shutdown(ssl_);
        ERR_clear_error();
    }
}

Chunk* TlsSession::take_output() {
    Chunk* list = out_;
    out_ = out_tail_ = nullptr;
    return list;
}

int TlsSession::bio_read(BIO* b, char* buf, int len) {
    auto* s = static_cast<TlsSession*>(BIO_get_data(b));
    BIO_clear_retry_flags(b);
    int done = 0;
    while (done < len && s->in_ != nullptr) {
        Chunk* c = s->in_;
        const size_t n = std::min<size_t>(static_cast<size_t>(len - done), c->len - s->in_off_);
        std::memcpy(buf + done, c->data + s->in_off_, n);
        done += static_cast<int>(n);
        s->in_off_ += static_cast<uint32_t>(n);
        if (s->in_off_ == c->len) {
            s->in_ = c->next_free;
            if (s->in_ == nullptr) {
                s->in_tail_ = nullptr;
            }
            s->in_off_ = 0;
            s->chunks_.unref(c);
        }
    }
    if (done == 0) {
        BIO_set_retry_read(b); // more comes from the socket
        return -1;
    }
    return done;
}

int TlsSession::bio_write(BIO* b, const char* buf, int len) {
    auto* s = static_cast<TlsSession*>(BIO_get_data(b));
    BIO_clear_retry_flags(b);
    int done = 0;
    while (done < len) {
        Chunk* c = s->out_tail_;
        if (c == nullptr || c->len == Chunk::kSize) {
            c = s->chunks_.get();
            c->next_free = nullptr;
            if (s->out_tail_ == nullptr) {
                s->out_ = c;
            } else {
                s->out_tail_->next_free = c;
            }
            s->out_tail_ = c;
        }
        const size_t n = std::min<size_t>(static_cast<size_t>(len - done), Chunk::kSize - c->len);
        std::memcpy(c->data + c->len, buf + done, n);
        c->len += static_cast<uint32_t>(n);
        done += static_cast<int>(n);
    }
    return done;
}

long TlsSession::bio_ctrl(BIO*, int cmd, long, void*) {
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

std::string tls_errors(std::string_view fallback) {
    std::string out;
    while (unsigned long e = ERR_get_error()) {
        const char* reason = ERR_reason_error_string(e);
        std::string r = reason != nullptr ? reason : "error " + std::to_string(e);
        if (out.find(r) == std::string::npos) {
            out += (out.empty() ? "" : "; ") + r;
        }
    }
    return out.empty() ? std::string(fallback) : out;
}

} // namespace liege::router
