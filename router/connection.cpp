#include "connection.hpp"

#include <arpa/inet.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstring>

#include "liege/log.hpp"

namespace liege::router {

namespace {

constexpr size_t kHighWater = 256 * 1024;
constexpr size_t kLowWater = 64 * 1024;
constexpr uint64_t kLingerMs = 2000;
constexpr size_t kMaxResponseHead = 64 * 1024; // and as much again for a chunked body's trailers

ClientConn* client_of(llhttp_t* p) {
    return static_cast<ClientConn*>(p->data);
}
Upstream* upstream_of(llhttp_t* p) {
    return static_cast<Upstream*>(p->data);
}

std::string_view failure_text(UpstreamFailure why) {
    switch (why) {
    case UpstreamFailure::Connect:
        return "connect failed";
    case UpstreamFailure::ConnectTimeout:
        return "connect timed out";
    case UpstreamFailure::Reset:
        return "connection closed before a response";
    case UpstreamFailure::Timeout:
        return "response timed out";
    case UpstreamFailure::SendTimeout:
        return "the backend stopped reading the request body";
    case UpstreamFailure::BadResponse:
        return "malformed response";
    case UpstreamFailure::NoSocket:
        return "the router is out of file descriptors or socket memory";
    }
    return "failed";
}

// A socket the router could not create for want of its own resources (what makes accept pause).
bool no_socket(int err) {
    return err == UV_EMFILE || err == UV_ENFILE || err == UV_ENOBUFS || err == UV_ENOMEM;
}

void peer_name(int fd, char* out, size_t cap) {
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
        std::snprintf(out, cap, "-");
        return;
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
}

// Writes as much of `op` as the socket takes right now and queues the rest with uv_write.
// Writing directly matters: a uv_write that completes at once still costs a deferred callback
// and an epoll_ctl when libuv re-arms the watcher, two syscalls per request on the hot path.
// Returns 1 when the op went out whole (it is recycled here), 0 when it was queued (cb runs
// later), or a negative libuv error (the op is recycled here).
int send_op(Worker* w, uv_stream_t* stream, WriteOp* op, uv_write_cb cb) {
    if (uv_stream_get_write_queue_size(stream) == 0) {
        int n = uv_try_write(stream, op->bufs, op->nbufs);
        if (n < 0 && n != UV_EAGAIN) {
            w->ops().put(op, w->chunks());
            return n;
        }
        size_t done = n > 0 ? static_cast<size_t>(n) : 0;
        if (done == op->bytes) {
            w->ops().put(op, w->chunks());
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
    int rc = uv_write(&op->req, stream, op->bufs, op->nbufs, cb);
    if (rc != 0) {
        w->ops().put(op, w->chunks());
        return rc;
    }
    return 0;
}

// The callbacks both legs' parsers share; each leg adds its start-line ones.
llhttp_settings_t message_settings(llhttp_cb begin, llhttp_data_cb field, llhttp_data_cb value,
                                   llhttp_cb headers_complete, llhttp_data_cb body,
                                   llhttp_cb complete) {
    llhttp_settings_t v;
    llhttp_settings_init(&v);
    v.on_message_begin = begin;
    v.on_header_field = field;
    v.on_header_value = value;
    v.on_headers_complete = headers_complete;
    v.on_body = body;
    v.on_message_complete = complete;
    return v;
}

// Closes a leg's two handles (each close callback counts one down).
void close_handles(StreamHandle& sock, uv_timer_t& timer, uv_close_cb cb) {
    uv_timer_stop(&timer);
    if (!uv_is_closing(&sock.handle)) {
        uv_close(&sock.handle, cb);
    }
    if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&timer))) {
        uv_close(reinterpret_cast<uv_handle_t*>(&timer), cb);
    }
}

// A TCP or unix stream handle, by the peer's kind.
int init_stream(uv_loop_t* loop, StreamHandle& h, bool is_unix) {
    return is_unix ? uv_pipe_init(loop, &h.pipe, 0) : uv_tcp_init(loop, &h.tcp);
}

} // namespace

// ---------------------------------------------------------------------------------------------
// Client leg
// ---------------------------------------------------------------------------------------------

const llhttp_settings_t* ClientConn::settings() {
    static const llhttp_settings_t s = [] {
        llhttp_settings_t v = message_settings(on_message_begin, on_header_field, on_header_value,
                                               on_headers_complete, on_body, on_message_complete);
        v.on_method = on_method;
        v.on_url = on_url;
        return v;
    }();
    return &s;
}

void ClientConn::accept(Worker* w, int fd, bool is_unix) {
    auto* c = new ClientConn(w);
    c->is_unix_ = is_unix;
    int rc = init_stream(w->loop(), c->sock_, is_unix);
    if (rc == 0) {
        rc = is_unix ? uv_pipe_open(&c->sock_.pipe, fd) : uv_tcp_open(&c->sock_.tcp, fd);
        c->handles_open_++;
        if (rc != 0) {
            ::close(fd);
        }
    } else {
        ::close(fd);
    }
    uv_timer_init(w->loop(), &c->timer_);
    c->handles_open_++;
    c->sock_.handle.data = c;
    c->timer_.data = c;
    w->client_opened(c);
    if (rc != 0) {
        c->close_now();
        return;
    }
    if (!is_unix) {
        uv_tcp_nodelay(&c->sock_.tcp, 1);
    }
    peer_name(fd, c->peer_, sizeof(c->peer_));
    llhttp_init(&c->parser_, HTTP_REQUEST, settings());
    c->parser_.data = c;
    c->set_phase(ClientPhase::Idle);
    c->update_reading();
}

void ClientConn::set_phase(ClientPhase p) {
    phase_ = p;
    const RouterOptions& o = w_->options();
    switch (p) {
    case ClientPhase::Idle:
        arm_timer(first_request_ ? o.header_timeout.count() : o.keepalive_timeout.count());
        break;
    case ClientPhase::Head:
        if (!first_request_) {
            arm_timer(o.header_timeout.count()); // the first request's clock runs from accept
        }
        break;
    case ClientPhase::Body:
        arm_timer(o.upstream_timeout.count());
        break;
    case ClientPhase::AwaitResponse:
    case ClientPhase::Tunnel:
        deadline_.clear();
        break;
    case ClientPhase::Closing:
        // Until the FIN is out (on_shutdown), the response is still on its way: the client has
        // upstream_timeout to take each write. Then it has kLingerMs to close its side.
        arm_timer(fin_sent_ ? kLingerMs : o.upstream_timeout.count());
        break;
    }
}

void ClientConn::arm_timer(uint64_t ms) {
    deadline_.set(&timer_, ms, on_timer);
}

void ClientConn::on_timer(uv_timer_t* t) {
    auto* c = static_cast<ClientConn*>(t->data);
    if (c == nullptr || c->closed_ || !c->deadline_.expired(t, on_timer)) {
        return;
    }
    switch (c->phase_) {
    case ClientPhase::Idle:
        c->close_now(); // nothing was asked: closing silently is keep-alive's normal end
        break;
    case ClientPhase::Head:
        c->respond_error(408, "request header timeout");
        break;
    case ClientPhase::Body:
        if (c->resp_started_) {
            c->close_now();
        } else if (c->up_paused_ || (c->up_ != nullptr && c->up_->connected() &&
                                     uv_stream_get_write_queue_size(c->up_->stream()) > 0)) {
            // The client's body waits for the backend, which took none of it in that time.
            c->upstream_failed(UpstreamFailure::SendTimeout);
        } else {
            c->respond_error(408, "request body timeout");
        }
        break;
    default:
        c->close_now();
        break;
    }
}

void ClientConn::on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
    auto* c = static_cast<ClientConn*>(h->data);
    Chunk* chunk = c->w_->chunks().get();
    *buf = uv_buf_init(chunk->data, Chunk::kSize);
}

void ClientConn::on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
    auto* c = static_cast<ClientConn*>(s->data);
    Chunk* chunk = buf->base != nullptr ? Chunk::from_data(buf->base) : nullptr;
    if (nread <= 0 || c->closed_ || c->shutting_down_) {
        if (chunk != nullptr) {
            c->w_->chunks().unref(chunk);
        }
        if (nread == 0 || c->closed_) {
            return;
        }
        if (nread > 0) {
            return; // lingering after an error response: discard
        }
        if (c->shutting_down_) {
            if (nread == UV_EOF && !c->fin_sent_) {
                // A half-close while the response is still leaving: let it all go out first;
                // on_shutdown closes once the FIN is sent.
                c->client_eof_ = true;
                uv_read_stop(&c->sock_.stream);
                c->reading_ = false;
                return;
            }
            c->close_now();
            return;
        }
        c->client_eof_ = true;
        if (nread != UV_EOF) {
            c->close_now();
            return;
        }
        if (c->phase_ == ClientPhase::Tunnel) {
            if (c->up_ != nullptr) {
                c->up_->shutdown_write();
            }
            uv_read_stop(&c->sock_.stream);
            c->reading_ = false;
            return;
        }
        if (c->phase_ == ClientPhase::Idle && c->in_ == nullptr) {
            c->close_now();
        } else if (c->phase_ == ClientPhase::Head || c->phase_ == ClientPhase::Idle ||
                   c->phase_ == ClientPhase::Body) {
            // The client gave up before sending a whole request: nobody is left to answer.
            c->close_now();
        } else {
            // AwaitResponse: a half-closed client still gets its response, then we close.
            c->draining_ = true;
            uv_read_stop(&c->sock_.stream);
            c->reading_ = false;
        }
        return;
    }
    chunk->len = static_cast<uint32_t>(nread);
    if (c->phase_ == ClientPhase::Tunnel) {
        if (c->up_ == nullptr) {
            c->w_->chunks().unref(chunk);
            return;
        }
        c->out_up_.add(chunk, chunk->data, chunk->len);
        c->w_->chunks().unref(chunk);
        c->flush_upstream();
        c->update_reading();
        return;
    }
    if (c->in_ != nullptr) {
        // Reading is stopped while input is pending; a read already in progress can still land.
        // Keep both by copying the smaller remainder into the new chunk's front is not possible
        // in place, so append to the pending chunk when it fits.
        Chunk* in = c->in_;
        size_t left = in->len - c->in_off_;
        if (in->refs == 1 && left + chunk->len <= Chunk::kSize) {
            std::memmove(in->data, in->data + c->in_off_, left);
            in->len = static_cast<uint32_t>(left);
            c->in_off_ = 0;
            std::memcpy(in->data + in->len, chunk->data, chunk->len);
            in->len += chunk->len;
            c->w_->chunks().unref(chunk);
        } else {
            c->w_->chunks().unref(chunk);
            c->respond_error(400, "pipelined requests exceed the input buffer");
            return;
        }
    } else {
        c->in_ = chunk;
        c->in_off_ = 0;
    }
    if (c->phase_ == ClientPhase::Body) {
        c->arm_timer(c->w_->options().upstream_timeout.count());
    }
    c->process_input();
}

void ClientConn::process_input() {
    while (!closed_ && in_ != nullptr && in_off_ < in_->len) {
        if (phase_ == ClientPhase::AwaitResponse || phase_ == ClientPhase::Tunnel ||
            phase_ == ClientPhase::Closing) {
            break; // a pipelined request waits for the response in progress
        }
        const char* start = in_->data + in_off_;
        size_t n = in_->len - in_off_;
        cur_ = in_;
        llhttp_errno_t err = llhttp_execute(&parser_, start, n);
        cur_ = nullptr;
        size_t used =
            err == HPE_OK ? n : static_cast<size_t>(llhttp_get_error_pos(&parser_) - start);
        in_off_ += static_cast<uint32_t>(used);
        if (closed_) {
            return;
        }
        if (err != HPE_OK && err != HPE_PAUSED && err != HPE_PAUSED_UPGRADE) {
            after_parse_error(err);
            return;
        }
        if (err == HPE_PAUSED) {
            llhttp_resume(&parser_);
        }
        if (need_upstream_) {
            need_upstream_ = false;
            start_upstream();
            if (closed_) {
                return;
            }
        }
        flush_upstream();
        if (closed_) {
            return;
        }
        if (err == HPE_PAUSED_UPGRADE || (err == HPE_PAUSED && req_upgrade_)) {
            break; // bytes after an upgrade request belong to the tunnel, if one opens
        }
    }
    if (in_ != nullptr && in_off_ >= in_->len) {
        w_->chunks().unref(in_);
        in_ = nullptr;
        in_off_ = 0;
    }
    update_reading();
}

void ClientConn::after_parse_error(llhttp_errno_t err) {
    int status = error_status_ != 0 ? error_status_ : 400;
    const char* reason = llhttp_get_error_reason(&parser_);
    if (resp_started_) {
        close_now();
        return;
    }
    (void)err;
    respond_error(status, !error_body_.empty() ? std::string_view(error_body_)
                          : reason != nullptr  ? std::string_view(reason)
                                               : std::string_view("malformed request"));
}

int ClientConn::check_head_size(size_t more) {
    if (head_ == nullptr) {
        head_ = w_->take_head();
    }
    if (head_->size() + more > w_->options().max_header_size) {
        error_status_ = 431;
        return -1;
    }
    return 0;
}

int ClientConn::on_message_begin(llhttp_t* p) {
    auto* c = client_of(p);
    c->begin_request();
    return 0;
}

void ClientConn::begin_request() {
    reset_request();
    head_ = w_->take_head();
    start_ns_ = uv_hrtime();
    set_phase(ClientPhase::Head);
}

int ClientConn::on_method(llhttp_t* p, const char* at, size_t len) {
    auto* c = client_of(p);
    if (c->check_head_size(len) != 0) {
        return -1;
    }
    c->head_->add_method({at, len});
    return 0;
}

int ClientConn::on_url(llhttp_t* p, const char* at, size_t len) {
    auto* c = client_of(p);
    if (c->check_head_size(len) != 0) {
        return -1;
    }
    c->head_->add_url({at, len});
    return 0;
}

int ClientConn::on_header_field(llhttp_t* p, const char* at, size_t len) {
    auto* c = client_of(p);
    if (c->check_head_size(len + 4) != 0) {
        return -1;
    }
    c->head_->add_field({at, len});
    return 0;
}

int ClientConn::on_header_value(llhttp_t* p, const char* at, size_t len) {
    auto* c = client_of(p);
    if (c->check_head_size(len) != 0) {
        return -1;
    }
    c->head_->add_value({at, len});
    return 0;
}

int ClientConn::on_headers_complete(llhttp_t* p) {
    auto* c = client_of(p);
    Worker* w = c->w_;
    const RouterOptions& o = w->options();
    if (c->head_ == nullptr) {
        c->head_ = w->take_head();
    }
    // The request line names the request in warnings too, so it is kept even without an access
    // log (the string keeps its capacity: no allocation per request).
    auto& line = c->log_req_;
    line.clear();
    line.append(c->head_->method()).append(" ").append(c->head_->url());
    line.append(p->http_minor == 0 ? " HTTP/1.0" : " HTTP/1.1");
    const http::RequestHeaders checked = http::scan_request_headers(*c->head_);
    if (w->access_logging()) {
        auto& a = c->log_agent_;
        a.clear();
        a.append(" \"").append(checked.referer.empty() ? "-" : checked.referer).append("\" \"");
        a.append(checked.user_agent.empty() ? "-" : checked.user_agent).append("\"");
    }
    if (p->http_major != 1) {
        // HTTP/0.9 has no headers to route or frame by; HTTP/2+ does not start like this.
        c->error_status_ = p->http_major == 0 ? 400 : 505;
        return -1;
    }
    if (p->method == HTTP_CONNECT) {
        c->error_status_ = 405;
        return -1;
    }
    const bool has_host = checked.hosts > 0;
    const http::RequestTarget target = http::request_target(c->head_->url(), checked.host);
    if (!target.valid || (p->http_minor >= 1 && !has_host && !target.absolute) ||
        checked.hosts > 1) {
        // RFC 9112 3.2: an HTTP/1.1 request needs exactly one Host (an absolute URI carries
        // its own, as nginx accepts too), and an absolute URI needs a host.
        c->error_status_ = 400;
        c->error_body_.assign(!target.valid ? "the request target has no host"
                              : has_host    ? "more than one Host header"
                                            : "no Host header");
        return -1;
    }
    // Route first: a request nobody serves is answered without building anything.
    c->snap_ = w->routes();
    const std::string_view host = target.host;
    const RouteEntry* route =
        c->snap_->table.match(host, target.slash_before ? std::string_view("/") : target.path);
    if (route == nullptr) {
        c->error_status_ = 404;
        c->error_body_.assign("no app serves host '").append(host).append("'");
        return -1;
    }
    c->pool_ = c->snap_->pools[route->index].get();
    c->pool_->stats->in_flight.fetch_add(1, std::memory_order_relaxed);
    c->req_chunked_ = (p->flags & F_CHUNKED) != 0;
    if (checked.transfer_encoding && !c->req_chunked_) {
        // llhttp refuses other codings but lets an empty Transfer-Encoding through; a backend
        // could frame such a request differently from us, so it goes nowhere.
        c->error_status_ = 400;
        c->error_body_.assign("Transfer-Encoding without chunked");
        return -1;
    }
    c->req_has_body_ = c->req_chunked_ || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);
    if (o.max_body_size != 0 && (p->flags & F_CONTENT_LENGTH) &&
        p->content_length > o.max_body_size) {
        c->error_status_ = 413;
        return -1;
    }
    c->req_upgrade_ = p->upgrade != 0;
    c->req_keep_alive_ = llhttp_should_keep_alive(p) != 0;
    std::string_view method = c->head_->method();
    c->req_idempotent_ = http::is_idempotent(method);
    c->req_is_head_method_ = p->method == HTTP_HEAD;

    Chunk* out = w->chunks().get();
    http::RequestForward fwd;
    fwd.client_ip = c->peer_;
    fwd.upgrade = c->req_upgrade_;
    fwd.target = &target;
    size_t n = http::write_request_head(*c->head_, fwd, out->data, Chunk::kSize);
    if (n == 0) {
        w->chunks().unref(out);
        c->error_status_ = 431;
        return -1;
    }
    out->len = static_cast<uint32_t>(n);
    c->req_head_ = out;
    c->req_head_len_ = static_cast<uint32_t>(n);
    c->out_up_.add(out, out->data, n);

    w->return_head(c->head_);
    c->head_ = nullptr;
    c->need_upstream_ = true;
    c->set_phase(ClientPhase::Body);
    return 0;
}

int ClientConn::on_body(llhttp_t* p, const char* at, size_t len) {
    auto* c = client_of(p);
    c->body_bytes_ += len;
    uint64_t limit = c->w_->options().max_body_size;
    if (limit != 0 && c->body_bytes_ > limit) {
        c->error_status_ = 413;
        return -1;
    }
    if (c->req_chunked_) {
        c->out_up_.add_chunk(c->cur_, at, len);
    } else {
        c->out_up_.add(c->cur_, at, len);
    }
    return 0;
}

int ClientConn::on_message_complete(llhttp_t* p) {
    auto* c = client_of(p);
    if (c->req_chunked_) {
        c->out_up_.add_copy("0\r\n\r\n", 5);
    }
    c->req_done_ = true;
    if (c->resp_done_) {
        return HPE_PAUSED; // the response already ended (an early answer); finish_exchange runs
    }
    c->set_phase(ClientPhase::AwaitResponse);
    if (c->up_ != nullptr && c->up_->connected()) {
        c->up_->arm_response_timer();
    }
    return HPE_PAUSED;
}

void ClientConn::leave_pool() {
    if (pool_ != nullptr) {
        pool_->stats->in_flight.fetch_sub(1, std::memory_order_relaxed);
        pool_ = nullptr;
    }
    snap_.reset();
}

void ClientConn::record_response(bool router_error) {
    w_->requests_.fetch_add(1, std::memory_order_relaxed);
    w_->shared().requests.fetch_add(1, std::memory_order_relaxed);
    if (pool_ != nullptr) {
        pool_->stats->record(status_, static_cast<double>(uv_hrtime() - start_ns_) / 1e6);
        if (router_error) {
            pool_->stats->router_errors.fetch_add(1, std::memory_order_relaxed);
        }
    }
}

void ClientConn::reset_request() {
    leave_pool();
    error_body_.clear();
    if (req_head_ != nullptr) {
        w_->chunks().unref(req_head_);
        req_head_ = nullptr;
    }
    req_head_len_ = 0;
    body_bytes_ = 0;
    req_chunked_ = req_has_body_ = req_idempotent_ = req_keep_alive_ = false;
    req_upgrade_ = req_is_head_method_ = req_done_ = body_sent_ = need_upstream_ = false;
    error_status_ = 0;
    tried_ = 0;
    tries_ = 0;
    resp_started_ = resp_flushed_ = resp_done_ = resp_rechunk_ = resp_close_ = false;
    status_ = 0;
    resp_bytes_ = 0;
    up_start_ns_ = up_time_ns_ = 0;
    last_backend_.clear();
    log_req_.clear();
    log_agent_.clear();
}

void ClientConn::start_upstream() {
    Worker* w = w_;
    up_bytes_ = 0; // a new attempt: nothing of the request has gone to it yet
    Balancer& bal = const_cast<Pool*>(pool_)->balancer;
    const unsigned max_tries = w->options().max_tries;
    while (!closed_) {
        if (tries_ >= max_tries) {
            respond_error(502, "no backend could take the request");
            return;
        }
        int idx = bal.pick(tried_, steady_now_ms());
        if (idx < 0) {
            if (tried_ != 0) {
                respond_error(502, "every backend tried failed");
            } else {
                respond_error(503, "no backend is available");
            }
            return;
        }
        tried_ |= (idx < 64 ? (1ull << idx) : 0);
        ++tries_;
        const std::shared_ptr<Backend>& bep = bal.backends()[static_cast<size_t>(idx)];
        Backend& be = *bep;
        be_ = &be;
        be_idx_ = idx;
        be.in_flight.fetch_add(1, std::memory_order_relaxed);
        be.requests.fetch_add(1, std::memory_order_relaxed);
        last_backend_ = be.name;
        up_start_ns_ = uv_hrtime();
        if (Upstream* idle = w->take_idle(&be)) {
            up_ = idle;
            idle->attach(this);
            write_pending_upstream();
            if (req_done_ && up_ != nullptr) {
                up_->arm_response_timer();
            }
            return;
        }
        int err = 0;
        up_ = Upstream::connect(w, bep, this, &err);
        if (up_ != nullptr) {
            return;
        }
        if (no_socket(err)) {
            respond_error(503, failure_text(UpstreamFailure::NoSocket)); // releases the backend
            return;
        }
        w->shared().release_backend(be);
        be_ = nullptr;
        be_idx_ = -1;
        int64_t cool = be.mark_failed(steady_now_ms());
        spdlog::warn("backend {} connect failed: {}; down for {} ms", be.name, uv_strerror(err),
                     cool);
    }
}

void ClientConn::flush_upstream() {
    if (out_up_.empty()) {
        return;
    }
    WriteOp* ops = out_up_.take();
    if (pending_tail_ != nullptr) {
        pending_tail_->next = ops;
    } else {
        pending_ = ops;
    }
    while (ops->next != nullptr) {
        ops = ops->next;
    }
    pending_tail_ = ops;
    if (up_ != nullptr && up_->connected()) {
        write_pending_upstream();
    }
}

void ClientConn::drop_upstream_output() {
    w_->ops().put_list(pending_, w_->chunks());
    pending_ = pending_tail_ = nullptr;
    w_->ops().put_list(out_up_.take(), w_->chunks());
}

void ClientConn::write_pending_upstream() {
    if (pending_ == nullptr || up_ == nullptr) {
        return;
    }
    WriteOp* ops = pending_;
    pending_ = pending_tail_ = nullptr;
    // The head goes first; any byte beyond it is body (or body framing, e.g. the last chunk):
    // once one is written the request cannot be replayed. Counted in bytes, since a small body
    // piece shares the head's write.
    for (WriteOp* op = ops; op != nullptr; op = op->next) {
        up_bytes_ += op->bytes;
    }
    if (up_bytes_ > req_head_len_) {
        body_sent_ = true;
    }
    up_->write(ops);
}

void ClientConn::upstream_connected() {
    if (closed_) {
        return;
    }
    write_pending_upstream();
    if (req_done_ && up_ != nullptr) {
        up_->arm_response_timer();
    }
    process_input();
}

void ClientConn::upstream_failed(UpstreamFailure why) {
    if (closed_) {
        return;
    }
    Upstream* up = up_;
    const int failed_idx = be_idx_;
    const bool fresh = up != nullptr && !up->reused();
    const bool answered = up != nullptr && up->got_response_bytes();
    const bool connect_phase =
        why == UpstreamFailure::Connect || why == UpstreamFailure::ConnectTimeout;
    if (be_ != nullptr) {
        Backend& be = *be_;
        w_->shared().release_backend(be);
        // A backend that answered is up, even if this answer broke off: only a connection that
        // failed before any response byte counts against it (as nginx's max_fails counts).
        if (connect_phase || (why == UpstreamFailure::Reset && fresh && !answered)) {
            int64_t cool = be.mark_failed(steady_now_ms());
            spdlog::warn("backend {} {}; down for {} ms", be.name, failure_text(why), cool);
        } else if (answered && resp_flushed_) {
            spdlog::warn("backend {}: {} in the middle of the response to {} \"{}\"; closing the "
                         "client connection",
                         be.name,
                         why == UpstreamFailure::Reset ? "connection closed" : failure_text(why),
                         peer_, log_req_.empty() ? std::string_view("-") : log_req_);
        }
        be_ = nullptr;
        be_idx_ = -1;
    }
    up_ = nullptr;
    if (up != nullptr) {
        up->client_ = nullptr;
        up->close();
    }
    if (phase_ == ClientPhase::Tunnel) {
        close_after_writes();
        return;
    }
    if (resp_started_ && resp_flushed_) {
        close_now(); // the response is cut short; the client sees the connection end
        return;
    }
    if (resp_started_) {
        // Its head is only queued: no byte of it reached the client, which gets a 502 instead.
        w_->ops().put_list(out_client_.take(), w_->chunks());
        resp_started_ = resp_rechunk_ = resp_done_ = false;
        resp_bytes_ = 0;
    }
    bool retry = false;
    if (connect_phase) {
        retry = true; // nothing was written: the pending writes are still queued
    } else if (why == UpstreamFailure::Reset && !body_sent_ && req_idempotent_ &&
               req_head_ != nullptr) {
        // The request head reached the backend but no byte came back: replay it elsewhere.
        Output again(w_->ops(), w_->chunks());
        again.add(req_head_, req_head_->data, req_head_len_);
        WriteOp* ops = again.take();
        WriteOp* tail = ops;
        while (tail->next != nullptr) {
            tail = tail->next;
        }
        tail->next = pending_;
        pending_ = ops;
        if (pending_tail_ == nullptr) {
            pending_tail_ = tail;
        }
        retry = true;
    }
    if (retry && tries_ < w_->options().max_tries) {
        // A reused pooled connection that went stale is no fault of the backend: same one is fine.
        if (!connect_phase && !fresh && failed_idx >= 0 && failed_idx < 64) {
            tried_ &= ~(1ull << failed_idx);
        }
        start_upstream();
        return;
    }
    if (why == UpstreamFailure::Timeout || why == UpstreamFailure::SendTimeout) {
        respond_error(504, failure_text(why));
    } else if (why == UpstreamFailure::NoSocket) {
        respond_error(503, failure_text(why));
    } else {
        respond_error(502, failure_text(why));
    }
}

int ClientConn::response_headers(Upstream* up) {
    llhttp_t* p = &up->parser_;
    const int status = p->status_code;
    http::HeadCollector* head = up->head_;
    Chunk* out = w_->chunks().get();
    http::ResponseForward fwd;
    fwd.status = status;
    const bool client_10 = parser_.http_major == 1 && parser_.http_minor == 0;
    if (status >= 100 && status < 200 && status != 101) {
        // Interim response (100 Continue, 103 Early Hints): pass it on, the final one follows.
        // Never to an HTTP/1.0 client, which cannot tell it from the final one (RFC 9110 15.2).
        size_t n = client_10 ? 0 : http::write_response_head(*head, fwd, out->data, Chunk::kSize);
        if (n != 0) {
            out_client_.add(out, out->data, n);
        }
        w_->chunks().unref(out);
        return 0;
    }
    if (status == 101 && !req_upgrade_) {
        w_->chunks().unref(out);
        spdlog::warn("backend {}: 101 Switching Protocols to a request that asked for no upgrade",
                     up->backend()->name);
        return -1; // a malformed response: 502, and no tunnel
    }
    if (be_ != nullptr) {
        be_->mark_ok();
        if (status >= 100 && status < 600) {
            be_->responses[status / 100].fetch_add(1, std::memory_order_relaxed);
        }
    }
    up_time_ns_ = uv_hrtime() - up_start_ns_;
    status_ = status;
    const bool upgrade = status == 101;
    const bool has_length = (p->flags & F_CONTENT_LENGTH) != 0;
    const bool chunked = (p->flags & F_CHUNKED) != 0;
    const bool no_body = req_is_head_method_ || status == 204 || status == 304 || upgrade;
    const bool close_delimited = !no_body && !has_length && !chunked;
    // A close-delimited body under some other transfer coding (gzip; or chunked, not last) is
    // passed on as it is, ended by the close: chunking it again could apply chunked twice.
    bool coded = false;
    if (close_delimited) {
        head->find("transfer-encoding", &coded);
    }
    // The body's framing to the client: a length stays as it is; a chunked or close-delimited
    // body is chunked to an HTTP/1.1 client (decoded and encoded again, so a backend's chunk
    // extensions and trailers stop here) and sent bare, ended by the close, to an HTTP/1.0 one,
    // which gets no chunked coding even on a bodyless response.
    resp_rechunk_ = !no_body && !client_10 && (chunked || (close_delimited && !coded));
    resp_close_ = !req_keep_alive_ || draining_ || w_->shutting_down() || !req_done_ ||
                  (!no_body && !has_length && (client_10 || coded)) || (req_upgrade_ && !upgrade);
    if (close_delimited && !coded && !client_10) {
        fwd.framing = http::BodyFraming::AddChunked;
    } else if (chunked && client_10) {
        fwd.framing = http::BodyFraming::RemoveChunked;
    }
    fwd.close = resp_close_ && !upgrade;
    fwd.keep_alive_10 = client_10 && !resp_close_;
    fwd.upgrade = upgrade;
    size_t n = http::write_response_head(*head, fwd, out->data, Chunk::kSize);
    if (n == 0) {
        w_->chunks().unref(out);
        return -1;
    }
    out_client_.add(out, out->data, n);
    w_->chunks().unref(out);
    resp_started_ = true;
    resp_bytes_ += n;
    // The request can no longer be replayed; its head is no longer needed.
    if (req_head_ != nullptr) {
        w_->chunks().unref(req_head_);
        req_head_ = nullptr;
    }
    if (upgrade) {
        return 2; // llhttp: no body, the rest is the tunnel
    }
    if (no_body) {
        // llhttp: headers only. It knows that of a HEAD response only from us, and would wait
        // for a 204's or 304's announced Content-Length or chunks, which never come.
        return 1;
    }
    return 0;
}

void ClientConn::response_body(const char* data, size_t len) {
    resp_bytes_ += len;
    if (resp_rechunk_) {
        out_client_.add_chunk(up_cur_, data, len);
    } else {
        out_client_.add(up_cur_, data, len);
    }
}

void ClientConn::response_complete() {
    if (resp_rechunk_) {
        out_client_.add_copy("0\r\n\r\n", 5);
    }
    resp_done_ = true;
}

void ClientConn::upstream_data_done(Upstream* up, const char* rest, size_t rest_len, bool upgrade) {
    if (closed_) {
        return;
    }
    flush_client();
    if (closed_) {
        return;
    }
    if (upgrade && status_ == 101) {
        start_tunnel(rest, rest_len);
        return;
    }
    if (resp_done_) {
        (void)up;
        finish_exchange();
    }
}

void ClientConn::flush_client() {
    if (out_client_.empty() || closed_) {
        return;
    }
    if (resp_started_) {
        resp_flushed_ = true;
    }
    WriteOp* ops = out_client_.take();
    while (ops != nullptr) {
        WriteOp* next = ops->next;
        ops->next = nullptr;
        ops->owner = this;
        ops->req.data = ops;
        if (closed_) {
            w_->ops().put(ops, w_->chunks());
        } else if (send_op(w_, &sock_.stream, ops, on_write) < 0) {
            close_now();
        }
        ops = next;
    }
    if (!closed_) {
        update_out_blocked();
    }
}

bool ClientConn::writing_blocked() const {
    return out_blocked_;
}

size_t ClientConn::bytes_not_taken() const {
    size_t n = uv_stream_get_write_queue_size(&sock_.stream);
    // The kernel's send queue as well: a client that reads slowly drains it long before libuv
    // may write again (the socket turns writable only once a third of its buffer is free).
    uv_os_fd_t fd = -1;
    int in_kernel = 0;
    if (uv_fileno(&sock_.handle, &fd) == 0 && ::ioctl(fd, SIOCOUTQ, &in_kernel) == 0 &&
        in_kernel > 0) {
        n += static_cast<size_t>(in_kernel);
    }
    return n;
}

bool ClientConn::took_bytes_since_last_check() {
    const size_t left = bytes_not_taken();
    const bool took = left < blocked_left_;
    blocked_left_ = left;
    return took;
}

void ClientConn::update_out_blocked() {
    const size_t queued = uv_stream_get_write_queue_size(&sock_.stream);
    if (!out_blocked_ && queued > kHighWater) {
        out_blocked_ = true;
        blocked_left_ = bytes_not_taken();
    } else if (out_blocked_ && queued < kLowWater) {
        out_blocked_ = false;
    }
}

void ClientConn::on_write(uv_write_t* req, int status) {
    auto* op = static_cast<WriteOp*>(req->data);
    auto* c = static_cast<ClientConn*>(op->owner);
    c->w_->ops().put(op, c->w_->chunks());
    if (c->closed_) {
        return;
    }
    if (status < 0) {
        c->close_now();
        return;
    }
    if (c->phase_ == ClientPhase::Closing && !c->fin_sent_) {
        c->set_phase(ClientPhase::Closing); // the client took a write: its clock starts again
    }
    const bool was_blocked = c->out_blocked_;
    c->update_out_blocked();
    if (c->up_ == nullptr) {
        return;
    }
    if (was_blocked && !c->out_blocked_) {
        c->up_->update_reading();
    }
}

void ClientConn::finish_exchange() {
    const bool reusable = up_ != nullptr && up_->reusable() && req_done_;
    release_upstream(reusable);
    record_response(false);
    log_access();
    const bool close = resp_close_;
    if (head_ != nullptr) {
        w_->return_head(head_);
        head_ = nullptr;
    }
    reset_request();
    first_request_ = false;
    if (close || draining_ || w_->shutting_down()) {
        close_after_writes();
        return;
    }
    set_phase(ClientPhase::Idle);
    if (in_ != nullptr) {
        process_input(); // a pipelined request was waiting
    } else {
        update_reading();
    }
}

void ClientConn::release_upstream(bool reusable) {
    if (be_ != nullptr) {
        w_->shared().release_backend(*be_);
        be_ = nullptr;
        be_idx_ = -1;
    }
    Upstream* up = up_;
    up_ = nullptr;
    if (up == nullptr) {
        return;
    }
    up->client_ = nullptr;
    if (reusable) {
        up->detach_to_pool();
    } else {
        up->close();
    }
}

void ClientConn::log_access() {
    AccessLog* target = w_->access_log_for(pool_);
    if (target == nullptr) {
        return;
    }
    AccessLog& log = *target;
    // Combined log format, then total time, upstream time and backend.
    std::string& b = log.buffer();
    const uint64_t now = uv_hrtime();
    char num[96];
    b.append(peer_).append(" - - ").append(log.timestamp()).append(" \"");
    b.append(log_req_.empty() ? std::string_view("-") : std::string_view(log_req_));
    int n = std::snprintf(num, sizeof(num), "\" %d %llu", status_,
                          static_cast<unsigned long long>(resp_bytes_));
    b.append(num, static_cast<size_t>(n));
    b.append(log_agent_.empty() ? std::string_view(" \"-\" \"-\"") : std::string_view(log_agent_));
    if (pool_ != nullptr) {
        b.append(" vassal=").append(pool_->vassal);
        n = std::snprintf(num, sizeof(num), " gen=%llu",
                          static_cast<unsigned long long>(pool_->generation));
        b.append(num, static_cast<size_t>(n));
    }
    n = std::snprintf(num, sizeof(num),
                      " rt=%.3f urt=%.3f backend=", static_cast<double>(now - start_ns_) / 1e9,
                      static_cast<double>(up_time_ns_) / 1e9);
    b.append(num, static_cast<size_t>(n));
    b.append(last_backend_.empty() ? std::string_view("-") : std::string_view(last_backend_));
    b.push_back('\n');
    log.maybe_flush();
}

void ClientConn::respond_error(int status, std::string_view detail) {
    if (closed_) {
        return;
    }
    if (up_ != nullptr || be_ != nullptr) {
        release_upstream(false);
    }
    // Anything queued for an upstream is moot now.
    drop_upstream_output();
    status_ = status;
    std::string_view reason = http::reason_phrase(status);
    Chunk* c = w_->chunks().get();
    const std::string_view extra = error_body_;
    const size_t body_len = 3 + 1 + reason.size() + 1 + (extra.empty() ? 0 : extra.size() + 1);
    int n = std::snprintf(c->data, Chunk::kSize,
                          "HTTP/1.1 %d %.*s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                          "Content-Length: %zu\r\nConnection: close\r\n\r\n%d %.*s\n%.*s%s",
                          status, static_cast<int>(reason.size()), reason.data(), body_len, status,
                          static_cast<int>(reason.size()), reason.data(),
                          static_cast<int>(extra.size()), extra.data(), extra.empty() ? "" : "\n");
    c->len = static_cast<uint32_t>(n);
    out_client_.add(c, c->data, c->len);
    w_->chunks().unref(c);
    resp_bytes_ = c->len;
    spdlog::warn("{} {} for {} \"{}\": {}", status, reason, peer_,
                 log_req_.empty() ? std::string_view("-") : std::string_view(log_req_), detail);
    flush_client();
    if (closed_) {
        return;
    }
    resp_started_ = true;
    record_response(status == 502 || status == 503 || status == 504);
    log_access();
    close_after_writes();
}

void ClientConn::close_after_writes() {
    if (closed_ || shutting_down_) {
        return;
    }
    if (up_ != nullptr || be_ != nullptr) {
        release_upstream(false);
    }
    set_phase(ClientPhase::Closing);
    shutting_down_ = true;
    shutdown_req_.data = this;
    // uv_shutdown waits for queued writes, then sends FIN; we keep reading (and discarding) until
    // the client closes or the linger timer ends, so unread input cannot turn into a reset that
    // destroys the response on its way.
    if (uv_shutdown(&shutdown_req_, &sock_.stream, on_shutdown) != 0) {
        close_now();
        return;
    }
    if (!reading_) {
        uv_read_start(&sock_.stream, on_alloc, on_read);
        reading_ = true;
    }
}

void ClientConn::on_shutdown(uv_shutdown_t* req, int status) {
    auto* c = static_cast<ClientConn*>(req->data);
    if (c->closed_) {
        return;
    }
    if (status < 0 || c->client_eof_) {
        c->close_now();
        return;
    }
    c->fin_sent_ = true; // every byte of the response is out
    if (c->phase_ == ClientPhase::Closing) {
        c->set_phase(ClientPhase::Closing); // now the linger
    }
}

void ClientConn::upstream_wrote() {
    if (!closed_ && phase_ == ClientPhase::Body) {
        // The backend is taking the body: time between client reads starts again too, so a
        // backend that reads slowly is not blamed on the client.
        arm_timer(w_->options().upstream_timeout.count());
    }
    update_reading();
}

void ClientConn::start_tunnel(const char* rest, size_t rest_len) {
    set_phase(ClientPhase::Tunnel);
    if (up_ != nullptr) {
        up_->start_tunnel();
        if (rest_len > 0 && up_cur_ != nullptr) {
            out_client_.add(up_cur_, rest, rest_len);
            flush_client();
        }
    }
    if (closed_) {
        return;
    }
    // Bytes the client sent after its upgrade request go through now.
    if (in_ != nullptr && in_off_ < in_->len) {
        out_up_.add(in_, in_->data + in_off_, in_->len - in_off_);
    }
    if (in_ != nullptr) {
        w_->chunks().unref(in_);
        in_ = nullptr;
        in_off_ = 0;
    }
    flush_upstream();
    update_reading();
}

void ClientConn::tunnel_from_upstream(Chunk* c, const char* data, size_t len) {
    out_client_.add(c, data, len);
    flush_client();
}

void ClientConn::upstream_eof() {
    // Tunnel: the backend finished sending; pass the half-close on.
    if (closed_) {
        return;
    }
    if (client_eof_) {
        close_after_writes();
        return;
    }
    if (!shutting_down_) {
        shutting_down_ = true;
        shutdown_req_.data = this;
        if (uv_shutdown(&shutdown_req_, &sock_.stream, on_shutdown) != 0) {
            close_now();
        }
    }
}

void ClientConn::update_reading() {
    if (closed_) {
        return;
    }
    bool want = false;
    switch (phase_) {
    case ClientPhase::Idle:
    case ClientPhase::Head:
        want = in_ == nullptr && !client_eof_;
        break;
    case ClientPhase::Body:
    case ClientPhase::Tunnel:
        if (up_ != nullptr && up_->connected()) {
            if (!up_paused_ && up_->write_queue_high()) {
                up_paused_ = true;
            } else if (up_paused_ && uv_stream_get_write_queue_size(up_->stream()) < kLowWater) {
                up_paused_ = false;
            }
            want = !up_paused_ && in_ == nullptr && !client_eof_;
        }
        break;
    case ClientPhase::AwaitResponse:
        want = in_ == nullptr && !client_eof_;
        break;
    case ClientPhase::Closing:
        want = !client_eof_; // read and discard until the client closes
        break;
    }
    if (want && !reading_) {
        if (uv_read_start(&sock_.stream, on_alloc, on_read) == 0) {
            reading_ = true;
        }
    } else if (!want && reading_) {
        uv_read_stop(&sock_.stream);
        reading_ = false;
    }
}

void ClientConn::drain() {
    draining_ = true;
    if (idle()) {
        close_now();
    }
}

void ClientConn::close_now() {
    if (closed_) {
        return;
    }
    closed_ = true;
    if (up_ != nullptr || be_ != nullptr) {
        const bool reusable = up_ != nullptr && up_->reusable() && resp_done_ && req_done_;
        release_upstream(reusable);
    }
    drop_upstream_output();
    w_->ops().put_list(out_client_.take(), w_->chunks());
    if (in_ != nullptr) {
        w_->chunks().unref(in_);
        in_ = nullptr;
    }
    if (req_head_ != nullptr) {
        w_->chunks().unref(req_head_);
        req_head_ = nullptr;
    }
    if (head_ != nullptr) {
        w_->return_head(head_);
        head_ = nullptr;
    }
    leave_pool();
    close_handles(sock_, timer_, on_close);
}

void ClientConn::on_close(uv_handle_t* h) {
    auto* c = static_cast<ClientConn*>(h->data);
    if (--c->handles_open_ > 0) {
        return;
    }
    Worker* w = c->w_;
    w->client_closed(c);
    delete c;
}

// ---------------------------------------------------------------------------------------------
// Upstream leg
// ---------------------------------------------------------------------------------------------

const llhttp_settings_t* Upstream::settings() {
    static const llhttp_settings_t s = [] {
        llhttp_settings_t v = message_settings(on_message_begin, on_header_field, on_header_value,
                                               on_headers_complete, on_body, on_message_complete);
        v.on_status = on_status;
        return v;
    }();
    return &s;
}

Upstream* Upstream::connect(Worker* w, const std::shared_ptr<Backend>& backend, ClientConn* client,
                            int* err) {
    const Backend& be = *backend;
    auto* up = new Upstream(w, backend);
    up->is_unix_ = be.address.is_unix();
    up->client_ = client;
    int rc = init_stream(w->loop(), up->sock_, up->is_unix_);
    if (rc != 0) {
        delete up;
        *err = rc;
        return nullptr;
    }
    up->handles_open_++;
    uv_timer_init(w->loop(), &up->timer_);
    up->handles_open_++;
    up->sock_.handle.data = up;
    up->timer_.data = up;
    up->connect_req_.data = up;
    w->upstreams_open_++;
    if (up->is_unix_) {
        uv_pipe_connect(&up->connect_req_, &up->sock_.pipe, be.address.path.c_str(), on_connect);
    } else {
        uv_tcp_nodelay(&up->sock_.tcp, 1);
        rc = uv_tcp_connect(&up->connect_req_, &up->sock_.tcp,
                            reinterpret_cast<const sockaddr*>(&be.sockaddr), on_connect);
        if (rc != 0) {
            up->client_ = nullptr;
            up->close();
            *err = rc;
            return nullptr;
        }
    }
    llhttp_init(&up->parser_, HTTP_RESPONSE, settings());
    up->parser_.data = up;
    up->state_ = UpstreamState::Connecting;
    up->arm_timer(static_cast<uint64_t>(w->options().connect_timeout.count()));
    return up;
}

void Upstream::on_connect(uv_connect_t* req, int status) {
    auto* up = static_cast<Upstream*>(req->data);
    if (up->closed_) {
        return;
    }
    ClientConn* c = up->client_;
    if (status < 0) {
        spdlog::debug("backend {}: connect: {}", up->be_->name, uv_strerror(status));
        if (c != nullptr) {
            // A unix socket's socket() failure arrives here rather than from uv_pipe_connect.
            c->upstream_failed(no_socket(status) ? UpstreamFailure::NoSocket
                                                 : UpstreamFailure::Connect);
        } else {
            up->close();
        }
        return;
    }
    up->state_ = UpstreamState::Active;
    up->deadline_.clear();
    up->update_reading();
    if (c != nullptr) {
        c->upstream_connected();
    } else {
        up->close();
    }
}

void Upstream::attach(ClientConn* c) {
    client_ = c;
    reused_ = true;
    state_ = UpstreamState::Active;
    got_bytes_ = false;
    message_done_ = false;
    response_timer_ = false;
    deadline_.clear();
    llhttp_init(&parser_, HTTP_RESPONSE, settings());
    parser_.data = this;
    update_reading();
}

bool Upstream::reusable() const {
    return !closed_ && !eof_ && !tunnel_ && message_done_ && writes_in_flight_ == 0 &&
           llhttp_should_keep_alive(&parser_) != 0 && state_ == UpstreamState::Active;
}

void Upstream::detach_to_pool() {
    client_ = nullptr;
    state_ = UpstreamState::Idle;
    response_timer_ = false;
    if (head_ != nullptr) {
        w_->return_head(head_);
        head_ = nullptr;
    }
    if (w_->shutting_down()) {
        close();
        return;
    }
    arm_timer(static_cast<uint64_t>(w_->options().upstream_idle_timeout.count()));
    update_reading();
    w_->park_idle(this);
}

void Upstream::write(WriteOp* ops) {
    bool failed = false;
    while (ops != nullptr) {
        WriteOp* next = ops->next;
        ops->next = nullptr;
        ops->owner = this;
        ops->req.data = ops;
        int rc = closed_ ? UV_ECANCELED : send_op(w_, &sock_.stream, ops, on_write);
        if (rc == 0) {
            ++writes_in_flight_;
        } else if (rc == UV_ECANCELED) {
            w_->ops().put(ops, w_->chunks());
        } else if (rc < 0 && !failed) {
            failed = true;
        }
        ops = next;
    }
    if (failed) {
        // Reported from the loop, not from inside the caller's write.
        write_failed_ = true;
        arm_timer(0);
    }
}

bool Upstream::write_queue_high() const {
    return uv_stream_get_write_queue_size(&sock_.stream) > kHighWater;
}

void Upstream::on_write(uv_write_t* req, int status) {
    auto* op = static_cast<WriteOp*>(req->data);
    auto* up = static_cast<Upstream*>(op->owner);
    up->w_->ops().put(op, up->w_->chunks());
    --up->writes_in_flight_;
    if (up->closed_) {
        return;
    }
    ClientConn* c = up->client_;
    if (status < 0) {
        if (c != nullptr) {
            c->upstream_failed(UpstreamFailure::Reset);
        } else {
            up->close();
        }
        return;
    }
    if (c != nullptr) {
        c->upstream_wrote();
    }
}

void Upstream::arm_timer(uint64_t ms) {
    deadline_.set(&timer_, ms, on_timer);
}

void Upstream::arm_response_timer() {
    response_timer_ = true;
    arm_timer(static_cast<uint64_t>(w_->options().upstream_timeout.count()));
}

void Upstream::stop_timer() {
    response_timer_ = false;
    deadline_.clear();
}

void Upstream::on_timer(uv_timer_t* t) {
    auto* up = static_cast<Upstream*>(t->data);
    if (up == nullptr || up->closed_ || !up->deadline_.expired(t, on_timer)) {
        return;
    }
    ClientConn* c = up->client_;
    if (up->write_failed_) {
        if (c != nullptr) {
            c->upstream_failed(UpstreamFailure::Reset);
        } else {
            up->close();
        }
        return;
    }
    switch (up->state_) {
    case UpstreamState::Connecting:
        if (c != nullptr) {
            c->upstream_failed(UpstreamFailure::ConnectTimeout);
        } else {
            up->close();
        }
        break;
    case UpstreamState::Active:
        if (c != nullptr && c->writing_blocked() && c->took_bytes_since_last_check()) {
            // A slow download, not a stalled one: progress, however little, counts (as nginx's
            // send_timeout runs between two writes, not for the whole response).
            up->arm_response_timer();
        } else if (c != nullptr && c->writing_blocked()) {
            // Reading from the backend waits for the client, which took none of the response
            // in that time: the client is cut off, the backend is not to blame.
            spdlog::warn("client {} took no byte of the response to \"{}\" for {} ms; closing",
                         c->peer_, c->log_req_, up->w_->options().upstream_timeout.count());
            c->close_now();
        } else if (c != nullptr) {
            c->upstream_failed(UpstreamFailure::Timeout);
        } else {
            up->close();
        }
        break;
    default:
        up->close(); // idle too long in the pool
        break;
    }
}

void Upstream::update_reading() {
    if (closed_ || state_ == UpstreamState::Connecting) {
        return;
    }
    bool want = true;
    if (state_ == UpstreamState::Active && client_ != nullptr) {
        want = !client_->writing_blocked() && !eof_;
    }
    if (want && !reading_) {
        if (uv_read_start(&sock_.stream, on_alloc, on_read) == 0) {
            reading_ = true;
        }
    } else if (!want && reading_) {
        uv_read_stop(&sock_.stream);
        reading_ = false;
    }
}

void Upstream::on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
    auto* up = static_cast<Upstream*>(h->data);
    Chunk* chunk = up->w_->chunks().get();
    *buf = uv_buf_init(chunk->data, Chunk::kSize);
}

void Upstream::on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
    auto* up = static_cast<Upstream*>(s->data);
    Chunk* chunk = buf->base != nullptr ? Chunk::from_data(buf->base) : nullptr;
    if (nread <= 0 || up->closed_) {
        if (chunk != nullptr) {
            up->w_->chunks().unref(chunk);
        }
        if (nread == 0 || up->closed_) {
            return;
        }
        ClientConn* c = up->client_;
        up->eof_ = true;
        if (c == nullptr || up->state_ == UpstreamState::Idle) {
            up->close(); // a pooled connection the backend closed
            return;
        }
        if (up->tunnel_) {
            uv_read_stop(&up->sock_.stream);
            up->reading_ = false;
            if (nread == UV_EOF) {
                c->upstream_eof();
            } else {
                c->upstream_failed(UpstreamFailure::Reset);
            }
            return;
        }
        if (nread == UV_EOF && up->got_bytes_) {
            // A close-delimited body ends here; llhttp_finish says whether that is legal.
            llhttp_errno_t err = llhttp_finish(&up->parser_);
            if ((err == HPE_OK || err == HPE_PAUSED) && up->message_done_) {
                c->upstream_data_done(up, nullptr, 0, false);
                return;
            }
        }
        c->upstream_failed(UpstreamFailure::Reset);
        return;
    }
    chunk->len = static_cast<uint32_t>(nread);
    up->process(chunk, chunk->data, chunk->len);
    up->w_->chunks().unref(chunk);
}

void Upstream::process(Chunk* chunk, const char* data, size_t len) {
    ClientConn* c = client_;
    if (c != nullptr && tunnel_) {
        c->tunnel_from_upstream(chunk, data, len);
        c->update_reading();
        update_reading();
        return;
    }
    if (c == nullptr || state_ != UpstreamState::Active || message_done_) {
        close(); // bytes nobody asked for: the connection cannot be trusted any more
        return;
    }
    got_bytes_ = true;
    if (response_timer_) {
        arm_timer(static_cast<uint64_t>(w_->options().upstream_timeout.count()));
    }
    c->set_upstream_chunk(chunk);
    llhttp_errno_t err = llhttp_execute(&parser_, data, len);
    c->set_upstream_chunk(nullptr);
    if (closed_ || c->closed_) {
        return;
    }
    if (err == HPE_OK) {
        c->flush_client();
        update_reading();
        return;
    }
    if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
        const char* pos = llhttp_get_error_pos(&parser_);
        size_t rest = static_cast<size_t>(data + len - pos);
        bool upgrade = err == HPE_PAUSED_UPGRADE || (c->status_ == 101 && c->req_upgrade_);
        if (upgrade) {
            c->set_upstream_chunk(chunk);
            c->upstream_data_done(this, pos, rest, true);
            c->set_upstream_chunk(nullptr);
            return;
        }
        if (rest > 0) {
            eof_ = true; // extra bytes after the response: do not reuse this connection
        }
        c->upstream_data_done(this, nullptr, 0, false);
        return;
    }
    spdlog::warn("backend {}: malformed response: {}", be_->name,
                 llhttp_get_error_reason(&parser_));
    c->upstream_failed(UpstreamFailure::BadResponse);
}

int Upstream::on_message_begin(llhttp_t* p) {
    auto* up = upstream_of(p);
    up->trailer_bytes_ = 0;
    if (up->head_ == nullptr) {
        up->head_ = up->w_->take_head();
    } else {
        up->head_->reset();
    }
    return 0;
}

int Upstream::on_status(llhttp_t* p, const char* at, size_t len) {
    auto* up = upstream_of(p);
    up->head_->add_reason({at, len});
    return up->head_->size() > kMaxResponseHead ? -1 : 0;
}

// After the head, fields are a chunked body's trailers. They are dropped: the body is chunked
// again for the client, and nothing in a trailer may change how the message is framed or routed.
int Upstream::on_header_field(llhttp_t* p, const char* at, size_t len) {
    auto* up = upstream_of(p);
    if (up->head_ == nullptr) {
        return up->count_trailer(len);
    }
    up->head_->add_field({at, len});
    return up->head_->size() > kMaxResponseHead ? -1 : 0;
}

int Upstream::on_header_value(llhttp_t* p, const char* at, size_t len) {
    auto* up = upstream_of(p);
    if (up->head_ == nullptr) {
        return up->count_trailer(len);
    }
    up->head_->add_value({at, len});
    return up->head_->size() > kMaxResponseHead ? -1 : 0;
}

int Upstream::count_trailer(size_t len) {
    trailer_bytes_ += len;
    return trailer_bytes_ > kMaxResponseHead ? -1 : 0;
}

int Upstream::on_headers_complete(llhttp_t* p) {
    auto* up = upstream_of(p);
    int rc = up->client_->response_headers(up);
    up->w_->return_head(up->head_);
    up->head_ = nullptr;
    return rc;
}

int Upstream::on_body(llhttp_t* p, const char* at, size_t len) {
    auto* up = upstream_of(p);
    up->client_->response_body(at, len);
    return 0;
}

int Upstream::on_message_complete(llhttp_t* p) {
    auto* up = upstream_of(p);
    int status = p->status_code;
    if (status >= 100 && status < 200 && status != 101) {
        return 0; // interim response; the final one follows on the same connection
    }
    up->message_done_ = true;
    up->response_timer_ = false;
    up->deadline_.clear();
    up->client_->response_complete();
    return HPE_PAUSED;
}

void Upstream::start_tunnel() {
    tunnel_ = true;
    response_timer_ = false;
    deadline_.clear();
    update_reading();
}

void Upstream::shutdown_write() {
    if (closed_) {
        return;
    }
    shutdown_req_.data = this;
    if (uv_shutdown(&shutdown_req_, &sock_.stream, on_shutdown) != 0) {
        if (client_ != nullptr) {
            client_->upstream_failed(UpstreamFailure::Reset);
        } else {
            close();
        }
    }
}

void Upstream::on_shutdown(uv_shutdown_t* req, int status) {
    auto* up = static_cast<Upstream*>(req->data);
    if (up->closed_) {
        return;
    }
    if (status < 0 || up->eof_) {
        if (up->client_ != nullptr) {
            up->client_->close_after_writes();
        }
    }
}

void Upstream::close() {
    if (closed_) {
        return;
    }
    closed_ = true;
    if (state_ == UpstreamState::Idle) {
        w_->forget_idle(this);
    }
    state_ = UpstreamState::Closing;
    if (head_ != nullptr) {
        w_->return_head(head_);
        head_ = nullptr;
    }
    client_ = nullptr;
    close_handles(sock_, timer_, on_close);
}

void Upstream::on_close(uv_handle_t* h) {
    auto* up = static_cast<Upstream*>(h->data);
    if (--up->handles_open_ > 0) {
        return;
    }
    Worker* w = up->w_;
    delete up;
    w->upstream_closed();
}

} // namespace liege::router
