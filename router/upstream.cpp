#include "upstream.hpp"

#include <algorithm>
#include <climits>

#include "liege/balancer.hpp"
#include "liege/log.hpp"
#include "llhttp_settings.hpp"
#include "router_thread.hpp"

namespace liege::router {

namespace {

constexpr size_t kMaxResponseHead = 64 * 1024; // and as much again for a chunked body's trailers

Upstream* upstream_of(llhttp_t* p) {
    return static_cast<Upstream*>(p->data);
}

} // namespace

std::string_view to_string(UpstreamState s) {
    switch (s) {
    case UpstreamState::Connecting:
        return "connecting";
    case UpstreamState::ConnectError:
        return "connect_error";
    case UpstreamState::Active:
        return "active";
    case UpstreamState::Idle:
        return "idle";
    case UpstreamState::Closing:
        return "closing";
    }
    return "unknown";
}

const llhttp_settings_t* Upstream::settings() {
    static const llhttp_settings_t s = [] {
        llhttp_settings_t v = message_settings(on_message_begin, on_header_field, on_header_value,
                                               on_headers_complete, on_body, on_message_complete);
        v.on_status = on_status;
        v.on_chunk_header = on_chunk_header;
        return v;
    }();
    return &s;
}

Upstream::Upstream(RouterThread& thread, std::shared_ptr<Backend> backend)
    : thread_(thread), backend_(std::move(backend)), stream_(thread, *this) {
    thread_.count_upstream(state_, +1);
    backend_->connections.fetch_add(1, std::memory_order_relaxed);
}

bool Upstream::over_connection_limit() const {
    const int limit = backend_->concurrency.load(std::memory_order_relaxed);
    return limit > 0 && backend_->connections.load(std::memory_order_relaxed) > limit;
}

uint64_t Upstream::idle_timeout_ms() const {
    auto ms = static_cast<uint64_t>(thread_.options().upstream_idle_timeout.count());
    if (keepalive_ms_ >= 0) {
        ms = std::min(ms, static_cast<uint64_t>(keepalive_ms_) * 3 / 4);
    }
    if (backend_->concurrency.load(std::memory_order_relaxed) > 0) {
        ms = std::min(ms, kLimitedIdleMs);
    }
    return ms;
}

bool Upstream::safe_for_non_idempotent(uint64_t now_ms) const {
    uint64_t limit = kSafeReuseMs;
    if (keepalive_ms_ >= 0) {
        limit = std::min(limit, static_cast<uint64_t>(keepalive_ms_) / 2);
    }
    return now_ms - idle_since_ms_ < limit;
}

Upstream* Upstream::connect(RouterThread& thread, const std::shared_ptr<Backend>& backend,
                            Client* client, int* err) {
    auto* up = new Upstream(thread, backend);
    int rc = up->stream_.connect(*backend);
    if (rc != 0) {
        up->close(); // freed once the stream has closed
        *err = rc;
        return nullptr;
    }
    up->client_ = client;
    llhttp_init(&up->parser_, HTTP_RESPONSE, settings());
    up->parser_.data = up;
    up->set_deadline(static_cast<uint64_t>(thread.options().connect_timeout.count()));
    if (up->over_connection_limit()) {
        // Another thread's idle connection holds the slot this request took: have it closed.
        for (RouterThread* t : thread.shared().threads) {
            if (t != &thread) {
                t->shed_idle(backend);
            }
        }
    }
    return up;
}

void Upstream::set_state(UpstreamState s) {
    if (s == state_) {
        return;
    }
    if (listed_) {
        thread_.idle().forget(this);
        listed_ = false;
    }
    thread_.count_upstream(state_, -1);
    thread_.count_upstream(s, +1);
    state_ = s;
    response_timer_ = false;
    switch (s) {
    case UpstreamState::Active:
        clear_deadline(); // until the request is complete (arm_response_timer)
        break;
    case UpstreamState::Idle:
        idle_since_ms_ = uv_now(thread_.loop());
        set_deadline(idle_timeout_ms());
        break;
    case UpstreamState::Connecting:
    case UpstreamState::ConnectError:
    case UpstreamState::Closing:
        break;
    }
}

void Upstream::fail(UpstreamFailure why) {
    if (client_ != nullptr) {
        client_->upstream_failed(why); // the client closes us
    } else {
        close();
    }
}

// A failure waiting to be reported owns the deadline (due at once): nothing moves it.
// The request deadline, when there is one, bounds every other wait of the exchange.
void Upstream::set_deadline(uint64_t ms) {
    if (!has_pending_failure_) {
        stream_.set_deadline(std::min(ms, request_time_left()));
    }
}

void Upstream::clear_deadline() {
    if (has_pending_failure_) {
        return;
    }
    if (const uint64_t left = request_time_left(); left != UINT64_MAX) {
        stream_.set_deadline(left);
    } else {
        stream_.clear_deadline();
    }
}

uint64_t Upstream::request_time_left() const {
    if (request_deadline_ms_ == 0 || client_ == nullptr || tunnel_) {
        return UINT64_MAX;
    }
    const uint64_t now = uv_now(thread_.loop());
    return request_deadline_ms_ > now ? request_deadline_ms_ - now : 0;
}

void Upstream::set_request_deadline(uint64_t at_ms) {
    request_deadline_ms_ = at_ms;
    switch (state_) {
    case UpstreamState::Connecting:
        set_deadline(static_cast<uint64_t>(thread_.options().connect_timeout.count()));
        break;
    case UpstreamState::Active:
        if (response_timer_) {
            arm_response_timer();
        } else {
            clear_deadline();
        }
        break;
    default:
        break;
    }
}

void Upstream::fail_later(UpstreamFailure why) {
    if (!has_pending_failure_) {
        has_pending_failure_ = true;
        pending_failure_ = why;
        stream_.set_deadline(0);
    }
}

void Upstream::on_stream_connected(int status) {
    if (status < 0) {
        spdlog::debug("backend {}: connect: {}", backend_->name, uv_strerror(status));
        set_state(UpstreamState::ConnectError);
        // A unix socket's socket() failure arrives here rather than from uv_pipe_connect.
        fail(is_no_socket(status) ? UpstreamFailure::NoSocket : UpstreamFailure::Connect);
        return;
    }
    set_state(UpstreamState::Active);
    update_reading();
    if (client_ != nullptr) {
        client_->upstream_connected();
    } else {
        close();
    }
}

void Upstream::attach(Client* client) {
    client_ = client;
    request_deadline_ms_ = 0;
    reused_ = true;
    got_bytes_ = false;
    message_done_ = false;
    upgrading_ = false;
    set_state(UpstreamState::Active);
    llhttp_init(&parser_, HTTP_RESPONSE, settings());
    parser_.data = this;
    update_reading();
}

bool Upstream::reusable() const {
    return state_ == UpstreamState::Active && !eof_ && !tunnel_ && message_done_ &&
           !has_pending_failure_ && stream_.writes_in_flight() == 0 &&
           llhttp_should_keep_alive(&parser_) != 0;
}

void Upstream::detach(bool reusable) {
    client_ = nullptr;
    request_deadline_ms_ = 0;
    if (!reusable || thread_.shutting_down() || !thread_.routes()->serves(backend_.get()) ||
        over_connection_limit()) {
        close();
        return;
    }
    if (head_ != nullptr) {
        thread_.return_head(head_);
        head_ = nullptr;
    }
    set_state(UpstreamState::Idle);
    update_reading();
    listed_ = true;
    if (Upstream* oldest = thread_.idle().park(this, thread_.options().max_idle_upstream)) {
        oldest->close(); // which takes it out of the pool
    }
}

void Upstream::write(WriteOp* ops) {
    bool failed = false;
    while (ops != nullptr) {
        WriteOp* next = ops->next;
        ops->next = nullptr;
        int rc = stream_.send(ops);
        failed = failed || (rc < 0 && rc != UV_ECANCELED);
        ops = next;
    }
    if (failed) {
        fail_later(UpstreamFailure::Reset); // reported from the loop, not inside the caller
    }
}

bool Upstream::write_queue_high() const {
    return stream_.queued() > Stream::kHighWater;
}

void Upstream::on_stream_written(int status) {
    if (status < 0) {
        fail(UpstreamFailure::Reset);
        return;
    }
    if (client_ != nullptr) {
        client_->upstream_wrote();
    }
}

void Upstream::arm_response_timer() {
    if (state_ != UpstreamState::Active) {
        return; // armed once connected, if the request is complete by then
    }
    response_timer_ = true;
    set_deadline(static_cast<uint64_t>(thread_.options().upstream_timeout.count()));
}

void Upstream::on_stream_deadline() {
    if (has_pending_failure_) {
        has_pending_failure_ = false;
        fail(pending_failure_);
        return;
    }
    const bool exchange = state_ == UpstreamState::Connecting || state_ == UpstreamState::Active;
    if (exchange && request_time_left() == 0) {
        request_deadline_ms_ = 0;
        if (client_ == nullptr || !client_->response_paused()) {
            fail(UpstreamFailure::RequestTimeout);
            return;
        }
        // The client holds the response back, not the worker: the usual stall rules apply.
    }
    switch (state_) {
    case UpstreamState::Connecting:
        fail(UpstreamFailure::ConnectTimeout);
        break;
    case UpstreamState::Active:
        if (client_ == nullptr) {
            close();
        } else if (!client_->response_paused()) {
            client_->upstream_failed(UpstreamFailure::Timeout);
        } else if (client_->response_stalled() == ResponseStall::SlowClient) {
            arm_response_timer();
        }
        break;
    default:
        close(); // idle too long in the pool
        break;
    }
}

void Upstream::update_reading() {
    if (!connected()) {
        return;
    }
    bool want = true;
    if (state_ == UpstreamState::Active && client_ != nullptr) {
        want = !client_->response_paused() && !eof_;
    }
    stream_.read(want);
}

void Upstream::on_stream_read(ssize_t nread, Chunk* chunk) {
    if (nread > 0) {
        process(chunk);
        thread_.chunks().unref(chunk);
        return;
    }
    eof_ = true;
    if (client_ == nullptr || state_ == UpstreamState::Idle) {
        close(); // a pooled connection the backend closed
        return;
    }
    if (tunnel_) {
        stream_.read(false);
        if (nread == UV_EOF) {
            client_->upstream_eof();
        } else {
            fail(UpstreamFailure::Reset);
        }
        return;
    }
    if (nread == UV_EOF && got_bytes_) {
        // A close-delimited body ends here; llhttp_finish says whether that is legal.
        llhttp_errno_t err = llhttp_finish(&parser_);
        if ((err == HPE_OK || err == HPE_PAUSED) && message_done_) {
            client_->response_end(nullptr, nullptr, 0, false);
            return;
        }
    }
    fail(UpstreamFailure::Reset);
}

void Upstream::process(Chunk* chunk) {
    const char* data = chunk->data;
    const size_t len = chunk->len;
    if (client_ != nullptr && tunnel_) {
        client_->tunnel_data(chunk, data, len);
        update_reading();
        return;
    }
    if (client_ == nullptr || state_ != UpstreamState::Active || message_done_) {
        close(); // bytes nobody asked for: the connection cannot be trusted any more
        return;
    }
    got_bytes_ = true;
    if (response_timer_) {
        arm_response_timer();
    }
    Client* client = client_;
    parsing_ = chunk;
    llhttp_errno_t err = llhttp_execute(&parser_, data, len);
    parsing_ = nullptr;
    if (client_ != client || state_ == UpstreamState::Closing) {
        return; // the client gave up on this connection while the response was parsed
    }
    if (err == HPE_OK) {
        client->response_flush();
        if (client_ == client) {
            update_reading();
        }
        return;
    }
    if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
        const char* pos = llhttp_get_error_pos(&parser_);
        const size_t rest = static_cast<size_t>(data + len - pos);
        if (err == HPE_PAUSED_UPGRADE || upgrading_) {
            client->response_end(chunk, pos, rest, true);
            return;
        }
        if (rest > 0) {
            eof_ = true; // extra bytes after the response: do not reuse this connection
        }
        client->response_end(nullptr, nullptr, 0, false);
        return;
    }
    spdlog::warn("backend {}: malformed response: {}", backend_->name,
                 llhttp_get_error_reason(&parser_));
    client->upstream_failed(UpstreamFailure::BadResponse);
}

int Upstream::on_message_begin(llhttp_t* p) {
    auto* up = upstream_of(p);
    up->trailer_bytes_ = 0;
    if (up->head_ == nullptr) {
        up->head_ = up->thread_.take_head();
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
    bool announced = false;
    const std::string_view keep_alive = up->head_->find("keep-alive", &announced);
    if (announced) {
        up->keepalive_ms_ = http::keep_alive_timeout_ms(keep_alive);
    }
    const int rc =
        up->client_->response_head(*up->head_, p->status_code, (p->flags & F_CONTENT_LENGTH) != 0,
                                   (p->flags & F_CHUNKED) != 0);
    up->upgrading_ = rc == 2;
    up->thread_.return_head(up->head_);
    up->head_ = nullptr;
    return rc;
}

// llhttp takes any 64-bit chunk size; one beyond 2^63-1 is no response anyone could send (and
// nginx refuses it), not one to wait for until the upstream timeout.
int Upstream::on_chunk_header(llhttp_t* p) {
    return p->content_length > static_cast<uint64_t>(INT64_MAX) ? -1 : 0;
}

int Upstream::on_body(llhttp_t* p, const char* at, size_t len) {
    auto* up = upstream_of(p);
    up->client_->response_body(up->parsing_, at, len);
    return 0;
}

int Upstream::on_message_complete(llhttp_t* p) {
    auto* up = upstream_of(p);
    const int status = p->status_code;
    if (status >= 100 && status < 200 && status != 101) {
        return 0; // interim response; the final one follows on the same connection
    }
    up->message_done_ = true;
    up->response_timer_ = false;
    up->clear_deadline();
    up->client_->response_complete();
    return HPE_PAUSED;
}

void Upstream::start_tunnel() {
    tunnel_ = true;
    response_timer_ = false;
    clear_deadline();
    update_reading();
}

void Upstream::shutdown_write() {
    if (!stream_.shutdown()) {
        fail_later(UpstreamFailure::Reset);
    }
}

void Upstream::on_stream_shutdown(int status) {
    if ((status < 0 || eof_) && client_ != nullptr) {
        client_->tunnel_done();
    }
}

void Upstream::close() {
    if (state_ == UpstreamState::Closing) {
        return;
    }
    set_state(UpstreamState::Closing);
    backend_->connections.fetch_sub(1, std::memory_order_relaxed);
    if (head_ != nullptr) {
        thread_.return_head(head_);
        head_ = nullptr;
    }
    client_ = nullptr;
    stream_.close();
}

void Upstream::on_stream_closed() {
    thread_.count_upstream(state_, -1);
    delete this;
}

} // namespace liege::router
