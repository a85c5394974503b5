// How the emperor keeps every process it starts, and every process those start, from outliving
// it or their worker: what `liege run` installs before it starts anything.
//
// Three mechanisms, from the weakest:
//   - Process groups. Each child leads its own group (spawner.cpp). When a leader exits, for any
//     reason, whatever is left of its group is killed (a crashed gunicorn master's workers, a
//     shell's background job); a stop sends its signal to the whole group.
//   - Child subreaper (PR_SET_CHILD_SUBREAPER). A descendant that leaves its group (setsid, a
//     daemonising double fork) is re-parented to the emperor when its parent dies, not to init:
//     the emperor reaps it, and kills any that is left when it stops.
//   - cgroup v2, where the emperor may create cgroups (a delegated subtree, or root). Each child
//     gets its own cgroup, `liege.<emperor pid>/c<N>`, joined before exec, so nothing it starts
//     can leave it; a leader's exit, or a stop's SIGKILL, kills the cgroup (cgroup.kill), and
//     the child counts as gone once the cgroup is empty.
//
// Limits ([limits] memory, cpu, pids of a vassal) are written into a child's cgroup before it is
// born there, which needs the memory, cpu and pids controllers enabled down to liege.<pid>: in
// the emperor's cgroup's cgroup.subtree_control, then in liege.<pid>'s. cgroup v2 lets a cgroup
// other than the root hand controllers to its children only while it holds no process itself,
// so where the emperor's cgroup holds the emperor alone (a systemd unit with Delegate=yes), the
// emperor moves itself, and then the guard, into a leaf of its own, liege.<pid>/emperor, first.
// Where its cgroup holds other processes too (a login shell's scope), the controllers cannot be
// had without leaving the cgroup the emperor was put in, which would take its workers out of
// the limits and accounting that cgroup stands for: limits are then not available, and say why.
//
// And the guard: a small process forked at install(), in a session of its own, which holds the
// read end of a pipe whose write end only the emperor has. The emperor tells it each child's
// process group and cgroup as it starts one, and forgets it once the group is gone. When the
// emperor dies, even by SIGKILL, the pipe reads EOF and the guard kills every group and cgroup
// still listed, then exits. PR_SET_PDEATHSIG alone reaches only the emperor's direct children.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace liege {

class Containment {
public:
    // Makes this process the keeper of what spawn_child starts: subreaper, cgroup (when it can)
    // and the guard. Call once, before any child starts and while the process has one thread.
    // Logs the mechanisms in force. Never fails: a mechanism that cannot be had is left out.
    static std::unique_ptr<Containment> install();
    // The installed one, or null (spawn_child then uses process groups alone).
    static Containment* current();
    ~Containment(); // kills what is left (finish()), then lets the guard go
    Containment(const Containment&) = delete;
    Containment& operator=(const Containment&) = delete;

    bool cgroups() const { return !cgroup_root_.empty(); }
    // Whether a child's cgroup can take the limits `memory`, `cpu`, `pids` ask for (each true when
    // asked): "" when it can, else why not ("no writable cgroup v2 hierarchy", "controller cpu
    // not available in /sys/fs/cgroup/x"). With no containment installed, why there is none.
    static std::string limits_unavailable(const Containment* c, bool memory, bool cpu, bool pids);
    // Without installing anything (for `liege check`): why an emperor started here, as this
    // user, could not apply those limits, "" when it looks as if it could (cgroup v2, the
    // controllers offered to our cgroup, and the cgroup writable).
    static std::string probe_limits(bool memory, bool cpu, bool pids);
    // The controllers enabled for children ("cpu memory pids"), "" for none.
    std::string controllers() const;
    // "cgroup v2 (/sys/fs/cgroup/liege.123), process groups, subreaper, guard pid 124"
    std::string describe() const;

    // For spawn_child. Before fork: a new cgroup directory for one child, or "" without cgroups
    // (or when it cannot be made). The child joins it by writing "0" to `dir + "/cgroup.procs"`.
    std::string make_cgroup();
    // After fork: the child leading process group `pgid`, in `cgroup` (may be ""), has started.
    void started(pid_t pgid, const std::string& cgroup);
    // Everything in its group and cgroup is gone (its cgroup directory is removed here).
    void gone(pid_t pgid);
    // A cgroup from make_cgroup() that no child was started in: removed.
    void discard_cgroup(const std::string& cgroup);

    // Writes `text` to one cgroup interface file (cgroup.procs, memory.max, ...); false, with
    // errno telling why, when it could not.
    static bool write_cgroup_file(const std::string& path, std::string_view text);
    // Kills everything in `cgroup` (cgroup.kill); false when it could not.
    static bool kill_cgroup(const std::string& cgroup);
    // Whether `cgroup` still holds a process (cgroup.events says populated 1); false when it
    // cannot be read.
    static bool cgroup_populated(const std::string& cgroup);

    // Reaps the children this process adopted as subreaper (any exited child that spawn_child
    // did not start); `is_ours` tells spawn_child's own. Called on every SIGCHLD.
    template <typename IsOurs> static void reap_adopted(IsOurs&& is_ours);

    // At the emperor's end, once its own children are gone: stops every process still re-parented
    // to it (SIGTERM, then SIGKILL after `grace_ms`) and reaps them.
    void finish(int grace_ms = 2000);

private:
    Containment() = default;
    void tell_guard(char op, pid_t pgid, const std::string& cgroup);

    void enable_controllers(const std::string& own);

    std::string cgroup_root_; // liege.<pid> under our own cgroup; "" when cgroups are not used
    // Of cpu, memory, pids: those enabled for children, and why each other one is not.
    std::unordered_map<std::string, std::string> controller_missing_;
    std::string controllers_;
    // Set when the emperor moved itself into cgroup_root_/emperor: where it came from, and what it
    // enabled there, to undo at the end (an emperor killed by SIGKILL leaves both directories,
    // empty, to whoever owns its cgroup: systemd removes a unit's).
    std::string own_cgroup_;
    std::vector<std::string> enabled_in_own_;
    std::unordered_map<pid_t, std::string> children_; // started and not gone: pgid -> cgroup
    unsigned next_cgroup_ = 0;
    bool subreaper_ = false;
    pid_t guard_pid_ = -1;
    int guard_fd_ = -1; // the pipe's write end
    bool finished_ = false;
};

} // namespace liege

#include <sys/wait.h>

#include <cerrno>

template <typename IsOurs> void liege::Containment::reap_adopted(IsOurs&& is_ours) {
    for (;;) {
        siginfo_t info{};
        // WNOWAIT: look first, so a child of spawn_child's is left for its own waitpid.
        if (::waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid == 0) {
            return;
        }
        if (is_ours(info.si_pid)) {
            return; // the registry's reaping gets it (SIGCHLD is pending for it)
        }
        pid_t r;
        do {
            r = ::waitpid(info.si_pid, nullptr, WNOHANG);
        } while (r < 0 && errno == EINTR);
        if (r <= 0) {
            return;
        }
    }
}
