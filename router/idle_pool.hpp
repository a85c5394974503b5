// A router thread's pooled upstream connections: kept alive between requests, per backend, and
// closed when their backend stops serving, when a backend's list is full, or at shutdown.
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

namespace liege {
struct Backend;
}

namespace liege::router {

struct RouteSnapshot;
class Upstream;

// An upstream is listed here only while Idle: parked when it turns Idle, taken out by take()
// for a request (then attached), by forget() when it leaves Idle otherwise (the backend closed
// it, it timed out, or it is evicted), or in bulk to be closed.
class IdlePool {
public:
    // The most recently parked idle connection to `backend`, taken out; or nullptr. For a
    // request that is not idempotent, only one idle for a short while (see
    // Upstream::safe_for_non_idempotent), since it cannot be retried if the backend closes the
    // connection as it arrives.
    Upstream* take(Backend* backend, bool idempotent = true, uint64_t now_ms = 0);
    // Adds `up`, just turned Idle. Returns the oldest connection to the same backend when the
    // list is over `max_per_backend`, for the caller to close, or nullptr.
    Upstream* park(Upstream* up, size_t max_per_backend);
    // Takes `up` out (it leaves Idle while listed).
    void forget(Upstream* up);
    // Every listed connection, or those to backends `routes` no longer serves: taken out of the
    // pool to be closed at once.
    std::vector<Upstream*> take_all();
    std::vector<Upstream*> take_not_served(const RouteSnapshot& routes);

private:
    std::unordered_map<Backend*, std::vector<Upstream*>> by_backend_;
};

} // namespace liege::router
