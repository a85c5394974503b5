#include "liege/restart_backoff.hpp"

#include <algorithm>

namespace liege {

using namespace std::chrono_literals;

std::chrono::milliseconds restart_backoff(int failures, int64_t cap_ms) {
    if (failures <= 1) {
        return std::chrono::milliseconds(std::min<int64_t>(100, cap_ms));
    }
    int64_t ms = 100ll << std::min(failures - 1, 20);
    return std::chrono::milliseconds(std::min<int64_t>(ms, cap_ms));
}

std::chrono::milliseconds RestartBackoff::failed(int64_t now_ms, int64_t healthy_since_ms) {
    if (healthy_since_ms != 0 && now_ms - healthy_since_ms >= policy_.healthy_reset_ms) {
        failures_ = 0;
    }
    ++failures_;
    return restart_backoff(failures_, policy_.cap_ms);
}

} // namespace liege
