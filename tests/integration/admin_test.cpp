// Operating liege (issue 4) as a user does: the real `liege run` with real vassals
// (liege-test-backend workers), the admin API over HTTP, the `liege status`, `reload` and `top`
// commands, and the log files of --log-dir.
//
// The admin API listens on 127.0.0.1:0 in most tests (the emperor logs `admin API on ADDR`) so
// the harness's HTTP client can talk to it; the unix socket default is covered by the CLI tests.
// Figures the router reports arrive once a second, so every check of a figure is a bounded poll.
// The fixture is the harness's LiegeRunFixture: its tear-down stops the emperor with SIGTERM and
// asserts exit code 0, that no process of the instance (every worker /status reported among
// them) is left, and that it logged no error-level line but those a test declares.
#include <gtest/gtest.h>

#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "harness.hpp"

using namespace liege::test;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

// The value of one series in Prometheus text: `series` is the name with its labels.
std::optional<double> metric_value(const std::string& text, const std::string& series) {
    auto pos = ("\n" + text).find("\n" + series + " ");
    if (pos == std::string::npos) {
        return std::nullopt;
    }
    return std::stod(text.substr(pos + series.size() + 1));
}

std::string backend_vassal(int workers, bool log_requests = false) {
    std::string cmd = kAnyHost + "command = [\"" + LIEGE_TEST_BACKEND +
                      "\", \"--listen\", \"127.0.0.1:${PORT}\", \"--name\", \"${NAME}-${WORKER}\"";
    if (log_requests) {
        cmd += ", \"--log-requests\"";
    }
    return cmd + "]\nworkers = " + std::to_string(workers) + "\n";
}

// `liege run` with the admin API on an ephemeral loopback port and two router threads.
class Admin : public LiegeRunFixture {
protected:
    // Starts `liege run` with the admin API on `admin` (default: an ephemeral loopback port)
    // and waits for both addresses.
    void start(std::vector<std::string> extra = {}, std::string admin = "127.0.0.1:0") {
        start_liege({std::move(extra), std::move(admin), 2});
    }

    bool wait_running(const std::string& name, int workers) const {
        json v = wait_vassal(name, [&](const json& j) {
            return j["state"] == "running" && j["workers_ready"] == workers;
        });
        return !v.is_null() && v["state"] == "running" && v["workers_ready"] == workers;
    }

    // Running, and the router routes to it: one GET /id answered 200 (it counts as a request
    // of the vassal; the router's own "no route" 404s before it do not).
    bool wait_serving(const std::string& name, int workers) const {
        return wait_running(name, workers) &&
               poll_until([&] { return get("/id") == 200; }, kStart, 20ms);
    }

    int get(const std::string& target) const {
        try {
            HttpClient c(port_);
            return c.request("GET", target, {{"Connection", "close"}}).status;
        } catch (const HttpError&) {
            return 0;
        }
    }
};

} // namespace

// ---- GET /status -----------------------------------------------------------------------------

TEST_F(Admin, StatusHasThePinnedShapeAndItsFiguresFollowTheTraffic) {
    write_vassal("app", backend_vassal(2));
    start();
    ASSERT_TRUE(wait_serving("app", 2));

    // The router reports its figures once a second.
    json s;
    EXPECT_TRUE(poll_until([&] {
        s = status().value_or(json::object());
        return s.contains("router") && s["router"]["thread_requests"].size() == 2;
    })) << s.dump(2);
    EXPECT_EQ(s["emperor"]["pid"], emperor_->pid());
    EXPECT_EQ(s["emperor"]["admin"], admin_text_);
    EXPECT_EQ(s["emperor"]["listen"][0], "127.0.0.1:" + std::to_string(port_));
    EXPECT_TRUE(s["emperor"]["uptime_seconds"].is_number());
    EXPECT_EQ(s["router"]["thread_requests"].size(), 2u);
    EXPECT_TRUE(s["router"]["connections"].is_number());
    json v = vassal("app");
    for (const char* key : {"name", "state", "generation", "file", "hosts", "path", "workers",
                            "requests", "errors", "last_error", "requests_per_second", "restarts",
                            "rss_bytes", "uptime_seconds", "workers_total"}) {
        EXPECT_TRUE(v.contains(key)) << key << " missing from " << v.dump(2);
    }
    EXPECT_EQ(v["generation"], 1);
    EXPECT_EQ(v["file"], (vassals_ / "app.toml").string());
    EXPECT_EQ(v["hosts"], json::array({"*"}));
    EXPECT_EQ(v["path"], "/");
    EXPECT_EQ(v["workers_total"], 2);
    EXPECT_TRUE(v["last_error"].is_null());
    ASSERT_EQ(v["workers"].size(), 2u);
    for (const auto& w : v["workers"]) {
        for (const char* key :
             {"id", "pid", "state", "address", "requests", "restarts", "rss_bytes"}) {
            EXPECT_TRUE(w.contains(key)) << key << " missing from " << w.dump(2);
        }
        EXPECT_EQ(w["state"], "ready");
        EXPECT_FALSE(process_gone(w["pid"].get<pid_t>()));
        // RSS as /proc reports it for that pid: a live process has some, well under 1 GiB.
        EXPECT_GT(w["rss_bytes"].get<int64_t>(), 100 * 1024) << w.dump();
        EXPECT_LT(w["rss_bytes"].get<int64_t>(), int64_t{1} << 30) << w.dump();
        EXPECT_TRUE(w["requests"].is_number());
    }
    EXPECT_TRUE(v["requests"].is_number());
    // Requests made while the pool was starting (503s before a worker was ready) count too, so
    // the figures below are deltas from here. Wait for the figures to settle first: the router
    // reports them once a second.
    uint64_t r0 = 0;
    uint64_t e0 = 0;
    uint64_t ok0 = 0;
    for (int settled = 0; settled < 2;) {
        json before = vassal("app");
        uint64_t r = before["requests"].get<uint64_t>();
        settled = (r == r0 && r != 0) ? settled + 1 : 0;
        r0 = r;
        e0 = before["errors"].get<uint64_t>();
        ok0 = before["responses"]["2xx"].get<uint64_t>();
        poll_until([&] { return vassal("app")["requests"].get<uint64_t>() != r0; }, 1200ms);
    }
    // Without --log-dir, worker output goes to stderr tagged with the worker.
    EXPECT_TRUE(contains(log(), "[app/1] listening on 127.0.0.1:")) << log();

    // 20 more answers from the workers, 3 of them 5xx.
    for (int i = 0; i < 17; ++i) {
        ASSERT_EQ(get("/id"), 200);
    }
    for (int i = 0; i < 3; ++i) {
        ASSERT_EQ(get("/status?code=503"), 503);
    }
    v = wait_vassal("app", [&](const json& j) { return j["requests"] == r0 + 20; });
    EXPECT_EQ(v["requests"], r0 + 20) << v.dump(2);
    EXPECT_EQ(v["errors"], e0 + 3);
    EXPECT_EQ(v["responses"]["2xx"], ok0 + 17);
    EXPECT_EQ(v["responses"]["5xx"], e0 + 3);
    EXPECT_EQ(v["in_flight"], 0);
    EXPECT_GE(v["workers"][0]["requests"].get<int>() + v["workers"][1]["requests"].get<int>(), 20)
        << "per-worker requests add up: " << v.dump(2);
    s = status().value_or(json::object());
    ASSERT_TRUE(s.contains("router"));
    EXPECT_GE(s["router"]["requests"].get<int>(), 21);
    EXPECT_GE(s["router"]["thread_requests"][0].get<int>() +
                  s["router"]["thread_requests"][1].get<int>(),
              21);

    // A rate shows while traffic flows, and falls back to zero once it stops.
    bool rated = poll_until(
        [&] {
            get("/id");
            json now = vassal("app");
            json all = status().value_or(json::object());
            return !now.is_null() && now["requests_per_second"].get<double>() > 0 &&
                   all.contains("router") && all["router"]["requests_per_second"].get<double>() > 0;
        },
        kStart, 50ms);
    EXPECT_TRUE(rated) << vassal("app").dump(2);
    v = wait_vassal("app", [](const json& j) { return j["requests_per_second"] == 0; });
    EXPECT_EQ(v["requests_per_second"], 0.0);
}

TEST_F(Admin, StatusShowsARestartedWorkerAndItsError) {
    write_vassal("app", backend_vassal(1));
    start();
    ASSERT_TRUE(wait_running("app", 1));
    pid_t pid = vassal("app")["workers"][0]["pid"].get<pid_t>();
    // The emperor logs the crash at error level.
    expect_error_line({"vassal app: worker 1 (pid " + std::to_string(pid) +
                       ") exited unexpectedly: killed by SIGKILL"});
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    json v = wait_vassal("app", [&](const json& j) {
        return j["restarts"] == 1 && j["workers_ready"] == 1 && j["workers"][0]["pid"] != pid;
    });
    EXPECT_EQ(v["restarts"], 1) << v.dump(2);
    EXPECT_EQ(v["workers"][0]["restarts"], 1);
    EXPECT_TRUE(v["last_error"].is_string() && contains(v["last_error"], "SIGKILL")) << v.dump(2);
    EXPECT_TRUE(v["last_error_time"].is_number());
    Response m = admin("GET", "/metrics");
    EXPECT_TRUE(contains(m.body, R"(liege_worker_restarts_total{vassal="app",worker="1",)"
                                 R"(generation="1"} 1)"))
        << m.body;
}

TEST_F(Admin, FiguresDoNotGoBackwardsWhenTheRouterRestarts) {
    write_vassal("app", backend_vassal(1));
    start();
    ASSERT_TRUE(wait_serving("app", 1));
    for (int i = 0; i < 5; ++i) {
        ASSERT_EQ(get("/id"), 200);
    }
    // Everything served so far, as the running router reports it (once a second).
    uint64_t before = 0;
    json v0;
    ASSERT_TRUE(poll_until([&] {
        json s = status().value_or(json::object());
        if (!s.contains("router")) {
            return false;
        }
        before = s["router"]["requests"].get<uint64_t>();
        v0 = vassal("app");
        // Six 200s (wait_serving's and five more) reported means every request so far is.
        return v0["responses"]["2xx"] == 6 && v0["requests"].get<uint64_t>() == before;
    })) << status().value_or(json::object()).dump(2);
    // The router's unexpected exit is logged as an error.
    expect_error_line({"emperor: router exited unexpectedly (killed by SIGKILL)"});
    pid_t router = status().value()["router"]["pid"].get<pid_t>();
    ASSERT_GT(router, 0);
    ASSERT_EQ(::kill(router, SIGKILL), 0);
    ASSERT_TRUE(poll_until([&] {
        json s = status().value_or(json::object());
        return s.contains("router") && s["router"]["pid"].get<pid_t>() != router &&
               s["router"]["pid"].get<pid_t>() != 0;
    }));
    ASSERT_EQ(get("/id"), 200);
    // The new router's first report adds to the old one's counts instead of replacing them.
    json v = wait_vassal("app", [&](const json& j) { return j["requests"] == before + 1; });
    EXPECT_EQ(v["requests"], before + 1) << v.dump(2);
    EXPECT_EQ(v["responses"]["2xx"], v0["responses"]["2xx"].get<uint64_t>() + 1);
    EXPECT_EQ(v["workers"][0]["requests"], v0["workers"][0]["requests"].get<uint64_t>() + 1);
    json s = status().value_or(json::object());
    EXPECT_EQ(s["router"]["requests"], before + 1) << s.dump(2);
    Response m = admin("GET", "/metrics");
    EXPECT_TRUE(contains(m.body, "liege_requests_total{vassal=\"app\",code=\"2xx\"} " +
                                     std::to_string(v["responses"]["2xx"].get<uint64_t>()) + "\n"))
        << m.body;
}

// The router's connections to workers, by state: one held by a request in flight is active; once
// its response is done, it waits idle in the pool for the next request.
TEST_F(Admin, RouterReportsItsConnectionsToWorkersByState) {
    write_vassal("app", backend_vassal(1));
    start_liege({{}, "127.0.0.1:0", 1}); // one router thread: one pool
    ASSERT_TRUE(wait_serving("app", 1));
    auto upstreams = [&] {
        json s = status().value_or(json::object());
        return s.contains("router") ? s["router"].value("upstream_connections", json::object())
                                    : json::object();
    };
    auto count = [](const json& u, const char* state) { return u.value(state, int64_t{-1}); };
    HttpClient slow(port_);
    slow.send(build_request("GET", "/slow?ms=3000"));
    json u;
    ASSERT_TRUE(poll_until([&] {
        u = upstreams();
        return count(u, "active") == 1;
    })) << u.dump();
    EXPECT_EQ(count(u, "connecting"), 0) << u.dump();
    EXPECT_EQ(slow.read_response().status, 200);
    ASSERT_TRUE(poll_until([&] {
        u = upstreams();
        return count(u, "active") == 0 && count(u, "idle") == 1;
    })) << u.dump();
    Response m = admin("GET", "/metrics");
    EXPECT_TRUE(contains(m.body, "liege_router_upstream_connections{state=\"idle\"} 1\n"))
        << m.body;
}

TEST_F(Admin, RouterThreadsHoldAnEvenShareOfKeepAliveConnections) {
    write_vassal("app", backend_vassal(1));
    start();
    ASSERT_TRUE(wait_serving("app", 1));
    // The kernel's SO_REUSEPORT hash alone spreads 100 connections over the 2 threads 49-51 or
    // closer only about one time in four; the router hands a new connection to the thread
    // holding fewer when the accepting one holds two more.
    std::vector<HttpClient> clients;
    for (int i = 0; i < 100; ++i) {
        clients.emplace_back(port_);
        ASSERT_EQ(clients.back().get("/id").status, 200);
    }
    json threads;
    ASSERT_TRUE(poll_until([&] {
        json s = status().value_or(json::object());
        if (!s.contains("router")) {
            return false;
        }
        threads = s["router"]["thread_connections"];
        return threads.size() == 2 && threads[0].get<int>() + threads[1].get<int>() == 100;
    })) << threads.dump();
    int a = threads[0].get<int>();
    int b = threads[1].get<int>();
    EXPECT_LE(std::abs(a - b), 2) << threads.dump();
    Response m = admin("GET", "/metrics");
    EXPECT_TRUE(contains(m.body, "liege_router_thread_connections{thread=\"0\"} " +
                                     std::to_string(a) + "\n"))
        << m.body;
    // Each connection is served where it was placed: all of them still answer.
    for (auto& c : clients) {
        EXPECT_EQ(c.get("/id").status, 200);
    }
}

// ---- what /status says of failures, and for how long ----------------------------------------

// `/bin/sh -c SCRIPT` as a vassal's command.
std::string shell_vassal(const std::string& script) {
    return kAnyHost + "command = [\"/bin/sh\", \"-c\", " + toml_str(script) + "]\n";
}

TEST_F(Admin, AWorkerServingAgainAfterItsBackoffIsRunningAtOnceAndResolvesItsError) {
    expect_error_line({"vassal app: worker 1 (pid ", ") exited unexpectedly: exit code 3"});
    // The worker cannot start until the file `fixed` exists.
    const fs::path fixed = root_ / "fixed";
    write_vassal("app",
                 shell_vassal("[ -e " + fixed.string() +
                              " ] || { echo not yet >&2; exit 3; }; exec " + LIEGE_TEST_BACKEND +
                              " --listen 127.0.0.1:${PORT} --name ${NAME}-${WORKER}"));
    start();
    json v = wait_vassal("app", [](const json& j) { return j["state"] == "failed"; });
    ASSERT_EQ(v["state"], "failed") << v.dump(2);
    EXPECT_EQ(v["last_error_resolved"], false) << v.dump(2);
    EXPECT_TRUE(v["last_error_resolved_time"].is_null()) << v.dump(2);

    // Fixed: its next spawn after the backoff (at most 12.8 s away by now) serves. Its backoff
    // forgets the failures only after a minute healthy; /status must not wait for that.
    write_file(fixed, "");
    v = wait_vassal(
        "app",
        [](const json& j) {
            return j["workers"].size() == 1 && j["workers"][0]["state"] == "ready";
        },
        60s);
    ASSERT_EQ(v["workers"][0]["state"], "ready") << v.dump(2);
    v = wait_vassal(
        "app", [](const json& j) { return j["state"] == "running"; }, kWait);
    EXPECT_EQ(v["state"], "running") << "its worker serves again: " << v.dump(2);
    EXPECT_EQ(v["last_error_resolved"], true) << v.dump(2);
    EXPECT_TRUE(v["last_error_resolved_time"].is_number()) << v.dump(2);
    EXPECT_TRUE(contains(v.value("last_error", ""), "exit code 3")) << "kept: " << v.dump(2);
    EXPECT_TRUE(v["last_error_time"].is_number()) << v.dump(2);
    EXPECT_EQ(v["last_output"], json::array()) << "only a failed vassal shows its output";
    EXPECT_EQ(get("/id"), 200);
    Cli c = run_cli({"status", "--admin", admin_text_});
    EXPECT_EQ(c.exit_code, 0) << c.err;
    EXPECT_TRUE(contains(c.out, "app: resolved error (")) << c.out;
    EXPECT_FALSE(contains(c.out, "app: last error")) << "shown as current: " << c.out;
}

TEST_F(Admin, ALaterGenerationThatServesResolvesTheLastError) {
    expect_error_line(
        {"vassal app: reload to generation 2 abandoned: worker 1 exited: exit code 3"});
    write_vassal("app", backend_vassal(1));
    start();
    ASSERT_TRUE(wait_serving("app", 1));
    write_vassal("app", shell_vassal("exit 3"));
    json v = wait_vassal("app", [](const json& j) { return j["failed_reloads"] == 1; });
    ASSERT_EQ(v["failed_reloads"], 1) << v.dump(2);
    EXPECT_EQ(v["last_error_resolved"], false) << "generation 1 serving fixes nothing of 2";
    Cli c = run_cli({"status", "--admin", admin_text_});
    EXPECT_TRUE(contains(c.out, "app: last error (")) << c.out;

    // The fixed deploy: generation 3 serves.
    write_vassal("app", backend_vassal(1) + "env = { FIXED = \"1\" }\n");
    v = wait_vassal("app",
                    [](const json& j) { return j["generation"] == 3 && j["state"] == "running"; });
    ASSERT_EQ(v["generation"], 3) << v.dump(2);
    EXPECT_EQ(v["last_error_resolved"], true) << v.dump(2);
    ASSERT_TRUE(v["last_error_resolved_time"].is_number()) << v.dump(2);
    EXPECT_GE(v["last_error_resolved_time"].get<int64_t>(), v["last_error_time"].get<int64_t>());
    EXPECT_TRUE(contains(v.value("last_error", ""), "reload to generation 2 failed")) << v.dump(2);
    c = run_cli({"status", "--admin", admin_text_});
    EXPECT_TRUE(contains(c.out, "app: resolved error (")) << c.out;
    EXPECT_FALSE(contains(c.out, "app: last error")) << c.out;
}

TEST_F(Admin, AFailedStartShowsItsWorkersLastOutput) {
    expect_error_line({"vassal crash: worker 1 (pid ", ") exited unexpectedly: exit code 3"});
    write_vassal("crash", shell_vassal("echo 'Traceback: no module named app' >&2; exit 3"));
    start();
    json v = wait_vassal("crash", [](const json& j) {
        return j["state"] == "failed" && j.contains("last_output") && !j["last_output"].empty();
    });
    ASSERT_EQ(v["state"], "failed") << v.dump(2);
    ASSERT_TRUE(v["last_output"].is_array() && !v["last_output"].empty()) << v.dump(2);
    EXPECT_EQ(v["last_output"].back(), "[crash/1] Traceback: no module named app") << v.dump(2);
    EXPECT_LE(v["last_output"].size(), 10u) << "a few lines, not the whole log";

    Cli c = run_cli({"status", "--admin", admin_text_});
    EXPECT_EQ(c.exit_code, 0) << c.err;
    EXPECT_TRUE(contains(c.out, "crash: last error (")) << c.out;
    EXPECT_TRUE(contains(c.out, "\n  [crash/1] Traceback: no module named app\n")) << c.out;
    c = run_cli({"status", "--json", "--admin", admin_text_});
    ASSERT_EQ(c.exit_code, 0) << c.err;
    json doc = json::parse(c.out);
    EXPECT_EQ(doc["vassals"][0]["last_output"].back(), "[crash/1] Traceback: no module named app")
        << c.out;
}

// ---- GET /metrics ----------------------------------------------------------------------------

TEST_F(Admin, MetricsInPrometheusFormatFollowTheTraffic) {
    write_vassal("app", backend_vassal(2));
    start();
    ASSERT_TRUE(wait_serving("app", 2)); // one request
    for (int i = 0; i < 5; ++i) {
        ASSERT_EQ(get("/id"), 200);
    }
    ASSERT_EQ(get("/status?code=404"), 404);
    ASSERT_EQ(get("/slow?ms=300"), 200);
    std::string body;
    std::string content_type;
    bool counted = poll_until(
        [&] {
            Response r = admin("GET", "/metrics");
            body = r.body;
            content_type = r.header("Content-Type").value_or("");
            return r.status == 200 &&
                   contains(body, "liege_requests_total{vassal=\"app\",code=\"2xx\"} 7\n");
        },
        kStart, 100ms);
    ASSERT_TRUE(counted) << body;
    EXPECT_TRUE(content_type.starts_with("text/plain; version=0.0.4")) << content_type;
    EXPECT_TRUE(contains(body, "# TYPE liege_requests_total counter\n"));
    EXPECT_TRUE(contains(body, "liege_requests_total{vassal=\"app\",code=\"4xx\"} 1\n"));
    EXPECT_TRUE(contains(body, "liege_requests_in_flight{vassal=\"app\"} 0\n"));
    EXPECT_TRUE(contains(body, "# TYPE liege_request_duration_seconds histogram\n"));
    // Every response is in the histogram once. wait_serving's first probes may have met a 503
    // (the router applies a new route set a moment after the emperor reports the worker ready),
    // so the total is read from the counters rather than assumed.
    double total = 0;
    for (const char* cls : {"1xx", "2xx", "3xx", "4xx", "5xx"}) {
        auto n = metric_value(body, std::string(R"(liege_requests_total{vassal="app",code=")") +
                                        cls + "\"}");
        ASSERT_TRUE(n) << cls << " missing from " << body;
        total += *n;
    }
    EXPECT_GE(total, 8);
    EXPECT_EQ(
        metric_value(body, R"(liege_request_duration_seconds_bucket{vassal="app",le="+Inf"})"),
        total)
        << body;
    EXPECT_EQ(metric_value(body, R"(liege_request_duration_seconds_count{vassal="app"})"), total);
    // The /slow request took at least 300 ms: above the 250 ms bucket, and in the sum.
    auto le_250ms =
        metric_value(body, R"(liege_request_duration_seconds_bucket{vassal="app",le="0.25"})");
    ASSERT_TRUE(le_250ms) << body;
    EXPECT_LE(*le_250ms, total - 1);
    auto sum = metric_value(body, R"(liege_request_duration_seconds_sum{vassal="app"})");
    ASSERT_TRUE(sum) << body;
    EXPECT_GE(*sum, 0.3);
    EXPECT_LT(*sum, 30.0);
    EXPECT_TRUE(
        contains(body, "liege_worker_rss_bytes{vassal=\"app\",worker=\"1\",generation=\"1\"} "));
    EXPECT_TRUE(contains(body, "liege_worker_restarts_total{vassal=\"app\",worker=\"2\","
                               "generation=\"1\"} 0\n"));
    EXPECT_TRUE(contains(body, "liege_router_connections "));
    EXPECT_TRUE(contains(body, "liege_reloads_total{vassal=\"app\"} 0\n"));
    EXPECT_TRUE(contains(body, "liege_reloads_failed_total{vassal=\"app\"} 0\n"));
}

// ---- reloads ---------------------------------------------------------------------------------

TEST_F(Admin, ReloadIsAnsweredWithItsOutcome) {
    write_vassal("app", backend_vassal(2));
    write_vassal("other", backend_vassal(1));
    start();
    ASSERT_TRUE(wait_running("app", 2));
    ASSERT_TRUE(wait_running("other", 1));

    Response r = admin("POST", "/vassals/app/reload");
    ASSERT_EQ(r.status, 200) << r.body;
    json o = json::parse(r.body);
    EXPECT_EQ(o["vassal"], "app");
    EXPECT_EQ(o["ok"], true);
    EXPECT_EQ(o["generation"], 2);
    EXPECT_TRUE(contains(o["message"], "generation 2")) << o;
    // Answered once the new generation serves: /status agrees at once.
    json v = vassal("app");
    EXPECT_EQ(v["generation"], 2);
    EXPECT_EQ(v["reloads"], 1);
    EXPECT_EQ(vassal("other")["generation"], 1) << "only the named vassal reloads";

    Cli c = run_cli({"reload", "app", "--admin", admin_text_});
    EXPECT_EQ(c.exit_code, 0) << c.err;
    EXPECT_EQ(c.out, "app: reloaded to generation 3\n");

    r = admin("POST", "/reload");
    ASSERT_EQ(r.status, 200) << r.body;
    o = json::parse(r.body);
    EXPECT_EQ(o["ok"], true);
    ASSERT_EQ(o["vassals"].size(), 2u);
    EXPECT_EQ(o["vassals"][0]["vassal"], "app");
    EXPECT_EQ(o["vassals"][0]["generation"], 4);
    EXPECT_EQ(o["vassals"][1]["vassal"], "other");
    EXPECT_EQ(o["vassals"][1]["generation"], 2);

    c = run_cli({"reload", "--all", "--admin", admin_text_});
    EXPECT_EQ(c.exit_code, 0) << c.err;
    EXPECT_EQ(c.out, "app: reloaded to generation 5\nother: reloaded to generation 3\n");
    EXPECT_EQ(vassal("app")["reloads"], 4);
}

TEST_F(Admin, AFailedReloadIsReportedAndTheOldGenerationKeepsServing) {
    write_vassal("app", backend_vassal(1));
    start();
    ASSERT_TRUE(wait_serving("app", 1));
    // The invalid file and each abandoned reload are logged as errors.
    expect_error_line({"vassals.d/app.toml:4:1: error: unknown key 'no_such_key'"});
    expect_error_line(
        {"vassal app: reload to generation ", " abandoned: worker 1 exited: exit code 3"});

    // An invalid file: the watcher refuses it, and so does an explicit reload.
    write_vassal("app", backend_vassal(1) + "no_such_key = 1\n");
    ASSERT_FALSE(
        wait_vassal("app", [](const json& j) { return j["last_error"].is_string(); })["last_error"]
            .is_null());
    Response r = admin("POST", "/vassals/app/reload");
    EXPECT_EQ(r.status, 500) << r.body;
    json o = json::parse(r.body);
    EXPECT_EQ(o["ok"], false);
    EXPECT_TRUE(contains(o["message"], "invalid vassal file")) << o;
    EXPECT_TRUE(contains(o["message"], "no_such_key")) << o;
    Cli c = run_cli({"reload", "app", "--admin", admin_text_});
    EXPECT_EQ(c.exit_code, 1);
    EXPECT_TRUE(contains(c.err, "liege: app: reload failed: invalid vassal file")) << c.err;
    c = run_cli({"reload", "--all", "--admin", admin_text_});
    EXPECT_EQ(c.exit_code, 1);
    EXPECT_TRUE(contains(c.err, "liege: app: reload failed: invalid vassal file")) << c.err;
    EXPECT_EQ(get("/id"), 200);
    EXPECT_EQ(vassal("app")["generation"], 1);

    // A valid file whose workers die at once: the new generation is abandoned. Its last words
    // (quoted in last_error) are not UTF-8, and /status still answers.
    write_vassal("app", kAnyHost + "command = [\"/bin/sh\", \"-c\", \"printf 'bad \\\\377\\\\376 "
                                   "bytes\\\\n'; exit 3\"]\n");
    json v = wait_vassal("app", [](const json& j) { return j["failed_reloads"] == 1; });
    ASSERT_EQ(v["failed_reloads"], 1) << v.dump(2);
    r = admin("POST", "/vassals/app/reload");
    EXPECT_EQ(r.status, 500) << r.body;
    o = json::parse(r.body);
    EXPECT_EQ(o["ok"], false);
    EXPECT_TRUE(contains(o["message"], "failed")) << o;
    EXPECT_EQ(o["generation"], 1) << "the old generation still serves";
    c = run_cli({"reload", "app", "--admin", admin_text_});
    EXPECT_EQ(c.exit_code, 1);
    EXPECT_TRUE(contains(c.err, "liege: app: reload failed: ")) << c.err;
    EXPECT_EQ(get("/id"), 200);
    v = vassal("app");
    EXPECT_EQ(v["generation"], 1);
    EXPECT_EQ(v["failed_reloads"], 3);
    EXPECT_TRUE(contains(v["last_error"], "exit code 3")) << v.dump(2);
    EXPECT_TRUE(contains(v["last_error"], "bad \xEF\xBF\xBD\xEF\xBF\xBD bytes"))
        << "invalid bytes become U+FFFD: " << v.dump(2);
    c = run_cli({"status", "--admin", admin_text_});
    EXPECT_EQ(c.exit_code, 0) << c.err;
    EXPECT_TRUE(contains(c.out, "app: last error")) << c.out;
    Response m = admin("GET", "/metrics");
    EXPECT_TRUE(contains(m.body, "liege_reloads_failed_total{vassal=\"app\"} 3\n")) << m.body;
}

TEST_F(Admin, ReloadOfAVassalThatNeverStartedIsAnsweredWithItsOutcome) {
    // The invalid files and the failing workers are logged as errors. The broken vassal's
    // workers die either as its first generation or in the reload that starts it.
    expect_error_line({"vassals.d/app.toml:1:1: error: "});
    expect_error_line({"vassals.d/broken.toml:1:1: error: "});
    expect_error_line({"vassal broken: ", "exit code 3"});
    write_vassal("app", "no_such_key = 1\n");
    start();
    json v = wait_vassal("app", [](const json& j) { return j["last_error"].is_string(); });
    ASSERT_EQ(v["state"], "failed") << v.dump(2);
    ASSERT_EQ(v["workers"].size(), 0u);

    // Workers that take a while to listen: the answer waits until they all serve. (The watcher
    // may start the vassal before the request does; either way the answer follows readiness.)
    write_vassal("app", kAnyHost +
                            std::string("command = [\"/bin/sh\", \"-c\", \"sleep 0.5; exec ") +
                            LIEGE_TEST_BACKEND +
                            " --listen 127.0.0.1:${PORT} --name ${NAME}-${WORKER}\"]\n"
                            "workers = 2\n");
    Response r = admin("POST", "/vassals/app/reload");
    ASSERT_EQ(r.status, 200) << r.body;
    json o = json::parse(r.body);
    EXPECT_EQ(o["ok"], true) << o;
    EXPECT_TRUE(contains(o["message"], "generation")) << o;
    v = vassal("app");
    EXPECT_EQ(v["workers_ready"], 2) << "answered before the workers were ready: " << v.dump(2);
    EXPECT_EQ(get("/id"), 200);

    // A vassal that never started and whose workers die at once: the answer is the failure.
    write_vassal("broken", "no_such_key = 1\n");
    wait_vassal("broken", [](const json& j) { return j["last_error"].is_string(); });
    write_vassal("broken",
                 kAnyHost + "command = [\"/bin/sh\", \"-c\", \"echo cannot start; exit 3\"]\n");
    r = admin("POST", "/vassals/broken/reload");
    EXPECT_EQ(r.status, 500) << r.body;
    o = json::parse(r.body);
    EXPECT_EQ(o["ok"], false) << o;
    EXPECT_TRUE(contains(o["message"], "exit code 3")) << o;
}

TEST_F(Admin, UnknownVassalsAndPaths) {
    write_vassal("app", backend_vassal(1));
    start();
    ASSERT_TRUE(wait_running("app", 1));

    Response r = admin("POST", "/vassals/nope/reload");
    EXPECT_EQ(r.status, 404);
    json o = json::parse(r.body);
    EXPECT_EQ(o["vassal"], "nope");
    EXPECT_EQ(o["error"], "unknown vassal 'nope'");
    Cli c = run_cli({"reload", "nope", "--admin", admin_text_});
    EXPECT_EQ(c.exit_code, 1);
    EXPECT_EQ(c.err, "liege: unknown vassal 'nope'\n");
    EXPECT_EQ(c.out, "");

    r = admin("GET", "/reload");
    EXPECT_EQ(r.status, 405);
    EXPECT_EQ(r.header("Allow"), "POST");
    r = admin("GET", "/vassals/app/reload");
    EXPECT_EQ(r.status, 405);
    r = admin("POST", "/status");
    EXPECT_EQ(r.status, 405);
    EXPECT_EQ(r.header("Allow"), "GET, HEAD");
    r = admin("GET", "/nothing-here");
    EXPECT_EQ(r.status, 404);
    EXPECT_TRUE(contains(json::parse(r.body)["error"], "/nothing-here")) << r.body;
    EXPECT_EQ(r.header("Content-Type"), "application/json");

    // Keep-alive and pipelining: three requests in one write, answered in order.
    HttpClient k(admin_port_);
    k.send(build_request("GET", "/status", {admin_authorization()}) +
           build_request("GET", "/nothing", {admin_authorization()}) +
           build_request("GET", "/metrics", {admin_authorization()}));
    EXPECT_EQ(k.read_response().status, 200);
    EXPECT_EQ(k.read_response().status, 404);
    EXPECT_EQ(k.read_response().status, 200);
    // A malformed request gets a 400, not silence.
    HttpClient bad(admin_port_);
    bad.send("GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n");
    EXPECT_EQ(bad.read_response().status, 400);
}

// ---- the command line --------------------------------------------------------------------------

TEST_F(Admin, CommandsSayClearlyWhenTheAdminAddressCannotBeReached) {
    const std::string missing = "unix:" + (root_ / "none.sock").string();
    Cli c = run_cli({"status", "--admin", missing});
    EXPECT_EQ(c.exit_code, 1);
    EXPECT_EQ(c.err, "liege: cannot reach the admin API at " + missing +
                         ": No such file or directory (is liege run running?)\n");
    EXPECT_EQ(c.out, "");
    const std::string refused = "127.0.0.1:" + std::to_string(closed_port());
    for (auto args : std::vector<std::vector<std::string>>{
             {"status", "--json"}, {"reload", "app"}, {"reload", "--all"}, {"top"}}) {
        args.push_back("--admin");
        args.push_back(refused);
        c = run_cli(args);
        EXPECT_EQ(c.exit_code, 1) << args[0];
        EXPECT_EQ(c.err, "liege: cannot reach the admin API at " + refused +
                             ": Connection refused (is liege run running?)\n")
            << args[0];
    }
    c = run_cli({"reload", "--admin", refused});
    EXPECT_EQ(c.exit_code, 1);
    EXPECT_TRUE(contains(c.err, "name a vassal, or give --all")) << c.err;
    c = run_cli({"status", "--admin", "nonsense"});
    EXPECT_EQ(c.exit_code, 1);
    EXPECT_TRUE(contains(c.err, "invalid address 'nonsense'")) << c.err;
}

// Over TCP, anyone who can connect, a web page included (its cross-site POST, or DNS rebinding
// for a read), would drive the emperor: the token, the Host check and the Origin check.
TEST_F(Admin, OverTcpEveryRequestNeedsTheTokenTheAdminHostAndNoOrigin) {
    write_vassal("app", backend_vassal(1));
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_running("app", 1));
    const std::string here = "127.0.0.1:" + std::to_string(admin_port_);
    auto ask = [&](const std::string& method, const std::string& target,
                   std::vector<std::pair<std::string, std::string>> headers) {
        HttpClient c(admin_port_);
        headers.emplace_back("Connection", "close");
        return c.request(method, target, headers);
    };
    Response r = ask("GET", "/status", {{"Host", here}});
    EXPECT_EQ(r.status, 401) << r.body;
    EXPECT_EQ(r.header("WWW-Authenticate"), "Bearer realm=\"liege\"");
    EXPECT_FALSE(contains(r.body, "\"vassals\"")) << r.body;
    r = ask("POST", "/reload", {{"Host", here}});
    EXPECT_EQ(r.status, 401) << r.body;
    r = ask("GET", "/status", {{"Host", here}, {"Authorization", "Bearer " + admin_token_ + "x"}});
    EXPECT_EQ(r.status, 401) << r.body;
    r = ask("GET", "/metrics", {{"Host", here}, {"Authorization", "Basic " + admin_token_}});
    EXPECT_EQ(r.status, 401) << r.body;
    r = ask("GET", "/status", {{"Host", here}, admin_authorization()});
    EXPECT_EQ(r.status, 200) << r.body;
    r = ask("GET", "/status",
            {{"Host", "localhost:" + std::to_string(admin_port_)},
             {"Authorization", "bearer " + admin_token_}});
    EXPECT_EQ(r.status, 200) << r.body;

    // DNS rebinding: the right token would not be there, but the Host is refused first anyway.
    for (const std::string& host :
         {"evil.example:" + std::to_string(admin_port_), std::string("evil.example"),
          std::string("127.0.0.1.nip.io"), std::string("")}) {
        r = ask("GET", "/status", {{"Host", host}, admin_authorization()});
        EXPECT_EQ(r.status, 421) << host << ": " << r.body;
        EXPECT_FALSE(contains(r.body, "\"vassals\"")) << r.body;
    }

    // A cross-site POST carries Origin; even with the token it changes nothing.
    const json generation = vassal("app")["generation"];
    r = ask("POST", "/reload",
            {{"Host", here}, admin_authorization(), {"Origin", "http://evil.example"}});
    EXPECT_EQ(r.status, 403) << r.body;
    r = ask("POST", "/vassals/app/stop",
            {{"Host", here}, admin_authorization(), {"Origin", "http://" + here}});
    EXPECT_EQ(r.status, 403) << r.body;
    EXPECT_EQ(vassal("app")["generation"], generation);
    EXPECT_EQ(vassal("app")["state"], "running");
    // A read with an Origin is no state change.
    r = ask("GET", "/status", {{"Host", here}, admin_authorization(), {"Origin", "http://x"}});
    EXPECT_EQ(r.status, 200) << r.body;
    r = ask("POST", "/vassals/app/reload", {{"Host", here}, admin_authorization()});
    EXPECT_EQ(r.status, 200) << r.body;

    // The commands read the same file: from LIEGE_ADMIN_TOKEN_FILE (set by the fixture), from
    // --admin-token-file, and say what is missing without either.
    Cli c = run_cli({"status", "--json", "--admin", admin_text_});
    ASSERT_EQ(c.exit_code, 0) << c.err;
    EXPECT_EQ(json::parse(c.out)["vassals"][0]["name"], "app");
    c = run_cli(
        {"reload", "app", "--admin", admin_text_, "--admin-token-file", admin_token_file_.string()},
        kStart, {"LIEGE_ADMIN_TOKEN_FILE="});
    EXPECT_EQ(c.exit_code, 0) << c.err;
    c = run_cli({"status", "--admin", admin_text_}, kStart, {"LIEGE_ADMIN_TOKEN_FILE="});
    EXPECT_EQ(c.exit_code, 1);
    EXPECT_TRUE(contains(c.err, "the admin API at " + admin_text_ + " needs a token")) << c.err;
    EXPECT_TRUE(contains(c.err, "--admin-token-file")) << c.err;
    const fs::path open_file = root_ / "open.token";
    write_file(open_file, admin_token_ + "\n");
    fs::permissions(open_file, fs::perms::owner_read | fs::perms::owner_write |
                                   fs::perms::group_read | fs::perms::others_read);
    c = run_cli({"stop", "app", "--admin", admin_text_, "--admin-token-file", open_file.string()});
    EXPECT_EQ(c.exit_code, 1);
    EXPECT_TRUE(contains(c.err, "chmod 600 " + open_file.string())) << c.err;
    EXPECT_EQ(vassal("app")["state"], "running");
}

TEST_F(Admin, ATcpAdminAddressWithoutAGoodTokenFileIsRefusedAtStart) {
    const std::vector<std::string> base = {
        "run", "--vassals", vassals_.string(), "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"};
    Cli c = run_cli(base);
    EXPECT_NE(c.exit_code, 0);
    EXPECT_TRUE(contains(c.err, "--admin 127.0.0.1:0 is a TCP address, which needs "
                                "--admin-token-file FILE"))
        << c.err;
    EXPECT_FALSE(contains(c.err, "admin API on")) << c.err;

    const fs::path loose = root_ / "loose.token";
    write_file(loose, admin_token_ + "\n");
    fs::permissions(loose, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
    auto with = [&](const fs::path& file) {
        auto args = base;
        args.push_back("--admin-token-file");
        args.push_back(file.string());
        return run_cli(args);
    };
    c = with(loose);
    EXPECT_NE(c.exit_code, 0);
    EXPECT_TRUE(contains(c.err, "admin token file " + loose.string() +
                                    ": mode 0640 lets its group or others at it; chmod 600"))
        << c.err;
    c = with(root_ / "missing.token");
    EXPECT_NE(c.exit_code, 0);
    EXPECT_TRUE(contains(c.err, "missing.token: No such file or directory")) << c.err;
    const fs::path shorty = root_ / "short.token";
    write_file(shorty, "abc\n");
    fs::permissions(shorty, fs::perms::owner_read | fs::perms::owner_write);
    c = with(shorty);
    EXPECT_NE(c.exit_code, 0);
    EXPECT_TRUE(contains(c.err, "at least 16 characters")) << c.err;
}

TEST_F(Admin, StatusAndTopOverTheUnixSocket) {
    const fs::path sock = root_ / "liege.sock";
    // A stale socket file from a liege that died: bound, never unlinked, nobody listening.
    {
        int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un sun{};
        sun.sun_family = AF_UNIX;
        std::strncpy(sun.sun_path, sock.c_str(), sizeof(sun.sun_path) - 1);
        ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)), 0);
        ::close(fd);
        ASSERT_TRUE(fs::is_socket(sock));
    }
    write_vassal("app", backend_vassal(2));
    start({}, "unix:" + sock.string());
    const std::string admin = "unix:" + sock.string();
    ASSERT_TRUE(poll_until(
        [&] {
            Cli c = run_cli({"status", "--json", "--admin", admin});
            if (c.exit_code != 0) {
                return false;
            }
            json s = json::parse(c.out);
            return s["vassals"].size() == 1 && s["vassals"][0]["workers_ready"] == 2;
        },
        kStart, 100ms));

    // A second emperor on the same admin socket refuses to start, and leaves the socket alone.
    Cli second = run_cli(
        {"run", "--vassals", vassals_.string(), "--listen", "127.0.0.1:0", "--admin", admin});
    EXPECT_EQ(second.exit_code, 1);
    EXPECT_TRUE(contains(second.err, "is in use by another process")) << second.err;

    Cli c = run_cli({"status", "--json", "--admin", admin});
    ASSERT_EQ(c.exit_code, 0) << c.err;
    json s = json::parse(c.out);
    EXPECT_EQ(s["emperor"]["admin"], admin);
    EXPECT_EQ(s["vassals"][0]["name"], "app");

    c = run_cli({"status", "--admin", admin});
    ASSERT_EQ(c.exit_code, 0) << c.err;
    EXPECT_EQ(c.out.find('\033'), std::string::npos) << "no colour into a pipe";
    EXPECT_TRUE(contains(c.out, "VASSAL  STATE    GEN  WORKERS  REQUESTS  REQ/S  ERRORS  "
                                "RESTARTS"))
        << c.out;
    EXPECT_TRUE(contains(c.out, "\napp     running    1      2/2 ")) << c.out;
    EXPECT_TRUE(contains(c.out, "emperor pid " + std::to_string(emperor_->pid()))) << c.out;

    // top: a table a second until interrupted.
    Process top({LIEGE_BINARY, "top", "--admin", admin});
    EXPECT_TRUE(poll_until([&] { return count_of(top.out().text(), "VASSAL") >= 2; }, kStart))
        << top.describe();
    EXPECT_TRUE(contains(top.out().text(), "\napp     running ")) << top.out().text();
    top.signal(SIGINT);
    auto st = top.wait_exit();
    ASSERT_TRUE(st) << top.describe();
    EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << describe_status(*st);

    // The socket file goes with the emperor.
    stop_emperor();
    EXPECT_FALSE(fs::exists(sock));
}

// ---- logs --------------------------------------------------------------------------------------

TEST_F(Admin, AnAccessLogThatCannotBeOpenedIsTriedAgainAndResumes) {
    const fs::path logs = root_ / "logs";
    // A directory where the vassal's access log goes: opening it fails (EISDIR), as it would
    // with the router out of descriptors or the directory unwritable for a while.
    fs::create_directories(logs / "app.access.log");
    // The router reports the failed open at error level.
    expect_error_line(
        {"[router] router: cannot open access log ", "app.access.log: Is a directory"});
    write_vassal("app", backend_vassal(1, true));
    start({"--log-dir", logs.string()});
    ASSERT_TRUE(wait_serving("app", 1));
    ASSERT_EQ(get("/id?while-broken"), 200) << "a broken access log costs no request";
    // With --log-dir, stderr keeps the warnings and errors, the router's among them.
    EXPECT_TRUE(poll_until([&] {
        return contains(emperor_->err().text(), " error [router] router: cannot open access log");
    })) << emperor_->err().text();

    fs::remove(logs / "app.access.log");
    // Requests go on; once the retry is due, the log opens and records them.
    int n = 0;
    EXPECT_TRUE(poll_until(
        [&] {
            if (get("/id?after=" + std::to_string(n)) == 200) {
                ++n;
            }
            return fs::is_regular_file(logs / "app.access.log") &&
                   contains(slurp(logs / "app.access.log"), "GET /id?after=");
        },
        kStart, 50ms))
        << "the access log never resumed; emperor stderr:\n"
        << emperor_->err().text();
    EXPECT_FALSE(contains(slurp(logs / "app.access.log"), "while-broken"));
}

TEST_F(Admin, LogDirHoldsWorkerLinesAndSigusr1ReopensWithoutLosingOne) {
    const fs::path logs = root_ / "logs";
    write_vassal("app", backend_vassal(2, true));
    start({"--log-dir", logs.string()});
    ASSERT_TRUE(wait_serving("app", 2));
    EXPECT_TRUE(contains(slurp(logs / "emperor.log"), " info admin API on 127.0.0.1:"));
    EXPECT_FALSE(contains(emperor_->err().text(), "admin API on"))
        << "with --log-dir, stderr keeps only warnings and errors";

    ASSERT_EQ(get("/id?first"), 200);
    ASSERT_TRUE(poll_until([&] {
        return contains(slurp(logs / "app.log"), "request GET /id?first");
    })) << slurp(logs / "app.log");
    // Timestamped and tagged with the worker: "2026-11-25T12:58:10.409 [app/1] listening on ...".
    std::istringstream lines(slurp(logs / "app.log"));
    std::map<std::string, int> tags;
    for (std::string line; std::getline(lines, line);) {
        ASSERT_GT(line.size(), 25u) << line;
        EXPECT_EQ(line[4], '-') << line;
        EXPECT_EQ(line[10], 'T') << line;
        EXPECT_EQ(line.substr(23, 2), " [") << line;
        ++tags[line.substr(25, line.find(']') - 25)];
    }
    EXPECT_GE(tags["app/1"], 1);
    EXPECT_GE(tags["app/2"], 1);
    EXPECT_FALSE(contains(emperor_->err().text(), "[app/1]")) << "worker lines go to the file";

    // logrotate: rename, then SIGUSR1, while requests keep coming.
    std::atomic<bool> stop{false};
    std::atomic<int> sent{0};
    std::thread client([&] {
        while (!stop) {
            int n = sent.load();
            if (get("/id?seq=" + std::to_string(n)) == 200) {
                sent = n + 1;
            }
        }
    });
    EXPECT_TRUE(poll_until([&] { return sent >= 20; }, kStart));
    fs::rename(logs / "app.log", logs / "app.log.1");
    fs::rename(logs / "emperor.log", logs / "emperor.log.1");
    const int before_signal = sent;
    emperor_->signal(SIGUSR1);
    EXPECT_TRUE(poll_until([&] { return fs::exists(logs / "app.log"); }, kStart))
        << "app.log was not reopened";
    EXPECT_TRUE(poll_until([&] { return sent >= before_signal + 20; }, kStart));
    stop = true;
    client.join();
    const int total = sent;
    EXPECT_TRUE(contains(slurp(logs / "emperor.log"), "logs reopened"));

    // Every request's line, exactly once, in one file or the other; later ones in the new file.
    auto all_logged = [&] {
        return contains(slurp(logs / "app.log"),
                        "request GET /id?seq=" + std::to_string(total - 1) + "\n");
    };
    EXPECT_TRUE(poll_until(all_logged)) << slurp(logs / "app.log");
    const std::string old_file = slurp(logs / "app.log.1");
    const std::string new_file = slurp(logs / "app.log");
    for (int i = 0; i < total; ++i) {
        const std::string line = "request GET /id?seq=" + std::to_string(i) + "\n";
        EXPECT_EQ(count_of(old_file, line) + count_of(new_file, line), 1u) << line;
    }
    EXPECT_TRUE(contains(old_file, "request GET /id?seq=0\n"));
    EXPECT_TRUE(contains(new_file, "request GET /id?seq=" + std::to_string(total - 1) + "\n"));
    EXPECT_TRUE(contains(old_file, "request GET /id?first\n"));
}
