// What becomes of a request whose upstream attempt failed, decided from the facts alone.
//
// A request that never reached a backend (connect refused or timed out) is retried on another
// backend, up to max_tries. A request whose bytes may have reached a backend is retried only if
// its method is idempotent, no body byte was sent, its head is still kept for a replay, and no
// response byte has reached the client. A reused pooled connection that closed before any
// response byte raced the backend's idle timeout, which is no fault of the backend: it is never
// marked down for it, and an idempotent request is sent again at once on a fresh connection (to
// the same backend or another), an attempt that does not count against max_tries. Only a connection
// that failed before any response byte counts against its backend (as nginx's max_fails counts): a
// backend that answered is up, even if this answer broke off. A socket the router cannot create
// (out of descriptors or socket memory, NoSocket) is the router's own shortage: no backend is
// marked down for it, none is tried instead (each would fail alike), and the client gets a 503 at
// once.
#pragma once

namespace liege::router {

enum class UpstreamFailure {
    Connect,
    ConnectTimeout,
    Reset,       // the connection closed or failed before a complete response
    Timeout,     // no response byte for upstream_timeout
    SendTimeout, // the backend took no byte of the request body for upstream_timeout
    // The worker has not answered in full within the vassal's [recycle] request_timeout: never
    // retried (it would hang another worker), and the worker is replaced.
    RequestTimeout,
    BadResponse,
    NoSocket,
};

const char* failure_text(UpstreamFailure why);

// A libuv error that says the router could not create a socket for want of its own resources
// (what makes accept pause too): NoSocket rather than a backend's failure.
bool is_no_socket(int uv_error);

struct AttemptFacts {
    UpstreamFailure why = UpstreamFailure::Connect;
    bool reused_connection = false;       // no fresh connection failed: it went out on a pooled one
    bool got_response_bytes = false;      // the backend sent some of a response
    bool response_reached_client = false; // some of it has been handed to the client's socket
    bool tunnel = false;                  // the exchange had become a tunnel
    bool body_sent = false;               // a byte beyond the request head went to the backend
    bool idempotent = false;
    bool head_kept = false; // the request head is still there to replay
    unsigned tries = 0;     // attempts made so far, this one included
    unsigned max_tries = 1;
};

enum class AttemptOutcome {
    Retry,            // try again (same pending writes, or the head replayed first)
    Respond,          // answer the client with `status`
    CloseNow,         // part of the response reached the client: it sees the connection end
    CloseAfterWrites, // a tunnel: what was passed on still leaves, then the connection ends
};

struct RetryDecision {
    AttemptOutcome outcome = AttemptOutcome::Respond;
    bool mark_backend_down = false;
    bool replay_head = false;         // with Retry: the head must be written again
    bool same_backend_ok = false;     // with Retry: the failed backend may be picked again
    bool fresh_connection = false;    // with Retry: on a new connection; this try does not count
    bool log_broken_response = false; // the backend broke off a response the client was getting
    int status = 502;                 // with Respond
};

RetryDecision decide_retry(const AttemptFacts& facts);

} // namespace liege::router
