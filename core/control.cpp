#include "liege/control.hpp"

#include <algorithm>
#include <stdexcept>

namespace liege::control {

using nlohmann::json;

std::string encode(const RoutesMessage& m) {
    json routes = json::array();
    for (const auto& r : m.routes) {
        json backends = json::array();
        for (const auto& b : r.backends) {
            backends.push_back({{"address", b.address},
                                {"worker", b.worker},
                                {"draining", b.draining},
                                {"generation", b.generation}});
            if (b.max_requests != 0) {
                backends.back()["max_requests"] = b.max_requests;
            }
        }
        routes.push_back({{"vassal", r.vassal},
                          {"generation", r.generation},
                          {"hosts", r.hosts},
                          {"path", r.path},
                          {"backends", std::move(backends)},
                          {"concurrency", r.concurrency},
                          {"queue_size", r.queue_size},
                          {"queue_timeout_ms", r.queue_timeout_ms},
                          {"failed", r.failed},
                          {"last_error", r.last_error}});
        if (r.request_timeout_ms != 0) {
            routes.back()["request_timeout_ms"] = r.request_timeout_ms;
        }
        if (r.request_buffering != "auto") {
            routes.back()["request_buffering"] = r.request_buffering;
        }
        if (r.trace) {
            routes.back()["trace"] = true;
        }
        if (!r.tls_cert.empty() || r.tls_redirect) {
            routes.back()["tls"] = {
                {"cert", r.tls_cert}, {"key", r.tls_key}, {"redirect", r.tls_redirect}};
        }
    }
    json j = {{"type", "routes"}, {"version", m.version}, {"routes", std::move(routes)}};
    return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

std::string encode_hello() {
    return json{{"type", "hello"}}.dump() + "\n";
}

std::string encode(const DrainedMessage& m) {
    json j = {{"type", "drained"}, {"address", m.address}, {"generation", m.generation}};
    return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

std::string_view to_string(RecycleReason r) {
    switch (r) {
    case RecycleReason::MaxRequests:
        return "max_requests";
    case RecycleReason::MaxRss:
        return "max_rss";
    case RecycleReason::RequestTimeout:
        return "request_timeout";
    }
    return "unknown";
}

std::string encode(const RecycleMessage& m) {
    json j = {{"type", "recycle"},
              {"address", m.address},
              {"generation", m.generation},
              {"reason", std::string(to_string(m.reason))}};
    return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

std::string encode(const DemandMessage& m) {
    json j = {{"type", "demand"}, {"vassal", m.vassal}};
    return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

std::string encode(const AcmeChallengesMessage& m) {
    json j = {{"type", "acme_challenges"}, {"version", m.version}, {"challenges", m.challenges}};
    return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

std::string encode(const AcmeChallengesAppliedMessage& m) {
    json j = {{"type", "acme_challenges_applied"}, {"version", m.version}};
    return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

std::string encode(const StatsMessage& m) {
    json backends = json::array();
    for (const auto& b : m.backends) {
        backends.push_back({{"address", b.address},
                            {"in_flight", b.in_flight},
                            {"requests", b.requests},
                            {"failures", b.failures},
                            {"responses", std::vector<uint64_t>(b.responses, b.responses + 6)}});
    }
    json vassals = json::array();
    for (const auto& v : m.vassals) {
        vassals.push_back(
            {{"vassal", v.vassal},
             {"responses", std::vector<uint64_t>(v.responses, v.responses + 6)},
             {"router_errors", v.router_errors},
             {"in_flight", v.in_flight},
             {"in_flight_peak", v.in_flight_peak},
             {"latency_bounds_ms", v.latency_bounds_ms},
             {"latency_buckets", v.latency_buckets},
             {"latency_sum_us", v.latency_sum_us},
             {"queued", v.queued},
             {"rejected", std::vector<uint64_t>(v.rejected, v.rejected + kRejections)},
             {"queue_wait_bounds_ms", v.queue_wait_bounds_ms},
             {"queue_wait_buckets", v.queue_wait_buckets},
             {"queue_wait_sum_us", v.queue_wait_sum_us},
             {"cold_start_bounds_ms", v.cold_start_bounds_ms},
             {"cold_start_buckets", v.cold_start_buckets},
             {"cold_start_sum_us", v.cold_start_sum_us}});
    }
    json j = {{"type", "stats"},
              {"connections", m.connections},
              {"requests", m.requests},
              {"thread_requests", m.thread_requests},
              {"thread_connections", m.thread_connections},
              {"upstream_connections", m.upstream_connections},
              {"backends", std::move(backends)},
              {"vassals", std::move(vassals)}};
    return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

std::string_view to_string(Rejection r) {
    switch (r) {
    case Rejection::QueueFull:
        return "queue_full";
    case Rejection::QueueTimeout:
        return "queue_timeout";
    case Rejection::Failed:
        return "failed";
    }
    return "unknown";
}

namespace {

// Adds the per-bucket counts of a histogram to another with the same bounds (a histogram with
// other bounds, from a router of another version, is not added).
void add_buckets(std::vector<uint64_t>& into, const std::vector<double>& into_bounds,
                 const std::vector<uint64_t>& past, const std::vector<double>& past_bounds) {
    if (into_bounds != past_bounds || into.size() != past.size()) {
        return;
    }
    for (size_t i = 0; i < past.size(); ++i) {
        into[i] += past[i];
    }
}

// For each item of `past`: add its counters to the item of `into` with the same key, or keep it
// (without its in-flight gauge) when `into` has none.
template <class T, class Key, class Add>
void add_each(std::vector<T>& into, const std::vector<T>& past, Key T::*key, Add add) {
    for (const T& p : past) {
        auto it =
            std::find_if(into.begin(), into.end(), [&](const T& x) { return x.*key == p.*key; });
        if (it != into.end()) {
            add(*it, p);
            continue;
        }
        T gone = p;
        gone.in_flight = 0;
        if constexpr (requires { gone.in_flight_peak; }) {
            gone.in_flight_peak = 0;
        }
        if constexpr (requires { gone.queued; }) {
            gone.queued = 0;
        }
        into.push_back(std::move(gone));
    }
}

} // namespace

StatsMessage add_counters(const StatsMessage& past, const StatsMessage& now) {
    StatsMessage sum = now;
    sum.requests += past.requests;
    if (sum.thread_requests.size() < past.thread_requests.size()) {
        sum.thread_requests.resize(past.thread_requests.size(), 0);
    }
    for (size_t i = 0; i < past.thread_requests.size(); ++i) {
        sum.thread_requests[i] += past.thread_requests[i];
    }
    add_each(sum.backends, past.backends, &BackendStats::address,
             [](BackendStats& into, const BackendStats& b) {
                 into.requests += b.requests;
                 into.failures += b.failures;
                 for (size_t i = 0; i < 6; ++i) {
                     into.responses[i] += b.responses[i];
                 }
             });
    add_each(sum.vassals, past.vassals, &VassalFigures::vassal,
             [](VassalFigures& into, const VassalFigures& v) {
                 for (size_t i = 0; i < 6; ++i) {
                     into.responses[i] += v.responses[i];
                 }
                 into.router_errors += v.router_errors;
                 into.latency_sum_us += v.latency_sum_us;
                 add_buckets(into.latency_buckets, into.latency_bounds_ms, v.latency_buckets,
                             v.latency_bounds_ms);
                 for (int i = 0; i < kRejections; ++i) {
                     into.rejected[i] += v.rejected[i];
                 }
                 into.queue_wait_sum_us += v.queue_wait_sum_us;
                 add_buckets(into.queue_wait_buckets, into.queue_wait_bounds_ms,
                             v.queue_wait_buckets, v.queue_wait_bounds_ms);
                 into.cold_start_sum_us += v.cold_start_sum_us;
                 add_buckets(into.cold_start_buckets, into.cold_start_bounds_ms,
                             v.cold_start_buckets, v.cold_start_bounds_ms);
             });
    return sum;
}

json parse_line(std::string_view line) {
    json j = json::parse(line);
    if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) {
        throw std::invalid_argument("control message without a \"type\"");
    }
    return j;
}

RoutesMessage decode_routes(const json& j) {
    RoutesMessage m;
    m.version = j.value("version", uint64_t{0});
    for (const auto& r : j.at("routes")) {
        RouteSpec spec;
        spec.vassal = r.at("vassal").get<std::string>();
        spec.generation = r.value("generation", uint64_t{0});
        spec.hosts = r.value("hosts", std::vector<std::string>{"*"});
        spec.path = r.value("path", std::string("/"));
        spec.concurrency = r.value("concurrency", 0);
        spec.queue_size = r.value("queue_size", uint32_t{0});
        spec.queue_timeout_ms = r.value("queue_timeout_ms", int64_t{30'000});
        spec.failed = r.value("failed", false);
        spec.last_error = r.value("last_error", std::string());
        spec.request_timeout_ms = r.value("request_timeout_ms", int64_t{0});
        spec.request_buffering = r.value("request_buffering", std::string("auto"));
        spec.trace = r.value("trace", false);
        if (auto t = r.find("tls"); t != r.end()) {
            spec.tls_cert = t->value("cert", std::string());
            spec.tls_key = t->value("key", std::string());
            spec.tls_redirect = t->value("redirect", false);
        }
        for (const auto& b : r.at("backends")) {
            spec.backends.push_back({b.at("address").get<std::string>(), b.value("worker", 0),
                                     b.value("draining", false), b.value("generation", uint64_t{0}),
                                     b.value("max_requests", uint64_t{0})});
        }
        m.routes.push_back(std::move(spec));
    }
    return m;
}

DrainedMessage decode_drained(const json& j) {
    return {j.at("address").get<std::string>(), j.value("generation", uint64_t{0})};
}

RecycleMessage decode_recycle(const json& j) {
    RecycleMessage m;
    m.address = j.at("address").get<std::string>();
    m.generation = j.value("generation", uint64_t{0});
    const std::string reason = j.at("reason").get<std::string>();
    for (int i = 0; i < kRecycleReasons; ++i) {
        if (to_string(static_cast<RecycleReason>(i)) == reason) {
            m.reason = static_cast<RecycleReason>(i);
            return m;
        }
    }
    throw std::invalid_argument("recycle message with an unknown reason '" + reason + "'");
}

DemandMessage decode_demand(const json& j) {
    return {j.at("vassal").get<std::string>()};
}

AcmeChallengesMessage decode_acme_challenges(const json& j) {
    return {j.at("version").get<uint64_t>(),
            j.at("challenges").get<std::map<std::string, std::string>>()};
}

AcmeChallengesAppliedMessage decode_acme_challenges_applied(const json& j) {
    return {j.at("version").get<uint64_t>()};
}

StatsMessage decode_stats(const json& j) {
    StatsMessage m;
    m.connections = j.value("connections", int64_t{0});
    m.requests = j.value("requests", uint64_t{0});
    m.thread_requests = j.value("thread_requests", std::vector<uint64_t>{});
    m.thread_connections = j.value("thread_connections", std::vector<int64_t>{});
    m.upstream_connections = j.value("upstream_connections", std::map<std::string, int64_t>{});
    for (const auto& b : j.at("backends")) {
        BackendStats s;
        s.address = b.at("address").get<std::string>();
        s.in_flight = b.value("in_flight", int64_t{0});
        s.requests = b.value("requests", uint64_t{0});
        s.failures = b.value("failures", uint64_t{0});
        auto resp = b.value("responses", std::vector<uint64_t>{});
        for (size_t i = 0; i < resp.size() && i < 6; ++i) {
            s.responses[i] = resp[i];
        }
        m.backends.push_back(std::move(s));
    }
    for (const auto& v : j.value("vassals", json::array())) {
        VassalFigures f;
        f.vassal = v.at("vassal").get<std::string>();
        auto resp = v.value("responses", std::vector<uint64_t>{});
        for (size_t i = 0; i < resp.size() && i < 6; ++i) {
            f.responses[i] = resp[i];
        }
        f.router_errors = v.value("router_errors", uint64_t{0});
        f.in_flight = v.value("in_flight", int64_t{0});
        f.in_flight_peak = v.value("in_flight_peak", int64_t{0});
        f.latency_bounds_ms = v.value("latency_bounds_ms", std::vector<double>{});
        f.latency_buckets = v.value("latency_buckets", std::vector<uint64_t>{});
        f.latency_sum_us = v.value("latency_sum_us", uint64_t{0});
        f.queued = v.value("queued", int64_t{0});
        auto rejected = v.value("rejected", std::vector<uint64_t>{});
        for (size_t i = 0; i < rejected.size() && i < kRejections; ++i) {
            f.rejected[i] = rejected[i];
        }
        f.queue_wait_bounds_ms = v.value("queue_wait_bounds_ms", std::vector<double>{});
        f.queue_wait_buckets = v.value("queue_wait_buckets", std::vector<uint64_t>{});
        f.queue_wait_sum_us = v.value("queue_wait_sum_us", uint64_t{0});
        f.cold_start_bounds_ms = v.value("cold_start_bounds_ms", std::vector<double>{});
        f.cold_start_buckets = v.value("cold_start_buckets", std::vector<uint64_t>{});
        f.cold_start_sum_us = v.value("cold_start_sum_us", uint64_t{0});
        m.vassals.push_back(std::move(f));
    }
    return m;
}

bool LineBuffer::next(std::string& line) {
    size_t nl = buf_.find('\n', off_);
    if (nl == std::string::npos) {
        if (off_ > 0) {
            buf_.erase(0, off_);
            off_ = 0;
        }
        return false;
    }
    line.assign(buf_, off_, nl - off_);
    off_ = nl + 1;
    if (off_ == buf_.size()) {
        buf_.clear();
        off_ = 0;
    }
    return true;
}

} // namespace liege::control
