// HTTP message heads as the router sees them: collected from llhttp's callbacks, then rewritten
// for the other side of the proxy.
//
// What crosses the proxy: every end-to-end header, in order. What does not: hop-by-hop headers
// (Connection and every header it names, Keep-Alive, TE, Trailer, Proxy-*, and Upgrade unless
// the request is being tunnelled). X-Forwarded-For/Proto/Host from a trusted proxy are kept (and
// the client appended to X-Forwarded-For, so a chain of proxies keeps the whole path); from any
// other peer the router replaces them with what it saw, so they cannot be spoofed. Host is kept.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace liege::http {

// Case-insensitive ASCII comparison for header names and tokens.
bool iequals(std::string_view a, std::string_view b);

class HeadCollector {
public:
    // Forgets the previous head but keeps the storage, so steady-state parsing allocates nothing.
    void reset();

    // llhttp may split any token over several callbacks; pieces are appended contiguously.
    void add_method(std::string_view piece) { append(method_, piece); }
    void add_url(std::string_view piece) { append(url_, piece); }
    void add_reason(std::string_view piece) { append(reason_, piece); }
    void add_field(std::string_view piece);
    void add_value(std::string_view piece);

    // Bytes of head seen so far (the limit for 431 is checked against this).
    size_t size() const { return bytes_.size(); }

    std::string_view method() const { return view(method_); }
    std::string_view url() const { return view(url_); }
    std::string_view reason() const { return view(reason_); }
    size_t header_count() const { return headers_.size(); }
    std::string_view name(size_t i) const { return view(headers_[i].name); }
    std::string_view value(size_t i) const { return view(headers_[i].value); }
    // The first header with this name, or an empty view with found=false.
    std::string_view find(std::string_view name, bool* found = nullptr) const;

private:
    struct Span {
        uint32_t off = 0;
        uint32_t len = 0;
    };
    struct Header {
        Span name;
        Span value;
    };
    void append(Span& span, std::string_view piece);
    std::string_view view(Span s) const { return {bytes_.data() + s.off, s.len}; }

    std::string bytes_;
    std::vector<Header> headers_;
    Span method_, url_, reason_;
    bool in_value_ = false;
};

// True for a field name that is a token (RFC 9110 5.1: tchar only, at least one): no space,
// no colon, no control character, nothing empty.
bool valid_field_name(std::string_view name);

// True for a Host value (and an absolute-form authority) that is a host RFC 3986 3.2.2 allows,
// with an optional port: a reg-name (unreserved, pct-encoded, sub-delims) or an IP literal in
// brackets. Nothing empty, no space, '/', '?', '#', '@', '\\' or control character.
bool valid_host(std::string_view host);

// The request headers the router validates before routing, and those its access log names,
// gathered in one pass over the head.
struct RequestHeaders {
    std::string_view host;          // the first Host header's value
    unsigned hosts = 0;             // how many Host headers there are
    bool transfer_encoding = false; // a Transfer-Encoding header, even an empty one
    unsigned codings_headers = 0;   // how many Transfer-Encoding headers there are
    bool chunked_only = true;       // each says just "chunked" (the one coding nginx takes)
    std::string_view referer;       // the first Referer header's value, empty if none
    std::string_view user_agent;    // the first User-Agent header's value, empty if none
    bool expect_continue = false;   // Expect: 100-continue
    // A header the request must be refused for (answer 400): an invalid name, or an
    // underscored name that reads as a framing, routing or forwarding header once '_' is taken
    // for '-' (as CGI, WSGI and Rack environments do: `Transfer_Encoding` becomes
    // HTTP_TRANSFER_ENCODING). Null when there is none.
    const char* problem = nullptr;
    // Another header name holds an underscore: it is not forwarded (nginx's default,
    // `underscores_in_headers off`, and gunicorn's), since an app could not tell it from the
    // dashed name liege vouches for.
    bool underscores = false;
};
RequestHeaders scan_request_headers(const HeadCollector& head);

// The request target as the router routes and forwards it. An absolute-form target
// ("http://host:port/path?q", RFC 9112 3.2.2, as clients send to a proxy) is routed by its
// authority and path, and forwarded in origin-form with Host set to that authority (userinfo
// dropped); any other form is routed by the Host header and forwarded as it came.
//
// Anything else is refused (valid = false, answer 400): another scheme ("ftp://h/"), userinfo
// in the authority (RFC 9110 4.2.4), an authority that is no valid host, "*" for a method
// other than OPTIONS, and a target that starts with neither '/' nor a scheme.
struct RequestTarget {
    bool valid = true; // false: refused; `error` says why
    const char* error = nullptr;
    bool absolute = false;     // the host comes from the target and replaces the Host header
    std::string_view host;     // what to route by
    std::string_view path;     // what to forward after the slash_before below, and to route by
    bool slash_before = false; // "http://h" or "http://h?q": origin-form needs a leading "/"
};
RequestTarget request_target(std::string_view url, std::string_view host_header,
                             std::string_view method = "GET");

// What the router knows of a request beyond its headers when it decides whether to take it.
struct RequestLine {
    std::string_view method;
    int http_major = 1;
    int http_minor = 1;
    bool chunked = false; // llhttp framed the body as chunked
};

// A request the router refuses before routing it: the status (400, 405, 501 or 505) and a line for
// the error body; status 0 when it may go on. Refused: HTTP/0.9 and versions other than 1.x,
// CONNECT (405), a header RequestHeaders::problem names, an invalid target, an
// HTTP/1.1 request without one valid Host (an absolute-form target carries its own), a
// Transfer-Encoding llhttp did not frame as chunked or given twice, and (501, as nginx answers)
// one that names a coding besides chunked ("gzip, chunked"): an app could not decode it.
struct Refusal {
    int status = 0;
    const char* why = nullptr;
};
Refusal refuse_request(const RequestHeaders& headers, const RequestTarget& target,
                       const RequestLine& line);

struct RequestForward {
    std::string_view client_ip; // appended to X-Forwarded-For
    std::string_view proto = "http";
    // The peer is a trusted proxy (--trusted-proxy): its X-Forwarded-For is kept and appended
    // to, its X-Forwarded-Proto and X-Forwarded-Host kept. Otherwise all three are replaced.
    bool trusted = false;
    bool upgrade = false; // keep Upgrade and send "Connection: upgrade"
    // Set from request_target() for an absolute-form target: forwarded instead of the URL, and
    // its host instead of the Host header.
    const RequestTarget* target = nullptr;
    bool drop_underscores = false; // RequestHeaders::underscores: leave those headers out
    // The router reads the body itself before a backend is chosen (request buffering): Expect is
    // left out, since the router answered it, and a chunked body goes with a Content-Length the
    // router adds once it has it all, so Transfer-Encoding is left out too (as nginx does).
    bool drop_expect = false;
    bool drop_transfer_encoding = false;
};

// Writes the request head for the upstream ("METHOD URL HTTP/1.1" and the rewritten headers)
// into out[0..cap). Returns the number of bytes written, or 0 when it does not fit.
size_t write_request_head(const HeadCollector& head, const RequestForward& fwd, char* out,
                          size_t cap);

// How a response body's framing changes on its way to the client.
enum class BodyFraming {
    AsReceived,    // as the backend framed it (Content-Length, chunked, or none)
    AddChunked,    // close-delimited upstream, chunked to an HTTP/1.1 client: "chunked" is
                   // appended to any codings the backend applied
    RemoveChunked, // chunked upstream, de-chunked and delimited by close for an HTTP/1.0 client,
                   // which must not get Transfer-Encoding: chunked (RFC 9112 6.1)
};

struct ResponseForward {
    int status = 200;
    BodyFraming framing = BodyFraming::AsReceived;
    bool close = false;         // the client connection closes after this response
    bool keep_alive_10 = false; // HTTP/1.0 client that asked for keep-alive
    bool upgrade = false;       // 101: keep Upgrade, send "Connection: upgrade"
};

// Writes the response head for the client. Returns bytes written, or 0 when it does not fit.
size_t write_response_head(const HeadCollector& head, const ResponseForward& fwd, char* out,
                           size_t cap);

// The standard reason phrase of a status code ("Bad Gateway"), or "Unknown".
std::string_view reason_phrase(int status);

// True for methods a proxy may resend after a failure (RFC 9110 9.2.2).
bool is_idempotent(std::string_view method);

// The idle timeout a server announces in `Keep-Alive: timeout=N, max=M` (RFC 2068 19.7.1.1, as
// Apache, uWSGI and others send it), in ms; -1 when the value has no valid timeout.
int64_t keep_alive_timeout_ms(std::string_view value);

} // namespace liege::http
