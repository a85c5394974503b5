// Starting and stopping worker processes (and the router child) for the emperor.
//
// Each child runs in its own process group, so a stop signal reaches everything the app forked.
// Between fork and exec the child (async-signal-safe calls only) joins its new process group,
// sets its rlimits, drops to its user and groups, sets PR_SET_NO_NEW_PRIVS, then sets
// PR_SET_PDEATHSIG to SIGKILL (after the credential change, which clears it) and checks
// getppid() against the emperor's pid, so no child outlives an emperor that dies, even by
// SIGKILL; it moves the inherited socket to fd 3 with LISTEN_FDS=1 and LISTEN_PID=<its own pid>;
// it changes to the working directory (as its user) and execs. Its stdout and stderr are pipes
// read by the emperor's loop and delivered line by line.
#pragma once

#include <uv.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace liege {

// Whom a child runs as: set in the child by setgroups(groups), setgid(gid), setuid(uid), in that
// order (each later call needs the privilege the one before it keeps).
struct SpawnUser {
    uint32_t uid = 0;
    uint32_t gid = 0;
    std::vector<uint32_t> groups; // supplementary groups (initgroups' list, resolved before fork)
};

struct SpawnSpec {
    std::vector<std::string> argv;                        // argv[0] is looked up in PATH
    std::vector<std::pair<std::string, std::string>> env; // added to / overriding the emperor's
    std::string cwd;                                      // empty = the emperor's
    int listen_fd = -1;         // socket activation: becomes fd 3 with LISTEN_FDS=1, LISTEN_PID=pid
    std::vector<int> extra_fds; // passed on as fds 3.. (after listen_fd if any), not CLOEXEC
    std::string tag;            // prefix for output lines, e.g. "hello/1"
    std::optional<SpawnUser> user; // nullopt = the emperor's own credentials
    bool no_new_privs = false;     // PR_SET_NO_NEW_PRIVS before exec
    // setrlimit(resource, {value, value}) before the credential change; RLIM_INFINITY allowed.
    std::vector<std::pair<int, uint64_t>> rlimits;
    // Written into the child's own cgroup before it is born there ("memory.max", "1073741824").
    // A child that gets no cgroup, or a file that cannot be written, fails the spawn: a limit
    // asked for is never dropped silently.
    std::vector<std::pair<std::string, std::string>> cgroup_files;
};

struct ExitStatus {
    int exit_code = -1;  // when it exited
    int term_signal = 0; // when a signal killed it
    bool core_dumped = false;
    bool signalled() const { return term_signal != 0; }
    // "exit code 3", "killed by SIGKILL", "killed by SIGSEGV (core dumped)"
    std::string str() const;
    // From a waitpid() status.
    static ExitStatus from_wait_status(int wait_status);
};

// Splits a byte stream (a child's stdout or stderr) into lines: without the '\n' and without a
// '\r' before it. A line longer than kMaxLine bytes is cut into kMaxLine-byte pieces, so a child
// that never prints a newline cannot grow the emperor's memory.
class LineSplitter {
public:
    static constexpr std::size_t kMaxLine = 8192;

    // Calls emit(std::string_view) for every line completed by `data`.
    template <typename Emit> void feed(std::string_view data, Emit&& emit);
    // At EOF: emits the partial last line, if any.
    template <typename Emit> void flush(Emit&& emit);

private:
    static std::string_view chomp(std::string_view line) {
        return !line.empty() && line.back() == '\r' ? line.substr(0, line.size() - 1) : line;
    }
    std::string partial_;
};

// One child process. Destroying the object does not stop the process; call stop() first.
class Child {
public:
    using LineFn = std::function<void(std::string_view line, bool is_stderr)>;
    using ExitFn = std::function<void(ExitStatus)>;

    virtual ~Child() = default;
    virtual int pid() const = 0;
    virtual bool running() const = 0;
    // Sends `signo` to the process group, then SIGKILL to the group after `timeout` if it has
    // not exited, or if something it started is still in the group (even when the child itself
    // obeyed the signal and its exit was delivered already). The exit callback runs once it has.
    virtual void stop(int signo, std::chrono::milliseconds timeout) = 0;
    // Sends a signal to the process group now.
    virtual void signal(int signo) = 0;
    // The last lines the child printed (both streams, at most 20), for failure reports.
    virtual std::vector<std::string> last_lines() const = 0;
};

// The child's last lines (Child::last_lines), each on its own indented line after a newline, to
// append to a failure report; "" for no child.
std::string format_last_lines(const Child* child);

// Spawns a child on `loop`. on_line gets each output line (without newline; a partial last line
// is delivered when the pipe closes; a very long line is cut at 8 KiB); on_exit runs once, after
// the process is reaped and its output pipes are drained. Returns nullptr and sets *err (negative
// errno, e.g. -ENOENT for a missing program) when the spawn fails; an exec failure in the child
// is reported as such too, not as an exit with a mystery code. `step`, when given, is set to what
// failed other than the exec itself ("chdir /srv/app", "setuid 65534", "write memory.max"), or ""
// when it was the exec (or nothing failed).
std::unique_ptr<Child> spawn_child(uv_loop_t* loop, const SpawnSpec& spec, Child::LineFn on_line,
                                   Child::ExitFn on_exit, int* err, std::string* step = nullptr);

// Must be called once on the emperor's loop before any spawn: installs the SIGCHLD handler that
// reaps children (waitpid) and dispatches their exits. Returns the handle owner; closing it
// (reset) stops reaping. It keeps the loop alive only while some spawned child is not reaped
// yet. It reaps only the children spawn_child() started (waitpid on their pids, not -1), so the
// exit statuses of other children of the process (uv_spawn, popen) are left to their owners.
class Reaper {
public:
    virtual ~Reaper() = default;
};
std::unique_ptr<Reaper> install_reaper(uv_loop_t* loop);

// A loopback TCP port that is free right now (bind 127.0.0.1:0, read the port, close).
uint16_t pick_free_port();
// A bound, listening loopback TCP socket (CLOEXEC) and its port, for socket activation.
int bind_loopback_listener(uint16_t* port_out);

template <typename Emit> void LineSplitter::feed(std::string_view data, Emit&& emit) {
    while (!data.empty()) {
        std::size_t newline = data.find('\n');
        std::size_t take = newline == std::string_view::npos ? data.size() : newline;
        std::size_t room = kMaxLine - partial_.size();
        if (take > room) {
            // Too long: cut here. A line of exactly kMaxLine bytes is not cut, so its newline
            // does not turn into an empty line.
            partial_.append(data.substr(0, room));
            data.remove_prefix(room);
            emit(std::string_view(partial_));
            partial_.clear();
        } else if (newline == std::string_view::npos) {
            partial_.append(data);
            return;
        } else if (partial_.empty()) {
            emit(chomp(data.substr(0, take))); // the common case: no copy
            data.remove_prefix(take + 1);
        } else {
            partial_.append(data.substr(0, take));
            data.remove_prefix(take + 1);
            emit(chomp(partial_));
            partial_.clear();
        }
    }
}

template <typename Emit> void LineSplitter::flush(Emit&& emit) {
    if (!partial_.empty()) {
        emit(chomp(partial_));
        partial_.clear();
    }
}

} // namespace liege
