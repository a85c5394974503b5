#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#include "liege/router_settings.hpp"

using liege::apply_router_setting;
using liege::RouterOptions;

namespace {

std::string error_of(const std::string& kv) {
    RouterOptions o;
    try {
        apply_router_setting(o, kv);
    } catch (const std::invalid_argument& e) {
        return e.what();
    }
    return "(accepted)";
}

} // namespace

TEST(RouterSettings, SetsEveryTimeoutAndLimit) {
    RouterOptions o;
    apply_router_setting(o, "body_max=1KiB");
    apply_router_setting(o, "header_max=64k");
    apply_router_setting(o, "header_timeout=2s");
    apply_router_setting(o, "keepalive_timeout=1m");
    apply_router_setting(o, "connect_timeout=250ms");
    apply_router_setting(o, "upstream_timeout=90s");
    apply_router_setting(o, "upstream_idle_timeout=5s");
    apply_router_setting(o, "shutdown_timeout=0s");
    apply_router_setting(o, "max_tries=5");
    apply_router_setting(o, "idle_upstream_max=8");
    EXPECT_EQ(o.max_body_size, 1024u);
    EXPECT_EQ(o.max_header_size, 64u * 1024);
    EXPECT_EQ(o.header_timeout.count(), 2000);
    EXPECT_EQ(o.keepalive_timeout.count(), 60'000);
    EXPECT_EQ(o.connect_timeout.count(), 250);
    EXPECT_EQ(o.upstream_timeout.count(), 90'000);
    EXPECT_EQ(o.upstream_idle_timeout.count(), 5000);
    EXPECT_EQ(o.shutdown_timeout.count(), 0);
    EXPECT_EQ(o.max_tries, 5u);
    EXPECT_EQ(o.max_idle_upstream, 8u);
}

TEST(RouterSettings, JsonShowsEveryKey) {
    RouterOptions o;
    apply_router_setting(o, "body_max=10MiB");
    const auto j = liege::router_settings_json(o);
    EXPECT_EQ(j.size(), liege::router_setting_keys().size());
    for (auto key : liege::router_setting_keys()) {
        EXPECT_TRUE(j.contains(std::string(key))) << key;
    }
    EXPECT_EQ(j["body_max"], 10u * 1024 * 1024);
    EXPECT_EQ(j["header_timeout"], "10s");
    EXPECT_EQ(j["max_tries"], 3);
}

TEST(RouterSettings, MistakesNameTheSettingAndWhatIsWrong) {
    EXPECT_EQ(error_of("body_max=lots"),
              "--router-opt body_max=lots: invalid size 'lots': expected a number of bytes with "
              "an optional k, M or G");
    EXPECT_EQ(error_of("header_timeout=0s"), "--router-opt header_timeout=0s: must be above zero");
    EXPECT_EQ(error_of("max_tries=0"), "--router-opt max_tries=0: must be at least 1");
    EXPECT_EQ(error_of("max_tries=-1").rfind("--router-opt max_tries=-1: expected a whole", 0), 0u);
    EXPECT_EQ(error_of("header_max=10"), "--router-opt header_max=10: must be at least 256 bytes");
    EXPECT_NE(error_of("bodymax=1k").find("unknown key 'bodymax' (keys: header_timeout,"),
              std::string::npos);
    EXPECT_NE(error_of("body_max").find("expected KEY=VALUE"), std::string::npos);
    EXPECT_NE(error_of("=1").find("expected KEY=VALUE"), std::string::npos);
}
