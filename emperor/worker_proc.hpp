// A worker process of one vassal generation, from its first spawn until it is gone for good.
//
// Its whole lifecycle is the phase below; every change goes through set_state(), which aborts
// on a transition this table does not list.
//
//   Starting   → Standby     readiness probe answered, or with [health] notify READY=1 came on
//                            its NOTIFY_SOCKET (host: worker_ready)
//              → Restarting  not ready by start_timeout, or the spawn failed (host: restart())
//              → Backoff     exited on its own (host: back_off())
//   Standby    → Serving     routed: at once, or when its generation is complete (host: route())
//   Standby,
//   Serving    → Restarting  liveness probes failing (host: restart())
//              → Backoff     exited on its own (host: back_off())
//   Serving    → Draining    retired: draining in the route set until drained or drain_timeout
//   Draining   → Retiring    the router reported it drained, or drain_timeout passed
//   Restarting → Backoff     exited after the stop signal; the backoff timer runs
//   Backoff    → Starting    the backoff timer fired: spawned again
//   any but Draining, Stopped
//              → Retiring    retired while it has a process: the stop signal, SIGKILL later
//              → Stopped     retired with no process left (host: worker_gone, from the loop)
//   Draining,
//   Retiring   → Stopped     exited (host: worker_gone)
//
// Retiring and Stopped are for good: a retired worker is never routed or restarted again, and
// once Stopped its host destroys it (after the callback that reported it returned).
#pragma once

#include <uv.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "generation.hpp"
#include "liege/address.hpp"
#include "liege/control.hpp"
#include "liege/health.hpp"
#include "liege/notify_socket.hpp"
#include "liege/restart_backoff.hpp"
#include "liege/spawner.hpp"
#include "liege/uv.hpp"

namespace liege::emperor {

class WorkerProc;

// What /status reports (DESIGN.md, "Admin API").
enum class WorkerState { Starting, Ready, Draining, Stopped, Backoff };
std::string_view to_string(WorkerState s);

// Why a worker was started, as /status gives it: the pool's floor (`min`, or a fixed pool's
// size), demand (the scaling rule, a cold start), or in place of one being recycled.
enum class StartReason { Min, Demand, Replacement };
std::string_view to_string(StartReason r); // "min", "demand", "replacement"

enum class WorkerPhase {
    Starting,
    Standby,
    Serving,
    Draining,
    Restarting,
    Retiring,
    Backoff,
    Stopped
};
std::string_view to_string(WorkerPhase p);

// The emperor, as a worker sees it. Every event is called from a libuv callback, never from
// inside a WorkerProc method the host called.
class WorkerHost {
public:
    virtual uv_loop_t* loop() const = 0;
    virtual std::filesystem::path runtime_dir() const = 0;
    virtual const std::string& profile() const = 0;
    virtual void log_line(const std::string& tag, std::string_view line, bool is_stderr) = 0;

    // Now Standby: route() it, or hold it until its generation is complete.
    virtual void worker_ready(WorkerProc& w) = 0;
    // Could not start (spawn error, start_timeout) or stopped answering health checks: the
    // host calls restart() or retire().
    virtual void worker_failed(WorkerProc& w, const std::string& why) = 0;
    // Exited while nobody asked it to: the host calls back_off() or retire().
    virtual void worker_exited(WorkerProc& w, ExitStatus st) = 0;
    // Entered Backoff after a restart().
    virtual void worker_backing_off(WorkerProc& w) = 0;
    // Stopped for good; the host may destroy it once this returns.
    virtual void worker_gone(WorkerProc& w) = 0;

protected:
    ~WorkerHost() = default;
};

class WorkerProc {
public:
    WorkerProc(WorkerHost& host, std::string vassal, GenerationPtr generation, int slot);
    ~WorkerProc();
    WorkerProc(const WorkerProc&) = delete;
    WorkerProc& operator=(const WorkerProc&) = delete;

    // Starts the process (Starting). A spawn that fails is reported from the loop.
    void spawn();
    // Standby → Serving.
    void route();
    // Leaves for good: a serving worker drains first when `drain` (no router, nothing to drain
    // through: stop at once); anything else stops now. A draining worker keeps draining unless
    // !drain.
    void retire(bool drain = true);
    // The router has no request in flight on it (Draining → Retiring).
    void drained();
    // After worker_failed: stop the process and back off (Restarting, then Backoff).
    void restart();
    // After worker_exited: back off before the next spawn. Returns the wait.
    std::chrono::milliseconds back_off();
    // The router's latest figures for the worker's address: whether it is busy decides whether
    // a liveness check that times out counts (liege/health.hpp).
    void router_report(const control::BackendStats& stats);

    WorkerPhase phase() const { return phase_; }
    WorkerState state() const;
    bool serving() const { return phase_ == WorkerPhase::Serving; }
    bool ready() const { return phase_ == WorkerPhase::Standby || phase_ == WorkerPhase::Serving; }
    // Retired: leaves once stopped, whatever generation it belongs to.
    bool retiring() const {
        return phase_ == WorkerPhase::Draining || phase_ == WorkerPhase::Retiring ||
               phase_ == WorkerPhase::Stopped;
    }
    const std::string& vassal() const { return vassal_; }
    const Generation& generation() const { return *generation_; }
    const GenerationPtr& generation_ptr() const { return generation_; }
    int slot() const { return slot_; }
    const Address& address() const { return address_; }
    bool daemon() const { return generation_->config.daemon(); }
    int pid() const { return child_ != nullptr ? child_->pid() : 0; }
    int restarts() const { return restarts_; }
    int failures() const { return backoff_.failures(); }
    int64_t started_ms() const { return started_ms_; }
    std::string tag() const { return vassal_ + "/" + std::to_string(slot_); }
    // The child's last output lines, each on its own indented line, for failure reports.
    std::string last_lines() const;

    // Scaling and recycling (emperor/pool.cpp). The router's figures for the worker, as of its
    // latest report: requests it was sent, in flight now, and when it last had one in flight
    // (or became ready).
    StartReason start_reason() const { return start_reason_; }
    void set_start_reason(StartReason r) { start_reason_ = r; }
    uint64_t request_limit() const { return request_limit_; } // [recycle] max_requests drawn
    void set_request_limit(uint64_t n) { request_limit_ = n; }
    uint64_t requests() const { return requests_; }
    int64_t in_flight() const { return in_flight_; }
    int64_t last_busy_ms() const { return last_busy_ms_; }
    uint64_t rss_bytes() const { return rss_bytes_; } // with its process group; 0 = not known
    // Lines of this run's output that were its health checks' access-log lines (not logged).
    size_t health_lines_dropped() const {
        return probe_echo_ != nullptr ? probe_echo_->dropped() : 0;
    }
    void set_rss_bytes(uint64_t n) { rss_bytes_ = n; }
    // Being replaced, and why: logged once it is gone.
    bool recycled() const { return recycled_; }
    const std::string& recycled_for() const { return recycled_for_; }
    void mark_recycled(std::string reason) {
        recycled_ = true;
        recycled_for_ = std::move(reason);
    }

private:
    void set_state(WorkerPhase next);
    void arm(uint64_t ms);
    void disarm();
    void on_timer();
    void probe_now();
    void on_probe(const ProbeResult& result);
    void exited(ExitStatus st);
    // Sends the stop signal (unless it went already) and moves to `next`.
    void stop_process(WorkerPhase next);
    bool has_process() const { return child_ != nullptr && child_->running(); }
    void enter_backoff(std::chrono::milliseconds delay);
    void backoff_after_restart();
    // Stopped with no exit to report it: worker_gone from the loop.
    void stopped_without_process();
    // A daemon without a check or notify: ready after a second up, alive while its process runs.
    bool uptime_only() const;
    // Whether a ready worker is probed for liveness: not when it has no check of its own and
    // its readiness was uptime or READY=1; then it is alive while its process runs.
    bool probes_liveness() const;
    // The latest failed readiness check, what it probed and how it failed, for the report of a
    // worker not ready by start_timeout: "a connect to 127.0.0.1:4001: connection refused, so
    // nothing listened there".
    std::string last_check() const;
    // [health] notify: READY=1 arrived on the worker's NOTIFY_SOCKET.
    void notified();
    // Starting → Standby, liveness checks armed, the host told.
    void became_ready();

    WorkerHost& host_;
    std::string vassal_;
    GenerationPtr generation_;
    int slot_;
    WorkerPhase phase_ = WorkerPhase::Starting;
    WorkerState shown_ = WorkerState::Starting; // what /status says while Restarting/Retiring
    std::unique_ptr<Child> child_;
    std::shared_ptr<ProbeEchoFilter> probe_echo_; // this run's probes' access-log lines
    Address address_;
    int listen_fd_ = -1;  // socket activation: the emperor's copy
    NotifySocket notify_; // [health] notify: this run's NOTIFY_SOCKET
    std::string spawn_error_;
    bool signalled_ = false;
    int restarts_ = 0;
    RestartBackoff backoff_;
    int probe_failures_ = 0;
    RouterActivity activity_; // of the current process
    int64_t started_ms_ = 0;
    int64_t ready_ms_ = 0; // 0 until ready in the current run
    int64_t start_deadline_ms_ = 0;
    uint64_t readiness_poll_ms_ = 0; // the next wait between readiness probes; grows to a cap
    std::function<void()> cancel_probe_;
    // A check command as this run of the worker expands it, with the worker's environment.
    struct Check {
        std::vector<std::string> argv;
        std::vector<std::pair<std::string, std::string>> env;
        std::string cwd;
        std::optional<SpawnUser> user;
        bool no_new_privs = false;
    };
    Check check_;
    std::string last_probe_error_; // of the latest readiness check that failed
    UvHandle<uv_timer_t> timer_;
    StartReason start_reason_ = StartReason::Min;
    uint64_t request_limit_ = 0;
    uint64_t requests_ = 0;
    int64_t in_flight_ = 0;
    int64_t last_busy_ms_ = 0;
    uint64_t rss_bytes_ = 0;
    bool recycled_ = false;
    std::string recycled_for_;
};

} // namespace liege::emperor
