// `liege router` against what HTTP allows but common traffic rarely shows: responses with
// trailers, bodyless statuses that announce a length, HTTP/1.0 clients of chunked responses, slow
// readers of a response that ends its connection, malformed and truncated responses, unsolicited
// 1xx and 101, absolute-form request targets, transfer codings other than chunked, and bodies
// made of tiny chunks. Each test pins what a user of nginx or HAProxy expects (RFC 9110 and 9112
// where they say), and how the router must hold up (it stays alive, memory stays bounded).
//
// Most backends here are RawBackends: the test scripts the exact bytes they answer with, and
// reads back the request heads they received. Every wait is bounded; an answer that must come at
// once gets kPrompt, so a router that waits for a timeout instead fails in seconds, not minutes.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "../backend/pattern.hpp"
#include "harness.hpp"

using namespace liege::test;

namespace {

using Reply = RawBackend::Reply;
using After = RawBackend::After;

// Bound for an answer that must come at once: the defects it catches wait for a timeout of 30 s
// or more (or forever).
constexpr Millis kPrompt = 3s;
// The upstream timeout for tests where waiting for it would be the defect.
const std::string kLongUpstreamTimeout = "30s";

const std::string kOk = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const std::string kTrailers = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n"
                              "\r\n5\r\nhello\r\n0\r\nX-Sum: abc\r\n\r\n";
const std::string kNotModifiedWithLength =
    "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nETag: \"v1\"\r\n\r\n";

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
}

// "GET /x HTTP/1.1\r\n..." -> "/x"
std::string target_of(const std::string& head) {
    auto sp = head.find(' ');
    return head.substr(sp + 1, head.find(' ', sp + 1) - sp - 1);
}

// The values of every header line `name` (any case) in a raw head, in order.
std::vector<std::string> header_values(const std::string& head, const std::string& name) {
    std::vector<std::string> out;
    const std::string want = "\r\n" + lower(name) + ":";
    const std::string folded = lower(head);
    for (auto at = folded.find(want); at != std::string::npos; at = folded.find(want, at + 1)) {
        auto begin = head.find_first_not_of(" \t", at + want.size());
        out.push_back(head.substr(begin, head.find("\r\n", begin) - begin));
    }
    return out;
}

// Every Transfer-Encoding a response carries, as one lowercase list: "gzip, chunked".
std::string codings_of(const Response& r) {
    std::string out;
    for (const auto& v : r.headers_named("Transfer-Encoding")) {
        out += (out.empty() ? "" : ", ") + lower(v);
    }
    return out;
}

// A keep-alive backend that answers each request by its target; a target without a reply gets
// a 404 naming it.
RawBackend::Script by_target(std::map<std::string, Reply> replies) {
    return RawBackend::answering([replies = std::move(replies)](const std::string& head) {
        auto it = replies.find(target_of(head));
        if (it != replies.end()) {
            return it->second;
        }
        const std::string body = "no script for " + target_of(head) + "\n";
        return Reply{"HTTP/1.1 404 Not Found\r\nContent-Length: " + std::to_string(body.size()) +
                     "\r\n\r\n" + body};
    });
}

// A response, or what happened instead.
struct Outcome {
    std::optional<Response> response;
    std::string error;   // why there is no response: closed, reset, timed out, malformed
    bool closed = false; // the connection ended (EOF or reset) before a complete response

    explicit operator bool() const { return response.has_value(); }
    const Response* operator->() const { return &*response; }
};

Outcome attempt(const std::function<Response()>& call) {
    try {
        return {call(), {}, false};
    } catch (const HttpClosed& e) {
        return {std::nullopt, e.what(), true};
    } catch (const HttpError& e) {
        return {std::nullopt, e.what(), false};
    }
}

// Whatever the peer sends within `window` (or until it closes), bytes already received first: a
// bounded observation of what must not arrive.
std::string bytes_within(HttpClient& c, Millis window) {
    std::string out;
    auto deadline = Clock::now() + window;
    try {
        while (Clock::now() < deadline) {
            std::string piece =
                c.read_some(65536, std::chrono::duration_cast<Millis>(deadline - Clock::now()));
            if (piece.empty()) {
                break;
            }
            out += piece;
        }
    } catch (const HttpError&) {
        // the window passed, or the peer reset the connection
    }
    return out;
}

// Sends `stream` over and over on each socket in `fds`, as fast as each one takes it (the router's
// backpressure is the only brake), until `until` passes, `stop` is set, or `limit` bytes went out
// on a socket. Each socket's bytes continue `stream` exactly where the last send left off. Returns
// the bytes sent on each.
std::vector<uint64_t> pump(const std::vector<int>& fds, std::string_view stream,
                           Clock::time_point until, const std::atomic<bool>& stop,
                           uint64_t limit = UINT64_MAX) {
    std::vector<uint64_t> sent(fds.size(), 0);
    std::vector<bool> done(fds.size(), false);
    while (!stop.load() && Clock::now() < until &&
           std::find(done.begin(), done.end(), false) != done.end()) {
        std::vector<pollfd> polls;
        for (std::size_t i = 0; i < fds.size(); ++i) {
            polls.push_back({done[i] ? -1 : fds[i], POLLOUT, 0});
        }
        ::poll(polls.data(), polls.size(), 20); // short, so `stop` and `until` are seen in time
        for (std::size_t i = 0; i < fds.size(); ++i) {
            if (done[i] || polls[i].revents == 0) {
                continue;
            }
            std::size_t offset = static_cast<std::size_t>(sent[i] % stream.size());
            std::size_t len = static_cast<std::size_t>(
                std::min<uint64_t>(stream.size() - offset, limit - sent[i]));
            ssize_t n = ::send(fds[i], stream.data() + offset, len, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0) {
                sent[i] += static_cast<uint64_t>(n);
            } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                done[i] = true; // the router closed this one
            }
            done[i] = done[i] || sent[i] >= limit;
        }
    }
    return sent;
}

// `n` chunks of one byte each: the most framing per byte of body a peer can send.
std::string one_byte_chunks(std::size_t n) {
    std::string out;
    out.reserve(n * 6);
    for (std::size_t i = 0; i < n; ++i) {
        out += "1\r\nz\r\n";
    }
    return out;
}

// A client on a slow link: a 4 KiB receive buffer and 536-byte segments. The kernel then buffers
// only some 50 to 250 KB for it on the router's side (it starts small and grows as the client
// reads), instead of megabytes, so the rest of a larger response waits in the router's own queue.
constexpr ClientSocketOptions kSlowLink{4096, 536};

struct SlowRead {
    Outcome outcome;
    std::string body;
    bool closed_after = false; // the router closed the connection after the response
};

// Reads one response at about 10 KB/s for `slow_for`, then as fast as it can; then waits for the
// router to close the connection if `expect_close`.
SlowRead read_slowly(HttpClient& c, Millis slow_for, bool expect_close) {
    SlowRead out;
    const auto fast_from = Clock::now() + slow_for;
    out.outcome = attempt([&] {
        return c.read_response(kWait, false, [&](std::string_view piece) {
            out.body.append(piece);
            if (Clock::now() < fast_from) {
                // Paces the reader at ~10 KB/s: waits 100 us per byte just taken, or less if the
                // router hangs up first (what the slow reader is there to catch).
                pollfd hangup{c.fd(), POLLRDHUP, 0};
                ::poll(&hangup, 1, static_cast<int>((piece.size() + 9) / 10));
            }
        });
    });
    out.closed_after = out.outcome && expect_close && c.wait_closed();
    return out;
}

long elapsed_ms(Clock::time_point since) {
    return static_cast<long>(std::chrono::duration_cast<Millis>(Clock::now() - since).count());
}

class RouterConformance : public RouterFixture {};

} // namespace

// ---- response framing ----

// A trailer section after the last chunk (RFC 9112 7.1.2) may be forwarded or dropped, but the
// framing the client gets must be complete, with nothing left over on the connection.
TEST_F(RouterConformance, ChunkedResponseWithTrailersArrivesWholeAndTheConnectionStaysUsable) {
    RawBackend backend(by_target({{"/trailers", {kTrailers}}, {"/next", {kOk}}}));
    ASSERT_NO_FATAL_FAILURE(start_router({backend.address()}));
    auto c = client();
    auto r = attempt([&] { return c.get("/trailers", kPrompt); });
    ASSERT_TRUE(r) << "GET /trailers: " << r.error;
    EXPECT_EQ(r->status, 200) << r->head;
    EXPECT_EQ(r->body, "hello");
    EXPECT_FALSE(r->closes_connection()) << r->head;
    ASSERT_TRUE(router().running()) << "the router died on a response with trailers";

    auto next = attempt([&] { return c.get("/next", kPrompt); });
    ASSERT_TRUE(next) << "the next request on the same connection: " << next.error;
    EXPECT_EQ(next->status, 200) << next->head;
    EXPECT_EQ(next->body, "ok");
}

// RFC 9112 6.3: a 204 or 304 ends at its head whatever its framing headers say (a 304's
// Content-Length is the size of the representation it did not send).
TEST_F(RouterConformance, BodylessStatusWithAFramingHeaderEndsAtItsHeadAndKeepsTheConnection) {
    const std::map<std::string, Reply> replies = {
        {"/304-length", {kNotModifiedWithLength}},
        {"/204-length", {"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n"}},
        {"/304-chunked", {"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"}},
        {"/next", {kOk}},
    };
    RawBackend backend(by_target(replies));
    ASSERT_NO_FATAL_FAILURE(
        start_router({backend.address()}, {"--upstream-timeout", kLongUpstreamTimeout}));
    for (const auto& [target, status] : std::vector<std::pair<std::string, int>>{
             {"/304-length", 304}, {"/204-length", 204}, {"/304-chunked", 304}}) {
        SCOPED_TRACE(target);
        auto c = client();
        auto r = attempt([&] { return c.get(target, kPrompt); });
        ASSERT_TRUE(r) << r.error;
        EXPECT_EQ(r->status, status) << r->head;
        EXPECT_FALSE(r->closes_connection()) << r->head;
        // A router still waiting for the 10 bytes (or the chunks) answers nothing more until its
        // upstream timeout.
        auto next = attempt([&] { return c.get("/next", kPrompt); });
        ASSERT_TRUE(next) << "the next request on the same connection: " << next.error;
        EXPECT_EQ(next->status, 200) << next->head;
        EXPECT_EQ(next->body, "ok");
    }
}

// RFC 9112 6.1: no Transfer-Encoding in a response to an HTTP/1.0 request, which cannot decode
// chunked. The client gets the body as is, delimited by the end of the connection (or by a
// Content-Length, if the router knows one).
TEST_F(RouterConformance, Http10ClientGetsAChunkedResponseDechunkedAndEndedByClose) {
    RawBackend backend(by_target({{"/chunked",
                                   {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                    "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"}}}));
    ASSERT_NO_FATAL_FAILURE(
        start_router({backend.address()}, {"--upstream-timeout", kLongUpstreamTimeout}));
    for (const std::string& connection :
         {std::string(), std::string("Connection: keep-alive\r\n")}) {
        SCOPED_TRACE(connection.empty() ? "plain HTTP/1.0" : "HTTP/1.0 with keep-alive");
        auto c = client();
        c.send("GET /chunked HTTP/1.0\r\nHost: x\r\n" + connection + "\r\n");
        auto r = attempt([&] { return c.read_response(kPrompt); });
        ASSERT_TRUE(r) << r.error;
        EXPECT_EQ(r->status, 200) << r->head;
        EXPECT_FALSE(r->header("Transfer-Encoding")) << "an HTTP/1.0 client got:\n" << r->head;
        EXPECT_EQ(r->body, "hello world");
        const bool keeps_alive =
            lower(r->header("Connection").value_or("")).find("keep-alive") != std::string::npos;
        if (!r->header("Content-Length")) {
            // Only the end of the connection can end this body.
            EXPECT_FALSE(keeps_alive) << r->head;
        }
        if (!keeps_alive) {
            EXPECT_TRUE(c.wait_closed(kPrompt)) << "the router left the HTTP/1.0 client waiting";
        }
    }
}

// RFC 9112 6.3 rule 4: a Transfer-Encoding whose last coding is not chunked delimits the body by
// close. Forwarding it re-chunked must keep the coding ("gzip, chunked"); forwarding it as is must
// end it by close. Either way the client gets the backend's bytes, still gzip-coded.
TEST_F(RouterConformance, CloseDelimitedResponseWithAnotherTransferCodingKeepsIt) {
    // Coded bytes that look like framing must pass untouched.
    const std::string coded = std::string("\x1f\x8b\x08\x00", 4) + "0\r\n\r\ncoded bytes\r\n";
    RawBackend backend(by_target(
        {{"/gzip", {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n" + coded, After::Close}}}));
    ASSERT_NO_FATAL_FAILURE(start_router({backend.address()}));
    auto c = client();
    auto r = attempt([&] { return c.get("/gzip", kPrompt); });
    ASSERT_TRUE(r) << r.error;
    EXPECT_EQ(r->status, 200) << r->head;
    const std::string codings = codings_of(*r.response);
    EXPECT_TRUE(codings == "gzip, chunked" || codings == "gzip")
        << "Transfer-Encoding is '" << codings << "':\n"
        << r->head;
    EXPECT_EQ(r->body, coded);
    if (codings == "gzip") {
        EXPECT_TRUE(r->close_delimited) << r->head;
    }
}

// RFC 9112 6.1: no Transfer-Encoding to an HTTP/1.0 client, even on a response without a body;
// and chunked is never applied twice: a close-delimited body already coded "chunked, gzip"
// passes as it is, ended by the close.
TEST_F(RouterConformance, NoChunkedCodingReachesAnHttp10ClientAndNoneIsAppliedTwice) {
    const std::string coded = "\x1f\x8b coded, chunked then gzipped";
    RawBackend backend(by_target({
        {"/head", {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"}},
        {"/304", {"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"}},
        {"/twice",
         {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n" + coded, After::Close}},
    }));
    ASSERT_NO_FATAL_FAILURE(start_router({backend.address()}));
    for (const char* req :
         {"HEAD /head HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "GET /304 HTTP/1.0\r\n\r\n"}) {
        SCOPED_TRACE(req);
        auto c = client();
        c.send(req);
        auto r = attempt([&] { return c.read_response(kPrompt, true); });
        ASSERT_TRUE(r) << r.error;
        EXPECT_FALSE(r->header("Transfer-Encoding")) << r->head;
    }
    auto c = client();
    auto r = attempt([&] { return c.get("/twice", kPrompt); });
    ASSERT_TRUE(r) << r.error;
    EXPECT_EQ(codings_of(*r.response), "chunked, gzip") << r->head;
    EXPECT_TRUE(r->close_delimited) << r->head;
    EXPECT_EQ(r->body, coded);
}

// ---- responses that end their connection ----

// A response followed by a close (Connection: close, an HTTP/1.0 client, or a backend response
// that ends by close) must reach the client whole, however slowly it reads: the linger after it
// starts once every byte has been written, not when the router has read the backend's last one.
//
// The bodies are larger than what the kernel buffers for a slow link at first and smaller than
// that plus the router's write queue, so the router reads the backend's whole response at once
// while most of it still waits in its own queue. The client then reads at 10 KB/s for longer than
// the router's 2 s linger, and as fast as it can after that. How much the kernel buffers grows
// as the client reads, so three sizes run side by side; a router that cuts the response off
// after the linger fails on at least one. A client may also half-close once it has sent its
// request: its FIN then arrives while most of the response is still queued, and must cost none
// of it.
TEST_F(RouterConformance, ResponseThatEndsItsConnectionReachesASlowReaderWhole) {
    add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends());
    struct Case {
        std::string what;
        std::size_t size;
        std::string request;
        bool ends_connection;    // a close-delimited response may be re-chunked instead
        bool half_close = false; // the client shuts its side down once the response starts
    };
    std::vector<Case> cases;
    for (std::size_t size : {250'000, 300'000, 350'000}) {
        const std::string n = std::to_string(size);
        cases.push_back({"Connection: close", size,
                         build_request("GET", "/bytes?n=" + n, {{"Connection", "close"}}), true});
        cases.push_back(
            {"HTTP/1.0 client", size, "GET /bytes?n=" + n + " HTTP/1.0\r\nHost: x\r\n\r\n", true});
        cases.push_back({"close-delimited backend response", size,
                         build_request("GET", "/close-delimited?n=" + n), false});
        cases.push_back({"half-closed client, Connection: close", size,
                         build_request("GET", "/bytes?n=" + n, {{"Connection", "close"}}), true,
                         true});
    }
    std::vector<SlowRead> reads(cases.size());
    std::vector<std::thread> readers;
    for (std::size_t i = 0; i < cases.size(); ++i) {
        readers.emplace_back([&, i] {
            try {
                HttpClient c(port(), kSlowLink);
                c.send(cases[i].request);
                if (cases[i].half_close) {
                    // Bytes arriving (not read yet) mean the router has the response; most of
                    // it waits in the router's queue behind the slow link when the FIN arrives.
                    pollfd ready{c.fd(), POLLIN, 0};
                    if (::poll(&ready, 1, static_cast<int>(kWait.count())) == 1) {
                        ::shutdown(c.fd(), SHUT_WR);
                    }
                }
                reads[i] = read_slowly(c, 2500ms, cases[i].ends_connection);
            } catch (const HttpError& e) {
                reads[i].outcome.error = e.what();
            }
        });
    }
    for (auto& t : readers) {
        t.join();
    }
    const std::string pattern = pattern_window(350'000);
    for (std::size_t i = 0; i < cases.size(); ++i) {
        const Case& k = cases[i];
        SCOPED_TRACE(k.what + ", " + std::to_string(k.size) + " bytes");
        const SlowRead& read = reads[i];
        EXPECT_TRUE(read.outcome) << read.outcome.error << " (after " << read.body.size() << " of "
                                  << k.size << " body bytes)";
        EXPECT_EQ(read.body.size(), k.size);
        auto diff = std::mismatch(read.body.begin(), read.body.end(), pattern.begin());
        EXPECT_TRUE(diff.first == read.body.end())
            << "body differs from the pattern at byte " << diff.first - read.body.begin();
        if (k.ends_connection && read.outcome) {
            EXPECT_TRUE(read.closed_after) << "the connection did not end after the response";
        }
    }
}

// A client that takes none of its response for upstream_timeout is cut off, and the log blames
// the client: the backend, which the router stopped reading for the client's sake, is not "timed
// out" and stays in service. A client that still takes a little is a slow download, left alone.
TEST_F(RouterConformance, ClientThatStopsReadingIsCutOffAndTheBackendIsNotBlamed) {
    const std::string piece(64 * 1024, 'x');
    RawBackend backend([&piece](RawBackend::Connection& conn) {
        while (auto head = conn.read_request()) {
            if (target_of(*head) != "/endless") {
                if (!conn.write(kOk)) {
                    return;
                }
                continue;
            }
            if (!conn.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")) {
                return;
            }
            const std::string framed = "10000\r\n" + piece + "\r\n";
            while (conn.write(framed)) {
            }
            return;
        }
    });
    ASSERT_NO_FATAL_FAILURE(
        start_router({backend.address()}, {"--threads", "1", "--upstream-timeout", "1s"}));
    HttpClient stalled(port(), kSlowLink);
    stalled.send(build_request("GET", "/endless"));
    // A slow download first: the client takes its response at about 10 KB/s for longer than the
    // upstream timeout, so the router's queue for it sits between its low- and high-water marks,
    // with the backend not read. It is not to be cut off for that.
    const auto slow_until = Clock::now() + 2500ms;
    while (Clock::now() < slow_until) {
        ASSERT_FALSE(stalled.read_some(1024, kWait).empty())
            << "the router cut off a client that was still reading";
        pollfd hangup{stalled.fd(), POLLRDHUP, 0};
        ::poll(&hangup, 1, 100);
    }
    // (Bytes the kernel holds keep coming after a close, so the log says whether it was cut off.)
    EXPECT_FALSE(log_has_line_with({"took no byte of the response"}, 0ms))
        << "a client that was still reading was cut off";
    // Then it stalls midway, with its receive buffer filled on purpose.
    ASSERT_TRUE(poll_until([&] {
        int unread = 0;
        return ::ioctl(stalled.fd(), FIONREAD, &unread) == 0 && unread >= 2048;
    })) << "the client's receive buffer did not fill";
    EXPECT_TRUE(log_has_line_with({"took no byte of the response", "/endless"}));
    EXPECT_TRUE(stalled.wait_closed()) << "the stalled client was not cut off";
    auto r = client().get("/next", kPrompt);
    EXPECT_EQ(r.status, 200) << r.head << r.body;
    EXPECT_FALSE(log_has_line_with({"response timed out"}, 0ms)) << "the backend was blamed";
}

// ---- failed and misbehaving backends ----

// The head and the bad chunk size come in one read: nothing has reached the client yet, so it
// can still be told (DESIGN.md: never close silently where a status can still be sent).
TEST_F(RouterConformance, MalformedChunkSizeRightAfterTheHeadGets502) {
    RawBackend backend(by_target(
        {{"/", {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n", After::Hold}}}));
    ASSERT_NO_FATAL_FAILURE(start_router({backend.address()}));
    auto c = client();
    auto r = attempt([&] { return c.get("/", kPrompt); });
    ASSERT_TRUE(r) << "the client got no status: " << r.error;
    EXPECT_EQ(r->status, 502) << r->head << r->body;
    EXPECT_FALSE(r->body.empty()) << "errors carry a short body";
}

// A backend that sent a head and then closed mid-body answered: it is not down. The client whose
// response was cut sees its connection end without a complete body; the next client is served
// by the same backend at once.
TEST_F(RouterConformance, TruncatedResponseEndsItsClientConnectionButTheBackendStaysInService) {
    RawBackend backend(by_target(
        {{"/cut", {"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", After::Close}},
         {"/next", {kOk}}}));
    // One thread: one view of which backends are up.
    ASSERT_NO_FATAL_FAILURE(start_router({backend.address()}, {"--threads", "1"}));
    {
        auto c = client();
        auto r = attempt([&] { return c.get("/cut", kPrompt); });
        EXPECT_FALSE(r) << "a complete response to a truncated one:\n" << r->head << r->body;
        EXPECT_TRUE(r.closed) << "the connection did not end: " << r.error;
    }
    for (int i = 0; i < 3; ++i) {
        auto c = client();
        auto r = attempt([&] { return c.get("/next", kPrompt); });
        ASSERT_TRUE(r) << "request " << i << ": " << r.error;
        EXPECT_EQ(r->status, 200) << "request " << i << ":\n" << r->head << r->body;
        EXPECT_EQ(r->body, "ok");
    }
}

// The client sends as fast as the router lets it; the backend does not read (it stalls 4 s, longer
// than the upstream timeout). The one at fault is the backend: 504, not 408.
TEST_F(RouterConformance, BackendThatStallsBeforeReadingABodyGets504NotA408) {
    add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends({"--upstream-timeout", "1s"}));
    constexpr uint64_t kBody = 32 * 1024 * 1024; // more than every buffer on the way holds
    auto c = client();
    const auto start = Clock::now();
    c.send(
        build_request("POST", "/sink?stall_ms=4000", {{"Content-Length", std::to_string(kBody)}}));
    std::atomic<bool> stop{false};
    const std::string piece(256 * 1024, 'u');
    std::thread sender([&] { pump({c.fd()}, piece, start + kWait, stop, kBody); });
    auto r = attempt([&] { return c.read_response(kWait); });
    stop = true;
    sender.join();
    ASSERT_TRUE(r) << r.error;
    EXPECT_EQ(r->status, 504) << r->head << r->body;
    EXPECT_GE(elapsed_ms(start), 900) << "answered before the upstream timeout";
}

// RFC 9110 15.2: a server must not send a 1xx to an HTTP/1.0 client; it gets only the final
// response. An HTTP/1.1 client may see the interim ones, and then the final one.
TEST_F(RouterConformance, InterimResponsesAreNotForwardedToAnHttp10Client) {
    RawBackend backend(
        by_target({{"/hints",
                    {"HTTP/1.1 100 Continue\r\n\r\n"
                     "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" +
                     kOk}}}));
    ASSERT_NO_FATAL_FAILURE(start_router({backend.address()}));
    {
        auto c = client();
        c.send("GET /hints HTTP/1.0\r\nHost: x\r\n\r\n");
        auto r = attempt([&] { return c.read_response(kPrompt); });
        ASSERT_TRUE(r) << r.error;
        EXPECT_EQ(r->status, 200) << "the HTTP/1.0 client's first response:\n" << r->head;
        EXPECT_EQ(r->body, "ok");
    }
    auto c = client();
    auto r = attempt([&] { return c.get("/hints", kPrompt); });
    ASSERT_TRUE(r) << r.error;
    EXPECT_EQ(r->status, 200) << r->head;
    EXPECT_EQ(r->body, "ok");
}

// A 101 answers only a request that asked for an upgrade (RFC 9110 7.8); anything else is a
// broken backend, not a tunnel to open.
TEST_F(RouterConformance, UnsolicitedSwitchingProtocolsGets502AndOpensNoTunnel) {
    RawBackend backend(by_target({{"/",
                                   {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\n"
                                    "Connection: upgrade\r\n\r\nRAWBYTES",
                                    After::Hold}}}));
    ASSERT_NO_FATAL_FAILURE(start_router({backend.address()}));
    auto c = client();
    auto r = attempt([&] { return c.get("/", kPrompt); });
    ASSERT_TRUE(r) << "the client got no status: " << r.error;
    EXPECT_EQ(r->status, 502) << r->head;
    // Bounded observation of something that must not happen: the backend's bytes reaching the
    // client.
    const std::string after = r->body + bytes_within(c, 500ms);
    EXPECT_EQ(after.find("RAWBYTES"), std::string::npos) << "tunnelled to the client: " << after;
}

// A tunnel is two directions: when the backend closes its side first, the client's half-close
// reaches the client, and what the client still sends reaches the backend; once the client
// closes too, the tunnel ends.
TEST_F(RouterConformance, TunnelWhoseBackendHalfClosesFirstStillCarriesTheClientsBytes) {
    std::atomic<bool> got_late_bytes{false};
    RawBackend backend([&](RawBackend::Connection& conn) {
        if (!conn.read_request()) {
            return;
        }
        conn.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\n"
                   "Connection: upgrade\r\n\r\nfrom-backend");
        conn.half_close();
        if (conn.read_until("late-bytes")) {
            got_late_bytes = true;
        }
        conn.hold();
    });
    ASSERT_NO_FATAL_FAILURE(start_router({backend.address()}, {"--threads", "1"}));
    auto c = client();
    c.send(build_request("GET", "/", {{"Connection", "upgrade"}, {"Upgrade", "foo"}}));
    auto r = c.read_response(kPrompt, true);
    ASSERT_EQ(r.status, 101) << r.head;
    std::string from_backend;
    while (from_backend.find("from-backend") == std::string::npos) {
        const std::string more = c.read_some(4096, kPrompt);
        ASSERT_FALSE(more.empty())
            << "the tunnel ended before the backend's bytes: " << from_backend;
        from_backend += more;
    }
    // The backend's FIN reaches the client as the end of its side of the tunnel.
    EXPECT_TRUE(c.read_some(4096, kPrompt).empty()) << "no half-close reached the client";
    c.send("late-bytes");
    EXPECT_TRUE(poll_until([&] { return got_late_bytes.load(); }))
        << "the client's bytes after the backend's half-close did not reach it";
    ::shutdown(c.fd(), SHUT_WR);
    EXPECT_TRUE(c.wait_closed()) << "the tunnel did not end once both sides had closed";
}

// ---- requests ----

// RFC 9112 3.2.2: the authority of an absolute-form target replaces Host, and the request goes on
// in origin form (an empty path becomes "/").
TEST_F(RouterConformance, AbsoluteFormTargetIsForwardedInOriginFormWithItsAuthorityAsHost) {
    RawBackend backend(RawBackend::answering([](const std::string&) { return Reply{kOk}; }));
    ASSERT_NO_FATAL_FAILURE(start_router({backend.address()}));
    struct Case {
        std::string target;
        std::string origin_form;
        std::string authority;
    };
    for (const Case& k : std::vector<Case>{
             {"http://app.example.test/api/id?x=1", "/api/id?x=1", "app.example.test"},
             {"http://app.example.test:8080/", "/", "app.example.test:8080"},
             {"http://app.example.test", "/", "app.example.test"},
             {"http://app.example.test?q=1", "/?q=1", "app.example.test"}}) {
        SCOPED_TRACE(k.target);
        auto c = client();
        auto r = attempt([&] {
            return c.request("GET", k.target, {{"Host", "other.example"}}, {}, kPrompt);
        });
        ASSERT_TRUE(r) << r.error;
        ASSERT_EQ(r->status, 200) << r->head << r->body;
        // The backend records a head before it answers it.
        const auto heads = backend.requests();
        ASSERT_FALSE(heads.empty());
        const std::string& head = heads.back();
        EXPECT_TRUE(head.starts_with("GET " + k.origin_form + " HTTP/1.1\r\n")) << head;
        EXPECT_EQ(header_values(head, "Host"), std::vector<std::string>{k.authority}) << head;
        EXPECT_EQ(header_values(head, "X-Forwarded-Host"), std::vector<std::string>{k.authority})
            << head;
    }
}

// RFC 9112 3.2: an HTTP/1.1 request without Host, or with two, is answered 400 and never
// forwarded; HTTP/1.0 needs none.
TEST_F(RouterConformance, Http11RequestWithoutExactlyOneHostGets400AndIsNotForwarded) {
    auto& b = add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends());
    for (const std::string& request :
         {std::string("GET /id HTTP/1.1\r\n\r\n"),
          std::string("GET /id HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")}) {
        auto c = client();
        c.send(request);
        auto r = attempt([&] { return c.read_response(kPrompt); });
        ASSERT_TRUE(r) << request << ": " << r.error;
        EXPECT_EQ(r->status, 400) << request << r->head << r->body;
    }
    auto c = client();
    c.send("GET /id HTTP/1.0\r\n\r\n");
    auto r = attempt([&] { return c.read_response(kPrompt); });
    ASSERT_TRUE(r) << r.error;
    EXPECT_EQ(r->status, 200) << r->head;
    EXPECT_EQ(b.requests_seen(), std::vector<std::string>{"GET /id"})
        << "only the HTTP/1.0 request may reach the backend";
}

// ---- memory ----

// Memory the router may use per stalled connection. Ordinary 64 KiB pieces cost about 0.4 MiB; the
// defect these tests catch costs about 10 MiB. AddressSanitizer inflates RSS for the same
// allocations (shadow memory, redzones, and a quarantine that holds freed memory back from reuse).
#if defined(__SANITIZE_ADDRESS__) // -fsanitize=address
constexpr long kBudgetPerConnectionKib = 2048;
#else
constexpr long kBudgetPerConnectionKib = 1024;
#endif

// A body of 1-byte chunks is six bytes of framing per byte of payload. A router that keeps a piece
// per chunk while the backend does not read holds megabytes per connection; it must hold no more
// than a few of its own buffers.
TEST_F(RouterConformance, TinyRequestChunksForAStalledBackendCostBoundedMemory) {
    add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends());
    const std::string tiny = one_byte_chunks(20000);
    {
        // Warm up: first-use allocations (buffer pools) are not growth per connection.
        auto c = client();
        auto r = c.request("POST", "/sink", {{"Transfer-Encoding", "chunked"}}, tiny + "0\r\n\r\n");
        ASSERT_EQ(r.status, 200) << r.head << r.body;
        ASSERT_EQ(r.body, "20000");
    }
    const long baseline = rss_kib(router().pid());
    ASSERT_GT(baseline, 0);

    constexpr int kClients = 8;
    std::vector<HttpClient> clients;
    std::vector<int> fds;
    clients.reserve(kClients);
    for (int i = 0; i < kClients; ++i) {
        clients.emplace_back(port());
        clients.back().send(
            build_request("POST", "/sink?stall_ms=4000", {{"Transfer-Encoding", "chunked"}}));
        fds.push_back(clients.back().fd());
    }
    RssSampler sampler(router().pid());
    std::atomic<bool> stop{false};
    const auto sent = pump(fds, tiny, Clock::now() + 2s, stop);
    const long peak = sampler.stop();
    EXPECT_LE(peak - baseline, kClients * kBudgetPerConnectionKib)
        << "router RSS grew from " << baseline << " KiB to " << peak << " KiB while " << kClients
        << " clients sent " << std::accumulate(sent.begin(), sent.end(), uint64_t{0})
        << " bytes of 1-byte chunks to a backend that did not read";
    RecordProperty("rss_baseline_kib", std::to_string(baseline));
    RecordProperty("rss_peak_kib", std::to_string(peak));
    ASSERT_TRUE(router().running());
}

// The same the other way: a backend sending 1-byte chunks to clients that do not read.
TEST_F(RouterConformance, TinyResponseChunksForClientsThatDoNotReadCostBoundedMemory) {
    const std::string tiny = one_byte_chunks(20000);
    // GET /endless: 1-byte chunks until the router stops taking them; anything else: 20000 of
    // them, then the last chunk.
    RawBackend backend([&tiny](RawBackend::Connection& conn) {
        while (auto head = conn.read_request()) {
            if (!conn.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")) {
                return;
            }
            if (target_of(*head) == "/endless") {
                while (conn.write(tiny)) {
                }
                return;
            }
            if (!conn.write(tiny + "0\r\n\r\n")) {
                return;
            }
        }
    });
    ASSERT_NO_FATAL_FAILURE(start_router({backend.address()}));
    {
        // Warm up, as above.
        auto c = client();
        auto r = c.get("/finite");
        ASSERT_EQ(r.status, 200) << r.head;
        ASSERT_EQ(r.body, std::string(20000, 'z'));
    }
    const long baseline = rss_kib(router().pid());
    ASSERT_GT(baseline, 0);

    constexpr int kClients = 4;
    RssSampler sampler(router().pid());
    std::vector<HttpClient> clients;
    clients.reserve(kClients);
    for (int i = 0; i < kClients; ++i) {
        clients.emplace_back(port(), kSlowLink);
        clients.back().send(build_request("GET", "/endless"));
    }
    auto forwarded = [&] {
        auto heads = backend.requests();
        return std::count_if(heads.begin(), heads.end(),
                             [](const std::string& h) { return target_of(h) == "/endless"; });
    };
    ASSERT_TRUE(poll_until([&] { return forwarded() == kClients; }))
        << "requests forwarded: " << forwarded();
    // Bounded observation of something that must not happen.
    const long budget = kClients * kBudgetPerConnectionKib;
    EXPECT_FALSE(poll_until([&] { return rss_kib(router().pid()) > baseline + budget; }, 2s));
    const long peak = sampler.stop();
    EXPECT_LE(peak - baseline, budget)
        << "router RSS grew from " << baseline << " KiB to " << peak << " KiB with " << kClients
        << " clients not reading a response of 1-byte chunks";
    RecordProperty("rss_baseline_kib", std::to_string(baseline));
    RecordProperty("rss_peak_kib", std::to_string(peak));
    ASSERT_TRUE(router().running());
}

// ---- keep-alive across unusual responses ----

TEST_F(RouterConformance, TrailersThenA304WithALengthThenA200ShareOneKeepAliveConnection) {
    RawBackend backend(by_target({{"/trailers", {kTrailers}},
                                  {"/not-modified", {kNotModifiedWithLength}},
                                  {"/plain", {kOk}}}));
    ASSERT_NO_FATAL_FAILURE(
        start_router({backend.address()}, {"--upstream-timeout", kLongUpstreamTimeout}));
    auto c = client();
    auto check = [](const Outcome& r, int status, const std::string& body) {
        ASSERT_TRUE(r) << r.error;
        EXPECT_EQ(r->status, status) << r->head;
        EXPECT_EQ(r->body, body);
        ASSERT_FALSE(r->closes_connection()) << r->head;
    };
    auto next = [&] { return attempt([&] { return c.read_response(kPrompt); }); };
    // One after the other, then pipelined in one write.
    ASSERT_NO_FATAL_FAILURE(
        check(attempt([&] { return c.get("/trailers", kPrompt); }), 200, "hello"));
    ASSERT_NO_FATAL_FAILURE(check(
        attempt([&] {
            return c.request("GET", "/not-modified", {{"If-None-Match", "\"v1\""}}, {}, kPrompt);
        }),
        304, ""));
    ASSERT_NO_FATAL_FAILURE(check(attempt([&] { return c.get("/plain", kPrompt); }), 200, "ok"));
    c.send(build_request("GET", "/trailers") + build_request("GET", "/not-modified") +
           build_request("GET", "/plain"));
    ASSERT_NO_FATAL_FAILURE(check(next(), 200, "hello"));
    ASSERT_NO_FATAL_FAILURE(check(next(), 304, ""));
    ASSERT_NO_FATAL_FAILURE(check(next(), 200, "ok"));
}

// ---- through `liege run` ----

namespace {

// `liege run` over vassals of liege-test-backend workers, for what only an emperor's routes show
// (path prefixes). The harness's LiegeRunFixture stops it in tear-down and checks what is left.
class LiegeRunConformance : public LiegeRunFixture {
protected:
    // Starts `liege run` with one vassal per entry of `vassals` (name -> more TOML lines), each a
    // single worker answering GET /id with NAME-1, and waits until every worker is ready.
    void start(const std::map<std::string, std::string>& vassals) {
        for (const auto& [name, more] : vassals) {
            // A vassal that names no hosts is a default one here.
            const std::string hosts = more.find("hosts") == std::string::npos ? kAnyHost : "";
            write_vassal(name, hosts + "command = [\"" + std::string(LIEGE_TEST_BACKEND) +
                                   "\", \"--listen\", \"127.0.0.1:${PORT}\", \"--name\", "
                                   "\"${NAME}-${WORKER}\"]\n" +
                                   more);
        }
        ASSERT_NO_FATAL_FAILURE(start_liege({}));
        for (const auto& [name, more] : vassals) {
            ASSERT_TRUE(wait_log("vassal " + name + ": worker 1 ready in ", kStart))
                << emperor_->describe();
        }
    }

    Outcome get(const std::string& target, const std::string& host) const {
        return attempt([&] {
            HttpClient c(port_);
            return c.request("GET", target, {{"Host", host}}, {}, kPrompt);
        });
    }
};

} // namespace

// RFC 9112 3.2.2: the target's authority, not the Host header, picks the vassal, and its path
// picks the longest matching prefix. liege-test-backend's 404 names the path it was asked for.
TEST_F(LiegeRunConformance, AbsoluteFormTargetIsRoutedByItsAuthorityAndPath) {
    ASSERT_NO_FATAL_FAILURE(start(
        {{"site", ""}, {"api", "path = \"/api\"\n"}, {"alpha", "hosts = [\"alpha.test\"]\n"}}));
    // Each vassal's route reaches the router a moment after its worker is ready.
    for (const auto& [target, host, backend] :
         std::vector<std::tuple<std::string, std::string, std::string>>{
             {"/api/id", "site.test", "api-1"},
             {"/id", "alpha.test", "alpha-1"},
             {"/id", "site.test", "site-1"}}) {
        ASSERT_TRUE(poll_until(
            [&] {
                auto r = get(target, host);
                return r && r->header("X-Backend") == backend;
            },
            kStart, 50ms))
            << host << target;
    }
    struct Case {
        std::string target;
        std::string host;
        std::string backend;
        std::string body;
    };
    for (const Case& k : std::vector<Case>{
             {"http://site.test/api/id", "alpha.test", "api-1", "no such endpoint: /api/id\n"},
             {"http://alpha.test/id", "site.test", "alpha-1", "alpha-1"},
             {"http://site.test/id", "alpha.test", "site-1", "site-1"}}) {
        SCOPED_TRACE("GET " + k.target + " with Host: " + k.host);
        auto r = get(k.target, k.host);
        ASSERT_TRUE(r) << r.error;
        EXPECT_EQ(r->header("X-Backend").value_or(""), k.backend) << r->head << r->body;
        EXPECT_EQ(r->body, k.body);
    }
}
