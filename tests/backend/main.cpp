// liege-test-backend: the HTTP/1.1 + WebSocket server the integration tests put behind liege.
//
// It is deliberately plain: blocking POSIX sockets and a thread per connection, so that what it
// does is obvious and independent of the router's libuv code. Every body is streamed in 64 KiB
// pieces (never held whole), so a 256 MiB transfer through it costs no memory, and any growth
// the tests measure belongs to the router.
//
//   liege-test-backend --listen 127.0.0.1:0 [--name NAME] [--log-requests] [--idle-timeout MS]
//                      [--keep-alive-timeout S]
//
// After binding it prints exactly one line, `listening on HOST:PORT`, to stdout. With
// --log-requests it also prints `request METHOD TARGET` once each request head has been read,
// so a test can wait until a request has really reached the backend.
//
// With --idle-timeout, a request that arrives on a connection idle for MS ms or more (since the
// previous response) is not answered: the connection is closed at once, and with --log-requests
// `idle timeout: closed a connection idle for N ms, METHOD TARGET unanswered` is printed. That is
// the race every server with a keep-alive timeout has with a client reusing its idle connection
// (the server's timer fires while the request is on its way), made certain, so a test can show
// what a proxy does when it loses that race. --keep-alive-timeout S does the same after S seconds
// and announces it, as servers that send `Keep-Alive: timeout=S` do, on every response that keeps
// the connection open. Every response says which TCP connection carried it, `X-Connection: N`
// (N counts the connections accepted, from 1), so a test can tell a reused connection from a
// new one. Endpoints (any method):
//
//   /id                 200, body = NAME
//   /echo               200, the request body streamed back as it arrives (chunked if the
//                       request was chunked, else Content-Length)
//   /headers            200, body = the request head exactly as received
//   /bytes?n=N          200, Content-Length N of pattern bytes (see pattern.hpp)
//   /chunked?n=N&size=S 200, N pattern bytes in chunks of S
//   /close-delimited?n=N[&version=1.0]  N pattern bytes, no length, connection closed at the end
//   /sink[?stall_ms=M]  200, body = the number of body bytes received, in decimal; with
//                       stall_ms, waits M ms before it starts reading the body
//   /status?code=C      status C
//   /slow?ms=M          waits M ms, then 200
//   /sink-unless?name=N as /sink when NAME is N; any other backend reads the body and then
//                       closes the connection with a RST, without answering
//   /hang               reads the request and never answers
//   /until?file=PATH    waits until the file PATH exists (looked for every 10 ms, for at most
//                       60 s), then 200 `released`; 504 if it never came
//   /reset              closes the connection with a RST, without answering
//   /ws                 WebSocket handshake (101), then every frame echoed unmasked until close
//   /count              200, `requests=R connections=C open=O`: requests read (this one
//                       included), TCP connections accepted, connections open now
//   /env?name=VAR       200, body = the value of the environment variable VAR; 404 if unset
//   /alloc?mb=N         allocates N MiB and writes to every page of it, so that it counts in
//                       the process's RSS, and keeps it for the life of the process (never
//                       freed); 200, body = `allocated N MiB`
//
// Every response carries `X-Backend: NAME`.
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "liege/address.hpp"
#include "pattern.hpp"
#include "websocket.hpp"

namespace {

using liege::test::pattern_window;

constexpr std::size_t kPiece = 64 * 1024;
constexpr std::size_t kMaxHead = 1024 * 1024;

std::string g_name = "backend";
bool g_log_requests = false;
std::chrono::milliseconds g_idle_timeout{0}; // 0: idle connections are kept open forever
bool g_announce_keep_alive = false;          // --keep-alive-timeout: `Keep-Alive: timeout=S`
std::atomic<uint64_t> g_requests{0};
std::atomic<uint64_t> g_connections{0};
std::atomic<int64_t> g_open{0};
std::mutex g_stdout_mutex;
std::mutex g_allocated_mutex;
std::vector<char*> g_allocated; // what /alloc took: kept (never freed) for the life of the process

// The pattern bytes every generated body is cut from.
const std::string& window() {
    static const std::string w = pattern_window(kPiece);
    return w;
}

// A connected socket with a read buffer: request heads, chunk-size lines and WebSocket frame
// headers are parsed out of the buffer; bytes past them stay for the next reader.
class Conn {
public:
    explicit Conn(int fd) : fd_(fd) {}
    Conn(const Conn&) = delete;
    Conn& operator=(const Conn&) = delete;
    ~Conn() { ::close(fd_); }

    int fd() const { return fd_; }

    // Reads more bytes into the buffer. Returns false on EOF or error.
    bool fill() {
        if (pos_ == in_.size()) {
            in_.clear();
            pos_ = 0;
        } else if (pos_ > kPiece) {
            in_.erase(0, pos_);
            pos_ = 0;
        }
        char buf[kPiece];
        for (;;) {
            ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
            if (n > 0) {
                in_.append(buf, static_cast<std::size_t>(n));
                return true;
            }
            if (n < 0 && errno == EINTR) {
                continue;
            }
            return false;
        }
    }

    std::string_view buffered() const { return std::string_view(in_).substr(pos_); }
    void consume(std::size_t n) { pos_ += n; }

    // Reads up to `max` bytes, from the buffer first. Returns the count, 0 on EOF, -1 on error.
    ssize_t read_some(char* out, std::size_t max) {
        if (pos_ < in_.size()) {
            std::size_t n = std::min(max, in_.size() - pos_);
            std::memcpy(out, in_.data() + pos_, n);
            pos_ += n;
            return static_cast<ssize_t>(n);
        }
        for (;;) {
            ssize_t n = ::recv(fd_, out, max, 0);
            if (n < 0 && errno == EINTR) {
                continue;
            }
            return n;
        }
    }

    bool read_exact(char* out, std::size_t n) {
        while (n > 0) {
            ssize_t got = read_some(out, n);
            if (got <= 0) {
                return false;
            }
            out += got;
            n -= static_cast<std::size_t>(got);
        }
        return true;
    }

    // Reads one CRLF-terminated line (without the CRLF). False on EOF or a line over `max`.
    bool read_line(std::string& line, std::size_t max = 8192) {
        for (;;) {
            auto view = buffered();
            auto eol = view.find("\r\n");
            if (eol != std::string_view::npos) {
                line.assign(view.substr(0, eol));
                consume(eol + 2);
                return true;
            }
            if (view.size() > max || !fill()) {
                return false;
            }
        }
    }

    bool write_all(std::string_view data) {
        while (!data.empty()) {
            ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                return false;
            }
            data.remove_prefix(static_cast<std::size_t>(n));
        }
        return true;
    }

private:
    int fd_;
    std::string in_;
    std::size_t pos_ = 0;
};

std::string lower(std::string_view s) {
    std::string out(s);
    for (auto& c : out) {
        if (c >= 'A' && c <= 'Z') {
            c = static_cast<char>(c - 'A' + 'a');
        }
    }
    return out;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
        s.remove_prefix(1);
    }
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
        s.remove_suffix(1);
    }
    return s;
}

bool contains_token(std::string_view list, std::string_view token) {
    std::string l = lower(list);
    std::size_t start = 0;
    while (start <= l.size()) {
        std::size_t comma = l.find(',', start);
        if (comma == std::string::npos) {
            comma = l.size();
        }
        if (trim(std::string_view(l).substr(start, comma - start)) == token) {
            return true;
        }
        start = comma + 1;
    }
    return false;
}

std::optional<uint64_t> to_u64(std::string_view s, int base = 10) {
    uint64_t v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v, base);
    if (s.empty() || ec != std::errc{} || end != s.data() + s.size()) {
        return std::nullopt;
    }
    return v;
}

struct Request {
    std::string head; // request line and headers exactly as received, final CRLF CRLF included
    std::string method;
    std::string target;
    std::string path;
    std::string query;
    std::string version;
    std::vector<std::pair<std::string, std::string>> headers; // names lowercased

    bool chunked = false;
    uint64_t content_length = 0;
    bool keep_alive = true;
    bool expect_continue = false;
    uint64_t connection = 0; // which accepted connection carried it (X-Connection)

    const std::string* header(std::string_view name) const {
        for (const auto& [n, v] : headers) {
            if (n == name) {
                return &v;
            }
        }
        return nullptr;
    }

    uint64_t param(std::string_view key, uint64_t fallback) const {
        std::string_view q = query;
        while (!q.empty()) {
            auto amp = q.find('&');
            auto part = q.substr(0, amp);
            auto eq = part.find('=');
            if (eq != std::string_view::npos && part.substr(0, eq) == key) {
                return to_u64(part.substr(eq + 1)).value_or(fallback);
            }
            q = amp == std::string_view::npos ? std::string_view{} : q.substr(amp + 1);
        }
        return fallback;
    }

    std::string text_param(std::string_view key) const {
        std::string_view q = query;
        while (!q.empty()) {
            auto amp = q.find('&');
            auto part = q.substr(0, amp);
            auto eq = part.find('=');
            if (eq != std::string_view::npos && part.substr(0, eq) == key) {
                return std::string(part.substr(eq + 1));
            }
            q = amp == std::string_view::npos ? std::string_view{} : q.substr(amp + 1);
        }
        return {};
    }
};

enum class HeadResult { Ok, Eof, TooLarge, Malformed };

HeadResult read_request(Conn& conn, Request& req) {
    for (;;) {
        auto view = conn.buffered();
        auto end = view.find("\r\n\r\n");
        if (end != std::string_view::npos) {
            req.head.assign(view.substr(0, end + 4));
            conn.consume(end + 4);
            break;
        }
        if (view.size() > kMaxHead) {
            return HeadResult::TooLarge;
        }
        if (!conn.fill()) {
            return HeadResult::Eof;
        }
    }

    std::string_view rest = req.head;
    auto eol = rest.find("\r\n");
    std::string_view line = rest.substr(0, eol);
    rest.remove_prefix(eol + 2);
    auto sp1 = line.find(' ');
    auto sp2 = line.rfind(' ');
    if (sp1 == std::string_view::npos || sp2 == sp1) {
        return HeadResult::Malformed;
    }
    req.method = line.substr(0, sp1);
    req.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    req.version = line.substr(sp2 + 1);
    if (req.version != "HTTP/1.1" && req.version != "HTTP/1.0") {
        return HeadResult::Malformed;
    }
    auto qm = req.target.find('?');
    req.path = req.target.substr(0, qm);
    req.query = qm == std::string::npos ? "" : req.target.substr(qm + 1);

    while (!rest.empty()) {
        eol = rest.find("\r\n");
        line = rest.substr(0, eol);
        rest.remove_prefix(eol + 2);
        if (line.empty()) {
            break;
        }
        auto colon = line.find(':');
        if (colon == std::string_view::npos || colon == 0) {
            return HeadResult::Malformed;
        }
        req.headers.emplace_back(lower(line.substr(0, colon)),
                                 std::string(trim(line.substr(colon + 1))));
    }

    req.keep_alive = req.version == "HTTP/1.1";
    for (const auto& [name, value] : req.headers) {
        if (name == "transfer-encoding" && contains_token(value, "chunked")) {
            req.chunked = true;
        } else if (name == "content-length") {
            auto n = to_u64(value);
            if (!n) {
                return HeadResult::Malformed;
            }
            req.content_length = *n;
        } else if (name == "connection") {
            if (contains_token(value, "close")) {
                req.keep_alive = false;
            } else if (contains_token(value, "keep-alive")) {
                req.keep_alive = true;
            }
        } else if (name == "expect" && lower(value) == "100-continue") {
            req.expect_continue = true;
        }
    }
    if (req.chunked) {
        req.content_length = 0;
    }
    return HeadResult::Ok;
}

// Reads a request body, Content-Length or chunked, in pieces as it arrives.
class Body {
public:
    Body(Conn& conn, const Request& req)
        : conn_(conn), chunked_(req.chunked), remaining_(req.content_length),
          continue_pending_(req.expect_continue), done_(!req.chunked && req.content_length == 0) {}

    // Returns the number of bytes read (> 0), 0 at the end of the body, -1 on EOF or bad framing.
    ssize_t read(char* out, std::size_t max) {
        if (done_) {
            return 0;
        }
        if (continue_pending_) {
            continue_pending_ = false;
            if (!conn_.write_all("HTTP/1.1 100 Continue\r\n\r\n")) {
                return -1;
            }
        }
        if (chunked_ && remaining_ == 0) {
            if (!next_chunk()) {
                return -1;
            }
            if (done_) {
                return 0;
            }
        }
        ssize_t n =
            conn_.read_some(out, static_cast<std::size_t>(std::min<uint64_t>(max, remaining_)));
        if (n <= 0) {
            return -1;
        }
        remaining_ -= static_cast<uint64_t>(n);
        if (!chunked_ && remaining_ == 0) {
            done_ = true;
        }
        if (chunked_ && remaining_ == 0) {
            after_chunk_ = true;
        }
        return n;
    }

    // Reads and discards the rest of the body. Returns the byte count, or -1.
    int64_t drain() {
        char buf[kPiece];
        int64_t total = 0;
        for (;;) {
            ssize_t n = read(buf, sizeof(buf));
            if (n < 0) {
                return -1;
            }
            if (n == 0) {
                return total;
            }
            total += n;
        }
    }

private:
    // Reads the CRLF after the previous chunk, then the next chunk-size line (and the trailer
    // section after the last chunk).
    bool next_chunk() {
        std::string line;
        if (after_chunk_) {
            if (!conn_.read_line(line) || !line.empty()) {
                return false;
            }
            after_chunk_ = false;
        }
        if (!conn_.read_line(line)) {
            return false;
        }
        std::string_view size = line;
        size = trim(size.substr(0, size.find(';')));
        auto n = to_u64(size, 16);
        if (!n) {
            return false;
        }
        if (*n == 0) {
            do {
                if (!conn_.read_line(line)) {
                    return false;
                }
            } while (!line.empty());
            done_ = true;
            return true;
        }
        remaining_ = *n;
        return true;
    }

    Conn& conn_;
    bool chunked_;
    uint64_t remaining_;
    bool continue_pending_;
    bool done_;
    bool after_chunk_ = false;
};

const char* reason(int status) {
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 418:
        return "I'm a teapot";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Status";
    }
}

bool bodyless(int status) {
    return status < 200 || status == 204 || status == 304;
}

// The status line and the headers every response has; `framing` is the Content-Length or
// Transfer-Encoding line (or empty).
std::string head(const Request& req, int status, const std::string& framing) {
    std::string h = "HTTP/1.1 " + std::to_string(status) + " " + reason(status) + "\r\n";
    h += framing;
    h += "Content-Type: text/plain\r\nX-Backend: " + g_name + "\r\n";
    h += "X-Connection: " + std::to_string(req.connection) + "\r\n";
    if (!req.keep_alive) {
        h += "Connection: close\r\n";
    } else if (req.version == "HTTP/1.0") {
        h += "Connection: keep-alive\r\n";
    }
    if (req.keep_alive && g_announce_keep_alive) {
        h += "Keep-Alive: timeout=" + std::to_string(g_idle_timeout.count() / 1000) + "\r\n";
    }
    h += "\r\n";
    return h;
}

std::string length_line(uint64_t n) {
    return "Content-Length: " + std::to_string(n) + "\r\n";
}

bool respond(Conn& conn, const Request& req, int status, std::string_view body) {
    if (bodyless(status)) {
        return conn.write_all(head(req, status, ""));
    }
    std::string out = head(req, status, length_line(body.size()));
    if (req.method != "HEAD") {
        out += body;
    }
    return conn.write_all(out);
}

// Writes `n` pattern bytes starting at absolute offset 0, in pieces of at most `piece` bytes,
// each wrapped as a chunk if `chunked`.
bool write_pattern(Conn& conn, uint64_t n, std::size_t piece, bool chunked) {
    const std::string& w = window();
    piece = std::max<std::size_t>(1, std::min(piece, kPiece));
    uint64_t offset = 0;
    while (offset < n) {
        std::size_t len = static_cast<std::size_t>(std::min<uint64_t>(piece, n - offset));
        std::string_view data(w.data() + offset % liege::test::kPeriod, len);
        if (chunked) {
            char size_line[32];
            int sl = std::snprintf(size_line, sizeof(size_line), "%zx\r\n", len);
            std::string out;
            out.reserve(len + 40);
            out.append(size_line, static_cast<std::size_t>(sl));
            out.append(data);
            out.append("\r\n");
            if (!conn.write_all(out)) {
                return false;
            }
        } else if (!conn.write_all(data)) {
            return false;
        }
        offset += len;
    }
    return !chunked || conn.write_all("0\r\n\r\n");
}

bool handle_echo(Conn& conn, const Request& req, Body& body) {
    char buf[kPiece];
    if (req.chunked) {
        if (!conn.write_all(head(req, 200, "Transfer-Encoding: chunked\r\n"))) {
            return false;
        }
        for (;;) {
            ssize_t n = body.read(buf, sizeof(buf));
            if (n < 0) {
                return false;
            }
            if (n == 0) {
                return conn.write_all("0\r\n\r\n");
            }
            char size_line[32];
            int sl =
                std::snprintf(size_line, sizeof(size_line), "%zx\r\n", static_cast<std::size_t>(n));
            std::string out(size_line, static_cast<std::size_t>(sl));
            out.append(buf, static_cast<std::size_t>(n));
            out.append("\r\n");
            if (!conn.write_all(out)) {
                return false;
            }
        }
    }
    if (!conn.write_all(head(req, 200, length_line(req.content_length)))) {
        return false;
    }
    for (;;) {
        ssize_t n = body.read(buf, sizeof(buf));
        if (n < 0) {
            return false;
        }
        if (n == 0) {
            return true;
        }
        if (!conn.write_all(std::string_view(buf, static_cast<std::size_t>(n)))) {
            return false;
        }
    }
}

// Echoes WebSocket frames until the client's close frame (echoed too) or EOF. Payloads are
// streamed, so frames of any size pass; a ping is answered with a pong of the same payload.
void websocket_echo(Conn& conn) {
    for (;;) {
        unsigned char h[2];
        if (!conn.read_exact(reinterpret_cast<char*>(h), 2)) {
            return;
        }
        const int opcode = h[0] & 0x0f;
        const bool masked = (h[1] & 0x80) != 0;
        uint64_t len = h[1] & 0x7f;
        if (len == 126 || len == 127) {
            unsigned char ext[8];
            const std::size_t n = len == 126 ? 2 : 8;
            if (!conn.read_exact(reinterpret_cast<char*>(ext), n)) {
                return;
            }
            len = 0;
            for (std::size_t i = 0; i < n; ++i) {
                len = (len << 8) | ext[i];
            }
        }
        unsigned char mask[4] = {0, 0, 0, 0};
        if (masked && !conn.read_exact(reinterpret_cast<char*>(mask), 4)) {
            return;
        }

        std::string out;
        out += static_cast<char>(opcode == 0x9 ? (h[0] & 0xf0) | 0xa : h[0]);
        if (len < 126) {
            out += static_cast<char>(len);
        } else if (len <= 0xffff) {
            out += static_cast<char>(126);
            out += static_cast<char>(len >> 8);
            out += static_cast<char>(len & 0xff);
        } else {
            out += static_cast<char>(127);
            for (int i = 7; i >= 0; --i) {
                out += static_cast<char>((len >> (i * 8)) & 0xff);
            }
        }
        if (!conn.write_all(out)) {
            return;
        }
        char buf[kPiece];
        uint64_t offset = 0;
        while (offset < len) {
            ssize_t n = conn.read_some(
                buf, static_cast<std::size_t>(std::min<uint64_t>(sizeof(buf), len - offset)));
            if (n <= 0) {
                return;
            }
            for (ssize_t i = 0; i < n; ++i) {
                buf[i] = static_cast<char>(buf[i] ^ mask[(offset + static_cast<uint64_t>(i)) % 4]);
            }
            if (!conn.write_all(std::string_view(buf, static_cast<std::size_t>(n)))) {
                return;
            }
            offset += static_cast<uint64_t>(n);
        }
        if (opcode == 0x8) {
            return;
        }
    }
}

// Handles one request. Returns true when the connection may carry another request.
bool handle(Conn& conn, const Request& req) {
    Body body(conn, req);
    const std::string& p = req.path;

    if (p == "/echo") {
        return handle_echo(conn, req, body);
    }
    if (p == "/sink") {
        // A stalled reader makes a proxy without backpressure buffer the body it receives.
        std::this_thread::sleep_for(std::chrono::milliseconds(req.param("stall_ms", 0)));
        int64_t n = body.drain();
        return n >= 0 && respond(conn, req, 200, std::to_string(n));
    }
    if (p == "/hang") {
        // Never answer; keep reading (and discarding) until the peer goes away.
        char buf[kPiece];
        while (conn.read_some(buf, sizeof(buf)) > 0) {
        }
        return false;
    }
    if (p == "/sink-unless") {
        // Reads the whole body, then answers as /sink only if NAME is `name`; any other backend
        // closes the connection with a RST instead (a worker that dies after taking a request).
        int64_t n = body.drain();
        if (n >= 0 && g_name == req.text_param("name")) {
            return respond(conn, req, 200, std::to_string(n));
        }
        linger l{1, 0};
        ::setsockopt(conn.fd(), SOL_SOCKET, SO_LINGER, &l, sizeof(l));
        return false;
    }
    if (p == "/reset") {
        linger l{1, 0};
        ::setsockopt(conn.fd(), SOL_SOCKET, SO_LINGER, &l, sizeof(l));
        return false;
    }
    if (p == "/ws") {
        const std::string* upgrade = req.header("upgrade");
        const std::string* key = req.header("sec-websocket-key");
        if (upgrade == nullptr || lower(*upgrade) != "websocket" || key == nullptr) {
            respond(conn, req, 400, "expected a WebSocket upgrade\n");
            return false;
        }
        std::string out = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Accept: " +
                          liege::test::websocket_accept(*key) + "\r\nX-Backend: " + g_name +
                          "\r\n\r\n";
        if (conn.write_all(out)) {
            websocket_echo(conn);
        }
        return false;
    }

    // Everything else ignores the request body; read it so the next request starts in place.
    if (body.drain() < 0) {
        return false;
    }
    if (p == "/id") {
        return respond(conn, req, 200, g_name);
    }
    if (p == "/headers") {
        return respond(conn, req, 200, req.head);
    }
    if (p == "/bytes") {
        uint64_t n = req.param("n", 0);
        if (!conn.write_all(head(req, 200, length_line(n)))) {
            return false;
        }
        return req.method == "HEAD" || write_pattern(conn, n, kPiece, false);
    }
    if (p == "/chunked") {
        uint64_t n = req.param("n", 0);
        auto size = static_cast<std::size_t>(req.param("size", 1000));
        if (!conn.write_all(head(req, 200, "Transfer-Encoding: chunked\r\n"))) {
            return false;
        }
        return req.method == "HEAD" || write_pattern(conn, n, size, true);
    }
    if (p == "/close-delimited") {
        uint64_t n = req.param("n", 0);
        std::string h = req.text_param("version") == "1.0"
                            ? "HTTP/1.0 200 OK\r\n"
                            : "HTTP/1.1 200 OK\r\nConnection: close\r\n";
        h += "Content-Type: text/plain\r\nX-Backend: " + g_name + "\r\n\r\n";
        if (conn.write_all(h) && req.method != "HEAD") {
            write_pattern(conn, n, kPiece, false);
        }
        return false;
    }
    if (p == "/status") {
        int code = static_cast<int>(req.param("code", 200));
        if (code < 100 || code > 999) {
            code = 400;
        }
        return respond(conn, req, code, "status " + std::to_string(code) + "\n");
    }
    if (p == "/slow") {
        std::this_thread::sleep_for(std::chrono::milliseconds(req.param("ms", 1000)));
        return respond(conn, req, 200, "slow\n");
    }
    if (p == "/until") {
        // A request that holds its worker until a test lets it go, whatever the proxy in front
        // does with the client meanwhile.
        const std::string path = req.text_param("file");
        const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
        while (::access(path.c_str(), F_OK) != 0) {
            if (std::chrono::steady_clock::now() >= give_up) {
                return respond(conn, req, 504, "no " + path + " within 60 s\n");
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        return respond(conn, req, 200, "released\n");
    }
    if (p == "/env") {
        const std::string name = req.text_param("name");
        const char* value = name.empty() ? nullptr : std::getenv(name.c_str());
        return value != nullptr ? respond(conn, req, 200, value)
                                : respond(conn, req, 404, "no variable " + name + "\n");
    }
    if (p == "/alloc") {
        // For tests of a memory limit: the pages stay resident until the process exits.
        const uint64_t mb = req.param("mb", 0);
        const std::size_t bytes = static_cast<std::size_t>(mb) << 20;
        auto* block = static_cast<char*>(std::malloc(bytes == 0 ? 1 : bytes));
        if (block == nullptr) {
            return respond(conn, req, 500, "cannot allocate " + std::to_string(mb) + " MiB\n");
        }
        const long page = ::sysconf(_SC_PAGESIZE);
        for (std::size_t i = 0; i < bytes; i += static_cast<std::size_t>(page)) {
            block[i] = 1;
        }
        std::lock_guard lock(g_allocated_mutex);
        g_allocated.push_back(block);
        return respond(conn, req, 200, "allocated " + std::to_string(mb) + " MiB");
    }
    if (p == "/count") {
        return respond(conn, req, 200,
                       "requests=" + std::to_string(g_requests.load()) +
                           " connections=" + std::to_string(g_connections.load()) +
                           " open=" + std::to_string(g_open.load()));
    }
    return respond(conn, req, 404, "no such endpoint: " + p + "\n");
}

// Half-closes, then reads until the peer closes (bounded), so that closing with unread
// pipelined bytes does not turn into a RST that destroys the response still in flight.
void lingering_close(Conn& conn) {
    ::shutdown(conn.fd(), SHUT_WR);
    timeval tv{2, 0};
    ::setsockopt(conn.fd(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char buf[kPiece];
    while (::recv(conn.fd(), buf, sizeof(buf), 0) > 0) {
    }
}

void serve(int fd) {
    const uint64_t connection = ++g_connections;
    g_open++;
    {
        Conn conn(fd);
        int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        bool linger = true;
        std::optional<std::chrono::steady_clock::time_point> idle_since; // after a response
        for (;;) {
            Request req;
            req.connection = connection;
            HeadResult r = read_request(conn, req);
            if (r == HeadResult::Eof) {
                break;
            }
            if (idle_since && g_idle_timeout.count() > 0) {
                auto idle = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::steady_clock::now() - *idle_since);
                if (idle >= g_idle_timeout) {
                    if (g_log_requests) {
                        std::lock_guard lock(g_stdout_mutex);
                        std::printf("idle timeout: closed a connection idle for %lld ms, %s %s "
                                    "unanswered\n",
                                    static_cast<long long>(idle.count()), req.method.c_str(),
                                    req.target.c_str());
                        std::fflush(stdout);
                    }
                    linger = false; // closed as the server's idle timer would: no lingering
                    break;
                }
            }
            if (r != HeadResult::Ok) {
                req.keep_alive = false;
                int status = r == HeadResult::TooLarge ? 431 : 400;
                respond(conn, req, status, std::string(reason(status)) + "\n");
                break;
            }
            g_requests++;
            if (g_log_requests) {
                std::lock_guard lock(g_stdout_mutex);
                std::printf("request %s %s\n", req.method.c_str(), req.target.c_str());
                std::fflush(stdout);
            }
            bool again = handle(conn, req);
            if (req.path == "/reset" || req.path == "/sink-unless") {
                linger = false;
            }
            if (!again || !req.keep_alive) {
                break;
            }
            idle_since = std::chrono::steady_clock::now();
        }
        if (linger) {
            lingering_close(conn);
        }
    }
    g_open--;
}

int listen_on(const liege::Address& addr) {
    sockaddr_storage ss{};
    socklen_t len = 0;
    if (int rc = liege::to_sockaddr(addr, ss, len); rc != 0) {
        throw std::runtime_error("cannot resolve " + addr.str() + ": " + std::strerror(-rc));
    }
    int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
    }
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (addr.is_unix()) {
        ::unlink(addr.path.c_str());
    }
    if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(fd, 1024) != 0) {
        throw std::runtime_error("cannot listen on " + addr.str() + ": " + std::strerror(errno));
    }
    return fd;
}

int usage(const char* argv0) {
    std::fprintf(stderr,
                 "usage: %s --listen ADDR [--name NAME] [--log-requests] [--idle-timeout MS] "
                 "[--keep-alive-timeout S]\n",
                 argv0);
    return 2;
}

} // namespace

int main(int argc, char** argv) {
    std::optional<liege::Address> listen;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        try {
            if (arg == "--listen" && i + 1 < argc) {
                listen = liege::parse_address(argv[++i]);
            } else if (arg == "--name" && i + 1 < argc) {
                g_name = argv[++i];
            } else if (arg == "--log-requests") {
                g_log_requests = true;
            } else if (arg == "--idle-timeout" && i + 1 < argc) {
                auto ms = to_u64(argv[++i]);
                if (!ms) {
                    return usage(argv[0]);
                }
                g_idle_timeout = std::chrono::milliseconds(*ms);
            } else if (arg == "--keep-alive-timeout" && i + 1 < argc) {
                auto seconds = to_u64(argv[++i]);
                if (!seconds || *seconds == 0) {
                    return usage(argv[0]);
                }
                g_idle_timeout = std::chrono::seconds(*seconds);
                g_announce_keep_alive = true;
            } else {
                return usage(argv[0]);
            }
        } catch (const std::invalid_argument& e) {
            std::fprintf(stderr, "%s\n", e.what());
            return 2;
        }
    }
    if (!listen) {
        return usage(argv[0]);
    }
    ::signal(SIGPIPE, SIG_IGN);

    int fd = -1;
    try {
        fd = listen_on(*listen);
    } catch (const std::runtime_error& e) {
        std::fprintf(stderr, "liege-test-backend: %s\n", e.what());
        return 1;
    }
    liege::Address bound = listen->is_unix() ? *listen : liege::address_of_socket(fd);
    std::printf("listening on %s\n", bound.str().c_str());
    std::fflush(stdout);

    for (;;) {
        int client = ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
        if (client < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                // Out of descriptors: back off instead of spinning; accepts resume when
                // connections close.
                std::this_thread::sleep_for(std::chrono::milliseconds(10));
            }
            continue;
        }
        std::thread(serve, client).detach();
    }
}
