// A connection's socket and its one deadline: the only code in the router that calls libuv for a
// client or upstream connection.
//
// Lifetime: a Stream lives inside the connection that owns it. Its socket and its timer are
// UvHandles (include/liege/uv.hpp): close() closes both, and from then on no libuv callback
// reaches the stream or its owner. The shutdown and connect requests live in the socket's block
// and the writes' ops in the thread's pool, so the cancelled callbacks libuv still makes after
// close() need neither. close() also lists the owner with its thread (RouterThread::retire),
// which calls Owner::on_stream_closed from the loop, never from inside close(): the owner frees
// itself there, and callers need no "am I closed" re-check after a call that may close.
//
// TLS: a stream of an HTTPS listener takes up TLS after open() (start_tls); its owner then sees
// plaintext through the same calls, and a plain stream pays one null check for it (stream_tls.cpp).
//
// Writes: send() writes what the socket takes at once and queues the rest, so a write that
// completes at once costs no deferred callback. Backpressure is the owner's: queued() tells the
// bytes libuv holds, not_taken() adds those in the kernel's send queue.
#pragma once

#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>

#include "buffers.hpp"
#include "liege/uv.hpp"

namespace liege {
struct Backend;
}

namespace liege::router {

class RouterThread;
class TlsSession;
struct TlsSnapshot;

class Stream {
public:
    // What a stream reports; every call comes from the loop, never from inside a Stream method.
    class Owner {
    public:
        // nread > 0: `chunk` holds the bytes (the owner takes the reference); nread < 0: EOF or
        // error, and chunk is null.
        virtual void on_stream_read(ssize_t nread, Chunk* chunk) = 0;
        virtual void on_stream_written(int status) = 0; // a queued write finished
        virtual void on_stream_deadline() = 0;
        virtual void on_stream_shutdown(int status) = 0; // the FIN is out (or failed)
        virtual void on_stream_connected(int status) = 0;
        virtual void on_stream_closed() = 0; // last: the owner may free itself now

    protected:
        ~Owner() = default;
    };

    Stream(RouterThread& thread, Owner& owner);
    ~Stream(); // both in stream_tls.cpp, where TlsSession is complete
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;

    // Takes an accepted socket; on failure the fd is closed and the stream must be closed.
    int open(int fd, bool is_unix);
    // Starts connecting to `backend`; on_stream_connected reports the outcome. A negative result
    // is a failure at once (no callback follows); the stream must be closed.
    int connect(const Backend& backend);
    // After open(): the client speaks TLS, with a certificate from `certs` (SNI).
    void start_tls(std::shared_ptr<const TlsSnapshot> certs);

    bool is_unix() const { return is_unix_; }
    bool closing() const { return closing_; }

    // The stream's one deadline, `ms` from now; cheap to move later (LazyDeadline).
    void set_deadline(uint64_t ms) {
        if (timer_.initialised()) {
            deadline_.set(timer_.get(), ms, on_timer);
        }
    }
    void clear_deadline() { deadline_.clear(); }

    void read(bool want); // starts or stops reading; idempotent
    bool reading() const { return reading_; }

    // Sends `op` (its owner field is set here). 1: written whole (recycled); 0: queued,
    // on_stream_written follows; < 0: a libuv error (recycled).
    int send(WriteOp* op);
    // Backpressure marks for queued(): stop feeding a stream above the high one, resume below
    // the low one (both legs use them, each for the stream it writes to). The kernel's send
    // buffer (which grows to megabytes for a fast peer) holds the rest: what waits here only
    // bridges one write's completion, and for a slow reader it is what the router holds (with
    // the read chunk it is in, about 128 KiB), so it is kept small.
    static constexpr size_t kHighWater = 64 * 1024;
    static constexpr size_t kLowWater = 16 * 1024;
    size_t queued() const {
        return sock_.initialised() ? uv_stream_get_write_queue_size(sock_.stream()) : 0;
    }
    size_t not_taken() const; // queued() plus the kernel's unsent and unacknowledged bytes
    unsigned writes_in_flight() const { return writes_in_flight_; }
    // The peer closed or reset its side, as the kernel sees it, even with its last bytes not
    // read yet (a TCP socket; false for a Unix one).
    bool peer_finished() const;

    // Sends the FIN after the queued writes; on_stream_shutdown follows. False when it could not
    // be started.
    bool shutdown();
    bool shutdown_requested() const { return shutdown_requested_; }
    bool fin_sent() const { return fin_sent_; } // every queued write and the FIN are out

    void close(); // idempotent; on_stream_closed follows once, from the loop

private:
    union Handle {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
        uv_stream_t stream;
        uv_handle_t handle;
    };
    // Requests that belong to the socket: freed with it, after libuv has cancelled them.
    struct Requests {
        uv_shutdown_t shutdown;
        uv_connect_t connect;
    };
    int init(bool is_unix);
    int send_raw(WriteOp* op); // the socket's own send(), ciphertext for a TLS stream

    // stream_tls.cpp
    void tls_input(Chunk* chunk);        // ciphertext read
    void tls_input_ended(ssize_t nread); // EOF or a read error
    void tls_pump();                     // decrypts and delivers while the owner reads
    void tls_failed();
    int tls_send(WriteOp* op); // send() of a TLS stream
    int tls_flush();           // the session's records to the socket; as send_raw
    void tls_close_notify();
    void tls_resume_later(); // read(true) with records waiting: pump from the loop

    static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
    static void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
    static void on_write(uv_write_t* req, int status);
    static void on_timer(uv_timer_t* t);
    static void on_shutdown(uv_shutdown_t* req, int status);
    static void on_connect(uv_connect_t* req, int status);

    RouterThread& thread_;
    Owner& owner_;
    UvHandle<Handle, Requests> sock_;
    UvHandle<uv_timer_t> timer_;
    LazyDeadline deadline_;
    std::unique_ptr<TlsSession> tls_; // HTTPS clients only
    // Made by the first tls_resume_later(): a plain stream allocates no handle for it.
    std::optional<UvHandle<uv_idle_t>> tls_resume_;
    unsigned writes_in_flight_ = 0;
    bool is_unix_ = false;
    bool reading_ = false;
    bool closing_ = false;
    bool shutdown_requested_ = false;
    bool fin_sent_ = false;
};

} // namespace liege::router
