#include "emperor.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <tuple>

#include "liege/clock.hpp"
#include "liege/isolation.hpp"
#include "liege/log.hpp"
#include "liege/logs.hpp"
#include "liege/router_settings.hpp"

namespace liege::emperor {

namespace fs = std::filesystem;

namespace {

// The router's figures for each worker, by address (as the route set names the backends).
std::map<std::string, const control::BackendStats*>
backends_by_address(const control::StatsMessage& stats) {
    std::map<std::string, const control::BackendStats*> out;
    for (const auto& b : stats.backends) {
        out[b.address] = &b;
    }
    return out;
}

nlohmann::json recycles_json(const VassalRt& v) {
    nlohmann::json out = nlohmann::json::object();
    for (int i = 0; i < control::kRecycleReasons; ++i) {
        out[std::string(control::to_string(static_cast<control::RecycleReason>(i)))] =
            v.recycles[i];
    }
    return out;
}

} // namespace

Emperor::Emperor(uv_loop_t* loop, EmperorOptions options)
    : loop_(loop), options_(std::move(options)),
      router_(loop, options_,
              {[this] { publish_routes(); },
               [this](const control::DrainedMessage& m) { on_drained(m); },
               [this](const control::RecycleMessage& m) { on_recycle(m); },
               [this](const control::DemandMessage& m) { on_demand(m); },
               [this] { router_stats_arrived(); }, [this](ExitStatus st) { router_exited(st); }}) {
    uv_idle_init(loop_, graveyard_idle_.get());
    graveyard_idle_->data = this;
    started_unix_ = unix_now();
    acme_ = std::make_unique<AcmeManager>(
        loop_, AcmeSettings{options_.acme_directory, options_.acme_email, options_.acme_ca},
        options_.state_dir, router_, [this] { publish_routes(); });
}

Emperor::~Emperor() {
    for (int fd : listen_fds_) {
        ::close(fd);
    }
    for (int fd : tls_fds_) {
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
    for (const auto& [addrs, fds, bound, scheme] :
         {std::tuple{&options_.listen, &listen_fds_, &bound_, ""},
          std::tuple{&options_.listen_tls, &tls_fds_, &bound_tls_, " (https)"}}) {
        for (const Address& a : *addrs) {
            int fd = bind_listening_socket(a, false, 4096);
            if (fd < 0) {
                spdlog::error("cannot listen on {}: {}", a.str(), std::strerror(-fd));
                return 1;
            }
            fds->push_back(fd);
            bound->push_back(a.is_unix() ? a : address_of_socket(fd));
            spdlog::info("listening on {}{}", bound->back().str(), scheme);
        }
    }
    router_.start(listen_fds_, tls_fds_);
    watcher_ = watch_directory(loop_, options_.vassals_dir,
                               [this](const std::vector<DirChange>& c) { on_changes(c); });
    spdlog::info("emperor: watching {}", fs::absolute(options_.vassals_dir).string());
    return 0;
}

void Emperor::log_line(const std::string& tag, std::string_view line, bool is_stderr) {
    log_worker_line(tag, line, is_stderr);
    const std::string vassal = tag.substr(0, tag.rfind('/'));
    auto& ring = log_rings_[vassal];
    ring.push_back({++log_seq_, tag, is_stderr, std::string(line)});
    if (ring.size() > kLogRing) {
        ring.pop_front();
    }
}

std::optional<std::vector<Emperor::LogLine>> Emperor::logs(const std::string& name, uint64_t after,
                                                           size_t n) const {
    auto it = log_rings_.find(name);
    if (it == log_rings_.end()) {
        if (vassals_.count(name) == 0 && held_.count(name) == 0) {
            return std::nullopt;
        }
        return std::vector<LogLine>{};
    }
    const auto& ring = it->second;
    auto from = std::upper_bound(ring.begin(), ring.end(), after,
                                 [](uint64_t seq, const LogLine& l) { return seq < l.seq; });
    if (static_cast<size_t>(ring.end() - from) > n) {
        from = ring.end() - static_cast<std::ptrdiff_t>(n);
    }
    return std::vector<LogLine>(from, ring.end());
}

void Emperor::stop(const std::string& name, VassalRt::Waiter done) {
    auto it = vassals_.find(name);
    if (it == vassals_.end() && held_.count(name) == 0) {
        post(loop_,
             [done = std::move(done), name] { done(false, "unknown vassal '" + name + "'"); });
        return;
    }
    const bool already = held_.count(name) != 0;
    held_.insert(name);
    if (it == vassals_.end() || (it->second->removing && it->second->empty())) {
        post(loop_, [done = std::move(done), already] {
            done(true, already ? "already stopped" : "stopped");
        });
        return;
    }
    spdlog::info("vassal {}: stopped by request (liege stop); its file stays", name);
    VassalRt& v = *it->second;
    v.waiters.push_back(std::move(done)); // answered by maybe_erase
    if (!v.removing) {
        v.pending.reset();
        remove_vassal(v);
    }
}

void Emperor::start(const std::string& name, VassalRt::Waiter done) {
    if (held_.erase(name) == 0) {
        auto it = vassals_.find(name);
        const bool known = it != vassals_.end() && !it->second->removing;
        post(loop_, [done = std::move(done), name, known] {
            done(known, known ? "already in service" : "unknown vassal '" + name + "'");
        });
        return;
    }
    const fs::path file = options_.vassals_dir / (name + ".toml");
    std::error_code ec;
    if (!fs::exists(file, ec)) {
        post(loop_, [done = std::move(done), file] {
            done(false, file.string() + " is gone: nothing to start");
        });
        return;
    }
    spdlog::info("vassal {}: started by request (liege start)", name);
    if (vassals_.count(name) != 0) {
        // Still draining from the stop: maybe_erase starts it from its file once it is gone.
        vassals_.at(name)->waiters.push_back(std::move(done));
        return;
    }
    apply_file(name, file);
    auto it = vassals_.find(name);
    if (it == vassals_.end() || (it->second->active == nullptr && !it->second->pending)) {
        std::string why = it != vassals_.end() ? it->second->last_error : "not loaded";
        post(loop_, [done = std::move(done), why] { done(false, why); });
        return;
    }
    it->second->waiters.push_back(std::move(done)); // answered once every worker is ready
    it->second->settle_first_start(loop_, nullptr);
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

VassalRt& Emperor::vassal_of(const WorkerProc& w) {
    // A worker's vassal outlives it: a vassal is erased only once its worker list is empty.
    return *vassals_.at(w.vassal());
}

void Emperor::failed(VassalRt& v, std::string error, uint64_t generation) {
    v.set_error(std::move(error), generation, unix_now());
}

// ---------------------------------------------------------------------------------------------
// Vassal files

void Emperor::on_changes(const std::vector<DirChange>& changes) {
    if (shutting_down_) {
        return;
    }
    // A layer (_defaults.toml, a template) may change every vassal made from it: each is loaded
    // again, and reloads only if its effective configuration changed (apply_file).
    std::map<std::string, fs::path> from_layers;
    for (const auto& c : changes) {
        const std::string file_name = c.file.filename().string();
        if (!is_vassal_layer_file_name(file_name)) {
            continue;
        }
        spdlog::info("emperor: {} {}, loading the vassals made from it again", c.file.string(),
                     c.kind == DirChange::Kind::Removed ? "removed" : "changed");
        std::error_code ec;
        for (const fs::path& file : list_vassal_files(options_.vassals_dir, ec)) {
            std::string name = file.stem().string();
            if (file_name == "_defaults.toml" || template_file_name(name) == file_name) {
                from_layers[name] = file;
            }
        }
    }
    for (const auto& c : changes) {
        if (is_vassal_layer_file_name(c.file.filename().string())) {
            continue;
        }
        from_layers.erase(c.name); // its own change loads it
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
    for (const auto& [name, file] : from_layers) {
        apply_file(name, file);
    }
}

void Emperor::apply_file(const std::string& name, const fs::path& file) {
    VassalLoad load = load_vassal_file(file, process_env(), options_.env_name);
    if (std::string why = load.ok() ? check_isolation(*load.vassal) : ""; !why.empty()) {
        load.errors.push_back({file.string(), {}, why}); // user, group: not runnable here
        load.vassal.reset();
    }
    auto it = vassals_.find(name);
    VassalRt* v = it != vassals_.end() ? it->second.get() : nullptr;
    if (v != nullptr && v->removing) {
        // A file dropped back in while the old pool drains: start afresh once it is gone
        // (maybe_erase reads the file again).
        return;
    }
    if (held_.count(name) != 0) {
        spdlog::info("vassal {}: out of service (liege stop): {} waits for liege start", name,
                     file.string());
        return;
    }
    if (v == nullptr) {
        auto rt = std::make_unique<VassalRt>();
        rt->name = name;
        rt->file = file;
        rt->started_unix = unix_now();
        if (!load.ok()) {
            rt->state = VassalState::Failed;
        }
        v = rt.get();
        vassals_[name] = std::move(rt);
    }
    if (!load.ok()) {
        for (const auto& d : load.errors) {
            spdlog::error("{}", d.str());
        }
        std::string first = load.errors.empty() ? "unreadable" : load.errors.front().str();
        if (v->active != nullptr) {
            spdlog::warn("vassal {}: invalid file, generation {} keeps serving", name,
                         v->active->id);
        }
        v->content_hash = load.content_hash;
        failed(*v, first, v->next_generation); // resolved by the generation of a valid file
        publish_failure(*v);
        v->notify(loop_, false, "invalid vassal file: " + first);
        report_blocked_starts();
        return;
    }
    Vassal config = std::move(*load.vassal);
    const Generation* latest = v->next != nullptr ? v->next.get() : v->active.get();
    if (latest != nullptr && latest->config.content_hash == config.content_hash) {
        spdlog::debug("vassal {}: effective configuration unchanged", name);
        if (v->next == nullptr && v->last_error_generation > latest->id) {
            // The file says again what runs (a bad edit undone): what failed is asked for no more.
            v->last_error_generation = latest->id;
            v->resolve_error(unix_now());
        }
        return; // the same effective vassal (a layer's edit that does not reach it): no reload
    }
    v->content_hash = config.content_hash;
    v->file = file;
    if (v->active == nullptr && v->next == nullptr) {
        if (std::string wait = waiting_for(*v, config); !wait.empty()) {
            if (!v->pending) {
                spdlog::info("vassal {}: waiting for {} to be ready before starting", name, wait);
            }
            v->pending = std::move(config);
            v->state = VassalState::Starting;
            report_blocked_starts();
            return;
        }
        v->pending.reset();
        start_vassal(*v, std::move(config));
    } else {
        begin_reload(*v, std::move(config));
    }
}

GenerationPtr Emperor::new_generation(VassalRt& v, Vassal config) {
    auto g = std::make_shared<Generation>();
    g->id = v.next_generation++;
    g->config = std::move(config);
    return g;
}

WorkerProc* Emperor::add_worker(VassalRt& v, const GenerationPtr& g, int slot, StartReason why) {
    v.workers.push_back(std::make_unique<WorkerProc>(*this, v.name, g, slot));
    WorkerProc* w = v.workers.back().get();
    w->set_start_reason(why);
    if (const uint64_t n = g->config.recycle.max_requests; n != 0) {
        // Each worker draws its own limit within ±10%, so a pool started together is not due
        // together (and one at a time is recycled anyway).
        std::uniform_real_distribution<double> jitter(0.9, 1.1);
        w->set_request_limit(
            std::max<uint64_t>(1, static_cast<uint64_t>(static_cast<double>(n) * jitter(rng_))));
    }
    w->spawn();
    return w;
}

void Emperor::start_vassal(VassalRt& v, Vassal config) {
    v.active = new_generation(v, std::move(config));
    run_active(v, "starting");
}

void Emperor::run_active(VassalRt& v, std::string_view what) {
    v.state = VassalState::Starting;
    v.pool_size = wanted_size(v, v.active->config);
    reset_scaler(v);
    spdlog::info("vassal {}: {} {} worker(s), generation {}{}", v.name, what, v.pool_size,
                 v.active->id,
                 v.pool_size == 0 ? " (on demand: a worker starts at the first request)" : "");
    fill_active(v);
    publish_routes();
    watch_code(v);
    if (v.pool_size == 0) {
        // Nothing to wait for: ready for requests now.
        v.update_state();
        v.settle_first_start(loop_, nullptr);
        post(loop_, [this] { start_waiting(); });
    }
}

std::string Emperor::waiting_for(const VassalRt& v, const Vassal& config) const {
    // Follows the waits from `config`: reaching `v` again means a cycle, and nothing waits.
    std::set<std::string> seen{v.name};
    std::vector<std::string> todo(config.after.begin(), config.after.end());
    while (!todo.empty()) {
        std::string name = todo.back();
        todo.pop_back();
        if (name == v.name) {
            spdlog::error("vassal {}: its `after` closes a cycle; starting it without waiting",
                          v.name);
            return {};
        }
        if (!seen.insert(name).second) {
            continue;
        }
        auto it = vassals_.find(name);
        if (it != vassals_.end() && it->second->pending) {
            for (const auto& dep : it->second->pending->after) {
                todo.push_back(dep);
            }
        }
    }
    std::string wait;
    for (const auto& dep : config.after) {
        auto it = vassals_.find(dep);
        if (it == vassals_.end()) {
            // Not loaded yet (later in the same scan), or no such vassal (liege check says so):
            // only a file that is there is waited for.
            std::error_code ec;
            if (fs::exists(options_.vassals_dir / (dep + ".toml"), ec)) {
                wait += (wait.empty() ? "" : ", ") + dep;
            }
            continue;
        }
        if (it->second->removing) {
            continue;
        }
        const VassalRt& d = *it->second;
        const bool ready = d.active != nullptr && d.state == VassalState::Running;
        if (!ready) {
            wait += (wait.empty() ? "" : ", ") + dep;
        }
    }
    return wait;
}

void Emperor::watch_code(VassalRt& v) {
    const Generation* g = v.active.get();
    if (g == nullptr || g->config.watch.paths.empty() || v.removing || shutting_down_) {
        v.code_watcher.reset();
        v.watched_hash = 0;
        return;
    }
    if (v.code_watcher != nullptr && v.watched_hash == g->config.content_hash) {
        return;
    }
    PlaceholderValues values;
    values.name = g->config.name;
    values.instance = g->config.instance;
    values.profile = g->config.profile;
    values.worker = 1;
    const fs::path base = g->config.working_dir(values);
    std::string error;
    const std::string name = v.name;
    v.code_watcher = CodeWatcher::start(
        loop_, base, g->config.watch,
        [this, name](const std::string& changed) { code_changed(name, changed); }, &error);
    v.watched_hash = g->config.content_hash;
    if (v.code_watcher == nullptr) {
        spdlog::warn("vassal {}: [watch] does not work: {}", v.name, error);
    }
}

void Emperor::code_changed(const std::string& name, const std::string& changed) {
    auto it = vassals_.find(name);
    if (it == vassals_.end() || it->second->removing || shutting_down_) {
        return;
    }
    VassalRt& v = *it->second;
    if (v.next != nullptr) {
        spdlog::info("vassal {}: {} changed; reloading once the reload under way is done", name,
                     changed);
        v.watch_pending = true;
        return;
    }
    spdlog::info("vassal {}: {} changed, reloading", name, changed);
    reload(name, [name](bool ok, const std::string& message) {
        if (!ok) {
            spdlog::warn("vassal {}: reload after a change under [watch]: {}", name, message);
        }
    });
}

void Emperor::start_waiting() {
    for (auto& [name, v] : vassals_) {
        if (v->pending && !v->removing && waiting_for(*v, *v->pending).empty()) {
            Vassal config = std::move(*v->pending);
            v->pending.reset();
            start_vassal(*v, std::move(config));
        }
    }
}

void Emperor::report_blocked_starts() {
    for (auto& [name, v] : vassals_) {
        if (!v->pending || v->removing) {
            continue;
        }
        for (const auto& dep : v->pending->after) {
            auto it = vassals_.find(dep);
            if (it == vassals_.end() || it->second->removing ||
                it->second->state != VassalState::Failed) {
                continue;
            }
            std::string why =
                fmt::format("waiting for {}, which failed: {}", dep, it->second->last_error);
            if (v->last_error != why) {
                spdlog::error("vassal {}: {}; it starts once {} is ready", name, why, dep);
                failed(*v, std::move(why), v->next_generation);
            }
            break;
        }
    }
}

bool Emperor::needed_by_others(const std::string& name) const {
    for (const auto& [other, v] : vassals_) {
        if (other == name || v->empty()) {
            continue;
        }
        auto needs = v->needs();
        if (std::find(needs.begin(), needs.end(), name) != needs.end()) {
            return true;
        }
    }
    return false;
}

void Emperor::remove_vassal(VassalRt& v) {
    v.removing = true;
    v.state = VassalState::Stopping;
    v.pending.reset();
    v.code_watcher.reset();
    if (v.next != nullptr) {
        abandon_reload(v, "the vassal file was removed", true);
    }
    if (v.active != nullptr) {
        retire_generation(v, v.active.get(), true);
        v.active = nullptr;
    }
    publish_routes();
    maybe_erase(v);
}

void Emperor::retire_generation(VassalRt& v, const Generation* g, bool drain) {
    for (WorkerProc* w : v.members(g)) {
        w->retire(drain);
    }
}

void Emperor::maybe_erase(VassalRt& v) {
    if (!v.removing || !v.empty()) {
        if (shutting_down_) {
            maybe_finish_shutdown();
        }
        return;
    }
    std::string name = v.name;
    fs::path file = v.file;
    const bool held = held_.count(name) != 0;
    std::vector<VassalRt::Waiter> waiters = std::move(v.waiters);
    v.waiters.clear();
    spdlog::info("vassal {}: stopped", name);
    vassals_.erase(name);
    for (auto& w : waiters) {
        // A `liege stop` is answered now; a reload or a `liege start` of a vassal that went (or
        // comes back from its file below) is answered by what follows.
        if (held) {
            post(loop_, [w = std::move(w)] { w(true, "stopped"); });
        } else if (shutting_down_ || !fs::exists(file)) {
            post(loop_, [w = std::move(w)] { w(false, "vassal removed"); });
        } else {
            post(loop_, [this, w = std::move(w), name] {
                auto it = vassals_.find(name);
                if (it == vassals_.end()) {
                    w(false, "vassal removed");
                    return;
                }
                it->second->waiters.push_back(w);
                it->second->settle_first_start(loop_, nullptr);
            });
        }
    }
    if (shutting_down_) {
        maybe_finish_shutdown();
        return;
    }
    publish_routes(); // its route goes: requests for it now get 404, not 503
    start_waiting();  // whoever waited for it waits no more
    // The file may have come back while the old pool drained (or a `liege start` came).
    std::error_code ec;
    if (!held && fs::exists(file, ec)) {
        apply_file(name, file);
    }
}

// ---------------------------------------------------------------------------------------------
// Reloads

void Emperor::reload(const std::string& name, VassalRt::Waiter done) {
    auto it = vassals_.find(name);
    if (it == vassals_.end() || it->second->removing) {
        post(loop_,
             [done = std::move(done), name] { done(false, "unknown vassal '" + name + "'"); });
        return;
    }
    VassalRt& v = *it->second;
    VassalLoad load = load_vassal_file(v.file, process_env(), options_.env_name);
    if (!load.ok()) {
        std::string msg = load.errors.empty() ? "unreadable file" : load.errors.front().str();
        failed(v, msg, v.next_generation);
        publish_failure(v);
        post(loop_, [done = std::move(done), msg] { done(false, "invalid vassal file: " + msg); });
        return;
    }
    // A restart still waiting for its old workers to stop: the new one waits for them too.
    const bool restart_pending = v.next != nullptr && v.plan == nullptr;
    if (v.next != nullptr) {
        // Answer the waiters of the reload being replaced before joining those of the new one.
        abandon_reload(v, "superseded by a newer reload", true);
    }
    v.waiters.push_back(std::move(done));
    v.content_hash = load.vassal->content_hash;
    if (v.active == nullptr && !restart_pending) {
        // Answered by settle_first_start: every worker ready, or one failed.
        start_vassal(v, std::move(*load.vassal));
        return;
    }
    begin_reload(v, std::move(*load.vassal));
}

void Emperor::begin_reload(VassalRt& v, Vassal config) {
    if (v.next != nullptr) {
        abandon_reload(v, "superseded by a newer change of the file", true);
    }
    const int size = wanted_size(v, config);
    if (size == 0 && v.pool().empty()) {
        switch_idle_pool(v, std::move(config)); // an on-demand pool with no worker now
        return;
    }
    if (config.reload.strategy == ReloadStrategy::Restart) {
        begin_restart(v, std::move(config));
        return;
    }
    v.next = new_generation(v, std::move(config));
    v.state = VassalState::Reloading;
    ++v.reloads;
    const Generation& g = *v.next;
    VassalRt* vp = &v;
    ReloadSteps steps{[this, vp](int slot) { add_worker(*vp, vp->next, slot); },
                      [vp](int slot) { vp->member(vp->next.get(), slot)->route(); },
                      [vp] {
                          auto old = vp->members(vp->active.get());
                          if (!old.empty()) {
                              old.back()->retire();
                          }
                      },
                      [this] { publish_routes(); }};
    // A scaled pool reloads at the size it has now (within the new bounds), at least one.
    const int workers = std::max(size, 1);
    v.plan = std::make_unique<ReloadPlan>(g.config.reload.strategy, workers, std::move(steps),
                                          steady_now_ms);
    spdlog::info("vassal {}: {} reload to generation {} ({} worker(s))", v.name,
                 to_string(g.config.reload.strategy), g.id, workers);
    v.plan->begin();
}

// `restart`: for what cannot run twice (a fixed port, a lock file). The whole old pool stops
// first (a web vassal's workers drain; its route stays, with no ready worker, so requests wait in
// the router's queue), and the new generation starts once the last old worker has exited. There
// is no old generation to fall back on: a new one that fails is restarted with backoff.
void Emperor::begin_restart(VassalRt& v, Vassal config) {
    v.next = new_generation(v, std::move(config));
    v.plan = nullptr; // a pending restart: next, no plan
    v.state = VassalState::Reloading;
    ++v.reloads;
    spdlog::info("vassal {}: restart reload to generation {}: stopping the old workers first",
                 v.name, v.next->id);
    if (v.active != nullptr) {
        retire_generation(v, v.active.get(), true);
        v.active = nullptr;
    }
    publish_routes();
    start_restarted(v);
}

void Emperor::start_restarted(VassalRt& v) {
    if (v.next == nullptr || v.plan != nullptr || v.removing || shutting_down_ ||
        !v.workers.empty()) {
        return;
    }
    v.active = std::move(v.next);
    v.next = nullptr;
    run_active(v, "old workers gone, starting");
}

void Emperor::finish_reload(VassalRt& v) {
    for (WorkerProc* w : v.members(v.next.get())) {
        w->route();
    }
    if (v.active != nullptr) {
        retire_generation(v, v.active.get(), true);
    }
    const int64_t took = v.plan->elapsed_ms();
    v.pool_size = static_cast<int>(v.members(v.next.get()).size());
    v.recycling = nullptr; // drained with the old generation
    v.active = std::move(v.next);
    v.next = nullptr;
    v.plan = nullptr;
    reset_scaler(v);
    v.state = VassalState::Running;
    v.resolve_error(unix_now());
    spdlog::info("vassal {}: generation {} serving ({} ms after the reload began)", v.name,
                 v.active->id, took);
    publish_routes();
    watch_code(v);
    if (v.watch_pending) {
        v.watch_pending = false;
        post(loop_, [this, name = v.name] { code_changed(name, "a watched file"); });
    }
    v.notify(loop_, true, "reloaded to generation " + std::to_string(v.active->id));
    start_waiting(); // those waiting for it, which a reload may have fixed
}

void Emperor::abandon_reload(VassalRt& v, const std::string& why, bool superseded) {
    if (v.next == nullptr) {
        return;
    }
    if (v.plan == nullptr) {
        // A restart waiting for the old workers: nothing of it runs yet, so nothing failed.
        spdlog::info("vassal {}: restart to generation {} dropped: {}", v.name, v.next->id, why);
        v.next = nullptr;
        v.update_state();
        v.notify(loop_, false, "restart to a new generation dropped: " + why);
        return;
    }
    const uint64_t id = v.next->id;
    if (superseded) {
        // A newer change (or the file's removal) takes over: nothing went wrong.
        spdlog::info("vassal {}: reload to generation {} dropped: {}", v.name, id, why);
    } else {
        spdlog::error("vassal {}: reload to generation {} abandoned: {}", v.name, id, why);
        ++v.failed_reloads;
        failed(v, "reload to generation " + std::to_string(id) + " failed: " + why, id);
    }
    retire_generation(v, v.next.get(), true);
    v.next = nullptr;
    v.plan = nullptr;
    if (v.active != nullptr && !v.removing) {
        fill_active(v); // rolling may have retired some of the old workers already
    }
    v.update_state();
    publish_routes();
    v.notify(loop_, false,
             superseded ? "reload to generation " + std::to_string(id) + " dropped: " + why
                        : v.last_error);
}

// ---------------------------------------------------------------------------------------------
// Worker events

void Emperor::worker_ready(WorkerProc& w) {
    VassalRt& v = vassal_of(w);
    if (v.is_next(w)) {
        if (v.plan->worker_ready(w.slot())) {
            finish_reload(v);
        }
        return;
    }
    w.route();
    if (WorkerProc* old = v.recycling;
        old != nullptr && old != &w && !old->retiring() && &w.generation() == v.active.get()) {
        old->retire(true); // its replacement serves: it drains
    }
    v.update_state();
    publish_routes();
    v.settle_first_start(loop_, nullptr);
    if (v.state == VassalState::Running) {
        start_waiting(); // the vassals that start after it
    }
}

void Emperor::worker_failed(WorkerProc& w, const std::string& why) {
    VassalRt& v = vassal_of(w);
    const std::string lines = w.last_lines();
    if (v.is_next(w)) {
        abandon_reload(v, "worker " + std::to_string(w.slot()) + ": " + why + lines);
        return;
    }
    // An active worker that could not start (or stopped answering): stop it, back off, retry.
    const bool was_serving = w.serving();
    failed(v, "worker " + std::to_string(w.slot()) + ": " + why, w.generation().id);
    spdlog::error("vassal {}: worker {}: {}{}", v.name, w.slot(), why, lines);
    const std::string failure = v.last_error + lines;
    w.restart();
    v.settle_first_start(loop_, &failure);
    v.update_state();
    if (was_serving) {
        publish_routes();
    } else {
        publish_failure(v);
    }
    report_blocked_starts();
}

void Emperor::worker_exited(WorkerProc& w, ExitStatus st) {
    VassalRt& v = vassal_of(w);
    const std::string lines = w.last_lines();
    if (v.is_next(w)) {
        abandon_reload(v, "worker " + std::to_string(w.slot()) + " exited: " + st.str() + lines);
        return;
    }
    const bool was_serving = w.serving();
    if (w.recycled()) {
        spdlog::info("vassal {}: worker {} (pid {}), being recycled, exited: {}", v.name, w.slot(),
                     w.pid(), st.str());
        w.retire(false); // its replacement is on its way
        publish_routes();
        return;
    }
    auto delay = w.back_off();
    failed(v, "worker " + std::to_string(w.slot()) + " exited: " + st.str(), w.generation().id);
    spdlog::error("vassal {}: worker {} (pid {}) exited unexpectedly: {}; restarting in {} ms{}",
                  v.name, w.slot(), w.pid(), st.str(), delay.count(), lines);
    const std::string failure = v.last_error + lines;
    v.settle_first_start(loop_, &failure);
    v.update_state();
    if (was_serving) {
        publish_routes();
    } else {
        publish_failure(v);
    }
    report_blocked_starts();
}

void Emperor::worker_backing_off(WorkerProc& w) {
    VassalRt& v = vassal_of(w);
    v.update_state();
    publish_failure(v);
}

void Emperor::worker_gone(WorkerProc& w) {
    VassalRt& v = vassal_of(w);
    auto it = std::find_if(v.workers.begin(), v.workers.end(),
                           [&](const auto& p) { return p.get() == &w; });
    if (it == v.workers.end()) {
        return;
    }
    if (w.recycled()) {
        spdlog::info("vassal {}: worker {} recycled ({})", v.name, w.slot(), w.recycled_for());
    }
    if (v.recycling == &w) {
        v.recycling = nullptr;
    }
    graveyard_.push_back(std::move(*it));
    v.workers.erase(it);
    uv_idle_start(graveyard_idle_.get(), [](uv_idle_t* h) {
        static_cast<Emperor*>(h->data)->graveyard_.clear();
        uv_idle_stop(h);
    });
    publish_routes();
    grant_slots();
    start_due_recycle(v);
    start_restarted(v);
    maybe_erase(v);
}

void Emperor::on_drained(const control::DrainedMessage& m) {
    for (auto& [name, v] : vassals_) {
        for (auto& w : v->workers) {
            if (w->phase() == WorkerPhase::Draining && w->generation().id == m.generation &&
                w->address().str() == m.address) {
                spdlog::debug("vassal {}: worker {} drained", name, w->slot());
                w->drained();
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The router

void Emperor::publish_routes() {
    control::RoutesMessage m;
    m.version = ++routes_version_;
    acme_->update(vassals_);
    for (const auto& [name, v] : vassals_) {
        v->routed_failed = v->refused();
        v->routed_error = v->last_error;
        const Generation* shown = v->active != nullptr ? v->active.get() : v->next.get();
        if (shown == nullptr) {
            if (v->workers.empty()) {
                continue;
            }
            shown = &v->workers.front()->generation();
        }
        if (shown->config.daemon()) {
            continue; // no route; a web generation's workers still draining are dropped with it
        }
        control::RouteSpec r;
        r.vassal = name;
        r.generation = shown->id;
        r.hosts = shown->config.hosts;
        r.path = shown->config.path;
        r.concurrency = shown->config.concurrency;
        r.queue_size = shown->config.queue.size;
        r.queue_timeout_ms = shown->config.queue.timeout.count();
        r.failed = v->routed_failed;
        r.last_error = v->last_error;
        r.tls_cert = shown->config.tls.cert.string();
        r.tls_key = shown->config.tls.key.string();
        r.tls_redirect = shown->config.tls.redirect;
        if (std::string acme = acme_->certificate(name); !acme.empty()) {
            r.tls_cert = acme; // chain and key in one file
        }
        r.request_timeout_ms = shown->config.recycle.request_timeout.count();
        r.request_buffering = to_string(shown->config.upstream.request_buffering);
        r.trace = shown->config.upstream.trace;
        for (const WorkerProc* w : v->in_order()) {
            if (w->serving() || w->phase() == WorkerPhase::Draining) {
                r.backends.push_back({w->address().str(), w->slot(), !w->serving(),
                                      w->generation().id, w->request_limit()});
            }
        }
        m.routes.push_back(std::move(r));
    }
    router_.send_routes(m);
}

void Emperor::publish_failure(VassalRt& v) {
    if (v.failure_unrouted()) {
        publish_routes();
    }
}

void Emperor::router_stats_arrived() {
    const auto by_address = backends_by_address(router_.stats());
    for (auto& [name, v] : vassals_) {
        for (auto& w : v->workers) {
            if (w->daemon()) {
                continue;
            }
            if (auto it = by_address.find(w->address().str()); it != by_address.end()) {
                w->router_report(*it->second);
            }
        }
    }
    check_recycles();
    size_pools();
    if (stats_listener_) {
        stats_listener_();
    }
}

void Emperor::router_exited(ExitStatus st) {
    std::set<std::string> live;
    std::set<std::string> names;
    for (const auto& [name, v] : vassals_) {
        names.insert(name);
        for (const auto& w : v->workers) {
            live.insert(w->address().str());
        }
    }
    router_.keep_counters(live, names);
    if (shutting_down_) {
        spdlog::info("emperor: router stopped ({})", st.str());
        maybe_finish_shutdown();
    }
}

// ---------------------------------------------------------------------------------------------
// Shutdown

void Emperor::shutdown(std::function<void()> done) {
    if (shutting_down_) {
        return;
    }
    shutting_down_ = true;
    shutdown_done_ = std::move(done);
    watcher_.reset();
    for (auto& [name, v] : vassals_) {
        v->code_watcher.reset();
    }
    // Stop accepting: the router closes its copies of the sockets, we close ours.
    for (int fd : listen_fds_) {
        ::close(fd);
    }
    listen_fds_.clear();
    for (int fd : tls_fds_) {
        ::close(fd);
    }
    tls_fds_.clear();
    router_.stop();
    maybe_finish_shutdown();
}

void Emperor::maybe_finish_shutdown() {
    if (!shutting_down_ || router_.running()) {
        return; // requests in flight still need their workers
    }
    // The router is gone: nothing to drain through, stop the workers now, in the reverse of the
    // start order: a vassal goes once no vassal that starts `after` it runs. Should the waits
    // form a cycle (liege check reports it), everything stops at once.
    std::vector<VassalRt*> to_stop;
    bool stopping = false;
    for (auto& [name, v] : vassals_) {
        v->pending.reset();
        stopping = stopping || v->shutdown_stopping;
        if (!v->shutdown_stopping && !needed_by_others(name)) {
            to_stop.push_back(v.get());
        }
    }
    if (to_stop.empty() && !stopping) {
        for (auto& [name, v] : vassals_) {
            to_stop.push_back(v.get());
        }
    }
    for (VassalRt* v : to_stop) {
        if (!v->empty()) {
            spdlog::info("vassal {}: stopping", v->name);
        }
        v->shutdown_stopping = true;
        v->removing = true;
        v->state = VassalState::Stopping;
        v->next = nullptr;
        v->plan = nullptr;
        v->active = nullptr;
        for (auto& w : v->workers) {
            w->retire(false);
        }
    }
    const bool erased = std::erase_if(vassals_, [](const auto& kv) {
                            if (kv.second->empty() && kv.second->shutdown_stopping) {
                                spdlog::info("vassal {}: stopped", kv.first);
                                return true;
                            }
                            return false;
                        }) > 0;
    if (erased && !vassals_.empty()) {
        maybe_finish_shutdown(); // what they held back may go now
        return;
    }
    if (vassals_.empty() && shutdown_done_) {
        reaper_.reset(); // the last child is gone; its SIGCHLD handler would keep the loop alive
        auto done = std::move(shutdown_done_);
        shutdown_done_ = nullptr;
        done();
    }
}

// ---------------------------------------------------------------------------------------------
// /status

nlohmann::json Emperor::last_output(const VassalRt& v) const {
    nlohmann::json out = nlohmann::json::array();
    if (v.state != VassalState::Failed) {
        return out;
    }
    if (auto lines = logs(v.name, 0, kLastOutputLines)) {
        for (const LogLine& l : *lines) {
            out.push_back("[" + l.worker + "] " + l.text);
        }
    }
    return out;
}

nlohmann::json Emperor::status() const {
    using nlohmann::json;
    const control::StatsMessage& stats = router_.stats();
    const auto by_address = backends_by_address(stats);
    std::map<std::string, const control::VassalFigures*> figures;
    for (const auto& f : stats.vassals) {
        figures[f.vassal] = &f;
    }
    const int64_t now = steady_now_ms();
    json vassals = json::array();
    for (const auto& [name, v] : vassals_) {
        json workers = json::array();
        for (const WorkerProc* w : v->in_order()) {
            const WorkerState st = w->state();
            json jw = {{"id", w->slot()},
                       {"pid", w->pid()},
                       {"state", std::string(to_string(st))},
                       {"generation", w->generation().id},
                       {"address", w->daemon() ? std::string() : w->address().str()},
                       {"restarts", w->restarts()},
                       {"uptime_seconds", st == WorkerState::Ready || st == WorkerState::Draining
                                              ? (now - w->started_ms()) / 1000
                                              : 0}};
            auto it = w->daemon() ? by_address.end() : by_address.find(w->address().str());
            jw["requests"] = it != by_address.end() ? it->second->requests : 0;
            jw["in_flight"] = it != by_address.end() ? it->second->in_flight : 0;
            jw["reason"] = std::string(to_string(w->start_reason()));
            jw["rss_bytes"] = w->rss_bytes();
            jw["health_lines_dropped"] = w->health_lines_dropped();
            workers.push_back(std::move(jw));
        }
        const Generation* g = v->active != nullptr ? v->active.get() : v->next.get();
        json jv = {
            {"name", name},
            {"type", std::string(to_string(g != nullptr ? g->config.type : VassalType::Web))},
            {"state", std::string(to_string(v->state))},
            {"generation", g != nullptr ? g->id : 0},
            {"file", v->file.string()},
            {"hosts", g != nullptr ? json(g->config.hosts) : json::array()},
            {"path", g != nullptr ? g->config.path : std::string("/")},
            {"concurrency", g != nullptr ? g->config.concurrency : 0},
            {"workers", std::move(workers)},
            {"scale",
             {{"workers", v->pool().size()},
              {"min", g == nullptr ? 0 : g->config.scale.min},
              {"max", g == nullptr ? 0 : g->config.scale.max},
              {"scale_events", {{"up", v->scale_events[0]}, {"down", v->scale_events[1]}}},
              {"cold_starts", v->cold_starts},
              {"recycles", recycles_json(*v)}}},
            {"reloads", v->reloads},
            {"failed_reloads", v->failed_reloads},
            {"last_error", v->last_error.empty() ? json(nullptr) : json(v->last_error)},
            {"last_error_time", v->last_error_unix != 0 ? json(v->last_error_unix) : json(nullptr)},
            {"last_error_resolved", v->last_error_resolved_unix != 0},
            {"last_error_resolved_time",
             v->last_error_resolved_unix != 0 ? json(v->last_error_resolved_unix) : json(nullptr)},
            {"last_output", last_output(*v)}};
        if (json acme = acme_->status(name); !acme.is_null()) {
            jv["tls"] = {{"acme", std::move(acme)}};
        }
        uint64_t requests = 0;
        uint64_t errors = 0;
        int64_t queued = 0;
        if (auto it = figures.find(name); it != figures.end()) {
            for (uint64_t c : it->second->responses) {
                requests += c;
            }
            errors = it->second->responses[5];
            queued = it->second->queued;
        }
        jv["requests"] = requests;
        jv["errors"] = errors;
        jv["queued"] = queued;
        if (g != nullptr) {
            jv.update(isolation_status(g->config)); // user, uid, group, gid, no_new_privs, limits
        }
        vassals.push_back(std::move(jv));
    }
    for (const std::string& name : held_) {
        if (vassals_.count(name) != 0) {
            continue; // still stopping: listed above
        }
        vassals.push_back({{"name", name},
                           {"type", "web"},
                           {"state", "stopped"},
                           {"generation", 0},
                           {"file", (options_.vassals_dir / (name + ".toml")).string()},
                           {"hosts", json::array()},
                           {"path", "/"},
                           {"concurrency", 0},
                           {"workers", json::array()},
                           {"scale", {{"workers", 0}, {"min", 0}, {"max", 0}}},
                           {"reloads", 0},
                           {"failed_reloads", 0},
                           {"last_error", nullptr},
                           {"last_error_time", nullptr},
                           {"last_error_resolved", false},
                           {"last_error_resolved_time", nullptr},
                           {"last_output", json::array()},
                           {"requests", 0},
                           {"errors", 0},
                           {"queued", 0}});
    }
    json router = {{"pid", router_.pid()},
                   {"connections", stats.connections},
                   {"requests", stats.requests},
                   {"thread_requests", stats.thread_requests},
                   {"thread_connections", stats.thread_connections},
                   {"upstream_connections", stats.upstream_connections}};
    router["settings"] = router_settings_json(options_.router);
    json listen = json::array();
    for (const auto& a : bound_) {
        listen.push_back(a.str());
    }
    json listen_tls = json::array();
    for (const auto& a : bound_tls_) {
        listen_tls.push_back(a.str());
    }
    return {{"emperor",
             {{"pid", ::getpid()},
              {"vassals_dir", options_.vassals_dir.string()},
              {"listen", listen},
              {"listen_tls", listen_tls},
              {"uptime_seconds", unix_now() - started_unix_}}},
            {"router", router},
            {"vassals", vassals}};
}

} // namespace liege::emperor
