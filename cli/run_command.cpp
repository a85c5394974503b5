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
    std::string admin = "unix:./liege.sock";
    unsigned threads = 0;
    std::string env_name;
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
    cmd->add_option("--admin", args->admin, "Admin API address")->capture_default_str();
    cmd->add_option("--threads", args->threads, "Router threads (default: number of cores)");
    cmd->add_option("--env", args->env_name, "Environment name, given to workers as LIEGE_ENV");
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
            o.admin = parse_address(args->admin);
        } catch (const std::invalid_argument& e) {
            throw CLI::ValidationError(e.what());
        }
        o.threads = args->threads;
        o.env_name = args->env_name;
        o.log_dir = args->log_dir;
        o.access_log = args->access_log;
        o.self_exe = self_exe();
        exit_code = run_emperor(o);
    });
}

} // namespace liege::cli
