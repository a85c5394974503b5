// The admin API server (see include/liege/admin.hpp for the endpoints).
//
// One request at a time per connection: when llhttp completes a request the parser pauses and
// reading stops; bytes already received stay in `pending`. The response is written (a reload is
// answered only when the emperor reports its outcome, possibly much later), and only when the
// write has completed does the connection resume parsing, so pipelined requests are answered in
// order and a completion never runs inside the call that started it.
//
// Lifetimes: connections are owned by the server's map, as shared_ptrs. Every libuv callback
// holds a reference for its duration, so closing a connection from inside one of its callbacks
// frees it only once the callback returns; the handles' memory goes in their close callbacks
// (UvHandle). Writes and reload outcomes reach a connection through a weak_ptr, so a client that
// hangs up while its reload runs is simply not answered.
#include "liege/admin.hpp"

#include <arpa/inet.h>
#include <llhttp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <map>

#include "emperor.hpp"
#include "liege/admin_token.hpp"
#include "liege/clock.hpp"
#include "liege/http_head.hpp"
#include "liege/log.hpp"
#include "liege/metrics.hpp"
#include "liege/uv.hpp"

namespace liege {

using nlohmann::json;

namespace {

constexpr size_t kMaxHead = 64 * 1024;
constexpr size_t kMaxBody = 64 * 1024;
constexpr uint64_t kIdleTimeoutMs = 60'000;

int hex_value(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

std::optional<std::string> percent_decode(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] != '%') {
            out += s[i];
            continue;
        }
        if (i + 2 >= s.size()) {
            return std::nullopt;
        }
        int hi = hex_value(s[i + 1]);
        int lo = hex_value(s[i + 2]);
        if (hi < 0 || lo < 0) {
            return std::nullopt;
        }
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
    }
    return out;
}

bool is_loopback(const Address& a) {
    return a.is_unix() || a.host == "localhost" || a.host.starts_with("127.") || a.host == "::1";
}

} // namespace

namespace {

// The vassal of "/vassals/NAME<suffix>", percent-decoded; nullopt for any other path.
std::optional<std::string> vassal_target(std::string_view path, std::string_view kSuffix) {
    constexpr std::string_view kPrefix = "/vassals/";
    if (!path.starts_with(kPrefix) || !path.ends_with(kSuffix) ||
        path.size() <= kPrefix.size() + kSuffix.size()) {
        return std::nullopt;
    }
    std::string_view raw =
        path.substr(kPrefix.size(), path.size() - kPrefix.size() - kSuffix.size());
    if (raw.find('/') != std::string_view::npos) {
        return std::nullopt;
    }
    auto name = percent_decode(raw);
    if (!name || name->empty()) {
        return std::nullopt;
    }
    return name;
}

// The value of `key` in the query of `url` as a number; `fallback` when absent or not one.
uint64_t query_number(std::string_view url, std::string_view key, uint64_t fallback) {
    auto q = url.find('?');
    if (q == std::string_view::npos) {
        return fallback;
    }
    std::string_view query = url.substr(q + 1);
    while (!query.empty()) {
        std::string_view pair = query.substr(0, query.find('&'));
        query.remove_prefix(std::min(query.size(), pair.size() + 1));
        if (pair.size() > key.size() && pair.starts_with(key) && pair[key.size()] == '=') {
            uint64_t value = 0;
            std::string_view digits = pair.substr(key.size() + 1);
            auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
            if (ec == std::errc() && end == digits.data() + digits.size()) {
                return value;
            }
        }
    }
    return fallback;
}

} // namespace

std::optional<std::string> reload_target(std::string_view path) {
    return vassal_target(path, "/reload");
}

bool admin_host_allowed(std::string_view host, std::string_view admin_host) {
    std::string_view name = host;
    std::string_view port;
    if (host.starts_with('[')) {
        auto close = host.find(']');
        if (close == std::string_view::npos) {
            return false;
        }
        name = host.substr(1, close - 1);
        std::string_view rest = host.substr(close + 1);
        if (!rest.empty()) {
            if (rest[0] != ':') {
                return false;
            }
            port = rest.substr(1);
        }
    } else if (auto colon = host.find(':'); colon != std::string_view::npos) {
        name = host.substr(0, colon);
        port = host.substr(colon + 1);
    }
    if (name.empty() ||
        !std::all_of(port.begin(), port.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
        return false;
    }
    if (http::iequals(name, "localhost") || http::iequals(name, admin_host)) {
        return true;
    }
    // An address literal cannot be rebound by someone else's DNS; any name but ours could be.
    const std::string literal(name);
    unsigned char buf[sizeof(in6_addr)];
    return ::inet_pton(AF_INET, literal.c_str(), buf) == 1 ||
           (host.starts_with('[') && ::inet_pton(AF_INET6, literal.c_str(), buf) == 1);
}

// ---------------------------------------------------------------------------------------------

struct AdminServer::Impl {
    struct Conn;

    Impl(emperor::Emperor& e) : emperor(e), loop(e.loop()) {}

    emperor::Emperor& emperor;
    uv_loop_t* loop;
    Address bound;
    std::string configured_host; // the host --admin named, which Host may name too
    std::string token;           // --admin-token-file's token; required when not empty
    UvHandle<uv_tcp_t> tcp;
    UvHandle<uv_pipe_t> pipe;
    bool listening = false;
    bool have_inode = false; // the unix socket file we made, to remove only that one
    dev_t socket_dev = 0;
    ino_t socket_ino = 0;
    std::map<uint64_t, std::shared_ptr<Conn>> conns;
    uint64_t next_id = 1;
    RateTracker rates;
    llhttp_settings_t settings{};

    int start(const Address& address);
    void close();
    void accept(uv_stream_t* server);
    void close_conn(Conn& c);
    void dispatch(Conn& c);
    // Answers a request that the admin API's guards refuse (Host, token, Origin); false when it
    // may go on.
    bool refuse(Conn& c);
    void respond(Conn& c, int status, const json& body,
                 std::vector<std::pair<std::string, std::string>> headers = {});
    void respond_raw(Conn& c, int status, std::string_view content_type, std::string body,
                     const std::vector<std::pair<std::string, std::string>>& headers);
    void after_response(Conn& c);
    void feed(Conn& c, std::string_view data);
    void reload_one(Conn& c, const std::string& name);
    // POST /vassals/NAME/stop and /start: answered once the vassal is gone, or ready.
    void stop_or_start(Conn& c, const std::string& name, bool stop);
    void logs(Conn& c, const std::string& name);
    void reload_all(Conn& c);
    json outcome(const std::string& name, bool ok, const std::string& message) const;
    json status_document() const;
};

struct AdminServer::Impl::Conn : std::enable_shared_from_this<Conn> {
    Impl* server = nullptr;
    uint64_t id = 0;
    UvHandle<uv_tcp_t> tcp;
    UvHandle<uv_pipe_t> pipe;
    uv_stream_t* stream = nullptr;
    UvHandle<uv_timer_t> timer;
    llhttp_t parser{};
    // The request being read.
    std::string method;
    std::string url;
    size_t head_bytes = 0;
    size_t body_bytes = 0;
    int reject = 0; // 413 or 431 once a limit is passed
    // The headers the guards look at (refuse()), and the one being read.
    std::string field;
    std::string value;
    std::string host;
    std::string authorization;
    std::string origin;
    int hosts = 0;
    bool complete = false;
    // After it.
    bool keep_alive = false;
    bool busy = false;
    bool closing = false;
    std::string pending; // received while busy

    void start_reading() {
        uv_read_start(
            stream,
            [](uv_handle_t*, size_t, uv_buf_t* buf) {
                // One loop thread, and every read is consumed (or copied) before the next.
                static char storage[64 * 1024];
                *buf = uv_buf_init(storage, sizeof(storage));
            },
            [](uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
                auto* c = static_cast<Conn*>(s->data);
                if (c == nullptr) {
                    return;
                }
                auto self = c->shared_from_this();
                if (n < 0) {
                    c->server->close_conn(*c);
                    return;
                }
                if (n > 0) {
                    c->server->feed(*c, {buf->base, static_cast<size_t>(n)});
                }
            });
    }

    void arm_idle() {
        uv_timer_start(
            timer.get(),
            [](uv_timer_t* t) {
                auto* c = static_cast<Conn*>(t->data);
                if (c != nullptr) {
                    auto self = c->shared_from_this();
                    c->server->close_conn(*c);
                }
            },
            kIdleTimeoutMs, 0);
    }
};

int AdminServer::Impl::start(const Address& address) {
    if (address.is_unix()) {
        struct stat st {};
        if (::stat(address.path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
            // Replace a stale socket file, but never one a running liege still answers on.
            int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
            sockaddr_storage ss{};
            socklen_t len = 0;
            if (probe >= 0 && to_sockaddr(address, ss, len) == 0 &&
                ::connect(probe, reinterpret_cast<sockaddr*>(&ss), len) == 0) {
                ::close(probe);
                spdlog::error("admin API: {} is in use by another process (another liege run?)",
                              address.str());
                return -EADDRINUSE;
            }
            if (probe >= 0) {
                ::close(probe);
            }
            ::unlink(address.path.c_str());
        }
    }
    int fd = bind_listening_socket(address, false, 128);
    if (fd < 0) {
        spdlog::error("admin API: cannot listen on {}: {}", address.str(), std::strerror(-fd));
        return fd;
    }
    int rc = 0;
    bool owned = false; // the handle owns fd once opened
    if (address.is_unix()) {
        // The admin API can reload every app: only the owner and its group may use it.
        ::chmod(address.path.c_str(), 0660);
        struct stat st {};
        if (::stat(address.path.c_str(), &st) == 0) {
            have_inode = true;
            socket_dev = st.st_dev;
            socket_ino = st.st_ino;
        }
        uv_pipe_init(loop, pipe.get(), 0);
        pipe->data = this;
        rc = uv_pipe_open(pipe.get(), fd);
        owned = rc == 0;
        if (rc == 0) {
            rc = uv_listen(pipe.stream(), 128, [](uv_stream_t* s, int status) {
                if (s->data != nullptr && status == 0) {
                    static_cast<Impl*>(s->data)->accept(s);
                }
            });
        }
        bound = address;
    } else {
        uv_tcp_init(loop, tcp.get());
        tcp->data = this;
        rc = uv_tcp_open(tcp.get(), fd);
        owned = rc == 0;
        if (rc == 0) {
            rc = uv_listen(tcp.stream(), 128, [](uv_stream_t* s, int status) {
                if (s->data != nullptr && status == 0) {
                    static_cast<Impl*>(s->data)->accept(s);
                }
            });
        }
        bound = address_of_socket(fd);
    }
    if (rc != 0) {
        spdlog::error("admin API: cannot listen on {}: {}", address.str(), uv_strerror(rc));
        if (!owned) {
            ::close(fd);
        }
        close();
        return rc;
    }
    listening = true;
    llhttp_settings_init(&settings);
    settings.on_message_begin = [](llhttp_t* p) {
        auto* c = static_cast<Conn*>(p->data);
        c->method.clear();
        c->url.clear();
        c->head_bytes = 0;
        c->body_bytes = 0;
        c->reject = 0;
        c->complete = false;
        c->field.clear();
        c->value.clear();
        c->host.clear();
        c->authorization.clear();
        c->origin.clear();
        c->hosts = 0;
        return 0;
    };
    settings.on_url = [](llhttp_t* p, const char* at, size_t n) {
        auto* c = static_cast<Conn*>(p->data);
        c->url.append(at, n);
        c->head_bytes += n;
        if (c->head_bytes > kMaxHead) {
            c->reject = 431;
            return -1;
        }
        return 0;
    };
    static constexpr auto count_head = [](llhttp_t* p, const char*, size_t n) {
        auto* c = static_cast<Conn*>(p->data);
        c->head_bytes += n;
        if (c->head_bytes > kMaxHead) {
            c->reject = 431;
            return -1;
        }
        return 0;
    };
    settings.on_header_field = [](llhttp_t* p, const char* at, size_t n) {
        auto* c = static_cast<Conn*>(p->data);
        c->field.append(at, n);
        return count_head(p, at, n);
    };
    settings.on_header_value = [](llhttp_t* p, const char* at, size_t n) {
        auto* c = static_cast<Conn*>(p->data);
        c->value.append(at, n);
        return count_head(p, at, n);
    };
    settings.on_header_value_complete = [](llhttp_t* p) {
        auto* c = static_cast<Conn*>(p->data);
        if (http::iequals(c->field, "host")) {
            c->host = c->value;
            ++c->hosts;
        } else if (http::iequals(c->field, "authorization")) {
            c->authorization = c->value;
        } else if (http::iequals(c->field, "origin")) {
            c->origin = c->value;
        }
        c->field.clear();
        c->value.clear();
        return 0;
    };
    settings.on_body = [](llhttp_t* p, const char*, size_t n) {
        auto* c = static_cast<Conn*>(p->data);
        c->body_bytes += n;
        if (c->body_bytes > kMaxBody) {
            c->reject = 413;
            return -1;
        }
        return 0;
    };
    settings.on_message_complete = [](llhttp_t* p) {
        auto* c = static_cast<Conn*>(p->data);
        c->method = llhttp_method_name(static_cast<llhttp_method_t>(p->method));
        c->keep_alive = llhttp_should_keep_alive(p) != 0;
        c->complete = true;
        return static_cast<int>(HPE_PAUSED);
    };
    if (!bound.is_unix() && token.empty()) {
        // `liege run` refuses this; a caller that does not is told.
        spdlog::warn("admin API on {} without a token: whoever can reach it can reload every "
                     "vassal",
                     bound.str());
    } else if (!is_loopback(bound)) {
        spdlog::warn("admin API on {}, not a loopback address: whoever can reach it can reload "
                     "every vassal",
                     bound.str());
    }
    spdlog::info("admin API on {}", bound.str());
    emperor.on_router_stats([this] { rates.add(emperor.router_stats(), steady_now_ms()); });
    return 0;
}

void AdminServer::Impl::close() {
    emperor.on_router_stats(nullptr);
    tcp.reset();
    pipe.reset();
    auto all = std::move(conns);
    conns.clear();
    for (auto& [id, c] : all) {
        close_conn(*c);
    }
    if (listening && bound.is_unix() && have_inode) {
        // Only the file we made: a newer liege may have replaced it since.
        struct stat st {};
        if (::stat(bound.path.c_str(), &st) == 0 && st.st_dev == socket_dev &&
            st.st_ino == socket_ino) {
            ::unlink(bound.path.c_str());
        }
    }
    listening = false;
}

void AdminServer::Impl::accept(uv_stream_t* server) {
    auto c = std::make_shared<Conn>();
    c->server = this;
    c->id = next_id++;
    int rc = 0;
    if (bound.is_unix()) {
        uv_pipe_init(loop, c->pipe.get(), 0);
        c->pipe->data = c.get();
        c->stream = c->pipe.stream();
    } else {
        uv_tcp_init(loop, c->tcp.get());
        c->tcp->data = c.get();
        c->stream = c->tcp.stream();
    }
    rc = uv_accept(server, c->stream);
    if (rc != 0) {
        return; // the handles close with `c`
    }
    uv_timer_init(loop, c->timer.get());
    c->timer->data = c.get();
    llhttp_init(&c->parser, HTTP_REQUEST, &settings);
    c->parser.data = c.get();
    conns[c->id] = c;
    c->arm_idle();
    c->start_reading();
}

void AdminServer::Impl::close_conn(Conn& c) {
    if (c.closing) {
        return;
    }
    c.closing = true;
    c.timer.reset();
    c.tcp.reset();
    c.pipe.reset();
    conns.erase(c.id);
}

void AdminServer::Impl::feed(Conn& c, std::string_view data) {
    if (c.busy) {
        c.pending.append(data);
        return;
    }
    llhttp_errno_t err = llhttp_execute(&c.parser, data.data(), data.size());
    if (err == HPE_OK) {
        return; // more to come
    }
    if ((err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) && c.complete) {
        const char* stop = llhttp_get_error_pos(&c.parser);
        size_t used = stop != nullptr ? static_cast<size_t>(stop - data.data()) : data.size();
        c.pending.assign(data.substr(std::min(used, data.size())));
        if (err == HPE_PAUSED_UPGRADE) {
            c.keep_alive = false; // nothing here speaks another protocol
        }
        c.busy = true;
        uv_read_stop(c.stream);
        uv_timer_stop(c.timer.get());
        try {
            dispatch(c);
        } catch (const std::exception& e) {
            // The JSON library throws on a malformed figure; no exception leaves a libuv callback.
            spdlog::error("admin API: {} {}: {}", c.method, c.url, e.what());
            respond(c, 500, {{"error", std::string("internal error: ") + e.what()}});
        }
        return;
    }
    // A malformed request or one past a limit: say so, then close.
    c.keep_alive = false;
    c.busy = true;
    uv_read_stop(c.stream);
    const int status = c.reject != 0 ? c.reject : 400;
    std::string why = c.reject == 431 ? "request head too large"
                      : c.reject == 413
                          ? "request body too large"
                          : std::string("malformed request: ") + llhttp_errno_name(err) + " " +
                                llhttp_get_error_reason(&c.parser);
    respond(c, status, {{"error", why}});
}

void AdminServer::Impl::after_response(Conn& c) {
    if (c.closing) {
        return;
    }
    if (!c.keep_alive) {
        close_conn(c);
        return;
    }
    c.busy = false;
    c.complete = false;
    llhttp_resume(&c.parser);
    c.start_reading();
    c.arm_idle();
    if (!c.pending.empty()) {
        std::string rest = std::move(c.pending);
        c.pending.clear();
        feed(c, rest);
    }
}

void AdminServer::Impl::respond(Conn& c, int status, const json& body,
                                std::vector<std::pair<std::string, std::string>> headers) {
    // Worker output quoted in last_error can be any bytes: replace invalid UTF-8, never throw.
    respond_raw(c, status, "application/json",
                body.dump(2, ' ', false, json::error_handler_t::replace) + "\n", headers);
}

void AdminServer::Impl::respond_raw(
    Conn& c, int status, std::string_view content_type, std::string body,
    const std::vector<std::pair<std::string, std::string>>& headers) {
    if (c.closing) {
        return;
    }
    std::string out = fmt::format("HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n"
                                  "Cache-Control: no-store\r\n",
                                  status, http::reason_phrase(status), content_type, body.size());
    for (const auto& [name, value] : headers) {
        out += name + ": " + value + "\r\n";
    }
    out += c.keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n";
    if (c.method != "HEAD") {
        out += body;
    }
    struct Write {
        uv_write_t req;
        std::string data;
        std::weak_ptr<Conn> conn;
    };
    auto* w = new Write{{}, std::move(out), c.weak_from_this()};
    w->req.data = w;
    uv_buf_t buf = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
    int rc = uv_write(&w->req, c.stream, &buf, 1, [](uv_write_t* req, int st) {
        auto* wr = static_cast<Write*>(req->data);
        auto conn = wr->conn.lock();
        delete wr;
        if (conn == nullptr) {
            return;
        }
        if (st < 0) {
            conn->server->close_conn(*conn);
            return;
        }
        conn->server->after_response(*conn);
    });
    if (rc != 0) {
        delete w;
        close_conn(c);
    }
}

bool AdminServer::Impl::refuse(Conn& c) {
    const bool safe = c.method == "GET" || c.method == "HEAD" || c.method == "OPTIONS";
    if (!bound.is_unix()) {
        // DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 reaches
        // this port with "Host: evil.example".
        if (c.hosts != 1 || !admin_host_allowed(c.host, configured_host)) {
            spdlog::warn("admin API: refused {} {} for Host '{}', not the admin address", c.method,
                         c.url, c.host);
            respond(c, 421,
                    {{"error", fmt::format("Host '{}' is not this admin API's address", c.host)}});
            return true;
        }
    }
    if (!token.empty()) {
        auto given = bearer_token(c.authorization);
        if (!given || !token_matches(token, *given)) {
            spdlog::warn("admin API: refused {} {}: {}", c.method, c.url,
                         c.authorization.empty() ? "no bearer token" : "wrong bearer token");
            respond(c, 401,
                    {{"error", c.authorization.empty()
                                   ? "this admin API needs Authorization: Bearer TOKEN (the "
                                     "token in --admin-token-file)"
                                   : "wrong admin token"}},
                    {{"WWW-Authenticate", "Bearer realm=\"liege\""}});
            return true;
        }
    }
    // A browser adds Origin to a cross-site POST; liege's own clients never send one.
    if (!safe && !c.origin.empty()) {
        spdlog::warn("admin API: refused {} {} from Origin '{}'", c.method, c.url, c.origin);
        respond(c, 403,
                {{"error", fmt::format("{} with an Origin header ('{}') is refused: the admin API "
                                       "takes no requests from web pages",
                                       c.method, c.origin)}});
        return true;
    }
    return false;
}

void AdminServer::Impl::dispatch(Conn& c) {
    if (refuse(c)) {
        return;
    }
    std::string_view path = c.url;
    path = path.substr(0, path.find('?'));
    const bool get = c.method == "GET" || c.method == "HEAD";
    const bool post = c.method == "POST";
    auto wrong_method = [&](std::string_view allow) {
        respond(c, 405,
                {{"error", fmt::format("{} {} is not allowed; use {}", c.method, path, allow)}},
                {{"Allow", std::string(allow)}});
    };
    if (path == "/status") {
        if (!get) {
            return wrong_method("GET, HEAD");
        }
        return respond(c, 200, status_document());
    }
    if (path == "/metrics") {
        if (!get) {
            return wrong_method("GET, HEAD");
        }
        return respond_raw(c, 200, "text/plain; version=0.0.4; charset=utf-8",
                           prometheus_text(status_document(), emperor.router_stats()), {});
    }
    if (path == "/reload") {
        if (!post) {
            return wrong_method("POST");
        }
        return reload_all(c);
    }
    if (auto name = reload_target(path)) {
        if (!post) {
            return wrong_method("POST");
        }
        return reload_one(c, *name);
    }
    for (bool stop : {true, false}) {
        if (auto name = vassal_target(path, stop ? "/stop" : "/start")) {
            if (!post) {
                return wrong_method("POST");
            }
            return stop_or_start(c, *name, stop);
        }
    }
    if (auto name = vassal_target(path, "/logs")) {
        if (!get) {
            return wrong_method("GET, HEAD");
        }
        return logs(c, *name);
    }
    respond(c, 404,
            {{"error", fmt::format("no such endpoint: {} {}", c.method, path)},
             {"endpoints",
              {"GET /status", "GET /metrics", "POST /vassals/NAME/reload", "POST /reload",
               "POST /vassals/NAME/stop", "POST /vassals/NAME/start",
               "GET /vassals/NAME/logs?n=N&after=SEQ"}}});
}

json AdminServer::Impl::outcome(const std::string& name, bool ok,
                                const std::string& message) const {
    json o = {{"vassal", name}, {"ok", ok}, {"message", message}};
    const auto& vassals = emperor.vassals();
    if (auto it = vassals.find(name); it != vassals.end() && it->second->active != nullptr) {
        o["generation"] = it->second->active->id;
    }
    return o;
}

void AdminServer::Impl::reload_one(Conn& c, const std::string& name) {
    const auto& vassals = emperor.vassals();
    auto it = vassals.find(name);
    if (it == vassals.end() || it->second->removing) {
        return respond(c, 404, {{"error", "unknown vassal '" + name + "'"}, {"vassal", name}});
    }
    spdlog::info("admin API: reloading vassal {}", name);
    std::weak_ptr<Conn> weak = c.weak_from_this();
    emperor.reload(name, [this, weak, name](bool ok, std::string message) {
        spdlog::log(ok ? spdlog::level::info : spdlog::level::warn, "admin API: reload of {}: {}",
                    name, message);
        if (auto conn = weak.lock()) {
            respond(*conn, ok ? 200 : 500, outcome(name, ok, message));
        }
    });
}

void AdminServer::Impl::stop_or_start(Conn& c, const std::string& name, bool stop) {
    spdlog::info("admin API: {} vassal {}", stop ? "stopping" : "starting", name);
    std::weak_ptr<Conn> weak = c.weak_from_this();
    auto answer = [this, weak, name, stop](bool ok, std::string message) {
        spdlog::log(ok ? spdlog::level::info : spdlog::level::warn, "admin API: {} of {}: {}",
                    stop ? "stop" : "start", name, message);
        if (auto conn = weak.lock()) {
            const bool unknown = message.starts_with("unknown vassal");
            respond(*conn, ok ? 200 : (unknown ? 404 : 500), outcome(name, ok, message));
        }
    };
    if (stop) {
        emperor.stop(name, std::move(answer));
    } else {
        emperor.start(name, std::move(answer));
    }
}

void AdminServer::Impl::logs(Conn& c, const std::string& name) {
    const uint64_t after = query_number(c.url, "after", 0);
    const size_t n = static_cast<size_t>(
        std::min<uint64_t>(query_number(c.url, "n", 100), emperor::Emperor::kLogRing));
    auto lines = emperor.logs(name, after, n);
    if (!lines) {
        return respond(c, 404, {{"error", "unknown vassal '" + name + "'"}, {"vassal", name}});
    }
    json out = json::array();
    uint64_t next = after;
    for (const auto& l : *lines) {
        out.push_back({{"seq", l.seq},
                       {"worker", l.worker},
                       {"stream", l.is_stderr ? "stderr" : "stdout"},
                       {"text", l.text}});
        next = std::max(next, l.seq);
    }
    respond(c, 200, {{"vassal", name}, {"lines", std::move(out)}, {"next", next}});
}

void AdminServer::Impl::reload_all(Conn& c) {
    std::vector<std::string> names;
    for (const auto& [name, v] : emperor.vassals()) {
        if (!v->removing) {
            names.push_back(name);
        }
    }
    spdlog::info("admin API: reloading every vassal ({})", names.size());
    struct Batch {
        std::vector<json> outcomes;
        size_t left = 0;
        bool ok = true;
        std::weak_ptr<Conn> conn;
    };
    auto batch = std::make_shared<Batch>();
    batch->outcomes.resize(names.size());
    batch->left = names.size();
    batch->conn = c.weak_from_this();
    if (names.empty()) {
        return respond(c, 200, {{"ok", true}, {"vassals", json::array()}});
    }
    for (size_t i = 0; i < names.size(); ++i) {
        emperor.reload(names[i], [this, batch, i, name = names[i]](bool ok, std::string message) {
            spdlog::log(ok ? spdlog::level::info : spdlog::level::warn,
                        "admin API: reload of {}: {}", name, message);
            auto conn = batch->conn.lock();
            if (conn == nullptr) {
                return; // the client left (or the server closed): nobody to answer
            }
            batch->outcomes[i] = outcome(name, ok, message);
            batch->ok = batch->ok && ok;
            if (--batch->left == 0) {
                respond(*conn, batch->ok ? 200 : 500,
                        {{"ok", batch->ok}, {"vassals", batch->outcomes}});
            }
        });
    }
}

json AdminServer::Impl::status_document() const {
    json doc = emperor.status();
    const int64_t now = steady_now_ms();
    const control::StatsMessage& stats = emperor.router_stats();
    std::map<std::string, const control::VassalFigures*> figures;
    for (const auto& f : stats.vassals) {
        figures[f.vassal] = &f;
    }
    json& e = doc["emperor"];
    e["admin"] = bound.str();
    e["rss_bytes"] = process_rss_bytes(::getpid());

    json& r = doc["router"];
    r["requests_per_second"] = rates.router(now);
    r["thread_requests_per_second"] = rates.threads(now);
    r["threads"] = stats.thread_requests.size();
    const int router_pid = r.value("pid", 0);
    r["rss_bytes"] = router_pid > 0 ? json(process_rss_bytes(router_pid)) : json(nullptr);

    const auto& runtime = emperor.vassals();
    for (json& v : doc["vassals"]) {
        const std::string name = v.value("name", std::string());
        int64_t rss_total = 0;
        int restarts = 0;
        int ready = 0;
        for (json& w : v["workers"]) {
            const int pid = w.value("pid", 0);
            // The emperor's sample counts the worker's whole process group; a worker started
            // since the last sample has its own figure.
            const int64_t sampled = w.value("rss_bytes", int64_t{0});
            const int64_t rss = sampled > 0 ? sampled : pid > 0 ? process_rss_bytes(pid) : -1;
            w["rss_bytes"] = rss >= 0 ? json(rss) : json(nullptr);
            rss_total += std::max<int64_t>(rss, 0);
            restarts += w.value("restarts", 0);
            ready += w.value("state", std::string()) == "ready" ? 1 : 0;
        }
        v["rss_bytes"] = rss_total;
        v["restarts"] = restarts;
        v["workers_ready"] = ready;
        v["requests_per_second"] = rates.vassal(name, now);
        json responses = json::object();
        auto f = figures.find(name);
        for (int cls = 1; cls <= 5; ++cls) {
            responses[std::to_string(cls) + "xx"] =
                f != figures.end() ? f->second->responses[cls] : 0;
        }
        v["responses"] = std::move(responses);
        v["router_errors"] = f != figures.end() ? f->second->router_errors : 0;
        v["in_flight"] = f != figures.end() ? f->second->in_flight : 0;
        if (auto it = runtime.find(name); it != runtime.end()) {
            const emperor::VassalRt& rt = *it->second;
            const emperor::Generation* g = rt.active != nullptr ? rt.active.get() : rt.next.get();
            v["workers_total"] = g != nullptr ? rt.pool_size : 0;
            // Ready means serving: a bluegreen generation still starting beside the active one
            // is not counted until the router has it.
            int serving = 0;
            for (const emperor::Generation* gen : {rt.active.get(), rt.next.get()}) {
                for (const emperor::WorkerProc* w : rt.members(gen)) {
                    serving += w->serving() ? 1 : 0;
                }
            }
            v["workers_ready"] = serving;
            v["uptime_seconds"] = rt.started_unix != 0 ? unix_now() - rt.started_unix : 0;
        }
    }
    return doc;
}

// ---------------------------------------------------------------------------------------------

AdminServer::AdminServer(emperor::Emperor& emperor) : impl_(std::make_unique<Impl>(emperor)) {}

AdminServer::~AdminServer() {
    impl_->close();
}

int AdminServer::start(const Address& address, std::string token) {
    impl_->token = std::move(token);
    impl_->configured_host = address.is_unix() ? "" : address.host;
    return impl_->start(address);
}

void AdminServer::close() {
    impl_->close();
}

const Address& AdminServer::address() const {
    return impl_->bound;
}

} // namespace liege
