// Helpers for integration tests that run real processes on loopback.
//
// Every wait here is bounded and polls for a condition; nothing sleeps blindly. Processes are
// started in their own process group and are killed and reaped when their `Process` object
// goes away, so a failing test leaves nothing behind.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <latch>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <sys/types.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace liege::test {

using Clock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;
using namespace std::chrono_literals;

// Bound for every wait in the integration tests: generous, since the box may be loaded.
inline constexpr Millis kWait = 10s;
// Bound for anything that starts processes (an emperor, a router, a pool, a reload).
inline constexpr Millis kStart = 20s;

// Polls `condition` every `interval` until it is true (returns true) or `timeout` passes
// (returns false after one last check).
bool poll_until(const std::function<bool()>& condition, Millis timeout = kWait,
                Millis interval = 10ms);

// Text a child process writes to one stream, collected by a reader thread; safe to read while
// it grows.
class OutputBuffer {
public:
    void append(std::string_view data);
    void close(); // the stream reached EOF
    bool closed() const;
    std::string text() const;
    std::vector<std::string> lines() const; // complete lines only

    // Waits until a complete line (at index `first_line` or later) satisfies `matches`.
    // Returns that line, or nullopt on timeout or on EOF without a match.
    std::optional<std::string> wait_for_line(const std::function<bool(std::string_view)>& matches,
                                             Millis timeout = kWait,
                                             std::size_t first_line = 0) const;
    // Waits until a complete line contains `needle`.
    std::optional<std::string> wait_for_line_containing(std::string_view needle,
                                                        Millis timeout = kWait) const {
        return wait_for_line(
            [needle](std::string_view line) { return line.find(needle) != line.npos; }, timeout);
    }

private:
    mutable std::mutex mutex_;
    mutable std::condition_variable changed_;
    std::string data_;
    bool closed_ = false;
};

// A child process with its own process group, stdout and stderr captured.
class Process {
public:
    // Starts argv[0] with the given arguments, in this process's environment plus `extra_env`
    // ("NAME=value" entries). Throws std::runtime_error if it cannot.
    explicit Process(std::vector<std::string> argv, const std::vector<std::string>& extra_env = {});
    Process(const Process&) = delete;
    Process& operator=(const Process&) = delete;
    // Kills the process group (SIGKILL), reaps the child and records a test failure if any
    // process of the group is still there afterwards.
    ~Process();

    pid_t pid() const { return pid_; }
    const OutputBuffer& out() const { return out_; }
    const OutputBuffer& err() const { return err_; }
    const std::vector<std::string>& argv() const { return argv_; }

    // True while the child has not exited (reaps it if it has).
    bool running();
    void signal(int sig);
    // Waits for the child to exit; returns its wait status (see WIFEXITED etc.), or nullopt
    // if it is still running after `timeout`.
    std::optional<int> wait_exit(Millis timeout = kWait);
    // The wait status once the child has been reaped.
    std::optional<int> exit_status() const { return status_; }
    // Kills the whole process group and reaps the child.
    void kill();

    // The command line, exit status and the tails of both streams, for failure messages.
    std::string describe(std::size_t tail_lines = 40);

private:
    void reap(bool block);

    std::vector<std::string> argv_;
    pid_t pid_ = -1;
    std::optional<int> status_;
    OutputBuffer out_;
    OutputBuffer err_;
    int out_fd_ = -1;
    int err_fd_ = -1;
    std::thread reader_;
};

// "exited 0", "killed by SIGTERM", ...
std::string describe_status(int status);

// Resident set size of a process in KiB (VmRSS from /proc/PID/status), or -1.
long rss_kib(pid_t pid);

// Descriptors a process has open (entries of /proc/PID/fd), or -1.
int open_fds(pid_t pid);

// True once `pid` is no process any more (a zombie nobody reaped yet counts as gone).
bool process_gone(pid_t pid);

// ---- processes in /proc ----

struct ProcStat {
    pid_t pid = 0;
    pid_t ppid = 0;
    pid_t pgrp = 0;
    char state = '?';
    unsigned long long start_time = 0; // clock ticks after boot: tells a reused pid apart
};

// The process's /proc/PID/stat, or nullopt once it is gone.
std::optional<ProcStat> read_stat(pid_t pid);
std::vector<ProcStat> all_processes();
// Every living process below `root` (not `root` itself).
std::vector<ProcStat> descendants(pid_t root);
// The same process (not a reused pid) exists and is not a zombie.
bool alive(const ProcStat& p);
std::vector<std::string> read_nul_separated(const std::string& path);
std::map<std::string, std::string> environ_of(pid_t pid);
std::string cmdline_of(pid_t pid);
// One line per process: pid, state and command line.
std::string describe_procs(const std::vector<ProcStat>& procs);
// Waits until none of `procs` is alive; returns the survivors.
std::vector<ProcStat> wait_gone(const std::vector<ProcStat>& procs, Millis timeout = kWait);

// ---- files and text ----

// The whole file, or "" if it cannot be read.
std::string slurp(const std::filesystem::path& path);

// How many times `needle` occurs in `haystack` from byte `from` on, without overlaps.
std::size_t count_of(std::string_view haystack, std::string_view needle, std::size_t from = 0);

// A TOML basic string holding `s`, and an array of them, for vassal files tests write.
std::string toml_str(std::string_view s);
std::string toml_array(const std::vector<std::string>& items);

// The port in the first "<prefix>127.0.0.1:PORT" of `text`.
std::optional<uint16_t> port_after(std::string_view text, std::string_view prefix);

// A new directory under the system's temporary directory, named PREFIX.XXXXXX; throws on error.
std::filesystem::path make_temp_dir(std::string_view prefix);

// Writes `text` to `path`, replacing it; throws when it cannot.
void write_file(const std::filesystem::path& path, std::string_view text);

// Waits for a `listening on 127.0.0.1:PORT` line in a process's output and returns PORT.
std::optional<uint16_t> wait_for_port(const OutputBuffer& out, Millis timeout = kWait);

// A TCP port on 127.0.0.1 nothing listens on (bound once, then released).
uint16_t closed_port();

// True if a TCP connect to 127.0.0.1:port is refused right now.
bool connect_refused(uint16_t port);

struct Response {
    std::string version; // "HTTP/1.1"
    int status = 0;
    std::string reason;
    std::vector<std::pair<std::string, std::string>> headers; // as received
    std::string head;                                         // raw status line + headers
    std::string body;        // decoded (empty if a body sink was used)
    uint64_t body_bytes = 0; // decoded body length
    bool chunked = false;
    bool close_delimited = false;

    // The first header with this name (case-insensitive).
    std::optional<std::string> header(std::string_view name) const;
    // Every header with this name.
    std::vector<std::string> headers_named(std::string_view name) const;
    // True if the server announced that it closes the connection after this response
    // (Connection: close, or HTTP/1.0 without keep-alive).
    bool closes_connection() const;
};

// A client call failed: timeout, I/O error or a malformed response.
struct HttpError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The peer closed or reset the connection before a complete response.
struct HttpClosed : HttpError {
    using HttpError::HttpError;
};

// Socket options a client sets before it connects.
struct ClientSocketOptions {
    int receive_buffer = 0; // SO_RCVBUF in bytes; 0 keeps the system's default
    // TCP_MAXSEG: the segment size the client announces. A small one also keeps the send buffer
    // the kernel sizes for the router's side small (it scales with the segment size), so that
    // a client that reads slowly makes the router queue bytes itself. 0 keeps the default.
    int max_segment = 0;
    // The client's own loopback address, e.g. "127.0.0.2" to be another client host; "" = the
    // kernel's choice (127.0.0.1).
    std::string source_address = {};
};

// A blocking HTTP/1.1 client over one TCP connection. Every call is bounded by a deadline;
// failures throw HttpError with what happened. Bytes received past one response are kept for
// the next (pipelining and keep-alive).
class HttpClient {
public:
    // Receives a decoded body piece; used to stream large bodies without keeping them.
    using BodySink = std::function<void(std::string_view)>;

    // Connects to 127.0.0.1:port.
    explicit HttpClient(uint16_t port, Millis timeout = kWait);
    // Connects with `options` set on the socket first.
    HttpClient(uint16_t port, const ClientSocketOptions& options, Millis timeout = kWait);
    HttpClient(const HttpClient&) = delete;
    HttpClient& operator=(const HttpClient&) = delete;
    HttpClient(HttpClient&& other) noexcept;
    ~HttpClient();

    int fd() const { return fd_; }

    // Sends all bytes.
    void send(std::string_view data, Millis timeout = kWait);

    // Reads the next response, including 1xx interim ones. `head_request`: the response to a
    // HEAD has no body whatever its headers say.
    Response read_response(Millis timeout = kWait, bool head_request = false,
                           const BodySink& sink = {});
    // As read_response, but nullopt if the connection closes or resets before a full response.
    std::optional<Response> try_read_response(Millis timeout = kWait, bool head_request = false);

    // Sends a request and reads its final response (skipping 100 Continue). Adds Host and,
    // if there is a body and no framing header in `headers`, Content-Length.
    Response request(std::string_view method, std::string_view target,
                     const std::vector<std::pair<std::string, std::string>>& headers = {},
                     std::string_view body = {}, Millis timeout = kWait);
    Response get(std::string_view target, Millis timeout = kWait) {
        return request("GET", target, {}, {}, timeout);
    }

    // Reads whatever arrives (at least one byte, up to `max`) until the deadline. Returns an
    // empty string on EOF; throws on timeout or error.
    std::string read_some(std::size_t max = 65536, Millis timeout = kWait);
    // Reads exactly `n` bytes.
    std::string read_exact(std::size_t n, Millis timeout = kWait);

    // Waits until the peer closes (EOF or reset), discarding any bytes that arrive. True if it
    // closed within `timeout`.
    bool wait_closed(Millis timeout = kWait);
    // True if the peer has closed the connection already (non-blocking check).
    bool peer_closed();

    // Bytes already received but not consumed by a read.
    const std::string& pending() const { return buffer_; }

private:
    // Reads more into buffer_; false on EOF. Throws on error or when `deadline` passes.
    bool fill(Clock::time_point deadline);
    bool read_line(std::string& line, Clock::time_point deadline); // false on EOF

    int fd_ = -1;
    std::string buffer_;
};

// Builds a request: "METHOD TARGET HTTP/1.1", Host (unless given), the headers, the body.
std::string build_request(std::string_view method, std::string_view target,
                          const std::vector<std::pair<std::string, std::string>>& headers = {},
                          std::string_view body = {});

// Encodes `data` as one chunk ("size CRLF data CRLF").
std::string chunk(std::string_view data);

// A WebSocket frame as a client sends it (FIN set, masked).
std::string websocket_frame(int opcode, std::string_view payload);

struct WebSocketFrame {
    int opcode = 0;
    bool fin = false;
    bool masked = false;
    std::string payload;
};

// Reads one frame from the client's connection.
WebSocketFrame read_websocket_frame(HttpClient& client, Millis timeout = kWait);

// A liege-test-backend process on an ephemeral loopback port, started with --log-requests.
class TestBackend {
public:
    // Starts the backend and waits for its port. Throws std::runtime_error if it does not come
    // up.
    explicit TestBackend(std::string name);

    const std::string& name() const { return name_; }
    uint16_t port() const { return port_; }
    std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
    Process& process() { return *process_; }

    struct Counts {
        uint64_t requests = 0;    // requests read, not counting this helper's own queries
        uint64_t connections = 0; // connections accepted, not counting this helper's own
        int64_t open = 0;         // connections open now, not counting the query's own
    };
    // Asks the backend directly (GET /count?probe=K, not through any proxy) and waits until
    // the probe's own log line has arrived, so that requests_seen() is complete afterwards.
    Counts counts();

    // The "METHOD TARGET" of every request the backend has read so far, in order, without this
    // helper's probes. Synchronised by a counts() probe: nothing read before the call is missing.
    std::vector<std::string> requests_seen();
    // The same without synchronising: may lag a little behind the backend (for polling).
    std::vector<std::string> requests_logged() const;
    // Waits until the backend has read a request whose "METHOD TARGET" equals `request`.
    bool wait_for_request(std::string_view request, Millis timeout = kWait) const;

    // Kills the backend (SIGKILL) and waits until its port refuses connections.
    void kill();

private:
    std::string name_;
    std::unique_ptr<Process> process_;
    uint16_t port_ = 0;
    uint64_t probes_ = 0;
};

// A backend that answers with bytes a test scripts, for what liege-test-backend never sends:
// trailers, bodyless statuses that announce a length, truncated or malformed responses,
// unsolicited 1xx and 101, transfer codings other than chunked. It also records every request
// head it reads, so a test can assert on what the router forwarded.
//
// Deliberately plain: a listening socket on 127.0.0.1:0, an accept thread, and a thread per
// connection running the script. Every wait a script makes through its Connection has a deadline
// and ends early when the backend is destroyed; the destructor wakes them all and joins every
// thread.
class RawBackend {
public:
    // One accepted connection, as a script sees it. Every call returns false or nullopt once its
    // timeout passes or the backend is being destroyed.
    class Connection {
    public:
        Connection(RawBackend& backend, int fd) : backend_(backend), fd_(fd) {}
        Connection(const Connection&) = delete;
        Connection& operator=(const Connection&) = delete;
        ~Connection();

        // Reads the next request: returns its head (request line and headers through the blank
        // line) and reads and drops a Content-Length body (chunked request bodies are not
        // supported). nullopt on EOF, error or timeout.
        std::optional<std::string> read_request(Millis timeout = kWait);
        // Writes all of `bytes`; false if the peer is gone or the timeout passes first.
        bool write(std::string_view bytes, Millis timeout = kWait);
        // Waits until the peer closes, dropping whatever it sends. True if it did.
        bool hold(Millis timeout = kWait);
        // Reads until `marker` has arrived (after any request already read); returns all the
        // bytes up to and including it, or nullopt on EOF, error or timeout.
        std::optional<std::string> read_until(std::string_view marker, Millis timeout = kWait);
        // Sends FIN and goes on reading (a half-close).
        void half_close();
        // Sends FIN, then waits (bounded) until the peer closes too before closing the socket,
        // so bytes the peer sent that were never read cannot turn the close into a reset that
        // destroys the response on its way.
        void close(Millis timeout = kWait);

    private:
        enum class Wait { Ready, Timeout, Stopped };
        Wait wait(short events, Clock::time_point deadline) const;
        bool fill(Clock::time_point deadline); // false on EOF, error, timeout or stop

        RawBackend& backend_;
        int fd_;
        std::string in_;
    };
    using Script = std::function<void(Connection&)>;

    // How a connection goes on after a scripted reply.
    enum class After {
        KeepAlive, // read the next request
        Close,     // Connection::close(): the response ends with the connection
        Hold,      // wait until the router closes the connection
    };
    struct Reply {
        std::string bytes;
        After after = After::KeepAlive;
    };
    // A script that reads requests one after another and answers each head with `answer(head)`.
    static Script answering(std::function<Reply(const std::string& head)> answer);

    // Starts listening at once; `script` runs once for every connection accepted.
    explicit RawBackend(Script script);
    RawBackend(const RawBackend&) = delete;
    RawBackend& operator=(const RawBackend&) = delete;
    ~RawBackend();

    uint16_t port() const { return port_; }
    std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

    // Every request head read so far, in the order they were read.
    std::vector<std::string> requests() const;
    uint64_t connections() const;

private:
    void accept_loop();
    void record(std::string head);

    Script script_;
    int listen_fd_ = -1;
    int stop_fd_ = -1; // an eventfd, readable once the backend is being destroyed
    uint16_t port_ = 0;
    std::thread acceptor_;
    mutable std::mutex mutex_;
    std::vector<std::thread> connection_threads_;
    std::vector<std::string> requests_;
    uint64_t connections_ = 0;
};

// Samples a process's VmRSS on a background thread (every 5 ms) until stopped; reports the
// largest value seen.
// `count` keep-alive clients of the router on `port`, each on its own thread with its own
// connection, sending GET requests back to back, each to the next of `targets` in turn (each
// client starting at another one, so the mix is the same at every moment). They start together:
// every thread connects, then all send their first request at once. With `per_client` > 0 each
// stops after that many requests (a burst); with 0 they go on until stop(). Every response must
// be a 200: any other status, a reset or a timeout is a failure, after which that client
// reconnects.
class LoadClients {
public:
    struct Options {
        int per_client = 0;
        std::string host = {};  // the Host header; "" = the client's own default
        Millis timeout = kWait; // for each request (it may wait in the queue, or for a worker)
        std::function<void(const Response&)> observe = {}; // sees every 200, one at a time
    };

    LoadClients(uint16_t port, int count, std::vector<std::string> targets, Options options);
    LoadClients(const LoadClients&) = delete;
    LoadClients& operator=(const LoadClients&) = delete;
    ~LoadClients() { stop(); }

    // Asks every client to stop after its current request, and joins them.
    void stop();
    // Every client has sent all of its `per_client` requests.
    bool wait_finished(Millis timeout = kStart) const;
    // At least `n` more requests have been answered (or failed).
    bool wait_requests(uint64_t n, Millis timeout = kStart) const;

    uint64_t ok() const { return ok_.load(); }
    uint64_t failed() const { return failed_.load(); }
    uint64_t done() const { return ok() + failed(); }
    // What went wrong, the first 20 failures and a count per kind.
    std::string failures() const;

private:
    void run(std::size_t index);

    uint16_t port_;
    std::vector<std::string> targets_;
    Options options_;
    std::size_t count_;
    std::latch connected_; // every client has connected (or failed to)
    std::atomic<bool> stop_{false};
    std::atomic<uint64_t> ok_{0};
    std::atomic<uint64_t> failed_{0};
    std::atomic<std::size_t> finished_{0};
    mutable std::mutex mutex_;
    std::vector<std::string> first_failures_;
    std::map<std::string, uint64_t> failure_kinds_;
    std::vector<std::thread> threads_;
};

class RssSampler {
public:
    explicit RssSampler(pid_t pid);
    RssSampler(const RssSampler&) = delete;
    RssSampler& operator=(const RssSampler&) = delete;
    ~RssSampler();
    long stop(); // returns the peak in KiB
    long peak_kib() const { return peak_.load(); }

private:
    pid_t pid_;
    std::atomic<bool> stop_{false};
    std::atomic<long> peak_{-1};
    std::thread thread_;
};

// `liege router` in front of liege-test-backend processes, for the tests of the router. Tear-down
// asserts that the router did not die and logged no sanitizer report or critical line; on failure
// it prints the router's last log lines.
class RouterFixture : public ::testing::Test {
protected:
    // Starts a test backend named `name`.
    TestBackend& add_backend(const std::string& name);

    // Starts `liege router --listen 127.0.0.1:0 --backend ADDR... [extra]` (with --threads 2
    // unless `extra` says otherwise) and waits for its port. A `launcher` runs the router under
    // another command, e.g. {"/usr/bin/prlimit", "--nofile=64:64"}. Use with
    // ASSERT_NO_FATAL_FAILURE.
    void start_router(const std::vector<std::string>& backend_addresses,
                      std::vector<std::string> extra = {},
                      const std::vector<std::string>& launcher = {});
    // Starts the router in front of every backend added so far.
    void start_router_for_backends(std::vector<std::string> extra = {},
                                   const std::vector<std::string>& launcher = {});

    HttpClient client() { return HttpClient(port_); }
    Process& router() { return *router_; }
    uint16_t port() const { return port_; }

    // True once the router's log has a line containing every one of `parts` (polled until
    // `timeout`; 0 checks once).
    bool log_has_line_with(const std::vector<std::string>& parts, Millis timeout = kWait);

    void TearDown() override;

    std::vector<std::unique_ptr<TestBackend>> backends_;
    std::unique_ptr<Process> router_;
    uint16_t port_ = 0;
};

// The `hosts` line of a default vassal, which serves every host no other vassal claims: tests
// whose vassal stands alone put it first (web vassals must name their hosts).
inline const std::string kAnyHost = "hosts = [\"*\"]\n";

// A `liege` command (the binary under test) run to completion.
struct Cli {
    int exit_code = -1; // 128 + signal when a signal ended it
    std::string out;
    std::string err;
};

// Runs `liege ARGS...` with `extra_env` ("NAME=value") added, waits for it (a failure if it runs
// longer than `timeout`) and returns its exit code and output.
Cli run_cli(std::vector<std::string> args, Millis timeout = kStart,
            const std::vector<std::string>& extra_env = {});

// `liege run` as a user starts it, over a temporary vassals directory, with its public port and
// (unless a test says otherwise) its admin API on 127.0.0.1:0. The fixture of every test of the
// real emperor; test files derive their own fixtures from it for their helpers.
//
// Tear-down is the same for every test:
// - an emperor still running gets SIGTERM and must exit 0 and log "emperor: stopped";
// - no process of this liege instance may be left: not one of the emperor's descendants or of
//   the workers and router /status reported just before the SIGTERM, nor any process that
//   carries the instance's marker in its environment (every process the emperor starts inherits
//   it, so this also finds one that was reparented, or outlived an emperor a test killed);
// - its log may hold no error-level line (spdlog's "error" or "critical", the router's relayed
//   lines included) but those a test declared with expect_error_line(), and no sanitizer
//   report.
// On failure the emperor's log is printed.
class LiegeRunFixture : public ::testing::Test {
protected:
    struct Options {
        std::vector<std::string> extra;    // more arguments of `liege run`
        std::string admin = "127.0.0.1:0"; // --admin
        int threads = 1;                   // --threads
    };

    void SetUp() override;
    void TearDown() override;

    // Writes a vassal file the way a deploy tool does: a hidden temporary file renamed into
    // place, so the watcher never sees it half-written.
    void write_vassal(const std::string& name, const std::string& text);
    void remove_vassal(const std::string& name);

    // Starts `liege run` and waits for its router, its public port and its admin address. Use
    // with ASSERT_NO_FATAL_FAILURE.
    void start_liege(const Options& options);

    // SIGTERM, then asserts exit code 0, "emperor: stopped", and that nothing of this liege
    // instance is left.
    void stop_emperor();

    // Declares that the test provokes error-level lines that contain every one of `parts`:
    // tear-down requires at least one such line and accepts them all.
    void expect_error_line(std::vector<std::string> parts);

    pid_t emperor_pid() const { return emperor_->pid(); }
    // What the emperor runs: its descendants but its guard process (include/liege/containment.hpp),
    // which it names in its log.
    std::vector<ProcStat> emperor_descendants() const;

    // The emperor's own log: stderr, or with --log-dir emperor.log (and its rotated
    // predecessor) followed by stderr, which then keeps only warnings and errors.
    std::string log() const;
    // A position in the log: wait_log(..., from = mark()) only looks at what comes after it.
    std::size_t mark() const { return log().size(); }
    // Waits until the log, from byte `from` on, has a line containing `needle`; returns it.
    std::optional<std::string> wait_log(const std::string& needle, Millis timeout = kStart,
                                        std::size_t from = 0) const;
    // The port of the first `--listen-tls` address, once the log names it.
    std::optional<uint16_t> wait_tls_port() const {
        auto line = wait_log(" (https)", kWait);
        return line ? port_after(*line, "listening on ") : std::nullopt;
    }
    // How many times `needle` occurs in the log after `from`.
    std::size_t count_log(const std::string& needle, std::size_t from = 0) const {
        return count_of(log(), needle, from);
    }
    // Every error-level line of the log.
    std::vector<std::string> error_lines() const;

    // One request to the admin API on its own connection (TCP admin addresses only), with the
    // token.
    Response admin(const std::string& method, const std::string& target) const;
    // The Authorization header the admin API wants over TCP.
    std::pair<std::string, std::string> admin_authorization() const {
        return {"Authorization", "Bearer " + admin_token_};
    }
    // One GET with `host` on a connection of its own to the router; nullopt (with `error` set)
    // when it failed at the HTTP level.
    std::optional<Response> get_once(const std::string& host, const std::string& target,
                                     std::string* error = nullptr, Millis timeout = kWait) const;
    // GET /status, or nullopt if it cannot be had.
    std::optional<nlohmann::json> status() const;
    // The vassal's entry in /status, or null.
    nlohmann::json vassal(const std::string& name) const;
    // Polls /status until `holds(entry)` for the vassal; returns the last entry seen (null if
    // there was none).
    nlohmann::json wait_vassal(const std::string& name,
                               const std::function<bool(const nlohmann::json&)>& holds,
                               Millis timeout = kStart) const;

    // A cgroup v2 directory start_liege() starts the emperor in (it moves there before it
    // execs), as a systemd unit with Delegate=yes would put it; "" = the test's own cgroup.
    std::string emperor_cgroup_;
    std::filesystem::path root_;
    std::filesystem::path vassals_;
    std::filesystem::path log_dir_;
    std::unique_ptr<Process> emperor_;
    uint16_t port_ = 0;
    uint16_t admin_port_ = 0; // 0 with a unix admin socket
    std::string admin_text_;  // the admin address as /status and the commands spell it
    // Given to a TCP admin API (unless Options::extra has its own --admin-token-file), and in
    // LIEGE_ADMIN_TOKEN_FILE for the commands tests run.
    std::string admin_token_;
    std::filesystem::path admin_token_file_;

private:
    // What the instance runs now: the emperor's descendants and what /status reports.
    std::vector<ProcStat> instance_processes() const;
    // Living processes that carry this instance's marker in their environment.
    std::vector<ProcStat> marked_processes() const;
    // Waits until neither `tracked` nor any marked process is alive; a failure names them.
    void expect_nothing_left(const std::vector<ProcStat>& tracked, const char* when) const;
    void check_error_lines();

    // What expect_error_line() declared: each entry the parts of one kind of line.
    std::vector<std::vector<std::string>> error_lines_expected_;
    std::string marker_; // LIEGE_TEST_INSTANCE=<value> in the environment of the instance
};

} // namespace liege::test
