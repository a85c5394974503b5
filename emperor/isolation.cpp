#include "liege/isolation.hpp"

#include <grp.h>
#include <pwd.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstring>
#include <fstream>

#include "liege/containment.hpp"
#include "liege/log.hpp"

namespace liege {

namespace {

class SystemUserDb final : public UserDb {
public:
    std::optional<UserRecord> user_by_name(const std::string& name) const override {
        return user([&](passwd* pw, char* buf, std::size_t size, passwd** out) {
            return ::getpwnam_r(name.c_str(), pw, buf, size, out);
        });
    }
    std::optional<UserRecord> user_by_uid(uint32_t uid) const override {
        return user([&](passwd* pw, char* buf, std::size_t size, passwd** out) {
            return ::getpwuid_r(uid, pw, buf, size, out);
        });
    }
    std::optional<GroupRecord> group_by_name(const std::string& name) const override {
        return group([&](struct group* gr, char* buf, std::size_t size, struct group** out) {
            return ::getgrnam_r(name.c_str(), gr, buf, size, out);
        });
    }
    std::optional<GroupRecord> group_by_gid(uint32_t gid) const override {
        return group([&](struct group* gr, char* buf, std::size_t size, struct group** out) {
            return ::getgrgid_r(gid, gr, buf, size, out);
        });
    }
    std::vector<uint32_t> groups_of(const std::string& user, uint32_t gid) const override {
        int n = 32;
        std::vector<gid_t> list(static_cast<std::size_t>(n));
        while (::getgrouplist(user.c_str(), gid, list.data(), &n) < 0) {
            list.resize(static_cast<std::size_t>(n)); // n is now the number needed
        }
        return {list.begin(), list.begin() + n};
    }

private:
    template <typename Lookup> static std::optional<UserRecord> user(Lookup&& lookup) {
        std::vector<char> buf(16384);
        passwd pw{};
        passwd* out = nullptr;
        int rc;
        while ((rc = lookup(&pw, buf.data(), buf.size(), &out)) == ERANGE && buf.size() < 1 << 20) {
            buf.resize(buf.size() * 2);
        }
        if (rc != 0 || out == nullptr) {
            return std::nullopt;
        }
        return UserRecord{pw.pw_uid, pw.pw_gid, pw.pw_name, pw.pw_dir != nullptr ? pw.pw_dir : ""};
    }
    template <typename Lookup> static std::optional<GroupRecord> group(Lookup&& lookup) {
        std::vector<char> buf(16384);
        struct group gr {};
        struct group* out = nullptr;
        int rc;
        while ((rc = lookup(&gr, buf.data(), buf.size(), &out)) == ERANGE && buf.size() < 1 << 20) {
            buf.resize(buf.size() * 2);
        }
        if (rc != 0 || out == nullptr) {
            return std::nullopt;
        }
        return GroupRecord{gr.gr_gid, gr.gr_name};
    }
};

std::optional<uint32_t> parse_id(std::string_view text) {
    uint32_t value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size() || text.empty()) {
        return std::nullopt;
    }
    return value;
}

// "alice (uid 1000)", "uid 1234" for one without a passwd entry.
std::string user_text(uint32_t uid, const UserDb& db) {
    auto u = db.user_by_uid(uid);
    return u ? u->name + " (uid " + std::to_string(uid) + ")" : "uid " + std::to_string(uid);
}

std::string group_text(uint32_t gid, const UserDb& db) {
    auto g = db.group_by_gid(gid);
    return g ? g->name + " (gid " + std::to_string(gid) + ")" : "gid " + std::to_string(gid);
}

CredentialsResult error(std::string text) {
    return {std::nullopt, std::move(text)};
}

} // namespace

const UserDb& system_user_db() {
    static const SystemUserDb db;
    return db;
}

EmperorIdentity EmperorIdentity::current() {
    return {static_cast<uint32_t>(::geteuid()), static_cast<uint32_t>(::getegid())};
}

CredentialsResult resolve_credentials(const Identity& identity, std::optional<uint32_t> file_uid,
                                      std::optional<uint32_t> file_gid,
                                      const EmperorIdentity& emperor, const UserDb& db) {
    Credentials c;
    c.user_named = !identity.user.empty();
    // The user, and the group it brings when `group` does not name one.
    std::optional<UserRecord> record;
    std::optional<uint32_t> primary;
    if (identity.user.empty()) {
        c.uid = emperor.uid;
        record = db.user_by_uid(emperor.uid);
        primary = emperor.gid;
    } else if (identity.user == "@owner") {
        if (!file_uid) {
            return error("user = \"@owner\" needs a vassal file to take its owner from");
        }
        c.uid = *file_uid;
        record = db.user_by_uid(c.uid);
        primary = record ? std::optional(record->gid) : file_gid;
    } else if (auto uid = parse_id(identity.user)) {
        c.uid = *uid;
        record = db.user_by_uid(c.uid);
        if (record) {
            primary = record->gid;
        }
    } else {
        record = db.user_by_name(identity.user);
        if (!record) {
            return error("user '" + identity.user + "' does not exist");
        }
        c.uid = record->uid;
        primary = record->gid;
    }
    if (identity.group.empty()) {
        if (!primary) {
            return error("uid " + std::to_string(c.uid) +
                         " has no passwd entry, so no primary group: set group");
        }
        c.gid = *primary;
    } else if (auto gid = parse_id(identity.group)) {
        c.gid = *gid;
    } else {
        auto g = db.group_by_name(identity.group);
        if (!g) {
            return error("group '" + identity.group + "' does not exist");
        }
        c.gid = g->gid;
    }
    c.user = record ? record->name : std::to_string(c.uid);
    auto g = db.group_by_gid(c.gid);
    c.group = g ? g->name : std::to_string(c.gid);
    c.home = record && !record->home.empty() ? record->home : "/";
    c.groups = record ? db.groups_of(record->name, c.gid) : std::vector<uint32_t>{c.gid};

    if (emperor.uid == 0 && file_uid && *file_uid != 0) {
        // The tyrant rule: the file's owner, with one of the owner's groups.
        const std::string owner = user_text(*file_uid, db);
        if (c.uid != *file_uid) {
            return error("the vassal file is owned by " + owner + ", so it may run only as " +
                         "that user (user = \"@owner\"), not as " + user_text(c.uid, db) +
                         (identity.user.empty() ? ", the emperor's user" : ""));
        }
        std::vector<uint32_t> allowed;
        if (auto o = db.user_by_uid(*file_uid)) {
            allowed = db.groups_of(o->name, o->gid);
            allowed.push_back(o->gid);
        } else if (file_gid) {
            allowed.push_back(*file_gid);
        }
        if (std::find(allowed.begin(), allowed.end(), c.gid) == allowed.end()) {
            return error("the vassal file is owned by " + owner + ", so it may run only with " +
                         "one of that user's groups, not " + group_text(c.gid, db));
        }
    }
    if (emperor.uid != 0) {
        if (c.uid != emperor.uid) {
            return error("the emperor runs as " + user_text(emperor.uid, db) +
                         ", not as root, so it cannot run workers as " + user_text(c.uid, db));
        }
        if (c.gid != emperor.gid) {
            return error("the emperor runs as " + user_text(emperor.uid, db) +
                         ", not as root, so it cannot run workers with group " +
                         group_text(c.gid, db));
        }
        c.change = false; // nothing to change, and no privilege to set groups with
        return {std::move(c), ""};
    }
    c.change = !identity.user.empty() || !identity.group.empty();
    return {std::move(c), ""};
}

std::string format_cpu_max(uint32_t percent, uint32_t period_us) {
    if (percent == 0) {
        return "max " + std::to_string(period_us);
    }
    const uint64_t quota = static_cast<uint64_t>(period_us) * percent / 100;
    return std::to_string(std::max<uint64_t>(quota, 1000)) + " " + std::to_string(period_us);
}

std::optional<CpuMax> parse_cpu_max(std::string_view text) {
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) {
        text.remove_suffix(1);
    }
    const auto space = text.find(' ');
    const std::string_view quota = text.substr(0, space);
    CpuMax out;
    if (space != std::string_view::npos) {
        auto period = parse_id(text.substr(space + 1));
        if (!period || *period == 0) {
            return std::nullopt;
        }
        out.period_us = *period;
    }
    if (quota == "max") {
        return out;
    }
    uint64_t value = 0;
    auto [end, ec] = std::from_chars(quota.data(), quota.data() + quota.size(), value);
    if (quota.empty() || ec != std::errc() || end != quota.data() + quota.size()) {
        return std::nullopt;
    }
    out.quota_us = value;
    return out;
}

std::vector<std::pair<std::string, std::string>> cgroup_limit_files(const Limits& limits) {
    std::vector<std::pair<std::string, std::string>> out;
    if (limits.memory != 0) {
        out.emplace_back("memory.max", std::to_string(limits.memory));
    }
    if (limits.pids != 0) {
        out.emplace_back("pids.max", std::to_string(limits.pids));
    }
    if (limits.cpu != 0) {
        out.emplace_back("cpu.max", format_cpu_max(limits.cpu));
    }
    return out;
}

std::vector<std::pair<int, uint64_t>> rlimit_settings(const Limits& limits) {
    std::vector<std::pair<int, uint64_t>> out;
    auto value = [](uint64_t v) {
        return v == Limits::kUnlimited ? static_cast<uint64_t>(RLIM_INFINITY) : v;
    };
    if (limits.nofile) {
        // The kernel takes no infinite RLIMIT_NOFILE: "unlimited" is its ceiling, fs.nr_open.
        uint64_t nofile = *limits.nofile;
        if (nofile == Limits::kUnlimited) {
            std::ifstream nr_open("/proc/sys/fs/nr_open");
            if (!(nr_open >> nofile)) {
                nofile = 1 << 20; // the kernel's default
            }
        }
        out.emplace_back(RLIMIT_NOFILE, nofile);
    }
    if (limits.nproc) {
        out.emplace_back(RLIMIT_NPROC, value(*limits.nproc));
    }
    if (limits.core) {
        out.emplace_back(RLIMIT_CORE, value(*limits.core));
    }
    return out;
}

std::string cgroup_limits_unavailable(const Vassal& vassal) {
    const Limits& l = vassal.limits;
    if (!l.any_cgroup()) {
        return {};
    }
    return Containment::limits_unavailable(Containment::current(), l.memory != 0, l.cpu != 0,
                                           l.pids != 0);
}

CredentialsResult vassal_credentials(const Vassal& vassal) {
    return resolve_credentials(vassal.identity, vassal.file_uid, vassal.file_gid,
                               EmperorIdentity::current());
}

void isolate(const Vassal& vassal, const Credentials& c, const std::string& cgroup_unavailable,
             SpawnSpec& spec) {
    if (c.change) {
        spec.user = SpawnUser{c.uid, c.gid, c.groups};
    }
    if (c.user_named) {
        for (const auto& [name, value] : {std::pair<std::string, std::string>{"HOME", c.home},
                                          {"USER", c.user},
                                          {"LOGNAME", c.user}}) {
            const bool set = std::any_of(spec.env.begin(), spec.env.end(),
                                         [&](const auto& e) { return e.first == name; });
            if (!set) {
                spec.env.emplace_back(name, value);
            }
        }
    }
    spec.no_new_privs = vassal.identity.no_new_privs;
    spec.rlimits = rlimit_settings(vassal.limits);
    if (cgroup_unavailable.empty()) {
        spec.cgroup_files = cgroup_limit_files(vassal.limits);
    }
}

std::string socket_dir(const std::string& runtime_dir, const Credentials& c, std::string* error) {
    if (!c.change) {
        return runtime_dir;
    }
    const std::string dir = runtime_dir + "/u" + std::to_string(c.uid);
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
        *error = "cannot make " + dir + ": " + std::strerror(errno);
        return {};
    }
    if (::chown(dir.c_str(), c.uid, c.gid) != 0 || ::chmod(dir.c_str(), 0700) != 0) {
        *error = "cannot hand " + dir + " to " + c.user + ": " + std::strerror(errno);
        return {};
    }
    return dir;
}

std::string check_isolation(const Vassal& vassal) {
    CredentialsResult r = vassal_credentials(vassal);
    if (!r.credentials) {
        return r.error;
    }
    if (std::string why = cgroup_limits_unavailable(vassal); !why.empty()) {
        spdlog::warn("vassal {}: [limits] memory, cpu and pids are not applied: {}", vassal.name,
                     why);
    }
    return {};
}

nlohmann::json isolation_status(const Vassal& vassal) {
    using nlohmann::json;
    CredentialsResult r = vassal_credentials(vassal);
    const Limits& l = vassal.limits;
    auto opt = [](const std::optional<uint64_t>& v) -> json {
        if (!v) {
            return nullptr;
        }
        return *v == Limits::kUnlimited ? json("unlimited") : json(*v);
    };
    const std::string why = cgroup_limits_unavailable(vassal);
    json limits = {{"nofile", opt(l.nofile)},
                   {"nproc", opt(l.nproc)},
                   {"core", opt(l.core)},
                   {"memory", l.memory != 0 ? json(l.memory) : json(nullptr)},
                   {"cpu", l.cpu != 0 ? json(std::to_string(l.cpu) + "%") : json(nullptr)},
                   {"pids", l.pids != 0 ? json(l.pids) : json(nullptr)},
                   {"cgroup", l.any_cgroup() && why.empty()},
                   {"reason", why.empty() ? json(nullptr) : json(why)}};
    json out = {{"no_new_privs", vassal.identity.no_new_privs}, {"limits", std::move(limits)}};
    if (r.credentials) {
        out["user"] = r.credentials->user;
        out["uid"] = r.credentials->uid;
        out["group"] = r.credentials->group;
        out["gid"] = r.credentials->gid;
    } else {
        out["user"] = vassal.identity.user;
        out["uid"] = nullptr;
        out["group"] = vassal.identity.group;
        out["gid"] = nullptr;
        out["identity_error"] = r.error;
    }
    return out;
}

} // namespace liege
