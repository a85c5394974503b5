// The HTTP/1.1 reverse proxy: options and entry point shared by `liege router` and the emperor.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "liege/address.hpp"
#include "liege/balancer.hpp"
#include "liege/cidr.hpp"
#include "liege/duration.hpp"

namespace liege {

struct RouterOptions {
    std::vector<Address> listen;    // sockets the router binds (SO_REUSEPORT, one per thread)
    std::vector<int> inherited_fds; // listening sockets inherited from a parent (shared by threads)
    // TLS: sockets the router binds and inherits for HTTPS clients, and the default certificate
    // (PEM chain, and its key; the key may be in the same file), served when no vassal's
    // certificate matches the SNI name. Vassal certificates come with the routes.
    std::vector<Address> listen_tls;
    std::vector<int> inherited_tls_fds;
    std::string tls_cert;
    std::string tls_key;
    // Peers whose X-Forwarded-For/Proto/Host are kept and appended to; anyone else's are
    // replaced.
    std::vector<Cidr> trusted_proxies;
    std::vector<Address> backends;
    unsigned threads = 0; // 0 = number of cores
    LbPolicy lb = LbPolicy::LeastConn;

    Millis header_timeout{10'000};        // client must send a whole header block in this time
    Millis keepalive_timeout{75'000};     // idle client connection between requests
    Millis connect_timeout{5'000};        // upstream connect
    Millis upstream_timeout{60'000};      // upstream silent for this long while a response is due
    Millis upstream_idle_timeout{30'000}; // pooled idle upstream connection
    Millis body_timeout{60'000};          // a client sending a request body is silent this long
    Millis shutdown_timeout{30'000}; // graceful shutdown: wait this long for requests in flight
    uint64_t max_header_size = 32 * 1024; // request header block; larger gets 431
    uint64_t max_body_size = 0;           // 0 = unlimited; larger gets 413
    // [upstream] request_buffering: a body is kept in memory up to body_buffer_size, beyond it
    // in a temporary file, up to body_buffer_max (larger gets 413; 0 = max_body_size alone).
    uint64_t body_buffer_size = 64 * 1024;
    uint64_t body_buffer_max = uint64_t{1} << 30;
    unsigned max_tries = 3;          // attempts for a request that never reached a backend
    unsigned max_idle_upstream = 64; // idle pooled connections per backend and thread
    unsigned max_conns_per_ip = 0;   // connections one client address holds at once; 0 = any
    std::string access_log = "-";    // "-" (stderr), "off", or a file path
    std::string
        access_log_dir;  // one DIR/VASSAL.access.log per vassal (with routes from an emperor)
    int control_fd = -1; // the emperor's control socket (docs/control-protocol.md); -1 = static
};

// Loads a certificate chain and its key (key empty: in the cert file) as the router would:
// "" when they load and match, otherwise "FILE: error: WHY".
std::string check_certificate(const std::string& cert, const std::string& key);

// Runs the router until SIGTERM/SIGINT and the graceful drain; returns the process exit code.
int run_router(const RouterOptions& options);

} // namespace liege
