// Dev stacks (issue 12) through the real binary: background processes (`type = "daemon"`) with
// their readiness checks, crashes and backoff, and `[reload] strategy = "restart"` for what
// cannot run twice, daemons and web vassals alike.
//
// What a test looks at is what a user sees: /status, the emperor's log, processes in /proc,
// responses through the public port. Daemons are small shell scripts or python3's http.server on
// a fixed port the test picks (it really fails with "Address already in use" when two run at
// once). Every wait is a bounded poll; the fixture's tear-down asserts that nothing of the
// instance is left and that no error-level line was logged but those a test declares.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "harness.hpp"

using namespace liege::test;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

class DevStack : public LiegeRunFixture {
protected:
    void start(std::vector<std::string> extra = {}) { start_liege({std::move(extra)}); }

    // Waits until the vassal is running with `count` ready workers; returns their pids (empty
    // on timeout), in slot order.
    std::vector<int> running_pids(const std::string& name, std::size_t count,
                                  Millis timeout = kStart) const {
        json v = wait_vassal(
            name,
            [&](const json& j) {
                if (j["state"] != "running" || j["workers"].size() != count) {
                    return false;
                }
                for (const auto& w : j["workers"]) {
                    if (w["state"] != "ready") {
                        return false;
                    }
                }
                return true;
            },
            timeout);
        std::vector<int> pids;
        if (v.is_null() || v["state"] != "running" || v["workers"].size() != count) {
            ADD_FAILURE() << name << " not running with " << count << " ready worker(s): " << v;
            return pids;
        }
        for (const auto& w : v["workers"]) {
            pids.push_back(w["pid"].get<int>());
        }
        return pids;
    }

    std::optional<Response> get(const std::string& host, const std::string& target) const {
        try {
            HttpClient c(port_);
            return c.request("GET", target, {{"Host", host}});
        } catch (const HttpError&) {
            return std::nullopt;
        }
    }

    // The milliseconds in the log's "vassal NAME: worker SLOT ready in N ms" after `from`.
    std::optional<long> ready_after_ms(const std::string& name, int slot,
                                       std::size_t from = 0) const {
        const std::string needle =
            "vassal " + name + ": worker " + std::to_string(slot) + " ready in ";
        auto line = wait_log(needle, kStart, from);
        if (!line) {
            return std::nullopt;
        }
        return std::stol(line->substr(line->find(needle) + needle.size()));
    }
};

// GETs for `host` on fresh connections, one after another on a thread, until stopped: counts
// the failures and remembers the order in which backends (their /id bodies) answered.
class RequestLoop {
public:
    RequestLoop(uint16_t port, std::string host) : port_(port), host_(std::move(host)) {
        thread_ = std::thread([this] { run(); });
    }
    ~RequestLoop() { stop(); }
    RequestLoop(const RequestLoop&) = delete;
    RequestLoop& operator=(const RequestLoop&) = delete;

    // Waits until `n` requests were made.
    bool wait_for(int n) {
        return poll_until([&] { return requests_ >= n; });
    }
    // Makes `n` more requests, then stops.
    void stop_after(int n) {
        const int before = requests_;
        poll_until([&] { return requests_ >= before + n; });
        stop();
    }
    void stop() {
        stop_ = true;
        if (thread_.joinable()) {
            thread_.join();
        }
    }
    int requests() const { return requests_; }
    int failures() const { return failures_; }
    std::string first_failure() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return first_failure_;
    }
    // Whether a body containing `marker` has answered.
    bool seen(const std::string& marker) const {
        std::lock_guard<std::mutex> lock(mutex_);
        return std::any_of(bodies_.begin(), bodies_.end(),
                           [&](const auto& b) { return b.find(marker) != std::string::npos; });
    }
    // Whether an earlier backend answered again after a later one had.
    bool went_back() const {
        std::lock_guard<std::mutex> lock(mutex_);
        for (std::size_t i = 1; i < bodies_.size(); ++i) {
            for (std::size_t j = 0; j + 1 < i; ++j) {
                if (bodies_[j] == bodies_[i] && bodies_[i - 1] != bodies_[i]) {
                    return true;
                }
            }
        }
        return false;
    }

private:
    void run() {
        while (!stop_) {
            std::optional<Response> r;
            try {
                HttpClient c(port_);
                r = c.request("GET", "/id", {{"Host", host_}});
            } catch (const HttpError&) {
            }
            ++requests_;
            std::lock_guard<std::mutex> lock(mutex_);
            if (!r || r->status != 200) {
                if (failures_++ == 0) {
                    first_failure_ = r ? std::to_string(r->status) + " " + r->body : "no response";
                }
            } else if (bodies_.empty() || bodies_.back() != r->body) {
                bodies_.push_back(r->body); // one entry per run of equal answers
            }
        }
    }

    uint16_t port_;
    std::string host_;
    std::atomic<bool> stop_{false};
    std::atomic<int> requests_{0};
    std::atomic<int> failures_{0};
    mutable std::mutex mutex_;
    std::string first_failure_;
    std::vector<std::string> bodies_;
    std::thread thread_;
};

// A shell daemon that says it is up and then sleeps; it never listens on anything.
const char* kSleeper =
    "command = ['sh', '-c', 'echo daemon-up \"$LIEGE_WORKER\" \"$${PORT:-no-port}\"; "
    "exec sleep 600']\n";

// A daemon that listens on `port` only `delay` seconds after it starts, and its [health] tcp
// check (the file ends inside [health]).
std::string late_server(uint16_t port, const std::string& delay) {
    return "type = 'daemon'\ncommand = ['sh', '-c', 'sleep " + delay +
           "; exec python3 -m http.server --bind 127.0.0.1 " + std::to_string(port) +
           "']\n[health]\ntcp = '127.0.0.1:" + std::to_string(port) + "'\n";
}

std::string python_server_on(uint16_t port) {
    return "command = ['python3', '-m', 'http.server', '--bind', '127.0.0.1', '" +
           std::to_string(port) + "']\n";
}

} // namespace

// ---- type = "daemon" ---------------------------------------------------------------------------

TEST_F(DevStack, DaemonGetsNoPortNoRouteAndIsReadyAfterASecondUp) {
    write_vassal("worker", std::string("type = 'daemon'\nworkers = 2\n") + kSleeper);
    ASSERT_NO_FATAL_FAILURE(start());

    auto pids = running_pids("worker", 2);
    ASSERT_EQ(pids.size(), 2u);
    for (int slot : {1, 2}) {
        auto ms = ready_after_ms("worker", slot);
        ASSERT_TRUE(ms) << log();
        EXPECT_GE(*ms, 1000) << "a daemon without a check is ready once it stayed up for 1 s";
    }
    json v = vassal("worker");
    EXPECT_EQ(v["type"], "daemon");
    EXPECT_EQ(v["hosts"], json::array());
    for (const auto& w : v["workers"]) {
        EXPECT_EQ(w["address"], "") << "a daemon has no address: " << v;
    }
    for (int pid : pids) {
        auto env = environ_of(pid);
        EXPECT_EQ(env.count("PORT"), 0u) << "a daemon gets no PORT";
        EXPECT_EQ(env["LIEGE_VASSAL"], "worker");
    }
    EXPECT_TRUE(wait_log("daemon-up 1 no-port")) << "its output reaches the log";
    EXPECT_TRUE(wait_log("daemon-up 2 no-port"));

    auto r = get("worker", "/");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 404) << "a daemon is never routed to: " << r->body;
}

TEST_F(DevStack, KilledDaemonRestartsWithBackoff) {
    expect_error_line({"vassal worker: worker 1 (pid ",
                       ") exited unexpectedly: killed by SIGKILL; restarting in "});
    write_vassal("worker", std::string("type = 'daemon'\n") + kSleeper);
    ASSERT_NO_FATAL_FAILURE(start());
    auto first = running_pids("worker", 1);
    ASSERT_EQ(first.size(), 1u);

    std::size_t at = mark();
    ASSERT_EQ(::kill(first[0], SIGKILL), 0);
    ASSERT_TRUE(
        wait_log("exited unexpectedly: killed by SIGKILL; restarting in 100 ms", kStart, at))
        << log().substr(at);
    auto second = running_pids("worker", 1);
    ASSERT_EQ(second.size(), 1u);
    EXPECT_NE(second[0], first[0]);

    at = mark();
    ASSERT_EQ(::kill(second[0], SIGKILL), 0);
    EXPECT_TRUE(
        wait_log("exited unexpectedly: killed by SIGKILL; restarting in 200 ms", kStart, at))
        << "a second crash within a minute waits twice as long: " << log().substr(at);
    auto third = running_pids("worker", 1);
    ASSERT_EQ(third.size(), 1u);
    EXPECT_NE(third[0], second[0]);
    EXPECT_EQ(vassal("worker")["workers"][0]["restarts"], 2);
}

TEST_F(DevStack, DaemonWithATcpCheckIsReadyOnceItsPortAccepts) {
    const uint16_t port = closed_port();
    // Listens only after a second and a half: ready follows the port, not the uptime rule.
    write_vassal("late", late_server(port, "1.5") + "interval = '300ms'\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_EQ(running_pids("late", 1).size(), 1u);
    auto ms = ready_after_ms("late", 1);
    ASSERT_TRUE(ms);
    EXPECT_GE(*ms, 1500);
    EXPECT_FALSE(connect_refused(port)) << "ready means its port accepts";
}

TEST_F(DevStack, DaemonWithACommandCheckFollowsItsExitCode) {
    expect_error_line({"vassal flagged: worker 1: health checks failing: exit code 1"});
    const fs::path state = root_ / "state";
    fs::create_directories(state);
    // The check counts its runs, so the test can see it ran (and failed) before the flag exists.
    write_vassal("flagged", "type = 'daemon'\ncommand = ['sleep', '600']\ncwd = '" +
                                state.string() +
                                "'\n[health]\ncommand = ['sh', '-c', 'echo run >> checks; test "
                                "-e ready.flag']\ninterval = '200ms'\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(poll_until([&] { return count_of(slurp(state / "checks"), "run") >= 3; }, kStart))
        << log();
    EXPECT_EQ(vassal("flagged")["workers"][0]["state"], "starting")
        << "a failing check keeps it from being ready";

    write_file(state / "ready.flag", "");
    auto pids = running_pids("flagged", 1);
    ASSERT_EQ(pids.size(), 1u);

    // Liveness: the check failing three times restarts the daemon.
    std::size_t at = mark();
    fs::remove(state / "ready.flag");
    ASSERT_TRUE(
        wait_log("worker 1 failed 3 health checks (exit code 1); restarting it", kStart, at))
        << log().substr(at);
    EXPECT_TRUE(wait_gone({*read_stat(pids[0])}).empty());
    write_file(state / "ready.flag", "");
    auto again = running_pids("flagged", 1);
    ASSERT_EQ(again.size(), 1u);
    EXPECT_NE(again[0], pids[0]);
}

TEST_F(DevStack, ReloadAllAnswersWithDaemonsInTheStack) {
    write_vassal("worker", std::string("type = 'daemon'\n") + kSleeper);
    write_vassal("web", "hosts = ['web.test']\ncommand = ['" + std::string(LIEGE_TEST_BACKEND) +
                            "', '--listen', '127.0.0.1:${PORT}', '--name', 'web']\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_EQ(running_pids("worker", 1).size(), 1u);
    ASSERT_EQ(running_pids("web", 1).size(), 1u);

    Cli r = run_cli({"reload", "--all", "--admin", admin_text_}, kStart);
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    EXPECT_NE(r.out.find("worker"), std::string::npos) << r.out;
    json v = vassal("worker");
    EXPECT_EQ(v["generation"], 2) << v;
    EXPECT_EQ(v["state"], "running") << v;
}

// ---- [reload] strategy = "restart" --------------------------------------------------------------

TEST_F(DevStack, DaemonOnAFixedPortReloadsWithRestart) {
    const uint16_t port = closed_port();
    auto file = [&](const std::string& mark) {
        return "type = 'daemon'\n" + python_server_on(port) + "env = { MARK = '" + mark +
               "' }\n[health]\ntcp = '127.0.0.1:" + std::to_string(port) +
               "'\n[reload]\nstrategy = 'restart'\n[stop]\nsignal = 'SIGINT'\ntimeout = '5s'\n";
    };
    write_vassal("redis", file("one"));
    ASSERT_NO_FATAL_FAILURE(start());
    auto old = running_pids("redis", 1);
    ASSERT_EQ(old.size(), 1u);
    auto old_stat = read_stat(old[0]);
    ASSERT_TRUE(old_stat);

    for (const char* mark : {"two", "three"}) {
        std::size_t at = this->mark();
        write_vassal("redis", file(mark));
        ASSERT_TRUE(wait_log("vassal redis: old workers gone, starting 1 worker(s)", kStart, at))
            << log().substr(at);
        json v = wait_vassal("redis", [&](const json& j) {
            return j["state"] == "running" && j["workers"].size() == 1 &&
                   j["workers"][0]["state"] == "ready" &&
                   environ_of(j["workers"][0]["pid"].get<int>())["MARK"] == mark;
        });
        ASSERT_EQ(environ_of(v["workers"][0]["pid"].get<int>())["MARK"], mark) << v;
        const std::string since = log().substr(at);
        EXPECT_EQ(since.find("Address already in use"), std::string::npos) << since;
        EXPECT_EQ(since.find("abandoned"), std::string::npos) << since;
        // The old process was gone before the new one started.
        EXPECT_LT(since.find("old workers gone"), since.find("worker 1 started (pid"));
    }
    EXPECT_TRUE(wait_gone({*old_stat}).empty());
    EXPECT_FALSE(connect_refused(port));
}

TEST_F(DevStack, WebVassalRestartHoldsRequestsInTheQueue) {
    auto file = [](const std::string& name) {
        return "hosts = ['app.test']\nworkers = 2\ncommand = ['" + std::string(LIEGE_TEST_BACKEND) +
               "', '--listen', '127.0.0.1:${PORT}', '--name', '" + name +
               "']\n[reload]\nstrategy = 'restart'\n";
    };
    write_vassal("app", file("v1"));
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_EQ(running_pids("app", 2).size(), 2u);

    // Fresh connections, one after another, all through the restart.
    RequestLoop load(port_, "app.test");
    ASSERT_TRUE(load.wait_for(20));
    std::size_t at = mark();
    write_vassal("app", file("v2"));
    const bool switched = poll_until([&] { return load.seen("v2"); }, kStart);
    load.stop_after(20);
    ASSERT_TRUE(switched) << log().substr(at);
    EXPECT_EQ(load.failures(), 0) << "requests wait in the queue while the vassal restarts; "
                                     "first: "
                                  << load.first_failure();
    EXPECT_FALSE(load.went_back()) << "the old generation is gone before the new one serves";
    const std::string since = log().substr(at);
    EXPECT_NE(since.find("vassal app: restart reload to generation 2"), std::string::npos);
    EXPECT_LT(since.find("old workers gone"), since.find("worker 1 started (pid"));
}

// ---- hosts -----------------------------------------------------------------------------------

TEST_F(DevStack, AHostNoVassalClaimsGets404) {
    write_vassal("app", "hosts = ['app.test']\ncommand = ['" + std::string(LIEGE_TEST_BACKEND) +
                            "', '--listen', '127.0.0.1:${PORT}', '--name', 'app']\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_EQ(running_pids("app", 1).size(), 1u);
    auto r = get("app.test", "/id");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    r = get("other.test", "/id");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 404) << "no vassal says hosts = [\"*\"]: " << r->body;

    // A web vassal that names no host is refused, so it never becomes a silent catch-all.
    write_file(root_ / "nohosts.toml", "command = ['app', '${PORT}']\n");
    Cli c = run_cli({"check", (root_ / "nohosts.toml").string()});
    EXPECT_EQ(c.exit_code, 1);
    EXPECT_NE(c.err.find("nohosts.toml:1:1: error: missing required key 'hosts'"),
              std::string::npos)
        << c.err;
}

// The repository's vassals.d, as a newcomer runs it: everything starts and answers.
TEST_F(DevStack, TheExampleVassalsStartCleanly) {
    fs::copy(fs::path(LIEGE_SOURCE_DIR) / "vassals.d", vassals_,
             fs::copy_options::recursive | fs::copy_options::overwrite_existing);
    Cli c = run_cli({"check", vassals_.string()});
    EXPECT_EQ(c.exit_code, 0) << c.out << c.err;
    EXPECT_NE(c.out.find("heartbeat: daemon workers=1"), std::string::npos) << c.out;
    EXPECT_NE(c.out.find("static: workers=0-2 idle=300s"), std::string::npos) << c.out;
    ASSERT_NO_FATAL_FAILURE(start());
    EXPECT_EQ(running_pids("hello", 2).size(), 2u);
    EXPECT_EQ(running_pids("heartbeat", 1).size(), 1u);
    // static is on demand: it runs nothing until its first request, which starts a worker.
    EXPECT_EQ(running_pids("static", 0).size(), 0u);
    for (const char* host : {"hello.localhost", "static.localhost", "anything.example"}) {
        auto r = get(host, "/");
        ASSERT_TRUE(r) << host;
        EXPECT_EQ(r->status, 200) << host << ": " << r->body;
    }
    EXPECT_EQ(running_pids("static", 1).size(), 1u);
    EXPECT_TRUE(wait_log("heartbeat from heartbeat"));
}

// ---- the admin address -------------------------------------------------------------------------

TEST_F(DevStack, StatusWorksFromAnotherDirectory) {
    const fs::path elsewhere = root_ / "elsewhere";
    fs::create_directories(elsewhere);
    write_vassal("worker", std::string("type = 'daemon'\n") + kSleeper);
    const std::string admin = "unix:" + (root_ / "admin.sock").string();
    ASSERT_NO_FATAL_FAILURE(start_liege({{}, admin}));
    ASSERT_TRUE(wait_log("vassal worker: worker 1 ready in "));

    // LIEGE_ADMIN says where the emperor is; a client runs in the test's directory, not the
    // socket's.
    Cli c = run_cli({"status", "--json"}, kStart, {"LIEGE_ADMIN=" + admin});
    ASSERT_EQ(c.exit_code, 0) << c.err;
    EXPECT_EQ(json::parse(c.out)["vassals"][0]["name"], "worker");
    // --admin wins over LIEGE_ADMIN.
    c = run_cli({"status", "--admin", admin}, kStart, {"LIEGE_ADMIN=unix:/nonexistent.sock"});
    EXPECT_EQ(c.exit_code, 0) << c.err;
    c = run_cli({"status"}, kStart, {"LIEGE_ADMIN=unix:" + (elsewhere / "none.sock").string()});
    EXPECT_EQ(c.exit_code, 1);
    EXPECT_NE(c.err.find("none.sock"), std::string::npos) << "names where it looked: " << c.err;
}

// Without --admin, `liege run` and its clients meet in the per-user runtime directory. As root
// that is /run/liege, shared by the whole machine, so this part runs only for other users.
TEST_F(DevStack, DefaultAdminSocketIsInTheRuntimeDirectory) {
    const fs::path xdg = root_ / "xdg";
    fs::create_directories(xdg);
    write_vassal("worker", std::string("type = 'daemon'\n") + kSleeper);
    // As root the default is /run/liege/liege.sock, not the test's to take: the emperor and the
    // CLI run as nobody, a user like any other, whose default is under XDG_RUNTIME_DIR.
    std::vector<std::string> as_user;
    if (::geteuid() == 0) {
        as_user = {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"};
        const auto readable = fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                              fs::perms::others_read | fs::perms::others_exec;
        for (const fs::path& d : {root_, vassals_}) {
            fs::permissions(d, readable);
        }
        ASSERT_EQ(::chown(xdg.c_str(), 65534, 65534), 0) << std::strerror(errno);
    }
    const std::vector<std::string> env = {"XDG_RUNTIME_DIR=" + xdg.string()};
    auto with_user = [&](std::vector<std::string> argv) {
        argv.insert(argv.begin(), as_user.begin(), as_user.end());
        return argv;
    };
    Process emperor(
        with_user({LIEGE_BINARY, "run", "--vassals", vassals_.string(), "--listen", "127.0.0.1:0"}),
        env);
    const fs::path sock = xdg / "liege" / "liege.sock";
    ASSERT_TRUE(
        emperor.err().wait_for_line_containing("admin API on unix:" + sock.string(), kStart))
        << emperor.describe();
    ASSERT_TRUE(emperor.err().wait_for_line_containing("vassal worker: worker 1 ready", kStart));
    EXPECT_EQ(fs::status(sock.parent_path()).permissions() & fs::perms::all, fs::perms::owner_all);
    // From another directory (the test's own working directory), with no --admin.
    Process status(with_user({LIEGE_BINARY, "status", "--json"}), env);
    auto st = status.wait_exit(kStart);
    ASSERT_TRUE(st && WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << status.describe();
    ASSERT_TRUE(poll_until([&] { return status.out().closed(); }));
    EXPECT_EQ(json::parse(status.out().text())["vassals"][0]["name"], "worker");
    emperor.signal(SIGTERM);
    auto exit = emperor.wait_exit(kStart);
    ASSERT_TRUE(exit);
    EXPECT_TRUE(WIFEXITED(*exit) && WEXITSTATUS(*exit) == 0) << emperor.describe();
    EXPECT_FALSE(fs::exists(sock));
}

// ---- profiles, shared defaults, templates -------------------------------------------------------

namespace {

std::string backend(const std::string& name) {
    return "command = ['" + std::string(LIEGE_TEST_BACKEND) +
           "', '--listen', '127.0.0.1:${PORT}', '--name', '" + name + "']\n";
}

} // namespace

TEST_F(DevStack, ProfileProdChangesWorkersHostsAndEnv) {
    write_vassal("shop", "hosts = ['shop.localhost']\n" + backend("shop") +
                             "env = { GREETING = 'dev' }\n"
                             "[profile.prod]\nworkers = 2\nhosts = ['shop.example.com']\n"
                             "env = { GREETING = 'prod' }\n");
    ASSERT_NO_FATAL_FAILURE(start({"--profile", "prod"}));
    auto pids = running_pids("shop", 2);
    ASSERT_EQ(pids.size(), 2u);
    for (int pid : pids) {
        auto env = environ_of(pid);
        EXPECT_EQ(env["GREETING"], "prod");
        EXPECT_EQ(env["LIEGE_PROFILE"], "prod");
    }
    auto r = get("shop.example.com", "/id");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    r = get("shop.localhost", "/id");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 404) << "the profile's hosts replace the file's";
}

TEST_F(DevStack, EnvFlagSaysItIsReplacedByProfile) {
    write_vassal("shop", "hosts = ['shop.localhost']\n" + backend("shop") +
                             "[profile.prod]\nenv = { GREETING = 'prod' }\n");
    ASSERT_NO_FATAL_FAILURE(start({"--env", "prod"}));
    EXPECT_TRUE(wait_log("--env is replaced by --profile: running with --profile prod"));
    auto pids = running_pids("shop", 1);
    ASSERT_EQ(pids.size(), 1u);
    EXPECT_EQ(environ_of(pids[0])["GREETING"], "prod");
}

TEST_F(DevStack, DefaultsEditReloadsOnlyTheVassalsItChanges) {
    write_vassal("_defaults", "env = { SHARED = 'one' }\n");
    write_vassal("a", "hosts = ['a.test']\n" + backend("a"));
    write_vassal("b", "hosts = ['b.test']\n" + backend("b") + "env = { SHARED = 'own' }\n");
    ASSERT_NO_FATAL_FAILURE(start());
    auto a = running_pids("a", 1);
    auto b = running_pids("b", 1);
    ASSERT_EQ(a.size(), 1u);
    ASSERT_EQ(b.size(), 1u);
    EXPECT_EQ(environ_of(a[0])["SHARED"], "one");
    EXPECT_EQ(environ_of(b[0])["SHARED"], "own");

    std::size_t at = mark();
    write_vassal("_defaults", "env = { SHARED = 'two' }\n");
    ASSERT_TRUE(wait_log("vassal a: generation 2 serving", kStart, at)) << log().substr(at);
    // Both were loaded again in the same pass: b's outcome is known by now.
    EXPECT_EQ(count_log("vassal b: rolling reload", at), 0u) << log().substr(at);
    EXPECT_EQ(vassal("b")["generation"], 1);
    EXPECT_EQ(vassal("b")["workers"][0]["pid"], b[0]);
    auto a2 = running_pids("a", 1);
    ASSERT_EQ(a2.size(), 1u);
    EXPECT_EQ(environ_of(a2[0])["SHARED"], "two");
}

TEST_F(DevStack, TemplateInstanceComesAndGoes) {
    write_vassal("shop@", "hosts = ['${INSTANCE}.shop.localhost']\n" + backend("${NAME}"));
    ASSERT_NO_FATAL_FAILURE(start());
    EXPECT_TRUE(vassal("shop@").is_null()) << "a template runs nothing itself";

    write_vassal("shop@feature-x", "");
    ASSERT_EQ(running_pids("shop@feature-x", 1).size(), 1u) << log();
    auto r = get("feature-x.shop.localhost", "/id");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_NE(r->body.find("shop@feature-x"), std::string::npos) << r->body;
    EXPECT_EQ(vassal("shop@feature-x")["hosts"][0], "feature-x.shop.localhost");

    // Editing the template reloads its instances.
    std::size_t at = mark();
    write_vassal("shop@", "hosts = ['${INSTANCE}.shop.localhost']\n" + backend("${NAME}") +
                              "env = { EDITED = '1' }\n");
    ASSERT_TRUE(wait_log("vassal shop@feature-x: generation 2 serving", kStart, at))
        << log().substr(at);

    at = mark();
    remove_vassal("shop@feature-x");
    ASSERT_TRUE(wait_log("vassal shop@feature-x: stopped", kStart, at)) << log().substr(at);
    ASSERT_TRUE(poll_until([&] {
        auto gone = get("feature-x.shop.localhost", "/id");
        return gone && gone->status == 404;
    }));
}

TEST_F(DevStack, ConfigPrintsTheMergedResult) {
    write_file(vassals_ / "_defaults.toml",
               "env = { DATABASE_URL = 'postgres:///shop_dev' }\n[health]\ninterval = '5s'\n");
    write_vassal("shop", "hosts = ['shop.localhost']\n" + backend("shop") +
                             "[profile.prod]\nworkers = 4\n");
    Cli c = run_cli({"config", "shop", "--vassals", vassals_.string(), "--profile", "prod"});
    ASSERT_EQ(c.exit_code, 0) << c.err;
    for (const char* part : {"workers = 4", "DATABASE_URL = \"postgres:///shop_dev\"",
                             "interval = \"5s\"", "\"shop.localhost\"", "${PORT}"}) {
        EXPECT_NE(c.out.find(part), std::string::npos) << part << " in:\n" << c.out;
    }
    EXPECT_EQ(c.out.find("profile"), std::string::npos) << c.out;
    c = run_cli({"config", "shop", "--vassals", vassals_.string()});
    ASSERT_EQ(c.exit_code, 0) << c.err;
    EXPECT_EQ(c.out.find("workers = 4"), std::string::npos) << c.out;

    // A mistake in the defaults is reported where it is.
    write_file(vassals_ / "_defaults.toml", "env = { A = 'a' }\nworkres = 2\n");
    c = run_cli({"config", "shop", "--vassals", vassals_.string()});
    EXPECT_EQ(c.exit_code, 1);
    EXPECT_NE(c.err.find("_defaults.toml:2:1: error: unknown key 'workres'"), std::string::npos)
        << c.err;
    c = run_cli({"check", vassals_.string()});
    EXPECT_EQ(c.exit_code, 1);
    EXPECT_NE(c.err.find("_defaults.toml:2:1: error: unknown key 'workres'"), std::string::npos)
        << c.err;
    c = run_cli({"config", "nope", "--vassals", vassals_.string()});
    EXPECT_EQ(c.exit_code, 1);
    EXPECT_NE(c.err.find("no vassal 'nope'"), std::string::npos) << c.err;
}

// ---- after -------------------------------------------------------------------------------------

TEST_F(DevStack, AfterOrdersStartAndStop) {
    const uint16_t port = closed_port();
    // Slow to come up: listens a second after it starts.
    write_vassal("redis", late_server(port, "1") + "[stop]\nsignal = 'SIGINT'\n");
    write_vassal("shop", "hosts = ['shop.test']\nafter = ['redis']\n" + backend("shop"));
    write_vassal("worker", std::string("type = 'daemon'\nafter = ['redis']\n") + kSleeper);
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_EQ(running_pids("shop", 1).size(), 1u);
    ASSERT_EQ(running_pids("worker", 1).size(), 1u);
    ASSERT_EQ(running_pids("redis", 1).size(), 1u);
    const std::string started = log();
    const auto redis_ready = started.find("vassal redis: worker 1 ready in ");
    ASSERT_NE(redis_ready, std::string::npos);
    EXPECT_NE(started.find("vassal shop: waiting for redis to be ready before starting"),
              std::string::npos)
        << started;
    for (const char* dependent : {"shop", "worker"}) {
        const auto at = started.find("vassal " + std::string(dependent) + ": worker 1 started");
        ASSERT_NE(at, std::string::npos) << dependent;
        EXPECT_LT(redis_ready, at) << dependent << " started before redis was ready:\n" << started;
    }

    ASSERT_NO_FATAL_FAILURE(stop_emperor());
    const std::string stopped = log();
    const auto redis_stopping = stopped.find("vassal redis: stopping");
    ASSERT_NE(redis_stopping, std::string::npos) << stopped;
    for (const char* dependent : {"shop", "worker"}) {
        const auto gone = stopped.find("vassal " + std::string(dependent) + ": stopped");
        ASSERT_NE(gone, std::string::npos) << dependent;
        EXPECT_LT(gone, redis_stopping) << "redis stopped before " << dependent << ":\n" << stopped;
    }
}

// A vassal that waits for one that has failed is not left waiting without a word: its log and
// /status say what it waits for and why, and it starts once that vassal is fixed.
TEST_F(DevStack, DependentOfAFailedVassalSaysWhatItWaitsForAndStartsOnceThatIsFixed) {
    expect_error_line({"vassal redis: worker 1 (pid ", "exited unexpectedly: exit code 1"});
    expect_error_line({"vassal worker: waiting for redis, which failed: "});
    write_vassal("redis", "type = 'daemon'\ncommand = ['false']\n");
    write_vassal("worker", std::string("type = 'daemon'\nafter = ['redis']\n") + kSleeper);
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_log("vassal worker: waiting for redis, which failed: worker 1 exited: "))
        << log();
    json v = wait_vassal("worker", [](const json& j) {
        return j.value("last_error", "").find("waiting for redis, which failed") == 0;
    });
    EXPECT_EQ(v.value("last_error", "").find("waiting for redis, which failed"), 0u) << v.dump(2);
    EXPECT_TRUE(v["workers"].empty()) << v.dump(2);

    write_vassal("redis", std::string("type = 'daemon'\n") + kSleeper);
    ASSERT_EQ(running_pids("redis", 1).size(), 1u);
    ASSERT_EQ(running_pids("worker", 1).size(), 1u) << log();
}

TEST_F(DevStack, CheckReportsStartOrderProblems) {
    write_vassal("a", "type = 'daemon'\ncommand = ['sleep', '1']\nafter = ['b']\n");
    write_vassal("b", "type = 'daemon'\ncommand = ['sleep', '1']\nafter = ['a']\n");
    write_vassal("c", "type = 'daemon'\ncommand = ['sleep', '1']\nafter = ['redis']\n");
    Cli c = run_cli({"check", vassals_.string()});
    EXPECT_EQ(c.exit_code, 1);
    EXPECT_NE(c.err.find("a.toml:3:9: error: after: the start order has a cycle: a -> b -> a"),
              std::string::npos)
        << c.err;
    EXPECT_NE(c.err.find("c.toml:3:9: error: after: no vassal \"redis\" in this directory"),
              std::string::npos)
        << c.err;
}

// ---- stop, start, logs -------------------------------------------------------------------------

TEST_F(DevStack, StopAndStartSurviveARescan) {
    write_vassal("app", "hosts = ['app.test']\n" + backend("app") + "env = { V = 'one' }\n");
    ASSERT_NO_FATAL_FAILURE(start());
    auto pids = running_pids("app", 1);
    ASSERT_EQ(pids.size(), 1u);
    auto proc = read_stat(pids[0]);
    ASSERT_TRUE(proc);

    Cli c = run_cli({"stop", "app", "--admin", admin_text_});
    ASSERT_EQ(c.exit_code, 0) << c.err;
    EXPECT_NE(c.out.find("app: stopped"), std::string::npos) << c.out;
    EXPECT_TRUE(wait_gone({*proc}).empty()) << "stop answers once the workers are gone";
    EXPECT_EQ(vassal("app")["state"], "stopped");
    auto r = get("app.test", "/id");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 404);

    // A rescan, and an edit of the file, leave it stopped.
    std::size_t at = mark();
    emperor_->signal(SIGHUP);
    write_vassal("app", "hosts = ['app.test']\n" + backend("app") + "env = { V = 'two' }\n");
    ASSERT_TRUE(wait_log("vassal app: out of service (liege stop)", kStart, at)) << log();
    EXPECT_EQ(vassal("app")["state"], "stopped");
    EXPECT_TRUE(vassal("app")["workers"].empty());

    c = run_cli({"start", "app", "--admin", admin_text_});
    ASSERT_EQ(c.exit_code, 0) << c.err;
    auto again = running_pids("app", 1);
    ASSERT_EQ(again.size(), 1u);
    EXPECT_EQ(environ_of(again[0])["V"], "two") << "it starts from its file as it is now";
    r = get("app.test", "/id");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);

    c = run_cli({"stop", "nope", "--admin", admin_text_});
    EXPECT_EQ(c.exit_code, 1);
    EXPECT_NE(c.err.find("unknown vassal 'nope'"), std::string::npos) << c.err;
}

TEST_F(DevStack, LogsShowAWorkersLastLines) {
    write_vassal("talker", "type = 'daemon'\ncommand = ['sh', '-c', 'for i in $(seq 1 50); do "
                           "echo line $i; done; i=0; while :; do i=$((i+1)); echo tick $i; "
                           "sleep 0.2; done']\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_log("[talker/1] tick 1"));
    Cli c = run_cli({"logs", "talker", "-n", "3", "--admin", admin_text_});
    ASSERT_EQ(c.exit_code, 0) << c.err;
    auto lines = [](const std::string& text) {
        std::vector<std::string> out;
        std::size_t start = 0;
        for (std::size_t nl; (nl = text.find('\n', start)) != std::string::npos; start = nl + 1) {
            out.push_back(text.substr(start, nl - start));
        }
        return out;
    };
    auto shown = lines(c.out);
    ASSERT_EQ(shown.size(), 3u) << c.out;
    for (const auto& line : shown) {
        EXPECT_EQ(line.rfind("[talker/1] ", 0), 0u) << line;
    }
    c = run_cli({"logs", "talker", "-n", "60", "--admin", admin_text_});
    ASSERT_EQ(c.exit_code, 0) << c.err;
    EXPECT_NE(c.out.find("[talker/1] line 50\n[talker/1] tick 1\n"), std::string::npos) << c.out;

    // -f goes on printing what comes.
    Process follow({LIEGE_BINARY, "logs", "talker", "-f", "-n", "1", "--admin", admin_text_});
    auto first = follow.out().wait_for_line_containing("tick ", kStart);
    ASSERT_TRUE(first) << follow.describe();
    const int n = std::stoi(first->substr(first->find("tick ") + 5));
    const std::string later = "tick " + std::to_string(n + 3);
    EXPECT_TRUE(follow.out().wait_for_line_containing(later, kStart)) << follow.describe();
    follow.kill();

    c = run_cli({"logs", "nope", "--admin", admin_text_});
    EXPECT_EQ(c.exit_code, 1);
    EXPECT_NE(c.err.find("unknown vassal 'nope'"), std::string::npos) << c.err;
}

// ---- [watch] -----------------------------------------------------------------------------------

TEST_F(DevStack, WatchReloadsOnASourceEditWithNoFailedRequestAndIgnoresPyc) {
    const fs::path app = root_ / "app";
    fs::create_directories(app / "src" / "deep");
    write_file(app / "src" / "deep" / "views.py", "v = 1\n");
    write_vassal("app", "hosts = ['app.test']\nworkers = 2\ncwd = '" + app.string() + "'\n" +
                            backend("app") +
                            "[watch]\npaths = ['src']\nignore = ['*.pyc', '__pycache__']\n"
                            "debounce = '100ms'\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_EQ(running_pids("app", 2).size(), 2u);

    RequestLoop load(port_, "app.test");
    std::size_t at = mark();
    // Ignored: a .pyc and a new __pycache__ directory with a file in it.
    write_file(app / "src" / "deep" / "views.pyc", "bytecode");
    fs::create_directories(app / "src" / "__pycache__");
    write_file(app / "src" / "__pycache__" / "x.py", "");
    // Counted: an edit deep in the tree.
    write_file(app / "src" / "deep" / "views.py", "v = 2\n");
    const bool reloaded = wait_log("vassal app: generation 2 serving", kStart, at).has_value();
    load.stop_after(20);
    ASSERT_TRUE(reloaded) << log().substr(at);
    const std::string since = log().substr(at);
    EXPECT_NE(since.find("vassal app: src/deep/views.py changed, reloading"), std::string::npos)
        << since;
    EXPECT_EQ(since.find("pyc changed"), std::string::npos) << since;
    EXPECT_EQ(since.find("__pycache__"), std::string::npos) << since;
    EXPECT_EQ(count_of(since, "changed, reloading"), 1u) << since;
    EXPECT_EQ(load.failures(), 0) << "of " << load.requests()
                                  << " requests; first: " << load.first_failure();

    // A directory made after the start is watched too.
    at = mark();
    fs::create_directories(app / "src" / "new");
    write_file(app / "src" / "new" / "more.py", "x = 1\n");
    EXPECT_TRUE(wait_log("vassal app: generation 3 serving", kStart, at)) << log().substr(at);
}

// ---- liege check -------------------------------------------------------------------------------

// A template no instance uses yet is still checked, as its first instance would load.
TEST_F(DevStack, CheckReportsMistakesInATemplateThatHasNoInstanceYet) {
    write_vassal("shop@", "hosts = ['${INSTANCE}.shop.test']\nworkers = 'two'\n" + backend("shop"));
    Cli bad = run_cli({"check", vassals_.string()});
    EXPECT_EQ(bad.exit_code, 1) << bad.err;
    EXPECT_NE(bad.err.find("shop@.toml:2:"), std::string::npos) << bad.err;
    EXPECT_NE(bad.err.find("(checked as an instance shop@example: no instance file uses it yet)"),
              std::string::npos)
        << bad.err;

    write_vassal("shop@", "hosts = ['${INSTANCE}.shop.test']\nworkers = 2\n" + backend("shop"));
    Cli good = run_cli({"check", vassals_.string()});
    EXPECT_EQ(good.exit_code, 0) << good.err;
}

TEST_F(DevStack, CheckReportsMistakesThatWouldFailAtRunTime) {
    write_vassal("typo", "hosts = ['a.test']\ncommand = ['pyhton3', '-m', 'http.server', "
                         "'${PORT}']\n");
    write_vassal("shellport", "hosts = ['b.test']\ncommand = ['python3', '-m', 'http.server', "
                              "'--bind', '127.0.0.1', '$PORT']\n");
    write_vassal("profiled", "hosts = ['c.test']\ncommand = ['python3', '${PORT}']\n"
                             "[profile.prod]\nworkrs = 2\n");
    write_file(vassals_ / "Static.TOML", "hosts = ['d.test']\ncommand = ['python3']\n");
    Cli c = run_cli({"check", vassals_.string()});
    EXPECT_EQ(c.exit_code, 1);
    for (const std::string expected :
         {"typo.toml:2:12: error: command[0]: \"pyhton3\" is not found on PATH; did you mean "
          "\"python3\"?",
          "shellport.toml:2:68: error: command[5]: '$PORT' is passed as it is: no shell runs "
          "this command; did you mean '${PORT}'?",
          "profiled.toml:4:1: error: with --profile prod: unknown key 'workrs'; did you mean "
          "'workers'?",
          "Static.TOML:1:1: error: not a vassal file: only names ending in \".toml\" (lower "
          "case) are loaded, so liege ignores this one; rename it to Static.toml"}) {
        EXPECT_NE(c.err.find(expected), std::string::npos) << expected << "\nin:\n" << c.err;
    }

    // A web vassal that names no port is only a warning: the app may read PORT.
    const fs::path other = root_ / "other";
    fs::create_directories(other);
    write_file(other / "noport.toml", "hosts = ['e.test']\ncommand = ['python3', 'app.py']\n");
    c = run_cli({"check", other.string()});
    EXPECT_EQ(c.exit_code, 0) << c.err;
    EXPECT_NE(c.err.find("noport.toml:2:11: warning: command: names neither ${PORT} nor "
                         "${SOCKET}"),
              std::string::npos)
        << c.err;
    // A shell expands $PORT itself.
    write_file(other / "noport.toml",
               "hosts = ['e.test']\ncommand = ['sh', '-c', 'exec app --port $PORT']\n");
    c = run_cli({"check", other.string()});
    EXPECT_EQ(c.exit_code, 0) << c.err;
    EXPECT_EQ(c.err.find("'$PORT'"), std::string::npos) << c.err;
}
