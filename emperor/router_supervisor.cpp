#include "router_supervisor.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstring>

#include "liege/clock.hpp"
#include "liege/log.hpp"
#include "liege/logs.hpp"

namespace liege::emperor {

RouterSupervisor::RouterSupervisor(uv_loop_t* loop, const EmperorOptions& options, Events events)
    : loop_(loop), options_(options), events_(std::move(events)) {
    uv_timer_init(loop_, restart_timer_.get());
    restart_timer_->data = this;
}

void RouterSupervisor::start(const std::vector<int>& listen_fds, const std::vector<int>& tls_fds) {
    listen_fds_ = listen_fds;
    tls_fds_ = tls_fds;
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
    for (int fd : tls_fds_) {
        spec.extra_fds.push_back(fd);
        spec.argv.push_back("--inherit-tls-fd");
        spec.argv.push_back(std::to_string(next_fd++));
    }
    for (const auto& [flag, value] :
         {std::pair{"--tls-cert", options_.tls_cert}, {"--tls-key", options_.tls_key}}) {
        if (!value.empty()) {
            spec.argv.insert(spec.argv.end(), {flag, value});
        }
    }
    for (const auto& c : options_.trusted_proxies) {
        spec.argv.insert(spec.argv.end(), {"--trusted-proxy", c});
    }
    for (const auto& kv : options_.router_opts) {
        spec.argv.insert(spec.argv.end(), {"--router-opt", kv});
    }
    spec.extra_fds.push_back(sv[1]);
    spec.argv.push_back("--control-fd");
    spec.argv.push_back(std::to_string(next_fd));
    spec.tag = "router";
    int err = 0;
    child_ = spawn_child(
        loop_, spec,
        [](std::string_view line, bool) {
            // At the router's own level, so that its warnings and errors reach stderr with
            // --log-dir as the emperor's do.
            const ChildLogLine l = parse_child_log_line(line);
            spdlog::log(l.level, "[router] {}", l.message);
        },
        [this](ExitStatus st) { on_exit(st); }, &err);
    ::close(sv[1]);
    if (child_ == nullptr) {
        ::close(sv[0]);
        spdlog::error("emperor: cannot start the router: {}", std::strerror(-err));
        restart_in(backoff_.failed(steady_now_ms(), started_ms_));
        return;
    }
    started_ms_ = steady_now_ms();
    greeted_ = false;
    link_ = std::make_unique<control::ControlLink>(
        loop_, sv[0], [this](const std::string& line) { on_line(line); },
        [](int) {}); // its exit, reported by the reaper, is what counts
    spdlog::info("emperor: router started (pid {})", child_->pid());
}

void RouterSupervisor::stop() {
    stopping_ = true;
    uv_timer_stop(restart_timer_.get());
    if (running()) {
        child_->stop(SIGTERM, std::chrono::seconds(40));
    }
}

void RouterSupervisor::send_routes(const control::RoutesMessage& m) {
    if (greeted_ && link_ != nullptr) {
        link_->send(control::encode(m));
    }
}

void RouterSupervisor::send_acme_challenges(const control::AcmeChallengesMessage& m) {
    challenges_ = m;
    if (greeted_ && link_ != nullptr) {
        link_->send(control::encode(m));
    }
}

void RouterSupervisor::on_line(const std::string& line) {
    try {
        auto j = control::parse_line(line);
        const std::string type = j["type"].get<std::string>();
        if (type == "hello") {
            greeted_ = true;
            events_.hello();
            if (challenges_.version != 0 && link_ != nullptr) {
                link_->send(control::encode(challenges_));
            }
        } else if (type == "drained") {
            events_.drained(control::decode_drained(j));
        } else if (type == "recycle") {
            events_.recycle(control::decode_recycle(j));
        } else if (type == "demand") {
            events_.demand(control::decode_demand(j));
        } else if (type == "acme_challenges_applied") {
            if (challenges_applied_) {
                challenges_applied_(control::decode_acme_challenges_applied(j).version);
            }
        } else if (type == "stats") {
            stats_ = control::add_counters(stats_past_, control::decode_stats(j));
            events_.stats();
        }
    } catch (const std::exception& e) {
        spdlog::warn("emperor: bad message from the router: {}", e.what());
    }
}

void RouterSupervisor::keep_counters(const std::set<std::string>& live_backends,
                                     const std::set<std::string>& live_vassals) {
    stats_.connections = 0;
    stats_.thread_connections.clear();
    stats_.upstream_connections.clear();
    std::erase_if(stats_.backends,
                  [&](const auto& b) { return !live_backends.contains(b.address); });
    std::erase_if(stats_.vassals, [&](const auto& f) { return !live_vassals.contains(f.vassal); });
    for (auto& b : stats_.backends) {
        b.in_flight = 0;
    }
    for (auto& f : stats_.vassals) {
        f.in_flight = 0;
        f.in_flight_peak = 0;
        f.queued = 0;
    }
    stats_past_ = stats_;
}

void RouterSupervisor::on_exit(ExitStatus st) {
    link_.reset();
    greeted_ = false;
    events_.exited(st);
    if (stopping_) {
        return;
    }
    auto delay = backoff_.failed(steady_now_ms(), started_ms_);
    spdlog::error("emperor: router exited unexpectedly ({}); restarting in {} ms{}", st.str(),
                  delay.count(), format_last_lines(child_.get()));
    restart_in(delay);
}

void RouterSupervisor::restart_in(std::chrono::milliseconds delay) {
    uv_timer_start(
        restart_timer_.get(),
        [](uv_timer_t* t) {
            auto* self = static_cast<RouterSupervisor*>(t->data);
            if (!self->stopping_) {
                self->start(self->listen_fds_, self->tls_fds_);
            }
        },
        static_cast<uint64_t>(delay.count()), 0);
}

} // namespace liege::emperor
