// The client leg: one client connection, its requests in order (pipelining), their responses,
// and the way it ends (linger).
//
//   Idle ──first byte──▶ Head ──headers complete──▶ Body ──message complete──▶ AwaitResponse
//    ▲                                                                            │
//    └──────────────────── response complete, keep-alive ◀───────────────────────┘
//   any ──101 from upstream──▶ Tunnel
//   any ──error, or last response──▶ Closing ──FIN sent──▶ Lingering ──▶ Closed
//
// Every transition is in set_phase(), and each phase owns the connection's one deadline: Idle
// waits keepalive_timeout (header_timeout for the first request), Head header_timeout from the
// first byte (slowloris), Body waits upstream_timeout for progress on the request body (a client
// read or a completed write to the backend; when it runs out while the backend is the one not
// reading, that is a 504, not the client's 408), AwaitResponse leaves timing to the upstream leg.
// Closing waits for the response to leave (upstream_timeout between completed writes, so a slow
// reader gets all of it), Lingering then waits kLingerMs after the FIN so that unread input
// cannot turn into a reset that destroys the response on its way.
//
// The request and response of the exchange in progress are an Exchange (exchange.hpp); the
// attempt that carries it is an Upstream, which reports through the Upstream::Client interface;
// while no worker has a free slot for it, it waits in its vassal's queue (vassal_queue.hpp),
// in the phase it was in (Body or AwaitResponse) with no upstream;
// what happens when an attempt fails is decide_retry (retry_policy.hpp), and how its response
// is framed to the client is response_framing (response_framing.hpp).
//
// The leg is one class over three files: the connection (client.cpp), its requests
// (client_request.cpp) and their responses (client_response.cpp).
//
// Lifetime: the connection is freed in on_stream_closed, which its thread calls from the loop
// after the stream has closed (RouterThread::retire); a callback that closes it may keep touching
// it until it returns, and no libuv callback reaches it once it is closed.
#pragma once

#include <llhttp.h>

#include <cstdint>

#include "acme_challenges.hpp"
#include "body_spool.hpp"
#include "buffers.hpp"
#include "exchange.hpp"
#include "list_node.hpp"
#include "stream.hpp"
#include "upstream.hpp"
#include "vassal_queue.hpp"

namespace liege::router {

class RouterThread;

enum class ClientPhase { Idle, Head, Body, AwaitResponse, Tunnel, Closing, Lingering, Closed };

class ClientConn final : private Stream::Owner, private Upstream::Client {
public:
    // `tls`: the socket came from an HTTPS listener.
    static void accept(RouterThread& thread, int fd, bool is_unix, bool tls);
    static ClientConn* from_node(ListNode* n) { return static_cast<ClientConn*>(n->owner); }

    bool idle() const { return phase_ == ClientPhase::Idle && in_ == nullptr; }
    void close_now();
    // Graceful shutdown: close when idle, otherwise after the current response.
    void drain();
    // The request waiting in its vassal's queue got a slot on `backend`, or was refused (null:
    // the vassal failed or went away).
    void dispatch(std::shared_ptr<Backend> backend);
    void queue_timed_out(); // it waited the vassal's whole queue timeout
    // While its request waits in the queue with its body not all read (the router reads no
    // more of it meanwhile), the client closed or reset the connection: the request can never
    // be whole.
    bool left_mid_body() const { return phase_ == ClientPhase::Body && stream_.peer_finished(); }

private:
    explicit ClientConn(RouterThread& thread);
    bool closed() const { return phase_ == ClientPhase::Closed; }
    void set_phase(ClientPhase p);
    void set_body_deadline();
    void update_reading();
    void process_input();
    void after_parse_error();
    void peer_closed(ssize_t nread);
    void begin_request();
    void reset_exchange();
    void start_upstream();
    // Sends the request to `backend`, whose slot it holds (`index` in the pool's balancer, or
    // -1): on a pooled connection or a new one. False when the connection failed at once (the
    // slot is given back, the backend marked down): the caller tries another.
    bool send_to(const std::shared_ptr<Backend>& backend, int index);
    void wait_in_queue();
    void leave_queue();
    void stop_waiting(); // counts the wait: in the histogram and the access log
    void reject(control::Rejection why, std::string_view text);
    // [tls] redirect: the request gets a 308 to the same target over https.
    void redirect_to_https(const http::RequestTarget& target);
    // The exchange's backend slot, to the next waiter if there is one; true when it went to a
    // waiter on another thread.
    bool release_slot();
    void flush_upstream();
    void write_pending_upstream();
    void replay_head();
    // Hands the spooled body to the connected upstream, as far as its write queue allows.
    void pump_spool();
    // A piece of a body that is spooled (framed again when chunked), and its end; 0, or -1 when
    // the spool failed (the request then gets 500).
    int spool_body(const char* at, size_t len);
    int spool_end();
    int spool_failed(int err);
    void drop_upstream_output(); // request bytes queued for an upstream that will never go
    // An error response the router makes: `STATUS REASON` and the exchange's error_body as the
    // body, or (detail_only) the error_body alone, as one line.
    void respond_error(int status, std::string_view detail, bool detail_only = false);
    // A plain-HTTP request for an ACME HTTP-01 token the emperor named is answered here with its
    // key authorisation (router/acme_challenges.cpp); false for any other request.
    bool answer_acme_challenge(std::string_view path);
    void finish_exchange();
    void release_upstream(bool reusable);
    void close_after_writes();
    void log_access();
    void leave_pool();
    void record_response(bool router_error);
    void start_tunnel(Chunk* chunk, const char* rest, size_t rest_len);
    void flush_client();
    void update_out_blocked();
    int check_head_size(size_t more);
    // Whether a header value piece llhttp reports at `at` continues an obs-fold: the line
    // before it ended with CRLF and the piece (or the whitespace before it) starts the line.
    bool folded(const char* at) const;

    // Stream::Owner
    void on_stream_read(ssize_t nread, Chunk* chunk) override;
    void on_stream_written(int status) override;
    void on_stream_deadline() override;
    void on_stream_shutdown(int status) override;
    void on_stream_connected(int) override {}
    void on_stream_closed() override;

    // Upstream::Client
    void upstream_connected() override;
    void upstream_failed(UpstreamFailure why) override;
    int response_head(const http::HeadCollector& head, int status, bool has_length,
                      bool chunked) override;
    void response_body(Chunk* chunk, const char* data, size_t len) override;
    void response_complete() override;
    void response_flush() override { flush_client(); }
    void response_end(Chunk* chunk, const char* rest, size_t rest_len, bool upgrade) override;
    void tunnel_data(Chunk* chunk, const char* data, size_t len) override;
    void upstream_eof() override;
    void tunnel_done() override { close_after_writes(); }
    void upstream_wrote() override;
    // Backpressure on the response, with hysteresis: set once the client's write queue rises
    // above the high-water mark, cleared only when it falls below the low one.
    bool response_paused() const override { return out_blocked_; }
    // While paused, whether the client took any byte since the block began or since the last
    // call decides who is stalled: a slow reader is left alone, a stalled one is cut off.
    ResponseStall response_stalled() override;

    static int on_message_begin(llhttp_t* p);
    static int on_method(llhttp_t* p, const char* at, size_t len);
    static int on_url(llhttp_t* p, const char* at, size_t len);
    static int on_header_field(llhttp_t* p, const char* at, size_t len);
    static int on_header_value(llhttp_t* p, const char* at, size_t len);
    static int on_headers_complete(llhttp_t* p);
    static int on_chunk_header(llhttp_t* p);
    static int on_body(llhttp_t* p, const char* at, size_t len);
    static int on_message_complete(llhttp_t* p);
    static const llhttp_settings_t* settings();
    int headers_complete(); // on_headers_complete's work

public:
    ListNode node{this};      // the thread's list of clients
    ListNode idle_node{this}; // its list of idle keep-alive clients, while this is one

private:
    RouterThread& thread_;
    Stream stream_;
    llhttp_t parser_{};
    ClientPhase phase_ = ClientPhase::Idle;
    bool first_request_ = true;
    bool draining_ = false;     // close after the current response
    bool peer_eof_ = false;     // the client closed its side
    bool up_paused_ = false;    // backpressure: the upstream's write queue is above high water
    bool out_blocked_ = false;  // backpressure: ours to the client is (response_paused)
    bool trusted_peer_ = false; // a --trusted-proxy: its X-Forwarded-* headers are kept
    bool tls_ = false;          // an HTTPS client
    bool counted_ = false;      // in Shared::per_address (max_conns_per_ip)
    size_t blocked_left_ = 0;   // stream_.not_taken() when last looked at while blocked

    // Input not yet parsed (pipelined requests wait here while a response is in progress).
    Chunk* in_ = nullptr;
    uint32_t in_off_ = 0;
    Chunk* parsing_ = nullptr;         // the chunk llhttp is parsing, for zero-copy body slices
    const char* exec_start_ = nullptr; // where the llhttp_execute in progress began
    char tail_ = 0;                    // the last byte before exec_start_ other than SP or HTAB
    uint64_t head_raw_ = 0;            // bytes of the request head so far, whitespace included

    Output out_up_;
    Output out_client_;
    BodySpool spool_;
    WriteOp* pending_ = nullptr; // request writes waiting for an upstream connection
    WriteOp* pending_tail_ = nullptr;

    http::HeadCollector* head_ = nullptr; // the request head being parsed
    Upstream* up_ = nullptr;              // the attempt carrying the exchange
    std::shared_ptr<Waiter> waiter_;      // while the exchange waits in its vassal's queue
    Exchange ex_;
    char peer_[48] = {};
};

} // namespace liege::router
