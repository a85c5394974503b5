#include "worker.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>

#include "connection.hpp"
#include "liege/log.hpp"

namespace liege::router {

namespace {
constexpr uint64_t kHousekeepingMs = 200;
constexpr int64_t kAcceptPauseMs = 100;
} // namespace

void AccessLog::flush() {
    size_t off = 0;
    while (off < buf_.size()) {
        ssize_t n = ::write(fd_, buf_.data() + off, buf_.size() - off);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            break; // a full disk or closed stderr must not stop the proxy
        }
        off += static_cast<size_t>(n);
    }
    buf_.clear();
}

std::string_view AccessLog::timestamp() {
    time_t now = ::time(nullptr);
    if (now != stamp_second_) {
        stamp_second_ = now;
        tm t{};
        gmtime_r(&now, &t);
        stamp_len_ = strftime(stamp_, sizeof(stamp_), "[%d/%b/%Y:%H:%M:%S +0000]", &t);
    }
    return {stamp_, stamp_len_};
}

Worker::Worker(unsigned index, Shared& shared, int access_log_fd)
    : index_(index), shared_(shared), access_log_(access_log_fd) {
    uv_loop_init(&loop_);
    uv_async_init(&loop_, &wake_, [](uv_async_t* a) { static_cast<Worker*>(a->data)->on_wake(); });
    wake_.data = this;
    uv_timer_init(&loop_, &housekeeping_);
    housekeeping_.data = this;
    uv_timer_init(&loop_, &shutdown_timer_);
    shutdown_timer_.data = this;
}

Worker::~Worker() {
    for (auto* h : free_heads_) {
        delete h;
    }
    uv_loop_close(&loop_);
}

void Worker::add_listener(int fd, bool owns_fd, bool is_unix) {
    auto l = std::make_unique<Listener>();
    l->worker = this;
    l->fd = fd;
    l->owns_fd = owns_fd;
    l->is_unix = is_unix;
    uv_poll_init_socket(&loop_, &l->poll, fd);
    l->poll.data = l.get();
    listeners_.push_back(std::move(l));
}

void Worker::start(bool accept_now) {
    if (accept_now) {
        begin_accepting();
    }
    uv_timer_start(
        &housekeeping_,
        [](uv_timer_t* t) {
            auto* w = static_cast<Worker*>(t->data);
            w->flush_logs();
            if (w->accepting_paused_ && !w->shutting_down_ &&
                uv_now(&w->loop_) - static_cast<uint64_t>(w->paused_at_) >= kAcceptPauseMs) {
                w->accepting_paused_ = false;
                for (auto& l : w->listeners_) {
                    uv_poll_start(&l->poll, UV_READABLE, on_accept);
                }
            }
        },
        kHousekeepingMs, kHousekeepingMs);
    thread_ = std::thread([this] { run(); });
}

void Worker::run() {
    uv_run(&loop_, UV_RUN_DEFAULT);
    flush_logs();
}

void Worker::flush_logs() {
    if (access_log_.enabled() && !access_log_.buffer().empty()) {
        access_log_.flush();
    }
    for (auto& [name, log] : vassal_logs_) {
        if (log->enabled() && !log->buffer().empty()) {
            log->flush();
        }
    }
}

AccessLog* Worker::access_log_for(const Pool* pool) {
    if (shared_.options.access_log_dir.empty() || pool == nullptr) {
        return access_log_.enabled() ? &access_log_ : nullptr;
    }
    auto it = vassal_logs_.find(pool->vassal);
    if (it == vassal_logs_.end()) {
        int fd = shared_.vassal_log_fd(pool->vassal);
        if (fd < 0) {
            return nullptr; // not cached: a later request tries again
        }
        it = vassal_logs_.emplace(pool->vassal, std::make_unique<AccessLog>(fd)).first;
    }
    return it->second->enabled() ? it->second.get() : nullptr;
}

int Shared::vassal_log_fd(const std::string& vassal) {
    std::lock_guard lock(logs_mu);
    auto it = vassal_log_fds.find(vassal);
    if (it != vassal_log_fds.end()) {
        return it->second;
    }
    const int64_t now = steady_now_ms();
    auto failed = vassal_log_retry.find(vassal);
    if (failed != vassal_log_retry.end() && now < failed->second) {
        return -1;
    }
    std::string path = options.access_log_dir + "/" + vassal + ".access.log";
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        spdlog::error("router: cannot open access log {}: {}; trying again in {} ms", path,
                      std::strerror(errno), kLogRetryMs);
        vassal_log_retry[vassal] = now + kLogRetryMs;
        return -1;
    }
    if (failed != vassal_log_retry.end()) {
        spdlog::info("router: access log {} open", path);
        vassal_log_retry.erase(failed);
    }
    vassal_log_fds[vassal] = fd;
    return fd;
}

void Shared::reopen_logs() {
    std::lock_guard lock(logs_mu);
    auto reopen = [](int fd, const std::string& path) {
        int fresh = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fresh < 0) {
            spdlog::error("router: cannot reopen {}: {}", path, std::strerror(errno));
            return;
        }
        ::dup3(fresh, fd, O_CLOEXEC);
        ::close(fresh);
    };
    if (main_log_fd >= 0 && !main_log_path.empty()) {
        reopen(main_log_fd, main_log_path);
    }
    for (auto& [vassal, fd] : vassal_log_fds) {
        if (fd >= 0) {
            reopen(fd, options.access_log_dir + "/" + vassal + ".access.log");
        }
    }
}

void Worker::join() {
    if (thread_.joinable()) {
        thread_.join();
    }
}

void Worker::request_shutdown(bool immediate) {
    int want = immediate ? 2 : 1;
    int cur = shutdown_request_.load();
    while (cur < want && !shutdown_request_.compare_exchange_weak(cur, want)) {
    }
    uv_async_send(&wake_);
}

void Worker::set_routes(std::shared_ptr<const RouteSnapshot> routes) {
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

void Worker::apply_routes() {
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
    for (auto it = idle_.begin(); it != idle_.end();) {
        Backend* b = it->first;
        if (!routes_->serves(b)) {
            auto list = std::move(it->second);
            it = idle_.erase(it);
            for (Upstream* up : list) {
                up->state_ = UpstreamState::Active; // no longer listed
                up->close();
            }
        } else {
            ++it;
        }
    }
}

void Worker::start_accepting() {
    accept_requested_.store(true);
    uv_async_send(&wake_);
}

void Worker::begin_accepting() {
    if (accepting_ || shutting_down_) {
        return;
    }
    accepting_ = true;
    {
        std::lock_guard lock(handoff_mu_);
        takes_handoffs_ = true;
    }
    for (auto& l : listeners_) {
        uv_poll_start(&l->poll, UV_READABLE, on_accept);
    }
}

void Worker::place(int fd, bool is_unix) {
    const auto& all = shared_.workers;
    if (all.size() > 1) {
        unsigned to = thread_for_connection(index_, static_cast<unsigned>(all.size()),
                                            [&](unsigned i) { return all[i]->load(); });
        if (to != index_ && all[to]->hand_over(fd, is_unix)) {
            return;
        }
    }
    ClientConn::accept(this, fd, is_unix);
}

bool Worker::hand_over(int fd, bool is_unix) {
    std::lock_guard lock(handoff_mu_);
    if (!takes_handoffs_) {
        return false;
    }
    load_.fetch_add(1, std::memory_order_relaxed); // counted from now, so others see it
    handed_over_.emplace_back(fd, is_unix);
    uv_async_send(&wake_);
    return true;
}

void Worker::open_handed_over() {
    std::vector<std::pair<int, bool>> batch;
    {
        std::lock_guard lock(handoff_mu_);
        batch.swap(handed_over_);
        if (shutting_down_) {
            takes_handoffs_ = false;
        }
    }
    for (auto [fd, is_unix] : batch) {
        load_.fetch_sub(1, std::memory_order_relaxed); // client_opened counts it again
        if (shutting_down_) {
            ::close(fd); // as the listen queue's connections are when the listener closes
        } else {
            ClientConn::accept(this, fd, is_unix);
        }
    }
}

void Worker::on_wake() {
    apply_routes();
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

void Worker::begin_shutdown() {
    shutting_down_ = true;
    open_handed_over(); // stops taking more and closes any queued since the last wake
    // Close the listening sockets now, not after the drain: an open socket nobody accepts on
    // would complete handshakes and leave new clients hanging instead of refused.
    // (uv_poll_stop has already taken the fd out of epoll, so closing it here is safe.)
    for (auto& l : listeners_) {
        uv_poll_stop(&l->poll);
        uv_close(reinterpret_cast<uv_handle_t*>(&l->poll), nullptr);
        if (l->owns_fd && l->fd >= 0) {
            ::close(l->fd);
            l->fd = -1;
        }
    }
    // Idle clients go now; the others after their response (which says Connection: close).
    for (ListNode* n = clients_.next; n != &clients_;) {
        ListNode* next = n->next;
        ClientConn::from_node(n)->drain();
        n = next;
    }
    close_idle_upstreams();
    uv_timer_start(
        &shutdown_timer_,
        [](uv_timer_t* t) {
            auto* w = static_cast<Worker*>(t->data);
            spdlog::warn("router thread {}: shutdown timeout, closing connections still open",
                         w->index_);
            w->force_close_all();
        },
        static_cast<uint64_t>(shared_.options.shutdown_timeout.count()), 0);
    maybe_finish();
}

void Worker::force_close_all() {
    for (ListNode* n = clients_.next; n != &clients_;) {
        ListNode* next = n->next;
        ClientConn::from_node(n)->close_now();
        n = next;
    }
    maybe_finish();
}

void Worker::maybe_finish() {
    if (!shutting_down_ || finished_ || !clients_.empty()) {
        return;
    }
    close_idle_upstreams();
    finished_ = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&wake_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&housekeeping_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&shutdown_timer_), nullptr);
    for (auto& l : listeners_) {
        if (l->owns_fd && l->fd >= 0) {
            ::close(l->fd);
            l->fd = -1;
        }
    }
}

void Worker::on_accept(uv_poll_t* handle, int status, int) {
    auto* l = static_cast<Listener*>(handle->data);
    Worker* w = l->worker;
    if (status < 0 || w->shutting_down_) {
        return;
    }
    for (int i = 0; i < 64; ++i) {
        int fd = ::accept4(l->fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            w->place(fd, l->is_unix);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED) {
            continue;
        }
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            // The kernel keeps the connection queued; try again shortly or when one closes.
            static std::atomic<int64_t> last_warn{0};
            int64_t now = steady_now_ms();
            if (now - last_warn.load() > 5000) {
                last_warn = now;
                spdlog::warn("accept: {}; pausing accepts", std::strerror(errno));
            }
            w->pause_accepting();
        }
        return; // EAGAIN, or paused
    }
}

void Worker::pause_accepting() {
    if (accepting_paused_) {
        return;
    }
    accepting_paused_ = true;
    paused_at_ = static_cast<int64_t>(uv_now(&loop_));
    for (auto& l : listeners_) {
        uv_poll_stop(&l->poll);
    }
}

http::HeadCollector* Worker::take_head() {
    if (free_heads_.empty()) {
        return new http::HeadCollector();
    }
    auto* h = free_heads_.back();
    free_heads_.pop_back();
    return h;
}

void Worker::return_head(http::HeadCollector* h) {
    h->reset();
    if (free_heads_.size() >= 256) {
        delete h;
        return;
    }
    free_heads_.push_back(h);
}

void Worker::close_idle_upstreams() {
    auto all = std::move(idle_);
    idle_.clear();
    for (auto& [b, list] : all) {
        for (Upstream* up : list) {
            up->state_ = UpstreamState::Active; // no longer listed
            up->close();
        }
    }
}

Upstream* Worker::take_idle(Backend* backend) {
    auto it = idle_.find(backend);
    if (it == idle_.end() || it->second.empty()) {
        return nullptr;
    }
    Upstream* up = it->second.back();
    it->second.pop_back();
    return up;
}

void Worker::park_idle(Upstream* up) {
    Backend* b = up->backend();
    if (!routes_->serves(b)) {
        up->close();
        return;
    }
    auto& list = idle_[b];
    if (list.size() >= shared_.options.max_idle_upstream) {
        Upstream* oldest = list.front();
        list.erase(list.begin());
        oldest->state_ = UpstreamState::Active; // no longer in the list
        oldest->close();
    }
    list.push_back(up);
}

void Worker::forget_idle(Upstream* up) {
    auto it = idle_.find(up->backend());
    if (it == idle_.end()) {
        return;
    }
    auto& list = it->second;
    for (size_t i = 0; i < list.size(); ++i) {
        if (list[i] == up) {
            list.erase(list.begin() + static_cast<std::ptrdiff_t>(i));
            return;
        }
    }
}

void Worker::client_opened(ClientConn* c) {
    clients_.push_back(&c->node);
    load_.fetch_add(1, std::memory_order_relaxed);
    shared_.connections.fetch_add(1, std::memory_order_relaxed);
}

void Worker::client_closed(ClientConn* c) {
    c->node.unlink();
    load_.fetch_sub(1, std::memory_order_relaxed);
    shared_.connections.fetch_sub(1, std::memory_order_relaxed);
    if (accepting_paused_ && !shutting_down_) {
        accepting_paused_ = false;
        for (auto& l : listeners_) {
            uv_poll_start(&l->poll, UV_READABLE, on_accept);
        }
    }
    maybe_finish();
}

void Worker::upstream_closed() {
    upstreams_open_--;
}

} // namespace liege::router
