// The figures the admin API serves: per-process memory, request rates derived from the router's
// successive load reports, and the Prometheus text rendering of /metrics.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "liege/control.hpp"

namespace liege {

// Resident set size of a process in bytes (from /proc/PID/statm), or -1 if it is gone.
int64_t process_rss_bytes(pid_t pid);

// Requests per second from the router's stats messages (one a second): the difference between
// the last two, over the time between their arrival. Counters that went down (a restarted
// router) count as a fresh start, and figures older than `kStaleMs` read as zero.
class RateTracker {
public:
    static constexpr int64_t kStaleMs = 3500;

    // A stats message arrived at `now_ms` (a steady clock).
    void add(const control::StatsMessage& stats, int64_t now_ms);

    double router(int64_t now_ms) const;
    double vassal(const std::string& name, int64_t now_ms) const;
    std::vector<double> threads(int64_t now_ms) const;

private:
    struct Sample {
        int64_t at_ms = 0;
        uint64_t router = 0;
        std::vector<uint64_t> threads;
        std::map<std::string, uint64_t> vassals; // responses of every class
    };
    static double rate(uint64_t before, uint64_t after, int64_t ms);
    bool fresh(int64_t now_ms) const;

    Sample previous_;
    Sample latest_;
    int samples_ = 0;
};

// Total responses of every status class.
uint64_t total_responses(const control::VassalFigures& f);

// A label value escaped for the Prometheus text format (backslash, double quote, newline).
std::string prometheus_escape(std::string_view value);

// /metrics in the Prometheus text exposition format (version 0.0.4). `status` is the admin
// API's /status document (vassals with their workers' restarts and rss_bytes, reloads and
// failed_reloads, emperor uptime); `stats` the router's latest figures (responses by class,
// requests in flight, latency and queue-wait histograms in milliseconds, queue lengths,
// rejections, connections).
std::string prometheus_text(const nlohmann::json& status, const control::StatsMessage& stats);

} // namespace liege
