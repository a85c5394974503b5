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

// Shared by the commands that talk to the admin API (status_command.cpp).
inline constexpr const char* kDefaultAdmin = "unix:./liege.sock";
// Colour on `fd` only for a terminal, and never when NO_COLOR is set (https://no-color.org).
bool use_colour(int fd);
// GET /status, parsed; nullopt and *error (a message for the user) on any failure.
std::optional<nlohmann::json> fetch_status(const std::string& admin, std::string* error);

} // namespace liege::cli
