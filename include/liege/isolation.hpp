// Per-vassal isolation: whom a vassal's workers run as, and the limits they run under.
//
// The vassal file says it (`user`, `group`, `no_new_privs`, `[limits]`; core/vassal.cpp checks
// the syntax); what needs the system is decided here, once when the file is loaded (an error
// makes the file invalid, so nothing that runs changes) and again at every spawn (the user
// database may have changed since).
//
// The tyrant rule (uWSGI's --emperor-tyrant): an emperor running as root runs a vassal file
// owned by another user only as that user, with one of that user's groups. Naming someone else,
// or leaving `user` out (which would be root), is an error: whoever may write a file may not
// choose to run as someone they are not. A file owned by root may name anyone. An emperor that
// is not root cannot change users at all, so a `user` or `group` other than its own is an error
// that says so, and the files it reads are as trusted as the directory that holds them.
//
// The credentials follow what systemd's User= and Group= do: the group is the user's primary one
// unless `group` names another, the supplementary groups are getgrouplist(user, group), and HOME,
// USER and LOGNAME are the user's (a vassal's own `env` still wins).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "liege/spawner.hpp"
#include "liege/vassal.hpp"

namespace liege {

struct UserRecord {
    uint32_t uid = 0;
    uint32_t gid = 0; // primary group
    std::string name;
    std::string home;
};

struct GroupRecord {
    uint32_t gid = 0;
    std::string name;
};

// The user database; the system's (getpwnam_r and friends), or a fake in tests.
class UserDb {
public:
    virtual ~UserDb() = default;
    virtual std::optional<UserRecord> user_by_name(const std::string& name) const = 0;
    virtual std::optional<UserRecord> user_by_uid(uint32_t uid) const = 0;
    virtual std::optional<GroupRecord> group_by_name(const std::string& name) const = 0;
    virtual std::optional<GroupRecord> group_by_gid(uint32_t gid) const = 0;
    // getgrouplist(user, gid): `gid` and every group that lists `user` as a member.
    virtual std::vector<uint32_t> groups_of(const std::string& user, uint32_t gid) const = 0;
};
const UserDb& system_user_db();

// Who a worker of a vassal runs as.
struct Credentials {
    bool change = false; // false: the emperor's own user and groups, nothing to set
    uint32_t uid = 0;
    uint32_t gid = 0;
    std::vector<uint32_t> groups; // supplementary groups (with `gid`)
    std::string user;             // name, or the number when the uid has no passwd entry
    std::string group;            // likewise
    std::string home;             // "/" when the uid has no passwd entry
    bool user_named = false;      // `user` was set: HOME, USER and LOGNAME are the user's
};

// Whom the decision is made for: the emperor's effective uid and gid (its name for messages).
struct EmperorIdentity {
    uint32_t uid = 0;
    uint32_t gid = 0;
    static EmperorIdentity current(); // geteuid(), getegid()
};

struct CredentialsResult {
    std::optional<Credentials> credentials;
    std::string error; // why not, when credentials is empty
};

// Resolves `identity` for a vassal file owned by `file_uid`:`file_gid` (nullopt: not known, as
// for text parsed without a file), applying the tyrant rule and, for an emperor that is not
// root, the rule that it cannot change users.
CredentialsResult resolve_credentials(const Identity& identity, std::optional<uint32_t> file_uid,
                                      std::optional<uint32_t> file_gid,
                                      const EmperorIdentity& emperor,
                                      const UserDb& db = system_user_db());

// cpu.max for `percent` of one CPU: "QUOTA PERIOD" in microseconds over the default 100 ms
// period ("150000 100000" for 150%); "max 100000" for 0 (no limit).
std::string format_cpu_max(uint32_t percent, uint32_t period_us = 100'000);
struct CpuMax {
    std::optional<uint64_t> quota_us; // nullopt = "max"
    uint64_t period_us = 100'000;
};
// Parses cgroup v2's cpu.max ("max 100000", "150000 100000", or a quota alone); nullopt for
// anything else.
std::optional<CpuMax> parse_cpu_max(std::string_view text);

// The cgroup files a vassal's [limits] write ("memory.max", "pids.max", "cpu.max"), in order.
std::vector<std::pair<std::string, std::string>> cgroup_limit_files(const Limits& limits);
// The rlimits a vassal's [limits] set, as (RLIMIT_*, value) with RLIM_INFINITY for unlimited
// (fs.nr_open for nofile, which cannot be infinite).
std::vector<std::pair<int, uint64_t>> rlimit_settings(const Limits& limits);

// resolve_credentials() for a loaded vassal, as this emperor runs it.
CredentialsResult vassal_credentials(const Vassal& vassal);

// What a worker of `vassal` running as `credentials` is spawned with: the user, no_new_privs,
// rlimits and cgroup limits into `spec`, HOME/USER/LOGNAME into spec.env where the vassal's env
// (already in spec.env) does not set them. `cgroup_unavailable` is cgroup_limits_unavailable():
// when it is not "", the cgroup limits are left out (the emperor said so when the vassal loaded).
void isolate(const Vassal& vassal, const Credentials& credentials,
             const std::string& cgroup_unavailable, SpawnSpec& spec);

// The directory for the sockets of a worker running as `credentials` under the emperor's
// `runtime_dir`: runtime_dir itself when the user does not change, else runtime_dir/u<uid>,
// made (mode 0700, owned by the worker's uid and gid) so that the worker can bind its unix
// socket there and send to its notify socket, and other users' workers cannot. "" with *error
// set when it cannot be made.
std::string socket_dir(const std::string& runtime_dir, const Credentials& credentials,
                       std::string* error);

// The isolation of a loaded vassal, for the emperor: "" when it may run, else why not (an error
// the file is reported with). Logs a warning when its cgroup limits cannot be applied here.
std::string check_isolation(const Vassal& vassal);

// Why the cgroup limits of `vassal` cannot be applied by this emperor ("" when they can, or
// when it has none).
std::string cgroup_limits_unavailable(const Vassal& vassal);

// The /status fields of a vassal's isolation: "user", "uid", "group", "gid", "no_new_privs" and
// "limits" {"nofile", "nproc", "core", "memory", "cpu", "pids", "cgroup", "reason"}.
nlohmann::json isolation_status(const Vassal& vassal);

} // namespace liege
