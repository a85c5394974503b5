// What every router thread reads: options, process-wide figures, the access-log files, and the
// drain reports going back to the control thread. Nothing else is shared between threads except
// the Backend figures (atomics) and immutable route snapshots.
#pragma once

#include <uv.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "access_log.hpp"
#include "acme_challenges.hpp"
#include "conns_per_address.hpp"
#include "liege/balancer.hpp"
#include "liege/clock.hpp"
#include "liege/control.hpp"
#include "liege/router.hpp"
#include "refusal_log.hpp"
#include "tls_context.hpp"

namespace liege::router {

class RouterThread;

struct Shared {
    explicit Shared(RouterOptions o)
        : options(std::move(o)), per_address(options.max_conns_per_ip) {}
    RouterOptions options;
    ConnsPerAddress per_address; // max_conns_per_ip
    std::atomic<uint64_t> requests{0};
    std::atomic<int64_t> connections{0};
    std::vector<RouterThread*> threads; // every thread by index, filled before any starts
    AccessLogFiles logs;
    // The certificates, when the router has HTTPS listeners (null otherwise).
    std::unique_ptr<TlsStore> tls;
    // The HTTP-01 tokens the emperor named (answered on the plain listeners).
    AcmeChallenges acme_challenges;
    // The port a 308 to https names (0: the scheme's own, 443).
    uint16_t https_port = 0;

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
    // A worker to replace: it reached its max_requests, or a request on it timed out.
    void report_recycle(const Backend& b, control::RecycleReason why) {
        std::lock_guard lock(drained_mu);
        recycles.push_back({b.name, b.generation, why});
        if (drained_async != nullptr) {
            uv_async_send(drained_async);
        }
    }
    // A request of `vassal` waits with no worker serving it.
    void report_demand(const std::string& vassal) {
        std::lock_guard lock(drained_mu);
        if (std::find(demands.begin(), demands.end(), vassal) == demands.end()) {
            demands.push_back(vassal);
        }
        if (drained_async != nullptr) {
            uv_async_send(drained_async);
        }
    }
    // What goes back to the emperor, under drained_mu.
    std::mutex drained_mu;
    std::vector<control::DrainedMessage> drained;
    std::vector<control::RecycleMessage> recycles;
    std::vector<std::string> demands;
    uv_async_t* drained_async = nullptr; // the control thread's; null without an emperor

    // The warning of a request refused with 503 (`line`): logged now if it is the first of a
    // quiet second for its vassal, else counted in the summary (refusal_log.hpp).
    void log_refusal(std::string_view vassal, std::string_view reason, std::string_view line) {
        std::optional<std::string> now;
        {
            std::lock_guard lock(refusals_mu);
            now = refusals.refused(vassal, reason, line, steady_now_ms());
        }
        if (now) {
            spdlog::warn("{}", *now);
        }
    }
    // The summaries of the seconds that are over; every router thread asks now and then, and
    // the router once more for all of them (`all`) when it stops.
    void log_refusal_summaries(bool all = false) {
        std::vector<std::string> lines;
        {
            std::lock_guard lock(refusals_mu);
            lines = refusals.due(steady_now_ms(), all);
        }
        for (const auto& l : lines) {
            spdlog::warn("{}", l);
        }
    }
    std::mutex refusals_mu;
    RefusalLog refusals;
};

} // namespace liege::router
