// Automatic certificates ([tls] acme = true) against a real ACME server: Debian's pebble, started
// here on loopback with an HTTPS certificate from a throwaway CA (--acme-ca trusts it).
//
// The HTTP-01 challenge is the real one: pebble resolves the vassal's names through
// pebble-challtestsrv, a DNS server that answers every A query with 127.0.0.1 (and no AAAA), and
// fetches http://NAME:PORT/.well-known/acme-challenge/TOKEN from liege's plain listener (pebble's
// httpPort is liege's port). Nothing is marked valid without that fetch.
#include <gtest/gtest.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "harness.hpp"
#include "test_ca.hpp"

using namespace liege::test;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// pebble and the DNS server it asks, on ports of their own. Its ports are chosen first, so that
// liege can be given the directory URL before pebble starts (pebble needs liege's plain port).
class Pebble {
public:
    Pebble(const fs::path& dir, const TestCa& ca)
        : dir_(dir), ca_(ca.ca()), port_(closed_port()), management_(closed_port()) {
        fs::create_directories(dir_);
        ca.issue("localhost", "pebble", dir_ / "pebble.pem", dir_ / "pebble.key");
    }

    // `http_port`: where pebble fetches HTTP-01 tokens (liege's plain listener). `validity`:
    // seconds a certificate it issues is valid (0: pebble's default, five years).
    void start(uint16_t http_port, int validity = 0) {
        const uint16_t dns = closed_port();
        dns_ = std::make_unique<Process>(std::vector<std::string>{
            tool("pebble-challtestsrv"), "-dns01", "127.0.0.1:" + std::to_string(dns), "-http01",
            "", "-https01", "", "-tlsalpn01", "", "-management",
            "127.0.0.1:" + std::to_string(closed_port()), "-defaultIPv4", "127.0.0.1",
            "-defaultIPv6", ""});
        EXPECT_TRUE(dns_->out().wait_for_line_containing("Starting management server", kStart))
            << dns_->describe();
        json config = {{"pebble",
                        {{"listenAddress", "127.0.0.1:" + std::to_string(port_)},
                         {"managementListenAddress", "127.0.0.1:" + std::to_string(management_)},
                         {"certificate", (dir_ / "pebble.pem").string()},
                         {"privateKey", (dir_ / "pebble.key").string()},
                         {"httpPort", http_port},
                         {"tlsPort", closed_port()},
                         {"ocspResponderURL", ""},
                         {"externalAccountBindingRequired", false}}}};
        if (validity > 0) {
            config["pebble"]["certificateValidityPeriod"] = validity;
        }
        write_file(dir_ / "pebble.json", config.dump());
        // PEBBLE_VA_NOSLEEP: validate at once rather than after up to 5 s. Nonces are still
        // rejected at pebble's default rate (5%), which the client must retry.
        server_ = std::make_unique<Process>(
            std::vector<std::string>{tool("pebble"), "-config", (dir_ / "pebble.json").string(),
                                     "-dnsserver", "127.0.0.1:" + std::to_string(dns)},
            std::vector<std::string>{"PEBBLE_VA_NOSLEEP=1"});
        EXPECT_TRUE(server_->out().wait_for_line_containing("ACME directory available", kStart))
            << server_->describe();
    }

    std::string directory() const { return "https://localhost:" + std::to_string(port_) + "/dir"; }
    // The CA pebble's own HTTPS certificate comes from (for --acme-ca).
    const fs::path& https_ca() const { return ca_; }
    // The root that signs what pebble issues (it makes a new one every start).
    fs::path root() const {
        const fs::path out = dir_ / "root.pem";
        Ran r =
            run({"curl", "-sS", "--max-time", "10", "--cacert", ca_.string(), "-o", out.string(),
                 "https://localhost:" + std::to_string(management_) + "/roots/0"});
        EXPECT_EQ(r.code, 0) << r.err;
        return out;
    }
    std::string log() const { return server_->out().text() + server_->err().text(); }

private:
    fs::path dir_;
    fs::path ca_;
    uint16_t port_ = 0;
    uint16_t management_ = 0;
    std::unique_ptr<Process> dns_;
    std::unique_ptr<Process> server_;
};

// The serial (hex) and organisation of the certificate 127.0.0.1:port presents for `sni`, or
// "" when the handshake fails.
struct Served {
    std::string serial;
    std::string issuer;
};
Served served_certificate(uint16_t port, const std::string& sni) {
    Served s;
    SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
    const int fd = connect_loopback(port);
    SSL* ssl = SSL_new(ctx);
    if (fd >= 0) {
        SSL_set_fd(ssl, fd);
        SSL_set_tlsext_host_name(ssl, sni.c_str());
        if (SSL_connect(ssl) == 1) {
            if (X509* cert = SSL_get1_peer_certificate(ssl)) {
                BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr);
                char* hex = BN_bn2hex(bn);
                s.serial = hex;
                OPENSSL_free(hex);
                BN_free(bn);
                char buf[256] = {};
                X509_NAME_oneline(X509_get_issuer_name(cert), buf, sizeof(buf));
                s.issuer = buf;
                X509_free(cert);
            }
        }
    }
    ERR_clear_error();
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    if (fd >= 0) {
        ::close(fd);
    }
    return s;
}

mode_t mode_of(const fs::path& p) {
    struct stat st {};
    return ::stat(p.c_str(), &st) == 0 ? (st.st_mode & 07777) : 0;
}

class Acme : public LiegeRunFixture {
protected:
    void SetUp() override {
        LiegeRunFixture::SetUp();
        ca_ = std::make_unique<TestCa>(root_ / "certs");
        ca_->issue("default.test", "default", root_ / "certs" / "default.pem",
                   root_ / "certs" / "default.key");
        state_ = root_ / "state";
    }

    // `liege run` with an HTTPS listener, the default certificate and `acme` arguments.
    void start(std::vector<std::string> acme) {
        Options o;
        o.extra = {"--listen-tls", "127.0.0.1:0",
                   "--tls-cert",   (root_ / "certs" / "default.pem").string(),
                   "--tls-key",    (root_ / "certs" / "default.key").string(),
                   "--state-dir",  state_.string()};
        o.extra.insert(o.extra.end(), acme.begin(), acme.end());
        ASSERT_NO_FATAL_FAILURE(start_liege(o));
        auto port = wait_tls_port();
        ASSERT_TRUE(port) << log();
        tls_port_ = *port;
    }
    std::vector<std::string> acme_args(const Pebble& p) const {
        return {"--acme-directory",    p.directory(),  "--acme-ca",
                p.https_ca().string(), "--acme-email", "ops@shop.test"};
    }

    void write_shop(const std::string& hosts = R"(["shop.test", "www.shop.test"])") {
        write_vassal("shop", std::string("command = [\"") + LIEGE_TEST_BACKEND +
                                 "\", \"--listen\", \"127.0.0.1:${PORT}\", \"--name\", "
                                 "\"${NAME}\"]\nhosts = " +
                                 hosts + "\n[tls]\nacme = true\n");
    }

    // liege with `pebble` as its ACME server, pebble started on liege's plain port, and the shop
    // vassal; returns its tls.acme entry once its certificate is issued (null if it never is).
    json issue(Pebble& pebble, int validity = 0) {
        start(acme_args(pebble));
        if (HasFatalFailure()) {
            return nullptr;
        }
        pebble.start(port_, validity);
        write_shop();
        json acme = wait_acme("valid");
        EXPECT_FALSE(acme.is_null()) << vassal("shop").dump() << "\n" << log() << pebble.log();
        return acme;
    }

    // Polls /status until the vassal's tls.acme state is `state`; returns the tls.acme entry.
    json wait_acme(const std::string& state, Millis timeout = 60s) {
        json v = wait_vassal(
            "shop",
            [&](const json& j) {
                return j.contains("tls") && j["tls"]["acme"].value("state", "") == state;
            },
            timeout);
        return v.is_null() || !v.contains("tls") ? json(nullptr) : v["tls"]["acme"];
    }

    // curl over HTTPS for `host`, resolved to the router, trusting only `ca`.
    Ran curl_https(const std::string& host, const fs::path& ca) {
        const std::string port = std::to_string(tls_port_);
        return run({"curl", "-sS", "--max-time", "10", "--cacert", ca.string(), "--resolve",
                    host + ":" + port + ":127.0.0.1", "-w", "\n%{http_code}",
                    "https://" + host + ":" + port + "/id"});
    }

    fs::path certificate_file() const { return state_ / "acme" / "shop" / "certificate.pem"; }

    // The test's pebble. A member, so that it outlives liege (stopped in TearDown): an order
    // liege starts just then must not fail and log an error.
    Pebble& make_pebble() {
        pebble_ = std::make_unique<Pebble>(root_ / "pebble", *ca_);
        return *pebble_;
    }

    std::unique_ptr<TestCa> ca_;
    std::unique_ptr<Pebble> pebble_;
    fs::path state_;
    uint16_t tls_port_ = 0;
};

} // namespace

TEST_F(Acme, IssuesByHttp01AndServesTheCertificate) {
    Pebble& pebble = make_pebble();
    json acme = issue(pebble);
    ASSERT_FALSE(acme.is_null());
    EXPECT_EQ(acme["names"], json({"shop.test", "www.shop.test"}));
    EXPECT_TRUE(acme["last_error"].is_null());
    EXPECT_GT(acme["renew_at"].get<int64_t>(), ::time(nullptr));
    EXPECT_LT(acme["renew_at"].get<int64_t>(), acme["not_after"].get<int64_t>());

    // pebble fetched each name's token from liege's plain listener.
    const std::string log_text = pebble.log();
    for (const std::string name : {"shop.test", "www.shop.test"}) {
        EXPECT_NE(log_text.find("http://" + name + ":" + std::to_string(port_) +
                                "/.well-known/acme-challenge/"),
                  std::string::npos)
            << log_text;
    }
    EXPECT_GE(count_of(log_text, "Attempting to validate w/ HTTP"), 2u) << log_text;

    // The issued certificate verifies against pebble's root, on both names, and the app answers.
    const fs::path root = pebble.root();
    for (const std::string name : {"shop.test", "www.shop.test"}) {
        Ran r;
        ASSERT_TRUE(poll_until(
            [&] {
                r = curl_https(name, root);
                return r.code == 0 && r.out == "shop\n200";
            },
            kWait, 100ms))
            << name << ": " << r.code << " " << r.out << r.err << "\n"
            << log();
    }
    // An unknown name still gets the default certificate, which pebble's root does not sign.
    EXPECT_NE(served_certificate(tls_port_, "other.test").issuer.find("liege test CA"),
              std::string::npos);
    EXPECT_NE(served_certificate(tls_port_, "shop.test").issuer.find("Pebble"), std::string::npos);

    // The token is answered no more once validated: the request goes to the app.
    const size_t at = log_text.find("/.well-known/acme-challenge/");
    const std::string token =
        log_text.substr(at + 28, log_text.find_first_of("\r\n ", at) - at - 28);
    auto r = get_once("shop.test", "/.well-known/acme-challenge/" + token);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body.find(token + "."), std::string::npos) << r->body;

    // Key and certificate are private files in the state directory.
    EXPECT_EQ(mode_of(certificate_file()), 0600u);
    EXPECT_EQ(mode_of(state_ / "acme" / "account.pem"), 0600u);
    EXPECT_EQ(mode_of(state_ / "acme"), 0700u);
}

TEST_F(Acme, RenewsAShortLivedCertificateForNewConnections) {
    Pebble& pebble = make_pebble();
    json acme = issue(pebble, 30); // 30 s certificates: renewed 20 s after they begin
    ASSERT_FALSE(acme.is_null());
    const std::string first = acme["serial"];
    EXPECT_EQ(acme["not_after"].get<int64_t>() - 29, acme["renew_at"].get<int64_t>() - 19)
        << acme.dump(); // renew_at = not_before + 2/3 of 29 s (pebble subtracts one second)
    ASSERT_TRUE(poll_until(
        [&] { return served_certificate(tls_port_, "shop.test").serial == first; }, kWait, 50ms));

    // Renewed by itself, without a reload: new connections get the new certificate.
    std::string now;
    ASSERT_TRUE(poll_until(
        [&] {
            now = served_certificate(tls_port_, "shop.test").serial;
            return !now.empty() && now != first;
        },
        60s, 200ms))
        << "still serving " << first << "\n"
        << log();
    EXPECT_TRUE(wait_log("certificate issued", kWait)) << log();
    const fs::path root = pebble.root();
    Ran r = curl_https("shop.test", root);
    EXPECT_EQ(r.out, "shop\n200") << r.err;
    acme = vassal("shop")["tls"]["acme"];
    EXPECT_EQ(acme["state"], "valid") << acme.dump();
}

TEST_F(Acme, KeepsTheCertificateAcrossARestartWithoutANewOrder) {
    Pebble& pebble = make_pebble();
    json acme = issue(pebble);
    ASSERT_FALSE(acme.is_null());
    const std::string serial = acme["serial"];
    const size_t orders = count_of(pebble.log(), "POST /order-plz");
    EXPECT_GE(orders, 1u) << pebble.log();
    stop_emperor();

    ASSERT_NO_FATAL_FAILURE(start(acme_args(pebble)));
    acme = wait_acme("valid", kStart);
    ASSERT_FALSE(acme.is_null()) << log();
    EXPECT_EQ(acme["serial"], serial);
    EXPECT_TRUE(wait_log("using the stored certificate", kWait)) << log();
    EXPECT_EQ(log().find("ordering a certificate"), std::string::npos) << log();
    ASSERT_TRUE(poll_until(
        [&] { return served_certificate(tls_port_, "shop.test").serial == serial; }, kWait, 50ms));
    EXPECT_EQ(count_of(pebble.log(), "POST /order-plz"), orders) << pebble.log();
    EXPECT_EQ(mode_of(certificate_file()), 0600u);
}

TEST_F(Acme, UnreachableServerBacksOffAndTheDefaultCertificateServes) {
    expect_error_line({"vassal shop: ACME order failed"});
    const fs::path ca = root_ / "certs" / "ca.pem";
    ASSERT_NO_FATAL_FAILURE(
        start({"--acme-directory", "https://localhost:" + std::to_string(closed_port()) + "/dir",
               "--acme-ca", ca.string()}));
    write_shop(R"(["shop.test"])");
    json acme = wait_acme("backoff", kStart);
    ASSERT_FALSE(acme.is_null()) << vassal("shop").dump() << "\n" << log();
    EXPECT_EQ(acme["failures"], 1);
    EXPECT_NE(acme["last_error"].get<std::string>().find("/dir"), std::string::npos) << acme.dump();
    const int64_t next = acme["next_attempt"];
    EXPECT_GE(next, ::time(nullptr) + 20) << acme.dump();
    EXPECT_LE(next, ::time(nullptr) + 31) << acme.dump();
    EXPECT_TRUE(acme["certificate"].is_null());
    EXPECT_TRUE(wait_log("next attempt in 30 s", kWait)) << log();
    // Meanwhile the app is served over HTTPS with the default certificate.
    Ran r = curl_https("shop.test", ca);
    EXPECT_NE(r.err.find("no alternative certificate subject name matches"), std::string::npos)
        << r.code << " " << r.err;
    EXPECT_NE(served_certificate(tls_port_, "shop.test").issuer.find("liege test CA"),
              std::string::npos);
    r = run({"curl", "-sS", "--max-time", "10", "-k", "--resolve",
             "shop.test:" + std::to_string(tls_port_) + ":127.0.0.1", "-w", "\n%{http_code}",
             "https://shop.test:" + std::to_string(tls_port_) + "/id"});
    EXPECT_EQ(r.out, "shop\n200") << r.err;
}

TEST_F(Acme, WithoutAnAcmeDirectoryTheVassalIsReportedAndServedWithTheDefault) {
    expect_error_line({"vassal shop: tls.acme = true needs liege run --acme-directory"});
    ASSERT_NO_FATAL_FAILURE(start({}));
    write_shop(R"(["shop.test"])");
    json acme = wait_acme("unconfigured", kStart);
    ASSERT_FALSE(acme.is_null()) << vassal("shop").dump() << "\n" << log();
    EXPECT_NE(acme["last_error"].get<std::string>().find("--acme-directory"), std::string::npos);
    EXPECT_EQ(wait_vassal("shop", [](const json& v) { return v["state"] == "running"; })["state"],
              "running");
    Ran r = run({"curl", "-sS", "--max-time", "10", "-k", "--resolve",
                 "shop.test:" + std::to_string(tls_port_) + ":127.0.0.1", "-w", "\n%{http_code}",
                 "https://shop.test:" + std::to_string(tls_port_) + "/id"});
    EXPECT_EQ(r.out, "shop\n200") << r.err;
    EXPECT_NE(served_certificate(tls_port_, "shop.test").issuer.find("liege test CA"),
              std::string::npos);
}
