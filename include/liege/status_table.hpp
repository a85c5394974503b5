// What `liege status` and `liege top` print: the admin API's /status document as a table, one
// row per vassal, with a summary of the emperor and the router above it and the vassals' last
// errors below. Pure functions, so the layout is tested without a running liege.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace liege {

// "512 B", "3.4 KiB", "12.0 MiB", "1.5 GiB"; "-" for a negative (unknown) size.
std::string format_bytes(int64_t bytes);
// "42s", "5m07s", "3h05m", "2d04h".
std::string format_uptime(int64_t seconds);
// Requests per second: "0", "0.5", "12.3", "1234".
std::string format_rate(double per_second);

struct TableStyle {
    bool colour = false;  // ANSI colours (only on a terminal, and only without NO_COLOR)
    int64_t now_unix = 0; // for "last error 3m ago"; 0 leaves the age out
};

// The vassal table: VASSAL STATE GEN WORKERS REQUESTS REQ/S ERRORS RESTARTS QUEUED RSS UPTIME,
// columns aligned on the text without colour codes. QUEUED is the requests waiting in the
// router for a free worker slot. Every line ends with '\n'.
std::string format_vassal_table(const nlohmann::json& status, const TableStyle& style);

// The summary lines, the table and the last errors.
std::string format_status(const nlohmann::json& status, const TableStyle& style);

} // namespace liege
