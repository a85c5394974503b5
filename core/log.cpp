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

} // namespace liege
