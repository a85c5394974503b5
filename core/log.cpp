#include "liege/log.hpp"

#include <spdlog/sinks/stdout_sinks.h>

namespace liege {

void setup_logging(std::string_view level) {
    auto logger = spdlog::stderr_logger_mt("liege");
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
    logger->set_level(spdlog::level::from_str(std::string(level)));
    logger->flush_on(spdlog::level::trace);
    spdlog::set_default_logger(logger);
}

ChildLogLine parse_child_log_line(std::string_view line) {
    ChildLogLine out;
    out.message = line;
    // The timestamp starts with the year's digits and has no space.
    if (line.empty() || line[0] < '0' || line[0] > '9') {
        return out;
    }
    const auto ts_end = line.find(' ');
    if (ts_end == std::string_view::npos) {
        return out;
    }
    const auto level_start = ts_end + 1;
    const auto level_end = line.find(' ', level_start);
    if (level_end == std::string_view::npos) {
        return out;
    }
    const std::string_view name = line.substr(level_start, level_end - level_start);
    for (int i = spdlog::level::trace; i < spdlog::level::off; ++i) {
        const auto level = static_cast<spdlog::level::level_enum>(i);
        const auto known = spdlog::level::to_string_view(level); // as %l prints it
        if (name == std::string_view(known.data(), known.size())) {
            out.level = level;
            out.message = line.substr(level_end + 1);
            return out;
        }
    }
    return out;
}

} // namespace liege
