// One TLS connection's OpenSSL state, fed and drained through pooled chunks: the socket's
// ciphertext goes in (feed), plaintext comes out (read); plaintext to send goes in (write) and
// records come out (take_output). No socket here: Stream moves the bytes.
//
// The SSL's BIO reads straight from the chunks the socket filled (a chunk is held until its
// last byte is decrypted) and writes records straight into pooled chunks, so the data path
// copies each byte once per direction, as the decryption or encryption itself, and allocates
// nothing per request.
#pragma once

#include <openssl/ssl.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "buffers.hpp"
#include "tls_context.hpp"

namespace liege::router {

class TlsSession {
public:
    TlsSession(std::shared_ptr<const TlsSnapshot> certs, ChunkPool& chunks);
    ~TlsSession();
    TlsSession(const TlsSession&) = delete;
    TlsSession& operator=(const TlsSession&) = delete;

    // Ciphertext from the socket; the session takes the reference.
    void feed(Chunk* c);
    // Runs the handshake, then decrypts into out->data from out->len on, as far as it goes.
    // Returns the plaintext bytes added (0: none until more input comes), kClosed when the peer
    // sent close_notify, kFailed when the connection cannot go on (failure() says why).
    static constexpr int kClosed = -1;
    static constexpr int kFailed = -2;
    int read(Chunk* out);
    // Ciphertext not yet decrypted, or plaintext OpenSSL holds: read() has more to give.
    bool input_pending() const;
    bool handshake_done() const { return SSL_is_init_finished(ssl_) == 1; }
    bool handshake_started() const { return fed_ > 0; }

    // Encrypts; the records wait in take_output(). False before the handshake is done or when
    // encryption fails.
    bool write(const char* data, size_t len);
    void close_notify(); // queues the close_notify alert
    // The records to send, as a list of chunks linked through next_free (null: nothing).
    Chunk* take_output();
    bool has_output() const { return out_ != nullptr; }

    const std::string& failure() const { return failure_; }
    // The failed peer spoke plain HTTP to the TLS port.
    bool plain_http() const { return plain_http_; }

private:
    static int bio_read(BIO* b, char* buf, int len);
    static int bio_write(BIO* b, const char* buf, int len);
    static long bio_ctrl(BIO* b, int cmd, long num, void* ptr);
    static BIO_METHOD* bio_method();
    void failed(int ssl_error);

    ChunkPool& chunks_;
    std::shared_ptr<const TlsSnapshot> certs_; // what SNI chooses from, for this connection
    SSL* ssl_ = nullptr;
    Chunk* in_ = nullptr; // ciphertext not yet read by OpenSSL, linked through next_free
    Chunk* in_tail_ = nullptr;
    uint32_t in_off_ = 0;  // of in_
    Chunk* out_ = nullptr; // records to send, linked through next_free
    Chunk* out_tail_ = nullptr;
    uint64_t fed_ = 0;
    std::string failure_;
    bool plain_http_ = false;
};

// OpenSSL's queued errors as one line (the queue is cleared); `fallback` when there are none.
std::string tls_errors(std::string_view fallback);

} // namespace liege::router
