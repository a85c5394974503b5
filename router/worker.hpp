// One router thread: a libuv loop, its listeners, its client connections and its upstream
// connection pools. Nothing here is shared with other threads except the Backend figures
// (atomics) and the immutable options.
#pragma once

#include <uv.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "buffers.hpp"
#include "liege/balancer.hpp"
#include "liege/control.hpp"
#include "liege/http_head.hpp"
#include "liege/router.hpp"
#include "route_snapshot.hpp"

namespace liege::router {

class ClientConn;
class Upstream;
class Worker;

// State every thread reads: options, process-wide figures, and the drain reports going back to
// the control thread.
struct Shared {
    RouterOptions options;
    std::atomic<uint64_t> requests{0};
    std::atomic<int64_t> connections{0};
    std::vector<Worker*> workers; // every thread by index, filled before any starts

    // A request leaves backend `b`. The last one out of a draining backend reports it drained.
    void release_backend(Backend& b) {
        if (b.in_flight.fetch_sub(1, std::memory_order_acq_rel) == 1 &&
            b.draining.load(std::memory_order_acquire)) {
            report_drained(b);
        }
    }
    void report_drained(const Backend& b) {
        std::lock_guard lock(drained_mu);
        drained.push_back({b.name, b.generation});
        if (drained_async != nullptr) {
            uv_async_send(drained_async);
        }
    }
    std::mutex drained_mu;
    std::vector<control::DrainedMessage> drained;
    uv_async_t* drained_async = nullptr; // the control thread's; null without an emperor

    // Access log files. Descriptors are shared by all threads (appends of whole lines); reopening
    // (SIGUSR1, after logrotate) puts a new file under the same descriptor number with dup2, so
    // threads never see a closed descriptor and no line is lost.
    int main_log_fd = -1;
    std::string main_log_path; // empty when the main log is stderr or off
    // The descriptor of DIR/VASSAL.access.log, opened on first use; -1 while it cannot be opened
    // (out of descriptors, or a bad directory). A failed open is tried again on a later request,
    // at most once per kLogRetryMs, so a vassal's log resumes once the cause is gone.
    int vassal_log_fd(const std::string& vassal);
    void reopen_logs();
    static constexpr int64_t kLogRetryMs = 1000;
    std::mutex logs_mu;
    std::map<std::string, int> vassal_log_fds;       // guarded by logs_mu; only open ones
    std::map<std::string, int64_t> vassal_log_retry; // guarded by logs_mu: failed, retry after
};

// A listening socket as one thread sees it: the fd is polled for readability and accepted by
// hand, so that running out of descriptors pauses accepting instead of dropping connections.
struct Listener {
    Worker* worker = nullptr;
    int fd = -1;
    bool owns_fd = true;
    bool is_unix = false;
    uv_poll_t poll;
};

// Intrusive doubly linked list membership, so "close every idle client" is a list walk.
struct ListNode {
    explicit ListNode(void* o = nullptr) : owner(o) {}
    ListNode(const ListNode&) = delete;
    ListNode& operator=(const ListNode&) = delete;
    void* owner;
    ListNode* prev = this;
    ListNode* next = this;
    void unlink() {
        prev->next = next;
        next->prev = prev;
        prev = next = this;
    }
    void push_back(ListNode* n) {
        n->prev = prev;
        n->next = this;
        prev->next = n;
        prev = n;
    }
    bool empty() const { return next == this; }
};

class AccessLog {
public:
    // fd < 0 disables the log.
    explicit AccessLog(int fd) : fd_(fd) {}
    bool enabled() const { return fd_ >= 0; }
    std::string& buffer() { return buf_; }
    void maybe_flush() {
        if (buf_.size() >= 16 * 1024) {
            flush();
        }
    }
    void flush();
    // "[25/Nov/2026:12:00:00 +0000]" for the current second, cached.
    std::string_view timestamp();

private:
    int fd_;
    std::string buf_;
    int64_t stamp_second_ = -1;
    char stamp_[40] = {};
    size_t stamp_len_ = 0;
};

class Worker {
public:
    Worker(unsigned index, Shared& shared, int access_log_fd);
    ~Worker();
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;

    // Sets up the loop's handles; listeners are added before start().
    void add_listener(int fd, bool owns_fd, bool is_unix);
    void start(bool accept_now = true);
    void join();
    // Thread-safe: starts accepting on the listeners (start() does it at once unless told to
    // wait, as a router fed by an emperor does until its first routes arrive).
    void start_accepting();
    // Thread-safe: asks the thread to drain (graceful) or to close everything now.
    void request_shutdown(bool immediate);

    uv_loop_t* loop() { return &loop_; }
    Shared& shared() { return shared_; }
    const RouterOptions& options() const { return shared_.options; }
    ChunkPool& chunks() { return chunks_; }
    WriteOpPool& ops() { return ops_; }
    // The access log a request of `pool` goes to (per vassal with --access-log-dir), or nullptr
    // when access logging is off.
    AccessLog* access_log_for(const Pool* pool);
    bool access_logging() const {
        return access_log_.enabled() || !shared_.options.access_log_dir.empty();
    }
    bool shutting_down() const { return shutting_down_; }
    unsigned index() const { return index_; }

    http::HeadCollector* take_head();
    void return_head(http::HeadCollector* h);

    // The routes in force on this thread.
    const std::shared_ptr<const RouteSnapshot>& routes() const { return routes_; }
    // Thread-safe: hands this thread a new snapshot (applied on its loop).
    void set_routes(std::shared_ptr<const RouteSnapshot> routes);
    uint64_t requests() const { return requests_.load(std::memory_order_relaxed); }
    // The version of the snapshot this thread routes by (0 before the first).
    uint64_t routes_version() const { return routes_version_.load(std::memory_order_acquire); }

    // Upstream pool: an idle connection to backend `b`, or nullptr.
    Upstream* take_idle(Backend* b);
    void park_idle(Upstream* up);
    void forget_idle(Upstream* up);

    void client_opened(ClientConn* c);
    void client_closed(ClientConn* c);
    void upstream_closed();

    // Descriptor exhaustion: stop accepting for a moment instead of failing.
    void pause_accepting();

    // Client connections this thread serves, plus those handed to it and not yet opened.
    int load() const { return load_.load(std::memory_order_relaxed); }

private:
    void run();
    void on_wake();
    void begin_shutdown();
    void force_close_all();
    void maybe_finish();
    static void on_accept(uv_poll_t* handle, int status, int events);
    // Serves `fd`, just accepted here, on this thread or on a less loaded one
    // (thread_for_connection).
    void place(int fd, bool is_unix);
    // Thread-safe: queues an accepted connection for this thread and wakes it; false once the
    // thread no longer takes connections (before it accepts, and from its shutdown on).
    bool hand_over(int fd, bool is_unix);
    // On the loop: opens the connections handed over, or closes them when shutting down.
    void open_handed_over();

    unsigned index_;
    Shared& shared_;
    uv_loop_t loop_;
    uv_async_t wake_;
    uv_timer_t housekeeping_; // access-log flush, accept resume
    uv_timer_t shutdown_timer_;
    std::thread thread_;
    std::vector<std::unique_ptr<Listener>> listeners_;
    ChunkPool chunks_;
    WriteOpPool ops_;
    std::vector<http::HeadCollector*> free_heads_;
    std::unordered_map<Backend*, std::vector<Upstream*>> idle_;
    std::shared_ptr<const RouteSnapshot> routes_;
    std::mutex routes_mu_;
    std::shared_ptr<const RouteSnapshot> pending_routes_; // guarded by routes_mu_
    std::atomic<uint64_t> requests_{0};
    std::atomic<uint64_t> routes_version_{0};
    void apply_routes();
    void close_idle_upstreams();
    ListNode clients_;
    AccessLog access_log_;
    std::unordered_map<std::string, std::unique_ptr<AccessLog>> vassal_logs_;
    void flush_logs();
    std::atomic<int> shutdown_request_{0}; // 1 graceful, 2 immediate
    bool shutting_down_ = false;
    bool accepting_paused_ = false;
    bool accepting_ = false;
    std::atomic<bool> accept_requested_{false};
    void begin_accepting();
    bool finished_ = false;
    int64_t upstreams_open_ = 0;
    int64_t paused_at_ = 0;
    std::atomic<int> load_{0};
    std::mutex handoff_mu_;
    std::vector<std::pair<int, bool>> handed_over_; // fd, is_unix; guarded by handoff_mu_
    bool takes_handoffs_ = false;                   // guarded by handoff_mu_

    friend class ClientConn;
    friend class Upstream;
};

} // namespace liege::router
