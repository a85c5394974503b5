// Asynchronous readiness/liveness probes of one worker, on the emperor's loop, and the rule that
// decides which failed liveness checks count.
//
// A worker that serves one connection at a time (uWSGI --http11-socket, gunicorn sync workers)
// cannot answer a check while the router's request, or its pooled keep-alive connection, holds
// it: the check times out although the worker is fine. So a ready worker's check that times out
// does not count toward restarting it when the router reported, since the worker's previous
// check, that it answered a request or had one in flight. A refused connection, a reset or a bad
// status always counts, and readiness checks before a worker is routed are not affected.
#pragma once

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "liege/address.hpp"
#include "liege/spawner.hpp"

namespace liege {

struct ProbeResult {
    bool ok = false;
    int status = 0;         // HTTP status when a GET was made
    std::string error;      // "connection refused", "timed out", "status 500", ...
    bool timed_out = false; // no answer within the timeout (error "timed out")
};

// Probes `addr` once: with `http_path` empty, a TCP (or unix) connect that succeeds is ok;
// otherwise "GET http_path HTTP/1.1" with Host: localhost and Connection: close must answer
// 2xx or 3xx. The callback runs exactly once, never from inside probe() itself, within
// `timeout` (then ok=false, error "timed out"). Returns a cancel function: after calling it the
// callback never runs (safe to call after the callback ran too).
std::function<void()> probe(uv_loop_t* loop, const Address& addr, const std::string& http_path,
                            std::chrono::milliseconds timeout,
                            std::function<void(const ProbeResult&)> done);

// Runs a check command (argv[0] looked up in PATH, in `cwd` with `env` added) as a probe: ok
// when it exits 0 within `timeout`; otherwise error says "exit code 1: <its last line>", "timed
// out" (the command is killed) or why it could not start. The same contract as probe(): the
// callback runs once, from the loop; the cancel function kills the command and drops the callback.
// `user` and `no_new_privs` as in SpawnSpec: a vassal's check runs as its workers do.
std::function<void()> probe_command(uv_loop_t* loop, const std::vector<std::string>& argv,
                                    const std::vector<std::pair<std::string, std::string>>& env,
                                    const std::string& cwd, std::chrono::milliseconds timeout,
                                    std::function<void(const ProbeResult&)> done,
                                    std::optional<SpawnUser> user = std::nullopt,
                                    bool no_new_privs = false);

// What the router's load reports (once a second) said about one worker, between two of its
// liveness checks. Pure: the caller passes the time, from a steady clock.
class RouterActivity {
public:
    static constexpr int64_t kReportMs = 1000; // how often the router reports

    // A report: the router's counters for the worker (requests sent, responses by class,
    // summed) and its requests in flight now. The first report only sets the baseline of the
    // counters, since a new worker may reuse the address (and so the counters) of a gone one.
    void report(uint64_t requests, uint64_t responses, int64_t in_flight, int64_t now_ms);
    // Whether the worker answered a request or had one in flight since the previous check: a
    // report since then says so, or, when checks come more often than reports, the latest report
    // said so and is fresh (at most two report periods old, so a silent router excuses nothing).
    bool busy(int64_t now_ms) const;
    // A check's outcome was taken: the next check looks at reports from now on.
    void checked() { window_busy_ = false; }

private:
    bool have_baseline_ = false;
    uint64_t requests_ = 0;
    uint64_t responses_ = 0;
    bool window_busy_ = false; // a report since the last checked() showed the worker busy
    bool last_busy_ = false;   // the latest report did
    int64_t last_ms_ = 0;
};

// Whether a ready worker's failed liveness check counts toward restarting it, given
// RouterActivity::busy() for the worker: a timeout while busy does not, every other failure does.
bool liveness_failure_counts(const ProbeResult& result, bool busy);

// Keeps liege's own health checks out of a vassal's log: an app that logs every request
// (gunicorn's access log, uWSGI, python's http.server) writes one line per `GET path` probe,
// every `interval`, for every worker. Each probe sent expects one such line from its worker
// within kWindowMs; the first line that names `GET path` (followed by a space, '?', '"' or the
// line's end), or liege's User-Agent, is taken for it and dropped. A request for the health
// path from anyone else is dropped only when it comes while a probe's line is still expected.
class ProbeEchoFilter {
public:
    static constexpr int64_t kWindowMs = 5000;

    explicit ProbeEchoFilter(std::string path = "") : path_(std::move(path)) {}
    void set_path(std::string path) { path_ = std::move(path); }
    // A probe was sent.
    void probed(int64_t now_ms);
    // Whether `line` of the worker's output is a probe's access-log line (then it is dropped).
    bool drop(std::string_view line, int64_t now_ms);
    size_t dropped() const { return dropped_; }

private:
    std::string path_;
    std::vector<int64_t> pending_; // when each probe whose line has not come was sent
    size_t dropped_ = 0;
};

// Parses the status line at the start of a response ("HTTP/1.1 200 OK\r\n..."). Returns the
// status (100..999), 0 when more bytes are needed, or -1 when this is not an HTTP/1.x response.
int parse_http_status_line(std::string_view received);

} // namespace liege
