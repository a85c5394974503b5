#include <unistd.h>

#include <climits>
#include <filesystem>
#include <stdexcept>

#include "commands.hpp"
#include "liege/emperor.hpp"
#include "liege/log.hpp"

namespace liege::cli {

namespace {

std::string self_exe() {
    char buf[PATH_MAX];
    ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
    if (n <= 0) {
        return "liege";
    }
    return std::string(buf, static_cast<size_t>(n));
}

struct RunArgs {
    std::string vassals = "./vassals.d";
    std::vector<std::string> listen;
    std::string admin; // empty: default_admin()
    unsigned threads = 0;
    std::string profile;
    std::string env_name; // --env, the old spelling of --profile
    std::string log_dir;
    std::string access_log = "-";
    std::string log_level = "info";
};

} // namespace

void add_run_command(CLI::App& app, int& exit_code) {
    auto args = std::make_shared<RunArgs>();
    auto* cmd =
        app.add_subcommand("run", "Run the emperor: watch vassals, supervise workers, route");
    cmd->add_option("--vassals", args->vassals, "Directory of vassal files")->capture_default_str();
    cmd->add_option("--listen", args->listen,
                    "Public address (HOST:PORT, [IPv6]:PORT, unix:PATH); default 127.0.0.1:8080");
    cmd->add_option("--admin", args->admin, "Admin API address (default: " + default_admin() + ")");
    cmd->add_option("--threads", args->threads, "Router threads (default: number of cores)");
    cmd->add_option("--profile", args->profile,
                    "Apply each vassal's [profile.NAME]; workers get LIEGE_PROFILE=NAME");
    cmd->add_option("--env", args->env_name, "Replaced by --profile (still accepted)");
    cmd->add_option("--log-dir", args->log_dir, "Directory for log files (default: stderr)");
    cmd->add_option("--access-log", args->access_log, "Router access log: -, off or a file")
        ->capture_default_str();
    cmd->add_option("--log-level", args->log_level, "trace, debug, info, warn, error")
        ->capture_default_str();
    cmd->callback([args, &exit_code] {
        setup_logging(args->log_level);
        EmperorOptions o;
        o.vassals_dir = args->vassals;
        try {
            if (args->listen.empty()) {
                o.listen.push_back(parse_address("127.0.0.1:8080"));
            }
            for (const auto& a : args->listen) {
                o.listen.push_back(parse_address(a));
            }
            o.admin = parse_address(args->admin.empty() ? default_admin() : args->admin);
        } catch (const std::invalid_argument& e) {
            throw CLI::ValidationError(e.what());
        }
        if (args->admin.empty()) {
            // The per-user runtime directory's own: only its user may enter it.
            std::error_code ec;
            const std::filesystem::path dir = std::filesystem::path(o.admin.path).parent_path();
            if (std::filesystem::create_directories(dir, ec)) {
                std::filesystem::permissions(dir, std::filesystem::perms::owner_all, ec);
            }
            if (ec) {
                spdlog::error("cannot create {} for the admin socket: {}", dir.string(),
                              ec.message());
                exit_code = 1;
                return;
            }
        }
        o.threads = args->threads;
        o.env_name = args->profile;
        if (!args->env_name.empty()) {
            if (!args->profile.empty() && args->profile != args->env_name) {
                throw CLI::ValidationError("--env is replaced by --profile; give only --profile");
            }
            spdlog::warn("--env is replaced by --profile: running with --profile {}",
                         args->env_name);
            o.env_name = args->env_name;
        }
        o.log_dir = args->log_dir;
        o.access_log = args->access_log;
        o.self_exe = self_exe();
        exit_code = run_emperor(o);
    });
}

} // namespace liege::cli
