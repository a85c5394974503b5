// Pools that scale with demand and workers that are recycled, as a user of the real `liege run`
// sees them: `workers = { min, max, idle }` (min = 0: no process until the first request),
// `[recycle] max_requests`, `max_rss` and `request_timeout`, and `liege run --max-workers N`
// across vassals. The workers are liege-test-backend processes; its `/slow?ms=M` makes a request
// hold its worker's one slot (concurrency = 1) for a while, `/hang` never answers, and
// `/alloc?mb=N` grows its RSS for good.
//
// The behaviour pinned is the one in the scaling spec:
// - min = 0 starts no worker until a request comes; that request waits in the router's queue and
//   gets 200 once a worker is ready ("vassal NAME: cold start"). A worker idle for `idle` is
//   stopped down to min ("scaling down to N worker(s)"); a request that arrives while the last
//   one stops is held, a new worker started, and it gets 200.
// - A pool grows by one worker at a time while requests wait for a free slot for more than about
//   0.5 s ("scaling up to N worker(s)"), up to max, and shrinks once a whole `idle` went by in
//   which it never needed all its workers. A steady load leaves it alone.
// - A recycle ("recycling worker K (REASON: ...)", then "worker K recycled (REASON)") starts a
//   replacement, routes to it, then drains and stops the old worker: no request fails, and a
//   vassal has at most one recycle under way. A request past request_timeout gets 504.
// - --max-workers caps the worker processes of all vassals together; a pool that must grow takes
//   the slot of another vassal's longest-idle worker above that vassal's min.
// - /status gains per vassal `scale` {workers, min, max} and per worker `reason` ("min",
//   "demand" or "replacement") and `rss_bytes`; /metrics liege_scale_events_total{vassal,
//   direction}, liege_worker_recycles_total{vassal,reason}, liege_cold_starts_total{vassal} and
//   the histogram liege_cold_start_seconds{vassal}.
//
// Figures the router reports reach /status and /metrics about once a second, so every check of
// one is a bounded poll, and the bounds are generous (a 2 s condition gets 20 s) because the box
// running these may be a loaded 2-core one. Worker processes are counted in /proc as the
// emperor's descendants other than its router and its guard. The fixture is the harness's
// LiegeRunFixture: its tear-down stops the emperor with SIGTERM and asserts exit code 0, that no
// process of the instance is left, and that it logged no error-level line but those a test
// declares.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "harness.hpp"

using namespace liege::test;
using nlohmann::json;

namespace {

// ---- TOML text ------------------------------------------------------------------------------

// A web vassal for `host` running liege-test-backend on ${PORT} (answering /id with
// NAME-WORKER), with `keys` (its `workers`, `concurrency`, a [recycle] table) after the rest.
std::string backend_vassal(const std::string& host, const std::string& keys) {
    const std::vector<std::string> argv = {LIEGE_TEST_BACKEND, "--listen", "127.0.0.1:${PORT}",
                                           "--name", "${NAME}-${WORKER}"};
    return "command = " + toml_array(argv) + "\nhosts = " + toml_array({host}) + "\n" + keys;
}

// ---- /metrics ---------------------------------------------------------------------------------

// The labels of one sample line, `name{a="x",b="y"} value`, or nullopt if the line is not a
// sample of `name`. (No label value here holds a quote or a comma.)
std::optional<std::map<std::string, std::string>>
labels_of(const std::string& line, const std::string& name, double& value) {
    if (!line.starts_with(name) || line.size() == name.size()) {
        return std::nullopt;
    }
    std::map<std::string, std::string> labels;
    std::size_t at = name.size();
    if (line[at] == '{') {
        const auto close = line.find('}', at);
        if (close == std::string::npos) {
            return std::nullopt;
        }
        std::istringstream pairs(line.substr(at + 1, close - at - 1));
        for (std::string pair; std::getline(pairs, pair, ',');) {
            const auto eq = pair.find('=');
            if (eq == std::string::npos || pair.size() < eq + 3) {
                return std::nullopt;
            }
            labels[pair.substr(0, eq)] = pair.substr(eq + 2, pair.size() - eq - 3);
        }
        at = close + 1;
    }
    if (at >= line.size() || line[at] != ' ') {
        return std::nullopt; // another metric whose name starts with this one
    }
    value = std::stod(line.substr(at + 1));
    return labels;
}

// The sum of every sample of metric `name` whose labels include `labels` (in any order, beside
// any others), or nullopt if there is none: a series the spec names must be exposed, so a
// missing one is a failure, not a zero.
std::optional<double> metric(const std::string& text, const std::string& name,
                             const std::map<std::string, std::string>& labels) {
    std::optional<double> sum;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        double value = 0;
        auto have = labels_of(line, name, value);
        if (!have) {
            continue;
        }
        const bool matches = std::all_of(labels.begin(), labels.end(), [&](const auto& l) {
            auto it = have->find(l.first);
            return it != have->end() && it->second == l.second;
        });
        if (matches) {
            sum = sum.value_or(0) + value;
        }
    }
    return sum;
}

// ---- /status ----------------------------------------------------------------------------------

// `scale.workers` of a vassal's /status entry, or -1 if it has none.
int scale_workers(const json& v) {
    if (!v.is_object() || !v.contains("scale") || !v["scale"].is_object()) {
        return -1;
    }
    return v["scale"].value("workers", -1);
}

// The pids of a vassal's workers that have a process (a positive `pid`).
std::vector<pid_t> worker_pids(const json& v) {
    std::vector<pid_t> out;
    if (!v.is_object() || !v.contains("workers")) {
        return out;
    }
    for (const auto& w : v["workers"]) {
        if (w.contains("pid") && w["pid"].is_number_integer() && w["pid"].get<long>() > 0) {
            out.push_back(w["pid"].get<pid_t>());
        }
    }
    return out;
}

// Workers with a process across every vassal of a /status document.
std::size_t workers_with_pid(const json& status) {
    std::size_t n = 0;
    for (const auto& v : status.value("vassals", json::array())) {
        n += worker_pids(v).size();
    }
    return n;
}

// The `reason` of every worker of a vassal's /status entry.
std::vector<std::string> worker_reasons(const json& v) {
    std::vector<std::string> out;
    for (const auto& w : v.value("workers", json::array())) {
        out.push_back(w.contains("reason") && w["reason"].is_string()
                          ? w["reason"].get<std::string>()
                          : "(none)");
    }
    return out;
}

// ---- the emperor's log -----------------------------------------------------------------------

// The sizes in `vassal NAME: scaling DIRECTION to N worker(s)` lines of `text`, in order.
std::vector<int> sizes_logged(const std::string& text, const std::string& vassal,
                              const std::string& direction) {
    const std::regex line("vassal " + vassal + ": scaling " + direction + " to (\\d+) worker");
    std::vector<int> out;
    for (auto it = std::sregex_iterator(text.begin(), text.end(), line);
         it != std::sregex_iterator(); ++it) {
        out.push_back(std::stoi((*it)[1]));
    }
    return out;
}

// Calls `sample` every `interval` on a thread of its own until stopped (or destroyed): for what
// must hold at every moment of a test, not only at the moments its main thread looks.
class Sampler {
public:
    Sampler(std::function<void()> sample, Millis interval) : sample_(std::move(sample)) {
        thread_ = std::thread([this, interval] {
            while (!stop_) {
                sample_();
                ++samples_;
                poll_until([&] { return stop_.load(); }, interval, 10ms);
            }
        });
    }
    Sampler(const Sampler&) = delete;
    Sampler& operator=(const Sampler&) = delete;
    ~Sampler() { stop(); }

    // Returns how many samples were taken.
    uint64_t stop() {
        stop_ = true;
        if (thread_.joinable()) {
            thread_.join();
        }
        return samples_.load();
    }

private:
    std::function<void()> sample_;
    std::atomic<bool> stop_{false};
    std::atomic<uint64_t> samples_{0};
    std::thread thread_;
};

// The largest value a Sampler saw, and the /status entry or processes it saw it in.
struct Peak {
    std::mutex mutex;
    std::size_t value = 0;
    std::string seen_in;

    void offer(std::size_t v, const std::function<std::string()>& describe) {
        std::lock_guard lock(mutex);
        if (v > value) {
            value = v;
            seen_in = describe();
        }
    }
    std::size_t get() {
        std::lock_guard lock(mutex);
        return value;
    }
    std::string where() {
        std::lock_guard lock(mutex);
        return seen_in;
    }
};

// ---- the fixture ------------------------------------------------------------------------------

class Scaling : public LiegeRunFixture {
protected:
    // Starts `liege run` and waits for its public port, its admin API and its router.
    void start(std::vector<std::string> extra = {}) { start_liege({std::move(extra)}); }

    // One GET with `host` on a fresh connection; nullopt (with `error` set) when it failed at
    // the HTTP level. The bound is generous: the request may wait for a worker to start.
    std::optional<Response> get(const std::string& host, const std::string& target,
                                std::string* error = nullptr, Millis timeout = kStart) const {
        return get_once(host, target, error, timeout);
    }

    // Asserts one GET gets a 200; returns its X-Backend (the worker's NAME-WORKER).
    std::string expect_200(const std::string& host, const std::string& target,
                           Millis timeout = kStart) const {
        std::string error;
        const auto started = Clock::now();
        auto r = get(host, target, &error, timeout);
        const auto ms = std::chrono::duration_cast<Millis>(Clock::now() - started).count();
        if (!r) {
            ADD_FAILURE() << "GET " << target << " (Host " << host << ") failed after " << ms
                          << " ms: " << error;
            return {};
        }
        EXPECT_EQ(r->status, 200) << "GET " << target << " (Host " << host << ") after " << ms
                                  << " ms: " << r->body.substr(0, 300);
        return r->header("X-Backend").value_or("");
    }

    std::string metrics() const {
        try {
            return admin("GET", "/metrics").body;
        } catch (const HttpError&) {
            return {};
        }
    }

    // Polls /metrics until metric(name, labels) holds `ok`; returns the last value (nullopt if
    // the series never appeared).
    std::optional<double> wait_metric(const std::string& name,
                                      const std::map<std::string, std::string>& labels,
                                      const std::function<bool(double)>& ok,
                                      Millis timeout = kStart) const {
        std::optional<double> last;
        poll_until(
            [&] {
                last = metric(metrics(), name, labels);
                return last && ok(*last);
            },
            timeout, 100ms);
        return last;
    }

    // The worker processes the emperor runs now: its living descendants but its guard and its
    // router (and the router's descendants, which it has none of).
    std::vector<ProcStat> worker_processes() const {
        auto procs = emperor_descendants();
        std::erase_if(procs, [](const ProcStat& p) {
            auto argv = read_nul_separated("/proc/" + std::to_string(p.pid) + "/cmdline");
            return argv.size() > 1 && argv[1] == "router";
        });
        return procs;
    }

    // Polls until the vassal's `scale.workers` is `n` and that many of its workers have a pid;
    // returns the last entry seen.
    json wait_scale(const std::string& name, int n, Millis timeout = kStart) const {
        return wait_vassal(
            name,
            [&](const json& v) {
                return scale_workers(v) == n && worker_pids(v).size() == static_cast<size_t>(n);
            },
            timeout);
    }
};

// ---- the test backend's /alloc ----------------------------------------------------------------

// What the max_rss test relies on, on the backend alone: /alloc?mb=N makes the process's RSS grow
// by about N MiB, and the memory stays resident after the response.
TEST(ScalingBackend, AllocGrowsTheResidentSetAndKeepsIt) {
    TestBackend b("alloc");
    const pid_t pid = b.process().pid();
    const long before = rss_kib(pid);
    ASSERT_GT(before, 0);

    HttpClient c(b.port());
    auto r = c.get("/alloc?mb=96");
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "allocated 96 MiB");
    const long after = rss_kib(pid);
    EXPECT_GE(after - before, 90 * 1024) << "RSS went from " << before << " to " << after << " KiB";

    // Kept: other requests (and another allocation) leave it in place.
    EXPECT_EQ(c.get("/id").status, 200);
    r = c.get("/alloc?mb=16");
    EXPECT_EQ(r.body, "allocated 16 MiB");
    EXPECT_GE(rss_kib(pid), after + 15 * 1024);
}

// ---- on demand --------------------------------------------------------------------------------

// min = 0 runs no process until a request comes; that request is held while the first worker
// starts and gets 200. Idle for `idle`, the pool goes back to no process at all, and the next
// request starts one again: two cold starts.
TEST_F(Scaling, OnDemandVassalRunsNoWorkerUntilARequestAndNoneAgainAfterIdle) {
    write_vassal("app", backend_vassal("app.test", "workers = { min = 0, max = 2, idle = \"1s\" }\n"
                                                   "concurrency = 1\n"));
    ASSERT_NO_FATAL_FAILURE(start());

    // Loaded (its entry has `scale`), and nothing runs for it: no worker in /status, no process
    // below the emperor but the router, no worker started in the log.
    json v = wait_vassal("app", [](const json& j) { return scale_workers(j) >= 0; });
    ASSERT_GE(scale_workers(v), 0) << "no `scale` in the vassal's /status entry: " << v.dump(2);
    EXPECT_EQ(scale_workers(v), 0) << v.dump(2);
    EXPECT_EQ(v["scale"].value("min", -1), 0) << v.dump(2);
    EXPECT_EQ(v["scale"].value("max", -1), 2) << v.dump(2);
    EXPECT_TRUE(worker_pids(v).empty()) << v.dump(2);
    EXPECT_TRUE(worker_processes().empty())
        << "processes below the emperor at start:" << describe_procs(worker_processes());
    EXPECT_EQ(count_log("vassal app: worker 1 started"), 0u) << log();

    // The first request is held while a worker starts, and served.
    const auto from = mark();
    const std::string first = expect_200("app.test", "/id");
    EXPECT_TRUE(first.starts_with("app-")) << "answered by `" << first << "`";
    EXPECT_TRUE(wait_log("vassal app: cold start", kWait, from));
    v = wait_scale("app", 1);
    EXPECT_EQ(scale_workers(v), 1) << v.dump(2);
    // Started because a request came, not to keep a minimum.
    EXPECT_EQ(worker_reasons(v), std::vector<std::string>{"demand"}) << v.dump(2);

    // Idle for 1 s, it goes back to none: in /status and in /proc.
    std::vector<ProcStat> left;
    EXPECT_TRUE(poll_until(
        [&] {
            left = worker_processes();
            json now = vassal("app");
            return left.empty() && scale_workers(now) == 0 && worker_pids(now).empty();
        },
        kStart, 100ms))
        << "still running after idle: " << vassal("app").dump(2) << describe_procs(left);
    EXPECT_TRUE(wait_log("vassal app: scaling down to 0 worker", kWait, from));

    // The next request starts one again.
    const auto again = mark();
    const std::string second = expect_200("app.test", "/id");
    EXPECT_TRUE(second.starts_with("app-")) << "answered by `" << second << "`";
    EXPECT_TRUE(wait_log("vassal app: cold start", kWait, again));

    // Both counted, in the counter and in the histogram of their durations.
    auto cold = wait_metric("liege_cold_starts_total", {{"vassal", "app"}},
                            [](double n) { return n >= 2; });
    ASSERT_TRUE(cold) << "no liege_cold_starts_total{vassal=\"app\"}:\n" << metrics();
    EXPECT_GE(*cold, 2);
    auto timed = wait_metric("liege_cold_start_seconds_count", {{"vassal", "app"}},
                             [](double n) { return n >= 2; });
    ASSERT_TRUE(timed) << "no liege_cold_start_seconds_count{vassal=\"app\"}:\n" << metrics();
    EXPECT_GE(*timed, 2);
    EXPECT_TRUE(metric(metrics(), "liege_cold_start_seconds_sum", {{"vassal", "app"}}));
    EXPECT_TRUE(
        metric(metrics(), "liege_cold_start_seconds_bucket", {{"vassal", "app"}, {"le", "+Inf"}}));
}

// The race of a request with the pool's last worker going away: sent the moment the emperor
// logs that it scales down to 0, the request is held, a new worker started, and it gets 200.
// Three times, since the moment differs a little each time.
TEST_F(Scaling, RequestSentAsTheLastWorkerBeginsToStopGets200) {
    write_vassal("app",
                 backend_vassal("app.test", "workers = { min = 0, max = 1, idle = \"500ms\" }\n"));
    ASSERT_NO_FATAL_FAILURE(start());

    for (int round = 1; round <= 3; ++round) {
        SCOPED_TRACE("round " + std::to_string(round));
        // No worker left from the round before: one that was still stopping when that round's
        // last request came may have served it, and this round's too, and then there would be
        // no scale-down left to wait for.
        json v = wait_vassal("app", [](const json& j) { return scale_workers(j) == 0; });
        ASSERT_EQ(scale_workers(v), 0) << v.dump(2);
        const auto from = mark();
        expect_200("app.test", "/id?round=" + std::to_string(round));
        ASSERT_TRUE(wait_log("vassal app: scaling down to 0", kStart, from))
            << "the worker was never stopped after 500 ms idle";
        // At once: the worker is stopping (or just gone) now.
        expect_200("app.test", "/id?after-scale-down=" + std::to_string(round));
    }
}

// ---- demand -----------------------------------------------------------------------------------

// Twelve clients against a pool of one-request-at-a-time workers: requests wait for a slot, so
// the pool grows, one worker at a time, to max = 4 and no further. When the load ends, the
// workers it added go idle and the pool shrinks back to min = 1. Nothing fails meanwhile.
//
// The load is sized to the scale-up rule (a request waiting more than about 0.5 s for a slot):
// 12 clients of 400 ms requests wait about 4.4 s behind one worker and still about 0.8 s behind
// four, so the pool has reason to grow past max. (Six clients of 100 ms requests would wait about
// 0.5 s behind one worker: too near the threshold to say whether the pool must grow.)
TEST_F(Scaling, PoolGrowsUnderLoadUpToMaxAndShrinksBackToMinAfterIt) {
    write_vassal("app", backend_vassal("app.test", "workers = { min = 1, max = 4, idle = \"2s\" }\n"
                                                   "concurrency = 1\n"));
    ASSERT_NO_FATAL_FAILURE(start());
    json v = wait_scale("app", 1);
    ASSERT_EQ(scale_workers(v), 1) << v.dump(2);
    EXPECT_EQ(worker_reasons(v), std::vector<std::string>{"min"}) << v.dump(2);
    expect_200("app.test", "/id");

    // Every moment, in /status and in /proc: no more than max, no fewer than min.
    Peak most;
    std::atomic<int> fewest{1000};
    std::atomic<int> polls{0};
    Sampler sampler(
        [&] {
            json now = vassal("app");
            const int workers = scale_workers(now);
            if (workers >= 0) {
                ++polls;
                fewest = std::min(fewest.load(), workers);
                most.offer(static_cast<std::size_t>(workers), [&] { return now.dump(2); });
                most.offer(worker_pids(now).size(), [&] { return now.dump(2); });
            }
            auto procs = worker_processes();
            most.offer(procs.size(), [&] { return describe_procs(procs); });
        },
        100ms);

    const auto from = mark();
    LoadClients load(port_, 12, {"/slow?ms=400"}, {.host = "app.test", .timeout = kStart});
    v = wait_vassal("app", [](const json& j) { return scale_workers(j) >= 2; });
    EXPECT_GE(scale_workers(v), 2) << "the pool did not grow under load: " << v.dump(2);
    EXPECT_TRUE(wait_log("vassal app: scaling up to 2 worker", kWait, from));
    // An added worker says why it runs, and what it weighs.
    for (const auto& w : v.value("workers", json::array())) {
        EXPECT_TRUE(w.contains("reason") && w.contains("rss_bytes")) << w.dump(2);
    }
    const auto reasons = worker_reasons(v);
    EXPECT_EQ(std::count(reasons.begin(), reasons.end(), "demand"),
              static_cast<long>(reasons.size()) - 1)
        << v.dump(2);
    // Under load past what 4 workers serve, the pool reaches max, and stays there for 3 s more
    // of the load (pacing, not a wait for anything) while the sampler watches it stay at most 4.
    v = wait_vassal(
        "app", [](const json& j) { return scale_workers(j) >= 4; }, 40s);
    EXPECT_EQ(scale_workers(v), 4) << "the pool did not reach max under load: " << v.dump(2);
    const auto until = Clock::now() + 3s;
    poll_until([&] { return Clock::now() >= until; }, 4s, 100ms);
    ASSERT_TRUE(load.wait_requests(12)) << load.failures();
    load.stop();
    // One worker at a time: the pool went 1, 2, 3, 4, never two at once.
    EXPECT_EQ(sizes_logged(log().substr(from), "app", "up"), (std::vector<int>{2, 3, 4}))
        << log().substr(from);
    EXPECT_EQ(load.failed(), 0u) << "of " << load.done() << ":" << load.failures();

    // After the load, back to min.
    v = wait_scale("app", 1, 40s);
    EXPECT_EQ(scale_workers(v), 1) << "the pool did not shrink back: " << v.dump(2);
    std::vector<ProcStat> procs;
    EXPECT_TRUE(poll_until(
        [&] {
            procs = worker_processes();
            return procs.size() == 1;
        },
        kStart, 100ms))
        << describe_procs(procs);
    EXPECT_TRUE(wait_log("vassal app: scaling down to 1 worker", kWait, from));
    sampler.stop();

    EXPECT_GT(polls.load(), 0) << "the sampler never read the vassal's `scale`";
    EXPECT_LE(most.get(), 4u) << "more than max = 4 workers at one moment:\n" << most.where();
    EXPECT_GE(fewest.load(), 1) << "fewer than min = 1 worker at one moment";
    auto up = wait_metric("liege_scale_events_total", {{"vassal", "app"}, {"direction", "up"}},
                          [](double n) { return n >= 1; });
    EXPECT_TRUE(up && *up >= 1) << metrics();
    auto down = wait_metric("liege_scale_events_total", {{"vassal", "app"}, {"direction", "down"}},
                            [](double n) { return n >= 1; });
    EXPECT_TRUE(down && *down >= 1) << metrics();
}

// A steady load the pool has settled to does not make it flap: three clients back to back make
// the pool grow past min (400 ms requests wait about 0.8 s behind one worker) and then keep
// every worker it has busy, so over 8 s more of the same load it scales up or down at most
// once. (With 50 ms requests three clients never wait 0.5 s even behind one worker: the pool
// would stay at min, where it cannot flap, and the test would show nothing.)
TEST_F(Scaling, SteadyLoadDoesNotMakeThePoolScaleUpAndDownAgainAndAgain) {
    write_vassal("app", backend_vassal("app.test", "workers = { min = 1, max = 4, idle = \"2s\" }\n"
                                                   "concurrency = 1\n"));
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_EQ(scale_workers(wait_scale("app", 1)), 1);
    expect_200("app.test", "/id");

    LoadClients load(port_, 3, {"/slow?ms=400"}, {.host = "app.test", .timeout = kStart});

    // Settled: grown past min, then `scale.workers` unchanged for 3 s in a row (within 40 s).
    int current = -1;
    auto since = Clock::now();
    std::string history;
    const bool settled = poll_until(
        [&] {
            const int now = scale_workers(vassal("app"));
            if (now != current) {
                history.append(" ").append(std::to_string(now));
                current = now;
                since = Clock::now();
            }
            return now >= 2 && Clock::now() - since >= 3s;
        },
        40s, 100ms);
    ASSERT_TRUE(settled) << "the pool never held one size above min for 3 s; sizes seen:"
                         << history;

    auto events = [&] {
        return metric(metrics(), "liege_scale_events_total", {{"vassal", "app"}});
    };
    const auto before = events();
    ASSERT_TRUE(before) << "no liege_scale_events_total{vassal=\"app\"}:\n" << metrics();

    // 8 s more of the same load (pacing, not a wait for anything), the pool's size watched.
    const auto until = Clock::now() + 8s;
    history.clear();
    int last = current;
    poll_until(
        [&] {
            const int now = scale_workers(vassal("app"));
            if (now != last) {
                history.append(" ").append(std::to_string(now));
                last = now;
            }
            return Clock::now() >= until;
        },
        9s, 200ms);
    const auto after = events();
    load.stop();

    ASSERT_TRUE(after);
    EXPECT_LE(*after - *before, 1)
        << "scale events went from " << *before << " to " << *after
        << " under a steady load; sizes after settling at " << current << ":" << history;
    EXPECT_EQ(load.failed(), 0u) << "of " << load.done() << ":" << load.failures();
}

// ---- recycling --------------------------------------------------------------------------------

// Two workers with max_requests = 40 under 600 requests: each worker is replaced after about 40
// of them, the replacement first started and routed to, the old one drained and stopped, so no
// request fails; and the vassal recycles one worker at a time: in the log, every recycle ends
// before the next one begins, and /status never shows more than the pool and one replacement.
TEST_F(Scaling, WorkersPastMaxRequestsAreRecycledOneAtATimeWithoutAFailedRequest) {
    write_vassal("app", backend_vassal("app.test", "workers = 2\n"
                                                   "concurrency = 1\n"
                                                   "[recycle]\n"
                                                   "max_requests = 40\n"));
    ASSERT_NO_FATAL_FAILURE(start());
    json v = wait_vassal("app", [](const json& j) { return worker_pids(j).size() == 2; });
    ASSERT_EQ(worker_pids(v).size(), 2u) << v.dump(2);
    expect_200("app.test", "/id");

    Peak most;
    Sampler sampler(
        [&] {
            json now = vassal("app");
            most.offer(worker_pids(now).size(), [&] { return now.dump(2); });
        },
        100ms);

    const auto from = mark();
    // 4 clients x 150 requests; 20 ms each keeps the 2 workers busy for a few seconds, so the
    // recycles happen while requests flow.
    LoadClients load(port_, 4, {"/slow?ms=20"}, {.per_client = 150, .host = "app.test"});
    EXPECT_TRUE(load.wait_finished(90s)) << load.done() << " of 600 done";
    load.stop();
    EXPECT_EQ(load.ok(), 600u) << load.failed() << " failed:" << load.failures();

    auto recycles =
        wait_metric("liege_worker_recycles_total", {{"vassal", "app"}, {"reason", "max_requests"}},
                    [](double n) { return n >= 4; });
    ASSERT_TRUE(recycles) << "no liege_worker_recycles_total{vassal=\"app\","
                             "reason=\"max_requests\"}:\n"
                          << metrics();
    EXPECT_GE(*recycles, 4) << "600 requests over 2 workers at about 40 each";
    sampler.stop();
    EXPECT_LE(most.get(), 3u) << "more than one replacement at once:\n" << most.where();

    // In the log: between one recycle's start and the next one's, the first has ended.
    std::vector<std::string> lines;
    std::istringstream in(log().substr(from));
    for (std::string line; std::getline(in, line);) {
        if (line.find("vassal app: recycling worker") != std::string::npos ||
            line.find("recycled (max_requests)") != std::string::npos) {
            lines.push_back(line);
        }
    }
    std::size_t begun = 0;
    bool open = false;
    std::string sequence;
    for (const auto& line : lines) {
        sequence += "\n  " + line;
        if (line.find("vassal app: recycling worker") != std::string::npos) {
            EXPECT_TRUE(line.find("(max_requests") != std::string::npos) << line;
            EXPECT_FALSE(open) << "a recycle began before the previous one ended:" << sequence;
            open = true;
            ++begun;
        } else {
            EXPECT_TRUE(open) << "a recycle ended that had not begun:" << sequence;
            open = false;
        }
    }
    EXPECT_GE(begun, 4u) << "recycles logged:" << sequence;
}

// A worker whose RSS goes past max_rss is replaced: after /alloc makes the only worker hold
// 128 MiB, it is recycled (a new pid in /status, a max_rss recycle counted) while every request
// sent meanwhile is answered.
TEST_F(Scaling, WorkerAboveMaxRssIsReplacedWhileEveryRequestIsServed) {
    write_vassal("app", backend_vassal("app.test", "workers = 1\n"
                                                   "[recycle]\n"
                                                   "max_rss = \"64MiB\"\n"));
    ASSERT_NO_FATAL_FAILURE(start());
    json v = wait_vassal("app", [](const json& j) { return worker_pids(j).size() == 1; });
    ASSERT_EQ(worker_pids(v).size(), 1u) << v.dump(2);
    const pid_t old_pid = worker_pids(v)[0];

    std::string error;
    auto r = get("app.test", "/alloc?mb=128", &error);
    ASSERT_TRUE(r) << error;
    ASSERT_EQ(r->status, 200) << r->body;
    EXPECT_EQ(r->body, "allocated 128 MiB");

    // Requests keep coming (each a 200) until the worker has been replaced.
    int sent = 0;
    std::optional<double> recycles;
    pid_t now_pid = old_pid;
    const bool replaced = poll_until(
        [&] {
            expect_200("app.test", "/id?n=" + std::to_string(++sent));
            recycles = metric(metrics(), "liege_worker_recycles_total",
                              {{"vassal", "app"}, {"reason", "max_rss"}});
            auto pids = worker_pids(vassal("app"));
            now_pid = pids.size() == 1 ? pids[0] : old_pid;
            return recycles && *recycles >= 1 && now_pid != old_pid;
        },
        kStart, 100ms);
    EXPECT_TRUE(replaced) << "after " << sent << " requests: recycles "
                          << (recycles ? std::to_string(*recycles) : "(no series)")
                          << ", worker pid " << now_pid << " (was " << old_pid << ")\n"
                          << vassal("app").dump(2);
    EXPECT_TRUE(wait_log("vassal app: recycling worker", kWait));
    EXPECT_TRUE(wait_log("(max_rss", kWait));
    EXPECT_TRUE(poll_until([&] { return process_gone(old_pid); }, kStart))
        << "the worker above max_rss is still running";
    expect_200("app.test", "/id?after");
}

// A request running past request_timeout gets 504, and its worker, stuck in it, is replaced: a
// new pid in /status, and the next request is served.
TEST_F(Scaling, RequestPastRequestTimeoutGets504AndItsWorkerIsReplaced) {
    write_vassal("app", backend_vassal("app.test", "workers = 1\n"
                                                   "[recycle]\n"
                                                   "request_timeout = \"1s\"\n"));
    ASSERT_NO_FATAL_FAILURE(start());
    json v = wait_vassal("app", [](const json& j) { return worker_pids(j).size() == 1; });
    ASSERT_EQ(worker_pids(v).size(), 1u) << v.dump(2);
    const pid_t old_pid = worker_pids(v)[0];
    expect_200("app.test", "/id");

    std::string error;
    const auto sent = Clock::now();
    auto r = get("app.test", "/hang", &error, kStart);
    const auto waited = std::chrono::duration_cast<Millis>(Clock::now() - sent);
    ASSERT_TRUE(r) << error;
    EXPECT_EQ(r->status, 504) << r->body;
    EXPECT_GE(waited.count(), 900) << "the 504 came before the request had run for 1 s";

    v = wait_vassal("app", [&](const json& j) {
        auto pids = worker_pids(j);
        return pids.size() == 1 && pids[0] != old_pid;
    });
    EXPECT_EQ(worker_pids(v).size(), 1u) << v.dump(2);
    EXPECT_NE(worker_pids(v), std::vector<pid_t>{old_pid}) << "not replaced: " << v.dump(2);
    EXPECT_TRUE(poll_until([&] { return process_gone(old_pid); }, kStart))
        << "the worker stuck in the request is still running";
    expect_200("app.test", "/id");
    EXPECT_TRUE(wait_log("(request_timeout", kWait));

    auto recycles = wait_metric("liege_worker_recycles_total",
                                {{"vassal", "app"}, {"reason", "request_timeout"}},
                                [](double n) { return n >= 1; });
    ASSERT_TRUE(recycles) << "no liege_worker_recycles_total{vassal=\"app\","
                             "reason=\"request_timeout\"}:\n"
                          << metrics();
    EXPECT_EQ(*recycles, 1);
}

// ---- --max-workers ----------------------------------------------------------------------------

// --max-workers 2 holds for all vassals together: vassal a grows to 2 workers under load and
// keeps them (idle 5m), so when b gets its first request the cap is reached, and b takes the
// slot of a's longest-idle worker: a drops to 1, b starts 1, its request gets 200. At no moment
// do /status or /proc show more than 2 workers.
//
// a's load is four clients of 400 ms requests, which wait about 1.2 s behind one worker: enough
// to make it grow. (Three of 200 ms would wait 0.4 s, under the scale-up threshold.)
TEST_F(Scaling, MaxWorkersCapsTheWorkersOfAllVassalsAndAGrowingPoolTakesAnIdleSlot) {
    const std::string keys = "workers = { min = 0, max = 2, idle = \"5m\" }\nconcurrency = 1\n";
    write_vassal("a", backend_vassal("a.test", keys));
    write_vassal("b", backend_vassal("b.test", keys));
    ASSERT_NO_FATAL_FAILURE(start({"--max-workers", "2"}));
    ASSERT_GE(scale_workers(wait_vassal("b", [](const json& j) { return scale_workers(j) >= 0; })),
              0);

    Peak in_status;
    Peak in_proc;
    std::atomic<int> polls{0};
    Sampler sampler(
        [&] {
            if (auto s = status()) {
                ++polls;
                in_status.offer(workers_with_pid(*s), [&] { return s->dump(2); });
            }
            auto procs = worker_processes();
            in_proc.offer(procs.size(), [&] { return describe_procs(procs); });
        },
        50ms);

    {
        LoadClients load(port_, 4, {"/slow?ms=400"}, {.host = "a.test", .timeout = kStart});
        json a = wait_scale("a", 2);
        EXPECT_EQ(scale_workers(a), 2) << "a did not grow to 2 under load: " << a.dump(2);
        load.stop();
        EXPECT_EQ(load.failed(), 0u) << "of " << load.done() << ":" << load.failures();
    }

    const auto from = mark();
    const std::string by = expect_200("b.test", "/id");
    EXPECT_TRUE(by.starts_with("b-")) << "answered by `" << by << "`";
    EXPECT_TRUE(wait_log("vassal b: cold start", kWait, from));
    json a = wait_scale("a", 1);
    EXPECT_EQ(scale_workers(a), 1) << "a kept its workers: " << a.dump(2);
    json b = wait_scale("b", 1);
    EXPECT_EQ(scale_workers(b), 1) << b.dump(2);

    sampler.stop();
    EXPECT_GT(polls.load(), 0);
    EXPECT_LE(in_status.get(), 2u) << "more than 2 workers in /status at one moment:\n"
                                   << in_status.where();
    EXPECT_LE(in_proc.get(), 2u) << "more than 2 worker processes at one moment:\n"
                                 << in_proc.where();
}

// ---- many vassals -----------------------------------------------------------------------------

// 500 on-demand vassals load and run nothing: /status lists them all, no worker in it or in
// /proc; a request to one of them starts that one's worker only and gets 200. (How fast they
// load is measured in bench/, not here.)
TEST_F(Scaling, FiveHundredOnDemandVassalsLoadWithoutStartingAWorker) {
    constexpr int kVassals = 500;
    auto name_of = [](int i) {
        char name[8];
        std::snprintf(name, sizeof(name), "v%03d", i);
        return std::string(name);
    };
    for (int i = 0; i < kVassals; ++i) {
        write_vassal(name_of(i),
                     backend_vassal(name_of(i) + ".test", "workers = { min = 0, max = 1 }\n"));
    }
    ASSERT_NO_FATAL_FAILURE(start());

    // Every vassal listed; a worker process appearing meanwhile ends the wait at once, since an
    // emperor that starts them would be starting 500.
    std::size_t listed = 0;
    std::vector<ProcStat> procs;
    poll_until(
        [&] {
            procs = worker_processes();
            if (auto s = status()) {
                listed = s->value("vassals", json::array()).size();
            }
            return listed == kVassals || !procs.empty();
        },
        60s, 200ms);
    ASSERT_TRUE(procs.empty()) << "worker processes while the vassals load:"
                               << describe_procs(procs);
    ASSERT_EQ(listed, static_cast<std::size_t>(kVassals));

    auto s = status();
    ASSERT_TRUE(s);
    std::string running;
    std::size_t without_scale = 0;
    for (const auto& v : (*s)["vassals"]) {
        if (scale_workers(v) != 0) {
            ++without_scale;
        }
        if (!worker_pids(v).empty()) {
            running.append(" ").append(v.value("name", std::string("?")));
        }
    }
    EXPECT_EQ(without_scale, 0u) << "vassals whose scale.workers is not 0";
    EXPECT_TRUE(running.empty()) << "vassals with a worker:" << running;
    procs = worker_processes();
    EXPECT_TRUE(procs.empty()) << describe_procs(procs);

    const std::string by = expect_200("v250.test", "/id");
    EXPECT_TRUE(by.starts_with("v250-")) << "answered by `" << by << "`";
    json v = wait_scale("v250", 1);
    EXPECT_EQ(scale_workers(v), 1) << v.dump(2);
    procs = worker_processes();
    EXPECT_EQ(procs.size(), 1u) << "one request started more than its own worker:"
                                << describe_procs(procs);
}

} // namespace
