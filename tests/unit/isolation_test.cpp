// Whom a vassal's workers run as (the tyrant rule, a non-root emperor), and the limits written
// for them: pure logic over a fake user database.
#include "liege/isolation.hpp"

#include <sys/resource.h>

#include <map>

#include <gtest/gtest.h>

namespace liege {
namespace {

// root 0:0, alice 1000:1000 (also in "web" 2000), bob 1001:1001, nobody 65534:65534.
class FakeDb final : public UserDb {
public:
    FakeDb() {
        users_ = {{"root", {0, 0, "root", "/root"}},
                  {"alice", {1000, 1000, "alice", "/home/alice"}},
                  {"bob", {1001, 1001, "bob", "/home/bob"}},
                  {"nobody", {65534, 65534, "nobody", "/nonexistent"}}};
        groups_ = {{"root", {0, "root"}},
                   {"alice", {1000, "alice"}},
                   {"bob", {1001, "bob"}},
                   {"web", {2000, "web"}},
                   {"nogroup", {65534, "nogroup"}}};
    }
    std::optional<UserRecord> user_by_name(const std::string& name) const override {
        auto it = users_.find(name);
        return it == users_.end() ? std::nullopt : std::optional(it->second);
    }
    std::optional<UserRecord> user_by_uid(uint32_t uid) const override {
        for (const auto& [n, u] : users_) {
            if (u.uid == uid) {
                return u;
            }
        }
        return std::nullopt;
    }
    std::optional<GroupRecord> group_by_name(const std::string& name) const override {
        auto it = groups_.find(name);
        return it == groups_.end() ? std::nullopt : std::optional(it->second);
    }
    std::optional<GroupRecord> group_by_gid(uint32_t gid) const override {
        for (const auto& [n, g] : groups_) {
            if (g.gid == gid) {
                return g;
            }
        }
        return std::nullopt;
    }
    std::vector<uint32_t> groups_of(const std::string& user, uint32_t gid) const override {
        std::vector<uint32_t> out{gid};
        if (user == "alice" && gid != 2000) {
            out.push_back(2000);
        }
        return out;
    }

private:
    std::map<std::string, UserRecord> users_;
    std::map<std::string, GroupRecord> groups_;
};

const EmperorIdentity kRoot{0, 0};
const EmperorIdentity kAlice{1000, 1000};

CredentialsResult resolve(const std::string& user, const std::string& group,
                          std::optional<uint32_t> file_uid, const EmperorIdentity& emperor,
                          std::optional<uint32_t> file_gid = std::nullopt) {
    static const FakeDb db;
    return resolve_credentials({user, group, true}, file_uid, file_gid, emperor, db);
}

TEST(Credentials, RootRunsANamedUserWithItsPrimaryAndSupplementaryGroups) {
    auto r = resolve("alice", "", 0, kRoot);
    ASSERT_TRUE(r.credentials) << r.error;
    EXPECT_TRUE(r.credentials->change);
    EXPECT_EQ(r.credentials->uid, 1000u);
    EXPECT_EQ(r.credentials->gid, 1000u);
    EXPECT_EQ(r.credentials->groups, (std::vector<uint32_t>{1000, 2000}));
    EXPECT_EQ(r.credentials->user, "alice");
    EXPECT_EQ(r.credentials->group, "alice");
    EXPECT_EQ(r.credentials->home, "/home/alice");
}

TEST(Credentials, GroupByNameOrNumberReplacesThePrimaryGroup) {
    auto by_name = resolve("alice", "web", 0, kRoot);
    ASSERT_TRUE(by_name.credentials) << by_name.error;
    EXPECT_EQ(by_name.credentials->gid, 2000u);
    EXPECT_EQ(by_name.credentials->group, "web");
    auto by_number = resolve("65534", "65534", 0, kRoot);
    ASSERT_TRUE(by_number.credentials) << by_number.error;
    EXPECT_EQ(by_number.credentials->uid, 65534u);
    EXPECT_EQ(by_number.credentials->user, "nobody");
    EXPECT_EQ(by_number.credentials->group, "nogroup");
}

TEST(Credentials, NoUserAndNoGroupChangesNothing) {
    auto r = resolve("", "", 0, kRoot);
    ASSERT_TRUE(r.credentials) << r.error;
    EXPECT_FALSE(r.credentials->change);
    EXPECT_FALSE(r.credentials->user_named);
    EXPECT_EQ(r.credentials->uid, 0u);
}

TEST(Credentials, UnknownUserOrGroupIsAnErrorNamingIt) {
    EXPECT_EQ(resolve("mallory", "", 0, kRoot).error, "user 'mallory' does not exist");
    EXPECT_EQ(resolve("alice", "wheel", 0, kRoot).error, "group 'wheel' does not exist");
    // A uid with no passwd entry has no primary group to default to.
    auto r = resolve("4242", "", 0, kRoot);
    EXPECT_FALSE(r.credentials);
    EXPECT_NE(r.error.find("no passwd entry"), std::string::npos) << r.error;
    auto with_group = resolve("4242", "4242", 0, kRoot);
    ASSERT_TRUE(with_group.credentials) << with_group.error;
    EXPECT_EQ(with_group.credentials->home, "/");
    EXPECT_EQ(with_group.credentials->user, "4242");
    EXPECT_EQ(with_group.credentials->groups, (std::vector<uint32_t>{4242}));
}

TEST(Credentials, OwnerIsTheFilesOwner) {
    auto r = resolve("@owner", "", 1001, kRoot);
    ASSERT_TRUE(r.credentials) << r.error;
    EXPECT_EQ(r.credentials->uid, 1001u);
    EXPECT_EQ(r.credentials->gid, 1001u);
    EXPECT_EQ(r.credentials->user, "bob");
    // An owner without a passwd entry takes the file's group.
    auto unnamed = resolve("@owner", "", 4242, kRoot, 4343);
    ASSERT_TRUE(unnamed.credentials) << unnamed.error;
    EXPECT_EQ(unnamed.credentials->gid, 4343u);
    EXPECT_FALSE(resolve("@owner", "", std::nullopt, kRoot).credentials);
}

TEST(Tyrant, AFileOwnedByAUserRunsOnlyAsThatUser) {
    auto other = resolve("bob", "", 1000, kRoot);
    EXPECT_FALSE(other.credentials);
    EXPECT_NE(other.error.find("owned by alice (uid 1000)"), std::string::npos) << other.error;
    EXPECT_NE(other.error.find("not as bob (uid 1001)"), std::string::npos) << other.error;
    // Leaving user out would run it as root.
    auto unset = resolve("", "", 1000, kRoot);
    EXPECT_FALSE(unset.credentials);
    EXPECT_NE(unset.error.find("not as root (uid 0), the emperor's user"), std::string::npos)
        << unset.error;
    EXPECT_TRUE(resolve("alice", "", 1000, kRoot).credentials);
    EXPECT_TRUE(resolve("1000", "", 1000, kRoot).credentials);
    EXPECT_TRUE(resolve("@owner", "", 1000, kRoot).credentials);
}

TEST(Tyrant, OnlyTheOwnersGroups) {
    EXPECT_TRUE(resolve("alice", "web", 1000, kRoot).credentials); // a supplementary group
    auto foreign = resolve("alice", "bob", 1000, kRoot);
    EXPECT_FALSE(foreign.credentials);
    EXPECT_NE(foreign.error.find("one of that user's groups, not bob (gid 1001)"),
              std::string::npos)
        << foreign.error;
}

TEST(Tyrant, AFileOwnedByRootMayNameAnyone) {
    EXPECT_TRUE(resolve("bob", "web", 0, kRoot).credentials);
    EXPECT_TRUE(resolve("nobody", "", 0, kRoot).credentials);
}

TEST(NonRootEmperor, CannotChangeUsersAndSaysSo) {
    auto r = resolve("bob", "", 1000, kAlice);
    EXPECT_FALSE(r.credentials);
    EXPECT_NE(r.error.find("the emperor runs as alice (uid 1000), not as root"), std::string::npos)
        << r.error;
    auto group = resolve("alice", "web", 1000, kAlice);
    EXPECT_FALSE(group.credentials);
    EXPECT_NE(group.error.find("cannot run workers with group web"), std::string::npos)
        << group.error;
    // Itself is fine, with nothing to change; the tyrant rule binds a root emperor only.
    for (const char* user : {"", "alice", "@owner"}) {
        auto self = resolve(user, "", 1000, kAlice);
        ASSERT_TRUE(self.credentials) << user << ": " << self.error;
        EXPECT_FALSE(self.credentials->change) << user;
    }
    EXPECT_TRUE(resolve("", "", 1001, kAlice).credentials);
}

TEST(CpuMax, PercentOfOneCpuIsQuotaOverAPeriod) {
    EXPECT_EQ(format_cpu_max(150), "150000 100000");
    EXPECT_EQ(format_cpu_max(50), "50000 100000");
    EXPECT_EQ(format_cpu_max(1), "1000 100000"); // the kernel's least quota is 1 ms
    EXPECT_EQ(format_cpu_max(0), "max 100000");
    EXPECT_EQ(format_cpu_max(25, 200'000), "50000 200000");
}

TEST(CpuMax, ParsesWhatTheKernelWrites) {
    auto limited = parse_cpu_max("150000 100000\n");
    ASSERT_TRUE(limited);
    EXPECT_EQ(limited->quota_us, 150000u);
    EXPECT_EQ(limited->period_us, 100000u);
    auto unlimited = parse_cpu_max("max 100000\n");
    ASSERT_TRUE(unlimited);
    EXPECT_FALSE(unlimited->quota_us);
    auto quota_only = parse_cpu_max("20000");
    ASSERT_TRUE(quota_only);
    EXPECT_EQ(quota_only->quota_us, 20000u);
    EXPECT_EQ(quota_only->period_us, 100000u);
    for (const char* bad : {"", "x 100000", "100 0", "100 y", "-5 100000", "1 2 3"}) {
        EXPECT_FALSE(parse_cpu_max(bad)) << bad;
    }
    EXPECT_EQ(parse_cpu_max(format_cpu_max(150))->quota_us, 150000u);
}

TEST(LimitFiles, OnlyTheLimitsSet) {
    Limits none;
    EXPECT_TRUE(cgroup_limit_files(none).empty());
    EXPECT_TRUE(rlimit_settings(none).empty());
    Limits l;
    l.memory = 64 << 20;
    l.pids = 16;
    l.cpu = 50;
    l.nofile = 4096;
    l.core = Limits::kUnlimited;
    using Files = std::vector<std::pair<std::string, std::string>>;
    EXPECT_EQ(cgroup_limit_files(l),
              (Files{{"memory.max", "67108864"}, {"pids.max", "16"}, {"cpu.max", "50000 100000"}}));
    using Rlimits = std::vector<std::pair<int, uint64_t>>;
    EXPECT_EQ(rlimit_settings(l), (Rlimits{{RLIMIT_NOFILE, 4096},
                                           {RLIMIT_CORE, static_cast<uint64_t>(RLIM_INFINITY)}}));
    l.nofile = Limits::kUnlimited;
    const auto unlimited = rlimit_settings(l);
    ASSERT_EQ(unlimited.size(), 2u);
    EXPECT_EQ(unlimited[0].first, RLIMIT_NOFILE);
    EXPECT_NE(unlimited[0].second, static_cast<uint64_t>(RLIM_INFINITY)); // fs.nr_open
    EXPECT_GE(unlimited[0].second, 1024u);
}

TEST(Isolate, SetsUserEnvironmentUnlessTheVassalDoes) {
    Vassal v;
    v.identity.user = "alice";
    v.limits.memory = 1 << 20;
    Credentials c;
    c.change = true;
    c.user_named = true;
    c.uid = 1000;
    c.gid = 1000;
    c.groups = {1000};
    c.user = "alice";
    c.home = "/home/alice";
    SpawnSpec spec;
    spec.env = {{"HOME", "/srv/app"}};
    isolate(v, c, "", spec);
    ASSERT_TRUE(spec.user);
    EXPECT_EQ(spec.user->uid, 1000u);
    EXPECT_TRUE(spec.no_new_privs);
    using Env = std::vector<std::pair<std::string, std::string>>;
    EXPECT_EQ(spec.env, (Env{{"HOME", "/srv/app"}, {"USER", "alice"}, {"LOGNAME", "alice"}}));
    EXPECT_EQ(spec.cgroup_files.size(), 1u);
    SpawnSpec without_cgroups;
    isolate(v, c, "no writable cgroup v2 hierarchy", without_cgroups);
    EXPECT_TRUE(without_cgroups.cgroup_files.empty());
}

} // namespace
} // namespace liege
