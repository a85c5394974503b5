// What `liege status` and `liege top` print, from a /status document: pure formatting.
#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "liege/status_table.hpp"

using liege::format_bytes;
using liege::format_rate;
using liege::format_status;
using liege::format_uptime;
using liege::format_vassal_table;
using liege::TableStyle;
using nlohmann::json;

namespace {

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        out.push_back(line);
    }
    return out;
}

json sample_status() {
    return json::parse(R"({
        "emperor": {"pid": 100, "uptime_seconds": 3725, "admin": "unix:./liege.sock",
                    "rss_bytes": 6291456},
        "router": {"pid": 101, "connections": 4, "requests": 1234, "requests_per_second": 56.25,
                   "thread_requests": [600, 634], "thread_requests_per_second": [28, 28.25]},
        "vassals": [
            {"name": "hello", "state": "running", "generation": 3, "workers_ready": 2,
             "workers_total": 2, "queued": 3, "requests": 1200, "requests_per_second": 55.5,
             "errors": 0,
             "restarts": 0, "rss_bytes": 31457280, "uptime_seconds": 3700,
             "scale": {"workers": 2, "min": 1, "max": 4}, "last_error": null, "workers": []},
            {"name": "static-files", "state": "failed", "generation": 1, "workers_ready": 0,
             "workers_total": 1, "requests": 34, "requests_per_second": 0, "errors": 34,
             "restarts": 7, "rss_bytes": 0, "uptime_seconds": 59,
             "last_error": "worker 1 exited: exit code 3", "last_error_time": 1000,
             "workers": []}
        ]
    })");
}

} // namespace

TEST(StatusTable, Units) {
    EXPECT_EQ(format_bytes(-1), "-");
    EXPECT_EQ(format_bytes(0), "0 B");
    EXPECT_EQ(format_bytes(1023), "1023 B");
    EXPECT_EQ(format_bytes(1536), "1.5 KiB");
    EXPECT_EQ(format_bytes(31457280), "30.0 MiB");
    EXPECT_EQ(format_bytes(int64_t{3} << 30), "3.0 GiB");
    EXPECT_EQ(format_uptime(0), "0s");
    EXPECT_EQ(format_uptime(59), "59s");
    EXPECT_EQ(format_uptime(60), "1m00s");
    EXPECT_EQ(format_uptime(3725), "1h02m");
    EXPECT_EQ(format_uptime(90000), "1d01h");
    EXPECT_EQ(format_rate(0), "0");
    EXPECT_EQ(format_rate(0.25), "0.2");
    EXPECT_EQ(format_rate(2.0), "2");
    EXPECT_EQ(format_rate(55.5), "55.5");
    EXPECT_EQ(format_rate(1234.4), "1234");
}

TEST(StatusTable, OneAlignedRowPerVassal) {
    auto lines = lines_of(format_vassal_table(sample_status(), {}));
    ASSERT_EQ(lines.size(), 3u);
    EXPECT_EQ(lines[0], "VASSAL        STATE    GEN  WORKERS  REQUESTS  REQ/S  ERRORS  RESTARTS"
                        "  QUEUED       RSS  UPTIME  SCALE");
    EXPECT_EQ(lines[1], "hello         running    3      2/2      1200   55.5       0         0"
                        "       3  30.0 MiB   1h01m    1-4");
    // A vassal without "queued" or "scale" (from an older emperor) shows 0 and "-".
    EXPECT_EQ(lines[2], "static-files  failed     1      0/1        34      0      34         7"
                        "       0       0 B     59s      -");
    // Every line is as wide as the header: the columns line up.
    for (const auto& l : lines) {
        EXPECT_EQ(l.size(), lines[0].size()) << l;
    }
}

TEST(StatusTable, NoColourUnlessAsked) {
    std::string plain = format_status(sample_status(), {});
    EXPECT_EQ(plain.find('\033'), std::string::npos);
    std::string coloured = format_status(sample_status(), {true, 0});
    EXPECT_NE(coloured.find("\033[32mrunning\033[0m"), std::string::npos);
    EXPECT_NE(coloured.find("\033[31mfailed\033[0m"), std::string::npos);
    EXPECT_NE(coloured.find("\033[31m34\033[0m"), std::string::npos) << "errors in red";
    EXPECT_NE(coloured.find("\033[33m3\033[0m"), std::string::npos) << "a queue in yellow";
}

TEST(StatusTable, ColourDoesNotShiftColumns) {
    auto strip = [](const std::string& s) {
        std::string out;
        for (size_t i = 0; i < s.size(); ++i) {
            if (s[i] == '\033') {
                i = s.find('m', i);
                continue;
            }
            out += s[i];
        }
        return out;
    };
    EXPECT_EQ(strip(format_vassal_table(sample_status(), {true, 0})),
              format_vassal_table(sample_status(), {}));
}

TEST(StatusTable, SummaryAndLastErrors) {
    auto lines = lines_of(format_status(sample_status(), {false, 1000 + 125}));
    ASSERT_GE(lines.size(), 8u);
    EXPECT_EQ(lines[0],
              "emperor pid 100, up 1h02m, 2 vassal(s), RSS 6.0 MiB, admin unix:./liege.sock");
    EXPECT_EQ(lines[1], "router pid 101, 4 connection(s), 1234 request(s), 56.2 req/s, per "
                        "thread: 600 (28/s) 634 (28.2/s)");
    EXPECT_EQ(lines.back(), "static-files: last error (2m05s ago): worker 1 exited: exit code 3");
}

TEST(StatusTable, ToleratesMissingFieldsAndNoVassals) {
    auto lines = lines_of(format_status(json::parse(R"({"vassals": []})"), {}));
    EXPECT_EQ(lines.back(), "(no vassals)");
    // An older emperor without the derived fields: counted from the workers.
    json partial = json::parse(R"({"vassals": [{"name": "a", "state": "running",
        "workers": [{"state": "ready"}, {"state": "starting"}], "requests": null}]})");
    auto rows = lines_of(format_vassal_table(partial, {}));
    ASSERT_EQ(rows.size(), 2u);
    EXPECT_NE(rows[1].find("1/2"), std::string::npos) << rows[1];
    EXPECT_NE(rows[1].find(" - "), std::string::npos) << "unknown RSS: " << rows[1];
}

TEST(StatusTable, AResolvedErrorIsNotShownAsCurrent) {
    json s = sample_status();
    json& v = s["vassals"][1];
    v["last_error_resolved"] = true;
    v["last_error_resolved_time"] = 1000 + 60;
    auto lines = lines_of(format_status(s, {false, 1000 + 125}));
    EXPECT_EQ(lines.back(), "static-files: resolved error (2m05s ago, resolved 1m05s ago): worker "
                            "1 exited: exit code 3");
    std::string coloured = format_status(s, {true, 1000 + 125});
    EXPECT_EQ(coloured.find("\033[31mstatic-files"), std::string::npos) << "not red: " << coloured;
    EXPECT_NE(coloured.find("\033[2mstatic-files: resolved error"), std::string::npos) << coloured;
    // Without a clock, no ages.
    EXPECT_EQ(lines_of(format_status(s, {})).back(),
              "static-files: resolved error: worker 1 exited: exit code 3");
}

TEST(StatusTable, AFailedVassalShowsItsWorkersLastOutput) {
    json s = sample_status();
    s["vassals"][1]["last_output"] = {"[static-files/1] Traceback (most recent call last):",
                                      "[static-files/1] OSError: [Errno 98] Address in use\033[2J"};
    auto lines = lines_of(format_status(s, {false, 1000 + 125}));
    ASSERT_GE(lines.size(), 3u);
    EXPECT_EQ(lines[lines.size() - 3],
              "static-files: last error (2m05s ago): worker 1 exited: exit code 3");
    EXPECT_EQ(lines[lines.size() - 2], "  [static-files/1] Traceback (most recent call last):");
    EXPECT_EQ(lines.back(), "  [static-files/1] OSError: [Errno 98] Address in use?[2J")
        << "no escape sequence reaches the terminal";
}
