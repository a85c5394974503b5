#include "liege/router_settings.hpp"

#include <charconv>
#include <stdexcept>

#include "liege/duration.hpp"

namespace liege {

namespace {

enum class Kind { Duration, Size, Count };

struct Setting {
    std::string_view key;
    Kind kind;
    Millis RouterOptions::*duration = nullptr;
    uint64_t RouterOptions::*size = nullptr;
    unsigned RouterOptions::*count = nullptr;
    uint64_t min = 0; // smallest value allowed (ms, bytes or count)
};

constexpr uint64_t kMaxCount = 1'000'000;

const std::vector<Setting>& settings() {
    static const std::vector<Setting> table = {
        {"header_timeout", Kind::Duration, &RouterOptions::header_timeout, nullptr, nullptr, 1},
        {"keepalive_timeout", Kind::Duration, &RouterOptions::keepalive_timeout, nullptr, nullptr,
         1},
        {"connect_timeout", Kind::Duration, &RouterOptions::connect_timeout, nullptr, nullptr, 1},
        {"upstream_timeout", Kind::Duration, &RouterOptions::upstream_timeout, nullptr, nullptr, 1},
        {"upstream_idle_timeout", Kind::Duration, &RouterOptions::upstream_idle_timeout, nullptr,
         nullptr, 1},
        {"body_timeout", Kind::Duration, &RouterOptions::body_timeout, nullptr, nullptr, 1},
        {"shutdown_timeout", Kind::Duration, &RouterOptions::shutdown_timeout, nullptr, nullptr, 0},
        // The head must hold at least a request line and a Host header.
        {"header_max", Kind::Size, nullptr, &RouterOptions::max_header_size, nullptr, 256},
        {"body_max", Kind::Size, nullptr, &RouterOptions::max_body_size, nullptr, 0},
        {"body_buffer_size", Kind::Size, nullptr, &RouterOptions::body_buffer_size, nullptr, 0},
        {"body_buffer_max", Kind::Size, nullptr, &RouterOptions::body_buffer_max, nullptr, 0},
        {"max_tries", Kind::Count, nullptr, nullptr, &RouterOptions::max_tries, 1},
        {"idle_upstream_max", Kind::Count, nullptr, nullptr, &RouterOptions::max_idle_upstream, 0},
        {"max_conns_per_ip", Kind::Count, nullptr, nullptr, &RouterOptions::max_conns_per_ip, 0},
    };
    return table;
}

std::string known_keys() {
    std::string out;
    for (const auto& s : settings()) {
        out += (out.empty() ? "" : ", ") + std::string(s.key);
    }
    return out;
}

} // namespace

std::vector<std::string_view> router_setting_keys() {
    std::vector<std::string_view> keys;
    for (const auto& s : settings()) {
        keys.push_back(s.key);
    }
    return keys;
}

void apply_router_setting(RouterOptions& o, std::string_view key_value) {
    const std::string what = "--router-opt " + std::string(key_value);
    const size_t eq = key_value.find('=');
    if (eq == std::string_view::npos || eq == 0) {
        throw std::invalid_argument(what + ": expected KEY=VALUE (keys: " + known_keys() + ")");
    }
    const std::string_view key = key_value.substr(0, eq);
    const std::string_view value = key_value.substr(eq + 1);
    for (const auto& s : settings()) {
        if (s.key != key) {
            continue;
        }
        try {
            switch (s.kind) {
            case Kind::Duration: {
                const Millis d = parse_duration(value);
                if (static_cast<uint64_t>(d.count()) < s.min) {
                    throw std::invalid_argument("must be above zero");
                }
                o.*s.duration = d;
                break;
            }
            case Kind::Size: {
                const uint64_t n = parse_size(value);
                if (n < s.min) {
                    throw std::invalid_argument("must be at least " + std::to_string(s.min) +
                                                " bytes");
                }
                o.*s.size = n;
                break;
            }
            case Kind::Count: {
                unsigned n = 0;
                auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
                if (value.empty() || ec != std::errc{} || end != value.data() + value.size() ||
                    n > kMaxCount) {
                    throw std::invalid_argument("expected a whole number up to " +
                                                std::to_string(kMaxCount));
                }
                if (n < s.min) {
                    throw std::invalid_argument("must be at least " + std::to_string(s.min));
                }
                o.*s.count = n;
                break;
            }
            }
        } catch (const std::invalid_argument& e) {
            throw std::invalid_argument(what + ": " + e.what());
        }
        return;
    }
    throw std::invalid_argument(what + ": unknown key '" + std::string(key) +
                                "' (keys: " + known_keys() + ")");
}

nlohmann::json router_settings_json(const RouterOptions& o) {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& s : settings()) {
        const std::string key(s.key);
        switch (s.kind) {
        case Kind::Duration:
            j[key] = format_duration(o.*s.duration);
            break;
        case Kind::Size:
            j[key] = o.*s.size;
            break;
        case Kind::Count:
            j[key] = o.*s.count;
            break;
        }
    }
    return j;
}

} // namespace liege
