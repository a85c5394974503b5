#include "vassal_runtime.hpp"

#include <algorithm>

#include "liege/clock.hpp"
#include "liege/uv.hpp"

namespace liege::emperor {

namespace {

constexpr int kFailedAfter = 5; // consecutive failures that make a vassal "failed"

} // namespace

std::string_view to_string(VassalState s) {
    switch (s) {
    case VassalState::Starting:
        return "starting";
    case VassalState::Running:
        return "running";
    case VassalState::Reloading:
        return "reloading";
    case VassalState::Failed:
        return "failed";
    case VassalState::Stopping:
        return "stopping";
    }
    return "unknown";
}

std::vector<WorkerProc*> VassalRt::members(const Generation* g) const {
    std::vector<WorkerProc*> out;
    if (g == nullptr) {
        return out;
    }
    for (const auto& w : workers) {
        if (&w->generation() == g && !w->retiring()) {
            out.push_back(w.get());
        }
    }
    return out;
}

WorkerProc* VassalRt::member(const Generation* g, int slot) const {
    for (WorkerProc* w : members(g)) {
        if (w->slot() == slot) {
            return w;
        }
    }
    return nullptr;
}

std::vector<WorkerProc*> VassalRt::pool() const {
    auto out = members(active.get());
    std::erase(out, recycling);
    return out;
}

int VassalRt::ready_count(const Generation* g) const {
    auto m = members(g);
    return static_cast<int>(std::count_if(m.begin(), m.end(), [](auto* w) { return w->ready(); }));
}

std::vector<const WorkerProc*> VassalRt::in_order() const {
    std::vector<const WorkerProc*> out;
    for (const Generation* g : {active.get(), next.get()}) {
        for (WorkerProc* w : members(g)) {
            out.push_back(w);
        }
    }
    for (const auto& w : workers) {
        if (std::find(out.begin(), out.end(), w.get()) == out.end()) {
            out.push_back(w.get());
        }
    }
    return out;
}

std::vector<std::string> VassalRt::needs() const {
    std::vector<std::string> out;
    auto add = [&](const Vassal& c) {
        for (const auto& dep : c.after) {
            if (std::find(out.begin(), out.end(), dep) == out.end()) {
                out.push_back(dep);
            }
        }
    };
    if (pending) {
        add(*pending);
    }
    for (const Generation* g : {active.get(), next.get()}) {
        if (g != nullptr) {
            add(g->config);
        }
    }
    for (const auto& w : workers) {
        add(w->generation().config);
    }
    return out;
}

void VassalRt::update_state() {
    if (removing) {
        state = VassalState::Stopping;
        return;
    }
    if (next != nullptr) {
        state = VassalState::Reloading;
        return;
    }
    if (active == nullptr) {
        state = VassalState::Failed;
        return;
    }
    int worst = 0;
    for (const WorkerProc* w : members(active.get())) {
        if (!w->ready()) {
            worst = std::max(worst, w->failures());
        }
    }
    if (worst >= kFailedAfter) {
        state = VassalState::Failed;
    } else if (ready_count(active.get()) >= pool_size) {
        state = VassalState::Running;
    } else if (state != VassalState::Running && state != VassalState::Failed) {
        state = VassalState::Starting;
    }
    resolve_error(unix_now());
}

void VassalRt::set_error(std::string error, uint64_t generation, int64_t now_unix) {
    last_error = std::move(error);
    last_error_unix = now_unix;
    last_error_generation = generation;
    last_error_resolved_unix = 0;
}

void VassalRt::resolve_error(int64_t now_unix) {
    if (last_error.empty() || last_error_resolved_unix != 0 || state != VassalState::Running ||
        active == nullptr || active->id < last_error_generation) {
        return;
    }
    // Running is also what a vassal stays while one worker backs off after a crash: resolved
    // means that every worker of the generation serves again.
    const auto m = members(active.get());
    if (static_cast<int>(m.size()) < pool_size ||
        !std::all_of(m.begin(), m.end(), [](const WorkerProc* w) { return w->ready(); })) {
        return;
    }
    last_error_resolved_unix = now_unix;
}

bool VassalRt::refused() const {
    return state == VassalState::Failed &&
           std::none_of(workers.begin(), workers.end(), [](const auto& w) { return w->serving(); });
}

void VassalRt::notify(uv_loop_t* loop, bool ok, const std::string& message) {
    if (waiters.empty()) {
        return;
    }
    post(loop, [answered = std::move(waiters), ok, message] {
        for (const auto& w : answered) {
            w(ok, message);
        }
    });
    waiters.clear();
}

void VassalRt::settle_first_start(uv_loop_t* loop, const std::string* failure) {
    // Waiters with an active generation and no reload in progress asked for a first start.
    if (waiters.empty() || next != nullptr || active == nullptr) {
        return;
    }
    const std::string gen = "generation " + std::to_string(active->id);
    if (failure != nullptr) {
        notify(loop, false, gen + " failed to start: " + *failure);
    } else if (ready_count(active.get()) >= pool_size) {
        notify(loop, true, "started " + gen);
    }
}

} // namespace liege::emperor
