#include <cstdio>
#include <exception>

#include "commands.hpp"
#include "liege/log.hpp"

int main(int argc, char** argv) {
    CLI::App app{"liege: an app-server emperor and HTTP router"};
    app.require_subcommand(1);
    app.set_version_flag("--version", "liege 0.1.0");
    int exit_code = 0;
    liege::cli::add_run_command(app, exit_code);
    liege::cli::add_router_command(app, exit_code);
    liege::cli::add_check_command(app, exit_code);
    liege::cli::add_status_command(app, exit_code);
    liege::cli::add_reload_command(app, exit_code);
    liege::cli::add_top_command(app, exit_code);
    liege::cli::add_config_command(app, exit_code);
    liege::cli::add_vassal_commands(app, exit_code);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "liege: %s\n", e.what());
        return 1;
    }
    return exit_code;
}
