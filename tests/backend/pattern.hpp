// The bytes the test backend generates for /bytes, /chunked and /close-delimited.
//
// Byte i of every generated body is kAlphabet[i % kPeriod]. The period is prime and printable so
// a dropped, repeated or reordered piece anywhere in a large body shows up as a mismatch, and a
// failing comparison is readable. The integration tests include this header to verify bodies.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace liege::test {

inline constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz012345678";
inline constexpr std::size_t kPeriod = sizeof(kAlphabet) - 1; // 61, a prime

inline char pattern_byte(uint64_t offset) {
    return kAlphabet[offset % kPeriod];
}

// A buffer of `size + kPeriod` pattern bytes starting at offset 0: the `n <= size` bytes at
// absolute offset `o` are the `n` bytes starting at `data() + o % kPeriod`.
inline std::string pattern_window(std::size_t size) {
    std::string s(size + kPeriod, '\0');
    for (std::size_t i = 0; i < s.size(); ++i) {
        s[i] = pattern_byte(i);
    }
    return s;
}

} // namespace liege::test
