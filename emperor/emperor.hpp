// The emperor's state: vassals, their generations and workers, and the router child.
//
// Lifecycle rules (DESIGN.md "Lifecycle semantics") and where they live:
//   - a worker is routed only once ready (WorkerProc::became_ready → publish_routes);
//   - reloads: a new Generation is built beside the active one; `rolling` routes each new worker
//     as it becomes ready and drains one old worker per new one, `bluegreen` waits for the whole
//     new generation, then switches. A new generation that fails is abandoned (abandon_reload)
//     and the active one is brought back to full strength;
//   - draining: a worker marked draining stays in the route set with draining=true until the
//     router reports it drained (on_drained) or drain_timeout passes; then it is stopped;
//   - an unexpected exit: the worker is unrouted at once and restarted after a backoff of 100 ms
//     doubling to 30 s, reset after a minute of health.
// Objects that a libuv or child callback may still reference are never destroyed inside that
// callback: they go to graveyard_, emptied from the loop.
#pragma once

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "liege/control.hpp"
#include "liege/emperor.hpp"
#include "liege/spawner.hpp"
#include "liege/uv.hpp"
#include "liege/vassal.hpp"
#include "liege/watcher.hpp"

namespace liege::emperor {

class Emperor;
struct VassalRt;
struct Generation;

enum class WorkerState { Starting, Ready, Draining, Stopped, Backoff };
enum class VassalState { Starting, Running, Reloading, Failed, Stopping };
std::string_view to_string(WorkerState s);
std::string_view to_string(VassalState s);

// Backoff before restarting a worker after `failures` consecutive failures: 100 ms doubling,
// capped at 30 s.
std::chrono::milliseconds restart_backoff(int failures);

struct WorkerProc {
    WorkerProc(Emperor& e, VassalRt& v, Generation& g, int slot);
    ~WorkerProc();

    Emperor& emperor;
    VassalRt* vassal;
    Generation* generation;
    int slot;
    WorkerState state = WorkerState::Starting;
    bool routed = false;   // in the router's backend set
    bool stopping = false; // we asked it to exit
    bool retiring = false; // leaves for good once stopped (drained, removed, abandoned)
    std::unique_ptr<Child> child;
    Address address;
    int listen_fd = -1; // socket activation: the emperor's copy
    int restarts = 0;
    int failures = 0; // consecutive
    int probe_failures = 0;
    int64_t started_ms = 0;
    int64_t ready_ms = 0;
    int64_t start_deadline_ms = 0;
    uint64_t readiness_poll_ms = 0; // the next wait between readiness probes; grows to a cap
    std::function<void()> cancel_probe;
    UvHandle<uv_timer_t> timer;
    std::function<void()> on_stopped; // once, when the process is gone

    void spawn();
    void arm(uint64_t ms);
    void on_timer();
    void probe_now();
    void became_ready();
    void start_failed(const std::string& why);
    void exited(ExitStatus st);
    void drain();
    void stop(std::function<void()> done = {});
    std::string tag() const;
    int pid() const { return child != nullptr ? child->pid() : 0; }
};

struct Generation {
    uint64_t id = 0;
    Vassal config;
    std::vector<std::unique_ptr<WorkerProc>> workers;

    size_t ready_count() const;
    WorkerProc* find_slot(int slot) const;
};

struct VassalRt {
    std::string name;
    std::filesystem::path file;
    uint64_t content_hash = 0; // last content seen (valid or not)
    VassalState state = VassalState::Starting;
    std::unique_ptr<Generation> active;
    std::unique_ptr<Generation> next; // a reload in progress
    std::vector<std::unique_ptr<WorkerProc>> retiring;
    uint64_t next_generation = 1;
    std::string last_error;
    int64_t last_error_unix = 0;
    uint64_t reloads = 0;
    uint64_t failed_reloads = 0;
    int64_t started_unix = 0;
    bool removing = false;
    // Callers of reload() waiting for this vassal's outcome.
    std::vector<std::function<void(bool, std::string)>> waiters;
};

class Emperor {
public:
    Emperor(uv_loop_t* loop, EmperorOptions options);
    ~Emperor();

    // Binds the public sockets, starts the router and the watcher. Returns 0 or an exit code.
    int start();
    // SIGTERM/SIGINT: stop accepting, drain, stop every worker; `done` runs when all is gone.
    void shutdown(std::function<void()> done);
    // SIGHUP.
    void rescan();
    // SIGUSR1.
    void reopen_logs();

    // Re-reads the vassal's file and reloads it; `done(ok, message)` runs when the reload has
    // finished or failed. Unknown names get done(false, "unknown vassal 'NAME'") at once.
    void reload(const std::string& name, std::function<void(bool, std::string)> done);
    nlohmann::json status() const;
    const control::StatsMessage& router_stats() const { return stats_; }
    // Runs after each stats message from the router (the admin API derives rates from them).
    void on_router_stats(std::function<void()> fn) { stats_listener_ = std::move(fn); }
    const std::map<std::string, std::unique_ptr<VassalRt>>& vassals() const { return vassals_; }
    uv_loop_t* loop() const { return loop_; }
    const EmperorOptions& options() const { return options_; }
    const std::vector<Address>& listening() const { return bound_; }

    // Used by WorkerProc.
    void publish_routes();
    void worker_ready(WorkerProc& w);
    void worker_failed_start(WorkerProc& w, const std::string& why);
    void worker_exited(WorkerProc& w, ExitStatus st);
    void bury(std::unique_ptr<WorkerProc> w);
    void log_line(const std::string& tag, std::string_view line, bool is_stderr);
    std::filesystem::path runtime_dir() const { return runtime_dir_; }

private:
    void on_changes(const std::vector<DirChange>& changes);
    void apply_file(const std::string& name, const std::filesystem::path& file);
    void start_vassal(VassalRt& v, Vassal config);
    void begin_reload(VassalRt& v, Vassal config);
    void step_reload(VassalRt& v);
    void finish_reload(VassalRt& v);
    void abandon_reload(VassalRt& v, const std::string& why);
    void remove_vassal(VassalRt& v);
    void retire(VassalRt& v, std::unique_ptr<WorkerProc> w);
    void fill_active(VassalRt& v);
    void update_state(VassalRt& v);
    // Answers a reload that started a vassal's first generation: ok once every worker is ready,
    // failed (with `failure`) as soon as a worker fails.
    void settle_first_start(VassalRt& v, const std::string* failure);
    void notify(VassalRt& v, bool ok, const std::string& message);
    void maybe_erase(VassalRt& v);
    void on_drained(const std::string& address);
    void spawn_router();
    void router_exited(ExitStatus st);
    void on_control_line(const std::string& line);
    void maybe_finish_shutdown();

    uv_loop_t* loop_;
    EmperorOptions options_;
    std::filesystem::path runtime_dir_;
    std::vector<int> listen_fds_;
    std::vector<Address> bound_;
    std::unique_ptr<Reaper> reaper_;
    std::unique_ptr<DirWatcher> watcher_;
    std::map<std::string, std::unique_ptr<VassalRt>> vassals_;
    std::vector<std::unique_ptr<WorkerProc>> graveyard_;
    // Generations no longer active whose retiring workers still read their config.
    std::vector<std::unique_ptr<Generation>> retired_generations_;
    void prune_generations();
    UvHandle<uv_idle_t> graveyard_idle_;

    // The router child and its control socket.
    std::unique_ptr<Child> router_;
    UvHandle<uv_pipe_t> control_;
    UvHandle<uv_timer_t> router_restart_;
    control::LineBuffer control_in_;
    // Routes go to a router only after its hello: messages queued before it reads would be stale
    // snapshots it might briefly serve from.
    bool router_greeted_ = false;
    int router_failures_ = 0;
    int64_t router_started_ms_ = 0;
    uint64_t routes_version_ = 0;
    control::StatsMessage stats_;      // the running router's figures plus stats_past_
    control::StatsMessage stats_past_; // counters of routers that have exited
    std::function<void()> stats_listener_;
    int64_t started_unix_ = 0;

    bool shutting_down_ = false;
    std::function<void()> shutdown_done_;
};

int64_t now_ms();
int64_t now_unix();

} // namespace liege::emperor
