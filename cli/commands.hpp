// Each `liege` subcommand registers itself on the app; its callback stores the exit code.
#pragma once

#include <CLI/CLI.hpp>

namespace liege::cli {

void add_router_command(CLI::App& app, int& exit_code);
void add_check_command(CLI::App& app, int& exit_code);
void add_run_command(CLI::App& app, int& exit_code);

} // namespace liege::cli
