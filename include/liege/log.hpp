// Logging setup shared by every subcommand: spdlog to stderr, tagged by component.
#pragma once

#include <string_view>

#include <spdlog/spdlog.h>

namespace liege {

// Installs the default logger ("liege") writing to stderr; level is one of spdlog's names.
void setup_logging(std::string_view level = "info");

// A line another liege process (the router) logged through setup_logging's format,
// "TIMESTAMP LEVEL MESSAGE", taken apart so that it can be logged again at its own level.
struct ChildLogLine {
    spdlog::level::level_enum level = spdlog::level::info;
    std::string_view message;
};
// A line not in that format (an access log line on stderr, a sanitizer's report) keeps its
// whole text and level info, as the emperor relayed every line before it read levels. A child
// that crashes is reported by the emperor itself, at error level.
ChildLogLine parse_child_log_line(std::string_view line);

} // namespace liege
