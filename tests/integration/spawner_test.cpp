// The emperor's building blocks against real processes, sockets and files: spawner (Spawn*),
// health probes (Probe) and the directory watcher (Watch).
//
// Every wait runs the test's libuv loop until a condition holds or a deadline passes, and every
// test ends by closing what it opened and asserting uv_loop_close() == 0.
#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.hpp"
#include "liege/address.hpp"
#include "liege/health.hpp"
#include "liege/spawner.hpp"
#include "liege/uv.hpp"
#include "liege/vassal.hpp"
#include "liege/watcher.hpp"

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;
using liege::UvHandle;
using liege::test::make_temp_dir;
using liege::test::poll_until;
using liege::test::process_gone;
using liege::test::write_file;

namespace {

constexpr Millis kBound = 10s; // generous bound for waits that should take milliseconds

Millis since(Clock::time_point start) {
    return std::chrono::duration_cast<Millis>(Clock::now() - start);
}

std::string python() {
    return ::access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
}

// A loop per test, run only in bounded steps.
class LoopTest : public ::testing::Test {
protected:
    void SetUp() override {
        ::signal(SIGPIPE, SIG_IGN); // as the emperor does: a closed peer is an error value
        ASSERT_EQ(uv_loop_init(&loop_), 0);
    }

    void TearDown() override {
        release();
        // Let close callbacks run; nothing may be left active.
        auto deadline = Clock::now() + 2s;
        while (uv_loop_alive(&loop_) != 0 && Clock::now() < deadline) {
            uv_run(&loop_, UV_RUN_NOWAIT);
        }
        int rc = uv_loop_close(&loop_);
        EXPECT_EQ(rc, 0) << "handles left open on the test's loop";
        if (rc != 0) {
            uv_walk(
                &loop_,
                [](uv_handle_t* h, void*) {
                    ADD_FAILURE() << "open handle of type " << uv_handle_type_name(h->type);
                    if (uv_is_closing(h) == 0) {
                        uv_close(h, nullptr);
                    }
                },
                nullptr);
            uv_run(&loop_, UV_RUN_NOWAIT);
            uv_loop_close(&loop_);
        }
    }

    // Drops whatever the test keeps that owns handles on the loop.
    virtual void release() {}

    uv_loop_t* loop() { return &loop_; }

    // Runs the loop until `condition` holds or `timeout` passes; returns the condition.
    bool run_until(const std::function<bool()>& condition, Millis timeout = kBound) {
        UvHandle<uv_timer_t> tick; // keeps each UV_RUN_ONCE from blocking past 10 ms
        uv_timer_init(&loop_, tick.get());
        uv_timer_start(
            tick.get(), [](uv_timer_t*) {}, 10, 10);
        auto deadline = Clock::now() + timeout;
        while (!condition() && Clock::now() < deadline) {
            uv_run(&loop_, UV_RUN_ONCE);
        }
        return condition();
    }

    // Runs the loop for `duration`, to see that nothing (more) happens.
    void run_for(Millis duration) {
        run_until([] { return false; }, duration);
    }

    uv_loop_t loop_{};
};

// ---------------------------------------------------------------------------------------------
// Spawner

struct Output {
    std::vector<std::pair<std::string, bool>> lines; // line, is_stderr
    std::optional<liege::ExitStatus> exit;
    int exit_calls = 0;
    std::size_t lines_at_exit = 0;

    bool has_line(const std::string& line, bool is_stderr) const {
        for (const auto& [text, err] : lines) {
            if (text == line && err == is_stderr) {
                return true;
            }
        }
        return false;
    }
};

class Spawn : public LoopTest {
protected:
    void SetUp() override {
        LoopTest::SetUp();
        reaper_ = liege::install_reaper(loop());
    }
    void release() override {
        children_.clear();
        reaper_.reset();
    }

    liege::Child* spawn(liege::SpawnSpec spec, Output& out, int* err = nullptr) {
        int local_err = 0;
        if (spec.tag.empty()) {
            spec.tag = "test/1";
        }
        auto child = liege::spawn_child(
            loop(), spec,
            [&out](std::string_view line, bool is_stderr) {
                out.lines.emplace_back(std::string(line), is_stderr);
            },
            [&out](liege::ExitStatus status) {
                out.exit = status;
                ++out.exit_calls;
                out.lines_at_exit = out.lines.size();
            },
            err != nullptr ? err : &local_err);
        if (!child) {
            return nullptr;
        }
        children_.push_back(std::move(child));
        return children_.back().get();
    }

    liege::Child* spawn(std::vector<std::string> argv, Output& out, int* err = nullptr) {
        liege::SpawnSpec spec;
        spec.argv = std::move(argv);
        return spawn(std::move(spec), out, err);
    }

    bool wait_exit(const Output& out, Millis timeout = kBound) {
        return run_until([&] { return out.exit.has_value(); }, timeout);
    }

    std::unique_ptr<liege::Reaper> reaper_;
    std::vector<std::unique_ptr<liege::Child>> children_;
};

TEST_F(Spawn, DeliversStdoutAndStderrLinesThenTheExitCode) {
    Output out;
    liege::Child* child = spawn({"sh", "-c", "echo out; echo err >&2; exit 3"}, out);
    ASSERT_NE(child, nullptr);
    EXPECT_GT(child->pid(), 0);
    ASSERT_TRUE(wait_exit(out));
    EXPECT_EQ(out.exit->exit_code, 3);
    EXPECT_FALSE(out.exit->signalled());
    EXPECT_EQ(out.exit->str(), "exit code 3");
    EXPECT_TRUE(out.has_line("out", false));
    EXPECT_TRUE(out.has_line("err", true));
    EXPECT_EQ(out.lines_at_exit, 2u) << "every line comes before the exit";
    EXPECT_FALSE(child->running());
    std::vector<std::string> last = child->last_lines();
    EXPECT_EQ(last.size(), 2u);
    run_for(50ms);
    EXPECT_EQ(out.exit_calls, 1);
}

TEST_F(Spawn, DeliversAPartialLastLineWhenThePipeCloses) {
    Output out;
    ASSERT_NE(spawn({"sh", "-c", "printf 'first\\nno newline'"}, out), nullptr);
    ASSERT_TRUE(wait_exit(out));
    EXPECT_EQ(out.exit->exit_code, 0);
    ASSERT_EQ(out.lines.size(), 2u);
    EXPECT_EQ(out.lines[1].first, "no newline");
}

TEST_F(Spawn, KeepsOnlyTheLast20Lines) {
    Output out;
    liege::Child* child =
        spawn({"sh", "-c", "i=1; while [ $i -le 50 ]; do echo line$i; i=$((i+1)); done"}, out);
    ASSERT_NE(child, nullptr);
    ASSERT_TRUE(wait_exit(out));
    EXPECT_EQ(out.lines.size(), 50u);
    std::vector<std::string> last = child->last_lines();
    ASSERT_EQ(last.size(), 20u);
    EXPECT_EQ(last.front(), "line31");
    EXPECT_EQ(last.back(), "line50");
}

TEST_F(Spawn, MissingProgramFailsWithENOENT) {
    Output out;
    int err = 0;
    EXPECT_EQ(spawn({"liege-no-such-program-4711"}, out, &err), nullptr);
    EXPECT_EQ(err, -ENOENT);
    err = 0;
    EXPECT_EQ(spawn({"/nonexistent/dir/program"}, out, &err), nullptr);
    EXPECT_EQ(err, -ENOENT);
    run_for(20ms);
    EXPECT_EQ(out.exit_calls, 0) << "a failed spawn reports no exit";
}

TEST_F(Spawn, ReportsExecAndChdirFailuresAsErrno) {
    fs::path dir = make_temp_dir("liege-emperor-test");
    fs::path not_executable = dir / "script.sh";
    write_file(not_executable, "#!/bin/sh\necho hi\n");
    ::chmod(not_executable.c_str(), 0644);
    Output out;
    int err = 0;
    EXPECT_EQ(spawn({not_executable.string()}, out, &err), nullptr);
    EXPECT_EQ(err, -EACCES);

    liege::SpawnSpec spec;
    spec.argv = {"true"};
    spec.cwd = (dir / "missing").string();
    err = 0;
    EXPECT_EQ(spawn(spec, out, &err), nullptr);
    EXPECT_EQ(err, -ENOENT);
    fs::remove_all(dir);
}

TEST_F(Spawn, PassesTheEnvironmentAndWorkingDirectory) {
    fs::path dir = make_temp_dir("liege-emperor-test");
    ::setenv("LIEGE_TEST_INHERITED", "from-emperor", 1);
    ::setenv("LIEGE_TEST_OVERRIDDEN", "old", 1);
    ::setenv("LISTEN_FDS", "7", 1); // the emperor's own activation must not leak into a child
    liege::SpawnSpec spec;
    spec.argv = {"sh", "-c",
                 "echo \"$LIEGE_TEST_INHERITED\"; echo \"$LIEGE_TEST_OVERRIDDEN\"; "
                 "echo \"$LIEGE_TEST_NEW\"; echo \"fds=${LISTEN_FDS:-unset}\"; pwd -P"};
    spec.env = {{"LIEGE_TEST_OVERRIDDEN", "new"}, {"LIEGE_TEST_NEW", "added"}};
    spec.cwd = dir.string();
    Output out;
    ASSERT_NE(spawn(spec, out), nullptr);
    ASSERT_TRUE(wait_exit(out));
    ::unsetenv("LIEGE_TEST_INHERITED");
    ::unsetenv("LIEGE_TEST_OVERRIDDEN");
    ::unsetenv("LISTEN_FDS");
    ASSERT_EQ(out.lines.size(), 5u);
    EXPECT_EQ(out.lines[0].first, "from-emperor");
    EXPECT_EQ(out.lines[1].first, "new");
    EXPECT_EQ(out.lines[2].first, "added");
    EXPECT_EQ(out.lines[3].first, "fds=unset");
    EXPECT_EQ(out.lines[4].first, fs::canonical(dir).string());
    fs::remove_all(dir);
}

TEST_F(Spawn, ResetsSignalsTheEmperorIgnores) {
    // SIGPIPE is ignored in this process (as in the emperor); the child must see the default.
    Output out;
    ASSERT_NE(spawn({"sh", "-c", "grep '^SigIgn' /proc/self/status"}, out), nullptr);
    ASSERT_TRUE(wait_exit(out));
    ASSERT_EQ(out.lines.size(), 1u);
    EXPECT_EQ(out.lines[0].first, "SigIgn:\t0000000000000000");
}

TEST_F(Spawn, StopEscalatesToSigkillWhenSigtermIsIgnored) {
    Output out;
    liege::Child* child = spawn({"sh", "-c", "trap '' TERM; echo ready; sleep 100"}, out);
    ASSERT_NE(child, nullptr);
    ASSERT_TRUE(run_until([&] { return out.has_line("ready", false); }));
    auto start = Clock::now();
    child->stop(SIGTERM, 300ms);
    ASSERT_TRUE(wait_exit(out));
    EXPECT_GE(since(start), 250ms) << "SIGKILL only after the timeout";
    EXPECT_TRUE(out.exit->signalled());
    EXPECT_EQ(out.exit->term_signal, SIGKILL);
    EXPECT_EQ(out.exit->str(), "killed by SIGKILL");
}

TEST_F(Spawn, StopReachesTheWholeProcessGroup) {
    Output out;
    liege::Child* child = spawn({"sh", "-c", "sleep 100 & echo $!; wait"}, out);
    ASSERT_NE(child, nullptr);
    ASSERT_TRUE(run_until([&] { return !out.lines.empty(); }));
    pid_t grandchild = std::stoi(out.lines[0].first);
    EXPECT_FALSE(process_gone(grandchild));
    child->stop(SIGTERM, 5s);
    ASSERT_TRUE(wait_exit(out));
    EXPECT_EQ(out.exit->term_signal, SIGTERM);
    EXPECT_TRUE(run_until([&] { return process_gone(grandchild); }))
        << "grandchild " << grandchild << " survived";
}

TEST_F(Spawn, AGroupThatEmptiesAfterItsLeaderLeavesNoTimerBehind) {
    // The leader dies of SIGTERM at once; its child, which holds none of the output pipes, takes
    // 300 ms more to finish. The SIGKILL deadline is far: once the group is empty, nothing of
    // the stop may keep the loop busy. The child writes its pid once its trap is set.
    fs::path dir = make_temp_dir("liege-spawn-test");
    std::string pid_file = (dir / "child.pid").string();
    Output out;
    liege::Child* child = spawn(
        {"sh", "-c",
         "sh -c 'trap \"sleep 0.3; exit 0\" TERM; echo $$ > \"$0.tmp\"; mv \"$0.tmp\" \"$0\"; "
         "while :; do sleep 0.05; done' \"$0\" >/dev/null 2>&1 & wait",
         pid_file},
        out);
    ASSERT_NE(child, nullptr);
    pid_t grandchild = 0;
    ASSERT_TRUE(run_until([&] {
        std::ifstream in(pid_file);
        return static_cast<bool>(in >> grandchild);
    }));
    fs::remove_all(dir);
    child->stop(SIGTERM, 20s);
    ASSERT_TRUE(wait_exit(out));
    ASSERT_TRUE(run_until([&] { return process_gone(grandchild); }));
    // Handles that keep the loop running, besides run_until's own ticking timer.
    auto others_active = [&] {
        int n = 0;
        uv_walk(
            loop(),
            [](uv_handle_t* h, void* arg) {
                if (uv_is_active(h) != 0 && uv_has_ref(h) != 0 && uv_is_closing(h) == 0) {
                    ++*static_cast<int*>(arg);
                }
            },
            &n);
        return n - 1;
    };
    EXPECT_TRUE(run_until([&] { return others_active() == 0; }, 5s))
        << "the stop's SIGKILL timer outlived the process group";
}

TEST_F(Spawn, StopKillsWhatIgnoresSigtermEvenAfterTheLeaderExited) {
    // The app obeys SIGTERM, a child it started ignores it and holds no pipe: the exit comes at
    // once, the SIGKILL at the timeout still reaches the child, even with the Child dropped in
    // its exit callback as the emperor does.
    Output out;
    std::unique_ptr<liege::Child> child;
    liege::SpawnSpec spec;
    spec.argv = {"sh", "-c",
                 "trap '' TERM; sleep 100 >/dev/null 2>&1 & trap - TERM; echo $!; exec sleep 100"};
    int err = 0;
    child = liege::spawn_child(
        loop(), spec,
        [&out](std::string_view line, bool is_stderr) {
            out.lines.emplace_back(std::string(line), is_stderr);
        },
        [&](liege::ExitStatus status) {
            out.exit = status;
            child.reset();
        },
        &err);
    ASSERT_NE(child, nullptr);
    ASSERT_TRUE(run_until([&] { return !out.lines.empty(); }));
    pid_t stubborn = std::stoi(out.lines[0].first);
    auto start = Clock::now();
    child->stop(SIGTERM, 400ms);
    ASSERT_TRUE(wait_exit(out));
    EXPECT_EQ(out.exit->term_signal, SIGTERM);
    EXPECT_LT(since(start), 400ms) << "the exit does not wait for the stop timeout";
    EXPECT_FALSE(process_gone(stubborn));
    EXPECT_TRUE(run_until([&] { return process_gone(stubborn); }))
        << "pid " << stubborn << " ignored SIGTERM and was never killed";
    EXPECT_GE(since(start), 350ms);
}

TEST_F(Spawn, ExitIsDeliveredWhenAGrandchildKeepsThePipesOpen) {
    Output out;
    liege::Child* child = spawn({"sh", "-c", "sleep 60 & echo $!; exit 0"}, out);
    ASSERT_NE(child, nullptr);
    ASSERT_TRUE(run_until([&] { return !out.lines.empty(); }));
    pid_t grandchild = std::stoi(out.lines[0].first);
    ASSERT_TRUE(run_until([&] { return !child->running(); }));
    auto reaped = Clock::now();
    ASSERT_TRUE(wait_exit(out, 5s));
    EXPECT_LT(since(reaped), 3s);
    EXPECT_EQ(out.exit->exit_code, 0);
    ::kill(grandchild, SIGKILL);
    EXPECT_TRUE(poll_until([&] { return process_gone(grandchild); }));
}

TEST_F(Spawn, SocketActivationPassesTheListenerAsFd3) {
    uint16_t port = 0;
    int listener = liege::bind_loopback_listener(&port);
    ASSERT_GE(listener, 0);
    ASSERT_NE(port, 0);
    int extra[2];
    ASSERT_EQ(::pipe2(extra, O_CLOEXEC), 0);

    liege::SpawnSpec spec;
    spec.argv = {python(), "-c",
                 "import os, socket\n"
                 "s = socket.socket(fileno=3)\n"
                 "print(os.environ.get('LISTEN_FDS'))\n"
                 "print(os.environ.get('LISTEN_PID'))\n"
                 "print(os.getpid())\n"
                 "print(s.getsockname()[1])\n"
                 "print(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))\n"
                 "os.write(4, b'extra fd')\n"
                 "try:\n"
                 "    os.fstat(5)\n"
                 "    print('fd 5 leaked')\n"
                 "except OSError:\n"
                 "    print('fd 5 closed')\n"};
    spec.listen_fd = listener;
    spec.extra_fds = {extra[1]};
    Output out;
    liege::Child* child = spawn(spec, out);
    ASSERT_NE(child, nullptr);
    ::close(extra[1]);
    ASSERT_TRUE(wait_exit(out));
    ASSERT_EQ(out.exit->exit_code, 0) << (out.lines.empty() ? "" : out.lines.back().first);
    ASSERT_EQ(out.lines.size(), 6u);
    EXPECT_EQ(out.lines[0].first, "1");
    EXPECT_EQ(out.lines[1].first, std::to_string(child->pid()));
    EXPECT_EQ(out.lines[2].first, std::to_string(child->pid()));
    EXPECT_EQ(out.lines[3].first, std::to_string(port));
    EXPECT_EQ(out.lines[4].first, "1");
    EXPECT_EQ(out.lines[5].first, "fd 5 closed");
    char buf[16] = {};
    EXPECT_EQ(::read(extra[0], buf, sizeof buf), 8);
    EXPECT_EQ(std::string(buf), "extra fd");
    ::close(extra[0]);
    // The emperor keeps its copy: connections still queue on it.
    EXPECT_EQ(::listen(listener, 16), 0);
    ::close(listener);
}

TEST_F(Spawn, TheExitCallbackMayDestroyTheChild) {
    std::unique_ptr<liege::Child> child;
    bool exited = false;
    int err = 0;
    liege::SpawnSpec spec;
    spec.argv = {"sh", "-c", "echo bye"};
    child = liege::spawn_child(
        loop(), spec, [](std::string_view, bool) {},
        [&](liege::ExitStatus) {
            child.reset();
            exited = true;
        },
        &err);
    ASSERT_NE(child, nullptr);
    EXPECT_TRUE(run_until([&] { return exited; }));
    EXPECT_EQ(child, nullptr);
}

TEST_F(Spawn, AStopOutlivesTheChildObject) {
    Output out;
    liege::Child* child = spawn({"sh", "-c", "trap '' TERM; echo ready; sleep 100"}, out);
    ASSERT_NE(child, nullptr);
    ASSERT_TRUE(run_until([&] { return out.has_line("ready", false); }));
    pid_t pid = child->pid();
    child->stop(SIGTERM, 200ms);
    children_.clear(); // dropped right after stop(): SIGKILL must still follow
    EXPECT_TRUE(run_until([&] { return process_gone(pid); }));
    EXPECT_EQ(out.exit_calls, 0) << "no callback after the Child is gone";
}

// Not a loop test: the loop under test runs in an intermediate process that the test kills.
TEST(SpawnOrphan, AChildDiesWithItsParentEvenOnSigkill) {
    int report[2];
    ASSERT_EQ(::pipe2(report, O_CLOEXEC), 0);
    pid_t middle = ::fork();
    ASSERT_GE(middle, 0);
    if (middle == 0) {
        ::close(report[0]);
        uv_loop_t child_loop;
        uv_loop_init(&child_loop);
        auto reaper = liege::install_reaper(&child_loop);
        liege::SpawnSpec spec;
        spec.argv = {"sleep", "100"};
        int err = 0;
        auto sleeper = liege::spawn_child(&child_loop, spec, {}, {}, &err);
        pid_t pid = sleeper ? sleeper->pid() : -1;
        if (::write(report[1], &pid, sizeof pid) != sizeof pid) {
            ::_exit(2);
        }
        uv_run(&child_loop, UV_RUN_DEFAULT); // until SIGKILL: the pipes stay open
        ::_exit(3);
    }
    ::close(report[1]);
    pollfd pfd{report[0], POLLIN, 0};
    ASSERT_EQ(::poll(&pfd, 1, static_cast<int>(kBound.count())), 1);
    pid_t sleeper = -1;
    ASSERT_EQ(::read(report[0], &sleeper, sizeof sleeper), static_cast<ssize_t>(sizeof sleeper));
    ::close(report[0]);
    ASSERT_GT(sleeper, 0);
    EXPECT_FALSE(process_gone(sleeper));

    ::kill(middle, SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(middle, &status, 0), middle);
    EXPECT_TRUE(WIFSIGNALED(status));
    bool gone = poll_until([&] { return process_gone(sleeper); });
    if (!gone) {
        ::kill(sleeper, SIGKILL);
    }
    EXPECT_TRUE(gone) << "sleep " << sleeper << " outlived its parent";
}

TEST(SpawnPorts, PicksFreeAndListeningPorts) {
    uint16_t free_port = liege::pick_free_port();
    EXPECT_NE(free_port, 0);
    uint16_t port = 0;
    int fd = liege::bind_loopback_listener(&port);
    ASSERT_GE(fd, 0);
    EXPECT_NE(port, 0);
    EXPECT_NE(::fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
    liege::Address addr = liege::address_of_socket(fd);
    EXPECT_EQ(addr.str(), "127.0.0.1:" + std::to_string(port));
    ::close(fd);
}

// ---------------------------------------------------------------------------------------------
// Health probes

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
        run_for(20ms);
        EXPECT_LE(calls, 1);
        return result;
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
    spec.argv = {python(), "-m", "http.server", "--bind", "127.0.0.1", std::to_string(port)};
    spec.cwd = dir.string();
    int err = 0;
    std::optional<liege::ExitStatus> exit;
    children_.push_back(liege::spawn_child(
        loop(), spec, [](std::string_view, bool) {}, [&](liege::ExitStatus s) { exit = s; }, &err));
    ASSERT_NE(children_.back(), nullptr) << err;

    // Ready once a GET answers; a refused connect before that is expected.
    std::optional<liege::ProbeResult> result;
    auto deadline = Clock::now() + kBound;
    while (Clock::now() < deadline && !exit) {
        result = probe_once(loopback(port), "/", 1s);
        if (result && result->ok) {
            break;
        }
        run_for(50ms);
    }
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
    run_for(300ms);
    EXPECT_EQ(calls, 0);
    cancel(); // twice is harmless

    // Cancelling before the connect completed, and after the callback ran.
    cancel = liege::probe(loop(), loopback(liege::pick_free_port()), "", 1s,
                          [&](const liege::ProbeResult&) { ++calls; });
    run_until([&] { return calls == 1; });
    EXPECT_EQ(calls, 1);
    cancel();
    run_for(50ms);
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

// ---------------------------------------------------------------------------------------------
// Directory watcher

class Watch : public LoopTest {
protected:
    void SetUp() override {
        LoopTest::SetUp();
        root_ = make_temp_dir("liege-emperor-test");
        dir_ = root_ / "vassals.d";
        fs::create_directory(dir_);
    }
    void TearDown() override {
        LoopTest::TearDown();
        fs::remove_all(root_);
    }
    void release() override { watcher_.reset(); }

    void start(const fs::path& dir, Millis rescan_every = std::chrono::hours(1)) {
        starting_ = true;
        watcher_ = liege::watch_directory(
            loop(), dir,
            [this](const std::vector<liege::DirChange>& changes) {
                EXPECT_FALSE(starting_) << "reported from inside watch_directory()";
                reports_.push_back(changes);
            },
            150ms, rescan_every);
        starting_ = false;
        EXPECT_TRUE(reports_.empty());
    }

    // Waits for report number `n` (1-based), within a second as the emperor promises.
    bool wait_reports(std::size_t n, Millis timeout = 1s) {
        return run_until([&] { return reports_.size() >= n; }, timeout);
    }

    const liege::DirChange& only_change(std::size_t report) {
        EXPECT_EQ(reports_.at(report).size(), 1u);
        return reports_.at(report).at(0);
    }

    fs::path root_;
    fs::path dir_;
    std::unique_ptr<liege::DirWatcher> watcher_;
    std::vector<std::vector<liege::DirChange>> reports_;
    bool starting_ = false;
};

TEST_F(Watch, FirstReportListsExistingFilesAsAdded) {
    write_file(dir_ / "a.toml", "command = [\"a\"]\n");
    write_file(dir_ / "b.toml", "command = [\"b\"]\n");
    for (const char* ignored : {".x.toml", "_x.toml", "x.toml~", "x.toml.swp", "notes.txt"}) {
        write_file(dir_ / ignored, "ignored\n");
    }
    fs::create_directory(dir_ / "sub.toml");
    start(dir_);
    ASSERT_TRUE(wait_reports(1));
    ASSERT_EQ(reports_[0].size(), 2u);
    EXPECT_EQ(reports_[0][0].kind, liege::DirChange::Kind::Added);
    EXPECT_EQ(reports_[0][0].name, "a");
    EXPECT_EQ(reports_[0][0].file, dir_ / "a.toml");
    EXPECT_EQ(reports_[0][0].content_hash, liege::content_hash("command = [\"a\"]\n"));
    EXPECT_EQ(reports_[0][1].name, "b");
    run_for(300ms);
    EXPECT_EQ(reports_.size(), 1u);
}

TEST_F(Watch, AnEmptyDirectoryIsReportedOnceAsEmpty) {
    start(dir_);
    ASSERT_TRUE(wait_reports(1));
    EXPECT_TRUE(reports_[0].empty());
}

TEST_F(Watch, ReportsAddChangeAndRemoveOnceEachWithinASecond) {
    start(dir_); // no periodic rescan within the test: inotify alone
    ASSERT_TRUE(wait_reports(1));

    write_file(dir_ / "app.toml", "workers = 1\n");
    ASSERT_TRUE(wait_reports(2));
    EXPECT_EQ(only_change(1).kind, liege::DirChange::Kind::Added);
    EXPECT_EQ(only_change(1).name, "app");
    run_for(400ms);
    EXPECT_EQ(reports_.size(), 2u);

    write_file(dir_ / "app.toml", "workers = 2\n");
    ASSERT_TRUE(wait_reports(3));
    EXPECT_EQ(only_change(2).kind, liege::DirChange::Kind::Changed);
    EXPECT_EQ(only_change(2).content_hash, liege::content_hash("workers = 2\n"));
    run_for(400ms);
    EXPECT_EQ(reports_.size(), 3u);

    fs::remove(dir_ / "app.toml");
    ASSERT_TRUE(wait_reports(4));
    EXPECT_EQ(only_change(3).kind, liege::DirChange::Kind::Removed);
    EXPECT_EQ(only_change(3).content_hash, 0u);
    run_for(400ms);
    EXPECT_EQ(reports_.size(), 4u);
}

TEST_F(Watch, RewritingIdenticalContentIsNotAChange) {
    write_file(dir_ / "app.toml", "workers = 1\n");
    start(dir_);
    ASSERT_TRUE(wait_reports(1));
    write_file(dir_ / "app.toml", "workers = 1\n");
    fs::last_write_time(dir_ / "app.toml", fs::file_time_type::clock::now() + 1h);
    run_for(500ms);
    watcher_->rescan();
    EXPECT_EQ(reports_.size(), 1u);
}

TEST_F(Watch, ASaveThroughATempFileAndRenameIsOneChange) {
    write_file(dir_ / "app.toml", "workers = 1\n");
    start(dir_);
    ASSERT_TRUE(wait_reports(1));
    // What editors and deploy tools do: backup, swap file, temp file, rename over the original.
    write_file(dir_ / "app.toml~", "workers = 1\n");
    write_file(dir_ / ".app.toml.swp", "swap");
    write_file(dir_ / ".app.toml.tmp", "workers = 3\n");
    fs::rename(dir_ / ".app.toml.tmp", dir_ / "app.toml");
    fs::remove(dir_ / ".app.toml.swp");
    ASSERT_TRUE(wait_reports(2));
    EXPECT_EQ(only_change(1).kind, liege::DirChange::Kind::Changed);
    EXPECT_EQ(only_change(1).content_hash, liege::content_hash("workers = 3\n"));
    run_for(500ms);
    EXPECT_EQ(reports_.size(), 2u);
}

TEST_F(Watch, IgnoredNamesAreNeverReported) {
    start(dir_, 100ms); // rescans too, to be sure they would have been seen
    ASSERT_TRUE(wait_reports(1));
    for (const char* ignored : {".x.toml", "_x.toml", "x.toml~", "x.toml.swp"}) {
        write_file(dir_ / ignored, "command = [\"x\"]\n");
    }
    run_for(500ms);
    watcher_->rescan();
    EXPECT_EQ(reports_.size(), 1u);
}

TEST_F(Watch, RescanReportsAtOnce) {
    start(dir_);
    ASSERT_TRUE(wait_reports(1));
    write_file(dir_ / "now.toml", "x = 1\n");
    watcher_->rescan(); // SIGHUP: no debounce
    ASSERT_EQ(reports_.size(), 2u);
    EXPECT_EQ(only_change(1).kind, liege::DirChange::Kind::Added);
    run_for(400ms); // the inotify event that follows finds nothing new
    EXPECT_EQ(reports_.size(), 2u);
}

TEST_F(Watch, ADirectoryThatAppearsLaterIsWatched) {
    fs::path later = root_ / "later.d";
    start(later);
    ASSERT_TRUE(wait_reports(1));
    EXPECT_TRUE(reports_[0].empty());
    fs::create_directory(later);
    write_file(later / "app.toml", "a = 1\n");
    ASSERT_TRUE(wait_reports(2));
    // The directory and its file may show up in one scan or the file in a second one.
    run_until([&] { return !reports_.back().empty(); }, 1s);
    EXPECT_EQ(reports_.back().size(), 1u);
    EXPECT_EQ(reports_.back().at(0).kind, liege::DirChange::Kind::Added);
}

TEST_F(Watch, ARemovedAndRecreatedDirectoryIsWatchedAgain) {
    write_file(dir_ / "app.toml", "a = 1\n");
    start(dir_);
    ASSERT_TRUE(wait_reports(1));
    fs::remove_all(dir_);
    ASSERT_TRUE(wait_reports(2));
    EXPECT_EQ(only_change(1).kind, liege::DirChange::Kind::Removed);

    fs::create_directory(dir_);
    write_file(dir_ / "app.toml", "a = 2\n");
    ASSERT_TRUE(run_until([&] { return reports_.size() >= 3 && !reports_.back().empty(); }, 1s));
    EXPECT_EQ(reports_.back().at(0).kind, liege::DirChange::Kind::Added);
    std::size_t seen = reports_.size();

    write_file(dir_ / "app.toml", "a = 3\n"); // the new directory's inode is watched
    ASSERT_TRUE(wait_reports(seen + 1));
    EXPECT_EQ(only_change(seen).kind, liege::DirChange::Kind::Changed);
}

TEST_F(Watch, TheCallbackMayDestroyTheWatcher) {
    write_file(dir_ / "app.toml", "a = 1\n");
    bool called = false;
    watcher_ = liege::watch_directory(loop(), dir_, [&](const std::vector<liege::DirChange>&) {
        called = true;
        watcher_.reset();
    });
    EXPECT_TRUE(run_until([&] { return called; }));
    EXPECT_EQ(watcher_, nullptr);
}

} // namespace
