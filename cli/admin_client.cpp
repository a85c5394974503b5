#include "admin_client.hpp"

#include <fcntl.h>
#include <llhttp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "commands.hpp"
#include "liege/address.hpp"
#include "liege/admin_token.hpp"

namespace liege::cli {

namespace {

using Clock = std::chrono::steady_clock;

class Fd {
public:
    explicit Fd(int fd) : fd_(fd) {}
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd() {
        if (fd_ >= 0) {
            ::close(fd_);
        }
    }
    int get() const { return fd_; }

private:
    int fd_;
};

// Waits until `fd` is ready for `events`; false when the deadline passes first.
bool wait_ready(int fd, short events, Clock::time_point deadline) {
    for (;;) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) {
            return false;
        }
        pollfd p{fd, events, 0};
        int n = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1'000'000)));
        if (n > 0) {
            return true;
        }
        if (n < 0 && errno != EINTR) {
            return true; // let the next call report the error
        }
    }
}

struct Parsed {
    int status = 0;
    std::string body;
    bool complete = false;
};

} // namespace

AdminReply admin_request(const std::string& address, std::string_view method, std::string_view path,
                         std::chrono::milliseconds timeout) {
    Address addr;
    try {
        addr = parse_address(address);
    } catch (const std::invalid_argument& e) {
        throw AdminError(e.what());
    }
    const std::string where = addr.str();
    auto unreachable = [&](const std::string& why) {
        return AdminUnreachable(fmt::format(
            "cannot reach the admin API at {}: {} (is liege run running?)", where, why));
    };
    sockaddr_storage ss{};
    socklen_t len = 0;
    if (int rc = to_sockaddr(addr, ss, len); rc != 0) {
        throw unreachable(rc == -EINVAL ? "cannot resolve the host" : std::strerror(-rc));
    }
    Fd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (fd.get() < 0) {
        throw unreachable(std::strerror(errno));
    }
    const auto deadline = Clock::now() + timeout;
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
        if (errno != EINPROGRESS && errno != EAGAIN) {
            throw unreachable(std::strerror(errno));
        }
        if (!wait_ready(fd.get(), POLLOUT, deadline)) {
            throw unreachable("connection timed out");
        }
        int err = 0;
        socklen_t err_len = sizeof(err);
        ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &err_len);
        if (err != 0) {
            throw unreachable(std::strerror(err));
        }
    }
    // Over TCP the admin API checks Host against its address and asks for the token; a unix
    // socket's file mode is its guard, so no token is read for one (a token file the caller
    // cannot read does not stand in the way of a socket it may use).
    std::string authorization;
    const std::string token_file = addr.is_unix() ? std::string() : client_admin_token_file();
    if (!token_file.empty()) {
        try {
            authorization = "Authorization: Bearer " + read_admin_token(token_file) + "\r\n";
        } catch (const std::invalid_argument& e) {
            throw AdminError(e.what());
        }
    }
    const std::string request =
        fmt::format("{} {} HTTP/1.1\r\nHost: {}\r\n{}User-Agent: liege-cli\r\n"
                    "Accept: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    method, path, addr.is_unix() ? std::string("localhost") : where, authorization);
    std::string_view rest = request;
    while (!rest.empty()) {
        ssize_t n = ::send(fd.get(), rest.data(), rest.size(), MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (!wait_ready(fd.get(), POLLOUT, deadline)) {
                throw AdminError("the admin API at " + where + " did not take the request");
            }
            continue;
        }
        if (n < 0) {
            throw AdminError("sending to the admin API at " + where + ": " + std::strerror(errno));
        }
        rest.remove_prefix(static_cast<size_t>(n));
    }

    Parsed parsed;
    llhttp_settings_t settings;
    llhttp_settings_init(&settings);
    settings.on_body = [](llhttp_t* p, const char* at, size_t n) {
        static_cast<Parsed*>(p->data)->body.append(at, n);
        return 0;
    };
    settings.on_message_complete = [](llhttp_t* p) {
        auto* out = static_cast<Parsed*>(p->data);
        out->status = p->status_code;
        out->complete = true;
        return static_cast<int>(HPE_PAUSED); // one response is all we want
    };
    llhttp_t parser;
    llhttp_init(&parser, HTTP_RESPONSE, &settings);
    parser.data = &parsed;
    char buf[16 * 1024];
    while (!parsed.complete) {
        ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (!wait_ready(fd.get(), POLLIN, deadline)) {
                throw AdminError(fmt::format("the admin API at {} did not answer within {} s",
                                             where, timeout.count() / 1000));
            }
            continue;
        }
        if (n < 0) {
            throw AdminError("reading from the admin API at " + where + ": " +
                             std::strerror(errno));
        }
        llhttp_errno_t err =
            n == 0 ? llhttp_finish(&parser) : llhttp_execute(&parser, buf, static_cast<size_t>(n));
        if (parsed.complete) {
            break;
        }
        if (err != HPE_OK) {
            throw AdminError(fmt::format("malformed reply from the admin API at {}: {}", where,
                                         llhttp_get_error_reason(&parser)));
        }
        if (n == 0) {
            throw AdminError("the admin API at " + where + " closed the connection early");
        }
    }
    if (parsed.status == 401) {
        throw AdminError(fmt::format(
            "the admin API at {} {}: give --admin-token-file FILE or set LIEGE_ADMIN_TOKEN_FILE "
            "to the file liege run was given",
            where, token_file.empty() ? "needs a token" : "refused the token in " + token_file));
    }
    return {parsed.status, std::move(parsed.body)};
}

std::string path_segment(const std::string& name) {
    std::string out;
    for (unsigned char c : name) {
        if (std::isalnum(c) != 0 || c == '-' || c == '_' || c == '.' || c == '~') {
            out += static_cast<char>(c);
        } else {
            out += fmt::format("%{:02X}", c);
        }
    }
    return out;
}

} // namespace liege::cli
