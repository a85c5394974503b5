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

namespace {

// setup_logging's timestamp, "2026-12-01T08:26:36.302": digits with '-', 'T', ':' and '.' in
// their places.
bool is_log_timestamp(std::string_view s) {
    constexpr std::string_view kShape = "dddd-dd-ddTdd:dd:dd.ddd";
    if (s.size() != kShape.size()) {
        return false;
    }
    for (size_t i = 0; i < s.size(); ++i) {
        const bool digit = s[i] >= '0' && s[i] <= '9';
        if (kShape[i] == 'd' ? !digit : s[i] != kShape[i]) {
            return false;
        }
    }
    return true;
}

} // namespace

ChildLogLine parse_child_log_line(std::string_view line) {
    ChildLogLine out;
    out.message = line;
    const auto ts_end = line.find(' ');
    if (ts_end == std::string_view::npos || !is_log_timestamp(line.substr(0, ts_end))) {
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
