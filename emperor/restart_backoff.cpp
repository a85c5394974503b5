#include "liege/restart_backoff.hpp"

#include <algorithm>

namespace liege {

using namespace std::chrono_literals;

std::chrono::milliseconds restart_backoff(int failures) {
    if (failures <= 1) {
        return 100ms;
    }
    int64_t ms = 100ll << std::min(failures - 1, 20);
    return std::chrono::milliseconds(std::min<int64_t>(ms, 30'000));
}

std::chrono::milliseconds RestartBackoff::failed(int64_t now_ms, int64_t healthy_since_ms) {
    if (healthy_since_ms != 0 && now_ms - healthy_since_ms >= kHealthyResetMs) {
        failures_ = 0;
    }
    ++failures_;
    return restart_backoff(failures_);
}

} // namespace liege
