// `liege check PATH...`: validate vassal files, or directories of them, the way the emperor
// would load them. Errors go to stderr as FILE:LINE:COL: error: MESSAGE and make the exit code
// 1; a clean run prints one summary line per vassal to stdout. Two vassals that claim the same
// host and path are reported as warnings (one of them can never be reached) without failing.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "commands.hpp"
#include "liege/route_table.hpp"
#include "liege/vassal.hpp"

namespace liege::cli {

namespace {

// An argument as a shell would need it to read it back as one word.
std::string shell_word(const std::string& arg) {
    bool plain =
        !arg.empty() && arg.find_first_not_of("abcdefghijklmnopqrstuvwxyz"
                                              "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                              "0123456789@%+=:,./_-${}") == std::string::npos;
    if (plain) {
        return arg;
    }
    std::string out = "'";
    for (char c : arg) {
        if (c == '\'') {
            out += "'\\''";
        } else {
            out += c;
        }
    }
    return out + "'";
}

std::string summary(const Vassal& v) {
    std::string hosts;
    for (const auto& h : v.hosts) {
        hosts += (hosts.empty() ? "" : ",") + h;
    }
    std::string command;
    for (const auto& arg : v.command) {
        command += (command.empty() ? "" : " ") + shell_word(arg);
    }
    const std::string concurrency =
        v.concurrency != 0 ? " concurrency=" + std::to_string(v.concurrency) : "";
    return v.name + ": workers=" + std::to_string(v.workers) + concurrency + " hosts=" + hosts +
           " path=" + v.path + " socket=" + std::string(to_string(v.socket)) +
           " command=" + command;
}

// Loads every PATH; returns the loads in argument order (directories sorted by file name).
std::vector<VassalLoad> load_all(const std::vector<std::string>& paths, int& failures) {
    std::vector<VassalLoad> loads;
    for (const std::string& path : paths) {
        std::error_code ec;
        if (std::filesystem::is_directory(path, ec)) {
            auto dir_loads = load_vassal_dir(path, ec);
            if (ec) {
                std::fprintf(stderr, "%s: error: cannot read directory: %s\n", path.c_str(),
                             ec.message().c_str());
                ++failures;
                continue;
            }
            if (dir_loads.empty()) {
                std::fprintf(stderr, "%s: note: no vassal files (*.toml) in this directory\n",
                             path.c_str());
            }
            for (auto& load : dir_loads) {
                loads.push_back(std::move(load));
            }
        } else {
            loads.push_back(load_vassal_file(path));
        }
    }
    return loads;
}

void warn_shadowed(const std::vector<const Vassal*>& vassals) {
    std::vector<RouteEntry> entries;
    for (size_t i = 0; i < vassals.size(); ++i) {
        entries.push_back({vassals[i]->name, 0, vassals[i]->hosts, vassals[i]->path, i});
    }
    RouteTable table(std::move(entries));
    for (const auto& s : table.shadowed()) {
        const Vassal& loser = *vassals[s.loser];
        const Vassal& winner = *vassals[s.winner];
        std::fprintf(stderr,
                     "%s:%u:%u: warning: vassal '%s' is never routed to for host \"%s\" path "
                     "\"%s\": '%s' (%s) claims the same host and path first\n",
                     loser.file.c_str(), loser.hosts_at.line, loser.hosts_at.column,
                     loser.name.c_str(), s.host.c_str(), s.path.c_str(), winner.name.c_str(),
                     winner.file.c_str());
    }
}

} // namespace

void add_check_command(CLI::App& app, int& exit_code) {
    auto paths = std::make_shared<std::vector<std::string>>();
    auto* cmd = app.add_subcommand("check", "Validate vassal files or a directory of them");
    cmd->add_option("paths", *paths, "Vassal files (NAME.toml) or directories of them")->required();
    cmd->callback([paths, &exit_code] {
        int failures = 0;
        std::vector<VassalLoad> loads = load_all(*paths, failures);
        size_t errors = 0;
        size_t bad_files = 0;
        std::vector<const Vassal*> vassals;
        for (const auto& load : loads) {
            for (const auto& d : load.errors) {
                std::fprintf(stderr, "%s\n", d.str().c_str());
            }
            errors += load.errors.size();
            bad_files += load.errors.empty() ? 0 : 1;
            if (load.vassal) {
                vassals.push_back(&*load.vassal);
            }
        }
        warn_shadowed(vassals);
        if (errors > 0 || failures > 0) {
            if (errors > 0) {
                std::fprintf(stderr, "%zu error%s in %zu file%s\n", errors, errors == 1 ? "" : "s",
                             bad_files, bad_files == 1 ? "" : "s");
            }
            exit_code = 1;
            return;
        }
        for (const Vassal* v : vassals) {
            std::printf("%s\n", summary(*v).c_str());
        }
        exit_code = 0;
    });
}

} // namespace liege::cli
