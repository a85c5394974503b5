// The rule that sizes a vassal's pool with demand, `workers = { min, max, idle }`: pure, so that a
// workload trace goes in and decisions come out (tests/unit/scaling_test.cpp). No clock and no
// processes: the caller observes the pool whenever it learns something (the router's figures,
// about once a second; a request held with no worker at all; a worker ready or gone) and carries
// out what the rule decides.
//
// The rule, and why:
//   - Below `min` (a worker crashed, the pool was just loaded): start one, at once.
//   - No worker, and a request waits: start one at once (a cold start: the request is held in the
//     vassal's queue until that worker is ready).
//   - Requests have waited for a free slot without pause for `up_after`: start one more, up to
//     `max`. One at a time: nothing more starts while a worker is starting, and the wait is timed
//     afresh once it is ready, so a burst that one more worker absorbs adds one worker, not five.
//     A queue that empties even briefly restarts the clock: short bursts that the pool clears by
//     itself add nobody.
//   - A request waits, but fewer wait than at the previous observation: the pool is catching up
//     with a backlog (the worker just added is working through it), so nothing more starts.
//   - When, for a whole `idle`, the pool never needed all its workers at once (the most
//     requests in flight together, plus those waiting, stayed below the pool's size) and no
//     request waited, one worker is surplus: the one idle longest is stopped, down to `min`, and
//     the next only after another whole `idle`. This is judged on the pool, not on each worker,
//     because the router spreads requests over every free worker in turn: under a light load
//     each worker gets some, and none would ever be idle on its own. With `min = 0`, the last
//     worker goes once no request came for `idle`. So a pool settles at the most requests it
//     had in flight at once within an `idle`, and a steady load neither shrinks nor grows it.
// Counting: a worker that drains (a reload, a recycle, a stop decided here) no longer counts
// towards the pool.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace liege::scaling {

struct Limits {
    int min = 1;
    int max = 1;
    int64_t idle_ms = 300'000; // `idle`
    int64_t up_after_ms = 500; // how long requests wait without pause before one more starts
};

struct WorkerView {
    int id = 0;
    bool starting = false;    // started, not yet ready
    int in_flight = 0;        // requests the router has sent it and not had answered
    int64_t last_busy_ms = 0; // when it last had a request in flight (or became ready)
};

struct Observation {
    int64_t now_ms = 0;
    int queued = 0;    // requests waiting for a free slot (or for any worker)
    int busy_peak = 0; // the most requests in flight at once since the previous observation
    std::vector<WorkerView> workers; // those that count: not draining, not stopping
};

enum class Action { None, Start, Stop };

// Why a worker is started or stopped: /status gives the reason a worker was started, and the
// metrics count scale events by direction.
enum class Reason { None, Min, ColdStart, Demand, Idle };
std::string_view to_string(Reason r);

struct Decision {
    Action action = Action::None;
    Reason reason = Reason::None;
    int worker = 0; // for Stop: which one
};

class Scaler {
public:
    explicit Scaler(Limits limits) : limits_(limits) {}
    const Limits& limits() const { return limits_; }
    void set_limits(Limits limits) { limits_ = limits; }

    Decision observe(const Observation& o);

private:
    Limits limits_;
    int64_t waiting_since_ = -1; // since when requests have waited without pause; -1: none wait
    int last_queued_ = 0;        // at the previous observation
    int64_t surplus_since_ = -1; // since when the pool has not needed all its workers at once
};

} // namespace liege::scaling
