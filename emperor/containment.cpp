#include "liege/containment.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "liege/log.hpp"

namespace liege {

namespace {

Containment* g_current = nullptr;

// The space-separated words of a file (cgroup.controllers, cgroup.subtree_control, cgroup.procs).
std::set<std::string> words_of(const std::string& path) {
    std::ifstream in(path);
    std::set<std::string> out;
    std::string word;
    while (in >> word) {
        out.insert(word);
    }
    return out;
}

// The controllers a vassal's [limits] use, in cgroup.controllers' order.
constexpr std::array<const char*, 3> kLimitControllers = {"cpu", "memory", "pids"};

// Of those, the ones a vassal's limits ask for.
std::vector<const char*> asked_controllers(bool memory, bool cpu, bool pids) {
    std::vector<const char*> out;
    for (const auto& [name, asked] :
         {std::pair{"cpu", cpu}, std::pair{"memory", memory}, std::pair{"pids", pids}}) {
        if (asked) {
            out.push_back(name);
        }
    }
    return out;
}

// The cgroup v2 directory this process is in ("" when there is no cgroup v2 hierarchy): the
// cgroup2 mount point from /proc/self/mountinfo joined with the "0::" line of /proc/self/cgroup.
std::string own_cgroup_dir() {
    std::ifstream mounts("/proc/self/mountinfo");
    std::string line;
    std::string mount_point;
    while (std::getline(mounts, line)) {
        // "id parent major:minor root mount-point options ... - fstype source super-options"
        auto dash = line.find(" - ");
        if (dash == std::string::npos || line.compare(dash + 3, 8, "cgroup2 ") != 0) {
            continue;
        }
        std::vector<std::string> fields;
        std::size_t at = 0;
        while (fields.size() < 5 && at < dash) {
            auto space = line.find(' ', at);
            fields.push_back(line.substr(at, space - at));
            at = space + 1;
        }
        if (fields.size() == 5 && fields[3] == "/") {
            mount_point = fields[4];
            break;
        }
    }
    if (mount_point.empty()) {
        return {};
    }
    std::ifstream cgroup("/proc/self/cgroup");
    while (std::getline(cgroup, line)) {
        if (line.starts_with("0::")) {
            std::string path = line.substr(3);
            return path == "/" ? mount_point : mount_point + path;
        }
    }
    return {};
}

// Whether a process can be moved into a cgroup under `root`: a child that waits to be killed is
// put in a probe cgroup. Creating a directory is not proof (a read-only delegation, the
// no-internal-processes rule), moving one is.
bool can_move_into(const std::string& root) {
    const std::string probe = root + "/probe";
    if (::mkdir(probe.c_str(), 0755) != 0) {
        return false;
    }
    pid_t pid = ::fork();
    if (pid == 0) {
        ::pause();
        ::_exit(0);
    }
    bool ok =
        pid > 0 && Containment::write_cgroup_file(probe + "/cgroup.procs", std::to_string(pid));
    if (pid > 0) {
        ::kill(pid, SIGKILL);
        while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
        }
    }
    // The killed probe leaves the cgroup a moment after it is reaped.
    for (int i = 0; i < 100 && ::rmdir(probe.c_str()) != 0 && errno == EBUSY; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return ok;
}

// --- The guard: runs in a forked copy of the emperor, async-signal-safe calls only. ---

// A listed child: its process group and the number of its cgroup (root/cN; 0 = none).
struct GuardEntry {
    pid_t pgid;
    unsigned cgroup;
};
constexpr int kGuardEntries = 65536;
GuardEntry g_entries[kGuardEntries]; // static, as is the root: the guard allocates nothing
char g_cgroup_root[4096];            // set before the guard is forked

bool guard_write(const char* path, const char* text) {
    int fd = ::open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        return false;
    }
    bool ok = ::write(fd, text, std::strlen(text)) > 0;
    ::close(fd);
    return ok;
}

// Applies one line: "+PGID N" or "-PGID N", N being the child's cgroup number (0: none).
void guard_apply(char* line) {
    const char op = line[0];
    char* end = nullptr;
    long pgid = std::strtol(line + 1, &end, 10);
    if (pgid <= 1 || end == line + 1) {
        return;
    }
    const auto cgroup = static_cast<unsigned>(std::strtoul(end, nullptr, 10));
    for (auto& e : g_entries) {
        if (op == '+' && e.pgid == 0) {
            e = {static_cast<pid_t>(pgid), cgroup};
            return;
        }
        if (op == '-' && e.pgid == pgid) {
            e.pgid = 0;
            return;
        }
    }
}

[[noreturn]] void guard_main(int fd) {
    ::setsid(); // a terminal's ^C or hangup is for the emperor, not for its guard
    for (int signo : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGUSR1, SIGUSR2}) {
        ::signal(signo, SIG_IGN);
    }
    ::prctl(PR_SET_NAME, "liege-guard");
    int null_fd = ::open("/dev/null", O_RDWR);
    for (int i = 0; i < 3; ++i) {
        if (null_fd >= 0 && i != fd) {
            ::dup2(null_fd, i);
        }
    }
    static char buf[8192];
    std::size_t used = 0;
    for (;;) {
        ssize_t n = ::read(fd, buf + used, sizeof buf - 1 - used);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break; // the emperor is gone
        }
        used += static_cast<std::size_t>(n);
        std::size_t start = 0;
        for (std::size_t i = 0; i < used; ++i) {
            if (buf[i] == '\n') {
                buf[i] = '\0';
                guard_apply(buf + start);
                start = i + 1;
            }
        }
        std::memmove(buf, buf + start, used - start);
        used -= start;
        if (used == sizeof buf - 1) {
            used = 0; // no line is that long: drop it
        }
    }
    static char path[sizeof g_cgroup_root + 64];
    for (auto& e : g_entries) {
        if (e.pgid == 0) {
            continue;
        }
        if (e.cgroup != 0) {
            std::snprintf(path, sizeof path, "%s/c%u/cgroup.kill", g_cgroup_root, e.cgroup);
            guard_write(path, "1");
        }
        ::kill(-e.pgid, SIGKILL);
    }
    // Remove the cgroups once they are empty (killed processes leave them within milliseconds).
    for (int round = 0; round < 500; ++round) {
        bool left = false;
        for (auto& e : g_entries) {
            if (e.pgid != 0 && e.cgroup != 0) {
                std::snprintf(path, sizeof path, "%s/c%u", g_cgroup_root, e.cgroup);
                if (::rmdir(path) == 0 || errno == ENOENT) {
                    e.cgroup = 0;
                } else {
                    left = true;
                }
            }
        }
        if (!left) {
            break;
        }
        ::usleep(10'000);
    }
    if (g_cgroup_root[0] != '\0') {
        ::rmdir(g_cgroup_root);
    }
    ::_exit(0);
}

// --- end of the guard ---

} // namespace

std::unique_ptr<Containment> Containment::install() {
    std::unique_ptr<Containment> c(new Containment());
    c->subreaper_ = ::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0;

    const std::string own = own_cgroup_dir();
    if (!own.empty()) {
        const std::string root = own + "/liege." + std::to_string(::getpid());
        if (::mkdir(root.c_str(), 0755) == 0 || errno == EEXIST) {
            if (can_move_into(root)) {
                c->cgroup_root_ = root;
                c->enable_controllers(own);
            } else {
                ::rmdir(root.c_str());
            }
        }
    }
    if (c->cgroup_root_.empty()) {
        for (const char* name : kLimitControllers) {
            c->controller_missing_[name] = "no writable cgroup v2 hierarchy";
        }
    }

    std::strncpy(g_cgroup_root, c->cgroup_root_.c_str(), sizeof g_cgroup_root - 1);
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) == 0) {
        pid_t pid = ::fork();
        if (pid == 0) {
            ::close(fds[1]);
            guard_main(fds[0]);
        }
        ::close(fds[0]);
        if (pid > 0) {
            c->guard_pid_ = pid;
            c->guard_fd_ = fds[1];
        } else {
            ::close(fds[1]);
        }
    }
    g_current = c.get();
    spdlog::info("emperor: processes contained by {}", c->describe());
    if (c->cgroup_root_.empty()) {
        spdlog::info("emperor: no writable cgroup v2 hierarchy; a worker's descendants that leave "
                     "its process group are killed when it stops only if they are re-parented "
                     "to the emperor");
    }
    return c;
}

Containment* Containment::current() {
    return g_current;
}

Containment::~Containment() {
    finish();
    if (g_current == this) {
        g_current = nullptr;
    }
    if (guard_fd_ >= 0) {
        ::close(guard_fd_); // the guard finds nothing listed and exits
    }
    if (guard_pid_ > 0) {
        while (::waitpid(guard_pid_, nullptr, 0) < 0 && errno == EINTR) {
        }
    }
    if (!own_cgroup_.empty()) {
        // Back where we came from: the controllers off again (first below, then in our own
        // cgroup), else the no-internal-process rule refuses the move.
        for (const std::string& name : enabled_in_own_) {
            write_cgroup_file(cgroup_root_ + "/cgroup.subtree_control", "-" + name);
            write_cgroup_file(own_cgroup_ + "/cgroup.subtree_control", "-" + name);
        }
        if (write_cgroup_file(own_cgroup_ + "/cgroup.procs", std::to_string(::getpid()))) {
            ::rmdir((cgroup_root_ + "/emperor").c_str());
        }
    }
    if (!cgroup_root_.empty()) {
        ::rmdir(cgroup_root_.c_str());
    }
}

void Containment::enable_controllers(const std::string& own) {
    const std::set<std::string> available = words_of(own + "/cgroup.controllers");
    std::vector<std::string> wanted;
    for (const char* name : kLimitControllers) {
        if (available.count(name) != 0) {
            wanted.emplace_back(name);
        } else {
            controller_missing_[name] = std::string("controller ") + name + " not available in " +
                                        own + " (not in its cgroup.controllers)";
        }
    }
    // Returns 0, or the errno of the first controller that could not be enabled in `dir`.
    auto enable_in = [&wanted](const std::string& dir, std::string* which) {
        const std::string file = dir + "/cgroup.subtree_control";
        const std::set<std::string> on = words_of(file);
        for (const std::string& name : wanted) {
            if (on.count(name) == 0 && !write_cgroup_file(file, "+" + name)) {
                *which = name;
                return errno;
            }
        }
        return 0;
    };
    std::string which;
    int e = enable_in(own, &which);
    const std::string me = std::to_string(::getpid());
    if (e == EBUSY && words_of(own + "/cgroup.procs") == std::set<std::string>{me}) {
        // The no-internal-process rule, and we are the only process in our cgroup: step into a
        // leaf of our own (before the guard is forked, so it is born there too).
        const std::string leaf = cgroup_root_ + "/emperor";
        if ((::mkdir(leaf.c_str(), 0755) == 0 || errno == EEXIST) &&
            write_cgroup_file(leaf + "/cgroup.procs", me)) {
            const std::set<std::string> before = words_of(own + "/cgroup.subtree_control");
            e = enable_in(own, &which);
            if (e == 0) {
                own_cgroup_ = own;
                for (const std::string& name : wanted) {
                    if (before.count(name) == 0) {
                        enabled_in_own_.push_back(name);
                    }
                }
                spdlog::info("emperor: moved itself into {} to enable controllers in {}", leaf,
                             own);
            } else {
                write_cgroup_file(own + "/cgroup.procs", me);
                ::rmdir(leaf.c_str());
            }
        } else {
            ::rmdir(leaf.c_str());
        }
    }
    std::string where = own;
    if (e == 0) {
        where = cgroup_root_;
        e = enable_in(cgroup_root_, &which);
    }
    if (e != 0) {
        std::string why = "cannot enable controller " + which + " in " + where +
                          "/cgroup.subtree_control: " + std::strerror(e);
        if (e == EBUSY) {
            why += " (the emperor's cgroup holds other processes; run liege in a cgroup of its "
                   "own, such as a systemd unit with Delegate=yes)";
        }
        for (const std::string& name : wanted) {
            controller_missing_[name] = why;
        }
        return;
    }
    for (const std::string& name : wanted) {
        controllers_ += (controllers_.empty() ? "" : " ") + name;
    }
}

std::string Containment::controllers() const {
    return controllers_;
}

std::string Containment::limits_unavailable(const Containment* c, bool memory, bool cpu,
                                            bool pids) {
    if (c == nullptr) {
        return "the emperor contains no processes in cgroups here";
    }
    for (const char* name : asked_controllers(memory, cpu, pids)) {
        if (auto it = c->controller_missing_.find(name); it != c->controller_missing_.end()) {
            return it->second;
        }
    }
    return {};
}

std::string Containment::probe_limits(bool memory, bool cpu, bool pids) {
    const std::string own = own_cgroup_dir();
    if (own.empty()) {
        return "no cgroup v2 hierarchy";
    }
    const std::set<std::string> available = words_of(own + "/cgroup.controllers");
    for (const char* name : asked_controllers(memory, cpu, pids)) {
        if (available.count(name) == 0) {
            return std::string("controller ") + name + " not available in " + own;
        }
    }
    if (::access(own.c_str(), W_OK) != 0) {
        return "cgroup " + own + " not writable by uid " + std::to_string(::geteuid());
    }
    return {};
}

void Containment::discard_cgroup(const std::string& cgroup) {
    if (!cgroup.empty()) {
        ::rmdir(cgroup.c_str());
    }
}

std::string Containment::describe() const {
    std::string out;
    if (!cgroup_root_.empty()) {
        out = "cgroup v2 (" + cgroup_root_ +
              (controllers_.empty() ? "" : "; controllers " + controllers_) + "), ";
    }
    out += "process groups";
    if (subreaper_) {
        out += ", subreaper";
    }
    if (guard_pid_ > 0) {
        out += ", guard pid " + std::to_string(guard_pid_);
    }
    return out;
}

std::string Containment::make_cgroup() {
    if (cgroup_root_.empty()) {
        return {};
    }
    std::string dir = cgroup_root_ + "/c" + std::to_string(++next_cgroup_);
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
        spdlog::warn("emperor: cannot create cgroup {}: {}", dir, std::strerror(errno));
        return {};
    }
    return dir;
}

void Containment::tell_guard(char op, pid_t pgid, const std::string& cgroup) {
    if (guard_fd_ < 0) {
        return;
    }
    // The guard knows the root: a cgroup travels as the N of root/cN.
    unsigned n = 0;
    if (auto at = cgroup.rfind("/c"); at != std::string::npos) {
        n = static_cast<unsigned>(std::strtoul(cgroup.c_str() + at + 2, nullptr, 10));
    }
    std::string line = op + std::to_string(pgid) + " " + std::to_string(n) + "\n";
    if (::write(guard_fd_, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
        spdlog::warn("emperor: the guard process is gone ({}); children would outlive a killed "
                     "emperor",
                     std::strerror(errno));
        ::close(guard_fd_);
        guard_fd_ = -1;
    }
}

void Containment::started(pid_t pgid, const std::string& cgroup) {
    children_[pgid] = cgroup;
    tell_guard('+', pgid, cgroup);
}

void Containment::gone(pid_t pgid) {
    auto it = children_.find(pgid);
    if (it == children_.end()) {
        return;
    }
    const std::string cgroup = std::move(it->second);
    children_.erase(it);
    tell_guard('-', pgid, cgroup);
    if (!cgroup.empty() && ::rmdir(cgroup.c_str()) != 0 && errno != ENOENT) {
        spdlog::debug("emperor: cgroup {} not removed: {}", cgroup, std::strerror(errno));
    }
}

bool Containment::write_cgroup_file(const std::string& path, std::string_view text) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        return false;
    }
    ssize_t n = ::write(fd, text.data(), text.size());
    const int e = errno;
    ::close(fd);
    errno = e;
    return n == static_cast<ssize_t>(text.size());
}

bool Containment::kill_cgroup(const std::string& cgroup) {
    return !cgroup.empty() && write_cgroup_file(cgroup + "/cgroup.kill", "1");
}

bool Containment::cgroup_populated(const std::string& cgroup) {
    std::ifstream events(cgroup + "/cgroup.events");
    std::string key;
    int value = 0;
    while (events >> key >> value) {
        if (key == "populated") {
            return value != 0;
        }
    }
    return false;
}

namespace {

// The processes whose parent is this process, from /proc/self/task/*/children.
std::set<pid_t> own_children() {
    std::set<pid_t> out;
    DIR* tasks = ::opendir("/proc/self/task");
    if (tasks == nullptr) {
        return out;
    }
    while (dirent* t = ::readdir(tasks)) {
        if (t->d_name[0] == '.') {
            continue;
        }
        std::ifstream children(std::string("/proc/self/task/") + t->d_name + "/children");
        long pid = 0;
        while (children >> pid) {
            out.insert(static_cast<pid_t>(pid));
        }
    }
    ::closedir(tasks);
    return out;
}

} // namespace

void Containment::finish(int grace_ms) {
    if (finished_) {
        return;
    }
    finished_ = true;
    auto adopted = [&] {
        std::set<pid_t> out = own_children();
        out.erase(guard_pid_);
        return out;
    };
    std::set<pid_t> left = adopted();
    if (left.empty()) {
        return;
    }
    for (pid_t pid : left) {
        spdlog::warn("emperor: pid {} outlived the worker that started it; stopping it", pid);
        ::kill(pid, SIGTERM);
    }
    const auto start = std::chrono::steady_clock::now();
    const auto deadline = start + std::chrono::milliseconds(grace_ms);
    const auto give_up = deadline + std::chrono::seconds(2); // one stuck in D state stays
    bool killed = false;
    while (!left.empty() && std::chrono::steady_clock::now() < give_up) {
        reap_adopted([](pid_t) { return false; });
        left = adopted();
        if (!killed && std::chrono::steady_clock::now() >= deadline) {
            killed = true;
            for (pid_t pid : left) {
                spdlog::warn("emperor: pid {} still there after {} ms; killing it", pid, grace_ms);
                ::kill(pid, SIGKILL);
            }
        }
        if (!left.empty()) {
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }
}

} // namespace liege
