// The spawner against real processes: output lines and exit statuses, environment and working
// directory, stop escalation to SIGKILL across a process group, socket activation, and children
// dying with their parent.
#include <gtest/gtest.h>

#include <cerrno>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "liege/address.hpp"
#include "liege/spawner.hpp"
#include "loop_fixture.hpp"

namespace fs = std::filesystem;
using namespace liege::test;

namespace {

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

    // Runs a child started after everything else to its exit: the event after which a callback
    // still due for an earlier child would have come, since the reaper and the pipes deliver
    // through the loop in the order things happen. How a test shows that a callback does not
    // come, without a fixed wait.
    bool a_later_child_exits() {
        Output& out = later_outputs_.emplace_back();
        return spawn({"true"}, out) != nullptr && wait_exit(out);
    }

    std::list<Output> later_outputs_; // outlives children_, which release() clears
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
    ASSERT_TRUE(a_later_child_exits());
    EXPECT_EQ(out.exit_calls, 1) << "the exit is reported once";
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
    ASSERT_TRUE(a_later_child_exits());
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

TEST_F(Spawn, RunsAsTheGivenUserAndSaysWhichStepFailed) {
    if (::geteuid() != 0) {
        GTEST_SKIP() << "changing users needs root";
    }
    liege::SpawnSpec spec;
    spec.argv = {"sh", "-c", "id -u; id -g; id -G; grep NoNewPrivs /proc/self/status"};
    spec.user = liege::SpawnUser{65534, 65534, {65534}};
    spec.no_new_privs = true;
    Output out;
    ASSERT_NE(spawn(spec, out), nullptr);
    ASSERT_TRUE(run_until([&] { return out.exit.has_value(); }));
    EXPECT_EQ(out.exit->exit_code, 0);
    EXPECT_TRUE(out.has_line("65534", false)); // uid, gid, and the only group
    EXPECT_EQ(out.lines.size(), 4u);
    EXPECT_TRUE(out.has_line("NoNewPrivs:\t1", false));

    // A working directory the user may not enter: the spawn fails and says at which step.
    fs::path dir = make_temp_dir("liege-emperor-test"); // 0700, root's
    spec.cwd = dir.string();
    int err = 0;
    std::string step;
    auto child = liege::spawn_child(
        loop(), spec, [](std::string_view, bool) {}, [](liege::ExitStatus) {}, &err, &step);
    EXPECT_EQ(child, nullptr);
    EXPECT_EQ(err, -EACCES);
    EXPECT_EQ(step, "chdir " + dir.string() + " as uid 65534");
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
    ASSERT_TRUE(a_later_child_exits());
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

} // namespace
