// The admin API's bearer token, shared by `liege run --admin-token-file FILE` and the clients
// (`liege status` and the rest: --admin-token-file or $LIEGE_ADMIN_TOKEN_FILE).
//
// Over a unix socket the file's permissions guard the admin API; over TCP anyone who can reach
// the port could reload every vassal, so there every request must carry
// `Authorization: Bearer TOKEN`. The token file is held to what ssh asks of a private key: a
// regular file that neither its group nor others may read or write.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace liege {

// The token in `file`: its content without the trailing newline or spaces. Throws
// std::invalid_argument with a message that names the file when it cannot be read, is not a
// regular file, is open to its group or others ("chmod 600 FILE"), is empty, shorter than
// kMinAdminToken bytes, or holds a space or control byte.
std::string read_admin_token(const std::filesystem::path& file);
inline constexpr std::size_t kMinAdminToken = 16;

// The token of an `Authorization: Bearer TOKEN` value (the scheme is case-insensitive), or
// nullopt for another scheme or none.
std::optional<std::string_view> bearer_token(std::string_view authorization);

// Whether `given` is `expected`, in a time that does not depend on where they differ.
bool token_matches(std::string_view expected, std::string_view given);

} // namespace liege
