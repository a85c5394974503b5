// Request buffering ([upstream] request_buffering), as a user of the real `liege run` sees it:
// a vassal whose workers serve one request at a time (concurrency >= 1, "auto", the default)
// gets a request only once its body is whole, so slow uploads hold no worker; the body waits in
// memory up to body_buffer_size and beyond that in a temporary file that has no name, so memory
// does not grow with the body and nothing is left behind; the router answers Expect:
// 100-continue itself; a client silent mid-body for body_timeout gets 408 and a client that
// leaves mid-body sends the app nothing; a body over body_buffer_max gets 413. "off" (and
// concurrency 0 under "auto") streams the body as it arrives; "always" buffers whatever the
// concurrency.
//
// The apps are gunicorn with sync workers (one request at a time, the app server this is for)
// and liege-test-backend: `--log-requests` prints `request METHOD TARGET` as soon as it has read
// a head, which tells whether a request reached it before its body was whole; /sink answers
// the number of body bytes it read, /echo the body, /headers the head as it came.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "harness.hpp"

using namespace liege::test;
using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

constexpr const char* kUploadApp = R"PY(def application(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    got = len(environ["wsgi.input"].read(length)) if length else 0
    body = ("got %d" % got).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
)PY";

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

class RequestBuffering : public LiegeRunFixture {
protected:
    void SetUp() override {
        LiegeRunFixture::SetUp();
        tmp_ = root_ / "tmp";
        fs::create_directories(tmp_);
        // The router's temporary files go here (it inherits the emperor's environment).
        const char* old = std::getenv("TMPDIR");
        old_tmpdir_ = old != nullptr ? std::optional<std::string>(old) : std::nullopt;
        ::setenv("TMPDIR", tmp_.c_str(), 1);
    }
    void TearDown() override {
        LiegeRunFixture::TearDown();
        if (old_tmpdir_) {
            ::setenv("TMPDIR", old_tmpdir_->c_str(), 1);
        } else {
            ::unsetenv("TMPDIR");
        }
    }

    void start(std::vector<std::string> extra = {}) {
        start_liege({std::move(extra), "127.0.0.1:0", 1});
    }

    static std::string backend_vassal(const std::string& host, const std::string& keys) {
        const std::vector<std::string> argv = {LIEGE_TEST_BACKEND,  "--listen",
                                               "127.0.0.1:${PORT}", "--name",
                                               "${NAME}-${WORKER}", "--log-requests"};
        return "command = " + toml_array(argv) + "\nhosts = " + toml_array({host}) + "\n" + keys;
    }

    bool wait_ok(const std::string& host, const std::string& target) const {
        return poll_until(
            [&] {
                auto r = get_once(host, target);
                return r && r->status == 200;
            },
            kStart, 20ms);
    }

    // The router process: the emperor's descendant whose command line says `router`.
    pid_t router_pid() const {
        for (const ProcStat& p : emperor_descendants()) {
            const std::string cmd = slurp("/proc/" + std::to_string(p.pid) + "/cmdline");
            if (contains(cmd, std::string("router") + '\0')) {
                return p.pid;
            }
        }
        return 0;
    }
    static uint64_t rss_kib(pid_t pid) {
        std::ifstream in("/proc/" + std::to_string(pid) + "/status");
        std::string line;
        while (std::getline(in, line)) {
            if (line.starts_with("VmRSS:")) {
                return std::stoull(line.substr(6));
            }
        }
        return 0;
    }
    // How many of the process's open files are under the temporary directory.
    int temp_fds(pid_t pid) const {
        int n = 0;
        const fs::path fd_dir = "/proc/" + std::to_string(pid) + "/fd";
        std::error_code ec;
        for (const auto& e : fs::directory_iterator(fd_dir, ec)) {
            std::error_code link_ec;
            const std::string target = fs::read_symlink(e.path(), link_ec).string();
            if (!link_ec && target.starts_with(tmp_.string())) {
                ++n;
            }
        }
        return n;
    }
    // The files in the temporary directory (the emperor keeps its runtime directory there too).
    std::string temp_files() const {
        std::string out;
        for (const auto& e : fs::directory_iterator(tmp_)) {
            if (!e.is_directory()) {
                out += e.path().filename().string() + " ";
            }
        }
        return out;
    }

    fs::path tmp_;
    std::optional<std::string> old_tmpdir_;
};

TEST_F(RequestBuffering, SlowUploadsHoldNoWorkerOfASyncGunicornApp) {
    // Two gunicorn processes with one sync worker each: without buffering, two slow uploads
    // would take both, and every other request would wait behind them.
    write_file(vassals_ / "upload.py", kUploadApp);
    write_vassal("app", "command = " +
                            toml_array({"gunicorn", "-w", "1", "-b", "127.0.0.1:${PORT}",
                                        "upload:application"}) +
                            "\nhosts = ['app.test']\nworkers = 2\nconcurrency = 1\n"
                            "env = { PYTHONDONTWRITEBYTECODE = '1' }\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_ok("app.test", "/")) << log();

    // Ten uploads, each with half of its body sent and the rest held back.
    std::vector<HttpClient> uploads;
    for (int i = 0; i < 10; ++i) {
        uploads.emplace_back(port_);
        uploads.back().send(
            "POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2000\r\n\r\n" +
            std::string(1000, 'u'));
    }
    // Meanwhile the app serves others at once.
    for (int i = 0; i < 5; ++i) {
        std::string error;
        auto r = get_once("app.test", "/quick", &error, 5s);
        ASSERT_TRUE(r) << "request " << i << " behind ten slow uploads: " << error;
        EXPECT_EQ(r->status, 200) << r->body;
        EXPECT_EQ(r->body, "got 0");
    }
    // The uploads finish, and each reaches the app whole.
    for (auto& u : uploads) {
        u.send(std::string(1000, 'v'));
    }
    for (auto& u : uploads) {
        Response r = u.read_response();
        EXPECT_EQ(r.status, 200) << r.body;
        EXPECT_EQ(r.body, "got 2000");
    }
}

TEST_F(RequestBuffering, AChunkedUploadReachesUwsgiWithItsLength) {
    // A WSGI app reads CONTENT_LENGTH bytes; uWSGI's HTTP socket passes a chunked body on
    // without one. Buffered, the body comes with a Content-Length.
    write_file(vassals_ / "upload.py", kUploadApp);
    write_vassal("app", "command = " +
                            toml_array({"uwsgi", "--plugin", "python3", "--http11-socket",
                                        "127.0.0.1:${PORT}", "--wsgi-file", "upload.py",
                                        "--disable-logging"}) +
                            "\nhosts = ['app.test']\nconcurrency = 1\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_ok("app.test", "/")) << log();
    HttpClient c(port_);
    Response r = c.request(
        "POST", "/upload", {{"Host", "app.test"}, {"Transfer-Encoding", "chunked"}},
        "400\r\n" + std::string(1024, 'a') + "\r\n10\r\n" + std::string(16, 'b') + "\r\n0\r\n\r\n");
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.body, "got 1040");
}

TEST_F(RequestBuffering, ALargeBodyGoesThroughATemporaryFileWithBoundedMemory) {
    write_vassal("app", backend_vassal("app.test", "concurrency = 1\n"));
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_ok("app.test", "/id"));
    const pid_t router = router_pid();
    ASSERT_NE(router, 0) << "no router process";
    const uint64_t rss_before = rss_kib(router);

    constexpr size_t kBody = 48u << 20;
    constexpr size_t kPiece = 1u << 20;
    HttpClient c(port_);
    c.send("POST /sink HTTP/1.1\r\nHost: app.test\r\nContent-Length: " + std::to_string(kBody) +
           "\r\n\r\n");
    const std::string piece(kPiece, 'b');
    for (size_t sent = 0; sent + kPiece < kBody; sent += kPiece) {
        c.send(piece);
    }
    // All but the last MiB is in: buffered in a file, not in memory, and not at the app yet.
    ASSERT_TRUE(poll_until([&] { return temp_fds(router) == 1; }, kWait, 20ms))
        << "the router holds no temporary file";
    EXPECT_FALSE(contains(log(), "request POST /sink")) << "the app got the request early";
    const uint64_t rss_during = rss_kib(router);
    EXPECT_LT(rss_during, rss_before + 16 * 1024)
        << "router RSS grew from " << rss_before << " KiB to " << rss_during << " KiB with "
        << (kBody - kPiece) / 1024 << " KiB buffered";
    EXPECT_EQ(temp_files(), "") << "the temporary file has a name";

    c.send(piece);
    Response r = c.read_response(30s);
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.body, std::to_string(kBody));
    // The file closes with the exchange; nothing is left behind.
    EXPECT_TRUE(poll_until([&] { return temp_fds(router) == 0; }, kWait, 20ms));
    EXPECT_EQ(temp_files(), "");
}

TEST_F(RequestBuffering, AChunkedBodyIsBufferedAndTheRouterAnswersExpect) {
    write_vassal("app", backend_vassal("app.test", "concurrency = 1\n"));
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_ok("app.test", "/id"));

    HttpClient c(port_);
    c.send("POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n"
           "Expect: 100-continue\r\n\r\n");
    // The router's own 100 Continue, before the app has seen anything.
    EXPECT_EQ(c.read_exact(25), "HTTP/1.1 100 Continue\r\n\r\n");
    EXPECT_FALSE(contains(log(), "request POST /echo"));
    std::string body;
    for (int i = 0; i < 40; ++i) {
        const std::string part(1 + i * 997, static_cast<char>('a' + i % 26));
        body += part;
        char size[16];
        std::snprintf(size, sizeof(size), "%zx", part.size());
        c.send(std::string(size) + "\r\n" + part + "\r\n");
    }
    c.send("0\r\n\r\n");
    Response r = c.read_response();
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body.size(), body.size());
    EXPECT_EQ(r.body, body);

    // The app is not asked the expectation the router answered, and it gets the chunked body
    // with a Content-Length.
    r = c.request(
        "POST", "/headers",
        {{"Host", "app.test"}, {"Expect", "100-continue"}, {"Transfer-Encoding", "chunked"}},
        "5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
    EXPECT_EQ(r.status, 200);
    EXPECT_FALSE(contains(r.body, "Expect")) << r.body;
    EXPECT_FALSE(contains(r.body, "Transfer-Encoding")) << r.body;
    EXPECT_TRUE(contains(r.body, "Content-Length: 11\r\n\r\n")) << r.body;
    r = c.request("POST", "/echo", {{"Host", "app.test"}, {"Transfer-Encoding", "chunked"}},
                  "5\r\nhello\r\n0\r\n\r\n");
    EXPECT_EQ(r.status, 200);
    EXPECT_FALSE(r.chunked) << "the app read a Content-Length body";
    EXPECT_EQ(r.body, "hello");
}

TEST_F(RequestBuffering, AClientSilentMidBodyGets408AndOneThatLeavesSendsTheAppNothing) {
    write_vassal("app", backend_vassal("app.test", "concurrency = 1\n"));
    ASSERT_NO_FATAL_FAILURE(start({"--router-opt", "body_timeout=1s"}));
    ASSERT_TRUE(wait_ok("app.test", "/id"));

    {
        HttpClient gone(port_);
        gone.send("POST /sink?gone HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\n" +
                  std::string(50, 'x'));
    }
    HttpClient c(port_);
    c.send("POST /sink?silent HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\n" +
           std::string(50, 'x'));
    Response r = c.read_response(10s);
    EXPECT_EQ(r.status, 408) << r.body;
    // A later request reaches the app, and neither half-sent one ever did.
    auto ok = get_once("app.test", "/id?after");
    ASSERT_TRUE(ok);
    EXPECT_EQ(ok->status, 200);
    ASSERT_TRUE(poll_until([&] { return contains(log(), "request GET /id?after"); }, kWait, 20ms));
    EXPECT_FALSE(contains(log(), "request POST /sink")) << log();
}

TEST_F(RequestBuffering, ABodyOverBodyBufferMaxGets413) {
    write_vassal("app", backend_vassal("app.test", "concurrency = 1\n"));
    ASSERT_NO_FATAL_FAILURE(start({"--router-opt", "body_buffer_max=1MiB"}));
    ASSERT_TRUE(wait_ok("app.test", "/id"));

    HttpClient c(port_);
    c.send("POST /sink HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2097152\r\n\r\n");
    Response r = c.read_response();
    EXPECT_EQ(r.status, 413) << "refused from its Content-Length, before the body comes";

    HttpClient chunked(port_);
    chunked.send("POST /sink HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n");
    const std::string part(512 * 1024, 'c');
    for (int i = 0; i < 4; ++i) {
        try {
            chunked.send("80000\r\n" + part + "\r\n");
        } catch (const HttpError&) {
            break; // the router has answered and closed
        }
    }
    r = chunked.read_response();
    EXPECT_EQ(r.status, 413);
    EXPECT_FALSE(contains(log(), "request POST /sink")) << log();
}

TEST_F(RequestBuffering, ABufferedPutWhoseWorkerDiesIsSentWholeToAnother) {
    // Worker 1 takes every body and dies without an answer; worker 2 answers. The router holds
    // the body (200 KiB: most of it in the temporary file), so it can send a PUT again.
    write_vassal("app", backend_vassal("app.test", "workers = 2\nconcurrency = 1\n"));
    ASSERT_NO_FATAL_FAILURE(start({"--router-opt", "body_buffer_size=16k"}));
    // Both workers routed to: worker 2 answers a /sink-unless of its own (worker 1 may be
    // marked down for a second by that, when it got the GET first).
    wait_vassal("app", [](const json& j) { return j["workers_ready"] == 2; });
    ASSERT_TRUE(poll_until(
        [&] {
            auto r = get_once("app.test", "/sink-unless?name=app-2");
            return r && r->status == 200;
        },
        kStart, 20ms));
    const std::string body(200 * 1024, 'p');
    int puts = 0;
    EXPECT_TRUE(poll_until(
        [&] {
            HttpClient c(port_);
            Response r = c.request("PUT", "/sink-unless?name=app-2&i=" + std::to_string(puts++),
                                   {{"Host", "app.test"}}, body);
            EXPECT_EQ(r.status, 200) << r.body;
            EXPECT_EQ(r.body, std::to_string(body.size()));
            return contains(log(), "[app/1] request PUT /sink-unless");
        },
        kStart, 50ms))
        << "worker 1 was never tried, so nothing was sent again";
    // A POST is not sent again: it may have been acted on. (Worker 1 is marked down for a
    // second after each failure, so one comes its way once that has passed.)
    int last = 0;
    EXPECT_TRUE(poll_until(
        [&] {
            HttpClient c(port_);
            last =
                c.request("POST", "/sink-unless?name=app-2", {{"Host", "app.test"}}, body).status;
            return last == 502;
        },
        kStart, 50ms))
        << "no POST went to worker 1; the last got " << last;
}

TEST_F(RequestBuffering, OffStreamsAndAlwaysBuffersWhateverTheConcurrency) {
    write_vassal("streamed",
                 backend_vassal("streamed.test", "concurrency = 1\n[upstream]\nrequest_buffering = "
                                                 "'off'\n"));
    write_vassal("unlimited", backend_vassal("unlimited.test", "concurrency = 0\n"));
    write_vassal("always",
                 backend_vassal("always.test", "concurrency = 0\n[upstream]\nrequest_buffering = "
                                               "'always'\n"));
    ASSERT_NO_FATAL_FAILURE(start());
    for (const char* host : {"streamed.test", "unlimited.test", "always.test"}) {
        ASSERT_TRUE(wait_ok(host, "/id")) << host;
    }
    std::vector<HttpClient> clients;
    for (const char* host : {"streamed.test", "unlimited.test", "always.test"}) {
        clients.emplace_back(port_);
        clients.back().send("POST /sink?" + std::string(host) + " HTTP/1.1\r\nHost: " + host +
                            "\r\nContent-Length: 10\r\n\r\nhalf-");
    }
    // The two that stream reach their apps before the body is whole.
    EXPECT_TRUE(poll_until([&] { return contains(log(), "request POST /sink?streamed.test"); },
                           kWait, 20ms));
    EXPECT_TRUE(poll_until([&] { return contains(log(), "request POST /sink?unlimited.test"); },
                           kWait, 20ms));
    EXPECT_FALSE(contains(log(), "request POST /sink?always.test"));
    for (auto& c : clients) {
        c.send("whole");
    }
    for (auto& c : clients) {
        Response r = c.read_response();
        EXPECT_EQ(r.status, 200);
        EXPECT_EQ(r.body, "10");
    }
    // Its worker's line reaches the log through a pipe, maybe after the response.
    EXPECT_TRUE(
        poll_until([&] { return contains(log(), "request POST /sink?always.test"); }, kWait, 20ms));
}

} // namespace
