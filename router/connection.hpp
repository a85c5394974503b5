// The two legs of a proxied exchange: the client connection and the upstream connection.
//
// Client phases (every transition is in ClientConn::set_phase):
//
//   Idle ──first byte──▶ Head ──headers complete──▶ Body ──message complete──▶ AwaitResponse
//    ▲                                                                            │
//    └──────────────────── response complete, keep-alive ◀───────────────────────┘
//   any ──101 from upstream──▶ Tunnel          any ──error / close──▶ Closing
//
// Each phase owns the connection's one timer: Idle waits keepalive_timeout (header_timeout for
// the first request), Head header_timeout from the first byte (slowloris), Body waits
// upstream_timeout for progress on the request body (a client read or a completed write to the
// backend; when it runs out while the backend is the one not reading, that is a 504, not the
// client's 408), AwaitResponse leaves timing to the upstream leg. Closing first waits for the
// response to leave (upstream_timeout between completed writes, so a slow reader gets all of
// it), then lingers kLingerMs after the FIN so that unread input cannot turn into a reset that
// destroys the response on its way.
//
// Upstream states: Connecting ──▶ Active ──▶ Idle (pooled) ──▶ Active ... ──▶ Closing.
// Connecting waits connect_timeout; Active waits upstream_timeout once the request is complete
// (re-armed by every byte of response); Idle waits upstream_idle_timeout.
//
// Retry rules (see ClientConn::upstream_failed): a request that never reached a backend
// (connect refused or timed out, or the connection failed before the request was written) is
// retried on another backend, up to max_tries. A request whose bytes may have reached a backend
// is retried only if its method is idempotent, no body byte was sent, and no response byte has
// reached the client. A socket the router cannot create (out of descriptors or socket memory,
// UpstreamFailure::NoSocket) is the router's own shortage: no backend is marked down for it,
// none is tried instead (each would fail alike), and the client gets a 503 at once.
//
// Lifetimes: objects are freed only in the close callback of their last handle, so a callback
// that closes a connection may keep touching it until it returns; every public entry point
// checks closed_ first.
#pragma once

#include <llhttp.h>
#include <uv.h>

#include <cstdint>
#include <string>

#include "buffers.hpp"
#include "route_snapshot.hpp"
#include "worker.hpp"

namespace liege::router {

enum class ClientPhase { Idle, Head, Body, AwaitResponse, Tunnel, Closing };
enum class UpstreamState { Connecting, Active, Idle, Closing };
enum class UpstreamFailure {
    Connect,
    ConnectTimeout,
    Reset,
    Timeout,     // no response byte for upstream_timeout
    SendTimeout, // the backend took no byte of the request body for upstream_timeout
    BadResponse,
    NoSocket,
};

union StreamHandle {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
    uv_stream_t stream;
    uv_handle_t handle;
};

class ClientConn {
public:
    static void accept(Worker* w, int fd, bool is_unix);

    ListNode node{this}; // the worker's list of clients
    static ClientConn* from_node(ListNode* n) { return static_cast<ClientConn*>(n->owner); }

    bool idle() const { return phase_ == ClientPhase::Idle && in_ == nullptr; }
    void close_now();
    // Graceful shutdown: close when idle, otherwise after the current response.
    void drain();

    // Calls from the upstream leg.
    void upstream_connected();
    void upstream_failed(UpstreamFailure why);
    int response_headers(Upstream* up); // llhttp's on_headers_complete result
    void response_body(const char* data, size_t len);
    void response_complete();
    void upstream_data_done(Upstream* up, const char* rest, size_t rest_len, bool upgrade);
    void upstream_eof(); // tunnel: the upstream closed its side
    void tunnel_from_upstream(Chunk* c, const char* data, size_t len);
    void update_reading();
    void upstream_wrote(); // a write to the upstream completed
    void flush_client();
    // Backpressure on the response, with hysteresis: set once the client's write queue rises
    // above the high-water mark, cleared only when it falls below the low one. While set, the
    // upstream is not read, so a response timeout then is the client's stall, not the backend's,
    // whatever the client took before it stopped.
    bool writing_blocked() const;
    // While writing_blocked: whether the client took any byte since the block began or since the
    // last call; a slow reader is then left alone, a stalled one is cut off.
    bool took_bytes_since_last_check();
    Chunk* current_chunk() const { return up_cur_; }
    void set_upstream_chunk(Chunk* c) { up_cur_ = c; }

private:
    explicit ClientConn(Worker* w)
        : w_(w), out_up_(w->ops(), w->chunks()), out_client_(w->ops(), w->chunks()) {}
    void set_phase(ClientPhase p);
    void arm_timer(uint64_t ms);
    void process_input();
    void update_out_blocked();
    size_t bytes_not_taken() const; // queued here or in the kernel, not yet taken by the client
    void after_parse_error(llhttp_errno_t err);
    void begin_request();
    void start_upstream();
    void flush_upstream();
    void write_pending_upstream();
    void drop_upstream_output(); // request bytes queued for an upstream that will never go
    void respond_error(int status, std::string_view detail);
    void finish_exchange();
    void release_upstream(bool reusable);
    void close_after_writes();
    void log_access();
    void reset_request();
    void leave_pool();
    void record_response(bool router_error);
    void start_tunnel(const char* rest, size_t rest_len);

    static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
    static void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
    static void on_write(uv_write_t* req, int status);
    static void on_shutdown(uv_shutdown_t* req, int status);
    static void on_timer(uv_timer_t* t);
    static void on_close(uv_handle_t* h);

    static int on_message_begin(llhttp_t* p);
    static int on_method(llhttp_t* p, const char* at, size_t len);
    static int on_url(llhttp_t* p, const char* at, size_t len);
    static int on_header_field(llhttp_t* p, const char* at, size_t len);
    static int on_header_value(llhttp_t* p, const char* at, size_t len);
    static int on_headers_complete(llhttp_t* p);
    static int on_body(llhttp_t* p, const char* at, size_t len);
    static int on_message_complete(llhttp_t* p);
    static const llhttp_settings_t* settings();
    int check_head_size(size_t more);

    friend class Upstream;

    Worker* w_;
    StreamHandle sock_{};
    uv_timer_t timer_{};
    LazyDeadline deadline_;
    uv_shutdown_t shutdown_req_{};
    llhttp_t parser_{};
    int handles_open_ = 0;
    bool is_unix_ = false;
    bool closed_ = false;
    bool reading_ = false;
    bool client_eof_ = false;
    bool first_request_ = true;
    bool draining_ = false;      // close after the current response
    bool shutting_down_ = false; // FIN queued (uv_shutdown), waiting for the writes before it
    bool fin_sent_ = false;      // every write and the FIN are out: lingering
    bool up_paused_ = false;     // backpressure: upstream write queue above the high-water mark
    bool out_blocked_ = false;   // backpressure: our write queue to the client (writing_blocked)
    size_t blocked_left_ = 0;    // bytes_not_taken() when last looked at while blocked
    ClientPhase phase_ = ClientPhase::Idle;

    // Input not yet parsed (pipelined requests wait here while a response is in progress).
    Chunk* in_ = nullptr;
    uint32_t in_off_ = 0;
    Chunk* cur_ = nullptr;    // chunk being parsed, for zero-copy body slices
    Chunk* up_cur_ = nullptr; // upstream chunk being parsed

    Output out_up_;
    Output out_client_;
    WriteOp* pending_ = nullptr; // request writes waiting for an upstream connection
    WriteOp* pending_tail_ = nullptr;

    // The request in progress.
    http::HeadCollector* head_ = nullptr;
    Chunk* req_head_ = nullptr; // rewritten head, kept for a retry until the response starts
    uint32_t req_head_len_ = 0;
    uint64_t body_bytes_ = 0;
    bool req_chunked_ = false;
    bool req_has_body_ = false;
    bool req_idempotent_ = false;
    bool req_keep_alive_ = false;
    bool req_upgrade_ = false;
    bool req_is_head_method_ = false;
    bool req_done_ = false;
    bool body_sent_ = false;
    uint64_t up_bytes_ = 0; // bytes of the request handed to the current upstream attempt
    bool need_upstream_ = false;
    int error_status_ = 0;
    std::string error_body_; // a line for the error response's body, e.g. the unknown host
    uint64_t tried_ = 0;
    unsigned tries_ = 0;
    Upstream* up_ = nullptr;
    Backend* be_ = nullptr;                     // counted in that backend's in_flight
    int be_idx_ = -1;                           // its index in pool_, for the tried_ mask
    std::shared_ptr<const RouteSnapshot> snap_; // keeps pool_ alive for the request
    const Pool* pool_ = nullptr;

    // The response in progress.
    bool resp_started_ = false; // its head has been queued to the client
    bool resp_flushed_ = false; // and handed to the socket: it can no longer be replaced
    bool resp_done_ = false;
    bool resp_rechunk_ = false;
    bool resp_close_ = false;
    int status_ = 0;
    uint64_t resp_bytes_ = 0;

    uint64_t start_ns_ = 0;
    uint64_t up_start_ns_ = 0;
    uint64_t up_time_ns_ = 0;
    std::string log_req_;   // METHOD URL HTTP/x.y, when logging
    std::string log_agent_; // "referer" "user-agent", when logging
    std::string last_backend_;
    char peer_[48] = {};
};

class Upstream {
public:
    // Starts a connection to `backend`; nullptr when it fails at once (then *err is set).
    static Upstream* connect(Worker* w, const std::shared_ptr<Backend>& backend, ClientConn* client,
                             int* err);

    Backend* backend() const { return be_.get(); }
    bool connected() const { return state_ != UpstreamState::Connecting; }
    bool reused() const { return reused_; }
    bool got_response_bytes() const { return got_bytes_; }
    void attach(ClientConn* c); // from the idle pool
    void detach_to_pool();      // exchange done, connection reusable
    void close();               // abandon (no reuse)
    void write(WriteOp* ops);   // a list through WriteOp::next
    void arm_response_timer();
    void stop_timer();
    void update_reading();
    bool write_queue_high() const;
    bool reusable() const;
    uv_stream_t* stream() { return &sock_.stream; }
    void start_tunnel();
    void shutdown_write();

private:
    Upstream(Worker* w, std::shared_ptr<Backend> b) : w_(w), be_(std::move(b)) {}
    void arm_timer(uint64_t ms);
    void process(Chunk* c, const char* data, size_t len);
    int count_trailer(size_t len); // llhttp callback result

    static void on_connect(uv_connect_t* req, int status);
    static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
    static void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
    static void on_write(uv_write_t* req, int status);
    static void on_timer(uv_timer_t* t);
    static void on_close(uv_handle_t* h);
    static void on_shutdown(uv_shutdown_t* req, int status);

    static int on_message_begin(llhttp_t* p);
    static int on_status(llhttp_t* p, const char* at, size_t len);
    static int on_header_field(llhttp_t* p, const char* at, size_t len);
    static int on_header_value(llhttp_t* p, const char* at, size_t len);
    static int on_headers_complete(llhttp_t* p);
    static int on_body(llhttp_t* p, const char* at, size_t len);
    static int on_message_complete(llhttp_t* p);
    static const llhttp_settings_t* settings();

    friend class ClientConn;
    friend class Worker;

    Worker* w_;
    std::shared_ptr<Backend> be_;
    StreamHandle sock_{};
    uv_timer_t timer_{};
    LazyDeadline deadline_;
    uv_connect_t connect_req_{};
    uv_shutdown_t shutdown_req_{};
    llhttp_t parser_{};
    int handles_open_ = 0;
    unsigned writes_in_flight_ = 0;
    size_t trailer_bytes_ = 0;
    UpstreamState state_ = UpstreamState::Connecting;
    ClientConn* client_ = nullptr;
    http::HeadCollector* head_ = nullptr;
    bool is_unix_ = false;
    bool closed_ = false;
    bool reading_ = false;
    bool reused_ = false;
    bool got_bytes_ = false;
    bool response_timer_ = false;
    bool message_done_ = false;
    bool tunnel_ = false;
    bool eof_ = false;
    bool write_failed_ = false;
};

} // namespace liege::router
