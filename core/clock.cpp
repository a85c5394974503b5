#include "liege/clock.hpp"

#include <chrono>
#include <ctime>

namespace liege {

int64_t steady_now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

int64_t unix_now() {
    return static_cast<int64_t>(::time(nullptr));
}

} // namespace liege
