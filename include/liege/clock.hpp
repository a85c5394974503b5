// The clocks both the emperor and the router read.
#pragma once

#include <cstdint>

namespace liege {

// Milliseconds of the monotonic clock: for timeouts, backoffs and rates, never for display.
int64_t steady_now_ms();
// Seconds since the epoch: for timestamps users read (/status).
int64_t unix_now();

} // namespace liege
