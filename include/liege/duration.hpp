// Durations ("250ms", "2s", "1m30s") and sizes ("512", "64k", "10M") as users write them.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace liege {

using Millis = std::chrono::milliseconds;

// Throws std::invalid_argument saying what was expected.
Millis parse_duration(std::string_view text);
uint64_t parse_size(std::string_view text);

std::string format_duration(Millis d);

} // namespace liege
