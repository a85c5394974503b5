#include "router_thread.hpp"

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include "client.hpp"
#include "liege/log.hpp"

namespace liege::router {

namespace {
constexpr uint64_t kHousekeepingMs = 200;
// Chunks freed beyond the pool before the heap is trimmed: 16 MiB, 256 chunks.
constexpr size_t kTrimAfterBytes = size_t{16} << 20;
constexpr int64_t kAcceptPauseMs = 100;
// While requests wait: how often their deadlines are checked and their queues pumped (a
// worker marked down is back up once its cool-off ends, and nothing else would notice).
constexpr uint64_t kQueueTickMs = 50;
} // namespace

RouterThread::RouterThread(unsigned index, Shared& shared, int access_log_fd)
    : index_(index), shared_(shared), access_log_(access_log_fd) {
    uv_loop_init(&loop_);
    uv_async_init(&loop_, &wake_,
                  [](uv_async_t* a) { static_cast<RouterThread*>(a->data)->on_wake(); });
    wake_.data = this;
    uv_timer_init(&loop_, housekeeping_.get());
    housekeeping_->data = this;
    uv_timer_init(&loop_, shutdown_timer_.get());
    shutdown_timer_->data = this;
    uv_timer_init(&loop_, queue_timer_.get());
    queue_timer_->data = this;
    uv_idle_init(&loop_, retired_sweep_.get());
    retired_sweep_->data = this;
}

RouterThread::~RouterThread() {
    listeners_.clear();
    if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&wake_))) {
        uv_close(reinterpret_cast<uv_handle_t*>(&wake_), nullptr);
    }
    housekeeping_.reset();
    shutdown_timer_.reset();
    queue_timer_.reset();
    while (!retired_.empty()) {
        free_retired();
    }
    retired_sweep_.reset();
    uv_run(&loop_, UV_RUN_DEFAULT); // the close callbacks of whatever was still open
    for (auto* h : free_heads_) {
        delete h;
    }
    close_loop(&loop_, "router thread");
}

void RouterThread::add_listener(int fd, bool owns_fd, bool is_unix, bool tls) {
    listeners_.push_back(std::make_unique<Listener>(
        &loop_, fd, owns_fd, is_unix, tls,
        [this](int conn, bool unix, bool https) { place(conn, unix, https); },
        [this] {
            if (reclaim_idle_clients() > 0) {
                return true;
            }
            pause_accepting();
            return false;
        }));
}

void RouterThread::start(bool accept_now) {
    if (accept_now) {
        begin_accepting();
    }
    uv_timer_start(
        housekeeping_.get(),
        [](uv_timer_t* t) { static_cast<RouterThread*>(t->data)->on_housekeeping(); },
        kHousekeepingMs, kHousekeepingMs);
    thread_ = std::thread([this] { run(); });
}

void RouterThread::on_housekeeping() {
    flush_logs();
    released_ += chunks_.take_released();
    if (released_ >= kTrimAfterBytes) {
        // A burst (slow readers, large bodies) has ended: give its memory back to the system,
        // which free() alone does not do for the heap's middle.
        released_ = 0;
        malloc_trim(0);
    }
    shared().log_refusal_summaries();
    if (accepting_paused_ && !shutting_down_ &&
        uv_now(&loop_) - static_cast<uint64_t>(paused_at_) >= kAcceptPauseMs) {
        resume_accepting();
    }
}

void RouterThread::run() {
    uv_run(&loop_, UV_RUN_DEFAULT);
    flush_logs();
}

void RouterThread::flush_logs() {
    if (access_log_.enabled() && !access_log_.empty()) {
        access_log_.flush();
    }
    for (auto& [name, log] : vassal_logs_) {
        if (log->enabled() && !log->empty()) {
            log->flush();
        }
    }
}

AccessLog* RouterThread::access_log_for(const Pool* pool) {
    if (shared_.options.access_log_dir.empty() || pool == nullptr) {
        return access_log_.enabled() ? &access_log_ : nullptr;
    }
    auto it = vassal_logs_.find(pool->vassal);
    if (it == vassal_logs_.end()) {
        int fd = shared_.logs.vassal_fd(pool->vassal);
        if (fd < 0) {
            return nullptr; // not cached: a later request tries again
        }
        it = vassal_logs_.emplace(pool->vassal, std::make_unique<AccessLog>(fd)).first;
    }
    return it->second->enabled() ? it->second.get() : nullptr;
}

void RouterThread::join() {
    if (thread_.joinable()) {
        thread_.join();
    }
}

void RouterThread::request_shutdown(bool immediate) {
    int want = immediate ? 2 : 1;
    int cur = shutdown_request_.load();
    while (cur < want && !shutdown_request_.compare_exchange_weak(cur, want)) {
    }
    uv_async_send(&wake_);
}

void RouterThread::set_routes(std::shared_ptr<const RouteSnapshot> routes) {
    {
        std::lock_guard lock(routes_mu_);
        pending_routes_ = std::move(routes);
    }
    if (thread_.joinable()) {
        uv_async_send(&wake_);
    } else {
        apply_routes(); // before start(): no loop is running yet
    }
}

void RouterThread::apply_routes() {
    std::shared_ptr<const RouteSnapshot> next;
    {
        std::lock_guard lock(routes_mu_);
        next = std::move(pending_routes_);
    }
    if (next == nullptr) {
        return;
    }
    routes_ = std::move(next);
    routes_version_.store(routes_->version, std::memory_order_release);
    // Pooled connections to backends no longer serving (draining or gone) would keep their
    // workers busy.
    for (Upstream* up : idle_.take_not_served(*routes_)) {
        up->close();
    }
}

void RouterThread::start_accepting() {
    accept_requested_.store(true);
    uv_async_send(&wake_);
}

void RouterThread::begin_accepting() {
    if (accepting_ || shutting_down_) {
        return;
    }
    accepting_ = true;
    {
        std::lock_guard lock(handoff_mu_);
        takes_handoffs_ = true;
    }
    resume_accepting();
}

void RouterThread::pause_accepting() {
    if (accepting_paused_) {
        return;
    }
    accepting_paused_ = true;
    paused_at_ = static_cast<int64_t>(uv_now(&loop_));
    for (auto& l : listeners_) {
        l->stop();
    }
}

void RouterThread::resume_accepting() {
    accepting_paused_ = false;
    for (auto& l : listeners_) {
        l->start();
    }
}

void RouterThread::place(int fd, bool is_unix, bool tls) {
    const auto& all = shared_.threads;
    if (all.size() > 1) {
        unsigned to = thread_for_connection(index_, static_cast<unsigned>(all.size()),
                                            [&](unsigned i) { return all[i]->load(); });
        if (to != index_ && all[to]->hand_over(fd, is_unix, tls)) {
            return;
        }
    }
    ClientConn::accept(*this, fd, is_unix, tls);
}

bool RouterThread::hand_over(int fd, bool is_unix, bool tls) {
    std::lock_guard lock(handoff_mu_);
    if (!takes_handoffs_) {
        return false;
    }
    load_.fetch_add(1, std::memory_order_relaxed); // counted from now, so others see it
    handed_over_.push_back({fd, is_unix, tls});
    uv_async_send(&wake_);
    return true;
}

void RouterThread::open_handed_over() {
    std::vector<HandedOver> batch;
    {
        std::lock_guard lock(handoff_mu_);
        batch.swap(handed_over_);
        if (shutting_down_) {
            takes_handoffs_ = false;
        }
    }
    for (auto [fd, is_unix, tls] : batch) {
        load_.fetch_sub(1, std::memory_order_relaxed); // client_opened counts it again
        if (shutting_down_) {
            ::close(fd); // as the listen queue's connections are when the listener closes
        } else {
            ClientConn::accept(*this, fd, is_unix, tls);
        }
    }
}

void RouterThread::add_waiter(std::shared_ptr<Waiter> w) {
    waiters_.push_back(std::move(w));
    if (!queue_timer_.active() && queue_timer_.initialised()) {
        uv_timer_start(
            queue_timer_.get(),
            [](uv_timer_t* t) { static_cast<RouterThread*>(t->data)->on_queue_timer(); },
            kQueueTickMs, kQueueTickMs);
    }
}

void RouterThread::on_queue_timer() {
    const int64_t now = steady_now_ms();
    std::vector<std::shared_ptr<VassalQueue>> pumped;
    // A waiter that times out is answered at once, which may make others stop waiting: the
    // list is walked over a copy of its entries.
    std::vector<std::shared_ptr<Waiter>> live;
    live.swap(waiters_);
    for (auto& w : live) {
        std::shared_ptr<VassalQueue> q = w->queue.lock();
        if (w->conn == nullptr || q == nullptr) {
            continue; // dispatched, refused or gone
        }
        if (now >= w->deadline_ms && q->leave(*w)) {
            ClientConn* c = std::exchange(w->conn, nullptr);
            c->queue_timed_out();
            continue;
        }
        if (w->conn->left_mid_body()) {
            w->conn->close_now(); // leaves the queue, and gives back a slot on its way
            continue;
        }
        if (std::find(pumped.begin(), pumped.end(), q) == pumped.end()) {
            pumped.push_back(std::move(q));
        }
        waiters_.push_back(std::move(w));
    }
    if (waiters_.empty()) {
        uv_timer_stop(queue_timer_.get());
    }
    for (const auto& q : pumped) {
        q->pump();
    }
}

void RouterThread::assign(std::shared_ptr<Waiter> w) {
    {
        std::lock_guard lock(handoff_mu_);
        if (!finished_taking_) {
            assigned_.push_back(std::move(w));
            uv_async_send(&wake_);
            return;
        }
    }
    give_back(*w); // the thread has stopped: its waiters are all gone
}

void RouterThread::give_back(Waiter& w) {
    if (w.backend != nullptr) {
        // Its client went while the slot was on its way: the slot goes to the next waiter.
        shared_.release_backend(*w.backend);
        w.backend = nullptr;
        if (auto q = w.queue.lock()) {
            q->pump();
        }
    }
}

void RouterThread::shed_idle(std::shared_ptr<Backend> b) {
    std::lock_guard lock(handoff_mu_);
    if (!finished_taking_) {
        shed_.push_back(std::move(b));
        uv_async_send(&wake_);
    }
}

void RouterThread::take_assigned() {
    std::vector<std::shared_ptr<Waiter>> assigned;
    std::vector<std::shared_ptr<Backend>> shed;
    {
        std::lock_guard lock(handoff_mu_);
        assigned.swap(assigned_);
        shed.swap(shed_);
    }
    for (auto& w : assigned) {
        if (ClientConn* c = std::exchange(w->conn, nullptr)) {
            c->dispatch(std::move(w->backend));
        } else {
            give_back(*w);
        }
    }
    for (auto& b : shed) {
        const int limit = b->concurrency.load(std::memory_order_relaxed);
        while (limit > 0 && b->connections.load(std::memory_order_relaxed) > limit) {
            Upstream* up = idle_.take(b.get());
            if (up == nullptr) {
                break;
            }
            up->close();
        }
    }
}

void RouterThread::on_wake() {
    apply_routes();
    take_assigned();
    if (accept_requested_.load()) {
        begin_accepting();
    }
    open_handed_over();
    int req = shutdown_request_.load();
    if (req >= 1 && !shutting_down_) {
        begin_shutdown();
    }
    if (req >= 2) {
        force_close_all();
    }
}

void RouterThread::begin_shutdown() {
    shutting_down_ = true;
    open_handed_over(); // stops taking more and closes any queued since the last wake
    // Close the listening sockets now, not after the drain: an open socket nobody accepts on
    // would complete handshakes and leave new clients hanging instead of refused.
    for (auto& l : listeners_) {
        l->close();
    }
    // Idle clients go now; the others after their response (which says Connection: close).
    for (ListNode* n = clients_.next; n != &clients_;) {
        ListNode* next = n->next;
        ClientConn::from_node(n)->drain();
        n = next;
    }
    close_idle_upstreams();
    uv_timer_start(
        shutdown_timer_.get(),
        [](uv_timer_t* t) {
            auto* self = static_cast<RouterThread*>(t->data);
            spdlog::warn("router thread {}: shutdown timeout, closing connections still open",
                         self->index_);
            self->force_close_all();
        },
        static_cast<uint64_t>(shared_.options.shutdown_timeout.count()), 0);
    maybe_finish();
}

void RouterThread::force_close_all() {
    for (ListNode* n = clients_.next; n != &clients_;) {
        ListNode* next = n->next;
        ClientConn::from_node(n)->close_now();
        n = next;
    }
    maybe_finish();
}

void RouterThread::maybe_finish() {
    if (!shutting_down_ || finished_ || !clients_.empty()) {
        return;
    }
    close_idle_upstreams();
    finished_ = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&wake_), nullptr);
    housekeeping_.reset();
    shutdown_timer_.reset();
    queue_timer_.reset();
    for (auto& l : listeners_) {
        l->close();
    }
    {
        std::lock_guard lock(handoff_mu_);
        finished_taking_ = true; // assign() gives slots back itself from now on
    }
    take_assigned(); // hand-overs to connections gone: their slots are given back
}

http::HeadCollector* RouterThread::take_head() {
    if (free_heads_.empty()) {
        return new http::HeadCollector();
    }
    auto* h = free_heads_.back();
    free_heads_.pop_back();
    return h;
}

void RouterThread::return_head(http::HeadCollector* h) {
    h->reset();
    if (free_heads_.size() >= 256) {
        delete h;
        return;
    }
    free_heads_.push_back(h);
}

void RouterThread::close_idle_upstreams() {
    for (Upstream* up : idle_.take_all()) {
        up->close();
    }
}

void RouterThread::retire(Stream::Owner& owner) {
    if (retired_.empty() && retired_sweep_.initialised()) {
        uv_idle_start(retired_sweep_.get(),
                      [](uv_idle_t* h) { static_cast<RouterThread*>(h->data)->free_retired(); });
    }
    retired_.push_back(&owner);
}

// Those retired while this runs (an owner's on_stream_closed may close more) wait for the next
// round, so the batch being freed never changes under the loop.
void RouterThread::free_retired() {
    freeing_.swap(retired_);
    for (Stream::Owner* owner : freeing_) {
        owner->on_stream_closed();
    }
    freeing_.clear();
    if (retired_.empty() && retired_sweep_.initialised()) {
        uv_idle_stop(retired_sweep_.get());
    }
}

void RouterThread::client_idle(ListNode* node) {
    node->unlink();
    idle_clients_.push_back(node); // the newest at the back: the front has waited longest
}

size_t RouterThread::reclaim_idle_clients() {
    size_t closed = 0;
    while (closed < kReclaimBatch && !idle_clients_.empty()) {
        ClientConn* c = ClientConn::from_node(idle_clients_.next);
        idle_clients_.next->unlink();
        if (c->idle()) {
            c->close_now(); // its descriptor is closed at once
            ++closed;
        }
    }
    if (closed > 0) {
        reclaimed_ += closed;
        const auto now = uv_now(&loop_);
        if (now - reclaim_logged_at_ >= 5000 || reclaim_logged_at_ == 0) {
            spdlog::warn("router thread {}: out of file descriptors; closed {} idle keep-alive "
                         "connection(s), the longest idle first, to make room",
                         index_, reclaimed_);
            reclaimed_ = 0;
            reclaim_logged_at_ = now;
        }
    }
    return closed;
}

void RouterThread::client_opened(ListNode* node) {
    clients_.push_back(node);
    load_.fetch_add(1, std::memory_order_relaxed);
    shared_.connections.fetch_add(1, std::memory_order_relaxed);
}

void RouterThread::client_closed(ListNode* node) {
    node->unlink();
    load_.fetch_sub(1, std::memory_order_relaxed);
    shared_.connections.fetch_sub(1, std::memory_order_relaxed);
    if (accepting_paused_ && !shutting_down_) {
        resume_accepting();
    }
    maybe_finish();
}

} // namespace liege::router
