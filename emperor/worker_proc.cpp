#include "worker_proc.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "liege/clock.hpp"
#include "liege/health.hpp"
#include "liege/isolation.hpp"
#include "liege/log.hpp"

namespace liege::emperor {

namespace {

constexpr int kLivenessFailures = 3; // consecutive failed probes that restart a worker
// Readiness probes (a loopback connect, refused at once while nothing listens) run every 5 ms for
// the first 250 ms after the spawn, then back off to every 25 ms: most apps listen within that
// first spell (a test backend in 4 ms, uWSGI in 8, python's http.server in 50, gunicorn in 100),
// and a request held for a cold start, or a reload's new release, is routed within 5 ms of it;
// one slower than that is routed within 25 ms, for ~40 refused connects a second while it starts.
constexpr uint64_t kFirstReadinessPollMs = 5;
constexpr int64_t kFastReadinessSpellMs = 250;
constexpr uint64_t kReadinessPollMs = 25;
// A check command is a process to start: while a worker starts, it runs at most 4 times a second.
constexpr uint64_t kCommandPollMs = 250;
// A daemon with no check is ready once its process has stayed up this long.
constexpr int64_t kDaemonUptimeMs = 1000;

using P = WorkerPhase;

bool allowed(P from, P to) {
    switch (from) {
    case P::Starting:
        return to == P::Standby || to == P::Restarting || to == P::Backoff || to == P::Retiring ||
               to == P::Stopped;
    case P::Standby:
        return to == P::Serving || to == P::Restarting || to == P::Backoff || to == P::Retiring ||
               to == P::Stopped;
    case P::Serving:
        return to == P::Draining || to == P::Restarting || to == P::Backoff || to == P::Retiring ||
               to == P::Stopped;
    case P::Draining:
        return to == P::Retiring || to == P::Stopped;
    case P::Restarting:
        return to == P::Backoff || to == P::Retiring;
    case P::Retiring:
        return to == P::Stopped;
    case P::Backoff:
        return to == P::Starting || to == P::Stopped;
    case P::Stopped:
        return false;
    }
    return false;
}

} // namespace

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

std::string_view to_string(WorkerPhase p) {
    switch (p) {
    case P::Starting:
        return "starting";
    case P::Standby:
        return "standby";
    case P::Serving:
        return "serving";
    case P::Draining:
        return "draining";
    case P::Restarting:
        return "restarting";
    case P::Retiring:
        return "retiring";
    case P::Backoff:
        return "backoff";
    case P::Stopped:
        return "stopped";
    }
    return "unknown";
}

WorkerProc::WorkerProc(WorkerHost& host, std::string vassal, GenerationPtr generation, int slot)
    : host_(host), vassal_(std::move(vassal)), generation_(std::move(generation)), slot_(slot) {
    uv_timer_init(host_.loop(), timer_.get());
    timer_->data = this;
}

WorkerProc::~WorkerProc() {
    if (cancel_probe_) {
        cancel_probe_();
    }
    if (listen_fd_ >= 0) {
        ::close(listen_fd_);
    }
    if (address_.is_unix()) {
        ::unlink(address_.path.c_str());
    }
}

std::string_view to_string(StartReason r) {
    switch (r) {
    case StartReason::Min:
        return "min";
    case StartReason::Demand:
        return "demand";
    case StartReason::Replacement:
        return "replacement";
    }
    return "min";
}

WorkerState WorkerProc::state() const {
    switch (phase_) {
    case P::Starting:
        return WorkerState::Starting;
    case P::Standby:
    case P::Serving:
        return WorkerState::Ready;
    case P::Draining:
        return WorkerState::Draining;
    case P::Backoff:
        return WorkerState::Backoff;
    case P::Stopped:
        return WorkerState::Stopped;
    case P::Restarting:
    case P::Retiring:
        return shown_; // until it has exited, it is what it was when asked to stop
    }
    return WorkerState::Stopped;
}

void WorkerProc::set_state(WorkerPhase next) {
    if (next == phase_) {
        return;
    }
    if (!allowed(phase_, next)) {
        spdlog::critical("vassal {}: worker {}: no transition from {} to {}", vassal_, slot_,
                         to_string(phase_), to_string(next));
        std::abort();
    }
    if (next == P::Restarting || next == P::Retiring) {
        if (phase_ != P::Restarting) {
            shown_ = state();
        }
    }
    if (next == P::Standby) {
        ready_ms_ = steady_now_ms();
        probe_failures_ = 0;
    }
    phase_ = next;
}

std::string WorkerProc::last_lines() const {
    return format_last_lines(child_.get());
}

void WorkerProc::arm(uint64_t ms) {
    uv_timer_start(
        timer_.get(), [](uv_timer_t* t) { static_cast<WorkerProc*>(t->data)->on_timer(); }, ms, 0);
}

void WorkerProc::disarm() {
    if (cancel_probe_) {
        cancel_probe_();
        cancel_probe_ = nullptr;
    }
    uv_timer_stop(timer_.get());
}

void WorkerProc::spawn() {
    const Vassal& cfg = generation_->config;
    set_state(P::Starting);
    signalled_ = false;
    probe_failures_ = 0;
    activity_ = RouterActivity{};
    ready_ms_ = 0;
    spawn_error_.clear();
    last_probe_error_.clear();
    PlaceholderValues values;
    values.name = cfg.name;
    values.worker = slot_;
    values.instance = cfg.instance;
    values.profile = cfg.profile;
    // Whom it runs as decides where its sockets go (a directory that user may write).
    const CredentialsResult who = vassal_credentials(cfg);
    std::string sockets;
    if (who.credentials) {
        sockets = socket_dir(host_.runtime_dir().string(), *who.credentials, &spawn_error_);
    } else {
        spawn_error_ = "cannot start " + cfg.command.front() + ": " + who.error;
    }
    if (sockets.empty()) {
        started_ms_ = steady_now_ms();
        arm(0);
        return;
    }
    // This worker's files there: <vassal>-<generation>-<slot>.sock, and .notify with a run number.
    const std::string stem = sockets + "/" + cfg.name + "-" + std::to_string(generation_->id) +
                             "-" + std::to_string(slot_);
    if (cfg.daemon()) {
        address_ = Address{}; // no port, no route: only the process and its check
    } else {
        switch (cfg.socket) {
        case SocketKind::Tcp:
            address_ = parse_address("127.0.0.1:0");
            address_.port = pick_free_port();
            values.port = address_.port;
            break;
        case SocketKind::Unix:
            address_ = Address{};
            address_.kind = Address::Kind::Unix;
            address_.path = stem + ".sock";
            ::unlink(address_.path.c_str());
            values.socket = address_.path;
            break;
        case SocketKind::Inherit:
            if (listen_fd_ < 0) {
                uint16_t port = 0;
                listen_fd_ = bind_loopback_listener(&port);
                address_ = parse_address("127.0.0.1:0");
                address_.port = port;
            }
            values.port = address_.port;
            break;
        }
    }
    SpawnSpec spec;
    for (const auto& arg : cfg.command) {
        spec.argv.push_back(expand(arg, values));
    }
    for (const auto& [k, v] : cfg.env) {
        spec.env.emplace_back(k, expand(v, values));
    }
    if (address_.is_unix()) {
        spec.env.emplace_back("LIEGE_SOCKET", address_.path);
    } else if (!cfg.daemon()) {
        spec.env.emplace_back("PORT", std::to_string(address_.port));
    }
    spec.env.emplace_back("LIEGE_VASSAL", cfg.name);
    spec.env.emplace_back("LIEGE_WORKER", std::to_string(slot_));
    spec.env.emplace_back("LIEGE_GENERATION", std::to_string(generation_->id));
    spec.env.emplace_back("LIEGE_PROFILE", host_.profile());
    if (!host_.profile().empty()) {
        spec.env.emplace_back("LIEGE_ENV", host_.profile()); // the name before --profile
    }
    spec.cwd = cfg.working_dir(values).string();
    isolate(cfg, *who.credentials, cgroup_limits_unavailable(cfg), spec);
    check_ = Check{};
    for (const auto& arg : cfg.health.command) {
        check_.argv.push_back(expand(arg, values));
    }
    check_.env = spec.env;
    check_.cwd = spec.cwd;
    check_.user = spec.user; // a check command runs as the worker does, never as the emperor
    check_.no_new_privs = spec.no_new_privs;
    spec.listen_fd = cfg.socket == SocketKind::Inherit ? listen_fd_ : -1;
    if (cfg.health.notify) {
        // A socket of this run only: nothing a previous process sent can make this one ready,
        // and no worker that goes later (one of the same slot that never started) can remove
        // the file of another.
        static uint64_t notify_sockets = 0;
        const std::string path = stem + "-" + std::to_string(++notify_sockets) + ".notify";
        int rc = notify_.open(host_.loop(), path, [this] { notified(); });
        if (rc == 0 && who.credentials->change &&
            ::chown(path.c_str(), who.credentials->uid, who.credentials->gid) != 0) {
            rc = -errno; // the worker could not send to it
            notify_.close();
        }
        if (rc != 0) {
            spawn_error_ = "cannot make the notify socket " + path + ": " + std::strerror(-rc);
            started_ms_ = steady_now_ms();
            arm(0);
            return;
        }
        spec.env.emplace_back("NOTIFY_SOCKET", path);
    }
    spec.tag = tag();
    int err = 0;
    std::string step;
    WorkerHost* host = &host_;
    // The app's access-log lines for GET health.path probes stay out of the log. The output
    // callback may outlive this object (the child's pipes drain after it), hence the share.
    probe_echo_ = std::make_shared<ProbeEchoFilter>(
        check_.argv.empty() && cfg.health.tcp.empty() ? cfg.health.path : "");
    child_ = spawn_child(
        host_.loop(), spec,
        [host, t = tag(), echo = probe_echo_](std::string_view line, bool is_stderr) {
            if (!echo->drop(line, steady_now_ms())) {
                host->log_line(t, line, is_stderr);
            }
        },
        [this](ExitStatus st) { exited(st); }, &err, &step);
    started_ms_ = steady_now_ms();
    start_deadline_ms_ = started_ms_ + cfg.health.start_timeout.count();
    if (child_ == nullptr) {
        notify_.close();
        spawn_error_ = std::string("cannot start ") + (spec.argv.empty() ? "" : spec.argv[0]) +
                       (spec.user ? " as " + who.credentials->user : "") + ": " +
                       (step.empty() ? "" : step + ": ") + std::strerror(-err);
        arm(0);
        return;
    }
    if (cfg.daemon()) {
        spdlog::info("vassal {}: worker {} started (pid {}, generation {}, daemon)", cfg.name,
                     slot_, child_->pid(), generation_->id);
    } else {
        spdlog::info("vassal {}: worker {} started (pid {}, generation {}, {})", cfg.name, slot_,
                     child_->pid(), generation_->id, address_.str());
    }
    readiness_poll_ms_ = kFirstReadinessPollMs;
    if (cfg.health.notify) {
        arm(static_cast<uint64_t>(cfg.health.start_timeout.count())); // READY=1 or fail then
        return;
    }
    arm(uptime_only() ? static_cast<uint64_t>(kDaemonUptimeMs) : readiness_poll_ms_);
}

void WorkerProc::on_timer() {
    const Vassal& cfg = generation_->config;
    switch (phase_) {
    case P::Starting:
        if (!spawn_error_.empty()) {
            host_.worker_failed(*this, spawn_error_);
            return;
        }
        if (cancel_probe_) {
            arm(kReadinessPollMs); // a probe is still out
            return;
        }
        if (uptime_only()) {
            const int64_t up = steady_now_ms() - started_ms_;
            if (up < kDaemonUptimeMs) {
                arm(static_cast<uint64_t>(kDaemonUptimeMs - up));
                return;
            }
            became_ready();
            return;
        }
        if (steady_now_ms() >= start_deadline_ms_) {
            host_.worker_failed(
                *this, "not ready after " + format_duration(cfg.health.start_timeout) +
                           (cfg.health.notify           ? " (no READY=1 on NOTIFY_SOCKET)"
                            : last_probe_error_.empty() ? std::string()
                                                        : " (last check: " + last_check() + ")"));
            return;
        }
        if (cfg.health.notify) {
            arm(static_cast<uint64_t>(start_deadline_ms_ - steady_now_ms()));
            return;
        }
        probe_now();
        break;
    case P::Standby:
    case P::Serving:
        if (!probes_liveness()) {
            break; // alive while its process runs: the reaper reports an exit
        }
        probe_now();
        arm(static_cast<uint64_t>(cfg.health.interval.count()));
        break;
    case P::Draining:
        spdlog::info("vassal {}: worker {} not drained after {}, stopping it", vassal_, slot_,
                     format_duration(cfg.reload.drain_timeout));
        stop_process(P::Retiring);
        break;
    case P::Backoff:
        ++restarts_;
        spawn();
        break;
    case P::Stopped:
        host_.worker_gone(*this);
        break;
    case P::Restarting:
    case P::Retiring:
        break;
    }
}

void WorkerProc::probe_now() {
    if (cancel_probe_) {
        return;
    }
    const HealthCheck& h = generation_->config.health;
    auto done = [this](const ProbeResult& r) {
        cancel_probe_ = nullptr;
        on_probe(r);
    };
    if (!check_.argv.empty()) {
        cancel_probe_ = probe_command(host_.loop(), check_.argv, check_.env, check_.cwd, h.timeout,
                                      done, check_.user, check_.no_new_privs);
    } else if (!h.tcp.empty()) {
        cancel_probe_ = probe(host_.loop(), parse_address(h.tcp), "", h.timeout, done);
    } else {
        if (probe_echo_ != nullptr) {
            probe_echo_->probed(steady_now_ms());
        }
        cancel_probe_ = probe(host_.loop(), address_, h.path, h.timeout, done);
    }
}

std::string WorkerProc::last_check() const {
    const HealthCheck& h = generation_->config.health;
    std::string what;
    if (!check_.argv.empty()) {
        what = "the check command " + check_.argv[0];
    } else if (!h.tcp.empty()) {
        what = "a connect to " + h.tcp;
    } else if (!h.path.empty()) {
        what = "GET " + h.path + " on " + address_.str();
    } else {
        what = "a connect to " + address_.str();
    }
    // A refused connect: the app never listened where the emperor looks (a port of its own
    // choosing instead of ${PORT}, or a crash before it bound).
    const bool refused = check_.argv.empty() && last_probe_error_ == uv_strerror(UV_ECONNREFUSED);
    return what + ": " + last_probe_error_ + (refused ? ", so nothing listened there" : "");
}

bool WorkerProc::uptime_only() const {
    const Vassal& cfg = generation_->config;
    return cfg.daemon() && !cfg.health.notify && cfg.health.tcp.empty() &&
           cfg.health.command.empty();
}

bool WorkerProc::probes_liveness() const {
    const HealthCheck& h = generation_->config.health;
    if (h.notify) {
        return !h.path.empty() || !h.tcp.empty() || !h.command.empty();
    }
    return !uptime_only();
}

void WorkerProc::notified() {
    if (phase_ != P::Starting || !has_process()) {
        return; // READY=1 again, or a late one from a worker that failed already
    }
    became_ready();
}

void WorkerProc::became_ready() {
    disarm(); // a notify worker's start_timeout
    set_state(P::Standby);
    last_busy_ms_ = steady_now_ms(); // idle from now, as the scaling rule counts it
    spdlog::info("vassal {}: worker {} ready in {} ms{}", vassal_, slot_, ready_ms_ - started_ms_,
                 generation_->config.health.notify ? " (READY=1)" : "");
    if (probes_liveness()) {
        arm(static_cast<uint64_t>(generation_->config.health.interval.count()));
    }
    host_.worker_ready(*this);
}

void WorkerProc::router_report(const control::BackendStats& stats) {
    uint64_t responses = 0;
    for (uint64_t n : stats.responses) {
        responses += n;
    }
    const int64_t now = steady_now_ms();
    activity_.report(stats.requests, responses, stats.in_flight, now);
    if (stats.in_flight > 0 || stats.requests != requests_) {
        last_busy_ms_ = now;
    }
    requests_ = stats.requests;
    in_flight_ = stats.in_flight;
}

void WorkerProc::on_probe(const ProbeResult& result) {
    if (phase_ == P::Starting) {
        if (!result.ok) {
            last_probe_error_ = result.error;
            arm(readiness_poll_ms_);
            const bool fast =
                check_.argv.empty() && steady_now_ms() - started_ms_ < kFastReadinessSpellMs;
            readiness_poll_ms_ =
                fast ? kFirstReadinessPollMs
                     : std::min(readiness_poll_ms_ * 2,
                                check_.argv.empty() ? kReadinessPollMs : kCommandPollMs);
            return;
        }
        became_ready();
        return;
    }
    if (!ready()) {
        return;
    }
    const bool busy = activity_.busy(steady_now_ms());
    activity_.checked();
    if (result.ok) {
        probe_failures_ = 0;
        return;
    }
    if (!liveness_failure_counts(result, busy)) {
        spdlog::debug("vassal {}: worker {} health check {} while serving requests; not counted",
                      vassal_, slot_, result.error);
        return;
    }
    if (++probe_failures_ >= kLivenessFailures) {
        spdlog::warn("vassal {}: worker {} failed {} health checks ({}); restarting it", vassal_,
                     slot_, probe_failures_, result.error);
        host_.worker_failed(*this, "health checks failing: " + result.error);
    }
}

void WorkerProc::exited(ExitStatus st) {
    disarm();
    notify_.close();
    switch (phase_) {
    case P::Draining:
    case P::Retiring:
        set_state(P::Stopped);
        host_.worker_gone(*this);
        return;
    case P::Restarting:
        backoff_after_restart();
        host_.worker_backing_off(*this);
        return;
    case P::Starting:
    case P::Standby:
    case P::Serving:
        host_.worker_exited(*this, st);
        return;
    case P::Backoff:
    case P::Stopped:
        break; // no process to exit
    }
}

void WorkerProc::route() {
    set_state(P::Serving);
}

void WorkerProc::retire(bool drain) {
    switch (phase_) {
    case P::Serving:
        // A daemon has no route, so nothing to drain through: it gets the stop signal now.
        if (drain && has_process() && !generation_->config.daemon()) {
            disarm();
            set_state(P::Draining);
            arm(static_cast<uint64_t>(generation_->config.reload.drain_timeout.count()));
            return;
        }
        stop_process(P::Retiring);
        return;
    case P::Draining:
        if (!drain) {
            stop_process(P::Retiring);
        }
        return;
    case P::Starting:
    case P::Standby:
    case P::Restarting:
        stop_process(P::Retiring);
        return;
    case P::Backoff:
        disarm();
        set_state(P::Stopped);
        stopped_without_process();
        return;
    case P::Retiring:
    case P::Stopped:
        return;
    }
}

void WorkerProc::drained() {
    if (phase_ == P::Draining) {
        stop_process(P::Retiring);
    }
}

void WorkerProc::restart() {
    backoff_.failed(steady_now_ms());
    stop_process(P::Restarting);
}

std::chrono::milliseconds WorkerProc::back_off() {
    auto delay = backoff_.failed(steady_now_ms(), ready_ms_);
    enter_backoff(delay);
    return delay;
}

void WorkerProc::enter_backoff(std::chrono::milliseconds delay) {
    disarm();
    set_state(P::Backoff);
    arm(static_cast<uint64_t>(delay.count()));
}

void WorkerProc::backoff_after_restart() {
    auto delay = restart_backoff(backoff_.failures());
    spdlog::info("vassal {}: restarting worker {} in {} ms", vassal_, slot_, delay.count());
    enter_backoff(delay);
}

void WorkerProc::stop_process(WorkerPhase next) {
    disarm();
    if (!has_process()) {
        if (next == P::Restarting) {
            backoff_after_restart(); // nothing to stop: the spawn failed
            return;
        }
        set_state(P::Stopped);
        stopped_without_process();
        return;
    }
    set_state(next);
    if (!signalled_) {
        signalled_ = true;
        const StopPolicy& sp = generation_->config.stop;
        child_->stop(sp.signal, sp.timeout);
    }
}

void WorkerProc::stopped_without_process() {
    arm(0); // on_timer in Stopped reports it
}

} // namespace liege::emperor
