// The vassal queue's rules, with the hand-over to router threads watched instead of posted.
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "../../router/vassal_queue.hpp"

using namespace liege;
using namespace liege::router;

namespace {

QueueSettings sized(uint32_t size) {
    QueueSettings s;
    s.size = size;
    return s;
}

struct QueueFixture : ::testing::Test {
    std::vector<std::shared_ptr<Waiter>> handed;
    std::shared_ptr<VassalQueue> queue = std::make_shared<VassalQueue>(
        "shop", [this](std::shared_ptr<Waiter> w) { handed.push_back(std::move(w)); });
    std::vector<std::shared_ptr<Backend>> backends;

    void serve(int workers, int concurrency, QueueSettings s = sized(3)) {
        backends.clear();
        for (int i = 0; i < workers; ++i) {
            auto be =
                std::make_shared<Backend>(parse_address("127.0.0.1:" + std::to_string(9000 + i)));
            be->concurrency = concurrency;
            backends.push_back(be);
        }
        queue->update(s, LbPolicy::LeastConn, backends, {});
    }
    std::shared_ptr<Waiter> waiter() {
        auto w = std::make_shared<Waiter>();
        w->queue = queue;
        return w;
    }
};

} // namespace

TEST_F(QueueFixture, WaitersGetFreedSlotsInTheOrderTheyCame) {
    serve(1, 1);
    backends[0]->in_flight = 1; // busy
    auto a = waiter();
    auto b = waiter();
    ASSERT_EQ(queue->join(a), VassalQueue::Joined::Waiting);
    ASSERT_EQ(queue->join(b), VassalQueue::Joined::Waiting);
    EXPECT_EQ(queue->length(), 2);
    EXPECT_TRUE(handed.empty());

    backends[0]->in_flight = 0; // the request in flight finished
    queue->pump();
    ASSERT_EQ(handed.size(), 1u);
    EXPECT_EQ(handed[0], a) << "first come, first served";
    EXPECT_EQ(handed[0]->backend, backends[0]);
    EXPECT_FALSE(a->listed);
    EXPECT_EQ(backends[0]->in_flight.load(), 1) << "the slot is taken for the waiter";
    EXPECT_EQ(queue->length(), 1);

    backends[0]->in_flight = 0;
    queue->pump();
    ASSERT_EQ(handed.size(), 2u);
    EXPECT_EQ(handed[1], b);
    EXPECT_EQ(queue->length(), 0);
}

TEST_F(QueueFixture, AFullQueueRefusesAtOnce) {
    serve(1, 1, sized(2));
    backends[0]->in_flight = 1;
    EXPECT_EQ(queue->join(waiter()), VassalQueue::Joined::Waiting);
    EXPECT_EQ(queue->join(waiter()), VassalQueue::Joined::Waiting);
    EXPECT_EQ(queue->join(waiter()), VassalQueue::Joined::Full);
    EXPECT_EQ(queue->length(), 2);
}

TEST_F(QueueFixture, AQueueOfSizeZeroHoldsNothing) {
    serve(1, 1, sized(0));
    EXPECT_FALSE(queue->holds());
    EXPECT_EQ(queue->join(waiter()), VassalQueue::Joined::Full);
}

TEST_F(QueueFixture, AJoinerFindsASlotThatCameFreeMeanwhile) {
    // The request looked before the slot was released: joining pumps, so it is not stranded.
    serve(1, 1);
    auto w = waiter();
    ASSERT_EQ(queue->join(w), VassalQueue::Joined::Waiting);
    ASSERT_EQ(handed.size(), 1u);
    EXPECT_EQ(handed[0], w);
    EXPECT_EQ(queue->length(), 0);
}

TEST_F(QueueFixture, RequestsForAVassalWithNoReadyWorkerWaitForTheFirstOne) {
    serve(0, 0); // starting: the route exists, no worker is ready
    auto w = waiter();
    ASSERT_EQ(queue->join(w), VassalQueue::Joined::Waiting);
    EXPECT_TRUE(handed.empty());
    serve(1, 0); // the next route set has a ready worker
    ASSERT_EQ(handed.size(), 1u);
    EXPECT_EQ(handed[0]->backend, backends[0]);
}

TEST_F(QueueFixture, DrainingAndDownWorkersGetNoWaiter) {
    serve(0, 0);
    auto w = waiter();
    ASSERT_EQ(queue->join(w), VassalQueue::Joined::Waiting);
    auto old = std::make_shared<Backend>(parse_address("127.0.0.1:9100"));
    auto down = std::make_shared<Backend>(parse_address("127.0.0.1:9101"));
    down->mark_failed(steady_now_ms());
    queue->update(sized(3), LbPolicy::LeastConn, {old, down}, {1, 0});
    EXPECT_TRUE(handed.empty());
    EXPECT_EQ(queue->length(), 1);
}

TEST_F(QueueFixture, AWaiterThatLeavesGivesUpItsPlace) {
    serve(1, 1);
    backends[0]->in_flight = 1;
    auto a = waiter();
    auto b = waiter();
    queue->join(a);
    queue->join(b);
    EXPECT_TRUE(queue->leave(*a));
    EXPECT_FALSE(queue->leave(*a)) << "only once";
    EXPECT_EQ(queue->length(), 1);
    backends[0]->in_flight = 0;
    queue->pump();
    ASSERT_EQ(handed.size(), 1u);
    EXPECT_EQ(handed[0], b);
    EXPECT_FALSE(queue->leave(*b)) << "its slot is on its way: the thread gives it back";
}

TEST_F(QueueFixture, AFailedVassalRefusesNewcomersAndThoseWaiting) {
    serve(0, 0);
    auto w = waiter();
    ASSERT_EQ(queue->join(w), VassalQueue::Joined::Waiting);
    queue->update({.size = 3, .failed = true, .last_error = "exit code 3"}, LbPolicy::LeastConn, {},
                  {});
    ASSERT_EQ(handed.size(), 1u);
    EXPECT_EQ(handed[0]->backend, nullptr) << "refused";
    EXPECT_EQ(queue->failure(), "exit code 3");
    EXPECT_EQ(queue->join(waiter()), VassalQueue::Joined::Failed);
}

TEST_F(QueueFixture, AFailedVassalWithAWorkerStillServingKeepsQueueing) {
    // One worker keeps failing, the other serves: its requests wait for it as before.
    serve(1, 1);
    backends[0]->in_flight = 1;
    QueueSettings failed = sized(3);
    failed.failed = true;
    queue->update(failed, LbPolicy::LeastConn, backends, {});
    auto w = waiter();
    EXPECT_EQ(queue->join(w), VassalQueue::Joined::Waiting);
    EXPECT_TRUE(handed.empty());
    backends[0]->in_flight = 0;
    queue->pump();
    ASSERT_EQ(handed.size(), 1u);
    EXPECT_EQ(handed[0]->backend, backends[0]);
}

TEST_F(QueueFixture, ARemovedVassalRefusesThoseWaiting) {
    serve(0, 0);
    queue->join(waiter());
    queue->close();
    ASSERT_EQ(handed.size(), 1u);
    EXPECT_EQ(handed[0]->backend, nullptr);
    EXPECT_EQ(queue->failure(), "the vassal was removed");
}
