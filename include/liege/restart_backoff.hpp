// How long a crashed worker waits before it is started again (DESIGN.md, "Lifecycle
// semantics"): 100 ms after the first failure, doubling with each consecutive one up to 30 s; a
// process that stayed healthy for a minute starts again from 100 ms.
//
// The router gets a shorter policy (kRouterBackoff): every app's requests wait in the listen
// backlog while it is down, so its wait stops growing at 1 s, and 10 s of serving make it
// healthy again. A router that crashes at once still costs only a start a second.
#pragma once

#include <chrono>
#include <cstdint>

namespace liege {

// The wait before restarting after `failures` consecutive failures (1 for the first), at most
// `cap_ms`.
std::chrono::milliseconds restart_backoff(int failures, int64_t cap_ms = 30'000);

struct BackoffPolicy {
    int64_t cap_ms = 30'000;
    int64_t healthy_reset_ms = 60'000;
};
inline constexpr BackoffPolicy kRouterBackoff{1'000, 10'000};

class RestartBackoff {
public:
    static constexpr int64_t kHealthyResetMs = 60'000;

    explicit RestartBackoff(BackoffPolicy policy = {}) : policy_(policy) {}

    // Counts a failure at `now_ms` and returns the wait before the restart. `healthy_since_ms`
    // is when the process last became healthy (0: it never did, or the failure is one that
    // does not forget, such as failing health checks).
    std::chrono::milliseconds failed(int64_t now_ms, int64_t healthy_since_ms = 0);
    int failures() const { return failures_; }

private:
    BackoffPolicy policy_;
    int failures_ = 0;
};

} // namespace liege
