#include <gtest/gtest.h>

#include <string>

#include "liege/http_head.hpp"

using namespace liege::http;

namespace {

HeadCollector request(std::string_view method, std::string_view url,
                      std::initializer_list<std::pair<std::string_view, std::string_view>> hs) {
    HeadCollector h;
    h.add_method(method);
    h.add_url(url);
    for (auto& [n, v] : hs) {
        h.add_field(n);
        h.add_value(v);
    }
    return h;
}

std::string rewrite(const HeadCollector& h, RequestForward fwd = {.client_ip = "10.0.0.9"}) {
    char buf[4096];
    size_t n = write_request_head(h, fwd, buf, sizeof(buf));
    return std::string(buf, n);
}

HeadCollector response(std::initializer_list<std::pair<std::string_view, std::string_view>> hs) {
    HeadCollector h;
    for (auto& [n, v] : hs) {
        h.add_field(n);
        h.add_value(v);
    }
    return h;
}

std::string forward(const HeadCollector& h, const ResponseForward& fwd) {
    char buf[1024];
    return std::string(buf, write_response_head(h, fwd, buf, sizeof(buf)));
}

} // namespace

TEST(HeadCollector, JoinsPiecesSplitAcrossReads) {
    HeadCollector h;
    h.add_method("GE");
    h.add_method("T");
    h.add_url("/a");
    h.add_url("/b");
    h.add_field("Ho");
    h.add_field("st");
    h.add_value("exa");
    h.add_value("mple.com");
    h.add_field("Accept");
    h.add_value("*/*");
    EXPECT_EQ(h.method(), "GET");
    EXPECT_EQ(h.url(), "/a/b");
    ASSERT_EQ(h.header_count(), 2u);
    EXPECT_EQ(h.name(0), "Host");
    EXPECT_EQ(h.value(0), "example.com");
    EXPECT_EQ(h.find("host"), "example.com");
    EXPECT_EQ(h.find("ACCEPT"), "*/*");
    bool found = true;
    h.find("missing", &found);
    EXPECT_FALSE(found);
}

TEST(HeadCollector, ResetKeepsNothingOfThePreviousHead) {
    HeadCollector h = request("GET", "/", {{"Host", "a"}});
    h.reset();
    EXPECT_EQ(h.size(), 0u);
    EXPECT_EQ(h.header_count(), 0u);
    EXPECT_EQ(h.url(), "");
}

TEST(RequestHead, AddsForwardedHeadersAndKeepsHost) {
    auto out = rewrite(request("GET", "/x?y=1", {{"Host", "app.test:8080"}, {"Accept", "*/*"}}));
    EXPECT_EQ(out, "GET /x?y=1 HTTP/1.1\r\n"
                   "Host: app.test:8080\r\n"
                   "Accept: */*\r\n"
                   "X-Forwarded-For: 10.0.0.9\r\n"
                   "X-Forwarded-Proto: http\r\n"
                   "X-Forwarded-Host: app.test:8080\r\n"
                   "\r\n");
}

TEST(RequestHead, AppendsToATrustedProxysForwardedFor) {
    auto out = rewrite(request("GET", "/",
                               {{"Host", "a"},
                                {"X-Forwarded-For", "1.1.1.1"},
                                {"X-Forwarded-For", "2.2.2.2, 3.3.3.3"}}),
                       {.client_ip = "10.0.0.9", .trusted = true});
    EXPECT_NE(out.find("X-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9\r\n"),
              std::string::npos);
    EXPECT_EQ(out.find("X-Forwarded-For", out.find("X-Forwarded-For") + 1), std::string::npos)
        << "one combined header";
}

TEST(RequestHead, ReplacesAnUntrustedPeersForwardedFor) {
    auto out = rewrite(request(
        "GET", "/",
        {{"Host", "a"}, {"X-Forwarded-For", "1.1.1.1"}, {"X-Forwarded-For", "2.2.2.2, 3.3.3.3"}}));
    EXPECT_NE(out.find("X-Forwarded-For: 10.0.0.9\r\n"), std::string::npos) << out;
    EXPECT_EQ(out.find("1.1.1.1"), std::string::npos) << out;
    EXPECT_EQ(out.find("X-Forwarded-For", out.find("X-Forwarded-For") + 1), std::string::npos);
}

TEST(RequestHead, ReplacesClientSuppliedProtoAndHost) {
    auto out = rewrite(request(
        "GET", "/", {{"Host", "a"}, {"X-Forwarded-Proto", "https"}, {"X-Forwarded-Host", "evil"}}));
    EXPECT_EQ(out.find("https"), std::string::npos);
    EXPECT_EQ(out.find("evil"), std::string::npos);
    EXPECT_NE(out.find("X-Forwarded-Proto: http\r\n"), std::string::npos);
}

TEST(RequestHead, KeepsATrustedProxysProtoAndHost) {
    auto out = rewrite(request("GET", "/",
                               {{"Host", "a"},
                                {"X-Forwarded-Proto", "https"},
                                {"X-Forwarded-Proto", "http"},
                                {"X-Forwarded-Host", "shop.test"}}),
                       {.client_ip = "10.0.0.9", .trusted = true});
    EXPECT_NE(out.find("X-Forwarded-Proto: https\r\n"), std::string::npos) << out;
    EXPECT_EQ(out.find("X-Forwarded-Proto: http\r\n"), std::string::npos) << "the first one wins";
    EXPECT_NE(out.find("X-Forwarded-Host: shop.test\r\n"), std::string::npos) << out;
    EXPECT_EQ(out.find("X-Forwarded-Host: a\r\n"), std::string::npos) << out;
}

TEST(RequestHead, SaysHttpsForATlsClient) {
    auto out = rewrite(request("GET", "/", {{"Host", "a"}, {"X-Forwarded-Proto", "http"}}),
                       {.client_ip = "10.0.0.9", .proto = "https"});
    EXPECT_NE(out.find("X-Forwarded-Proto: https\r\n"), std::string::npos) << out;
    EXPECT_EQ(out.find("X-Forwarded-Proto: http\r\n"), std::string::npos) << out;
}

TEST(RequestHead, StripsHopByHopHeaders) {
    auto out = rewrite(request("GET", "/",
                               {{"Host", "a"},
                                {"Connection", "keep-alive, X-Secret"},
                                {"X-Secret", "1"},
                                {"Keep-Alive", "timeout=5"},
                                {"TE", "trailers"},
                                {"Trailer", "X-T"},
                                {"Proxy-Authorization", "Basic x"},
                                {"Proxy-Connection", "keep-alive"},
                                {"Upgrade", "h2c"},
                                {"X-Kept", "yes"}}));
    for (const char* gone :
         {"Connection", "X-Secret", "Keep-Alive", "TE:", "Trailer", "Proxy-", "Upgrade"}) {
        EXPECT_EQ(out.find(gone), std::string::npos) << gone << " in\n" << out;
    }
    EXPECT_NE(out.find("X-Kept: yes\r\n"), std::string::npos);
}

TEST(RequestHead, HopByHopNamesMatchInAnyCase) {
    auto out = rewrite(request("GET", "/",
                               {{"Host", "a"},
                                {"PROXY-AUTHORIZATION", "Basic x"},
                                {"proxy-x", "1"},
                                {"CONNECTION", "x-gone"},
                                {"X-GONE", "1"},
                                {"te", "trailers"},
                                {"Proxy", "kept: not a Proxy-* name"}}));
    for (const char* gone : {"PROXY-", "proxy-", "CONNECTION", "X-GONE", "te:"}) {
        EXPECT_EQ(out.find(gone), std::string::npos) << gone << " in\n" << out;
    }
    EXPECT_NE(out.find("Proxy: kept"), std::string::npos) << out;
}

TEST(RequestHead, ConnectionCannotStripFramingOrHost) {
    auto out = rewrite(
        request("POST", "/",
                {{"Host", "a"}, {"Connection", "Content-Length, Host"}, {"Content-Length", "3"}}));
    EXPECT_NE(out.find("Content-Length: 3\r\n"), std::string::npos);
    EXPECT_NE(out.find("Host: a\r\n"), std::string::npos);
}

TEST(RequestHead, KeepsUpgradeWhenTunnelling) {
    RequestForward fwd{.client_ip = "10.0.0.9", .upgrade = true};
    auto out = rewrite(
        request("GET", "/ws", {{"Host", "a"}, {"Connection", "Upgrade"}, {"Upgrade", "websocket"}}),
        fwd);
    EXPECT_NE(out.find("Upgrade: websocket\r\n"), std::string::npos);
    EXPECT_NE(out.find("Connection: upgrade\r\n"), std::string::npos);
}

TEST(RequestHead, AddsEmptyHostWhenMissing) {
    auto out = rewrite(request("GET", "/", {}));
    EXPECT_NE(out.find("Host: \r\n"), std::string::npos);
    EXPECT_EQ(out.find("X-Forwarded-Host"), std::string::npos);
}

TEST(RequestHead, ReportsOverflowAsZero) {
    HeadCollector h = request("GET", "/", {{"Host", "a"}, {"X-Big", std::string(200, 'x')}});
    char buf[64];
    EXPECT_EQ(write_request_head(h, {.client_ip = "1.2.3.4"}, buf, sizeof(buf)), 0u);
}

TEST(ResponseHead, StripsHopByHopAndSetsConnection) {
    HeadCollector h;
    h.add_reason("OK");
    for (auto [n, v] : {std::pair{"Content-Length", "2"},
                        {"Connection", "keep-alive"},
                        {"Keep-Alive", "timeout=5"},
                        {"Server", "app"}}) {
        h.add_field(n);
        h.add_value(v);
    }
    char buf[1024];
    ResponseForward fwd{.status = 200, .close = true};
    std::string out(buf, write_response_head(h, fwd, buf, sizeof(buf)));
    EXPECT_EQ(out,
              "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: app\r\nConnection: close\r\n\r\n");
}

TEST(ResponseHead, ReframesCloseDelimitedBodyAsChunked) {
    auto h = response({{"Content-Type", "text/plain"}});
    EXPECT_EQ(forward(h, {.status = 404, .framing = BodyFraming::AddChunked}),
              "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
              "Transfer-Encoding: chunked\r\n\r\n");
}

TEST(ResponseHead, KeepAliveForHttp10Client) {
    HeadCollector h;
    char buf[256];
    ResponseForward fwd{.status = 204, .keep_alive_10 = true};
    std::string out(buf, write_response_head(h, fwd, buf, sizeof(buf)));
    EXPECT_NE(out.find("Connection: keep-alive\r\n"), std::string::npos);
}

TEST(Methods, IdempotentOnesMayBeRetried) {
    for (auto m : {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}) {
        EXPECT_TRUE(is_idempotent(m)) << m;
    }
    for (auto m : {"POST", "PATCH", "CONNECT"}) {
        EXPECT_FALSE(is_idempotent(m)) << m;
    }
}

TEST(ResponseHead, AppendsChunkedToTheBackendsCodings) {
    auto h = response({{"Transfer-Encoding", "gzip"}});
    EXPECT_EQ(forward(h, {.status = 200, .framing = BodyFraming::AddChunked}),
              "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
}

TEST(ResponseHead, RemovesChunkedForAnHttp10Client) {
    const ResponseForward fwd{.status = 200, .framing = BodyFraming::RemoveChunked, .close = true};
    EXPECT_EQ(forward(response({{"Transfer-Encoding", "chunked"}, {"X-App", "1"}}), fwd),
              "HTTP/1.1 200 OK\r\nX-App: 1\r\nConnection: close\r\n\r\n");
    // Other codings stay, over any number of Transfer-Encoding lines.
    EXPECT_EQ(
        forward(response({{"Transfer-Encoding", "gzip"}, {"transfer-encoding", " chunked"}}), fwd),
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n");
}

TEST(RequestTarget, OriginFormGoesByHostAbsoluteFormByItsAuthority) {
    struct Case {
        std::string_view url;
        bool valid, absolute;
        std::string_view host, path;
        bool slash_before;
    };
    const Case cases[] = {
        {"/api/x?q=1", true, false, "app.test", "/api/x?q=1", false},
        {"*", true, false, "app.test", "*", false},
        {"http://Api.Test:8080/v1/x?q=1", true, true, "Api.Test:8080", "/v1/x?q=1", false},
        {"HTTPS://a.test", true, true, "a.test", "", true},
        {"http://a.test?q", true, true, "a.test", "?q", true},
        {"http:///x", false, true, "", "/x", false},
        {"http://u@/x", false, true, "u@", "/x", false},
    };
    for (const Case& c : cases) {
        const RequestTarget t = request_target(c.url, "app.test", c.url == "*" ? "OPTIONS" : "GET");
        EXPECT_EQ(t.valid, c.valid) << c.url;
        EXPECT_EQ(t.absolute, c.absolute) << c.url;
        EXPECT_EQ(t.host, c.host) << c.url;
        EXPECT_EQ(t.path, c.path) << c.url;
        EXPECT_EQ(t.slash_before, c.slash_before) << c.url;
    }
}

TEST(RequestTarget, OtherSchemesUserinfoAndStrayFormsAreRefused) {
    struct Case {
        std::string_view url, method;
    };
    const Case refused[] = {
        {"ftp://app.test/x", "GET"},         // a scheme nobody here serves
        {"http://user:pw@app.test/", "GET"}, // userinfo (RFC 9110 4.2.4)
        {"http://u@app.test", "GET"},
        {"http://app test/", "GET"}, // not a host
        {"http://app.test:80x/", "GET"},
        {"*", "GET"},            // asterisk-form is OPTIONS's alone
        {"app.test:443", "GET"}, // authority-form outside CONNECT
        {"x/y", "GET"},
        {"", "GET"},
    };
    for (const Case& c : refused) {
        const RequestTarget t = request_target(c.url, "app.test", c.method);
        EXPECT_FALSE(t.valid) << c.url;
        EXPECT_NE(t.error, nullptr) << c.url;
    }
    EXPECT_TRUE(request_target("*", "app.test", "OPTIONS").valid);
    EXPECT_TRUE(request_target("/a?b=http://c", "app.test", "GET").valid);
}

TEST(FieldName, OnlyTokensAreNames) {
    for (std::string_view ok : {"Host", "x-a", "X_Y", "a!#$%&'*+-.^_`|~9"}) {
        EXPECT_TRUE(valid_field_name(ok)) << ok;
    }
    for (std::string_view bad : {"", "Transfer Encoding", "a:b", "a\tb", "a\"b", "a(b", "a/b",
                                 "a\x7f", "\xc3\xa9", "a@b"}) {
        EXPECT_FALSE(valid_field_name(bad)) << bad;
    }
}

TEST(HostValue, RegNamesAndIpLiteralsWithAnOptionalPort) {
    for (std::string_view ok : {"h", "app.test", "app.test:8080", "127.0.0.1:1", "[::1]",
                                "[::1]:8080", "a-b_c~d", "%41pp", "h:", "h:65535"}) {
        EXPECT_TRUE(valid_host(ok)) << ok;
    }
    using namespace std::string_view_literals;
    for (std::string_view bad :
         {""sv,     "h evil"sv, "h/evil"sv,  "h\tevil"sv,  "u@h"sv,     "h?q"sv,  "h#f"sv,
          "h\\x"sv, ":80"sv,    "h:80:81"sv, "h:123456"sv, "h:65536"sv, "h:8o"sv, "[::1"sv,
          "[]"sv,   "[::1]x"sv, "[::g]"sv,   "%4"sv,       "%zz"sv,     "h\0"sv,  "\xc3\xa9"sv}) {
        EXPECT_FALSE(valid_host(bad)) << bad;
    }
}

TEST(RequestHeaders, InvalidNamesAndUnderscoredFramingAliasesAreProblems) {
    EXPECT_EQ(scan_request_headers(request("GET", "/", {{"Host", "h"}, {"X-A", "1"}})).problem,
              nullptr);
    EXPECT_NE(scan_request_headers(request("GET", "/", {{"", "x"}})).problem, nullptr);
    EXPECT_NE(scan_request_headers(request("GET", "/", {{"Transfer Encoding", "chunked"}})).problem,
              nullptr);
    for (std::string_view alias : {"Transfer_Encoding", "content_length", "HOST_", "_host",
                                   "X_Forwarded_For", "x-forwarded_proto", "Connection_"}) {
        // "HOST_" and "_host" are no aliases, but still underscored: dropped, not refused.
        const auto r = scan_request_headers(request("GET", "/", {{alias, "x"}}));
        EXPECT_TRUE(r.underscores) << alias;
        const bool alias_of_guarded = alias.front() != '_' && alias.back() != '_';
        EXPECT_EQ(r.problem != nullptr, alias_of_guarded) << alias;
    }
    const auto plain = scan_request_headers(request("GET", "/", {{"X_Api_Key", "k"}}));
    EXPECT_EQ(plain.problem, nullptr);
    EXPECT_TRUE(plain.underscores);
}

TEST(RequestRefusal, TransferEncodingIsChunkedAloneOrRefused) {
    const RequestTarget t = request_target("/", "h");
    const auto verdict =
        [&](std::initializer_list<std::pair<std::string_view, std::string_view>> hs, bool chunked) {
            const HeadCollector head = request("POST", "/", hs);
            return refuse_request(scan_request_headers(head), t, {"POST", 1, 1, chunked}).status;
        };
    EXPECT_EQ(verdict({{"Host", "h"}, {"Transfer-Encoding", "chunked"}}, true), 0);
    EXPECT_EQ(verdict({{"Host", "h"}, {"Transfer-Encoding", " CHUNKED "}}, true), 0);
    EXPECT_EQ(verdict({{"Host", "h"}, {"Transfer-Encoding", "gzip, chunked"}}, true), 501);
    EXPECT_EQ(
        verdict({{"Host", "h"}, {"Transfer-Encoding", "chunked"}, {"Transfer-Encoding", "chunked"}},
                true),
        400);
    EXPECT_EQ(verdict({{"Host", "h"}, {"Transfer-Encoding", ""}}, false), 400);
    EXPECT_EQ(verdict({{"Host", "h"}}, false), 0);
    EXPECT_EQ(verdict({}, false), 400); // no Host in HTTP/1.1
}

TEST(RequestRefusal, ConnectGets405OtherVersions505) {
    const HeadCollector head = request("TRACE", "/", {{"Host", "h"}});
    const RequestHeaders h = scan_request_headers(head);
    const RequestTarget t = request_target("/", h.host);
    EXPECT_EQ(refuse_request(h, t, {"TRACE", 1, 1, false}).status, 0)
        << "TRACE is refused after routing, unless the vassal allows it";
    EXPECT_EQ(refuse_request(h, t, {"CONNECT", 1, 1, false}).status, 405);
    EXPECT_EQ(refuse_request(h, t, {"GET", 2, 0, false}).status, 505);
    EXPECT_EQ(refuse_request(h, t, {"GET", 0, 9, false}).status, 400);
    EXPECT_EQ(refuse_request(h, t, {"GET", 1, 0, false}).status, 0);
}

TEST(RequestHead, UnderscoredHeadersAreNotForwarded) {
    HeadCollector h = request("GET", "/", {{"Host", "h"}, {"X_Api_Key", "k"}, {"X-Api-Key", "d"}});
    const std::string out = rewrite(h, {.client_ip = "10.0.0.9", .drop_underscores = true});
    EXPECT_EQ(out.find("X_Api_Key"), std::string::npos) << out;
    EXPECT_NE(out.find("X-Api-Key: d\r\n"), std::string::npos) << out;
}

TEST(RequestHead, AbsoluteFormIsForwardedInOriginFormWithItsHost) {
    HeadCollector h = request("GET", "http://api.test/v1?q", {{"Host", "wrong.test"}});
    auto t = request_target(h.url(), h.find("host"));
    auto out = rewrite(h, {.client_ip = "10.0.0.9", .target = &t});
    EXPECT_EQ(out.rfind("GET /v1?q HTTP/1.1\r\nHost: api.test\r\n", 0), 0u) << out;
    EXPECT_NE(out.find("X-Forwarded-Host: api.test\r\n"), std::string::npos) << out;
    EXPECT_EQ(out.find("wrong.test"), std::string::npos) << out;

    HeadCollector options = request("OPTIONS", "http://api.test", {});
    t = request_target(options.url(), {});
    out = rewrite(options, {.client_ip = "10.0.0.9", .target = &t});
    EXPECT_EQ(out.rfind("OPTIONS * HTTP/1.1\r\nHost: api.test\r\n", 0), 0u) << out;

    HeadCollector bare = request("GET", "http://api.test", {});
    t = request_target(bare.url(), {});
    out = rewrite(bare, {.client_ip = "10.0.0.9", .target = &t});
    EXPECT_EQ(out.rfind("GET / HTTP/1.1\r\n", 0), 0u) << out;
    EXPECT_NE(out.find("Host: api.test\r\n"), std::string::npos) << out;
}

TEST(RequestHeaders, OnePassFindsHostsAndTransferEncoding) {
    const HeadCollector two = request("GET", "/", {{"Host", "a.test"}, {"hOST", "b.test"}});
    auto r = scan_request_headers(two); // views into `two`
    EXPECT_EQ(r.host, "a.test");
    EXPECT_EQ(r.hosts, 2u);
    EXPECT_FALSE(r.transfer_encoding);
    r = scan_request_headers(request("POST", "/", {{"Transfer-Encoding", ""}}));
    EXPECT_EQ(r.hosts, 0u);
    EXPECT_TRUE(r.transfer_encoding);
    EXPECT_TRUE(r.referer.empty());
    EXPECT_TRUE(r.user_agent.empty());
}

TEST(RequestHeaders, TheSamePassFindsTheFirstRefererAndUserAgent) {
    const HeadCollector head = request("GET", "/",
                                       {{"User-Agent", "curl/8"},
                                        {"referer", "http://a.test/"},
                                        {"Referer", "http://b.test/"},
                                        {"user-agent", "wget"}});
    const auto r = scan_request_headers(head);
    EXPECT_EQ(r.referer, "http://a.test/");
    EXPECT_EQ(r.user_agent, "curl/8");
}

TEST(KeepAlive, TheAnnouncedTimeoutIsReadInMilliseconds) {
    using liege::http::keep_alive_timeout_ms;
    EXPECT_EQ(keep_alive_timeout_ms("timeout=5"), 5000);
    EXPECT_EQ(keep_alive_timeout_ms("timeout=5, max=100"), 5000);
    EXPECT_EQ(keep_alive_timeout_ms("max=100, Timeout = 2"), 2000);
    EXPECT_EQ(keep_alive_timeout_ms("timeout=0"), 0);
    EXPECT_EQ(keep_alive_timeout_ms("max=100"), -1);
    EXPECT_EQ(keep_alive_timeout_ms(""), -1);
    EXPECT_EQ(keep_alive_timeout_ms("timeout="), -1);
    EXPECT_EQ(keep_alive_timeout_ms("timeout=5s"), -1);
    EXPECT_EQ(keep_alive_timeout_ms("timeout=-1"), -1);
    EXPECT_EQ(keep_alive_timeout_ms("timeout=99999999999999999999"), -1);
}
