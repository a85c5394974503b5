// One request in flight on a client connection and its response: what the client leg knows of
// the exchange, reset by assignment when the next request begins. Resources it points to (the
// kept request head, the route snapshot, the backend's in-flight count) are released by the
// client leg before the reset; the text fields keep their capacity across exchanges, so a
// request allocates nothing for them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "buffers.hpp"
#include "route_snapshot.hpp"

namespace liege::router {

struct ExchangeText {
    std::string request_line; // METHOD URL HTTP/x.y: names the request in logs and warnings
    std::string agent;        // ` "referer" "user-agent"`, when access logging
    std::string error_body;   // a line for an error response's body, e.g. the unknown host
    std::string backend;      // the last backend tried
    std::string location;     // a redirect's target (the router's own 308 to https)
    void clear() {
        request_line.clear();
        location.clear();
        agent.clear();
        error_body.clear();
        backend.clear();
    }
};

struct Exchange {
    // The request.
    Chunk* head_copy = nullptr; // the rewritten head, kept for a replay until the response starts
    uint32_t head_len = 0;
    uint64_t body_bytes = 0;
    uint64_t sent_bytes = 0; // of the request, handed to the current upstream attempt
    bool chunked = false;
    bool idempotent = false;
    bool keep_alive = false;
    bool upgrade = false;
    bool head_method = false;
    bool done = false;           // the whole request has been read
    bool body_sent = false;      // a byte beyond the head went to a backend: no replay
    bool needs_upstream = false; // the head was parsed: an attempt is to start
    // [upstream] request_buffering: the body is read into the client's BodySpool before a
    // backend is chosen, and sent from there.
    bool spooling = false;
    uint64_t body_limit = 0; // largest body: body_max, and body_buffer_max when spooling; 0 = any
    int error_status = 0;    // set by a parser callback that refused the request

    // Routing and attempts.
    std::shared_ptr<const RouteSnapshot> snapshot; // keeps `pool` alive for the request
    const Pool* pool = nullptr;                    // counted in its in_flight
    Backend* backend = nullptr;                    // counted in that backend's in_flight
    int backend_index = -1;                        // in the pool's balancer, for `tried`
    uint64_t tried = 0;                            // a bit per backend index tried (< 64)
    unsigned tries = 0;
    bool fresh_only = false; // the next attempt opens a new connection (a pooled one went stale)
    uint64_t queued_ns = 0;  // time spent waiting in the vassal's queue
    uint64_t backend_generation = 0; // of the last worker sent the request (0: none yet)

    // The response.
    bool resp_started = false; // its head has been queued to the client
    bool resp_flushed = false; // and handed to the socket: it can no longer be replaced
    bool resp_done = false;
    bool resp_rechunk = false;
    bool resp_close = false;
    int status = 0;
    int retry_after = 0;           // seconds, for an error response the router makes; 0 = no header
    const char* refusal = nullptr; // why a 503 refused it ("queue full"), as its warning counts it
    uint64_t resp_bytes = 0;

    uint64_t start_ns = 0;
    uint64_t upstream_start_ns = 0;
    uint64_t upstream_ns = 0; // to the response head

    ExchangeText text;
};

} // namespace liege::router
