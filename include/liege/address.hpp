// Listening and backend addresses as users write them: HOST:PORT, [IPv6]:PORT or unix:PATH.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <sys/socket.h>

namespace liege {

struct Address {
    enum class Kind { Tcp, Unix };

    Kind kind = Kind::Tcp;
    std::string host; // numeric IPv4/IPv6 or a name (resolved at bind/connect time); empty for unix
    uint16_t port = 0;
    std::string path; // unix socket path

    bool is_unix() const { return kind == Kind::Unix; }
    // The canonical text form: "127.0.0.1:80", "[::1]:80", "unix:/run/x.sock".
    std::string str() const;

    bool operator==(const Address&) const = default;
};

// Parses an address; throws std::invalid_argument with a message that says what was expected.
Address parse_address(std::string_view text);

// The admin socket `liege run` listens on by default: unix:/run/liege/liege.sock for root
// (uid 0), else unix:$XDG_RUNTIME_DIR/liege/liege.sock, else (no runtime directory, as in a
// plain `su` or a container) unix:/tmp/liege-UID/liege.sock. `xdg_runtime_dir` may be null.
std::string default_admin_address(unsigned uid, const char* xdg_runtime_dir);

// Fills `out` with the socket address. Names are resolved (blocking; only at startup or config
// time). Returns 0 or a negative errno / EAI error mapped to -EINVAL.
int to_sockaddr(const Address& addr, sockaddr_storage& out, socklen_t& len);

// A non-blocking, close-on-exec listening socket bound to `addr` (SO_REUSEADDR; SO_REUSEPORT
// when asked; a stale unix socket file is replaced). Returns the fd or a negative errno.
int bind_listening_socket(const Address& addr, bool reuseport, int backlog);

// The address a bound socket really has (port 0 becomes the chosen port).
Address address_of_socket(int fd);

} // namespace liege
