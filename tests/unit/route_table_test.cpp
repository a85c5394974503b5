#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "liege/route_table.hpp"

using liege::RouteEntry;
using liege::RouteTable;

namespace {

RouteEntry route(std::string vassal, std::vector<std::string> hosts, std::string path = "/") {
    static size_t next_index = 0;
    RouteEntry e;
    e.vassal = std::move(vassal);
    e.generation = 1;
    e.hosts = std::move(hosts);
    e.path = std::move(path);
    e.index = next_index++;
    return e;
}

// The name of the vassal serving host/path, or "-" for no route.
std::string served(const RouteTable& table, std::string_view host, std::string_view path = "/") {
    const RouteEntry* e = table.match(host, path);
    return e ? e->vassal : "-";
}

} // namespace

TEST(RouteTable, ExactBeatsWildcardBeatsDefault) {
    RouteTable table({
        route("default", {"*"}),
        route("wild", {"*.example.com"}),
        route("exact", {"api.example.com"}),
    });
    EXPECT_EQ(served(table, "api.example.com"), "exact");
    EXPECT_EQ(served(table, "www.example.com"), "wild");
    EXPECT_EQ(served(table, "a.b.example.com"), "wild");
    EXPECT_EQ(served(table, "example.com"), "default"); // "*.x" needs at least one more label
    EXPECT_EQ(served(table, "other.test"), "default");
    EXPECT_EQ(served(table, ""), "default");
}

TEST(RouteTable, LongestWildcardSuffixWins) {
    RouteTable table({
        route("com", {"*.com"}),
        route("example", {"*.example.com"}),
        route("eu", {"*.eu.example.com"}),
    });
    EXPECT_EQ(served(table, "x.eu.example.com"), "eu");
    EXPECT_EQ(served(table, "eu.example.com"), "example");
    EXPECT_EQ(served(table, "x.example.com"), "example");
    EXPECT_EQ(served(table, "example.com"), "com");
    EXPECT_EQ(served(table, "com"), "-");
}

TEST(RouteTable, HostIgnoresPortCaseAndTrailingDot) {
    RouteTable table({
        route("app", {"App.Example.com"}),
        route("v6", {"[::1]"}),
        route("wild", {"*.test"}),
    });
    EXPECT_EQ(served(table, "app.example.com:8080"), "app");
    EXPECT_EQ(served(table, "APP.EXAMPLE.COM"), "app");
    EXPECT_EQ(served(table, "app.example.com."), "app");
    EXPECT_EQ(served(table, " app.example.com:80 "), "app");
    EXPECT_EQ(served(table, "[::1]:8080"), "v6");
    EXPECT_EQ(served(table, "[::1]"), "v6");
    EXPECT_EQ(served(table, "Foo.TEST:1"), "wild");
    EXPECT_EQ(served(table, "example.com"), "-");
}

TEST(RouteTable, LongestPathPrefixWinsOnSegmentBoundaries) {
    RouteTable table({
        route("root", {"*"}, "/"),
        route("api", {"*"}, "/api"),
        route("v2", {"*"}, "/api/v2/"),
    });
    EXPECT_EQ(served(table, "h", "/"), "root");
    EXPECT_EQ(served(table, "h", "/index.html"), "root");
    EXPECT_EQ(served(table, "h", "/api"), "api");
    EXPECT_EQ(served(table, "h", "/api/"), "api");
    EXPECT_EQ(served(table, "h", "/api/users"), "api");
    EXPECT_EQ(served(table, "h", "/apix"), "root");
    EXPECT_EQ(served(table, "h", "/api?q=1"), "api");
    EXPECT_EQ(served(table, "h", "/api/v2"), "v2");
    EXPECT_EQ(served(table, "h", "/api/v2/x"), "v2");
    EXPECT_EQ(served(table, "h", "/api/v20"), "api");
    EXPECT_EQ(served(table, "h", "/API"), "root"); // paths are case-sensitive
    EXPECT_EQ(served(table, "h", ""), "root");
}

TEST(RouteTable, HostTierWithoutMatchingPathFallsThrough) {
    RouteTable table({
        route("default", {"*"}),
        route("wild", {"*.example.com"}, "/static"),
        route("exact-api", {"app.example.com"}, "/api"),
    });
    EXPECT_EQ(served(table, "app.example.com", "/api/x"), "exact-api");
    EXPECT_EQ(served(table, "app.example.com", "/static/a.css"), "wild");
    EXPECT_EQ(served(table, "app.example.com", "/"), "default");
    // The host decides before the path does: the exact host's "/" beats a
    // longer prefix that only a less specific host offers.
    RouteTable deeper({
        route("exact", {"app.example.com"}, "/"),
        route("wild", {"*.example.com"}, "/api/v1"),
    });
    EXPECT_EQ(served(deeper, "app.example.com", "/api/v1/x"), "exact");
}

TEST(RouteTable, NoMatchIsNull) {
    RouteTable empty;
    EXPECT_EQ(empty.match("a.test", "/"), nullptr);

    RouteTable table({route("api", {"api.test"}, "/api")});
    EXPECT_EQ(table.match("api.test", "/"), nullptr);
    EXPECT_EQ(table.match("other.test", "/api"), nullptr);
    EXPECT_NE(table.match("api.test", "/api"), nullptr);
}

TEST(RouteTable, MatchReturnsTheEntryWithItsHandle) {
    RouteEntry e = route("app", {"a.test", "b.test"}, "/x");
    e.generation = 7;
    e.index = 42;
    RouteTable table({e});
    const RouteEntry* m = table.match("b.test", "/x/y");
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(m->vassal, "app");
    EXPECT_EQ(m->generation, 7u);
    EXPECT_EQ(m->index, 42u);
    EXPECT_EQ(m, &table.entries()[0]);
}

TEST(RouteTable, SameHostAndPathFirstListedWinsAndTheOtherIsShadowed) {
    RouteTable table({
        route("first", {"*"}),
        route("second", {"*", "second.test"}),
        route("third", {"*"}, "/other"),
    });
    EXPECT_EQ(served(table, "x.test"), "first");
    EXPECT_EQ(served(table, "second.test"), "second");
    ASSERT_EQ(table.shadowed().size(), 1u);
    EXPECT_EQ(table.shadowed()[0].winner, 0u);
    EXPECT_EQ(table.shadowed()[0].loser, 1u);
    EXPECT_EQ(table.shadowed()[0].host, "*");
    EXPECT_EQ(table.shadowed()[0].path, "/");
}

TEST(RouteTable, NormalizeHost) {
    char buf[16];
    EXPECT_EQ(RouteTable::normalize_host("Ab.C:80", buf, sizeof buf), "ab.c");
    EXPECT_EQ(RouteTable::normalize_host("[::1]:80", buf, sizeof buf), "[::1]");
    EXPECT_EQ(RouteTable::normalize_host("a-very-long-host.example", buf, sizeof buf), "");
}

TEST(RouteTable, SharedBetweenThreadsReadOnly) {
    auto table = std::make_shared<const RouteTable>(std::vector<RouteEntry>{
        route("a", {"a.test"}), route("b", {"*.b.test"}, "/api"), route("d", {"*"})});
    std::vector<std::thread> threads;
    std::vector<int> wrong(4, 0);
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([table, &wrong, t] {
            for (int i = 0; i < 10'000; ++i) {
                wrong[t] += served(*table, "A.test:1") != "a";
                wrong[t] += served(*table, "x.b.test", "/api/1") != "b";
                wrong[t] += served(*table, "x.b.test", "/") != "d";
            }
        });
    }
    for (auto& th : threads) {
        th.join();
    }
    EXPECT_EQ(wrong, std::vector<int>(4, 0));
}
