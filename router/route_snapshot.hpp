// What a router thread routes by: an immutable route table and the pools it points to.
//
// The control thread builds a fresh snapshot for every routes message and gives each thread its
// own copy (so the reference counts of different threads never share a cache line); Backend,
// VassalStats and VassalQueue objects are shared between the copies, since they are per backend
// or per vassal.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "liege/balancer.hpp"
#include "liege/control.hpp"
#include "liege/route_table.hpp"

namespace liege::router {

class VassalQueue;

// Times in buckets (upper bounds kBoundsMs, the last bucket past them), for a Prometheus
// histogram.
struct LatencyHistogram {
    static constexpr int kBuckets = 12;
    static constexpr double kBoundsMs[kBuckets] = {1,   2.5, 5,   10,   25,   50,
                                                   100, 250, 500, 1000, 2500, 10000};
    std::atomic<uint64_t> buckets[kBuckets + 1] = {}; // per bucket, not cumulative; last = +Inf
    std::atomic<uint64_t> sum_us{0};

    void record(double ms) {
        int b = 0;
        while (b < kBuckets && ms > kBoundsMs[b]) {
            ++b;
        }
        buckets[b].fetch_add(1, std::memory_order_relaxed);
        sum_us.fetch_add(static_cast<uint64_t>(ms * 1000), std::memory_order_relaxed);
    }
    // Into the control protocol's bounds / buckets / sum triple.
    void report(std::vector<double>& bounds, std::vector<uint64_t>& counts, uint64_t& sum) const {
        bounds.assign(kBoundsMs, kBoundsMs + kBuckets);
        counts.clear();
        for (const auto& b : buckets) {
            counts.push_back(b.load(std::memory_order_relaxed));
        }
        sum = sum_us.load(std::memory_order_relaxed);
    }
};

// Per-vassal figures the router reports to the emperor (for /status and /metrics).
struct VassalStats {
    std::atomic<uint64_t> responses[6] = {}; // by status class
    std::atomic<uint64_t> router_errors{0};  // 502/503/504 the router made itself
    std::atomic<int64_t> in_flight{0};
    std::atomic<int64_t> in_flight_peak{0}; // the most in flight at once since the last report
    LatencyHistogram latency;               // every response, from its request's first byte
    LatencyHistogram queue_wait;            // every request that waited in the vassal's queue
    LatencyHistogram cold_start; // those that waited with no worker serving, to their forwarding
    std::atomic<uint64_t> rejected[control::kRejections] = {}; // 503s by control::Rejection

    void record(int status, double ms) {
        if (status >= 100 && status < 600) {
            responses[status / 100].fetch_add(1, std::memory_order_relaxed);
        }
        latency.record(ms);
    }
    // A request joins (queued or not): counted in flight, and in the peak.
    void enter() {
        const int64_t n = in_flight.fetch_add(1, std::memory_order_relaxed) + 1;
        int64_t peak = in_flight_peak.load(std::memory_order_relaxed);
        while (n > peak &&
               !in_flight_peak.compare_exchange_weak(peak, n, std::memory_order_relaxed)) {
        }
    }
    void reject(control::Rejection why) {
        rejected[static_cast<int>(why)].fetch_add(1, std::memory_order_relaxed);
    }
};

struct Pool {
    Pool(std::string v, uint64_t g, LbPolicy policy, std::vector<std::shared_ptr<Backend>> b,
         std::vector<char> draining, std::shared_ptr<VassalStats> st,
         std::shared_ptr<VassalQueue> q)
        : vassal(std::move(v)), generation(g), balancer(policy, std::move(b), std::move(draining)),
          stats(std::move(st)), queue(std::move(q)) {}
    std::string vassal;
    uint64_t generation;
    Balancer balancer;
    std::shared_ptr<VassalStats> stats;
    std::shared_ptr<VassalQueue> queue; // the vassal's, shared by every snapshot and thread
    bool tls_redirect = false;          // [tls] redirect: plain HTTP gets 308 to https
    uint64_t request_timeout_ms = 0;    // [recycle] request_timeout; 0 = none
    // [upstream] request_buffering resolved: a request body is read in full (to memory, then a
    // temporary file) before a backend is chosen; WebSocket upgrades are never buffered.
    bool buffer_bodies = false;
    bool trace = false;       // [upstream] trace: TRACE is forwarded, not 405
    bool has_workers = false; // some backend is not draining
};

struct RouteSnapshot {
    uint64_t version = 0;
    RouteTable table; // entry.index = index into pools
    std::vector<std::unique_ptr<Pool>> pools;
    std::vector<Backend*> serving; // backends some pool routes new requests to, sorted

    bool serves(Backend* b) const { return std::binary_search(serving.begin(), serving.end(), b); }
};

} // namespace liege::router
