// What a router thread routes by: an immutable route table and the pools it points to.
//
// The control thread builds a fresh snapshot for every routes message and gives each thread its
// own copy (so the reference counts of different threads never share a cache line); Backend and
// VassalStats objects are shared between the copies, since their figures are per backend.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "liege/balancer.hpp"
#include "liege/route_table.hpp"

namespace liege::router {

// Per-vassal figures the router reports to the emperor (for /status and /metrics).
struct VassalStats {
    static constexpr int kBuckets = 12; // latency upper bounds, see kLatencyBoundsMs
    static constexpr double kLatencyBoundsMs[kBuckets] = {1,   2.5, 5,   10,   25,   50,
                                                          100, 250, 500, 1000, 2500, 10000};
    std::atomic<uint64_t> responses[6] = {}; // by status class
    std::atomic<uint64_t> router_errors{0};  // 502/503/504 the router made itself
    std::atomic<int64_t> in_flight{0};
    std::atomic<uint64_t> latency_buckets[kBuckets + 1] = {}; // last = +Inf
    std::atomic<uint64_t> latency_sum_us{0};

    void record(int status, double ms) {
        if (status >= 100 && status < 600) {
            responses[status / 100].fetch_add(1, std::memory_order_relaxed);
        }
        int b = 0;
        while (b < kBuckets && ms > kLatencyBoundsMs[b]) {
            ++b;
        }
        latency_buckets[b].fetch_add(1, std::memory_order_relaxed);
        latency_sum_us.fetch_add(static_cast<uint64_t>(ms * 1000), std::memory_order_relaxed);
    }
};

struct Pool {
    Pool(std::string v, uint64_t g, LbPolicy policy, std::vector<std::shared_ptr<Backend>> b,
         std::vector<char> draining, std::shared_ptr<VassalStats> st)
        : vassal(std::move(v)), generation(g), balancer(policy, std::move(b), std::move(draining)),
          stats(std::move(st)) {}
    std::string vassal;
    uint64_t generation;
    Balancer balancer;
    std::shared_ptr<VassalStats> stats;
};

struct RouteSnapshot {
    uint64_t version = 0;
    RouteTable table; // entry.index = index into pools
    std::vector<std::unique_ptr<Pool>> pools;
    std::vector<Backend*> serving; // backends some pool routes new requests to, sorted

    bool serves(Backend* b) const { return std::binary_search(serving.begin(), serving.end(), b); }
};

} // namespace liege::router
