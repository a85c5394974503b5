// Health probes: one connect (and one GET) per call, on the emperor's loop.
//
// A probe owns a timer and a stream and has requests (connect, write) in flight, whose callbacks
// libuv still runs, with UV_ECANCELED, when the stream is closed. So the probe's memory is not
// owned by one RAII handle but counted down by the close callbacks of both handles, which libuv
// runs after any cancelled request callback: the probe is freed in the last one, and nothing
// touches it after that. The caller's cancel function reaches the probe through a small shared
// control block that the probe clears when it finishes, so cancelling late is a no-op.
#include "liege/health.hpp"

#include <algorithm>
#include <cstring>
#include <memory>
#include <utility>

#include <sys/un.h>

#include "liege/log.hpp"

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

namespace {

class Probe;

struct ProbeControl {
    Probe* probe = nullptr; // null once the probe finished or was cancelled
};

class Probe {
public:
    Probe(uv_loop_t* loop, std::string http_path, std::function<void(const ProbeResult&)> done)
        : loop_(loop), http_path_(std::move(http_path)), done_(std::move(done)),
          control_(std::make_shared<ProbeControl>()) {
        control_->probe = this;
    }
    Probe(const Probe&) = delete;
    Probe& operator=(const Probe&) = delete;

    std::shared_ptr<ProbeControl> control() const { return control_; }

    void start(const Address& addr, std::chrono::milliseconds timeout) {
        uv_timer_init(loop_, &timer_);
        timer_.data = this;
        open_handles_ = 1;
        uv_timer_start(
            &timer_, [](uv_timer_t* t) { static_cast<Probe*>(t->data)->on_timer(); },
            static_cast<uint64_t>(std::max<int64_t>(timeout.count(), 0)), 0);

        connect_.data = this;
        auto on_connect = [](uv_connect_t* req, int status) {
            static_cast<Probe*>(req->data)->on_connect(status);
        };
        if (addr.is_unix()) {
            if (addr.path.size() >= sizeof(sockaddr_un{}.sun_path)) {
                post({false, 0, "socket path too long: " + addr.path});
                return;
            }
            uv_pipe_init(loop_, &pipe_, 0);
            pipe_.data = this;
            stream_ = reinterpret_cast<uv_stream_t*>(&pipe_);
            ++open_handles_;
            uv_pipe_connect(&connect_, &pipe_, addr.path.c_str(), on_connect);
            return;
        }
        sockaddr_storage ss;
        socklen_t len = 0;
        int rc = to_sockaddr(addr, ss, len);
        if (rc != 0) {
            post({false, 0, "cannot resolve " + addr.str()});
            return;
        }
        uv_tcp_init(loop_, &tcp_);
        tcp_.data = this;
        stream_ = reinterpret_cast<uv_stream_t*>(&tcp_);
        ++open_handles_;
        rc = uv_tcp_connect(&connect_, &tcp_, reinterpret_cast<const sockaddr*>(&ss), on_connect);
        if (rc != 0) {
            post({false, 0, uv_strerror(rc)});
        }
    }

    void cancel() {
        done_ = nullptr;
        close();
    }

private:
    // Reports `result` from the loop, not from the caller's stack.
    void post(ProbeResult result) {
        posted_ = std::move(result);
        has_posted_ = true;
        uv_timer_stop(&timer_);
        uv_timer_start(
            &timer_, [](uv_timer_t* t) { static_cast<Probe*>(t->data)->on_timer(); }, 0, 0);
    }

    void on_timer() {
        if (has_posted_) {
            finish(std::move(posted_));
        } else {
            finish({false, 0, "timed out"});
        }
    }

    void on_connect(int status) {
        if (closing_) {
            return; // UV_ECANCELED from close()
        }
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
        write_.data = this;
        int rc = uv_write(&write_, stream_, &buf, 1, [](uv_write_t* req, int write_status) {
            auto* self = static_cast<Probe*>(req->data);
            if (!self->closing_ && write_status < 0) {
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
        if (closing_) {
            return;
        }
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

    void finish(ProbeResult result) {
        if (closing_) {
            return;
        }
        auto done = std::move(done_);
        close();
        if (done) {
            done(result); // `this` stays allocated until the close callbacks
        }
    }

    void close() {
        if (closing_) {
            return;
        }
        closing_ = true;
        control_->probe = nullptr;
        auto on_close = [](uv_handle_t* h) {
            auto* self = static_cast<Probe*>(h->data);
            if (--self->open_handles_ == 0) {
                delete self;
            }
        };
        uv_close(reinterpret_cast<uv_handle_t*>(&timer_), on_close);
        if (stream_ != nullptr) {
            uv_close(reinterpret_cast<uv_handle_t*>(stream_), on_close);
        }
    }

    uv_loop_t* loop_;
    std::string http_path_;
    std::function<void(const ProbeResult&)> done_;
    std::shared_ptr<ProbeControl> control_;

    uv_timer_t timer_{};
    uv_tcp_t tcp_{};
    uv_pipe_t pipe_{};
    uv_stream_t* stream_ = nullptr; // &tcp_ or &pipe_ once initialised
    uv_connect_t connect_{};
    uv_write_t write_{};
    int open_handles_ = 0;
    bool closing_ = false;

    ProbeResult posted_;
    bool has_posted_ = false;
    std::string request_;
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

} // namespace liege
