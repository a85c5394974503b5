// `liege router` as a user sees it: the real binary on an ephemeral loopback port in front of
// liege-test-backend processes, driven by a raw HTTP client. Each test pins one behaviour of
// issue 2 (balancing, keep-alive, pipelining, streaming, upgrade, header rewriting, errors,
// retries, shutdown).
//
// Every wait is bounded (kWait = 10 s unless a test needs a tighter one to prove a timeout),
// and tear-down asserts that the router did not die and logged no sanitizer report or critical
// line; on failure the router's last log lines are printed.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>

#include "../backend/pattern.hpp"
#include "harness.hpp"

using namespace liege::test;

namespace {

constexpr uint64_t kMiB = 1024 * 1024;

// RFC 6455 section 1.3's example key and the accept value it must produce.
constexpr const char* kSampleKey = "dGhlIHNhbXBsZSBub25jZQ==";
constexpr const char* kSampleAccept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

using Headers = std::vector<std::pair<std::string, std::string>>;

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
}

// The header lines of a raw request head (as /headers returns it), names lowercased.
Headers parse_head(const std::string& head) {
    Headers out;
    std::size_t pos = head.find("\r\n");
    while (pos != std::string::npos) {
        pos += 2;
        auto eol = head.find("\r\n", pos);
        if (eol == std::string::npos || eol == pos) {
            break;
        }
        std::string line = head.substr(pos, eol - pos);
        auto colon = line.find(':');
        std::string value = colon == std::string::npos ? "" : line.substr(colon + 1);
        value.erase(0, value.find_first_not_of(" \t"));
        out.emplace_back(lower(line.substr(0, colon)), value);
        pos = eol;
    }
    return out;
}

std::vector<std::string> values(const Headers& headers, const std::string& name) {
    std::vector<std::string> out;
    for (const auto& [n, v] : headers) {
        if (n == name) {
            out.push_back(v);
        }
    }
    return out;
}

// Checks a streamed body against the backend's generated pattern, piece by piece.
struct PatternCheck {
    uint64_t offset = 0;
    uint64_t first_mismatch = UINT64_MAX;
    std::string window = pattern_window(256 * 1024);

    void operator()(std::string_view piece) {
        while (!piece.empty()) {
            std::size_t n = std::min<std::size_t>(piece.size(), 256 * 1024);
            if (first_mismatch == UINT64_MAX &&
                std::memcmp(piece.data(), window.data() + offset % kPeriod, n) != 0) {
                for (std::size_t i = 0; i < n; ++i) {
                    if (piece[i] != pattern_byte(offset + i)) {
                        first_mismatch = offset + i;
                        break;
                    }
                }
            }
            offset += n;
            piece.remove_prefix(n);
        }
    }
    bool ok() const { return first_mismatch == UINT64_MAX; }
};

bool is_pattern(std::string_view body) {
    PatternCheck check;
    check(body);
    return check.ok();
}

long elapsed_ms(Clock::time_point since) {
    return static_cast<long>(std::chrono::duration_cast<Millis>(Clock::now() - since).count());
}

class RouterTest : public RouterFixture {
protected:
    // Backend name -> number of GET /id answers, one fresh client connection per request.
    std::map<std::string, int> spread_of(int requests) {
        std::map<std::string, int> seen;
        for (int i = 0; i < requests; ++i) {
            auto c = client();
            auto r = c.get("/id");
            EXPECT_EQ(r.status, 200) << r.head << r.body;
            seen[r.body]++;
        }
        return seen;
    }
};

} // namespace

// ---- basics and access log ----

TEST_F(RouterTest, ForwardsRequestsAndLogsEachOne) {
    auto& b = add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends());
    auto c = client();
    auto r = c.get("/id");
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "solo");

    r = c.request("POST", "/sink", {}, std::string(5000, 'x'));
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "5000");

    // One access log line per request: method, path, status, backend address.
    EXPECT_TRUE(log_has_line_with({"GET", "/id", "200", b.address()}));
    EXPECT_TRUE(log_has_line_with({"POST", "/sink", "200", b.address()}));
}

TEST_F(RouterTest, BackendStatusesAndHeadResponsesPassThrough) {
    add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends());
    auto c = client();
    for (int code : {201, 204, 302, 404, 418, 500, 503}) {
        auto r = c.get("/status?code=" + std::to_string(code));
        EXPECT_EQ(r.status, code);
        if (code != 204) {
            EXPECT_EQ(r.body, "status " + std::to_string(code) + "\n");
        }
    }
    // A HEAD response announces a length but has no body; the connection stays in sync.
    auto r = c.request("HEAD", "/bytes?n=100000");
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "");
    EXPECT_EQ(c.get("/id").body, "solo");
}

// ---- balancing ----

TEST_F(RouterTest, RoundRobinSpreadsEvenly) {
    add_backend("a");
    add_backend("b");
    add_backend("c");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends({"--lb", "round_robin"}));
    auto seen = spread_of(30);
    ASSERT_EQ(seen.size(), 3u);
    for (const auto& [name, count] : seen) {
        // Exactly 10 each with one balancer; per-thread balancers may be off by one each.
        EXPECT_GE(count, 8) << name;
        EXPECT_LE(count, 12) << name;
    }
}

TEST_F(RouterTest, RoundRobinBalancesRequestsOfOneKeepAliveConnection) {
    add_backend("a");
    add_backend("b");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends({"--lb", "round_robin"}));
    auto c = client();
    std::map<std::string, int> seen;
    for (int i = 0; i < 20; ++i) {
        seen[c.get("/id").body]++;
    }
    EXPECT_EQ(seen["a"], 10);
    EXPECT_EQ(seen["b"], 10);
}

TEST_F(RouterTest, LeastConnAvoidsBackendBusyWithSlowRequest) {
    auto& a = add_backend("a");
    auto& b = add_backend("b");
    // One thread: in-flight counts of other threads need not be visible to a balancer.
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends({"--lb", "least_conn", "--threads", "1"}));

    auto slow = client();
    slow.send(build_request("GET", "/slow?ms=3000"));
    auto has_slow = [](const TestBackend& x) {
        auto r = x.requests_logged();
        return std::find(r.begin(), r.end(), "GET /slow?ms=3000") != r.end();
    };
    ASSERT_TRUE(poll_until([&] { return has_slow(a) || has_slow(b); }))
        << "the slow request reached no backend";
    const TestBackend& busy = has_slow(a) ? a : b;
    const std::string idle_name = &busy == &a ? "b" : "a";

    for (int i = 0; i < 6; ++i) {
        auto c = client();
        auto r = c.get("/id");
        EXPECT_EQ(r.body, idle_name) << "request " << i << " went to the backend with a request "
                                     << "in flight";
    }
    auto r = slow.read_response();
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.header("X-Backend"), busy.name());
}

TEST_F(RouterTest, LeastConnBreaksTiesAcrossBackends) {
    add_backend("a");
    add_backend("b");
    add_backend("c");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends({"--lb", "least_conn"}));
    // Sequential requests always find every backend idle: a tie each time, which must not
    // always go to the first backend.
    auto seen = spread_of(30);
    EXPECT_GE(seen.size(), 2u) << "every request went to " << seen.begin()->first;
}

// ---- keep-alive ----

TEST_F(RouterTest, ClientKeepAliveCarriesManyRequests) {
    add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends());
    auto c = client();
    // Requests whose whole body the backend reads before answering: nothing gives the router
    // a reason to close (an answer that starts before the request body has been forwarded may
    // legitimately end with Connection: close).
    for (int i = 0; i < 10; ++i) {
        auto r = i % 2 ? c.request("POST", "/sink", {}, std::string(1000 * i, 's')) : c.get("/id");
        ASSERT_EQ(r.status, 200);
        EXPECT_EQ(r.body, i % 2 ? std::to_string(1000 * i) : "solo");
        EXPECT_FALSE(r.closes_connection()) << r.head;
        ASSERT_FALSE(c.peer_closed()) << "the router closed a keep-alive connection";
    }
    // Connection: close is honoured: the answer comes, then the connection ends.
    auto r = c.request("GET", "/id", {{"Connection", "close"}});
    EXPECT_EQ(r.status, 200);
    EXPECT_TRUE(c.wait_closed());
}

TEST_F(RouterTest, Http10ClientIsClosedAfterItsResponse) {
    add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends());
    auto c = client();
    c.send("GET /id HTTP/1.0\r\nHost: x\r\n\r\n");
    auto r = c.read_response();
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "solo");
    EXPECT_TRUE(c.wait_closed());
}

TEST_F(RouterTest, UpstreamConnectionsAreReused) {
    auto& b = add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends());
    {
        auto c = client();
        for (int i = 0; i < 30; ++i) {
            ASSERT_EQ(c.get("/id").status, 200);
        }
    }
    for (int i = 0; i < 30; ++i) {
        auto c = client();
        ASSERT_EQ(c.get("/id").status, 200);
    }
    auto counts = b.counts();
    EXPECT_EQ(counts.requests, 60u);
    // Sequential requests need one upstream connection per router thread (2), plus slack.
    EXPECT_LE(counts.connections, 4u) << "upstream connections are not pooled";
}

TEST_F(RouterTest, IdleClientConnectionClosedAfterKeepAliveTimeout) {
    add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends({"--keepalive-timeout", "500ms"}));
    auto c = client();
    ASSERT_EQ(c.get("/id").status, 200);
    auto start = Clock::now();
    EXPECT_TRUE(c.wait_closed(kWait));
    EXPECT_GE(elapsed_ms(start), 400);
}

TEST_F(RouterTest, IdleUpstreamConnectionClosedAfterIdleTimeout) {
    auto& b = add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends({"--upstream-idle-timeout", "500ms"}));
    auto c = client();
    ASSERT_EQ(c.get("/id").status, 200);
    EXPECT_TRUE(poll_until([&] { return b.counts().open == 0; }, kWait, 100ms))
        << "the pooled upstream connection was never closed";
    // The client connection is still usable: a new upstream connection is made.
    EXPECT_EQ(c.get("/id").status, 200);
}

// ---- pipelining ----

TEST_F(RouterTest, PipelinedRequestsAnsweredInOrder) {
    add_backend("a");
    add_backend("b");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends());
    auto c = client();
    // One write; the first answer is the slowest, so answering out of order would show.
    c.send(build_request("GET", "/slow?ms=300") + build_request("GET", "/status?code=202") +
           build_request("POST", "/sink", {}, "third"));
    auto r1 = c.read_response();
    auto r2 = c.read_response();
    auto r3 = c.read_response();
    EXPECT_EQ(r1.status, 200);
    EXPECT_EQ(r1.body, "slow\n");
    EXPECT_EQ(r2.status, 202);
    EXPECT_EQ(r3.status, 200);
    EXPECT_EQ(r3.body, "5");
    EXPECT_FALSE(r3.closes_connection()) << r3.head;
    EXPECT_FALSE(c.peer_closed());
    EXPECT_EQ(c.get("/status?code=201").status, 201);
}

// ---- bodies ----

TEST_F(RouterTest, ChunkedRequestBodyIsForwarded) {
    add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends());
    auto c = client();
    std::string big(100000, 'z');
    auto r = c.request("POST", "/echo", {{"Transfer-Encoding", "chunked"}},
                       chunk("hello ") + "5;ext=1\r\nworld\r\n" + chunk(big) +
                           "0\r\nX-Trailer: t\r\n\r\n");
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "hello world" + big);
    // The echo starts before the request body has been forwarded, after which the router may
    // announce Connection: close; otherwise the connection must still be in sync.
    auto next = r.closes_connection() ? client() : std::move(c);
    EXPECT_EQ(next.request("POST", "/echo", {}, "after").body, "after");
}

TEST_F(RouterTest, ChunkedAndCloseDelimitedResponsesAreForwarded) {
    add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends());
    auto c = client();
    auto r = c.get("/chunked?n=1000000&size=4000");
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body.size(), 1000000u);
    EXPECT_TRUE(is_pattern(r.body));

    // A response without length ends when the backend closes; the router must pass all of it
    // (re-framed, or by closing the client connection too).
    for (const char* target :
         {"/close-delimited?n=300000", "/close-delimited?n=300000&version=1.0"}) {
        auto cd = client();
        r = cd.get(target);
        EXPECT_EQ(r.status, 200) << target;
        EXPECT_EQ(r.body.size(), 300000u) << target;
        EXPECT_TRUE(is_pattern(r.body)) << target;
    }
}

TEST_F(RouterTest, BodiesStreamBothWaysBeforeTheRequestEnds) {
    add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends());
    for (bool chunked : {true, false}) {
        SCOPED_TRACE(chunked ? "chunked" : "content-length");
        auto c = client();
        std::string first(20000, 'a');
        std::string second(20000, 'b');
        Headers h = chunked ? Headers{{"Transfer-Encoding", "chunked"}}
                            : Headers{{"Content-Length", std::to_string(first.size() * 2)}};
        c.send(build_request("POST", "/echo", h) + (chunked ? chunk(first) : first));
        // The echo of the first half must arrive while the request is still open: neither
        // side may wait for the whole body.
        std::string echoed;
        auto r = c.read_response(kWait, false, [&](std::string_view piece) {
            echoed.append(piece);
            if (echoed.size() == first.size()) {
                c.send(chunked ? chunk(second) + "0\r\n\r\n" : second);
            }
        });
        EXPECT_EQ(r.status, 200);
        EXPECT_EQ(echoed, first + second);
    }
}

TEST_F(RouterTest, ExpectContinueIsHandled) {
    add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends());
    auto c = client();
    c.send("POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n");
    // The client holds the body until it hears 100 Continue (from the router or the backend).
    auto r = c.read_response();
    ASSERT_EQ(r.status, 100) << r.head;
    c.send("0123456789");
    r = c.read_response();
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "10");
}

TEST_F(RouterTest, LargeDownloadStreamsInBoundedMemory) {
    add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends());
    auto c = client();
    // Warm up: first-use allocations are not growth with body size.
    ASSERT_EQ(c.get("/bytes?n=4000000").body.size(), 4000000u);
    const long baseline = rss_kib(router().pid());
    ASSERT_GT(baseline, 0);

    const uint64_t size = 256 * kMiB;
    RssSampler sampler(router().pid());
    c.send(build_request("GET", "/bytes?n=" + std::to_string(size)));
    // A client that does not read: the router must stop reading the backend rather than buffer.
    // Bounded observation of something that must not happen.
    EXPECT_FALSE(poll_until([&] { return rss_kib(router().pid()) > baseline + 16 * 1024; }, 1s))
        << "the router buffers a response its client does not read";
    PatternCheck check;
    auto r = c.read_response(60s, false, std::ref(check));
    const long peak = sampler.stop();
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body_bytes, size);
    EXPECT_TRUE(check.ok()) << "body differs from the pattern at byte " << check.first_mismatch;
    EXPECT_LE(peak - baseline, 16 * 1024)
        << "router RSS grew from " << baseline << " KiB to " << peak << " KiB";
    RecordProperty("rss_baseline_kib", std::to_string(baseline));
    RecordProperty("rss_peak_kib", std::to_string(peak));
    EXPECT_EQ(c.get("/id").status, 200);
}

TEST_F(RouterTest, LargeUploadStreamsInBoundedMemory) {
    add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends());
    auto c = client();
    ASSERT_EQ(c.request("POST", "/sink", {}, std::string(4000000, 'w')).body, "4000000");
    const long baseline = rss_kib(router().pid());
    ASSERT_GT(baseline, 0);

    const uint64_t size = 256 * kMiB;
    RssSampler sampler(router().pid());
    // The backend waits a second before it reads: a router without backpressure would take in
    // the client's bytes meanwhile.
    c.send(
        build_request("POST", "/sink?stall_ms=1000", {{"Content-Length", std::to_string(size)}}));
    const std::string piece(256 * 1024, 'u');
    for (uint64_t sent = 0; sent < size; sent += piece.size()) {
        c.send(piece, 30s);
    }
    auto r = c.read_response(30s);
    const long peak = sampler.stop();
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, std::to_string(size));
    EXPECT_LE(peak - baseline, 16 * 1024)
        << "router RSS grew from " << baseline << " KiB to " << peak << " KiB";
    RecordProperty("rss_baseline_kib", std::to_string(baseline));
    RecordProperty("rss_peak_kib", std::to_string(peak));
}

// ---- WebSocket ----

TEST_F(RouterTest, WebSocketIsTunnelled) {
    add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends());
    auto c = client();
    auto r = c.request("GET", "/ws",
                       {{"Upgrade", "websocket"},
                        {"Connection", "Upgrade"},
                        {"Sec-WebSocket-Key", kSampleKey},
                        {"Sec-WebSocket-Version", "13"}});
    ASSERT_EQ(r.status, 101) << r.head << r.body;
    EXPECT_EQ(r.header("Sec-WebSocket-Accept"), kSampleAccept);
    EXPECT_EQ(lower(r.header("Upgrade").value_or("")), "websocket");

    c.send(websocket_frame(1, "hello through liege"));
    auto f = read_websocket_frame(c);
    EXPECT_EQ(f.opcode, 1);
    EXPECT_EQ(f.payload, "hello through liege");

    std::string big(300000, '\0');
    for (std::size_t i = 0; i < big.size(); ++i) {
        big[i] = static_cast<char>(i * 13 + 7);
    }
    c.send(websocket_frame(2, big));
    f = read_websocket_frame(c);
    EXPECT_EQ(f.opcode, 2);
    EXPECT_TRUE(f.payload == big) << "binary frame differs";

    c.send(websocket_frame(9, "are you there"));
    f = read_websocket_frame(c);
    EXPECT_EQ(f.opcode, 10);
    EXPECT_EQ(f.payload, "are you there");

    c.send(websocket_frame(8, "\x03\xe8"));
    f = read_websocket_frame(c);
    EXPECT_EQ(f.opcode, 8);
    // The backend closes after the close frame; the tunnel closes the client side too.
    EXPECT_TRUE(c.wait_closed());
}

// ---- header rewriting ----

TEST_F(RouterTest, AddsForwardedHeadersAndStripsHopByHopOnes) {
    add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends());
    auto c = client();
    auto r = c.request("GET", "/headers",
                       {{"Host", "app.example.test"},
                        {"X-Forwarded-For", "10.1.2.3"},
                        {"Connection", "keep-alive, X-Hop-Custom"},
                        {"X-Hop-Custom", "must not pass"},
                        {"Keep-Alive", "timeout=5"},
                        {"TE", "trailers"},
                        {"Trailer", "X-Checksum"},
                        {"Proxy-Authorization", "Basic Zm9vOmJhcg=="},
                        {"Proxy-Connection", "keep-alive"},
                        {"Upgrade", "foo/1"},
                        {"X-End-To-End", "stays"}});
    ASSERT_EQ(r.status, 200);
    const std::string& head = r.body; // what the backend received
    EXPECT_TRUE(head.starts_with("GET /headers HTTP/1.1\r\n")) << head;
    auto h = parse_head(head);

    EXPECT_EQ(values(h, "host"), std::vector<std::string>{"app.example.test"}) << head;
    auto xff = values(h, "x-forwarded-for");
    std::string joined;
    for (const auto& v : xff) {
        joined += (joined.empty() ? "" : ", ") + v;
    }
    EXPECT_EQ(joined, "127.0.0.1") << "replaced: the client is no trusted proxy\n" << head;
    EXPECT_EQ(values(h, "x-forwarded-proto"), std::vector<std::string>{"http"}) << head;
    EXPECT_EQ(values(h, "x-forwarded-host"), std::vector<std::string>{"app.example.test"}) << head;
    EXPECT_EQ(values(h, "x-end-to-end"), std::vector<std::string>{"stays"}) << head;
    for (const char* hop : {"x-hop-custom", "keep-alive", "te", "trailer", "proxy-authorization",
                            "proxy-connection", "upgrade"}) {
        EXPECT_TRUE(values(h, hop).empty()) << hop << " was forwarded:\n" << head;
    }
    for (const auto& v : values(h, "connection")) {
        EXPECT_EQ(lower(v).find("x-hop-custom"), std::string::npos) << head;
    }
}

// ---- malformed and ambiguous requests ----

TEST_F(RouterTest, AmbiguousFramingIsRejectedAndNeverForwarded) {
    auto& b = add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends());
    const std::vector<std::pair<const char*, std::string>> cases = {
        {"Content-Length with Transfer-Encoding",
         "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
         "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"},
        {"differing duplicate Content-Length",
         "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
         "hello!"},
        {"bad chunk size", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                           "zz\r\nhello\r\n0\r\n\r\n"},
    };
    for (const auto& [what, request] : cases) {
        auto c = client();
        c.send(request);
        auto r = c.try_read_response();
        ASSERT_TRUE(r) << what << ": connection closed without a status";
        EXPECT_EQ(r->status, 400) << what;
    }
    // A good request afterwards is the only one the backend ever saw.
    auto c = client();
    EXPECT_EQ(c.get("/id").status, 200);
    EXPECT_EQ(b.requests_seen(), std::vector<std::string>{"GET /id"});
    EXPECT_EQ(b.counts().requests, 1u);
}

TEST_F(RouterTest, MalformedRequestsGet400AndNeverCrash) {
    auto& b = add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends());
    const std::vector<std::pair<const char*, std::string>> cases = {
        {"garbage line", "GARBAGE\r\n\r\n"},
        {"no version", "GET /id\r\nHost: x\r\n\r\n"},
        {"extra token", "GET /id HTTP/1.1 extra\r\nHost: x\r\n\r\n"},
        {"space in target", "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"},
        {"header without colon", "GET /id HTTP/1.1\r\nHost x\r\n\r\n"},
        {"negative Content-Length", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"},
        {"NUL in header", std::string("GET /id HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n", 39)},
        {"TLS client hello",
         std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\x00\x00\r\n\r\n", 18)},
    };
    for (const auto& [what, request] : cases) {
        auto c = client();
        c.send(request);
        auto r = c.try_read_response();
        ASSERT_TRUE(r) << what << ": connection closed without a status";
        EXPECT_EQ(r->status, 400) << what;
        ASSERT_TRUE(router().running()) << "crashed on: " << what;
    }
    {
        // An unknown HTTP version may also get 505.
        auto c = client();
        c.send("GET /id HTTP/9.9\r\nHost: x\r\n\r\n");
        auto r = c.try_read_response();
        ASSERT_TRUE(r) << "HTTP/9.9: connection closed without a status";
        EXPECT_TRUE(r->status == 400 || r->status == 505) << r->status;
    }
    auto c = client();
    EXPECT_EQ(c.get("/id").status, 200);
    EXPECT_EQ(b.requests_seen(), std::vector<std::string>{"GET /id"});
}

TEST_F(RouterTest, HeaderBlockTooLargeGets431) {
    auto& b = add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends());
    {
        auto c = client(); // default limit: 32 KiB
        c.send(build_request("GET", "/id", {{"X-Big", std::string(40000, 'h')}}));
        auto r = c.try_read_response();
        ASSERT_TRUE(r) << "connection closed without a status";
        EXPECT_EQ(r->status, 431);
    }
    {
        // Many small headers count as much as one large one.
        Headers many;
        for (int i = 0; i < 1000; ++i) {
            many.emplace_back("X-Header-" + std::to_string(i), std::string(40, 'm'));
        }
        auto c = client();
        c.send(build_request("GET", "/id", many));
        auto r = c.try_read_response();
        ASSERT_TRUE(r) << "connection closed without a status";
        EXPECT_EQ(r->status, 431);
    }
    EXPECT_TRUE(b.requests_seen().empty());
}

TEST_F(RouterTest, MaxHeaderSizeFlagIsHonoured) {
    add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends({"--max-header-size", "4k"}));
    {
        auto c = client();
        auto r = c.request("GET", "/id", {{"X-Big", std::string(3000, 'h')}});
        EXPECT_EQ(r.status, 200);
    }
    auto c = client();
    c.send(build_request("GET", "/id", {{"X-Big", std::string(5000, 'h')}}));
    auto r = c.try_read_response();
    ASSERT_TRUE(r) << "connection closed without a status";
    EXPECT_EQ(r->status, 431);
}

TEST_F(RouterTest, BodyTooLargeGets413) {
    auto& b = add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends({"--max-body-size", "1k"}));
    {
        auto c = client();
        auto r = c.request("POST", "/sink", {}, std::string(1024, 'x'));
        EXPECT_EQ(r.status, 200);
        EXPECT_EQ(r.body, "1024");
    }
    {
        auto c = client();
        c.send(build_request("POST", "/sink", {}, std::string(1025, 'x')));
        auto r = c.try_read_response();
        ASSERT_TRUE(r) << "Content-Length over the limit: connection closed without a status";
        EXPECT_EQ(r->status, 413);
    }
    EXPECT_EQ(b.requests_seen(), std::vector<std::string>{"POST /sink"})
        << "a request announcing a body over the limit was forwarded";
    {
        // A chunked body only shows its size as it arrives.
        auto c = client();
        c.send(build_request("POST", "/sink", {{"Transfer-Encoding", "chunked"}},
                             chunk(std::string(600, 'c')) + chunk(std::string(600, 'c')) +
                                 "0\r\n\r\n"));
        auto r = c.try_read_response();
        ASSERT_TRUE(r) << "chunked body over the limit: connection closed without a status";
        EXPECT_EQ(r->status, 413);
    }
}

// ---- backend failures ----

TEST_F(RouterTest, RefusingBackendGets502) {
    ASSERT_NO_FATAL_FAILURE(start_router({"127.0.0.1:" + std::to_string(closed_port())}));
    auto c = client();
    auto r = c.get("/id");
    EXPECT_EQ(r.status, 502);
    EXPECT_FALSE(r.body.empty()) << "errors carry a short body";
    EXPECT_TRUE(log_has_line_with({"GET", "/id", "502"}));
}

TEST_F(RouterTest, AllBackendsDownGets503) {
    // One thread, so both requests see the same health state.
    ASSERT_NO_FATAL_FAILURE(start_router({"127.0.0.1:" + std::to_string(closed_port()),
                                          "127.0.0.1:" + std::to_string(closed_port())},
                                         {"--threads", "1"}));
    auto c = client();
    // The first request finds both backends refusing and marks them down ...
    auto first = c.get("/id");
    EXPECT_TRUE(first.status == 502 || first.status == 503) << first.status;
    // ... so the next one, within the cool-off, has no backend left to try.
    auto c2 = client();
    auto r = c2.get("/id");
    EXPECT_EQ(r.status, 503);
    EXPECT_FALSE(r.body.empty());
}

TEST_F(RouterTest, BackendResetBeforeAnsweringGets502) {
    add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends());
    auto c = client();
    auto r = c.get("/reset");
    EXPECT_EQ(r.status, 502);
    EXPECT_FALSE(r.body.empty());
}

TEST_F(RouterTest, SilentBackendGets504AfterUpstreamTimeout) {
    add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends({"--upstream-timeout", "500ms"}));
    auto c = client();
    auto start = Clock::now();
    auto r = c.get("/hang");
    EXPECT_EQ(r.status, 504);
    EXPECT_GE(elapsed_ms(start), 450);
    EXPECT_TRUE(log_has_line_with({"GET", "/hang", "504"}));
}

TEST_F(RouterTest, RetriesAroundADeadBackend) {
    for (const char* lb : {"round_robin", "least_conn"}) {
        SCOPED_TRACE(lb);
        auto& live = add_backend("live");
        ASSERT_NO_FATAL_FAILURE(start_router(
            {"127.0.0.1:" + std::to_string(closed_port()), live.address()}, {"--lb", lb}));
        for (int i = 0; i < 20; ++i) {
            auto c = client();
            auto r = c.get("/id");
            EXPECT_EQ(r.status, 200) << "request " << i;
            EXPECT_EQ(r.body, "live");
        }
        TearDown();
    }
}

TEST_F(RouterTest, RetriesWhenABackendDies) {
    add_backend("a");
    auto& doomed = add_backend("b");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends({"--lb", "round_robin"}));
    // Fill the upstream pools with idle connections to both backends.
    auto keep = client();
    for (int i = 0; i < 10; ++i) {
        ASSERT_EQ(keep.get("/id").status, 200);
    }
    doomed.kill();
    // Pooled connections to the dead backend are stale now; idempotent requests that never got
    // an answer are retried elsewhere.
    for (int i = 0; i < 20; ++i) {
        auto r = i % 2 == 0 ? keep.get("/id") : client().get("/id");
        EXPECT_EQ(r.status, 200) << "request " << i;
        EXPECT_EQ(r.body, "a");
    }
}

TEST_F(RouterTest, IdempotentRequestThatReachedABackendWhichClosedUnansweredIsRetried) {
    // This backend reads each request and closes without a word, as a worker killed mid-request
    // does. A GET it swallowed must be replayed on the other backend; the client never knows.
    RawBackend silent([](RawBackend::Connection& conn) {
        if (conn.read_request()) {
            conn.close();
        }
    });
    add_backend("live");
    ASSERT_NO_FATAL_FAILURE(start_router({silent.address(), backends_[0]->address()},
                                         {"--lb", "round_robin", "--threads", "1"}));
    for (int i = 0; i < 4; ++i) {
        auto r = client().get("/id?i=" + std::to_string(i));
        EXPECT_EQ(r.status, 200) << r.head << r.body;
        EXPECT_EQ(r.body, "live");
    }
    EXPECT_GE(silent.requests().size(), 1u) << "no request went to the silent backend";
}

TEST_F(RouterTest, RequestWhoseBodyReachedABackendThatClosedUnansweredIsNotReplayed) {
    // Both backends swallow what they get and close. A PUT's body went out with its head (one
    // small write), so replaying the head elsewhere would send a request without its body: the
    // client gets a 502 instead, and no second backend sees the request.
    auto swallow = [](RawBackend::Connection& conn) {
        if (conn.read_request()) {
            conn.close();
        }
    };
    RawBackend a(swallow);
    RawBackend b(swallow);
    ASSERT_NO_FATAL_FAILURE(
        start_router({a.address(), b.address()}, {"--threads", "1", "--upstream-timeout", "3s"}));
    auto c = client();
    auto r = c.request("PUT", "/doc", {}, "hello world");
    EXPECT_EQ(r.status, 502) << r.head << r.body;
    EXPECT_EQ(a.requests().size() + b.requests().size(), 1u)
        << "the request went to a second backend";
}

// ---- client timeouts ----

TEST_F(RouterTest, PartialHeadIsCutOffAfterHeaderTimeout) {
    add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends({"--header-timeout", "1s"}));
    auto c = client();
    auto start = Clock::now();
    c.send("GET /id HTTP/1.1\r\nHost: x\r\n");
    auto r = c.try_read_response();
    if (r) {
        EXPECT_EQ(r->status, 408);
    }
    EXPECT_TRUE(c.wait_closed());
    EXPECT_GE(elapsed_ms(start), 800);
    EXPECT_LT(elapsed_ms(start), 9000);
}

TEST_F(RouterTest, TricklingClientIsCutOffAfterHeaderTimeout) {
    add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends({"--header-timeout", "1s"}));
    auto c = client();
    auto start = Clock::now();
    c.send("GET /id HTTP/1.1\r\nHost: x\r\n");
    // One header line every 200 ms: each byte arrives in time, the whole head never does.
    std::string received;
    bool closed = false;
    while (!closed && received.empty() && elapsed_ms(start) < 9000) {
        try {
            c.send("X-Trickle: 1\r\n", 1s);
            received = c.read_some(65536, 200ms); // bounded wait for an answer or a close
            closed = received.empty();
        } catch (const HttpClosed&) {
            closed = true;
        } catch (const HttpError&) {
            // Nothing within 200 ms: keep trickling.
        }
    }
    EXPECT_TRUE(closed || received.starts_with("HTTP/1.1 408"))
        << "the trickling client was still connected after " << elapsed_ms(start) << " ms";
    EXPECT_GE(elapsed_ms(start), 800);
}

// ---- load ----

TEST_F(RouterTest, ConcurrentClientsAllSucceed) {
    add_backend("a");
    add_backend("b");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends());
    std::atomic<int> ok{0};
    std::vector<std::thread> threads;
    std::vector<std::string> errors(8);
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&, t] {
            try {
                std::optional<HttpClient> c;
                c.emplace(port());
                for (int i = 0; i < 50; ++i) {
                    std::string body(static_cast<std::size_t>(100 * i + t), 'p');
                    auto r = i % 2 ? c->request("POST", "/echo", {}, body) : c->get("/id");
                    if (r.status == 200 && (i % 2 == 0 || r.body == body)) {
                        ++ok;
                    }
                    if (r.closes_connection()) { // allowed after an early (echo) answer
                        c.emplace(port());
                    }
                }
            } catch (const std::exception& e) {
                errors[static_cast<std::size_t>(t)] = e.what();
            }
        });
    }
    for (auto& th : threads) {
        th.join();
    }
    for (const auto& e : errors) {
        EXPECT_TRUE(e.empty()) << e;
    }
    EXPECT_EQ(ok.load(), 400);
}

// ---- shutdown ----

TEST_F(RouterTest, GracefulShutdownFinishesRequestsInFlight) {
    auto& b = add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends({"--shutdown-timeout", "20s"}));
    auto idle = client(); // an idle keep-alive connection must not hold the shutdown up
    ASSERT_EQ(idle.get("/id").status, 200);

    auto c = client();
    c.send(build_request("GET", "/slow?ms=3000"));
    ASSERT_TRUE(b.wait_for_request("GET /slow?ms=3000"));
    auto start = Clock::now();
    router().signal(SIGTERM);

    // While the request is still in flight (3 s), new connections are refused: no listening
    // socket may stay open with nobody accepting, or clients connect and hang.
    EXPECT_TRUE(poll_until([&] { return connect_refused(port()); }, 1500ms))
        << "1.5 s after SIGTERM the router's port still completes TCP handshakes";
    auto r = c.read_response();
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "slow\n");
    EXPECT_GE(elapsed_ms(start), 2000) << "the slow request ended early";

    auto status = router().wait_exit(kWait);
    ASSERT_TRUE(status) << "the router did not exit within 10 s of the request's end";
    EXPECT_EQ(describe_status(*status), "exited 0");
    EXPECT_LT(elapsed_ms(start), 12000);
    EXPECT_TRUE(connect_refused(port()));
    EXPECT_TRUE(idle.wait_closed());
}
