// The size of each vassal's pool and the replacement of its workers: `workers = { min, max, idle }`
// (the rule itself is liege/scaling.hpp), --max-workers, and [recycle].
//
//   - Scaling. The rule observes a scaled pool at each router stats message (once a second) and
//     at once when the router reports a request waiting with no worker serving (a cold start).
//     It decides one start or one stop at a time; a stop drains the worker it names.
//   - The cap. Every worker process of every vassal counts. A pool grows beyond its `min`, and a
//     replacement starts, only below --max-workers; at the cap the longest-idle worker of another
//     vassal above that vassal's `min` is drained, and the pool that must grow starts its worker
//     once that one is gone. With none to take, its requests wait in its queue, and the next
//     observation tries again.
//   - Recycling, one worker of a vassal at a time: max_requests (the router says when a worker
//     reaches the limit it drew) and max_rss (sampled here each second, with the worker's process
//     group) start the replacement first, route to it, then drain the old worker. At the cap the
//     old one drains first and the replacement takes its slot. request_timeout does not wait for
//     a replacement: the hung worker leaves the route set at once, gets its stop signal as soon
//     as the router has no request on it (SIGKILL after stop.timeout), and a replacement starts
//     at once when the pool is at its `min`.
#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <unordered_map>

#include "emperor.hpp"
#include "liege/clock.hpp"
#include "liege/log.hpp"

namespace liege::emperor {

namespace {

constexpr int kUp = 0;
constexpr int kDown = 1;

// RSS in bytes of every process group on the box: the sum over its processes of resident pages
// (/proc/PID/statm), keyed by the group (field 5 of /proc/PID/stat).
std::unordered_map<pid_t, uint64_t> rss_by_process_group() {
    std::unordered_map<pid_t, uint64_t> out;
    DIR* proc = ::opendir("/proc");
    if (proc == nullptr) {
        return out;
    }
    static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    char path[300]; // "/proc/" + a d_name (at most 255) + "/statm"
    char buf[512];
    while (dirent* e = ::readdir(proc)) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') {
            continue;
        }
        std::snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE* f = std::fopen(path, "re");
        if (f == nullptr) {
            continue;
        }
        const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
        std::fclose(f);
        buf[n] = '\0';
        // After the command's closing parenthesis: state, ppid, pgrp.
        const char* close = std::strrchr(buf, ')');
        char state = 0;
        int ppid = 0;
        int pgrp = 0;
        if (close == nullptr || std::sscanf(close + 1, " %c %d %d", &state, &ppid, &pgrp) != 3) {
            continue;
        }
        std::snprintf(path, sizeof path, "/proc/%s/statm", e->d_name);
        f = std::fopen(path, "re");
        if (f == nullptr) {
            continue;
        }
        unsigned long size = 0;
        unsigned long resident = 0;
        if (std::fscanf(f, "%lu %lu", &size, &resident) == 2) {
            out[pgrp] += resident * page;
        }
        std::fclose(f);
    }
    ::closedir(proc);
    return out;
}

std::string size_text(uint64_t bytes) {
    return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
}

} // namespace

int Emperor::wanted_size(const VassalRt& v, const Vassal& config) const {
    if (!config.scale.scaled) {
        return config.workers;
    }
    return std::clamp(v.pool_size, config.scale.min, config.scale.max);
}

int Emperor::min_size(const VassalRt& v) const {
    if (v.active == nullptr) {
        return 0;
    }
    const Vassal& c = v.active->config;
    return c.scale.scaled ? c.scale.min : c.workers;
}

void Emperor::reset_scaler(VassalRt& v) {
    v.scaler.reset();
    v.awaiting_slot = false;
    v.cap_reported = false;
    if (v.active == nullptr || !v.active->config.scale.scaled) {
        return;
    }
    const ScalePolicy& s = v.active->config.scale;
    scaling::Limits limits;
    limits.min = s.min;
    limits.max = s.max;
    limits.idle_ms = s.idle.count();
    v.scaler.emplace(limits);
}

void Emperor::fill_active(VassalRt& v, StartReason why) {
    if (v.active == nullptr) {
        return;
    }
    for (;;) {
        const auto pool = v.pool();
        if (static_cast<int>(pool.size()) >= v.pool_size) {
            return;
        }
        if (at_cap()) {
            if (why != StartReason::Min) {
                v.awaiting_slot = true;
                v.awaiting_reason = why;
                return;
            }
            if (!v.cap_reported) {
                v.cap_reported = true;
                spdlog::warn("vassal {}: its min workers take it beyond --max-workers {}: the cap "
                             "does not hold back a pool's min",
                             v.name, options_.max_workers);
            }
        }
        // The lowest slot no worker of the generation holds (the one being recycled included).
        const auto members = v.members(v.active.get());
        int slot = 1;
        while (std::any_of(members.begin(), members.end(),
                           [slot](const WorkerProc* w) { return w->slot() == slot; })) {
            ++slot;
        }
        add_worker(v, v.active, slot, why);
    }
}

int Emperor::worker_processes() const {
    int n = 0;
    for (const auto& [name, v] : vassals_) {
        n += static_cast<int>(v->workers.size());
    }
    return n;
}

bool Emperor::at_cap() const {
    return options_.max_workers > 0 && worker_processes() >= options_.max_workers;
}

bool Emperor::grow(VassalRt& v, StartReason why, scaling::Reason rule) {
    if (v.awaiting_slot) {
        return false; // a slot is on its way already
    }
    if (at_cap() && !reclaim_slot_for(v)) {
        if (!v.cap_reported) {
            v.cap_reported = true;
            spdlog::warn("vassal {}: needs one more worker, but --max-workers {} is reached and "
                         "no other vassal has an idle worker above its min; its requests wait",
                         v.name, options_.max_workers);
        }
        return false;
    }
    v.cap_reported = false;
    v.pool_size = static_cast<int>(v.pool().size()) + 1;
    ++v.scale_events[kUp];
    if (rule == scaling::Reason::ColdStart) {
        ++v.cold_starts;
        spdlog::info("vassal {}: cold start: starting a worker for a waiting request", v.name);
    } else {
        spdlog::info("vassal {}: scaling up to {} worker(s) ({})", v.name, v.pool_size,
                     scaling::to_string(rule));
    }
    fill_active(v, why);
    publish_routes();
    return true;
}

void Emperor::shrink(VassalRt& v, int slot) {
    WorkerProc* w = v.member(v.active.get(), slot);
    if (w == nullptr || w == v.recycling) {
        return;
    }
    v.pool_size = static_cast<int>(v.pool().size()) - 1;
    ++v.scale_events[kDown];
    spdlog::info("vassal {}: scaling down to {} worker(s): worker {} idle for {} ms", v.name,
                 v.pool_size, slot, steady_now_ms() - w->last_busy_ms());
    w->retire(true);
    publish_routes();
}

bool Emperor::reclaim_slot_for(VassalRt& v) {
    VassalRt* owner = nullptr;
    WorkerProc* idlest = nullptr;
    for (auto& [name, other] : vassals_) {
        if (other.get() == &v || other->removing || other->next != nullptr ||
            other->active == nullptr) {
            continue;
        }
        const auto pool = other->pool();
        if (static_cast<int>(pool.size()) <= min_size(*other)) {
            continue;
        }
        for (WorkerProc* w : pool) {
            if (w->serving() && w->in_flight() == 0 &&
                (idlest == nullptr || w->last_busy_ms() < idlest->last_busy_ms())) {
                idlest = w;
                owner = other.get();
            }
        }
    }
    if (idlest == nullptr) {
        return false;
    }
    spdlog::info("vassal {}: worker {} (idle {} ms) stops to free a slot for {} (--max-workers {})",
                 owner->name, idlest->slot(), steady_now_ms() - idlest->last_busy_ms(), v.name,
                 options_.max_workers);
    --owner->pool_size;
    ++owner->scale_events[kDown];
    idlest->retire(true);
    v.awaiting_slot = true;
    v.awaiting_reason = StartReason::Demand;
    publish_routes();
    return true;
}

void Emperor::grant_slots() {
    for (auto& [name, v] : vassals_) {
        if (!v->awaiting_slot || at_cap()) {
            continue;
        }
        v->awaiting_slot = false;
        if (v->removing || v->active == nullptr) {
            continue;
        }
        fill_active(*v, v->awaiting_reason);
        publish_routes();
    }
}

void Emperor::observe_pool(VassalRt& v, int queued, int64_t peak) {
    if (!v.scaler || v.removing || v.next != nullptr || v.active == nullptr || shutting_down_ ||
        v.awaiting_slot) {
        return;
    }
    scaling::Observation o;
    o.now_ms = steady_now_ms();
    o.queued = queued;
    o.busy_peak = static_cast<int>(peak);
    for (const WorkerProc* w : v.pool()) {
        o.workers.push_back({w->slot(), !w->ready(), static_cast<int>(w->in_flight()),
                             w->ready() ? w->last_busy_ms() : o.now_ms});
    }
    const scaling::Decision d = v.scaler->observe(o);
    switch (d.action) {
    case scaling::Action::None:
        return;
    case scaling::Action::Start:
        grow(v, d.reason == scaling::Reason::Min ? StartReason::Min : StartReason::Demand,
             d.reason);
        return;
    case scaling::Action::Stop:
        shrink(v, d.worker);
        return;
    }
}

void Emperor::size_pools() {
    std::map<std::string, const control::VassalFigures*> figures;
    for (const auto& f : router_.stats().vassals) {
        figures[f.vassal] = &f;
    }
    for (auto& [name, v] : vassals_) {
        auto it = figures.find(name);
        const int queued = it != figures.end() ? static_cast<int>(it->second->queued) : 0;
        const int64_t peak = it != figures.end() ? it->second->in_flight_peak : 0;
        observe_pool(*v, queued, peak);
    }
}

void Emperor::on_demand(const control::DemandMessage& m) {
    auto it = vassals_.find(m.vassal);
    if (it == vassals_.end()) {
        return;
    }
    VassalRt& v = *it->second;
    if (v.pool().empty()) {
        observe_pool(v, 1, 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Recycling

std::pair<VassalRt*, WorkerProc*> Emperor::find_worker(const std::string& address,
                                                       uint64_t generation) {
    for (auto& [name, v] : vassals_) {
        for (auto& w : v->workers) {
            if (w->generation().id == generation && !w->daemon() && w->address().str() == address) {
                return {v.get(), w.get()};
            }
        }
    }
    return {nullptr, nullptr};
}

bool Emperor::recycle(VassalRt& v, WorkerProc& w, control::RecycleReason why,
                      const std::string& detail) {
    if (v.recycling != nullptr || v.removing || v.next != nullptr || shutting_down_ ||
        !w.serving() || w.recycled() || &w.generation() != v.active.get()) {
        return false;
    }
    const std::string reason(control::to_string(why));
    ++v.recycles[static_cast<int>(why)];
    spdlog::info("vassal {}: recycling worker {} ({}: {})", v.name, w.slot(), reason, detail);
    w.mark_recycled(reason);
    v.recycling = &w;
    if (at_cap()) {
        // No room for the replacement beside it: it drains first, and the replacement takes its
        // slot once it is gone (its requests wait in the queue meanwhile).
        w.retire(true);
        v.awaiting_slot = true;
        v.awaiting_reason = StartReason::Replacement;
        publish_routes();
        return true;
    }
    fill_active(v, StartReason::Replacement); // the next active worker ready relieves it
    return true;
}

void Emperor::recycle_hung(VassalRt& v, WorkerProc& w) {
    if (w.recycled() && w.retiring()) {
        w.retire(false); // already leaving: it goes now
        return;
    }
    const std::string reason(control::to_string(control::RecycleReason::RequestTimeout));
    ++v.recycles[static_cast<int>(control::RecycleReason::RequestTimeout)];
    const auto timeout = w.generation().config.recycle.request_timeout.count();
    spdlog::warn("vassal {}: recycling worker {} ({}: a request ran past {} ms)", v.name, w.slot(),
                 reason, timeout);
    // A worker whose graceful recycle is under way has its replacement coming already.
    const bool replaced = v.recycling == &w;
    if (replaced) {
        v.recycling = nullptr;
    }
    w.mark_recycled(reason);
    const bool member = &w.generation() == v.active.get() && !w.retiring();
    // Out of the route set first: the router has cut the hung request, so the worker drains at
    // once (other requests on it are bounded by their own request_timeout), and no request is
    // sent to a process about to be killed. Then the stop signal, SIGKILL after stop.timeout.
    w.retire(true);
    if (member && !replaced && !v.removing && v.next == nullptr) {
        if (static_cast<int>(v.pool().size()) >= min_size(v)) {
            --v.pool_size; // above min: the scaling rule adds one back if it is needed
        } else {
            fill_active(v, StartReason::Replacement); // at min (at the cap: once it is gone)
        }
    }
    publish_routes();
}

void Emperor::on_recycle(const control::RecycleMessage& m) {
    auto [v, w] = find_worker(m.address, m.generation);
    if (v == nullptr) {
        return;
    }
    if (m.reason == control::RecycleReason::RequestTimeout) {
        recycle_hung(*v, *w);
        return;
    }
    if (!recycle(*v, *w, m.reason, fmt::format("{} requests", w->request_limit()))) {
        spdlog::debug("vassal {}: worker {} is due for recycling after the one under way", v->name,
                      w->slot());
    }
}

void Emperor::start_due_recycle(VassalRt& v) {
    if (v.recycling != nullptr || v.active == nullptr) {
        return;
    }
    const RecyclePolicy& p = v.active->config.recycle;
    for (WorkerProc* w : v.pool()) {
        if (!w->serving() || w->recycled()) {
            continue;
        }
        if (w->request_limit() != 0 && w->requests() >= w->request_limit()) {
            recycle(v, *w, control::RecycleReason::MaxRequests,
                    fmt::format("{} requests, its limit {}", w->requests(), w->request_limit()));
            return;
        }
        if (p.max_rss != 0 && w->rss_bytes() > p.max_rss) {
            recycle(
                v, *w, control::RecycleReason::MaxRss,
                fmt::format("RSS {} above {}", size_text(w->rss_bytes()), size_text(p.max_rss)));
            return;
        }
    }
}

void Emperor::check_recycles() {
    if (worker_processes() == 0) {
        return;
    }
    const auto rss = rss_by_process_group();
    for (auto& [name, v] : vassals_) {
        for (auto& w : v->workers) {
            auto it = w->pid() != 0 ? rss.find(w->pid()) : rss.end();
            w->set_rss_bytes(it != rss.end() ? it->second : 0);
        }
        start_due_recycle(*v);
    }
}

void Emperor::switch_idle_pool(VassalRt& v, Vassal config) {
    if (v.active != nullptr) {
        retire_generation(v, v.active.get(), true); // nothing, or workers still draining
    }
    v.active = new_generation(v, std::move(config));
    ++v.reloads;
    v.pool_size = 0;
    v.recycling = nullptr;
    reset_scaler(v);
    v.update_state();
    spdlog::info("vassal {}: generation {} serving (no worker runs: it starts on demand)", v.name,
                 v.active->id);
    publish_routes();
    watch_code(v);
    v.notify(loop_, true, "reloaded to generation " + std::to_string(v.active->id));
    start_waiting();
}

} // namespace liege::emperor
