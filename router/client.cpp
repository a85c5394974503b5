// The client leg's connection: accepting, phases and their deadlines, reading and writing the
// socket with backpressure, tunnels, and the way a connection ends. Requests are parsed and sent
// in client_request.cpp; what the upstream reports back is handled in client_response.cpp.
#include "client.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdio>
#include <cstring>

#include "liege/log.hpp"
#include "router_thread.hpp"

namespace liege::router {

namespace {

constexpr uint64_t kLingerMs = 2000;

// Writes the peer's address into `out`; returns whether it is one of the `trusted` proxies.
bool peer_name(int fd, char* out, size_t cap, const std::vector<Cidr>& trusted) {
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
        std::snprintf(out, cap, "-");
        return false;
    }
    if (ss.ss_family == AF_INET) {
        inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr, out,
                  static_cast<socklen_t>(cap));
    } else if (ss.ss_family == AF_INET6) {
        inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr, out,
                  static_cast<socklen_t>(cap));
    } else {
        std::snprintf(out, cap, "unix");
    }
    return any_cidr_contains(trusted, reinterpret_cast<const sockaddr*>(&ss));
}

} // namespace

ClientConn::ClientConn(RouterThread& thread)
    : thread_(thread), stream_(thread, *this), out_up_(thread.ops(), thread.chunks()),
      out_client_(thread.ops(), thread.chunks()), spool_(thread.chunks()) {}

void ClientConn::accept(RouterThread& thread, int fd, bool is_unix, bool tls) {
    auto* c = new ClientConn(thread);
    thread.client_opened(&c->node);
    if (c->stream_.open(fd, is_unix) != 0) {
        c->close_now();
        return;
    }
    if (tls) {
        c->tls_ = true;
        c->stream_.start_tls(thread.shared().tls->snapshot());
    }
    c->trusted_peer_ = peer_name(fd, c->peer_, sizeof(c->peer_), thread.options().trusted_proxies);
    ConnsPerAddress& per_address = thread.shared().per_address;
    if (per_address.enabled() && !is_unix) {
        switch (per_address.admit(c->peer_)) {
        case ConnsPerAddress::Admit::Yes:
            c->counted_ = true;
            break;
        case ConnsPerAddress::Admit::NoFirst:
            spdlog::warn("client {}: max_conns_per_ip ({}) reached; its further connections are "
                         "closed at once while it holds that many",
                         c->peer_, thread.options().max_conns_per_ip);
            [[fallthrough]];
        case ConnsPerAddress::Admit::No:
            c->close_now();
            return;
        }
    }
    llhttp_init(&c->parser_, HTTP_REQUEST, settings());
    c->parser_.data = c;
    c->set_phase(ClientPhase::Idle);
    c->update_reading();
}

void ClientConn::set_phase(ClientPhase p) {
    phase_ = p;
    if (p == ClientPhase::Idle && !first_request_) {
        thread_.client_idle(&idle_node);
    } else {
        idle_node.unlink();
    }
    const RouterOptions& o = thread_.options();
    switch (p) {
    case ClientPhase::Idle:
        stream_.set_deadline(first_request_ ? o.header_timeout.count()
                                            : o.keepalive_timeout.count());
        break;
    case ClientPhase::Head:
        if (!first_request_) {
            stream_.set_deadline(o.header_timeout.count()); // the first one's runs from accept
        }
        break;
    case ClientPhase::Body:
        set_body_deadline();
        break;
    case ClientPhase::Closing: // the client has upstream_timeout to take each write
        stream_.set_deadline(o.upstream_timeout.count());
        break;
    case ClientPhase::Lingering: // every byte is out: the client has kLingerMs to close
        stream_.set_deadline(kLingerMs);
        break;
    case ClientPhase::AwaitResponse:
    case ClientPhase::Tunnel:
    case ClientPhase::Closed:
        stream_.clear_deadline();
        break;
    }
}

void ClientConn::set_body_deadline() {
    // The client has body_timeout between two reads of its body, unless what it sent waits for
    // the backend: then the backend has upstream_timeout to take some of it.
    const bool backend_owes =
        up_paused_ || (up_ != nullptr && up_->connected() && up_->queued() > 0);
    stream_.set_deadline(backend_owes ? thread_.options().upstream_timeout.count()
                                      : thread_.options().body_timeout.count());
}

void ClientConn::on_stream_deadline() {
    switch (phase_) {
    case ClientPhase::Idle:
        close_now(); // nothing was asked: closing silently is keep-alive's normal end
        break;
    case ClientPhase::Head:
        respond_error(408, "request header timeout");
        break;
    case ClientPhase::Body:
        if (ex_.resp_started) {
            close_now();
        } else if (up_paused_ || (up_ != nullptr && up_->connected() && up_->queued() > 0)) {
            // The client's body waits for the backend, which took none of it in that time.
            upstream_failed(UpstreamFailure::SendTimeout);
        } else {
            respond_error(408, "request body timeout");
        }
        break;
    default:
        close_now();
        break;
    }
}

void ClientConn::on_stream_read(ssize_t nread, Chunk* chunk) {
    if (closed()) {
        if (chunk != nullptr) {
            thread_.chunks().unref(chunk);
        }
        return;
    }
    if (nread < 0) {
        peer_closed(nread);
        return;
    }
    if (phase_ == ClientPhase::Tunnel) {
        // Even after the backend's half-close was passed on: the client may still send.
        if (up_ != nullptr) {
            out_up_.add(chunk, chunk->data, chunk->len);
        }
        thread_.chunks().unref(chunk);
        flush_upstream();
        update_reading();
        return;
    }
    if (stream_.shutdown_requested()) {
        thread_.chunks().unref(chunk); // our FIN is queued: input is read only to be dropped
        return;
    }
    if (in_ != nullptr) {
        // Reading is stopped while input is pending, but a read already in progress can still
        // land: append it to the pending chunk when it fits.
        Chunk* in = in_;
        const size_t left = in->len - in_off_;
        if (in->refs != 1 || left + chunk->len > Chunk::kSize) {
            thread_.chunks().unref(chunk);
            respond_error(400, "pipelined requests exceed the input buffer");
            return;
        }
        std::memmove(in->data, in->data + in_off_, left);
        in->len = static_cast<uint32_t>(left);
        in_off_ = 0;
        std::memcpy(in->data + in->len, chunk->data, chunk->len);
        in->len += chunk->len;
        thread_.chunks().unref(chunk);
    } else {
        in_ = chunk;
        in_off_ = 0;
    }
    if (phase_ == ClientPhase::Body) {
        set_body_deadline();
    }
    process_input();
}

void ClientConn::peer_closed(ssize_t nread) {
    if (stream_.shutdown_requested()) {
        if (nread == UV_EOF && !stream_.fin_sent()) {
            // A half-close while the response is still leaving: let it all go out first;
            // on_stream_shutdown closes once the FIN is sent.
            peer_eof_ = true;
            stream_.read(false);
            return;
        }
        close_now();
        return;
    }
    peer_eof_ = true;
    if (nread != UV_EOF) {
        close_now();
        return;
    }
    switch (phase_) {
    case ClientPhase::Tunnel:
        if (up_ != nullptr) {
            up_->shutdown_write();
        }
        stream_.read(false);
        break;
    case ClientPhase::AwaitResponse:
        if (waiter_ != nullptr) {
            // It left while its request waited for a worker: nobody is sent a request whose
            // client has gone, and the place in the queue goes to the next one.
            close_now();
            break;
        }
        // A half-closed client still gets its response, then the connection closes.
        draining_ = true;
        stream_.read(false);
        break;
    default:
        // Idle, or a request not whole yet: nobody is left to answer.
        close_now();
        break;
    }
}

void ClientConn::flush_client() {
    if (out_client_.empty() || closed()) {
        return;
    }
    if (ex_.resp_started) {
        ex_.resp_flushed = true;
    }
    WriteOp* ops = out_client_.take();
    while (ops != nullptr) {
        WriteOp* next = ops->next;
        ops->next = nullptr;
        if (stream_.send(ops) < 0) {
            thread_.ops().put_list(next, thread_.chunks());
            close_now();
            return;
        }
        ops = next;
    }
    update_out_blocked();
}

void ClientConn::update_out_blocked() {
    const size_t queued = stream_.queued();
    if (!out_blocked_ && queued > Stream::kHighWater) {
        out_blocked_ = true;
        blocked_left_ = stream_.not_taken();
    } else if (out_blocked_ && queued < Stream::kLowWater) {
        out_blocked_ = false;
    }
}

void ClientConn::on_stream_written(int status) {
    if (closed()) {
        return;
    }
    if (status < 0) {
        close_now();
        return;
    }
    if (phase_ == ClientPhase::Closing) {
        set_phase(ClientPhase::Closing); // the client took a write: its clock starts again
    }
    const bool was_blocked = out_blocked_;
    update_out_blocked();
    if (up_ != nullptr && was_blocked && !out_blocked_) {
        up_->update_reading();
    }
}

void ClientConn::close_after_writes() {
    if (closed()) {
        return;
    }
    if (stream_.shutdown_requested()) {
        // A tunnel that passed the backend's half-close on: the FIN is queued or out already.
        if (phase_ == ClientPhase::Tunnel) {
            release_upstream(false);
            set_phase(stream_.fin_sent() ? ClientPhase::Lingering : ClientPhase::Closing);
            update_reading();
        }
        return;
    }
    release_upstream(false);
    set_phase(ClientPhase::Closing);
    // The FIN waits for the queued writes; input is read and dropped until the client closes
    // or the linger ends, so unread input cannot turn into a reset that destroys the response.
    if (!stream_.shutdown()) {
        close_now();
        return;
    }
    stream_.read(true);
}

void ClientConn::on_stream_shutdown(int status) {
    if (closed()) {
        return;
    }
    if (status < 0 || peer_eof_) {
        close_now();
        return;
    }
    if (phase_ == ClientPhase::Closing) {
        set_phase(ClientPhase::Lingering);
    }
}

void ClientConn::start_tunnel(Chunk* chunk, const char* rest, size_t rest_len) {
    set_phase(ClientPhase::Tunnel);
    if (up_ != nullptr) {
        up_->start_tunnel();
        if (rest_len > 0 && chunk != nullptr) {
            out_client_.add(chunk, rest, rest_len);
            flush_client();
            if (closed()) {
                return;
            }
        }
    }
    // Bytes the client sent after its upgrade request go through now.
    if (in_ != nullptr && in_off_ < in_->len) {
        out_up_.add(in_, in_->data + in_off_, in_->len - in_off_);
    }
    if (in_ != nullptr) {
        thread_.chunks().unref(in_);
        in_ = nullptr;
        in_off_ = 0;
    }
    flush_upstream();
    update_reading();
}

void ClientConn::tunnel_data(Chunk* chunk, const char* data, size_t len) {
    out_client_.add(chunk, data, len);
    flush_client();
    update_reading();
}

void ClientConn::upstream_eof() {
    // Tunnel: the backend finished sending; pass the half-close on.
    if (peer_eof_) {
        close_after_writes();
        return;
    }
    if (!stream_.shutdown_requested() && !stream_.shutdown()) {
        close_now();
    }
}

void ClientConn::update_reading() {
    if (closed()) {
        return;
    }
    bool want = false;
    switch (phase_) {
    case ClientPhase::Idle:
    case ClientPhase::Head:
    case ClientPhase::AwaitResponse:
        want = in_ == nullptr && !peer_eof_;
        break;
    case ClientPhase::Body:
    case ClientPhase::Tunnel:
        if (ex_.spooling && phase_ == ClientPhase::Body) {
            want = in_ == nullptr && !peer_eof_; // into the spool: no backend is waiting on it
        } else if (up_ != nullptr && up_->connected()) {
            if (!up_paused_ && up_->write_queue_high()) {
                up_paused_ = true;
            } else if (up_paused_ && up_->queued() < Stream::kLowWater) {
                up_paused_ = false;
            }
            want = !up_paused_ && in_ == nullptr && !peer_eof_;
        }
        break;
    case ClientPhase::Closing:
    case ClientPhase::Lingering:
        want = !peer_eof_; // read and discard until the client closes
        break;
    case ClientPhase::Closed:
        break;
    }
    stream_.read(want);
}

void ClientConn::drain() {
    draining_ = true;
    if (idle()) {
        close_now();
    }
}

void ClientConn::close_now() {
    if (closed()) {
        return;
    }
    const bool reusable =
        up_ != nullptr && up_->reusable() && ex_.resp_done && ex_.done && spool_.drained();
    release_upstream(reusable);
    phase_ = ClientPhase::Closed;
    idle_node.unlink();
    drop_upstream_output();
    spool_.reset();
    thread_.ops().put_list(out_client_.take(), thread_.chunks());
    if (in_ != nullptr) {
        thread_.chunks().unref(in_);
        in_ = nullptr;
    }
    if (ex_.head_copy != nullptr) {
        thread_.chunks().unref(ex_.head_copy);
        ex_.head_copy = nullptr;
    }
    if (head_ != nullptr) {
        thread_.return_head(head_);
        head_ = nullptr;
    }
    leave_pool();
    stream_.close();
}

void ClientConn::on_stream_closed() {
    idle_node.unlink();
    if (counted_) {
        thread_.shared().per_address.release(peer_);
    }
    thread_.client_closed(&node);
    delete this;
}

} // namespace liege::router
