#include <unistd.h>

#include <climits>
#include <filesystem>
#include <stdexcept>

#include "commands.hpp"
#include "liege/admin_token.hpp"
#include "liege/emperor.hpp"
#include "liege/log.hpp"
#include "liege/router.hpp"
#include "liege/router_settings.hpp"

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
    std::vector<std::string> listen_tls;
    std::string tls_cert;
    std::string tls_key;
    std::vector<std::string> trusted_proxies;
    std::vector<std::string> router_opts;
    std::string admin; // empty: default_admin()
    std::string admin_token_file;
    std::string acme_directory;
    std::string acme_email;
    std::string acme_ca;
    std::string state_dir; // empty: default_state_dir()
    unsigned threads = 0;
    int max_workers = 0;
    std::string profile;
    std::string env_name; // --env, the old spelling of --profile
    std::string log_dir;
    std::string access_log = "-";
    std::string log_level = "info";
};

// Beside the default admin socket, in the per-user runtime directory.
std::string default_state_dir() {
    return (std::filesystem::path(parse_address(default_admin()).path).parent_path() / "state")
        .string();
}

} // namespace

void add_run_command(CLI::App& app, int& exit_code) {
    auto args = std::make_shared<RunArgs>();
    auto* cmd =
        app.add_subcommand("run", "Run the emperor: watch vassals, supervise workers, route");
    cmd->add_option("--vassals", args->vassals, "Directory of vassal files")->capture_default_str();
    cmd->add_option("--listen", args->listen,
                    "Public address (HOST:PORT, [IPv6]:PORT, unix:PATH); default 127.0.0.1:8080");
    cmd->add_option("--listen-tls", args->listen_tls,
                    "Public HTTPS address; repeatable, beside --listen (needs --tls-cert)");
    cmd->add_option("--tls-cert", args->tls_cert,
                    "Default certificate (PEM chain), for names no vassal's certificate has");
    cmd->add_option("--tls-key", args->tls_key,
                    "The default certificate's key (default: read from --tls-cert)");
    cmd->add_option("--trusted-proxy", args->trusted_proxies,
                    "Peer range (CIDR) whose X-Forwarded-* headers are kept; repeatable");
    cmd->add_option("--router-opt", args->router_opts,
                    "Router timeout or limit as KEY=VALUE (e.g. body_max=10MiB); repeatable");
    cmd->add_option("--acme-directory", args->acme_directory,
                    "ACME server's directory URL (https://...), for vassals with [tls] acme = true "
                    "(e.g. https://acme-v02.api.letsencrypt.org/directory)");
    cmd->add_option("--acme-email", args->acme_email,
                    "Contact address of the ACME account (expiry notices)");
    cmd->add_option("--acme-ca", args->acme_ca,
                    "CA certificate (PEM) to trust for the ACME server, e.g. a private or test CA")
        ->check(CLI::ExistingFile);
    cmd->add_option("--state-dir", args->state_dir,
                    "Directory for the ACME account key and certificates (default: " +
                        default_state_dir() + ")");
    cmd->add_option("--admin", args->admin, "Admin API address (default: " + default_admin() + ")");
    cmd->add_option("--admin-token-file", args->admin_token_file,
                    "File (mode 0600) with the bearer token the admin API requires; needed for a "
                    "TCP --admin");
    cmd->add_option("--threads", args->threads, "Router threads (default: number of cores)");
    cmd->add_option("--max-workers", args->max_workers,
                    "Cap on worker processes across all vassals (default: none)")
        ->check(CLI::Range(1, 1'000'000));
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
            for (const auto& a : args->listen_tls) {
                o.listen_tls.push_back(parse_address(a));
            }
            for (const auto& c : args->trusted_proxies) {
                o.trusted_proxies.push_back(parse_cidr(c).str());
            }
            for (const auto& kv : args->router_opts) {
                apply_router_setting(o.router, kv);
            }
            o.router_opts = args->router_opts;
        } catch (const std::invalid_argument& e) {
            throw CLI::ValidationError(e.what());
        }
        if (!o.listen_tls.empty() && args->tls_cert.empty()) {
            throw CLI::ValidationError("--listen-tls needs a default certificate: --tls-cert");
        }
        // The router may start elsewhere: it gets absolute paths.
        if (!args->tls_cert.empty()) {
            o.tls_cert = std::filesystem::absolute(args->tls_cert).string();
        }
        if (!args->tls_key.empty()) {
            o.tls_key = std::filesystem::absolute(args->tls_key).string();
        }
        if (!o.tls_cert.empty()) {
            // The router would not start without it: say so once, here, rather than restart it.
            if (std::string bad = check_certificate(o.tls_cert, o.tls_key); !bad.empty()) {
                throw CLI::ValidationError(bad);
            }
        }
        if (!args->admin_token_file.empty()) {
            try {
                o.admin_token = read_admin_token(args->admin_token_file);
            } catch (const std::invalid_argument& e) {
                throw CLI::ValidationError(e.what());
            }
        } else if (!o.admin.is_unix()) {
            // Anyone who can connect could reload, stop and start every vassal, and a web page
            // could try through the browser: no TCP admin API without a token.
            throw CLI::ValidationError(fmt::format(
                "--admin {} is a TCP address, which needs --admin-token-file FILE (a file only "
                "you can read, holding a token: openssl rand -hex 32 > FILE; chmod 600 FILE); "
                "or use a unix socket, --admin unix:PATH",
                o.admin.str()));
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
        if (!args->acme_directory.empty() && !args->acme_directory.starts_with("https://")) {
            throw CLI::ValidationError("--acme-directory " + args->acme_directory +
                                       ": expected an https:// URL");
        }
        if (args->acme_directory.empty() && (!args->acme_email.empty() || !args->acme_ca.empty())) {
            throw CLI::ValidationError("--acme-email and --acme-ca need --acme-directory URL");
        }
        o.acme_directory = args->acme_directory;
        o.acme_email = args->acme_email;
        if (!args->acme_ca.empty()) {
            o.acme_ca = std::filesystem::absolute(args->acme_ca).string();
        }
        o.state_dir = std::filesystem::absolute(args->state_dir.empty() ? default_state_dir()
                                                                        : args->state_dir);
        if (!o.acme_directory.empty() && o.listen_tls.empty()) {
            spdlog::warn("--acme-directory without --listen-tls: certificates are obtained but "
                         "not served");
        }
        o.threads = args->threads;
        o.max_workers = args->max_workers;
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
