// Each `liege` subcommand registers itself on the app; its callback stores the exit code.
#pragma once

#include <optional>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

namespace liege::cli {

void add_router_command(CLI::App& app, int& exit_code);
void add_check_command(CLI::App& app, int& exit_code);
void add_run_command(CLI::App& app, int& exit_code);
void add_status_command(CLI::App& app, int& exit_code);
void add_reload_command(CLI::App& app, int& exit_code);
void add_top_command(CLI::App& app, int& exit_code);
void add_config_command(CLI::App& app, int& exit_code);
void add_vassal_commands(CLI::App& app, int& exit_code); // stop, start, logs

// Shared by the commands that talk to the admin API (status_command.cpp).
// The admin address of `liege run` without --admin, for this user (liege/address.hpp).
std::string default_admin();
// What a client talks to: `flag` (--admin) when given, else $LIEGE_ADMIN, else default_admin().
std::string client_admin(const std::string& flag);
// Adds `--admin` to a client command, stored in `admin`, and `--admin-token-file`.
void add_admin_option(CLI::App& cmd, std::string& admin);
// The token file a client sends the token of: --admin-token-file, else
// $LIEGE_ADMIN_TOKEN_FILE; empty for none.
std::string client_admin_token_file();
// Colour on `fd` only for a terminal, and never when NO_COLOR is set (https://no-color.org).
bool use_colour(int fd);
// GET /status, parsed; nullopt and *error (a message for the user) on any failure.
std::optional<nlohmann::json> fetch_status(const std::string& admin, std::string* error);

} // namespace liege::cli
