// One vassal as the emperor runs it: its generations, every worker it still has, its state as
// /status reports it, and the reload callers waiting for an outcome.
//
// All of a vassal's workers live in one list until they are gone, whatever their generation: a
// worker's own phase says whether it serves, drains or leaves, so nothing moves workers between
// containers. The workers of a generation are the ones of that generation not retiring.
#pragma once

#include <uv.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "code_watcher.hpp"
#include "generation.hpp"
#include "liege/control.hpp"
#include "liege/reload_plan.hpp"
#include "liege/scaling.hpp"
#include "worker_proc.hpp"

namespace liege::emperor {

enum class VassalState { Starting, Running, Reloading, Failed, Stopping };
std::string_view to_string(VassalState s);

struct VassalRt {
    using Waiter = std::function<void(bool ok, std::string message)>;

    std::string name;
    std::filesystem::path file;
    uint64_t content_hash = 0; // last content seen (valid or not)
    VassalState state = VassalState::Starting;
    GenerationPtr active;
    GenerationPtr next; // a reload in progress
    // A first start waiting until the vassals it starts `after` are ready.
    std::optional<Vassal> pending;
    bool shutdown_stopping = false; // retired by the shutdown (after the vassals that need it)
    // [watch] of the active generation, and a change seen while a reload was under way.
    std::unique_ptr<CodeWatcher> code_watcher;
    uint64_t watched_hash = 0;
    bool watch_pending = false;
    std::unique_ptr<ReloadPlan> plan; // next's
    std::vector<std::unique_ptr<WorkerProc>> workers;
    uint64_t next_generation = 1;

    // The pool (emperor/pool.cpp). How many workers of the active generation it wants: a fixed
    // pool's `workers`; a scaled one's between min and max, as `scaler` decides.
    int pool_size = 0;
    std::optional<scaling::Scaler> scaler; // a scaled active generation's
    // The one recycle at a time: the worker being replaced. It serves until another worker of
    // the active generation is ready, then drains.
    WorkerProc* recycling = nullptr;
    // The pool must grow but --max-workers is reached: it waits for a slot another vassal's
    // worker frees (or for one of its own requests to need none).
    bool awaiting_slot = false;
    StartReason awaiting_reason = StartReason::Demand;
    bool cap_reported = false;         // said once that it waits at the cap
    uint64_t scale_events[2] = {0, 0}; // up, down
    uint64_t cold_starts = 0;
    uint64_t recycles[control::kRecycleReasons] = {0, 0, 0};
    // The workers that count towards the pool: the active generation's, not the one being
    // recycled.
    std::vector<WorkerProc*> pool() const;

    // The last failure, kept with its time after it is resolved: once a generation at least as
    // new as the one it concerns (`last_error_generation`) serves with every worker ready. For
    // a worker of the active generation that is the same generation recovering; for a reload,
    // an invalid file or a start that waits, a later one (or the file back to what runs).
    std::string last_error;
    int64_t last_error_unix = 0;
    uint64_t last_error_generation = 0;
    int64_t last_error_resolved_unix = 0; // 0: not resolved
    uint64_t reloads = 0;
    uint64_t failed_reloads = 0;
    int64_t started_unix = 0;
    bool removing = false;
    // Callers of reload() waiting for this vassal's outcome.
    std::vector<Waiter> waiters;
    // What the last route set said of the vassal's failure (RouteSpec.failed, last_error).
    bool routed_failed = false;
    std::string routed_error;

    // The workers of `g` (not retiring), in the order they were started.
    std::vector<WorkerProc*> members(const Generation* g) const;
    WorkerProc* member(const Generation* g, int slot) const;
    int ready_count(const Generation* g) const;
    // Every worker in the order /status and the route set list them: the active generation's,
    // the next one's, then the retiring ones.
    std::vector<const WorkerProc*> in_order() const;
    bool is_next(const WorkerProc& w) const {
        return next != nullptr && &w.generation() == next.get() && !w.retiring();
    }
    // Nothing left running: a removed vassal can go.
    bool empty() const {
        return active == nullptr && next == nullptr && workers.empty() && !pending;
    }
    // The vassals its configurations (pending, active, next, and those its workers still run)
    // start after.
    std::vector<std::string> needs() const;

    // Derives `state` from the generations and the failures of the active workers not serving
    // now (a worker serving again after its backoff counts as healthy at once, though its
    // backoff only forgets its failures after a minute); then resolve_error().
    void update_state();
    // Records a failure of generation `generation` at `now_unix`.
    void set_error(std::string error, uint64_t generation, int64_t now_unix);
    // Marks last_error resolved if the vassal runs, every worker of its active generation ready,
    // a generation the error does not concern.
    void resolve_error(int64_t now_unix);
    // Whether the router refuses its requests at once (503 naming last_error) instead of
    // queueing them: the vassal is failed and none of its workers serves. A failed vassal with a
    // worker still serving keeps being routed to it.
    bool refused() const;
    // The route set's failure fields are out of date: refused() or last_error changed since.
    bool failure_unrouted() const {
        return refused() != routed_failed || last_error != routed_error;
    }
    // Answers every waiter, from the loop (never inside the caller).
    void notify(uv_loop_t* loop, bool ok, const std::string& message);
    // Answers a reload that started a vassal's first generation: ok once every worker is ready,
    // failed (with `failure`) as soon as a worker fails.
    void settle_first_start(uv_loop_t* loop, const std::string* failure);
};

} // namespace liege::emperor
