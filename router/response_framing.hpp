// How a backend's response is framed to the client, decided from the response's and the
// request's facts alone (no sockets, no parser), so every case can be unit-tested.
//
// A length stays as it is. A chunked or close-delimited body is chunked to an HTTP/1.1 client
// (decoded and encoded again, so a backend's chunk extensions and trailers stop here) and sent
// bare, ended by the close, to an HTTP/1.0 one, which gets no chunked coding even on a bodyless
// response. A close-delimited body under some other transfer coding (gzip; or chunked, not last)
// is passed on as it is, ended by the close: chunking it again could apply chunked twice.
#pragma once

#include "liege/http_head.hpp"

namespace liege::router {

struct ResponseFacts {
    int status = 200;
    bool has_length = false;        // Content-Length framed
    bool chunked = false;           // chunked is the last transfer coding
    bool transfer_encoding = false; // a Transfer-Encoding header, whatever its codings
    bool request_head_method = false;
    bool client_http10 = false;
    bool request_keep_alive = false; // the request allows keeping the connection
    bool request_upgrade = false;    // the request asked for an upgrade
    bool request_done = false;       // the whole request has been read
    bool closing = false;            // the client connection ends after this exchange anyway
};

enum class ResponseKind {
    Interim,  // 1xx other than 101: passed on (not to HTTP/1.0 clients), the final one follows
    Final,    // the response to forward
    Upgrade,  // 101 to a request that asked for it: a tunnel follows
    Rejected, // 101 to a request that asked for no upgrade: a malformed response (502)
};

struct ResponseFraming {
    ResponseKind kind = ResponseKind::Final;
    bool no_body = false;          // HEAD, 204, 304, 101: headers only, whatever they announce
    bool rechunk = false;          // the body is chunked again for the client
    bool close = false;            // the client connection ends after this response
    http::ResponseForward forward; // for write_response_head
    // What on_headers_complete returns to llhttp: 0 a body follows as framed, 1 headers only,
    // 2 headers only and the rest of the stream is a tunnel.
    int parser_result = 0;
};

ResponseFraming response_framing(const ResponseFacts& facts);

} // namespace liege::router
