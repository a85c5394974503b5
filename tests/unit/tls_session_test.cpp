// The router's TLS engine without sockets: a TlsSession fed by an OpenSSL client through memory
// BIOs, with certificates made here (throwaway self-signed ECDSA P-256 ones), and the TlsStore's
// handling of certificate files that change, break or do not match their key.
#include <gtest/gtest.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "../../router/tls_context.hpp"
#include "../../router/tls_session.hpp"
#include "../tls_peer.hpp"
#include "liege/router.hpp"

using liege::router::Chunk;
using liege::router::ChunkPool;
using liege::router::TlsSession;
using liege::router::TlsStore;
namespace fs = std::filesystem;

namespace {

struct TempDir {
    TempDir() {
        char tmpl[] = "/tmp/liege-tls-unit.XXXXXX";
        path = mkdtemp(tmpl);
    }
    ~TempDir() { fs::remove_all(path); }
    fs::path path;
};

// Writes NAME.pem and NAME.key under `dir`: a self-signed certificate for `cn` with `tag` as its
// organisation, and its key (or `key_of`'s key when given).
void make_cert(const fs::path& dir, const std::string& name, const std::string& cn,
               const std::string& tag, const std::string& key_of = "") {
    EVP_PKEY* key = nullptr;
    if (key_of.empty()) {
        key = EVP_EC_gen("P-256");
    } else {
        FILE* f = std::fopen((dir / (key_of + ".key")).c_str(), "r");
        key = PEM_read_PrivateKey(f, nullptr, nullptr, nullptr);
        std::fclose(f);
    }
    X509* x = X509_new();
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_NAME* subject = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
    X509_NAME_add_entry_by_txt(subject, "O", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>(tag.c_str()), -1, -1, 0);
    X509_set_issuer_name(x, subject);
    X509_set_pubkey(x, key);
    X509_sign(x, key, EVP_sha256());
    FILE* f = std::fopen((dir / (name + ".pem")).c_str(), "w");
    PEM_write_X509(f, x);
    std::fclose(f);
    if (key_of.empty()) {
        f = std::fopen((dir / (name + ".key")).c_str(), "w");
        PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
        std::fclose(f);
    }
    X509_free(x);
    EVP_PKEY_free(key);
}

// A client in memory, wired to a TlsSession: bytes move between them until neither has more.
class Pair {
public:
    Pair(const TlsStore& store, const std::string& sni, SSL_SESSION* resume = nullptr)
        : session_(store.snapshot(), chunks_) {
        ctx_ = SSL_CTX_new(TLS_client_method());
        static const unsigned char kAlpn[] = {2,   'h', '2', 8,   'h', 't',
                                              't', 'p', '/', '1', '.', '1'};
        SSL_CTX_set_alpn_protos(ctx_, kAlpn, sizeof(kAlpn));
        ssl_ = SSL_new(ctx_);
        in_ = BIO_new(BIO_s_mem());
        out_ = BIO_new(BIO_s_mem());
        SSL_set_bio(ssl_, in_, out_);
        SSL_set_connect_state(ssl_);
        if (!sni.empty()) {
            SSL_set_tlsext_host_name(ssl_, sni.c_str());
        }
        if (resume != nullptr) {
            SSL_set_session(ssl_, resume);
        }
    }
    ~Pair() {
        // A client that goes without a close_notify makes its session unresumable.
        SSL_shutdown(ssl_);
        SSL_free(ssl_);
        SSL_CTX_free(ctx_);
    }

    // Moves bytes both ways until nothing moves; returns what the server decrypted.
    std::string pump() {
        std::string plain;
        for (int round = 0; round < 50; ++round) {
            SSL_do_handshake(ssl_);
            bool moved = false;
            char buf[16384];
            int n = 0;
            while ((n = BIO_read(out_, buf, sizeof(buf))) > 0) {
                Chunk* c = chunks_.get();
                std::memcpy(c->data, buf, static_cast<size_t>(n));
                c->len = static_cast<uint32_t>(n);
                session_.feed(c);
                moved = true;
            }
            Chunk* c = chunks_.get();
            result_ = session_.read(c);
            plain.append(c->data, c->len);
            chunks_.unref(c);
            moved |= from_server();
            if (!moved || result_ < 0) {
                break;
            }
        }
        return plain;
    }
    bool from_server() {
        bool moved = false;
        for (Chunk* c = session_.take_output(); c != nullptr;) {
            Chunk* next = c->next_free;
            BIO_write(in_, c->data, static_cast<int>(c->len));
            chunks_.unref(c);
            c = next;
            moved = true;
        }
        return moved;
    }
    // What the client reads after the server wrote `data`.
    std::string server_says(const std::string& data) {
        EXPECT_TRUE(session_.write(data.data(), data.size()));
        from_server();
        std::string got;
        char buf[16384];
        int n = 0;
        while ((n = SSL_read(ssl_, buf, sizeof(buf))) > 0) {
            got.append(buf, static_cast<size_t>(n));
        }
        return got;
    }
    void client_says(const std::string& data) {
        SSL_write(ssl_, data.data(), static_cast<int>(data.size()));
    }
    std::string cert_tag() const { return liege::test::peer_cert_tag(ssl_); }
    std::string alpn() const { return liege::test::alpn_of(ssl_); }

    ChunkPool chunks_; // first: the session returns its chunks here when it goes
    TlsSession session_;
    SSL_CTX* ctx_ = nullptr;
    SSL* ssl_ = nullptr;
    BIO* in_ = nullptr;
    BIO* out_ = nullptr;
    int result_ = 0;
};

class TlsEngine : public ::testing::Test {
protected:
    void SetUp() override {
        make_cert(dir_.path, "default", "default.test", "default");
        make_cert(dir_.path, "shop", "shop.test", "shop");
        make_cert(dir_.path, "wild", "*.blog.test", "wild");
        ASSERT_TRUE(store_.init(file("default.pem"), file("default.key")));
        liege::control::RouteSpec shop;
        shop.vassal = "shop";
        shop.hosts = {"shop.test", "www.shop.test"};
        shop.tls_cert = file("shop.pem");
        shop.tls_key = file("shop.key");
        liege::control::RouteSpec blog;
        blog.vassal = "blog";
        blog.hosts = {"*.blog.test"};
        blog.tls_cert = file("wild.pem");
        blog.tls_key = file("wild.key");
        store_.set_routes({shop, blog});
    }
    std::string file(const std::string& name) const { return (dir_.path / name).string(); }

    TempDir dir_;
    TlsStore store_;
};

} // namespace

TEST_F(TlsEngine, SniChoosesTheVassalsCertificateAndAnyOtherNameGetsTheDefault) {
    for (const auto& [sni, tag] :
         std::vector<std::pair<std::string, std::string>>{{"shop.test", "shop"},
                                                          {"WWW.Shop.Test", "shop"},
                                                          {"a.blog.test", "wild"},
                                                          {"x.y.blog.test", "wild"},
                                                          {"blog.test", "default"},
                                                          {"other.test", "default"},
                                                          {"", "default"}}) {
        Pair p(store_, sni);
        p.pump();
        EXPECT_TRUE(p.session_.handshake_done()) << sni;
        EXPECT_EQ(p.cert_tag(), tag) << "SNI '" << sni << "'";
        EXPECT_EQ(p.alpn(), "http/1.1") << "h2 is not offered back";
    }
}

TEST_F(TlsEngine, CarriesPlaintextBothWaysAndSeesTheClientsCloseNotify) {
    Pair p(store_, "shop.test");
    p.pump();
    ASSERT_TRUE(p.session_.handshake_done());
    p.client_says("GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n");
    EXPECT_EQ(p.pump(), "GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n");
    const std::string big(200'000, 'x'); // several records, more than a chunk
    EXPECT_EQ(p.server_says(big), big);
    SSL_shutdown(p.ssl_);
    p.pump();
    EXPECT_EQ(p.result_, TlsSession::kClosed);
}

TEST_F(TlsEngine, PlainHttpIsToldApartFromOtherFailures) {
    ChunkPool chunks;
    {
        TlsSession s(store_.snapshot(), chunks);
        Chunk* c = chunks.get();
        const std::string req = "GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n";
        std::memcpy(c->data, req.data(), req.size());
        c->len = static_cast<uint32_t>(req.size());
        s.feed(c);
        Chunk* out = chunks.get();
        EXPECT_EQ(s.read(out), TlsSession::kFailed);
        EXPECT_TRUE(s.plain_http());
        chunks.unref(out);
    }
    {
        TlsSession s(store_.snapshot(), chunks);
        Chunk* c = chunks.get();
        std::memset(c->data, 0x16, 5); // a handshake record header announcing garbage
        std::memset(c->data + 5, 0xee, 100);
        c->len = 105;
        s.feed(c);
        Chunk* out = chunks.get();
        EXPECT_EQ(s.read(out), TlsSession::kFailed);
        EXPECT_FALSE(s.plain_http());
        EXPECT_FALSE(s.failure().empty());
        chunks.unref(out);
    }
}

TEST_F(TlsEngine, ASessionTicketResumesOnANewConnection) {
    SSL_SESSION* ticket = nullptr;
    {
        Pair p(store_, "shop.test");
        p.pump();
        p.client_says("x");
        p.pump();
        EXPECT_EQ(p.server_says("y"), "y"); // TLS 1.3 tickets arrive after the handshake
        ticket = SSL_get1_session(p.ssl_);
        ASSERT_NE(ticket, nullptr);
        EXPECT_EQ(SSL_SESSION_has_ticket(ticket), 1);
        EXPECT_EQ(SSL_SESSION_is_resumable(ticket), 1);
        EXPECT_EQ(SSL_version(p.ssl_), TLS1_3_VERSION);
    }
    Pair again(store_, "shop.test", ticket);
    again.pump();
    EXPECT_TRUE(again.session_.handshake_done());
    EXPECT_EQ(SSL_session_reused(again.ssl_), 1);
    SSL_SESSION_free(ticket);
}

TEST_F(TlsEngine, AChangedCertificateServesNewSessionsAndABadOneKeepsTheOld) {
    Pair before(store_, "shop.test");
    before.pump();
    ASSERT_EQ(before.cert_tag(), "shop");

    // Files change between polls; a stat sees a new inode after the rename.
    make_cert(dir_.path, "shop-next", "shop.test", "shop-2");
    fs::rename(dir_.path / "shop-next.pem", dir_.path / "shop.pem");
    fs::rename(dir_.path / "shop-next.key", dir_.path / "shop.key");
    store_.check_files();
    {
        Pair after(store_, "shop.test");
        after.pump();
        EXPECT_EQ(after.cert_tag(), "shop-2");
    }
    // The session made before goes on with the certificate it had.
    before.client_says("still here");
    EXPECT_EQ(before.pump(), "still here");

    // Garbage in place of the certificate: the loaded one stays.
    {
        std::ofstream junk(dir_.path / "junk");
        junk << "not a certificate\n";
    }
    fs::rename(dir_.path / "junk", dir_.path / "shop.pem");
    store_.check_files();
    store_.check_files();
    Pair kept(store_, "shop.test");
    kept.pump();
    EXPECT_EQ(kept.cert_tag(), "shop-2");

    // A certificate of another key beside the old key: still the old pair.
    make_cert(dir_.path, "shop-3", "shop.test", "shop-3");
    fs::rename(dir_.path / "shop-3.pem", dir_.path / "shop.pem");
    store_.check_files();
    store_.check_files();
    Pair mismatched(store_, "shop.test");
    mismatched.pump();
    EXPECT_EQ(mismatched.cert_tag(), "shop-2");
    fs::rename(dir_.path / "shop-3.key", dir_.path / "shop.key");
    store_.check_files();
    Pair matched(store_, "shop.test");
    matched.pump();
    EXPECT_EQ(matched.cert_tag(), "shop-3");
}

TEST_F(TlsEngine, CheckCertificateNamesTheFileAndTheReason) {
    EXPECT_EQ(liege::check_certificate(file("shop.pem"), file("shop.key")), "");
    const std::string mismatch = liege::check_certificate(file("shop.pem"), file("default.key"));
    EXPECT_EQ(mismatch.rfind(file("default.key") + ": error: ", 0), 0u) << mismatch;
    EXPECT_NE(mismatch.find("does not match"), std::string::npos) << mismatch;
    const std::string missing = liege::check_certificate(file("none.pem"), "");
    EXPECT_EQ(missing.rfind(file("none.pem") + ": error: ", 0), 0u) << missing;
}
