// How long a crashed worker (or router) waits before it is started again (DESIGN.md,
// "Lifecycle semantics"): 100 ms after the first failure, doubling with each consecutive one up
// to 30 s; a process that stayed healthy for a minute starts again from 100 ms.
#pragma once

#include <chrono>
#include <cstdint>

namespace liege {

// The wait before restarting after `failures` consecutive failures (1 for the first).
std::chrono::milliseconds restart_backoff(int failures);

class RestartBackoff {
public:
    static constexpr int64_t kHealthyResetMs = 60'000;

    // Counts a failure at `now_ms` and returns the wait before the restart. `healthy_since_ms`
    // is when the process last became healthy (0: it never did, or the failure is one that
    // does not forget, such as failing health checks).
    std::chrono::milliseconds failed(int64_t now_ms, int64_t healthy_since_ms = 0);
    int failures() const { return failures_; }

private:
    int failures_ = 0;
};

} // namespace liege
