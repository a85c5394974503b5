// How a backend's response is framed to the client (length, chunked, close; keep-alive): pure.
#include <gtest/gtest.h>

#include <ostream>

#include "../../router/response_framing.hpp"

namespace liege::router {

// Readable failure messages; static, so no other test file's printers clash with these.
static std::ostream& operator<<(std::ostream& os, ResponseKind k) {
    switch (k) {
    case ResponseKind::Interim:
        return os << "Interim";
    case ResponseKind::Final:
        return os << "Final";
    case ResponseKind::Upgrade:
        return os << "Upgrade";
    case ResponseKind::Rejected:
        return os << "Rejected";
    }
    return os << "ResponseKind(" << static_cast<int>(k) << ")";
}

} // namespace liege::router

namespace liege::http {

static std::ostream& operator<<(std::ostream& os, BodyFraming b) {
    switch (b) {
    case BodyFraming::AsReceived:
        return os << "AsReceived";
    case BodyFraming::AddChunked:
        return os << "AddChunked";
    case BodyFraming::RemoveChunked:
        return os << "RemoveChunked";
    }
    return os << "BodyFraming(" << static_cast<int>(b) << ")";
}

} // namespace liege::http

using namespace liege::router;
using liege::http::BodyFraming;

namespace {

// A GET from an HTTP/1.1 client that may keep its connection, read in full; the response has a
// Content-Length. Each test changes what it is about.
ResponseFacts facts(int status = 200) {
    ResponseFacts f;
    f.status = status;
    f.has_length = true;
    f.request_keep_alive = true;
    f.request_done = true;
    return f;
}

ResponseFacts http10(ResponseFacts f) {
    f.client_http10 = true;
    return f;
}

// A chunked body always comes with its Transfer-Encoding header ("chunked", or "gzip, chunked"):
// that header must not make it count as a body under some other coding.
ResponseFacts chunked(ResponseFacts f) {
    f.has_length = false;
    f.chunked = true;
    f.transfer_encoding = true;
    return f;
}

ResponseFacts close_delimited(ResponseFacts f) {
    f.has_length = false;
    f.chunked = false;
    f.transfer_encoding = false;
    return f;
}

// Every field, the forwarded head's included, so a framing right in one field and wrong in
// another still fails.
void expect_framing(const ResponseFraming& got, const ResponseFraming& want) {
    EXPECT_EQ(got.kind, want.kind) << "kind";
    EXPECT_EQ(got.no_body, want.no_body) << "no_body";
    EXPECT_EQ(got.rechunk, want.rechunk) << "rechunk";
    EXPECT_EQ(got.close, want.close) << "close";
    EXPECT_EQ(got.forward.status, want.forward.status) << "forward.status";
    EXPECT_EQ(got.forward.framing, want.forward.framing) << "forward.framing";
    EXPECT_EQ(got.forward.close, want.forward.close) << "forward.close";
    EXPECT_EQ(got.forward.keep_alive_10, want.forward.keep_alive_10) << "forward.keep_alive_10";
    EXPECT_EQ(got.forward.upgrade, want.forward.upgrade) << "forward.upgrade";
    EXPECT_EQ(got.parser_result, want.parser_result) << "parser_result";
}

} // namespace

// --- interim and 101 responses --------------------------------------------------------------

TEST(ResponseFraming, ContinueIsInterimAndPassedOnAsItIs) {
    expect_framing(response_framing(facts(100)), {.kind = ResponseKind::Interim,
                                                  .no_body = false,
                                                  .rechunk = false,
                                                  .close = false,
                                                  .forward = {.status = 100},
                                                  .parser_result = 0});
}

TEST(ResponseFraming, EarlyHintsIsInterim) {
    expect_framing(response_framing(facts(103)),
                   {.kind = ResponseKind::Interim, .forward = {.status = 103}});
}

TEST(ResponseFraming, Interim1xxIgnoresEveryRequestFact) {
    // Not even a closing, unfinished, HTTP/1.0 exchange turns an interim response into a close:
    // the final response decides that.
    ResponseFacts f = chunked(http10(facts(199)));
    f.request_keep_alive = false;
    f.request_done = false;
    f.closing = true;
    f.request_upgrade = true;
    f.request_head_method = true;
    expect_framing(response_framing(f), {.kind = ResponseKind::Interim,
                                         .no_body = false,
                                         .rechunk = false,
                                         .close = false,
                                         .forward = {.status = 199},
                                         .parser_result = 0});
}

TEST(ResponseFraming, OnlyStatusesFrom100To199OtherThan101AreInterim) {
    EXPECT_EQ(response_framing(facts(99)).kind, ResponseKind::Final);
    EXPECT_EQ(response_framing(facts(100)).kind, ResponseKind::Interim);
    EXPECT_EQ(response_framing(facts(102)).kind, ResponseKind::Interim);
    EXPECT_EQ(response_framing(facts(199)).kind, ResponseKind::Interim);
    EXPECT_EQ(response_framing(facts(200)).kind, ResponseKind::Final);
}

TEST(ResponseFraming, UnsolicitedSwitchingProtocolsIsRejected) {
    ResponseFacts f = facts(101);
    f.request_upgrade = false;
    expect_framing(response_framing(f), {.kind = ResponseKind::Rejected,
                                         .no_body = false,
                                         .rechunk = false,
                                         .close = false,
                                         .forward = {.status = 101},
                                         .parser_result = 0});
}

TEST(ResponseFraming, SwitchingProtocolsToAnUpgradeRequestStartsATunnel) {
    ResponseFacts f = close_delimited(facts(101));
    f.request_upgrade = true;
    expect_framing(response_framing(f), {.kind = ResponseKind::Upgrade,
                                         .no_body = true,
                                         .rechunk = false,
                                         .close = false,
                                         .forward = {.status = 101,
                                                     .framing = BodyFraming::AsReceived,
                                                     .close = false,
                                                     .keep_alive_10 = false,
                                                     .upgrade = true},
                                         .parser_result = 2});
}

TEST(ResponseFraming, SwitchingProtocolsNeverSendsConnectionClose) {
    // The request did not ask to keep the connection: the exchange still ends with the
    // tunnel, but the 101's head carries "Connection: upgrade", not "close".
    ResponseFacts f = facts(101);
    f.request_upgrade = true;
    f.request_keep_alive = false;
    expect_framing(response_framing(f), {.kind = ResponseKind::Upgrade,
                                         .no_body = true,
                                         .rechunk = false,
                                         .close = true,
                                         .forward = {.status = 101,
                                                     .framing = BodyFraming::AsReceived,
                                                     .close = false,
                                                     .keep_alive_10 = false,
                                                     .upgrade = true},
                                         .parser_result = 2});
}

// A refused upgrade (a final response, not 101) keeps the connection: the client may have
// pipelined another request behind it, and nginx answers that one too.
TEST(ResponseFraming, UpgradeRequestAnsweredWithoutSwitchingProtocolsKeepsTheConnection) {
    ResponseFacts f = facts(200);
    f.request_upgrade = true;
    expect_framing(response_framing(f), {.kind = ResponseKind::Final,
                                         .no_body = false,
                                         .rechunk = false,
                                         .close = false,
                                         .forward = {.status = 200,
                                                     .framing = BodyFraming::AsReceived,
                                                     .close = false,
                                                     .keep_alive_10 = false,
                                                     .upgrade = false},
                                         .parser_result = 0});
}

// --- bodyless responses ---------------------------------------------------------------------

TEST(ResponseFraming, HeadResponseHasNoBodyWhateverItsLength) {
    ResponseFacts f = facts(200);
    f.request_head_method = true;
    expect_framing(response_framing(f), {.kind = ResponseKind::Final,
                                         .no_body = true,
                                         .rechunk = false,
                                         .close = false,
                                         .forward = {.status = 200,
                                                     .framing = BodyFraming::AsReceived,
                                                     .close = false,
                                                     .keep_alive_10 = false,
                                                     .upgrade = false},
                                         .parser_result = 1});
}

TEST(ResponseFraming, HeadResponseAnnouncingChunkedIsNotRechunkedForHttp11) {
    ResponseFacts f = chunked(facts(200));
    f.request_head_method = true;
    expect_framing(response_framing(f),
                   {.kind = ResponseKind::Final,
                    .no_body = true,
                    .rechunk = false,
                    .close = false,
                    .forward = {.status = 200, .framing = BodyFraming::AsReceived, .close = false},
                    .parser_result = 1});
}

TEST(ResponseFraming, HeadResponseWithoutLengthKeepsTheConnection) {
    // No body follows, so nothing is delimited by the close and nothing is chunked.
    ResponseFacts f = close_delimited(facts(200));
    f.request_head_method = true;
    expect_framing(response_framing(f),
                   {.kind = ResponseKind::Final,
                    .no_body = true,
                    .rechunk = false,
                    .close = false,
                    .forward = {.status = 200, .framing = BodyFraming::AsReceived, .close = false},
                    .parser_result = 1});
}

TEST(ResponseFraming, Http10ClientGetsNoChunkedCodingEvenOnABodylessResponse) {
    ResponseFacts f = chunked(http10(facts(200)));
    f.request_head_method = true;
    expect_framing(response_framing(f), {.kind = ResponseKind::Final,
                                         .no_body = true,
                                         .rechunk = false,
                                         .close = false,
                                         .forward = {.status = 200,
                                                     .framing = BodyFraming::RemoveChunked,
                                                     .close = false,
                                                     .keep_alive_10 = true,
                                                     .upgrade = false},
                                         .parser_result = 1});
}

TEST(ResponseFraming, NoContentHasNoBodyAndKeepsTheConnection) {
    expect_framing(response_framing(close_delimited(facts(204))),
                   {.kind = ResponseKind::Final,
                    .no_body = true,
                    .rechunk = false,
                    .close = false,
                    .forward = {.status = 204, .framing = BodyFraming::AsReceived, .close = false},
                    .parser_result = 1});
}

TEST(ResponseFraming, NotModifiedHasNoBodyEvenWithALength) {
    expect_framing(response_framing(facts(304)),
                   {.kind = ResponseKind::Final,
                    .no_body = true,
                    .rechunk = false,
                    .close = false,
                    .forward = {.status = 304, .framing = BodyFraming::AsReceived, .close = false},
                    .parser_result = 1});
}

TEST(ResponseFraming, NotModifiedAnnouncingChunkedIsNotRechunked) {
    expect_framing(response_framing(chunked(facts(304))),
                   {.kind = ResponseKind::Final,
                    .no_body = true,
                    .rechunk = false,
                    .close = false,
                    .forward = {.status = 304, .framing = BodyFraming::AsReceived, .close = false},
                    .parser_result = 1});
}

// --- Content-Length -------------------------------------------------------------------------

TEST(ResponseFraming, ContentLengthIsKeptAndTheConnectionStaysOpen) {
    expect_framing(response_framing(facts(200)), {.kind = ResponseKind::Final,
                                                  .no_body = false,
                                                  .rechunk = false,
                                                  .close = false,
                                                  .forward = {.status = 200,
                                                              .framing = BodyFraming::AsReceived,
                                                              .close = false,
                                                              .keep_alive_10 = false,
                                                              .upgrade = false},
                                                  .parser_result = 0});
}

TEST(ResponseFraming, ContentLengthIsKeptForHttp10AndItsKeepAliveHonoured) {
    expect_framing(response_framing(http10(facts(200))),
                   {.kind = ResponseKind::Final,
                    .no_body = false,
                    .rechunk = false,
                    .close = false,
                    .forward = {.status = 200,
                                .framing = BodyFraming::AsReceived,
                                .close = false,
                                .keep_alive_10 = true,
                                .upgrade = false},
                    .parser_result = 0});
}

TEST(ResponseFraming, Http10ClientWithoutKeepAliveIsClosed) {
    ResponseFacts f = http10(facts(200));
    f.request_keep_alive = false;
    expect_framing(response_framing(f), {.kind = ResponseKind::Final,
                                         .no_body = false,
                                         .rechunk = false,
                                         .close = true,
                                         .forward = {.status = 200,
                                                     .framing = BodyFraming::AsReceived,
                                                     .close = true,
                                                     .keep_alive_10 = false,
                                                     .upgrade = false},
                                         .parser_result = 0});
}

TEST(ResponseFraming, ErrorStatusIsForwardedWithItsFraming) {
    expect_framing(response_framing(facts(503)),
                   {.kind = ResponseKind::Final,
                    .forward = {.status = 503, .framing = BodyFraming::AsReceived}});
}

// --- chunked --------------------------------------------------------------------------------

TEST(ResponseFraming, ChunkedIsRechunkedForHttp11AndKeepsTheConnection) {
    expect_framing(response_framing(chunked(facts(200))),
                   {.kind = ResponseKind::Final,
                    .no_body = false,
                    .rechunk = true,
                    .close = false,
                    .forward = {.status = 200,
                                .framing = BodyFraming::AsReceived,
                                .close = false,
                                .keep_alive_10 = false,
                                .upgrade = false},
                    .parser_result = 0});
}

TEST(ResponseFraming, ChunkedIsDechunkedAndClosedForHttp10) {
    // Even though the HTTP/1.0 client asked for keep-alive: the close ends the bare body.
    expect_framing(response_framing(chunked(http10(facts(200)))),
                   {.kind = ResponseKind::Final,
                    .no_body = false,
                    .rechunk = false,
                    .close = true,
                    .forward = {.status = 200,
                                .framing = BodyFraming::RemoveChunked,
                                .close = true,
                                .keep_alive_10 = false,
                                .upgrade = false},
                    .parser_result = 0});
}

// --- close-delimited ------------------------------------------------------------------------

TEST(ResponseFraming, CloseDelimitedGetsAddChunkedForHttp11AndKeepsTheConnection) {
    expect_framing(response_framing(close_delimited(facts(200))),
                   {.kind = ResponseKind::Final,
                    .no_body = false,
                    .rechunk = true,
                    .close = false,
                    .forward = {.status = 200,
                                .framing = BodyFraming::AddChunked,
                                .close = false,
                                .keep_alive_10 = false,
                                .upgrade = false},
                    .parser_result = 0});
}

TEST(ResponseFraming, CloseDelimitedUnderANonChunkedCodingPassesAsItIsAndCloses) {
    // "Transfer-Encoding: gzip" (or "chunked, gzip"): chunking it again could apply chunked
    // twice, so the body goes as it came, ended by the close.
    ResponseFacts f = close_delimited(facts(200));
    f.transfer_encoding = true;
    expect_framing(response_framing(f), {.kind = ResponseKind::Final,
                                         .no_body = false,
                                         .rechunk = false,
                                         .close = true,
                                         .forward = {.status = 200,
                                                     .framing = BodyFraming::AsReceived,
                                                     .close = true,
                                                     .keep_alive_10 = false,
                                                     .upgrade = false},
                                         .parser_result = 0});
}

TEST(ResponseFraming, CloseDelimitedGoesBareAndClosesForHttp10) {
    expect_framing(response_framing(close_delimited(http10(facts(200)))),
                   {.kind = ResponseKind::Final,
                    .no_body = false,
                    .rechunk = false,
                    .close = true,
                    .forward = {.status = 200,
                                .framing = BodyFraming::AsReceived,
                                .close = true,
                                .keep_alive_10 = false,
                                .upgrade = false},
                    .parser_result = 0});
}

TEST(ResponseFraming, CloseDelimitedUnderANonChunkedCodingGoesAsItIsAndClosesForHttp10) {
    ResponseFacts f = close_delimited(http10(facts(200)));
    f.transfer_encoding = true;
    expect_framing(response_framing(f), {.kind = ResponseKind::Final,
                                         .no_body = false,
                                         .rechunk = false,
                                         .close = true,
                                         .forward = {.status = 200,
                                                     .framing = BodyFraming::AsReceived,
                                                     .close = true,
                                                     .keep_alive_10 = false},
                                         .parser_result = 0});
}

// --- keep-alive versus close ----------------------------------------------------------------

TEST(ResponseFraming, RequestNotAllowingKeepAliveCloses) {
    ResponseFacts f = facts(200);
    f.request_keep_alive = false;
    expect_framing(
        response_framing(f),
        {.kind = ResponseKind::Final, .close = true, .forward = {.status = 200, .close = true}});
}

TEST(ResponseFraming, RequestNotFullyReadCloses) {
    ResponseFacts f = facts(200);
    f.request_done = false;
    expect_framing(
        response_framing(f),
        {.kind = ResponseKind::Final, .close = true, .forward = {.status = 200, .close = true}});
}

TEST(ResponseFraming, DrainingConnectionCloses) {
    ResponseFacts f = facts(200);
    f.closing = true;
    expect_framing(
        response_framing(f),
        {.kind = ResponseKind::Final, .close = true, .forward = {.status = 200, .close = true}});
}

TEST(ResponseFraming, DrainingConnectionClosesEvenAfterABodylessResponse) {
    ResponseFacts f = facts(204);
    f.closing = true;
    expect_framing(response_framing(f), {.kind = ResponseKind::Final,
                                         .no_body = true,
                                         .close = true,
                                         .forward = {.status = 204, .close = true},
                                         .parser_result = 1});
}

TEST(ResponseFraming, Http10KeepAliveIsNotAnnouncedWhenTheConnectionCloses) {
    ResponseFacts f = http10(facts(200));
    f.closing = true;
    expect_framing(response_framing(f),
                   {.kind = ResponseKind::Final,
                    .close = true,
                    .forward = {.status = 200, .close = true, .keep_alive_10 = false}});
}

TEST(ResponseFraming, Http10RequestNotFullyReadIsClosedWithoutKeepAlive) {
    ResponseFacts f = http10(facts(200));
    f.request_done = false;
    expect_framing(response_framing(f),
                   {.kind = ResponseKind::Final,
                    .close = true,
                    .forward = {.status = 200, .close = true, .keep_alive_10 = false}});
}
