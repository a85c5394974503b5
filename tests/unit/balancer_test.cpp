#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <thread>
#include <vector>

#include "liege/balancer.hpp"

using namespace liege;

namespace {

std::vector<std::shared_ptr<Backend>> make_backends(int n) {
    std::vector<std::shared_ptr<Backend>> v;
    for (int i = 0; i < n; ++i) {
        v.push_back(
            std::make_shared<Backend>(parse_address("127.0.0.1:" + std::to_string(9000 + i))));
    }
    return v;
}

} // namespace

TEST(Balancer, RoundRobinCyclesThroughAll) {
    Balancer b(LbPolicy::RoundRobin, make_backends(3));
    std::map<int, int> seen;
    for (int i = 0; i < 30; ++i) {
        seen[b.pick(0, 0)]++;
    }
    EXPECT_EQ(seen.size(), 3u);
    for (auto& [idx, count] : seen) {
        EXPECT_EQ(count, 10) << idx;
    }
}

TEST(Balancer, LeastConnPicksFewestInFlight) {
    auto backends = make_backends(3);
    backends[0]->in_flight = 5;
    backends[1]->in_flight = 1;
    backends[2]->in_flight = 3;
    Balancer b(LbPolicy::LeastConn, backends);
    for (int i = 0; i < 10; ++i) {
        EXPECT_EQ(b.pick(0, 0), 1);
    }
}

TEST(Balancer, LeastConnSpreadsTies) {
    Balancer b(LbPolicy::LeastConn, make_backends(4));
    std::map<int, int> seen;
    for (int i = 0; i < 40; ++i) {
        seen[b.pick(0, 0)]++;
    }
    EXPECT_EQ(seen.size(), 4u) << "ties must not always go to the first backend";
}

TEST(Balancer, SkipsDownAndExcludedBackends) {
    auto backends = make_backends(3);
    const int64_t now = 1'000'000;
    backends[0]->mark_failed(now);
    Balancer b(LbPolicy::RoundRobin, backends);
    for (int i = 0; i < 10; ++i) {
        int picked = b.pick(/*exclude=*/1u << 2, now);
        EXPECT_EQ(picked, 1);
    }
    EXPECT_EQ(b.pick((1u << 1) | (1u << 2), now), -1);
}

TEST(Balancer, AllDownGivesNone) {
    auto backends = make_backends(2);
    const int64_t now = 5000;
    backends[0]->mark_failed(now);
    backends[1]->mark_failed(now);
    Balancer b(LbPolicy::LeastConn, backends);
    EXPECT_EQ(b.pick(0, now), -1);
    EXPECT_GE(b.pick(0, now + 1000), 0) << "back up once the cool-off has passed";
}

TEST(Backend, CoolOffGrowsAndResets) {
    Backend be(parse_address("127.0.0.1:1"));
    EXPECT_EQ(be.mark_failed(0), 1000);
    EXPECT_EQ(be.mark_failed(0), 2000);
    EXPECT_EQ(be.mark_failed(0), 4000);
    for (int i = 0; i < 10; ++i) {
        EXPECT_LE(be.mark_failed(0), 30'000);
    }
    be.mark_ok();
    EXPECT_TRUE(be.is_up(0));
    EXPECT_EQ(be.mark_failed(0), 1000);
}

TEST(ThreadForConnection, KeepsItUnlessAnotherThreadHoldsTwoFewer) {
    std::vector<int> loads = {5, 4, 5};
    auto load = [&](unsigned i) { return loads[i]; };
    EXPECT_EQ(thread_for_connection(0, 3, load), 0u) << "one fewer is not worth a hand-over";
    loads = {5, 3, 5};
    EXPECT_EQ(thread_for_connection(0, 3, load), 1u);
    EXPECT_EQ(thread_for_connection(2, 3, load), 1u);
    EXPECT_EQ(thread_for_connection(1, 3, load), 1u) << "the least loaded keeps its own";
    loads = {9, 2, 1, 1};
    EXPECT_EQ(thread_for_connection(0, 4, load), 2u) << "the fewest, the first of them on a tie";
    loads = {0};
    EXPECT_EQ(thread_for_connection(0, 1, load), 0u);
}

TEST(ThreadForConnection, ConnectionsAllAcceptedByOneThreadEndUpEven) {
    // The worst the kernel's hash can do: every connection lands on thread 0.
    std::vector<int> loads(4, 0);
    auto load = [&](unsigned i) { return loads[i]; };
    for (int n = 0; n < 1000; ++n) {
        loads[thread_for_connection(0, 4, load)]++;
        auto [lo, hi] = std::minmax_element(loads.begin(), loads.end());
        ASSERT_LE(*hi - *lo, 2) << "after " << n + 1 << " connections";
    }
    // And connections closing on one thread steer the next ones to it.
    loads = {250, 250, 250, 250};
    loads[3] -= 100;
    for (int n = 0; n < 100; ++n) {
        loads[thread_for_connection(n % 3, 4, load)]++;
    }
    EXPECT_GE(loads[3], 248);
}

TEST(Balancer, ClaimTakesASlotAndNeverMoreThanTheConcurrency) {
    auto backends = make_backends(2);
    for (auto& be : backends) {
        be->concurrency = 2;
    }
    Balancer b(LbPolicy::LeastConn, backends);
    std::map<int, int> got;
    for (int i = 0; i < 4; ++i) {
        Balancer::Claim c = b.claim(0, 0);
        ASSERT_GE(c.index, 0) << "slot " << i;
        got[c.index]++;
    }
    EXPECT_EQ(got[0], 2);
    EXPECT_EQ(got[1], 2);
    EXPECT_EQ(backends[0]->in_flight.load(), 2);
    Balancer::Claim full = b.claim(0, 0);
    EXPECT_EQ(full.index, -1);
    EXPECT_TRUE(full.busy) << "every backend is up, only busy";
    backends[1]->in_flight--;
    EXPECT_EQ(b.claim(0, 0).index, 1) << "the slot that came free";
}

TEST(Balancer, ClaimWithoutAConcurrencyLimitNeverRunsOut) {
    auto backends = make_backends(1);
    Balancer b(LbPolicy::LeastConn, backends);
    for (int i = 0; i < 100; ++i) {
        ASSERT_EQ(b.claim(0, 0).index, 0);
    }
    EXPECT_EQ(backends[0]->in_flight.load(), 100);
}

TEST(Balancer, ClaimThatFindsNothingUpIsNotBusy) {
    auto backends = make_backends(2);
    backends[0]->concurrency = 1;
    backends[0]->in_flight = 1;
    backends[1]->mark_failed(0);
    Balancer b(LbPolicy::LeastConn, backends);
    Balancer::Claim c = b.claim(/*exclude=*/0, 10);
    EXPECT_EQ(c.index, -1);
    EXPECT_TRUE(c.busy) << "backend 0 is up, only full";
    Balancer::Claim none = b.claim(/*exclude=*/1, 10);
    EXPECT_EQ(none.index, -1);
    EXPECT_FALSE(none.busy) << "backend 0 tried, backend 1 down: waiting would not help";
}

TEST(Balancer, ClaimsFromManyThreadsStayWithinTheLimit) {
    auto backends = make_backends(3);
    for (auto& be : backends) {
        be->concurrency = 5;
    }
    Balancer b(LbPolicy::LeastConn, backends);
    std::atomic<int> claimed{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&] {
            for (int i = 0; i < 100; ++i) {
                if (b.claim(0, 0).index >= 0) {
                    claimed++;
                }
            }
        });
    }
    for (auto& t : threads) {
        t.join();
    }
    EXPECT_EQ(claimed.load(), 15);
    for (auto& be : backends) {
        EXPECT_EQ(be->in_flight.load(), 5);
    }
}
