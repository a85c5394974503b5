#include "refusal_log.hpp"

#include <algorithm>

#include <fmt/format.h>

namespace liege::router {

std::optional<std::string> RefusalLog::close(const std::string& vassal, Window& w, int64_t now_ms) {
    if (w.count == 0) {
        return std::nullopt;
    }
    std::stable_sort(w.reasons.begin(), w.reasons.end(),
                     [](const auto& a, const auto& b) { return a.second > b.second; });
    std::string why;
    for (const auto& [reason, n] : w.reasons) {
        why += fmt::format("{}{}: {}", why.empty() ? "" : ", ", reason, n);
    }
    const int64_t took = now_ms - w.start_ms;
    // Another refusal, or the caller's next look, may end a second late.
    const std::string span =
        took < kWindowMs * 3 / 2 ? "second" : fmt::format("{} s", (took + 500) / 1000);
    std::string out = fmt::format("{}: {} more request{} refused in the last {} ({}); last: {}",
                                  vassal.empty() ? "router" : "vassal " + vassal, w.count,
                                  w.count == 1 ? "" : "s", span, why, w.last);
    w = Window{};
    w.start_ms = now_ms;
    return out;
}

std::optional<std::string> RefusalLog::refused(std::string_view vassal, std::string_view reason,
                                               std::string_view line, int64_t now_ms) {
    auto it = windows_.find(vassal);
    std::optional<std::string> summary;
    if (it != windows_.end() && now_ms - it->second.start_ms >= kWindowMs) {
        summary = close(it->first, it->second, now_ms);
        if (!summary) {
            windows_.erase(it); // a quiet second: this one is logged at once
            it = windows_.end();
        }
    }
    if (it == windows_.end()) {
        windows_.emplace(std::string(vassal), Window{now_ms, 0, {}, {}});
        return std::string(line);
    }
    Window& w = it->second;
    ++w.count;
    auto r = std::find_if(w.reasons.begin(), w.reasons.end(),
                          [&](const auto& p) { return p.first == reason; });
    if (r == w.reasons.end()) {
        w.reasons.emplace_back(std::string(reason), 1);
    } else {
        ++r->second;
    }
    w.last.assign(line);
    return summary;
}

std::vector<std::string> RefusalLog::due(int64_t now_ms, bool all) {
    std::vector<std::string> out;
    for (auto it = windows_.begin(); it != windows_.end();) {
        if (!all && now_ms - it->second.start_ms < kWindowMs) {
            ++it;
            continue;
        }
        if (auto summary = close(it->first, it->second, now_ms)) {
            out.push_back(std::move(*summary));
            ++it;
        } else {
            it = windows_.erase(it);
        }
    }
    return out;
}

} // namespace liege::router
