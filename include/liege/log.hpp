// Logging setup shared by every subcommand: spdlog to stderr, tagged by component.
#pragma once

#include <string_view>

#include <spdlog/spdlog.h>

namespace liege {

// Installs the default logger ("liege") writing to stderr; level is one of spdlog's names.
void setup_logging(std::string_view level = "info");

} // namespace liege
