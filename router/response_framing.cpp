#include "response_framing.hpp"

namespace liege::router {

ResponseFraming response_framing(const ResponseFacts& f) {
    ResponseFraming r;
    r.forward.status = f.status;
    if (f.status >= 100 && f.status < 200 && f.status != 101) {
        r.kind = ResponseKind::Interim;
        return r;
    }
    if (f.status == 101 && !f.request_upgrade) {
        r.kind = ResponseKind::Rejected;
        return r;
    }
    const bool upgrade = f.status == 101;
    r.kind = upgrade ? ResponseKind::Upgrade : ResponseKind::Final;
    r.no_body = f.request_head_method || f.status == 204 || f.status == 304 || upgrade;
    const bool close_delimited = !r.no_body && !f.has_length && !f.chunked;
    const bool coded = close_delimited && f.transfer_encoding;
    r.rechunk = !r.no_body && !f.client_http10 && (f.chunked || (close_delimited && !coded));
    r.close = !f.request_keep_alive || f.closing || !f.request_done ||
              (!r.no_body && !f.has_length && (f.client_http10 || coded));
    if (close_delimited && !coded && !f.client_http10) {
        r.forward.framing = http::BodyFraming::AddChunked;
    } else if (f.chunked && f.client_http10) {
        r.forward.framing = http::BodyFraming::RemoveChunked;
    }
    r.forward.close = r.close && !upgrade;
    r.forward.keep_alive_10 = f.client_http10 && !r.close;
    r.forward.upgrade = upgrade;
    // llhttp knows a HEAD response has no body only from us, and would wait for a 204's or
    // 304's announced Content-Length or chunks, which never come.
    r.parser_result = upgrade ? 2 : r.no_body ? 1 : 0;
    return r;
}

} // namespace liege::router
