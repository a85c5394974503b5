#include "liege/status_table.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include <fmt/format.h>

namespace liege {

using nlohmann::json;

namespace {

constexpr const char* kReset = "\033[0m";
constexpr const char* kBold = "\033[1m";
constexpr const char* kDim = "\033[2m";
constexpr const char* kRed = "\033[31m";
constexpr const char* kGreen = "\033[32m";
constexpr const char* kYellow = "\033[33m";

// Fields read defensively: an older or newer liege may leave one out or make it null.
int64_t integer(const json& j, const char* key) {
    if (!j.is_object()) {
        return 0;
    }
    auto it = j.find(key);
    if (it == j.end() || !it->is_number()) {
        return 0;
    }
    return it->is_number_float() ? static_cast<int64_t>(it->get<double>()) : it->get<int64_t>();
}

double real(const json& j, const char* key) {
    if (!j.is_object()) {
        return 0;
    }
    auto it = j.find(key);
    return it != j.end() && it->is_number() ? it->get<double>() : 0.0;
}

std::string text(const json& j, const char* key, std::string fallback = "") {
    if (!j.is_object()) {
        return fallback;
    }
    auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : fallback;
}

const json& array(const json& j, const char* key) {
    static const json kEmpty = json::array();
    if (!j.is_object()) {
        return kEmpty;
    }
    auto it = j.find(key);
    return it != j.end() && it->is_array() ? *it : kEmpty;
}

struct Cell {
    std::string text;
    const char* colour = nullptr; // nullptr = none
    bool right = false;           // numbers are right-aligned
};

const char* state_colour(const std::string& state) {
    if (state == "running" || state == "ready") {
        return kGreen;
    }
    if (state == "starting" || state == "reloading" || state == "draining") {
        return kYellow;
    }
    if (state == "failed" || state == "backoff") {
        return kRed;
    }
    if (state == "stopping" || state == "stopped") {
        return kDim;
    }
    return nullptr;
}

std::string ago(const json& v, const char* key, const TableStyle& style) {
    if (style.now_unix == 0 || integer(v, key) == 0) {
        return "";
    }
    return format_uptime(style.now_unix - integer(v, key)) + " ago";
}

// Worker output can hold anything: control characters (escape sequences) are not passed to the
// terminal.
std::string printable(std::string s) {
    for (char& c : s) {
        if ((static_cast<unsigned char>(c) < 0x20 && c != '\t') || c == 0x7f) {
            c = '?';
        }
    }
    return s;
}

// "shop: last error (3m ago): ..." in red, or once a later generation (or the worker itself)
// serves again, "shop: resolved error (15m ago, resolved 14m ago): ..." dimmed: an error that is
// over is kept, but not shown as the vassal's present.
std::string format_last_error(const json& v, const std::string& name, const std::string& error,
                              const TableStyle& style) {
    const bool resolved = v.is_object() && v.value("last_error_resolved", false);
    const std::string when = ago(v, "last_error_time", style);
    std::string age;
    if (resolved) {
        const std::string fixed = ago(v, "last_error_resolved_time", style);
        if (!when.empty() || !fixed.empty()) {
            age = " (" + when + (when.empty() || fixed.empty() ? "" : ", ") +
                  (fixed.empty() ? "" : "resolved " + fixed) + ")";
        }
    } else if (!when.empty()) {
        age = " (" + when + ")";
    }
    if (resolved) {
        const std::string line = fmt::format("{}: resolved error{}: {}", name, age, error);
        return style.colour ? kDim + line + kReset + "\n" : line + "\n";
    }
    return fmt::format("{}{}{}: last error{}: {}\n", style.colour ? kRed : "", name,
                       style.colour ? kReset : "", age, error);
}

} // namespace

std::string format_bytes(int64_t bytes) {
    if (bytes < 0) {
        return "-";
    }
    if (bytes < 1024) {
        return fmt::format("{} B", bytes);
    }
    static constexpr std::array<const char*, 4> kUnits = {"KiB", "MiB", "GiB", "TiB"};
    double value = static_cast<double>(bytes) / 1024.0;
    size_t unit = 0;
    while (value >= 1024.0 && unit + 1 < kUnits.size()) {
        value /= 1024.0;
        ++unit;
    }
    return fmt::format("{:.1f} {}", value, kUnits[unit]);
}

std::string format_uptime(int64_t seconds) {
    if (seconds < 0) {
        seconds = 0;
    }
    if (seconds < 60) {
        return fmt::format("{}s", seconds);
    }
    if (seconds < 3600) {
        return fmt::format("{}m{:02}s", seconds / 60, seconds % 60);
    }
    if (seconds < 86400) {
        return fmt::format("{}h{:02}m", seconds / 3600, seconds % 3600 / 60);
    }
    return fmt::format("{}d{:02}h", seconds / 86400, seconds % 86400 / 3600);
}

std::string format_rate(double per_second) {
    if (!(per_second > 0.0) || std::isinf(per_second)) {
        return "0";
    }
    if (per_second < 100.0) {
        std::string s = fmt::format("{:.1f}", per_second);
        if (s.ends_with(".0")) {
            s.resize(s.size() - 2);
        }
        return s;
    }
    return fmt::format("{:.0f}", per_second);
}

std::string format_vassal_table(const json& status, const TableStyle& style) {
    // QUEUED and SCALE come after the columns earlier versions printed, which keep their
    // places. SCALE is a pool's MIN-MAX workers (WORKERS has those ready of those it runs now).
    static const std::vector<std::string> kHeads = {"VASSAL",   "STATE", "GEN",    "WORKERS",
                                                    "REQUESTS", "REQ/S", "ERRORS", "RESTARTS",
                                                    "QUEUED",   "RSS",   "UPTIME", "SCALE"};
    std::vector<std::vector<Cell>> rows;
    for (const json& v : array(status, "vassals")) {
        const std::string state = text(v, "state", "?");
        const json& workers = array(v, "workers");
        int64_t ready = integer(v, "workers_ready");
        int64_t total = integer(v, "workers_total");
        if (!v.contains("workers_ready")) {
            ready = std::count_if(workers.begin(), workers.end(),
                                  [](const json& w) { return text(w, "state") == "ready"; });
        }
        if (!v.contains("workers_total")) {
            total = static_cast<int64_t>(workers.size());
        }
        const int64_t errors = integer(v, "errors");
        const int64_t queued = integer(v, "queued");
        const char* workers_colour = ready >= total ? nullptr : ready == 0 ? kRed : kYellow;
        std::string scale = "-";
        if (v.contains("scale") && v["scale"].is_object()) {
            scale = fmt::format("{}-{}", integer(v["scale"], "min"), integer(v["scale"], "max"));
        }
        rows.push_back({
            {text(v, "name", "?"), nullptr, false},
            {state, state_colour(state), false},
            {std::to_string(integer(v, "generation")), nullptr, true},
            {fmt::format("{}/{}", ready, total), workers_colour, true},
            {std::to_string(integer(v, "requests")), nullptr, true},
            {format_rate(real(v, "requests_per_second")), nullptr, true},
            {std::to_string(errors), errors > 0 ? kRed : nullptr, true},
            {std::to_string(integer(v, "restarts")), integer(v, "restarts") > 0 ? kYellow : nullptr,
             true},
            {std::to_string(queued), queued > 0 ? kYellow : nullptr, true},
            {format_bytes(v.contains("rss_bytes") ? integer(v, "rss_bytes") : -1), nullptr, true},
            {format_uptime(integer(v, "uptime_seconds")), nullptr, true},
            {scale, nullptr, true},
        });
    }
    std::vector<size_t> width(kHeads.size());
    for (size_t i = 0; i < kHeads.size(); ++i) {
        width[i] = kHeads[i].size();
        for (const auto& row : rows) {
            width[i] = std::max(width[i], row[i].text.size());
        }
    }
    std::string out;
    auto put = [&](const Cell& cell, size_t i) {
        if (i != 0) {
            out += "  ";
        }
        const size_t pad = width[i] - cell.text.size();
        const bool last = i + 1 == kHeads.size();
        if (cell.right) {
            out.append(pad, ' ');
        }
        if (style.colour && cell.colour != nullptr) {
            out += cell.colour;
            out += cell.text;
            out += kReset;
        } else {
            out += cell.text;
        }
        if (!cell.right && !last) {
            out.append(pad, ' ');
        }
    };
    if (style.colour) {
        out += kBold;
    }
    for (size_t i = 0; i < kHeads.size(); ++i) {
        // Headings line up with their column: right-aligned over numbers.
        put({kHeads[i], nullptr, i >= 2}, i);
    }
    if (style.colour) {
        out += kReset;
    }
    out += '\n';
    for (const auto& row : rows) {
        for (size_t i = 0; i < row.size(); ++i) {
            put(row[i], i);
        }
        out += '\n';
    }
    if (rows.empty()) {
        out += "(no vassals)\n";
    }
    return out;
}

std::string format_status(const json& status, const TableStyle& style) {
    const json empty = json::object();
    const json& e = status.contains("emperor") ? status["emperor"] : empty;
    const json& r = status.contains("router") ? status["router"] : empty;
    std::string out;
    out +=
        fmt::format("emperor pid {}, up {}, {} vassal(s)", integer(e, "pid"),
                    format_uptime(integer(e, "uptime_seconds")), array(status, "vassals").size());
    if (e.contains("rss_bytes")) {
        out += ", RSS " + format_bytes(integer(e, "rss_bytes"));
    }
    if (!text(e, "admin").empty()) {
        out += ", admin " + text(e, "admin");
    }
    out += '\n';
    out += fmt::format("router pid {}, {} connection(s), {} request(s), {} req/s",
                       integer(r, "pid"), integer(r, "connections"), integer(r, "requests"),
                       format_rate(real(r, "requests_per_second")));
    const json& threads = array(r, "thread_requests");
    const json& rates = array(r, "thread_requests_per_second");
    if (!threads.empty()) {
        out += ", per thread:";
        for (size_t i = 0; i < threads.size(); ++i) {
            out += fmt::format(" {}", threads[i].is_number() ? threads[i].get<int64_t>() : 0);
            if (i < rates.size() && rates[i].is_number()) {
                out += fmt::format(" ({}/s)", format_rate(rates[i].get<double>()));
            }
        }
    }
    out += "\n\n";
    out += format_vassal_table(status, style);
    bool first = true;
    for (const json& v : array(status, "vassals")) {
        const std::string error = text(v, "last_error");
        const json& output = array(v, "last_output");
        if (error.empty() && output.empty()) {
            continue;
        }
        if (first) {
            out += '\n';
            first = false;
        }
        const std::string name = text(v, "name", "?");
        if (!error.empty()) {
            out += format_last_error(v, name, error, style);
        }
        // A failed vassal's workers' last words: why it does not start, without `liege logs`.
        for (const json& line : output) {
            if (line.is_string()) {
                out += "  " + printable(line.get<std::string>()) + "\n";
            }
        }
    }
    return out;
}

} // namespace liege
