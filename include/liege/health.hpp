// Asynchronous readiness/liveness probes of one worker, on the emperor's loop.
#pragma once

#include <uv.h>

#include <chrono>
#include <functional>
#include <string>
#include <string_view>

#include "liege/address.hpp"

namespace liege {

struct ProbeResult {
    bool ok = false;
    int status = 0;    // HTTP status when a GET was made
    std::string error; // "connection refused", "timed out", "status 500", ...
};

// Probes `addr` once: with `http_path` empty, a TCP (or unix) connect that succeeds is ok;
// otherwise "GET http_path HTTP/1.1" with Host: localhost and Connection: close must answer
// 2xx or 3xx. The callback runs exactly once, never from inside probe() itself, within
// `timeout` (then ok=false, error "timed out"). Returns a cancel function: after calling it the
// callback never runs (safe to call after the callback ran too).
std::function<void()> probe(uv_loop_t* loop, const Address& addr, const std::string& http_path,
                            std::chrono::milliseconds timeout,
                            std::function<void(const ProbeResult&)> done);

// Parses the status line at the start of a response ("HTTP/1.1 200 OK\r\n..."). Returns the
// status (100..999), 0 when more bytes are needed, or -1 when this is not an HTTP/1.x response.
int parse_http_status_line(std::string_view received);

} // namespace liege
