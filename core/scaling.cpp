#include "liege/scaling.hpp"

#include <algorithm>
#include <utility>

namespace liege::scaling {

std::string_view to_string(Reason r) {
    switch (r) {
    case Reason::None:
        return "none";
    case Reason::Min:
        return "min";
    case Reason::ColdStart:
        return "cold_start";
    case Reason::Demand:
        return "demand";
    case Reason::Idle:
        return "idle";
    }
    return "none";
}

Decision Scaler::observe(const Observation& o) {
    const int queued_before = std::exchange(last_queued_, o.queued);
    if (o.queued <= 0) {
        waiting_since_ = -1;
    } else if (waiting_since_ < 0) {
        waiting_since_ = o.now_ms;
    }
    const int live = static_cast<int>(o.workers.size());
    // Every worker was needed at once (or one is still to come): no surplus since now.
    const bool one_starting = std::any_of(o.workers.begin(), o.workers.end(),
                                          [](const WorkerView& w) { return w.starting; });
    if (surplus_since_ < 0 || one_starting || o.queued > 0 || o.busy_peak >= live) {
        surplus_since_ = o.now_ms;
    }
    if (live < limits_.min) {
        return {Action::Start, Reason::Min, 0};
    }
    if (live == 0) {
        return o.queued > 0 && limits_.max > 0 ? Decision{Action::Start, Reason::ColdStart, 0}
                                               : Decision{};
    }
    if (o.queued > 0) {
        if (one_starting) {
            waiting_since_ = o.now_ms; // timed afresh once it is ready
            return {};
        }
        if (live >= limits_.max || o.now_ms - waiting_since_ < limits_.up_after_ms ||
            o.queued < queued_before) {
            return {};
        }
        waiting_since_ = o.now_ms; // the next one only after another full wait
        return {Action::Start, Reason::Demand, 0};
    }
    if (live <= limits_.min || o.now_ms - surplus_since_ < limits_.idle_ms) {
        return {};
    }
    const WorkerView* idlest = nullptr;
    for (const auto& w : o.workers) {
        if (w.in_flight == 0 && (idlest == nullptr || w.last_busy_ms < idlest->last_busy_ms)) {
            idlest = &w;
        }
    }
    if (idlest == nullptr) {
        return {};
    }
    surplus_since_ = o.now_ms; // the next one only after another whole `idle`
    return {Action::Stop, Reason::Idle, idlest->id};
}

} // namespace liege::scaling
