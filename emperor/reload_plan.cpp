#include "liege/reload_plan.hpp"

namespace liege {

ReloadPlan::ReloadPlan(ReloadStrategy strategy, int workers, ReloadSteps steps,
                       std::function<int64_t()> clock)
    : strategy_(strategy), want_(workers), steps_(std::move(steps)), clock_(std::move(clock)) {}

void ReloadPlan::begin() {
    began_ms_ = clock_();
    const int first = strategy_ == ReloadStrategy::Rolling ? 1 : want_;
    while (spawned_ < first) {
        spawn_next();
    }
}

bool ReloadPlan::worker_ready(int slot) {
    ++ready_;
    if (strategy_ == ReloadStrategy::Rolling) {
        // One new worker in, one old worker out: capacity never drops below the pool size.
        steps_.route(slot);
        steps_.retire_one_old();
        steps_.publish();
        if (spawned_ < want_) {
            spawn_next();
            return false;
        }
    }
    return ready_ == want_;
}

void ReloadPlan::spawn_next() {
    steps_.spawn(++spawned_);
}

} // namespace liege
