// The router-emperor control protocol: any line is decoded or refused with an exception of the
// documented kinds; what decodes encodes to a line that decodes to the same encoding again.
#include <cstdint>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#include "liege/control.hpp"

using namespace liege::control;

namespace {

template <typename Decode> void round_trip(const nlohmann::json& j, Decode decode) {
    const std::string once = encode(decode(j));
    std::string line = once;
    while (!line.empty() && line.back() == '\n') {
        line.pop_back();
    }
    const std::string twice = encode(decode(parse_line(line)));
    if (once != twice) {
        __builtin_trap();
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view line(reinterpret_cast<const char*>(data), size);
    try {
        const nlohmann::json j = parse_line(line);
        const std::string type = j.at("type").get<std::string>();
        if (type == "routes") {
            round_trip(j, decode_routes);
        } else if (type == "drained") {
            round_trip(j, decode_drained);
        } else if (type == "stats") {
            round_trip(j, decode_stats);
        }
    } catch (const nlohmann::json::exception&) {
    } catch (const std::invalid_argument&) {
    }
    return 0;
}
