// The ACME client's pure pieces: base64url, the JWK and its thumbprint, ES256 JWS signatures,
// CSRs, certificate lifetimes and renewal, backoff, the server's JSON objects, the control
// messages for challenges, and the router's challenge answers.
#include <gtest/gtest.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <string>
#include <vector>

#include "../../router/acme_challenges.hpp"
#include "liege/acme.hpp"
#include "liege/control.hpp"

using namespace liege;
using nlohmann::json;

namespace {

// A P-256 key made with `openssl genpkey`; its JWK and thumbprint below were computed from
// `openssl ec -text` output by a separate script (Python's hashlib), not by this code.
constexpr const char* kTestKey =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgb5tgUDXXT5wBlYNI\n"
    "K1/4dVasuMFK1zGOfu116GKqfsmhRANCAAR4bYo2A+eXP3ZSfhqzE+KndPFCMuew\n"
    "JQwBJz5sGKjaHhrHdGBK+YTwW0v/8qccI0bfjr1WOpcCd6L1PBT+ADm0\n"
    "-----END PRIVATE KEY-----\n";

std::string unbase64url(std::string s) {
    for (char& c : s) {
        c = c == '-' ? '+' : c == '_' ? '/' : c;
    }
    while (s.size() % 4 != 0) {
        s += '=';
    }
    std::string out(s.size(), '\0');
    const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                  reinterpret_cast<const unsigned char*>(s.data()),
                                  static_cast<int>(s.size()));
    EXPECT_GE(n, 0);
    out.resize(static_cast<size_t>(n) - std::count(s.begin(), s.end(), '='));
    return out;
}

// Verifies a JWS's r||s signature with the key: back to DER, then EVP_DigestVerify.
bool verify(EVP_PKEY* key, const json& jws) {
    const std::string input =
        jws["protected"].get<std::string>() + "." + jws["payload"].get<std::string>();
    const std::string rs = unbase64url(jws["signature"].get<std::string>());
    if (rs.size() != 64) {
        return false;
    }
    ECDSA_SIG* sig = ECDSA_SIG_new();
    ECDSA_SIG_set0(sig, BN_bin2bn(reinterpret_cast<const unsigned char*>(rs.data()), 32, nullptr),
                   BN_bin2bn(reinterpret_cast<const unsigned char*>(rs.data()) + 32, 32, nullptr));
    unsigned char* der = nullptr;
    const int der_len = i2d_ECDSA_SIG(sig, &der);
    ECDSA_SIG_free(sig);
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    const bool ok =
        EVP_DigestVerifyInit(ctx, nullptr, EVP_sha256(), nullptr, key) == 1 &&
        EVP_DigestVerify(ctx, der, static_cast<size_t>(der_len),
                         reinterpret_cast<const unsigned char*>(input.data()), input.size()) == 1;
    EVP_MD_CTX_free(ctx);
    OPENSSL_free(der);
    return ok;
}

// A self-signed certificate for `names` valid from `not_before` for `seconds`, as PEM.
std::string self_signed(EVP_PKEY* key, const std::vector<std::string>& names, time_t not_before,
                        long seconds) {
    X509* x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 0x1234);
    X509_time_adj_ex(X509_getm_notBefore(x), 0, 0, &not_before);
    X509_time_adj_ex(X509_getm_notAfter(x), 0, seconds, &not_before);
    X509_set_pubkey(x, key);
    X509_NAME* n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>(names.front().c_str()), -1,
                               -1, 0);
    X509_set_issuer_name(x, n);
    std::string san;
    for (const auto& name : names) {
        san += (san.empty() ? "DNS:" : ",DNS:") + name;
    }
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, nullptr, NID_subject_alt_name, san.c_str());
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    X509_sign(x, key, EVP_sha256());
    BIO* b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(b, x);
    char* data = nullptr;
    const long len = BIO_get_mem_data(b, &data);
    std::string pem(data, static_cast<size_t>(len));
    BIO_free(b);
    X509_free(x);
    return pem;
}

} // namespace

TEST(AcmeBase64url, EncodesWithoutPaddingAndWithTheUrlAlphabet) {
    EXPECT_EQ(acme::base64url(""), "");
    EXPECT_EQ(acme::base64url("f"), "Zg");
    EXPECT_EQ(acme::base64url("fo"), "Zm8");
    EXPECT_EQ(acme::base64url("foo"), "Zm9v");
    EXPECT_EQ(acme::base64url("foob"), "Zm9vYg");
    EXPECT_EQ(acme::base64url(std::string("\xfb\xff\xbf", 3)), "-_-_");
    // RFC 7515 A.3's protected header {"alg":"ES256"}.
    EXPECT_EQ(acme::base64url("{\"alg\":\"ES256\"}"), "eyJhbGciOiJFUzI1NiJ9");
}

TEST(AcmeNames, ExactHostsOnlySortedWithoutDuplicates) {
    EXPECT_EQ(
        acme::certificate_names({"www.shop.test", "*", "shop.test", "*.shop.test", "shop.test"}),
        (std::vector<std::string>{"shop.test", "www.shop.test"}));
    EXPECT_TRUE(acme::certificate_names({"*", "*.shop.test"}).empty());
}

TEST(AcmeKey, JwkAndThumbprintOfAKnownKey) {
    acme::Pkey key = acme::key_from_pem(kTestKey);
    const json j = acme::jwk(key.get());
    EXPECT_EQ(j.dump(), "{\"crv\":\"P-256\",\"kty\":\"EC\","
                        "\"x\":\"eG2KNgPnlz92Un4asxPip3TxQjLnsCUMASc-bBio2h4\","
                        "\"y\":\"Gsd0YEr5hPBbS__ypxwjRt-OvVY6lwJ3ovU8FP4AObQ\"}");
    EXPECT_EQ(acme::jwk_thumbprint(key.get()), "GKDM9o4eyhFUXC6AQZsCzpOv5RYcYw5QeMYPlAPjTwM");
    EXPECT_EQ(acme::key_authorization("tok-EN_1", key.get()),
              "tok-EN_1.GKDM9o4eyhFUXC6AQZsCzpOv5RYcYw5QeMYPlAPjTwM");
}

TEST(AcmeKey, GeneratedKeyRoundTripsThroughPem) {
    acme::Pkey key = acme::generate_key();
    const std::string pem = acme::key_to_pem(key.get());
    EXPECT_NE(pem.find("BEGIN PRIVATE KEY"), std::string::npos);
    acme::Pkey back = acme::key_from_pem(pem);
    EXPECT_EQ(acme::jwk_thumbprint(key.get()), acme::jwk_thumbprint(back.get()));
    EXPECT_THROW(acme::key_from_pem("not a key"), std::runtime_error);
}

TEST(AcmeJws, FirstRequestCarriesTheJwkAndVerifies) {
    acme::Pkey key = acme::key_from_pem(kTestKey);
    const json jws =
        acme::sign_jws(key.get(), "", "nonce-1", "https://ca.test/new-acct", "{\"a\":1}");
    const json header = json::parse(unbase64url(jws["protected"]));
    EXPECT_EQ(header["alg"], "ES256");
    EXPECT_EQ(header["nonce"], "nonce-1");
    EXPECT_EQ(header["url"], "https://ca.test/new-acct");
    EXPECT_EQ(header["jwk"], acme::jwk(key.get()));
    EXPECT_FALSE(header.contains("kid"));
    EXPECT_EQ(unbase64url(jws["payload"]), "{\"a\":1}");
    EXPECT_TRUE(verify(key.get(), jws));
    // Another key's signature does not verify: the check can fail.
    acme::Pkey other = acme::generate_key();
    EXPECT_FALSE(verify(other.get(), jws));
}

TEST(AcmeJws, LaterRequestsNameTheAccountAndPostAsGetHasAnEmptyPayload) {
    acme::Pkey key = acme::generate_key();
    const json jws =
        acme::sign_jws(key.get(), "https://ca.test/acct/7", "n2", "https://ca.test/order/1", "");
    const json header = json::parse(unbase64url(jws["protected"]));
    EXPECT_EQ(header["kid"], "https://ca.test/acct/7");
    EXPECT_FALSE(header.contains("jwk"));
    EXPECT_EQ(jws["payload"], "");
    EXPECT_TRUE(verify(key.get(), jws));
    // Each signature is fresh (ECDSA's random k) yet each verifies.
    const json again =
        acme::sign_jws(key.get(), "https://ca.test/acct/7", "n2", "https://ca.test/order/1", "");
    EXPECT_NE(again["signature"], jws["signature"]);
    EXPECT_TRUE(verify(key.get(), again));
}

TEST(AcmeCsr, NamesEveryHostAndIsSignedByTheKey) {
    acme::Pkey key = acme::generate_key();
    const std::string der = acme::make_csr(key.get(), {"shop.test", "www.shop.test"});
    const auto* p = reinterpret_cast<const unsigned char*>(der.data());
    X509_REQ* req = d2i_X509_REQ(nullptr, &p, static_cast<long>(der.size()));
    ASSERT_NE(req, nullptr);
    EXPECT_EQ(X509_REQ_verify(req, key.get()), 1);
    STACK_OF(X509_EXTENSION)* exts = X509_REQ_get_extensions(req);
    ASSERT_NE(exts, nullptr);
    auto* names =
        static_cast<GENERAL_NAMES*>(X509V3_get_d2i(exts, NID_subject_alt_name, nullptr, nullptr));
    ASSERT_NE(names, nullptr);
    std::vector<std::string> got;
    for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
        const GENERAL_NAME* g = sk_GENERAL_NAME_value(names, i);
        ASSERT_EQ(g->type, GEN_DNS);
        got.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(g->d.dNSName)),
                         static_cast<size_t>(ASN1_STRING_length(g->d.dNSName)));
    }
    EXPECT_EQ(got, (std::vector<std::string>{"shop.test", "www.shop.test"}));
    GENERAL_NAMES_free(names);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_REQ_free(req);
    EXPECT_THROW(acme::make_csr(key.get(), {}), std::invalid_argument);
}

TEST(AcmeCertificate, LifetimeSerialAndRenewalAtTwoThirds) {
    acme::Pkey key = acme::generate_key();
    const time_t start = 1'700'000'000;
    const std::string pem = self_signed(key.get(), {"shop.test"}, start, 90 * 86400);
    const acme::CertInfo c = acme::cert_info(pem);
    EXPECT_EQ(c.not_before, start);
    EXPECT_EQ(c.not_after, start + 90 * 86400);
    EXPECT_EQ(c.serial, "1234");
    EXPECT_EQ(acme::renew_at(c), start + 60 * 86400);
    EXPECT_EQ(acme::renew_at({100, 115, ""}), 110);
    EXPECT_THROW(acme::cert_info("no certificate"), std::runtime_error);
}

TEST(AcmeCertificate, CoversOnlyItsOwnNamesWithItsOwnKey) {
    acme::Pkey key = acme::generate_key();
    const std::string pem =
        self_signed(key.get(), {"shop.test", "www.shop.test"}, time(nullptr), 3600);
    EXPECT_TRUE(acme::cert_covers(pem, key.get(), {"shop.test", "www.shop.test"}));
    EXPECT_TRUE(acme::cert_covers(pem, key.get(), {"shop.test"}));
    EXPECT_FALSE(acme::cert_covers(pem, key.get(), {"shop.test", "blog.test"}));
    acme::Pkey other = acme::generate_key();
    EXPECT_FALSE(acme::cert_covers(pem, other.get(), {"shop.test"}));
}

TEST(AcmeBackoff, DoublesFromThirtySecondsToAnHour) {
    EXPECT_EQ(acme::backoff_seconds(1), 30);
    EXPECT_EQ(acme::backoff_seconds(2), 60);
    EXPECT_EQ(acme::backoff_seconds(3), 120);
    EXPECT_EQ(acme::backoff_seconds(7), 1920);
    EXPECT_EQ(acme::backoff_seconds(8), 3600);
    EXPECT_EQ(acme::backoff_seconds(1000), 3600);
}

TEST(AcmeObjects, DirectoryAsRfc8555Shows) {
    const json j = json::parse(R"({
      "newNonce": "https://example.com/acme/new-nonce",
      "newAccount": "https://example.com/acme/new-account",
      "newOrder": "https://example.com/acme/new-order",
      "revokeCert": "https://example.com/acme/revoke-cert",
      "meta": {"termsOfService": "https://example.com/acme/terms/2017-5-30"}})");
    const acme::Directory d = acme::parse_directory(j);
    EXPECT_EQ(d.new_nonce, "https://example.com/acme/new-nonce");
    EXPECT_EQ(d.new_account, "https://example.com/acme/new-account");
    EXPECT_EQ(d.new_order, "https://example.com/acme/new-order");
    EXPECT_THROW(acme::parse_directory(json::parse(R"({"newNonce": "x", "newAccount": "y"})")),
                 std::invalid_argument);
    EXPECT_THROW(acme::parse_directory(json::array()), std::invalid_argument);
}

TEST(AcmeObjects, OrderPendingThenValid) {
    acme::Order o = acme::parse_order(json::parse(R"({
      "status": "pending", "expires": "2016-01-05T14:09:07.99Z",
      "identifiers": [{"type": "dns", "value": "www.example.org"}],
      "authorizations": ["https://example.com/acme/authz/PAniVnsZcis",
                         "https://example.com/acme/authz/r4HqLzrSrpI"],
      "finalize": "https://example.com/acme/order/TOlocE8rfgo/finalize"})"));
    EXPECT_EQ(o.status, "pending");
    EXPECT_EQ(o.authorizations.size(), 2u);
    EXPECT_EQ(o.finalize, "https://example.com/acme/order/TOlocE8rfgo/finalize");
    EXPECT_EQ(o.certificate, "");
    o = acme::parse_order(json::parse(R"({"status": "valid", "authorizations": [],
      "finalize": "https://example.com/f", "certificate": "https://example.com/cert/mAt3xBGaobw"})"));
    EXPECT_EQ(o.certificate, "https://example.com/cert/mAt3xBGaobw");
    EXPECT_THROW(acme::parse_order(json::parse(R"({"status": "pending", "finalize": "f"})")),
                 std::invalid_argument);
    EXPECT_THROW(acme::parse_order(json::parse(R"({"status": "pending",
      "authorizations": [7], "finalize": "f"})")),
                 std::invalid_argument);
}

TEST(AcmeObjects, AuthorizationPicksTheHttp01Challenge) {
    acme::Authorization a = acme::parse_authorization(json::parse(R"({
      "status": "pending", "identifier": {"type": "dns", "value": "www.example.org"},
      "challenges": [
        {"type": "dns-01", "url": "https://example.com/acme/chall/Rg5dV14Gh1Q",
         "status": "pending", "token": "DGyRejmCefe7v4NfDGDKfA"},
        {"type": "http-01", "url": "https://example.com/acme/chall/prV_B7yEyA4",
         "status": "pending", "token": "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"}]})"));
    EXPECT_EQ(a.status, "pending");
    EXPECT_EQ(a.identifier, "www.example.org");
    EXPECT_EQ(a.challenge_url, "https://example.com/acme/chall/prV_B7yEyA4");
    EXPECT_EQ(a.token, "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0");
    a = acme::parse_authorization(json::parse(R"({
      "status": "invalid", "identifier": {"type": "dns", "value": "a.test"},
      "challenges": [{"type": "http-01", "url": "u", "status": "invalid", "token": "t",
        "error": {"type": "urn:ietf:params:acme:error:connection", "detail": "refused"}}]})"));
    EXPECT_EQ(a.error, "connection: refused");
    a = acme::parse_authorization(json::parse(R"({
      "status": "pending", "identifier": {"type": "dns", "value": "a.test"},
      "challenges": [{"type": "tls-alpn-01", "url": "u", "status": "pending", "token": "t"}]})"));
    EXPECT_EQ(a.challenge_url, "");
    EXPECT_THROW(acme::parse_authorization(json::parse(R"({"status": "pending",
      "challenges": []})")),
                 std::invalid_argument);
}

TEST(AcmeObjects, ProblemDocuments) {
    EXPECT_EQ(acme::problem_text(R"({"type": "urn:ietf:params:acme:error:badNonce",
      "detail": "JWS has an invalid anti-replay nonce"})"),
              "badNonce: JWS has an invalid anti-replay nonce");
    EXPECT_TRUE(acme::is_bad_nonce(R"({"type": "urn:ietf:params:acme:error:badNonce"})"));
    EXPECT_FALSE(acme::is_bad_nonce(R"({"type": "urn:ietf:params:acme:error:malformed"})"));
    EXPECT_EQ(acme::problem_text("<html>oops</html>"), "");
    EXPECT_FALSE(acme::is_bad_nonce(""));
}

TEST(AcmeControl, ChallengeMessagesRoundTrip) {
    control::AcmeChallengesMessage m{7, {{"tok1", "tok1.thumb"}, {"tok2", "tok2.thumb"}}};
    const std::string line = control::encode(m);
    ASSERT_EQ(line.back(), '\n');
    const json j = control::parse_line(std::string_view(line).substr(0, line.size() - 1));
    EXPECT_EQ(j["type"], "acme_challenges");
    const auto back = control::decode_acme_challenges(j);
    EXPECT_EQ(back.version, 7u);
    EXPECT_EQ(back.challenges, m.challenges);
    const std::string ack = control::encode(control::AcmeChallengesAppliedMessage{7});
    const json ja = control::parse_line(std::string_view(ack).substr(0, ack.size() - 1));
    EXPECT_EQ(ja["type"], "acme_challenges_applied");
    EXPECT_EQ(control::decode_acme_challenges_applied(ja).version, 7u);
}

TEST(AcmeChallenges, AnswersOnlyKnownTokensOnTheChallengePath) {
    router::AcmeChallenges c;
    EXPECT_FALSE(c.answer("/.well-known/acme-challenge/tok1"));
    c.set({{"tok1", "tok1.thumb"}});
    EXPECT_EQ(c.answer("/.well-known/acme-challenge/tok1"), "tok1.thumb");
    EXPECT_FALSE(c.answer("/.well-known/acme-challenge/tok2"));
    EXPECT_FALSE(c.answer("/.well-known/acme-challenge/"));
    EXPECT_FALSE(c.answer("/tok1"));
    EXPECT_FALSE(c.answer("/x/.well-known/acme-challenge/tok1"));
    c.set({}); // withdrawn after validation
    EXPECT_FALSE(c.answer("/.well-known/acme-challenge/tok1"));
}
