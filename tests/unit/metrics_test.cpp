// /metrics rendering, request rates and the admin API's path parsing: pure functions.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "liege/admin.hpp"
#include "liege/metrics.hpp"

using liege::prometheus_escape;
using liege::prometheus_text;
using liege::RateTracker;
using liege::reload_target;
using liege::control::StatsMessage;
using liege::control::VassalFigures;
using nlohmann::json;

namespace {

bool has_line(const std::string& text, const std::string& line) {
    return ("\n" + text).find("\n" + line + "\n") != std::string::npos;
}

json status_with_app() {
    return json::parse(R"({
        "emperor": {"pid": 10, "uptime_seconds": 42},
        "router": {"connections": 3},
        "vassals": [{
            "name": "app", "generation": 2, "reloads": 3, "failed_reloads": 1,
            "workers": [
                {"id": 1, "generation": 2, "state": "ready", "restarts": 0, "rss_bytes": 4096},
                {"id": 1, "generation": 1, "state": "draining", "restarts": 4, "rss_bytes": null},
                {"id": 2, "generation": 2, "state": "backoff", "restarts": 1}
            ]
        }]
    })");
}

StatsMessage stats_for_app() {
    StatsMessage s;
    s.connections = 3;
    s.requests = 17;
    s.thread_requests = {10, 7};
    s.thread_connections = {2, 1};
    s.upstream_connections = {{"active", 1}, {"idle", 4}};
    VassalFigures f;
    f.vassal = "app";
    f.responses[2] = 12;
    f.responses[4] = 1;
    f.responses[5] = 4;
    f.router_errors = 2;
    f.in_flight = 5;
    f.latency_bounds_ms = {1, 2.5, 10};
    f.latency_buckets = {3, 0, 6, 8}; // last = +Inf
    f.latency_sum_us = 1'500'000;
    f.queued = 7;
    f.rejected[static_cast<int>(liege::control::Rejection::QueueFull)] = 9;
    f.rejected[static_cast<int>(liege::control::Rejection::Failed)] = 2;
    f.queue_wait_bounds_ms = {5, 100};
    f.queue_wait_buckets = {4, 1, 2}; // last = +Inf
    f.queue_wait_sum_us = 2'250'000;
    f.cold_start_bounds_ms = {25, 250};
    f.cold_start_buckets = {0, 2, 0}; // last = +Inf
    f.cold_start_sum_us = 180'000;
    s.vassals.push_back(f);
    return s;
}

} // namespace

TEST(Prometheus, RequestsByVassalAndStatusClass) {
    std::string text = prometheus_text(status_with_app(), stats_for_app());
    EXPECT_TRUE(has_line(text, "# TYPE liege_requests_total counter")) << text;
    EXPECT_TRUE(has_line(text, R"(liege_requests_total{vassal="app",code="1xx"} 0)"));
    EXPECT_TRUE(has_line(text, R"(liege_requests_total{vassal="app",code="2xx"} 12)"));
    EXPECT_TRUE(has_line(text, R"(liege_requests_total{vassal="app",code="4xx"} 1)"));
    EXPECT_TRUE(has_line(text, R"(liege_requests_total{vassal="app",code="5xx"} 4)"));
    EXPECT_TRUE(has_line(text, R"(liege_router_errors_total{vassal="app"} 2)"));
    EXPECT_TRUE(has_line(text, R"(liege_requests_in_flight{vassal="app"} 5)"));
}

TEST(Prometheus, LatencyHistogramIsCumulativeInSeconds) {
    std::string text = prometheus_text(status_with_app(), stats_for_app());
    EXPECT_TRUE(has_line(text, "# TYPE liege_request_duration_seconds histogram")) << text;
    EXPECT_TRUE(
        has_line(text, R"(liege_request_duration_seconds_bucket{vassal="app",le="0.001"} 3)"));
    EXPECT_TRUE(
        has_line(text, R"(liege_request_duration_seconds_bucket{vassal="app",le="0.0025"} 3)"));
    EXPECT_TRUE(
        has_line(text, R"(liege_request_duration_seconds_bucket{vassal="app",le="0.01"} 9)"));
    EXPECT_TRUE(
        has_line(text, R"(liege_request_duration_seconds_bucket{vassal="app",le="+Inf"} 17)"));
    EXPECT_TRUE(has_line(text, R"(liege_request_duration_seconds_sum{vassal="app"} 1.5)"));
    EXPECT_TRUE(has_line(text, R"(liege_request_duration_seconds_count{vassal="app"} 17)"));
}

TEST(Prometheus, QueueLengthAndRejectionsByReason) {
    std::string text = prometheus_text(status_with_app(), stats_for_app());
    EXPECT_TRUE(has_line(text, "# TYPE liege_queue_length gauge")) << text;
    EXPECT_TRUE(has_line(text, R"(liege_queue_length{vassal="app"} 7)"));
    EXPECT_TRUE(has_line(text, "# TYPE liege_requests_rejected_total counter"));
    EXPECT_TRUE(
        has_line(text, R"(liege_requests_rejected_total{vassal="app",reason="queue_full"} 9)"));
    EXPECT_TRUE(
        has_line(text, R"(liege_requests_rejected_total{vassal="app",reason="queue_timeout"} 0)"));
    EXPECT_TRUE(has_line(text, R"(liege_requests_rejected_total{vassal="app",reason="failed"} 2)"));
}

TEST(Prometheus, QueueWaitHistogramIsCumulativeInSeconds) {
    std::string text = prometheus_text(status_with_app(), stats_for_app());
    EXPECT_TRUE(has_line(text, "# TYPE liege_queue_wait_seconds histogram")) << text;
    EXPECT_TRUE(has_line(text, R"(liege_queue_wait_seconds_bucket{vassal="app",le="0.005"} 4)"));
    EXPECT_TRUE(has_line(text, R"(liege_queue_wait_seconds_bucket{vassal="app",le="0.1"} 5)"));
    EXPECT_TRUE(has_line(text, R"(liege_queue_wait_seconds_bucket{vassal="app",le="+Inf"} 7)"));
    EXPECT_TRUE(has_line(text, R"(liege_queue_wait_seconds_sum{vassal="app"} 2.25)"));
    EXPECT_TRUE(has_line(text, R"(liege_queue_wait_seconds_count{vassal="app"} 7)"));
}

TEST(Prometheus, WorkersReloadsAndRouter) {
    std::string text = prometheus_text(status_with_app(), stats_for_app());
    // Worker 1 exists in two generations during a reload: the generation keeps the series apart.
    EXPECT_TRUE(
        has_line(text, R"(liege_worker_restarts_total{vassal="app",worker="1",generation="2"} 0)"));
    EXPECT_TRUE(
        has_line(text, R"(liege_worker_restarts_total{vassal="app",worker="1",generation="1"} 4)"));
    EXPECT_TRUE(
        has_line(text, R"(liege_worker_rss_bytes{vassal="app",worker="1",generation="2"} 4096)"));
    // Unknown memory is left out rather than reported as zero.
    EXPECT_EQ(text.find(R"(liege_worker_rss_bytes{vassal="app",worker="1",generation="1"})"),
              std::string::npos);
    EXPECT_EQ(text.find(R"(liege_worker_rss_bytes{vassal="app",worker="2")"), std::string::npos);
    EXPECT_TRUE(has_line(text, R"(liege_workers{vassal="app",state="ready"} 1)"));
    EXPECT_TRUE(has_line(text, R"(liege_workers{vassal="app",state="backoff"} 1)"));
    EXPECT_TRUE(has_line(text, R"(liege_workers{vassal="app",state="starting"} 0)"));
    EXPECT_TRUE(has_line(text, R"(liege_reloads_total{vassal="app"} 3)"));
    EXPECT_TRUE(has_line(text, R"(liege_reloads_failed_total{vassal="app"} 1)"));
    EXPECT_TRUE(has_line(text, "liege_router_connections 3"));
    EXPECT_TRUE(has_line(text, "liege_router_requests_total 17"));
    EXPECT_TRUE(has_line(text, R"(liege_router_thread_requests_total{thread="1"} 7)"));
    EXPECT_TRUE(has_line(text, R"(liege_router_thread_connections{thread="0"} 2)"));
    EXPECT_TRUE(has_line(text, R"(liege_router_thread_connections{thread="1"} 1)"));
    EXPECT_TRUE(has_line(text, R"(liege_router_upstream_connections{state="active"} 1)"));
    EXPECT_TRUE(has_line(text, R"(liege_router_upstream_connections{state="idle"} 4)"));
    EXPECT_TRUE(has_line(text, "liege_uptime_seconds 42"));
}

TEST(Prometheus, EveryFamilyHasHelpAndTypeOnceAndEverySampleIsWellFormed) {
    std::string text = prometheus_text(status_with_app(), stats_for_app());
    ASSERT_TRUE(text.ends_with("\n"));
    std::vector<std::string> types;
    size_t start = 0;
    while (start < text.size()) {
        size_t end = text.find('\n', start);
        std::string line = text.substr(start, end - start);
        start = end + 1;
        if (line.starts_with("# TYPE ")) {
            std::string family = line.substr(7, line.find(' ', 7) - 7);
            EXPECT_EQ(std::count(types.begin(), types.end(), family), 0) << family;
            types.push_back(family);
            continue;
        }
        if (line.starts_with("# HELP ")) {
            continue;
        }
        ASSERT_FALSE(types.empty()) << "sample before any TYPE: " << line;
        EXPECT_TRUE(line.starts_with(types.back())) << line << " under " << types.back();
        size_t space = line.rfind(' ');
        ASSERT_NE(space, std::string::npos) << line;
        std::string value = line.substr(space + 1);
        EXPECT_NO_THROW((void)std::stod(value)) << line;
    }
}

TEST(Prometheus, AVassalTheRouterHasNotReportedOnHasZerosAndNoHistogram) {
    StatsMessage empty;
    std::string text = prometheus_text(status_with_app(), empty);
    EXPECT_TRUE(has_line(text, R"(liege_requests_total{vassal="app",code="2xx"} 0)"));
    EXPECT_TRUE(has_line(text, R"(liege_requests_in_flight{vassal="app"} 0)"));
    EXPECT_TRUE(has_line(text, R"(liege_queue_length{vassal="app"} 0)"));
    EXPECT_TRUE(
        has_line(text, R"(liege_requests_rejected_total{vassal="app",reason="queue_full"} 0)"));
    EXPECT_EQ(text.find("liege_request_duration_seconds_bucket"), std::string::npos);
    EXPECT_EQ(text.find("liege_queue_wait_seconds_bucket"), std::string::npos);
    EXPECT_TRUE(has_line(text, "liege_router_connections 0"));
}

TEST(Prometheus, EscapesLabelValues) {
    EXPECT_EQ(prometheus_escape("plain"), "plain");
    EXPECT_EQ(prometheus_escape(R"(a"b\c)"), R"(a\"b\\c)");
    EXPECT_EQ(prometheus_escape("two\nlines"), R"(two\nlines)");
    json status = json::parse(R"({"vassals": [{"name": "we\"ird", "workers": []}]})");
    std::string text = prometheus_text(status, StatsMessage{});
    EXPECT_TRUE(has_line(text, R"(liege_reloads_total{vassal="we\"ird"} 0)")) << text;
}

TEST(RateTracker, RatesFromTheLastTwoReports) {
    RateTracker rates;
    StatsMessage s = stats_for_app();
    rates.add(s, 1000);
    EXPECT_EQ(rates.router(1000), 0) << "one report is no rate yet";
    s.requests += 50;
    s.thread_requests = {40, 27};
    s.vassals[0].responses[2] += 20;
    rates.add(s, 1500);
    EXPECT_DOUBLE_EQ(rates.router(1600), 100.0);
    EXPECT_DOUBLE_EQ(rates.vassal("app", 1600), 40.0);
    EXPECT_EQ(rates.vassal("other", 1600), 0);
    std::vector<double> threads = rates.threads(1600);
    ASSERT_EQ(threads.size(), 2u);
    EXPECT_DOUBLE_EQ(threads[0], 60.0);
    EXPECT_DOUBLE_EQ(threads[1], 40.0);
    // No report for a while (the router is gone): no rate.
    EXPECT_EQ(rates.router(1500 + RateTracker::kStaleMs + 1), 0);
}

TEST(RateTracker, ARestartedRouterCountingFromZeroIsNoNegativeRate) {
    RateTracker rates;
    StatsMessage s = stats_for_app();
    s.requests = 1000;
    rates.add(s, 1000);
    s.requests = 5;
    rates.add(s, 2000);
    EXPECT_EQ(rates.router(2000), 0);
    s.requests = 15;
    rates.add(s, 3000);
    EXPECT_DOUBLE_EQ(rates.router(3000), 10.0);
}

TEST(AdminPaths, ReloadTarget) {
    EXPECT_EQ(reload_target("/vassals/app/reload"), "app");
    EXPECT_EQ(reload_target("/vassals/my%20app/reload"), "my app");
    EXPECT_EQ(reload_target("/vassals//reload"), std::nullopt);
    EXPECT_EQ(reload_target("/vassals/a/b/reload"), std::nullopt);
    EXPECT_EQ(reload_target("/vassals/app"), std::nullopt);
    EXPECT_EQ(reload_target("/vassals/bad%2/reload"), std::nullopt);
    EXPECT_EQ(reload_target("/vassals/bad%zz/reload"), std::nullopt);
    EXPECT_EQ(reload_target("/reload"), std::nullopt);
}

TEST(Prometheus, ScaleEventsRecyclesAndColdStarts) {
    json status = status_with_app();
    status["vassals"][0]["scale"] = json::parse(R"({"workers": 2, "min": 0, "max": 4,
        "scale_events": {"up": 5, "down": 3}, "cold_starts": 2,
        "recycles": {"max_requests": 7, "max_rss": 1, "request_timeout": 0}})");
    std::string text = prometheus_text(status, stats_for_app());
    EXPECT_TRUE(has_line(text, "# TYPE liege_scale_events_total counter")) << text;
    EXPECT_TRUE(has_line(text, R"(liege_scale_events_total{vassal="app",direction="up"} 5)"));
    EXPECT_TRUE(has_line(text, R"(liege_scale_events_total{vassal="app",direction="down"} 3)"));
    EXPECT_TRUE(
        has_line(text, R"(liege_worker_recycles_total{vassal="app",reason="max_requests"} 7)"));
    EXPECT_TRUE(has_line(text, R"(liege_worker_recycles_total{vassal="app",reason="max_rss"} 1)"));
    EXPECT_TRUE(
        has_line(text, R"(liege_worker_recycles_total{vassal="app",reason="request_timeout"} 0)"));
    EXPECT_TRUE(has_line(text, R"(liege_cold_starts_total{vassal="app"} 2)"));
    EXPECT_TRUE(has_line(text, "# TYPE liege_cold_start_seconds histogram"));
    EXPECT_TRUE(has_line(text, R"(liege_cold_start_seconds_bucket{vassal="app",le="0.25"} 2)"));
    EXPECT_TRUE(has_line(text, R"(liege_cold_start_seconds_sum{vassal="app"} 0.18)"));
    // A vassal from an emperor without scaling has zeros.
    std::string old = prometheus_text(status_with_app(), stats_for_app());
    EXPECT_TRUE(has_line(old, R"(liege_cold_starts_total{vassal="app"} 0)")) << old;
}
