// The pure pieces of the ACME client (RFC 8555): base64url, the account key and its JWK, JWS
// signing (ES256), the CSR, what a certificate says of its lifetime, when to renew, the backoff
// after a failure, and the server's JSON objects. No sockets, no files: the protocol itself runs
// in emperor/acme_client.cpp, the scheduling in emperor/acme_manager.cpp.
//
// Crypto is OpenSSL 3's (EVP); nothing here is hand-rolled. Functions that take a key or a PEM
// text throw std::runtime_error naming what OpenSSL said when it fails.
#pragma once

#include <openssl/evp.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace liege::acme {

// The names a vassal's certificate is ordered for: its exact hosts (no "*", no "*.suffix"; ACME
// issues wildcards only by DNS-01), sorted, without duplicates.
std::vector<std::string> certificate_names(const std::vector<std::string>& hosts);

// RFC 4648 §5 without padding, as JWS wants it.
std::string base64url(std::string_view bytes);

struct PkeyFree {
    void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

// ECDSA P-256, the only key type this client makes (account keys and certificate keys).
Pkey generate_key();
std::string key_to_pem(EVP_PKEY* key); // PKCS#8, unencrypted
Pkey key_from_pem(std::string_view pem);

// The public key as a JWK (RFC 7517): {"crv":"P-256","kty":"EC","x":...,"y":...}.
nlohmann::json jwk(EVP_PKEY* key);
// RFC 7638: base64url(SHA-256(the JWK's required members, sorted, no whitespace)).
std::string jwk_thumbprint(EVP_PKEY* key);
// HTTP-01's key authorisation: TOKEN "." thumbprint.
std::string key_authorization(std::string_view token, EVP_PKEY* account_key);

// A flattened JWS (RFC 7515 §7.2.2) of `payload` signed with ES256: the signature is r||s, 32
// bytes each (RFC 7518 §3.4), not the DER OpenSSL produces. The protected header names the
// account by `kid` once it has one, else carries the `jwk`. An empty `payload` is a POST-as-GET.
nlohmann::json sign_jws(EVP_PKEY* key, std::string_view kid, std::string_view nonce,
                        std::string_view url, std::string_view payload);

// A PKCS#10 request for `names` (subjectAltName DNS entries; the first is also the CN), DER.
std::string make_csr(EVP_PKEY* key, const std::vector<std::string>& names);

// What the first certificate of a PEM chain says.
struct CertInfo {
    int64_t not_before = 0; // unix seconds
    int64_t not_after = 0;
    std::string serial; // hex
};
// Throws std::runtime_error when the text holds no certificate.
CertInfo cert_info(std::string_view pem);
// Whether the first certificate of `pem` names every one of `names` and `key` is its key.
bool cert_covers(std::string_view pem, EVP_PKEY* key, const std::vector<std::string>& names);

// When a certificate is renewed: two thirds into its lifetime.
int64_t renew_at(const CertInfo& c);

// The wait before the next attempt after `failures` failed ones in a row (1 = the first
// failure): 30 s doubling up to an hour. ACME servers limit failed validations per hour, so a
// broken setup must not hammer them.
int64_t backoff_seconds(int failures);

// The server's objects, as far as the client reads them. Each parse throws
// std::invalid_argument naming the missing or mistyped field.
struct Directory {
    std::string new_nonce;
    std::string new_account;
    std::string new_order;
};
Directory parse_directory(const nlohmann::json& j);

struct Order {
    std::string status; // pending, ready, processing, valid, invalid
    std::vector<std::string> authorizations;
    std::string finalize;
    std::string certificate; // once valid
};
Order parse_order(const nlohmann::json& j);

struct Authorization {
    std::string status; // pending, valid, invalid, ...
    std::string identifier;
    // The http-01 challenge (empty url: the server offers none).
    std::string challenge_url;
    std::string challenge_status;
    std::string token;
    std::string error; // the challenge's error detail, when it failed
};
Authorization parse_authorization(const nlohmann::json& j);

// An RFC 7807 problem document: "TYPE: detail" (type without the ACME URN prefix), or "" when
// `body` is not one.
std::string problem_text(std::string_view body);
bool is_bad_nonce(std::string_view body);

} // namespace liege::acme
