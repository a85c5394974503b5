// The router's end of the control protocol, on the router's main thread: routes in, drain
// reports and load figures out (docs/control-protocol.md).
#pragma once

#include <uv.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "liege/control.hpp"
#include "liege/control_link.hpp"
#include "liege/uv.hpp"
#include "router_thread.hpp"

namespace liege::router {

// Builds the per-thread snapshots from a route set, reusing Backend, VassalStats and VassalQueue
// objects by name so their figures, and the requests waiting, survive updates.
class RouteBuilder {
public:
    explicit RouteBuilder(LbPolicy policy) : policy_(policy) {}
    // One snapshot per thread, all with the same new version. Backends the message newly marks
    // draining are appended to `to_drain` (their Backend::draining is left to the caller).
    std::vector<std::shared_ptr<const RouteSnapshot>>
    build(const control::RoutesMessage& m, size_t threads,
          std::vector<std::shared_ptr<Backend>>& to_drain);
    control::StatsMessage stats() const;

private:
    LbPolicy policy_;
    uint64_t version_ = 1;
    // By address and generation (see control::BackendSpec).
    std::map<std::string, std::shared_ptr<Backend>> backends_;
    std::map<std::string, std::shared_ptr<VassalStats>> vassals_;
    std::map<std::string, std::shared_ptr<VassalQueue>> queues_;
};

class ControlChannel {
public:
    ControlChannel(uv_loop_t* loop, int fd, Shared& shared,
                   std::vector<std::unique_ptr<RouterThread>>& threads,
                   std::function<void()> on_lost);
    ~ControlChannel();
    void close();

private:
    void on_line(const std::string& line);
    void send(std::string text);
    void send_drained();
    void send_stats();
    void check_drains();

    struct PendingDrain {
        uint64_t version;
        std::vector<std::shared_ptr<Backend>> backends;
    };
    std::vector<PendingDrain> pending_drains_;

    Shared& shared_;
    std::vector<std::unique_ptr<RouterThread>>& threads_;
    std::function<void()> on_lost_;
    RouteBuilder builder_;
    control::ControlLink link_;
    UvHandle<uv_async_t> drained_;
    UvHandle<uv_timer_t> drain_timer_;
    UvHandle<uv_timer_t> stats_timer_;
    bool closed_ = false;
    bool accepting_ = false;
};

} // namespace liege::router
