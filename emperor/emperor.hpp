// The emperor: vassals from the directory watcher, their generations and workers, the router.
//
// Lifecycle rules (DESIGN.md "Lifecycle semantics") and where they live:
//   - a worker's phases and their transitions: worker_proc.hpp;
//   - the order of a reload (rolling, bluegreen): reload_plan.hpp; here, what the plan's steps
//     do, the switch-over (finish_reload) and abandoning a failed new generation, after which
//     the active one is brought back to full strength;
//   - a vassal's derived state and its reload waiters: vassal_runtime.hpp;
//   - the router child and its control socket: router_supervisor.hpp.
// Every retirement goes through retire_generation(); a worker stays in its vassal's list until
// it reports itself gone, and is destroyed from the loop afterwards (graveyard_), never inside
// the callback that reported it.
#pragma once

#include <uv.h>

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "acme_manager.hpp"
#include "liege/control.hpp"
#include "liege/emperor.hpp"
#include "liege/spawner.hpp"
#include "liege/uv.hpp"
#include "liege/vassal.hpp"
#include "liege/watcher.hpp"
#include "router_supervisor.hpp"
#include "vassal_runtime.hpp"
#include "worker_proc.hpp"

namespace liege::emperor {

class Emperor final : public WorkerHost {
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

    // Re-reads the vassal's file and reloads it; `done(ok, message)` runs from the loop when the
    // reload has finished or failed (at once for an unknown name or an invalid file).
    void reload(const std::string& name, VassalRt::Waiter done);
    // `liege stop NAME`: drains and stops the vassal and keeps it out of service, its file
    // untouched and across rescans, until start(). `done` runs once its workers are gone.
    void stop(const std::string& name, VassalRt::Waiter done);
    // `liege start NAME`: back in service from its file; `done` runs once it is ready.
    void start(const std::string& name, VassalRt::Waiter done);
    bool held(const std::string& name) const { return held_.count(name) != 0; }

    // The last lines the vassal's workers printed, kept in a ring (kLogRing lines a vassal).
    struct LogLine {
        uint64_t seq = 0; // increasing over every vassal's lines
        std::string worker;
        bool is_stderr = false;
        std::string text;
    };
    static constexpr size_t kLogRing = 1000;
    static constexpr size_t kLastOutputLines = 10; // /status shows a failed vassal's last lines
    // Lines with seq above `after`, at most the last `n`; nullopt for a name never seen.
    std::optional<std::vector<LogLine>> logs(const std::string& name, uint64_t after,
                                             size_t n) const;

    nlohmann::json status() const;
    const control::StatsMessage& router_stats() const { return router_.stats(); }
    // Runs after each stats message from the router (the admin API derives rates from them).
    void on_router_stats(std::function<void()> fn) { stats_listener_ = std::move(fn); }
    const std::map<std::string, std::unique_ptr<VassalRt>>& vassals() const { return vassals_; }
    const EmperorOptions& options() const { return options_; }
    const std::vector<Address>& listening() const { return bound_; }

    // WorkerHost.
    uv_loop_t* loop() const override { return loop_; }
    std::filesystem::path runtime_dir() const override { return runtime_dir_; }
    const std::string& profile() const override { return options_.env_name; }
    void log_line(const std::string& tag, std::string_view line, bool is_stderr) override;
    void worker_ready(WorkerProc& w) override;
    void worker_failed(WorkerProc& w, const std::string& why) override;
    void worker_exited(WorkerProc& w, ExitStatus st) override;
    void worker_backing_off(WorkerProc& w) override;
    void worker_gone(WorkerProc& w) override;

private:
    VassalRt& vassal_of(const WorkerProc& w);
    void on_changes(const std::vector<DirChange>& changes);
    void apply_file(const std::string& name, const std::filesystem::path& file);
    GenerationPtr new_generation(VassalRt& v, Vassal config);
    WorkerProc* add_worker(VassalRt& v, const GenerationPtr& g, int slot,
                           StartReason why = StartReason::Min);
    void start_vassal(VassalRt& v, Vassal config);
    // The active generation's workers start (the first start, or after a restart's stop).
    void run_active(VassalRt& v, std::string_view what);
    // `after`: the vassals `config` waits for, "" when it may start now. A name that is no
    // vassal, or a wait that would close a cycle, does not hold it (liege check reports both).
    std::string waiting_for(const VassalRt& v, const Vassal& config) const;
    // Starts every pending vassal whose `after` vassals are ready now.
    void start_waiting();
    // A vassal whose first start waits for one that has failed says so, once per failure, in
    // its last_error and the log; it still starts once that vassal is ready.
    void report_blocked_starts();
    // [watch]: (re)starts the code watcher for the active generation, or drops it.
    void watch_code(VassalRt& v);
    void code_changed(const std::string& name, const std::string& changed);
    // Whether another vassal still running lists `name` in `after` (it stops first).
    bool needed_by_others(const std::string& name) const;
    // The pool (emperor/pool.cpp): scaling with demand, --max-workers, recycling.
    //
    // The size a pool of `config` starts at (a reload keeps a scaled pool's size within the new
    // bounds).
    int wanted_size(const VassalRt& v, const Vassal& config) const;
    int min_size(const VassalRt& v) const;
    // Starts active workers (at the lowest free slots) until the pool has pool_size. Beyond the
    // pool's floor, only below --max-workers: else it waits for a slot (awaiting_slot).
    void fill_active(VassalRt& v, StartReason why = StartReason::Min);
    // A new generation is active: its scaler, its size.
    void reset_scaler(VassalRt& v);
    // One more worker (the scaling rule, a cold start). False when it must wait at the cap.
    bool grow(VassalRt& v, StartReason why, scaling::Reason rule);
    void shrink(VassalRt& v, int slot);
    // Runs the scaling rule on what is known of the pool now (`queued` waiting, `peak` in
    // flight at once since the last observation).
    void observe_pool(VassalRt& v, int queued, int64_t peak);
    void size_pools();
    int worker_processes() const;
    bool at_cap() const;
    // At the cap: drains the longest-idle worker of another vassal above its min, so that `v`
    // can start one once it is gone. False when there is none.
    bool reclaim_slot_for(VassalRt& v);
    // Vassals waiting at the cap get the slots that are free now.
    void grant_slots();
    // Replaces `w` (max_requests, max_rss): its replacement first, then it drains. One at a
    // time per vassal; false when another recycle of the vassal is under way.
    bool recycle(VassalRt& v, WorkerProc& w, control::RecycleReason why, const std::string& detail);
    // request_timeout: `w` is stopped now; a replacement starts first when the pool is at min.
    void recycle_hung(VassalRt& v, WorkerProc& w);
    // Samples every worker's RSS; starts the recycle of one worker per vassal that is due.
    void check_recycles();
    void start_due_recycle(VassalRt& v);
    void on_recycle(const control::RecycleMessage& m);
    void on_demand(const control::DemandMessage& m);
    // The worker `address`/`generation` names, and its vassal.
    std::pair<VassalRt*, WorkerProc*> find_worker(const std::string& address, uint64_t generation);
    // Reloads a scaled pool that runs no worker: the new generation is active at once.
    void switch_idle_pool(VassalRt& v, Vassal config);

    void begin_reload(VassalRt& v, Vassal config);
    // strategy = "restart": stop the old workers, then start_restarted() once they are gone.
    void begin_restart(VassalRt& v, Vassal config);
    void start_restarted(VassalRt& v);
    void finish_reload(VassalRt& v);
    // `superseded`: a newer change or the removal of the file takes over, which is no failure.
    void abandon_reload(VassalRt& v, const std::string& why, bool superseded = false);
    void remove_vassal(VassalRt& v);
    // The one way workers leave: every worker of `g` drains (when `drain` and serving) or stops.
    void retire_generation(VassalRt& v, const Generation* g, bool drain);
    void maybe_erase(VassalRt& v);
    void on_drained(const control::DrainedMessage& m);
    // Each worker gets its figures (liveness); then the stats listener runs.
    void router_stats_arrived();
    void publish_routes();
    // Publishes the routes if the vassal's failure (RouteSpec.failed, last_error) changed
    // without a change of its backends.
    void publish_failure(VassalRt& v);
    void router_exited(ExitStatus st);
    void maybe_finish_shutdown();
    // Records `error` as the vassal's last_error, about generation `generation` (see VassalRt).
    void failed(VassalRt& v, std::string error, uint64_t generation);
    // A failed vassal's workers' last lines of output ("[app/1] text"), for /status.
    nlohmann::json last_output(const VassalRt& v) const;

    uv_loop_t* loop_;
    EmperorOptions options_;
    std::filesystem::path runtime_dir_;
    std::vector<int> listen_fds_;
    std::vector<Address> bound_;
    std::vector<int> tls_fds_; // HTTPS
    std::vector<Address> bound_tls_;
    std::unique_ptr<Reaper> reaper_;
    std::unique_ptr<DirWatcher> watcher_;
    std::map<std::string, std::unique_ptr<VassalRt>> vassals_;
    // Gone workers, destroyed from the loop: the callback that reported one is still on the
    // stack of its Child.
    std::vector<std::unique_ptr<WorkerProc>> graveyard_;
    UvHandle<uv_idle_t> graveyard_idle_;
    RouterSupervisor router_;
    std::unique_ptr<AcmeManager> acme_; // [tls] acme = true
    uint64_t routes_version_ = 0;
    std::mt19937_64 rng_{std::random_device{}()}; // each worker's max_requests draw
    std::function<void()> stats_listener_;
    int64_t started_unix_ = 0;

    std::set<std::string> held_; // stopped with `liege stop`
    std::map<std::string, std::deque<LogLine>> log_rings_;
    uint64_t log_seq_ = 0;

    bool shutting_down_ = false;
    std::function<void()> shutdown_done_;
};

} // namespace liege::emperor
