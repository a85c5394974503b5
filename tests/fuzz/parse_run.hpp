// What the fuzz targets share: llhttp run over an input the way the router runs it (the strict
// build, pieces of any size, a pause after each message), collecting the head as the router's
// HeadCollector does and the body as it arrives.
#pragma once

#include <llhttp.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "liege/http_head.hpp"

namespace liege::fuzz {

struct ParseRun {
    llhttp_t parser{};
    llhttp_settings_t settings{};
    http::HeadCollector head;
    std::string body;
    bool headers_done = false;
    bool message_done = false;
    bool response = false;
    int headers_rc = 0; // what on_headers_complete returns (1: no body, as for HEAD)

    explicit ParseRun(llhttp_type_t type) {
        response = type == HTTP_RESPONSE;
        llhttp_settings_init(&settings);
        settings.on_method = [](llhttp_t* p, const char* at, size_t n) {
            self(p)->head.add_method({at, n});
            return 0;
        };
        settings.on_url = [](llhttp_t* p, const char* at, size_t n) {
            self(p)->head.add_url({at, n});
            return 0;
        };
        settings.on_status = [](llhttp_t* p, const char* at, size_t n) {
            self(p)->head.add_reason({at, n});
            return 0;
        };
        settings.on_header_field = [](llhttp_t* p, const char* at, size_t n) {
            if (!self(p)->headers_done) {
                self(p)->head.add_field({at, n});
            }
            return 0;
        };
        settings.on_header_value = [](llhttp_t* p, const char* at, size_t n) {
            if (!self(p)->headers_done) {
                self(p)->head.add_value({at, n});
            }
            return 0;
        };
        settings.on_headers_complete = [](llhttp_t* p) {
            self(p)->headers_done = true;
            return self(p)->headers_rc;
        };
        settings.on_body = [](llhttp_t* p, const char* at, size_t n) {
            self(p)->body.append(at, n);
            return 0;
        };
        settings.on_message_complete = [](llhttp_t* p) {
            self(p)->message_done = true;
            return static_cast<int>(HPE_PAUSED);
        };
        llhttp_init(&parser, type, &settings);
        parser.data = this;
    }
    ParseRun(const ParseRun&) = delete;
    ParseRun& operator=(const ParseRun&) = delete;

    static ParseRun* self(llhttp_t* p) { return static_cast<ParseRun*>(p->data); }

    // Feeds `in` in two pieces split at `split`; stops at the end of the first message. Returns
    // llhttp's verdict: HPE_OK (more wanted), HPE_PAUSED (a whole message) or an error.
    llhttp_errno_t run(std::string_view in, size_t split) {
        split = split > in.size() ? in.size() : split;
        llhttp_errno_t err = llhttp_execute(&parser, in.data(), split);
        if (err == HPE_OK && split < in.size()) {
            err = llhttp_execute(&parser, in.data() + split, in.size() - split);
        }
        return err;
    }
};

// The fuzzer found a property broken: abort, so libFuzzer keeps the input.
[[noreturn]] inline void broken(const char* what) {
    std::fprintf(stderr, "property broken: %s\n", what);
    std::abort();
}

inline void check(bool ok, const char* what) {
    if (!ok) {
        broken(what);
    }
}

// Parses `in` with `whole` fed at once and `pieces` fed split at `split`; aborts unless both read
// it alike (the verdict; and the head and body unless it is an error). Returns the verdict.
inline llhttp_errno_t parse_split(ParseRun& whole, ParseRun& pieces, std::string_view in,
                                  size_t split) {
    const llhttp_errno_t a = whole.run(in, in.size());
    check(a == pieces.run(in, split), "the split changed llhttp's verdict");
    if (a != HPE_OK && a != HPE_PAUSED) {
        return a; // spans cut by a piece's end were reported before the error; nothing goes on
    }
    check(whole.body == pieces.body, "the split changed the body");
    check(whole.headers_done == pieces.headers_done, "the split changed where the head ends");
    check(whole.head.header_count() == pieces.head.header_count(), "the split changed the head");
    for (size_t i = 0; i < whole.head.header_count(); ++i) {
        check(whole.head.name(i) == pieces.head.name(i) &&
                  whole.head.value(i) == pieces.head.value(i),
              "the split changed a header");
    }
    return a;
}

} // namespace liege::fuzz
