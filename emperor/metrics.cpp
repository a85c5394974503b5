#include "liege/metrics.hpp"

#include <unistd.h>

#include <cstdio>

#include <fmt/format.h>

namespace liege {

using nlohmann::json;

int64_t process_rss_bytes(pid_t pid) {
    if (pid <= 0) {
        return -1;
    }
    char path[64];
    std::snprintf(path, sizeof(path), "/proc/%d/statm", static_cast<int>(pid));
    FILE* f = std::fopen(path, "re");
    if (f == nullptr) {
        return -1;
    }
    long long size = 0;
    long long resident = 0;
    int n = std::fscanf(f, "%lld %lld", &size, &resident);
    std::fclose(f);
    if (n != 2) {
        return -1;
    }
    static const long page = ::sysconf(_SC_PAGESIZE);
    return static_cast<int64_t>(resident) * page;
}

uint64_t total_responses(const control::VassalFigures& f) {
    uint64_t total = 0;
    for (uint64_t c : f.responses) {
        total += c;
    }
    return total;
}

// ---------------------------------------------------------------------------------------------
// RateTracker

void RateTracker::add(const control::StatsMessage& stats, int64_t now_ms) {
    Sample s;
    s.at_ms = now_ms;
    s.router = stats.requests;
    s.threads = stats.thread_requests;
    for (const auto& v : stats.vassals) {
        s.vassals[v.vassal] = total_responses(v);
    }
    previous_ = std::move(latest_);
    latest_ = std::move(s);
    ++samples_;
}

bool RateTracker::fresh(int64_t now_ms) const {
    return samples_ >= 2 && now_ms - latest_.at_ms <= kStaleMs;
}

double RateTracker::rate(uint64_t before, uint64_t after, int64_t ms) {
    if (ms <= 0 || after < before) {
        return 0; // counters went down: a new router started from zero
    }
    return static_cast<double>(after - before) * 1000.0 / static_cast<double>(ms);
}

double RateTracker::router(int64_t now_ms) const {
    if (!fresh(now_ms)) {
        return 0;
    }
    return rate(previous_.router, latest_.router, latest_.at_ms - previous_.at_ms);
}

double RateTracker::vassal(const std::string& name, int64_t now_ms) const {
    if (!fresh(now_ms)) {
        return 0;
    }
    auto after = latest_.vassals.find(name);
    if (after == latest_.vassals.end()) {
        return 0;
    }
    auto before = previous_.vassals.find(name);
    return rate(before != previous_.vassals.end() ? before->second : 0, after->second,
                latest_.at_ms - previous_.at_ms);
}

std::vector<double> RateTracker::threads(int64_t now_ms) const {
    std::vector<double> out(latest_.threads.size(), 0.0);
    if (!fresh(now_ms) || previous_.threads.size() != latest_.threads.size()) {
        return out;
    }
    for (size_t i = 0; i < out.size(); ++i) {
        out[i] = rate(previous_.threads[i], latest_.threads[i], latest_.at_ms - previous_.at_ms);
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// Prometheus

std::string prometheus_escape(std::string_view value) {
    std::string out;
    out.reserve(value.size());
    for (char c : value) {
        switch (c) {
        case '\\':
            out += "\\\\";
            break;
        case '"':
            out += "\\\"";
            break;
        case '\n':
            out += "\\n";
            break;
        default:
            out += c;
        }
    }
    return out;
}

namespace {

// Builds the exposition text one metric family at a time: HELP and TYPE once, then samples.
class Exposition {
public:
    void family(std::string_view name, std::string_view type, std::string_view help) {
        fmt::format_to(std::back_inserter(out_), "# HELP {} {}\n# TYPE {} {}\n", name, help, name,
                       type);
    }
    // `labels` as alternating names and values; values are escaped here.
    template <typename Value>
    void sample(std::string_view name, std::initializer_list<std::string_view> labels,
                Value value) {
        out_ += name;
        if (labels.size() != 0) {
            out_ += '{';
            bool first = true;
            for (auto it = labels.begin(); it != labels.end(); it += 2) {
                if (!first) {
                    out_ += ',';
                }
                first = false;
                fmt::format_to(std::back_inserter(out_), "{}=\"{}\"", *it,
                               prometheus_escape(*(it + 1)));
            }
            out_ += '}';
        }
        fmt::format_to(std::back_inserter(out_), " {}\n", value);
    }
    std::string take() { return std::move(out_); }

private:
    std::string out_;
};

std::string le_value(double bound_ms) {
    return fmt::format("{}", bound_ms / 1000.0);
}

// Where a histogram is in the router's figures of a vassal: bucket bounds in milliseconds,
// per-bucket counts (not cumulative; the last one past the largest bound), the sum in
// microseconds.
struct HistogramOf {
    std::vector<double> control::VassalFigures::*bounds_ms;
    std::vector<uint64_t> control::VassalFigures::*buckets;
    uint64_t control::VassalFigures::*sum_us;
};

// One vassal's histogram, in seconds, with cumulative buckets.
void histogram(Exposition& e, const std::string& family, const std::string& vassal,
               const control::VassalFigures& f, const HistogramOf& field) {
    const auto& bounds_ms = f.*field.bounds_ms;
    const auto& buckets = f.*field.buckets;
    const std::string bucket = family + "_bucket";
    uint64_t cumulative = 0;
    for (size_t i = 0; i < bounds_ms.size() && i < buckets.size(); ++i) {
        cumulative += buckets[i];
        e.sample(bucket, {"vassal", vassal, "le", le_value(bounds_ms[i])}, cumulative);
    }
    uint64_t count = 0;
    for (uint64_t b : buckets) {
        count += b;
    }
    e.sample(bucket, {"vassal", vassal, "le", "+Inf"}, count);
    e.sample(family + "_sum", {"vassal", vassal}, static_cast<double>(f.*field.sum_us) / 1e6);
    e.sample(family + "_count", {"vassal", vassal}, count);
}

} // namespace

std::string prometheus_text(const json& status, const control::StatsMessage& stats) {
    static const json kEmpty = json::array();
    const json& vassals =
        status.contains("vassals") && status["vassals"].is_array() ? status["vassals"] : kEmpty;
    std::map<std::string, const control::VassalFigures*> figures;
    for (const auto& f : stats.vassals) {
        figures[f.vassal] = &f;
    }
    auto figures_of = [&](const json& v) -> const control::VassalFigures* {
        auto it = figures.find(v.value("name", std::string()));
        return it != figures.end() ? it->second : nullptr;
    };
    static const control::VassalFigures kNone;
    Exposition e;

    e.family("liege_requests_total", "counter",
             "Responses the router sent for a vassal, by status class (5xx includes the router's "
             "own 502, 503 and 504).");
    for (const auto& v : vassals) {
        const auto* f = figures_of(v);
        const std::string name = v.value("name", std::string());
        for (int c = 1; c <= 5; ++c) {
            const std::string code = std::to_string(c) + "xx";
            e.sample("liege_requests_total", {"vassal", name, "code", code},
                     (f != nullptr ? f : &kNone)->responses[c]);
        }
    }

    // A family with one sample per vassal; a vassal the router has not reported on counts 0.
    auto per_vassal = [&](std::string_view family, std::string_view type, std::string_view help,
                          auto value_of) {
        e.family(family, type, help);
        for (const auto& v : vassals) {
            const auto* f = figures_of(v);
            e.sample(family, {"vassal", v.value("name", std::string())},
                     value_of(f != nullptr ? *f : kNone));
        }
    };
    // A histogram family, one histogram per vassal the router has reported on.
    auto histograms = [&](const std::string& family, std::string_view help,
                          const HistogramOf& field) {
        e.family(family, "histogram", help);
        for (const auto& v : vassals) {
            if (const auto* f = figures_of(v)) {
                histogram(e, family, v.value("name", std::string()), *f, field);
            }
        }
    };
    using Figures = control::VassalFigures;

    per_vassal("liege_router_errors_total", "counter",
               "Responses the router made itself for a vassal (502, 503, 504).",
               [](const Figures& f) { return f.router_errors; });
    per_vassal("liege_requests_in_flight", "gauge",
               "Requests of a vassal the router has sent on and not yet answered.",
               [](const Figures& f) { return f.in_flight; });
    histograms("liege_request_duration_seconds",
               "Time from a request reaching the router to its response head, per vassal.",
               {&Figures::latency_bounds_ms, &Figures::latency_buckets, &Figures::latency_sum_us});
    per_vassal("liege_queue_length", "gauge",
               "Requests of a vassal waiting in the router for a free worker slot.",
               [](const Figures& f) { return f.queued; });
    histograms("liege_queue_wait_seconds",
               "Time a request of a vassal waited in the router's queue, per request that waited.",
               {&Figures::queue_wait_bounds_ms, &Figures::queue_wait_buckets,
                &Figures::queue_wait_sum_us});

    e.family("liege_requests_rejected_total", "counter",
             "Requests of a vassal the router refused with 503: its queue was full, the request "
             "waited past the queue timeout, or the vassal had failed.");
    for (const auto& v : vassals) {
        const auto* f = figures_of(v);
        const std::string name = v.value("name", std::string());
        for (int r = 0; r < control::kRejections; ++r) {
            e.sample(
                "liege_requests_rejected_total",
                {"vassal", name, "reason", control::to_string(static_cast<control::Rejection>(r))},
                (f != nullptr ? f : &kNone)->rejected[r]);
        }
    }

    // Scaling and recycling, from the emperor's counts in each vassal's "scale".
    auto scale_count = [](const json& v, std::string_view group, std::string_view key) {
        const json* j = &v;
        for (std::string_view k : {std::string_view("scale"), group}) {
            if (k.empty()) {
                continue;
            }
            auto it = j->find(k);
            if (it == j->end() || !it->is_object()) {
                return uint64_t{0};
            }
            j = &*it;
        }
        auto it = j->find(key);
        return it != j->end() && it->is_number_unsigned() ? it->get<uint64_t>() : uint64_t{0};
    };
    e.family("liege_scale_events_total", "counter",
             "Workers a vassal's pool added (up: demand, a cold start) or stopped (down: idle, or "
             "its slot taken under --max-workers).");
    for (const auto& v : vassals) {
        for (const char* direction : {"up", "down"}) {
            e.sample("liege_scale_events_total",
                     {"vassal", v.value("name", std::string()), "direction", direction},
                     scale_count(v, "scale_events", direction));
        }
    }
    e.family("liege_worker_recycles_total", "counter",
             "Workers of a vassal replaced by [recycle], by reason.");
    for (const auto& v : vassals) {
        for (int r = 0; r < control::kRecycleReasons; ++r) {
            const std::string_view reason =
                control::to_string(static_cast<control::RecycleReason>(r));
            e.sample("liege_worker_recycles_total",
                     {"vassal", v.value("name", std::string()), "reason", std::string(reason)},
                     scale_count(v, "recycles", reason));
        }
    }
    e.family("liege_cold_starts_total", "counter",
             "Workers started for a request that found none of its vassal's running.");
    for (const auto& v : vassals) {
        e.sample("liege_cold_starts_total", {"vassal", v.value("name", std::string())},
                 scale_count(v, "", "cold_starts"));
    }
    histograms("liege_cold_start_seconds",
               "Time from the arrival of a request held for a cold start to its forwarding.",
               {&Figures::cold_start_bounds_ms, &Figures::cold_start_buckets,
                &Figures::cold_start_sum_us});

    // Workers are labelled with their generation too: during a reload, worker 1 of the old and
    // of the new generation both exist, and two series may not share their labels.
    auto each_worker = [&](auto&& fn) {
        for (const auto& v : vassals) {
            if (!v.contains("workers") || !v["workers"].is_array()) {
                continue;
            }
            for (const auto& w : v["workers"]) {
                fn(v.value("name", std::string()), std::to_string(w.value("id", 0)),
                   std::to_string(w.value("generation", uint64_t{0})), w);
            }
        }
    };
    e.family("liege_worker_restarts_total", "counter",
             "Times the emperor restarted a worker after it exited or failed.");
    each_worker([&](const std::string& vassal, const std::string& id, const std::string& gen,
                    const json& w) {
        e.sample("liege_worker_restarts_total", {"vassal", vassal, "worker", id, "generation", gen},
                 w.value("restarts", 0));
    });
    e.family("liege_worker_rss_bytes", "gauge", "Resident memory of a worker process.");
    each_worker([&](const std::string& vassal, const std::string& id, const std::string& gen,
                    const json& w) {
        if (w.contains("rss_bytes") && w["rss_bytes"].is_number()) {
            e.sample("liege_worker_rss_bytes", {"vassal", vassal, "worker", id, "generation", gen},
                     w["rss_bytes"].get<int64_t>());
        }
    });
    e.family("liege_workers", "gauge", "Workers of a vassal by state.");
    for (const auto& v : vassals) {
        std::map<std::string, int> by_state{
            {"starting", 0}, {"ready", 0}, {"draining", 0}, {"stopped", 0}, {"backoff", 0}};
        if (v.contains("workers") && v["workers"].is_array()) {
            for (const auto& w : v["workers"]) {
                ++by_state[w.value("state", std::string("unknown"))];
            }
        }
        for (const auto& [state, n] : by_state) {
            e.sample("liege_workers", {"vassal", v.value("name", std::string()), "state", state},
                     n);
        }
    }

    e.family("liege_reloads_total", "counter", "Reloads of a vassal begun.");
    for (const auto& v : vassals) {
        e.sample("liege_reloads_total", {"vassal", v.value("name", std::string())},
                 v.value("reloads", uint64_t{0}));
    }
    e.family("liege_reloads_failed_total", "counter",
             "Reloads of a vassal abandoned (the new generation failed; the old one kept "
             "serving).");
    for (const auto& v : vassals) {
        e.sample("liege_reloads_failed_total", {"vassal", v.value("name", std::string())},
                 v.value("failed_reloads", uint64_t{0}));
    }
    e.family("liege_vassal_generation", "gauge", "The generation of a vassal that serves.");
    for (const auto& v : vassals) {
        e.sample("liege_vassal_generation", {"vassal", v.value("name", std::string())},
                 v.value("generation", uint64_t{0}));
    }

    e.family("liege_router_connections", "gauge", "Client connections the router has open.");
    e.sample("liege_router_connections", {}, stats.connections);
    e.family("liege_router_requests_total", "counter", "Requests the router has read.");
    e.sample("liege_router_requests_total", {}, stats.requests);
    e.family("liege_router_thread_requests_total", "counter",
             "Requests read by each router thread.");
    for (size_t i = 0; i < stats.thread_requests.size(); ++i) {
        e.sample("liege_router_thread_requests_total", {"thread", std::to_string(i)},
                 stats.thread_requests[i]);
    }
    e.family("liege_router_thread_connections", "gauge",
             "Client connections each router thread serves.");
    for (size_t i = 0; i < stats.thread_connections.size(); ++i) {
        e.sample("liege_router_thread_connections", {"thread", std::to_string(i)},
                 stats.thread_connections[i]);
    }
    e.family("liege_router_upstream_connections", "gauge",
             "The router's connections to workers, by state (connecting, active, idle).");
    for (const auto& [state, n] : stats.upstream_connections) {
        e.sample("liege_router_upstream_connections", {"state", state}, n);
    }
    if (status.contains("emperor") && status["emperor"].contains("uptime_seconds")) {
        e.family("liege_uptime_seconds", "gauge", "Time since the emperor started.");
        e.sample("liege_uptime_seconds", {}, status["emperor"]["uptime_seconds"].get<int64_t>());
    }
    return e.take();
}

} // namespace liege
