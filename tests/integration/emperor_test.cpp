// `liege run` as a user sees it: the real binary watching a temporary vassals directory, real
// worker processes (liege-test-backend, or python3 where a test needs socket activation or a
// health path), requests through the public port the emperor binds. Each test pins one rule of
// issue 3 (spawn, routing, add/change/remove, reloads under load, invalid files, failed
// generations, crashed workers and routers, signals, socket activation, health checks, stop).
//
// What the tests look at is what a user can see: responses, the emperor's log (stderr), and
// processes in /proc. Workers are found as the emperor's direct children whose environment
// names their vassal (LIEGE_VASSAL, LIEGE_WORKER, LIEGE_GENERATION); the router is the child
// whose argv[1] is "router". Every wait is a bounded poll; bounds are generous (process starts
// get kStart) because the box running them may be a loaded 2-core one.
//
// The fixture is the harness's LiegeRunFixture: its tear-down stops the emperor with SIGTERM and
// asserts exit code 0, that no process of the instance is left, and that it logged no
// error-level line but those a test declares.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.hpp"

using namespace liege::test;
namespace fs = std::filesystem;

namespace {

using Headers = std::vector<std::pair<std::string, std::string>>;

// ---- TOML text ------------------------------------------------------------------------------

// `command = [...]` running the test backend on ${PORT}, answering GET /id with `name` (which
// may hold placeholders).
std::string backend_command(const std::string& name = "${NAME}-${WORKER}",
                            bool log_requests = false) {
    std::vector<std::string> argv = {LIEGE_TEST_BACKEND, "--listen", "127.0.0.1:${PORT}", "--name",
                                     name};
    if (log_requests) {
        argv.push_back("--log-requests");
    }
    return "command = " + toml_array(argv) + "\n";
}

// A small HTTP app for the vassals that need what the test backend does not do: it serves an
// inherited socket (fd 3, LISTEN_FDS=1) when it gets one and binds ${PORT} otherwise, and its
// /healthz answers 200 only while the file "ready" exists in its working directory and
// "sick-WORKER" does not.
constexpr const char* kPythonApp = R"PY(import http.server, os, socket, sys

worker = os.environ["LIEGE_WORKER"]
name = os.environ["LIEGE_VASSAL"] + "-" + worker
inherited = os.environ.get("LISTEN_FDS") == "1"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/healthz":
            healthy = os.path.exists("ready") and not os.path.exists("sick-" + worker)
            code, body = (200, "ok") if healthy else (503, "not ready")
        elif self.path == "/id":
            code, body = 200, name
        elif self.path == "/activation":
            code, body = 200, "LISTEN_FDS=%s LISTEN_PID=%s pid=%d" % (
                os.environ.get("LISTEN_FDS"), os.environ.get("LISTEN_PID"), os.getpid())
        else:
            code, body = 404, "no such path"
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Backend", name)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        sys.stderr.write("%s\n" % (fmt % args))


class Server(http.server.ThreadingHTTPServer):
    def __init__(self):
        if inherited:
            super().__init__(("127.0.0.1", 0), Handler, bind_and_activate=False)
            self.socket.close()
            self.socket = socket.socket(fileno=3)
        else:
            super().__init__(("127.0.0.1", int(os.environ["PORT"])), Handler)


print("serving", name, "on an inherited socket" if inherited else "on its own port", flush=True)
Server().serve_forever()
)PY";

// ---- /proc ------------------------------------------------------------------------------------

struct WorkerProcess {
    ProcStat proc;
    int slot = 0;
    int generation = 0;
    std::map<std::string, std::string> env;
};

// ---- requests ---------------------------------------------------------------------------------

// One request on a fresh connection; nullopt (with `error` set) when it failed at the HTTP level.
std::optional<Response> try_get(uint16_t port, const std::string& host, const std::string& target,
                                std::string* error = nullptr, Millis timeout = kWait) {
    try {
        HttpClient client(port, timeout);
        return client.request("GET", target, {{"Host", host}}, {}, timeout);
    } catch (const HttpError& e) {
        if (error != nullptr) {
            *error = e.what();
        }
        return std::nullopt;
    }
}

// The X-Backend header (every test app sets it), or "".
std::string backend_of(const Response& r) {
    return r.header("X-Backend").value_or("");
}

// Requests sent continuously through the router on a background thread until stopped. Every
// response must be a 200; anything else (another status, a reset, a timeout) is a failure.
class ClientLoop {
public:
    enum class Connections {
        KeepAlive, // one connection for all requests (a new one only after a failure)
        Fresh,     // a new connection per request
        Alternate, // every other request on a new connection, the rest on one kept alive
    };

    ClientLoop(uint16_t port, std::string host, std::vector<std::string> targets,
               Connections connections)
        : port_(port), host_(std::move(host)), targets_(std::move(targets)),
          connections_(connections) {
        thread_ = std::thread([this] { run(); });
    }
    ClientLoop(const ClientLoop&) = delete;
    ClientLoop& operator=(const ClientLoop&) = delete;
    ~ClientLoop() { stop(); }

    void stop() {
        stop_ = true;
        if (thread_.joinable()) {
            thread_.join();
        }
    }

    uint64_t done() const { return ok_.load() + failed_.load(); }
    uint64_t ok() const { return ok_.load(); }
    uint64_t failed() const { return failed_.load(); }

    // The first failures, one line each.
    std::string failures() const {
        std::lock_guard lock(mutex_);
        std::string out;
        for (const auto& f : failures_) {
            out += "\n  " + f;
        }
        return out;
    }
    // Responses per X-Backend value.
    std::map<std::string, uint64_t> backends() const {
        std::lock_guard lock(mutex_);
        return backends_;
    }
    // Backends that answered since the last call of reset_seen().
    std::set<std::string> seen() const {
        std::lock_guard lock(mutex_);
        return seen_;
    }
    void reset_seen() {
        std::lock_guard lock(mutex_);
        seen_.clear();
    }

    // Runs `fn` on the loop's thread between two requests (so that no request of this loop is
    // in flight while it runs) and waits for it.
    void between_requests(std::function<void()> fn) {
        std::unique_lock lock(mutex_);
        task_ = std::move(fn);
        task_done_.wait_for(lock, kStart, [this] { return !task_; });
    }

    // Waits until at least `n` more requests have completed.
    bool wait_requests(uint64_t n, Millis timeout = kStart) const {
        const uint64_t target = done() + n;
        return poll_until([&] { return done() >= target; }, timeout);
    }

private:
    void run() {
        std::optional<HttpClient> kept;
        std::size_t i = 0;
        while (!stop_) {
            {
                std::unique_lock lock(mutex_);
                if (task_) {
                    task_();
                    task_ = nullptr;
                    task_done_.notify_all();
                }
            }
            const bool reuse = connections_ == Connections::KeepAlive ||
                               (connections_ == Connections::Alternate && i % 2 == 0);
            const std::string& target = targets_[i++ % targets_.size()];
            std::string error;
            try {
                std::optional<HttpClient> fresh;
                if (reuse && !kept) {
                    kept.emplace(port_, kWait);
                } else if (!reuse) {
                    fresh.emplace(port_, kWait);
                }
                HttpClient& client = reuse ? *kept : *fresh;
                Response r = client.request("GET", target, {{"Host", host_}}, {}, kWait);
                if (r.status == 200) {
                    ++ok_;
                    std::lock_guard lock(mutex_);
                    ++backends_[backend_of(r)];
                    seen_.insert(backend_of(r));
                    continue;
                }
                error = "GET " + target + ": status " + std::to_string(r.status) + " " + r.reason +
                        ": " + r.body.substr(0, 200);
            } catch (const HttpError& e) {
                error = "GET " + target + ": " + e.what();
            }
            if (reuse) {
                kept.reset();
            }
            ++failed_;
            std::lock_guard lock(mutex_);
            if (failures_.size() < 20) {
                failures_.push_back(error);
            }
        }
        std::lock_guard lock(mutex_);
        if (task_) { // stopped while a task waited: run it anyway
            task_();
            task_ = nullptr;
            task_done_.notify_all();
        }
    }

    uint16_t port_;
    std::string host_;
    std::vector<std::string> targets_;
    Connections connections_;
    std::atomic<bool> stop_{false};
    std::atomic<uint64_t> ok_{0};
    std::atomic<uint64_t> failed_{0};
    mutable std::mutex mutex_;
    std::condition_variable task_done_;
    std::function<void()> task_;
    std::vector<std::string> failures_;
    std::map<std::string, uint64_t> backends_;
    std::set<std::string> seen_;
    std::thread thread_;
};

// ---- the fixture ------------------------------------------------------------------------------

class LiegeRun : public LiegeRunFixture {
protected:
    // Starts `liege run` and waits for its public port and its router.
    void start(std::vector<std::string> extra = {}) { start_liege({std::move(extra)}); }

    // The emperor's direct children that belong to `vassal`, ordered by worker slot.
    std::vector<WorkerProcess> workers(const std::string& vassal) const {
        std::vector<WorkerProcess> out;
        for (const auto& p : all_processes()) {
            if (p.ppid != emperor_pid() || p.state == 'Z') {
                continue;
            }
            auto env = environ_of(p.pid);
            auto it = env.find("LIEGE_VASSAL");
            if (it == env.end() || it->second != vassal) {
                continue; // the router, or a child between fork and exec
            }
            WorkerProcess w;
            w.proc = p;
            w.slot = std::atoi(env["LIEGE_WORKER"].c_str());
            w.generation = std::atoi(env["LIEGE_GENERATION"].c_str());
            w.env = std::move(env);
            out.push_back(std::move(w));
        }
        std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
            return std::tie(a.generation, a.slot) < std::tie(b.generation, b.slot);
        });
        return out;
    }

    std::vector<ProcStat> procs_of(const std::vector<WorkerProcess>& ws) const {
        std::vector<ProcStat> out;
        for (const auto& w : ws) {
            out.push_back(w.proc);
        }
        return out;
    }

    std::optional<ProcStat> router() const {
        for (const auto& p : all_processes()) {
            if (p.ppid == emperor_pid() && p.state != 'Z') {
                auto argv = read_nul_separated("/proc/" + std::to_string(p.pid) + "/cmdline");
                if (argv.size() > 1 && argv[1] == "router") {
                    return p;
                }
            }
        }
        return std::nullopt;
    }

    // Waits until `count` workers of `vassal` have logged `worker N ready` after `from`.
    bool wait_ready(const std::string& vassal, int count, std::size_t from = 0,
                    Millis timeout = kStart) const {
        for (int slot = 1; slot <= count; ++slot) {
            if (!wait_log("vassal " + vassal + ": worker " + std::to_string(slot) + " ready in ",
                          timeout, from)) {
                return false;
            }
        }
        return true;
    }

    std::optional<Response> get(const std::string& host, const std::string& target,
                                std::string* error = nullptr) const {
        return try_get(port_, host, target, error);
    }

    // Polls GET `target` with `host` until a 200 comes from a backend whose name starts with
    // `backend_prefix`.
    bool wait_served_by(const std::string& host, const std::string& backend_prefix,
                        const std::string& target = "/id", Millis timeout = kStart) const {
        return poll_until(
            [&] {
                auto r = get(host, target);
                return r && r->status == 200 && backend_of(*r).rfind(backend_prefix, 0) == 0;
            },
            timeout, 50ms);
    }

    // Starts liege with one vassal, "app": one worker, answering "good-1"; sets `worker`. Use
    // with ASSERT_NO_FATAL_FAILURE.
    void start_with_one_good_app(WorkerProcess& worker) {
        write_vassal("app", kAnyHost + backend_command("good-${WORKER}"));
        ASSERT_NO_FATAL_FAILURE(start());
        ASSERT_TRUE(wait_served_by("app.test", "good-"));
        auto ws = workers("app");
        ASSERT_EQ(ws.size(), 1u);
        worker = ws[0];
    }

    // Nothing that runs of "app" changed: `worker` serves it, alone.
    void expect_app_untouched(const WorkerProcess& worker) const {
        auto r = get("app.test", "/id");
        ASSERT_TRUE(r);
        EXPECT_EQ(backend_of(*r), "good-1");
        auto now = workers("app");
        ASSERT_EQ(now.size(), 1u);
        EXPECT_EQ(now[0].proc.pid, worker.proc.pid);
    }

    // The set of backends that answer `requests` fresh GETs.
    std::set<std::string> backends_answering(const std::string& host, int requests,
                                             const std::string& target = "/id") const {
        std::set<std::string> seen;
        for (int i = 0; i < requests; ++i) {
            if (auto r = get(host, target); r && r->status == 200) {
                seen.insert(backend_of(*r));
            }
        }
        return seen;
    }
};

// ---- spawn ------------------------------------------------------------------------------------

TEST_F(LiegeRun, SpawnsEveryWorkerAndBalancesAcrossThem) {
    ::setenv("LIEGE_TEST_FROM_EMPEROR", "inherited", 1);
    ::unsetenv("LIEGE_TEST_UNSET");
    write_vassal("app", kAnyHost + backend_command() +
                            "workers = 2\n"
                            "env = { GREETING = \"hi ${NAME}\", "
                            "FROM_EMPEROR = \"${env:LIEGE_TEST_FROM_EMPEROR}\", "
                            "DEFAULTED = \"${env:LIEGE_TEST_UNSET:-fallback}\" }\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_ready("app", 2));

    // Both workers answer through the router.
    std::set<std::string> seen;
    ASSERT_TRUE(poll_until(
        [&] {
            if (auto r = get("anything.test", "/id"); r && r->status == 200) {
                EXPECT_EQ(r->body, backend_of(*r));
                seen.insert(r->body);
            }
            return seen.size() == 2;
        },
        kStart, 0ms))
        << "backends seen: " << seen.size();
    EXPECT_EQ(seen, (std::set<std::string>{"app-1", "app-2"}));

    // Two processes, each with its own port and the environment DESIGN.md promises.
    auto ws = workers("app");
    ASSERT_EQ(ws.size(), 2u);
    std::set<std::string> ports;
    for (const auto& w : ws) {
        EXPECT_EQ(w.env.at("LIEGE_VASSAL"), "app");
        EXPECT_EQ(w.generation, 1);
        EXPECT_EQ(w.env.count("PORT"), 1u);
        EXPECT_EQ(w.env.at("GREETING"), "hi app") << "placeholders in env values";
        EXPECT_EQ(w.env.at("FROM_EMPEROR"), "inherited");
        EXPECT_EQ(w.env.at("DEFAULTED"), "fallback");
        EXPECT_EQ(w.env.at("LIEGE_WORKER"), std::to_string(w.slot));
        ports.insert(w.env.at("PORT"));
        EXPECT_NE(cmdline_of(w.proc.pid).find("127.0.0.1:" + w.env.at("PORT")), std::string::npos)
            << "${PORT} in the command is the worker's PORT: " << cmdline_of(w.proc.pid);
    }
    EXPECT_EQ(ws[0].slot, 1);
    EXPECT_EQ(ws[1].slot, 2);
    EXPECT_EQ(ports.size(), 2u) << "each worker gets its own port";

    // Worker output reaches the emperor's log, prefixed with vassal and worker.
    EXPECT_TRUE(wait_log("[app/1] listening on 127.0.0.1:" + ws[0].env.at("PORT")));
    EXPECT_TRUE(wait_log("[app/2] listening on 127.0.0.1:" + ws[1].env.at("PORT")));
}

// ---- routing ----------------------------------------------------------------------------------

TEST_F(LiegeRun, RoutesByHostExactBeforeWildcardBeforeDefault) {
    write_vassal("alpha", backend_command() + "hosts = [\"alpha.test\"]\n");
    write_vassal("beta", backend_command() + "hosts = [\"*.beta.test\"]\n");
    write_vassal("exact", backend_command() + "hosts = [\"www.beta.test\"]\n");
    write_vassal("fallback", backend_command() + "hosts = [\"*\"]\n");
    ASSERT_NO_FATAL_FAILURE(start());
    for (const char* v : {"alpha", "beta", "exact", "fallback"}) {
        ASSERT_TRUE(wait_ready(v, 1)) << v;
    }
    // Each vassal's route reaches the router a moment after its worker is ready.
    for (const auto& [host, backend] :
         std::vector<std::pair<std::string, std::string>>{{"alpha.test", "alpha-"},
                                                          {"api.beta.test", "beta-"},
                                                          {"www.beta.test", "exact-"},
                                                          {"unknown.test", "fallback-"}}) {
        ASSERT_TRUE(wait_served_by(host, backend)) << host;
    }

    struct Case {
        std::string host;
        std::string backend;
    };
    for (const Case& c : std::vector<Case>{{"alpha.test", "alpha-1"},
                                           {"ALPHA.test", "alpha-1"},
                                           {"alpha.test:8080", "alpha-1"},
                                           {"api.beta.test", "beta-1"},
                                           {"a.b.beta.test", "beta-1"},
                                           {"www.beta.test", "exact-1"},
                                           {"www.beta.test:80", "exact-1"},
                                           {"unknown.test", "fallback-1"},
                                           {"127.0.0.1", "fallback-1"}}) {
        std::string error;
        auto r = get(c.host, "/id", &error);
        ASSERT_TRUE(r) << c.host << ": " << error;
        EXPECT_EQ(r->status, 200) << c.host << ": " << r->body;
        EXPECT_EQ(r->body, c.backend) << "Host: " << c.host;
    }
}

TEST_F(LiegeRun, UnknownHostWithoutDefaultIs404NamingTheHost) {
    write_vassal("alpha", backend_command() + "hosts = [\"alpha.test\"]\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_ready("alpha", 1));
    ASSERT_TRUE(wait_served_by("alpha.test", "alpha-"));

    std::string error;
    auto r = get("nowhere.example", "/id", &error);
    ASSERT_TRUE(r) << error;
    EXPECT_EQ(r->status, 404);
    EXPECT_NE(r->body.find("nowhere.example"), std::string::npos) << r->body;
    EXPECT_FALSE(r->header("X-Backend")) << "no backend may answer";
}

TEST_F(LiegeRun, RoutesByLongestPathPrefix) {
    write_vassal("root", kAnyHost + backend_command());
    write_vassal("api", kAnyHost + backend_command() + "path = \"/api\"\n");
    write_vassal("apiv2", kAnyHost + backend_command() + "path = \"/api/v2/\"\n");
    ASSERT_NO_FATAL_FAILURE(start());
    for (const char* v : {"root", "api", "apiv2"}) {
        ASSERT_TRUE(wait_ready(v, 1)) << v;
    }
    // The backends answer 404 for paths they do not know; X-Backend says which one answered.
    // Each vassal's route reaches the router a moment after its worker is ready.
    for (const auto& [target, backend] : std::vector<std::pair<std::string, std::string>>{
             {"/api/v2/id", "apiv2-1"}, {"/api/id", "api-1"}, {"/id", "root-1"}}) {
        ASSERT_TRUE(poll_until(
            [&] {
                auto r = get("site.test", target);
                return r && backend_of(*r) == backend;
            },
            kStart, 50ms))
            << target;
    }

    struct Case {
        std::string target;
        std::string backend;
    };
    for (const Case& c : std::vector<Case>{{"/id", "root-1"},
                                           {"/", "root-1"},
                                           {"/apix", "root-1"},
                                           {"/api", "api-1"},
                                           {"/api/", "api-1"},
                                           {"/api/v1/users", "api-1"},
                                           {"/api/v2", "apiv2-1"},
                                           {"/api/v2/users?x=1", "apiv2-1"},
                                           {"/api/v20", "api-1"}}) {
        std::string error;
        auto r = get("site.test", c.target, &error);
        ASSERT_TRUE(r) << c.target << ": " << error;
        EXPECT_EQ(backend_of(*r), c.backend)
            << "GET " << c.target << " -> " << r->status << " " << r->body;
    }
}

// ---- add / change / remove --------------------------------------------------------------------

TEST_F(LiegeRun, AddedFileIsServedWithinSeconds) {
    write_vassal("alpha", backend_command() + "hosts = [\"alpha.test\"]\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_served_by("alpha.test", "alpha-"));

    auto r = get("late.test", "/id");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 404) << "no route before the file exists";

    // Written in place, as `cat > file` or an editor without a temp file would.
    auto t0 = Clock::now();
    write_file(vassals_ / "late.toml", backend_command() + "hosts = [\"late.test\"]\n");
    ASSERT_TRUE(wait_served_by("late.test", "late-1", "/id", 10s))
        << "a new vassal file must be served within seconds";
    auto took = std::chrono::duration_cast<Millis>(Clock::now() - t0);
    std::cout << "[          ] added file served after " << took.count() << " ms\n";
    EXPECT_EQ(workers("late").size(), 1u);
    // The in-place write is one change, not a start followed by a reload.
    EXPECT_EQ(count_log("vassal late: starting 1 worker(s), generation 1"), 1u);
    EXPECT_EQ(count_log("vassal late: rolling reload"), 0u);
    EXPECT_TRUE(wait_served_by("alpha.test", "alpha-1")) << "the other vassal is untouched";
}

TEST_F(LiegeRun, IgnoredFileNamesStartNothing) {
    ASSERT_NO_FATAL_FAILURE(start());
    for (const char* name :
         {".hidden.toml", "_disabled.toml", "app.toml~", "app.toml.swp", "notes.txt"}) {
        write_file(vassals_ / name, backend_command() + "hosts = [\"ignored.test\"]\n");
    }
    // A real one written after them: once it serves, the ignored ones had their chance.
    write_vassal("real", backend_command() + "hosts = [\"real.test\"]\n");
    ASSERT_TRUE(wait_served_by("real.test", "real-1"));
    ASSERT_TRUE(emperor_->running());
    auto children = emperor_descendants();
    EXPECT_EQ(children.size(), 2u) << "only the router and real/1:" << describe_procs(children);
    auto r = get("ignored.test", "/id");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 404);
}

TEST_F(LiegeRun, ChangedCommandReloadsToANewGeneration) {
    write_vassal("app", kAnyHost + backend_command("v1-${WORKER}") + "workers = 2\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_ready("app", 2));
    ASSERT_TRUE(wait_served_by("app.test", "v1-"));
    auto old = workers("app");
    ASSERT_EQ(old.size(), 2u);

    auto from = mark();
    write_vassal("app", kAnyHost + backend_command("v2-${WORKER}") + "workers = 2\n");
    ASSERT_TRUE(wait_log("vassal app: generation 2 serving", kStart, from));
    // The router applies the route set the emperor sent at that moment a little later; once
    // the old workers have drained and gone, only the new ones can answer.
    auto left = wait_gone(procs_of(old));
    EXPECT_TRUE(left.empty()) << "old workers still running:" << describe_procs(left);
    EXPECT_EQ(backends_answering("app.test", 10), (std::set<std::string>{"v2-1", "v2-2"}));
    auto now = workers("app");
    ASSERT_EQ(now.size(), 2u);
    for (const auto& w : now) {
        EXPECT_EQ(w.generation, 2);
    }
}

TEST_F(LiegeRun, ChangedEnvReloadsAndSameContentDoesNot) {
    write_vassal("app", kAnyHost + backend_command() + "env = { GREETING = \"hello\" }\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_served_by("app.test", "app-1"));
    auto old = workers("app");
    ASSERT_EQ(old.size(), 1u);
    EXPECT_EQ(old[0].env.at("GREETING"), "hello");

    // Same bytes again (only the mtime changes): nothing happens. A change written after it
    // proves the watcher has looked at the directory since.
    auto from = mark();
    write_vassal("app", kAnyHost + backend_command() + "env = { GREETING = \"hello\" }\n");
    write_vassal("other", backend_command() + "hosts = [\"other.test\"]\n");
    ASSERT_TRUE(wait_served_by("other.test", "other-1"));
    EXPECT_EQ(count_log("vassal app: rolling reload", from), 0u);

    from = mark();
    write_vassal("app", kAnyHost + backend_command() + "env = { GREETING = \"goodbye\" }\n");
    ASSERT_TRUE(wait_log("vassal app: generation 2 serving", kStart, from));
    std::vector<WorkerProcess> now;
    ASSERT_TRUE(poll_until([&] {
        now = workers("app");
        return now.size() == 1 && now[0].generation == 2;
    }));
    EXPECT_EQ(now[0].env.at("GREETING"), "goodbye");
    EXPECT_NE(now[0].proc.pid, old[0].proc.pid);
    EXPECT_TRUE(wait_gone(procs_of(old)).empty());
    EXPECT_TRUE(wait_served_by("app.test", "app-1"));
}

TEST_F(LiegeRun, RemovedFileStopsRoutingAndWorkers) {
    write_vassal("alpha", backend_command() + "hosts = [\"alpha.test\"]\n");
    write_vassal("gone", backend_command() + "hosts = [\"gone.test\"]\nworkers = 2\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_ready("gone", 2));
    ASSERT_TRUE(wait_served_by("gone.test", "gone-"));
    auto old = workers("gone");
    ASSERT_EQ(old.size(), 2u);

    auto from = mark();
    remove_vassal("gone");
    ASSERT_TRUE(wait_log("vassal gone: stopped", kStart, from));
    auto left = wait_gone(procs_of(old));
    EXPECT_TRUE(left.empty()) << "workers of a removed vassal still running:"
                              << describe_procs(left);
    EXPECT_TRUE(workers("gone").empty());

    // No route any more: 404 naming the host (not 503, which would say the vassal still exists
    // without a ready worker).
    std::optional<Response> r;
    EXPECT_TRUE(poll_until(
        [&] {
            r = get("gone.test", "/id");
            return r && r->status == 404;
        },
        5s, 50ms))
        << "still " << (r ? std::to_string(r->status) + " " + r->body : "no response")
        << " 5 s after the vassal stopped";
    ASSERT_TRUE(r);
    EXPECT_NE(r->body.find("gone.test"), std::string::npos) << r->body;
    EXPECT_TRUE(wait_served_by("alpha.test", "alpha-1")) << "the other vassal is untouched";

    // And the same name can come back.
    write_vassal("gone", backend_command("back-${WORKER}") + "hosts = [\"gone.test\"]\n");
    EXPECT_TRUE(wait_served_by("gone.test", "back-1"));
}

// ---- reloads under load -----------------------------------------------------------------------

// Reloads `app` three times with `strategy_` while two client loops (one keep-alive, one new
// connection per request) send requests through the router; every response must be a 200.
class LiegeRunReload : public LiegeRun {
protected:
    std::string vassal(int version) const {
        // No "literal" + std::string here: GCC 12 at -O3 warns falsely (-Wrestrict) on it.
        std::string name = std::string("v") + std::to_string(version) + "-${WORKER}";
        return backend_command(name) +
               "workers = 2\nhosts = [\"app.test\"]\n[reload]\nstrategy = \"" + strategy_ +
               "\"\ndrain_timeout = \"10s\"\n";
    }

    void run_reloads() {
        write_vassal("app", vassal(1));
        ASSERT_NO_FATAL_FAILURE(start());
        ASSERT_TRUE(wait_ready("app", 2));
        ASSERT_TRUE(wait_served_by("app.test", "v1-"));

        // Mixed fast and slow requests, so that reloads find requests in flight to drain.
        ClientLoop keep_alive(port_, "app.test", {"/id", "/slow?ms=30", "/id", "/slow?ms=150"},
                              ClientLoop::Connections::KeepAlive);
        ClientLoop fresh(port_, "app.test", {"/slow?ms=60", "/id"}, ClientLoop::Connections::Fresh);
        ASSERT_TRUE(keep_alive.wait_requests(20));
        ASSERT_TRUE(fresh.wait_requests(20));

        for (int version = 2; version <= 4; ++version) {
            auto from = mark();
            auto old = workers("app");
            write_vassal("app", vassal(version));
            const std::string gen = std::to_string(version);
            ASSERT_TRUE(wait_log("vassal app: generation " + gen + " serving", kStart, from))
                << "reload to v" << version;
            const std::string log_text = log().substr(from);
            check_order(log_text, gen);
            // The new generation answers both loops; the old workers go away.
            keep_alive.reset_seen();
            fresh.reset_seen();
            ASSERT_TRUE(keep_alive.wait_requests(20));
            ASSERT_TRUE(fresh.wait_requests(20));
            ASSERT_TRUE(poll_until([&] {
                auto a = keep_alive.seen();
                auto b = fresh.seen();
                a.insert(b.begin(), b.end());
                return a.count("v" + gen + "-1") + a.count("v" + gen + "-2") == 2;
            })) << "both new workers serve";
            auto left = wait_gone(procs_of(old), 20s);
            EXPECT_TRUE(left.empty()) << "old workers left:" << describe_procs(left);
        }
        keep_alive.stop();
        fresh.stop();

        EXPECT_EQ(keep_alive.failed(), 0u) << "of " << keep_alive.done() << keep_alive.failures();
        EXPECT_EQ(fresh.failed(), 0u) << "of " << fresh.done() << fresh.failures();
        std::cout << "[          ] " << strategy_ << ": " << keep_alive.done() + fresh.done()
                  << " requests during 3 reloads\n";
        for (int version = 1; version <= 4; ++version) {
            auto backends = keep_alive.backends();
            for (const auto& [name, n] : fresh.backends()) {
                backends[name] += n;
            }
            EXPECT_GT(backends["v" + std::to_string(version) + "-1"] +
                          backends["v" + std::to_string(version) + "-2"],
                      0u)
                << "generation " << version << " served";
        }
    }

    // The order of the reload's log lines pins the strategy.
    void check_order(const std::string& text, const std::string& gen) {
        auto started2 = text.find("vassal app: worker 2 started (pid ");
        auto ready1 = text.find("vassal app: worker 1 ready in ");
        ASSERT_NE(started2, std::string::npos);
        ASSERT_NE(ready1, std::string::npos);
        EXPECT_NE(text.find(", generation " + gen + ", ", started2), std::string::npos);
        if (strategy_ == "rolling") {
            // One new worker at a time: the second starts once the first is ready.
            EXPECT_LT(ready1, started2) << text;
        } else {
            // The whole new generation starts at once.
            EXPECT_LT(started2, ready1) << text;
        }
    }

    std::string strategy_;
};

TEST_F(LiegeRunReload, RollingReloadUnderLoadFailsNoRequest) {
    strategy_ = "rolling";
    run_reloads();
}

TEST_F(LiegeRunReload, BlueGreenReloadUnderLoadFailsNoRequest) {
    strategy_ = "bluegreen";
    run_reloads();
}

// ---- invalid files and failing generations -----------------------------------------------------

TEST_F(LiegeRun, InvalidFileKeepsTheOldGenerationServing) {
    // Each invalid file is reported at error level, at its line 3.
    expect_error_line({"vassals.d/app.toml:3:", ": error: "});
    write_vassal("app", kAnyHost + backend_command("good-${WORKER}") + "workers = 2\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_ready("app", 2));
    ASSERT_TRUE(wait_served_by("app.test", "good-"));
    auto old = workers("app");
    ASSERT_EQ(old.size(), 2u);

    // Line 3 is broken TOML.
    auto from = mark();
    write_vassal("app", backend_command("bad-${WORKER}") + "workers = 2\nhosts = [\"a\",\n");
    auto line = wait_log("app.toml:3:", kStart, from);
    ASSERT_TRUE(line) << "no FILE:LINE:COL diagnostic";
    EXPECT_TRUE(std::regex_search(*line, std::regex(R"(vassals\.d/app\.toml:3:\d+: error: )")))
        << *line;

    // A wrong key is reported with its own position too.
    from = mark();
    write_vassal("app", backend_command("bad-${WORKER}") + "workers = 2\nworkres = 3\n" + kAnyHost);
    line = wait_log("app.toml:3:1: error: ", kStart, from);
    EXPECT_TRUE(line) << "unknown key at 3:1";
    if (line) {
        EXPECT_NE(line->find("workres"), std::string::npos) << *line;
    }

    // Nothing that runs changed.
    for (int i = 0; i < 10; ++i) {
        auto r = get("app.test", "/id");
        ASSERT_TRUE(r);
        EXPECT_EQ(r->status, 200);
        EXPECT_EQ(backend_of(*r).rfind("good-", 0), 0u) << backend_of(*r);
    }
    auto now = workers("app");
    ASSERT_EQ(now.size(), 2u);
    for (std::size_t i = 0; i < now.size(); ++i) {
        EXPECT_EQ(now[i].proc.pid, old[i].proc.pid);
    }
    EXPECT_EQ(count_log("vassal app: rolling reload", from), 0u);

    // Fixed: the next valid content reloads as usual.
    from = mark();
    write_vassal("app", kAnyHost + backend_command("fixed-${WORKER}") + "workers = 2\n");
    EXPECT_TRUE(wait_log("vassal app: generation 2 serving", kStart, from));
    EXPECT_TRUE(wait_served_by("app.test", "fixed-"));
}

TEST_F(LiegeRun, InvalidNewFileStartsNothingAndIsReported) {
    expect_error_line({"vassals.d/broken.toml:1:", ": error: "});
    ASSERT_NO_FATAL_FAILURE(start());
    write_vassal("broken", "command = \"not an array\"\n" + kAnyHost);
    auto line = wait_log("broken.toml:1:");
    ASSERT_TRUE(line);
    EXPECT_TRUE(std::regex_search(*line, std::regex(R"(broken\.toml:1:\d+: error: )"))) << *line;
    EXPECT_TRUE(workers("broken").empty());
    EXPECT_TRUE(emperor_->running());
}

// Entries named like vassal files that cannot be one are each logged once with why: not at every
// rescan, but again when the reason changes or the file was valid in between.
TEST_F(LiegeRun, SkippedEntriesAreLoggedOnceEachWithTheirReason) {
    fs::create_directory(vassals_ / "x.toml");
    fs::create_symlink("loop.toml", vassals_ / "loop.toml");
    fs::create_symlink("../nowhere", vassals_ / "gone.toml");
    ASSERT_EQ(::mkfifo((vassals_ / "pipe.toml").c_str(), 0600), 0);
    write_file(vassals_ / "Shop.TOML", kAnyHost + backend_command());
    // Its target appears outside the directory, which only a periodic rescan can see.
    fs::create_symlink("../later-target", vassals_ / "later.toml");
    ASSERT_NO_FATAL_FAILURE(start());

    auto line = [&](const std::string& name, const std::string& why) {
        return "emperor: skipping " + (vassals_ / name).string() + ": " + why;
    };
    const std::vector<std::string> lines = {
        line("x.toml", "a directory, not a file"),
        line("loop.toml", "a symlink that loops"),
        line("gone.toml", "a dangling symlink to ../nowhere"),
        line("pipe.toml", "a FIFO, not a file"),
        line("Shop.TOML", "only names ending in \".toml\" (lower case) are vassal files"),
        line("later.toml", "a dangling symlink to ../later-target"),
    };
    for (const auto& l : lines) {
        EXPECT_TRUE(wait_log(l)) << l;
    }

    // Rescans: two SIGHUPs (each reads everything), then periodic ones, until later.toml's
    // target is seen and its vassal runs.
    for (int i = 0; i < 2; ++i) {
        auto from = mark();
        emperor_->signal(SIGHUP);
        ASSERT_TRUE(wait_log("emperor: SIGHUP, rescanning the vassal directory", kStart, from));
    }
    write_file(root_ / "later-target", kAnyHost + backend_command("later"));
    ASSERT_TRUE(wait_ready("later", 1));
    for (const auto& l : lines) {
        EXPECT_EQ(count_log(l), 1u) << l;
    }

    // Another reason is news.
    auto from = mark();
    fs::remove(vassals_ / "x.toml");
    fs::create_symlink("x.toml", vassals_ / "x.toml");
    EXPECT_TRUE(wait_log(line("x.toml", "a symlink that loops"), kStart, from));

    // So is the same reason after the file was valid: later.toml dangles again.
    from = mark();
    fs::remove(root_ / "later-target");
    EXPECT_TRUE(wait_log(lines.back(), kStart, from));
    EXPECT_EQ(count_log(lines.back()), 2u);
    EXPECT_TRUE(
        wait_log("vassal later: " + (vassals_ / "later.toml").string() + " removed", kStart, from));
}

// A vassal file that can no longer be read is logged once; what runs of it is left alone.
TEST_F(LiegeRun, AFileThatTurnsUnreadableIsLoggedOnceAndItsGenerationKeepsServing) {
    WorkerProcess old;
    ASSERT_NO_FATAL_FAILURE(start_with_one_good_app(old));

    // A file nobody can read, root included: read(2) of /proc/self/mem at offset 0 fails (EIO).
    auto from = mark();
    fs::create_symlink("/proc/self/mem", vassals_ / ".app.toml.tmp");
    fs::rename(vassals_ / ".app.toml.tmp", vassals_ / "app.toml");
    const std::string line = "emperor: skipping " + (vassals_ / "app.toml").string() +
                             ": unreadable: input/output error";
    ASSERT_TRUE(wait_log(line, kStart, from));
    for (int i = 0; i < 2; ++i) {
        auto hup = mark();
        emperor_->signal(SIGHUP);
        ASSERT_TRUE(wait_log("emperor: SIGHUP, rescanning the vassal directory", kStart, hup));
    }
    write_vassal("marker", "hosts = [\"marker.test\"]\n" + backend_command("marker"));
    ASSERT_TRUE(wait_log("vassal marker: ", kStart, from)); // after the rescans' lines
    EXPECT_EQ(count_log(line, from), 1u);

    expect_app_untouched(old);
}

// A vassal file is at most 1 MiB. A larger one is an invalid file like any other: an error that
// names it, for the emperor (which keeps the running generation) and for `liege check`.
TEST_F(LiegeRun, AVassalFileOverOneMebibyteIsRefusedAndTheOldGenerationKeepsServing) {
    expect_error_line({"vassals.d/app.toml:1:1: error: larger than 1 MiB"});
    WorkerProcess old;
    ASSERT_NO_FATAL_FAILURE(start_with_one_good_app(old));

    auto from = mark();
    const std::string big =
        kAnyHost + backend_command("big-${WORKER}") + "# " + std::string(1 << 20, 'x') + "\n";
    write_vassal("app", big);
    EXPECT_TRUE(wait_log((vassals_ / "app.toml").string() +
                             ":1:1: error: larger than 1 MiB, the limit of a vassal file",
                         kStart, from));
    EXPECT_TRUE(wait_log("vassal app: invalid file, generation 1 keeps serving", kStart, from));
    expect_app_untouched(old);

    for (const std::string& path : {vassals_.string(), (vassals_ / "app.toml").string()}) {
        Cli check = run_cli({"check", path});
        EXPECT_EQ(check.exit_code, 1) << path;
        EXPECT_NE(check.err.find((vassals_ / "app.toml").string() +
                                 ":1:1: error: larger than 1 MiB, the limit of a vassal file"),
                  std::string::npos)
            << check.err;
    }
}

TEST_F(LiegeRun, NewGenerationThatExitsAtOnceIsAbandoned) {
    expect_error_line({"vassal app: reload to generation 2 abandoned: ", "exit code 3"});
    write_vassal("app", kAnyHost + backend_command("good-${WORKER}") + "workers = 2\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_ready("app", 2));
    ASSERT_TRUE(wait_served_by("app.test", "good-"));
    auto old = workers("app");
    ASSERT_EQ(old.size(), 2u);

    ClientLoop loop(port_, "app.test", {"/id"}, ClientLoop::Connections::KeepAlive);
    ASSERT_TRUE(loop.wait_requests(10));
    auto from = mark();
    write_vassal("app",
                 kAnyHost +
                     "command = [\"sh\", \"-c\", \"echo config-is-wrong-marker >&2; exit 3\"]\n"
                     "workers = 2\n");
    auto line = wait_log("vassal app: reload to generation 2 abandoned: ", kStart, from);
    ASSERT_TRUE(line);
    EXPECT_NE(line->find("exit code 3"), std::string::npos) << *line;
    // The app's last output comes with the failure.
    auto abandoned_at = log().find(*line, from);
    EXPECT_NE(log().find("| config-is-wrong-marker", abandoned_at), std::string::npos)
        << log().substr(abandoned_at);

    ASSERT_TRUE(loop.wait_requests(20));
    loop.stop();
    EXPECT_EQ(loop.failed(), 0u) << loop.failures();
    EXPECT_EQ(loop.seen(), (std::set<std::string>{"good-1", "good-2"}));
    auto now = workers("app");
    ASSERT_EQ(now.size(), 2u) << "the old pool keeps its two workers";
    for (std::size_t i = 0; i < now.size(); ++i) {
        EXPECT_EQ(now[i].proc.pid, old[i].proc.pid);
    }

    // The next good version still reloads.
    from = mark();
    write_vassal("app", kAnyHost + backend_command("next-${WORKER}") + "workers = 2\n");
    EXPECT_TRUE(wait_log("vassal app: generation 3 serving", kStart, from));
    EXPECT_TRUE(wait_served_by("app.test", "next-"));
}

TEST_F(LiegeRun, NewGenerationNeverReadyIsAbandonedAtStartTimeout) {
    expect_error_line({"vassal app: reload to generation 2 abandoned: ", "not ready after 1s"});
    write_vassal("app", kAnyHost + backend_command("good-${WORKER}") + "workers = 2\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_ready("app", 2));
    ASSERT_TRUE(wait_served_by("app.test", "good-"));
    auto old = workers("app");
    ASSERT_EQ(old.size(), 2u);

    ClientLoop loop(port_, "app.test", {"/id"}, ClientLoop::Connections::Fresh);
    ASSERT_TRUE(loop.wait_requests(10));
    // Listens, but not where the emperor looks.
    auto from = mark();
    write_vassal("app",
                 kAnyHost + "command = " +
                     toml_array({LIEGE_TEST_BACKEND, "--listen", "127.0.0.1:0", "--name", "lost"}) +
                     "\nworkers = 2\n[health]\nstart_timeout = \"1s\"\n");
    ASSERT_TRUE(wait_log("worker 1 started (pid ", kStart, from));
    auto lost = workers("app");
    auto line = wait_log("vassal app: reload to generation 2 abandoned: ", kStart, from);
    ASSERT_TRUE(line);
    EXPECT_NE(line->find("not ready after 1s"), std::string::npos) << *line;
    // It says where the emperor looked, and that nothing listened there.
    EXPECT_NE(line->find("(last check: a connect to 127.0.0.1:"), std::string::npos) << *line;
    EXPECT_NE(line->find("connection refused, so nothing listened there)"), std::string::npos)
        << *line;
    auto abandoned_at = log().find(*line, from);
    EXPECT_NE(log().find("| listening on 127.0.0.1:", abandoned_at), std::string::npos)
        << "the app's last output comes with the failure:\n"
        << log().substr(abandoned_at);

    ASSERT_TRUE(loop.wait_requests(20));
    loop.stop();
    EXPECT_EQ(loop.failed(), 0u) << loop.failures();
    EXPECT_EQ(loop.seen(), (std::set<std::string>{"good-1", "good-2"}));

    // The abandoned worker is stopped; the old ones are the same processes.
    std::vector<ProcStat> new_ones;
    for (const auto& w : lost) {
        if (w.generation == 2) {
            new_ones.push_back(w.proc);
        }
    }
    EXPECT_EQ(new_ones.size(), 1u) << "a rolling reload starts one new worker first";
    auto left = wait_gone(new_ones);
    EXPECT_TRUE(left.empty()) << "abandoned worker still running:" << describe_procs(left);
    auto now = workers("app");
    ASSERT_EQ(now.size(), 2u);
    for (std::size_t i = 0; i < now.size(); ++i) {
        EXPECT_EQ(now[i].proc.pid, old[i].proc.pid);
    }
}

TEST_F(LiegeRun, AReloadSupersededByANewerChangeIsNoFailure) {
    write_vassal("app", kAnyHost + backend_command("one-${WORKER}"));
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_served_by("app.test", "one-"));
    // Generation 2 takes 30 s to listen; generation 3 comes while it starts.
    auto from = mark();
    write_vassal("app", kAnyHost + "command = " +
                            toml_array({"sh", "-c",
                                        "sleep 30; exec " + std::string(LIEGE_TEST_BACKEND) +
                                            " --listen 127.0.0.1:${PORT} --name two"}) +
                            "\n");
    ASSERT_TRUE(wait_log("worker 1 started (pid ", kStart, from));
    write_vassal("app", kAnyHost + backend_command("three-${WORKER}"));
    ASSERT_TRUE(wait_served_by("app.test", "three-"));
    EXPECT_TRUE(wait_log("vassal app: reload to generation 2 dropped: superseded by a newer "
                         "change of the file",
                         kStart, from));
    const auto v = vassal("app");
    EXPECT_EQ(v.value("failed_reloads", -1), 0) << v.dump(2);
    EXPECT_TRUE(v["last_error"].is_null()) << v.dump(2);
}

// ---- crashes ----------------------------------------------------------------------------------

TEST_F(LiegeRun, KilledWorkerIsRoutedAroundAndRestarted) {
    write_vassal("app", kAnyHost + backend_command() + "workers = 2\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_ready("app", 2));
    ASSERT_EQ(backends_answering("app.test", 10), (std::set<std::string>{"app-1", "app-2"}));
    auto old = workers("app");
    ASSERT_EQ(old.size(), 2u);
    const pid_t victim = old[0].proc.pid;
    // The unexpected exit is an error.
    expect_error_line({"vassal app: worker 1 (pid " + std::to_string(victim) +
                       ") exited unexpectedly: killed by SIGKILL"});

    // Killed between two of the loop's requests, so no request is in flight on it: every
    // request must succeed, including those that find the dead worker's pooled connections.
    ClientLoop loop(port_, "app.test", {"/id"}, ClientLoop::Connections::Alternate);
    ASSERT_TRUE(loop.wait_requests(20));
    auto from = mark();
    loop.between_requests([&] { ::kill(victim, SIGKILL); });
    auto line = wait_log("vassal app: worker 1 (pid " + std::to_string(victim) +
                             ") exited unexpectedly: killed by SIGKILL",
                         kStart, from);
    EXPECT_TRUE(line);
    ASSERT_TRUE(wait_log("vassal app: worker 1 ready in ", kStart, from)) << "restarted";

    std::vector<WorkerProcess> now;
    ASSERT_TRUE(poll_until([&] {
        now = workers("app");
        return now.size() == 2 && now[0].proc.pid != victim;
    }));
    EXPECT_EQ(now[0].slot, 1);
    EXPECT_EQ(now[1].proc.pid, old[1].proc.pid) << "worker 2 untouched";

    loop.reset_seen();
    ASSERT_TRUE(poll_until([&] { return loop.seen().count("app-1") == 1; }, kStart))
        << "the restarted worker serves again";
    loop.stop();
    EXPECT_EQ(loop.failed(), 0u) << "of " << loop.done() << loop.failures();
}

TEST_F(LiegeRun, KilledRouterIsRestartedAndRefusesNoConnection) {
    // The router's unexpected exit is an error.
    expect_error_line({"emperor: router exited unexpectedly (killed by SIGKILL)"});
    write_vassal("app", kAnyHost + backend_command() + "workers = 2\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_ready("app", 2));
    ASSERT_TRUE(wait_served_by("app.test", "app-"));
    auto old_router = router();
    ASSERT_TRUE(old_router);
    auto old_workers = workers("app");

    auto from = mark();
    ASSERT_EQ(::kill(old_router->pid, SIGKILL), 0);
    // Connect at once, while no router runs: the emperor's listening socket queues them.
    std::vector<HttpClient> clients;
    std::string error;
    for (int i = 0; i < 10; ++i) {
        try {
            clients.emplace_back(port_, 5s);
            clients.back().send(build_request("GET", "/id", {{"Host", "app.test"}}));
        } catch (const HttpError& e) {
            error = e.what();
            break;
        }
    }
    ASSERT_EQ(clients.size(), 10u) << "connection refused while the router restarts: " << error;
    for (auto& c : clients) {
        try {
            Response r = c.read_response(kStart);
            EXPECT_TRUE(r.status == 200 && backend_of(r).rfind("app-", 0) == 0)
                << "a request queued during the restart got " << r.status << " " << r.reason << ": "
                << r.body;
        } catch (const HttpError& e) {
            ADD_FAILURE() << "a connection made during the restart failed: " << e.what();
        }
    }
    EXPECT_TRUE(wait_log("emperor: router exited unexpectedly (killed by SIGKILL)", kStart, from));
    ASSERT_TRUE(wait_log("emperor: router started (pid ", kStart, from));
    auto new_router = router();
    ASSERT_TRUE(new_router);
    EXPECT_NE(new_router->pid, old_router->pid);
    EXPECT_FALSE(alive(*old_router));
    auto now = workers("app");
    ASSERT_EQ(now.size(), old_workers.size());
    for (std::size_t i = 0; i < now.size(); ++i) {
        EXPECT_EQ(now[i].proc.pid, old_workers[i].proc.pid) << "workers survive a router crash";
    }
    EXPECT_EQ(backends_answering("app.test", 10), (std::set<std::string>{"app-1", "app-2"}));
}

// ---- signals ----------------------------------------------------------------------------------

TEST_F(LiegeRun, SigtermFinishesRequestsInFlightExitsZeroAndLeavesNothing) {
    write_vassal("app", kAnyHost + backend_command("${NAME}-${WORKER}", true) + "workers = 2\n");
    write_vassal("other", backend_command() + "hosts = [\"other.test\"]\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_ready("app", 2));
    ASSERT_TRUE(wait_ready("other", 1));
    ASSERT_TRUE(wait_served_by("app.test", "app-"));
    auto started = emperor_descendants();
    EXPECT_EQ(started.size(), 4u) << describe_procs(started);

    std::optional<Response> slow;
    std::string error;
    std::thread client([&] { slow = get("app.test", "/slow?ms=1500", &error); });
    ASSERT_TRUE(wait_log("] request GET /slow?ms=1500"));
    emperor_->signal(SIGTERM);
    client.join();
    ASSERT_TRUE(slow) << "the request in flight at SIGTERM failed: " << error;
    EXPECT_EQ(slow->status, 200);

    auto status = emperor_->wait_exit(30s);
    ASSERT_TRUE(status);
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << describe_status(*status);
    auto left = wait_gone(started);
    EXPECT_TRUE(left.empty()) << describe_procs(left);
    EXPECT_TRUE(connect_refused(port_)) << "nothing listens any more";
    EXPECT_TRUE(wait_log("emperor: stopped", 1s));
}

TEST_F(LiegeRun, SigkillOfTheEmperorLeavesNoWorkerOrRouter) {
    write_vassal("app", kAnyHost + backend_command() + "workers = 2\n");
    write_vassal("py", "command = [\"python3\", \"-m\", \"http.server\", \"--bind\", "
                       "\"127.0.0.1\", \"${PORT}\"]\nhosts = [\"py.test\"]\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_ready("app", 2));
    ASSERT_TRUE(wait_ready("py", 1));
    ASSERT_TRUE(wait_served_by("app.test", "app-"));
    auto started = emperor_descendants();
    EXPECT_EQ(started.size(), 4u) << describe_procs(started);

    emperor_->signal(SIGKILL);
    auto status = emperor_->wait_exit();
    ASSERT_TRUE(status);
    auto left = wait_gone(started, 10s);
    EXPECT_TRUE(left.empty()) << "outlived the emperor:" << describe_procs(left);
    EXPECT_TRUE(poll_until([&] { return connect_refused(port_); }));
}

TEST_F(LiegeRun, UnixSocketWorkers) {
    write_vassal("sock", kAnyHost + "command = " +
                             toml_array({LIEGE_TEST_BACKEND, "--listen", "unix:${SOCKET}", "--name",
                                         "${NAME}-${WORKER}"}) +
                             "\nworkers = 2\nsocket = \"unix\"\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_ready("sock", 2));
    std::set<std::string> seen;
    ASSERT_TRUE(poll_until([&] {
        if (auto r = get("sock.test", "/id"); r && r->status == 200) {
            seen.insert(r->body);
        }
        return seen.size() == 2;
    }));
    for (const auto& w : workers("sock")) {
        auto cmd = cmdline_of(w.proc.pid);
        auto at = cmd.find("unix:/");
        ASSERT_NE(at, std::string::npos) << cmd;
        auto path = cmd.substr(at + 5, cmd.find(' ', at) - at - 5);
        EXPECT_TRUE(fs::is_socket(path)) << path;
        EXPECT_EQ(w.env.count("PORT"), 0u) << "a unix-socket worker has no port";
    }
}

TEST_F(LiegeRun, CrashingWorkerIsRetriedWithExponentialBackoff) {
    // Every crash is an error.
    expect_error_line(
        {"vassal crash: worker 1 (pid ", ") exited unexpectedly: exit code 1; restarting in "});
    ASSERT_NO_FATAL_FAILURE(start());
    write_vassal("crash", kAnyHost + "command = [\"sh\", \"-c\", \"echo crash-marker; exit 1\"]\n");
    // 100, 200, 400, 800 ms: the fourth restart is 1.5 s in.
    ASSERT_TRUE(wait_log("vassal crash: worker 1", kStart));
    std::size_t at = 0;
    for (const char* delay : {"100 ms", "200 ms", "400 ms", "800 ms"}) {
        auto line = wait_log(
            std::string("exited unexpectedly: exit code 1; restarting in ") + delay, kStart, at);
        ASSERT_TRUE(line) << "no restart after " << delay;
        at = log().find(*line, at) + line->size();
    }
    EXPECT_NE(log().find("| crash-marker"), std::string::npos)
        << "the app's last output comes with the exit";
    auto r = get("crash.test", "/id");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 503) << "known vassal, no ready worker: " << r->body;

    // Never forgotten: a fixed file brings it up.
    auto from = mark();
    write_vassal("crash", kAnyHost + backend_command("fixed-${WORKER}"));
    EXPECT_TRUE(wait_served_by("crash.test", "fixed-1")) << log().substr(from);
}

TEST_F(LiegeRun, RemovedFileDrainsRequestsInFlight) {
    write_vassal("app", kAnyHost + backend_command("${NAME}-${WORKER}", true));
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_served_by("app.test", "app-1"));
    auto ws = workers("app");
    ASSERT_EQ(ws.size(), 1u);

    std::optional<Response> slow;
    std::string error;
    std::thread client([&] { slow = get("app.test", "/slow?ms=1500", &error); });
    ASSERT_TRUE(wait_log("[app/1] request GET /slow?ms=1500"));
    auto from = mark();
    remove_vassal("app");
    client.join();
    ASSERT_TRUE(slow) << "the request in flight when the file was removed failed: " << error;
    EXPECT_EQ(slow->status, 200);
    EXPECT_TRUE(wait_log("vassal app: stopped", kStart, from));
    EXPECT_TRUE(wait_gone({ws[0].proc}).empty());
}

TEST_F(LiegeRun, DrainTimeoutStopsAWorkerThatStaysBusy) {
    write_vassal("app",
                 kAnyHost + backend_command("v1", true) + "[reload]\ndrain_timeout = \"1s\"\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_served_by("app.test", "v1"));
    auto old = workers("app");
    ASSERT_EQ(old.size(), 1u);

    std::thread client([&] { try_get(port_, "app.test", "/slow?ms=60000", nullptr, kStart); });
    ASSERT_TRUE(wait_log("[app/1] request GET /slow?ms=60000"));
    auto from = mark();
    write_vassal("app",
                 kAnyHost + backend_command("v2", true) + "[reload]\ndrain_timeout = \"1s\"\n");
    ASSERT_TRUE(wait_log("vassal app: generation 2 serving", kStart, from));
    EXPECT_TRUE(wait_served_by("app.test", "v2"));
    EXPECT_TRUE(wait_log("vassal app: worker 1 not drained after 1s, stopping it", kStart, from));
    EXPECT_TRUE(wait_gone({old[0].proc}).empty()) << "stopped at drain_timeout, not after 60 s";
    client.join();
}

TEST_F(LiegeRun, SighupRescansAndSigintStopsGracefully) {
    ASSERT_NO_FATAL_FAILURE(start());
    auto from = mark();
    emperor_->signal(SIGHUP);
    EXPECT_TRUE(wait_log("emperor: SIGHUP, rescanning the vassal directory", kStart, from));
    write_vassal("app", kAnyHost + backend_command());
    emperor_->signal(SIGHUP);
    ASSERT_TRUE(wait_served_by("app.test", "app-1"));
    EXPECT_TRUE(emperor_->running());

    auto started = descendants(emperor_pid());
    emperor_->signal(SIGINT);
    auto status = emperor_->wait_exit(30s);
    ASSERT_TRUE(status);
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << describe_status(*status);
    EXPECT_TRUE(wait_gone(started).empty());
}

// ---- socket activation and health checks --------------------------------------------------------

TEST_F(LiegeRun, InheritedSocketServesAndQueuesConnectionsAcrossARestart) {
    write_file(vassals_ / "app.py", kPythonApp);
    write_file(vassals_ / "ready", "");
    write_vassal("inh", kAnyHost + "command = [\"python3\", \"app.py\"]\nworkers = 2\n"
                                   "socket = \"inherit\"\n[health]\npath = \"/healthz\"\n"
                                   "interval = \"500ms\"\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_ready("inh", 2));
    ASSERT_TRUE(wait_served_by("inh.test", "inh-"));
    EXPECT_TRUE(wait_log("[inh/1] serving inh-1 on an inherited socket"));
    // The health path is what is probed: the app logged its GET /healthz lines, which the
    // emperor keeps out of the log and counts.
    nlohmann::json v = wait_vassal("inh", [](const nlohmann::json& j) {
        return j["workers"].size() == 2 && j["workers"][0].value("health_lines_dropped", 0) >= 1;
    });
    EXPECT_GE(v["workers"][0].value("health_lines_dropped", 0), 1) << v.dump(2);
    EXPECT_EQ(count_log("GET /healthz"), 0u);

    auto ws = workers("inh");
    ASSERT_EQ(ws.size(), 2u);
    for (const auto& w : ws) {
        EXPECT_EQ(w.env.at("LISTEN_FDS"), "1");
        EXPECT_EQ(w.env.at("LISTEN_PID"), std::to_string(w.proc.pid));
        std::error_code ec;
        auto fd3 = fs::read_symlink("/proc/" + std::to_string(w.proc.pid) + "/fd/3", ec);
        EXPECT_EQ(fd3.string().rfind("socket:", 0), 0u) << fd3;
    }
    std::set<std::string> activation;
    ASSERT_TRUE(poll_until([&] {
        if (auto r = get("inh.test", "/activation"); r && r->status == 200) {
            activation.insert(r->body);
        }
        return activation.size() == 2;
    }));
    for (const auto& w : ws) {
        const std::string pid = std::to_string(w.proc.pid);
        EXPECT_EQ(activation.count("LISTEN_FDS=1 LISTEN_PID=" + pid + " pid=" + pid), 1u);
    }

    // The emperor keeps its copy of the socket: connecting straight to the worker's port while
    // it is dead is not refused, and the restarted worker answers.
    const uint16_t worker_port = static_cast<uint16_t>(std::stoi(ws[0].env.at("PORT")));
    auto from = mark();
    // Killed on purpose: its unexpected exit is an error.
    expect_error_line({"vassal inh: worker 1 (pid " + std::to_string(ws[0].proc.pid) +
                       ") exited unexpectedly: killed by SIGKILL"});
    ASSERT_EQ(::kill(ws[0].proc.pid, SIGKILL), 0);
    ASSERT_TRUE(poll_until([&] { return !alive(ws[0].proc); }));
    std::optional<Response> direct;
    try {
        HttpClient c(worker_port, 5s);
        direct = c.get("/id", kStart);
    } catch (const HttpError& e) {
        ADD_FAILURE() << "direct connection to the restarting worker's socket: " << e.what();
    }
    if (direct) {
        EXPECT_EQ(direct->status, 200);
        EXPECT_EQ(direct->body, "inh-1");
    }
    EXPECT_TRUE(wait_log("vassal inh: worker 1 ready in ", kStart, from));
    auto now = workers("inh");
    ASSERT_EQ(now.size(), 2u);
    EXPECT_NE(now[0].proc.pid, ws[0].proc.pid);
    EXPECT_EQ(now[0].env.at("PORT"), ws[0].env.at("PORT")) << "same socket after a restart";
}

TEST_F(LiegeRun, HealthPathGatesReadiness) {
    write_file(vassals_ / "app.py", kPythonApp);
    write_vassal("hc", kAnyHost +
                           "command = [\"python3\", \"app.py\"]\n[health]\npath = \"/healthz\"\n"
                           "interval = \"200ms\"\nstart_timeout = \"60s\"\n"
                           "[queue]\ntimeout = \"300ms\"\n");
    ASSERT_NO_FATAL_FAILURE(start());
    // Running and answering, but its health path says 503: no request may reach it. A request
    // waits for a ready worker, here for the queue's 300 ms, then gets 503.
    ASSERT_TRUE(wait_log("[hc/1] serving hc-1 on its own port"));
    // Probed on its health path (the app's lines for those GETs are kept out of the log).
    nlohmann::json v = wait_vassal("hc", [](const nlohmann::json& j) {
        return j["workers"].size() == 1 && j["workers"][0].value("health_lines_dropped", 0) >= 1;
    });
    ASSERT_GE(v["workers"][0].value("health_lines_dropped", 0), 1) << v.dump(2);
    auto r = get("hc.test", "/id");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 503) << "no ready worker yet: " << r->body;
    EXPECT_NE(r->body.find("vassal hc: no worker was free within 300ms"), std::string::npos)
        << r->body;
    EXPECT_EQ(r->header("Retry-After").value_or(""), "1");
    EXPECT_FALSE(r->header("X-Backend"));
    EXPECT_EQ(count_log("vassal hc: worker 1 ready in "), 0u);

    write_file(vassals_ / "ready", "");
    EXPECT_TRUE(wait_ready("hc", 1));
    EXPECT_TRUE(wait_served_by("hc.test", "hc-1"));
}

TEST_F(LiegeRun, FailingHealthChecksRestartTheWorker) {
    // The failing worker is stopped at error level.
    expect_error_line({"vassal hc: worker 1: health checks failing: status 503"});
    write_file(vassals_ / "app.py", kPythonApp);
    write_file(vassals_ / "ready", "");
    write_vassal("hc", kAnyHost + "command = [\"python3\", \"app.py\"]\nworkers = 2\n[health]\n"
                                  "path = \"/healthz\"\ninterval = \"200ms\"\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_ready("hc", 2));
    ASSERT_EQ(backends_answering("hc.test", 10), (std::set<std::string>{"hc-1", "hc-2"}));
    auto old = workers("hc");
    ASSERT_EQ(old.size(), 2u);

    ClientLoop loop(port_, "hc.test", {"/id"}, ClientLoop::Connections::Fresh);
    auto from = mark();
    write_file(vassals_ / "sick-1", "");
    ASSERT_TRUE(wait_log("vassal hc: worker 1 failed 3 health checks", kStart, from));
    EXPECT_TRUE(wait_gone({old[0].proc}).empty()) << "the sick worker is stopped";
    ASSERT_TRUE(poll_until([&] {
        auto now = workers("hc");
        return now.size() == 2 && now[0].proc.pid != old[0].proc.pid;
    })) << "and started again";
    fs::remove(vassals_ / "sick-1");
    ASSERT_TRUE(wait_log("vassal hc: worker 1 ready in ", kStart, from));
    loop.reset_seen();
    EXPECT_TRUE(poll_until([&] { return loop.seen().count("hc-1") == 1; }));
    loop.stop();
    // The sick worker is unrouted and stopped (not drained): the one request of this loop that
    // may be in flight on it at that moment may fail, no other.
    EXPECT_LE(loop.failed(), 1u) << "of " << loop.done() << loop.failures();
    EXPECT_EQ(workers("hc")[1].proc.pid, old[1].proc.pid) << "worker 2 untouched";
}

// ---- stop ---------------------------------------------------------------------------------------

TEST_F(LiegeRun, StopEscalatesToSigkillAfterTheStopTimeout) {
    // The app and a child of its own ignore SIGTERM.
    write_vassal("stubborn", kAnyHost + "command = " +
                                 toml_array({"sh", "-c",
                                             "trap '' TERM; sleep 300 >/dev/null 2>&1 & exec " +
                                                 std::string(LIEGE_TEST_BACKEND) +
                                                 " --listen 127.0.0.1:$PORT --name ${NAME}"}) +
                                 "\n[stop]\ntimeout = \"1s\"\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_served_by("stubborn.test", "stubborn"));
    auto ws = workers("stubborn");
    ASSERT_EQ(ws.size(), 1u);
    auto group = descendants(ws[0].proc.pid);
    ASSERT_EQ(group.size(), 1u) << "the sleep child";
    group.push_back(ws[0].proc);

    auto from = mark();
    auto t0 = Clock::now();
    remove_vassal("stubborn");
    ASSERT_TRUE(wait_log("vassal stubborn: stopped", kStart, from));
    auto left = wait_gone(group);
    EXPECT_TRUE(left.empty()) << describe_procs(left);
    EXPECT_GE(Clock::now() - t0, 900ms) << "SIGKILL comes only after the stop timeout";
}

TEST_F(LiegeRun, StopReachesTheWholeProcessGroup) {
    // The app obeys SIGTERM at once, but a child it started ignores it: the stop timeout's
    // SIGKILL must still reach the child, which is in the worker's process group.
    write_vassal("parent",
                 kAnyHost + "command = " +
                     toml_array({"sh", "-c",
                                 "trap '' TERM; sleep 300 >/dev/null 2>&1 & trap - TERM; exec " +
                                     std::string(LIEGE_TEST_BACKEND) +
                                     " --listen 127.0.0.1:$PORT --name ${NAME}"}) +
                     "\n[stop]\ntimeout = \"1s\"\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_served_by("parent.test", "parent"));
    auto ws = workers("parent");
    ASSERT_EQ(ws.size(), 1u);
    auto group = descendants(ws[0].proc.pid);
    ASSERT_EQ(group.size(), 1u) << "the sleep child";
    EXPECT_EQ(ws[0].proc.pgrp, ws[0].proc.pid) << "the worker leads its own process group";
    EXPECT_EQ(group[0].pgrp, ws[0].proc.pid) << "the child is in the worker's group";
    group.push_back(ws[0].proc);

    auto from = mark();
    remove_vassal("parent");
    ASSERT_TRUE(wait_log("vassal parent: stopped", kStart, from));
    auto left = wait_gone(group, 10s);
    EXPECT_TRUE(left.empty()) << "left in the worker's process group:" << describe_procs(left);
    for (const auto& p : left) {
        ::kill(p.pid, SIGKILL); // do not leave it for the next test
    }
}

} // namespace
