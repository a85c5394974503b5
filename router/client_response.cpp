// The client leg's responses: what the upstream attempt reports (a head, body, the end, or a
// failure and what the retry policy makes of it), error responses the router makes itself, and
// the access log line that ends each exchange.
#include <cstdio>

#include "client.hpp"
#include "liege/log.hpp"
#include "response_framing.hpp"
#include "router_thread.hpp"

namespace liege::router {

namespace {

// The most of an error_body an error response carries (a vassal's last error can be long).
constexpr size_t kMaxErrorLine = 2048;

std::string_view or_dash(const std::string& s) {
    return s.empty() ? std::string_view("-") : std::string_view(s);
}

// The longest request target a redirect repeats; a longer one is sent to the site's root.
constexpr size_t kMaxRedirectTarget = 8192;

// "shop.test:8080" → "shop.test", "[::1]:8080" → "[::1]".
std::string_view without_port(std::string_view host) {
    if (host.starts_with('[')) {
        const size_t close = host.find(']');
        return close == std::string_view::npos ? host : host.substr(0, close + 1);
    }
    const size_t colon = host.rfind(':');
    return colon == std::string_view::npos ? host : host.substr(0, colon);
}

} // namespace

void ClientConn::redirect_to_https(const http::RequestTarget& target) {
    auto& to = ex_.text.location;
    to.assign("https://").append(without_port(target.host));
    if (const uint16_t port = thread_.shared().https_port; port != 0) {
        to.append(":").append(std::to_string(port));
    }
    const std::string_view rest = target.absolute ? target.path : head_->url();
    if (target.slash_before || rest.size() > kMaxRedirectTarget) {
        to.append("/");
    }
    if (rest.size() <= kMaxRedirectTarget) {
        to.append(rest);
    }
    ex_.error_status = 308;
    ex_.text.error_body.assign(to);
}

void ClientConn::record_response(bool router_error) {
    thread_.count_request();
    thread_.shared().requests.fetch_add(1, std::memory_order_relaxed);
    if (ex_.pool != nullptr) {
        ex_.pool->stats->record(ex_.status, static_cast<double>(uv_hrtime() - ex_.start_ns) / 1e6);
        if (router_error) {
            ex_.pool->stats->router_errors.fetch_add(1, std::memory_order_relaxed);
        }
    }
}

void ClientConn::upstream_failed(UpstreamFailure why) {
    if (closed()) {
        return;
    }
    if (why == UpstreamFailure::NoSocket && !ex_.resp_started &&
        thread_.reclaim_idle_clients() > 0) {
        // Idle keep-alive clients made room: the same attempt again, not counted as a try.
        const int idx = ex_.backend_index;
        release_upstream(false);
        if (idx >= 0 && idx < 64) {
            ex_.tried &= ~(1ull << idx);
        }
        --ex_.tries;
        start_upstream();
        return;
    }
    Upstream* up = up_;
    AttemptFacts facts;
    facts.why = why;
    facts.reused_connection = up == nullptr || up->reused(); // no fresh connection to blame
    facts.got_response_bytes = up != nullptr && up->got_response_bytes();
    facts.response_reached_client = ex_.resp_started && ex_.resp_flushed;
    facts.tunnel = phase_ == ClientPhase::Tunnel;
    facts.body_sent = ex_.body_sent && !ex_.spooling; // a spooled body can be sent again
    facts.idempotent = ex_.idempotent;
    facts.head_kept = ex_.head_copy != nullptr;
    facts.tries = ex_.tries;
    facts.max_tries = thread_.options().max_tries;
    const RetryDecision d = decide_retry(facts);
    const int failed_idx = ex_.backend_index;
    if (ex_.backend != nullptr) {
        Backend& be = *ex_.backend;
        if (why == UpstreamFailure::RequestTimeout) {
            spdlog::warn("backend {}: {} \"{}\" ran past request_timeout ({} ms); the worker is "
                         "replaced",
                         be.name, peer_, or_dash(ex_.text.request_line),
                         ex_.pool->request_timeout_ms);
            thread_.shared().report_recycle(be, control::RecycleReason::RequestTimeout);
        }
        if (d.mark_backend_down) {
            const int64_t cool = be.mark_failed(steady_now_ms());
            spdlog::warn("backend {} {}; down for {} ms", be.name, failure_text(why), cool);
        } else if (d.log_broken_response) {
            spdlog::warn("backend {}: {} in the middle of the response to {} \"{}\"; closing the "
                         "client connection",
                         be.name,
                         why == UpstreamFailure::Reset ? "connection closed" : failure_text(why),
                         peer_, or_dash(ex_.text.request_line));
        }
    }
    release_upstream(false);
    switch (d.outcome) {
    case AttemptOutcome::CloseAfterWrites:
        close_after_writes();
        return;
    case AttemptOutcome::CloseNow:
        close_now(); // the response is cut short; the client sees the connection end
        return;
    case AttemptOutcome::Retry:
    case AttemptOutcome::Respond:
        break;
    }
    if (ex_.resp_started) {
        // Its head is only queued: no byte of it reached the client, which gets a status instead.
        thread_.ops().put_list(out_client_.take(), thread_.chunks());
        ex_.resp_started = ex_.resp_rechunk = ex_.resp_done = false;
        ex_.resp_bytes = 0;
    }
    if (d.outcome == AttemptOutcome::Retry) {
        if (d.replay_head) {
            if (ex_.spooling) {
                // Body pieces not written yet go again from the spool, after the head.
                thread_.ops().put_list(pending_, thread_.chunks());
                pending_ = pending_tail_ = nullptr;
                spool_.rewind();
                ex_.body_sent = false;
            }
            replay_head();
        }
        if (d.same_backend_ok && failed_idx >= 0 && failed_idx < 64) {
            ex_.tried &= ~(1ull << failed_idx);
        }
        if (d.fresh_connection) {
            ex_.fresh_only = true;
            --ex_.tries; // racing the backend's idle timeout is not a failed attempt
        }
        start_upstream();
        return;
    }
    respond_error(d.status, failure_text(why));
}

int ClientConn::response_head(const http::HeadCollector& head, int status, bool has_length,
                              bool chunked) {
    ResponseFacts facts;
    facts.status = status;
    facts.has_length = has_length;
    facts.chunked = chunked;
    facts.request_head_method = ex_.head_method;
    facts.client_http10 = parser_.http_major == 1 && parser_.http_minor == 0;
    facts.request_keep_alive = ex_.keep_alive;
    facts.request_upgrade = ex_.upgrade;
    facts.request_done = ex_.done;
    facts.closing = draining_ || thread_.shutting_down();
    if (!has_length && !chunked && !ex_.head_method && status >= 200 && status != 204 &&
        status != 304) {
        bool coded = false;
        head.find("transfer-encoding", &coded);
        facts.transfer_encoding = coded;
    }
    const ResponseFraming f = response_framing(facts);
    if (f.kind == ResponseKind::Rejected) {
        spdlog::warn("backend {}: 101 Switching Protocols to a request that asked for no upgrade",
                     or_dash(ex_.text.backend));
        return -1; // a malformed response: 502, and no tunnel
    }
    Chunk* out = thread_.chunks().get();
    if (f.kind == ResponseKind::Interim) {
        // Passed on; never to an HTTP/1.0 client, which cannot tell it from the final one
        // (RFC 9110 15.2).
        const size_t n = facts.client_http10
                             ? 0
                             : http::write_response_head(head, f.forward, out->data, Chunk::kSize);
        if (n != 0) {
            out_client_.add(out, out->data, n);
        }
        thread_.chunks().unref(out);
        return 0;
    }
    if (ex_.backend != nullptr) {
        ex_.backend->mark_ok();
        if (status >= 100 && status < 600) {
            ex_.backend->responses[status / 100].fetch_add(1, std::memory_order_relaxed);
        }
    }
    ex_.upstream_ns = uv_hrtime() - ex_.upstream_start_ns;
    ex_.status = status;
    ex_.resp_rechunk = f.rechunk;
    ex_.resp_close = f.close;
    const size_t n = http::write_response_head(head, f.forward, out->data, Chunk::kSize);
    if (n == 0) {
        thread_.chunks().unref(out);
        return -1;
    }
    out_client_.add(out, out->data, n);
    thread_.chunks().unref(out);
    ex_.resp_started = true;
    ex_.resp_bytes += n;
    // The request can no longer be replayed; its head is no longer needed.
    if (ex_.head_copy != nullptr) {
        thread_.chunks().unref(ex_.head_copy);
        ex_.head_copy = nullptr;
    }
    return f.parser_result;
}

void ClientConn::response_body(Chunk* chunk, const char* data, size_t len) {
    ex_.resp_bytes += len;
    if (ex_.resp_rechunk) {
        out_client_.add_chunk(chunk, data, len);
    } else {
        out_client_.add(chunk, data, len);
    }
}

void ClientConn::response_complete() {
    if (ex_.resp_rechunk) {
        out_client_.add_copy("0\r\n\r\n", 5);
    }
    ex_.resp_done = true;
}

void ClientConn::response_end(Chunk* chunk, const char* rest, size_t rest_len, bool upgrade) {
    flush_client();
    if (closed()) {
        return;
    }
    if (upgrade && ex_.status == 101) {
        start_tunnel(chunk, rest, rest_len);
    } else if (ex_.resp_done) {
        finish_exchange();
    }
}

ResponseStall ClientConn::response_stalled() {
    const size_t left = stream_.not_taken();
    const bool took = left < blocked_left_;
    blocked_left_ = left;
    if (took) {
        // A slow download, not a stalled one: progress, however little, counts (as nginx's
        // send_timeout runs between two writes, not for the whole response).
        return ResponseStall::SlowClient;
    }
    // Reading from the backend waits for the client, which took none of the response in that
    // time: the client is cut off, the backend is not to blame.
    spdlog::warn("client {} took no byte of the response to \"{}\" for {} ms; closing", peer_,
                 ex_.text.request_line, thread_.options().upstream_timeout.count());
    close_now();
    return ResponseStall::ClientCutOff;
}

void ClientConn::finish_exchange() {
    // A response that came before the spooled body was all sent leaves the connection unusable.
    release_upstream(up_ != nullptr && up_->reusable() && ex_.done && spool_.drained());
    record_response(false);
    log_access();
    const bool close = ex_.resp_close;
    if (head_ != nullptr) {
        thread_.return_head(head_); // a chunked request's trailers took one: idle holds none
        head_ = nullptr;
    }
    reset_exchange();
    first_request_ = false;
    if (close || draining_ || thread_.shutting_down()) {
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
    leave_queue();
    Upstream* up = std::exchange(up_, nullptr);
    // The slot goes on first: to a waiter of this thread, which finds the connection parked
    // when it is dispatched (from the loop, after this), or to one of another thread, which
    // opens its own: then a worker with a concurrency limit must not keep this one too.
    const bool limited =
        ex_.backend != nullptr && ex_.backend->concurrency.load(std::memory_order_relaxed) > 0;
    const bool handed_elsewhere = release_slot();
    if (up != nullptr) {
        up->detach(reusable && !(limited && handed_elsewhere));
    }
}

void ClientConn::log_access() {
    AccessLog* log = thread_.access_log_for(ex_.pool);
    if (log == nullptr) {
        return;
    }
    AccessLog::Entry e;
    e.peer = peer_;
    e.request_line = ex_.text.request_line;
    e.status = ex_.status;
    e.bytes = ex_.resp_bytes;
    e.agent = ex_.text.agent;
    if (ex_.pool != nullptr) {
        e.vassal = ex_.pool->vassal;
        // A request queued across a blue-green reload is served by the new generation's
        // worker while it still holds the old pool.
        e.generation = ex_.backend_generation != 0 ? ex_.backend_generation : ex_.pool->generation;
    }
    e.seconds = static_cast<double>(uv_hrtime() - ex_.start_ns) / 1e9;
    e.upstream_seconds = static_cast<double>(ex_.upstream_ns) / 1e9;
    e.queue_seconds = static_cast<double>(ex_.queued_ns) / 1e9;
    e.backend = ex_.text.backend;
    log->append(e);
}

void ClientConn::respond_error(int status, std::string_view detail, bool detail_only) {
    if (closed()) {
        return;
    }
    release_upstream(false);
    drop_upstream_output(); // anything queued for an upstream is moot now
    ex_.status = status;
    const std::string_view reason = http::reason_phrase(status);
    Chunk* c = thread_.chunks().get();
    const std::string_view extra = std::string_view(ex_.text.error_body).substr(0, kMaxErrorLine);
    const bool status_line = !detail_only || extra.empty();
    const size_t body_len =
        (status_line ? 3 + 1 + reason.size() + 1 : 0) + (extra.empty() ? 0 : extra.size() + 1);
    char retry_after[40] = "";
    if (ex_.retry_after > 0) {
        std::snprintf(retry_after, sizeof(retry_after), "Retry-After: %d\r\n", ex_.retry_after);
    }
    const std::string_view location = ex_.text.location; // bounded by redirect_to_https
    int n =
        std::snprintf(c->data, Chunk::kSize,
                      "HTTP/1.1 %d %.*s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                      "Content-Length: %zu\r\n%s%s%.*s%sConnection: close\r\n\r\n",
                      status, static_cast<int>(reason.size()), reason.data(), body_len, retry_after,
                      location.empty() ? "" : "Location: ", static_cast<int>(location.size()),
                      location.data(), location.empty() ? "" : "\r\n");
    if (status_line) {
        n += std::snprintf(c->data + n, Chunk::kSize - static_cast<size_t>(n), "%d %.*s\n", status,
                           static_cast<int>(reason.size()), reason.data());
    }
    if (!extra.empty()) {
        n += std::snprintf(c->data + n, Chunk::kSize - static_cast<size_t>(n), "%.*s\n",
                           static_cast<int>(extra.size()), extra.data());
    }
    c->len = static_cast<uint32_t>(n);
    out_client_.add(c, c->data, c->len);
    thread_.chunks().unref(c);
    ex_.resp_bytes = c->len;
    if (status == 503) {
        // Refusals come in floods (a full queue, a failed vassal): one line a second per vassal.
        thread_.shared().log_refusal(ex_.pool != nullptr ? std::string_view(ex_.pool->vassal)
                                                         : std::string_view(),
                                     ex_.refusal != nullptr ? ex_.refusal : "no backend",
                                     fmt::format("{} {} for {} \"{}\": {}", status, reason, peer_,
                                                 or_dash(ex_.text.request_line), detail));
    } else {
        spdlog::log(status < 400 ? spdlog::level::debug : spdlog::level::warn,
                    "{} {} for {} \"{}\": {}", status, reason, peer_,
                    or_dash(ex_.text.request_line), detail);
    }
    flush_client();
    if (closed()) {
        return;
    }
    ex_.resp_started = true;
    record_response(status == 502 || status == 503 || status == 504);
    log_access();
    close_after_writes();
}

} // namespace liege::router
