// ASCII case folding for protocol tokens (header names, host names): no locale, no libc call.
#pragma once

namespace liege {

constexpr char ascii_lower(char c) {
    return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + ('a' - 'A')) : c;
}

} // namespace liege
