// The scaling rule (include/liege/scaling.hpp): single observations first, then whole workload
// traces through a small model of a pool (one request at a time per worker, least connections
// with a rotating start, as the router balances), counting scale events.
#include <gtest/gtest.h>

#include <deque>
#include <random>
#include <utility>
#include <vector>

#include "liege/scaling.hpp"

using namespace liege::scaling;

namespace {

Limits limits(int min, int max, int64_t idle_ms = 60'000, int64_t up_after_ms = 500) {
    return {min, max, idle_ms, up_after_ms};
}

WorkerView ready(int id, int in_flight, int64_t last_busy_ms) {
    return {id, false, in_flight, last_busy_ms};
}

TEST(Scaling, BelowMinStartsOneAtOnce) {
    Scaler s(limits(2, 4));
    auto d = s.observe({0, 0, 0, {ready(1, 0, 0)}});
    EXPECT_EQ(d.action, Action::Start);
    EXPECT_EQ(d.reason, Reason::Min);
}

TEST(Scaling, MinZeroStartsNothingUntilARequestWaitsThenStartsAtOnce) {
    Scaler s(limits(0, 2));
    EXPECT_EQ(s.observe({0, 0, 0, {}}).action, Action::None);
    auto d = s.observe({10, 1, 0, {}});
    EXPECT_EQ(d.action, Action::Start) << "a cold start does not wait for the threshold";
    EXPECT_EQ(d.reason, Reason::ColdStart);
    EXPECT_EQ(to_string(d.reason), "cold_start");
}

TEST(Scaling, MaxZeroNeverStarts) {
    Scaler s(limits(0, 0));
    EXPECT_EQ(s.observe({0, 5, 0, {}}).action, Action::None);
}

TEST(Scaling, WaitsShorterThanTheThresholdAddNobody) {
    Scaler s(limits(1, 4));
    for (int64_t t = 0; t < 10'000; t += 100) {
        // Requests wait for 400 ms, then the queue empties for a moment: again and again.
        const int queued = (t % 500) < 400 ? 3 : 0;
        EXPECT_EQ(s.observe({t, queued, 1, {ready(1, 1, t)}}).action, Action::None) << "at " << t;
    }
}

TEST(Scaling, ASustainedWaitAddsOneWorkerAtATime) {
    Scaler s(limits(1, 3));
    EXPECT_EQ(s.observe({0, 2, 1, {ready(1, 1, 0)}}).action, Action::None);
    EXPECT_EQ(s.observe({400, 2, 1, {ready(1, 1, 400)}}).action, Action::None);
    auto d = s.observe({500, 2, 1, {ready(1, 1, 500)}});
    EXPECT_EQ(d.action, Action::Start);
    EXPECT_EQ(d.reason, Reason::Demand);
    // While it starts, nothing more, however long requests wait.
    WorkerView starting{2, true, 0, 0};
    EXPECT_EQ(s.observe({2'000, 5, 1, {ready(1, 1, 2'000), starting}}).action, Action::None);
    // Once it is ready, another full wait before the next one.
    EXPECT_EQ(s.observe({2'100, 5, 2, {ready(1, 1, 2'100), ready(2, 1, 2'100)}}).action,
              Action::None);
    EXPECT_EQ(s.observe({2'500, 5, 2, {ready(1, 1, 2'500), ready(2, 1, 2'500)}}).action,
              Action::Start);
}

TEST(Scaling, NeverAboveMax) {
    Scaler s(limits(1, 2));
    EXPECT_EQ(s.observe({0, 9, 2, {ready(1, 1, 0), ready(2, 1, 0)}}).action, Action::None);
    EXPECT_EQ(s.observe({60'000, 9, 2, {ready(1, 1, 0), ready(2, 1, 0)}}).action, Action::None);
}

TEST(Scaling, AWorkerThePoolDidNotNeedForAWholeIdleIsStoppedOneAtATimeDownToMin) {
    Scaler s(limits(1, 4, 10'000));
    // Four workers, never more than two requests in flight at once.
    std::vector<WorkerView> pool = {ready(1, 0, 9'000), ready(2, 0, 2'000), ready(3, 1, 9'500),
                                    ready(4, 0, 8'000)};
    EXPECT_EQ(s.observe({0, 0, 2, pool}).action, Action::None);
    EXPECT_EQ(s.observe({9'000, 0, 2, pool}).action, Action::None) << "not a whole idle yet";
    auto d = s.observe({10'000, 0, 2, pool});
    EXPECT_EQ(d.action, Action::Stop);
    EXPECT_EQ(d.reason, Reason::Idle);
    EXPECT_EQ(d.worker, 2) << "the one idle longest";
    pool.erase(pool.begin() + 1);
    EXPECT_EQ(s.observe({10'500, 0, 2, pool}).action, Action::None)
        << "the next one only after another whole idle";
    d = s.observe({20'000, 0, 2, pool});
    EXPECT_EQ(d.action, Action::Stop);
    EXPECT_EQ(d.worker, 4) << "idle longest of those with nothing in flight";
    pool.erase(pool.begin() + 2);
    // Two left, and two requests at once: both needed, so both stay however long that lasts.
    EXPECT_EQ(s.observe({60'000, 0, 2, pool}).action, Action::None);
    // Down to min, not below it.
    Scaler one(limits(1, 4, 10'000));
    EXPECT_EQ(one.observe({0, 0, 0, {ready(3, 0, 0)}}).action, Action::None);
    EXPECT_EQ(one.observe({60'000, 0, 0, {ready(3, 0, 0)}}).action, Action::None);
    Scaler zero(limits(0, 4, 10'000));
    EXPECT_EQ(zero.observe({0, 0, 0, {ready(3, 0, 0)}}).action, Action::None);
    EXPECT_EQ(zero.observe({10'000, 0, 0, {ready(3, 0, 0)}}).action, Action::Stop)
        << "min = 0 stops the last one after a whole idle without a request";
}

TEST(Scaling, APoolThatCatchesUpWithABacklogGrowsNoFurther) {
    Scaler s(limits(1, 8));
    EXPECT_EQ(s.observe({0, 20, 2, {ready(1, 1, 0), ready(2, 1, 0)}}).action, Action::None);
    EXPECT_EQ(s.observe({1'000, 12, 2, {ready(1, 1, 1'000), ready(2, 1, 1'000)}}).action,
              Action::None)
        << "fewer wait than a second ago";
    EXPECT_EQ(s.observe({2'000, 12, 2, {ready(1, 1, 2'000), ready(2, 1, 2'000)}}).action,
              Action::Start)
        << "no longer catching up";
}

TEST(Scaling, NothingIsStoppedWhileRequestsWait) {
    Scaler s(limits(1, 2, 1'000, 60'000));
    EXPECT_EQ(s.observe({100'000, 1, 1, {ready(1, 1, 100'000), ready(2, 0, 0)}}).action,
              Action::None);
}

// ---- traces through a model pool ---------------------------------------------------------------

// A pool of one-request-at-a-time workers fed by arrivals, observed every `report_ms` as the
// router's figures arrive (and at once when a request waits with no worker at all), acting on
// the scaler's decisions. Time moves in 10 ms steps.
class ModelPool {
public:
    ModelPool(Limits l, int64_t service_ms, int64_t startup_ms)
        : scaler_(l), service_ms_(service_ms), startup_ms_(startup_ms) {
        for (int i = 0; i < l.min; ++i) {
            start();
            workers_.back().ready_at = 0;
        }
    }

    // Runs for `ms` with `arrivals_per_s` (a Poisson process when `poisson`, else evenly spaced).
    void run(int64_t ms, double arrivals_per_s, bool poisson = true) {
        std::exponential_distribution<double> gap(arrivals_per_s / 1000.0);
        const int64_t end = now_ + ms;
        for (; now_ < end; now_ += kStep) {
            while (arrivals_per_s > 0 && next_arrival_ <= now_) {
                waiting_.push_back(now_);
                next_arrival_ += poisson ? gap(rng_) : 1000.0 / arrivals_per_s;
            }
            if (arrivals_per_s <= 0) {
                next_arrival_ = static_cast<double>(now_);
            }
            dispatch();
            if (now_ % kReportMs == 0 || (!waiting_.empty() && workers_.empty())) {
                act(scaler_.observe(observe()));
            }
        }
    }

    int size() const { return static_cast<int>(workers_.size()); }
    int starts() const { return starts_; }
    int stops() const { return stops_; }
    int max_size() const { return max_size_; }
    int64_t longest_wait_ms() const { return longest_wait_; }
    void reset_counts() {
        starts_ = stops_ = 0;
        max_size_ = size();
    }

private:
    static constexpr int64_t kStep = 10;
    static constexpr int64_t kReportMs = 1'000;

    struct Worker {
        int id;
        int64_t ready_at;
        int64_t busy_until = 0;
        int64_t last_busy = 0;
    };

    void start() {
        workers_.push_back({++next_id_, now_ + startup_ms_});
        ++starts_;
        max_size_ = std::max(max_size_, size());
    }

    void dispatch() {
        int busy = 0;
        for (auto& w : workers_) {
            if (w.busy_until > now_) {
                w.last_busy = now_;
                ++busy;
            }
        }
        while (!waiting_.empty()) {
            Worker* free = nullptr;
            const std::size_t n = workers_.size();
            for (std::size_t k = 0; k < n && free == nullptr; ++k) {
                Worker& w = workers_[(cursor_ + k) % n];
                if (w.ready_at <= now_ && w.busy_until <= now_) {
                    free = &w;
                }
            }
            if (free == nullptr) {
                break;
            }
            ++cursor_;
            free->busy_until = now_ + service_ms_;
            free->last_busy = now_;
            ++busy;
            longest_wait_ = std::max(longest_wait_, now_ - waiting_.front());
            waiting_.pop_front();
        }
        busy_peak_ = std::max(busy_peak_, busy);
    }

    Observation observe() {
        Observation o{now_, static_cast<int>(waiting_.size()), std::exchange(busy_peak_, 0), {}};
        for (const auto& w : workers_) {
            o.workers.push_back({w.id, w.ready_at > now_, w.busy_until > now_ ? 1 : 0,
                                 std::max(w.last_busy, w.ready_at)});
        }
        return o;
    }

    void act(const Decision& d) {
        if (d.action == Action::Start) {
            start();
        } else if (d.action == Action::Stop) {
            std::erase_if(workers_, [&](const Worker& w) { return w.id == d.worker; });
            ++stops_;
        }
    }

    Scaler scaler_;
    int64_t service_ms_;
    int64_t startup_ms_;
    std::vector<Worker> workers_;
    std::deque<int64_t> waiting_; // when each waiting request arrived, oldest first
    std::mt19937 rng_{42};
    int64_t now_ = 0;
    double next_arrival_ = 0;
    int next_id_ = 0;
    std::size_t cursor_ = 0;
    int starts_ = 0;
    int stops_ = 0;
    int max_size_ = 0;
    int64_t longest_wait_ = 0;
    int busy_peak_ = 0; // since the previous observation
};

TEST(ScalingTrace, ASteadyRateSettlesAndThenNeverFlaps) {
    // 100 ms requests at 25 a second keep 2.5 busy on average: the pool grows from 1 and then
    // holds through an hour of the same Poisson load, growing at most a little more for its
    // rarer bursts and never shrinking to grow again.
    ModelPool pool(limits(1, 8, 300'000), 100, 300);
    pool.run(60'000, 25);
    EXPECT_GE(pool.size(), 3);
    EXPECT_LE(pool.size(), 5);
    pool.reset_counts();
    pool.run(3'600'000, 25);
    EXPECT_EQ(pool.stops(), 0) << "a worker of a pool under steady load was stopped";
    EXPECT_LE(pool.starts(), 2) << "the pool kept growing under a steady load";
    EXPECT_LE(pool.size(), 6);
}

TEST(ScalingTrace, ARampUpAndDownGrowsThenShrinksToMin) {
    ModelPool pool(limits(1, 8, 30'000), 100, 300);
    for (double rate : {5.0, 20.0, 40.0, 60.0}) {
        pool.run(20'000, rate);
    }
    EXPECT_GE(pool.size(), 6) << "60 requests a second of 100 ms need 6 workers";
    EXPECT_LE(pool.max_size(), 8);
    // Down again: one worker less per whole `idle` in which the pool never needed them all.
    for (double rate : {40.0, 20.0}) {
        pool.run(60'000, rate);
    }
    pool.reset_counts();
    pool.run(300'000, 5);
    // Kept: as many as were in flight at once within each `idle` (at 5 a second of 100 ms,
    // three at once come every few seconds).
    EXPECT_LE(pool.size(), 3);
    EXPECT_EQ(pool.starts(), 0) << "shrinking, it grew again";
    pool.run(300'000, 0);
    EXPECT_EQ(pool.size(), 1) << "idle: down to min";
}

TEST(ScalingTrace, OnDemandPoolStartsAtTheFirstRequestAndGoesBackToZero) {
    ModelPool pool(limits(0, 2, 5'000), 50, 200);
    pool.run(10'000, 0);
    EXPECT_EQ(pool.size(), 0);
    EXPECT_EQ(pool.starts(), 0);
    pool.run(3'000, 2, false);
    EXPECT_EQ(pool.size(), 1);
    EXPECT_LE(pool.longest_wait_ms(), 300) << "the first request waited for the start-up only";
    pool.run(10'000, 0);
    EXPECT_EQ(pool.size(), 0) << "idle for 5 s: back to zero";
    EXPECT_EQ(pool.stops(), 1);
}

} // namespace
