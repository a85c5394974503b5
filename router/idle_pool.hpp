// A router thread's pooled upstream connections: kept alive between requests, per backend, and
// closed when their backend stops serving, when a backend's list is full, or at shutdown.
#pragma once

#include <cstddef>
#include <unordered_map>
#include <vector>

namespace liege {
struct Backend;
}

namespace liege::router {

struct RouteSnapshot;
class Upstream;

// An upstream is listed here exactly while its state is Idle: Upstream::set_state() calls
// forget() when it leaves Idle, so taking one for a request is newest() then attach().
class IdlePool {
public:
    // The most recently parked idle connection to `backend`, or nullptr.
    Upstream* newest(Backend* backend) const;
    // Adds `up`, just turned Idle. Returns the oldest connection to the same backend when the
    // list is over `max_per_backend`, for the caller to close, or nullptr.
    Upstream* park(Upstream* up, size_t max_per_backend);
    // Takes `up` out (it leaves Idle). The newest is found at once.
    void forget(Upstream* up);
    // Every listed connection, or those to backends `routes` no longer serves: taken out of the
    // pool to be closed at once.
    std::vector<Upstream*> take_all();
    std::vector<Upstream*> take_not_served(const RouteSnapshot& routes);

private:
    std::unordered_map<Backend*, std::vector<Upstream*>> by_backend_;
};

} // namespace liege::router
