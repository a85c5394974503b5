#include "liege/balancer.hpp"

#include <algorithm>
#include <stdexcept>

namespace liege {

LbPolicy parse_lb_policy(std::string_view text) {
    if (text == "least_conn") {
        return LbPolicy::LeastConn;
    }
    if (text == "round_robin") {
        return LbPolicy::RoundRobin;
    }
    throw std::invalid_argument("invalid balancing policy '" + std::string(text) +
                                "': expected least_conn or round_robin");
}

Backend::Backend(Address a) : address(std::move(a)), name(address.str()) {
    resolved = to_sockaddr(address, sockaddr, sockaddr_len) == 0;
}

int64_t Backend::mark_failed(int64_t now_ms) {
    failures.fetch_add(1, std::memory_order_relaxed);
    int n = consecutive_failures.fetch_add(1, std::memory_order_relaxed);
    int64_t cool_off = 1000ll << std::min(n, 5); // 1 s, 2 s, ... 32 s
    cool_off = std::min<int64_t>(cool_off, 30'000);
    down_until_ms.store(now_ms + cool_off, std::memory_order_relaxed);
    return cool_off;
}

int Balancer::pick(uint64_t exclude, int64_t now_ms, bool* busy) {
    const size_t n = backends_.size();
    if (n == 0) {
        return -1;
    }
    const size_t start = cursor_.fetch_add(1, std::memory_order_relaxed) % n;
    int best = -1;
    int best_load = 0;
    for (size_t k = 0; k < n; ++k) {
        size_t i = (start + k) % n;
        if (i < 64 && (exclude >> i) & 1) {
            continue;
        }
        const Backend& b = *backends_[i];
        if (excluded_[i] != 0 || !b.is_up(now_ms)) {
            continue;
        }
        if (busy != nullptr && !b.has_free_slot()) {
            *busy = true;
            continue;
        }
        if (policy_ == LbPolicy::RoundRobin) {
            return static_cast<int>(i);
        }
        int load = b.in_flight.load(std::memory_order_relaxed);
        if (best < 0 || load < best_load) {
            best = static_cast<int>(i);
            best_load = load;
        }
    }
    return best;
}

Balancer::Claim Balancer::claim(uint64_t exclude, int64_t now_ms) {
    Claim c;
    // Another thread may take the slot between the pick and the claim: pick again, leaving out
    // the backends already lost that way.
    for (size_t attempt = 0; attempt <= backends_.size(); ++attempt) {
        const int idx = pick(exclude, now_ms, &c.busy);
        if (idx < 0) {
            return c;
        }
        if (backends_[static_cast<size_t>(idx)]->try_claim()) {
            c.index = idx;
            return c;
        }
        c.busy = true;
        exclude |= idx < 64 ? (1ull << idx) : 0;
    }
    return c;
}

} // namespace liege
