// The upstream leg: one connection to a backend, carrying one exchange at a time.
//
//   Connecting ──connected──▶ Active ──response complete, reusable──▶ Idle (pooled)
//       │                      ▲  │                                     │
//       │ failed               │  └──────────── attach ◀────────────────┘
//       ▼                      │
//   ConnectError          (next exchange)        any ──close()──▶ Closing ──closed──▶ freed
//
// Every transition is in set_state(), which keeps the thread's count of upstreams per state.
// Each state owns the stream's one deadline: Connecting waits connect_timeout; Active waits
// upstream_timeout once the request is complete (re-armed by every byte of response); Idle waits
// idle_timeout_ms(). Only an Idle upstream is listed in the thread's IdlePool.
//
// Keep-alive against real servers, which close idle connections on their own clock (gunicorn
// after 2 s, uWSGI after 4 s): an idle connection is closed before the backend would, at 3/4 of
// the `Keep-Alive: timeout=N` it announced, and after kLimitedIdleMs to a backend with a
// concurrency limit (a one-connection-at-a-time worker serves nobody else, not even its health
// check, while the router holds a connection open). A request that is not idempotent goes only
// on a new connection or one idle for less than kSafeReuseMs (and under half the announced
// timeout): it cannot be retried if the backend closes the connection as it arrives. Connections
// to a backend with a concurrency limit are counted across threads (Backend::connections) and
// kept to that limit: one more is closed rather than parked, and a thread that opens one past
// it has the other threads close their idle ones.
//
// The upstream serves a Client (the client leg) through the interface below and knows nothing
// else of it; it never calls the client from inside a call the client made (a write that fails
// at once is reported from the loop).
#pragma once

#include <llhttp.h>

#include <cstdint>
#include <memory>
#include <string_view>

#include "buffers.hpp"
#include "liege/http_head.hpp"
#include "retry_policy.hpp"
#include "stream.hpp"

namespace liege {
struct Backend;
}

namespace liege::router {

class RouterThread;

enum class UpstreamState { Connecting, ConnectError, Active, Idle, Closing };
constexpr int kUpstreamStates = 5;
std::string_view to_string(UpstreamState s); // "connecting", "connect_error", "active", ...

// What the response timer found when it ran out while the client leg held reading back.
enum class ResponseStall {
    SlowClient,   // the client is taking the response, slowly: wait again
    ClientCutOff, // the client took nothing: the client leg closed itself
};

class Upstream final : private Stream::Owner {
public:
    class Client {
    public:
        virtual void upstream_connected() = 0;
        virtual void upstream_failed(UpstreamFailure why) = 0;
        // A response head (interim or final); the result is llhttp's on_headers_complete one:
        // 0 a body follows, 1 no body, 2 a tunnel follows, -1 a malformed response.
        virtual int response_head(const http::HeadCollector& head, int status, bool has_length,
                                  bool chunked) = 0;
        virtual void response_body(Chunk* chunk, const char* data, size_t len) = 0;
        virtual void response_complete() = 0;
        virtual void response_flush() = 0; // one read's worth of response has been parsed
        // The response ended, or (upgrade) a tunnel begins with rest[0..rest_len) of `chunk`.
        virtual void response_end(Chunk* chunk, const char* rest, size_t rest_len,
                                  bool upgrade) = 0;
        virtual void tunnel_data(Chunk* chunk, const char* data, size_t len) = 0;
        virtual void upstream_eof() = 0; // tunnel: the backend closed its side
        // Tunnel: the client's half-close reached the backend, which had closed its side too
        // (or the FIN failed): nothing more flows.
        virtual void tunnel_done() = 0;
        virtual void upstream_wrote() = 0; // a queued write to the backend completed
        // Backpressure: the client's queue is full, so the backend is not read.
        virtual bool response_paused() const = 0;
        virtual ResponseStall response_stalled() = 0;

    protected:
        ~Client() = default;
    };

    // Starts a connection to `backend` for `client`; nullptr when it fails at once (*err set).
    static Upstream* connect(RouterThread& thread, const std::shared_ptr<Backend>& backend,
                             Client* client, int* err);

    Backend* backend() const { return backend_.get(); }
    UpstreamState state() const { return state_; }
    bool connected() const {
        return state_ == UpstreamState::Active || state_ == UpstreamState::Idle;
    }
    bool reused() const { return reused_; }
    bool got_response_bytes() const { return got_bytes_; }
    // The exchange is done and the connection can carry another one.
    bool reusable() const;
    // Idle for so short a while that the backend cannot be closing it as a request arrives.
    bool safe_for_non_idempotent(uint64_t now_ms) const;
    static constexpr uint64_t kLimitedIdleMs = 500;
    static constexpr uint64_t kSafeReuseMs = 1000;

    void attach(Client* client);         // taken from the idle pool for a new exchange
    void unlisted() { listed_ = false; } // the IdlePool took it out
    void detach(bool reusable);          // the exchange is over: to the pool, or closed
    void close();                        // abandon; the client hears nothing more

    void write(WriteOp* ops); // a list through WriteOp::next
    size_t queued() const { return stream_.queued(); }
    bool write_queue_high() const;
    void arm_response_timer();
    // [recycle] request_timeout: the exchange fails with RequestTimeout at loop time `at_ms`
    // unless the response is complete (or a tunnel began) by then; 0 = none.
    void set_request_deadline(uint64_t at_ms);
    void update_reading();
    void start_tunnel();
    void shutdown_write(); // tunnel: pass the client's half-close on

private:
    Upstream(RouterThread& thread, std::shared_ptr<Backend> backend);
    void set_state(UpstreamState s);
    uint64_t idle_timeout_ms() const;
    bool over_connection_limit() const;
    void fail(UpstreamFailure why); // tells the client, or closes when there is none
    void fail_later(UpstreamFailure why);
    void set_deadline(uint64_t ms);
    void clear_deadline();
    // What is left of the request deadline, in ms; UINT64_MAX for none.
    uint64_t request_time_left() const;
    void process(Chunk* chunk);
    int count_trailer(size_t len); // llhttp callback result

    void on_stream_read(ssize_t nread, Chunk* chunk) override;
    void on_stream_written(int status) override;
    void on_stream_deadline() override;
    void on_stream_shutdown(int status) override;
    void on_stream_connected(int status) override;
    void on_stream_closed() override;

    static int on_message_begin(llhttp_t* p);
    static int on_status(llhttp_t* p, const char* at, size_t len);
    static int on_header_field(llhttp_t* p, const char* at, size_t len);
    static int on_header_value(llhttp_t* p, const char* at, size_t len);
    static int on_headers_complete(llhttp_t* p);
    static int on_chunk_header(llhttp_t* p);
    static int on_body(llhttp_t* p, const char* at, size_t len);
    static int on_message_complete(llhttp_t* p);
    static const llhttp_settings_t* settings();

    RouterThread& thread_;
    std::shared_ptr<Backend> backend_;
    Stream stream_;
    llhttp_t parser_{};
    UpstreamState state_ = UpstreamState::Connecting;
    Client* client_ = nullptr;
    http::HeadCollector* head_ = nullptr; // the response head being parsed
    Chunk* parsing_ = nullptr;            // the chunk llhttp is parsing, for zero-copy bodies
    size_t trailer_bytes_ = 0;
    int64_t keepalive_ms_ = -1;        // the backend's announced idle timeout; -1 = none
    uint64_t idle_since_ms_ = 0;       // loop time it turned Idle
    uint64_t request_deadline_ms_ = 0; // loop time; 0 = none (set_request_deadline)
    bool has_pending_failure_ = false;
    UpstreamFailure pending_failure_ = UpstreamFailure::Reset;
    bool reused_ = false;
    bool got_bytes_ = false;
    bool response_timer_ = false; // Active: the deadline is the response's
    bool message_done_ = false;
    bool upgrading_ = false; // the client accepted a 101: the rest is a tunnel
    bool listed_ = false;    // in the thread's IdlePool (only ever while Idle)
    bool tunnel_ = false;
    bool eof_ = false; // the backend closed its side (or sent bytes past the response)
};

} // namespace liege::router
