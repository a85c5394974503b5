// Where the admin API is: the same default for `liege run` and its clients, so `liege status`
// reaches the emperor from any directory; LIEGE_ADMIN points clients elsewhere.
#include <unistd.h>

#include <cstdlib>

#include "commands.hpp"
#include "liege/address.hpp"

namespace liege::cli {

std::string default_admin() {
    return default_admin_address(static_cast<unsigned>(::geteuid()),
                                 std::getenv("XDG_RUNTIME_DIR"));
}

std::string client_admin(const std::string& flag) {
    if (!flag.empty()) {
        return flag;
    }
    if (const char* env = std::getenv("LIEGE_ADMIN"); env != nullptr && env[0] != '\0') {
        return env;
    }
    return default_admin();
}

namespace {

// One client command runs per process: its --admin-token-file, for admin_request().
std::string& token_file_flag() {
    static std::string file;
    return file;
}

} // namespace

void add_admin_option(CLI::App& cmd, std::string& admin) {
    cmd.add_option("--admin", admin,
                   "Admin API address (default: $LIEGE_ADMIN, else " + default_admin() + ")");
    cmd.add_option("--admin-token-file", token_file_flag(),
                   "File with the admin API's bearer token, as given to liege run (default: "
                   "$LIEGE_ADMIN_TOKEN_FILE)");
}

std::string client_admin_token_file() {
    if (!token_file_flag().empty()) {
        return token_file_flag();
    }
    if (const char* env = std::getenv("LIEGE_ADMIN_TOKEN_FILE"); env != nullptr && *env != '\0') {
        return env;
    }
    return {};
}

} // namespace liege::cli
