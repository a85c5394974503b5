// `liege check PATH...`: validate vassal files, or directories of them, the way the emperor
// would load them. Errors go to stderr as FILE:LINE:COL: error: MESSAGE and make the exit code
// 1; a clean run prints one summary line per vassal to stdout. Two vassals that claim the same
// host and path are reported as warnings (one of them can never be reached) without failing.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <system_error>
#include <vector>

#include <fmt/format.h>

#include "commands.hpp"
#include "liege/containment.hpp"
#include "liege/isolation.hpp"
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

// " user=www group=www nofile=4096 memory=1073741824 cpu=150% pids=64", as far as set, and
// " no_new_privs=false" when it is off.
std::string isolation(const Vassal& v) {
    std::string out;
    if (!v.identity.user.empty()) {
        std::string user = v.identity.user;
        if (auto r = resolve_credentials(v.identity, v.file_uid, v.file_gid, EmperorIdentity{0, 0});
            r.credentials) {
            user = r.credentials->user; // "@owner" as whom it stands for
        }
        out += " user=" + user;
    }
    if (!v.identity.group.empty()) {
        out += " group=" + v.identity.group;
    }
    const Limits& l = v.limits;
    for (const auto& [name, value] :
         {std::pair{"nofile", l.nofile}, std::pair{"nproc", l.nproc}, std::pair{"core", l.core}}) {
        if (value) {
            out += std::string(" ") + name + "=" +
                   (*value == Limits::kUnlimited ? "unlimited" : std::to_string(*value));
        }
    }
    if (l.memory != 0) {
        out += " memory=" + std::to_string(l.memory);
    }
    if (l.cpu != 0) {
        out += " cpu=" + std::to_string(l.cpu) + "%";
    }
    if (l.pids != 0) {
        out += " pids=" + std::to_string(l.pids);
    }
    if (!v.identity.no_new_privs) {
        out += " no_new_privs=false";
    }
    return out;
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
    if (v.daemon()) {
        return v.name + ": daemon workers=" + std::to_string(v.workers) + " command=" + command;
    }
    const std::string concurrency =
        v.concurrency != 0 ? " concurrency=" + std::to_string(v.concurrency) : "";
    // A scaled pool: its bounds, and how long a worker may stay idle ("workers=0-8 idle=300s").
    const std::string workers =
        v.scale.scaled ? fmt::format("{}-{} idle={}s", v.scale.min, v.scale.max,
                                     std::chrono::duration<double>(v.scale.idle).count())
                       : std::to_string(v.workers);
    return v.name + ": workers=" + workers + concurrency + " hosts=" + hosts + " path=" + v.path +
           " socket=" + std::string(to_string(v.socket)) + isolation(v) + " command=" + command;
}

// A file whose name ends in ".toml" but for case ("Static.TOML") is not a vassal file: the
// emperor ignores it, which is never what its author meant.
void warn_case_variants(const std::string& dir, int& failures) {
    std::error_code ec;
    for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (is_miscased_vassal_file_name(name)) {
            const std::string fixed = name.substr(0, name.size() - 5) + ".toml";
            std::fprintf(stderr,
                         "%s:1:1: error: not a vassal file: only names ending in \".toml\" "
                         "(lower case) are loaded, so liege ignores this one; rename it to %s\n",
                         it->path().c_str(), fixed.c_str());
            ++failures;
        }
    }
}

// A template (NAME@.toml) that no instance file uses yet is checked as an instance of it would
// load, so that its mistakes show now and not when a branch's instance first appears.
void check_unused_templates(const std::string& dir, const std::vector<VassalLoad>& loads,
                            const std::string& profile, int& failures) {
    namespace fs = std::filesystem;
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (!is_vassal_layer_file_name(name) || name == "_defaults.toml") {
            continue;
        }
        const std::string prefix = name.substr(0, name.size() - 5); // "shop@"
        bool used = false;
        for (const auto& load : loads) {
            used = used || load.file.filename().string().starts_with(prefix);
        }
        if (used) {
            continue;
        }
        VassalLoad load = load_template_instance(it->path(), "example", process_env(), profile);
        for (const Diagnostic& d : load.errors) {
            std::fprintf(stderr,
                         "%s (checked as an instance %sexample: no instance file uses it yet)\n",
                         d.str().c_str(), prefix.c_str());
            failures += d.warning ? 0 : 1;
        }
    }
}

// Loads every PATH; returns the loads in argument order (directories sorted by file name).
std::vector<VassalLoad> load_all(const std::vector<std::string>& paths, const std::string& profile,
                                 int& failures) {
    std::vector<VassalLoad> loads;
    for (const std::string& path : paths) {
        std::error_code ec;
        if (std::filesystem::is_directory(path, ec)) {
            auto dir_loads = load_vassal_dir(path, ec, process_env(), profile);
            if (ec) {
                std::fprintf(stderr, "%s: error: cannot read directory: %s\n", path.c_str(),
                             ec.message().c_str());
                ++failures;
                continue;
            }
            warn_case_variants(path, failures);
            check_unused_templates(path, dir_loads, profile, failures);
            if (dir_loads.empty()) {
                std::fprintf(stderr, "%s: note: no vassal files (*.toml) in this directory\n",
                             path.c_str());
            }
            for (auto& load : dir_loads) {
                loads.push_back(std::move(load));
            }
        } else {
            loads.push_back(load_vassal_file(path, process_env(), profile));
        }
    }
    return loads;
}

// What the emperor decides from the system (DESIGN.md's user, group and [limits]), as far as it
// can be told here: the user and group exist, the tyrant rule holds (for a vassal that names a
// user or group, judged as a root emperor would, since only root changes users), and, when
// `liege check` does not run as root, whether an emperor running as this user could run it. cgroup
// limits that cannot be had here are a warning, not an error: the emperor runs such a vassal
// without them (as systemd ignores a resource-control setting its kernel lacks), and the box that
// checks a file (a laptop, a CI container) is often not the one that runs it.
std::vector<Diagnostic> check_isolation_here(const Vassal& v) {
    std::vector<Diagnostic> out;
    auto add = [&](std::string message, bool warning) {
        out.push_back({v.file.string(), {}, std::move(message), warning});
    };
    // A vassal that names nobody runs as whoever runs the emperor: judged as this user would run
    // it (so a file of one's own checks clean), as root only when `check` runs as root.
    const bool names = !v.identity.user.empty() || !v.identity.group.empty();
    const EmperorIdentity judge = names ? EmperorIdentity{0, 0} : EmperorIdentity::current();
    const CredentialsResult as_root =
        resolve_credentials(v.identity, v.file_uid, v.file_gid, judge);
    if (!as_root.credentials) {
        add(as_root.error, false);
    } else if (const EmperorIdentity me = EmperorIdentity::current(); me.uid != 0) {
        const CredentialsResult as_me = resolve_credentials(v.identity, v.file_uid, v.file_gid, me);
        if (!as_me.credentials) {
            add("fine for an emperor running as root, but " + as_me.error, true);
        }
    }
    const Limits& l = v.limits;
    if (l.any_cgroup()) {
        if (std::string why = Containment::probe_limits(l.memory != 0, l.cpu != 0, l.pids != 0);
            !why.empty()) {
            add("[limits] memory, cpu and pids need cgroup v2 controllers, which an emperor "
                "started here could not use (" +
                    why + "); it would run the vassal without them",
                true);
        }
    }
    return out;
}

void warn_shadowed(const std::vector<const Vassal*>& vassals) {
    std::vector<RouteEntry> entries;
    for (size_t i = 0; i < vassals.size(); ++i) {
        if (vassals[i]->daemon()) {
            continue; // no route
        }
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
    auto profile = std::make_shared<std::string>();
    auto* cmd = app.add_subcommand("check", "Validate vassal files or a directory of them");
    cmd->add_option("paths", *paths, "Vassal files (NAME.toml) or directories of them")->required();
    cmd->add_option("--profile", *profile, "Check with each vassal's [profile.NAME] applied");
    cmd->callback([paths, profile, &exit_code] {
        int failures = 0;
        std::vector<VassalLoad> loads = load_all(*paths, *profile, failures);
        size_t errors = 0;
        size_t bad_files = 0;
        std::vector<const Vassal*> vassals;
        for (const auto& load : loads) {
            std::set<std::string> said;
            size_t file_errors = 0;
            auto say = [&](const Diagnostic& d) {
                if (said.insert(d.str()).second) {
                    std::fprintf(stderr, "%s\n", d.str().c_str());
                    file_errors += d.warning ? 0 : 1;
                }
            };
            for (const auto& d : load.errors) {
                say(d);
            }
            for (const auto& d : load.lints) {
                say(d);
            }
            if (load.vassal) {
                for (const auto& d : check_isolation_here(*load.vassal)) {
                    say(d);
                }
            }
            // Without --profile, each profile a vassal declares is checked as it would run.
            if (profile->empty()) {
                for (const std::string& p : load.profiles) {
                    VassalLoad as = load_vassal_file(load.file, process_env(), p);
                    for (auto d : as.errors) {
                        d.message = "with --profile " + p + ": " + d.message;
                        say(d);
                    }
                }
            }
            errors += file_errors;
            bad_files += file_errors == 0 ? 0 : 1;
            if (load.vassal) {
                vassals.push_back(&*load.vassal);
            }
        }
        warn_shadowed(vassals);
        for (const Diagnostic& d : check_start_order(vassals)) {
            std::fprintf(stderr, "%s\n", d.str().c_str());
            ++errors;
            ++bad_files;
        }
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
