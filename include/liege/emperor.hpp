// `liege run`: the emperor. It watches the vassal directory, keeps a pool of workers per vassal,
// owns the public listening sockets and supervises the router child that serves them.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "liege/address.hpp"
#include "liege/router.hpp"

namespace liege {

struct EmperorOptions {
    std::filesystem::path vassals_dir = "vassals.d";
    std::vector<Address> listen;     // default 127.0.0.1:8080
    Address admin;                   // default: default_admin_address() (liege/address.hpp)
    std::string admin_token;         // from --admin-token-file; required over a TCP --admin
    unsigned threads = 0;            // router threads; 0 = cores
    std::string env_name;            // --profile: selects [profile.NAME]; workers get LIEGE_PROFILE
    std::filesystem::path log_dir;   // empty = everything to stderr
    std::string self_exe;            // this binary, to start the router with
    std::string access_log = "-";    // router access log ("-", "off", or a file)
    std::vector<Address> listen_tls; // HTTPS addresses, bound here like `listen`
    std::string tls_cert;            // the default certificate and key (absolute paths)
    std::string tls_key;
    std::vector<std::string> trusted_proxies; // --trusted-proxy, validated, for the router
    std::vector<std::string> router_opts;     // --router-opt KEY=VALUE, validated, for the router
    RouterOptions router;                     // the router's settings they give (for /status)
    // Automatic certificates ([tls] acme = true): the ACME server's directory URL (empty = none),
    // the account's contact, a CA file to trust for the server (empty = the system's), and
    // where account key and certificates are kept (STATE/acme/).
    std::string acme_directory;
    std::string acme_email;
    std::string acme_ca;
    std::filesystem::path state_dir;
    // --max-workers: worker processes across all vassals. A pool grows beyond its `min`, and a
    // replacement starts, only below it (taking an idle worker of another vassal's when it is
    // reached); 0 = no cap.
    int max_workers = 0;
};

// Runs until SIGTERM/SIGINT and a graceful stop; returns the exit code.
int run_emperor(const EmperorOptions& options);

} // namespace liege
