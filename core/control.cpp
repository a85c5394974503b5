#include "liege/control.hpp"

#include <algorithm>
#include <stdexcept>
#include <string_view>
#include <type_traits>
#include <utility>

namespace liege::control {

using nlohmann::json;

namespace {

// nlohmann converts a number to the type asked for with a plain cast, which is undefined for a
// float beyond the type's range (a fuzzed "requests": 1e49 did it). A counter or an id must be an
// integer that fits, or the message is refused.
template <typename T> T number(const json& v, std::string_view key) {
    if constexpr (std::is_floating_point_v<T>) {
        if (!v.is_number()) {
            throw std::invalid_argument("control message field '" + std::string(key) +
                                        "' is not a number");
        }
        return v.get<T>();
    } else {
        if (v.is_number_unsigned() && std::in_range<T>(v.get<uint64_t>())) {
            return static_cast<T>(v.get<uint64_t>());
        }
        if (v.is_number_integer() && !v.is_number_unsigned() &&
            std::in_range<T>(v.get<int64_t>())) {
            return static_cast<T>(v.get<int64_t>());
        }
        throw std::invalid_argument("control message field '" + std::string(key) +
                                    "' is not an integer that fits");
    }
}

template <typename T> T number(const json& obj, std::string_view key, T fallback) {
    auto it = obj.find(key);
    return it == obj.end() ? fallback : number<T>(*it, key);
}

template <typename T> std::vector<T> numbers(const json& obj, std::string_view key) {
    std::vector<T> out;
    auto it = obj.find(key);
    if (it == obj.end()) {
        return out;
    }
    for (const auto& v : it->get_ref<const json::array_t&>()) {
        out.push_back(number<T>(v, key));
    }
    return out;
}

} // namespace

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
    m.version = number(j, "version", uint64_t{0});
    for (const auto& r : j.at("routes")) {
        RouteSpec spec;
        spec.vassal = r.at("vassal").get<std::string>();
        spec.generation = number(r, "generation", uint64_t{0});
        spec.hosts = r.value("hosts", std::vector<std::string>{"*"});
        spec.path = r.value("path", std::string("/"));
        spec.concurrency = number(r, "concurrency", 0);
        spec.queue_size = number(r, "queue_size", uint32_t{0});
        spec.queue_timeout_ms = number(r, "queue_timeout_ms", int64_t{30'000});
        spec.failed = r.value("failed", false);
        spec.last_error = r.value("last_error", std::string());
        spec.request_timeout_ms = number(r, "request_timeout_ms", int64_t{0});
        spec.request_buffering = r.value("request_buffering", std::string("auto"));
        spec.trace = r.value("trace", false);
        if (auto t = r.find("tls"); t != r.end()) {
            spec.tls_cert = t->value("cert", std::string());
            spec.tls_key = t->value("key", std::string());
            spec.tls_redirect = t->value("redirect", false);
        }
        for (const auto& b : r.at("backends")) {
            spec.backends.push_back({b.at("address").get<std::string>(), number(b, "worker", 0),
                                     b.value("draining", false),
                                     number(b, "generation", uint64_t{0}),
                                     number(b, "max_requests", uint64_t{0})});
        }
        m.routes.push_back(std::move(spec));
    }
    return m;
}

DrainedMessage decode_drained(const json& j) {
    return {j.at("address").get<std::string>(), number(j, "generation", uint64_t{0})};
}

RecycleMessage decode_recycle(const json& j) {
    RecycleMessage m;
    m.address = j.at("address").get<std::string>();
    m.generation = number(j, "generation", uint64_t{0});
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
    return {number<uint64_t>(j.at("version"), "version"),
            j.at("challenges").get<std::map<std::string, std::string>>()};
}

AcmeChallengesAppliedMessage decode_acme_challenges_applied(const json& j) {
    return {number<uint64_t>(j.at("version"), "version")};
}

StatsMessage decode_stats(const json& j) {
    StatsMessage m;
    m.connections = number(j, "connections", int64_t{0});
    m.requests = number(j, "requests", uint64_t{0});
    m.thread_requests = numbers<uint64_t>(j, "thread_requests");
    m.thread_connections = numbers<int64_t>(j, "thread_connections");
    if (auto u = j.find("upstream_connections"); u != j.end()) {
        for (const auto& [address, count] : u->get_ref<const json::object_t&>()) {
            m.upstream_connections[address] = number<int64_t>(count, "upstream_connections");
        }
    }
    for (const auto& b : j.at("backends")) {
        BackendStats s;
        s.address = b.at("address").get<std::string>();
        s.in_flight = number(b, "in_flight", int64_t{0});
        s.requests = number(b, "requests", uint64_t{0});
        s.failures = number(b, "failures", uint64_t{0});
        auto resp = numbers<uint64_t>(b, "responses");
        for (size_t i = 0; i < resp.size() && i < 6; ++i) {
            s.responses[i] = resp[i];
        }
        m.backends.push_back(std::move(s));
    }
    for (const auto& v : j.value("vassals", json::array())) {
        VassalFigures f;
        f.vassal = v.at("vassal").get<std::string>();
        auto resp = numbers<uint64_t>(v, "responses");
        for (size_t i = 0; i < resp.size() && i < 6; ++i) {
            f.responses[i] = resp[i];
        }
        f.router_errors = number(v, "router_errors", uint64_t{0});
        f.in_flight = number(v, "in_flight", int64_t{0});
        f.in_flight_peak = number(v, "in_flight_peak", int64_t{0});
        f.latency_bounds_ms = numbers<double>(v, "latency_bounds_ms");
        f.latency_buckets = numbers<uint64_t>(v, "latency_buckets");
        f.latency_sum_us = number(v, "latency_sum_us", uint64_t{0});
        f.queued = number(v, "queued", int64_t{0});
        auto rejected = numbers<uint64_t>(v, "rejected");
        for (size_t i = 0; i < rejected.size() && i < kRejections; ++i) {
            f.rejected[i] = rejected[i];
        }
        f.queue_wait_bounds_ms = numbers<double>(v, "queue_wait_bounds_ms");
        f.queue_wait_buckets = numbers<uint64_t>(v, "queue_wait_buckets");
        f.queue_wait_sum_us = number(v, "queue_wait_sum_us", uint64_t{0});
        f.cold_start_bounds_ms = numbers<double>(v, "cold_start_bounds_ms");
        f.cold_start_buckets = numbers<uint64_t>(v, "cold_start_buckets");
        f.cold_start_sum_us = number(v, "cold_start_sum_us", uint64_t{0});
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
