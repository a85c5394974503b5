#include "liege/address.hpp"

#include <arpa/inet.h>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <netdb.h>
#include <netinet/in.h>
#include <stdexcept>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

namespace liege {

namespace {

uint16_t parse_port(std::string_view text, std::string_view whole) {
    unsigned value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || ec != std::errc{} || end != text.data() + text.size() || value > 65535) {
        throw std::invalid_argument("invalid port in address '" + std::string(whole) +
                                    "': expected a number from 0 to 65535");
    }
    return static_cast<uint16_t>(value);
}

} // namespace

std::string Address::str() const {
    if (is_unix()) {
        return "unix:" + path;
    }
    if (host.find(':') != std::string::npos) {
        return "[" + host + "]:" + std::to_string(port);
    }
    return host + ":" + std::to_string(port);
}

std::string default_admin_address(unsigned uid, const char* xdg_runtime_dir) {
    if (uid == 0) {
        return "unix:/run/liege/liege.sock";
    }
    if (xdg_runtime_dir != nullptr && xdg_runtime_dir[0] == '/') {
        std::string dir = xdg_runtime_dir;
        while (dir.size() > 1 && dir.back() == '/') {
            dir.pop_back();
        }
        return "unix:" + dir + "/liege/liege.sock";
    }
    return "unix:/tmp/liege-" + std::to_string(uid) + "/liege.sock";
}

Address parse_address(std::string_view text) {
    Address addr;
    if (text.starts_with("unix:")) {
        addr.kind = Address::Kind::Unix;
        addr.path = std::string(text.substr(5));
        if (addr.path.empty()) {
            throw std::invalid_argument("empty path in address '" + std::string(text) +
                                        "': expected unix:PATH");
        }
        if (addr.path.size() >= sizeof(sockaddr_un{}.sun_path)) {
            throw std::invalid_argument("unix socket path too long in address '" +
                                        std::string(text) + "'");
        }
        return addr;
    }
    if (text.starts_with("[")) {
        auto close = text.find(']');
        if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
            throw std::invalid_argument("invalid address '" + std::string(text) +
                                        "': expected [IPv6]:PORT");
        }
        addr.host = std::string(text.substr(1, close - 1));
        in6_addr probe{};
        if (inet_pton(AF_INET6, addr.host.c_str(), &probe) != 1) {
            throw std::invalid_argument("invalid IPv6 address in '" + std::string(text) + "'");
        }
        addr.port = parse_port(text.substr(close + 2), text);
        return addr;
    }
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos || colon == 0) {
        throw std::invalid_argument("invalid address '" + std::string(text) +
                                    "': expected HOST:PORT, [IPv6]:PORT or unix:PATH");
    }
    addr.host = std::string(text.substr(0, colon));
    if (addr.host.find(':') != std::string::npos) {
        throw std::invalid_argument("invalid address '" + std::string(text) +
                                    "': write IPv6 addresses as [IPv6]:PORT");
    }
    addr.port = parse_port(text.substr(colon + 1), text);
    return addr;
}

int to_sockaddr(const Address& addr, sockaddr_storage& out, socklen_t& len) {
    std::memset(&out, 0, sizeof(out));
    if (addr.is_unix()) {
        auto* sun = reinterpret_cast<sockaddr_un*>(&out);
        sun->sun_family = AF_UNIX;
        if (addr.path.size() >= sizeof(sun->sun_path)) {
            return -ENAMETOOLONG;
        }
        std::memcpy(sun->sun_path, addr.path.c_str(), addr.path.size() + 1);
        len = sizeof(sockaddr_un);
        return 0;
    }
    auto* sin = reinterpret_cast<sockaddr_in*>(&out);
    if (inet_pton(AF_INET, addr.host.c_str(), &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(addr.port);
        len = sizeof(sockaddr_in);
        return 0;
    }
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&out);
    if (inet_pton(AF_INET6, addr.host.c_str(), &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(addr.port);
        len = sizeof(sockaddr_in6);
        return 0;
    }
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (getaddrinfo(addr.host.c_str(), nullptr, &hints, &res) != 0 || res == nullptr) {
        return -EINVAL;
    }
    std::memcpy(&out, res->ai_addr, res->ai_addrlen);
    len = res->ai_addrlen;
    freeaddrinfo(res);
    if (out.ss_family == AF_INET) {
        reinterpret_cast<sockaddr_in*>(&out)->sin_port = htons(addr.port);
    } else {
        reinterpret_cast<sockaddr_in6*>(&out)->sin6_port = htons(addr.port);
    }
    return 0;
}

int bind_listening_socket(const Address& addr, bool reuseport, int backlog) {
    sockaddr_storage ss{};
    socklen_t len = 0;
    int rc = to_sockaddr(addr, ss, len);
    if (rc != 0) {
        return rc;
    }
    int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -errno;
    }
    int one = 1;
    if (ss.ss_family != AF_UNIX) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (reuseport) {
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
        }
        if (ss.ss_family == AF_INET6) {
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        }
    } else {
        // A stale socket file from an earlier run would make bind fail; only remove sockets.
        struct stat st {};
        if (::stat(addr.path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
            ::unlink(addr.path.c_str());
        }
    }
    if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(fd, backlog) != 0) {
        int err = -errno;
        ::close(fd);
        return err;
    }
    return fd;
}

Address address_of_socket(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    Address addr;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
        return addr;
    }
    char buf[INET6_ADDRSTRLEN] = {};
    if (ss.ss_family == AF_UNIX) {
        addr.kind = Address::Kind::Unix;
        addr.path = reinterpret_cast<sockaddr_un*>(&ss)->sun_path;
    } else if (ss.ss_family == AF_INET) {
        auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
        inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof(buf));
        addr.host = buf;
        addr.port = ntohs(sin->sin_port);
    } else if (ss.ss_family == AF_INET6) {
        auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
        inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof(buf));
        addr.host = buf;
        addr.port = ntohs(sin6->sin6_port);
    }
    return addr;
}

} // namespace liege
