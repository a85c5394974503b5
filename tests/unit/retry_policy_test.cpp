// What becomes of a failed upstream attempt (retry, status, close; whom to blame): pure functions.
#include <gtest/gtest.h>

#include <uv.h>

#include <ostream>
#include <set>
#include <string>

#include "../../router/retry_policy.hpp"

namespace liege::router {

// Readable failure messages; static, so no other test file's printers clash with these.
static std::ostream& operator<<(std::ostream& os, AttemptOutcome o) {
    switch (o) {
    case AttemptOutcome::Retry:
        return os << "Retry";
    case AttemptOutcome::Respond:
        return os << "Respond";
    case AttemptOutcome::CloseNow:
        return os << "CloseNow";
    case AttemptOutcome::CloseAfterWrites:
        return os << "CloseAfterWrites";
    }
    return os << "AttemptOutcome(" << static_cast<int>(o) << ")";
}

} // namespace liege::router

using namespace liege::router;

namespace {

// The first of three allowed attempts failed with `why`; the request is an idempotent GET whose
// head is still kept, went out on a fresh connection, and got no response byte.
AttemptFacts first_try(UpstreamFailure why) {
    AttemptFacts f;
    f.why = why;
    f.idempotent = true;
    f.head_kept = true;
    f.tries = 1;
    f.max_tries = 3;
    return f;
}

AttemptFacts last_try(UpstreamFailure why) {
    AttemptFacts f = first_try(why);
    f.tries = f.max_tries;
    return f;
}

// Every field, so a decision that is right in one field and wrong in another still fails.
void expect_decision(const RetryDecision& got, const RetryDecision& want) {
    EXPECT_EQ(got.outcome, want.outcome) << "outcome";
    EXPECT_EQ(got.mark_backend_down, want.mark_backend_down) << "mark_backend_down";
    EXPECT_EQ(got.replay_head, want.replay_head) << "replay_head";
    EXPECT_EQ(got.same_backend_ok, want.same_backend_ok) << "same_backend_ok";
    EXPECT_EQ(got.fresh_connection, want.fresh_connection) << "fresh_connection";
    EXPECT_EQ(got.log_broken_response, want.log_broken_response) << "log_broken_response";
    EXPECT_EQ(got.status, want.status) << "status";
}

} // namespace

// --- failure_text ---------------------------------------------------------------------------

TEST(RetryPolicy, EveryFailureHasItsOwnText) {
    EXPECT_STREQ(failure_text(UpstreamFailure::Connect), "connect failed");
    EXPECT_STREQ(failure_text(UpstreamFailure::ConnectTimeout), "connect timed out");
    EXPECT_STREQ(failure_text(UpstreamFailure::Reset), "connection closed before a response");
    EXPECT_STREQ(failure_text(UpstreamFailure::Timeout), "response timed out");
    EXPECT_STREQ(failure_text(UpstreamFailure::SendTimeout),
                 "the backend stopped reading the request body");
    EXPECT_STREQ(failure_text(UpstreamFailure::BadResponse), "malformed response");
    EXPECT_STREQ(failure_text(UpstreamFailure::NoSocket),
                 "the router is out of file descriptors or socket memory");
    EXPECT_STREQ(failure_text(UpstreamFailure::RequestTimeout),
                 "the request ran past its request_timeout");
}

TEST(RetryPolicy, FailureTextsAreDistinct) {
    std::set<std::string> texts;
    for (auto why :
         {UpstreamFailure::Connect, UpstreamFailure::ConnectTimeout, UpstreamFailure::Reset,
          UpstreamFailure::Timeout, UpstreamFailure::SendTimeout, UpstreamFailure::BadResponse,
          UpstreamFailure::NoSocket, UpstreamFailure::RequestTimeout}) {
        texts.insert(failure_text(why));
    }
    EXPECT_EQ(texts.size(), 8u);
}

TEST(RetryPolicy, UnknownFailureValueFallsBackToFailed) {
    EXPECT_STREQ(failure_text(static_cast<UpstreamFailure>(99)), "failed");
}

TEST(RetryPolicy, RoutersOwnShortageOfDescriptorsOrMemoryIsNoSocket) {
    EXPECT_TRUE(is_no_socket(UV_EMFILE));
    EXPECT_TRUE(is_no_socket(UV_ENFILE));
    EXPECT_TRUE(is_no_socket(UV_ENOBUFS));
    EXPECT_TRUE(is_no_socket(UV_ENOMEM));
}

TEST(RetryPolicy, BackendsConnectErrorsAreNotNoSocket) {
    EXPECT_FALSE(is_no_socket(UV_ECONNREFUSED));
    EXPECT_FALSE(is_no_socket(UV_ETIMEDOUT));
    EXPECT_FALSE(is_no_socket(UV_ECONNRESET));
    EXPECT_FALSE(is_no_socket(UV_EHOSTUNREACH));
    EXPECT_FALSE(is_no_socket(0));
}

// --- connect phase --------------------------------------------------------------------------

TEST(RetryPolicy, ConnectRefusedIsRetriedAndMarksTheBackendDown) {
    expect_decision(decide_retry(first_try(UpstreamFailure::Connect)),
                    {.outcome = AttemptOutcome::Retry,
                     .mark_backend_down = true,
                     .replay_head = false,
                     .same_backend_ok = false,
                     .log_broken_response = false});
}

TEST(RetryPolicy, ConnectTimeoutIsRetriedAndMarksTheBackendDown) {
    expect_decision(decide_retry(first_try(UpstreamFailure::ConnectTimeout)),
                    {.outcome = AttemptOutcome::Retry,
                     .mark_backend_down = true,
                     .replay_head = false,
                     .same_backend_ok = false,
                     .log_broken_response = false});
}

TEST(RetryPolicy, ConnectFailureIsRetriedEvenForANonIdempotentRequestWithABody) {
    // Nothing reached the backend: the pending writes, body included, are still queued.
    AttemptFacts f = first_try(UpstreamFailure::Connect);
    f.idempotent = false;
    f.head_kept = false;
    f.body_sent = false;
    expect_decision(decide_retry(f), {.outcome = AttemptOutcome::Retry,
                                      .mark_backend_down = true,
                                      .replay_head = false,
                                      .same_backend_ok = false});
}

TEST(RetryPolicy, ConnectFailureNeverAllowsTheSameBackendAgain) {
    // same_backend_ok is only for a stale pooled connection, never for a connect failure.
    AttemptFacts f = first_try(UpstreamFailure::ConnectTimeout);
    f.reused_connection = true;
    expect_decision(decide_retry(f), {.outcome = AttemptOutcome::Retry,
                                      .mark_backend_down = true,
                                      .replay_head = false,
                                      .same_backend_ok = false});
}

TEST(RetryPolicy, ConnectRefusedOnTheLastTryGets502AndStillMarksTheBackendDown) {
    expect_decision(decide_retry(last_try(UpstreamFailure::Connect)),
                    {.outcome = AttemptOutcome::Respond,
                     .mark_backend_down = true,
                     .replay_head = false,
                     .same_backend_ok = false,
                     .status = 502});
}

TEST(RetryPolicy, ConnectTimeoutOnTheLastTryGets502) {
    expect_decision(decide_retry(last_try(UpstreamFailure::ConnectTimeout)),
                    {.outcome = AttemptOutcome::Respond, .mark_backend_down = true, .status = 502});
}

TEST(RetryPolicy, LastTryGetsTheStatusNotARetry) {
    AttemptFacts f = first_try(UpstreamFailure::Connect);
    f.tries = 2;
    f.max_tries = 3;
    EXPECT_EQ(decide_retry(f).outcome, AttemptOutcome::Retry);
    f.tries = 3;
    expect_decision(decide_retry(f),
                    {.outcome = AttemptOutcome::Respond, .mark_backend_down = true, .status = 502});
}

TEST(RetryPolicy, MoreTriesThanAllowedIsNotRetried) {
    AttemptFacts f = first_try(UpstreamFailure::Connect);
    f.tries = 5;
    f.max_tries = 3;
    EXPECT_EQ(decide_retry(f).outcome, AttemptOutcome::Respond);
}

TEST(RetryPolicy, SingleTryAllowedMeansNoRetry) {
    AttemptFacts f = first_try(UpstreamFailure::Connect);
    f.tries = 1;
    f.max_tries = 1;
    expect_decision(decide_retry(f),
                    {.outcome = AttemptOutcome::Respond, .mark_backend_down = true, .status = 502});
}

// --- reset after the head went out ----------------------------------------------------------

TEST(RetryPolicy, ResetOnAFreshConnectionIsReplayedElsewhereAndMarksTheBackendDown) {
    expect_decision(decide_retry(first_try(UpstreamFailure::Reset)),
                    {.outcome = AttemptOutcome::Retry,
                     .mark_backend_down = true,
                     .replay_head = true,
                     .same_backend_ok = false,
                     .log_broken_response = false});
}

TEST(RetryPolicy, StaleReusedConnectionIsRetriedOnAFreshOneWithoutBlame) {
    AttemptFacts f = first_try(UpstreamFailure::Reset);
    f.reused_connection = true;
    expect_decision(decide_retry(f), {.outcome = AttemptOutcome::Retry,
                                      .mark_backend_down = false,
                                      .replay_head = true,
                                      .same_backend_ok = true,
                                      .fresh_connection = true,
                                      .log_broken_response = false});
}

TEST(RetryPolicy, NonIdempotentRequestIsNotReplayed) {
    AttemptFacts f = first_try(UpstreamFailure::Reset);
    f.idempotent = false;
    expect_decision(decide_retry(f), {.outcome = AttemptOutcome::Respond,
                                      .mark_backend_down = true,
                                      .replay_head = false,
                                      .same_backend_ok = false,
                                      .status = 502});
}

TEST(RetryPolicy, NonIdempotentRequestOnAStaleReusedConnectionIsNotReplayedNorBlamed) {
    AttemptFacts f = first_try(UpstreamFailure::Reset);
    f.idempotent = false;
    f.reused_connection = true;
    expect_decision(decide_retry(f), {.outcome = AttemptOutcome::Respond,
                                      .mark_backend_down = false,
                                      .replay_head = false,
                                      .same_backend_ok = false,
                                      .status = 502});
}

TEST(RetryPolicy, BodyByteSentMeansNoReplay) {
    AttemptFacts f = first_try(UpstreamFailure::Reset);
    f.body_sent = true;
    expect_decision(decide_retry(f), {.outcome = AttemptOutcome::Respond,
                                      .mark_backend_down = true,
                                      .replay_head = false,
                                      .status = 502});
}

TEST(RetryPolicy, HeadNoLongerKeptMeansNoReplay) {
    AttemptFacts f = first_try(UpstreamFailure::Reset);
    f.head_kept = false;
    expect_decision(decide_retry(f), {.outcome = AttemptOutcome::Respond,
                                      .mark_backend_down = true,
                                      .replay_head = false,
                                      .status = 502});
}

TEST(RetryPolicy, ReplayableResetOnTheLastTryGets502WithoutAReplay) {
    // replay_head is only meaningful with Retry: it is cleared when the answer is a status.
    expect_decision(decide_retry(last_try(UpstreamFailure::Reset)),
                    {.outcome = AttemptOutcome::Respond,
                     .mark_backend_down = true,
                     .replay_head = false,
                     .same_backend_ok = false,
                     .status = 502});
}

TEST(RetryPolicy, StaleReusedConnectionIsRetriedFreshEvenOnTheLastTry) {
    // Racing the backend's idle timeout is not an attempt that failed: it does not count.
    AttemptFacts f = last_try(UpstreamFailure::Reset);
    f.reused_connection = true;
    expect_decision(decide_retry(f), {.outcome = AttemptOutcome::Retry,
                                      .mark_backend_down = false,
                                      .replay_head = true,
                                      .same_backend_ok = true,
                                      .fresh_connection = true});
}

TEST(RetryPolicy, ReusedConnectionThatTimedOutIsNotRetriedFresh) {
    // Only a close before any response byte is the idle race; silence is the backend's.
    AttemptFacts f = last_try(UpstreamFailure::Timeout);
    f.reused_connection = true;
    expect_decision(decide_retry(f),
                    {.outcome = AttemptOutcome::Respond, .replay_head = false, .status = 504});
}

TEST(RetryPolicy, BackendThatAnsweredIsNotMarkedDownWhenItsAnswerBreaksOff) {
    // Response bytes came but none reached the client: the backend is up, the request may
    // still be replayed (no response byte has reached the client).
    AttemptFacts f = first_try(UpstreamFailure::Reset);
    f.got_response_bytes = true;
    expect_decision(decide_retry(f), {.outcome = AttemptOutcome::Retry,
                                      .mark_backend_down = false,
                                      .replay_head = true,
                                      .same_backend_ok = false,
                                      .log_broken_response = false});
}

// --- the response had started reaching the client -------------------------------------------

TEST(RetryPolicy, ResponseThatReachedTheClientEndsTheConnection) {
    AttemptFacts f = first_try(UpstreamFailure::Reset);
    f.got_response_bytes = true;
    f.response_reached_client = true;
    expect_decision(decide_retry(f), {.outcome = AttemptOutcome::CloseNow,
                                      .mark_backend_down = false,
                                      .replay_head = false,
                                      .same_backend_ok = false,
                                      .log_broken_response = true});
}

TEST(RetryPolicy, ResponseTimeoutMidResponseEndsTheConnectionAndIsLogged) {
    AttemptFacts f = first_try(UpstreamFailure::Timeout);
    f.got_response_bytes = true;
    f.response_reached_client = true;
    expect_decision(decide_retry(f), {.outcome = AttemptOutcome::CloseNow,
                                      .mark_backend_down = false,
                                      .log_broken_response = true});
}

TEST(RetryPolicy, ResponseThatReachedTheClientIsNotRetriedEvenWithTriesLeft) {
    AttemptFacts f = first_try(UpstreamFailure::BadResponse);
    f.got_response_bytes = true;
    f.response_reached_client = true;
    f.tries = 1;
    f.max_tries = 10;
    EXPECT_EQ(decide_retry(f).outcome, AttemptOutcome::CloseNow);
}

TEST(RetryPolicy, ResponseBytesThatDidNotReachTheClientAreNotLogged) {
    AttemptFacts f = first_try(UpstreamFailure::BadResponse);
    f.got_response_bytes = true;
    expect_decision(decide_retry(f), {.outcome = AttemptOutcome::Respond,
                                      .mark_backend_down = false,
                                      .log_broken_response = false,
                                      .status = 502});
}

TEST(RetryPolicy, BrokenResponseIsNotLoggedWhenTheBackendIsMarkedDown) {
    // A connect-phase failure is already reported as the backend going down.
    AttemptFacts f = first_try(UpstreamFailure::Connect);
    f.got_response_bytes = true;
    f.response_reached_client = true;
    expect_decision(decide_retry(f), {.outcome = AttemptOutcome::CloseNow,
                                      .mark_backend_down = true,
                                      .log_broken_response = false});
}

// --- tunnels --------------------------------------------------------------------------------

TEST(RetryPolicy, TunnelClosesAfterWrites) {
    AttemptFacts f = first_try(UpstreamFailure::Reset);
    f.tunnel = true;
    f.got_response_bytes = true;
    f.response_reached_client = true;
    f.reused_connection = false;
    expect_decision(decide_retry(f), {.outcome = AttemptOutcome::CloseAfterWrites,
                                      .mark_backend_down = false,
                                      .replay_head = false,
                                      .same_backend_ok = false,
                                      .log_broken_response = true});
}

TEST(RetryPolicy, TunnelWinsOverAResponseThatReachedTheClientAndOverTriesLeft) {
    AttemptFacts f = first_try(UpstreamFailure::Timeout);
    f.tunnel = true;
    f.response_reached_client = false;
    f.tries = 1;
    f.max_tries = 5;
    expect_decision(decide_retry(f), {.outcome = AttemptOutcome::CloseAfterWrites,
                                      .mark_backend_down = false,
                                      .log_broken_response = false});
}

// --- failures that are answered with a status at once ---------------------------------------

TEST(RetryPolicy, TimeoutGets504) {
    // Even an idempotent request with its head kept: the backend may be working on it.
    expect_decision(decide_retry(first_try(UpstreamFailure::Timeout)),
                    {.outcome = AttemptOutcome::Respond,
                     .mark_backend_down = false,
                     .replay_head = false,
                     .same_backend_ok = false,
                     .log_broken_response = false,
                     .status = 504});
}

TEST(RetryPolicy, SendTimeoutGets504) {
    AttemptFacts f = first_try(UpstreamFailure::SendTimeout);
    f.body_sent = true;
    expect_decision(decide_retry(f), {.outcome = AttemptOutcome::Respond,
                                      .mark_backend_down = false,
                                      .replay_head = false,
                                      .same_backend_ok = false,
                                      .log_broken_response = false,
                                      .status = 504});
}

TEST(RetryPolicy, BadResponseGets502WithoutBlame) {
    expect_decision(decide_retry(first_try(UpstreamFailure::BadResponse)),
                    {.outcome = AttemptOutcome::Respond,
                     .mark_backend_down = false,
                     .replay_head = false,
                     .same_backend_ok = false,
                     .log_broken_response = false,
                     .status = 502});
}

TEST(RetryPolicy, NoSocketGets503AndBlamesNoBackend) {
    // Tries left, idempotent, head kept: still no retry, another backend would fail alike.
    AttemptFacts f = first_try(UpstreamFailure::NoSocket);
    f.tries = 1;
    f.max_tries = 10;
    expect_decision(decide_retry(f), {.outcome = AttemptOutcome::Respond,
                                      .mark_backend_down = false,
                                      .replay_head = false,
                                      .same_backend_ok = false,
                                      .log_broken_response = false,
                                      .status = 503});
}

TEST(RetryPolicy, NoSocketOnAReusedConnectionIsNotRetriedOnTheSameBackend) {
    AttemptFacts f = first_try(UpstreamFailure::NoSocket);
    f.reused_connection = true;
    expect_decision(decide_retry(f), {.outcome = AttemptOutcome::Respond,
                                      .mark_backend_down = false,
                                      .replay_head = false,
                                      .same_backend_ok = false,
                                      .status = 503});
}

// --- request_timeout ------------------------------------------------------------------------

TEST(RetryPolicy, ARequestPastItsRequestTimeoutGets504AndIsNeverRetried) {
    // Even an idempotent request with tries left: sent again, it would hang another worker.
    AttemptFacts f = first_try(UpstreamFailure::RequestTimeout);
    f.idempotent = true;
    f.head_kept = true;
    f.max_tries = 3;
    expect_decision(decide_retry(f), {.outcome = AttemptOutcome::Respond,
                                      .mark_backend_down = false,
                                      .replay_head = false,
                                      .same_backend_ok = false,
                                      .log_broken_response = false,
                                      .status = 504});
}

TEST(RetryPolicy, ARequestTimeoutAfterTheResponseBeganEndsTheConnection) {
    AttemptFacts f = first_try(UpstreamFailure::RequestTimeout);
    f.got_response_bytes = true;
    f.response_reached_client = true;
    EXPECT_EQ(decide_retry(f).outcome, AttemptOutcome::CloseNow);
    EXPECT_FALSE(decide_retry(f).mark_backend_down);
}
