// The control protocol between the emperor and its router (docs/control-protocol.md).
//
// One JSON object per line over a unix stream socket (a socketpair the router inherits). The
// emperor always sends the whole route set, so a restarted router needs one message to catch up
// and a lost update cannot leave the two disagreeing for longer than the next one.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace liege::control {

// A backend is one worker of one generation: the address alone is not enough, since a port a
// gone worker used may be given to a new one while the router still drains the old.
struct BackendSpec {
    std::string address; // HOST:PORT or unix:PATH, as parse_address() reads it
    int worker = 0;
    bool draining = false;   // no new requests; report "drained" once none is in flight
    uint64_t generation = 0; // the vassal generation the worker belongs to; 0 = static backend
    // [recycle] max_requests as this worker drew it: the router says so (RecycleMessage) when
    // it has been sent this many requests; 0 = no limit.
    uint64_t max_requests = 0;
};

struct RouteSpec {
    std::string vassal;
    uint64_t generation = 0;
    std::vector<std::string> hosts{"*"};
    std::string path = "/";
    std::vector<BackendSpec> backends;
    // Requests one backend is sent at once, counted across router threads; 0 = no limit.
    int concurrency = 0;
    // Requests that may wait for a free backend slot (or for a first ready backend); 0 = none
    // wait, a request finding no free slot gets 503 at once (as a static router does).
    uint32_t queue_size = 0;
    int64_t queue_timeout_ms = 30'000; // a request waiting longer gets 503
    // The vassal gave up (its workers keep failing): requests get 503 at once naming last_error
    // instead of waiting.
    bool failed = false;
    std::string last_error;
    // The vassal's certificate for its hosts (SNI), absolute paths; empty = the default one.
    std::string tls_cert;
    std::string tls_key;       // empty = in tls_cert
    bool tls_redirect = false; // plain HTTP for the hosts gets 308 to https
    // [recycle] request_timeout: a request a worker has not answered in full by then gets 504
    // (or, once its response has begun, its connection closed) and is reported; 0 = none.
    int64_t request_timeout_ms = 0;
    // [upstream] request_buffering: "auto" (read a body in full before a backend is chosen, when
    // concurrency ≥ 1), "always" or "off".
    std::string request_buffering = "auto";
    bool trace = false; // [upstream] trace: TRACE requests are forwarded (otherwise 405)
};

// Emperor → router.
struct RoutesMessage {
    uint64_t version = 0;
    std::vector<RouteSpec> routes;
};

// Router → emperor: a draining backend has no request in flight.
struct DrainedMessage {
    std::string address;
    uint64_t generation = 0; // as the backend's BackendSpec said
};

// Router → emperor: a worker is due to be replaced.
enum class RecycleReason { MaxRequests, MaxRss, RequestTimeout };
constexpr int kRecycleReasons = 3;
std::string_view to_string(RecycleReason r); // "max_requests", "max_rss", "request_timeout"
struct RecycleMessage {
    std::string address;
    uint64_t generation = 0;
    RecycleReason reason = RecycleReason::MaxRequests; // max_requests or request_timeout
};

// Router → emperor: a request of the vassal waits and no worker of it serves (an on-demand
// vassal, or its last worker stopping): start one. Sent once per such wait, at once.
struct DemandMessage {
    std::string vassal;
};

// Emperor → router: the HTTP-01 challenge tokens to answer on the plain listeners, the whole
// set every time (as routes are), token → key authorisation.
struct AcmeChallengesMessage {
    uint64_t version = 0;
    std::map<std::string, std::string> challenges;
};

// Router → emperor: the challenge set of `version` is served by every router thread.
struct AcmeChallengesAppliedMessage {
    uint64_t version = 0;
};

struct BackendStats {
    std::string address;
    int64_t in_flight = 0;
    uint64_t requests = 0;
    uint64_t failures = 0;
    uint64_t responses[6] = {0, 0, 0, 0, 0, 0}; // by status class: [1]=1xx ... [5]=5xx
};

// Why the router refused a request of a vassal with 503 (liege_requests_rejected_total).
enum class Rejection { QueueFull, QueueTimeout, Failed };
constexpr int kRejections = 3;
std::string_view to_string(Rejection r); // "queue_full", "queue_timeout", "failed"

struct VassalFigures {
    std::string vassal;
    uint64_t responses[6] = {0, 0, 0, 0, 0, 0}; // by status class
    uint64_t router_errors = 0;                 // 502/503/504 made by the router
    int64_t in_flight = 0;
    // The most requests in flight at once since the previous stats message (those waiting
    // included), for the scaling rule.
    int64_t in_flight_peak = 0;
    std::vector<double> latency_bounds_ms; // histogram bucket upper bounds
    std::vector<uint64_t> latency_buckets; // counts per bucket (not cumulative), last = +Inf
    uint64_t latency_sum_us = 0;
    int64_t queued = 0;                         // requests waiting now (a gauge)
    uint64_t rejected[kRejections] = {0, 0, 0}; // by Rejection
    // Time spent in the queue by each request that waited (histogram, as the latency one).
    std::vector<double> queue_wait_bounds_ms;
    std::vector<uint64_t> queue_wait_buckets;
    uint64_t queue_wait_sum_us = 0;
    // Requests that waited for a vassal with no worker serving: from arrival to forwarding.
    std::vector<double> cold_start_bounds_ms;
    std::vector<uint64_t> cold_start_buckets;
    uint64_t cold_start_sum_us = 0;
};

// Router → emperor, once a second: load figures for /status and /metrics.
struct StatsMessage {
    int64_t connections = 0;
    uint64_t requests = 0;
    std::vector<uint64_t> thread_requests;
    std::vector<int64_t> thread_connections; // client connections each thread serves (a gauge)
    // Upstream connections by state ("connecting", "active", "idle", ...), all threads (a gauge).
    std::map<std::string, int64_t> upstream_connections;
    std::vector<BackendStats> backends;
    std::vector<VassalFigures> vassals;
};

// Router → emperor, first thing on the control socket: send me the routes.
std::string encode_hello();

// `now` (the running router's figures) with the counters of `past` (what routers that have
// exited had counted) added, so figures never go backwards when the router restarts. Gauges
// (connections, in flight) are `now`'s alone; a backend or vassal only `past` knows is kept.
StatsMessage add_counters(const StatsMessage& past, const StatsMessage& now);
std::string encode(const RoutesMessage& m);
std::string encode(const DrainedMessage& m);
std::string encode(const RecycleMessage& m);
std::string encode(const DemandMessage& m);
std::string encode(const StatsMessage& m);
std::string encode(const AcmeChallengesMessage& m);
std::string encode(const AcmeChallengesAppliedMessage& m);

// The "type" of a decoded line: "routes", "hello", "drained", "stats", "recycle", "demand",
// "acme_challenges", "acme_challenges_applied"; throws
// nlohmann::json::exception or std::invalid_argument on a malformed line.
nlohmann::json parse_line(std::string_view line);
RoutesMessage decode_routes(const nlohmann::json& j);
DrainedMessage decode_drained(const nlohmann::json& j);
RecycleMessage decode_recycle(const nlohmann::json& j); // throws on an unknown reason
DemandMessage decode_demand(const nlohmann::json& j);
StatsMessage decode_stats(const nlohmann::json& j);
AcmeChallengesMessage decode_acme_challenges(const nlohmann::json& j);
AcmeChallengesAppliedMessage decode_acme_challenges_applied(const nlohmann::json& j);

// Accumulates bytes from a stream and hands out complete lines.
class LineBuffer {
public:
    void append(std::string_view bytes) { buf_.append(bytes); }
    // Next complete line without its '\n'; false when there is none yet.
    bool next(std::string& line);
    size_t pending() const { return buf_.size() - off_; }

private:
    std::string buf_;
    size_t off_ = 0;
};

} // namespace liege::control
