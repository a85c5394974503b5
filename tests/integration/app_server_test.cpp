// Real app servers behind liege (issue 10): uWSGI's --http11-socket and gunicorn's sync and
// gthread workers hosting one small WSGI app, and liege-test-backend, as the workers of vassals of
// the real `liege run`. Most such servers serve one request at a time, uWSGI's --http11-socket
// even one connection at a time, and they close idle keep-alive connections on their own; the
// tests pin what a user of them sees through liege: only 200s under a burst and across reloads,
// the first request after an idle spell answered, no healthy worker restarted by its health
// checks, requests held (not refused) while a worker starts or is busy at its `concurrency`, and
// the queue's 503s (full, timed out, vassal failed) with their Retry-After, figures and log
// fields.
//
// The behaviour is the one in issue 10's spec: `concurrency = N` (requests one worker is sent at
// once), `[queue] size` and `timeout`; queue full and queue timeout answer `503` with
// `Retry-After: 1` and the bodies `vassal NAME: queue full (N waiting)` and `vassal NAME: no worker
// was free within TIMEOUT`, a failed vassal `503` with `Retry-After: 10` and `vassal NAME failed:
// LAST_ERROR`; /status gains `queued` and `concurrency` per vassal and `in_flight` per worker,
// /metrics the queue's series, the access log ` qt=`.
//
// Figures the router reports reach /status and /metrics once a second, so every check of one is
// a bounded poll. The fixture is the harness's LiegeRunFixture: its tear-down stops the emperor
// with SIGTERM and asserts exit code 0, that no process of the instance is left (app servers'
// own children included: they inherit the instance's marker), and that it logged no error-level
// line but those a test declares.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <fstream>
#include <functional>
#include <iostream>
#include <latch>
#include <map>
#include <mutex>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <poll.h>

#include <nlohmann/json.hpp>

#include "harness.hpp"

using namespace liege::test;
using nlohmann::json;

namespace {

// The WSGI app every app server hosts. Plain WSGI rather than Flask, so it starts fast; it sets
// Content-Length on every response, without which uWSGI's --http11-socket cannot keep a
// connection alive. `/` and `/slow?ms=N` answer `pid=P inside=K`, K being how many requests
// were inside the app (this process) when this one came in, itself included: the most a worker
// was sent at once. `/healthz` prints `health check` (to the emperor's log, tagged with the
// worker), so a test can count the checks that reached the app.
constexpr const char* kWsgiApp = R"PY(import os, threading, time, urllib.parse

lock = threading.Lock()
inside = 0


def application(environ, start_response):
    global inside
    path = environ.get("PATH_INFO", "/")
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    status, body = "200 OK", ""
    if path == "/healthz":
        print("health check", flush=True)
        body = "ok"
    elif path == "/env":
        name = query.get("name", [""])[0]
        if name in os.environ:
            body = os.environ[name]
        else:
            status, body = "404 Not Found", "no variable " + name
    elif path in ("/", "/slow"):
        with lock:
            inside += 1
            now = inside
        try:
            time.sleep(int(query.get("ms", ["0"])[0]) / 1000)
        finally:
            with lock:
                inside -= 1
        body = "pid=%d inside=%d" % (os.getpid(), now)
    else:
        status, body = "404 Not Found", "no such path " + path
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
)PY";

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

std::string without_newline(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) {
        s.pop_back();
    }
    return s;
}

// The body of one of the router's 503s: the spec has it one line, `message`. Checked in two
// steps, so a failure says whether the message is wrong or only the shape of the body.
void expect_body_says(const Response& r, const std::string& message) {
    std::vector<std::string> lines;
    std::istringstream in(r.body);
    for (std::string line; std::getline(in, line);) {
        lines.push_back(line);
    }
    EXPECT_TRUE(std::find(lines.begin(), lines.end(), message) != lines.end())
        << "no line of the body is `" << message << "`:\n"
        << r.body;
    EXPECT_EQ(without_newline(r.body), message) << "the body is to be that one line";
}

long elapsed_ms(Clock::time_point since) {
    return static_cast<long>(std::chrono::duration_cast<Millis>(Clock::now() - since).count());
}

// `inside=K` from the app's answer, or -1.
int inside_of(const std::string& body) {
    auto at = body.find("inside=");
    return at == std::string::npos ? -1 : std::atoi(body.c_str() + at + 7);
}

// The value of `series` (its name and labels exactly as exposed) in Prometheus text, or nullopt.
std::optional<double> sample(const std::string& text, const std::string& series) {
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        if (line.size() > series.size() && line.starts_with(series) && line[series.size()] == ' ') {
            return std::stod(line.substr(series.size() + 1));
        }
    }
    return std::nullopt;
}

// The peer ports of the established TCP connections whose local end is 127.0.0.1:`port` (the
// worker's side of each connection to it), from /proc/net/tcp. The kernel writes that file a
// bucket at a time while connections come and go, so one reading may list a connection twice,
// or one that closed beside the one that replaced it: see coexisting().
std::set<unsigned> peers_of(uint16_t port) {
    std::ifstream in("/proc/net/tcp");
    std::string line;
    std::getline(in, line); // the header
    std::set<unsigned> peers;
    while (std::getline(in, line)) {
        unsigned local_port = 0;
        unsigned peer_port = 0;
        unsigned state = 0;
        // "  12: 0100007F:1F90 0100007F:D2A4 01 ...": 01 is ESTABLISHED.
        if (std::sscanf(line.c_str(), " %*d: %*8X:%4X %*8X:%4X %2X", &local_port, &peer_port,
                        &state) == 3 &&
            local_port == port && state == 0x01) {
            peers.insert(peer_port);
        }
    }
    return peers;
}

// How many of the connections to `port` in `before` are still there: a connection in two
// readings was open throughout the time between them, so these were all open at one moment.
std::size_t coexisting(const std::set<unsigned>& before, const std::set<unsigned>& now) {
    return static_cast<std::size_t>(std::count_if(
        now.begin(), now.end(), [&](unsigned peer) { return before.count(peer) == 1; }));
}

// ---- load --------------------------------------------------------------------------------------

// ---- the fixture -------------------------------------------------------------------------------

class AppServer : public LiegeRunFixture {
protected:
    void SetUp() override {
        LiegeRunFixture::SetUp();
        // Beside the vassal files, where a vassal's command runs (its cwd defaults to ".").
        write_file(vassals_ / "app.py", kWsgiApp);
    }

    void TearDown() override {
        release(); // a test that failed while holding a worker must not hold up the shutdown
        LiegeRunFixture::TearDown();
    }

    void start(std::vector<std::string> extra = {}, int threads = 1) {
        start_liege({std::move(extra), "127.0.0.1:0", threads});
    }

    // `command = [...]` for liege-test-backend on ${PORT}, answering /id with NAME-WORKER.
    static std::string backend_command(const std::vector<std::string>& more = {}) {
        std::vector<std::string> argv = {LIEGE_TEST_BACKEND, "--listen", "127.0.0.1:${PORT}",
                                         "--name", "${NAME}-${WORKER}"};
        argv.insert(argv.end(), more.begin(), more.end());
        return "command = " + toml_array(argv) + "\n";
    }

    // `workers` ready and a 200 for GET `target` through the router (a route reaches the
    // router a moment after the emperor reports a worker ready).
    bool wait_serving(const std::string& name, int workers, const std::string& target) const {
        json v = wait_vassal(name, [&](const json& j) {
            // A file rejected at its first load starts nothing: no use waiting.
            const bool rejected = j.value("generation", 0) == 0 && j["last_error"].is_string();
            return rejected || (j["state"] == "running" && j["workers_ready"] == workers);
        });
        if (v.is_null() || v["state"] != "running") {
            ADD_FAILURE() << "vassal " << name << " not running with " << workers
                          << " ready worker(s): " << (v.is_null() ? "no entry" : v.dump(2));
            return false;
        }
        return poll_until(
            [&] {
                auto r = get(target);
                return r && r->status == 200;
            },
            kStart, 20ms);
    }

    // One GET on its own connection; nullopt when it failed at the HTTP level (`error` says how).
    std::optional<Response> get(const std::string& target, std::string* error = nullptr,
                                const std::string& host = "app.test",
                                Millis timeout = kWait) const {
        return get_once(host, target, error, timeout);
    }

    std::string metrics() const {
        try {
            return admin("GET", "/metrics").body;
        } catch (const HttpError&) {
            return {};
        }
    }

    // What the workers of vassal `app` print: in the emperor's log, or with --log-dir in
    // app.log.
    std::string worker_log() const {
        return log_dir_.empty() ? log() : slurp(log_dir_ / "app.log");
    }
    bool wait_worker_line(const std::string& needle, Millis timeout = kWait) const {
        return poll_until([&] { return contains(worker_log(), needle); }, timeout, 20ms);
    }

    // The target of a request that liege-test-backend holds until release() is called.
    std::string held_target() const { return "/until?file=" + (root_ / "release").string(); }
    void release() const { write_file(root_ / "release", ""); }

    // Sends the held request on `holder` to the only worker of `app` (liege-test-backend with
    // --log-requests, concurrency 1), and once it is there `target` on `waiting`, which has to
    // wait for that worker's one slot. Returns once /status reports it queued. Use with
    // ASSERT_NO_FATAL_FAILURE.
    void hold_worker_and_queue(std::optional<HttpClient>& holder,
                               std::optional<HttpClient>& waiting, const std::string& target) {
        holder.emplace(port_);
        holder->send(build_request("GET", held_target(), {{"Host", "app.test"}}));
        ASSERT_TRUE(wait_worker_line("[app/1] request GET /until?file="))
            << "the worker never got the held request";
        waiting.emplace(port_);
        waiting->send(build_request("GET", target, {{"Host", "app.test"}}));
        json v = wait_vassal("app", [](const json& j) { return j.value("queued", -1) == 1; });
        ASSERT_EQ(v.value("queued", -1), 1)
            << "GET " << target << " never reported waiting: " << v.dump(2) << "\n"
            << waiting_state(*waiting);
    }

    // Lets the held request go and checks that it was answered.
    void release_holder(HttpClient& holder) const {
        release();
        try {
            Response r = holder.read_response(kStart);
            EXPECT_EQ(r.status, 200) << r.body;
        } catch (const HttpError& e) {
            ADD_FAILURE() << "the held request: " << e.what();
        }
    }

    // Lets the held request go; then the worker serves a next request, and `never` (a request
    // that was rejected or left the queue) never reached it: the worker logs each request as
    // it reads it, and it reads them in the order the router sends them, so once the next one
    // is logged, `never` had its chance to be.
    void expect_next_served_but_not(HttpClient& holder, const std::string& never) {
        release_holder(holder);
        EXPECT_TRUE(poll_until([&] {
            auto next = get("/id?next");
            return next && next->status == 200;
        }));
        EXPECT_TRUE(wait_worker_line("[app/1] request GET /id?next"));
        EXPECT_EQ(count_of(worker_log(), "request GET " + never), 0u);
    }

    // Nothing has arrived on `c` so far: no byte, no close.
    static bool nothing_arrived(HttpClient& c) {
        pollfd p{c.fd(), POLLIN, 0};
        return c.pending().empty() && ::poll(&p, 1, 0) == 0;
    }

    // What a waiting client has received so far, for failure messages.
    static std::string waiting_state(HttpClient& c) {
        if (nothing_arrived(c)) {
            return "it has received nothing";
        }
        auto r = c.try_read_response(1s);
        return r ? "it got " + std::to_string(r->status) + ": " + r->body.substr(0, 200)
                 : "its connection was closed";
    }
};

// ---- every kind of app server ------------------------------------------------------------------

// One app server as vassals run it, and what the tests send it.
struct Kind {
    std::string name; // the test's name suffix
    std::vector<std::string> argv;
    int concurrency = 0; // 0: the key is left out, which means no limit
    std::string fast;    // a fast 200
    std::string slow;    // a slower 200
    std::string health_path;
    std::string health_line; // what a worker logs when a health check reaches it
    bool logs_requests = false;
};

// gtest names a parameter in its messages by this.
void PrintTo(const Kind& kind, std::ostream* os) {
    *os << kind.name;
}

const std::vector<std::string> kUwsgi = {"uwsgi",           "--plugin",          "python3",
                                         "--http11-socket", "127.0.0.1:${PORT}", "--wsgi-file",
                                         "app.py",          "--disable-logging"};

std::vector<Kind> kinds() {
    return {
        // One process, one connection at a time: the server the issue was found with. SIGTERM
        // (liege's stop signal) makes a uWSGI without --master exit at once.
        {"UwsgiHttp11Concurrency1", kUwsgi, 1, "/", "/slow?ms=10", "/healthz", "health check"},
        // Two threads, a 2 s keep-alive, one worker process.
        {"GunicornGthreadConcurrency2",
         {"gunicorn", "-k", "gthread", "--threads", "2", "-b", "127.0.0.1:${PORT}",
          "app:application"},
         2,
         "/",
         "/slow?ms=10",
         "/healthz",
         "health check"},
        // One request at a time, `Connection: close` on every response.
        {"GunicornSyncConcurrency1",
         {"gunicorn", "-b", "127.0.0.1:${PORT}", "app:application"},
         1,
         "/",
         "/slow?ms=10",
         "/healthz",
         "health check"},
        // No limit; closes a connection whose next request comes after 2 s idle (see
        // --idle-timeout in tests/backend/main.cpp) without a word, announcing no timeout.
        {"TestBackendNoLimit",
         {LIEGE_TEST_BACKEND, "--listen", "127.0.0.1:${PORT}", "--name", "${NAME}-${WORKER}",
          "--idle-timeout", "2000"},
         0,
         "/id",
         "/slow?ms=10",
         "/status?code=200",
         "request GET /status?code=200",
         true},
    };
}

class AppServerKind : public AppServer, public ::testing::WithParamInterface<Kind> {
protected:
    // The vassal `app`: two workers of this kind of server, GREETING = `greeting`, health
    // checks every 500 ms (three failed ones restart a worker, so a test sees a wrong restart
    // within seconds), reloads with `strategy`. `log_requests`: liege-test-backend logs every
    // request (for counting its health checks; too much under sustained load).
    std::string app_vassal(const std::string& greeting, const std::string& strategy = "rolling",
                           bool log_requests = false) const {
        const Kind& k = GetParam();
        std::vector<std::string> argv = k.argv;
        if (k.logs_requests && log_requests) {
            argv.push_back("--log-requests");
        }
        std::string text = kAnyHost + "command = " + toml_array(argv) + "\nworkers = 2\n";
        if (k.concurrency > 0) {
            text += "concurrency = " + std::to_string(k.concurrency) + "\n";
        }
        return text + "env = { GREETING = '" + greeting + "', PYTHONDONTWRITEBYTECODE = '1' }\n" +
               "[health]\npath = '" + k.health_path +
               "'\ninterval = '500ms'\ntimeout = '1s'\n"
               "[reload]\nstrategy = '" +
               strategy + "'\ndrain_timeout = '10s'\n";
    }

    void start_app(const std::string& greeting, bool log_requests = false) {
        write_vassal("app", app_vassal(greeting, "rolling", log_requests));
        ASSERT_NO_FATAL_FAILURE(start());
        ASSERT_TRUE(wait_serving("app", 2, GetParam().fast)) << "the app never served";
    }

    // Every worker's pid in /status, by worker id.
    std::map<int, pid_t> worker_pids() const {
        std::map<int, pid_t> out;
        for (const auto& w : vassal("app").value("workers", json::array())) {
            out[w.value("id", 0)] = w.value("pid", pid_t{0});
        }
        return out;
    }

    // No worker restarted: the vassal's and every worker's `restarts` are 0.
    void expect_no_restarts() const {
        json v = vassal("app");
        ASSERT_FALSE(v.is_null());
        EXPECT_EQ(v.value("restarts", -1), 0) << v.dump(2);
        for (const auto& w : v["workers"]) {
            EXPECT_EQ(w.value("restarts", -1), 0) << w.dump(2);
        }
    }

    std::vector<std::string> load_targets() const { return {GetParam().fast, GetParam().slow}; }
};

TEST_P(AppServerKind, BurstAndRequestsAfterAnIdleSpellAllSucceedAndNoWorkerRestarts) {
    const Kind& k = GetParam();
    ASSERT_NO_FATAL_FAILURE(start_app("v1", true));
    const auto pids = worker_pids();
    ASSERT_EQ(pids.size(), 2u);

    // 50 keep-alive clients at once, 4 requests each: every one a 200.
    {
        LoadClients burst(port_, 50, load_targets(), {.per_client = 4});
        EXPECT_TRUE(burst.wait_finished()) << "the burst did not end within " << kStart.count()
                                           << " ms: " << burst.done() << " of 200 done";
        burst.stop();
        EXPECT_EQ(burst.ok(), 200u) << burst.failed() << " failed:" << burst.failures();
    }

    // Idle for 3 s: past gunicorn's 2 s keep-alive and the test backend's --idle-timeout, and
    // long enough for three health checks of each worker, as many as restart one when they
    // fail. The checks must reach the app: a worker that serves one connection at a time
    // cannot answer them while the router holds an idle connection to it.
    const auto from = mark();
    const auto idle_since = Clock::now();
    // A check is seen in the worker's output, or, for an app that logs each request it serves,
    // counted by the emperor as a line it kept out of the log (health_lines_dropped).
    auto dropped = [&](int worker) {
        for (const auto& w : vassal("app").value("workers", json::array())) {
            if (w.value("id", 0) == worker) {
                return w.value("health_lines_dropped", std::size_t{0});
            }
        }
        return std::size_t{0};
    };
    const std::size_t dropped_before[3] = {0, dropped(1), dropped(2)};
    auto checks = [&](int worker) {
        return count_log("[app/" + std::to_string(worker) + "] " + k.health_line, from) +
               (dropped(worker) - dropped_before[worker]);
    };
    EXPECT_TRUE(poll_until(
        [&] { return Clock::now() - idle_since >= 3s && checks(1) >= 3 && checks(2) >= 3; },
        3s + kWait, 100ms))
        << "health checks answered in " << elapsed_ms(idle_since) << " ms idle: worker 1 "
        << checks(1) << ", worker 2 " << checks(2);

    // One request for each worker (two at once, so each goes to its own worker), on whatever
    // connections the router kept from the burst: both answered on the first try, no backend
    // marked down for a connection the server closed while idle.
    std::optional<Response> first;
    std::optional<Response> second;
    std::string first_error;
    std::string second_error;
    std::thread other([&] { second = get("/slow?ms=300", &second_error); });
    first = get("/slow?ms=300", &first_error);
    other.join();
    ASSERT_TRUE(first) << first_error;
    ASSERT_TRUE(second) << second_error;
    EXPECT_EQ(first->status, 200) << first->body;
    EXPECT_EQ(second->status, 200) << second->body;
    EXPECT_EQ(count_log("down for", from), 0u)
        << "a backend was marked down after the idle spell:\n"
        << log().substr(from);
    if (k.logs_requests) {
        // The backend closes a connection reused after 2 s idle: that is the race shown here.
        EXPECT_GE(count_log("idle timeout: closed a connection", from), 1u)
            << "the router reused no idle connection, so this did not test the race";
    }

    // Nothing restarted a worker: the same processes, and `restarts` 0.
    EXPECT_EQ(worker_pids(), pids);
    expect_no_restarts();
}

TEST_P(AppServerKind, RollingAndBlueGreenReloadsUnderABurstFailNothing) {
    ASSERT_NO_FATAL_FAILURE(start_app("v1"));
    LoadClients load(port_, 50, load_targets(), {});
    ASSERT_TRUE(load.wait_requests(100)) << load.done() << " done:" << load.failures();

    int generation = 1;
    for (const std::string strategy : {"rolling", "bluegreen"}) {
        ++generation;
        const std::string gen = std::to_string(generation);
        const auto from = mark();
        write_vassal("app", app_vassal("v" + gen, strategy));
        EXPECT_TRUE(
            wait_log("vassal app: " + strategy + " reload to generation " + gen, kStart, from));
        ASSERT_TRUE(wait_log("vassal app: generation " + gen + " serving", kStart, from))
            << "the " << strategy << " reload to generation " << gen << " never finished";
        ASSERT_TRUE(load.wait_requests(100))
            << "the load stalled after the " << strategy << " reload:" << load.failures();
    }
    load.stop();
    EXPECT_EQ(load.failed(), 0u) << "of " << load.done() << ":" << load.failures();
    std::cout << "[          ] " << load.done() << " requests during two reloads\n";

    // The last release answers, both of its workers hold its environment, and none of them was
    // restarted.
    std::set<std::string> greetings;
    for (int i = 0; i < 4; ++i) {
        std::string error;
        auto r = get("/env?name=GREETING", &error);
        ASSERT_TRUE(r) << error;
        EXPECT_EQ(r->status, 200) << r->body;
        greetings.insert(r->body);
    }
    EXPECT_EQ(greetings, (std::set<std::string>{"v3"}));
    // The old generations drain and go; the two workers left are the last release's.
    json v = wait_vassal("app", [](const json& j) {
        const json& ws = j["workers"];
        return ws.size() == 2 && std::all_of(ws.begin(), ws.end(), [](const json& w) {
                   return w.value("generation", 0) == 3 && w["state"] == "ready";
               });
    });
    EXPECT_EQ(v.value("generation", 0), 3) << v.dump(2);
    ASSERT_EQ(v.value("workers", json::array()).size(), 2u) << v.dump(2);
    for (const auto& w : v["workers"]) {
        EXPECT_EQ(environ_of(w.value("pid", pid_t{0}))["GREETING"], "v3") << w.dump();
    }
    expect_no_restarts();
}

INSTANTIATE_TEST_SUITE_P(AppServers, AppServerKind, ::testing::ValuesIn(kinds()),
                         [](const ::testing::TestParamInfo<Kind>& kind) {
                             return kind.param.name;
                         });

// ---- holding requests --------------------------------------------------------------------------

TEST_F(AppServer, RequestSentWhileTheOnlyWorkerStartsGets200OnceItIsReady) {
    // At `liege run` start-up one vassal is ready at once, the other a moment behind: its only
    // worker binds its port 2 s after it starts.
    write_vassal("early", backend_command() + "hosts = ['early.test']\n");
    write_vassal("late", "command = " +
                             toml_array({"sh", "-c",
                                         "sleep 2; exec " + std::string(LIEGE_TEST_BACKEND) +
                                             " --listen 127.0.0.1:${PORT} --name ${NAME}-1"}) +
                             "\nhosts = ['late.test']\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(poll_until(
        [&] {
            auto r = get("/id", nullptr, "early.test");
            return r && r->status == 200;
        },
        kStart, 20ms));

    // The first answer that is not the router's 404 (its route may not have arrived yet) must
    // be the worker's 200, however long it takes to come up, and it must have been asked for
    // before the worker was ready.
    std::size_t asked_at = 0;
    std::optional<Response> r;
    std::string error;
    ASSERT_TRUE(poll_until(
        [&] {
            asked_at = mark();
            r = get("/id", &error, "late.test", kStart);
            return !r || r->status != 404;
        },
        kStart, 20ms))
        << "the late vassal never had a route";
    ASSERT_TRUE(r) << error;
    EXPECT_EQ(r->status, 200) << r->reason << ": " << r->body;
    EXPECT_EQ(r->body, "late-1");
    EXPECT_TRUE(wait_log("vassal late: worker 1 ready in ", kWait, asked_at))
        << "the request was sent after the worker was ready, so it proves nothing";
}

TEST_F(AppServer, TraceReachesOnlyAVassalThatAllowsIt) {
    write_vassal("closed", backend_command() + "hosts = ['closed.test']\n");
    write_vassal("open", backend_command() + "hosts = ['open.test']\n[upstream]\ntrace = true\n");
    ASSERT_NO_FATAL_FAILURE(start());
    for (const char* host : {"closed.test", "open.test"}) {
        ASSERT_TRUE(poll_until(
            [&] {
                auto r = get_once(host, "/id");
                return r && r->status == 200;
            },
            kStart, 20ms))
            << host;
    }
    HttpClient c(port_);
    Response r = c.request("TRACE", "/headers", {{"Host", "closed.test"}});
    EXPECT_EQ(r.status, 405) << r.body;
    EXPECT_FALSE(r.header("X-Backend")) << "refused by the router, not forwarded";
    HttpClient o(port_);
    r = o.request("TRACE", "/headers", {{"Host", "open.test"}});
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_TRUE(r.body.starts_with("TRACE /headers HTTP/1.1\r\n")) << r.body;
}

TEST_F(AppServer, HealthChecksStayOutOfTheVassalLog) {
    // python's http.server logs every request it serves on stderr; the health checks, every
    // 100 ms here, must not fill the vassal's log, while a real request's line still shows.
    write_vassal("app", kAnyHost +
                            "command = ['python3', '-m', 'http.server', '--bind', '127.0.0.1', "
                            "'${PORT}']\n[health]\npath = '/'\ninterval = '100ms'\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_serving("app", 1, "/?first"));
    const auto checks_from = mark();
    // Ten liveness checks whose lines the emperor kept out of the log.
    json v = wait_vassal("app", [](const json& j) {
        return j["workers"].size() == 1 && j["workers"][0].value("health_lines_dropped", 0) >= 10;
    });
    ASSERT_GE(v["workers"][0].value("health_lines_dropped", 0), 10) << v.dump(2);
    auto r = get("/?real");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    ASSERT_TRUE(wait_worker_line("\"GET /?real HTTP/1.1\" 200"));
    const std::string after = worker_log().substr(checks_from);
    EXPECT_EQ(count_of(after, "\"GET / HTTP/1.1\""), 0u) << after;
}

TEST_F(AppServer, FullQueueRejectsAtOnceWith503AndRetryAfter) {
    write_vassal("app", kAnyHost + backend_command({"--log-requests"}) +
                            "concurrency = 1\n[queue]\nsize = 1\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_serving("app", 1, "/id"));
    std::optional<HttpClient> holder;
    std::optional<HttpClient> waiting;
    ASSERT_NO_FATAL_FAILURE(hold_worker_and_queue(holder, waiting, "/id?waited"));
    json v = vassal("app");
    EXPECT_EQ(v.value("concurrency", -1), 1) << v.dump(2);
    ASSERT_EQ(v["workers"].size(), 1u);
    EXPECT_EQ(v["workers"][0].value("in_flight", -1), 1) << v.dump(2);

    // A third request finds the one place taken: 503 at once, while the worker is still held.
    const auto asked = Clock::now();
    std::string error;
    auto r = get("/id?rejected", &error);
    ASSERT_TRUE(r) << error;
    EXPECT_EQ(r->status, 503) << r->body;
    EXPECT_LT(elapsed_ms(asked), 3000) << "not at once";
    EXPECT_EQ(r->header("Retry-After"), "1");
    expect_body_says(*r, "vassal app: queue full (1 waiting)");
    EXPECT_FALSE(r->header("X-Backend")) << "no worker may answer it";
    EXPECT_TRUE(nothing_arrived(*waiting))
        << "the waiting request is no longer waiting: " << waiting_state(*waiting);

    // Freed, the worker answers the one that waited; the rejected one never reached it.
    release_holder(*holder);
    Response served = waiting->read_response(kStart);
    EXPECT_EQ(served.status, 200) << served.body;
    EXPECT_EQ(served.body, "app-1");
    EXPECT_TRUE(wait_worker_line("[app/1] request GET /id?waited"));
    EXPECT_EQ(count_of(worker_log(), "request GET /id?rejected"), 0u);
}

TEST_F(AppServer, RequestWaitingLongerThanTheQueueTimeoutGets503) {
    write_vassal("app", kAnyHost + backend_command({"--log-requests"}) +
                            "concurrency = 1\n[queue]\ntimeout = '500ms'\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_serving("app", 1, "/id"));
    HttpClient holder(port_);
    holder.send(build_request("GET", held_target(), {{"Host", "app.test"}}));
    ASSERT_TRUE(wait_worker_line("[app/1] request GET /until?file="));

    const auto asked = Clock::now();
    std::string error;
    auto r = get("/id?late", &error);
    const long took = elapsed_ms(asked);
    ASSERT_TRUE(r) << error;
    EXPECT_EQ(r->status, 503) << r->body;
    EXPECT_GE(took, 450) << "answered before the queue timeout";
    EXPECT_LT(took, 5000) << "the queue timeout is 500 ms";
    EXPECT_EQ(r->header("Retry-After"), "1");
    expect_body_says(*r, "vassal app: no worker was free within 500ms");

    // The worker, once free, serves the next request; the timed-out one never reached it.
    expect_next_served_but_not(holder, "/id?late");
}

TEST_F(AppServer, FailedVassalGetsAnImmediate503NamingItsError) {
    expect_error_line({"vassal crash: worker 1 (pid ", ") exited unexpectedly: exit code 3"});
    write_vassal("crash", "command = ['sh', '-c', 'echo cannot start >&2; exit 3']\n"
                          "hosts = ['crash.test']\n");
    ASSERT_NO_FATAL_FAILURE(start());
    // Five exits in a row (100 to 800 ms of backoff between them) make the vassal failed.
    json v = wait_vassal("crash", [](const json& j) { return j["state"] == "failed"; });
    ASSERT_EQ(v.value("state", ""), "failed") << v.dump(2);
    ASSERT_TRUE(v["last_error"].is_string()) << v.dump(2);
    const std::string last_error = v["last_error"];
    EXPECT_TRUE(contains(last_error, "exit code 3")) << last_error;

    const auto asked = Clock::now();
    std::string error;
    auto r = get("/", &error, "crash.test");
    ASSERT_TRUE(r) << error;
    EXPECT_EQ(r->status, 503) << r->body;
    EXPECT_LT(elapsed_ms(asked), 3000) << "a failed vassal's request does not wait";
    EXPECT_EQ(r->header("Retry-After"), "10");
    expect_body_says(*r, "vassal crash failed: " + last_error);
    std::string m;
    EXPECT_TRUE(poll_until(
        [&] {
            m = metrics();
            return sample(m, R"(liege_requests_rejected_total{vassal="crash",reason="failed"})") ==
                   1.0;
        },
        kWait, 100ms))
        << m;
}

TEST_F(AppServer, RefusalWarningsAreOneSummaryLinePerVassalPerSecond) {
    expect_error_line({"vassal crash: worker 1 (pid ", ") exited unexpectedly: exit code 3"});
    write_vassal("crash", "command = ['sh', '-c', 'exit 3']\nhosts = ['crash.test']\n");
    // With --log-dir, stderr keeps the warnings: that is where a flood of them would land.
    ASSERT_NO_FATAL_FAILURE(start({"--log-dir", (root_ / "logs").string()}));
    json v = wait_vassal("crash", [](const json& j) { return j["state"] == "failed"; });
    ASSERT_EQ(v.value("state", ""), "failed") << v.dump(2);

    const std::size_t from = emperor_->err().text().size();
    constexpr int kRequests = 40;
    const auto began = Clock::now();
    for (int i = 0; i < kRequests; ++i) {
        std::string error;
        auto r = get("/?n=" + std::to_string(i), &error, "crash.test");
        ASSERT_TRUE(r) << error;
        ASSERT_EQ(r->status, 503) << r->body;
    }
    const long took = elapsed_ms(began);

    // Every refusal is in stderr, the first of a quiet second as its own line, the others in
    // the summary of their second; once each second's summary is out, they add up.
    std::vector<std::string> lines;
    uint64_t told = 0;
    const std::regex summary(R"(vassal crash: (\d+) more requests? refused in the last [^(]+ )"
                             R"(\(vassal failed: (\d+)\); last: 503 Service Unavailable for )");
    bool complete = poll_until(
        [&] {
            lines.clear();
            told = 0;
            std::istringstream in(emperor_->err().text().substr(from));
            for (std::string line; std::getline(in, line);) {
                if (!contains(line, "503 Service Unavailable for")) {
                    continue;
                }
                lines.push_back(line);
                std::smatch m;
                if (std::regex_search(line, m, summary)) {
                    told += std::stoull(m[1]);
                    EXPECT_EQ(m[1], m[2]) << line;
                } else {
                    ++told;
                    EXPECT_TRUE(contains(line, "\"GET /?n=")) << line;
                }
            }
            return told >= kRequests;
        },
        kWait, 50ms);
    EXPECT_TRUE(complete) << told << " of " << kRequests << " refusals in stderr:\n"
                          << emperor_->err().text().substr(from);
    EXPECT_EQ(told, static_cast<uint64_t>(kRequests));
    // At most an immediate line and a summary for each second the requests took.
    const std::size_t bound = 2 * (static_cast<std::size_t>(took) / 1000 + 2);
    EXPECT_LE(lines.size(), std::min<std::size_t>(bound, kRequests - 1))
        << "requests took " << took << " ms:\n"
        << emperor_->err().text().substr(from);
}

TEST_F(AppServer, ClientThatLeavesWhileQueuedIsDroppedFromTheQueue) {
    write_vassal("app", kAnyHost + backend_command({"--log-requests"}) + "concurrency = 1\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_serving("app", 1, "/id"));
    std::optional<HttpClient> holder;
    std::optional<HttpClient> waiting;
    ASSERT_NO_FATAL_FAILURE(hold_worker_and_queue(holder, waiting, "/id?abandoned"));

    // The client goes away; its request leaves the queue while the worker is still held.
    waiting.reset();
    json v = wait_vassal("app", [](const json& j) { return j.value("queued", -1) == 0; });
    EXPECT_EQ(v.value("queued", -1), 0) << v.dump(2);

    // Freed, the worker gets the next request, never the abandoned one.
    expect_next_served_but_not(*holder, "/id?abandoned");
}

// The same with a request body still arriving: the client that leaves halfway through its upload
// is noticed while it waits, not once a worker slot comes.
TEST_F(AppServer, ClientThatLeavesMidBodyWhileQueuedIsDroppedFromTheQueue) {
    // A streamed body: with request buffering (the default here) the request would not queue
    // before it is whole.
    write_vassal("app", kAnyHost + backend_command({"--log-requests"}) +
                            "concurrency = 1\n[upstream]\nrequest_buffering = 'off'\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_serving("app", 1, "/id"));
    HttpClient holder(port_);
    holder.send(build_request("GET", held_target(), {{"Host", "app.test"}}));
    ASSERT_TRUE(wait_worker_line("[app/1] request GET /until?file="));
    std::optional<HttpClient> waiting;
    waiting.emplace(port_);
    waiting->send(
        "POST /id?abandoned HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100000\r\n\r\n" +
        std::string(1000, 'x'));
    json v = wait_vassal("app", [](const json& j) { return j.value("queued", -1) == 1; });
    ASSERT_EQ(v.value("queued", -1), 1) << v.dump(2);
    waiting.reset();
    v = wait_vassal("app", [](const json& j) { return j.value("queued", -1) == 0; });
    EXPECT_EQ(v.value("queued", -1), 0) << v.dump(2);
    expect_next_served_but_not(holder, "/id?abandoned");
}

// ---- the limit ---------------------------------------------------------------------------------

TEST_F(AppServer, GunicornWithFourThreadsIsSentNoMoreThanConcurrencyRequestsAtOnce) {
    // gunicorn could run four requests at once here; liege must send it two. Two router threads,
    // so the limit must hold across them.
    write_vassal("app", kAnyHost + "command = " +
                            toml_array({"gunicorn", "-k", "gthread", "--threads", "4", "-b",
                                        "127.0.0.1:${PORT}", "app:application"}) +
                            "\nconcurrency = 2\nenv = { PYTHONDONTWRITEBYTECODE = '1' }\n"
                            // No liveness check during the test: its connection is not the
                            // router's.
                            "[health]\ninterval = '60s'\n");
    ASSERT_NO_FATAL_FAILURE(start({}, 2));
    ASSERT_TRUE(wait_serving("app", 1, "/"));
    json v = vassal("app");
    ASSERT_EQ(v["workers"].size(), 1u) << v.dump(2);
    const std::string address = v["workers"][0].value("address", "");
    const auto worker_port =
        static_cast<uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));

    // 20 clients hammer a slow endpoint; meanwhile the connections to the worker are counted.
    std::atomic<bool> sampling{true};
    std::size_t most_connections = 0;
    std::set<unsigned> every_connection;
    std::thread sampler([&] {
        for (auto before = peers_of(worker_port); sampling;) {
            auto now = peers_of(worker_port);
            most_connections = std::max(most_connections, coexisting(before, now));
            every_connection.insert(now.begin(), now.end());
            before = std::move(now);
            std::this_thread::sleep_for(2ms); // a sampling period, not a wait for anything
        }
    });
    int most_inside = 0;
    {
        LoadClients hammer(port_, 20, {"/slow?ms=50"},
                           {.per_client = 3, .observe = [&](const Response& r) {
                                most_inside = std::max(most_inside, inside_of(r.body));
                            }});
        EXPECT_TRUE(hammer.wait_finished()) << hammer.done() << " of 60 done";
        hammer.stop();
        EXPECT_EQ(hammer.ok(), 60u) << hammer.failed() << " failed:" << hammer.failures();
    }
    sampling = false;
    sampler.join();
    std::cout << "[          ] at most " << most_inside << " requests inside the app, "
              << most_connections << " connections to it at once, " << every_connection.size()
              << " in all for 60 requests\n";
    EXPECT_EQ(most_inside, 2) << "the app was sent more than `concurrency` requests at once "
                                 "(or never two: then the limit is lower than set)";
    // At most `concurrency` connections, and one more while another router thread's idle one
    // is being closed.
    EXPECT_LE(most_connections, 3u);
}

// ---- what the queue shows ----------------------------------------------------------------------

TEST_F(AppServer, MetricsAndAccessLogShowQueueWaitsAndRejections) {
    const auto logs = root_ / "logs";
    write_vassal("app", kAnyHost + backend_command({"--log-requests"}) +
                            "concurrency = 1\n[queue]\nsize = 1\n");
    ASSERT_NO_FATAL_FAILURE(start({"--log-dir", logs.string()}));
    ASSERT_TRUE(wait_serving("app", 1, "/id"));
    std::optional<HttpClient> holder;
    std::optional<HttpClient> waiting;
    ASSERT_NO_FATAL_FAILURE(hold_worker_and_queue(holder, waiting, "/id?waited"));
    std::string m;
    EXPECT_TRUE(poll_until(
        [&] {
            m = metrics();
            return sample(m, R"(liege_queue_length{vassal="app"})") == 1.0;
        },
        kWait, 100ms))
        << m;
    auto rejected = get("/id?rejected");
    ASSERT_TRUE(rejected);
    EXPECT_EQ(rejected->status, 503);

    // The waiting request has waited a second at least (the figures that showed it queued come
    // once a second); now it is served.
    release_holder(*holder);
    Response served = waiting->read_response(kStart);
    EXPECT_EQ(served.status, 200);

    EXPECT_TRUE(poll_until(
        [&] {
            m = metrics();
            return sample(m, R"(liege_queue_wait_seconds_count{vassal="app"})").value_or(0) >= 1 &&
                   sample(m, R"(liege_queue_length{vassal="app"})") == 0.0;
        },
        kWait, 100ms))
        << m;
    EXPECT_TRUE(contains(m, "# TYPE liege_queue_length gauge\n")) << m;
    EXPECT_TRUE(contains(m, "# TYPE liege_queue_wait_seconds histogram\n")) << m;
    EXPECT_EQ(sample(m, R"(liege_requests_rejected_total{vassal="app",reason="queue_full"})"), 1.0)
        << m;
    EXPECT_GE(sample(m, R"(liege_queue_wait_seconds_sum{vassal="app"})").value_or(0), 0.1) << m;
    EXPECT_EQ(sample(m, R"(liege_queue_wait_seconds_bucket{vassal="app",le="+Inf"})"),
              sample(m, R"(liege_queue_wait_seconds_count{vassal="app"})"))
        << m;

    // The access log gives each request's time in the queue after its upstream time.
    const auto access_log = logs / "app.access.log";
    std::string text;
    EXPECT_TRUE(poll_until([&] {
        text = slurp(access_log);
        return contains(text, "GET /id?waited ") && contains(text, "GET /id?rejected ");
    })) << text;
    std::smatch match;
    static const std::regex kWaited(R"(GET /id\?waited [^\n]* 200 [^\n]* urt=\S+ qt=(\d+\.\d+))");
    ASSERT_TRUE(std::regex_search(text, match, kWaited)) << text;
    EXPECT_GE(std::stod(match[1]), 0.1) << match[0];
    static const std::regex kRejected(R"(GET /id\?rejected [^\n]* 503 [^\n]* qt=\d+\.\d+)");
    EXPECT_TRUE(std::regex_search(text, kRejected)) << text;
}

// A request that waits across a blue-green reload is served by the new generation's worker, and
// the access log names that generation, not the one the request first queued for.
TEST_F(AppServer, AccessLogNamesTheGenerationThatServedARequestQueuedAcrossABlueGreenReload) {
    const auto logs = root_ / "logs";
    const auto vassal = [&](const std::string& release) {
        return kAnyHost + backend_command({"--log-requests"}) + "concurrency = 1\nenv = { R = \"" +
               release + "\" }\n[reload]\nstrategy = \"bluegreen\"\n";
    };
    write_vassal("app", vassal("1"));
    ASSERT_NO_FATAL_FAILURE(start({"--log-dir", logs.string()}));
    ASSERT_TRUE(wait_serving("app", 1, "/id"));
    std::optional<HttpClient> holder;
    std::optional<HttpClient> waiting;
    ASSERT_NO_FATAL_FAILURE(hold_worker_and_queue(holder, waiting, "/id?across"));

    const auto from = mark();
    write_vassal("app", vassal("2"));
    ASSERT_TRUE(wait_log("vassal app: generation 2 serving", kStart, from));
    Response served = waiting->read_response(kStart);
    EXPECT_EQ(served.status, 200);
    release_holder(*holder);

    std::string text;
    EXPECT_TRUE(poll_until([&] {
        text = slurp(logs / "app.access.log");
        return contains(text, "GET /id?across ") && contains(text, "GET /until?");
    })) << text;
    static const std::regex kAcross(R"(GET /id\?across [^\n]* 200 [^\n]* gen=(\d+))");
    static const std::regex kHeld(R"(GET /until\?[^\n]* 200 [^\n]* gen=(\d+))");
    std::smatch m;
    ASSERT_TRUE(std::regex_search(text, m, kAcross)) << text;
    EXPECT_EQ(m[1], "2") << m[0];
    ASSERT_TRUE(std::regex_search(text, m, kHeld)) << text;
    EXPECT_EQ(m[1], "1") << m[0];
}

// ---- keep-alive rules (see the top of router/upstream.hpp) -------------------------------------

// The open connections of the only worker of vassal `v` (its /status entry), asked of the worker
// itself (liege-test-backend's /count, on a connection of its own, which is not counted); nullopt
// when it could not be asked.
std::optional<int> worker_open_connections(const json& v) {
    if (v.is_null() || v["workers"].size() != 1) {
        return std::nullopt;
    }
    const std::string address = v["workers"][0].value("address", "");
    const auto colon = address.rfind(':');
    if (colon == std::string::npos) {
        return std::nullopt;
    }
    try {
        HttpClient c(static_cast<uint16_t>(std::stoi(address.substr(colon + 1))));
        Response r = c.request("GET", "/count", {{"Host", "app.test"}, {"Connection", "close"}});
        std::smatch m;
        static const std::regex kOpen(R"(open=(\d+))");
        if (r.status != 200 || !std::regex_search(r.body, m, kOpen)) {
            return std::nullopt;
        }
        return std::stoi(m[1]) - 1;
    } catch (const std::exception&) {
        return std::nullopt;
    }
}

TEST_F(AppServer, IdleConnectionIsClosedBeforeTheBackendsAnnouncedKeepAliveTimeout) {
    // The worker says `Keep-Alive: timeout=2` and drops a connection reused after 2 s idle; the
    // router's own idle timeout for upstream connections stays at its default (30 s).
    write_vassal("app",
                 kAnyHost + backend_command({"--log-requests", "--keep-alive-timeout", "2"}));
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_serving("app", 1, "/id"));
    const auto from = mark();

    auto first = get("/id?first");
    ASSERT_TRUE(first);
    ASSERT_EQ(first->status, 200);
    EXPECT_EQ(first->header("Keep-Alive"), std::nullopt) << "hop-by-hop: not for the client";
    auto second = get("/id?second");
    ASSERT_TRUE(second);
    ASSERT_EQ(second->status, 200);
    EXPECT_EQ(second->header("X-Connection"), first->header("X-Connection"))
        << "a connection idle for less than 3/4 of the timeout is reused";

    // The router closes it at 3/4 of the announced 2 s, so before the worker would drop it.
    const auto idle_since = Clock::now();
    std::optional<int> open;
    EXPECT_TRUE(poll_until(
        [&] {
            open = worker_open_connections(vassal("app"));
            return open == 0;
        },
        1900ms, 20ms))
        << "after " << elapsed_ms(idle_since) << " ms idle the router still holds "
        << open.value_or(-1) << " connection(s) to the worker";
    EXPECT_GE(elapsed_ms(idle_since), 1400) << "closed long before 3/4 of the announced timeout";

    // Past the worker's timeout, a request goes on a new connection, first try.
    EXPECT_TRUE(poll_until([&] { return Clock::now() - idle_since >= 2500ms; }, 3s, 50ms));
    auto third = get("/id?third");
    ASSERT_TRUE(third);
    EXPECT_EQ(third->status, 200);
    EXPECT_NE(third->header("X-Connection"), first->header("X-Connection"));
    EXPECT_EQ(count_log("idle timeout: closed a connection", from), 0u)
        << "the router reused a connection the worker had timed out:\n"
        << log().substr(from);
    EXPECT_EQ(count_log("down for", from), 0u) << log().substr(from);
}

TEST_F(AppServer, NonIdempotentRequestIsNotSentOnAConnectionIdleForMoreThanASecond) {
    // The worker announces no timeout (as most servers) and drops a connection reused after
    // 3 s idle; a POST cannot be retried once sent, so it must not risk that race.
    write_vassal("app", kAnyHost + backend_command({"--log-requests", "--idle-timeout", "3000"}));
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_serving("app", 1, "/id"));

    auto first = get("/id?first");
    ASSERT_TRUE(first);
    ASSERT_EQ(first->status, 200);
    const auto idle_since = Clock::now();
    auto post = [&](const std::string& target) -> std::optional<Response> {
        try {
            HttpClient c(port_);
            return c.request(
                "POST", target,
                {{"Host", "app.test"}, {"Connection", "close"}, {"Content-Length", "4"}}, "data");
        } catch (const HttpError& e) {
            ADD_FAILURE() << "POST " << target << ": " << e.what();
            return std::nullopt;
        }
    };
    // Idle for under a second: a POST may take the pooled connection.
    auto early = post("/echo?early");
    ASSERT_TRUE(early);
    EXPECT_EQ(early->status, 200);
    EXPECT_EQ(early->body, "data");
    EXPECT_EQ(early->header("X-Connection"), first->header("X-Connection"))
        << "a connection idle for " << elapsed_ms(idle_since) << " ms was not reused";

    // Idle for more than a second: it gets a new connection.
    const auto early_at = Clock::now();
    EXPECT_TRUE(poll_until([&] { return Clock::now() - early_at >= 1300ms; }, 2s, 50ms));
    auto late = post("/echo?late");
    ASSERT_TRUE(late);
    EXPECT_EQ(late->status, 200);
    EXPECT_EQ(late->body, "data");
    EXPECT_NE(late->header("X-Connection"), first->header("X-Connection"))
        << "a POST went on a connection idle for 1.3 s";
    EXPECT_EQ(count_log("idle timeout: closed a connection"), 0u) << log();
}

} // namespace
