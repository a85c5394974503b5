// Spawning, reaping and stopping children.
//
// One file past 700 lines: the fork/exec protocol, the reaper and the stop escalation share one
// ChildCore and its invariants (below); split, each part would have to re-explain the others.
//
// fork() copies one thread of a process that may hold locks (malloc's, stdio's, spdlog's), so
// between fork and exec the child may only make async-signal-safe calls: no allocation, no
// setenv, no logging. Everything it needs (argv, envp, the PATH candidates for argv[0], the fd
// plan) is therefore built before fork, and the child only fills in two things it cannot know
// in advance: its own pid (LISTEN_PID) and the temporary fds it shuffles through.
//
// Order in the child, and why:
//   1. setpgid(0, 0): its own process group, so stop() reaches whatever the app forks. The
//      parent calls setpgid(pid, pid) too; whichever runs first wins, so no signal can be sent
//      to a group that does not exist yet.
//   2. Every signal disposition back to default while all signals are still blocked (the parent
//      blocks them around fork): otherwise a signal arriving now would run the emperor's libuv
//      handler in the child and write into the emperor's signal pipe.
//   3. rlimits (while still privileged: raising a hard limit needs CAP_SYS_RESOURCE), then the
//      user: setgroups, setgid, setuid, in that order, since each drops a privilege the one
//      before it needs; the lists were resolved before fork (initgroups reads NSS, not
//      async-signal-safe). Then PR_SET_NO_NEW_PRIVS.
//   4. PR_SET_PDEATHSIG(SIGKILL), then getppid() against the pid the parent had before fork: if
//      the emperor died in between, the death signal was never armed, so exit now. After the
//      credential change, because that change clears the death signal.
//   5. fds: every source is first duplicated above the target range (CLOEXEC), then dup2'd into
//      place (0 = /dev/null, 1/2 = the output pipes, 3 = listen_fd, then extra_fds), so a source
//      that sits on another's target number cannot be clobbered. Everything above the targets is
//      marked CLOEXEC (close_range), so no emperor fd leaks into an app.
//   6. LISTEN_PID, chdir (as the new user: a directory it cannot enter fails the spawn, rather
//      than leaving it in a cwd it could not reach itself), unblock signals, exec each PATH
//      candidate in turn (execvp's rules).
//   7. On failure: the step and errno go to the parent through a CLOEXEC pipe that exec closes on
//   success;
//      spawn_child() blocks on that pipe for the few microseconds until exec, as libuv does.
//
// Exits: the Reaper (SIGCHLD through uv_signal_t) calls waitpid() for each pid in a registry of
// our children, rather than waitpid(-1), so it never steals the exit status of a child someone
// else started (libuv's uv_spawn, popen, a test harness). A child's exit is delivered once the
// process is reaped *and* both output pipes reached EOF, so the last lines come before the exit;
// a grandchild that keeps the pipes open delays it by at most kPipeLinger.
//
// Lifetimes, by the rule at the top of liege/uv.hpp: the output pipes and the timers are
// UvHandles, closed when the ChildCore drops them (or is destroyed) and freed in their close
// callbacks, so a ChildCore may go at any moment, from inside one of its handles' callbacks too.
// The ChildCore itself is an ordinary object with more than one holder, hence a shared_ptr: the
// Child handle; the registry, weakly (a child whose Child is gone is still reaped, reporting to
// nobody); the core itself while a detached stop still has to escalate to SIGKILL (keep_alive_);
// and each of its callbacks for its duration, since on_line and on_exit may destroy the Child.
#include "liege/spawner.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <string_view>
#include <unordered_map>

#include <dirent.h>
#include <fcntl.h>
#include <linux/sched.h> // clone_args, CLONE_INTO_CGROUP
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "liege/containment.hpp"
#include "liege/log.hpp"
#include "liege/uv.hpp"

extern char** environ;

namespace liege {

std::string ExitStatus::str() const {
    if (term_signal != 0) {
        const char* abbrev = sigabbrev_np(term_signal);
        std::string text = abbrev != nullptr ? "killed by SIG" + std::string(abbrev)
                                             : "killed by signal " + std::to_string(term_signal);
        return core_dumped ? text + " (core dumped)" : text;
    }
    if (exit_code >= 0) {
        return "exit code " + std::to_string(exit_code);
    }
    return "exit status unknown";
}

ExitStatus ExitStatus::from_wait_status(int wait_status) {
    ExitStatus status;
    if (WIFEXITED(wait_status)) {
        status.exit_code = WEXITSTATUS(wait_status);
    } else if (WIFSIGNALED(wait_status)) {
        status.term_signal = WTERMSIG(wait_status);
        status.core_dumped = WCOREDUMP(wait_status);
    }
    return status;
}

namespace {

constexpr std::size_t kLastLines = 20;
// How long a reaped child's exit waits for its output pipes when a grandchild holds them open.
constexpr uint64_t kPipeLingerMs = 1000;
// After the leader of a group exits: how often to look whether the rest is gone, and for how long
// after its SIGKILL before giving up on it (a process stuck in the kernel).
constexpr uint64_t kGroupPollMs = 50;
constexpr uint64_t kGroupGiveUpMs = 10'000;

class ChildCore;

// Our unreaped children by pid. One emperor loop per process, so no lock. Weak: a Child that
// was destroyed without being stopped is still reaped (no zombie) but reports to nobody.
std::unordered_map<pid_t, std::weak_ptr<ChildCore>>& registry() {
    static auto& children = *new std::unordered_map<pid_t, std::weak_ptr<ChildCore>>();
    return children;
}
int g_reapers = 0;
uv_signal_t* g_reaper_signal = nullptr; // the latest Reaper's handle

// The Reaper keeps the loop alive only while there is a child to reap, so a loop whose work is
// done can end without the emperor remembering to drop its Reaper first.
void update_reaper_ref() {
    if (g_reaper_signal == nullptr) {
        return;
    }
    auto* handle = reinterpret_cast<uv_handle_t*>(g_reaper_signal);
    if (registry().empty()) {
        uv_unref(handle);
    } else {
        uv_ref(handle);
    }
}

// Whether a process that is not a zombie is in process group `pgid`. A killed grandchild stays a
// zombie until its new parent (init) reaps it, and kill(-pgid, 0) still finds it.
bool group_has_live_process(pid_t pgid) {
    DIR* proc = ::opendir("/proc");
    if (proc == nullptr) {
        return true; // cannot tell: assume there is one
    }
    bool found = false;
    std::string text;
    while (!found) {
        dirent* entry = ::readdir(proc);
        if (entry == nullptr) {
            break;
        }
        if (entry->d_name[0] < '1' || entry->d_name[0] > '9') {
            continue;
        }
        std::ifstream stat(std::string("/proc/") + entry->d_name + "/stat");
        if (!stat || !std::getline(stat, text)) {
            continue;
        }
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        std::size_t paren = text.rfind(')');
        if (paren == std::string::npos) {
            continue;
        }
        char state = 0;
        long ppid = 0;
        long pgrp = 0;
        if (std::sscanf(text.c_str() + paren + 1, " %c %ld %ld", &state, &ppid, &pgrp) == 3 &&
            pgrp == pgid && state != 'Z' && state != 'X') {
            found = true;
        }
    }
    ::closedir(proc);
    return found;
}

// A read buffer shared by every pipe: libuv calls read_cb right after alloc_cb on one loop.
char g_read_buffer[65536];

class ChildCore : public std::enable_shared_from_this<ChildCore> {
public:
    ChildCore(uv_loop_t* loop, pid_t pid, std::string cgroup, std::string tag,
              Child::LineFn on_line, Child::ExitFn on_exit)
        : loop_(loop), pid_(pid), cgroup_(std::move(cgroup)), tag_(std::move(tag)),
          on_line_(std::move(on_line)), on_exit_(std::move(on_exit)) {}

    pid_t pid() const { return pid_; }
    bool running() const { return !reaped_; }

    void open_pipe(int index, int fd) {
        Stream& s = streams_[index];
        s.is_stderr = index == 1;
        if (uv_pipe_init(loop_, s.pipe.get(), 0) != 0 || uv_pipe_open(s.pipe.get(), fd) != 0) {
            ::close(fd);
            s.pipe.reset();
            s.eof = true;
            return;
        }
        s.pipe->data = this;
        uv_read_start(
            s.pipe.stream(),
            [](uv_handle_t*, size_t, uv_buf_t* buf) {
                *buf = uv_buf_init(g_read_buffer, sizeof g_read_buffer);
            },
            [](uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
                auto* self = static_cast<ChildCore*>(stream->data);
                if (self != nullptr) {
                    self->on_read(reinterpret_cast<uv_pipe_t*>(stream), nread, buf);
                }
            });
    }

    void signal(int signo) {
        if (!exit_delivered_) {
            ::kill(-pid_, signo);
        }
    }

    void stop(int signo, std::chrono::milliseconds timeout) {
        if (exit_delivered_) {
            return;
        }
        if (signo == SIGKILL) {
            kill_all();
            return;
        }
        ::kill(-pid_, signo);
        // A second stop() does not push the deadline further out.
        if (kill_timer_.active()) {
            return;
        }
        if (!kill_timer_.initialised()) {
            kill_timer_ = UvHandle<uv_timer_t>();
            uv_timer_init(loop_, kill_timer_.get());
            kill_timer_->data = this;
        }
        const auto ms = static_cast<uint64_t>(std::max<int64_t>(timeout.count(), 0));
        kill_deadline_ = uv_now(loop_) + ms;
        start_kill_timer(ms, 0);
    }

    void start_kill_timer(uint64_t after, uint64_t repeat) {
        uv_timer_start(
            kill_timer_.get(),
            [](uv_timer_t* timer) {
                if (auto* self = static_cast<ChildCore*>(timer->data)) {
                    self->on_kill_timer();
                }
            },
            after, repeat);
    }

    std::vector<std::string> last_lines() const { return {last_.begin(), last_.end()}; }

    // The Child handle is gone: no more callbacks. A stop in progress still escalates to
    // SIGKILL, so the core keeps itself alive until then.
    void detach() {
        detached_ = true;
        if (kill_timer_.active()) {
            keep_alive_ = shared_from_this();
        }
    }

    // The group (and cgroup) of a child whose core is gone: nothing watches it any more.
    static void forget(pid_t pid) {
        if (auto* c = Containment::current()) {
            c->gone(pid);
        }
    }

    void on_reaped(ExitStatus status) {
        auto self = shared_from_this();
        reaped_ = true;
        status_ = status;
        spdlog::debug("{}: pid {} {}", tag_, pid_, status.str());
        if (streams_[0].eof && streams_[1].eof) {
            deliver_exit();
            return;
        }
        // Something else in the group (or a daemonised grandchild) holds the pipes open.
        uv_timer_init(loop_, linger_timer_.get());
        linger_timer_->data = this;
        uv_timer_start(
            linger_timer_.get(),
            [](uv_timer_t* timer) {
                if (auto* core = static_cast<ChildCore*>(timer->data)) {
                    auto keep = core->shared_from_this();
                    core->deliver_exit();
                }
            },
            kPipeLingerMs, 0);
    }

private:
    struct Stream {
        UvHandle<uv_pipe_t> pipe;
        LineSplitter splitter;
        bool eof = false;
        bool is_stderr = false;
    };

    void on_read(uv_pipe_t* pipe, ssize_t nread, const uv_buf_t* buf) {
        auto self = shared_from_this();
        Stream& s = pipe == streams_[0].pipe.get() ? streams_[0] : streams_[1];
        auto emit = [&](std::string_view line) { deliver_line(line, s.is_stderr); };
        if (nread > 0) {
            s.splitter.feed(std::string_view(buf->base, static_cast<std::size_t>(nread)), emit);
            return;
        }
        if (nread == 0) {
            return; // EAGAIN
        }
        // EOF, or an error that ends the stream just the same.
        s.splitter.flush(emit);
        s.eof = true;
        s.pipe.reset();
        if (reaped_ && streams_[0].eof && streams_[1].eof) {
            deliver_exit();
        }
    }

    void deliver_line(std::string_view line, bool is_stderr) {
        if (last_.size() == kLastLines) {
            last_.pop_front();
        }
        last_.emplace_back(line);
        if (detached_) {
            return;
        }
        if (on_line_) {
            on_line_(line, is_stderr);
        } else {
            spdlog::info("{}: {}", tag_, line);
        }
    }

    // SIGKILL to the whole group, and to the cgroup, where processes that left the group are.
    void kill_all() {
        sigkill_sent_ = true;
        ::kill(-pid_, SIGKILL);
        Containment::kill_cgroup(cgroup_);
    }

    // Everything of the child is gone: no more watching, and the containment forgets it.
    void released() {
        if (released_) {
            return;
        }
        released_ = true;
        kill_timer_.reset();
        forget(pid_);
        keep_alive_.reset(); // last: may free *this (every caller holds a reference)
    }

    // Before the leader exits: the stop's deadline, when the group gets SIGKILL. After it: the
    // rest of the group is watched until it is gone (or the deadline comes, or, after SIGKILL,
    // kGroupGiveUpMs), so a stop that worked leaves no timer behind for long.
    void on_kill_timer() {
        auto self = shared_from_this();
        if (exit_delivered_ && group_gone()) {
            released();
            return;
        }
        const uint64_t now = uv_now(loop_);
        if (now >= kill_deadline_ && !sigkill_sent_) {
            spdlog::debug("{}: process group {} still there after its stop timeout, sending "
                          "SIGKILL",
                          tag_, pid_);
            kill_all();
        }
        if (!exit_delivered_) {
            uv_timer_stop(kill_timer_.get()); // the leader's exit comes next: deliver_exit
            keep_alive_.reset();
            return;
        }
        if (sigkill_sent_ && now >= kill_deadline_ + kGroupGiveUpMs) {
            spdlog::warn("{}: process group {} not gone {} s after SIGKILL", tag_, pid_,
                         kGroupGiveUpMs / 1000);
            uv_timer_stop(kill_timer_.get());
            keep_alive_.reset();
        }
    }

    // Whether no process is left in the child's group (nor in its cgroup). While one is, the
    // kernel does not reuse the group's id, so a later kill(-pgid) cannot reach a stranger; once
    // it is empty, the pending SIGKILL is dropped so that it never can.
    bool group_gone() const {
        const bool group_empty =
            (::kill(-pid_, 0) != 0 && errno == ESRCH) || !group_has_live_process(pid_);
        return group_empty && (cgroup_.empty() || !Containment::cgroup_populated(cgroup_));
    }

    void deliver_exit() {
        if (exit_delivered_) {
            return;
        }
        exit_delivered_ = true;
        linger_timer_.reset();
        if (group_gone()) {
            released();
        } else {
            const uint64_t now = uv_now(loop_);
            if (!kill_timer_.active()) {
                // The leader exited on its own (a crash, an exit, a signal from elsewhere): what
                // it leaves behind in its group and cgroup has nobody to serve, and a restart
                // would pile more of it up.
                if (!sigkill_sent_) {
                    spdlog::info("{}: pid {} exited; killing what is left of its process group",
                                 tag_, pid_);
                    kill_all();
                }
                kill_deadline_ = now;
                if (!kill_timer_.initialised()) {
                    uv_timer_init(loop_, kill_timer_.get());
                    kill_timer_->data = this;
                }
            }
            const uint64_t left = kill_deadline_ > now ? kill_deadline_ - now : 0;
            start_kill_timer(std::min<uint64_t>(left, kGroupPollMs), kGroupPollMs);
            if (detached_) {
                keep_alive_ = shared_from_this();
            }
        }
        if (detached_ || !on_exit_) {
            return;
        }
        Child::ExitFn fn = std::move(on_exit_);
        fn(status_); // may destroy the Child handle; our caller holds a reference to *this
    }

    uv_loop_t* loop_;
    pid_t pid_;
    std::string cgroup_; // its own cgroup (Containment), or ""
    std::string tag_;
    Child::LineFn on_line_;
    Child::ExitFn on_exit_;
    std::array<Stream, 2> streams_;
    UvHandle<uv_timer_t> kill_timer_;
    uint64_t kill_deadline_ = 0; // loop time of the SIGKILL
    UvHandle<uv_timer_t> linger_timer_;
    std::deque<std::string> last_;
    ExitStatus status_;
    bool reaped_ = false;
    bool exit_delivered_ = false;
    bool detached_ = false;
    bool sigkill_sent_ = false;
    bool released_ = false;
    std::shared_ptr<ChildCore> keep_alive_;
};

class ChildHandle final : public Child {
public:
    explicit ChildHandle(std::shared_ptr<ChildCore> core) : core_(std::move(core)) {}
    ~ChildHandle() override { core_->detach(); }
    ChildHandle(const ChildHandle&) = delete;
    ChildHandle& operator=(const ChildHandle&) = delete;

    int pid() const override { return core_->pid(); }
    bool running() const override { return core_->running(); }
    void stop(int signo, std::chrono::milliseconds timeout) override {
        core_->stop(signo, timeout);
    }
    void signal(int signo) override { core_->signal(signo); }
    std::vector<std::string> last_lines() const override { return core_->last_lines(); }

private:
    std::shared_ptr<ChildCore> core_;
};

// Reaps every registered child that has exited. Exits are collected first and dispatched
// after, since a callback may spawn or drop children and so change the registry.
void reap_children() {
    std::vector<std::pair<pid_t, ExitStatus>> exited;
    for (const auto& entry : registry()) {
        int wait_status = 0;
        pid_t r;
        do {
            r = ::waitpid(entry.first, &wait_status, WNOHANG);
        } while (r < 0 && errno == EINTR);
        if (r == entry.first) {
            exited.emplace_back(entry.first, ExitStatus::from_wait_status(wait_status));
        } else if (r < 0 && errno == ECHILD) {
            // Someone else reaped it (a waitpid(-1) elsewhere): its status is lost.
            exited.emplace_back(entry.first, ExitStatus{});
        }
    }
    for (const auto& [pid, status] : exited) {
        auto it = registry().find(pid);
        if (it == registry().end()) {
            continue;
        }
        std::shared_ptr<ChildCore> core = it->second.lock();
        registry().erase(it);
        update_reaper_ref();
        if (core) {
            core->on_reaped(status);
        } else {
            ChildCore::forget(pid);
        }
    }
    if (Containment::current() != nullptr) {
        Containment::reap_adopted([](pid_t pid) { return registry().contains(pid); });
    }
}

class ReaperImpl final : public Reaper {
public:
    explicit ReaperImpl(uv_loop_t* loop) {
        uv_signal_init(loop, signal_.get());
        uv_signal_start(
            signal_.get(), [](uv_signal_t*, int) { reap_children(); }, SIGCHLD);
        ++g_reapers;
        g_reaper_signal = signal_.get();
        update_reaper_ref();
    }
    ~ReaperImpl() override {
        --g_reapers;
        if (g_reaper_signal == signal_.get()) {
            g_reaper_signal = nullptr;
        }
    }
    ReaperImpl(const ReaperImpl&) = delete;
    ReaperImpl& operator=(const ReaperImpl&) = delete;

private:
    UvHandle<uv_signal_t> signal_;
};

// Closes the fds it owns when it goes out of scope. add() returns a reference that stays valid
// (at most kMax fds), so a caller can hand an fd on by setting it to -1.
struct FdGuard {
    static constexpr std::size_t kMax = 8;
    FdGuard() { fds.reserve(kMax); }
    FdGuard(const FdGuard&) = delete;
    FdGuard& operator=(const FdGuard&) = delete;
    std::vector<int> fds;
    ~FdGuard() {
        for (int fd : fds) {
            if (fd >= 0) {
                ::close(fd);
            }
        }
    }
    int& add(int fd) {
        if (fds.size() == kMax) {
            std::abort(); // would invalidate the references handed out
        }
        return fds.emplace_back(fd);
    }
};

// Where argv[0] may be, in execvp's order: as given when it holds a '/', else in each PATH
// directory (an empty entry means the working directory).
std::vector<std::string> exec_candidates(const std::string& program, const char* path_env) {
    if (program.find('/') != std::string::npos) {
        return {program};
    }
    std::string_view path = path_env != nullptr ? path_env : "/usr/local/bin:/usr/bin:/bin";
    std::vector<std::string> candidates;
    while (true) {
        std::size_t colon = path.find(':');
        std::string_view dir = path.substr(0, colon);
        candidates.push_back(dir.empty() ? program : std::string(dir) + "/" + program);
        if (colon == std::string_view::npos) {
            break;
        }
        path.remove_prefix(colon + 1);
    }
    return candidates;
}

bool env_name_is(const char* entry, std::string_view name) {
    return std::strncmp(entry, name.data(), name.size()) == 0 && entry[name.size()] == '=';
}

// --- Between fork and exec: async-signal-safe only. ---

// What failed between fork and exec, as the report pipe carries it.
enum class Step : int {
    Exec,
    Chdir,
    Setgroups,
    Setgid,
    Setuid,
    Rlimit,
    NoNewPrivs,
    Pdeathsig,
    Fds
};
struct Report {
    Step step;
    int err;
};

[[noreturn]] void child_fail(int report_fd, int err, Step step = Step::Fds) {
    const Report report{step, err};
    const char* p = reinterpret_cast<const char*>(&report);
    std::size_t left = sizeof report;
    while (left > 0) {
        ssize_t n = ::write(report_fd, p, left);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        p += n;
        left -= static_cast<std::size_t>(n);
    }
    ::_exit(127);
}

// Writes the decimal digits of `value` and a NUL into `out` (room for 21 bytes).
void format_decimal(char* out, long value) {
    char digits[24];
    int n = 0;
    do {
        digits[n++] = static_cast<char>('0' + value % 10);
        value /= 10;
    } while (value > 0);
    while (n > 0) {
        *out++ = digits[--n];
    }
    *out = '\0';
}

struct ExecPlan {
    std::vector<std::string> candidates;
    std::vector<char*> candidate_ptrs;
    std::vector<std::string> argv_storage;
    std::vector<char*> argv;
    std::vector<std::string> env_storage;
    std::vector<char*> envp;
    char* listen_pid_digits = nullptr; // inside env_storage, filled by the child
    std::vector<int> sources;          // the fd that becomes fd i
    std::vector<int> temps;            // scratch for the child, sized before fork
    const char* cwd = nullptr;
    const SpawnUser* user = nullptr;
    std::vector<gid_t> groups; // user's, as setgroups takes them
    std::vector<std::pair<int, rlimit>> rlimits;
    bool no_new_privs = false;
    std::string cgroup_procs; // the child's cgroup.procs, joined first ("" = none)
    bool in_cgroup = false;   // born in its cgroup (clone3): nothing to join
    pid_t parent = 0;
};

// fork(), with the child born in the cgroup `cgroup_fd` names when that is >= 0 and the kernel
// can (clone3 with CLONE_INTO_CGROUP, Linux 5.7). Joining afterwards by writing cgroup.procs
// moves a live process, which waits for every CPU to pass an RCU grace period: ~10 ms per
// spawn, the larger part of a cold start's own cost. *born_in is whether the child was; when
// not (an older kernel, a cgroup v1 hierarchy), the child joins by cgroup.procs as before.
//
// Unlike fork(), the raw system call runs no atfork handlers and leaves libc's idea of the
// thread as the parent's; the child only makes async-signal-safe system calls until it execs,
// none of which reads it.
pid_t fork_into(int cgroup_fd, bool* born_in) {
    *born_in = false;
#if defined(SYS_clone3) && defined(CLONE_INTO_CGROUP)
    if (cgroup_fd >= 0) {
        clone_args args{};
        args.flags = CLONE_INTO_CGROUP;
        args.exit_signal = SIGCHLD;
        args.cgroup = static_cast<uint64_t>(cgroup_fd);
        const long pid = ::syscall(SYS_clone3, &args, sizeof args);
        if (pid >= 0) {
            *born_in = true;
            return static_cast<pid_t>(pid);
        }
        if (errno != ENOSYS && errno != EINVAL && errno != E2BIG && errno != EOPNOTSUPP &&
            errno != EPERM && errno != EACCES && errno != EBUSY) {
            return -1;
        }
    }
#else
    (void)cgroup_fd;
#endif
    return ::fork();
}

[[noreturn]] void run_child(ExecPlan& plan, int report_fd, const sigset_t& unblocked) {
    ::setpgid(0, 0);
    if (!plan.cgroup_procs.empty() && !plan.in_cgroup) {
        // Before anything else can fork: whatever the app starts is born in its cgroup.
        int fd = ::open(plan.cgroup_procs.c_str(), O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
            (void)!::write(fd, "0", 1);
            ::close(fd);
        }
    }

    struct sigaction dfl;
    std::memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    for (int signo = 1; signo < NSIG; ++signo) {
        if (signo != SIGKILL && signo != SIGSTOP) {
            ::sigaction(signo, &dfl, nullptr); // EINVAL for libc's reserved signals: fine
        }
    }

    for (const auto& [resource, limit] : plan.rlimits) {
        if (::setrlimit(static_cast<__rlimit_resource_t>(resource), &limit) != 0) {
            child_fail(report_fd, errno, Step::Rlimit);
        }
    }
    if (plan.user != nullptr) {
        // The raw system calls: libc's wrappers broadcast the change to every thread it knows
        // of, and a child of clone3 still has the emperor's thread list (see fork_into). The
        // kernel's calls change this thread, the child's only one.
        if (::syscall(SYS_setgroups, plan.groups.size(), plan.groups.data()) != 0) {
            child_fail(report_fd, errno, Step::Setgroups);
        }
        const gid_t gid = plan.user->gid;
        const uid_t uid = plan.user->uid;
        if (::syscall(SYS_setresgid, gid, gid, gid) != 0) {
            child_fail(report_fd, errno, Step::Setgid);
        }
        if (::syscall(SYS_setresuid, uid, uid, uid) != 0) {
            child_fail(report_fd, errno, Step::Setuid);
        }
    }
    if (plan.no_new_privs && ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        child_fail(report_fd, errno, Step::NoNewPrivs);
    }
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
        child_fail(report_fd, errno, Step::Pdeathsig);
    }
    if (::getppid() != plan.parent) {
        ::_exit(1); // the emperor died before the death signal was armed
    }

    const int targets = static_cast<int>(plan.sources.size());
    if (report_fd < targets) {
        int moved = ::fcntl(report_fd, F_DUPFD_CLOEXEC, targets);
        if (moved < 0) {
            ::_exit(127);
        }
        report_fd = moved;
    }
    for (int i = 0; i < targets; ++i) {
        plan.temps[static_cast<std::size_t>(i)] =
            ::fcntl(plan.sources[static_cast<std::size_t>(i)], F_DUPFD_CLOEXEC, targets);
        if (plan.temps[static_cast<std::size_t>(i)] < 0) {
            child_fail(report_fd, errno);
        }
    }
    for (int i = 0; i < targets; ++i) {
        if (::dup2(plan.temps[static_cast<std::size_t>(i)], i) < 0) {
            child_fail(report_fd, errno);
        }
    }
    // Whatever else the emperor has open closes at exec (kernels before 5.11 lack the flag; the
    // emperor opens its own fds CLOEXEC anyway).
    ::close_range(static_cast<unsigned>(targets), ~0U, CLOSE_RANGE_CLOEXEC);

    if (plan.listen_pid_digits != nullptr) {
        format_decimal(plan.listen_pid_digits, static_cast<long>(::getpid()));
    }
    if (plan.cwd != nullptr && ::chdir(plan.cwd) != 0) {
        child_fail(report_fd, errno, Step::Chdir);
    }
    ::sigprocmask(SIG_SETMASK, &unblocked, nullptr);

    int err = ENOENT;
    bool saw_eacces = false;
    for (char* candidate : plan.candidate_ptrs) {
        ::execve(candidate, plan.argv.data(), plan.envp.data());
        err = errno;
        if (err == EACCES) {
            saw_eacces = true;
        } else if (err != ENOENT && err != ENOTDIR) {
            break; // found but not runnable: report that, as execvp does
        }
    }
    if (saw_eacces && (err == ENOENT || err == ENOTDIR)) {
        err = EACCES;
    }
    child_fail(report_fd, err, Step::Exec);
}

// --- end of the async-signal-safe part ---

// What the child's report names, for a user: "" for the exec itself.
std::string step_text(Step step, const ExecPlan& plan) {
    const std::string uid = plan.user != nullptr ? std::to_string(plan.user->uid) : "";
    const std::string gid = plan.user != nullptr ? std::to_string(plan.user->gid) : "";
    switch (step) {
    case Step::Exec:
        return "";
    case Step::Chdir:
        return std::string("chdir ") + (plan.cwd != nullptr ? plan.cwd : "") +
               (plan.user != nullptr ? " as uid " + uid : "");
    case Step::Setgroups:
        return "setgroups for uid " + uid;
    case Step::Setgid:
        return "setgid " + gid;
    case Step::Setuid:
        return "setuid " + uid;
    case Step::Rlimit:
        return "setrlimit";
    case Step::NoNewPrivs:
        return "PR_SET_NO_NEW_PRIVS";
    case Step::Pdeathsig:
        return "PR_SET_PDEATHSIG";
    case Step::Fds:
        return "setting up file descriptors";
    }
    return "";
}

} // namespace

std::string format_last_lines(const Child* child) {
    std::string out;
    if (child != nullptr) {
        for (const auto& l : child->last_lines()) {
            out += "\n    | " + l;
        }
    }
    return out;
}

std::unique_ptr<Child> spawn_child(uv_loop_t* loop, const SpawnSpec& spec, Child::LineFn on_line,
                                   Child::ExitFn on_exit, int* err, std::string* step) {
    if (step != nullptr) {
        step->clear();
    }
    auto fail = [err](int e) -> std::unique_ptr<Child> {
        if (err != nullptr) {
            *err = -e;
        }
        return nullptr;
    };
    if (spec.argv.empty() || spec.argv[0].empty()) {
        return fail(EINVAL);
    }
    if (g_reapers == 0) {
        spdlog::warn("spawn_child({}): no Reaper installed, its exit will go unnoticed", spec.tag);
    }

    ExecPlan plan;
    plan.parent = ::getpid();

    // Environment: the emperor's, minus what the spec overrides and minus the emperor's own
    // socket-activation variables (they describe the emperor's fds, not the child's).
    const char* path_env = nullptr;
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
        // NOTIFY_SOCKET too: the emperor's own (systemd's) is not a worker's to write to; a
        // worker with [health] notify gets its own through spec.env.
        bool drop = env_name_is(*e, "LISTEN_FDS") || env_name_is(*e, "LISTEN_PID") ||
                    env_name_is(*e, "LISTEN_FDNAMES") || env_name_is(*e, "NOTIFY_SOCKET");
        for (const auto& [name, value] : spec.env) {
            drop = drop || env_name_is(*e, name);
        }
        if (!drop) {
            plan.env_storage.emplace_back(*e);
        }
    }
    for (const auto& [name, value] : spec.env) {
        plan.env_storage.push_back(name + "=" + value);
    }
    std::size_t listen_pid_index = 0;
    if (spec.listen_fd >= 0) {
        plan.env_storage.emplace_back("LISTEN_FDS=1");
        listen_pid_index = plan.env_storage.size();
        plan.env_storage.push_back("LISTEN_PID=" + std::string(24, '\0'));
    }
    for (std::string& entry : plan.env_storage) {
        plan.envp.push_back(entry.data());
        if (entry.starts_with("PATH=")) {
            path_env = entry.c_str() + 5; // the child's PATH decides where argv[0] is found
        }
    }
    plan.envp.push_back(nullptr);
    if (spec.listen_fd >= 0) {
        plan.listen_pid_digits = plan.env_storage[listen_pid_index].data() + 11;
    }

    plan.candidates = exec_candidates(spec.argv[0], path_env);
    for (std::string& c : plan.candidates) {
        plan.candidate_ptrs.push_back(c.data());
    }
    plan.argv_storage = spec.argv;
    for (std::string& a : plan.argv_storage) {
        plan.argv.push_back(a.data());
    }
    plan.argv.push_back(nullptr);
    if (!spec.cwd.empty()) {
        plan.cwd = spec.cwd.c_str();
    }
    if (spec.user) {
        plan.user = &*spec.user;
        plan.groups.assign(spec.user->groups.begin(), spec.user->groups.end());
    }
    plan.no_new_privs = spec.no_new_privs;
    for (const auto& [resource, value] : spec.rlimits) {
        plan.rlimits.emplace_back(resource,
                                  rlimit{static_cast<rlim_t>(value), static_cast<rlim_t>(value)});
    }
    Containment* containment = Containment::current();
    const std::string cgroup = containment != nullptr ? containment->make_cgroup() : "";
    if (!cgroup.empty()) {
        plan.cgroup_procs = cgroup + "/cgroup.procs";
    }
    // Limits go in before the child is born in the cgroup, so nothing it does escapes them.
    for (const auto& [file, value] : spec.cgroup_files) {
        const std::string path = cgroup + "/" + file;
        if (cgroup.empty() || !Containment::write_cgroup_file(path, value)) {
            const int e = cgroup.empty() ? ENOTSUP : errno;
            if (step != nullptr) {
                *step = cgroup.empty() ? "no cgroup for " + file : "write " + value + " to " + path;
            }
            if (containment != nullptr && !cgroup.empty()) {
                containment->discard_cgroup(cgroup);
            }
            return fail(e);
        }
    }

    FdGuard guard;
    int& dev_null = guard.add(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (dev_null < 0) {
        return fail(errno);
    }
    int out_pipe[2];
    int err_pipe[2];
    int report_pipe[2];
    if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
        return fail(errno);
    }
    int& out_read = guard.add(out_pipe[0]);
    int& out_write = guard.add(out_pipe[1]);
    if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
        return fail(errno);
    }
    int& err_read = guard.add(err_pipe[0]);
    int& err_write = guard.add(err_pipe[1]);
    if (::pipe2(report_pipe, O_CLOEXEC) != 0) {
        return fail(errno);
    }
    int& report_read = guard.add(report_pipe[0]);
    int& report_write = guard.add(report_pipe[1]);

    plan.sources = {dev_null, out_write, err_write};
    if (spec.listen_fd >= 0) {
        plan.sources.push_back(spec.listen_fd);
    }
    plan.sources.insert(plan.sources.end(), spec.extra_fds.begin(), spec.extra_fds.end());
    plan.temps.assign(plan.sources.size(), -1);

    sigset_t all;
    sigset_t previous;
    sigset_t unblocked;
    sigfillset(&all);
    sigemptyset(&unblocked);
    ::pthread_sigmask(SIG_SETMASK, &all, &previous);
    int& cgroup_dir =
        guard.add(cgroup.empty() ? -1 : ::open(cgroup.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    pid_t pid = fork_into(cgroup_dir, &plan.in_cgroup);
    if (pid == 0) {
        run_child(plan, report_write, unblocked);
    }
    int fork_errno = errno;
    ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
    if (pid < 0) {
        return fail(fork_errno);
    }
    ::setpgid(pid, pid); // may fail once the child has exec'd: it did it itself by then
    if (containment != nullptr) {
        containment->started(pid, cgroup);
    }

    // The child's ends: closing them here is what lets EOF and the exec report through.
    ::close(std::exchange(out_write, -1));
    ::close(std::exchange(err_write, -1));
    ::close(std::exchange(report_write, -1));
    ::close(std::exchange(dev_null, -1));

    Report report{Step::Exec, 0};
    ssize_t n;
    do {
        n = ::read(report_read, &report, sizeof report);
    } while (n < 0 && errno == EINTR);
    const int child_errno = report.err;
    if (n > 0) {
        // exec failed: the child has _exit'ed or is about to; it is not registered, so reap it
        // here rather than leave a zombie.
        while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
        }
        if (containment != nullptr) {
            containment->gone(pid);
        }
        if (step != nullptr) {
            *step = step_text(report.step, plan);
        }
        spdlog::debug("{}: cannot run {}: {}", spec.tag, spec.argv[0], std::strerror(child_errno));
        return fail(child_errno);
    }

    auto core = std::make_shared<ChildCore>(loop, pid, cgroup, spec.tag, std::move(on_line),
                                            std::move(on_exit));
    registry()[pid] = core;
    update_reaper_ref();
    core->open_pipe(0, std::exchange(out_read, -1));
    core->open_pipe(1, std::exchange(err_read, -1));
    spdlog::debug("{}: started pid {}: {}", spec.tag, pid, spec.argv[0]);
    if (err != nullptr) {
        *err = 0;
    }
    return std::make_unique<ChildHandle>(std::move(core));
}

std::unique_ptr<Reaper> install_reaper(uv_loop_t* loop) {
    auto reaper = std::make_unique<ReaperImpl>(loop);
    reap_children(); // any child that exited before the handler was there
    return reaper;
}

int bind_loopback_listener(uint16_t* port_out) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -errno;
    }
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof addr;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(fd, SOMAXCONN) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        int e = errno;
        ::close(fd);
        return -e;
    }
    if (port_out != nullptr) {
        *port_out = ntohs(addr.sin_port);
    }
    return fd;
}

uint16_t pick_free_port() {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return 0;
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    uint16_t port = 0;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
        port = ntohs(addr.sin_port);
    }
    ::close(fd);
    return port;
}

} // namespace liege
