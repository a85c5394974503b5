#include "tls_context.hpp"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstring>

#include "liege/clock.hpp"
#include "liege/log.hpp"
#include "liege/router.hpp"
#include "tls_session.hpp"

namespace liege::router {

namespace {

// Mozilla's "intermediate" configuration (version 5.7): TLS 1.2 ciphers with forward secrecy
// and AEAD only; TLS 1.3's suites are OpenSSL's defaults, which are the same three.
constexpr const char* kCiphers12 =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305";
constexpr const char* kGroups = "X25519:prime256v1:secp384r1";
constexpr long kSessionLifetimeS = 86400; // Mozilla: one day
constexpr int64_t kTicketRotateMs = 12 * 3600 * 1000;

// The ticket keys every context and thread shares: [0] encrypts, all three decrypt.
class TicketKeys {
public:
    struct Key {
        std::array<unsigned char, 16> name{};
        std::array<unsigned char, 32> aes{};
        std::array<unsigned char, 32> hmac{};
    };

    bool rotate() {
        Key k;
        if (RAND_bytes(k.name.data(), 16) != 1 || RAND_bytes(k.aes.data(), 32) != 1 ||
            RAND_bytes(k.hmac.data(), 32) != 1) {
            return false;
        }
        std::lock_guard lock(mu_);
        for (size_t i = keys_.size() - 1; i > 0; --i) {
            keys_[i] = keys_[i - 1];
        }
        keys_[0] = k;
        count_ = std::min<size_t>(count_ + 1, keys_.size());
        return true;
    }
    bool current(Key& out) const {
        std::lock_guard lock(mu_);
        out = keys_[0];
        return count_ > 0;
    }
    // The key named `name`; `newest` says whether it is the one that encrypts now.
    bool find(const unsigned char* name, Key& out, bool& newest) const {
        std::lock_guard lock(mu_);
        for (size_t i = 0; i < count_; ++i) {
            if (std::memcmp(keys_[i].name.data(), name, 16) == 0) {
                out = keys_[i];
                newest = i == 0;
                return true;
            }
        }
        return false;
    }

private:
    mutable std::mutex mu_;
    std::array<Key, 3> keys_{};
    size_t count_ = 0;
};

TicketKeys& ticket_keys() {
    static TicketKeys keys;
    return keys;
}

int set_hmac_key(EVP_MAC_CTX* hctx, unsigned char* key) {
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key, 32),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, const_cast<char*>("sha256"), 0),
        OSSL_PARAM_construct_end()};
    return EVP_MAC_CTX_set_params(hctx, params);
}

// 1: ticket made or decrypted with the current key; 2: decrypted with an older one (a new
// ticket follows); 0: unknown key, a full handshake instead; -1: failure.
int on_ticket_key(SSL*, unsigned char key_name[16], unsigned char* iv, EVP_CIPHER_CTX* cctx,
                  EVP_MAC_CTX* hctx, int enc) {
    TicketKeys::Key k;
    if (enc != 0) {
        if (!ticket_keys().current(k) || RAND_bytes(iv, 16) != 1) {
            return -1;
        }
        std::memcpy(key_name, k.name.data(), 16);
        if (EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), nullptr, k.aes.data(), iv) != 1 ||
            set_hmac_key(hctx, k.hmac.data()) != 1) {
            return -1;
        }
        return 1;
    }
    bool newest = false;
    if (!ticket_keys().find(key_name, k, newest)) {
        return 0;
    }
    if (set_hmac_key(hctx, k.hmac.data()) != 1 ||
        EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), nullptr, k.aes.data(), iv) != 1) {
        return -1;
    }
    return newest ? 1 : 2;
}

int on_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
            unsigned int inlen, void*) {
    static const unsigned char kHttp11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    unsigned char* chosen = nullptr;
    if (SSL_select_next_proto(&chosen, outlen, kHttp11, sizeof(kHttp11), in, inlen) !=
        OPENSSL_NPN_NEGOTIATED) {
        return SSL_TLSEXT_ERR_NOACK; // a client offering only h2 still gets HTTP/1.1
    }
    *out = chosen;
    return SSL_TLSEXT_ERR_OK;
}

int on_servername(SSL* ssl, int*, void*) {
    const auto* snap = static_cast<const TlsSnapshot*>(SSL_get_ex_data(ssl, tls_snapshot_index()));
    if (snap == nullptr) {
        return SSL_TLSEXT_ERR_OK;
    }
    const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    const TlsCert& cert = snap->find(name != nullptr ? name : "");
    if (cert.ctx() != SSL_get_SSL_CTX(ssl)) {
        SSL_set_SSL_CTX(ssl, cert.ctx());
    }
    return SSL_TLSEXT_ERR_OK;
}

// Why a PEM file did not load, as a user would put it.
std::string pem_errors(std::string_view what) {
    const unsigned long e = ERR_peek_error(); // the first: the cause, before its callers' notes
    if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
        ERR_clear_error();
        return std::string(what) + " (no PEM block)";
    }
    if (ERR_GET_LIB(e) == ERR_LIB_SYS) {
        ERR_clear_error();
        return std::strerror(ERR_GET_REASON(e));
    }
    return tls_errors(what);
}

// A server context with the certificate and key of the files; null with `why` set otherwise.
SSL_CTX* make_context(const std::string& cert, const std::string& key, std::string& why,
                      std::string& bad_file) {
    ERR_clear_error();
    SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == nullptr) {
        why = tls_errors("cannot create a TLS context");
        return nullptr;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_cipher_list(ctx, kCiphers12);
    SSL_CTX_set1_groups_list(ctx, kGroups);
    SSL_CTX_set_dh_auto(ctx, 1);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF); // tickets, stateless
    SSL_CTX_set_timeout(ctx, kSessionLifetimeS);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, on_ticket_key);
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, nullptr);
    SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

    const std::string& key_file = key.empty() ? cert : key;
    bad_file = cert;
    if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1) {
        why = errno != 0 && ERR_peek_error() == 0 ? std::strerror(errno)
                                                  : pem_errors("no certificate in the file");
        SSL_CTX_free(ctx);
        return nullptr;
    }
    bad_file = key_file;
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
        const unsigned long e = ERR_peek_last_error();
        if (ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH) {
            ERR_clear_error();
            why = "the private key does not match the certificate in " + cert;
        } else {
            why = pem_errors("no private key in the file");
        }
        SSL_CTX_free(ctx);
        return nullptr;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        why = "the private key does not match the certificate in " + cert;
        SSL_CTX_free(ctx);
        return nullptr;
    }
    return ctx;
}

} // namespace

int tls_snapshot_index() {
    static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
    return index;
}

const TlsCert& TlsSnapshot::find(std::string_view sni) const {
    char lower[256];
    if (!sni.empty() && sni.size() < sizeof(lower)) {
        for (size_t i = 0; i < sni.size(); ++i) {
            lower[i] = static_cast<char>(std::tolower(static_cast<unsigned char>(sni[i])));
        }
        std::string_view name(lower, sni.size());
        if (auto it = exact.find(std::string(name)); it != exact.end()) {
            return *it->second;
        }
        for (const auto& [suffix, cert] : wildcard) {
            if (name.size() > suffix.size() && name.ends_with(suffix)) {
                return *cert;
            }
        }
    }
    return *fallback;
}

TlsStore::TlsStore() {
    ticket_keys().rotate();
    tickets_rotated_ms_ = steady_now_ms();
}

TlsStore::~TlsStore() = default;

bool TlsStore::refresh(const Files& files, Entry& e, bool force) {
    auto stamp = [](const std::string& path) {
        Stamp s;
        struct stat st {};
        if (::stat(path.c_str(), &st) == 0) {
            s = {st.st_ino, st.st_dev,
                 static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec,
                 static_cast<int64_t>(st.st_size)};
        }
        return s;
    };
    const Stamp cert_stamp = stamp(files.first);
    const Stamp key_stamp = files.second.empty() ? cert_stamp : stamp(files.second);
    const bool changed = cert_stamp != e.cert_stamp || key_stamp != e.key_stamp;
    if (!force && !changed && e.settled) {
        return false; // loaded or reported, and nothing changed since
    }
    std::string why;
    std::string bad_file;
    SSL_CTX* ctx = make_context(files.first, files.second, why, bad_file);
    e.cert_stamp = cert_stamp;
    e.key_stamp = key_stamp;
    if (ctx == nullptr) {
        // A certificate and its key are often replaced one after the other: a failure is
        // reported once the files have stayed as they are for a poll, not in between.
        if (!changed || force) {
            spdlog::error("{}: error: {}{}", bad_file, why,
                          e.cert != nullptr ? "; the previous certificate stays in service"
                                            : "; the default certificate serves its names");
            e.settled = true;
        } else {
            e.settled = false; // tried again at the next poll
        }
        return false;
    }
    const bool first = e.cert == nullptr;
    e.cert = std::make_shared<const TlsCert>(ctx);
    e.settled = true;
    spdlog::info("tls: {} certificate {}", first ? "loaded" : "reloaded", files.first);
    return true;
}

bool TlsStore::init(const std::string& cert, const std::string& key) {
    default_files_ = {cert, key};
    refresh(default_files_, default_, true);
    if (default_.cert == nullptr) {
        return false;
    }
    publish();
    return true;
}

void TlsStore::set_routes(const std::vector<control::RouteSpec>& routes) {
    std::vector<std::pair<std::string, Files>> hosts;
    std::map<Files, Entry> certs;
    bool changed = false;
    for (const auto& r : routes) {
        if (r.tls_cert.empty()) {
            continue;
        }
        Files files{r.tls_cert, r.tls_key};
        if (!certs.contains(files)) {
            auto it = vassal_certs_.find(files);
            Entry e = it != vassal_certs_.end() ? std::move(it->second) : Entry{};
            changed |= refresh(files, e, false) || it == vassal_certs_.end();
            certs.emplace(files, std::move(e));
        }
        for (const auto& h : r.hosts) {
            if (h != "*") {
                hosts.emplace_back(h, files);
            }
        }
    }
    changed |= certs.size() != vassal_certs_.size() || hosts != hosts_;
    vassal_certs_ = std::move(certs);
    hosts_ = std::move(hosts);
    if (changed && default_.cert != nullptr) {
        publish();
    }
}

void TlsStore::check_files() {
    if (default_.cert == nullptr) {
        return; // no TLS listener
    }
    const int64_t now = steady_now_ms();
    if (now - tickets_rotated_ms_ >= kTicketRotateMs && ticket_keys().rotate()) {
        tickets_rotated_ms_ = now;
        spdlog::info("tls: session ticket key rotated");
    }
    bool changed = refresh(default_files_, default_, false);
    for (auto& [files, e] : vassal_certs_) {
        changed |= refresh(files, e, false);
    }
    if (changed) {
        publish();
    }
}

void TlsStore::publish() {
    auto snap = std::make_shared<TlsSnapshot>();
    snap->fallback = default_.cert;
    for (const auto& [host, files] : hosts_) {
        const auto& cert = vassal_certs_.at(files).cert;
        if (cert == nullptr) {
            continue; // not loaded (reported): the default serves the name
        }
        if (host.starts_with("*.")) {
            snap->wildcard.emplace_back(host.substr(1), cert);
        } else {
            snap->exact.emplace(host, cert); // the first vassal naming a host keeps it
        }
    }
    std::stable_sort(snap->wildcard.begin(), snap->wildcard.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
    std::lock_guard lock(mu_);
    snapshot_ = std::move(snap);
}

std::shared_ptr<const TlsSnapshot> TlsStore::snapshot() const {
    std::lock_guard lock(mu_);
    return snapshot_;
}

} // namespace liege::router

namespace liege {

std::string check_certificate(const std::string& cert, const std::string& key) {
    std::string why;
    std::string bad_file;
    SSL_CTX* ctx = router::make_context(cert, key, why, bad_file);
    if (ctx == nullptr) {
        return bad_file + ": error: " + why;
    }
    SSL_CTX_free(ctx);
    return {};
}

} // namespace liege
