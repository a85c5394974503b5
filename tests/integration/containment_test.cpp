// No process escapes (issue 13, defect 5): what a worker starts dies with the worker, and nothing
// outlives the emperor, even one killed with SIGKILL. See include/liege/containment.hpp for the
// mechanisms: process groups, the emperor as child subreaper, a cgroup per child where cgroup v2
// is writable, and the guard process.
//
// Each test's own checks name the processes it follows; the fixture's tear-down then asserts
// that no process of the instance is left at all.
#include <gtest/gtest.h>

#include <csignal>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "harness.hpp"

using namespace liege::test;
using nlohmann::json;

namespace {

class Containment : public LiegeRunFixture {
protected:
    void start() { start_liege({{}, "127.0.0.1:0", 1}); }

    // Whether the emperor put its children in cgroups (it logs what contains them).
    bool cgroups() const { return count_of(log(), "processes contained by cgroup v2") > 0; }

    // The pid of the only worker of `name` once it is ready, or 0.
    pid_t ready_worker(const std::string& name) const {
        json v = wait_vassal(name, [](const json& j) { return j.value("workers_ready", 0) == 1; });
        if (v.is_null() || v["workers"].size() != 1) {
            ADD_FAILURE() << "vassal " << name
                          << " has no ready worker: " << (v.is_null() ? "no entry" : v.dump(2));
            return 0;
        }
        return v["workers"][0].value("pid", pid_t{0});
    }

    // Waits until every one of `procs` is gone (or a zombie); returns those still alive.
    static std::vector<ProcStat> wait_all_gone(const std::vector<ProcStat>& procs,
                                               Millis timeout = kStart) {
        std::vector<ProcStat> left;
        poll_until(
            [&] {
                left.clear();
                for (const auto& p : procs) {
                    if (alive(p)) {
                        left.push_back(p);
                    }
                }
                return left.empty();
            },
            timeout, 20ms);
        return left;
    }

    // The descendants of `pid` whose command line contains `needle`.
    static std::vector<ProcStat> descendants_running(pid_t pid, const std::string& needle) {
        std::vector<ProcStat> out;
        for (const auto& p : descendants(pid)) {
            if (count_of(cmdline_of(p.pid), needle) > 0) {
                out.push_back(p);
            }
        }
        return out;
    }

    // `sh -c "CHILD & exec liege-test-backend ..."`: the backend is the worker, and the shell's
    // background job is its child.
    static std::string backend_with_child(const std::string& child) {
        return kAnyHost + "command = ['sh', '-c', '" + child + " >/dev/null 2>&1 & exec " +
               LIEGE_TEST_BACKEND + " --listen 127.0.0.1:${PORT} --name ${NAME}']\n";
    }
};

TEST_F(Containment, WhenAWorkersLeaderDiesTheRestOfItsGroupIsKilled) {
    write_vassal("app", backend_with_child("sleep 777"));
    ASSERT_NO_FATAL_FAILURE(start());
    const pid_t leader = ready_worker("app");
    ASSERT_GT(leader, 0);
    std::vector<ProcStat> child;
    ASSERT_TRUE(poll_until([&] {
        child = descendants_running(leader, "sleep 777");
        return child.size() == 1;
    })) << describe_procs(descendants(leader));

    expect_error_line({"vassal app: worker 1", "exited unexpectedly: killed by SIGKILL"});
    const auto from = mark();
    ASSERT_EQ(::kill(leader, SIGKILL), 0);
    auto left = wait_all_gone(child);
    EXPECT_TRUE(left.empty()) << "the crashed worker's child lives on:" << describe_procs(left);
    EXPECT_TRUE(wait_log("app/1: pid " + std::to_string(leader) +
                             " exited; killing what is left of its process group",
                         kStart, from));
    // And the worker is replaced as before.
    EXPECT_GT(ready_worker("app"), 0);
}

TEST_F(Containment, ADescendantThatLeavesTheGroupIsStoppedAllTheSame) {
    // `setsid` puts the sleep in a session and process group of its own: a stop signal to the
    // worker's group misses it.
    write_vassal("app", backend_with_child("setsid sleep 778") + "[stop]\ntimeout = '1s'\n");
    ASSERT_NO_FATAL_FAILURE(start());
    const pid_t leader = ready_worker("app");
    ASSERT_GT(leader, 0);
    std::vector<ProcStat> escaped;
    ASSERT_TRUE(poll_until([&] {
        // setsid(1) is found by its command line before it has called setsid(): wait for the
        // new group, not for the process alone.
        escaped = descendants_running(leader, "sleep 778");
        return escaped.size() == 1 && escaped[0].pgrp != leader;
    })) << "the sleep did not leave the worker's group:"
        << describe_procs(descendants(leader));

    const auto from = mark();
    remove_vassal("app");
    ASSERT_TRUE(wait_log("vassal app: stopped", kStart, from));
    if (cgroups()) {
        // In the worker's cgroup: killed with it, at its stop timeout.
        auto left = wait_all_gone(escaped);
        EXPECT_TRUE(left.empty()) << "outlived its worker's stop:" << describe_procs(left);
    } else {
        // Re-parented to the emperor (a child subreaper) when the worker exited: stopped when
        // the emperor stops.
        auto now = read_stat(escaped[0].pid);
        ASSERT_TRUE(now);
        EXPECT_EQ(now->ppid, emperor_pid()) << "not re-parented to the emperor";
        stop_emperor();
        auto left = wait_all_gone(escaped);
        EXPECT_TRUE(left.empty()) << "outlived the emperor:" << describe_procs(left);
    }
}

TEST_F(Containment, NothingOutlivesAnEmperorKilledWithSigkill) {
    // A worker wrapped in a shell, whose python3 is not a child of the emperor's, and gunicorn,
    // whose master forks two workers.
    write_vassal("shell", "command = ['/bin/sh', '-c', 'python3 -m http.server --bind 127.0.0.1 "
                          "${PORT}; echo exited']\nhosts = ['shell.test']\n");
    write_file(vassals_ / "app.py",
               "def application(environ, start_response):\n"
               "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
               "    return [b'ok']\n");
    write_vassal("gunicorn", "command = ['gunicorn', '-w', '2', '-b', '127.0.0.1:${PORT}', "
                             "'app:application']\nhosts = ['gunicorn.test']\n");
    ASSERT_NO_FATAL_FAILURE(start());
    const pid_t shell = ready_worker("shell");
    const pid_t gunicorn = ready_worker("gunicorn");
    ASSERT_GT(shell, 0);
    ASSERT_GT(gunicorn, 0);
    std::vector<ProcStat> python;
    std::vector<ProcStat> gunicorn_workers;
    ASSERT_TRUE(poll_until([&] {
        python = descendants_running(shell, "http.server");
        gunicorn_workers = descendants(gunicorn);
        return python.size() == 1 && gunicorn_workers.size() == 2;
    })) << describe_procs(descendants(shell))
        << describe_procs(descendants(gunicorn));
    std::vector<ProcStat> all = descendants(emperor_pid());

    emperor_->signal(SIGKILL);
    ASSERT_TRUE(emperor_->wait_exit());
    auto left = wait_all_gone(all);
    EXPECT_TRUE(left.empty()) << "outlived the emperor:" << describe_procs(left);
    EXPECT_TRUE(wait_all_gone(python).empty()) << "the shell's python3";
    EXPECT_TRUE(wait_all_gone(gunicorn_workers).empty()) << "gunicorn's workers";
}

} // namespace
