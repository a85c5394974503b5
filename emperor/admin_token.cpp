#include "liege/admin_token.hpp"

#include <openssl/crypto.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>

#include <fmt/format.h>

#include "liege/http_head.hpp"

namespace liege {

std::string read_admin_token(const std::filesystem::path& file) {
    const std::string name = file.string();
    struct stat st {};
    if (::stat(name.c_str(), &st) != 0) {
        throw std::invalid_argument(
            fmt::format("admin token file {}: {}", name, std::strerror(errno)));
    }
    if (!S_ISREG(st.st_mode)) {
        throw std::invalid_argument(fmt::format("admin token file {}: not a regular file", name));
    }
    if ((st.st_mode & 077) != 0) {
        throw std::invalid_argument(
            fmt::format("admin token file {}: mode {:04o} lets its group or others at it; "
                        "chmod 600 {}",
                        name, st.st_mode & 07777, name));
    }
    std::ifstream in(file, std::ios::binary);
    if (!in) {
        throw std::invalid_argument(
            fmt::format("admin token file {}: cannot read it: {}", name, std::strerror(errno)));
    }
    std::string token{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' ' ||
                              token.back() == '\t')) {
        token.pop_back();
    }
    if (token.size() < kMinAdminToken) {
        throw std::invalid_argument(fmt::format(
            "admin token file {}: the token must be at least {} characters (e.g. openssl rand "
            "-hex 32 > {})",
            name, kMinAdminToken, name));
    }
    for (unsigned char ch : token) {
        if (ch <= 0x20 || ch == 0x7f) {
            throw std::invalid_argument(fmt::format(
                "admin token file {}: the token holds a space or control character", name));
        }
    }
    return token;
}

std::optional<std::string_view> bearer_token(std::string_view authorization) {
    constexpr std::string_view kScheme = "bearer";
    if (authorization.size() <= kScheme.size() || authorization[kScheme.size()] != ' ' ||
        !http::iequals(authorization.substr(0, kScheme.size()), kScheme)) {
        return std::nullopt;
    }
    std::string_view token = authorization.substr(kScheme.size() + 1);
    while (!token.empty() && token.front() == ' ') {
        token.remove_prefix(1);
    }
    while (!token.empty() && (token.back() == ' ' || token.back() == '\t')) {
        token.remove_suffix(1);
    }
    if (token.empty()) {
        return std::nullopt;
    }
    return token;
}

bool token_matches(std::string_view expected, std::string_view given) {
    // The length is not the secret; the bytes are compared without an early exit.
    return expected.size() == given.size() &&
           CRYPTO_memcmp(expected.data(), given.data(), expected.size()) == 0;
}

} // namespace liege
