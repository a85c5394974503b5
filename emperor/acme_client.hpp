// One ACME account's conversation with the server (RFC 8555), blocking: directory, nonce,
// account, order, HTTP-01 authorisations, finalise, download. It runs on the ACME thread of
// acme_manager.cpp, never on the emperor's loop; HTTP is libcurl's.
//
// Every request carries the latest Replay-Nonce; a request the server refuses as badNonce (a
// server may reject any nonce, pebble rejects some on purpose) is sent again with the fresh one
// the refusal carried. The account is looked up by its key on every issue (new-account with an
// existing key answers the existing account), so no account URL is stored.
#pragma once

#include <openssl/evp.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace liege::emperor {

struct AcmeSettings {
    std::string directory; // --acme-directory
    std::string email;     // --acme-email; empty = no contact
    std::string ca_file;   // --acme-ca: trust this CA for the server; empty = the system's
};

// What the client needs from its caller while an order runs.
struct AcmeHooks {
    // Serves `key_authorization` for `token` on the plain listeners; returns once the router has
    // it, false if the wait was cut short (the emperor stops).
    std::function<bool(const std::string& token, const std::string& key_authorization)> publish;
    std::function<void(const std::string& token)> withdraw;
    // Waits up to `d`; false when the emperor stops (then the order is abandoned).
    std::function<bool(std::chrono::milliseconds d)> wait;
    std::function<bool()> stopping;
};

class AcmeClient {
public:
    AcmeClient(AcmeSettings settings, EVP_PKEY* account_key, AcmeHooks hooks);
    ~AcmeClient();
    AcmeClient(const AcmeClient&) = delete;
    AcmeClient& operator=(const AcmeClient&) = delete;

    // A certificate for `names` with `cert_key`: the PEM chain, leaf first. Throws
    // std::runtime_error saying which step failed and why.
    std::string issue(const std::vector<std::string>& names, EVP_PKEY* cert_key);

private:
    struct Response {
        long status = 0;
        std::string body;
        std::string nonce;
        std::string location;
    };
    Response http(const std::string& method, const std::string& url, const std::string& body);
    // A JWS POST (`payload` empty: POST-as-GET), retried on badNonce.
    Response post(const std::string& url, const std::string& payload);
    void discover();
    void new_account();
    void authorize(const std::string& url);
    std::string poll(const std::string& url, const char* what,
                     const std::vector<std::string>& done);

    AcmeSettings settings_;
    EVP_PKEY* key_;
    AcmeHooks hooks_;
    void* curl_; // CURL*
    std::string new_nonce_url_;
    std::string new_account_url_;
    std::string new_order_url_;
    std::string nonce_;
    std::string kid_;
};

} // namespace liege::emperor
