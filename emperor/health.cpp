// Health probes: one connect (and one GET) per call, on the emperor's loop.
//
// Lifetimes, by the rule at the top of liege/uv.hpp. A Probe owns itself: it is deleted as soon
// as it finishes or is cancelled, before its callback runs, and nothing reaches it after that.
// Its timer and its stream are UvHandles, so their memory goes in their close callbacks. The
// connect and write requests live in the stream's block (StreamRequests), because libuv still
// calls them back, with UV_ECANCELED, after the stream is closed; by then the stream's data is
// null and those callbacks return without touching the (deleted) probe. The caller's cancel
// function reaches the probe through a small shared control block that the probe clears when it
// is deleted, so cancelling late is a no-op.
#include "liege/health.hpp"

#include <algorithm>
#include <csignal>
#include <cstring>
#include <memory>
#include <utility>

#include <sys/un.h>

#include "liege/log.hpp"
#include "liege/spawner.hpp"
#include "liege/uv.hpp"

namespace liege {

int parse_http_status_line(std::string_view received) {
    constexpr std::string_view kPrefix = "HTTP/1.";
    constexpr std::size_t kMaxLine = 1024;
    std::string_view start = received.substr(0, kPrefix.size());
    if (start != kPrefix.substr(0, start.size())) {
        return -1;
    }
    std::size_t eol = received.find('\n');
    if (eol == std::string_view::npos) {
        return received.size() > kMaxLine ? -1 : 0;
    }
    std::string_view line = received.substr(0, eol);
    if (!line.empty() && line.back() == '\r') {
        line.remove_suffix(1);
    }
    auto digit = [](char c) { return c >= '0' && c <= '9'; };
    // "HTTP/1.x NNN" and then the end of the line or a space before the reason.
    if (line.size() < 12 || !digit(line[7]) || line[8] != ' ' || !digit(line[9]) ||
        !digit(line[10]) || !digit(line[11]) || (line.size() > 12 && line[12] != ' ') ||
        line[9] == '0') {
        return -1;
    }
    return (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
}

void RouterActivity::report(uint64_t requests, uint64_t responses, int64_t in_flight,
                            int64_t now_ms) {
    const bool answered = have_baseline_ && (requests > requests_ || responses > responses_);
    have_baseline_ = true;
    requests_ = requests;
    responses_ = responses;
    last_busy_ = answered || in_flight > 0;
    last_ms_ = now_ms;
    window_busy_ = window_busy_ || last_busy_;
}

bool RouterActivity::busy(int64_t now_ms) const {
    return window_busy_ || (last_busy_ && now_ms - last_ms_ <= 2 * kReportMs);
}

bool liveness_failure_counts(const ProbeResult& result, bool busy) {
    return !result.ok && !(result.timed_out && busy);
}

namespace {

class Probe;

class CommandProbe;

struct ProbeControl {
    Probe* probe = nullptr;                // null once the probe finished or was cancelled
    CommandProbe* probe_command = nullptr; // the same for a check command
};

// The requests a probe's stream may have in flight; they are freed with the stream.
struct StreamRequests {
    uv_connect_t connect;
    uv_write_t write;
};

class Probe {
public:
    Probe(uv_loop_t* loop, std::string http_path, std::function<void(const ProbeResult&)> done)
        : loop_(loop), http_path_(std::move(http_path)), done_(std::move(done)),
          control_(std::make_shared<ProbeControl>()) {
        control_->probe = this;
    }
    ~Probe() { control_->probe = nullptr; }
    Probe(const Probe&) = delete;
    Probe& operator=(const Probe&) = delete;

    std::shared_ptr<ProbeControl> control() const { return control_; }

    void start(const Address& addr, std::chrono::milliseconds timeout) {
        uv_timer_init(loop_, timer_.get());
        timer_->data = this;
        uv_timer_start(
            timer_.get(), [](uv_timer_t* t) { static_cast<Probe*>(t->data)->on_timer(); },
            static_cast<uint64_t>(std::max<int64_t>(timeout.count(), 0)), 0);

        auto on_connect = [](uv_connect_t* req, int status) {
            if (auto* self = request_owner<Probe>(req)) {
                self->on_connect(status);
            } // else UV_ECANCELED: the probe is gone
        };
        if (addr.is_unix()) {
            if (addr.path.size() >= sizeof(sockaddr_un{}.sun_path)) {
                post({false, 0, "socket path too long: " + addr.path});
                return;
            }
            uv_pipe_init(loop_, pipe_.get(), 0);
            pipe_->data = this;
            stream_ = pipe_.stream();
            requests_ = &pipe_.requests();
            uv_pipe_connect(&requests_->connect, pipe_.get(), addr.path.c_str(), on_connect);
            return;
        }
        sockaddr_storage ss;
        socklen_t len = 0;
        int rc = to_sockaddr(addr, ss, len);
        if (rc != 0) {
            post({false, 0, "cannot resolve " + addr.str()});
            return;
        }
        uv_tcp_init(loop_, tcp_.get());
        tcp_->data = this;
        stream_ = tcp_.stream();
        requests_ = &tcp_.requests();
        rc = uv_tcp_connect(&requests_->connect, tcp_.get(), reinterpret_cast<const sockaddr*>(&ss),
                            on_connect);
        if (rc != 0) {
            post({false, 0, uv_strerror(rc)});
        }
    }

    void cancel() { delete this; }

private:
    // Reports `result` from the loop, not from the caller's stack.
    void post(ProbeResult result) {
        posted_ = std::move(result);
        has_posted_ = true;
        uv_timer_stop(timer_.get());
        uv_timer_start(
            timer_.get(), [](uv_timer_t* t) { static_cast<Probe*>(t->data)->on_timer(); }, 0, 0);
    }

    void on_timer() {
        if (has_posted_) {
            finish(std::move(posted_));
        } else {
            finish({false, 0, "timed out", true});
        }
    }

    void on_connect(int status) {
        if (status < 0) {
            finish({false, 0, uv_strerror(status)});
            return;
        }
        if (http_path_.empty()) {
            finish({true, 0, ""});
            return;
        }
        request_ = "GET " + http_path_ +
                   " HTTP/1.1\r\nHost: localhost\r\nUser-Agent: liege-health\r\n"
                   "Accept: */*\r\nConnection: close\r\n\r\n";
        uv_buf_t buf = uv_buf_init(request_.data(), static_cast<unsigned>(request_.size()));
        int rc =
            uv_write(&requests_->write, stream_, &buf, 1, [](uv_write_t* req, int write_status) {
                auto* self = request_owner<Probe>(req);
                if (self != nullptr && write_status < 0) {
                    self->finish({false, 0, uv_strerror(write_status)});
                }
            });
        if (rc != 0) {
            finish({false, 0, uv_strerror(rc)});
            return;
        }
        uv_read_start(
            stream_,
            [](uv_handle_t* h, size_t, uv_buf_t* out) {
                auto* self = static_cast<Probe*>(h->data);
                *out = uv_buf_init(self->buffer_, sizeof self->buffer_);
            },
            [](uv_stream_t* s, ssize_t nread, const uv_buf_t* read_buf) {
                static_cast<Probe*>(s->data)->on_read(nread, read_buf);
            });
    }

    void on_read(ssize_t nread, const uv_buf_t* buf) {
        if (nread < 0) {
            finish({false, 0,
                    nread == UV_EOF ? "connection closed before a response"
                                    : uv_strerror(static_cast<int>(nread))});
            return;
        }
        received_.append(buf->base, static_cast<std::size_t>(nread));
        int status = parse_http_status_line(received_);
        if (status == 0) {
            return;
        }
        if (status < 0) {
            finish({false, 0, "not an HTTP/1.x response"});
        } else if (status >= 200 && status < 400) {
            finish({true, status, ""});
        } else {
            finish({false, status, "status " + std::to_string(status)});
        }
    }

    // The probe is deleted first (its handles close), so the callback may cancel and start
    // probes freely, and no later libuv callback can report a second result.
    void finish(ProbeResult result) {
        auto done = std::move(done_);
        delete this;
        if (done) {
            done(result);
        }
    }

    uv_loop_t* loop_;
    std::string http_path_;
    std::function<void(const ProbeResult&)> done_;
    std::shared_ptr<ProbeControl> control_;

    UvHandle<uv_timer_t> timer_;
    UvHandle<uv_tcp_t, StreamRequests> tcp_;
    UvHandle<uv_pipe_t, StreamRequests> pipe_;
    uv_stream_t* stream_ = nullptr;      // tcp_ or pipe_ once initialised
    StreamRequests* requests_ = nullptr; // that stream's requests

    ProbeResult posted_;
    bool has_posted_ = false;
    std::string request_; // read by libuv only while the stream is open
    std::string received_;
    char buffer_[2048];
};

} // namespace

std::function<void()> probe(uv_loop_t* loop, const Address& addr, const std::string& http_path,
                            std::chrono::milliseconds timeout,
                            std::function<void(const ProbeResult&)> done) {
    auto* p = new Probe(loop, http_path, std::move(done));
    std::shared_ptr<ProbeControl> control = p->control();
    p->start(addr, timeout);
    return [control] {
        if (control->probe != nullptr) {
            control->probe->cancel();
        }
    };
}

namespace {

// A check command in flight. It owns itself like a Probe: deleted when it finishes or is
// cancelled, before its callback runs. The child outlives it only while a SIGKILL is on its way
// (Child::stop keeps escalating after its handle is gone).
class CommandProbe {
public:
    CommandProbe(uv_loop_t* loop, std::function<void(const ProbeResult&)> done)
        : control_(std::make_shared<ProbeControl>()), done_(std::move(done)) {
        control_->probe_command = this;
        uv_timer_init(loop, timer_.get());
        timer_->data = this;
    }

    std::shared_ptr<ProbeControl> control() const { return control_; }

    void start(uv_loop_t* loop, const SpawnSpec& spec, std::chrono::milliseconds timeout) {
        int err = 0;
        child_ = spawn_child(
            loop, spec, [this](std::string_view line, bool) { last_line_ = std::string(line); },
            [this](ExitStatus st) { exited(st); }, &err);
        if (child_ == nullptr) {
            result_.error = "cannot start " + (spec.argv.empty() ? std::string() : spec.argv[0]) +
                            ": " + std::strerror(-err);
            uv_timer_start(
                timer_.get(), [](uv_timer_t* t) { static_cast<CommandProbe*>(t->data)->finish(); },
                0, 0);
            return;
        }
        uv_timer_start(
            timer_.get(),
            [](uv_timer_t* t) {
                auto* self = static_cast<CommandProbe*>(t->data);
                self->result_.error = "timed out";
                self->result_.timed_out = true;
                self->finish();
            },
            static_cast<uint64_t>(timeout.count()), 0);
    }

    void cancel() {
        done_ = nullptr;
        finish();
    }

private:
    void exited(ExitStatus st) {
        child_.reset();
        if (st.exit_code == 0) {
            result_.ok = true;
        } else {
            result_.error = st.str() + (last_line_.empty() ? "" : ": " + last_line_);
        }
        finish();
    }

    void finish() {
        if (child_ != nullptr && child_->running()) {
            child_->stop(SIGKILL, std::chrono::milliseconds(0));
        }
        child_.reset();
        control_->probe_command = nullptr;
        auto done = std::move(done_);
        ProbeResult result = std::move(result_);
        delete this;
        if (done) {
            done(result);
        }
    }

    std::shared_ptr<ProbeControl> control_;
    std::function<void(const ProbeResult&)> done_;
    std::unique_ptr<Child> child_;
    std::string last_line_;
    ProbeResult result_;
    UvHandle<uv_timer_t> timer_;
};

} // namespace

std::function<void()> probe_command(uv_loop_t* loop, const std::vector<std::string>& argv,
                                    const std::vector<std::pair<std::string, std::string>>& env,
                                    const std::string& cwd, std::chrono::milliseconds timeout,
                                    std::function<void(const ProbeResult&)> done,
                                    std::optional<SpawnUser> user, bool no_new_privs) {
    auto* p = new CommandProbe(loop, std::move(done));
    std::shared_ptr<ProbeControl> control = p->control();
    SpawnSpec spec;
    spec.argv = argv;
    spec.env = env;
    spec.cwd = cwd;
    spec.tag = "health";
    spec.user = std::move(user);
    spec.no_new_privs = no_new_privs;
    p->start(loop, spec, timeout);
    return [control] {
        if (control->probe_command != nullptr) {
            control->probe_command->cancel();
        }
    };
}

void ProbeEchoFilter::probed(int64_t now_ms) {
    if (path_.empty()) {
        return;
    }
    std::erase_if(pending_, [&](int64_t at) { return now_ms - at > kWindowMs; });
    if (pending_.size() < 64) {
        pending_.push_back(now_ms);
    }
}

bool ProbeEchoFilter::drop(std::string_view line, int64_t now_ms) {
    std::erase_if(pending_, [&](int64_t at) { return now_ms - at > kWindowMs; });
    if (pending_.empty()) {
        return false;
    }
    bool ours = line.find("liege-health") != std::string_view::npos;
    const std::string needle = "GET " + path_;
    for (size_t at = line.find(needle); !ours && at != std::string_view::npos;
         at = line.find(needle, at + 1)) {
        const size_t end = at + needle.size();
        ours = end == line.size() || line[end] == ' ' || line[end] == '?' || line[end] == '"';
    }
    if (!ours) {
        return false;
    }
    pending_.erase(pending_.begin());
    ++dropped_;
    return true;
}

} // namespace liege
