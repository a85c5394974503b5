#include "idle_pool.hpp"

#include <algorithm>

#include "route_snapshot.hpp"
#include "upstream.hpp"

namespace liege::router {

Upstream* IdlePool::take(Backend* backend, bool idempotent, uint64_t now_ms) {
    auto it = by_backend_.find(backend);
    if (it == by_backend_.end() || it->second.empty()) {
        return nullptr;
    }
    Upstream* up = it->second.back();
    if (!idempotent && !up->safe_for_non_idempotent(now_ms)) {
        return nullptr; // the youngest is too old already, so every other one is too
    }
    it->second.pop_back();
    up->unlisted();
    return up;
}

Upstream* IdlePool::park(Upstream* up, size_t max_per_backend) {
    auto& list = by_backend_[up->backend()];
    list.push_back(up);
    return list.size() > std::max<size_t>(max_per_backend, 1) ? list.front() : nullptr;
}

void IdlePool::forget(Upstream* up) {
    auto it = by_backend_.find(up->backend());
    if (it == by_backend_.end()) {
        return;
    }
    auto& list = it->second;
    if (!list.empty() && list.back() == up) {
        list.pop_back();
        return;
    }
    auto pos = std::find(list.begin(), list.end(), up);
    if (pos != list.end()) {
        list.erase(pos);
    }
}

std::vector<Upstream*> IdlePool::take_all() {
    std::vector<Upstream*> out;
    for (auto& [backend, list] : by_backend_) {
        out.insert(out.end(), list.begin(), list.end());
    }
    by_backend_.clear();
    for (Upstream* up : out) {
        up->unlisted();
    }
    return out;
}

std::vector<Upstream*> IdlePool::take_not_served(const RouteSnapshot& routes) {
    std::vector<Upstream*> out;
    for (auto it = by_backend_.begin(); it != by_backend_.end();) {
        if (!routes.serves(it->first)) {
            for (Upstream* up : it->second) {
                up->unlisted();
                out.push_back(up);
            }
            it = by_backend_.erase(it);
        } else {
            ++it;
        }
    }
    return out;
}

} // namespace liege::router
