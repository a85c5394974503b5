// `liege router` when it runs out of file descriptors, as a user sees it. The issue's rule: "the
// fd hard limit is 20,000: handle EMFILE by pausing accepts, never by crashing".
//
// Each test runs the router under prlimit with a limit of kFdLimit descriptors, so that a few
// dozen connections use up what would take thousands in production, and with one thread: one
// listening socket, whose accept queue the kernel hands out first come, first served, so the
// clients that connected first are the ones the router holds.
//
// At the limit every descriptor that frees up goes to the next client in the backlog, so a held
// client's request can only travel over an upstream connection the router already has (pooled);
// one that needs a new upstream connection gets a 503 from the router.
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "harness.hpp"

using namespace liege::test;

namespace {

constexpr int kFdLimit = 64;
// More clients than the router could hold even if it had no other descriptor open.
constexpr int kClients = kFdLimit + 16;
constexpr const char* kPrlimit = "/usr/bin/prlimit"; // util-linux

class RouterLimits : public RouterFixture {
protected:
    // Starts the router in front of `backend_addresses` under a limit of kFdLimit descriptors.
    // Held clients and pooled upstream connections must outlive the test's slowest run, so their
    // timeouts are well beyond it. Use with ASSERT_NO_FATAL_FAILURE.
    void start_limited_router(const std::vector<std::string>& backend_addresses) {
        ASSERT_TRUE(std::filesystem::exists(kPrlimit)) << kPrlimit << " (util-linux) is missing";
        const std::string limit = std::to_string(kFdLimit);
        ASSERT_NO_FATAL_FAILURE(start_router(
            backend_addresses,
            {"--threads", "1", "--header-timeout", "120s", "--upstream-idle-timeout", "120s"},
            {kPrlimit, "--nofile=" + limit + ":" + limit}));
    }

    // `count` connections to the router, in the order they connected. A connect completes in the
    // kernel whether or not the router accepts it; those it cannot hold wait in the backlog.
    std::vector<std::unique_ptr<HttpClient>> connect_clients(int count) {
        std::vector<std::unique_ptr<HttpClient>> clients;
        for (int i = 0; i < count; ++i) {
            clients.push_back(std::make_unique<HttpClient>(port()));
        }
        return clients;
    }

    // True once the router has no more descriptors open than `fds`.
    bool router_fds_fall_to(int fds) {
        return poll_until([&] {
            int n = open_fds(router().pid());
            return n >= 0 && n <= fds;
        });
    }

    // Out of descriptors with no upstream connection to reuse and no idle keep-alive client to
    // close: a held client's request gets a 503 from the router, the backend is not blamed for
    // it, and the first request once descriptors are free again is served. `backend_name` is
    // what the backend answers to GET /id.
    void expect_503_then_recovery(const std::string& backend_address,
                                  const std::string& backend_name) {
        ASSERT_NO_FATAL_FAILURE(start_limited_router({backend_address}));
        const int fds_start = open_fds(router().pid());
        ASSERT_GT(fds_start, 0);
        // Held before the others come, and not yet asking anything: no keep-alive client the
        // router could close to make room. (The first connection may open more than its own
        // descriptor.)
        auto held = std::make_unique<HttpClient>(port());
        ASSERT_TRUE(poll_until([&] { return open_fds(router().pid()) > fds_start; }))
            << "the router never accepted the held client";
        const int fds_before = open_fds(router().pid());

        auto others = connect_clients(kClients);
        ASSERT_TRUE(log_has_line_with({"warning", "pausing accepts"}));
        auto r = held->get("/id");
        EXPECT_EQ(r.status, 503) << r.head << r.body;
        EXPECT_EQ(r.body, "503 Service Unavailable\n");
        EXPECT_TRUE(r.closes_connection()) << r.head;
        EXPECT_TRUE(log_has_line_with({"503", "GET /id", "out of file descriptors"}));
        // The shortage is the router's own. A backend marked down for it would stay down (1 s,
        // doubling up to 30 s) after descriptors are free again.
        EXPECT_EQ(router().err().text().find("down for"), std::string::npos);
        ASSERT_TRUE(router().running());

        held.reset();
        others.clear();
        ASSERT_TRUE(router_fds_fall_to(fds_before - 1))
            << "the router still has " << open_fds(router().pid()) << " descriptors open, "
            << fds_before << " with one client";
        auto fresh = client();
        r = fresh.get("/id");
        EXPECT_EQ(r.status, 200) << r.head << r.body;
        EXPECT_EQ(r.body, backend_name);
    }

    void TearDown() override {
        RouterFixture::TearDown();
        unix_backend_.reset();
        if (!dir_.empty()) {
            std::filesystem::remove_all(dir_);
        }
    }

    // A liege-test-backend on a unix socket; returns its address.
    std::string start_unix_backend(const std::string& name) {
        dir_ = make_temp_dir("liege-limits");
        const std::string address = "unix:" + (dir_ / "backend.sock").string();
        unix_backend_ = std::make_unique<Process>(
            std::vector<std::string>{LIEGE_TEST_BACKEND, "--listen", address, "--name", name});
        EXPECT_TRUE(unix_backend_->out().wait_for_line_containing("listening on " + address))
            << unix_backend_->describe();
        return address;
    }

    std::filesystem::path dir_;
    std::unique_ptr<Process> unix_backend_;
};

} // namespace

TEST_F(RouterLimits, ClientsBeyondTheDescriptorLimitWaitInTheBacklogAndAreAllServed) {
    auto& backend = add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_limited_router({backend.address()}));
    {
        // Leaves an upstream connection in the pool for the held clients' requests.
        auto warm = client();
        ASSERT_EQ(warm.get("/id").status, 200);
    }
    auto clients = connect_clients(kClients);
    ASSERT_TRUE(log_has_line_with({"warning", "pausing accepts"}));
    ASSERT_TRUE(router().running());

    // Oldest first: the router holds the first clients, and each one that leaves makes room for
    // the next one in the backlog, which is accepted and served in its turn.
    for (std::size_t i = 0; i < clients.size(); ++i) {
        SCOPED_TRACE("client " + std::to_string(i));
        auto r = clients[i]->get("/id");
        EXPECT_EQ(r.status, 200) << r.head << r.body;
        EXPECT_EQ(r.body, "solo");
        clients[i].reset();
    }
    EXPECT_EQ(backend.counts().requests, static_cast<uint64_t>(kClients) + 1);
}

TEST_F(RouterLimits, NoDescriptorForABackendConnectionGets503AndTheRouterRecovers) {
    auto& backend = add_backend("solo");
    expect_503_then_recovery(backend.address(), "solo");
}

// A unix socket backend: libuv reports the failed socket() from its connect callback instead of
// from the call.
TEST_F(RouterLimits, NoDescriptorForAUnixBackendConnectionGets503AndTheRouterRecovers) {
    const std::string address = start_unix_backend("local");
    ASSERT_FALSE(HasFailure());
    expect_503_then_recovery(address, "local");
}

// A flood of idle keep-alive connections does not lock new clients out: out of descriptors, the
// router closes the longest-idle keep-alive clients to make room (as nginx reuses connections),
// and every newcomer is accepted and served.
TEST_F(RouterLimits, IdleKeepAliveClientsAreClosedLongestIdleFirstToMakeRoom) {
    auto& backend = add_backend("solo");
    ASSERT_NO_FATAL_FAILURE(start_limited_router({backend.address()}));
    std::vector<std::unique_ptr<HttpClient>> clients;
    for (int i = 0; i < kClients; ++i) {
        SCOPED_TRACE("client " + std::to_string(i));
        clients.push_back(std::make_unique<HttpClient>(port()));
        auto r = clients.back()->get("/id"); // each one kept alive, idle after its answer
        ASSERT_EQ(r.status, 200) << r.head << r.body;
    }
    EXPECT_TRUE(log_has_line_with({"warning", "out of file descriptors; closed",
                                   "idle keep-alive connection(s), the longest idle first"}));
    // The first ones were closed; the newest is still held and served again.
    EXPECT_TRUE(clients.front()->wait_closed()) << "the longest idle client is still open";
    auto r = clients.back()->get("/id");
    EXPECT_EQ(r.status, 200) << r.head << r.body;
    ASSERT_TRUE(router().running());
}

// --router-opt max_conns_per_ip=N: one client address holds at most N connections at once, so a
// host that floods the router with idle keep-alive connections cannot lock out the others.
TEST_F(RouterLimits, OneAddressHoldsAtMostMaxConnsPerIpAndOtherAddressesStillGetIn) {
    TestBackend backend("b");
    ASSERT_NO_FATAL_FAILURE(start_router({backend.address()},
                                         {"--threads", "2", "--router-opt", "max_conns_per_ip=3"}));
    // Three connections from 127.0.0.1, each proven held by an answered request.
    std::vector<std::unique_ptr<HttpClient>> held;
    for (int i = 0; i < 3; ++i) {
        held.push_back(std::make_unique<HttpClient>(port()));
        ASSERT_EQ(held.back()->get("/id").status, 200) << "connection " << i + 1;
    }
    // A fourth from the same address is closed at once, its request never answered, and that
    // is logged once.
    for (int i = 0; i < 2; ++i) {
        HttpClient over(port());
        over.send("GET /id HTTP/1.1\r\nHost: h\r\n\r\n");
        EXPECT_TRUE(over.wait_closed()) << "a connection over the cap is closed";
    }
    EXPECT_TRUE(log_has_line_with({"warning", "client 127.0.0.1: max_conns_per_ip (3) reached"}));
    EXPECT_EQ(count_of(router().describe(1000), "max_conns_per_ip (3) reached"), 1u)
        << "logged once while the address stays at the cap";
    // Another client address is not affected.
    ClientSocketOptions other;
    other.source_address = "127.0.0.2";
    HttpClient elsewhere(port(), other);
    EXPECT_EQ(elsewhere.get("/id").status, 200);
    // The held connections still work, and once one closes the address may open another.
    EXPECT_EQ(held[0]->get("/id").status, 200);
    held.pop_back();
    ASSERT_TRUE(poll_until([&] {
        try {
            HttpClient again(port());
            return again.get("/id", 1s).status == 200;
        } catch (const HttpError&) {
            return false; // still counted: the router has not seen the close yet
        }
    }));
}
