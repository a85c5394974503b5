// The health probe's reading of an HTTP status line.
#include <gtest/gtest.h>

#include <string>

#include "liege/health.hpp"

TEST(HttpStatusLine, ParsesTheStatus) {
    EXPECT_EQ(liege::parse_http_status_line("HTTP/1.1 200 OK\r\n"), 200);
    EXPECT_EQ(liege::parse_http_status_line("HTTP/1.0 503 Service Unavailable\r\nX: y\r\n"), 503);
    EXPECT_EQ(liege::parse_http_status_line("HTTP/1.1 204\r\n"), 204);
    EXPECT_EQ(liege::parse_http_status_line("HTTP/1.1 302 Found\n"), 302);
}

TEST(HttpStatusLine, AsksForMoreUntilTheLineIsComplete) {
    EXPECT_EQ(liege::parse_http_status_line(""), 0);
    EXPECT_EQ(liege::parse_http_status_line("HTT"), 0);
    EXPECT_EQ(liege::parse_http_status_line("HTTP/1.1 200 O"), 0);
}

TEST(HttpStatusLine, RejectsWhatIsNotHttp1) {
    EXPECT_EQ(liege::parse_http_status_line("SSH-2.0-OpenSSH\r\n"), -1);
    EXPECT_EQ(liege::parse_http_status_line("HTTP/2 200\r\n"), -1);
    EXPECT_EQ(liege::parse_http_status_line("HTTP/1.1 20 OK\r\n"), -1);
    EXPECT_EQ(liege::parse_http_status_line("HTTP/1.1 2000 OK\r\n"), -1);
    EXPECT_EQ(liege::parse_http_status_line("HTTP/1.1 099 Low\r\n"), -1);
    EXPECT_EQ(liege::parse_http_status_line("HTTP/1.1 " + std::string(2000, '1')), -1);
}
