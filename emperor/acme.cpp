#include "liege/acme.hpp"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <ctime>
#include <stdexcept>

namespace liege::acme {

namespace {

[[noreturn]] void fail(std::string_view what) {
    const unsigned long e = ERR_get_error();
    std::string text(what);
    if (e != 0) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof(buf));
        text += ": ";
        text += buf;
    }
    ERR_clear_error();
    throw std::runtime_error(text);
}

struct BioFree {
    void operator()(BIO* b) const { BIO_free(b); }
};
using Bio = std::unique_ptr<BIO, BioFree>;

struct X509Free {
    void operator()(X509* x) const { X509_free(x); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;

Bio mem_bio(std::string_view text) {
    Bio b(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
    if (!b) {
        fail("BIO_new_mem_buf");
    }
    return b;
}

std::string bio_text(BIO* b) {
    char* data = nullptr;
    const long n = BIO_get_mem_data(b, &data);
    return std::string(data, static_cast<size_t>(n));
}

// The first object `read` (a PEM_read_bio_* function) finds in `pem`.
template <typename Ptr, typename Read>
Ptr read_pem(std::string_view pem, Read read, const char* what) {
    Bio b = mem_bio(pem);
    Ptr p(read(b.get(), nullptr, nullptr, nullptr));
    if (!p) {
        fail(std::string("no ") + what + " in the PEM text");
    }
    return p;
}

X509Ptr first_cert(std::string_view pem) {
    return read_pem<X509Ptr>(pem, PEM_read_bio_X509, "certificate");
}

std::string sha256(std::string_view data) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (EVP_Digest(data.data(), data.size(), md, &n, EVP_sha256(), nullptr) != 1) {
        fail("SHA-256");
    }
    return std::string(reinterpret_cast<char*>(md), n);
}

std::string coordinate(EVP_PKEY* key, const char* name) {
    BIGNUM* bn = nullptr;
    if (EVP_PKEY_get_bn_param(key, name, &bn) != 1) {
        fail("the key is not an EC key");
    }
    unsigned char buf[32];
    const int n = BN_bn2binpad(bn, buf, sizeof(buf));
    BN_free(bn);
    if (n != 32) {
        fail("the key is not a P-256 key");
    }
    return std::string(reinterpret_cast<char*>(buf), sizeof(buf));
}

int64_t unix_of(const ASN1_TIME* t) {
    std::tm tm{};
    if (ASN1_TIME_to_tm(t, &tm) != 1) {
        fail("bad certificate time");
    }
    return static_cast<int64_t>(timegm(&tm));
}

const std::string& need_string(const nlohmann::json& j, const char* key) {
    auto it = j.find(key);
    if (it == j.end() || !it->is_string()) {
        throw std::invalid_argument(std::string("ACME object without a string \"") + key + "\"");
    }
    return it->get_ref<const std::string&>();
}

const nlohmann::json& need_array(const nlohmann::json& j, const char* key) {
    auto it = j.find(key);
    if (it == j.end() || !it->is_array()) {
        throw std::invalid_argument(std::string("ACME object without an array \"") + key + "\"");
    }
    return *it;
}

void need_object(const nlohmann::json& j, const char* what) {
    if (!j.is_object()) {
        throw std::invalid_argument(std::string("the ACME ") + what + " is not a JSON object");
    }
}

std::string opt_string(const nlohmann::json& j, const char* key) {
    auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

} // namespace

std::vector<std::string> certificate_names(const std::vector<std::string>& hosts) {
    std::vector<std::string> out;
    for (const auto& h : hosts) {
        if (!h.empty() && h != "*" && !h.starts_with("*.")) {
            out.push_back(h);
        }
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
}

std::string base64url(std::string_view bytes) {
    std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
    const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                  reinterpret_cast<const unsigned char*>(bytes.data()),
                                  static_cast<int>(bytes.size()));
    out.resize(static_cast<size_t>(n));
    while (!out.empty() && out.back() == '=') {
        out.pop_back();
    }
    std::replace(out.begin(), out.end(), '+', '-');
    std::replace(out.begin(), out.end(), '/', '_');
    return out;
}

Pkey generate_key() {
    Pkey k(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
    if (!k) {
        fail("generating a P-256 key");
    }
    return k;
}

std::string key_to_pem(EVP_PKEY* key) {
    Bio b(BIO_new(BIO_s_mem()));
    if (!b || PEM_write_bio_PrivateKey(b.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
        fail("writing the key");
    }
    return bio_text(b.get());
}

Pkey key_from_pem(std::string_view pem) {
    return read_pem<Pkey>(pem, PEM_read_bio_PrivateKey, "private key");
}

nlohmann::json jwk(EVP_PKEY* key) {
    return {{"crv", "P-256"},
            {"kty", "EC"},
            {"x", base64url(coordinate(key, OSSL_PKEY_PARAM_EC_PUB_X))},
            {"y", base64url(coordinate(key, OSSL_PKEY_PARAM_EC_PUB_Y))}};
}

std::string jwk_thumbprint(EVP_PKEY* key) {
    // nlohmann::json keeps object members sorted and dump() adds no whitespace: the canonical
    // form RFC 7638 hashes.
    return base64url(sha256(jwk(key).dump()));
}

std::string key_authorization(std::string_view token, EVP_PKEY* account_key) {
    return std::string(token) + "." + jwk_thumbprint(account_key);
}

nlohmann::json sign_jws(EVP_PKEY* key, std::string_view kid, std::string_view nonce,
                        std::string_view url, std::string_view payload) {
    nlohmann::json header = {{"alg", "ES256"}, {"nonce", nonce}, {"url", url}};
    if (kid.empty()) {
        header["jwk"] = jwk(key);
    } else {
        header["kid"] = kid;
    }
    const std::string protected64 = base64url(header.dump());
    const std::string payload64 = base64url(payload);
    const std::string input = protected64 + "." + payload64;

    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    size_t der_len = 0;
    if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key) != 1 ||
        EVP_DigestSign(ctx.get(), nullptr, &der_len,
                       reinterpret_cast<const unsigned char*>(input.data()), input.size()) != 1) {
        fail("signing");
    }
    std::string der(der_len, '\0');
    if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(der.data()), &der_len,
                       reinterpret_cast<const unsigned char*>(input.data()), input.size()) != 1) {
        fail("signing");
    }
    const auto* p = reinterpret_cast<const unsigned char*>(der.data());
    std::unique_ptr<ECDSA_SIG, decltype(&ECDSA_SIG_free)> sig(
        d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der_len)), ECDSA_SIG_free);
    if (!sig) {
        fail("decoding the signature");
    }
    unsigned char rs[64];
    if (BN_bn2binpad(ECDSA_SIG_get0_r(sig.get()), rs, 32) != 32 ||
        BN_bn2binpad(ECDSA_SIG_get0_s(sig.get()), rs + 32, 32) != 32) {
        fail("the signature is not a P-256 one");
    }
    return {{"protected", protected64},
            {"payload", payload64},
            {"signature", base64url(std::string_view(reinterpret_cast<char*>(rs), sizeof(rs)))}};
}

std::string make_csr(EVP_PKEY* key, const std::vector<std::string>& names) {
    if (names.empty()) {
        throw std::invalid_argument("a certificate request needs a name");
    }
    std::unique_ptr<X509_REQ, decltype(&X509_REQ_free)> req(X509_REQ_new(), X509_REQ_free);
    if (!req || X509_REQ_set_version(req.get(), 0) != 1 ||
        X509_REQ_set_pubkey(req.get(), key) != 1) {
        fail("making the certificate request");
    }
    X509_NAME* subject = X509_REQ_get_subject_name(req.get());
    if (X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_UTF8,
                                   reinterpret_cast<const unsigned char*>(names.front().c_str()),
                                   -1, -1, 0) != 1) {
        fail("the certificate request's CN");
    }
    std::string san;
    for (const auto& n : names) {
        san += (san.empty() ? "DNS:" : ",DNS:") + n;
    }
    STACK_OF(X509_EXTENSION)* exts = sk_X509_EXTENSION_new_null();
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, nullptr, NID_subject_alt_name, san.c_str());
    if (exts == nullptr || ext == nullptr || sk_X509_EXTENSION_push(exts, ext) == 0) {
        X509_EXTENSION_free(ext);
        sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
        fail("the certificate request's subjectAltName");
    }
    const int added = X509_REQ_add_extensions(req.get(), exts);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    if (added != 1 || X509_REQ_sign(req.get(), key, EVP_sha256()) <= 0) {
        fail("signing the certificate request");
    }
    unsigned char* der = nullptr;
    const int n = i2d_X509_REQ(req.get(), &der);
    if (n <= 0) {
        fail("encoding the certificate request");
    }
    std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(n));
    OPENSSL_free(der);
    return out;
}

CertInfo cert_info(std::string_view pem) {
    X509Ptr x = first_cert(pem);
    CertInfo c;
    c.not_before = unix_of(X509_get0_notBefore(x.get()));
    c.not_after = unix_of(X509_get0_notAfter(x.get()));
    BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x.get()), nullptr);
    if (bn == nullptr) {
        fail("bad certificate serial");
    }
    char* hex = BN_bn2hex(bn);
    c.serial = hex != nullptr ? hex : "";
    OPENSSL_free(hex);
    BN_free(bn);
    return c;
}

bool cert_covers(std::string_view pem, EVP_PKEY* key, const std::vector<std::string>& names) {
    X509Ptr x = first_cert(pem);
    if (EVP_PKEY_eq(X509_get0_pubkey(x.get()), key) != 1) {
        return false;
    }
    for (const auto& n : names) {
        if (X509_check_host(x.get(), n.data(), n.size(), X509_CHECK_FLAG_NO_WILDCARDS, nullptr) !=
            1) {
            return false;
        }
    }
    return true;
}

int64_t renew_at(const CertInfo& c) {
    return c.not_before + (c.not_after - c.not_before) * 2 / 3;
}

int64_t backoff_seconds(int failures) {
    constexpr int64_t kFirst = 30;
    constexpr int64_t kMax = 3600;
    int64_t s = kFirst;
    for (int i = 1; i < failures && s < kMax; ++i) {
        s *= 2;
    }
    return std::min(s, kMax);
}

Directory parse_directory(const nlohmann::json& j) {
    need_object(j, "directory");
    return {need_string(j, "newNonce"), need_string(j, "newAccount"), need_string(j, "newOrder")};
}

Order parse_order(const nlohmann::json& j) {
    need_object(j, "order");
    Order o;
    o.status = need_string(j, "status");
    for (const auto& a : need_array(j, "authorizations")) {
        if (!a.is_string()) {
            throw std::invalid_argument("ACME order with a non-string authorization");
        }
        o.authorizations.push_back(a.get<std::string>());
    }
    o.finalize = need_string(j, "finalize");
    o.certificate = opt_string(j, "certificate");
    return o;
}

Authorization parse_authorization(const nlohmann::json& j) {
    need_object(j, "authorization");
    Authorization a;
    a.status = need_string(j, "status");
    auto id = j.find("identifier");
    if (id == j.end() || !id->is_object()) {
        throw std::invalid_argument("ACME object without an object \"identifier\"");
    }
    a.identifier = need_string(*id, "value");
    for (const auto& c : need_array(j, "challenges")) {
        if (c.is_object() && opt_string(c, "type") == "http-01") {
            a.challenge_url = need_string(c, "url");
            a.challenge_status = need_string(c, "status");
            a.token = need_string(c, "token");
            if (auto e = c.find("error"); e != c.end() && e->is_object()) {
                a.error = problem_text(e->dump());
            }
        }
    }
    return a;
}

std::string problem_text(std::string_view body) {
    const auto j = nlohmann::json::parse(body, nullptr, false);
    if (!j.is_object() || !j.contains("type")) {
        return "";
    }
    std::string type = opt_string(j, "type");
    constexpr std::string_view kUrn = "urn:ietf:params:acme:error:";
    if (type.starts_with(kUrn)) {
        type.erase(0, kUrn.size());
    }
    const std::string detail = opt_string(j, "detail");
    return detail.empty() ? type : type + ": " + detail;
}

bool is_bad_nonce(std::string_view body) {
    return problem_text(body).starts_with("badNonce");
}

} // namespace liege::acme
