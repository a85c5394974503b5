#include "emperor.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <ctime>
#include <set>

#include "liege/health.hpp"
#include "liege/log.hpp"
#include "liege/logs.hpp"

namespace liege::emperor {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

constexpr int kFailedAfter = 5;             // consecutive failures that make a vassal "failed"
constexpr int kLivenessFailures = 3;        // consecutive failed probes that restart a worker
constexpr int64_t kHealthyResetMs = 60'000; // a worker healthy this long forgets its failures
// Readiness probes (a loopback connect) start 5 ms after the spawn and back off to every 100 ms:
// a fast app is routed within milliseconds of listening, a slow one costs ~10 probes a second.
constexpr uint64_t kFirstReadinessPollMs = 5;
constexpr uint64_t kReadinessPollMs = 100;

std::string join_lines(const std::vector<std::string>& lines) {
    std::string out;
    for (const auto& l : lines) {
        out += "\n    | " + l;
    }
    return out;
}

} // namespace

int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

int64_t now_unix() {
    return static_cast<int64_t>(::time(nullptr));
}

std::string_view to_string(WorkerState s) {
    switch (s) {
    case WorkerState::Starting:
        return "starting";
    case WorkerState::Ready:
        return "ready";
    case WorkerState::Draining:
        return "draining";
    case WorkerState::Stopped:
        return "stopped";
    case WorkerState::Backoff:
        return "backoff";
    }
    return "unknown";
}

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

std::chrono::milliseconds restart_backoff(int failures) {
    if (failures <= 1) {
        return 100ms;
    }
    int64_t ms = 100ll << std::min(failures - 1, 20);
    return std::chrono::milliseconds(std::min<int64_t>(ms, 30'000));
}

// ---------------------------------------------------------------------------------------------
// Generation

size_t Generation::ready_count() const {
    return static_cast<size_t>(std::count_if(workers.begin(), workers.end(), [](const auto& w) {
        return w->state == WorkerState::Ready;
    }));
}

WorkerProc* Generation::find_slot(int slot) const {
    for (const auto& w : workers) {
        if (w->slot == slot) {
            return w.get();
        }
    }
    return nullptr;
}

// ---------------------------------------------------------------------------------------------
// WorkerProc

WorkerProc::WorkerProc(Emperor& e, VassalRt& v, Generation& g, int s)
    : emperor(e), vassal(&v), generation(&g), slot(s) {
    uv_timer_init(e.loop(), timer.get());
    timer->data = this;
}

WorkerProc::~WorkerProc() {
    if (cancel_probe) {
        cancel_probe();
    }
    if (timer.get() != nullptr) {
        uv_timer_stop(timer.get());
    }
    if (listen_fd >= 0) {
        ::close(listen_fd);
    }
    if (address.is_unix()) {
        ::unlink(address.path.c_str());
    }
}

std::string WorkerProc::tag() const {
    return vassal->name + "/" + std::to_string(slot);
}

void WorkerProc::arm(uint64_t ms) {
    uv_timer_start(
        timer.get(), [](uv_timer_t* t) { static_cast<WorkerProc*>(t->data)->on_timer(); }, ms, 0);
}

void WorkerProc::spawn() {
    const Vassal& cfg = generation->config;
    stopping = false;
    probe_failures = 0;
    PlaceholderValues values;
    values.name = cfg.name;
    values.worker = slot;
    switch (cfg.socket) {
    case SocketKind::Tcp:
        address = parse_address("127.0.0.1:0");
        address.port = pick_free_port();
        values.port = address.port;
        break;
    case SocketKind::Unix:
        address = Address{};
        address.kind = Address::Kind::Unix;
        address.path = (emperor.runtime_dir() / (cfg.name + "-" + std::to_string(generation->id) +
                                                 "-" + std::to_string(slot) + ".sock"))
                           .string();
        ::unlink(address.path.c_str());
        values.socket = address.path;
        break;
    case SocketKind::Inherit:
        if (listen_fd < 0) {
            uint16_t port = 0;
            listen_fd = bind_loopback_listener(&port);
            address = parse_address("127.0.0.1:0");
            address.port = port;
        }
        values.port = address.port;
        break;
    }
    SpawnSpec spec;
    for (const auto& arg : cfg.command) {
        spec.argv.push_back(expand(arg, values));
    }
    for (const auto& [k, v] : cfg.env) {
        spec.env.emplace_back(k, expand(v, values));
    }
    if (!address.is_unix()) {
        spec.env.emplace_back("PORT", std::to_string(address.port));
    } else {
        spec.env.emplace_back("LIEGE_SOCKET", address.path);
    }
    spec.env.emplace_back("LIEGE_VASSAL", cfg.name);
    spec.env.emplace_back("LIEGE_WORKER", std::to_string(slot));
    spec.env.emplace_back("LIEGE_GENERATION", std::to_string(generation->id));
    if (!emperor.options().env_name.empty()) {
        spec.env.emplace_back("LIEGE_ENV", emperor.options().env_name);
    }
    spec.cwd = cfg.working_dir(values).string();
    spec.listen_fd = cfg.socket == SocketKind::Inherit ? listen_fd : -1;
    spec.tag = tag();
    int err = 0;
    std::string t = tag();
    Emperor* e = &emperor;
    child = spawn_child(
        emperor.loop(), spec,
        [e, t](std::string_view line, bool is_stderr) { e->log_line(t, line, is_stderr); },
        [this](ExitStatus st) { exited(st); }, &err);
    state = WorkerState::Starting;
    started_ms = now_ms();
    start_deadline_ms = started_ms + cfg.health.start_timeout.count();
    if (child == nullptr) {
        start_failed(std::string("cannot start ") + (spec.argv.empty() ? "" : spec.argv[0]) + ": " +
                     std::strerror(-err));
        return;
    }
    spdlog::info("vassal {}: worker {} started (pid {}, generation {}, {})", cfg.name, slot,
                 child->pid(), generation->id, address.str());
    readiness_poll_ms = kFirstReadinessPollMs;
    arm(readiness_poll_ms);
}

void WorkerProc::on_timer() {
    switch (state) {
    case WorkerState::Starting:
        if (cancel_probe) {
            arm(kReadinessPollMs); // a probe is still out
            return;
        }
        if (now_ms() >= start_deadline_ms) {
            start_failed("not ready after " +
                         format_duration(generation->config.health.start_timeout));
            return;
        }
        probe_now();
        break;
    case WorkerState::Ready:
        probe_now();
        arm(static_cast<uint64_t>(generation->config.health.interval.count()));
        break;
    case WorkerState::Draining:
        spdlog::info("vassal {}: worker {} not drained after {}, stopping it", vassal->name, slot,
                     format_duration(generation->config.reload.drain_timeout));
        stop();
        break;
    case WorkerState::Backoff:
        ++restarts;
        spawn();
        break;
    case WorkerState::Stopped:
        break;
    }
}

void WorkerProc::probe_now() {
    if (cancel_probe || stopping) {
        return;
    }
    const HealthCheck& h = generation->config.health;
    cancel_probe = probe(emperor.loop(), address, h.path, h.timeout, [this](const ProbeResult& r) {
        cancel_probe = nullptr;
        if (stopping) {
            return;
        }
        if (state == WorkerState::Starting) {
            if (r.ok) {
                became_ready();
            } else {
                arm(readiness_poll_ms);
                readiness_poll_ms = std::min(readiness_poll_ms * 2, kReadinessPollMs);
            }
            return;
        }
        if (state != WorkerState::Ready) {
            return;
        }
        if (r.ok) {
            probe_failures = 0;
            return;
        }
        if (++probe_failures >= kLivenessFailures) {
            spdlog::warn("vassal {}: worker {} failed {} health checks ({}); "
                         "restarting it",
                         vassal->name, slot, probe_failures, r.error);
            emperor.worker_failed_start(*this, "health checks failing: " + r.error);
        }
    });
}

void WorkerProc::became_ready() {
    state = WorkerState::Ready;
    ready_ms = now_ms();
    probe_failures = 0;
    spdlog::info("vassal {}: worker {} ready in {} ms", vassal->name, slot, ready_ms - started_ms);
    arm(static_cast<uint64_t>(generation->config.health.interval.count()));
    emperor.worker_ready(*this);
}

void WorkerProc::start_failed(const std::string& why) {
    emperor.worker_failed_start(*this, why);
}

void WorkerProc::exited(ExitStatus st) {
    if (cancel_probe) {
        cancel_probe();
        cancel_probe = nullptr;
    }
    uv_timer_stop(timer.get());
    if (stopping) {
        state = WorkerState::Stopped;
        routed = false;
        if (on_stopped) {
            auto done = std::move(on_stopped);
            on_stopped = nullptr;
            done();
        }
        return;
    }
    emperor.worker_exited(*this, st);
}

void WorkerProc::drain() {
    if (state != WorkerState::Ready || !routed) {
        stop();
        return;
    }
    state = WorkerState::Draining;
    arm(static_cast<uint64_t>(generation->config.reload.drain_timeout.count()));
}

void WorkerProc::stop(std::function<void()> done) {
    if (done) {
        on_stopped = std::move(done);
    }
    if (cancel_probe) {
        cancel_probe();
        cancel_probe = nullptr;
    }
    uv_timer_stop(timer.get());
    routed = false;
    if (child != nullptr && child->running()) {
        if (!stopping) {
            stopping = true;
            const StopPolicy& sp = generation->config.stop;
            child->stop(sp.signal, sp.timeout);
        }
        return;
    }
    stopping = true;
    state = WorkerState::Stopped;
    if (on_stopped) {
        // Not from inside the caller: completions run from the loop.
        auto* self = this;
        uv_timer_start(
            timer.get(),
            [](uv_timer_t* t) {
                auto* w = static_cast<WorkerProc*>(t->data);
                if (w->on_stopped) {
                    auto cb = std::move(w->on_stopped);
                    w->on_stopped = nullptr;
                    cb();
                }
            },
            0, 0);
        (void)self;
    }
}

// ---------------------------------------------------------------------------------------------
// Emperor

Emperor::Emperor(uv_loop_t* loop, EmperorOptions options)
    : loop_(loop), options_(std::move(options)) {
    uv_idle_init(loop_, graveyard_idle_.get());
    graveyard_idle_->data = this;
    uv_timer_init(loop_, router_restart_.get());
    router_restart_->data = this;
    started_unix_ = now_unix();
}

Emperor::~Emperor() {
    for (int fd : listen_fds_) {
        ::close(fd);
    }
    std::error_code ec;
    fs::remove_all(runtime_dir_, ec);
}

int Emperor::start() {
    runtime_dir_ = fs::temp_directory_path() / ("liege-" + std::to_string(::getpid()));
    std::error_code ec;
    fs::create_directories(runtime_dir_, ec);
    reaper_ = install_reaper(loop_);
    for (const Address& a : options_.listen) {
        int fd = bind_listening_socket(a, false, 4096);
        if (fd < 0) {
            spdlog::error("cannot listen on {}: {}", a.str(), std::strerror(-fd));
            return 1;
        }
        listen_fds_.push_back(fd);
        bound_.push_back(a.is_unix() ? a : address_of_socket(fd));
        spdlog::info("listening on {}", bound_.back().str());
    }
    spawn_router();
    watcher_ = watch_directory(loop_, options_.vassals_dir,
                               [this](const std::vector<DirChange>& c) { on_changes(c); });
    spdlog::info("emperor: watching {}", fs::absolute(options_.vassals_dir).string());
    return 0;
}

void Emperor::log_line(const std::string& tag, std::string_view line, bool is_stderr) {
    log_worker_line(tag, line, is_stderr);
}

void Emperor::reopen_logs() {
    reopen_log_files();
    spdlog::info("emperor: SIGUSR1, logs reopened");
}

void Emperor::rescan() {
    if (watcher_ != nullptr) {
        watcher_->rescan();
    }
}

void Emperor::on_changes(const std::vector<DirChange>& changes) {
    if (shutting_down_) {
        return;
    }
    for (const auto& c : changes) {
        if (c.kind == DirChange::Kind::Removed) {
            auto it = vassals_.find(c.name);
            if (it != vassals_.end()) {
                spdlog::info("vassal {}: {} removed, stopping it", c.name, c.file.string());
                remove_vassal(*it->second);
            }
            continue;
        }
        apply_file(c.name, c.file);
    }
}

void Emperor::apply_file(const std::string& name, const fs::path& file) {
    VassalLoad load = load_vassal_file(file);
    auto it = vassals_.find(name);
    VassalRt* v = it != vassals_.end() ? it->second.get() : nullptr;
    if (v != nullptr && v->removing) {
        // A file dropped back in while the old pool drains: start afresh once it is gone.
        v = nullptr;
    }
    if (!load.ok()) {
        for (const auto& d : load.errors) {
            spdlog::error("{}", d.str());
        }
        std::string first = load.errors.empty() ? "unreadable" : load.errors.front().str();
        if (v == nullptr) {
            if (it != vassals_.end()) {
                return; // still draining the removed one
            }
            auto rt = std::make_unique<VassalRt>();
            rt->name = name;
            rt->file = file;
            rt->state = VassalState::Failed;
            rt->started_unix = now_unix();
            v = rt.get();
            vassals_[name] = std::move(rt);
        } else if (v->active != nullptr) {
            spdlog::warn("vassal {}: invalid file, generation {} keeps serving", name,
                         v->active->id);
        }
        v->content_hash = load.content_hash;
        v->last_error = first;
        v->last_error_unix = now_unix();
        notify(*v, false, "invalid vassal file: " + first);
        return;
    }
    Vassal config = std::move(*load.vassal);
    if (v == nullptr && it != vassals_.end()) {
        return; // the removed one still drains; the watcher reports the file again on rescan
    }
    if (v == nullptr) {
        auto rt = std::make_unique<VassalRt>();
        rt->name = name;
        rt->file = file;
        rt->started_unix = now_unix();
        v = rt.get();
        vassals_[name] = std::move(rt);
    }
    v->content_hash = config.content_hash;
    v->file = file;
    if (v->active == nullptr) {
        start_vassal(*v, std::move(config));
    } else {
        begin_reload(*v, std::move(config));
    }
}

void Emperor::start_vassal(VassalRt& v, Vassal config) {
    auto gen = std::make_unique<Generation>();
    gen->id = v.next_generation++;
    gen->config = std::move(config);
    v.state = VassalState::Starting;
    v.active = std::move(gen);
    spdlog::info("vassal {}: starting {} worker(s), generation {}", v.name,
                 v.active->config.workers, v.active->id);
    fill_active(v);
    publish_routes();
}

void Emperor::fill_active(VassalRt& v) {
    Generation& g = *v.active;
    for (int slot = 1; slot <= g.config.workers; ++slot) {
        if (g.find_slot(slot) == nullptr) {
            g.workers.push_back(std::make_unique<WorkerProc>(*this, v, g, slot));
            g.workers.back()->spawn();
        }
    }
}

void Emperor::begin_reload(VassalRt& v, Vassal config) {
    if (v.next != nullptr) {
        abandon_reload(v, "superseded by a newer change of the file");
    }
    auto gen = std::make_unique<Generation>();
    gen->id = v.next_generation++;
    gen->config = std::move(config);
    v.next = std::move(gen);
    v.state = VassalState::Reloading;
    ++v.reloads;
    Generation& g = *v.next;
    const bool rolling = g.config.reload.strategy == ReloadStrategy::Rolling;
    spdlog::info("vassal {}: {} reload to generation {} ({} worker(s))", v.name,
                 rolling ? "rolling" : "bluegreen", g.id, g.config.workers);
    const int first = rolling ? 1 : g.config.workers;
    for (int slot = 1; slot <= first; ++slot) {
        g.workers.push_back(std::make_unique<WorkerProc>(*this, v, g, slot));
        g.workers.back()->spawn();
        if (v.next == nullptr) {
            return; // the spawn failed at once and the reload was abandoned
        }
    }
}

void Emperor::step_reload(VassalRt& v) {
    Generation& g = *v.next;
    const int want = g.config.workers;
    if (g.config.reload.strategy == ReloadStrategy::Rolling) {
        for (auto& w : g.workers) {
            if (w->state == WorkerState::Ready && !w->routed) {
                w->routed = true;
                // One new worker in, one old worker out.
                if (v.active != nullptr && !v.active->workers.empty()) {
                    auto old = std::move(v.active->workers.back());
                    v.active->workers.pop_back();
                    retire(v, std::move(old));
                }
            }
        }
        publish_routes();
        if (static_cast<int>(g.workers.size()) < want) {
            int slot = static_cast<int>(g.workers.size()) + 1;
            g.workers.push_back(std::make_unique<WorkerProc>(*this, v, g, slot));
            g.workers.back()->spawn();
            return;
        }
    }
    if (static_cast<int>(g.ready_count()) == want) {
        finish_reload(v);
    }
}

void Emperor::finish_reload(VassalRt& v) {
    for (auto& w : v.next->workers) {
        w->routed = true;
    }
    if (v.active != nullptr) {
        while (!v.active->workers.empty()) {
            auto old = std::move(v.active->workers.back());
            v.active->workers.pop_back();
            retire(v, std::move(old));
        }
    }
    if (v.active != nullptr) {
        retired_generations_.push_back(std::move(v.active));
    }
    v.active = std::move(v.next);
    v.state = VassalState::Running;
    spdlog::info("vassal {}: generation {} serving", v.name, v.active->id);
    publish_routes();
    notify(v, true, "reloaded to generation " + std::to_string(v.active->id));
}

void Emperor::abandon_reload(VassalRt& v, const std::string& why) {
    if (v.next == nullptr) {
        return;
    }
    auto gen = std::move(v.next);
    spdlog::error("vassal {}: reload to generation {} abandoned: {}", v.name, gen->id, why);
    ++v.failed_reloads;
    v.last_error = "reload to generation " + std::to_string(gen->id) + " failed: " + why;
    v.last_error_unix = now_unix();
    for (auto& w : gen->workers) {
        w->generation = gen.get();
        retire(v, std::move(w));
    }
    gen->workers.clear();
    // The retiring workers still point at their generation's config: keep it alive with them.
    retired_generations_.push_back(std::move(gen));
    if (v.active != nullptr && !v.removing) {
        fill_active(v); // rolling may have retired some of the old workers already
    }
    update_state(v);
    publish_routes();
    notify(v, false, v.last_error);
}

void Emperor::retire(VassalRt& v, std::unique_ptr<WorkerProc> w) {
    WorkerProc* raw = w.get();
    raw->retiring = true;
    v.retiring.push_back(std::move(w));
    VassalRt* vp = &v;
    auto gone = [this, vp, raw] {
        auto& list = vp->retiring;
        for (auto it = list.begin(); it != list.end(); ++it) {
            if (it->get() == raw) {
                bury(std::move(*it));
                list.erase(it);
                break;
            }
        }
        maybe_erase(*vp);
    };
    raw->on_stopped = gone;
    if (raw->state == WorkerState::Ready && raw->routed) {
        raw->drain();
    } else {
        raw->stop();
    }
}

void Emperor::remove_vassal(VassalRt& v) {
    v.removing = true;
    v.state = VassalState::Stopping;
    if (v.next != nullptr) {
        abandon_reload(v, "the vassal file was removed");
    }
    if (v.active != nullptr) {
        auto gen = std::move(v.active);
        for (auto& w : gen->workers) {
            retire(v, std::move(w));
        }
        gen->workers.clear();
        retired_generations_.push_back(std::move(gen));
    }
    publish_routes();
    maybe_erase(v);
}

void Emperor::maybe_erase(VassalRt& v) {
    if (!v.removing || v.active != nullptr || v.next != nullptr || !v.retiring.empty()) {
        if (shutting_down_) {
            maybe_finish_shutdown();
        }
        return;
    }
    std::string name = v.name;
    fs::path file = v.file;
    notify(v, false, "vassal removed");
    spdlog::info("vassal {}: stopped", name);
    vassals_.erase(name);
    if (shutting_down_) {
        maybe_finish_shutdown();
        return;
    }
    publish_routes(); // its route goes: requests for it now get 404, not 503
    // The file may have come back while the old pool drained.
    std::error_code ec;
    if (fs::exists(file, ec)) {
        apply_file(name, file);
    }
}

void Emperor::bury(std::unique_ptr<WorkerProc> w) {
    graveyard_.push_back(std::move(w));
    uv_idle_start(graveyard_idle_.get(), [](uv_idle_t* h) {
        auto* e = static_cast<Emperor*>(h->data);
        e->graveyard_.clear();
        e->prune_generations();
        uv_idle_stop(h);
    });
}

void Emperor::prune_generations() {
    std::erase_if(retired_generations_, [this](const std::unique_ptr<Generation>& g) {
        for (const auto& [n, rt] : vassals_) {
            for (const auto& w : rt->retiring) {
                if (w->generation == g.get()) {
                    return false;
                }
            }
        }
        return true;
    });
}

void Emperor::update_state(VassalRt& v) {
    if (v.removing) {
        v.state = VassalState::Stopping;
        return;
    }
    if (v.next != nullptr) {
        v.state = VassalState::Reloading;
        return;
    }
    if (v.active == nullptr) {
        v.state = VassalState::Failed;
        return;
    }
    int worst = 0;
    for (const auto& w : v.active->workers) {
        worst = std::max(worst, w->failures);
    }
    if (worst >= kFailedAfter) {
        v.state = VassalState::Failed;
    } else if (static_cast<int>(v.active->ready_count()) == v.active->config.workers) {
        v.state = VassalState::Running;
    } else if (v.state != VassalState::Running && v.state != VassalState::Failed) {
        v.state = VassalState::Starting;
    }
}

void Emperor::notify(VassalRt& v, bool ok, const std::string& message) {
    auto waiters = std::move(v.waiters);
    v.waiters.clear();
    for (auto& w : waiters) {
        w(ok, message);
    }
}

void Emperor::worker_ready(WorkerProc& w) {
    VassalRt& v = *w.vassal;
    if (w.retiring) {
        w.stop();
        return;
    }
    if (v.next != nullptr && w.generation == v.next.get()) {
        step_reload(v);
        return;
    }
    w.routed = true;
    update_state(v);
    publish_routes();
    settle_first_start(v, nullptr);
}

void Emperor::settle_first_start(VassalRt& v, const std::string* failure) {
    // Waiters with an active generation and no reload in progress asked for a first start.
    if (v.waiters.empty() || v.next != nullptr || v.active == nullptr) {
        return;
    }
    const std::string gen = "generation " + std::to_string(v.active->id);
    if (failure != nullptr) {
        notify(v, false, gen + " failed to start: " + *failure);
    } else if (static_cast<int>(v.active->ready_count()) == v.active->config.workers) {
        notify(v, true, "started " + gen);
    }
}

void Emperor::worker_failed_start(WorkerProc& w, const std::string& why) {
    VassalRt& v = *w.vassal;
    std::string lines = w.child != nullptr ? join_lines(w.child->last_lines()) : "";
    if (w.retiring) {
        w.stop();
        return;
    }
    if (v.next != nullptr && w.generation == v.next.get()) {
        abandon_reload(v, "worker " + std::to_string(w.slot) + ": " + why + lines);
        return;
    }
    // An active worker that could not start (or stopped answering): stop it, back off, retry.
    const bool was_routed = w.routed;
    ++w.failures;
    v.last_error = "worker " + std::to_string(w.slot) + ": " + why;
    v.last_error_unix = now_unix();
    spdlog::error("vassal {}: worker {}: {}{}", v.name, w.slot, why, lines);
    const std::string failure = v.last_error + lines;
    settle_first_start(v, &failure);
    WorkerProc* wp = &w;
    w.stop([this, wp] {
        wp->state = WorkerState::Backoff;
        wp->stopping = false;
        auto delay = restart_backoff(wp->failures);
        spdlog::info("vassal {}: restarting worker {} in {} ms", wp->vassal->name, wp->slot,
                     delay.count());
        wp->arm(static_cast<uint64_t>(delay.count()));
        update_state(*wp->vassal);
    });
    update_state(v);
    if (was_routed) {
        publish_routes();
    }
}

void Emperor::worker_exited(WorkerProc& w, ExitStatus st) {
    VassalRt& v = *w.vassal;
    std::string lines = w.child != nullptr ? join_lines(w.child->last_lines()) : "";
    const bool was_routed = w.routed;
    w.routed = false;
    if (w.retiring) {
        w.state = WorkerState::Stopped;
        w.stopping = true;
        if (w.on_stopped) {
            auto done = std::move(w.on_stopped);
            w.on_stopped = nullptr;
            done();
        }
        publish_routes();
        return;
    }
    if (v.next != nullptr && w.generation == v.next.get()) {
        w.state = WorkerState::Stopped;
        w.stopping = true;
        abandon_reload(v, "worker " + std::to_string(w.slot) + " exited: " + st.str() + lines);
        return;
    }
    if (w.ready_ms != 0 && now_ms() - w.ready_ms >= kHealthyResetMs) {
        w.failures = 0;
    }
    ++w.failures;
    w.state = WorkerState::Backoff;
    v.last_error = "worker " + std::to_string(w.slot) + " exited: " + st.str();
    v.last_error_unix = now_unix();
    auto delay = restart_backoff(w.failures);
    spdlog::error("vassal {}: worker {} (pid {}) exited unexpectedly: {}; restarting in {} ms{}",
                  v.name, w.slot, w.pid(), st.str(), delay.count(), lines);
    const std::string failure = v.last_error + lines;
    settle_first_start(v, &failure);
    w.arm(static_cast<uint64_t>(delay.count()));
    update_state(v);
    if (was_routed) {
        publish_routes();
    }
}

void Emperor::on_drained(const std::string& address) {
    for (auto& [name, v] : vassals_) {
        for (auto& w : v->retiring) {
            if (w->state == WorkerState::Draining && w->address.str() == address) {
                spdlog::debug("vassal {}: worker {} drained", name, w->slot);
                w->stop();
                return;
            }
        }
    }
}

void Emperor::publish_routes() {
    control::RoutesMessage m;
    m.version = ++routes_version_;
    for (const auto& [name, v] : vassals_) {
        const Generation* shown = v->active != nullptr ? v->active.get() : v->next.get();
        if (shown == nullptr && v->retiring.empty()) {
            continue;
        }
        control::RouteSpec r;
        r.vassal = name;
        if (shown != nullptr) {
            r.generation = shown->id;
            r.hosts = shown->config.hosts;
            r.path = shown->config.path;
        } else {
            r.generation = v->retiring.front()->generation->id;
            r.hosts = v->retiring.front()->generation->config.hosts;
            r.path = v->retiring.front()->generation->config.path;
        }
        for (const Generation* g : {v->active.get(), v->next.get()}) {
            if (g == nullptr) {
                continue;
            }
            for (const auto& w : g->workers) {
                if (w->routed && w->state == WorkerState::Ready) {
                    r.backends.push_back({w->address.str(), w->slot, false});
                }
            }
        }
        for (const auto& w : v->retiring) {
            if (w->state == WorkerState::Draining) {
                r.backends.push_back({w->address.str(), w->slot, true});
            }
        }
        m.routes.push_back(std::move(r));
    }
    if (!router_greeted_ || control_.get() == nullptr || control_->type == UV_UNKNOWN_HANDLE ||
        uv_is_closing(control_.base())) {
        return; // sent in full when the router (re)starts and says hello
    }
    struct Req {
        uv_write_t w;
        std::string data;
    };
    auto* r = new Req{{}, control::encode(m)};
    r->w.data = r;
    uv_buf_t buf = uv_buf_init(r->data.data(), static_cast<unsigned>(r->data.size()));
    if (uv_write(&r->w, control_.stream(), &buf, 1,
                 [](uv_write_t* w, int) { delete static_cast<Req*>(w->data); }) != 0) {
        delete r;
    }
}

void Emperor::spawn_router() {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        spdlog::error("emperor: socketpair: {}", std::strerror(errno));
        return;
    }
    SpawnSpec spec;
    spec.argv = {options_.self_exe, "router", "--access-log", options_.access_log};
    if (!options_.log_dir.empty()) {
        // Per-vassal access logs; requests that match no vassal go to router.access.log.
        spec.argv[3] = (options_.log_dir / "router.access.log").string();
        spec.argv.push_back("--access-log-dir");
        spec.argv.push_back(options_.log_dir.string());
    }
    if (options_.threads != 0) {
        spec.argv.push_back("--threads");
        spec.argv.push_back(std::to_string(options_.threads));
    }
    int next_fd = 3;
    for (int fd : listen_fds_) {
        spec.extra_fds.push_back(fd);
        spec.argv.push_back("--inherit-fd");
        spec.argv.push_back(std::to_string(next_fd++));
    }
    spec.extra_fds.push_back(sv[1]);
    spec.argv.push_back("--control-fd");
    spec.argv.push_back(std::to_string(next_fd));
    spec.tag = "router";
    int err = 0;
    router_ = spawn_child(
        loop_, spec,
        [](std::string_view line, bool) {
            // At the router's own level, so that its warnings and errors reach stderr with
            // --log-dir as the emperor's do.
            const ChildLogLine l = parse_child_log_line(line);
            spdlog::log(l.level, "[router] {}", l.message);
        },
        [this](ExitStatus st) { router_exited(st); }, &err);
    ::close(sv[1]);
    if (router_ == nullptr) {
        ::close(sv[0]);
        spdlog::error("emperor: cannot start the router: {}", std::strerror(-err));
        router_exited(ExitStatus{});
        return;
    }
    router_started_ms_ = now_ms();
    control_ = UvHandle<uv_pipe_t>();
    uv_pipe_init(loop_, control_.get(), 0);
    uv_pipe_open(control_.get(), sv[0]);
    control_->data = this;
    control_in_ = control::LineBuffer();
    router_greeted_ = false;
    uv_read_start(
        control_.stream(),
        [](uv_handle_t*, size_t, uv_buf_t* buf) {
            static char storage[64 * 1024];
            *buf = uv_buf_init(storage, sizeof(storage));
        },
        [](uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
            auto* e = static_cast<Emperor*>(s->data);
            if (e == nullptr) {
                return;
            }
            if (n < 0) {
                uv_read_stop(s);
                return;
            }
            e->control_in_.append({buf->base, static_cast<size_t>(n)});
            std::string line;
            while (e->control_in_.next(line)) {
                e->on_control_line(line);
            }
        });
    spdlog::info("emperor: router started (pid {})", router_->pid());
}

void Emperor::on_control_line(const std::string& line) {
    try {
        auto j = control::parse_line(line);
        const std::string type = j["type"].get<std::string>();
        if (type == "hello") {
            router_greeted_ = true;
            publish_routes();
        } else if (type == "drained") {
            on_drained(control::decode_drained(j).address);
        } else if (type == "stats") {
            stats_ = control::add_counters(stats_past_, control::decode_stats(j));
            if (stats_listener_) {
                stats_listener_();
            }
        }
    } catch (const std::exception& e) {
        spdlog::warn("emperor: bad message from the router: {}", e.what());
    }
}

void Emperor::router_exited(ExitStatus st) {
    control_.reset();
    // Its counters live on (up to its last report, a second old at most), for the workers and
    // vassals that are still there (a new worker may reuse a gone one's port); gauges do not.
    std::set<std::string> live;
    for (const auto& [name, v] : vassals_) {
        for (const Generation* g : {v->active.get(), v->next.get()}) {
            if (g == nullptr) {
                continue;
            }
            for (const auto& w : g->workers) {
                live.insert(w->address.str());
            }
        }
        for (const auto& w : v->retiring) {
            live.insert(w->address.str());
        }
    }
    stats_.connections = 0;
    stats_.thread_connections.clear();
    std::erase_if(stats_.backends, [&](const auto& b) { return !live.contains(b.address); });
    std::erase_if(stats_.vassals, [&](const auto& f) { return !vassals_.contains(f.vassal); });
    for (auto& b : stats_.backends) {
        b.in_flight = 0;
    }
    for (auto& f : stats_.vassals) {
        f.in_flight = 0;
    }
    stats_past_ = stats_;
    if (shutting_down_) {
        spdlog::info("emperor: router stopped ({})", st.str());
        maybe_finish_shutdown();
        return;
    }
    if (now_ms() - router_started_ms_ >= kHealthyResetMs) {
        router_failures_ = 0;
    }
    ++router_failures_;
    auto delay = restart_backoff(router_failures_);
    spdlog::error("emperor: router exited unexpectedly ({}); restarting in {} ms{}", st.str(),
                  delay.count(), router_ != nullptr ? join_lines(router_->last_lines()) : "");
    uv_timer_start(
        router_restart_.get(),
        [](uv_timer_t* t) {
            auto* e = static_cast<Emperor*>(t->data);
            if (!e->shutting_down_) {
                e->spawn_router();
            }
        },
        static_cast<uint64_t>(delay.count()), 0);
}

void Emperor::reload(const std::string& name, std::function<void(bool, std::string)> done) {
    auto it = vassals_.find(name);
    if (it == vassals_.end() || it->second->removing) {
        done(false, "unknown vassal '" + name + "'");
        return;
    }
    VassalRt& v = *it->second;
    VassalLoad load = load_vassal_file(v.file);
    if (!load.ok()) {
        std::string msg = load.errors.empty() ? "unreadable file" : load.errors.front().str();
        v.last_error = msg;
        v.last_error_unix = now_unix();
        done(false, "invalid vassal file: " + msg);
        return;
    }
    if (v.next != nullptr) {
        // Answer the waiters of the reload being replaced before joining those of the new one.
        abandon_reload(v, "superseded by a newer reload");
    }
    v.waiters.push_back(std::move(done));
    v.content_hash = load.vassal->content_hash;
    if (v.active == nullptr) {
        // Answered by settle_first_start: every worker ready, or one failed.
        start_vassal(v, std::move(*load.vassal));
        return;
    }
    begin_reload(v, std::move(*load.vassal));
}

void Emperor::shutdown(std::function<void()> done) {
    if (shutting_down_) {
        return;
    }
    shutting_down_ = true;
    shutdown_done_ = std::move(done);
    watcher_.reset();
    uv_timer_stop(router_restart_.get());
    // Stop accepting: the router closes its copies of the sockets, we close ours.
    for (int fd : listen_fds_) {
        ::close(fd);
    }
    listen_fds_.clear();
    if (router_ != nullptr && router_->running()) {
        router_->stop(SIGTERM, std::chrono::seconds(40));
    }
    maybe_finish_shutdown();
}

void Emperor::maybe_finish_shutdown() {
    if (!shutting_down_) {
        return;
    }
    if (router_ != nullptr && router_->running()) {
        return; // requests in flight still need their workers
    }
    // The router is gone: stop every worker.
    for (auto& [name, v] : vassals_) {
        if (!v->removing) {
            v->removing = true;
            v->state = VassalState::Stopping;
            if (v->next != nullptr) {
                auto gen = std::move(v->next);
                for (auto& w : gen->workers) {
                    retire(*v, std::move(w));
                }
                retired_generations_.push_back(std::move(gen));
            }
            if (v->active != nullptr) {
                auto gen = std::move(v->active);
                for (auto& w : gen->workers) {
                    w->routed = false; // nothing to drain through: stop directly
                    retire(*v, std::move(w));
                }
                retired_generations_.push_back(std::move(gen));
            }
        }
    }
    std::erase_if(vassals_, [](const auto& kv) {
        const VassalRt& v = *kv.second;
        return v.active == nullptr && v.next == nullptr && v.retiring.empty();
    });
    if (vassals_.empty() && shutdown_done_) {
        reaper_.reset(); // the last child is gone; its SIGCHLD handler would keep the loop alive
        auto done = std::move(shutdown_done_);
        shutdown_done_ = nullptr;
        done();
    }
}

nlohmann::json Emperor::status() const {
    using nlohmann::json;
    std::map<std::string, const control::BackendStats*> by_address;
    for (const auto& b : stats_.backends) {
        by_address[b.address] = &b;
    }
    std::map<std::string, const control::VassalFigures*> figures;
    for (const auto& f : stats_.vassals) {
        figures[f.vassal] = &f;
    }
    json vassals = json::array();
    for (const auto& [name, v] : vassals_) {
        json workers = json::array();
        auto add = [&](const WorkerProc& w) {
            json jw = {
                {"id", w.slot},
                {"pid", w.pid()},
                {"state", std::string(to_string(w.state))},
                {"generation", w.generation->id},
                {"address", w.address.str()},
                {"restarts", w.restarts},
                {"uptime_seconds", w.state == WorkerState::Ready || w.state == WorkerState::Draining
                                       ? (now_ms() - w.started_ms) / 1000
                                       : 0}};
            auto it = by_address.find(w.address.str());
            jw["requests"] = it != by_address.end() ? it->second->requests : 0;
            jw["in_flight"] = it != by_address.end() ? it->second->in_flight : 0;
            workers.push_back(std::move(jw));
        };
        for (const Generation* g : {v->active.get(), v->next.get()}) {
            if (g != nullptr) {
                for (const auto& w : g->workers) {
                    add(*w);
                }
            }
        }
        for (const auto& w : v->retiring) {
            add(*w);
        }
        const Generation* g = v->active != nullptr ? v->active.get() : v->next.get();
        json jv = {{"name", name},
                   {"state", std::string(to_string(v->state))},
                   {"generation", g != nullptr ? g->id : 0},
                   {"file", v->file.string()},
                   {"hosts", g != nullptr ? json(g->config.hosts) : json::array()},
                   {"path", g != nullptr ? g->config.path : std::string("/")},
                   {"workers", std::move(workers)},
                   {"reloads", v->reloads},
                   {"failed_reloads", v->failed_reloads},
                   {"last_error", v->last_error.empty() ? json(nullptr) : json(v->last_error)},
                   {"last_error_time",
                    v->last_error_unix != 0 ? json(v->last_error_unix) : json(nullptr)}};
        uint64_t requests = 0;
        uint64_t errors = 0;
        if (auto it = figures.find(name); it != figures.end()) {
            for (uint64_t c : it->second->responses) {
                requests += c;
            }
            errors = it->second->responses[5];
        }
        jv["requests"] = requests;
        jv["errors"] = errors;
        vassals.push_back(std::move(jv));
    }
    json router = {{"pid", router_ != nullptr ? router_->pid() : 0},
                   {"connections", stats_.connections},
                   {"requests", stats_.requests},
                   {"thread_requests", stats_.thread_requests},
                   {"thread_connections", stats_.thread_connections}};
    json listen = json::array();
    for (const auto& a : bound_) {
        listen.push_back(a.str());
    }
    return {{"emperor",
             {{"pid", ::getpid()},
              {"vassals_dir", options_.vassals_dir.string()},
              {"listen", listen},
              {"uptime_seconds", now_unix() - started_unix_}}},
            {"router", router},
            {"vassals", vassals}};
}

} // namespace liege::emperor
