// The test backend on its own, without the router: if these fail, router test failures say
// nothing about the router.
#include <gtest/gtest.h>

#include <csignal>

#include "../backend/pattern.hpp"
#include "harness.hpp"

using namespace liege::test;

namespace {

// RFC 6455 section 1.3's example key and the accept value it must produce.
constexpr const char* kSampleKey = "dGhlIHNhbXBsZSBub25jZQ==";
constexpr const char* kSampleAccept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

bool is_pattern(std::string_view body, uint64_t offset = 0) {
    for (std::size_t i = 0; i < body.size(); ++i) {
        if (body[i] != pattern_byte(offset + i)) {
            return false;
        }
    }
    return true;
}

} // namespace

TEST(Backend, IdEchoAndHeaders) {
    TestBackend b("alpha");
    HttpClient c(b.port());

    auto r = c.get("/id");
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "alpha");
    EXPECT_EQ(r.header("X-Backend"), "alpha");

    r = c.request("POST", "/echo", {}, "hello world");
    EXPECT_EQ(r.body, "hello world");
    EXPECT_FALSE(r.chunked);

    r = c.request("POST", "/echo", {{"Transfer-Encoding", "chunked"}},
                  chunk("abc") + chunk("defgh") + "0\r\n\r\n");
    EXPECT_EQ(r.body, "abcdefgh");
    EXPECT_TRUE(r.chunked);

    r = c.request("GET", "/headers", {{"X-Thing", "1"}});
    EXPECT_EQ(r.body, "GET /headers HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Thing: 1\r\n\r\n");

    EXPECT_EQ(b.requests_seen(),
              (std::vector<std::string>{"GET /id", "POST /echo", "POST /echo", "GET /headers"}));
    auto counts = b.counts();
    EXPECT_EQ(counts.requests, 4u);
    EXPECT_EQ(counts.connections, 1u);
}

TEST(Backend, GeneratedBodies) {
    TestBackend b("alpha");
    HttpClient c(b.port());

    auto r = c.get("/bytes?n=1000000");
    EXPECT_EQ(r.header("Content-Length"), "1000000");
    EXPECT_EQ(r.body.size(), 1000000u);
    EXPECT_TRUE(is_pattern(r.body));

    r = c.get("/chunked?n=100000&size=333");
    EXPECT_TRUE(r.chunked);
    EXPECT_EQ(r.body.size(), 100000u);
    EXPECT_TRUE(is_pattern(r.body));

    r = c.get("/close-delimited?n=5000");
    EXPECT_TRUE(r.close_delimited);
    EXPECT_EQ(r.body.size(), 5000u);
    EXPECT_TRUE(is_pattern(r.body));
    EXPECT_TRUE(c.wait_closed());

    HttpClient c10(b.port());
    r = c10.get("/close-delimited?n=10&version=1.0");
    EXPECT_EQ(r.version, "HTTP/1.0");
    EXPECT_EQ(r.body, "ABCDEFGHIJ");
}

TEST(Backend, SinkStatusAndPipelining) {
    TestBackend b("alpha");
    HttpClient c(b.port());
    auto r = c.request("PUT", "/sink", {}, std::string(12345, 'x'));
    EXPECT_EQ(r.body, "12345");
    r = c.get("/status?code=503");
    EXPECT_EQ(r.status, 503);
    r = c.get("/status?code=204");
    EXPECT_EQ(r.status, 204);
    EXPECT_EQ(r.body, "");

    c.send(build_request("GET", "/slow?ms=50") + build_request("GET", "/id") +
           build_request("POST", "/echo", {}, "third"));
    EXPECT_EQ(c.read_response().body, "slow\n");
    EXPECT_EQ(c.read_response().body, "alpha");
    EXPECT_EQ(c.read_response().body, "third");
}

TEST(Backend, ExpectContinue) {
    TestBackend b("alpha");
    HttpClient c(b.port());
    c.send("POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    EXPECT_EQ(c.read_response().status, 100);
    c.send("abcd");
    EXPECT_EQ(c.read_response().body, "4");
}

TEST(Backend, ResetAndHang) {
    TestBackend b("alpha");
    HttpClient reset(b.port());
    reset.send(build_request("GET", "/reset"));
    EXPECT_THROW(reset.read_response(), HttpClosed);

    HttpClient hang(b.port());
    hang.send(build_request("GET", "/hang"));
    ASSERT_TRUE(b.wait_for_request("GET /hang"));
    // Bounded: nothing may arrive within this window.
    EXPECT_THROW(hang.read_response(300ms), HttpError);
}

TEST(Backend, EnvAnswersWithItsEnvironment) {
    Process p({LIEGE_TEST_BACKEND, "--listen", "127.0.0.1:0"}, {"LIEGE_TEST_GREETING=hello"});
    auto port = wait_for_port(p.out());
    ASSERT_TRUE(port) << p.describe();
    HttpClient c(*port);
    auto r = c.get("/env?name=LIEGE_TEST_GREETING");
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "hello");
    EXPECT_EQ(c.get("/env?name=LIEGE_TEST_NOT_SET").status, 404);
}

TEST(Backend, UntilHoldsTheRequestUntilTheFileExists) {
    TestBackend b("alpha");
    const auto dir = make_temp_dir("liege-backend-test");
    const auto file = dir / "release";
    HttpClient c(b.port());
    c.send(build_request("GET", "/until?file=" + file.string()));
    ASSERT_TRUE(b.wait_for_request("GET /until?file=" + file.string()));
    EXPECT_THROW(c.read_response(300ms), HttpError) << "answered before the file existed";
    write_file(file, "");
    auto r = c.read_response();
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "released\n");
    std::filesystem::remove_all(dir);
}

TEST(Backend, IdleTimeoutLeavesARequestOnAConnectionIdleTooLongUnanswered) {
    Process p({LIEGE_TEST_BACKEND, "--listen", "127.0.0.1:0", "--log-requests", "--idle-timeout",
               "1000"});
    auto port = wait_for_port(p.out());
    ASSERT_TRUE(port) << p.describe();
    HttpClient c(*port);
    EXPECT_EQ(c.get("/id").status, 200);
    EXPECT_EQ(c.get("/id?again").status, 200) << "a connection in use is not idle";
    // Idle past the timeout. The time passing is what is tested: there is no event to wait for.
    const auto answered = Clock::now();
    poll_until([&] { return Clock::now() - answered >= 1100ms; }, 2s, 50ms);
    c.send(build_request("GET", "/id?late"));
    EXPECT_FALSE(c.try_read_response()) << "a request after the idle timeout was answered";
    EXPECT_TRUE(p.out().wait_for_line_containing("idle timeout: closed a connection idle for "));
    EXPECT_EQ(p.out().text().find("request GET /id?late"), std::string::npos);
    HttpClient fresh(*port);
    EXPECT_EQ(fresh.get("/id").status, 200) << "a new connection is served";
}

TEST(Backend, WebSocketEcho) {
    TestBackend b("alpha");
    HttpClient c(b.port());
    auto r = c.request("GET", "/ws",
                       {{"Upgrade", "websocket"},
                        {"Connection", "Upgrade"},
                        {"Sec-WebSocket-Key", kSampleKey},
                        {"Sec-WebSocket-Version", "13"}});
    ASSERT_EQ(r.status, 101);
    EXPECT_EQ(r.header("Sec-WebSocket-Accept"), kSampleAccept);

    c.send(websocket_frame(1, "hello"));
    auto f = read_websocket_frame(c);
    EXPECT_EQ(f.opcode, 1);
    EXPECT_FALSE(f.masked);
    EXPECT_EQ(f.payload, "hello");

    std::string big(70000, '\0');
    for (std::size_t i = 0; i < big.size(); ++i) {
        big[i] = static_cast<char>(i * 7);
    }
    c.send(websocket_frame(2, big));
    f = read_websocket_frame(c);
    EXPECT_EQ(f.opcode, 2);
    EXPECT_EQ(f.payload, big);

    c.send(websocket_frame(9, "ping"));
    f = read_websocket_frame(c);
    EXPECT_EQ(f.opcode, 10);
    EXPECT_EQ(f.payload, "ping");

    c.send(websocket_frame(8, "\x03\xe8"));
    f = read_websocket_frame(c);
    EXPECT_EQ(f.opcode, 8);
    EXPECT_TRUE(c.wait_closed());
}

TEST(Harness, ProcessOutputAndExit) {
    Process p({"/bin/sh", "-c", "echo one; echo two >&2; exit 3"});
    EXPECT_EQ(p.out().wait_for_line_containing("one"), "one");
    EXPECT_EQ(p.err().wait_for_line_containing("two"), "two");
    auto status = p.wait_exit();
    ASSERT_TRUE(status);
    EXPECT_EQ(describe_status(*status), "exited 3");
}

TEST(Harness, KillsTheWholeProcessGroup) {
    pid_t grandchild = 0;
    {
        Process p({"/bin/sh", "-c", "sleep 100 & echo $!; wait"});
        auto line = p.out().wait_for_line([](std::string_view l) {
            return !l.empty() && l.find_first_not_of("0123456789") == l.npos;
        });
        ASSERT_TRUE(line);
        grandchild = std::stoi(*line);
        EXPECT_EQ(::kill(grandchild, 0), 0);
    }
    // ~Process asserted that the group is empty; the grandchild went with it.
    EXPECT_NE(::kill(grandchild, 0), 0);
}
