// The router's warnings about refused requests (every 503: queue full, queue timeout, vassal
// failed, no backend), at most one line per vassal per second.
//
// A flood of refusals must not become a flood of log lines: with --log-dir, warnings still reach
// stderr, and one line per refused request buries everything else there. So the first refusal
// of a quiet period is logged at once, as it is (nobody waits a second to learn that the shop
// refuses requests), and those that follow within the next second are only counted. When that
// second is over, one summary line says how many more there were, why (a count per reason) and
// what the last one was; a vassal that keeps refusing gets one such line a second. A second that
// ends without a refusal makes the period quiet again.
//
// Pure: the caller passes the clock in, and logs what it is given back. Not thread-safe; the
// router's threads share one behind a mutex.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace liege::router {

class RefusalLog {
public:
    static constexpr int64_t kWindowMs = 1000;

    // A request of `vassal` ("" for none: a static router) refused for `reason` ("queue full"),
    // with `line` its warning, at `now_ms`. Returns what to log now: `line` itself when it is
    // the first of a quiet period, the summary of the second that just ended (this refusal
    // counts towards the next one), or nothing.
    std::optional<std::string> refused(std::string_view vassal, std::string_view reason,
                                       std::string_view line, int64_t now_ms);

    // The summaries of the seconds over by `now_ms` that no later refusal reported; the caller
    // asks every few hundred milliseconds. With `all` (the router stops), those of the seconds
    // still running too.
    std::vector<std::string> due(int64_t now_ms, bool all = false);

private:
    struct Window {
        int64_t start_ms = 0;
        uint64_t count = 0; // refusals not logged yet
        std::vector<std::pair<std::string, uint64_t>> reasons;
        std::string last;
    };
    // Ends `w`'s second: its summary, if it counted any refusal (the next second starts at
    // `now_ms`), else nullopt (the vassal is quiet again).
    static std::optional<std::string> close(const std::string& vassal, Window& w, int64_t now_ms);

    std::map<std::string, Window, std::less<>> windows_;
};

} // namespace liege::router
