#include "harness.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <regex>
#include <set>
#include <sstream>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace liege::test {

namespace {

std::string errno_text(const char* what) {
    return std::string(what) + ": " + std::strerror(errno);
}

int remaining_ms(Clock::time_point deadline) {
    auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
    return static_cast<int>(std::clamp<long long>(left, 0, 60'000));
}

std::string lower(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
        s.remove_prefix(1);
    }
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
        s.remove_suffix(1);
    }
    return s;
}

sockaddr_in loopback(uint16_t port) {
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return sin;
}

// Appends what one recv() returns to `out`. Returns the byte count, 0 on EOF, or -errno (EINTR is
// retried).
ssize_t recv_append(int fd, std::string& out) {
    char buf[65536];
    for (;;) {
        ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
        if (n >= 0) {
            out.append(buf, static_cast<std::size_t>(n));
            return n;
        }
        if (errno != EINTR) {
            return -errno;
        }
    }
}

// Starts a non-blocking connect to 127.0.0.1:port and waits for it. Returns the fd, or -errno.
int connect_loopback(uint16_t port, Millis timeout, const ClientSocketOptions& options = {}) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        return -errno;
    }
    // Before connect: the window scale and the segment size are agreed in the handshake.
    if ((options.receive_buffer > 0 &&
         ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &options.receive_buffer,
                      sizeof(options.receive_buffer)) != 0) ||
        (options.max_segment > 0 && ::setsockopt(fd, IPPROTO_TCP, TCP_MAXSEG, &options.max_segment,
                                                 sizeof(options.max_segment)) != 0)) {
        int err = errno;
        ::close(fd);
        return -err;
    }
    if (!options.source_address.empty()) {
        sockaddr_in from{};
        from.sin_family = AF_INET;
        if (::inet_pton(AF_INET, options.source_address.c_str(), &from.sin_addr) != 1 ||
            ::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof(from)) != 0) {
            int err = errno != 0 ? errno : EINVAL;
            ::close(fd);
            return -err;
        }
    }
    sockaddr_in sin = loopback(port);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) != 0) {
        if (errno != EINPROGRESS) {
            int err = errno;
            ::close(fd);
            return -err;
        }
        pollfd p{fd, POLLOUT, 0};
        int rc = ::poll(&p, 1, static_cast<int>(timeout.count()));
        if (rc <= 0) {
            ::close(fd);
            return -ETIMEDOUT;
        }
        int err = 0;
        socklen_t len = sizeof(err);
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
            ::close(fd);
            return -err;
        }
    }
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

} // namespace

bool poll_until(const std::function<bool()>& condition, Millis timeout, Millis interval) {
    auto deadline = Clock::now() + timeout;
    for (;;) {
        if (condition()) {
            return true;
        }
        if (Clock::now() >= deadline) {
            return condition();
        }
        std::this_thread::sleep_for(std::min<Clock::duration>(interval, deadline - Clock::now()));
    }
}

// ---- OutputBuffer ----

void OutputBuffer::append(std::string_view data) {
    {
        std::lock_guard lock(mutex_);
        data_.append(data);
    }
    changed_.notify_all();
}

void OutputBuffer::close() {
    {
        std::lock_guard lock(mutex_);
        closed_ = true;
    }
    changed_.notify_all();
}

bool OutputBuffer::closed() const {
    std::lock_guard lock(mutex_);
    return closed_;
}

std::string OutputBuffer::text() const {
    std::lock_guard lock(mutex_);
    return data_;
}

std::vector<std::string> OutputBuffer::lines() const {
    std::lock_guard lock(mutex_);
    std::vector<std::string> out;
    std::size_t pos = 0;
    for (;;) {
        auto eol = data_.find('\n', pos);
        if (eol == std::string::npos) {
            return out;
        }
        out.push_back(data_.substr(pos, eol - pos));
        pos = eol + 1;
    }
}

std::optional<std::string>
OutputBuffer::wait_for_line(const std::function<bool(std::string_view)>& matches, Millis timeout,
                            std::size_t first_line) const {
    auto deadline = Clock::now() + timeout;
    std::unique_lock lock(mutex_);
    std::size_t pos = 0;
    std::size_t index = 0;
    for (;;) {
        for (;;) {
            auto eol = data_.find('\n', pos);
            if (eol == std::string::npos) {
                break;
            }
            std::string line = data_.substr(pos, eol - pos);
            pos = eol + 1;
            if (index++ >= first_line && matches(line)) {
                return line;
            }
        }
        if (closed_ || Clock::now() >= deadline) {
            return std::nullopt;
        }
        changed_.wait_until(lock, deadline);
    }
}

// ---- Process ----

Process::Process(std::vector<std::string> argv, const std::vector<std::string>& extra_env)
    : argv_(std::move(argv)) {
    if (argv_.empty()) {
        throw std::runtime_error("Process: empty command line");
    }
    std::vector<char*> args;
    for (auto& a : argv_) {
        args.push_back(a.data());
    }
    args.push_back(nullptr);
    // Built before fork: the child may only make async-signal-safe calls.
    std::vector<std::string> env_storage = extra_env;
    std::vector<char*> env;
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
        const std::string_view entry(*e);
        const bool replaced = std::any_of(env_storage.begin(), env_storage.end(), [&](auto& x) {
            return entry.substr(0, entry.find('=') + 1) == x.substr(0, x.find('=') + 1);
        });
        if (!replaced) {
            env.push_back(*e);
        }
    }
    for (auto& e : env_storage) {
        env.push_back(e.data());
    }
    env.push_back(nullptr);

    int out_pipe[2];
    int err_pipe[2];
    if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
        throw std::runtime_error(errno_text("pipe2"));
    }
    if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
        ::close(out_pipe[0]);
        ::close(out_pipe[1]);
        throw std::runtime_error(errno_text("pipe2"));
    }
    int dev_null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    const pid_t parent = ::getpid();

    pid_t pid = ::fork();
    if (pid < 0) {
        throw std::runtime_error(errno_text("fork"));
    }
    if (pid == 0) {
        // Child: only async-signal-safe calls until exec.
        ::setpgid(0, 0);
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != parent) {
            ::_exit(127);
        }
        ::dup2(dev_null, 0);
        ::dup2(out_pipe[1], 1);
        ::dup2(err_pipe[1], 2);
        ::execve(args[0], args.data(), env.data());
        const char msg[] = "Process: exec failed\n";
        ssize_t ignored = ::write(2, msg, sizeof(msg) - 1);
        (void)ignored;
        ::_exit(127);
    }
    ::setpgid(pid, pid); // also here, so the group exists before we might signal it
    pid_ = pid;
    ::close(dev_null);
    ::close(out_pipe[1]);
    ::close(err_pipe[1]);
    out_fd_ = out_pipe[0];
    err_fd_ = err_pipe[0];

    reader_ = std::thread([this] {
        pollfd fds[2] = {{out_fd_, POLLIN, 0}, {err_fd_, POLLIN, 0}};
        OutputBuffer* buffers[2] = {&out_, &err_};
        int open_count = 2;
        char buf[65536];
        while (open_count > 0) {
            if (::poll(fds, 2, -1) < 0) {
                if (errno == EINTR) {
                    continue;
                }
                break;
            }
            for (int i = 0; i < 2; ++i) {
                if (fds[i].fd < 0 || fds[i].revents == 0) {
                    continue;
                }
                ssize_t n = ::read(fds[i].fd, buf, sizeof(buf));
                if (n > 0) {
                    buffers[i]->append(std::string_view(buf, static_cast<std::size_t>(n)));
                } else if (n == 0 || errno != EINTR) {
                    buffers[i]->close();
                    fds[i].fd = -1;
                    --open_count;
                }
            }
        }
        out_.close();
        err_.close();
    });
}

Process::~Process() {
    kill();
    // Every process of the group is gone once no signal can reach the group.
    bool group_gone = poll_until([this] { return ::kill(-pid_, 0) != 0 && errno == ESRCH; }, kWait);
    if (!group_gone) {
        ADD_FAILURE() << "processes of group " << pid_ << " (" << argv_[0]
                      << ") are still running after SIGKILL";
        ::kill(-pid_, SIGKILL);
    }
    // The pipes reach EOF when the last process holding them has gone.
    if (reader_.joinable()) {
        reader_.join();
    }
    ::close(out_fd_);
    ::close(err_fd_);
}

void Process::reap(bool block) {
    if (status_) {
        return;
    }
    int status = 0;
    pid_t r;
    do {
        r = ::waitpid(pid_, &status, block ? 0 : WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == pid_) {
        status_ = status;
    }
}

bool Process::running() {
    reap(false);
    return !status_.has_value();
}

void Process::signal(int sig) {
    if (running()) {
        ::kill(pid_, sig);
    }
}

std::optional<int> Process::wait_exit(Millis timeout) {
    poll_until([this] { return !running(); }, timeout, 5ms);
    return status_;
}

void Process::kill() {
    if (::kill(-pid_, 0) == 0) {
        ::kill(-pid_, SIGKILL);
    }
    reap(true);
}

std::string describe_status(int status) {
    if (WIFEXITED(status)) {
        return "exited " + std::to_string(WEXITSTATUS(status));
    }
    if (WIFSIGNALED(status)) {
        return std::string("killed by signal ") + std::to_string(WTERMSIG(status)) + " (" +
               ::strsignal(WTERMSIG(status)) + ")";
    }
    return "status " + std::to_string(status);
}

std::string Process::describe(std::size_t tail_lines) {
    reap(false);
    std::ostringstream s;
    s << "command:";
    for (const auto& a : argv_) {
        s << ' ' << a;
    }
    s << "\nstate: " << (status_ ? describe_status(*status_) : std::string("running")) << '\n';
    auto tail = [&](const char* name, const OutputBuffer& buf) {
        auto lines = buf.lines();
        std::size_t start = lines.size() > tail_lines ? lines.size() - tail_lines : 0;
        s << "--- " << name << " (last " << lines.size() - start << " of " << lines.size()
          << " lines) ---\n";
        for (std::size_t i = start; i < lines.size(); ++i) {
            s << lines[i] << '\n';
        }
    };
    tail("stdout", out_);
    tail("stderr", err_);
    return s.str();
}

// ---- small helpers ----

long rss_kib(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.starts_with("VmRSS:")) {
            return std::strtol(line.c_str() + 6, nullptr, 10);
        }
    }
    return -1;
}

int open_fds(pid_t pid) {
    std::error_code ec;
    std::filesystem::directory_iterator it("/proc/" + std::to_string(pid) + "/fd", ec);
    if (ec) {
        return -1;
    }
    int n = 0;
    for (; it != std::filesystem::directory_iterator(); it.increment(ec)) {
        if (ec) {
            return -1;
        }
        ++n;
    }
    return n;
}

bool process_gone(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string text;
    if (!in || !std::getline(in, text)) {
        return true;
    }
    std::size_t paren = text.rfind(')');
    return paren == std::string::npos || paren + 2 >= text.size() || text[paren + 2] == 'Z';
}

// ---- processes in /proc ----

std::optional<ProcStat> read_stat(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string text;
    if (!std::getline(in, text)) {
        return std::nullopt;
    }
    auto paren = text.rfind(')');
    if (paren == std::string::npos) {
        return std::nullopt;
    }
    std::istringstream fields(text.substr(paren + 2));
    ProcStat s;
    s.pid = pid;
    fields >> s.state >> s.ppid >> s.pgrp;
    std::string skip;
    for (int i = 0; i < 16; ++i) { // fields 6..21
        fields >> skip;
    }
    fields >> s.start_time; // field 22
    if (!fields) {
        return std::nullopt;
    }
    return s;
}

std::vector<ProcStat> all_processes() {
    std::vector<ProcStat> out;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
        const std::string name = entry.path().filename().string();
        if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) {
            continue;
        }
        if (auto s = read_stat(static_cast<pid_t>(std::stol(name)))) {
            out.push_back(*s);
        }
    }
    return out;
}

std::vector<ProcStat> descendants(pid_t root) {
    auto procs = all_processes();
    std::vector<ProcStat> out;
    std::set<pid_t> parents = {root};
    bool grew = true;
    while (grew) {
        grew = false;
        for (const auto& p : procs) {
            if (parents.count(p.ppid) != 0 && parents.count(p.pid) == 0 && p.state != 'Z') {
                parents.insert(p.pid);
                out.push_back(p);
                grew = true;
            }
        }
    }
    return out;
}

bool alive(const ProcStat& p) {
    auto now = read_stat(p.pid);
    return now && now->start_time == p.start_time && now->state != 'Z' && now->state != 'X';
}

std::vector<std::string> read_nul_separated(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::vector<std::string> out;
    std::string item;
    while (std::getline(in, item, '\0')) {
        out.push_back(item);
    }
    return out;
}

std::map<std::string, std::string> environ_of(pid_t pid) {
    std::map<std::string, std::string> env;
    for (const auto& kv : read_nul_separated("/proc/" + std::to_string(pid) + "/environ")) {
        auto eq = kv.find('=');
        if (eq != std::string::npos) {
            env[kv.substr(0, eq)] = kv.substr(eq + 1);
        }
    }
    return env;
}

std::string cmdline_of(pid_t pid) {
    std::string out;
    for (const auto& arg : read_nul_separated("/proc/" + std::to_string(pid) + "/cmdline")) {
        out += (out.empty() ? "" : " ") + arg;
    }
    return out;
}

std::string describe_procs(const std::vector<ProcStat>& procs) {
    std::string out;
    for (const auto& p : procs) {
        out += "\n  pid " + std::to_string(p.pid) + " (" + std::string(1, p.state) +
               "): " + cmdline_of(p.pid);
    }
    return out;
}

namespace {

// Those of `procs` that are still alive.
std::vector<ProcStat> living(const std::vector<ProcStat>& procs) {
    std::vector<ProcStat> out;
    std::copy_if(procs.begin(), procs.end(), std::back_inserter(out), alive);
    return out;
}

} // namespace

std::vector<ProcStat> wait_gone(const std::vector<ProcStat>& procs, Millis timeout) {
    std::vector<ProcStat> left;
    poll_until(
        [&] {
            left = living(procs);
            return left.empty();
        },
        timeout, 50ms);
    return left;
}

// ---- files and text ----

std::string slurp(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

std::string toml_str(std::string_view s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
        }
        out += c;
    }
    return out + "\"";
}

std::string toml_array(const std::vector<std::string>& items) {
    std::string out = "[";
    for (std::size_t i = 0; i < items.size(); ++i) {
        out += (i == 0 ? "" : ", ") + toml_str(items[i]);
    }
    return out + "]";
}

std::size_t count_of(std::string_view haystack, std::string_view needle, std::size_t from) {
    std::size_t n = 0;
    for (auto pos = haystack.find(needle, from); pos != std::string_view::npos;
         pos = haystack.find(needle, pos + needle.size())) {
        ++n;
    }
    return n;
}

std::optional<uint16_t> port_after(std::string_view text, std::string_view prefix) {
    const std::string anchor = std::string(prefix) + "127.0.0.1:";
    auto pos = text.find(anchor);
    if (pos == std::string_view::npos) {
        return std::nullopt;
    }
    const char* digits = text.data() + pos + anchor.size();
    unsigned port = 0;
    auto [end, ec] = std::from_chars(digits, text.data() + text.size(), port);
    if (ec != std::errc{} || end == digits || port == 0 || port > 65535) {
        return std::nullopt;
    }
    return static_cast<uint16_t>(port);
}

std::filesystem::path make_temp_dir(std::string_view prefix) {
    std::string pattern =
        (std::filesystem::temp_directory_path() / (std::string(prefix) + ".XXXXXX")).string();
    if (::mkdtemp(pattern.data()) == nullptr) {
        throw std::runtime_error("mkdtemp " + pattern + ": " + std::strerror(errno));
    }
    return pattern;
}

void write_file(const std::filesystem::path& path, std::string_view text) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
    out.close();
    if (!out) {
        throw std::runtime_error("cannot write " + path.string());
    }
}

std::optional<uint16_t> wait_for_port(const OutputBuffer& out, Millis timeout) {
    static constexpr std::string_view kListening = "listening on 127.0.0.1:";
    auto line = out.wait_for_line_containing(kListening, timeout);
    if (!line) {
        return std::nullopt;
    }
    const char* digits = line->c_str() + line->find(kListening) + kListening.size();
    unsigned port = 0;
    auto [end, ec] = std::from_chars(digits, line->c_str() + line->size(), port);
    if (ec != std::errc{} || end == digits || port == 0 || port > 65535) {
        return std::nullopt;
    }
    return static_cast<uint16_t>(port);
}

uint16_t closed_port() {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sin = loopback(0);
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) != 0) {
        throw std::runtime_error(errno_text("closed_port: bind"));
    }
    socklen_t len = sizeof(sin);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len);
    ::close(fd);
    return ntohs(sin.sin_port);
}

bool connect_refused(uint16_t port) {
    int fd = connect_loopback(port, 2s);
    if (fd >= 0) {
        ::close(fd);
        return false;
    }
    return fd == -ECONNREFUSED;
}

// ---- Response ----

std::optional<std::string> Response::header(std::string_view name) const {
    auto want = lower(name);
    for (const auto& [n, v] : headers) {
        if (lower(n) == want) {
            return v;
        }
    }
    return std::nullopt;
}

std::vector<std::string> Response::headers_named(std::string_view name) const {
    auto want = lower(name);
    std::vector<std::string> out;
    for (const auto& [n, v] : headers) {
        if (lower(n) == want) {
            out.push_back(v);
        }
    }
    return out;
}

bool Response::closes_connection() const {
    bool close = version == "HTTP/1.0";
    for (const auto& value : headers_named("connection")) {
        auto v = lower(value);
        if (v.find("close") != std::string::npos) {
            return true;
        }
        if (v.find("keep-alive") != std::string::npos) {
            close = false;
        }
    }
    return close;
}

// ---- HttpClient ----

HttpClient::HttpClient(uint16_t port, Millis timeout) : HttpClient(port, {}, timeout) {}

HttpClient::HttpClient(uint16_t port, const ClientSocketOptions& options, Millis timeout) {
    fd_ = connect_loopback(port, timeout, options);
    if (fd_ < 0) {
        int err = -fd_;
        throw HttpError("connect to 127.0.0.1:" + std::to_string(port) +
                        " failed: " + std::strerror(err));
    }
}

HttpClient::HttpClient(HttpClient&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), buffer_(std::move(other.buffer_)) {}

HttpClient::~HttpClient() {
    if (fd_ >= 0) {
        ::close(fd_);
    }
}

void HttpClient::send(std::string_view data, Millis timeout) {
    auto deadline = Clock::now() + timeout;
    while (!data.empty()) {
        ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
        if (n > 0) {
            data.remove_prefix(static_cast<std::size_t>(n));
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            pollfd p{fd_, POLLOUT, 0};
            if (::poll(&p, 1, remaining_ms(deadline)) == 0 && Clock::now() >= deadline) {
                throw HttpError("send: timed out with " + std::to_string(data.size()) +
                                " bytes unsent (peer not reading)");
            }
            continue;
        }
        if (errno == EPIPE || errno == ECONNRESET) {
            throw HttpClosed(errno_text("send"));
        }
        throw HttpError(errno_text("send"));
    }
}

bool HttpClient::fill(Clock::time_point deadline) {
    for (;;) {
        ssize_t n = recv_append(fd_, buffer_);
        if (n >= 0) {
            return n > 0;
        }
        if (n == -EAGAIN || n == -EWOULDBLOCK) {
            pollfd p{fd_, POLLIN, 0};
            if (::poll(&p, 1, remaining_ms(deadline)) == 0 && Clock::now() >= deadline) {
                throw HttpError("recv: timed out waiting for data");
            }
            continue;
        }
        if (n == -ECONNRESET) {
            throw HttpClosed("recv: connection reset by peer");
        }
        throw HttpError(std::string("recv: ") + std::strerror(static_cast<int>(-n)));
    }
}

bool HttpClient::read_line(std::string& line, Clock::time_point deadline) {
    for (;;) {
        auto eol = buffer_.find('\n');
        if (eol != std::string::npos) {
            line = buffer_.substr(0, eol);
            if (!line.empty() && line.back() == '\r') {
                line.pop_back();
            }
            buffer_.erase(0, eol + 1);
            return true;
        }
        if (!fill(deadline)) {
            return false;
        }
    }
}

std::string HttpClient::read_some(std::size_t max, Millis timeout) {
    if (buffer_.empty() && !fill(Clock::now() + timeout)) {
        return {};
    }
    std::size_t n = std::min(max, buffer_.size());
    std::string out = buffer_.substr(0, n);
    buffer_.erase(0, n);
    return out;
}

std::string HttpClient::read_exact(std::size_t n, Millis timeout) {
    auto deadline = Clock::now() + timeout;
    while (buffer_.size() < n) {
        if (!fill(deadline)) {
            throw HttpClosed("connection closed after " + std::to_string(buffer_.size()) + " of " +
                             std::to_string(n) + " bytes");
        }
    }
    std::string out = buffer_.substr(0, n);
    buffer_.erase(0, n);
    return out;
}

Response HttpClient::read_response(Millis timeout, bool head_request, const BodySink& sink) {
    auto deadline = Clock::now() + timeout;
    Response r;
    std::string line;
    if (!read_line(line, deadline)) {
        throw HttpClosed(buffer_.empty() ? "connection closed before a response"
                                         : "connection closed inside a status line: " + buffer_);
    }
    r.head = line + "\r\n";
    // "HTTP/1.1 200 OK"
    auto sp1 = line.find(' ');
    if (!line.starts_with("HTTP/") || sp1 == std::string::npos) {
        throw HttpError("malformed status line: '" + line + "'");
    }
    r.version = line.substr(0, sp1);
    auto sp2 = line.find(' ', sp1 + 1);
    auto code = line.substr(sp1 + 1, sp2 == std::string::npos ? std::string::npos : sp2 - sp1 - 1);
    auto [end, ec] = std::from_chars(code.data(), code.data() + code.size(), r.status);
    if (ec != std::errc{} || end != code.data() + code.size()) {
        throw HttpError("malformed status line: '" + line + "'");
    }
    r.reason = sp2 == std::string::npos ? "" : line.substr(sp2 + 1);

    for (;;) {
        if (!read_line(line, deadline)) {
            throw HttpClosed("connection closed inside response headers:\n" + r.head);
        }
        r.head += line + "\r\n";
        if (line.empty()) {
            break;
        }
        auto colon = line.find(':');
        if (colon == std::string::npos) {
            throw HttpError("malformed header line: '" + line + "'");
        }
        r.headers.emplace_back(line.substr(0, colon), std::string(trim(line.substr(colon + 1))));
    }

    auto deliver = [&](std::string_view data) {
        r.body_bytes += data.size();
        if (sink) {
            sink(data);
        } else {
            r.body.append(data);
        }
    };
    auto take = [&](uint64_t n) { // delivers n body bytes from the stream
        while (n > 0) {
            if (buffer_.empty() && !fill(deadline)) {
                throw HttpClosed("connection closed with " + std::to_string(n) +
                                 " body bytes still due; head was:\n" + r.head);
            }
            std::size_t k = static_cast<std::size_t>(std::min<uint64_t>(n, buffer_.size()));
            deliver(std::string_view(buffer_).substr(0, k));
            buffer_.erase(0, k);
            n -= k;
        }
    };

    if (r.status < 200 || r.status == 204 || r.status == 304 || head_request) {
        return r;
    }
    // Chunked framing only when chunked is the last coding (RFC 9112 6.3); otherwise the body
    // ends with the connection.
    auto te = r.header("transfer-encoding");
    std::string codings = te ? lower(*te) : std::string();
    while (!codings.empty() && (codings.back() == ' ' || codings.back() == '\t')) {
        codings.pop_back();
    }
    const std::size_t last = codings.find_last_of(", \t");
    if (te && codings.substr(last == std::string::npos ? 0 : last + 1) == "chunked") {
        r.chunked = true;
        for (;;) {
            if (!read_line(line, deadline)) {
                throw HttpClosed("connection closed inside a chunked body; head was:\n" + r.head);
            }
            std::string_view size = trim(std::string_view(line).substr(0, line.find(';')));
            uint64_t n = 0;
            auto [e, err] = std::from_chars(size.data(), size.data() + size.size(), n, 16);
            if (size.empty() || err != std::errc{} || e != size.data() + size.size()) {
                throw HttpError("bad chunk size line: '" + line + "'");
            }
            if (n == 0) {
                do { // trailers
                    if (!read_line(line, deadline)) {
                        throw HttpClosed("connection closed inside chunked trailers");
                    }
                } while (!line.empty());
                return r;
            }
            take(n);
            if (!read_line(line, deadline) || !line.empty()) {
                throw HttpError("missing CRLF after a chunk");
            }
        }
    }
    if (auto cl = r.header("content-length")) {
        uint64_t n = 0;
        auto [e, err] = std::from_chars(cl->data(), cl->data() + cl->size(), n);
        if (err != std::errc{} || e != cl->data() + cl->size()) {
            throw HttpError("bad Content-Length: '" + *cl + "'");
        }
        take(n);
        return r;
    }
    r.close_delimited = true;
    for (;;) {
        if (!buffer_.empty()) {
            deliver(buffer_);
            buffer_.clear();
        }
        if (!fill(deadline)) {
            return r;
        }
    }
}

std::optional<Response> HttpClient::try_read_response(Millis timeout, bool head_request) {
    try {
        return read_response(timeout, head_request);
    } catch (const HttpClosed&) {
        return std::nullopt;
    }
}

Response HttpClient::request(std::string_view method, std::string_view target,
                             const std::vector<std::pair<std::string, std::string>>& headers,
                             std::string_view body, Millis timeout) {
    send(build_request(method, target, headers, body), timeout);
    for (;;) {
        Response r = read_response(timeout, method == "HEAD");
        if (r.status >= 200 || r.status == 101) {
            return r;
        }
    }
}

bool HttpClient::wait_closed(Millis timeout) {
    auto deadline = Clock::now() + timeout;
    buffer_.clear();
    try {
        while (fill(deadline)) {
            buffer_.clear();
        }
        return true;
    } catch (const HttpClosed&) {
        return true;
    } catch (const HttpError&) {
        return false;
    }
}

bool HttpClient::peer_closed() {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0) {
        return false;
    }
    char c;
    ssize_t n = ::recv(fd_, &c, 1, MSG_PEEK);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

// ---- request and frame builders ----

std::string build_request(std::string_view method, std::string_view target,
                          const std::vector<std::pair<std::string, std::string>>& headers,
                          std::string_view body) {
    std::string out;
    out.append(method).append(" ").append(target).append(" HTTP/1.1\r\n");
    bool has_host = false;
    bool has_framing = false;
    for (const auto& [name, value] : headers) {
        auto n = lower(name);
        has_host = has_host || n == "host";
        has_framing = has_framing || n == "content-length" || n == "transfer-encoding";
    }
    if (!has_host) {
        out += "Host: 127.0.0.1\r\n";
    }
    for (const auto& [name, value] : headers) {
        out.append(name).append(": ").append(value).append("\r\n");
    }
    if (!body.empty() && !has_framing) {
        out += "Content-Length: " + std::to_string(body.size()) + "\r\n";
    }
    out += "\r\n";
    out.append(body);
    return out;
}

std::string chunk(std::string_view data) {
    char size[32];
    int n = std::snprintf(size, sizeof(size), "%zx\r\n", data.size());
    std::string out(size, static_cast<std::size_t>(n));
    out.append(data).append("\r\n");
    return out;
}

std::string websocket_frame(int opcode, std::string_view payload) {
    static constexpr unsigned char kMask[4] = {0x37, 0xfa, 0x21, 0x3d};
    std::string out;
    out += static_cast<char>(0x80 | opcode);
    const uint64_t len = payload.size();
    if (len < 126) {
        out += static_cast<char>(0x80 | len);
    } else if (len <= 0xffff) {
        out += static_cast<char>(0x80 | 126);
        out += static_cast<char>(len >> 8);
        out += static_cast<char>(len & 0xff);
    } else {
        out += static_cast<char>(0x80 | 127);
        for (int i = 7; i >= 0; --i) {
            out += static_cast<char>((len >> (i * 8)) & 0xff);
        }
    }
    out.append(reinterpret_cast<const char*>(kMask), 4);
    for (std::size_t i = 0; i < payload.size(); ++i) {
        out += static_cast<char>(payload[i] ^ kMask[i % 4]);
    }
    return out;
}

WebSocketFrame read_websocket_frame(HttpClient& client, Millis timeout) {
    auto deadline = Clock::now() + timeout;
    auto left = [&] { return std::chrono::duration_cast<Millis>(deadline - Clock::now()); };
    WebSocketFrame f;
    std::string h = client.read_exact(2, left());
    f.fin = (h[0] & 0x80) != 0;
    f.opcode = h[0] & 0x0f;
    f.masked = (h[1] & 0x80) != 0;
    uint64_t len = static_cast<unsigned char>(h[1]) & 0x7f;
    if (len == 126 || len == 127) {
        std::string ext = client.read_exact(len == 126 ? 2 : 8, left());
        len = 0;
        for (char c : ext) {
            len = (len << 8) | static_cast<unsigned char>(c);
        }
    }
    std::string mask = f.masked ? client.read_exact(4, left()) : std::string(4, '\0');
    f.payload = client.read_exact(static_cast<std::size_t>(len), left());
    for (std::size_t i = 0; i < f.payload.size(); ++i) {
        f.payload[i] = static_cast<char>(f.payload[i] ^ mask[i % 4]);
    }
    return f;
}

// ---- TestBackend ----

TestBackend::TestBackend(std::string name) : name_(std::move(name)) {
    process_ = std::make_unique<Process>(std::vector<std::string>{
        LIEGE_TEST_BACKEND, "--listen", "127.0.0.1:0", "--name", name_, "--log-requests"});
    auto port = wait_for_port(process_->out());
    if (!port) {
        throw std::runtime_error("test backend did not start:\n" + process_->describe());
    }
    port_ = *port;
}

TestBackend::Counts TestBackend::counts() {
    HttpClient c(port_);
    const std::string target = "/count?probe=" + std::to_string(++probes_);
    Response r = c.request("GET", target, {{"Connection", "close"}});
    unsigned long long req = 0;
    unsigned long long conn = 0;
    long long open = 0;
    if (r.status != 200 || std::sscanf(r.body.c_str(), "requests=%llu connections=%llu open=%lld",
                                       &req, &conn, &open) != 3) {
        throw HttpError("unexpected /count answer: " + r.head + r.body);
    }
    // The backend logs a request before it answers, and its log lines arrive in order.
    if (!wait_for_request("GET " + target)) {
        throw std::runtime_error("the backend's log line for " + target + " never arrived");
    }
    Counts counts;
    counts.requests = req - probes_;
    counts.connections = conn - probes_;
    counts.open = open - 1;
    return counts;
}

std::vector<std::string> TestBackend::requests_seen() {
    counts();
    return requests_logged();
}

std::vector<std::string> TestBackend::requests_logged() const {
    std::vector<std::string> out;
    for (auto& line : process_->out().lines()) {
        if (line.starts_with("request ") && !line.starts_with("request GET /count?probe=")) {
            out.push_back(line.substr(8));
        }
    }
    return out;
}

bool TestBackend::wait_for_request(std::string_view request, Millis timeout) const {
    const std::string want = "request " + std::string(request);
    return process_->out()
        .wait_for_line([&](std::string_view line) { return line == want; }, timeout)
        .has_value();
}

void TestBackend::kill() {
    process_->kill();
    if (!poll_until([this] { return connect_refused(port_); })) {
        throw std::runtime_error("backend port still open after kill");
    }
}

// ---- RawBackend ----

RawBackend::Connection::~Connection() {
    if (fd_ >= 0) {
        ::close(fd_);
    }
}

RawBackend::Connection::Wait RawBackend::Connection::wait(short events,
                                                          Clock::time_point deadline) const {
    for (;;) {
        pollfd p[2] = {{fd_, events, 0}, {backend_.stop_fd_, POLLIN, 0}};
        int rc = ::poll(p, 2, remaining_ms(deadline));
        if (rc < 0 && errno == EINTR) {
            continue;
        }
        if (p[1].revents != 0) {
            return Wait::Stopped;
        }
        if (rc > 0) {
            return Wait::Ready; // including errors and hang-ups, which the next call reports
        }
        if (Clock::now() >= deadline) {
            return Wait::Timeout;
        }
    }
}

bool RawBackend::Connection::fill(Clock::time_point deadline) {
    for (;;) {
        ssize_t n = recv_append(fd_, in_);
        if (n >= 0) {
            return n > 0;
        }
        if ((n != -EAGAIN && n != -EWOULDBLOCK) || wait(POLLIN, deadline) != Wait::Ready) {
            return false;
        }
    }
}

std::optional<std::string> RawBackend::Connection::read_request(Millis timeout) {
    auto deadline = Clock::now() + timeout;
    std::size_t end;
    while ((end = in_.find("\r\n\r\n")) == std::string::npos) {
        if (fd_ < 0 || !fill(deadline)) {
            return std::nullopt;
        }
    }
    std::string head = in_.substr(0, end + 4);
    in_.erase(0, end + 4);
    uint64_t body = 0;
    static constexpr std::string_view kLength = "\r\ncontent-length:";
    if (auto at = lower(head).find(kLength); at != std::string::npos) {
        std::string_view digits = trim(std::string_view(head).substr(at + kLength.size()));
        std::from_chars(digits.data(), digits.data() + digits.size(), body);
    }
    backend_.record(head);
    while (body > 0) {
        if (in_.empty() && !fill(deadline)) {
            return std::nullopt;
        }
        std::size_t n = static_cast<std::size_t>(std::min<uint64_t>(body, in_.size()));
        in_.erase(0, n);
        body -= n;
    }
    return head;
}

bool RawBackend::Connection::write(std::string_view bytes, Millis timeout) {
    auto deadline = Clock::now() + timeout;
    while (!bytes.empty() && fd_ >= 0) {
        ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (n > 0) {
            bytes.remove_prefix(static_cast<std::size_t>(n));
        } else if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
            return false;
        } else if (errno != EINTR && wait(POLLOUT, deadline) != Wait::Ready) {
            return false;
        }
    }
    return bytes.empty();
}

bool RawBackend::Connection::hold(Millis timeout) {
    auto deadline = Clock::now() + timeout;
    for (;;) {
        in_.clear();
        if (fd_ < 0 || !fill(deadline)) {
            break;
        }
    }
    // fill() ended on EOF or an error (the peer is gone), or on a timeout or stop.
    return fd_ >= 0 && wait(POLLIN, Clock::now()) == Wait::Ready;
}

std::optional<std::string> RawBackend::Connection::read_until(std::string_view marker,
                                                              Millis timeout) {
    auto deadline = Clock::now() + timeout;
    std::size_t at;
    while ((at = in_.find(marker)) == std::string::npos) {
        if (fd_ < 0 || !fill(deadline)) {
            return std::nullopt;
        }
    }
    std::string bytes = in_.substr(0, at + marker.size());
    in_.erase(0, at + marker.size());
    return bytes;
}

void RawBackend::Connection::half_close() {
    if (fd_ >= 0) {
        ::shutdown(fd_, SHUT_WR);
    }
}

void RawBackend::Connection::close(Millis timeout) {
    if (fd_ < 0) {
        return;
    }
    ::shutdown(fd_, SHUT_WR);
    hold(timeout);
    ::close(fd_);
    fd_ = -1;
}

RawBackend::Script RawBackend::answering(std::function<Reply(const std::string& head)> answer) {
    return [answer = std::move(answer)](Connection& conn) {
        while (auto head = conn.read_request()) {
            Reply reply = answer(*head);
            if (!conn.write(reply.bytes)) {
                return;
            }
            if (reply.after == After::Close) {
                conn.close();
                return;
            }
            if (reply.after == After::Hold) {
                conn.hold();
                return;
            }
        }
    };
}

RawBackend::RawBackend(Script script) : script_(std::move(script)) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    stop_fd_ = ::eventfd(0, EFD_CLOEXEC);
    sockaddr_in sin = loopback(0);
    socklen_t len = sizeof(sin);
    if (listen_fd_ < 0 || stop_fd_ < 0 ||
        ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) != 0 ||
        ::listen(listen_fd_, 128) != 0 ||
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&sin), &len) != 0) {
        std::string what = errno_text("RawBackend: listen on 127.0.0.1:0");
        ::close(listen_fd_);
        ::close(stop_fd_);
        throw std::runtime_error(what);
    }
    port_ = ntohs(sin.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
}

RawBackend::~RawBackend() {
    const uint64_t one = 1;
    ssize_t ignored = ::write(stop_fd_, &one, sizeof(one)); // wakes every wait at once
    (void)ignored;
    acceptor_.join(); // no connection thread starts after this
    for (auto& t : connection_threads_) {
        t.join();
    }
    ::close(listen_fd_);
    ::close(stop_fd_);
}

void RawBackend::accept_loop() {
    for (;;) {
        // Waits for as long as the backend lives: the destructor's stop signal ends it.
        pollfd p[2] = {{listen_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
        if (::poll(p, 2, -1) < 0 && errno != EINTR) {
            return;
        }
        if (p[1].revents != 0) {
            return;
        }
        int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            continue;
        }
        int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        std::lock_guard lock(mutex_);
        ++connections_;
        connection_threads_.emplace_back([this, fd] {
            Connection conn(*this, fd);
            try {
                script_(conn);
            } catch (const std::exception& e) {
                ADD_FAILURE() << "RawBackend script threw: " << e.what();
            }
        });
    }
}

void RawBackend::record(std::string head) {
    std::lock_guard lock(mutex_);
    requests_.push_back(std::move(head));
}

std::vector<std::string> RawBackend::requests() const {
    std::lock_guard lock(mutex_);
    return requests_;
}

uint64_t RawBackend::connections() const {
    std::lock_guard lock(mutex_);
    return connections_;
}

// ---- RssSampler ----

RssSampler::RssSampler(pid_t pid) : pid_(pid) {
    thread_ = std::thread([this] {
        while (!stop_.load()) {
            long rss = rss_kib(pid_);
            long peak = peak_.load();
            if (rss > peak) {
                peak_.store(rss);
            }
            // A sampling period, not a wait for a condition.
            std::this_thread::sleep_for(5ms);
        }
    });
}

RssSampler::~RssSampler() {
    stop();
}

long RssSampler::stop() {
    stop_.store(true);
    if (thread_.joinable()) {
        thread_.join();
    }
    return peak_.load();
}

// ---- RouterFixture ----

TestBackend& RouterFixture::add_backend(const std::string& name) {
    backends_.push_back(std::make_unique<TestBackend>(name));
    return *backends_.back();
}

void RouterFixture::start_router(const std::vector<std::string>& backend_addresses,
                                 std::vector<std::string> extra,
                                 const std::vector<std::string>& launcher) {
    std::vector<std::string> argv = launcher;
    for (const char* arg : {LIEGE_BINARY, "router", "--listen", "127.0.0.1:0"}) {
        argv.emplace_back(arg);
    }
    for (const auto& b : backend_addresses) {
        argv.push_back("--backend");
        argv.push_back(b);
    }
    if (std::find(extra.begin(), extra.end(), "--threads") == extra.end()) {
        argv.push_back("--threads");
        argv.push_back("2");
    }
    argv.insert(argv.end(), extra.begin(), extra.end());
    router_ = std::make_unique<Process>(argv);
    auto port = wait_for_port(router_->err());
    ASSERT_TRUE(port) << "the router did not report a listening port\n" << router_->describe();
    port_ = *port;
}

void RouterFixture::start_router_for_backends(std::vector<std::string> extra,
                                              const std::vector<std::string>& launcher) {
    std::vector<std::string> addresses;
    for (auto& b : backends_) {
        addresses.push_back(b->address());
    }
    start_router(addresses, std::move(extra), launcher);
}

bool RouterFixture::log_has_line_with(const std::vector<std::string>& parts, Millis timeout) {
    return poll_until(
        [&] {
            for (const auto& line : router_->err().lines()) {
                if (std::all_of(parts.begin(), parts.end(), [&](const std::string& p) {
                        return line.find(p) != std::string::npos;
                    })) {
                    return true;
                }
            }
            return false;
        },
        timeout);
}

void RouterFixture::TearDown() {
    if (!router_) {
        return;
    }
    if (router_->exit_status() == std::nullopt) {
        EXPECT_TRUE(router_->running()) << "the router died during the test";
    }
    const std::string log = router_->err().text();
    for (const char* bad : {"AddressSanitizer", "runtime error:", "LeakSanitizer", " critical "}) {
        EXPECT_EQ(log.find(bad), std::string::npos) << "router log contains '" << bad << "'";
    }
    if (HasFailure()) {
        std::cerr << "==== router ====\n" << router_->describe(60);
    }
    router_.reset();
    backends_.clear();
}

// ---- LiegeRunFixture ----

namespace {

constexpr const char* kInstanceVariable = "LIEGE_TEST_INSTANCE";

// A sanitizer's report is never expected, whatever a test declares.
constexpr const char* kSanitizerReports[] = {"AddressSanitizer", "LeakSanitizer",
                                             "UndefinedBehaviorSanitizer", "runtime error:"};

} // namespace

void LiegeRunFixture::SetUp() {
    root_ = make_temp_dir("liege-run-test");
    vassals_ = root_ / "vassals.d";
    std::filesystem::create_directories(vassals_);
    marker_ = root_.string(); // unique while the test runs
    // A TCP admin API needs a token (liege run --admin-token-file); the commands a test runs
    // find it as a user's shell would, in LIEGE_ADMIN_TOKEN_FILE.
    admin_token_ = "test-token-" + std::to_string(::getpid()) + "-" +
                   std::to_string(std::hash<std::string>{}(marker_));
    admin_token_file_ = root_ / "admin.token";
    write_file(admin_token_file_, admin_token_ + "\n");
    std::filesystem::permissions(admin_token_file_, std::filesystem::perms::owner_read |
                                                        std::filesystem::perms::owner_write);
    ::setenv("LIEGE_ADMIN_TOKEN_FILE", admin_token_file_.c_str(), 1);
}

void LiegeRunFixture::TearDown() {
    if (emperor_) {
        if (emperor_->running()) {
            stop_emperor();
        } else {
            // The test stopped or killed the emperor itself and checked how it went; what it
            // had started must be gone all the same.
            expect_nothing_left({}, "after the emperor exited");
        }
        check_error_lines();
        if (HasFailure()) {
            std::cerr << "---- emperor log ----\n" << log() << "---- end ----\n";
        }
        emperor_.reset();
    }
    ::unsetenv("LIEGE_ADMIN_TOKEN_FILE");
    std::error_code ec;
    std::filesystem::remove_all(root_, ec);
}

void LiegeRunFixture::write_vassal(const std::string& name, const std::string& text) {
    const auto temporary = vassals_ / ("." + name + ".toml.tmp");
    write_file(temporary, text);
    std::filesystem::rename(temporary, vassals_ / (name + ".toml"));
}

void LiegeRunFixture::remove_vassal(const std::string& name) {
    std::filesystem::remove(vassals_ / (name + ".toml"));
}

void LiegeRunFixture::start_liege(const Options& options) {
    std::vector<std::string> argv = {LIEGE_BINARY, "run",
                                     "--vassals",  vassals_.string(),
                                     "--listen",   "127.0.0.1:0",
                                     "--admin",    options.admin,
                                     "--threads",  std::to_string(options.threads)};
    argv.insert(argv.end(), options.extra.begin(), options.extra.end());
    if (!options.admin.starts_with("unix:") &&
        std::find(argv.begin(), argv.end(), "--admin-token-file") == argv.end()) {
        argv.push_back("--admin-token-file");
        argv.push_back(admin_token_file_.string());
    }
    for (std::size_t i = 0; i + 1 < argv.size(); ++i) {
        if (argv[i] == "--log-dir") {
            log_dir_ = argv[i + 1];
        }
    }
    admin_text_ = options.admin;
    if (!emperor_cgroup_.empty()) {
        // exec keeps the pid: the emperor is the only process of that cgroup.
        argv.insert(argv.begin(), {"/bin/sh", "-c", "echo $$ > \"$0/cgroup.procs\" && exec \"$@\"",
                                   emperor_cgroup_});
    }
    emperor_ = std::make_unique<Process>(
        argv, std::vector<std::string>{std::string(kInstanceVariable) + "=" + marker_});
    ASSERT_TRUE(poll_until(
        [&] {
            return log().find("emperor: router started (pid ") != std::string::npos ||
                   !emperor_->running();
        },
        kStart))
        << "no router started\n"
        << emperor_->describe();
    ASSERT_TRUE(emperor_->running()) << emperor_->describe();
    auto port = port_after(log(), "info listening on ");
    ASSERT_TRUE(port) << "no `listening on` line\n" << log();
    port_ = *port;
    if (options.admin.starts_with("unix:")) {
        ASSERT_NE(log().find("admin API on " + options.admin), std::string::npos) << log();
    } else {
        auto admin_port = port_after(log(), "admin API on ");
        ASSERT_TRUE(admin_port) << log();
        admin_port_ = *admin_port;
        admin_text_ = "127.0.0.1:" + std::to_string(admin_port_);
    }
}

void LiegeRunFixture::stop_emperor() {
    const auto tracked = instance_processes();
    emperor_->signal(SIGTERM);
    auto status = emperor_->wait_exit(30s);
    ASSERT_TRUE(status) << "the emperor did not exit within 30 s of SIGTERM";
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
        << "the emperor " << describe_status(*status) << " after SIGTERM";
    expect_nothing_left(tracked, "after SIGTERM");
    EXPECT_TRUE(wait_log("emperor: stopped", 1s)) << "no `emperor: stopped` line";
}

void LiegeRunFixture::expect_error_line(std::vector<std::string> parts) {
    error_lines_expected_.push_back(std::move(parts));
}

std::string LiegeRunFixture::log() const {
    if (log_dir_.empty()) {
        return emperor_->err().text();
    }
    return slurp(log_dir_ / "emperor.log.1") + slurp(log_dir_ / "emperor.log") +
           emperor_->err().text();
}

std::optional<std::string> LiegeRunFixture::wait_log(const std::string& needle, Millis timeout,
                                                     std::size_t from) const {
    std::optional<std::string> line;
    poll_until(
        [&] {
            std::string text = log();
            if (from > text.size()) {
                return false;
            }
            auto pos = text.find(needle, from);
            if (pos == std::string::npos) {
                return false;
            }
            auto begin = text.rfind('\n', pos);
            begin = begin == std::string::npos ? 0 : begin + 1;
            auto end = text.find('\n', pos);
            line = text.substr(begin, end == std::string::npos ? end : end - begin);
            return true;
        },
        timeout, 20ms);
    return line;
}

std::vector<std::string> LiegeRunFixture::error_lines() const {
    // "2026-12-01T08:26:36.302 error ...": the emperor's own lines and the router's it relays at
    // their level; the second form is a router line relayed whole.
    static const std::regex kError(
        R"(^\S+ (error|critical) |^\S+ \S+ \[router\] \S+ (error|critical) )");
    std::vector<std::string> out;
    std::istringstream in(log());
    for (std::string line; std::getline(in, line);) {
        if (std::regex_search(line, kError)) {
            out.push_back(line);
        }
    }
    return out;
}

void LiegeRunFixture::check_error_lines() {
    // A line with every one of `parts`.
    auto has_all = [](const std::string& line, const std::vector<std::string>& parts) {
        return std::all_of(parts.begin(), parts.end(),
                           [&](const std::string& p) { return line.find(p) != line.npos; });
    };
    std::string unexpected;
    std::vector<bool> seen(error_lines_expected_.size(), false);
    for (const auto& line : error_lines()) {
        bool expected = false;
        for (std::size_t i = 0; i < error_lines_expected_.size(); ++i) {
            if (has_all(line, error_lines_expected_[i])) {
                seen[i] = true;
                expected = true;
            }
        }
        if (!expected) {
            unexpected += "\n  " + line;
        }
    }
    EXPECT_TRUE(unexpected.empty()) << "error-level log lines:" << unexpected;
    for (std::size_t i = 0; i < error_lines_expected_.size(); ++i) {
        std::string parts;
        for (const auto& p : error_lines_expected_[i]) {
            parts += (parts.empty() ? "`" : ", `") + p + "`";
        }
        EXPECT_TRUE(seen[i]) << "the test expects an error-level line with " << parts
                             << ", and none came";
    }
    const std::string text = log();
    for (const char* report : kSanitizerReports) {
        EXPECT_EQ(text.find(report), std::string::npos) << "the log contains `" << report << "`";
    }
}

Response LiegeRunFixture::admin(const std::string& method, const std::string& target) const {
    if (admin_port_ == 0) {
        throw HttpError("the admin API is not on a TCP port");
    }
    HttpClient c(admin_port_);
    return c.request(method, target, {{"Connection", "close"}, admin_authorization()});
}

std::optional<Response> LiegeRunFixture::get_once(const std::string& host,
                                                  const std::string& target, std::string* error,
                                                  Millis timeout) const {
    try {
        HttpClient c(port_, timeout);
        return c.request("GET", target, {{"Host", host}, {"Connection", "close"}}, {}, timeout);
    } catch (const HttpError& e) {
        if (error != nullptr) {
            *error = e.what();
        }
        return std::nullopt;
    }
}

std::optional<nlohmann::json> LiegeRunFixture::status() const {
    try {
        Response r = admin("GET", "/status");
        if (r.status != 200) {
            return std::nullopt;
        }
        return nlohmann::json::parse(r.body);
    } catch (const std::exception&) {
        return std::nullopt;
    }
}

nlohmann::json LiegeRunFixture::vassal(const std::string& name) const {
    if (auto s = status()) {
        for (const auto& v : (*s)["vassals"]) {
            if (v["name"] == name) {
                return v;
            }
        }
    }
    return nullptr;
}

nlohmann::json LiegeRunFixture::wait_vassal(const std::string& name,
                                            const std::function<bool(const nlohmann::json&)>& holds,
                                            Millis timeout) const {
    nlohmann::json last;
    poll_until(
        [&] {
            last = vassal(name);
            return !last.is_null() && holds(last);
        },
        timeout, 50ms);
    return last;
}

std::vector<ProcStat> LiegeRunFixture::instance_processes() const {
    auto out = descendants(emperor_pid());
    std::vector<pid_t> reported;
    if (auto s = status()) {
        for (const auto& v : (*s)["vassals"]) {
            for (const auto& w : v["workers"]) {
                reported.push_back(w["pid"].get<pid_t>());
            }
        }
        reported.push_back((*s)["router"]["pid"].get<pid_t>());
    }
    for (pid_t pid : reported) {
        const bool known =
            std::any_of(out.begin(), out.end(), [&](auto& p) { return p.pid == pid; });
        if (auto p = read_stat(pid); p && !known && p->state != 'Z') {
            out.push_back(*p);
        }
    }
    return out;
}

std::vector<ProcStat> LiegeRunFixture::emperor_descendants() const {
    std::vector<ProcStat> out = descendants(emperor_pid());
    static const std::regex kGuard(R"(processes contained by [^\n]*guard pid (\d+))");
    std::smatch m;
    const std::string text = log();
    if (std::regex_search(text, m, kGuard)) {
        const pid_t guard = std::stoi(m[1]);
        std::erase_if(out, [&](const ProcStat& p) { return p.pid == guard; });
    }
    return out;
}

std::vector<ProcStat> LiegeRunFixture::marked_processes() const {
    const std::string entry = std::string(kInstanceVariable) + "=" + marker_;
    std::vector<ProcStat> out;
    for (const auto& p : all_processes()) {
        if (p.state == 'Z' || p.state == 'X' || p.pid == ::getpid()) {
            continue;
        }
        auto env = read_nul_separated("/proc/" + std::to_string(p.pid) + "/environ");
        if (std::find(env.begin(), env.end(), entry) != env.end()) {
            out.push_back(p);
        }
    }
    return out;
}

void LiegeRunFixture::expect_nothing_left(const std::vector<ProcStat>& tracked,
                                          const char* when) const {
    std::vector<ProcStat> left;
    poll_until(
        [&] {
            left = living(tracked);
            for (const auto& p : marked_processes()) {
                if (std::none_of(left.begin(), left.end(),
                                 [&](auto& l) { return l.pid == p.pid; })) {
                    left.push_back(p);
                }
            }
            return left.empty();
        },
        kWait, 50ms);
    EXPECT_TRUE(left.empty()) << "left behind " << when << ":" << describe_procs(left);
    for (const auto& p : left) {
        if (alive(p)) {
            ::kill(p.pid, SIGKILL); // not left for the next test
        }
    }
}

Cli run_cli(std::vector<std::string> args, Millis timeout,
            const std::vector<std::string>& extra_env) {
    args.insert(args.begin(), LIEGE_BINARY);
    Process p(args, extra_env);
    Cli r;
    auto status = p.wait_exit(timeout);
    if (!status) {
        ADD_FAILURE() << "still running after " << timeout.count() << " ms\n" << p.describe();
        return r;
    }
    poll_until([&] { return p.out().closed() && p.err().closed(); });
    r.exit_code = WIFEXITED(*status) ? WEXITSTATUS(*status) : 128 + WTERMSIG(*status);
    r.out = p.out().text();
    r.err = p.err().text();
    return r;
}

} // namespace liege::test

namespace liege::test {

LoadClients::LoadClients(uint16_t port, int count, std::vector<std::string> targets,
                         Options options)
    : port_(port), targets_(std::move(targets)), options_(std::move(options)),
      count_(static_cast<std::size_t>(count)), connected_(count) {
    for (int i = 0; i < count; ++i) {
        threads_.emplace_back([this, i] { run(static_cast<std::size_t>(i)); });
    }
}

void LoadClients::stop() {
    stop_ = true;
    for (auto& t : threads_) {
        if (t.joinable()) {
            t.join();
        }
    }
}

bool LoadClients::wait_finished(Millis timeout) const {
    return poll_until([&] { return finished_.load() == count_; }, timeout);
}

bool LoadClients::wait_requests(uint64_t n, Millis timeout) const {
    const uint64_t target = done() + n;
    return poll_until([&] { return done() >= target; }, timeout);
}

std::string LoadClients::failures() const {
    std::lock_guard lock(mutex_);
    std::string out;
    for (const auto& f : first_failures_) {
        out += "\n  " + f;
    }
    for (const auto& [kind, n] : failure_kinds_) {
        out += "\n  " + std::to_string(n) + " x " + kind;
    }
    return out;
}

void LoadClients::run(std::size_t index) {
    std::optional<HttpClient> connection;
    auto connect = [&]() -> std::string {
        try {
            connection.emplace(port_, options_.timeout);
            return {};
        } catch (const HttpError& e) {
            return e.what();
        }
    };
    std::string error = connect();
    connected_.arrive_and_wait(); // they start together
    for (int sent = 0; !stop_ && (options_.per_client == 0 || sent < options_.per_client); ++sent) {
        const std::string& target =
            targets_[(index + static_cast<std::size_t>(sent)) % targets_.size()];
        std::string kind;
        if (connection || (error = connect()).empty()) {
            try {
                std::vector<std::pair<std::string, std::string>> headers;
                if (!options_.host.empty()) {
                    headers.emplace_back("Host", options_.host);
                }
                Response r = connection->request("GET", target, headers, {}, options_.timeout);
                if (r.status == 200) {
                    ++ok_;
                    if (options_.observe) {
                        std::lock_guard lock(mutex_);
                        options_.observe(r);
                    }
                    if (r.closes_connection()) {
                        connection.reset();
                    }
                    continue;
                }
                std::string body = r.body.substr(0, 120);
                while (!body.empty() && (body.back() == '\n' || body.back() == '\r')) {
                    body.pop_back();
                }
                kind = "status " + std::to_string(r.status) + ": " + body;
            } catch (const HttpError& e) {
                kind = e.what();
            }
        } else {
            kind = error;
        }
        connection.reset();
        ++failed_;
        std::lock_guard lock(mutex_);
        ++failure_kinds_[kind];
        if (first_failures_.size() < 20) {
            first_failures_.push_back("GET " + target + ": " + kind);
        }
    }
    ++finished_;
}

} // namespace liege::test
