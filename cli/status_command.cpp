// `liege status [--admin ADDR] [--json]`: the admin API's /status as a table (colour on a
// terminal unless NO_COLOR is set), or the document itself with --json.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "admin_client.hpp"
#include "commands.hpp"
#include "liege/status_table.hpp"

namespace liege::cli {

using namespace std::chrono_literals;

bool use_colour(int fd) {
    const char* no_colour = std::getenv("NO_COLOR");
    return ::isatty(fd) == 1 && (no_colour == nullptr || *no_colour == '\0');
}

std::optional<nlohmann::json> fetch_status(const std::string& admin, std::string* error) {
    try {
        AdminReply reply = admin_request(admin, "GET", "/status", 10s);
        if (reply.status != 200) {
            *error = "the admin API answered " + std::to_string(reply.status) + ": " + reply.body;
            return std::nullopt;
        }
        return nlohmann::json::parse(reply.body);
    } catch (const nlohmann::json::exception& e) {
        *error = std::string("the admin API's /status is not JSON: ") + e.what();
    } catch (const std::runtime_error& e) {
        *error = e.what();
    }
    return std::nullopt;
}

void add_status_command(CLI::App& app, int& exit_code) {
    struct Args {
        std::string admin; // --admin; see client_admin()
        bool json = false;
    };
    auto args = std::make_shared<Args>();
    auto* cmd = app.add_subcommand("status", "Show what runs: vassals, workers, load, errors");
    add_admin_option(*cmd, args->admin);
    cmd->add_flag("--json", args->json, "Print the admin API's /status document as it is");
    cmd->callback([args, &exit_code] {
        args->admin = client_admin(args->admin);
        std::string error;
        auto status = fetch_status(args->admin, &error);
        if (!status) {
            std::fprintf(stderr, "liege: %s\n", error.c_str());
            exit_code = 1;
            return;
        }
        std::string out;
        if (args->json) {
            out = status->dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
        } else {
            out = format_status(*status, {use_colour(STDOUT_FILENO), std::time(nullptr)});
        }
        std::fwrite(out.data(), 1, out.size(), stdout);
        exit_code = std::fflush(stdout) == 0 ? 0 : 1;
    });
}

} // namespace liege::cli
