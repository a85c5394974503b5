// The admin API: HTTP/1.1 with JSON bodies on `liege run --admin` (unix:PATH by default, or
// HOST:PORT), served from the emperor's loop.
//
//   GET  /status               the emperor, the router and every vassal with live figures
//   GET  /metrics              Prometheus text format
//   POST /vassals/NAME/reload  reloads one vassal; answered once it has finished or failed
//   POST /reload               reloads every vassal; answered once all have, with each outcome
//
// A reload answers 200 with {"ok": true, ...} or 500 with {"ok": false, ...}; an unknown vassal
// 404 with its name; another path 404; a known path with the wrong method 405 with Allow.
//
// Guards, before any of that (see liege/admin_token.hpp):
// - over TCP, a Host that is not the admin address (an IP literal, localhost or the host --admin
//   named) gets 421: a DNS-rebound web page cannot read /status;
// - with a token, a request without `Authorization: Bearer TOKEN`, or with another token, gets
//   401 (liege run requires a token for a TCP address; a unix socket's mode 0660 is its guard);
// - a request other than GET, HEAD or OPTIONS that carries an Origin header gets 403: liege's
//   clients send none, a browser's cross-site form or fetch always does.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "liege/address.hpp"

namespace liege {

namespace emperor {
class Emperor;
} // namespace emperor

class AdminServer {
public:
    explicit AdminServer(emperor::Emperor& emperor);
    AdminServer(const AdminServer&) = delete;
    AdminServer& operator=(const AdminServer&) = delete;
    ~AdminServer();

    // Listens on `address` (a stale unix socket file is replaced; one another process still
    // answers on is not). Logs "admin API on ADDR" with the real address. Returns 0 or a
    // negative errno, logged. A non-empty `token` is required of every request (see above).
    int start(const Address& address, std::string token = {});
    // Stops listening, closes every connection and removes the unix socket file. Idempotent.
    void close();
    // The bound address (port 0 resolved), once started.
    const Address& address() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// The vassal name in "/vassals/NAME/reload" (percent-decoded), or nullopt for another path.
std::optional<std::string> reload_target(std::string_view path);

// Whether a request's Host value names the admin API: an IPv4 or bracketed IPv6 literal,
// "localhost", or `admin_host` (what --admin named), each with an optional numeric port.
bool admin_host_allowed(std::string_view host, std::string_view admin_host);

} // namespace liege
