// HTTPS in `liege run` as a user sees it: `--listen-tls` with a default certificate, vassals with
// their own `[tls]` certificate chosen by SNI, certificates replaced on disk, the redirect of plain
// HTTP, X-Forwarded-* from trusted and untrusted peers, router settings through `--router-opt`,
// and clients that do not speak TLS properly.
//
// Certificates are made at test time by the openssl command (a throwaway CA per test, ECDSA P-256
// keys); nothing here is a real key. Clients are curl (with --cacert and --resolve, as a user
// would check a site before its DNS points at it) and, where a test must hold a connection open
// across a change or read the certificate a connection got, a small blocking OpenSSL client.
#include <gtest/gtest.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "../tls_peer.hpp"
#include "harness.hpp"
#include "test_ca.hpp"

using namespace liege::test;
namespace fs = std::filesystem;

namespace {

// One TLS connection to 127.0.0.1:port, blocking, with bounded waits.
class TlsClient {
public:
    // `ca` empty: no verification. `sni` empty: no server name sent.
    TlsClient(uint16_t port, const std::string& sni, const fs::path& ca,
              SSL_SESSION* resume = nullptr) {
        ctx_ = SSL_CTX_new(TLS_client_method());
        if (!ca.empty()) {
            SSL_CTX_load_verify_locations(ctx_, ca.c_str(), nullptr);
            SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
        }
        static const unsigned char kAlpn[] = {2,   'h', '2', 8,   'h', 't',
                                              't', 'p', '/', '1', '.', '1'};
        SSL_CTX_set_alpn_protos(ctx_, kAlpn, sizeof(kAlpn));
        fd_ = connect_loopback(port);
        if (fd_ < 0) {
            error_ = "connect failed";
            return;
        }
        ssl_ = SSL_new(ctx_);
        SSL_set_fd(ssl_, fd_);
        if (!sni.empty()) {
            SSL_set_tlsext_host_name(ssl_, sni.c_str());
            SSL_set1_host(ssl_, sni.c_str());
        }
        if (resume != nullptr) {
            SSL_set_session(ssl_, resume);
        }
        if (SSL_connect(ssl_) != 1) {
            char buf[256];
            ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
            error_ = std::string("handshake failed: ") + buf;
        }
    }
    ~TlsClient() {
        if (ssl_ != nullptr) {
            SSL_free(ssl_);
        }
        SSL_CTX_free(ctx_);
        if (fd_ >= 0) {
            ::close(fd_);
        }
    }
    TlsClient(const TlsClient&) = delete;
    TlsClient& operator=(const TlsClient&) = delete;

    bool ok() const { return error_.empty(); }
    const std::string& error() const { return error_; }

    // The tag (O=) of the certificate the server presented.
    std::string cert_tag() const { return liege::test::peer_cert_tag(ssl_); }
    std::string alpn() const { return liege::test::alpn_of(ssl_); }
    bool resumed() const { return SSL_session_reused(ssl_) == 1; }
    // The session to resume on another connection (read a response first: TLS 1.3 sends its
    // tickets after the handshake). The caller frees it.
    SSL_SESSION* session() const { return SSL_get1_session(ssl_); }

    // One GET on the connection; the response's status and body (Content-Length framed), or
    // nullopt when the connection fails first.
    struct Reply {
        int status = 0;
        std::string head;
        std::string body;
    };
    std::optional<Reply> get(const std::string& host, const std::string& target) {
        const std::string req = "GET " + target + " HTTP/1.1\r\nHost: " + host + "\r\n\r\n";
        if (SSL_write(ssl_, req.data(), static_cast<int>(req.size())) <= 0) {
            return std::nullopt;
        }
        std::string in;
        size_t head_end = std::string::npos;
        size_t want = 0;
        char buf[16384];
        while (head_end == std::string::npos || in.size() < head_end + 4 + want) {
            const int n = SSL_read(ssl_, buf, sizeof(buf));
            if (n <= 0) {
                return std::nullopt;
            }
            in.append(buf, static_cast<size_t>(n));
            if (head_end == std::string::npos && (head_end = in.find("\r\n\r\n")) != in.npos) {
                const std::string head = in.substr(0, head_end);
                const size_t cl = head.find("Content-Length: ");
                if (cl != std::string::npos) {
                    std::from_chars(head.data() + cl + 16, head.data() + head.size(), want);
                }
            }
        }
        Reply r;
        r.head = in.substr(0, head_end);
        r.body = in.substr(head_end + 4, want);
        std::from_chars(r.head.data() + 9, r.head.data() + r.head.size(), r.status);
        return r;
    }

    // Sends a GET without reading the response (see read_body_bytes).
    bool send_get(const std::string& host, const std::string& target) {
        const std::string req = "GET " + target + " HTTP/1.1\r\nHost: " + host + "\r\n\r\n";
        return SSL_write(ssl_, req.data(), static_cast<int>(req.size())) > 0;
    }
    // Reads a Content-Length framed response, keeping only the body's length.
    uint64_t read_body_bytes() {
        std::string head;
        char buf[65536];
        uint64_t body = 0;
        uint64_t want = UINT64_MAX;
        while (body < want) {
            const int n = SSL_read(ssl_, buf, sizeof(buf));
            if (n <= 0) {
                break;
            }
            if (want != UINT64_MAX) {
                body += static_cast<uint64_t>(n);
                continue;
            }
            head.append(buf, static_cast<size_t>(n));
            const size_t end = head.find("\r\n\r\n");
            if (end == std::string::npos) {
                continue;
            }
            const size_t cl = head.find("Content-Length: ");
            want = 0;
            if (cl != std::string::npos && cl < end) {
                std::from_chars(head.data() + cl + 16, head.data() + end, want);
            }
            body = head.size() - end - 4;
        }
        return body;
    }

private:
    SSL_CTX* ctx_ = nullptr;
    SSL* ssl_ = nullptr;
    int fd_ = -1;
    std::string error_;
};

std::string backend_vassal(const std::string& host, const std::string& tls = "") {
    std::string text = std::string("command = [\"") + LIEGE_TEST_BACKEND +
                       "\", \"--listen\", \"127.0.0.1:${PORT}\", \"--name\", \"${NAME}\"]\n"
                       "hosts = [\"" +
                       host + "\"]\n";
    if (!tls.empty()) {
        text += "[tls]\n" + tls;
    }
    return text;
}

class Tls : public LiegeRunFixture {
protected:
    void SetUp() override {
        LiegeRunFixture::SetUp();
        certs_ = root_ / "certs";
        ca_ = std::make_unique<TestCa>(certs_);
        ca_->issue("default.test", "default", pem("default"), key("default"));
    }

    fs::path pem(const std::string& n) const { return certs_ / (n + ".pem"); }
    fs::path key(const std::string& n) const { return certs_ / (n + ".key"); }

    // `liege run` with an HTTPS listener and the default certificate.
    void start_tls(std::vector<std::string> extra = {}) {
        Options o;
        o.extra = {"--listen-tls",          "127.0.0.1:0", "--tls-cert",
                   pem("default").string(), "--tls-key",   key("default").string()};
        o.extra.insert(o.extra.end(), extra.begin(), extra.end());
        ASSERT_NO_FATAL_FAILURE(start_liege(o));
        auto port = wait_tls_port();
        ASSERT_TRUE(port) << log();
        tls_port_ = *port;
    }

    // Polls until a request for `host` over HTTPS reaches vassal `name` (its route is in).
    bool wait_served(const std::string& host, const std::string& name) {
        return poll_until(
            [&] {
                TlsClient c(tls_port_, host, {});
                auto r = c.ok() ? c.get(host, "/id") : std::nullopt;
                return r && r->status == 200 && r->body == name;
            },
            kStart, 50ms);
    }

    // curl over HTTPS to `host` resolved to the router, trusting the test CA.
    Ran curl_https(const std::string& host, const std::string& target,
                   std::vector<std::string> extra = {}) {
        std::vector<std::string> argv = {"curl",
                                         "-sS",
                                         "-v",
                                         "--max-time",
                                         "10",
                                         "--cacert",
                                         ca_->ca().string(),
                                         "--resolve",
                                         host + ":" + std::to_string(tls_port_) + ":127.0.0.1"};
        argv.insert(argv.end(), extra.begin(), extra.end());
        argv.push_back("https://" + host + ":" + std::to_string(tls_port_) + target);
        return run(argv);
    }

    fs::path certs_;
    std::unique_ptr<TestCa> ca_;
    uint16_t tls_port_ = 0;
};

// The value of a header in a raw head ("Name: value\r\n"), or "".
std::string header_in(const std::string& head, const std::string& name) {
    const size_t at = head.find("\r\n" + name + ": ");
    if (at == std::string::npos) {
        return "";
    }
    const size_t from = at + 4 + name.size();
    return head.substr(from, head.find("\r\n", from) - from);
}

} // namespace

TEST_F(Tls, EachVassalGetsItsCertificateBySniAndAnyOtherNameTheDefault) {
    ca_->issue("alpha.test", "alpha", pem("alpha"), key("alpha"));
    ca_->issue("beta.test", "beta", pem("beta"), key("beta"));
    write_vassal("alpha",
                 backend_vassal("alpha.test", "cert = \"" + pem("alpha").string() + "\"\nkey = \"" +
                                                  key("alpha").string() + "\"\n"));
    write_vassal("beta",
                 backend_vassal("beta.test", "cert = \"" + pem("beta").string() + "\"\nkey = \"" +
                                                 key("beta").string() + "\"\n"));
    write_vassal("other", backend_vassal("unknown.test"));
    ASSERT_NO_FATAL_FAILURE(start_tls());
    ASSERT_TRUE(wait_served("alpha.test", "alpha"));
    ASSERT_TRUE(wait_served("beta.test", "beta"));
    ASSERT_TRUE(wait_served("unknown.test", "other"));

    for (const auto& [host, name] : {std::pair{"alpha.test", "alpha"}, {"beta.test", "beta"}}) {
        // curl checks the chain against the test CA and the name against the certificate.
        Ran r = curl_https(host, "/id");
        EXPECT_EQ(r.code, 0) << host << ":\n" << r.err;
        EXPECT_EQ(r.out, name) << r.err;
        EXPECT_NE(r.err.find("O=" + std::string(name)), std::string::npos) << r.err;
        EXPECT_NE(r.err.find("ALPN: server accepted http/1.1"), std::string::npos) << r.err;

        TlsClient c(tls_port_, host, ca_->ca());
        ASSERT_TRUE(c.ok()) << c.error();
        EXPECT_EQ(c.cert_tag(), name);
        EXPECT_EQ(c.alpn(), "http/1.1") << "offered h2 and http/1.1";
    }
    // A name no vassal has a certificate for (its vassal has none), and no name at all.
    Ran r = curl_https("unknown.test", "/id", {"--insecure"});
    EXPECT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(r.out, "other");
    EXPECT_NE(r.err.find("O=default"), std::string::npos) << r.err;
    TlsClient no_sni(tls_port_, "", {});
    ASSERT_TRUE(no_sni.ok()) << no_sni.error();
    EXPECT_EQ(no_sni.cert_tag(), "default");
    // Without --insecure, curl refuses the default certificate for a name it does not hold.
    EXPECT_NE(curl_https("unknown.test", "/id").code, 0);
}

TEST_F(Tls, TlsClientsAreForwardedAsHttpsAndSessionsResume) {
    write_vassal("app", backend_vassal("app.test"));
    ASSERT_NO_FATAL_FAILURE(start_tls());
    ASSERT_TRUE(wait_served("app.test", "app"));

    TlsClient first(tls_port_, "app.test", {});
    ASSERT_TRUE(first.ok()) << first.error();
    auto r = first.get("app.test", "/headers");
    ASSERT_TRUE(r);
    EXPECT_EQ(header_in(r->body, "X-Forwarded-Proto"), "https") << r->body;
    // Keep-alive: a second request on the same connection.
    r = first.get("app.test", "/id");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body, "app");

    SSL_SESSION* session = first.session();
    ASSERT_NE(session, nullptr);
    TlsClient again(tls_port_, "app.test", {}, session);
    SSL_SESSION_free(session);
    ASSERT_TRUE(again.ok()) << again.error();
    EXPECT_TRUE(again.resumed()) << "a session ticket resumes without a full handshake";
    r = again.get("app.test", "/id");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body, "app");

    // Plain HTTP still says http.
    HttpClient plain(port_);
    auto p = plain.request("GET", "/headers", {{"Host", "app.test"}});
    EXPECT_EQ(header_in(p.body, "X-Forwarded-Proto"), "http") << p.body;
}

TEST_F(Tls, ARotatedCertificateServesNewConnectionsWhileOldOnesContinue) {
    ca_->issue("alpha.test", "first", pem("alpha"), key("alpha"));
    write_vassal("alpha",
                 backend_vassal("alpha.test", "cert = \"" + pem("alpha").string() + "\"\nkey = \"" +
                                                  key("alpha").string() + "\"\n"));
    ASSERT_NO_FATAL_FAILURE(start_tls());
    ASSERT_TRUE(wait_served("alpha.test", "alpha"));
    TlsClient old(tls_port_, "alpha.test", ca_->ca());
    ASSERT_TRUE(old.ok()) << old.error();
    ASSERT_EQ(old.cert_tag(), "first");
    ASSERT_TRUE(old.get("alpha.test", "/id"));

    ca_->issue("alpha.test", "second", pem("alpha"), key("alpha"));
    EXPECT_TRUE(poll_until(
        [&] {
            TlsClient c(tls_port_, "alpha.test", ca_->ca());
            return c.ok() && c.cert_tag() == "second";
        },
        kWait, 50ms))
        << log();
    EXPECT_TRUE(wait_log("tls: reloaded certificate " + pem("alpha").string(), kWait));
    // The connection made before the change goes on.
    auto r = old.get("alpha.test", "/id");
    ASSERT_TRUE(r) << "the old connection was dropped";
    EXPECT_EQ(r->body, "alpha");

    // The default certificate is watched the same way.
    ca_->issue("default.test", "default-2", pem("default"), key("default"));
    EXPECT_TRUE(poll_until(
        [&] {
            TlsClient c(tls_port_, "other.test", {});
            return c.ok() && c.cert_tag() == "default-2";
        },
        kWait, 50ms));
}

TEST_F(Tls, ABadOrMismatchedCertificateKeepsTheOldOneWithADiagnostic) {
    ca_->issue("alpha.test", "good", pem("alpha"), key("alpha"));
    write_vassal("alpha",
                 backend_vassal("alpha.test", "cert = \"" + pem("alpha").string() + "\"\nkey = \"" +
                                                  key("alpha").string() + "\"\n"));
    ASSERT_NO_FATAL_FAILURE(start_tls());
    ASSERT_TRUE(wait_served("alpha.test", "alpha"));
    expect_error_line({pem("alpha").string() + ": error:"});
    expect_error_line({key("alpha").string() + ": error:"});

    // Not a certificate at all.
    std::size_t from = mark();
    write_file(certs_ / "junk", "this is not a certificate\n");
    fs::rename(certs_ / "junk", pem("alpha"));
    EXPECT_TRUE(wait_log(pem("alpha").string() + ": error: ", kWait, from)) << log();
    EXPECT_TRUE(wait_log("the previous certificate stays in service", kWait, from));
    {
        TlsClient c(tls_port_, "alpha.test", ca_->ca());
        ASSERT_TRUE(c.ok()) << c.error();
        EXPECT_EQ(c.cert_tag(), "good");
        auto r = c.get("alpha.test", "/id");
        ASSERT_TRUE(r);
        EXPECT_EQ(r->body, "alpha");
    }
    EXPECT_EQ(count_log(pem("alpha").string() + ": error: ", from), 1u) << "reported once";

    // A certificate whose key is another one's.
    from = mark();
    ca_->issue("alpha.test", "mismatched", certs_ / "new.pem", certs_ / "new.key");
    fs::rename(certs_ / "new.pem", pem("alpha"));
    EXPECT_TRUE(wait_log("the private key does not match the certificate", kWait, from)) << log();
    TlsClient c(tls_port_, "alpha.test", ca_->ca());
    ASSERT_TRUE(c.ok()) << c.error();
    EXPECT_EQ(c.cert_tag(), "good");

    // Its key put in place too: the pair loads.
    fs::rename(certs_ / "new.key", key("alpha"));
    EXPECT_TRUE(poll_until(
        [&] {
            TlsClient n(tls_port_, "alpha.test", ca_->ca());
            return n.ok() && n.cert_tag() == "mismatched";
        },
        kWait, 50ms));
}

TEST_F(Tls, RedirectSendsPlainHttpToHttpsButNotAcmeChallenges) {
    write_vassal("shop", backend_vassal("shop.test", "redirect = true\n"));
    write_vassal("plain", backend_vassal("plain.test"));
    ASSERT_NO_FATAL_FAILURE(start_tls());
    ASSERT_TRUE(wait_served("shop.test", "shop"));
    ASSERT_TRUE(wait_served("plain.test", "plain"));

    HttpClient c(port_);
    auto r = c.request("GET", "/cart?item=3", {{"Host", "shop.test:8080"}});
    EXPECT_EQ(r.status, 308) << r.head;
    EXPECT_EQ(r.header("Location").value_or(""),
              "https://shop.test:" + std::to_string(tls_port_) + "/cart?item=3");

    HttpClient challenge(port_);
    r = challenge.request("GET", "/.well-known/acme-challenge/token", {{"Host", "shop.test"}});
    EXPECT_NE(r.status, 308) << "challenges reach the app";
    EXPECT_EQ(r.header("X-Backend").value_or(""), "shop") << r.head;

    HttpClient other(port_);
    r = other.request("GET", "/id", {{"Host", "plain.test"}});
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "plain");

    // curl follows it to the HTTPS port.
    Ran followed =
        run({"curl", "-sS", "--max-time", "10", "-L", "--cacert", ca_->ca().string(), "--insecure",
             "--resolve", "shop.test:" + std::to_string(port_) + ":127.0.0.1", "--resolve",
             "shop.test:" + std::to_string(tls_port_) + ":127.0.0.1",
             "http://shop.test:" + std::to_string(port_) + "/id"});
    EXPECT_EQ(followed.code, 0) << followed.err;
    EXPECT_EQ(followed.out, "shop");
}

TEST_F(Tls, PlainHttpOnTheTlsPortAndATruncatedHelloAreLoggedOnceAndServingGoesOn) {
    write_vassal("app", backend_vassal("app.test"));
    ASSERT_NO_FATAL_FAILURE(start_tls());
    ASSERT_TRUE(wait_served("app.test", "app"));
    const auto router_pid = status()->at("router").at("pid").get<int>();

    std::size_t from = mark();
    {
        HttpClient c(tls_port_);
        c.send("GET / HTTP/1.1\r\nHost: app.test\r\n\r\n");
        auto r = c.try_read_response();
        ASSERT_TRUE(r) << "a plain HTTP client is told, not cut off";
        EXPECT_EQ(r->status, 400);
        EXPECT_NE(r->body.find("plain HTTP request was sent to the HTTPS port"), std::string::npos)
            << r->body;
    }
    EXPECT_TRUE(wait_log("plain HTTP on the HTTPS port", kWait, from)) << log();

    // The first bytes of a ClientHello, then the client goes away.
    const std::size_t truncated_from = mark();
    {
        HttpClient c(tls_port_);
        const char hello_start[] = {0x16, 0x03, 0x01,       0x02, 0x00, 0x01,
                                    0x00, 0x01, (char)0xfc, 0x03, 0x03};
        c.send(std::string_view(hello_start, sizeof(hello_start)));
    }
    EXPECT_TRUE(wait_log("closed during the TLS handshake", kWait, truncated_from)) << log();

    // Both are served by the same router, which still serves HTTPS.
    TlsClient t(tls_port_, "app.test", {});
    ASSERT_TRUE(t.ok()) << t.error();
    auto r = t.get("app.test", "/id");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body, "app");
    EXPECT_EQ(status()->at("router").at("pid").get<int>(), router_pid) << "the router restarted";
    EXPECT_EQ(count_log("plain HTTP on the HTTPS port", from), 1u);
    EXPECT_EQ(count_log("closed during the TLS handshake", truncated_from), 1u);
}

class ForwardedHeaders : public Tls {};

namespace {

// What the backend saw of a request that claims to come from 203.0.113.9 over https.
std::string spoofed_request_seen(uint16_t port) {
    HttpClient c(port);
    auto r = c.request("GET", "/headers",
                       {{"Host", "app.test"},
                        {"X-Forwarded-Proto", "https"},
                        {"X-Forwarded-For", "203.0.113.9"},
                        {"X-Forwarded-Host", "shop.example"}});
    EXPECT_EQ(r.status, 200);
    return r.body;
}

} // namespace

TEST_F(ForwardedHeaders, AnUntrustedPeersForwardedHeadersAreReplaced) {
    write_vassal("app", backend_vassal("app.test"));
    ASSERT_NO_FATAL_FAILURE(start_tls());
    ASSERT_TRUE(wait_served("app.test", "app"));
    const std::string seen = spoofed_request_seen(port_);
    EXPECT_EQ(header_in(seen, "X-Forwarded-Proto"), "http") << seen;
    EXPECT_EQ(header_in(seen, "X-Forwarded-For"), "127.0.0.1") << seen;
    EXPECT_EQ(header_in(seen, "X-Forwarded-Host"), "app.test") << seen;
}

TEST_F(ForwardedHeaders, ATrustedProxysForwardedHeadersAreKeptAndAppendedTo) {
    write_vassal("app", backend_vassal("app.test"));
    ASSERT_NO_FATAL_FAILURE(start_tls({"--trusted-proxy", "127.0.0.0/8"}));
    ASSERT_TRUE(wait_served("app.test", "app"));
    const std::string seen = spoofed_request_seen(port_);
    EXPECT_EQ(header_in(seen, "X-Forwarded-Proto"), "https") << seen;
    EXPECT_EQ(header_in(seen, "X-Forwarded-For"), "203.0.113.9, 127.0.0.1") << seen;
    EXPECT_EQ(header_in(seen, "X-Forwarded-Host"), "shop.example") << seen;
    // Without the headers, the router's own view.
    HttpClient bare(port_);
    auto r = bare.request("GET", "/headers", {{"Host", "app.test"}});
    EXPECT_EQ(header_in(r.body, "X-Forwarded-Proto"), "http") << r.body;
}

class RouterOpt : public LiegeRunFixture {};

TEST_F(RouterOpt, BodyMaxGives413AndEverySettingIsInStatus) {
    write_vassal("app", backend_vassal("*"));
    ASSERT_NO_FATAL_FAILURE(start_liege(
        {.extra = {"--router-opt", "body_max=1KiB", "--router-opt", "upstream_timeout=45s"}}));
    ASSERT_TRUE(poll_until(
        [&] {
            HttpClient c(port_);
            return c.request("GET", "/id").status == 200;
        },
        kStart, 50ms));
    HttpClient small(port_);
    EXPECT_EQ(small.request("POST", "/id", {}, std::string(1024, 'x')).status, 200);
    HttpClient big(port_);
    EXPECT_EQ(big.request("POST", "/id", {}, std::string(1025, 'x')).status, 413);

    auto st = status();
    ASSERT_TRUE(st);
    const auto& settings = st->at("router").at("settings");
    EXPECT_EQ(settings.at("body_max"), 1024);
    EXPECT_EQ(settings.at("upstream_timeout"), "45s");
    EXPECT_EQ(settings.at("header_timeout"), "10s") << "defaults are shown too";
}

TEST(RouterOptCli, AMistakeIsAClearErrorBeforeAnythingStarts) {
    const fs::path dir = make_temp_dir("liege-router-opt");
    for (const auto& [flag, value, says] :
         std::vector<std::tuple<std::string, std::string, std::string>>{
             {"--router-opt", "body_max=huge", "--router-opt body_max=huge: invalid size 'huge'"},
             {"--router-opt", "bodymax=1k", "unknown key 'bodymax'"},
             {"--trusted-proxy", "10.0.0.1/8", "invalid address range '10.0.0.1/8'"}}) {
        Ran r = run({LIEGE_BINARY, "run", "--vassals", dir.string(), "--listen", "127.0.0.1:0",
                     "--admin", "127.0.0.1:0", flag, value});
        EXPECT_NE(r.code, 0) << flag << " " << value;
        EXPECT_NE(r.err.find(says), std::string::npos) << r.err;
    }
    fs::remove_all(dir);
}

TEST(TlsCli, AMissingOrBadDefaultCertificateIsAClearErrorBeforeAnythingStarts) {
    const fs::path dir = make_temp_dir("liege-tls-cli");
    write_file(dir / "junk.pem", "not a certificate\n");
    Ran r = run({LIEGE_BINARY, "run", "--vassals", dir.string(), "--listen", "127.0.0.1:0",
                 "--admin", "127.0.0.1:0", "--listen-tls", "127.0.0.1:0"});
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("--listen-tls needs a default certificate: --tls-cert"), std::string::npos)
        << r.err;
    r = run({LIEGE_BINARY, "run", "--vassals", dir.string(), "--listen", "127.0.0.1:0", "--admin",
             "127.0.0.1:0", "--listen-tls", "127.0.0.1:0", "--tls-cert",
             (dir / "junk.pem").string()});
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find((dir / "junk.pem").string() + ": error:"), std::string::npos) << r.err;
    fs::remove_all(dir);
}

class TlsRouter : public RouterFixture {};

TEST_F(TlsRouter, ASlowTlsReaderIsNotBufferedFor) {
    const fs::path dir = make_temp_dir("liege-tls-router");
    TestCa ca(dir);
    ca.issue("bench.test", "router", dir / "cert.pem", dir / "cert.key");
    add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_router_for_backends({"--listen-tls", "127.0.0.1:0", "--tls-cert",
                                                       (dir / "cert.pem").string(), "--tls-key",
                                                       (dir / "cert.key").string()}));
    auto line = router().err().wait_for_line_containing("(https)");
    ASSERT_TRUE(line);
    auto tls_port = port_after(*line, "listening on ");
    ASSERT_TRUE(tls_port);

    TlsClient c(*tls_port, "bench.test", ca.ca());
    ASSERT_TRUE(c.ok()) << c.error();
    // Warm up: first-use allocations are not growth with body size.
    ASSERT_TRUE(c.send_get("bench.test", "/bytes?n=4000000"));
    ASSERT_EQ(c.read_body_bytes(), 4000000u);
    const long baseline = rss_kib(router().pid());
    ASSERT_GT(baseline, 0);

    const uint64_t size = 128ull * 1024 * 1024;
    RssSampler sampler(router().pid());
    ASSERT_TRUE(c.send_get("bench.test", "/bytes?n=" + std::to_string(size)));
    // Bounded observation of something that must not happen: the router buffering a response
    // its TLS client does not read.
    EXPECT_FALSE(poll_until([&] { return rss_kib(router().pid()) > baseline + 16 * 1024; }, 1s))
        << "the router buffers a response its TLS client does not read";
    EXPECT_EQ(c.read_body_bytes(), size);
    const long peak = sampler.stop();
    EXPECT_LE(peak - baseline, 16 * 1024)
        << "router RSS grew from " << baseline << " KiB to " << peak << " KiB";
    auto r = c.get("bench.test", "/id");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body, "solo");
    fs::remove_all(dir);
}
