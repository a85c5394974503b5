// Request heads and bodies as the router reads them: whatever llhttp takes, fed in two pieces at
// any split, must read the same as fed whole; a head the router's checks accept must be
// rewritten into one that a strict parser reads as exactly one request, with one valid Host and
// nothing the checks would refuse.
#include <cstdint>
#include <cstring>

#include "parse_run.hpp"

using namespace liege;
using liege::fuzz::check;
using liege::fuzz::ParseRun;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) {
        return 0;
    }
    const size_t split = data[0];
    const std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);

    ParseRun whole(HTTP_REQUEST);
    ParseRun pieces(HTTP_REQUEST);
    liege::fuzz::parse_split(whole, pieces, in, split);
    if (!whole.headers_done) {
        return 0;
    }

    const http::RequestHeaders h = http::scan_request_headers(whole.head);
    const http::RequestTarget t =
        http::request_target(whole.head.url(), h.host, whole.head.method());
    const http::Refusal refusal =
        http::refuse_request(h, t,
                             {whole.head.method(), whole.parser.http_major, whole.parser.http_minor,
                              (whole.parser.flags & F_CHUNKED) != 0});
    if (refusal.status != 0) {
        return 0; // the router answers 400, 405 or 505
    }
    static char out[64 * 1024];
    http::RequestForward fwd;
    fwd.client_ip = "127.0.0.1";
    fwd.target = &t;
    fwd.drop_underscores = h.underscores;
    fwd.upgrade = whole.parser.upgrade != 0;
    const size_t n = http::write_request_head(whole.head, fwd, out, sizeof(out));
    if (n == 0) {
        return 0; // too large: 431
    }
    ParseRun again(HTTP_REQUEST);
    const llhttp_errno_t c = again.run({out, n}, n);
    check(again.headers_done, "the rewritten head is not a whole head");
    check(c == HPE_OK || c == HPE_PAUSED, "the rewritten head does not parse");
    const http::RequestHeaders h2 = http::scan_request_headers(again.head);
    check(h2.problem == nullptr && !h2.underscores, "the rewritten head has a refused header");
    // An HTTP/1.0 request without Host goes on with an empty one (HTTP/1.1 requires the header).
    const bool hostless = h.hosts == 0 && !t.absolute;
    check(h2.hosts == 1 && (hostless ? h2.host.empty() : http::valid_host(h2.host)),
          "the rewritten head has no single valid Host");
    check(again.head.method() == whole.head.method(), "the method changed");
    check(again.parser.http_major == 1 && again.parser.http_minor == 1, "not HTTP/1.1");
    const bool framed = (whole.parser.flags & (F_CHUNKED | F_CONTENT_LENGTH)) != 0;
    if (!framed) {
        check((again.parser.flags & (F_CHUNKED | F_CONTENT_LENGTH)) == 0 && c == HPE_PAUSED,
              "a bodyless request gained a body");
    }
    return 0;
}
