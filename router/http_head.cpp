#include "liege/http_head.hpp"

#include "liege/ascii.hpp"

#include <charconv>
#include <cstring>

namespace liege::http {

namespace {

bool istarts_with(std::string_view s, std::string_view prefix) {
    return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
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

// Calls fn(token) for each comma-separated token of a list header value.
template <typename Fn> void for_each_token(std::string_view value, Fn&& fn) {
    while (!value.empty()) {
        size_t comma = value.find(',');
        std::string_view token = trim(value.substr(0, comma));
        if (!token.empty()) {
            fn(token);
        }
        if (comma == std::string_view::npos) {
            break;
        }
        value.remove_prefix(comma + 1);
    }
}

// The header names that a head's Connection headers list (beyond the hop-by-hop names every
// proxy strips anyway). Collected once per head: checking each header against every Connection
// header made the rewrite quadratic.
class ConnectionTokens {
public:
    explicit ConnectionTokens(const HeadCollector& head) {
        for (size_t i = 0; i < head.header_count(); ++i) {
            if (!iequals(head.name(i), "connection")) {
                continue;
            }
            for_each_token(head.value(i), [&](std::string_view t) {
                if (iequals(t, "close") || iequals(t, "keep-alive") || iequals(t, "upgrade")) {
                    return;
                }
                if (count_ < kMax) {
                    tokens_[count_++] = t;
                } else {
                    overflow_ = true;
                }
            });
        }
        head_ = &head;
    }
    bool names(std::string_view field) const {
        for (size_t i = 0; i < count_; ++i) {
            if (iequals(tokens_[i], field)) {
                return true;
            }
        }
        if (overflow_) { // a pathological list: fall back to scanning it all
            for (size_t i = 0; i < head_->header_count(); ++i) {
                if (!iequals(head_->name(i), "connection")) {
                    continue;
                }
                bool hit = false;
                for_each_token(head_->value(i),
                               [&](std::string_view t) { hit = hit || iequals(t, field); });
                if (hit) {
                    return true;
                }
            }
        }
        return false;
    }
    bool empty() const { return count_ == 0 && !overflow_; }

private:
    static constexpr size_t kMax = 8;
    std::string_view tokens_[kMax];
    size_t count_ = 0;
    bool overflow_ = false;
    const HeadCollector* head_ = nullptr;
};

bool is_hop_by_hop(const ConnectionTokens& conn, std::string_view name, bool keep_upgrade) {
    switch (name.size()) {
    case 2:
        return iequals(name, "te");
    case 7:
        if (iequals(name, "upgrade")) {
            return !keep_upgrade;
        }
        if (iequals(name, "trailer")) {
            return true;
        }
        break;
    case 10:
        if (iequals(name, "connection") || iequals(name, "keep-alive")) {
            return true;
        }
        break;
    default:
        break;
    }
    if (name.size() >= 6 && (name[0] | 0x20) == 'p' && istarts_with(name, "proxy-")) {
        return true;
    }
    if (conn.empty()) {
        return false; // the common case: Connection names nothing beyond the usual
    }
    if (iequals(name, "transfer-encoding") || iequals(name, "content-length") ||
        iequals(name, "host")) {
        return false; // framing and routing headers are never dropped, whatever Connection says
    }
    return conn.names(name);
}

// RFC 9110 5.6.2's tchar, and RFC 3986's characters of a reg-name (unreserved and sub-delims;
// '%' is checked apart, as it must start a pct-encoding).
struct CharClasses {
    bool tchar[256] = {};
    bool host[256] = {};
    constexpr CharClasses() {
        for (int c = 0; c < 256; ++c) {
            const bool alnum =
                (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
            tchar[c] = alnum;
            host[c] = alnum;
        }
        for (char c : std::string_view("!#$%&'*+-.^_`|~")) {
            tchar[static_cast<unsigned char>(c)] = true;
        }
        for (char c : std::string_view("-._~!$&'()*+,;=")) {
            host[static_cast<unsigned char>(c)] = true;
        }
    }
};
constexpr CharClasses kChars;

bool is_hex(char c) {
    return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}

// An underscored name that an app reading '_' as '-' would take for one of these: the headers
// that frame, route or describe the request's path through the proxy.
bool underscore_alias_of_guarded(std::string_view name) {
    static constexpr std::string_view kGuarded[] = {
        "transfer-encoding", "content-length",   "host",
        "connection",        "upgrade",          "te",
        "trailer",           "keep-alive",       "expect",
        "x-forwarded-for",   "x-forwarded-host", "x-forwarded-proto",
        "forwarded",         "x-real-ip",        "proxy-connection",
    };
    char buf[32];
    if (name.size() > sizeof(buf)) {
        return false;
    }
    for (size_t i = 0; i < name.size(); ++i) {
        buf[i] = name[i] == '_' ? '-' : ascii_lower(name[i]);
    }
    const std::string_view dashed(buf, name.size());
    for (std::string_view g : kGuarded) {
        if (dashed == g) {
            return true;
        }
    }
    return false;
}

class Writer {
public:
    Writer(char* out, size_t cap) : out_(out), cap_(cap) {}
    Writer& operator<<(std::string_view s) {
        if (s.empty()) {
            return *this; // its data() may be null, which memcpy must not get even for 0 bytes
        }
        if (ok_ && len_ + s.size() <= cap_) {
            std::memcpy(out_ + len_, s.data(), s.size());
            len_ += s.size();
        } else {
            ok_ = false;
        }
        return *this;
    }
    Writer& operator<<(int n) {
        char buf[16];
        int k = 0;
        unsigned v = n < 0 ? 0u : static_cast<unsigned>(n);
        do {
            buf[k++] = static_cast<char>('0' + v % 10);
            v /= 10;
        } while (v != 0 && k < 16);
        char rev[16];
        for (int i = 0; i < k; ++i) {
            rev[i] = buf[k - 1 - i];
        }
        return *this << std::string_view(rev, static_cast<size_t>(k));
    }
    Writer& header(std::string_view name, std::string_view value) {
        return *this << name << ": " << value << "\r\n";
    }
    size_t result() const { return ok_ ? len_ : 0; }

private:
    char* out_;
    size_t cap_;
    size_t len_ = 0;
    bool ok_ = true;
};

} // namespace

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) {
        return false;
    }
    for (size_t i = 0; i < a.size(); ++i) {
        if (ascii_lower(a[i]) != ascii_lower(b[i])) {
            return false;
        }
    }
    return true;
}

void HeadCollector::reset() {
    bytes_.clear();
    headers_.clear();
    method_ = url_ = reason_ = Span{};
    in_value_ = false;
}

void HeadCollector::append(Span& span, std::string_view piece) {
    if (span.len == 0) {
        span.off = static_cast<uint32_t>(bytes_.size());
    }
    bytes_.append(piece);
    span.len += static_cast<uint32_t>(piece.size());
}

void HeadCollector::add_field(std::string_view piece) {
    if (headers_.empty() || in_value_) {
        headers_.emplace_back();
        in_value_ = false;
    }
    append(headers_.back().name, piece);
}

void HeadCollector::add_value(std::string_view piece) {
    if (headers_.empty()) {
        return; // llhttp never sends a value before a field
    }
    in_value_ = true;
    append(headers_.back().value, piece);
}

std::string_view HeadCollector::find(std::string_view wanted, bool* found) const {
    for (size_t i = 0; i < headers_.size(); ++i) {
        if (iequals(name(i), wanted)) {
            if (found != nullptr) {
                *found = true;
            }
            return value(i);
        }
    }
    if (found != nullptr) {
        *found = false;
    }
    return {};
}

bool valid_field_name(std::string_view name) {
    if (name.empty()) {
        return false;
    }
    for (char c : name) {
        if (!kChars.tchar[static_cast<unsigned char>(c)]) {
            return false;
        }
    }
    return true;
}

bool valid_host(std::string_view host) {
    size_t i = 0;
    if (!host.empty() && host[0] == '[') {
        // IP-literal: an IPv6 address (or IPvFuture) in brackets; its exact syntax is the
        // resolver's business, the characters are ours.
        const size_t close = host.find(']');
        if (close == std::string_view::npos || close < 2) {
            return false;
        }
        for (i = 1; i < close; ++i) {
            const char c = host[i];
            if (!is_hex(c) && c != ':' && c != '.' && c != 'v' && c != 'V') {
                return false;
            }
        }
        i = close + 1;
    } else {
        for (; i < host.size() && host[i] != ':'; ++i) {
            const char c = host[i];
            if (c == '%') {
                if (i + 2 >= host.size() || !is_hex(host[i + 1]) || !is_hex(host[i + 2])) {
                    return false;
                }
                i += 2;
            } else if (!kChars.host[static_cast<unsigned char>(c)]) {
                return false;
            }
        }
        if (i == 0) {
            return false; // no host before the port
        }
    }
    if (i == host.size()) {
        return true;
    }
    if (host[i] != ':') {
        return false;
    }
    const std::string_view port = host.substr(i + 1);
    unsigned value = 0;
    for (char c : port) {
        if (c < '0' || c > '9' || (value = value * 10 + static_cast<unsigned>(c - '0')) > 65535) {
            return false;
        }
    }
    return true;
}

RequestTarget request_target(std::string_view url, std::string_view host_header,
                             std::string_view method) {
    RequestTarget t;
    std::string_view rest;
    if (istarts_with(url, "http://")) {
        rest = url.substr(7);
    } else if (istarts_with(url, "https://")) {
        rest = url.substr(8);
    } else {
        t.host = host_header;
        t.path = url;
        if (url == "*") {
            // asterisk-form is for OPTIONS alone (RFC 9112 3.2.4)
            if (method != "OPTIONS") {
                t.valid = false;
                t.error = "the request target * is for OPTIONS only";
            }
        } else if (url.empty() || url[0] != '/') {
            // Neither origin-form nor absolute-form with a scheme we serve (CONNECT's
            // authority-form is refused before this).
            t.valid = false;
            t.error = url.find("://") != std::string_view::npos
                          ? "the request target's scheme is not http or https"
                          : "the request target is not an absolute path";
        }
        return t;
    }
    const size_t end = rest.find_first_of("/?#");
    std::string_view authority = rest.substr(0, end);
    t.absolute = true;
    t.host = authority;
    t.path = end == std::string_view::npos ? std::string_view() : rest.substr(end);
    t.slash_before = t.path.empty() || t.path[0] != '/';
    if (authority.find('@') != std::string_view::npos) {
        t.valid = false; // RFC 9110 4.2.4: userinfo in an http(s) URI is an error
        t.error = "the request target has userinfo";
    } else if (authority.empty()) {
        t.valid = false;
        t.error = "the request target has no host";
    } else if (!valid_host(authority)) {
        t.valid = false;
        t.error = "the request target's host is invalid";
    }
    return t;
}

RequestHeaders scan_request_headers(const HeadCollector& head) {
    RequestHeaders r;
    bool referer = false;
    bool user_agent = false;
    for (size_t i = 0; i < head.header_count(); ++i) {
        const std::string_view name = head.name(i);
        if (!valid_field_name(name)) {
            r.problem = name.empty() ? "a header has an empty name" : "a header name is invalid";
        } else if (name.find('_') != std::string_view::npos) {
            if (underscore_alias_of_guarded(name)) {
                r.problem = "a header name with an underscore stands for a reserved header";
            }
            r.underscores = true;
        }
        if (iequals(name, "host")) {
            if (r.hosts++ == 0) {
                r.host = head.value(i);
            }
        } else if (iequals(name, "transfer-encoding")) {
            r.transfer_encoding = true;
            ++r.codings_headers;
            r.chunked_only = r.chunked_only && iequals(trim(head.value(i)), "chunked");
        } else if (iequals(name, "expect")) {
            r.expect_continue = r.expect_continue || iequals(trim(head.value(i)), "100-continue");
        } else if (!referer && iequals(name, "referer")) {
            referer = true;
            r.referer = head.value(i);
        } else if (!user_agent && iequals(name, "user-agent")) {
            user_agent = true;
            r.user_agent = head.value(i);
        }
    }
    return r;
}

Refusal refuse_request(const RequestHeaders& h, const RequestTarget& t, const RequestLine& l) {
    if (l.http_major != 1) {
        // HTTP/0.9 has no headers to route or frame by; HTTP/2+ does not start like this.
        return l.http_major == 0 ? Refusal{400, "HTTP/0.9 is not served"}
                                 : Refusal{505, "only HTTP/1.x is served here"};
    }
    if (l.method == "CONNECT") {
        return {405, "CONNECT is not allowed"};
    }
    if (h.problem != nullptr) {
        return {400, h.problem};
    }
    if (!t.valid) {
        return {400, t.error};
    }
    // RFC 9112 3.2: an HTTP/1.1 request needs exactly one valid Host (an absolute URI carries
    // its own, as nginx accepts too).
    if (h.hosts > 1) {
        return {400, "more than one Host header"};
    }
    if (h.hosts == 1 && !valid_host(h.host)) {
        return {400, "the Host header is invalid"};
    }
    if (h.hosts == 0 && l.http_minor >= 1 && !t.absolute) {
        return {400, "no Host header"};
    }
    if (h.transfer_encoding && (!l.chunked || h.codings_headers > 1)) {
        // llhttp refuses other codings but lets an empty Transfer-Encoding through; a backend
        // could frame such a request differently from us, so it goes nowhere.
        return {400, h.codings_headers > 1 ? "more than one Transfer-Encoding header"
                                           : "Transfer-Encoding without chunked"};
    }
    if (h.transfer_encoding && !h.chunked_only) {
        return {501, "only the chunked transfer coding is accepted"};
    }
    return {};
}

size_t write_request_head(const HeadCollector& head, const RequestForward& fwd, char* out,
                          size_t cap) {
    Writer w(out, cap);
    const ConnectionTokens conn(head);
    const RequestTarget* target =
        fwd.target != nullptr && fwd.target->absolute ? fwd.target : nullptr;
    if (target != nullptr && target->path.empty() && head.method() == "OPTIONS") {
        w << "OPTIONS * HTTP/1.1\r\n"; // the server itself, not a resource (RFC 9112 3.2.4)
    } else if (target != nullptr) {
        w << head.method() << (target->slash_before ? " /" : " ") << target->path
          << " HTTP/1.1\r\n";
    } else {
        w << head.method() << " " << head.url() << " HTTP/1.1\r\n";
    }
    bool has_host = false;
    bool wrote_xff = false;
    bool wrote_proto = false;
    bool wrote_fwd_host = false;
    std::string_view host;
    for (size_t i = 0; i < head.header_count(); ++i) {
        std::string_view name = head.name(i);
        if (is_hop_by_hop(conn, name, fwd.upgrade) ||
            (fwd.drop_underscores && name.find('_') != std::string_view::npos) ||
            (fwd.drop_expect && iequals(name, "expect")) ||
            (fwd.drop_transfer_encoding && iequals(name, "transfer-encoding"))) {
            continue;
        }
        const bool is_proto = iequals(name, "x-forwarded-proto");
        if (is_proto || iequals(name, "x-forwarded-host")) {
            // A trusted proxy's first value tells what its client asked for; anyone else's is
            // a claim the router replaces with what it saw.
            bool& wrote = is_proto ? wrote_proto : wrote_fwd_host;
            if (fwd.trusted && !wrote && !trim(head.value(i)).empty()) {
                wrote = true;
                w.header(name, trim(head.value(i)));
            }
            continue;
        }
        if (iequals(name, "x-forwarded-for")) {
            // From a trusted proxy, all incoming X-Forwarded-For headers become one list, with
            // the client appended; from anyone else, the client alone.
            if (wrote_xff || !fwd.trusted) {
                continue;
            }
            wrote_xff = true;
            w << "X-Forwarded-For: ";
            bool first = true;
            for (size_t j = i; j < head.header_count(); ++j) {
                if (iequals(head.name(j), "x-forwarded-for") && !trim(head.value(j)).empty()) {
                    w << (first ? "" : ", ") << trim(head.value(j));
                    first = false;
                }
            }
            w << (first ? "" : ", ") << fwd.client_ip << "\r\n";
            continue;
        }
        if (iequals(name, "host")) {
            if (has_host) {
                continue; // llhttp accepts duplicates; one Host must reach the app
            }
            has_host = true;
            host = target != nullptr ? target->host : head.value(i);
            w.header(name, host);
            continue;
        }
        w.header(name, head.value(i));
    }
    if (!has_host && target != nullptr) {
        has_host = true;
        host = target->host;
        w.header("Host", host);
    }
    if (!has_host) {
        w << "Host: \r\n"; // HTTP/1.1 requires the header; empty when the client gave none
    }
    if (!wrote_xff) {
        w.header("X-Forwarded-For", fwd.client_ip);
    }
    if (!wrote_proto) {
        w.header("X-Forwarded-Proto", fwd.proto);
    }
    if (has_host && !wrote_fwd_host) {
        w.header("X-Forwarded-Host", host);
    }
    if (fwd.upgrade) {
        w << "Connection: upgrade\r\n";
    }
    w << "\r\n";
    return w.result();
}

size_t write_response_head(const HeadCollector& head, const ResponseForward& fwd, char* out,
                           size_t cap) {
    Writer w(out, cap);
    const ConnectionTokens conn(head);
    std::string_view reason = head.reason().empty() ? reason_phrase(fwd.status) : head.reason();
    w << "HTTP/1.1 " << fwd.status << " " << reason << "\r\n";
    const bool reframe = fwd.framing != BodyFraming::AsReceived;
    size_t codings = 0; // transfer codings over every Transfer-Encoding header
    for (size_t i = 0; i < head.header_count(); ++i) {
        std::string_view name = head.name(i);
        if (is_hop_by_hop(conn, name, fwd.upgrade)) {
            continue;
        }
        if (reframe && iequals(name, "transfer-encoding")) {
            for_each_token(head.value(i), [&](std::string_view) { ++codings; });
            continue; // written once below, with chunked added or removed
        }
        w.header(name, head.value(i));
    }
    if (reframe) {
        // RemoveChunked: llhttp framed the body as chunked, so chunked is the last coding.
        const size_t keep =
            fwd.framing == BodyFraming::RemoveChunked && codings > 0 ? codings - 1 : codings;
        if (keep > 0 || fwd.framing == BodyFraming::AddChunked) {
            w << "Transfer-Encoding: ";
            size_t k = 0;
            for (size_t i = 0; i < head.header_count() && k < keep; ++i) {
                if (!iequals(head.name(i), "transfer-encoding")) {
                    continue;
                }
                for_each_token(head.value(i), [&](std::string_view t) {
                    if (k < keep) {
                        w << (k++ == 0 ? "" : ", ") << t;
                    }
                });
            }
            if (fwd.framing == BodyFraming::AddChunked) {
                w << (keep == 0 ? "chunked" : ", chunked");
            }
            w << "\r\n";
        }
    }
    if (fwd.upgrade) {
        w << "Connection: upgrade\r\n";
    } else if (fwd.close) {
        w << "Connection: close\r\n";
    } else if (fwd.keep_alive_10) {
        w << "Connection: keep-alive\r\n";
    }
    w << "\r\n";
    return w.result();
}

std::string_view reason_phrase(int status) {
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
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 417:
        return "Expectation Failed";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

int64_t keep_alive_timeout_ms(std::string_view value) {
    int64_t ms = -1;
    for_each_token(value, [&](std::string_view param) {
        const size_t eq = param.find('=');
        if (ms >= 0 || eq == std::string_view::npos ||
            !iequals(trim(param.substr(0, eq)), "timeout")) {
            return;
        }
        const std::string_view n = trim(param.substr(eq + 1));
        int64_t seconds = 0;
        const auto [end, ec] = std::from_chars(n.data(), n.data() + n.size(), seconds);
        if (ec == std::errc() && end == n.data() + n.size() && !n.empty() && seconds >= 0 &&
            seconds <= 86'400) {
            ms = seconds * 1000;
        }
    });
    return ms;
}

bool is_idempotent(std::string_view method) {
    return method == "GET" || method == "HEAD" || method == "OPTIONS" || method == "TRACE" ||
           method == "PUT" || method == "DELETE";
}

} // namespace liege::http
