// Choosing a backend for a request: least outstanding requests or round robin, skipping backends
// that passive health checks marked down.
//
// Backend figures are shared by all router threads, so they are atomics; a thread reads a
// snapshot that may be a request stale, which only makes the balance approximately exact.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "liege/address.hpp"
#include "liege/clock.hpp" // steady_now_ms(), the clock Backend::is_up() and mark_failed() take

namespace liege {

enum class LbPolicy { LeastConn, RoundRobin };

LbPolicy parse_lb_policy(std::string_view text); // throws std::invalid_argument

struct Backend {
    // Resolves the address once; `resolved` says whether that worked.
    explicit Backend(Address a);

    Address address;
    std::string name;
    sockaddr_storage sockaddr{};
    socklen_t sockaddr_len = 0;
    bool resolved = false;
    uint64_t generation = 0;               // of the vassal; set before any thread sees it
    std::atomic<bool> draining{false};     // gets no new requests; reported once idle
    std::atomic<int> in_flight{0};         // requests assigned and not finished
    std::atomic<int> concurrency{0};       // requests it may be sent at once; 0 = no limit
    std::atomic<int> connections{0};       // the router's open connections to it, all threads
    std::atomic<int64_t> down_until_ms{0}; // steady-clock ms; 0 = up
    std::atomic<int> consecutive_failures{0};
    std::atomic<uint64_t> requests{0};
    std::atomic<uint64_t> max_requests{0}; // [recycle] as the worker drew it; 0 = no limit
    std::atomic<uint64_t> failures{0};
    std::atomic<uint64_t> responses[6] = {}; // by status class, [2] = 2xx

    bool is_up(int64_t now_ms) const {
        return down_until_ms.load(std::memory_order_relaxed) <= now_ms;
    }
    // A connect failure or reset: down for 1 s, doubling per consecutive failure, up to 30 s.
    // Returns the cool-off applied in ms.
    int64_t mark_failed(int64_t now_ms);
    bool has_free_slot() const {
        const int limit = concurrency.load(std::memory_order_relaxed);
        return limit == 0 || in_flight.load(std::memory_order_relaxed) < limit;
    }
    // Takes one of its request slots (in_flight + 1), unless all `concurrency` are taken,
    // counted across threads.
    bool try_claim() {
        const int limit = concurrency.load(std::memory_order_relaxed);
        if (limit == 0) {
            in_flight.fetch_add(1, std::memory_order_seq_cst);
            return true;
        }
        int n = in_flight.load(std::memory_order_relaxed);
        while (n < limit) {
            if (in_flight.compare_exchange_weak(n, n + 1, std::memory_order_seq_cst)) {
                return true;
            }
        }
        return false;
    }
    void mark_ok() {
        if (consecutive_failures.load(std::memory_order_relaxed) != 0) {
            consecutive_failures.store(0, std::memory_order_relaxed);
            down_until_ms.store(0, std::memory_order_relaxed);
        }
    }
};

class Balancer {
public:
    // `excluded[i]` (optional) keeps backend i out of every pick: a draining backend, as this
    // route snapshot sees it.
    Balancer(LbPolicy policy, std::vector<std::shared_ptr<Backend>> backends,
             std::vector<char> excluded = {})
        : policy_(policy), backends_(std::move(backends)), excluded_(std::move(excluded)) {
        excluded_.resize(backends_.size(), 0);
    }

    // Picks a backend that is up, not draining and not in `exclude` (indices already tried for this
    // request, as a bit mask over the first 64 backends). Returns its index, or -1 when no backend
    // is both up and untried. Ties in least_conn go to the first candidate after a rotating start,
    // so equal backends share the load instead of the first one taking it all. With `busy` set,
    // a backend with no free request slot (Backend::concurrency) is passed over, and *busy says
    // whether one was.
    int pick(uint64_t exclude, int64_t now_ms, bool* busy = nullptr);

    struct Claim {
        int index = -1;    // the backend whose slot was taken, or -1
        bool busy = false; // with -1: some backend was passed over only for want of a free slot
    };
    // Picks as pick() does among backends with a free slot, and takes a slot on the one picked.
    Claim claim(uint64_t exclude, int64_t now_ms);

    const std::vector<std::shared_ptr<Backend>>& backends() const { return backends_; }
    LbPolicy policy() const { return policy_; }

private:
    LbPolicy policy_;
    std::vector<std::shared_ptr<Backend>> backends_;
    std::vector<char> excluded_;
    std::atomic<uint64_t> cursor_{0};
};

// Which router thread serves a connection that thread `self` accepted, given each thread's
// count of client connections (`load(i)`, for i below `threads`). The kernel's SO_REUSEPORT hash
// spreads connections unevenly (50 connections over 2 threads land 30/20 about as often as
// 26/24), and a thread holding more keep-alive clients than its siblings makes their requests
// queue longer. The accepting thread keeps the connection unless another holds at least two
// fewer; then it goes to the one holding fewest (the first of them on a tie).
template <typename LoadOf>
unsigned thread_for_connection(unsigned self, unsigned threads, LoadOf&& load) {
    unsigned best = self;
    auto best_load = load(self) - 1;
    for (unsigned i = 0; i < threads; ++i) {
        if (i == self) {
            continue;
        }
        auto l = load(i);
        if (l < best_load) {
            best = i;
            best_load = l;
        }
    }
    return best;
}

} // namespace liege
