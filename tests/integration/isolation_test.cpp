// Per-app isolation (issue 13, defect 11): workers run as the vassal's user and group (the
// tyrant rule for files owned by another user), with no_new_privs, rlimits, and memory, cpu and
// pids limits in their cgroup. See include/liege/isolation.hpp.
//
// Changing users needs root: those tests skip otherwise. They use the system's `nobody`, and a
// throwaway system user each test that needs a file owner creates (useradd) and deletes again. The
// worker is a copy of the test backend in the test's own directory, opened to everyone (0755),
// since the build tree may sit where `nobody` cannot reach.
#include <gtest/gtest.h>

#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "harness.hpp"
#include "liege/isolation.hpp"

using namespace liege::test;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// The line of /proc/PID/status that starts with `key` ("Uid:"), without the key; "" if none.
std::string proc_status(pid_t pid, const std::string& key) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.starts_with(key)) {
            return line.substr(key.size());
        }
    }
    return {};
}

// The first number of a /proc/PID/status line ("Uid:\t65534\t65534..." -> 65534), or -1.
long first_number(const std::string& text) {
    std::istringstream in(text);
    long value = -1;
    in >> value;
    return value;
}

std::string read_text(const fs::path& path) {
    std::string text = slurp(path);
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) {
        text.pop_back();
    }
    return text;
}

// The cgroup v2 directory of a process, from /proc/PID/cgroup and the cgroup2 mount.
std::string cgroup_dir(const std::string& self_or_pid) {
    std::ifstream mounts("/proc/self/mountinfo");
    std::string line;
    std::string mount_point;
    while (std::getline(mounts, line)) {
        auto dash = line.find(" - cgroup2 ");
        if (dash == std::string::npos) {
            continue;
        }
        std::istringstream fields(line);
        std::string id, parent, dev, root, point;
        fields >> id >> parent >> dev >> root >> point;
        if (root == "/") {
            mount_point = point;
            break;
        }
    }
    if (mount_point.empty()) {
        return {};
    }
    std::ifstream cgroup("/proc/" + self_or_pid + "/cgroup");
    while (std::getline(cgroup, line)) {
        if (line.starts_with("0::")) {
            std::string path = line.substr(3);
            return path == "/" ? mount_point : mount_point + path;
        }
    }
    return {};
}

std::set<std::string> words(const fs::path& path) {
    std::istringstream in(slurp(path));
    std::set<std::string> out;
    std::string w;
    while (in >> w) {
        out.insert(w);
    }
    return out;
}

// A cgroup for the emperor alone, where the memory and pids controllers can be had: a new
// child of the nearest ancestor of the test's own cgroup that hands them to its children. This is
// what a systemd unit with Delegate=yes gives liege; the test's own cgroup holds the test, so an
// emperor started in it cannot enable controllers (cgroup v2's no-internal-process rule).
class EmperorCgroup {
public:
    EmperorCgroup() {
        const std::string own = cgroup_dir("self");
        if (own.empty()) {
            why_not_ = "no cgroup v2 hierarchy";
            return;
        }
        if (::geteuid() != 0) {
            why_not_ = "not root";
            return;
        }
        for (fs::path dir = own; !dir.empty() && dir.has_relative_path(); dir = dir.parent_path()) {
            const auto on = words(dir / "cgroup.subtree_control");
            if (on.count("memory") != 0 && on.count("pids") != 0) {
                path_ = dir / ("liege-test." + std::to_string(::getpid()) + "." +
                               std::to_string(++made_));
                if (::mkdir(path_.c_str(), 0755) != 0) {
                    why_not_ = "cannot make " + path_.string() + ": " + std::strerror(errno);
                    path_.clear();
                }
                return;
            }
            if (dir == dir.parent_path() || fs::exists(dir / "cgroup.type") == false) {
                break;
            }
        }
        why_not_ = "no cgroup above " + own + " hands memory and pids to its children";
    }
    ~EmperorCgroup() {
        if (path_.empty()) {
            return;
        }
        // What the emperor left (an emperor that exits moves back and removes its own), deepest
        // first; a cgroup whose last process just exited is removable a moment later.
        std::vector<fs::path> dirs;
        std::error_code ec;
        for (fs::recursive_directory_iterator it(path_, ec), end; !ec && it != end;
             it.increment(ec)) {
            if (it->is_directory(ec)) {
                dirs.push_back(it->path());
            }
        }
        dirs.push_back(path_);
        std::sort(dirs.begin(), dirs.end(), [](const fs::path& a, const fs::path& b) {
            return a.string().size() > b.string().size();
        });
        for (const auto& d : dirs) {
            EXPECT_TRUE(poll_until([&] { return ::rmdir(d.c_str()) == 0 || errno == ENOENT; }))
                << "cannot remove " << d << ": " << std::strerror(errno);
        }
    }
    const fs::path& path() const { return path_; }
    const std::string& why_not() const { return why_not_; }

private:
    static inline int made_ = 0;
    fs::path path_;
    std::string why_not_;
};

struct User {
    uid_t uid;
    gid_t gid;
    std::string name;
    std::string home;
};

std::optional<User> system_user(const char* name) {
    const passwd* pw = ::getpwnam(name);
    if (pw == nullptr) {
        return std::nullopt;
    }
    return User{pw->pw_uid, pw->pw_gid, pw->pw_name, pw->pw_dir};
}

// A system user made for one test (`useradd --system --user-group`), deleted with its group
// when the test's fixture is gone (after its tear-down has stopped every process of it).
class ThrowawayUser {
public:
    ThrowawayUser() : name_("liege-t" + std::to_string(::getpid())) {
        const std::string cmd = "useradd --system --user-group --no-create-home --home-dir / "
                                "--shell /usr/sbin/nologin " +
                                name_ + " 2>&1";
        if (std::system(cmd.c_str()) == 0) {
            user_ = system_user(name_.c_str());
        }
    }
    ~ThrowawayUser() {
        if (user_) {
            const std::string cmd = "userdel " + name_ + " >/dev/null 2>&1";
            [[maybe_unused]] int rc = std::system(cmd.c_str());
        }
    }
    ThrowawayUser(const ThrowawayUser&) = delete;
    ThrowawayUser& operator=(const ThrowawayUser&) = delete;
    const std::optional<User>& user() const { return user_; }

private:
    std::string name_;
    std::optional<User> user_;
};

class Isolation : public LiegeRunFixture {
protected:
    void SetUp() override {
        LiegeRunFixture::SetUp();
        // Reachable for any user: the test's directory and a copy of the backend in it.
        fs::permissions(root_, fs::perms(0755));
        fs::permissions(vassals_, fs::perms(0755));
        backend_ = root_ / "bin" / "liege-test-backend";
        fs::create_directories(backend_.parent_path());
        fs::permissions(backend_.parent_path(), fs::perms(0755));
        fs::copy_file(LIEGE_TEST_BACKEND, backend_);
        fs::permissions(backend_, fs::perms(0755));
    }

    void start(std::string cgroup = "") {
        emperor_cgroup_ = std::move(cgroup);
        start_liege({{}, "127.0.0.1:0", 1});
    }

    // A web vassal serving with the backend, in the test's (world-readable) directory.
    std::string backend_vassal(const std::string& extra = "") const {
        return kAnyHost + "cwd = " + toml_str(root_.string()) + "\ncommand = [" +
               toml_str(backend_.string()) +
               ", '--listen', '127.0.0.1:${PORT}', '--name', '${NAME}']\n" + extra;
    }

    // Writes a vassal file owned by uid:gid: made under a name the emperor skips, chowned, then
    // renamed into place, so the emperor never sees it with another owner.
    void write_owned_vassal(const std::string& name, const std::string& text, uid_t uid,
                            gid_t gid) {
        const fs::path tmp = vassals_ / ("." + name + ".tmp");
        write_file(tmp, text);
        ASSERT_EQ(::chown(tmp.c_str(), uid, gid), 0) << std::strerror(errno);
        fs::rename(tmp, vassals_ / (name + ".toml"));
    }

    // The pid of the first worker of `name` once `ready` workers are ready, or 0.
    pid_t ready_worker(const std::string& name, int ready = 1) const {
        json v =
            wait_vassal(name, [&](const json& j) { return j.value("workers_ready", 0) == ready; });
        if (v.is_null() || v["workers"].empty()) {
            ADD_FAILURE() << "vassal " << name
                          << " has no ready worker: " << (v.is_null() ? "no entry" : v.dump(2));
            return 0;
        }
        return v["workers"][0].value("pid", pid_t{0});
    }

    // GET /id with Host `host` through the router comes to answer 200 (the route set reaches the
    // router a moment after the worker is ready).
    void expect_serves(const std::string& host) const {
        std::string error;
        std::optional<Response> r;
        EXPECT_TRUE(poll_until([&] {
            r = get_once(host, "/id", &error);
            return r && r->status == 200;
        })) << (r ? r->head : error);
    }

    // The test's own throwaway user, made on first use.
    const User& throwaway() {
        if (!throwaway_) {
            throwaway_.emplace();
        }
        EXPECT_TRUE(throwaway_->user()) << "useradd failed";
        static const User none{};
        return throwaway_->user() ? *throwaway_->user() : none;
    }

    fs::path backend_;
    std::optional<ThrowawayUser> throwaway_; // after LiegeRunFixture: deleted after tear-down
};

#define REQUIRE_ROOT()                                                                             \
    do {                                                                                           \
        if (::geteuid() != 0) {                                                                    \
            GTEST_SKIP() << "changing users needs root";                                           \
        }                                                                                          \
    } while (false)

TEST_F(Isolation, AWorkerRunsAsItsUserWithThatUsersEnvironmentAndServes) {
    REQUIRE_ROOT();
    auto nobody = system_user("nobody");
    ASSERT_TRUE(nobody);
    write_vassal("app", backend_vassal("user = 'nobody'\n"));
    ASSERT_NO_FATAL_FAILURE(start());
    const pid_t pid = ready_worker("app");
    ASSERT_GT(pid, 0);
    const std::string uids = proc_status(pid, "Uid:");
    const std::string gids = proc_status(pid, "Gid:");
    std::ostringstream want_uid, want_gid;
    want_uid << "\t" << nobody->uid << "\t" << nobody->uid << "\t" << nobody->uid << "\t"
             << nobody->uid;
    want_gid << "\t" << nobody->gid << "\t" << nobody->gid << "\t" << nobody->gid << "\t"
             << nobody->gid;
    EXPECT_EQ(uids, want_uid.str()); // real, effective, saved, filesystem
    EXPECT_EQ(gids, want_gid.str());
    EXPECT_EQ(first_number(proc_status(pid, "Groups:")), static_cast<long>(nobody->gid))
        << "root's supplementary groups were kept: " << proc_status(pid, "Groups:");
    auto env = environ_of(pid);
    EXPECT_EQ(env["USER"], "nobody");
    EXPECT_EQ(env["LOGNAME"], "nobody");
    EXPECT_EQ(env["HOME"], nobody->home);
    expect_serves("app.test");

    json v = vassal("app");
    EXPECT_EQ(v.value("user", ""), "nobody") << v.dump(2);
    EXPECT_EQ(v.value("uid", -1), static_cast<int>(nobody->uid)) << v.dump(2);
    EXPECT_EQ(v.value("gid", -1), static_cast<int>(nobody->gid)) << v.dump(2);
    EXPECT_EQ(v.value("no_new_privs", false), true) << v.dump(2);
}

TEST_F(Isolation, AUnixSocketWorkerAsAnotherUserCanBindItsSocket) {
    REQUIRE_ROOT();
    write_vassal("app", kAnyHost + "socket = 'unix'\ncwd = " + toml_str(root_.string()) +
                            "\ncommand = [" + toml_str(backend_.string()) +
                            ", '--listen', 'unix:${SOCKET}', '--name', '${NAME}']\n"
                            "user = 'nobody'\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_GT(ready_worker("app"), 0) << log();
    expect_serves("app.test");
}

TEST_F(Isolation, ANotifyWorkerAsAnotherUserCanSendReady) {
    REQUIRE_ROOT();
    if (!fs::exists("/usr/bin/python3")) {
        GTEST_SKIP() << "no /usr/bin/python3";
    }
    // The emperor binds the notify socket; the worker, as nobody, must be able to send to it.
    write_vassal("app",
                 "type = 'daemon'\nuser = 'nobody'\ncwd = '/'\ncommand = ['/usr/bin/python3', "
                 "'-c', 'import os, signal, socket; s = socket.socket(socket.AF_UNIX, "
                 "socket.SOCK_DGRAM); s.sendto(b\"READY=1\", os.environ[\"NOTIFY_SOCKET\"]); "
                 "signal.pause()']\n[health]\nnotify = true\nstart_timeout = '15s'\n");
    ASSERT_NO_FATAL_FAILURE(start());
    const pid_t pid = ready_worker("app");
    ASSERT_GT(pid, 0) << log();
    EXPECT_EQ(first_number(proc_status(pid, "Uid:")),
              static_cast<long>(system_user("nobody")->uid));
}

TEST_F(Isolation, OwnerIsTheVassalFilesOwner) {
    REQUIRE_ROOT();
    const User* owner = &throwaway();
    ASSERT_NE(owner->uid, 0u);
    ASSERT_NO_FATAL_FAILURE(
        write_owned_vassal("app", backend_vassal("user = '@owner'\n"), owner->uid, owner->gid));
    ASSERT_NO_FATAL_FAILURE(start());
    const pid_t pid = ready_worker("app");
    ASSERT_GT(pid, 0);
    EXPECT_EQ(first_number(proc_status(pid, "Uid:")), static_cast<long>(owner->uid));
    EXPECT_EQ(first_number(proc_status(pid, "Gid:")), static_cast<long>(owner->gid));
    expect_serves("app.test");
    EXPECT_EQ(vassal("app").value("user", ""), owner->name);
}

TEST_F(Isolation, TheTyrantRuleRefusesAFileThatNamesAnotherUser) {
    REQUIRE_ROOT();
    const User* owner = &throwaway();
    ASSERT_NE(owner->uid, 0u);
    expect_error_line({"bad.toml", "is owned by " + owner->name, "may run only as that user"});
    write_vassal("good", backend_vassal());
    ASSERT_NO_FATAL_FAILURE(write_owned_vassal(
        "bad", backend_vassal("user = 'nobody'\n").replace(0, kAnyHost.size(), "hosts = ['bad']\n"),
        owner->uid, owner->gid));
    ASSERT_NO_FATAL_FAILURE(start());
    json bad = wait_vassal("bad", [](const json& j) { return j.value("state", "") == "failed"; });
    ASSERT_FALSE(bad.is_null());
    EXPECT_EQ(bad.value("state", ""), "failed") << bad.dump(2);
    const std::string error =
        bad["last_error"].is_string() ? bad["last_error"].get<std::string>() : std::string();
    EXPECT_NE(error.find("the vassal file is owned by " + owner->name + " (uid " +
                         std::to_string(owner->uid) + "), so it may run only as that user"),
              std::string::npos)
        << bad.dump(2);
    EXPECT_NE(error.find("not as nobody"), std::string::npos) << error;
    EXPECT_TRUE(bad["workers"].empty()) << bad.dump(2);
    // The other vassal is untouched.
    EXPECT_GT(ready_worker("good"), 0);
    expect_serves("good.test");
}

TEST_F(Isolation, AWorkerAsAnotherUserDiesWithAKilledEmperor) {
    // The death signal is set after the credential change (which clears it); the guard kills the
    // group of a worker whatever its user; and what left the group goes with it.
    REQUIRE_ROOT();
    write_vassal("app", kAnyHost + "cwd = " + toml_str(root_.string()) +
                            "\nuser = 'nobody'\ncommand = ['sh', '-c', 'sleep 782 & exec " +
                            backend_.string() + " --listen 127.0.0.1:${PORT} --name ${NAME}']\n");
    ASSERT_NO_FATAL_FAILURE(start());
    const pid_t pid = ready_worker("app");
    ASSERT_GT(pid, 0);
    std::vector<ProcStat> all;
    ASSERT_TRUE(poll_until([&] {
        all = descendants(pid);
        return all.size() == 1;
    })) << describe_procs(descendants(pid));
    all.push_back(*read_stat(pid));
    EXPECT_EQ(first_number(proc_status(pid, "Uid:")),
              static_cast<long>(system_user("nobody")->uid));
    emperor_->signal(SIGKILL);
    ASSERT_TRUE(emperor_->wait_exit());
    auto left = wait_gone(all, kStart);
    EXPECT_TRUE(left.empty()) << "outlived the emperor:" << describe_procs(left);
}

TEST_F(Isolation, NoNewPrivsByDefaultAndOffWhenSetFalse) {
    write_vassal("on", backend_vassal().replace(0, kAnyHost.size(), "hosts = ['on']\n"));
    write_vassal(
        "off",
        backend_vassal("no_new_privs = false\n").replace(0, kAnyHost.size(), "hosts = ['off']\n"));
    ASSERT_NO_FATAL_FAILURE(start());
    const pid_t on = ready_worker("on");
    const pid_t off = ready_worker("off");
    ASSERT_GT(on, 0);
    ASSERT_GT(off, 0);
    EXPECT_EQ(proc_status(on, "NoNewPrivs:"), "\t1");
    EXPECT_EQ(proc_status(off, "NoNewPrivs:"), "\t0");
    EXPECT_EQ(vassal("off").value("no_new_privs", true), false);
}

TEST_F(Isolation, NofileIsTheWorkersOpenFileLimit) {
    write_vassal("app", backend_vassal("[limits]\nnofile = 1234\ncore = 0\n"));
    ASSERT_NO_FATAL_FAILURE(start());
    const pid_t pid = ready_worker("app");
    ASSERT_GT(pid, 0);
    const std::string limits = slurp("/proc/" + std::to_string(pid) + "/limits");
    std::string nofile_line, core_line;
    std::istringstream in(limits);
    for (std::string line; std::getline(in, line);) {
        if (line.starts_with("Max open files")) {
            nofile_line = line;
        }
        if (line.starts_with("Max core file size")) {
            core_line = line;
        }
    }
    std::istringstream nofile(nofile_line.substr(std::string("Max open files").size()));
    long soft = 0, hard = 0;
    nofile >> soft >> hard;
    EXPECT_EQ(soft, 1234) << limits;
    EXPECT_EQ(hard, 1234) << limits;
    std::istringstream core(core_line.substr(std::string("Max core file size").size()));
    core >> soft >> hard;
    EXPECT_EQ(soft, 0) << limits;
    json l = vassal("app")["limits"];
    EXPECT_EQ(l.value("nofile", 0), 1234) << l.dump();
}

// cgroup limits: the emperor in a cgroup of its own, as a systemd unit with Delegate=yes.
class CgroupLimits : public Isolation {
protected:
    // Starts the emperor in `cgroup_`; skips when the box has no cgroup to give it.
    void start_in_cgroup() {
        if (cgroup_.path().empty()) {
            GTEST_SKIP() << "no cgroup with memory and pids for the emperor: " << cgroup_.why_not();
        }
        ASSERT_NO_FATAL_FAILURE(start(cgroup_.path().string()));
    }
    // The worker's own cgroup, which must be under the emperor's: liege.<pid>/cN.
    fs::path worker_cgroup(pid_t pid) const {
        const std::string dir = cgroup_dir(std::to_string(pid));
        EXPECT_NE(dir.find(cgroup_.path().string() + "/liege."), std::string::npos) << dir << "\n"
                                                                                    << log();
        return dir;
    }
    EmperorCgroup cgroup_;
};

TEST_F(CgroupLimits, MemoryAndPidsAreWrittenIntoTheWorkersCgroup) {
    write_vassal("app", backend_vassal("[limits]\nmemory = '64MiB'\npids = 20\n"));
    ASSERT_NO_FATAL_FAILURE(start_in_cgroup());
    if (IsSkipped()) {
        return;
    }
    const pid_t pid = ready_worker("app");
    ASSERT_GT(pid, 0);
    const fs::path dir = worker_cgroup(pid);
    EXPECT_EQ(read_text(dir / "memory.max"), std::to_string(64 << 20));
    EXPECT_EQ(read_text(dir / "pids.max"), "20");
    json l = vassal("app")["limits"];
    EXPECT_EQ(l.value("cgroup", false), true) << l.dump();
    EXPECT_TRUE(l["reason"].is_null()) << l.dump();
    EXPECT_EQ(l.value("memory", 0), 64 << 20) << l.dump();
    EXPECT_EQ(l.value("pids", 0), 20) << l.dump();
    expect_serves("app.test");
}

TEST_F(CgroupLimits, CpuIsWrittenAsQuotaAndPeriod) {
    if (!cgroup_.path().empty() && words(cgroup_.path() / "cgroup.controllers").count("cpu") == 0) {
        GTEST_SKIP() << "the cpu controller is not handed to " << cgroup_.path();
    }
    write_vassal("app", backend_vassal("[limits]\ncpu = '50%'\n"));
    ASSERT_NO_FATAL_FAILURE(start_in_cgroup());
    if (IsSkipped()) {
        return;
    }
    const pid_t pid = ready_worker("app");
    ASSERT_GT(pid, 0);
    auto cpu = liege::parse_cpu_max(read_text(worker_cgroup(pid) / "cpu.max"));
    ASSERT_TRUE(cpu);
    EXPECT_EQ(cpu->quota_us, 50000u);
    EXPECT_EQ(cpu->period_us, 100000u);
    EXPECT_EQ(vassal("app")["limits"].value("cpu", ""), "50%");
}

TEST_F(CgroupLimits, AWorkerAtItsPidsLimitCannotForkMore) {
    // A subshell tries to start 12 sleeps (a fork that fails ends the subshell, not the worker),
    // then the worker becomes a sleep itself: a daemon, ready once it has stayed up a second.
    write_vassal("app", "type = 'daemon'\ncwd = " + toml_str(root_.string()) +
                            "\ncommand = ['sh', '-c', '(for i in 1 2 3 4 5 6 7 8 9 10 11 12; "
                            "do sleep 779 & done) 2>/dev/null; exec sleep 780']\n"
                            "[limits]\npids = 5\n");
    ASSERT_NO_FATAL_FAILURE(start_in_cgroup());
    if (IsSkipped()) {
        return;
    }
    const pid_t pid = ready_worker("app");
    ASSERT_GT(pid, 0);
    const fs::path dir = worker_cgroup(pid);
    EXPECT_EQ(read_text(dir / "pids.max"), "5");
    std::size_t sleeps = 0;
    std::istringstream procs(slurp(dir / "cgroup.procs"));
    for (pid_t p = 0; procs >> p;) {
        sleeps += cmdline_of(p).find("sleep 779") != std::string::npos ? 1 : 0;
    }
    EXPECT_GE(sleeps, 1u);
    EXPECT_LE(sleeps, 4u) << "more sleeps than pids.max = 5 leaves room for";
    EXPECT_LE(std::stol(read_text(dir / "pids.current")), 5);
    // "max N": the forks the limit refused.
    const std::string events = read_text(dir / "pids.events");
    ASSERT_TRUE(events.starts_with("max ")) << events;
    EXPECT_GE(std::stol(events.substr(4)), 1) << events;
}

TEST_F(CgroupLimits, AsAnotherUserTooAndNothingOutlivesAKilledEmperor) {
    REQUIRE_ROOT();
    write_vassal("app", kAnyHost + "cwd = " + toml_str(root_.string()) +
                            "\nuser = 'nobody'\ncommand = ['sh', '-c', 'setsid sleep 781 & exec " +
                            backend_.string() +
                            " --listen 127.0.0.1:${PORT} --name ${NAME}']\n[limits]\npids = 50\n");
    ASSERT_NO_FATAL_FAILURE(start_in_cgroup());
    if (IsSkipped()) {
        return;
    }
    const pid_t pid = ready_worker("app");
    ASSERT_GT(pid, 0);
    std::vector<ProcStat> all;
    ASSERT_TRUE(poll_until([&] {
        all = descendants(pid);
        all.push_back(*read_stat(pid));
        return all.size() == 2;
    })) << describe_procs(all);
    EXPECT_EQ(read_text(worker_cgroup(pid) / "pids.max"), "50");
    emperor_->signal(SIGKILL);
    ASSERT_TRUE(emperor_->wait_exit());
    auto left = wait_gone(all, kStart);
    EXPECT_TRUE(left.empty()) << "outlived the emperor:" << describe_procs(left);
}

TEST_F(Isolation, WithoutUsableCgroupsStatusSaysWhyTheLimitsAreNotApplied) {
    // In the test's own cgroup (shared with the test itself) the controllers cannot be enabled,
    // or there is no cgroup v2 at all: either way the limits are not applied, and /status says so.
    write_vassal("app", backend_vassal("[limits]\nmemory = '64MiB'\n"));
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_GT(ready_worker("app"), 0);
    json l = vassal("app")["limits"];
    if (l.value("cgroup", false)) {
        GTEST_SKIP() << "this box gives the emperor cgroup controllers even in the test's cgroup";
    }
    ASSERT_TRUE(l["reason"].is_string()) << l.dump();
    EXPECT_FALSE(l["reason"].get<std::string>().empty());
    EXPECT_EQ(l.value("memory", 0), 64 << 20) << l.dump();
    EXPECT_TRUE(wait_log("[limits] memory, cpu and pids are not applied: "));
    expect_serves("app.test");
}

// `liege check` validates what it can: the user exists, the tyrant rule holds.
TEST_F(Isolation, CheckNamesAMissingUserAndATyrantViolation) {
    // liege check FILE: its exit code, stdout and stderr.
    auto check = [this](const std::string& name) {
        Process p({LIEGE_BINARY, "check", (vassals_ / (name + ".toml")).string()});
        auto status = p.wait_exit(kStart);
        EXPECT_TRUE(status) << p.describe();
        // Its output may still be on its way to the reader thread.
        EXPECT_TRUE(poll_until([&] { return p.out().closed() && p.err().closed(); }));
        return std::tuple{status ? WEXITSTATUS(*status) : -1, p.out().text(), p.err().text()};
    };
    write_vassal("ghost", backend_vassal("user = 'no-such-user-liege'\n"));
    auto [code, out, err] = check("ghost");
    EXPECT_EQ(code, 1) << err;
    EXPECT_NE(err.find("error: user 'no-such-user-liege' does not exist"), std::string::npos)
        << err;

    if (::geteuid() != 0) {
        return; // chown needs root
    }
    auto daemon = system_user("daemon");
    ASSERT_TRUE(daemon);
    ASSERT_NO_FATAL_FAILURE(
        write_owned_vassal("bad", backend_vassal("user = 'nobody'\n"), daemon->uid, daemon->gid));
    std::tie(code, out, err) = check("bad");
    EXPECT_EQ(code, 1) << err;
    EXPECT_NE(err.find("owned by daemon"), std::string::npos) << err;
    ASSERT_NO_FATAL_FAILURE(
        write_owned_vassal("ok", backend_vassal("user = '@owner'\n"), daemon->uid, daemon->gid));
    std::tie(code, out, err) = check("ok");
    EXPECT_EQ(code, 0) << err;
    EXPECT_NE(out.find("user=daemon"), std::string::npos) << out;
}

} // namespace
