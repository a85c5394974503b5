// A small blocking HTTP/1.1 client for the admin API, over a unix socket or TCP, for `liege
// status`, `reload` and `top`: one request per connection, the reply read until the server
// closes, every wait bounded.
#pragma once

#include <chrono>
#include <stdexcept>
#include <string>
#include <string_view>

namespace liege::cli {

struct AdminReply {
    int status = 0;
    std::string body;
};

// The admin address cannot be reached (nothing listens, wrong path, refused). what() is the
// whole message for the user: "cannot reach the admin API at ADDR: REASON (is liege run
// running?)".
struct AdminUnreachable : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Any other failure: an invalid address, a timeout, a malformed or cut reply.
struct AdminError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A vassal name as one percent-encoded path segment ("shop@x" → "shop%40x").
std::string path_segment(const std::string& name);

AdminReply admin_request(const std::string& address, std::string_view method, std::string_view path,
                         std::chrono::milliseconds timeout);

} // namespace liege::cli
