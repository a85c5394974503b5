#include <stdexcept>
#include <string>
#include <vector>

#include "commands.hpp"
#include "liege/log.hpp"
#include "liege/router.hpp"
#include "liege/router_settings.hpp"

namespace liege::cli {

namespace {

struct RouterArgs {
    std::vector<std::string> listen;
    std::vector<std::string> backends;
    std::vector<std::string> listen_tls;
    std::vector<std::string> trusted_proxies;
    std::vector<std::string> router_opts;
    std::string lb = "least_conn";
    std::string header_timeout = "10s";
    std::string keepalive_timeout = "75s";
    std::string connect_timeout = "5s";
    std::string upstream_timeout = "60s";
    std::string upstream_idle_timeout = "30s";
    std::string shutdown_timeout = "30s";
    std::string max_header_size = "32k";
    std::string max_body_size = "0";
    std::string log_level = "info";
    RouterOptions options;
};

} // namespace

void add_router_command(CLI::App& app, int& exit_code) {
    auto args = std::make_shared<RouterArgs>();
    auto* cmd =
        app.add_subcommand("router", "Run the HTTP reverse proxy in front of static backends");
    cmd->add_option("--listen", args->listen,
                    "Address to accept clients on (HOST:PORT, [IPv6]:PORT, unix:PATH)");
    cmd->add_option("--inherit-fd", args->options.inherited_fds,
                    "Listening socket inherited from the parent (used by liege run)")
        ->group("");
    cmd->add_option("--control-fd", args->options.control_fd,
                    "Control socket from the emperor (used by liege run)")
        ->group("");
    cmd->add_option("--listen-tls", args->listen_tls,
                    "Address to accept HTTPS clients on; repeat for several (needs --tls-cert)");
    cmd->add_option("--inherit-tls-fd", args->options.inherited_tls_fds,
                    "HTTPS listening socket inherited from the parent (used by liege run)")
        ->group("");
    cmd->add_option("--tls-cert", args->options.tls_cert,
                    "Default certificate: a PEM chain (the key may follow it in the same file)");
    cmd->add_option("--tls-key", args->options.tls_key,
                    "The default certificate's key (default: read from --tls-cert)");
    cmd->add_option("--trusted-proxy", args->trusted_proxies,
                    "Peers (CIDR) whose X-Forwarded-* headers are kept and appended to");
    cmd->add_option("--router-opt", args->router_opts,
                    "KEY=VALUE, a timeout or limit (overrides the flags above); repeatable");
    cmd->add_option("--backend", args->backends, "Backend address; repeat for several");
    cmd->add_option("--threads", args->options.threads,
                    "Worker threads (default: number of cores)");
    cmd->add_option("--lb", args->lb, "Balancing policy")
        ->check(CLI::IsMember({"least_conn", "round_robin"}))
        ->capture_default_str();
    cmd->add_option("--header-timeout", args->header_timeout,
                    "Time a client has to send its request headers")
        ->capture_default_str();
    cmd->add_option("--keepalive-timeout", args->keepalive_timeout, "Idle client keep-alive time")
        ->capture_default_str();
    cmd->add_option("--connect-timeout", args->connect_timeout, "Upstream connect time limit")
        ->capture_default_str();
    cmd->add_option("--upstream-timeout", args->upstream_timeout,
                    "Time an upstream may stay silent while a response is due (then 504)")
        ->capture_default_str();
    cmd->add_option("--upstream-idle-timeout", args->upstream_idle_timeout,
                    "Idle time before a pooled upstream connection is closed")
        ->capture_default_str();
    cmd->add_option("--shutdown-timeout", args->shutdown_timeout,
                    "On SIGTERM/SIGINT, time allowed for requests in flight")
        ->capture_default_str();
    cmd->add_option("--max-header-size", args->max_header_size,
                    "Largest request header block (then 431)")
        ->capture_default_str();
    cmd->add_option("--max-body-size", args->max_body_size,
                    "Largest request body, 0 for no limit (then 413)")
        ->capture_default_str();
    cmd->add_option("--max-tries", args->options.max_tries,
                    "Attempts for a request that never reached a backend")
        ->capture_default_str();
    cmd->add_option("--access-log", args->options.access_log,
                    "Access log: - for stderr, off, or a file")
        ->capture_default_str();
    cmd->add_option("--access-log-dir", args->options.access_log_dir,
                    "One access log per vassal in this directory (routes from liege run)");
    cmd->add_option("--log-level", args->log_level, "trace, debug, info, warn, error")
        ->capture_default_str();
    cmd->callback([args, &exit_code] {
        setup_logging(args->log_level);
        RouterOptions& o = args->options;
        try {
            for (const auto& a : args->listen) {
                o.listen.push_back(parse_address(a));
            }
            for (const auto& b : args->backends) {
                o.backends.push_back(parse_address(b));
            }
            o.lb = parse_lb_policy(args->lb);
            o.header_timeout = parse_duration(args->header_timeout);
            o.keepalive_timeout = parse_duration(args->keepalive_timeout);
            o.connect_timeout = parse_duration(args->connect_timeout);
            o.upstream_timeout = parse_duration(args->upstream_timeout);
            o.upstream_idle_timeout = parse_duration(args->upstream_idle_timeout);
            o.shutdown_timeout = parse_duration(args->shutdown_timeout);
            o.max_header_size = parse_size(args->max_header_size);
            o.max_body_size = parse_size(args->max_body_size);
            for (const auto& a : args->listen_tls) {
                o.listen_tls.push_back(parse_address(a));
            }
            for (const auto& c : args->trusted_proxies) {
                o.trusted_proxies.push_back(parse_cidr(c));
            }
            for (const auto& kv : args->router_opts) {
                apply_router_setting(o, kv);
            }
        } catch (const std::invalid_argument& e) {
            throw CLI::ValidationError(e.what());
        }
        if (o.listen.empty() && o.inherited_fds.empty() && o.listen_tls.empty() &&
            o.inherited_tls_fds.empty()) {
            throw CLI::ValidationError("--listen: at least one address is required");
        }
        if ((!o.listen_tls.empty() || !o.inherited_tls_fds.empty()) && o.tls_cert.empty()) {
            throw CLI::ValidationError("--listen-tls needs a default certificate: --tls-cert");
        }
        if (o.max_tries == 0) {
            throw CLI::ValidationError("--max-tries must be at least 1");
        }
        exit_code = run_router(o);
    });
}

} // namespace liege::cli
