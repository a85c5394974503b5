// A libuv loop per test, for the tests of the emperor's building blocks (spawner, health probes,
// directory watcher) against real processes, sockets and files.
//
// Every wait runs the test's loop until a condition holds or a deadline passes, and every test
// ends by closing what it opened and asserting uv_loop_close() == 0.
#pragma once

#include <gtest/gtest.h>

#include <csignal>
#include <functional>
#include <string>

#include <unistd.h>
#include <uv.h>

#include "harness.hpp"
#include "liege/uv.hpp"

namespace liege::test {

inline constexpr Millis kBound = 10s; // generous bound for waits that should take milliseconds

inline Millis since(Clock::time_point start) {
    return std::chrono::duration_cast<Millis>(Clock::now() - start);
}

inline std::string python() {
    return ::access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
}

// A loop per test, run only in bounded steps.
class LoopTest : public ::testing::Test {
protected:
    void SetUp() override {
        ::signal(SIGPIPE, SIG_IGN); // as the emperor does: a closed peer is an error value
        ASSERT_EQ(uv_loop_init(&loop_), 0);
    }

    void TearDown() override {
        release();
        // Let close callbacks run; nothing may be left active.
        auto deadline = Clock::now() + 2s;
        while (uv_loop_alive(&loop_) != 0 && Clock::now() < deadline) {
            uv_run(&loop_, UV_RUN_NOWAIT);
        }
        int rc = uv_loop_close(&loop_);
        EXPECT_EQ(rc, 0) << "handles left open on the test's loop";
        if (rc != 0) {
            uv_walk(
                &loop_,
                [](uv_handle_t* h, void*) {
                    ADD_FAILURE() << "open handle of type " << uv_handle_type_name(h->type);
                    if (uv_is_closing(h) == 0) {
                        uv_close(h, nullptr);
                    }
                },
                nullptr);
            uv_run(&loop_, UV_RUN_NOWAIT);
            uv_loop_close(&loop_);
        }
    }

    // Drops whatever the test keeps that owns handles on the loop.
    virtual void release() {}

    uv_loop_t* loop() { return &loop_; }

    // Runs the loop until `condition` holds or `timeout` passes; returns the condition.
    bool run_until(const std::function<bool()>& condition, Millis timeout = kBound) {
        liege::UvHandle<uv_timer_t> tick; // keeps each UV_RUN_ONCE from blocking past 10 ms
        uv_timer_init(&loop_, tick.get());
        uv_timer_start(
            tick.get(), [](uv_timer_t*) {}, 10, 10);
        auto deadline = Clock::now() + timeout;
        while (!condition() && Clock::now() < deadline) {
            uv_run(&loop_, UV_RUN_ONCE);
        }
        return condition();
    }

    uv_loop_t loop_{};
};
} // namespace liege::test
