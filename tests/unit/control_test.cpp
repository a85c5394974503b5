// The emperor ⇄ router control messages: encoding, decoding, and counters across router restarts.
#include "liege/control.hpp"

#include <stdexcept>
#include <string>

#include <gtest/gtest.h>

namespace {

using liege::control::add_counters;
using liege::control::BackendStats;
using liege::control::StatsMessage;
using liege::control::VassalFigures;

VassalFigures figures(const std::string& vassal, uint64_t ok, uint64_t in_flight) {
    VassalFigures f;
    f.vassal = vassal;
    f.responses[2] = ok;
    f.router_errors = 1;
    f.in_flight = static_cast<int64_t>(in_flight);
    f.latency_bounds_ms = {1, 10};
    f.latency_buckets = {ok, 0, 1};
    f.latency_sum_us = 100 * ok;
    return f;
}

BackendStats backend(const std::string& address, uint64_t requests, int64_t in_flight) {
    BackendStats b;
    b.address = address;
    b.requests = requests;
    b.in_flight = in_flight;
    b.responses[2] = requests;
    return b;
}

TEST(Control, HelloIsOneLineOfTypeHello) {
    std::string line = liege::control::encode_hello();
    ASSERT_FALSE(line.empty());
    EXPECT_EQ(line.back(), '\n');
    EXPECT_EQ(line.find('\n'), line.size() - 1);
    auto j = liege::control::parse_line(line.substr(0, line.size() - 1));
    EXPECT_EQ(j["type"], "hello");
}

TEST(Control, StatsRoundTrip) {
    StatsMessage m;
    m.connections = 3;
    m.requests = 42;
    m.thread_requests = {20, 22};
    m.thread_connections = {2, 1};
    m.upstream_connections = {{"active", 2}, {"idle", 5}};
    m.backends.push_back(backend("127.0.0.1:9000", 40, 1));
    m.vassals.push_back(figures("app", 40, 1));
    std::string line = liege::control::encode(m);
    auto back = liege::control::decode_stats(liege::control::parse_line(line));
    EXPECT_EQ(back.connections, 3);
    EXPECT_EQ(back.requests, 42u);
    EXPECT_EQ(back.thread_requests, (std::vector<uint64_t>{20, 22}));
    EXPECT_EQ(back.thread_connections, (std::vector<int64_t>{2, 1}));
    EXPECT_EQ(back.upstream_connections,
              (std::map<std::string, int64_t>{{"active", 2}, {"idle", 5}}));
    ASSERT_EQ(back.backends.size(), 1u);
    EXPECT_EQ(back.backends[0].address, "127.0.0.1:9000");
    EXPECT_EQ(back.backends[0].responses[2], 40u);
    ASSERT_EQ(back.vassals.size(), 1u);
    EXPECT_EQ(back.vassals[0].latency_buckets, (std::vector<uint64_t>{40, 0, 1}));
    EXPECT_EQ(back.vassals[0].latency_sum_us, 4000u);
}

TEST(Control, CountersOfAnExitedRouterCarryOverAndGaugesDoNot) {
    StatsMessage past;
    past.connections = 9;
    past.requests = 100;
    past.thread_requests = {60, 40};
    past.backends.push_back(backend("127.0.0.1:9000", 70, 0));
    past.backends.push_back(backend("127.0.0.1:9001", 30, 0)); // a worker gone since
    past.vassals.push_back(figures("app", 100, 0));
    past.vassals.push_back(figures("old", 5, 0)); // a vassal the new router has not seen

    StatsMessage now;
    now.connections = 2;
    now.requests = 10;
    now.thread_requests = {4, 6};
    now.backends.push_back(backend("127.0.0.1:9000", 10, 2));
    now.vassals.push_back(figures("app", 10, 2));

    StatsMessage sum = add_counters(past, now);
    EXPECT_EQ(sum.connections, 2);
    EXPECT_EQ(sum.requests, 110u);
    EXPECT_EQ(sum.thread_requests, (std::vector<uint64_t>{64, 46}));
    ASSERT_EQ(sum.backends.size(), 2u);
    EXPECT_EQ(sum.backends[0].requests, 80u);
    EXPECT_EQ(sum.backends[0].responses[2], 80u);
    EXPECT_EQ(sum.backends[0].in_flight, 2);
    EXPECT_EQ(sum.backends[1].address, "127.0.0.1:9001");
    EXPECT_EQ(sum.backends[1].requests, 30u);
    ASSERT_EQ(sum.vassals.size(), 2u);
    EXPECT_EQ(sum.vassals[0].vassal, "app");
    EXPECT_EQ(sum.vassals[0].responses[2], 110u);
    EXPECT_EQ(sum.vassals[0].router_errors, 2u);
    EXPECT_EQ(sum.vassals[0].in_flight, 2);
    EXPECT_EQ(sum.vassals[0].latency_buckets, (std::vector<uint64_t>{110, 0, 2}));
    EXPECT_EQ(sum.vassals[0].latency_sum_us, 11000u);
    EXPECT_EQ(sum.vassals[1].vassal, "old");
    EXPECT_EQ(sum.vassals[1].responses[2], 5u);
}

TEST(Control, ThreadCountsOfDifferentLengthsAddPerIndex) {
    StatsMessage past;
    past.thread_requests = {1, 2, 3};
    StatsMessage now;
    now.thread_requests = {10};
    EXPECT_EQ(add_counters(past, now).thread_requests, (std::vector<uint64_t>{11, 2, 3}));
}

} // namespace

TEST(Control, BackendsCarryTheirGeneration) {
    liege::control::RoutesMessage m;
    m.version = 4;
    liege::control::RouteSpec r;
    r.vassal = "hello";
    r.generation = 3;
    r.backends = {{"127.0.0.1:4000", 1, false, 3}, {"127.0.0.1:4001", 2, true, 2}};
    m.routes.push_back(r);
    std::string line = liege::control::encode(m);
    auto back =
        liege::control::decode_routes(liege::control::parse_line(line.substr(0, line.size() - 1)));
    ASSERT_EQ(back.routes.size(), 1u);
    ASSERT_EQ(back.routes[0].backends.size(), 2u);
    EXPECT_EQ(back.routes[0].backends[0].generation, 3u);
    EXPECT_EQ(back.routes[0].backends[1].generation, 2u);
    EXPECT_TRUE(back.routes[0].backends[1].draining);
}

TEST(Control, DrainedNamesAddressAndGeneration) {
    std::string line = liege::control::encode(liege::control::DrainedMessage{"unix:/x.sock", 7});
    auto j = liege::control::parse_line(line.substr(0, line.size() - 1));
    EXPECT_EQ(j["type"], "drained");
    auto m = liege::control::decode_drained(j);
    EXPECT_EQ(m.address, "unix:/x.sock");
    EXPECT_EQ(m.generation, 7u);
}

TEST(Control, ABackendWithoutAGenerationIsStatic) {
    auto m = liege::control::decode_routes(liege::control::parse_line(
        R"({"type":"routes","routes":[{"vassal":"v","backends":[{"address":"127.0.0.1:1"}]}]})"));
    EXPECT_EQ(m.routes.at(0).backends.at(0).generation, 0u);
}

TEST(Control, RoutesCarryConcurrencyQueueAndFailure) {
    liege::control::RoutesMessage m;
    liege::control::RouteSpec r;
    r.vassal = "shop";
    r.concurrency = 1;
    r.queue_size = 100;
    r.queue_timeout_ms = 2500;
    r.failed = true;
    r.last_error = "worker 1 exited with status 3";
    m.routes.push_back(r);
    auto back =
        liege::control::decode_routes(liege::control::parse_line(liege::control::encode(m)));
    ASSERT_EQ(back.routes.size(), 1u);
    EXPECT_EQ(back.routes[0].concurrency, 1);
    EXPECT_EQ(back.routes[0].queue_size, 100u);
    EXPECT_EQ(back.routes[0].queue_timeout_ms, 2500);
    EXPECT_TRUE(back.routes[0].failed);
    EXPECT_EQ(back.routes[0].last_error, "worker 1 exited with status 3");
}

TEST(Control, QueueCountersCarryOverAndTheQueueLengthDoesNot) {
    auto with_queue = [](uint64_t full, uint64_t waited, int64_t queued) {
        StatsMessage m;
        liege::control::VassalFigures f;
        f.vassal = "app";
        f.queued = queued;
        f.rejected[static_cast<int>(liege::control::Rejection::QueueFull)] = full;
        f.queue_wait_bounds_ms = {10, 100};
        f.queue_wait_buckets = {waited, 0, 1};
        f.queue_wait_sum_us = waited * 1000;
        m.vassals.push_back(f);
        return m;
    };
    StatsMessage past = with_queue(3, 5, 7);
    past.vassals.push_back(with_queue(1, 1, 4).vassals[0]);
    past.vassals[1].vassal = "gone";
    StatsMessage sum = add_counters(past, with_queue(2, 1, 1));
    ASSERT_EQ(sum.vassals.size(), 2u);
    EXPECT_EQ(sum.vassals[0].queued, 1);
    EXPECT_EQ(sum.vassals[0].rejected[0], 5u);
    EXPECT_EQ(sum.vassals[0].queue_wait_buckets, (std::vector<uint64_t>{6, 0, 2}));
    EXPECT_EQ(sum.vassals[0].queue_wait_sum_us, 6000u);
    EXPECT_EQ(sum.vassals[1].queued, 0); // a gauge of a router that has gone
    auto round =
        liege::control::decode_stats(liege::control::parse_line(liege::control::encode(sum)));
    EXPECT_EQ(round.vassals[0].rejected[0], 5u);
    EXPECT_EQ(round.vassals[0].queued, 1);
    EXPECT_EQ(round.vassals[0].queue_wait_bounds_ms, (std::vector<double>{10, 100}));
    EXPECT_EQ(liege::control::to_string(liege::control::Rejection::QueueTimeout), "queue_timeout");
}

TEST(Control, RoutesCarryTheVassalsCertificateAndRedirect) {
    liege::control::RoutesMessage m;
    liege::control::RouteSpec with;
    with.vassal = "shop";
    with.hosts = {"shop.test"};
    with.tls_cert = "/etc/ssl/shop.pem";
    with.tls_key = "/etc/ssl/shop.key";
    with.tls_redirect = true;
    liege::control::RouteSpec without;
    without.vassal = "plain";
    m.routes = {with, without};
    std::string line = liege::control::encode(m);
    auto back =
        liege::control::decode_routes(liege::control::parse_line(line.substr(0, line.size() - 1)));
    ASSERT_EQ(back.routes.size(), 2u);
    EXPECT_EQ(back.routes[0].tls_cert, "/etc/ssl/shop.pem");
    EXPECT_EQ(back.routes[0].tls_key, "/etc/ssl/shop.key");
    EXPECT_TRUE(back.routes[0].tls_redirect);
    EXPECT_EQ(back.routes[1].tls_cert, "");
    EXPECT_FALSE(back.routes[1].tls_redirect);
    EXPECT_EQ(line.find("\"tls\"", line.find("plain")), std::string::npos)
        << "a route without TLS settings carries none";
}

TEST(Control, RecycleAndDemandRoundTrip) {
    using liege::control::RecycleReason;
    for (auto why :
         {RecycleReason::MaxRequests, RecycleReason::MaxRss, RecycleReason::RequestTimeout}) {
        std::string line =
            liege::control::encode(liege::control::RecycleMessage{"127.0.0.1:9", 4, why});
        auto j = liege::control::parse_line(line.substr(0, line.size() - 1));
        EXPECT_EQ(j["type"], "recycle");
        auto m = liege::control::decode_recycle(j);
        EXPECT_EQ(m.address, "127.0.0.1:9");
        EXPECT_EQ(m.generation, 4u);
        EXPECT_EQ(m.reason, why);
    }
    EXPECT_EQ(liege::control::to_string(RecycleReason::MaxRss), "max_rss");
    EXPECT_THROW(liege::control::decode_recycle(liege::control::parse_line(
                     R"({"type":"recycle","address":"a:1","reason":"boredom"})")),
                 std::invalid_argument);
    std::string line = liege::control::encode(liege::control::DemandMessage{"shop"});
    auto j = liege::control::parse_line(line.substr(0, line.size() - 1));
    EXPECT_EQ(j["type"], "demand");
    EXPECT_EQ(liege::control::decode_demand(j).vassal, "shop");
}

TEST(Control, RoutesCarryRequestTimeoutAndEachBackendsRequestLimit) {
    liege::control::RoutesMessage m;
    liege::control::RouteSpec r;
    r.vassal = "shop";
    r.request_timeout_ms = 60'000;
    r.backends.push_back({"127.0.0.1:1", 1, false, 2, 987});
    r.backends.push_back({"127.0.0.1:2", 2, false, 2, 0});
    m.routes.push_back(r);
    auto back =
        liege::control::decode_routes(liege::control::parse_line(liege::control::encode(m)));
    ASSERT_EQ(back.routes.size(), 1u);
    EXPECT_EQ(back.routes[0].request_timeout_ms, 60'000);
    EXPECT_EQ(back.routes[0].backends.at(0).max_requests, 987u);
    EXPECT_EQ(back.routes[0].backends.at(1).max_requests, 0u);
    liege::control::RouteSpec plain;
    plain.vassal = "plain";
    m.routes = {plain};
    EXPECT_EQ(liege::control::encode(m).find("request_timeout_ms"), std::string::npos)
        << "absent unless set";
}

TEST(Control, RoutesCarryRequestBufferingAndTrace) {
    liege::control::RoutesMessage m;
    liege::control::RouteSpec r;
    r.vassal = "shop";
    r.request_buffering = "always";
    r.trace = true;
    liege::control::RouteSpec plain;
    plain.vassal = "plain";
    m.routes = {r, plain};
    const std::string line = liege::control::encode(m);
    auto back = liege::control::decode_routes(liege::control::parse_line(line));
    ASSERT_EQ(back.routes.size(), 2u);
    EXPECT_EQ(back.routes[0].request_buffering, "always");
    EXPECT_TRUE(back.routes[0].trace);
    EXPECT_EQ(back.routes[1].request_buffering, "auto") << "absent means the default";
    EXPECT_FALSE(back.routes[1].trace);
    EXPECT_EQ(line.find("request_buffering"), line.rfind("request_buffering"))
        << "only the route that is not auto carries it";
}

TEST(Control, ColdStartHistogramCarriesOverAndThePeakIsAGauge) {
    auto with = [](uint64_t cold, int64_t peak) {
        StatsMessage m;
        VassalFigures f;
        f.vassal = "app";
        f.in_flight_peak = peak;
        f.cold_start_bounds_ms = {10, 100};
        f.cold_start_buckets = {0, cold, 0};
        f.cold_start_sum_us = cold * 50'000;
        m.vassals.push_back(f);
        return m;
    };
    StatsMessage sum = add_counters(with(2, 9), with(1, 3));
    EXPECT_EQ(sum.vassals[0].cold_start_buckets, (std::vector<uint64_t>{0, 3, 0}));
    EXPECT_EQ(sum.vassals[0].cold_start_sum_us, 150'000u);
    EXPECT_EQ(sum.vassals[0].in_flight_peak, 3) << "the running router's alone";
    auto round =
        liege::control::decode_stats(liege::control::parse_line(liege::control::encode(sum)));
    EXPECT_EQ(round.vassals[0].in_flight_peak, 3);
    EXPECT_EQ(round.vassals[0].cold_start_bounds_ms, (std::vector<double>{10, 100}));
    EXPECT_EQ(round.vassals[0].cold_start_buckets, (std::vector<uint64_t>{0, 3, 0}));
}

TEST(Control, ANumberThatDoesNotFitItsFieldRefusesTheMessage) {
    using liege::control::decode_routes;
    using liege::control::decode_stats;
    using liege::control::parse_line;
    const auto stats = [](const std::string& requests) {
        return parse_line(R"({"type":"stats","backends":[{"address":"127.0.0.1:1","requests":)" +
                          requests + "}]}");
    };
    EXPECT_EQ(decode_stats(stats("18446744073709551615")).backends[0].requests,
              18446744073709551615u);
    EXPECT_THROW(decode_stats(stats("1e49")), std::invalid_argument) << "a float beyond uint64";
    EXPECT_THROW(decode_stats(stats("1.5")), std::invalid_argument);
    EXPECT_THROW(decode_stats(stats("-1")), std::invalid_argument);
    EXPECT_THROW(decode_stats(parse_line(R"({"type":"stats","backends":[],)"
                                         R"("upstream_connections":{"a":1e30}})")),
                 std::invalid_argument);
    EXPECT_THROW(
        decode_routes(parse_line(R"({"type":"routes","routes":[{"vassal":"a",)"
                                 R"("backends":[{"address":"x","worker":4294967296}]}]})")),
        std::invalid_argument)
        << "a worker index beyond int";
}
