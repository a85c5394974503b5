// Response heads as the router reads and rewrites them: fed in two pieces at any split they read
// the same as fed whole; the head written for the client, framed as response_framing decides
// for any client, is read back by a strict parser as one whole head with the same status.
#include <cstdint>

#include "../../router/response_framing.hpp"
#include "parse_run.hpp"

using namespace liege;
using liege::fuzz::check;
using liege::fuzz::ParseRun;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 2) {
        return 0;
    }
    const size_t split = data[0];
    const uint8_t mode = data[1];
    const std::string_view in(reinterpret_cast<const char*>(data) + 2, size - 2);

    ParseRun whole(HTTP_RESPONSE);
    ParseRun pieces(HTTP_RESPONSE);
    whole.headers_rc = pieces.headers_rc = (mode & 0x10) != 0 ? 1 : 0; // a response to HEAD
    liege::fuzz::parse_split(whole, pieces, in, split);
    if (!whole.headers_done) {
        return 0;
    }
    // The client's side of the exchange from the mode bits; the framing as the router picks it.
    router::ResponseFacts facts;
    facts.status = whole.parser.status_code;
    facts.has_length = (whole.parser.flags & F_CONTENT_LENGTH) != 0;
    facts.chunked = (whole.parser.flags & F_CHUNKED) != 0;
    bool coded = false;
    whole.head.find("transfer-encoding", &coded);
    facts.transfer_encoding = coded;
    facts.request_head_method = (mode & 0x10) != 0;
    facts.client_http10 = (mode & 0x01) != 0;
    facts.request_keep_alive = (mode & 0x02) != 0;
    facts.request_upgrade = (mode & 0x04) != 0;
    facts.request_done = (mode & 0x08) != 0;
    facts.closing = (mode & 0x20) != 0;
    const router::ResponseFraming f = router::response_framing(facts);
    if (f.kind == router::ResponseKind::Rejected) {
        return 0; // 502
    }
    const http::ResponseForward& fwd = f.forward;
    static char out[64 * 1024];
    const size_t n = http::write_response_head(whole.head, fwd, out, sizeof(out));
    if (n == 0) {
        return 0;
    }
    ParseRun again(HTTP_RESPONSE);
    again.headers_rc = 1; // the head alone
    const llhttp_errno_t c = again.run({out, n}, n);
    check(again.headers_done, "the rewritten head is not a whole head");
    check(c == HPE_OK || c == HPE_PAUSED, "the rewritten head does not parse");
    check(again.parser.status_code == fwd.status, "the status changed");
    return 0;
}
