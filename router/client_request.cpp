// The client leg's requests: parsing them (llhttp callbacks), checking, routing and rewriting
// their heads, and sending them to an upstream attempt.
//
// What a request must be to go anywhere: a proxy that accepts a message its backend reads
// differently hands the attacker a second request (request smuggling). llhttp is built in its
// strict mode (CMakeLists.txt): every line ends in CRLF, a chunk-size line and chunk data end in
// CRLF, field names are tokens. What llhttp 8.1 still lets through is refused here, before
// anything is forwarded: an empty field name, obs-fold (folded()), a chunk size beyond 2^63-1,
// an invalid Host or request target, an underscored alias of a framing header
// (http::scan_request_headers), a head whose raw bytes, optional whitespace included, exceed
// --max-header-size (431; 414 while still in the request line), CONNECT (405;
// http::refuse_request), and TRACE (405) unless the vassal allows it ([upstream] trace).
// llhttp pauses once the head is complete (headers_complete returns HPE_PAUSED), so that the
// head's exact size is known before the first byte goes upstream.
#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <utility>

#include "client.hpp"
#include "liege/duration.hpp"
#include "liege/log.hpp"
#include "llhttp_settings.hpp"
#include "router_thread.hpp"

namespace liege::router {

namespace {

ClientConn* client_of(llhttp_t* p) {
    return static_cast<ClientConn*>(p->data);
}

} // namespace

const llhttp_settings_t* ClientConn::settings() {
    static const llhttp_settings_t s = [] {
        llhttp_settings_t v = message_settings(on_message_begin, on_header_field, on_header_value,
                                               on_headers_complete, on_body, on_message_complete);
        v.on_method = on_method;
        v.on_url = on_url;
        v.on_chunk_header = on_chunk_header;
        return v;
    }();
    return &s;
}

void ClientConn::process_input() {
    // After the pause at the end of a head llhttp runs once more even with no byte left: a
    // bodyless request completes without input.
    bool head_ended = false;
    while (!closed() && in_ != nullptr && (in_off_ < in_->len || head_ended)) {
        head_ended = false;
        if (phase_ == ClientPhase::AwaitResponse || phase_ == ClientPhase::Tunnel ||
            phase_ == ClientPhase::Closing || phase_ == ClientPhase::Lingering) {
            break; // a pipelined request waits for the response in progress
        }
        const char* start = in_->data + in_off_;
        const size_t n = in_->len - in_off_;
        const bool in_head = phase_ == ClientPhase::Idle || phase_ == ClientPhase::Head;
        parsing_ = in_;
        exec_start_ = start;
        llhttp_errno_t err = llhttp_execute(&parser_, start, n);
        parsing_ = nullptr;
        const size_t used =
            err == HPE_OK ? n : static_cast<size_t>(llhttp_get_error_pos(&parser_) - start);
        in_off_ += static_cast<uint32_t>(used);
        for (size_t i = used; i > 0; --i) {
            if (start[i - 1] != ' ' && start[i - 1] != '\t') {
                tail_ = start[i - 1];
                break;
            }
        }
        if (closed()) {
            return;
        }
        if (err == HPE_PAUSED_UPGRADE && used == 0 && phase_ == ClientPhase::Idle) {
            // The upgrade asked for before was refused (a final response, not 101): what the
            // client sent after it is HTTP again, as nginx reads it.
            llhttp_resume_after_upgrade(&parser_);
            continue;
        }
        if (in_head && (err == HPE_OK || err == HPE_PAUSED) &&
            (head_raw_ += used) > thread_.options().max_header_size) {
            // llhttp drops optional whitespace before the callbacks see the bytes: the limit is
            // on what arrived.
            const bool line = head_ == nullptr || head_->header_count() == 0;
            ex_.error_status = line && phase_ == ClientPhase::Head ? 414 : 431;
            ex_.needs_upstream = false;
            after_parse_error();
            return;
        }
        if (err != HPE_OK && err != HPE_PAUSED && err != HPE_PAUSED_UPGRADE) {
            after_parse_error();
            return;
        }
        if (err == HPE_PAUSED) {
            llhttp_resume(&parser_);
            head_ended = in_head;
        }
        if (ex_.needs_upstream) {
            ex_.needs_upstream = false;
            start_upstream();
            if (closed()) {
                return;
            }
        }
        flush_upstream();
        if (err == HPE_PAUSED_UPGRADE || (err == HPE_PAUSED && ex_.upgrade && ex_.done)) {
            break; // bytes after an upgrade request belong to the tunnel, if one opens
        }
    }
    if (closed()) {
        return;
    }
    if (in_ != nullptr && in_off_ >= in_->len) {
        thread_.chunks().unref(in_);
        in_ = nullptr;
        in_off_ = 0;
    }
    update_reading();
}

void ClientConn::after_parse_error() {
    if (ex_.resp_started) {
        close_now();
        return;
    }
    const int status = ex_.error_status != 0 ? ex_.error_status : 400;
    const char* reason = status == 414   ? "the request line is too long"
                         : status == 431 ? "the request head is too large"
                                         : llhttp_get_error_reason(&parser_);
    respond_error(status, !ex_.text.error_body.empty() ? std::string_view(ex_.text.error_body)
                          : reason != nullptr          ? std::string_view(reason)
                                                       : std::string_view("malformed request"));
}

int ClientConn::check_head_size(size_t more) {
    if (head_ == nullptr) {
        head_ = thread_.take_head();
    }
    if (head_->size() + more > thread_.options().max_header_size) {
        // Within the request line nginx answers 414 (its large_client_header_buffers).
        ex_.error_status = head_->header_count() == 0 && phase_ == ClientPhase::Head ? 414 : 431;
        return -1;
    }
    return 0;
}

bool ClientConn::folded(const char* at) const {
    // llhttp hands an obs-fold's continuation line to on_header_value as more value (leading
    // whitespace and all), or, after an empty value, as the value itself: what comes before the
    // piece's whitespace tells. A piece that starts a read sees the bytes before it in tail_.
    const char* p = at;
    while (p > exec_start_ && (p[-1] == ' ' || p[-1] == '\t')) {
        --p;
    }
    const char before = p > exec_start_ ? p[-1] : tail_;
    return before == '\n';
}

int ClientConn::on_message_begin(llhttp_t* p) {
    client_of(p)->begin_request();
    return 0;
}

void ClientConn::begin_request() {
    reset_exchange();
    head_raw_ = 0;
    if (head_ != nullptr) {
        head_->reset();
    } else {
        head_ = thread_.take_head();
    }
    ex_.start_ns = uv_hrtime();
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
    if (c->folded(at)) {
        // RFC 9112 5.2: a server must reject obs-fold or replace it with spaces; a backend that
        // unfolds it differently would see another header.
        c->ex_.text.error_body.assign("obsolete line folding in a header");
        return -1;
    }
    c->head_->add_value({at, len});
    return 0;
}

int ClientConn::on_headers_complete(llhttp_t* p) {
    return client_of(p)->headers_complete();
}

int ClientConn::headers_complete() {
    const llhttp_t* p = &parser_;
    const RouterOptions& o = thread_.options();
    if (head_ == nullptr) {
        head_ = thread_.take_head();
    }
    // The request line names the request in warnings too, so it is kept even without an access
    // log (the string keeps its capacity: no allocation per request).
    auto& line = ex_.text.request_line;
    line.clear();
    line.append(head_->method()).append(" ").append(head_->url());
    line.append(p->http_minor == 0 ? " HTTP/1.0" : " HTTP/1.1");
    const http::RequestHeaders checked = http::scan_request_headers(*head_);
    if (thread_.access_logging()) {
        auto& a = ex_.text.agent;
        a.clear();
        a.append(" \"").append(checked.referer.empty() ? "-" : checked.referer).append("\" \"");
        a.append(checked.user_agent.empty() ? "-" : checked.user_agent).append("\"");
    }
    const http::RequestTarget target =
        http::request_target(head_->url(), checked.host, head_->method());
    const http::Refusal refusal = http::refuse_request(
        checked, target,
        {head_->method(), p->http_major, p->http_minor, (p->flags & F_CHUNKED) != 0});
    if (refusal.status != 0) {
        ex_.error_status = refusal.status;
        ex_.text.error_body.assign(refusal.why);
        return -1;
    }
    if (!tls_ && answer_acme_challenge(target.path)) {
        return HPE_PAUSED; // answered, the connection closing
    }
    // Route first: a request nobody serves is answered without building anything.
    ex_.snapshot = thread_.routes();
    const std::string_view host = target.host;
    const RouteEntry* route =
        ex_.snapshot->table.match(host, target.slash_before ? std::string_view("/") : target.path);
    if (route == nullptr) {
        ex_.error_status = 404;
        ex_.text.error_body.assign("no app serves host '").append(host).append("'");
        return -1;
    }
    ex_.pool = ex_.snapshot->pools[route->index].get();
    ex_.pool->stats->enter();
    if (p->method == HTTP_TRACE && !ex_.pool->trace) {
        // TRACE echoes the request, credentials included, to whoever made a browser send it
        // (cross-site tracing); nginx refuses it too. A vassal may allow it ([upstream] trace).
        ex_.error_status = 405;
        ex_.text.error_body.assign("TRACE is not allowed");
        return -1;
    }
    if (ex_.pool->tls_redirect && !tls_ && !is_acme_challenge(target.path)) {
        redirect_to_https(target);
        return -1;
    }
    ex_.chunked = (p->flags & F_CHUNKED) != 0;
    ex_.upgrade = p->upgrade != 0;
    const bool has_body = ex_.chunked || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);
    ex_.spooling = ex_.pool->buffer_bodies && !ex_.upgrade && has_body;
    ex_.body_limit = o.max_body_size;
    if (ex_.spooling && o.body_buffer_max != 0 &&
        (ex_.body_limit == 0 || o.body_buffer_max < ex_.body_limit)) {
        ex_.body_limit = o.body_buffer_max;
    }
    if (ex_.body_limit != 0 && (p->flags & F_CONTENT_LENGTH) &&
        p->content_length > ex_.body_limit) {
        ex_.error_status = 413;
        return -1;
    }
    ex_.keep_alive = llhttp_should_keep_alive(p) != 0;
    ex_.idempotent = http::is_idempotent(head_->method());
    ex_.head_method = p->method == HTTP_HEAD;

    Chunk* out = thread_.chunks().get();
    http::RequestForward fwd;
    fwd.client_ip = peer_;
    fwd.trusted = trusted_peer_;
    fwd.proto = tls_ ? "https" : "http";
    fwd.upgrade = ex_.upgrade;
    fwd.target = &target;
    fwd.drop_underscores = checked.underscores;
    fwd.drop_expect = ex_.spooling;
    fwd.drop_transfer_encoding = ex_.spooling && ex_.chunked;
    const size_t n = http::write_request_head(*head_, fwd, out->data, Chunk::kSize);
    if (n == 0) {
        thread_.chunks().unref(out);
        ex_.error_status = 431;
        return -1;
    }
    out->len = static_cast<uint32_t>(n);
    ex_.head_copy = out;
    ex_.head_len = static_cast<uint32_t>(n);
    if (ex_.spooling && ex_.chunked) {
        // Its blank line waits for the Content-Length, which the whole body will tell.
        ex_.head_len -= 2;
    } else {
        out_up_.add(out, out->data, n);
    }

    thread_.return_head(head_);
    head_ = nullptr;
    // A spooled body is read first: the attempt starts once the request is whole.
    ex_.needs_upstream = !ex_.spooling;
    if (ex_.spooling && checked.expect_continue && p->http_minor == 1) {
        // The client waits for this before it sends the body; the backend is asked later.
        out_client_.add_copy("HTTP/1.1 100 Continue\r\n\r\n", 25);
        flush_client();
    }
    set_phase(ClientPhase::Body);
    return HPE_PAUSED; // process_input checks the head's raw size before anything goes out
}

int ClientConn::on_chunk_header(llhttp_t* p) {
    // llhttp takes any 64-bit chunk size and then waits for that much data; nginx refuses one
    // beyond 2^63-1 at once, and one beyond the body limit is a 413 before its data arrives.
    auto* c = client_of(p);
    if (p->content_length > static_cast<uint64_t>(INT64_MAX)) {
        c->ex_.text.error_body.assign("chunk size too large");
        return -1;
    }
    const uint64_t limit = c->ex_.body_limit;
    if (limit != 0 && p->content_length > limit - std::min(limit, c->ex_.body_bytes)) {
        c->ex_.error_status = 413;
        return -1;
    }
    return 0;
}

int ClientConn::on_body(llhttp_t* p, const char* at, size_t len) {
    auto* c = client_of(p);
    c->ex_.body_bytes += len;
    const uint64_t limit = c->ex_.body_limit;
    if (limit != 0 && c->ex_.body_bytes > limit) {
        c->ex_.error_status = 413;
        return -1;
    }
    if (c->ex_.spooling) {
        return c->spool_body(at, len);
    }
    if (c->ex_.chunked) {
        c->out_up_.add_chunk(c->parsing_, at, len);
    } else {
        c->out_up_.add(c->parsing_, at, len);
    }
    return 0;
}

int ClientConn::on_message_complete(llhttp_t* p) {
    auto* c = client_of(p);
    if (c->ex_.spooling) {
        if (c->spool_end() != 0) {
            return -1;
        }
    } else if (c->ex_.chunked) {
        c->out_up_.add_copy("0\r\n\r\n", 5);
    }
    c->ex_.done = true;
    if (c->ex_.resp_done) {
        return HPE_PAUSED; // the response already ended (an early answer); finish_exchange runs
    }
    c->set_phase(ClientPhase::AwaitResponse);
    if (c->up_ != nullptr) {
        c->up_->arm_response_timer();
    }
    return HPE_PAUSED;
}

int ClientConn::spool_body(const char* at, size_t len) {
    // Without chunk framing: a spooled body goes with a Content-Length.
    const int err = spool_.append(at, len, thread_.options().body_buffer_size);
    return err != 0 ? spool_failed(err) : 0;
}

int ClientConn::spool_end() {
    if (int err = spool_.finish(); err != 0) {
        return spool_failed(err);
    }
    if (ex_.chunked) {
        // The head gets its Content-Length and blank line, and goes out before the body.
        char line[48];
        const int k = std::snprintf(line, sizeof(line), "Content-Length: %llu\r\n\r\n",
                                    static_cast<unsigned long long>(spool_.size()));
        Chunk* h = ex_.head_copy;
        if (ex_.head_len + static_cast<uint32_t>(k) > Chunk::kSize) {
            ex_.error_status = 431;
            return -1;
        }
        std::memcpy(h->data + ex_.head_len, line, static_cast<size_t>(k));
        ex_.head_len += static_cast<uint32_t>(k);
        h->len = ex_.head_len;
        out_up_.add(h, h->data, ex_.head_len);
        flush_upstream();
    }
    ex_.needs_upstream = true; // the request is whole: now a backend is chosen
    return 0;
}

int ClientConn::spool_failed(int err) {
    spdlog::error("client {}: cannot buffer the body of \"{}\" in a temporary file: {}", peer_,
                  ex_.text.request_line, std::strerror(err));
    ex_.error_status = 500;
    ex_.text.error_body.assign("the request body could not be buffered");
    return -1;
}

void ClientConn::pump_spool() {
    while (ex_.spooling && !spool_.drained() && up_ != nullptr && up_->connected() &&
           !up_->write_queue_high()) {
        int err = 0;
        Chunk* c = spool_.take(err);
        if (c == nullptr) {
            spdlog::error("client {}: cannot read the buffered body of \"{}\" back: {}", peer_,
                          ex_.text.request_line, std::strerror(err));
            if (ex_.resp_started) {
                close_now();
            } else {
                respond_error(500, "the buffered request body could not be read");
            }
            return;
        }
        out_up_.add_ref(c, c->data, c->len);
        thread_.chunks().unref(c);
        flush_upstream(); // written at once, so that the write queue tells when to stop
    }
}

void ClientConn::leave_pool() {
    if (ex_.pool != nullptr) {
        ex_.pool->stats->in_flight.fetch_sub(1, std::memory_order_relaxed);
        ex_.pool = nullptr;
    }
    ex_.snapshot.reset();
}

void ClientConn::reset_exchange() {
    leave_pool();
    spool_.reset();
    if (ex_.head_copy != nullptr) {
        thread_.chunks().unref(ex_.head_copy);
    }
    ExchangeText text = std::move(ex_.text);
    text.clear();
    ex_ = Exchange{};
    ex_.text = std::move(text);
}

void ClientConn::start_upstream() {
    ex_.sent_bytes = 0; // a new attempt: nothing of the request has gone to it yet
    Pool& pool = *const_cast<Pool*>(ex_.pool);
    const unsigned max_tries = thread_.options().max_tries;
    while (!closed()) {
        if (ex_.tries >= max_tries) {
            respond_error(502, "no backend could take the request");
            return;
        }
        // Requests already waiting go first: a slot that frees goes to the oldest of them.
        Balancer::Claim c;
        if (pool.queue->length() == 0) {
            c = pool.balancer.claim(ex_.tried, steady_now_ms());
        }
        if (c.index < 0) {
            if (ex_.tried != 0 && !c.busy && pool.queue->length() == 0) {
                respond_error(502, "every backend tried failed");
            } else {
                wait_in_queue(); // every worker busy, or none ready yet
            }
            return;
        }
        ex_.tried |= (c.index < 64 ? (1ull << c.index) : 0);
        ++ex_.tries;
        if (send_to(pool.balancer.backends()[static_cast<size_t>(c.index)], c.index)) {
            return;
        }
    }
}

bool ClientConn::send_to(const std::shared_ptr<Backend>& bep, int index) {
    Backend& be = *bep;
    ex_.backend = &be;
    ex_.backend_index = index;
    const uint64_t sent = be.requests.fetch_add(1, std::memory_order_relaxed) + 1;
    if (sent == be.max_requests.load(std::memory_order_relaxed)) {
        thread_.shared().report_recycle(be, control::RecycleReason::MaxRequests);
    }
    ex_.text.backend = be.name;
    ex_.backend_generation = be.generation;
    ex_.upstream_start_ns = uv_hrtime();
    Upstream* idle = nullptr;
    if (!std::exchange(ex_.fresh_only, false)) {
        idle = thread_.idle().take(&be, ex_.idempotent, uv_now(thread_.loop()));
    }
    const uint64_t timeout = ex_.pool->request_timeout_ms;
    if (idle != nullptr) {
        up_ = idle;
        idle->attach(this);
        if (timeout != 0) {
            up_->set_request_deadline(uv_now(thread_.loop()) + timeout);
        }
        write_pending_upstream();
        pump_spool();
        if (ex_.done && up_ != nullptr) {
            up_->arm_response_timer();
        }
        return true;
    }
    int err = 0;
    up_ = Upstream::connect(thread_, bep, this, &err);
    if (up_ == nullptr && is_no_socket(err) && thread_.reclaim_idle_clients() > 0) {
        up_ = Upstream::connect(thread_, bep, this, &err); // idle clients made room
    }
    if (up_ != nullptr) {
        if (timeout != 0) {
            up_->set_request_deadline(uv_now(thread_.loop()) + timeout);
        }
        return true;
    }
    if (is_no_socket(err)) {
        respond_error(503, failure_text(UpstreamFailure::NoSocket)); // releases the backend
        return true;
    }
    release_slot();
    const int64_t cool = be.mark_failed(steady_now_ms());
    spdlog::warn("backend {} connect failed: {}; down for {} ms", be.name, uv_strerror(err), cool);
    return false;
}

bool ClientConn::release_slot() {
    if (ex_.backend == nullptr) {
        return false;
    }
    thread_.shared().release_backend(*ex_.backend);
    ex_.backend = nullptr;
    ex_.backend_index = -1;
    return ex_.pool->queue->pump(&thread_);
}

void ClientConn::wait_in_queue() {
    const std::shared_ptr<VassalQueue>& q = ex_.pool->queue;
    if (!q->holds()) {
        respond_error(503, "no backend is available"); // nothing may wait (a static router)
        return;
    }
    auto w = std::make_shared<Waiter>();
    w->thread = &thread_;
    w->conn = this;
    w->queue = q;
    w->since_ms = steady_now_ms();
    w->deadline_ms = w->since_ms + q->timeout_ms();
    w->since_ns = uv_hrtime();
    w->cold = !ex_.pool->has_workers;
    switch (q->join(w)) {
    case VassalQueue::Joined::Waiting:
        if (w->cold) {
            thread_.shared().report_demand(q->vassal()); // an on-demand vassal starts a worker
        }
        waiter_ = w;
        thread_.add_waiter(std::move(w));
        return;
    case VassalQueue::Joined::Full:
        reject(control::Rejection::QueueFull,
               fmt::format("vassal {}: queue full ({} waiting)", q->vassal(), q->length()));
        return;
    case VassalQueue::Joined::Failed:
        reject(control::Rejection::Failed,
               fmt::format("vassal {} failed: {}", q->vassal(), q->failure()));
        return;
    }
}

void ClientConn::stop_waiting() {
    if (waiter_ == nullptr) {
        return;
    }
    const uint64_t waited = uv_hrtime() - waiter_->since_ns;
    ex_.queued_ns += waited;
    ex_.pool->stats->queue_wait.record(static_cast<double>(waited) / 1e6);
    waiter_->conn = nullptr;
    waiter_.reset();
}

void ClientConn::leave_queue() {
    if (waiter_ != nullptr) {
        // When it is no longer listed, a slot is on its way: the thread gives it back.
        ex_.pool->queue->leave(*waiter_);
        stop_waiting();
    }
}

void ClientConn::dispatch(std::shared_ptr<Backend> backend) {
    const std::shared_ptr<VassalQueue>& q = ex_.pool->queue;
    if (backend != nullptr && waiter_ != nullptr && waiter_->cold) {
        ex_.pool->stats->cold_start.record(static_cast<double>(uv_hrtime() - waiter_->since_ns) /
                                           1e6);
    }
    stop_waiting();
    if (backend == nullptr) {
        reject(control::Rejection::Failed,
               fmt::format("vassal {} failed: {}", q->vassal(), q->failure()));
        return;
    }
    // The queue knows the latest route set's workers, which this thread may not route by yet:
    // then the worker is not in the pool's balancer, and not marked tried.
    const auto& all = ex_.pool->balancer.backends();
    int index = -1;
    for (size_t i = 0; i < all.size(); ++i) {
        if (all[i] == backend) {
            index = static_cast<int>(i);
        }
    }
    ex_.tried |= (index >= 0 && index < 64 ? (1ull << index) : 0);
    ++ex_.tries;
    if (!send_to(backend, index)) {
        start_upstream();
    }
}

void ClientConn::queue_timed_out() {
    const std::shared_ptr<VassalQueue>& q = ex_.pool->queue;
    stop_waiting();
    reject(control::Rejection::QueueTimeout,
           fmt::format("vassal {}: no worker was free within {}", q->vassal(),
                       format_duration(Millis(q->timeout_ms()))));
}

void ClientConn::reject(control::Rejection why, std::string_view text) {
    ex_.pool->stats->reject(why);
    switch (why) {
    case control::Rejection::QueueFull:
        ex_.refusal = "queue full";
        break;
    case control::Rejection::QueueTimeout:
        ex_.refusal = "queue timeout";
        break;
    case control::Rejection::Failed:
        ex_.refusal = "vassal failed";
        break;
    }
    ex_.retry_after = why == control::Rejection::Failed ? 10 : 1;
    ex_.text.error_body.assign(text);
    for (char& ch : ex_.text.error_body) {
        if (ch == '\n' || ch == '\r') {
            ch = ' '; // one line, whatever the app's last error held
        }
    }
    respond_error(503, ex_.text.error_body, /*detail_only=*/true);
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
    thread_.ops().put_list(pending_, thread_.chunks());
    pending_ = pending_tail_ = nullptr;
    thread_.ops().put_list(out_up_.take(), thread_.chunks());
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
        ex_.sent_bytes += op->bytes;
    }
    if (ex_.sent_bytes > ex_.head_len) {
        ex_.body_sent = true;
    }
    up_->write(ops);
}

// Queues the kept request head before whatever is still pending, for a replay elsewhere.
void ClientConn::replay_head() {
    Output again(thread_.ops(), thread_.chunks());
    again.add(ex_.head_copy, ex_.head_copy->data, ex_.head_len);
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
}

void ClientConn::upstream_connected() {
    write_pending_upstream();
    pump_spool();
    if (ex_.done && up_ != nullptr) {
        up_->arm_response_timer();
    }
    process_input();
}

void ClientConn::upstream_wrote() {
    if (phase_ == ClientPhase::Body) {
        // The backend is taking the body: time between client reads starts again too, so a
        // backend that reads slowly is not blamed on the client.
        stream_.set_deadline(thread_.options().upstream_timeout.count());
    }
    if (ex_.spooling && up_ != nullptr && !spool_.drained()) {
        pump_spool();
        if (up_ != nullptr) {
            up_->arm_response_timer(); // the backend is taking the body: upstream_timeout anew
        }
    }
    update_reading();
}

} // namespace liege::router
