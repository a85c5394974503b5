// The health probe's reading of an HTTP status line, and which failed liveness checks count.
#include <gtest/gtest.h>

#include <string>

#include "liege/health.hpp"
#include "liege/notify_socket.hpp"

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

namespace {

liege::ProbeResult timed_out() {
    return {false, 0, "timed out", true};
}

} // namespace

TEST(LivenessRule, ATimeoutWhileTheRouterSawTheWorkerBusyDoesNotCount) {
    EXPECT_FALSE(liege::liveness_failure_counts(timed_out(), true));
    EXPECT_TRUE(liege::liveness_failure_counts(timed_out(), false));
}

TEST(LivenessRule, RefusedResetAndBadStatusAlwaysCount) {
    for (bool busy : {false, true}) {
        EXPECT_TRUE(liege::liveness_failure_counts({false, 0, "connection refused"}, busy));
        EXPECT_TRUE(liege::liveness_failure_counts(
            {false, 0, "connection closed before a response"}, busy));
        EXPECT_TRUE(liege::liveness_failure_counts({false, 500, "status 500"}, busy));
        EXPECT_FALSE(liege::liveness_failure_counts({true, 200, ""}, busy)) << "not a failure";
    }
}

TEST(RouterActivity, NoReportIsNotBusy) {
    liege::RouterActivity a;
    EXPECT_FALSE(a.busy(0));
}

TEST(RouterActivity, TheFirstReportSetsTheBaselineOnly) {
    // A new worker may reuse a gone one's address, and with it the router's counters.
    liege::RouterActivity a;
    a.report(500, 500, 0, 1000);
    EXPECT_FALSE(a.busy(1000));
}

TEST(RouterActivity, RequestsOrResponsesThatGrewSinceThePreviousCheckAreBusy) {
    liege::RouterActivity a;
    a.report(10, 10, 0, 1000);
    a.checked();
    a.report(11, 10, 0, 2000); // a request went out
    EXPECT_TRUE(a.busy(2100));
    a.checked();
    a.report(11, 11, 0, 3000); // and its response came back
    EXPECT_TRUE(a.busy(3100));
    a.checked();
    a.report(11, 11, 0, 4000); // nothing since
    EXPECT_FALSE(a.busy(4100));
}

TEST(RouterActivity, ARequestInFlightIsBusy) {
    liege::RouterActivity a;
    a.report(3, 3, 1, 1000); // even in the first report: the worker holds a request now
    EXPECT_TRUE(a.busy(1100));
    a.checked();
    a.report(3, 3, 1, 2000); // one long request, no counter moved
    EXPECT_TRUE(a.busy(2100));
}

TEST(RouterActivity, AnyReportInTheWindowCounts) {
    liege::RouterActivity a;
    a.report(1, 1, 0, 1000);
    a.checked();
    a.report(2, 2, 0, 2000);
    a.report(2, 2, 0, 3000); // idle in the latest report, but it answered since the last check
    EXPECT_TRUE(a.busy(3100));
    a.checked();
    EXPECT_FALSE(a.busy(3200)) << "the latest report said idle";
}

TEST(RouterActivity, ChecksMoreOftenThanReportsUseTheLatestFreshReport) {
    liege::RouterActivity a;
    a.report(1, 1, 0, 1000);
    a.checked();
    a.report(1, 1, 2, 2000);
    a.checked(); // a check came and went; no report since
    EXPECT_TRUE(a.busy(2500));
    EXPECT_TRUE(a.busy(2000 + 2 * liege::RouterActivity::kReportMs));
    // A router that stopped reporting excuses nothing.
    EXPECT_FALSE(a.busy(2001 + 2 * liege::RouterActivity::kReportMs));
}

// sd_notify datagrams (systemd's protocol): newline-separated KEY=VALUE, READY=1 among them.
TEST(NotifyDatagram, ReadyIsALineOfItsOwn) {
    EXPECT_TRUE(liege::notify_says_ready("READY=1"));
    EXPECT_TRUE(liege::notify_says_ready("READY=1\n"));
    EXPECT_TRUE(liege::notify_says_ready("STATUS=listening on fd 3\nREADY=1\nMAINPID=42\n"));
    EXPECT_TRUE(liege::notify_says_ready("\n\nREADY=1\r\n"));
    EXPECT_TRUE(liege::notify_says_ready(std::string("X=\0\nREADY=1", 11)));
}

TEST(NotifyDatagram, OtherKeysAreNotReady) {
    EXPECT_FALSE(liege::notify_says_ready(""));
    EXPECT_FALSE(liege::notify_says_ready("STATUS=starting"));
    EXPECT_FALSE(liege::notify_says_ready("STATUS=READY=1"));
    EXPECT_FALSE(liege::notify_says_ready("READY=0"));
    EXPECT_FALSE(liege::notify_says_ready("READY=10"));
    EXPECT_FALSE(liege::notify_says_ready("XREADY=1\nWATCHDOG=1"));
    EXPECT_FALSE(liege::notify_says_ready(" READY=1"));
    EXPECT_FALSE(liege::notify_says_ready("RELOADING=1\nSTOPPING=1\n"));
}

TEST(ProbeEchoFilter, DropsOneAccessLogLinePerProbeAndNothingElse) {
    liege::ProbeEchoFilter f("/healthz");
    const std::string gunicorn =
        "127.0.0.1 - - [02/Dec/2026:10:00:00 +0000] \"GET /healthz HTTP/1.1\" 200 2 \"-\" \"-\"";
    EXPECT_FALSE(f.drop(gunicorn, 0)) << "no probe sent: a request of somebody else's";
    f.probed(1000);
    f.probed(3000);
    EXPECT_FALSE(f.drop("Booting worker with pid: 42", 1001));
    EXPECT_FALSE(f.drop("\"GET /healthzone HTTP/1.1\" 200", 1002)) << "another path";
    EXPECT_TRUE(f.drop(gunicorn, 1003));
    // uWSGI's format, for the second probe.
    EXPECT_TRUE(f.drop("[pid: 7|app: 0|req: 2/2] 127.0.0.1 () {28 vars in 300 bytes} [Wed Dec  2 "
                       "10:00:03 2026] GET /healthz => generated 2 bytes in 0 msecs",
                       3004));
    EXPECT_FALSE(f.drop(gunicorn, 3005)) << "one line per probe";
    EXPECT_EQ(f.dropped(), 2u);
    // A probe whose line never came stops being expected after the window.
    f.probed(10'000);
    EXPECT_FALSE(f.drop(gunicorn, 10'000 + liege::ProbeEchoFilter::kWindowMs + 1));
    f.probed(20'000);
    EXPECT_TRUE(f.drop("GET /healthz?x=1", 20'001));
    f.probed(21'000);
    EXPECT_TRUE(f.drop("GET / HTTP/1.1 ... liege-health", 21'001)) << "liege's User-Agent";
    liege::ProbeEchoFilter none("");
    none.probed(0);
    EXPECT_FALSE(none.drop("GET  HTTP/1.1", 1)) << "no GET path probes: nothing is expected";
}
