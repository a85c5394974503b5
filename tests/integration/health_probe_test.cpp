// Health probes against real sockets on the test's loop: a TCP or unix connect, an HTTP GET that
// must answer 2xx or 3xx, timeouts, and callbacks that never run inside probe() or after a cancel.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <sys/socket.h>
#include <sys/un.h>

#include "liege/address.hpp"
#include "liege/health.hpp"
#include "liege/spawner.hpp"
#include "loop_fixture.hpp"

namespace fs = std::filesystem;
using namespace liege::test;
using liege::UvHandle;

namespace {

// An HTTP server on the test's loop: reads a request head, answers with `response` (or never,
// when it is empty) and closes.
class TinyHttpServer {
public:
    TinyHttpServer(uv_loop_t* loop, std::string response)
        : loop_(loop), response_(std::move(response)) {
        uv_tcp_init(loop_, listener_.get());
        listener_->data = this;
        sockaddr_in addr{};
        uv_ip4_addr("127.0.0.1", 0, &addr);
        uv_tcp_bind(listener_.get(), reinterpret_cast<const sockaddr*>(&addr), 0);
        uv_listen(listener_.stream(), 16, [](uv_stream_t* server, int status) {
            if (status == 0) {
                static_cast<TinyHttpServer*>(server->data)->accept();
            }
        });
        sockaddr_storage bound{};
        int len = sizeof bound;
        uv_tcp_getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&bound), &len);
        port_ = ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    }

    uint16_t port() const { return port_; }
    const std::vector<std::string>& requests() const { return requests_; }

private:
    struct Conn {
        TinyHttpServer* server;
        UvHandle<uv_tcp_t> tcp;
        std::string in;
    };

    void accept() {
        auto conn = std::make_unique<Conn>();
        conn->server = this;
        uv_tcp_init(loop_, conn->tcp.get());
        if (uv_accept(listener_.stream(), conn->tcp.stream()) != 0) {
            return;
        }
        conn->tcp->data = conn.get();
        uv_read_start(
            conn->tcp.stream(),
            [](uv_handle_t*, size_t, uv_buf_t* buf) {
                static char storage[4096];
                *buf = uv_buf_init(storage, sizeof storage);
            },
            [](uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
                auto* c = static_cast<Conn*>(stream->data);
                if (nread < 0) {
                    c->tcp.reset();
                    return;
                }
                c->in.append(buf->base, static_cast<std::size_t>(nread));
                if (c->in.find("\r\n\r\n") == std::string::npos) {
                    return;
                }
                c->server->requests_.push_back(c->in);
                uv_read_stop(stream);
                if (c->server->response_.empty()) {
                    return; // never answers
                }
                // A small response on loopback: one non-blocking write takes it all.
                uv_buf_t out = uv_buf_init(c->server->response_.data(),
                                           static_cast<unsigned>(c->server->response_.size()));
                uv_try_write(stream, &out, 1);
                c->tcp.reset();
            });
        conns_.push_back(std::move(conn));
    }

    uv_loop_t* loop_;
    std::string response_;
    UvHandle<uv_tcp_t> listener_;
    uint16_t port_ = 0;
    std::vector<std::unique_ptr<Conn>> conns_;
    std::vector<std::string> requests_;
};

liege::Address loopback(uint16_t port) {
    liege::Address addr;
    addr.host = "127.0.0.1";
    addr.port = port;
    return addr;
}

class Probe : public LoopTest {
protected:
    void release() override {
        servers_.clear();
        children_.clear();
        reaper_.reset();
    }

    // Probes once and runs the loop until the result is in.
    std::optional<liege::ProbeResult> probe_once(const liege::Address& addr,
                                                 const std::string& path, Millis timeout = 2s) {
        std::optional<liege::ProbeResult> result;
        int calls = 0;
        bool inside = true;
        bool called_inside = false;
        liege::probe(loop(), addr, path, timeout, [&](const liege::ProbeResult& r) {
            result = r;
            ++calls;
            called_inside = called_inside || inside;
        });
        inside = false;
        run_until([&] { return result.has_value(); }, timeout + 5s);
        EXPECT_FALSE(called_inside) << "the callback ran inside probe()";
        EXPECT_TRUE(a_later_probe_answers());
        EXPECT_LE(calls, 1) << "the callback runs once";
        return result;
    }

    // Runs a probe started after everything else, a connect to a listener that never accepts,
    // to its result: the event after which a callback still due for an earlier probe would have
    // come, since results arrive through the loop in the order things happen. How a test shows
    // that a callback does not come, without a fixed wait.
    bool a_later_probe_answers() {
        uint16_t port = 0;
        int listener = liege::bind_loopback_listener(&port);
        if (listener < 0) {
            return false;
        }
        bool answered = false;
        auto cancel = liege::probe(loop(), loopback(port), "", kBound,
                                   [&](const liege::ProbeResult&) { answered = true; });
        const bool ok = run_until([&] { return answered; });
        cancel();
        ::close(listener);
        return ok;
    }

    TinyHttpServer& server(std::string response) {
        servers_.push_back(std::make_unique<TinyHttpServer>(loop(), std::move(response)));
        return *servers_.back();
    }

    std::vector<std::unique_ptr<TinyHttpServer>> servers_;
    std::unique_ptr<liege::Reaper> reaper_;
    std::vector<std::unique_ptr<liege::Child>> children_;
};

TEST_F(Probe, AConnectIsEnoughWithoutAPath) {
    uint16_t port = 0;
    int listener = liege::bind_loopback_listener(&port); // listening, never accepting
    ASSERT_GE(listener, 0);
    auto result = probe_once(loopback(port), "");
    ASSERT_TRUE(result);
    EXPECT_TRUE(result->ok) << result->error;
    EXPECT_EQ(result->status, 0);
    ::close(listener);
}

TEST_F(Probe, ARefusedConnectionIsNotOk) {
    auto result = probe_once(loopback(liege::pick_free_port()), "");
    ASSERT_TRUE(result);
    EXPECT_FALSE(result->ok);
    EXPECT_NE(result->error.find("refused"), std::string::npos) << result->error;
    result = probe_once(loopback(liege::pick_free_port()), "/healthz");
    ASSERT_TRUE(result);
    EXPECT_NE(result->error.find("refused"), std::string::npos) << result->error;
}

TEST_F(Probe, A2xxOr3xxAnswerIsOk) {
    TinyHttpServer& ok = server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    auto result = probe_once(loopback(ok.port()), "/healthz");
    ASSERT_TRUE(result);
    EXPECT_TRUE(result->ok) << result->error;
    EXPECT_EQ(result->status, 200);
    ASSERT_EQ(ok.requests().size(), 1u);
    EXPECT_TRUE(ok.requests()[0].starts_with("GET /healthz HTTP/1.1\r\n")) << ok.requests()[0];
    EXPECT_NE(ok.requests()[0].find("\r\nHost: localhost\r\n"), std::string::npos);
    EXPECT_NE(ok.requests()[0].find("\r\nConnection: close\r\n"), std::string::npos);

    TinyHttpServer& redirect = server("HTTP/1.0 302 Found\r\nLocation: /x\r\n\r\n");
    result = probe_once(loopback(redirect.port()), "/");
    ASSERT_TRUE(result);
    EXPECT_TRUE(result->ok) << result->error;
    EXPECT_EQ(result->status, 302);
}

TEST_F(Probe, An5xxAnswerIsNotOk) {
    TinyHttpServer& failing = server("HTTP/1.1 500 Internal Server Error\r\n\r\n");
    auto result = probe_once(loopback(failing.port()), "/healthz");
    ASSERT_TRUE(result);
    EXPECT_FALSE(result->ok);
    EXPECT_EQ(result->status, 500);
    EXPECT_EQ(result->error, "status 500");
}

TEST_F(Probe, GarbageOrAnEarlyCloseIsNotOk) {
    TinyHttpServer& garbage = server("SSH-2.0-OpenSSH_9.2\r\n");
    auto result = probe_once(loopback(garbage.port()), "/");
    ASSERT_TRUE(result);
    EXPECT_FALSE(result->ok);
    EXPECT_EQ(result->status, 0);

    TinyHttpServer& partial = server("HTTP/1.1 20"); // then closes
    result = probe_once(loopback(partial.port()), "/");
    ASSERT_TRUE(result);
    EXPECT_FALSE(result->ok);
    EXPECT_NE(result->error.find("closed"), std::string::npos) << result->error;
}

TEST_F(Probe, ASilentServerTimesOut) {
    TinyHttpServer& silent = server(""); // accepts, reads, never answers
    auto start = Clock::now();
    auto result = probe_once(loopback(silent.port()), "/healthz", 300ms);
    ASSERT_TRUE(result);
    EXPECT_FALSE(result->ok);
    EXPECT_EQ(result->error, "timed out");
    EXPECT_GE(since(start), 250ms);
    EXPECT_LT(since(start), 5s);
}

TEST_F(Probe, AnswersFromPythonsHttpServer) {
    reaper_ = liege::install_reaper(loop());
    fs::path dir = make_temp_dir("liege-emperor-test");
    write_file(dir / "index.html", "hello\n");
    uint16_t port = liege::pick_free_port();
    liege::SpawnSpec spec;
    // Unbuffered (-u), so that its "Serving HTTP on" line arrives when it is printed: once it
    // listens.
    spec.argv = {python(), "-u", "-m", "http.server", "--bind", "127.0.0.1", std::to_string(port)};
    spec.cwd = dir.string();
    int err = 0;
    bool serving = false;
    std::optional<liege::ExitStatus> exit;
    children_.push_back(liege::spawn_child(
        loop(), spec,
        [&](std::string_view line, bool) {
            serving = serving || line.starts_with("Serving HTTP on ");
        },
        [&](liege::ExitStatus s) { exit = s; }, &err));
    ASSERT_NE(children_.back(), nullptr) << err;
    ASSERT_TRUE(run_until([&] { return serving || exit.has_value(); })) << "python never served";
    ASSERT_FALSE(exit.has_value()) << "python exited: " << exit->str();

    // Listening: the GET waits in its backlog until the server accepts, and is answered.
    auto result = probe_once(loopback(port), "/", 2s);
    ASSERT_TRUE(result && result->ok) << (result ? result->error : "no result");
    EXPECT_EQ(result->status, 200);

    result = probe_once(loopback(port), "/missing", 2s);
    ASSERT_TRUE(result);
    EXPECT_FALSE(result->ok);
    EXPECT_EQ(result->status, 404);

    children_.back()->stop(SIGTERM, 2s);
    EXPECT_TRUE(run_until([&] { return exit.has_value(); }));
    fs::remove_all(dir);
}

TEST_F(Probe, ConnectsToUnixSockets) {
    fs::path dir = make_temp_dir("liege-emperor-test");
    std::string path = (dir / "worker.sock").string();
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path.c_str());
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sun), sizeof sun), 0);
    ASSERT_EQ(::listen(fd, 16), 0);
    liege::Address addr;
    addr.kind = liege::Address::Kind::Unix;
    addr.path = path;
    auto result = probe_once(addr, "");
    ASSERT_TRUE(result);
    EXPECT_TRUE(result->ok) << result->error;
    ::close(fd);

    addr.path = (dir / "nobody.sock").string();
    result = probe_once(addr, "");
    ASSERT_TRUE(result);
    EXPECT_FALSE(result->ok);

    addr.path = std::string(200, 'x'); // longer than sun_path: fails, but from the loop
    result = probe_once(addr, "");
    ASSERT_TRUE(result);
    EXPECT_FALSE(result->ok);
    fs::remove_all(dir);
}

TEST_F(Probe, ACancelledProbeNeverCallsBack) {
    TinyHttpServer& silent = server("");
    int calls = 0;
    auto cancel = liege::probe(loop(), loopback(silent.port()), "/", 100ms,
                               [&](const liege::ProbeResult&) { ++calls; });
    cancel();
    // A probe of the same silent server with the same timeout, started after it, times out
    // after the cancelled one would have: once its result is in, that one's moment has passed.
    std::optional<liege::ProbeResult> later;
    auto cancel_later = liege::probe(loop(), loopback(silent.port()), "/", 100ms,
                                     [&](const liege::ProbeResult& r) { later = r; });
    ASSERT_TRUE(run_until([&] { return later.has_value(); }));
    EXPECT_EQ(later->error, "timed out");
    EXPECT_EQ(calls, 0);
    cancel(); // twice is harmless
    cancel_later();

    // Cancelling before the connect completed, and after the callback ran.
    cancel = liege::probe(loop(), loopback(liege::pick_free_port()), "", 1s,
                          [&](const liege::ProbeResult&) { ++calls; });
    run_until([&] { return calls == 1; });
    EXPECT_EQ(calls, 1);
    cancel();
    ASSERT_TRUE(a_later_probe_answers());
    EXPECT_EQ(calls, 1);
}

TEST_F(Probe, TheCallbackMayCancelAndStartProbes) {
    uint16_t port = 0;
    int listener = liege::bind_loopback_listener(&port);
    ASSERT_GE(listener, 0);
    int done = 0;
    std::function<void()> cancel;
    cancel = liege::probe(loop(), loopback(port), "", 1s, [&](const liege::ProbeResult& r) {
        EXPECT_TRUE(r.ok);
        cancel(); // its own cancel, from inside: a no-op
        cancel = liege::probe(loop(), loopback(port), "", 1s,
                              [&](const liege::ProbeResult& again) { done += again.ok ? 1 : 0; });
    });
    EXPECT_TRUE(run_until([&] { return done == 1; }));
    ::close(listener);
}

} // namespace
