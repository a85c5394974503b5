// The router child: started with the emperor's listening sockets and one end of a control
// socket, restarted when it dies (with kRouterBackoff: within a second), fed the route set once it
// says hello (docs/control-protocol.md).
#pragma once

#include <uv.h>

#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "liege/control.hpp"
#include "liege/control_link.hpp"
#include "liege/emperor.hpp"
#include "liege/restart_backoff.hpp"
#include "liege/spawner.hpp"
#include "liege/uv.hpp"

namespace liege::emperor {

class RouterSupervisor {
public:
    struct Events {
        std::function<void()> hello; // a (re)started router wants the route set
        std::function<void(const control::DrainedMessage&)> drained;
        std::function<void(const control::RecycleMessage&)> recycle;
        std::function<void(const control::DemandMessage&)> demand;
        std::function<void()> stats;            // after each stats message
        std::function<void(ExitStatus)> exited; // before the restart is scheduled
    };

    RouterSupervisor(uv_loop_t* loop, const EmperorOptions& options, Events events);

    // Starts the router, handing it `listen_fds` (kept by the caller) as fds 3...
    // Plain HTTP sockets and HTTPS ones.
    void start(const std::vector<int>& listen_fds, const std::vector<int>& tls_fds);
    // Graceful stop (SIGTERM): no restart afterwards.
    void stop();
    bool running() const { return child_ != nullptr && child_->running(); }
    int pid() const { return child_ != nullptr ? child_->pid() : 0; }

    // Sent only to a router that has said hello; one that has not gets it in answer to its hello.
    void send_routes(const control::RoutesMessage& m);

    // The HTTP-01 tokens to answer: sent now to a router that has said hello, and again to
    // every router that says hello later.
    void send_acme_challenges(const control::AcmeChallengesMessage& m);
    // Runs when the router confirms it serves the challenge set of a version (null: nothing).
    void on_acme_challenges_applied(std::function<void(uint64_t)> fn) {
        challenges_applied_ = std::move(fn);
    }

    // The running router's figures plus the counters of routers that have exited.
    const control::StatsMessage& stats() const { return stats_; }
    // After an exit: counters of backends and vassals still there live on (a new worker may
    // reuse a gone one's address, so the caller names the live ones); gauges restart from 0.
    void keep_counters(const std::set<std::string>& live_backends,
                       const std::set<std::string>& live_vassals);

private:
    void on_line(const std::string& line);
    void on_exit(ExitStatus st);
    void restart_in(std::chrono::milliseconds delay);

    uv_loop_t* loop_;
    const EmperorOptions& options_;
    Events events_;
    std::vector<int> listen_fds_;
    std::vector<int> tls_fds_;
    std::unique_ptr<Child> child_;
    std::unique_ptr<control::ControlLink> link_;
    UvHandle<uv_timer_t> restart_timer_;
    RestartBackoff backoff_{kRouterBackoff};
    // Routes go to a router only after its hello: messages queued before it reads would be stale
    // snapshots it might briefly serve from.
    bool greeted_ = false;
    bool stopping_ = false;
    int64_t started_ms_ = 0;
    control::StatsMessage stats_;
    control::AcmeChallengesMessage challenges_;
    std::function<void(uint64_t)> challenges_applied_;
    control::StatsMessage stats_past_; // counters of routers that have exited
};

} // namespace liege::emperor
