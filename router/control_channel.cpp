#include "control_channel.hpp"

#include <algorithm>

#include "liege/log.hpp"

namespace liege::router {

std::vector<std::shared_ptr<const RouteSnapshot>>
RouteBuilder::build(const control::RoutesMessage& m, size_t threads,
                    std::vector<std::shared_ptr<Backend>>& to_drain) {
    std::map<std::string, std::shared_ptr<Backend>> next_backends;
    std::map<std::string, std::shared_ptr<VassalStats>> next_vassals;
    std::map<std::string, std::shared_ptr<VassalQueue>> next_queues;
    struct PoolSpec {
        std::string vassal;
        uint64_t generation;
        std::vector<std::shared_ptr<Backend>> backends;
        std::vector<char> draining;
        std::shared_ptr<VassalStats> stats;
        std::shared_ptr<VassalQueue> queue;
        bool tls_redirect = false;
        uint64_t request_timeout_ms = 0;
        bool buffer_bodies = false;
        bool trace = false;
    };
    std::vector<PoolSpec> pools;
    std::vector<RouteEntry> entries;
    for (const auto& r : m.routes) {
        PoolSpec pool{r.vassal,
                      r.generation,
                      {},
                      {},
                      nullptr,
                      nullptr,
                      r.tls_redirect,
                      static_cast<uint64_t>(std::max<int64_t>(r.request_timeout_ms, 0)),
                      r.request_buffering == "always" ||
                          (r.request_buffering == "auto" && r.concurrency >= 1),
                      r.trace};
        auto vit = vassals_.find(r.vassal);
        pool.stats = vit != vassals_.end() ? vit->second : std::make_shared<VassalStats>();
        next_vassals[r.vassal] = pool.stats;
        auto qit = queues_.find(r.vassal);
        pool.queue = qit != queues_.end() ? qit->second : std::make_shared<VassalQueue>(r.vassal);
        next_queues[r.vassal] = pool.queue;
        for (const auto& b : r.backends) {
            const std::string key = b.address + "@" + std::to_string(b.generation);
            std::shared_ptr<Backend> be;
            if (auto it = next_backends.find(key); it != next_backends.end()) {
                be = it->second;
            } else if (auto old = backends_.find(key); old != backends_.end()) {
                be = old->second;
            } else {
                try {
                    be = std::make_shared<Backend>(parse_address(b.address));
                    be->generation = b.generation;
                } catch (const std::exception& e) {
                    spdlog::warn("router: ignoring backend '{}': {}", b.address, e.what());
                    continue;
                }
            }
            next_backends[key] = be;
            be->concurrency.store(std::max(r.concurrency, 0), std::memory_order_relaxed);
            be->max_requests.store(b.max_requests, std::memory_order_relaxed);
            if (b.draining) {
                // Marked on the Backend only once every thread has stopped picking it.
                if (!be->draining.load()) {
                    to_drain.push_back(be);
                }
            } else {
                be->draining.store(false);
            }
            pool.backends.push_back(be);
            pool.draining.push_back(b.draining ? 1 : 0);
        }
        QueueSettings qs;
        qs.size = r.queue_size;
        qs.timeout_ms = std::max<int64_t>(r.queue_timeout_ms, 1);
        qs.failed = r.failed;
        qs.last_error = r.last_error.empty() ? "its workers keep failing" : r.last_error;
        // Waiters get the workers of this route set; every thread routes by it shortly.
        pool.queue->update(qs, policy_, pool.backends, pool.draining);
        RouteEntry e;
        e.vassal = r.vassal;
        e.generation = r.generation;
        e.hosts = r.hosts;
        e.path = r.path;
        e.index = pools.size();
        entries.push_back(std::move(e));
        pools.push_back(std::move(pool));
    }
    // A backend missing from the message is retired: no snapshot serves it, so its pooled
    // connections close (RouterThread::apply_routes) and it is freed with the last snapshot.
    backends_ = std::move(next_backends);
    vassals_ = std::move(next_vassals);
    for (auto& [name, q] : queues_) {
        if (next_queues.count(name) == 0) {
            q->close(); // the vassal is gone: nothing it waits for will come
        }
    }
    queues_ = std::move(next_queues);

    std::vector<std::shared_ptr<const RouteSnapshot>> out;
    const uint64_t version = version_++;
    for (size_t t = 0; t < threads; ++t) {
        auto snap = std::make_shared<RouteSnapshot>();
        snap->version = version;
        snap->table = RouteTable(entries);
        for (const auto& p : pools) {
            snap->pools.push_back(std::make_unique<Pool>(p.vassal, p.generation, policy_,
                                                         p.backends, p.draining, p.stats, p.queue));
            snap->pools.back()->tls_redirect = p.tls_redirect;
            snap->pools.back()->request_timeout_ms = p.request_timeout_ms;
            snap->pools.back()->buffer_bodies = p.buffer_bodies;
            snap->pools.back()->trace = p.trace;
            snap->pools.back()->has_workers =
                std::find(p.draining.begin(), p.draining.end(), 0) != p.draining.end();
            for (size_t i = 0; i < p.backends.size(); ++i) {
                if (p.draining[i] == 0) {
                    snap->serving.push_back(p.backends[i].get());
                }
            }
        }
        std::sort(snap->serving.begin(), snap->serving.end());
        out.push_back(std::move(snap));
    }
    return out;
}

control::StatsMessage RouteBuilder::stats() const {
    control::StatsMessage m;
    for (const auto& [key, be] : backends_) {
        control::BackendStats s;
        s.address = be->name;
        s.in_flight = be->in_flight.load(std::memory_order_relaxed);
        s.requests = be->requests.load(std::memory_order_relaxed);
        s.failures = be->failures.load(std::memory_order_relaxed);
        for (int i = 0; i < 6; ++i) {
            s.responses[i] = be->responses[i].load(std::memory_order_relaxed);
        }
        m.backends.push_back(std::move(s));
    }
    for (const auto& [name, st] : vassals_) {
        control::VassalFigures f;
        f.vassal = name;
        for (int i = 0; i < 6; ++i) {
            f.responses[i] = st->responses[i].load(std::memory_order_relaxed);
        }
        f.router_errors = st->router_errors.load(std::memory_order_relaxed);
        f.in_flight = st->in_flight.load(std::memory_order_relaxed);
        f.in_flight_peak = std::max(st->in_flight_peak.exchange(f.in_flight), f.in_flight);
        st->latency.report(f.latency_bounds_ms, f.latency_buckets, f.latency_sum_us);
        st->queue_wait.report(f.queue_wait_bounds_ms, f.queue_wait_buckets, f.queue_wait_sum_us);
        st->cold_start.report(f.cold_start_bounds_ms, f.cold_start_buckets, f.cold_start_sum_us);
        for (int i = 0; i < control::kRejections; ++i) {
            f.rejected[i] = st->rejected[i].load(std::memory_order_relaxed);
        }
        if (auto q = queues_.find(name); q != queues_.end()) {
            f.queued = q->second->length();
        }
        m.vassals.push_back(std::move(f));
    }
    return m;
}

ControlChannel::ControlChannel(uv_loop_t* loop, int fd, Shared& shared,
                               std::vector<std::unique_ptr<RouterThread>>& threads,
                               std::function<void()> on_lost)
    : shared_(shared), threads_(threads), on_lost_(std::move(on_lost)), builder_(shared.options.lb),
      link_(
          loop, fd, [this](const std::string& line) { on_line(line); },
          [this](int status) {
              spdlog::warn("router: control socket closed ({}); shutting down",
                           status == UV_EOF ? "emperor gone" : uv_strerror(status));
              close();
              if (on_lost_) {
                  on_lost_();
              }
          }) {
    uv_async_init(loop, drained_.get(),
                  [](uv_async_t* a) { static_cast<ControlChannel*>(a->data)->send_drained(); });
    drained_->data = this;
    {
        std::lock_guard lock(shared_.drained_mu);
        shared_.drained_async = drained_.get();
    }
    uv_timer_init(loop, drain_timer_.get());
    drain_timer_->data = this;
    uv_timer_init(loop, stats_timer_.get());
    stats_timer_->data = this;
    uv_timer_start(
        stats_timer_.get(),
        [](uv_timer_t* t) { static_cast<ControlChannel*>(t->data)->send_stats(); }, 1000, 1000);
    send(control::encode_hello());
}

ControlChannel::~ControlChannel() {
    close();
}

void ControlChannel::close() {
    if (closed_) {
        return;
    }
    closed_ = true;
    {
        std::lock_guard lock(shared_.drained_mu);
        shared_.drained_async = nullptr;
    }
    link_.close();
    drained_.reset();
    stats_timer_.reset();
    drain_timer_.reset();
}

void ControlChannel::on_line(const std::string& line) {
    try {
        auto j = control::parse_line(line);
        std::string type = j["type"].get<std::string>();
        if (type == "acme_challenges") {
            auto m = control::decode_acme_challenges(j);
            shared_.acme_challenges.set(std::move(m.challenges));
            // Every thread reads the one set: from now on each of them answers these tokens.
            send(control::encode(control::AcmeChallengesAppliedMessage{m.version}));
            return;
        }
        if (type != "routes") {
            spdlog::warn("router: unknown control message type '{}'", type);
            return;
        }
        control::RoutesMessage m = control::decode_routes(j);
        if (shared_.tls != nullptr) {
            shared_.tls->set_routes(m.routes); // before the routes: a new vassal's name has its
                                               // certificate by the time requests reach it
        }
        std::vector<std::shared_ptr<Backend>> to_drain;
        auto snaps = builder_.build(m, threads_.size(), to_drain);
        const uint64_t version = snaps.empty() ? 0 : snaps.front()->version;
        for (size_t i = 0; i < threads_.size(); ++i) {
            threads_[i]->set_routes(std::move(snaps[i]));
        }
        if (!to_drain.empty()) {
            pending_drains_.push_back({version, std::move(to_drain)});
            check_drains();
        }
        if (!accepting_) {
            accepting_ = true;
            for (auto& w : threads_) {
                w->start_accepting();
            }
        }
        size_t backends = 0;
        for (const auto& r : m.routes) {
            backends += r.backends.size();
        }
        spdlog::debug("router: routes version {}: {} route(s), {} backend(s)", m.version,
                      m.routes.size(), backends);
    } catch (const std::exception& e) {
        spdlog::error("router: bad control message: {}", e.what());
    }
}

void ControlChannel::send(std::string text) {
    if (!closed_) {
        link_.send(std::move(text));
    }
}

void ControlChannel::check_drains() {
    // A backend is marked draining on the Backend itself only after every thread runs a snapshot
    // that no longer picks it; from then on the last request to leave it reports it drained.
    // Marking it earlier would let a thread still on the old snapshot find no backend at all.
    uint64_t applied = UINT64_MAX;
    for (const auto& w : threads_) {
        applied = std::min(applied, w->routes_version());
    }
    std::vector<control::DrainedMessage> idle;
    std::erase_if(pending_drains_, [&](PendingDrain& p) {
        if (p.version > applied) {
            return false;
        }
        for (auto& be : p.backends) {
            if (!be->draining.exchange(true) && be->in_flight.load() == 0) {
                idle.push_back({be->name, be->generation});
            }
        }
        return true;
    });
    for (const auto& m : idle) {
        send(control::encode(m));
    }
    if (!pending_drains_.empty() && !closed_) {
        uv_timer_start(
            drain_timer_.get(),
            [](uv_timer_t* t) { static_cast<ControlChannel*>(t->data)->check_drains(); }, 2, 0);
    }
}

void ControlChannel::send_drained() {
    std::vector<control::DrainedMessage> drained;
    std::vector<control::RecycleMessage> recycles;
    std::vector<std::string> demands;
    {
        std::lock_guard lock(shared_.drained_mu);
        drained.swap(shared_.drained);
        recycles.swap(shared_.recycles);
        demands.swap(shared_.demands);
    }
    for (const auto& m : drained) {
        send(control::encode(m));
    }
    for (const auto& m : recycles) {
        send(control::encode(m));
    }
    for (const auto& v : demands) {
        send(control::encode(control::DemandMessage{v}));
    }
}

void ControlChannel::send_stats() {
    control::StatsMessage m = builder_.stats();
    m.connections = shared_.connections.load(std::memory_order_relaxed);
    m.requests = shared_.requests.load(std::memory_order_relaxed);
    for (const auto& w : threads_) {
        m.thread_requests.push_back(w->requests());
        m.thread_connections.push_back(w->load());
        for (int s = 0; s < kUpstreamStates; ++s) {
            const auto state = static_cast<UpstreamState>(s);
            if (state != UpstreamState::Closing) {
                m.upstream_connections[std::string(to_string(state))] += w->upstreams(state);
            }
        }
    }
    send(control::encode(m));
}

} // namespace liege::router
