// `liege router` against ambiguous requests: the gadgets of public request-smuggling research
// (CL.TE and TE.CL, Transfer-Encoding obfuscations, chunk-line edge cases, bare CR and LF, NUL,
// obs-fold, invalid field names, Host edge cases, pipelining after an error).
//
// Behind the router sits a RecordingBackend: it keeps every byte it receives, reads them with a
// strict RFC 9112 parser of its own, answers each request it reads with `Connection: close`, and
// notes anything a lenient backend could read in another way. For every case the suite asserts
// that nothing ambiguous reached the backend, that the backend read no more requests than the
// client sent, and what the client was answered (a 4xx, not a hang, for what must be refused).
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.hpp"

using namespace liege::test;

namespace {

constexpr Millis kPrompt = 3s;

bool tchar(char c) {
    return std::isalnum(static_cast<unsigned char>(c)) ||
           std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

std::string lower(std::string_view s) {
    std::string out(s);
    for (char& c : out) {
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return out;
}

std::string_view trim_ows(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
        s.remove_prefix(1);
    }
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
        s.remove_suffix(1);
    }
    return s;
}

// The strict reading of one request at the front of `in`: what the RecordingBackend expects of a
// proxy. Complete with `used` bytes, Incomplete (wait for more), or Invalid with `why`.
struct StrictRead {
    enum Kind { Complete, Incomplete, Invalid } kind = Incomplete;
    size_t used = 0;
    std::string why;
    std::string head;
};

StrictRead invalid(std::string why) {
    return {StrictRead::Invalid, 0, std::move(why), {}};
}

// A line ending in CRLF at `at`: its content, or nullopt when incomplete; `bad` when the bytes
// before CRLF hold a CR, an LF or a NUL.
std::optional<std::string_view> strict_line(std::string_view in, size_t at, size_t* next,
                                            bool* bad) {
    const size_t lf = in.find('\n', at);
    if (lf == std::string_view::npos) {
        *bad = in.find_first_of(std::string_view("\r\0", 2), at) != std::string_view::npos &&
               !(in.back() == '\r' && in.find('\r', at) == in.size() - 1);
        return std::nullopt;
    }
    if (lf == at || in[lf - 1] != '\r') {
        *bad = true;
        return std::nullopt;
    }
    std::string_view line = in.substr(at, lf - 1 - at);
    *bad = line.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos;
    *next = lf + 1;
    return line;
}

StrictRead strict_request(std::string_view in) {
    size_t at = 0;
    bool bad = false;
    auto line = strict_line(in, at, &at, &bad);
    if (bad) {
        return invalid("bare CR, LF or NUL in the request line");
    }
    if (!line) {
        return {};
    }
    // METHOD SP origin-form SP HTTP/1.1
    const size_t sp1 = line->find(' ');
    const size_t sp2 = line->rfind(' ');
    if (sp1 == std::string_view::npos || sp1 == sp2 || sp1 == 0) {
        return invalid("request line without three parts: " + std::string(*line));
    }
    for (char c : line->substr(0, sp1)) {
        if (!tchar(c)) {
            return invalid("method is no token");
        }
    }
    const std::string_view target = line->substr(sp1 + 1, sp2 - sp1 - 1);
    if (target.empty() || (target[0] != '/' && target != "*")) {
        return invalid("target not in origin-form: " + std::string(target));
    }
    for (char c : target) {
        if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f) {
            return invalid("raw byte in the target");
        }
    }
    if (line->substr(sp2 + 1) != "HTTP/1.1") {
        return invalid("version is not HTTP/1.1");
    }
    // Fields.
    int hosts = 0;
    int lengths = 0;
    int codings = 0;
    std::string length;
    std::string coding;
    for (;;) {
        auto field = strict_line(in, at, &at, &bad);
        if (bad) {
            return invalid("bare CR, LF or NUL in a header line");
        }
        if (!field) {
            return {};
        }
        if (field->empty()) {
            break;
        }
        if (field->front() == ' ' || field->front() == '\t') {
            return invalid("obs-fold");
        }
        const size_t colon = field->find(':');
        if (colon == std::string_view::npos || colon == 0) {
            return invalid("header line without a name: " + std::string(*field));
        }
        const std::string_view name = field->substr(0, colon);
        for (char c : name) {
            if (!tchar(c)) {
                return invalid("header name is no token: " + std::string(name));
            }
        }
        if (name.find('_') != std::string_view::npos) {
            return invalid("underscored header name: " + std::string(name));
        }
        const std::string_view value = trim_ows(field->substr(colon + 1));
        for (char c : value) {
            const auto u = static_cast<unsigned char>(c);
            if ((u < 0x20 && c != '\t') || u == 0x7f) {
                return invalid("control character in a header value");
            }
        }
        const std::string n = lower(name);
        if (n == "host") {
            ++hosts;
            if (value.empty() || value.find_first_of(" \t/@?#\\") != std::string_view::npos) {
                return invalid("invalid Host: " + std::string(value));
            }
        } else if (n == "content-length") {
            ++lengths;
            length = std::string(value);
        } else if (n == "transfer-encoding") {
            ++codings;
            coding = lower(value);
        }
    }
    if (hosts != 1) {
        return invalid("Host headers: " + std::to_string(hosts));
    }
    if (lengths > 0 && codings > 0) {
        return invalid("both Content-Length and Transfer-Encoding");
    }
    if (lengths > 1 || codings > 1) {
        return invalid("repeated framing header");
    }
    StrictRead r;
    r.head = std::string(in.substr(0, at));
    if (lengths == 1) {
        if (length.empty() || length.size() > 15 ||
            !std::all_of(length.begin(), length.end(), ::isdigit)) {
            return invalid("Content-Length is no number: " + length);
        }
        const size_t n = std::stoull(length);
        if (in.size() - at < n) {
            return {};
        }
        r.kind = StrictRead::Complete;
        r.used = at + n;
        return r;
    }
    if (codings == 0) {
        r.kind = StrictRead::Complete;
        r.used = at;
        return r;
    }
    if (coding != "chunked") {
        return invalid("Transfer-Encoding is not just chunked: " + coding);
    }
    // chunk = 1*HEXDIG [ chunk-ext ] CRLF data CRLF; last-chunk; trailer-section; CRLF
    for (;;) {
        auto size_line = strict_line(in, at, &at, &bad);
        if (bad) {
            return invalid("bare CR, LF or NUL in a chunk-size line");
        }
        if (!size_line) {
            return {};
        }
        const std::string_view digits = size_line->substr(0, size_line->find(';'));
        if (digits.empty() || digits.size() > 15 ||
            !std::all_of(digits.begin(), digits.end(), ::isxdigit)) {
            return invalid("chunk size is no hex number: " + std::string(*size_line));
        }
        const size_t size = std::stoull(std::string(digits), nullptr, 16);
        if (size == 0) {
            break;
        }
        if (in.size() - at < size + 2) {
            return {};
        }
        if (in.substr(at + size, 2) != "\r\n") {
            return invalid("chunk data not followed by CRLF");
        }
        at += size + 2;
    }
    for (;;) {
        auto trailer = strict_line(in, at, &at, &bad);
        if (bad) {
            return invalid("bare CR, LF or NUL in a trailer");
        }
        if (!trailer) {
            return {};
        }
        if (trailer->empty()) {
            break;
        }
        return invalid("a trailer field was forwarded: " + std::string(*trailer));
    }
    r.kind = StrictRead::Complete;
    r.used = at;
    return r;
}

// A backend that records exactly what it receives and reads it strictly; each request it reads
// is answered `200 ok` with `Connection: close`, so a connection carries one request and the
// connections of one case are over before the next case starts.
class RecordingBackend {
public:
    RecordingBackend() {
        listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
            ::listen(listen_fd_, 64) != 0) {
            throw std::runtime_error("RecordingBackend: cannot listen");
        }
        socklen_t len = sizeof(addr);
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
        port_ = ntohs(addr.sin_port);
        stop_fd_ = ::eventfd(0, EFD_CLOEXEC);
        thread_ = std::thread([this] { run(); });
    }
    RecordingBackend(const RecordingBackend&) = delete;
    RecordingBackend& operator=(const RecordingBackend&) = delete;
    ~RecordingBackend() {
        const uint64_t one = 1;
        (void)!::write(stop_fd_, &one, sizeof(one));
        thread_.join();
        for (auto& c : conns_) {
            ::close(c.fd);
        }
        ::close(listen_fd_);
        ::close(stop_fd_);
    }

    std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

    struct Record {
        size_t connections = 0;
        size_t requests = 0;               // read strictly, and answered
        std::vector<std::string> problems; // what a lenient reader could take otherwise
        std::vector<std::string> heads;    // of the requests read
        std::string bytes;                 // everything received, connection after connection
    };
    // What arrived since the last take(), once every connection is closed (bounded wait).
    Record take() {
        poll_until([this] {
            std::lock_guard lock(mutex_);
            return open_ == 0;
        });
        std::lock_guard lock(mutex_);
        Record r = std::move(record_);
        if (open_ != 0) {
            r.problems.push_back(std::to_string(open_) + " connections still open");
        }
        record_ = Record{};
        return r;
    }

private:
    struct Conn {
        int fd;
        std::string in;
        bool answered = false;
    };

    void run() {
        for (;;) {
            std::vector<pollfd> fds{{stop_fd_, POLLIN, 0}, {listen_fd_, POLLIN, 0}};
            for (auto& c : conns_) {
                fds.push_back({c.fd, POLLIN, 0});
            }
            if (::poll(fds.data(), fds.size(), 1000) < 0) {
                continue;
            }
            if (fds[0].revents != 0) {
                return;
            }
            if (fds[1].revents & POLLIN) {
                const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
                if (fd >= 0) {
                    conns_.push_back({fd, {}, false});
                    std::lock_guard lock(mutex_);
                    ++open_;
                    ++record_.connections;
                }
            }
            for (size_t i = 2; i < fds.size(); ++i) {
                if (fds[i].revents != 0) {
                    on_readable(fds[i].fd);
                }
            }
            std::lock_guard lock(mutex_);
            for (auto it = conns_.begin(); it != conns_.end();) {
                if (it->fd < 0) {
                    it = conns_.erase(it);
                    --open_;
                } else {
                    ++it;
                }
            }
        }
    }

    void on_readable(int fd) {
        auto it = std::find_if(conns_.begin(), conns_.end(), [&](auto& c) { return c.fd == fd; });
        char buf[65536];
        const ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n <= 0) {
            std::lock_guard lock(mutex_);
            if (!it->answered && !it->in.empty()) {
                // A request cut short: the backend read no request from it, which is safe.
                record_.heads.push_back("(incomplete) " + it->in.substr(0, 200));
            }
            ::close(fd);
            it->fd = -1;
            return;
        }
        std::lock_guard lock(mutex_);
        record_.bytes.append(buf, static_cast<size_t>(n));
        if (it->answered) {
            record_.problems.push_back("bytes after the answered request: " +
                                       std::string(buf, static_cast<size_t>(n)).substr(0, 200));
            return;
        }
        it->in.append(buf, static_cast<size_t>(n));
        const StrictRead r = strict_request(it->in);
        if (r.kind == StrictRead::Incomplete) {
            return;
        }
        if (r.kind == StrictRead::Invalid) {
            record_.problems.push_back(r.why + " in:\n" + it->in.substr(0, 400));
            // Answered, so that the router does not take this backend for a broken one.
            static const std::string kRefusal =
                "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            (void)!::send(fd, kRefusal.data(), kRefusal.size(), MSG_NOSIGNAL);
            it->answered = true;
            ::shutdown(fd, SHUT_WR);
            return;
        }
        ++record_.requests;
        record_.heads.push_back(r.head);
        if (r.used != it->in.size()) {
            record_.problems.push_back("bytes beyond the request: " + it->in.substr(r.used, 200));
        }
        static const std::string kAnswer =
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
        (void)!::send(fd, kAnswer.data(), kAnswer.size(), MSG_NOSIGNAL);
        it->answered = true;
        ::shutdown(fd, SHUT_WR);
    }

    int listen_fd_ = -1;
    int stop_fd_ = -1;
    uint16_t port_ = 0;
    std::thread thread_;
    std::vector<Conn> conns_; // the backend thread's alone
    std::mutex mutex_;
    size_t open_ = 0;
    Record record_;
};

// What the client must be answered.
enum class Expect {
    Refused, // one 4xx, and nothing of the request reaches the backend as a request
    Served,  // each request sent is answered 200 by the backend
    Either,  // the router may take it or refuse it; the backend side is what matters
};

struct Case {
    const char* name;
    std::string bytes;
    Expect expect;
    int sent = 1;   // requests in `bytes`, at most, however one reads them
    int status = 0; // for Refused: the status, when the RFC or nginx names one (else any 4xx)
};

const std::string kHost = "Host: app.test\r\n";

std::string post(std::string_view headers, std::string_view body = {}) {
    return "POST /submit HTTP/1.1\r\n" + kHost + std::string(headers) + "\r\n" + std::string(body);
}

std::string get(std::string_view target = "/", std::string_view headers = {}) {
    return "GET " + std::string(target) + " HTTP/1.1\r\n" + kHost + std::string(headers) + "\r\n";
}

std::string with_line(std::string_view request_line, std::string_view headers) {
    return std::string(request_line) + "\r\n" + std::string(headers) + "\r\n";
}

const std::string kSmuggled = "GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n";
const std::string kTe = "Transfer-Encoding: chunked\r\n";

std::vector<Case> cases() {
    std::vector<Case> c;
    auto refused = [&](const char* name, std::string bytes, int status = 0, int sent = 1) {
        c.push_back({name, std::move(bytes), Expect::Refused, sent, status});
    };
    auto served = [&](const char* name, std::string bytes, int sent = 1) {
        c.push_back({name, std::move(bytes), Expect::Served, sent, 0});
    };
    auto either = [&](const char* name, std::string bytes, int sent = 1) {
        c.push_back({name, std::move(bytes), Expect::Either, sent, 0});
    };

    // ---- CL.TE and TE.CL: both framing headers, in either order (RFC 9112 6.3: refuse) ----
    refused("CL.TE", post("Content-Length: 6\r\n" + kTe, "0\r\n\r\nG"), 400, 2);
    refused("TE.CL", post(kTe + "Content-Length: 3\r\n", "8\r\nSMUGGLED\r\n0\r\n\r\n"), 400, 2);
    refused("CL.TE smuggling a request",
            post("Content-Length: 44\r\n" + kTe, "0\r\n\r\n" + kSmuggled), 400, 2);
    refused(
        "TE.CL smuggling a request",
        post("Content-Length: 4\r\n" + kTe, "2c\r\n" + kSmuggled.substr(0, 44) + "\r\n0\r\n\r\n"),
        400, 2);
    refused("two different Content-Lengths",
            post("Content-Length: 3\r\nContent-Length: 5\r\n", "abcde"), 400, 2);
    refused("two equal Content-Lengths", post("Content-Length: 3\r\nContent-Length: 3\r\n", "abc"),
            400);
    refused("Content-Length list", post("Content-Length: 3, 3\r\n", "abc"), 400);
    refused("Content-Length with a sign", post("Content-Length: +3\r\n", "abc"), 400);
    refused("negative Content-Length", post("Content-Length: -1\r\n", "abc"), 400);
    refused("hex Content-Length", post("Content-Length: 0x3\r\n", "abc"), 400);
    refused("Content-Length with inner space", post("Content-Length: 1 2\r\n", "abc"), 400);
    refused("Content-Length overflowing 64 bits",
            post("Content-Length: 99999999999999999999999\r\n", "abc"), 400);
    refused("empty Content-Length", post("Content-Length:\r\n", "abc"), 400);
    refused("Content-Length with a letter", post("Content-Length: 3a\r\n", "abc"), 400);

    // ---- Transfer-Encoding obfuscations (each beside a Content-Length, as in TE.CL) ----
    const std::string body = "5\r\nhello\r\n0\r\n\r\n";
    const auto te_cl = [&](const char* name, std::string te) {
        refused(name, post(te + "Content-Length: 5\r\n", body), 0, 2);
    };
    te_cl("TE xchunked", "Transfer-Encoding: xchunked\r\n");
    te_cl("TE chunkedx", "Transfer-Encoding: chunkedx\r\n");
    te_cl("TE space before colon", "Transfer-Encoding : chunked\r\n");
    te_cl("TE tab before colon", "Transfer-Encoding\t: chunked\r\n");
    te_cl("TE quoted", "Transfer-Encoding: \"chunked\"\r\n");
    te_cl("TE with a parameter", "Transfer-Encoding: chunked;q=1\r\n");
    te_cl("TE chunked then identity", "Transfer-Encoding: chunked, identity\r\n");
    te_cl("TE twice, chunked first", "Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n");
    te_cl("TE twice, chunked last", "Transfer-Encoding: x\r\nTransfer-Encoding: chunked\r\n");
    te_cl("TE vertical tab", "Transfer-Encoding: \x0b"
                             "chunked\r\n");
    te_cl("TE form feed", "Transfer-Encoding: \x0c"
                          "chunked\r\n");
    te_cl("TE NUL in value", std::string("Transfer-Encoding: chu\0nked\r\n", 30));
    te_cl("TE NUL in name", std::string("Transfer-Encoding\0: chunked\r\n", 30));
    te_cl("TE folded value", "Transfer-Encoding:\r\n chunked\r\n");
    te_cl("TE folded after another coding", "Transfer-Encoding: x\r\n chunked\r\n");
    te_cl("TE hidden in a fold", "X-A: b\r\n Transfer-Encoding: chunked\r\n");
    te_cl("TE underscored", "Transfer_Encoding: chunked\r\n");
    te_cl("TE with a space in the name", "Transfer Encoding: chunked\r\n");
    te_cl("TE bare CR in value", "Transfer-Encoding: chunked\rX: y\r\n");
    te_cl("TE bare LF line", "Transfer-Encoding: chunked\n");
    te_cl("TE in a line that starts with a space", " Transfer-Encoding: chunked\r\n");
    te_cl("TE empty", "Transfer-Encoding:\r\n");
    te_cl("TE unicode k", "Transfer-Encoding: chun\xc4\xb8"
                          "ed\r\n");
    refused("TE empty, alone", post("Transfer-Encoding:\r\n", body), 400, 2);
    refused("TE identity alone", post("Transfer-Encoding: identity\r\n", body), 0, 2);
    refused("TE gzip alone", post("Transfer-Encoding: gzip\r\n", body), 0, 2);
    served("TE chunked", post(kTe, body));
    served("TE CHUNKED uppercase", post("Transfer-Encoding: CHUNKED\r\n", body));
    served("TE without space", post("Transfer-Encoding:chunked\r\n", body));
    served("TE with a tab as OWS", post("Transfer-Encoding:\tchunked\r\n", body));
    either("TE with trailing OWS", post("Transfer-Encoding: chunked \r\n", body));
    refused("TE gzip, chunked", post("Transfer-Encoding: gzip, chunked\r\n", body), 501);
    refused("TE chunked twice", post(kTe + kTe, body), 400);
    either("TE in HTTP/1.0", with_line("POST / HTTP/1.0", kHost + kTe) + body);
    either("TE and CL in HTTP/1.0",
           with_line("POST / HTTP/1.0", kHost + kTe + "Content-Length: 5\r\n") + body, 2);

    // ---- chunk-size lines and chunk data (RFC 9112 7.1) ----
    const auto chunked = [&](std::string chunks) { return post(kTe, chunks); };
    refused("http-garden transducer: CR then any byte in a chunk-size line",
            chunked("2\r\r;a\r\n02\r\n41\r\n0\r\n\r\nGET /bad_path/pwned HTTP/1.1\r\nHost: a\r\n"
                    "Content-Length: 430\r\n\r\n0\r\n\r\n") +
                get(),
            400, 3);
    refused("chunk size, CR, X", chunked("3\rXabc\r\n0\r\n\r\n"), 400);
    refused("last chunk, CR, CR", chunked("0\r\r"), 400);
    refused("two bytes in place of the CRLF after data", chunked("5\r\nhelloXX0\r\n\r\n"), 400);
    refused("LF alone after data", chunked("5\r\nhello\n0\r\n\r\n"), 400);
    refused("CR alone after data", chunked("5\r\nhello\r0\r\n\r\n"), 400);
    refused("data longer than its size", chunked("5\r\nhelloworld\r\n0\r\n\r\n"), 400);
    refused("data shorter than its size", chunked("5\r\nhel\r\n0\r\n\r\n0\r\n\r\n"), 400);
    refused("chunk size 2^64-1", chunked("ffffffffffffffff\r\nabc"), 400);
    refused("chunk size 2^63", chunked("8000000000000000\r\nabc"), 400);
    refused("chunk size overflowing 64 bits", chunked("10000000000000000\r\nabc"), 400);
    refused("negative chunk size", chunked("-1\r\nabc\r\n0\r\n\r\n"), 400);
    refused("chunk size with a sign", chunked("+5\r\nhello\r\n0\r\n\r\n"), 400);
    refused("chunk size in 0x form", chunked("0x5\r\nhello\r\n0\r\n\r\n"), 400);
    refused("chunk size after a space", chunked(" 5\r\nhello\r\n0\r\n\r\n"), 400);
    refused("chunk size with a non-hex digit", chunked("5g\r\nhello\r\n0\r\n\r\n"), 400);
    refused("empty chunk size", chunked("\r\nhello\r\n0\r\n\r\n"), 400);
    refused("chunk-size line ended by LF", chunked("5\nhello\r\n0\r\n\r\n"), 400);
    refused("every chunk line ended by LF", chunked("5\nhello\n0\n\n"), 400);
    refused("last chunk ended by LF", chunked("5\r\nhello\r\n0\n\r\n"), 400);
    refused("chunk extension with a bare LF", chunked("5;a\nhello\r\n0\r\n\r\n"), 400);
    refused("chunk extension with a bare CR", chunked("5;a\rb\r\nhello\r\n0\r\n\r\n"), 400);
    refused("chunk extension with NUL", chunked(std::string("5;a\0b\r\nhello\r\n0\r\n\r\n", 19)),
            400);
    refused("quoted chunk extension holding CRLF", chunked("5;a=\"b\r\nc\"\r\nhello\r\n0\r\n\r\n"),
            400);
    refused("trailer name with a space", chunked("0\r\nX y: z\r\n\r\n"), 400);
    refused("trailer ended by a bare CR", chunked("0\r\nX: y\r\r\n\r\n"), 400);
    refused("end of trailers CR, CR", chunked("0\r\n\r\r"), 400);
    refused("folded trailer", chunked("0\r\nX: y\r\n z\r\n\r\n"), 400);
    served("chunk extension", chunked("5;a=b\r\nhello\r\n0\r\n\r\n"));
    served("quoted chunk extension", chunked("5;a=\"b c\"\r\nhello\r\n0\r\n\r\n"));
    served("trailer field", chunked("5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n"));
    served("Content-Length in a trailer", chunked("0\r\nContent-Length: 5\r\n\r\nhello"), 1);
    served("NUL bytes as chunk data", chunked(std::string("5\r\n\0\0\0\0\0\r\n0\r\n\r\n", 15)));
    std::string tiny;
    for (int i = 0; i < 100; ++i) {
        tiny += "1\r\nz\r\n";
    }
    served("many small chunks", chunked(tiny + "0\r\n\r\n"));
    either("leading zeros in a chunk size", chunked("0005\r\nhello\r\n0\r\n\r\n"));
    either("whitespace before a chunk extension", chunked("5 ;a\r\nhello\r\n0\r\n\r\n"));
    either("empty chunk extension", chunked("5;\r\nhello\r\n0\r\n\r\n"));
    either("chunk size followed by spaces", chunked("5  \r\nhello\r\n0\r\n\r\n"));

    // ---- bare CR, bare LF and NUL in the head ----
    refused("bare CR ending the request line", "GET / HTTP/1.1\r" + kHost + "\r\n", 400);
    refused("bare CR inside a header value", get("/", "X-A: a\rb\r\n"), 400);
    refused("bare CR ending a header line", get("/", "X-A: a\rX-B: b\r\n"), 400);
    refused("CR, CR, LF ending the head", "GET / HTTP/1.1\r\n" + kHost + "\r\r\n", 400);
    refused("bare LF line endings", "GET / HTTP/1.1\nHost: app.test\n\n", 400);
    refused("bare LF ending a header line", "GET / HTTP/1.1\r\nHost: app.test\nX-A: b\r\n\r\n",
            400);
    refused("NUL in the target", std::string("GET /\0 HTTP/1.1\r\n", 17) + kHost + "\r\n", 400);
    refused("NUL in a header value", get("/", std::string("X-A: a\0b\r\n", 10)), 400);
    refused("NUL in a header name", get("/", std::string("X\0A: b\r\n", 8)), 400);
    refused("NUL in the method", std::string("G\0T / HTTP/1.1\r\n", 16) + kHost + "\r\n", 400);
    refused("NUL in Host", std::string("GET / HTTP/1.1\r\nHost: app\0.test\r\n\r\n", 35), 400);
    refused("DEL in a header value",
            get("/", "X-A: a\x7f"
                     "b\r\n"),
            400);
    refused("tab in the target", "GET /a\tb HTTP/1.1\r\n" + kHost + "\r\n", 400);
    refused("space in the target", "GET /a b HTTP/1.1\r\n" + kHost + "\r\n", 400);
    either("two spaces after the method", "GET  / HTTP/1.1\r\n" + kHost + "\r\n");
    refused("space after the version", "GET / HTTP/1.1 \r\n" + kHost + "\r\n", 400);
    refused("HTTP/0.9 request line", std::string("GET /\r\n\r\n"), 0);
    refused("HTTP/2.0 in an HTTP/1 request line", "GET / HTTP/2.0\r\n" + kHost + "\r\n", 0);
    refused("lowercase version", "GET / http/1.1\r\n" + kHost + "\r\n", 400);
    refused("lowercase method", "get / HTTP/1.1\r\n" + kHost + "\r\n", 0);
    served("UTF-8 in a header value", get("/", "X-Name: caf\xc3\xa9\r\n"));
    either("bare LF for the empty line", "GET / HTTP/1.1\r\n" + kHost + "\n");
    either("blank lines before the request", "\r\n\r\n" + get());

    // ---- obs-fold (RFC 9112 5.2: a server must reject it, or replace it with spaces) ----
    refused("folded Host", "GET / HTTP/1.1\r\nHost: app.test\r\n evil\r\n\r\n", 400);
    refused("folded with a tab", get("/", "X-A: 1\r\n\t2\r\n"), 400);
    refused("fold after an empty value", get("/", "X-A:\r\n 2\r\n"), 400);
    refused("folded Connection", get("/", "Connection: keep-alive\r\n close\r\n"), 400);
    refused("folded Content-Length", post("Content-Length: 3\r\n 0\r\n", "abc"), 400);
    refused("first header line starting with a space",
            "GET / HTTP/1.1\r\n X-A: b\r\n" + kHost + "\r\n", 400);

    // ---- invalid field names ----
    refused("empty field name", get("/", ": x\r\n"), 400);
    refused("space in a name beside Content-Length",
            post("Transfer Encoding: chunked\r\nContent-Length: 5\r\n", "hello"), 400);
    refused("underscored Content-Length", post("Content_Length: 5\r\n" + kTe, body), 400);
    refused("underscored X-Forwarded-For", get("/", "X_Forwarded_For: 10.9.9.9\r\n"), 400);
    refused("underscored X-Forwarded-Host", get("/", "x_forwarded_host: evil.test\r\n"), 400);
    refused("parenthesis in a name", get("/", "X(a): b\r\n"), 400);
    refused("slash in a name", get("/", "X/a: b\r\n"), 400);
    refused("at sign in a name", get("/", "X@: b\r\n"), 400);
    refused("DEL in a name", get("/", "X\x7f: b\r\n"), 400);
    refused("UTF-8 in a name", get("/", "X\xc3\xa9: b\r\n"), 400);
    refused("quote in a name", get("/", "X\"a: b\r\n"), 400);
    refused("space before the colon", get("/", "X-A : b\r\n"), 400);
    refused("name without a colon", get("/", "X-A b\r\n"), 400);
    served("underscored name of no framing header (dropped)", get("/", "X_Api_Key: k\r\n"));

    // ---- Host ----
    const auto with_host = [](std::string host) {
        return "GET / HTTP/1.1\r\nHost: " + host + "\r\n\r\n";
    };
    refused("Host with a space", with_host("app.test evil"), 400);
    refused("Host with a slash", with_host("app.test/evil"), 400);
    refused("empty Host", with_host(""), 400);
    refused("Host with a tab", with_host("app.test\tevil"), 400);
    refused("Host with userinfo", with_host("user@app.test"), 400);
    refused("Host with a bad port", with_host("app.test:80x"), 400);
    refused("Host with two ports", with_host("app.test:80:81"), 400);
    refused("Host with a query", with_host("app.test?x"), 400);
    refused("Host with a fragment", with_host("app.test#x"), 400);
    refused("Host with a backslash", with_host("app.test\\evil"), 400);
    refused("two Host headers", "GET / HTTP/1.1\r\nHost: app.test\r\nHost: evil.test\r\n\r\n", 400);
    refused("no Host", std::string("GET / HTTP/1.1\r\n\r\n"), 400);
    refused("absolute-form with userinfo", with_line("GET http://u:p@app.test/ HTTP/1.1", kHost),
            400);
    refused("absolute-form with an @ host", with_line("GET http://app.test@evil/ HTTP/1.1", kHost),
            400);
    refused("absolute-form ftp", with_line("GET ftp://app.test/ HTTP/1.1", kHost), 400);
    refused("absolute-form without a host", with_line("GET http:///x HTTP/1.1", kHost), 400);
    refused("absolute-form with a bad port",
            with_line("GET http://app.test:99999/ HTTP/1.1", kHost), 400);
    refused("asterisk-form for GET", with_line("GET * HTTP/1.1", kHost), 400);
    refused("target without a slash", with_line("GET app.test/x HTTP/1.1", kHost), 400);
    served("Host with a port", with_host("app.test:8080"));
    served("Host as an IPv6 literal", with_host("[::1]:8080"));
    served("absolute-form beside another Host",
           with_line("GET http://app.test/x HTTP/1.1", "Host: other.test\r\n"));
    served("OPTIONS *", with_line("OPTIONS * HTTP/1.1", kHost));
    served("double slash target", get("//app.test/x"));

    // ---- methods ----
    refused("TRACE", with_line("TRACE / HTTP/1.1", kHost), 405);
    refused("CONNECT", with_line("CONNECT app.test:443 HTTP/1.1", kHost), 0);

    // ---- limits ----
    refused("1 MiB of optional whitespace", get("/", "X-A:" + std::string(1 << 20, ' ') + "b\r\n"),
            431);
    refused("request line over the limit", get("/" + std::string(40 * 1024, 'a')), 414);

    // ---- pipelining after an error: nothing behind a refused request goes anywhere ----
    refused("CL.TE, then a request", post("Content-Length: 5\r\n" + kTe, body) + get(), 400, 3);
    refused("bad chunk line, then a request", chunked("5\r\nhelloXX0\r\n\r\n") + get(), 400, 3);
    refused("folded header, then a request", get("/", "X-A: 1\r\n 2\r\n") + get(), 400, 2);
    refused("bad Host, then a request", with_host("a b") + get(), 400, 2);
    refused("NUL in a name, then a request", get("/", std::string("X\0A: b\r\n", 8)) + get(), 400,
            2);
    served("two requests", get("/one") + get("/two"), 2);
    served("a chunked request, then another", chunked(body) + get(), 2);
    served("a request with a body, then another", post("Content-Length: 5\r\n", "hello") + get(),
           2);
    served("last chunk, then a request", chunked("0\r\n\r\n") + kSmuggled, 2);
    either("a request that closes, then another", get("/", "Connection: close\r\n") + get(), 2);
    return c;
}

class RequestSmuggling : public RouterFixture {
protected:
    // The statuses the client got for `bytes`, in order, until the router closed the connection
    // or `responses` arrived.
    std::vector<int> exchange(const std::string& bytes, int responses) {
        HttpClient c(port());
        std::vector<int> statuses;
        try {
            c.send(bytes, kPrompt);
        } catch (const HttpError&) {
            // the router may close before taking everything (a refused head)
        }
        while (static_cast<int>(statuses.size()) < responses) {
            std::optional<Response> r;
            try {
                r = c.try_read_response(kPrompt);
            } catch (const HttpError&) {
                break;
            }
            if (!r) {
                break;
            }
            statuses.push_back(r->status);
        }
        return statuses;
    }

    RecordingBackend backend_;
};

TEST_F(RequestSmuggling, NoAmbiguousRequestReachesTheBackend) {
    ASSERT_NO_FATAL_FAILURE(start_router({backend_.address()}));
    const std::vector<Case> all = cases();
    ASSERT_GE(all.size(), 100u);
    for (const Case& k : all) {
        SCOPED_TRACE(k.name);
        const std::vector<int> statuses =
            exchange(k.bytes, k.expect == Expect::Refused ? 1 : k.sent);
        const RecordingBackend::Record seen = backend_.take();
        std::string heads;
        for (const auto& h : seen.heads) {
            heads += h + "\n";
        }
        for (const auto& p : seen.problems) {
            ADD_FAILURE() << k.name << ": the backend got an ambiguous message: " << p;
        }
        EXPECT_LE(seen.requests, static_cast<size_t>(k.sent))
            << k.name << ": the backend read more requests than the client sent:\n"
            << heads;
        switch (k.expect) {
        case Expect::Refused:
            ASSERT_FALSE(statuses.empty()) << k.name << ": no answer";
            // A 4xx, or 501 (a coding nobody implements) or 505 (another major version).
            EXPECT_TRUE((statuses[0] >= 400 && statuses[0] < 500) || statuses[0] == 501 ||
                        statuses[0] == 505)
                << k.name << ": " << statuses[0];
            if (k.status != 0) {
                EXPECT_EQ(statuses[0], k.status) << k.name;
            }
            EXPECT_EQ(seen.requests, 0u) << k.name << ": forwarded:\n" << heads;
            EXPECT_EQ(statuses.size(), 1u) << k.name << ": answered after the refusal";
            break;
        case Expect::Served:
            EXPECT_EQ(statuses, std::vector<int>(static_cast<size_t>(k.sent), 200)) << k.name;
            EXPECT_EQ(seen.requests, static_cast<size_t>(k.sent)) << k.name << "\n" << heads;
            break;
        case Expect::Either:
            for (int s : statuses) {
                EXPECT_TRUE(s == 200 || (s >= 400 && s < 500)) << k.name << ": " << s;
            }
            break;
        }
    }
}

// Defect: llhttp's lenient build read `2\r\r;a` as a chunk-size line, so the client's one request
// reached the backend as two (http-garden's transducer payload).
TEST_F(RequestSmuggling, TheTransducerPayloadGivesTheBackendNoSecondRequest) {
    ASSERT_NO_FATAL_FAILURE(start_router({backend_.address()}));
    const std::string payload =
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\r;a\r\n02\r\n41\r\n"
        "0\r\n\r\nGET /bad_path/pwned HTTP/1.1\r\nHost: a\r\nContent-Length: 430\r\n\r\n"
        "0\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
    const std::vector<int> statuses = exchange(payload, 3);
    const auto seen = backend_.take();
    EXPECT_EQ(statuses, std::vector<int>{400});
    EXPECT_EQ(seen.requests, 0u);
    EXPECT_EQ(seen.bytes.find("pwned"), std::string::npos) << seen.bytes;
}

// Defect: a chunk size of 2^64-1 was taken, and the request hung until the upstream timeout.
TEST_F(RequestSmuggling, AnImpossibleChunkSizeIsRefusedAtOnce) {
    ASSERT_NO_FATAL_FAILURE(start_router({backend_.address()}, {"--upstream-timeout", "60s"}));
    const auto start = Clock::now();
    const std::vector<int> statuses = exchange(post(kTe, "ffffffffffffffff\r\nabc"), 1);
    EXPECT_EQ(statuses, std::vector<int>{400});
    EXPECT_LT(Clock::now() - start, kPrompt);
    EXPECT_EQ(backend_.take().requests, 0u);
}

// A chunk that announces more than --max-body-size gets 413 before its data arrives, as a
// Content-Length over it does.
TEST_F(RequestSmuggling, AChunkOverTheBodyLimitGets413AtOnce) {
    ASSERT_NO_FATAL_FAILURE(start_router({backend_.address()}, {"--max-body-size", "1k"}));
    EXPECT_EQ(exchange(post(kTe, "3e8\r\n" + std::string(1000, 'x') + "\r\n0\r\n\r\n"), 1),
              std::vector<int>{200});
    EXPECT_EQ(exchange(post(kTe, "3e8\r\n" + std::string(1000, 'x') + "\r\n19\r\n"), 1),
              std::vector<int>{413});
    EXPECT_EQ(exchange(post(kTe, "100000\r\nabc"), 1), std::vector<int>{413});
    EXPECT_EQ(backend_.take().requests, 1u);
}

// Defect: optional whitespace did not count toward --max-header-size, and a request line over it
// got 431.
TEST_F(RequestSmuggling, WhitespaceCountsTowardTheHeadLimitAndALongLineGets414) {
    ASSERT_NO_FATAL_FAILURE(start_router({backend_.address()}, {"--max-header-size", "8k"}));
    EXPECT_EQ(exchange(get("/", "X-A:" + std::string(9000, ' ') + "b\r\n"), 1),
              std::vector<int>{431});
    EXPECT_EQ(exchange(get("/", "X-A: b" + std::string(9000, '\t') + "\r\n"), 1),
              std::vector<int>{431});
    EXPECT_EQ(exchange(get("/" + std::string(9000, 'a')), 1), std::vector<int>{414});
    EXPECT_EQ(exchange(get("/", "X-A: " + std::string(7000, 'b') + "\r\n"), 1),
              std::vector<int>{200});
    EXPECT_EQ(backend_.take().requests, 1u);
}

// Defect: an upgrade the backend refused (a final response, not 101) closed the connection, and
// the request pipelined behind it was never answered. nginx answers both.
TEST_F(RequestSmuggling, ARequestPipelinedBehindARefusedUpgradeIsAnswered) {
    ASSERT_NO_FATAL_FAILURE(start_router({backend_.address()}));
    const std::string upgrade = get("/ws", "Connection: upgrade\r\nUpgrade: websocket\r\n");
    EXPECT_EQ(exchange(upgrade + get("/after"), 2), (std::vector<int>{200, 200}));
    const auto seen = backend_.take();
    ASSERT_EQ(seen.requests, 2u);
    EXPECT_NE(seen.heads[1].find("GET /after "), std::string::npos) << seen.heads[1];
}

} // namespace
