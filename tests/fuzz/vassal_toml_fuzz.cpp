// Vassal files: any bytes give a vassal or diagnostics with positions, never an exception or a
// crash.
#include <cstdint>
#include <optional>
#include <string>

#include "liege/vassal.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    const liege::EnvLookup no_env = [](const std::string&) { return std::optional<std::string>(); };
    const liege::VassalLoad load = liege::parse_vassal(text, "/fuzz/app.toml", no_env);
    if (!load.ok() && load.errors.empty()) {
        __builtin_trap(); // refused without saying why
    }
    return 0;
}
