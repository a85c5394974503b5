// The router's certificates: the default one (--tls-cert) and each vassal's ([tls] cert), as
// OpenSSL contexts chosen by the SNI name a client asks for, and the session-ticket keys.
//
// Threads never see the store itself: TlsStore publishes an immutable TlsSnapshot (host name to
// certificate), and every TLS connection holds the snapshot it started with, so a certificate
// that is replaced serves new connections while established ones go on with theirs (an SSL
// keeps a reference to its SSL_CTX).
//
// Files are polled (every second, from the control thread): a changed certificate or key is
// loaded into a fresh context; one that does not load, or whose key does not match, leaves the
// old context in service and is reported once as "FILE: error: WHY" until it changes again.
// Polling rather than inotify: certbot, Kubernetes secrets and `mv` all replace the file (or a
// symlink to it), which a stat of the path sees whatever the mechanism.
//
// Protocols and ciphers are Mozilla's "intermediate" set (TLS 1.2 and 1.3). Sessions resume by
// stateless tickets whose keys are shared by every context and thread and rotated every 12 hours;
// the two previous keys still decrypt, so a ticket stays good for a day at least.
#pragma once

#include <openssl/ssl.h>

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "liege/control.hpp"

namespace liege::router {

// The SSL ex_data slot where a connection keeps its TlsSnapshot (for the SNI callback).
int tls_snapshot_index();

// One certificate chain and key, loaded into a context.
class TlsCert {
public:
    explicit TlsCert(SSL_CTX* ctx) : ctx_(ctx) {}
    ~TlsCert() { SSL_CTX_free(ctx_); }
    TlsCert(const TlsCert&) = delete;
    TlsCert& operator=(const TlsCert&) = delete;
    SSL_CTX* ctx() const { return ctx_; }

private:
    SSL_CTX* ctx_;
};

// What a connection chooses its certificate from; immutable once published.
struct TlsSnapshot {
    std::shared_ptr<const TlsCert> fallback; // the default certificate
    std::unordered_map<std::string, std::shared_ptr<const TlsCert>> exact; // lower-case names
    // "*.shop.test" patterns as their suffix ".shop.test", longest first.
    std::vector<std::pair<std::string, std::shared_ptr<const TlsCert>>> wildcard;

    // The certificate for an SNI name (any case; empty = none sent): an exact name, then the
    // longest wildcard, then the default.
    const TlsCert& find(std::string_view sni) const;
};

class TlsStore {
public:
    TlsStore();
    ~TlsStore();
    TlsStore(const TlsStore&) = delete;
    TlsStore& operator=(const TlsStore&) = delete;

    // Loads the default certificate (key empty: in the cert file). False, with the reason
    // logged, when it cannot: the router does not start without it.
    bool init(const std::string& cert, const std::string& key);
    // The vassals' certificates from a route set; files not loaded yet are loaded now, those no
    // route names any more are dropped. Control thread.
    void set_routes(const std::vector<control::RouteSpec>& routes);
    // Reloads files changed on disk and rotates the ticket keys when due. Control thread.
    void check_files();
    // Any thread.
    std::shared_ptr<const TlsSnapshot> snapshot() const;

private:
    struct Stamp {
        ino_t ino = 0;
        dev_t dev = 0;
        int64_t mtime_ns = 0;
        int64_t size = -1;
        bool operator==(const Stamp&) const = default;
    };
    struct Entry {
        std::shared_ptr<const TlsCert> cert; // null until it first loads
        Stamp cert_stamp, key_stamp;         // of the files last tried
        bool settled = false; // the files as they are loaded, or their failure logged
    };
    using Files = std::pair<std::string, std::string>; // cert, key ("" = in cert)

    // Loads `files` into `e` when their stamps changed (or `force`); true when `e.cert` changed.
    bool refresh(const Files& files, Entry& e, bool force);
    void publish();

    Files default_files_;
    Entry default_;
    std::map<Files, Entry> vassal_certs_;
    std::vector<std::pair<std::string, Files>> hosts_; // host pattern → its files
    int64_t tickets_rotated_ms_ = 0;

    mutable std::mutex mu_;
    std::shared_ptr<const TlsSnapshot> snapshot_; // guarded by mu_
};

} // namespace liege::router
