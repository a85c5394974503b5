#include "liege/duration.hpp"

#include <cctype>
#include <charconv>
#include <stdexcept>

namespace liege {

Millis parse_duration(std::string_view text) {
    auto bad = [&] {
        return std::invalid_argument("invalid duration '" + std::string(text) +
                                     "': expected a number with a unit, like 500ms, 2s, 5m, 1h");
    };
    if (text.empty()) {
        throw bad();
    }
    double total_ms = 0;
    std::string_view rest = text;
    while (!rest.empty()) {
        size_t digits = 0;
        while (digits < rest.size() &&
               (std::isdigit(static_cast<unsigned char>(rest[digits])) || rest[digits] == '.')) {
            ++digits;
        }
        if (digits == 0) {
            throw bad();
        }
        double value = 0;
        auto [end, ec] = std::from_chars(rest.data(), rest.data() + digits, value);
        if (ec != std::errc{} || end != rest.data() + digits) {
            throw bad();
        }
        rest.remove_prefix(digits);
        size_t unit_len = 0;
        while (unit_len < rest.size() && std::isalpha(static_cast<unsigned char>(rest[unit_len]))) {
            ++unit_len;
        }
        std::string_view unit = rest.substr(0, unit_len);
        rest.remove_prefix(unit_len);
        double scale = 0;
        if (unit == "ms") {
            scale = 1;
        } else if (unit == "s") {
            scale = 1000;
        } else if (unit == "m") {
            scale = 60'000;
        } else if (unit == "h") {
            scale = 3'600'000;
        } else {
            throw bad();
        }
        total_ms += value * scale;
    }
    return Millis(static_cast<int64_t>(total_ms + 0.5));
}

uint64_t parse_size(std::string_view text) {
    auto bad = [&] {
        return std::invalid_argument("invalid size '" + std::string(text) +
                                     "': expected a number of bytes with an optional k, M or G");
    };
    uint64_t value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || ec != std::errc{}) {
        throw bad();
    }
    std::string_view unit(end, text.data() + text.size() - end);
    uint64_t scale = 1;
    if (unit.empty() || unit == "b" || unit == "B") {
        scale = 1;
    } else if (unit == "k" || unit == "K" || unit == "KiB" || unit == "kB") {
        scale = 1024;
    } else if (unit == "m" || unit == "M" || unit == "MiB" || unit == "MB") {
        scale = 1024 * 1024;
    } else if (unit == "g" || unit == "G" || unit == "GiB" || unit == "GB") {
        scale = 1024ull * 1024 * 1024;
    } else {
        throw bad();
    }
    return value * scale;
}

std::string format_duration(Millis d) {
    auto ms = d.count();
    if (ms % 3'600'000 == 0 && ms != 0) {
        return std::to_string(ms / 3'600'000) + "h";
    }
    if (ms % 60'000 == 0 && ms != 0) {
        return std::to_string(ms / 60'000) + "m";
    }
    if (ms % 1000 == 0) {
        return std::to_string(ms / 1000) + "s";
    }
    return std::to_string(ms) + "ms";
}

} // namespace liege
