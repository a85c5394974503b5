// A vassal's request queue: requests that find no worker with a free slot (every worker busy at
// its `concurrency`, or none ready: starting, restarting, in backoff, marked down) wait here and
// go to the first worker with a free slot, in the order they came, whichever router thread
// they are on.
//
// One queue per vassal, shared by every router thread and kept across route sets (a reload
// keeps the requests waiting). It is the only state threads share under a lock, and it is
// touched only by requests that wait; a request that finds a free slot never takes the lock.
//
// How a slot reaches a waiter: whoever may have made a slot free (a request leaving a worker,
// a new route set, a worker coming back up) pumps the queue: under the lock, it takes a slot on
// a free worker for the oldest waiter and hands it to that waiter's thread (RouterThread::
// assign), which sends the request there. A slot is thus never free while a request waits, so
// a newcomer cannot overtake a waiter (a request checks for waiters before it takes a slot).
//
// Lifetime: a Waiter is shared by the queue (while listed), the waiter's thread (until it is
// dispatched, times out or its client goes) and a hand-over in flight. Only its thread touches
// `conn`; `listed` and `backend` are under the queue's lock.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "liege/balancer.hpp"
#include "liege/control.hpp"

namespace liege::router {

class ClientConn;
class RouterThread;
class VassalQueue;

struct Waiter {
    RouterThread* thread = nullptr;
    ClientConn* conn = nullptr; // on `thread` only; null once the request stopped waiting
    // Weak: the queue lists its waiters, and its requests' route snapshot keeps it alive.
    std::weak_ptr<VassalQueue> queue;
    int64_t since_ms = 0; // steady clock
    int64_t deadline_ms = 0;
    uint64_t since_ns = 0; // uv_hrtime(), for the wait it reports
    bool cold = false;     // it came when no worker of the vassal served (a cold start)
    // Under the queue's lock:
    bool listed = false;
    // The slot the queue took for it; null with `listed` false means it was refused (the
    // vassal failed or went away while it waited).
    std::shared_ptr<Backend> backend;
};

struct QueueSettings {
    uint32_t size = 0; // 0: nothing waits
    int64_t timeout_ms = 30'000;
    bool failed = false;
    std::string last_error;
};

class VassalQueue {
public:
    // How a waiter that got its slot (or its refusal) reaches its thread; by default
    // RouterThread::assign (unit tests watch it instead).
    using HandOver = std::function<void(std::shared_ptr<Waiter>)>;
    explicit VassalQueue(std::string vassal, HandOver hand_over = {});

    const std::string& vassal() const { return vassal_; }
    // Requests waiting now; read without the lock (a request checks it before taking a slot).
    int length() const { return length_.load(std::memory_order_seq_cst); }
    int64_t timeout_ms() const;
    bool holds() const; // whether requests may wait at all (size > 0)
    // The vassal's failure while it is failed, else empty.
    std::string failure() const;

    // Control thread: the settings and the workers of the latest route set. Pumps, so waiters
    // get the workers that became ready; if the vassal failed with no worker up, they are
    // refused.
    void update(const QueueSettings& settings, LbPolicy policy,
                std::vector<std::shared_ptr<Backend>> backends, std::vector<char> draining);
    // The vassal is gone from the route set: every waiter is refused.
    void close();

    enum class Joined { Waiting, Full, Failed };
    // Lists `w` at the back (Waiting) unless the queue is full or the vassal failed with no
    // worker up, then pumps (a slot may have come free since the caller looked).
    Joined join(const std::shared_ptr<Waiter>& w);
    // Takes `w` out; false when it is no longer listed (a slot or a refusal is on its way).
    bool leave(Waiter& w);
    // Hands free slots to the oldest waiters. Returns whether one went to a waiter on another
    // thread than `self` (its request will need a connection of its own).
    bool pump(const RouterThread* self = nullptr);

private:
    // Under mu_: one slot per waiter while there are both; when the vassal failed and no
    // worker is left that could serve them, the waiters are refused.
    void pump_locked(std::vector<std::shared_ptr<Waiter>>& handed);
    // Under mu_: the vassal failed and none of its workers is up (a busy one still serves).
    bool refuses(int64_t now) const;
    void hand_over(std::vector<std::shared_ptr<Waiter>>& handed);

    const std::string vassal_;
    HandOver hand_over_;
    std::atomic<int> length_{0};
    mutable std::mutex mu_;
    QueueSettings settings_;                // guarded by mu_
    std::unique_ptr<Balancer> balancer_;    // guarded by mu_: the latest route set's workers
    std::deque<std::shared_ptr<Waiter>> q_; // guarded by mu_
};

} // namespace liege::router
