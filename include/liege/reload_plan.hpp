// The order of a reload (DESIGN.md, "Lifecycle semantics"), apart from the processes it moves.
//
//   rolling:   start one new worker; when it is ready, route it and drain one old worker; start
//              the next new one; ... until the new generation is complete.
//   bluegreen: start the whole new generation; when every worker is ready, switch at once.
//
// Either way the plan says "switch over" (worker_ready() returns true) exactly once, when the
// last new worker is ready; the caller then routes the whole new generation and drains what is
// left of the old one. A new worker that fails is the caller's business: it abandons the
// reload and drops the plan, so the steps must not report a failure synchronously (a spawn
// that fails at once is reported from the loop), and begin() never switches over.
#pragma once

#include <cstdint>
#include <functional>

#include "liege/vassal.hpp"

namespace liege {

// What a plan asks of whoever carries it out. Slots are numbered from 1.
struct ReloadSteps {
    std::function<void(int slot)> spawn;  // start worker `slot` of the new generation
    std::function<void(int slot)> route;  // a ready new worker joins the route set
    std::function<void()> retire_one_old; // drain one worker of the old generation, if any left
    std::function<void()> publish;        // send the route set to the router
};

class ReloadPlan {
public:
    // `clock` returns milliseconds of a monotonic clock (steady_now_ms() outside tests).
    ReloadPlan(ReloadStrategy strategy, int workers, ReloadSteps steps,
               std::function<int64_t()> clock);

    // Starts the first worker (rolling) or all of them (bluegreen).
    void begin();
    // Worker `slot` of the new generation passed its readiness check. Returns true when that
    // completes the generation: the caller switches over now.
    [[nodiscard]] bool worker_ready(int slot);

    ReloadStrategy strategy() const { return strategy_; }
    int spawned() const { return spawned_; }
    int ready() const { return ready_; }
    // Since begin().
    int64_t elapsed_ms() const { return clock_() - began_ms_; }

private:
    void spawn_next();

    ReloadStrategy strategy_;
    int want_;
    ReloadSteps steps_;
    std::function<int64_t()> clock_;
    int64_t began_ms_ = 0;
    int spawned_ = 0;
    int ready_ = 0;
};

} // namespace liege
