// The order of a reload: which workers of the new generation start when, which join the routes,
// how many old ones drain, and when the switch-over comes. No processes: the steps are recorded.
#include "liege/reload_plan.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace {

using liege::ReloadPlan;
using liege::ReloadStrategy;
using Steps = std::vector<std::string>;

struct Recorder {
    Steps steps;
    int64_t now_ms = 1000;

    ReloadPlan plan(ReloadStrategy strategy, int workers) {
        return ReloadPlan(strategy, workers,
                          {[this](int slot) { steps.push_back("spawn " + std::to_string(slot)); },
                           [this](int slot) { steps.push_back("route " + std::to_string(slot)); },
                           [this] { steps.push_back("retire old"); },
                           [this] { steps.push_back("publish"); }},
                          [this] { return now_ms; });
    }
    Steps take() { return std::exchange(steps, {}); }
};

TEST(RollingReload, StartsOneNewWorkerFirst) {
    Recorder r;
    auto plan = r.plan(ReloadStrategy::Rolling, 3);
    plan.begin();
    EXPECT_EQ(r.take(), (Steps{"spawn 1"}));
}

TEST(RollingReload, EachReadyWorkerIsRoutedAndReplacesOneOldWorkerBeforeTheNextStarts) {
    Recorder r;
    auto plan = r.plan(ReloadStrategy::Rolling, 3);
    plan.begin();
    r.take();
    EXPECT_FALSE(plan.worker_ready(1));
    EXPECT_EQ(r.take(), (Steps{"route 1", "retire old", "publish", "spawn 2"}));
    EXPECT_FALSE(plan.worker_ready(2));
    EXPECT_EQ(r.take(), (Steps{"route 2", "retire old", "publish", "spawn 3"}));
}

TEST(RollingReload, SwitchesOverWhenTheLastNewWorkerIsReady) {
    Recorder r;
    auto plan = r.plan(ReloadStrategy::Rolling, 2);
    plan.begin();
    EXPECT_FALSE(plan.worker_ready(1));
    r.take();
    EXPECT_TRUE(plan.worker_ready(2));
    EXPECT_EQ(r.take(), (Steps{"route 2", "retire old", "publish"}));
    EXPECT_EQ(plan.spawned(), 2);
}

TEST(RollingReload, OneWorkerSwitchesOverOnItsFirstReady) {
    Recorder r;
    auto plan = r.plan(ReloadStrategy::Rolling, 1);
    plan.begin();
    EXPECT_TRUE(plan.worker_ready(1));
}

TEST(BlueGreenReload, StartsTheWholeNewGenerationAtOnce) {
    Recorder r;
    auto plan = r.plan(ReloadStrategy::BlueGreen, 3);
    plan.begin();
    EXPECT_EQ(r.take(), (Steps{"spawn 1", "spawn 2", "spawn 3"}));
}

TEST(BlueGreenReload, RoutesNothingUntilEveryNewWorkerIsReady) {
    Recorder r;
    auto plan = r.plan(ReloadStrategy::BlueGreen, 3);
    plan.begin();
    r.take();
    EXPECT_FALSE(plan.worker_ready(2));
    EXPECT_FALSE(plan.worker_ready(1));
    EXPECT_TRUE(r.take().empty());
    EXPECT_TRUE(plan.worker_ready(3));
    EXPECT_TRUE(r.take().empty()); // the switch-over is the caller's, all at once
    EXPECT_EQ(plan.ready(), 3);
}

TEST(ReloadPlan, MeasuresTimeFromBegin) {
    Recorder r;
    auto plan = r.plan(ReloadStrategy::BlueGreen, 1);
    r.now_ms = 5000;
    plan.begin();
    r.now_ms = 5250;
    EXPECT_EQ(plan.elapsed_ms(), 250);
}

} // namespace
