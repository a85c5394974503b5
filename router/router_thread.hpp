// One router thread: a libuv loop, its listeners, its client connections and its idle upstream
// connections. It shares nothing with other threads but what Shared holds, route snapshots and
// the Backend figures (atomics); other threads reach it only through the thread-safe calls
// below, which post to its loop.
#pragma once

#include <uv.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "access_log.hpp"
#include "buffers.hpp"
#include "idle_pool.hpp"
#include "liege/http_head.hpp"
#include "liege/uv.hpp"
#include "list_node.hpp"
#include "listener.hpp"
#include "route_snapshot.hpp"
#include "shared.hpp"
#include "upstream.hpp"
#include "vassal_queue.hpp"

namespace liege::router {

class RouterThread {
public:
    RouterThread(unsigned index, Shared& shared, int access_log_fd);
    ~RouterThread();
    RouterThread(const RouterThread&) = delete;
    RouterThread& operator=(const RouterThread&) = delete;

    // Listeners are added before start(); `tls`: its clients speak HTTPS.
    void add_listener(int fd, bool owns_fd, bool is_unix, bool tls = false);
    void start(bool accept_now = true);
    void join();
    // Thread-safe: starts accepting on the listeners (start() does it at once unless told to
    // wait, as a router fed by an emperor does until its first routes arrive).
    void start_accepting();
    // Thread-safe: asks the thread to drain (graceful) or to close everything now.
    void request_shutdown(bool immediate);
    // Thread-safe: hands this thread a new snapshot (applied on its loop).
    void set_routes(std::shared_ptr<const RouteSnapshot> routes);

    uv_loop_t* loop() { return &loop_; }
    Shared& shared() { return shared_; }
    const RouterOptions& options() const { return shared_.options; }
    ChunkPool& chunks() { return chunks_; }
    WriteOpPool& ops() { return ops_; }
    IdlePool& idle() { return idle_; }
    bool shutting_down() const { return shutting_down_; }
    unsigned index() const { return index_; }

    // The access log a request of `pool` goes to (per vassal with --access-log-dir), or nullptr
    // when access logging is off.
    AccessLog* access_log_for(const Pool* pool);
    bool access_logging() const {
        return access_log_.enabled() || !shared_.options.access_log_dir.empty();
    }

    http::HeadCollector* take_head();
    void return_head(http::HeadCollector* h);

    // The routes in force on this thread.
    const std::shared_ptr<const RouteSnapshot>& routes() const { return routes_; }
    uint64_t requests() const { return requests_.load(std::memory_order_relaxed); }
    void count_request() { requests_.fetch_add(1, std::memory_order_relaxed); }
    // The version of the snapshot this thread routes by (0 before the first).
    uint64_t routes_version() const { return routes_version_.load(std::memory_order_acquire); }

    void client_opened(ListNode* node);
    void client_closed(ListNode* node);
    // A client connection is idle between two requests (keep-alive): `node` (its idle_node)
    // goes to the back of the list of idle clients, which the longest idle leave first when
    // descriptors run out, as nginx reuses its keep-alive connections.
    void client_idle(ListNode* node);
    // Out of descriptors: closes up to kReclaimBatch idle keep-alive clients, the longest idle
    // first; returns how many.
    size_t reclaim_idle_clients();
    static constexpr size_t kReclaimBatch = 32;
    // Upstream connections by state; written by this thread only, read by the control thread.
    void count_upstream(UpstreamState state, int delta) {
        auto& n = upstreams_[static_cast<int>(state)];
        n.store(n.load(std::memory_order_relaxed) + delta, std::memory_order_relaxed);
    }
    int64_t upstreams(UpstreamState state) const {
        return upstreams_[static_cast<int>(state)].load(std::memory_order_relaxed);
    }

    // `owner`'s stream has closed: its on_stream_closed runs from the loop (an idle handle's
    // callback), not from inside the close, and frees it.
    void retire(Stream::Owner& owner);

    // Client connections this thread serves, plus those handed to it and not yet opened.
    int load() const { return load_.load(std::memory_order_relaxed); }

    // A request of this thread starts waiting in its vassal's queue: its deadline is watched
    // here, and the queue is pumped while it waits (a worker marked down comes back up).
    void add_waiter(std::shared_ptr<Waiter> w);
    // Thread-safe: a queue hands `w` (a waiter of this thread) its slot, or refuses it.
    void assign(std::shared_ptr<Waiter> w);
    // Thread-safe: `b` has more connections than its concurrency (another thread just opened
    // one); close this thread's idle ones to it while that lasts.
    void shed_idle(std::shared_ptr<Backend> b);

private:
    void run();
    void on_wake();
    void on_housekeeping();
    void begin_shutdown();
    void force_close_all();
    void maybe_finish();
    void begin_accepting();
    void pause_accepting(); // out of descriptors: stop accepting for a moment
    void resume_accepting();
    void apply_routes();
    void close_idle_upstreams();
    void flush_logs();
    void on_queue_timer();
    void free_retired();
    void take_assigned();      // on the loop: the hand-overs from assign() and shed_idle()
    void give_back(Waiter& w); // a slot handed to a waiter that no longer waits
    // Serves `fd`, just accepted here, on this thread or on a less loaded one
    // (thread_for_connection).
    void place(int fd, bool is_unix, bool tls);
    // Thread-safe: queues an accepted connection for this thread and wakes it; false once the
    // thread no longer takes connections (before it accepts, and from its shutdown on).
    bool hand_over(int fd, bool is_unix, bool tls);
    // On the loop: opens the connections handed over, or closes them when shutting down.
    void open_handed_over();

    unsigned index_;
    Shared& shared_;
    uv_loop_t loop_;
    // Other threads post to wake_ at any time until this object is destroyed, so its memory is
    // this object's rather than a UvHandle's (freed at close): it is closed in maybe_finish.
    uv_async_t wake_;
    UvHandle<uv_timer_t> housekeeping_; // access-log flush, accept resume
    UvHandle<uv_timer_t> shutdown_timer_;
    std::thread thread_;
    std::vector<std::unique_ptr<Listener>> listeners_;
    ChunkPool chunks_;
    WriteOpPool ops_;
    IdlePool idle_;
    std::vector<http::HeadCollector*> free_heads_;
    std::shared_ptr<const RouteSnapshot> routes_;
    std::mutex routes_mu_;
    std::shared_ptr<const RouteSnapshot> pending_routes_; // guarded by routes_mu_
    std::atomic<uint64_t> requests_{0};
    std::atomic<uint64_t> routes_version_{0};
    ListNode clients_;
    ListNode idle_clients_;          // keep-alive clients between requests, longest idle first
    size_t reclaimed_ = 0;           // since the last warning about it
    size_t released_ = 0;            // chunk bytes freed since the heap was last trimmed
    uint64_t reclaim_logged_at_ = 0; // loop time of that warning
    AccessLog access_log_;
    std::unordered_map<std::string, std::unique_ptr<AccessLog>> vassal_logs_;
    std::atomic<int64_t> upstreams_[kUpstreamStates] = {};
    std::atomic<int> shutdown_request_{0}; // 1 graceful, 2 immediate
    bool shutting_down_ = false;
    bool accepting_paused_ = false;
    bool accepting_ = false;
    std::atomic<bool> accept_requested_{false};
    bool finished_ = false;
    int64_t paused_at_ = 0;
    std::atomic<int> load_{0};
    std::mutex handoff_mu_;
    struct HandedOver {
        int fd;
        bool is_unix;
        bool tls;
    };
    std::vector<HandedOver> handed_over_;           // guarded by handoff_mu_
    bool takes_handoffs_ = false;                   // guarded by handoff_mu_
    std::vector<std::shared_ptr<Waiter>> assigned_; // guarded by handoff_mu_
    std::vector<std::shared_ptr<Backend>> shed_;    // guarded by handoff_mu_
    bool finished_taking_ = false;                  // guarded by handoff_mu_
    std::vector<std::shared_ptr<Waiter>> waiters_;  // this thread's, until they stop waiting
    UvHandle<uv_timer_t> queue_timer_;              // runs while waiters_ is not empty
    std::vector<Stream::Owner*> retired_;           // closed, to be freed by free_retired
    std::vector<Stream::Owner*> freeing_;           // the batch free_retired works through
    UvHandle<uv_idle_t> retired_sweep_;             // runs while retired_ is not empty
};

} // namespace liege::router
