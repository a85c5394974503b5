#include "commands.hpp"

namespace liege::cli {

void add_check_command(CLI::App& app, int& exit_code) {
    auto* cmd = app.add_subcommand("check", "Validate vassal files or a directory of them");
    cmd->callback([&exit_code] { exit_code = 2; });
}

} // namespace liege::cli
