#include "retry_policy.hpp"

#include <uv.h>

namespace liege::router {

const char* failure_text(UpstreamFailure why) {
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
    case UpstreamFailure::RequestTimeout:
        return "the request ran past its request_timeout";
    case UpstreamFailure::BadResponse:
        return "malformed response";
    case UpstreamFailure::NoSocket:
        return "the router is out of file descriptors or socket memory";
    }
    return "failed";
}

bool is_no_socket(int err) {
    return err == UV_EMFILE || err == UV_ENFILE || err == UV_ENOBUFS || err == UV_ENOMEM;
}

RetryDecision decide_retry(const AttemptFacts& f) {
    RetryDecision d;
    const bool connect_phase =
        f.why == UpstreamFailure::Connect || f.why == UpstreamFailure::ConnectTimeout;
    d.mark_backend_down = connect_phase || (f.why == UpstreamFailure::Reset &&
                                            !f.reused_connection && !f.got_response_bytes);
    d.log_broken_response =
        !d.mark_backend_down && f.got_response_bytes && f.response_reached_client;
    if (f.tunnel) {
        d.outcome = AttemptOutcome::CloseAfterWrites;
        return d;
    }
    if (f.response_reached_client) {
        d.outcome = AttemptOutcome::CloseNow;
        return d;
    }
    bool retry = false;
    if (connect_phase) {
        retry = true; // nothing was written: the pending writes are still queued
    } else if (f.why == UpstreamFailure::Reset && !f.body_sent && f.idempotent && f.head_kept) {
        retry = true; // the head reached the backend but no byte came back: replay it
        d.replay_head = true;
    }
    // The backend closed a pooled connection as the request arrived (its idle timeout).
    const bool stale =
        f.why == UpstreamFailure::Reset && f.reused_connection && !f.got_response_bytes;
    if (retry && (f.tries < f.max_tries || stale)) {
        d.outcome = AttemptOutcome::Retry;
        d.same_backend_ok = !connect_phase && f.reused_connection;
        d.fresh_connection = stale;
        return d;
    }
    d.replay_head = false;
    d.outcome = AttemptOutcome::Respond;
    switch (f.why) {
    case UpstreamFailure::Timeout:
    case UpstreamFailure::SendTimeout:
    case UpstreamFailure::RequestTimeout:
        d.status = 504;
        break;
    case UpstreamFailure::NoSocket:
        d.status = 503;
        break;
    default:
        d.status = 502;
        break;
    }
    return d;
}

} // namespace liege::router
