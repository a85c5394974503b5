// What a test's OpenSSL client learns of the server: shared by the unit and integration tests.
#pragma once

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <string>

namespace liege::test {

// The organisation (O=) of the certificate the server presented: the tests' certificates carry
// a tag there, so two of the same name can be told apart. "(none)" without one.
inline std::string peer_cert_tag(const SSL* ssl) {
    X509* cert = SSL_get1_peer_certificate(ssl);
    if (cert == nullptr) {
        return "(none)";
    }
    char buf[256] = {};
    X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_organizationName, buf, sizeof(buf));
    X509_free(cert);
    return buf;
}

// The protocol ALPN settled on ("" for none).
inline std::string alpn_of(const SSL* ssl) {
    const unsigned char* p = nullptr;
    unsigned len = 0;
    SSL_get0_alpn_selected(ssl, &p, &len);
    return std::string(reinterpret_cast<const char*>(p), len);
}

} // namespace liege::test
