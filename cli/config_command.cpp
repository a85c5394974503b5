// `liege config NAME [--profile NAME] [--vassals DIR]`: the effective vassal, as the emperor
// would load it: _defaults.toml, the template (for NAME@INSTANCE), the file, then the profile,
// merged and printed as TOML with placeholders as written. Problems go to stderr as
// FILE:LINE:COL: error: MESSAGE (naming the layer that holds the key) and make the exit code 1.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "commands.hpp"
#include "liege/vassal.hpp"

namespace liege::cli {

void add_config_command(CLI::App& app, int& exit_code) {
    struct Args {
        std::string name;
        std::string profile;
        std::string vassals = "./vassals.d";
    };
    auto args = std::make_shared<Args>();
    auto* cmd = app.add_subcommand(
        "config", "Print the effective vassal: defaults, template, file and profile merged");
    cmd->add_option("name", args->name, "The vassal (its file name without .toml)")->required();
    cmd->add_option("--profile", args->profile, "Apply the vassal's [profile.NAME]");
    cmd->add_option("--vassals", args->vassals, "Directory of vassal files")->capture_default_str();
    cmd->callback([args, &exit_code] {
        const std::filesystem::path file =
            std::filesystem::path(args->vassals) / (args->name + ".toml");
        std::error_code ec;
        if (!std::filesystem::exists(file, ec)) {
            std::fprintf(stderr, "liege: no vassal '%s': %s does not exist\n", args->name.c_str(),
                         file.c_str());
            exit_code = 1;
            return;
        }
        VassalLoad load = load_vassal_file(file, process_env(), args->profile);
        for (const auto& d : load.errors) {
            std::fprintf(stderr, "%s\n", d.str().c_str());
        }
        if (!load.effective.empty()) {
            std::fwrite(load.effective.data(), 1, load.effective.size(), stdout);
            if (load.effective.back() != '\n') {
                std::fputc('\n', stdout);
            }
        }
        exit_code = load.ok() ? 0 : 1;
    });
}

} // namespace liege::cli
