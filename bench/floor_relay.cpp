// liege-floor-relay: the kernel's floor for any HTTP proxy on this box. Not a proxy.
//
// It pairs every accepted client connection with its own connection to one backend and copies
// bytes both ways: no HTTP parsing, no header rewriting, no balancing, no timeouts, no pools.
// Each request still crosses the same four socket calls a real proxy makes (read from the
// client, write to the backend, read from the backend, write to the client) over loopback TCP,
// so its CPU per request is what the kernel takes for them, plus the event loop's own cost.
// bench/run.sh runs it beside liege, nginx and HAProxy so the report can say how far from that
// floor each proxy is, and how much of a request's cost no proxy can remove.
//
//   --mode epoll   level-triggered epoll, read() and write(): the syscalls liege's libuv makes
//   --mode uring   io_uring: multishot recv into a provided buffer ring and sends batched into
//                  one io_uring_enter per loop turn (DEFER_TASKRUN), i.e. the fewest syscalls
//                  per request the kernel offers
//
// Backpressure: a side whose peer has not taken all its bytes stops reading until it has.
// The backend connect is blocking (loopback, once per client connection, outside the measured
// steady state). A failed connect closes the client. --threads N runs N such loops, each with
// its own SO_REUSEPORT listener. Exits on SIGTERM/SIGINT.
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "liege/address.hpp"

namespace {

[[noreturn]] void die(const char* what, int err) {
    std::fprintf(stderr, "liege-floor-relay: %s: %s\n", what, std::strerror(err));
    std::exit(1);
}

// The backend's socket address, resolved once at start-up.
struct BackendAddr {
    sockaddr_storage ss{};
    socklen_t len = 0;
};

void set_nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// A backend connection for the accepted `client_fd`: the connected fd, or -1 after closing the
// client (the backend refused).
int backend_for(int client_fd, const BackendAddr& a) {
    int fd = socket(a.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, reinterpret_cast<const sockaddr*>(&a.ss), a.len) != 0) {
        if (fd >= 0) {
            close(fd);
        }
        close(client_fd);
        return -1;
    }
    set_nodelay(fd);
    set_nodelay(client_fd);
    return fd;
}

// The two sides of a relayed connection, each pointing at the other.
template <class Side> std::pair<Side*, Side*> make_pair_of(int client_fd, int backend_fd) {
    auto* a = new Side;
    auto* b = new Side;
    a->fd = client_fd;
    b->fd = backend_fd;
    a->peer = b;
    b->peer = a;
    return {a, b};
}

// ---------------------------------------------------------------------------------- epoll

struct EpollSide {
    int fd = -1;
    EpollSide* peer = nullptr;
    std::vector<char> pending; // bytes read from this side that the peer has not taken yet
    size_t pending_off = 0;
    bool closed = false;
};

[[noreturn]] void run_epoll(int lfd, const BackendAddr& backend) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = nullptr; // the listener
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    std::vector<char> buffer(64 * 1024); // per thread: every loop has its own
    char* buf = buffer.data();
    epoll_event events[256];
    std::vector<EpollSide*> dead;

    auto watch = [&](EpollSide* s, uint32_t what) {
        epoll_event e{};
        e.events = what;
        e.data.ptr = s;
        epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &e);
    };
    auto close_pair = [&](EpollSide* s) {
        for (EpollSide* x : {s, s->peer}) {
            if (!x->closed) {
                x->closed = true;
                close(x->fd); // also removes it from the epoll set
                dead.push_back(x);
            }
        }
    };
    // Writes src's pending bytes to its peer; true when all are gone.
    auto flush = [&](EpollSide* src) {
        while (src->pending_off < src->pending.size()) {
            ssize_t n = write(src->peer->fd, src->pending.data() + src->pending_off,
                              src->pending.size() - src->pending_off);
            if (n < 0) {
                return false;
            }
            src->pending_off += static_cast<size_t>(n);
        }
        src->pending.clear();
        src->pending_off = 0;
        return true;
    };

    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        if (n < 0 && errno != EINTR) {
            die("epoll_wait", errno);
        }
        for (int i = 0; i < n; ++i) {
            auto* s = static_cast<EpollSide*>(events[i].data.ptr);
            if (s == nullptr) {
                int c = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
                int u = c < 0 ? -1 : backend_for(c, backend);
                if (u < 0) {
                    continue;
                }
                fcntl(u, F_SETFL, O_NONBLOCK);
                auto [a, b] = make_pair_of<EpollSide>(c, u);
                for (EpollSide* x : {a, b}) {
                    epoll_event e{};
                    e.events = EPOLLIN;
                    e.data.ptr = x;
                    epoll_ctl(ep, EPOLL_CTL_ADD, x->fd, &e);
                }
                continue;
            }
            if (s->closed) {
                continue;
            }
            if ((events[i].events & EPOLLOUT) != 0) {
                // s's peer has pending bytes for s.
                EpollSide* src = s->peer;
                if (flush(src)) {
                    watch(s, EPOLLIN);
                    watch(src, EPOLLIN);
                } else if (errno != EAGAIN) {
                    close_pair(s);
                    continue;
                }
            }
            if ((events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) == 0) {
                continue;
            }
            ssize_t r = read(s->fd, buf, buffer.size());
            if (r < 0 && errno == EAGAIN) {
                continue;
            }
            if (r <= 0) {
                close_pair(s);
                continue;
            }
            ssize_t w = write(s->peer->fd, buf, static_cast<size_t>(r));
            if (w < 0 && errno != EAGAIN) {
                close_pair(s);
                continue;
            }
            if (w < r) {
                size_t done = w < 0 ? 0 : static_cast<size_t>(w);
                s->pending.assign(buf + done, buf + r);
                watch(s, 0);              // stop reading until the peer took it
                watch(s->peer, EPOLLOUT); // (the peer's reads wait too: one event mask per fd)
            }
        }
        for (EpollSide* x : dead) {
            delete x;
        }
        dead.clear();
    }
}

// ---------------------------------------------------------------------------------- io_uring

constexpr unsigned kBufs = 2048;
constexpr unsigned kBufSize = 4096;
constexpr uint16_t kGroup = 0;
constexpr size_t kHighWater = 8; // received buffers a side may have queued for its peer

struct UringSide;
struct Send {
    uint16_t bid;
    uint32_t off;
    uint32_t len;
};
struct UringSide {
    int fd = -1;
    UringSide* peer = nullptr;
    std::deque<Send> to_peer; // received from this side, waiting to be sent to the peer in order
    bool sending = false;     // the head of to_peer is in flight
    bool recv_armed = false;
    bool closing = false;
    unsigned ops = 0; // SQEs in flight that name this side
};

enum Op : uint64_t { kAccept = 0, kRecv = 1, kSend = 2, kCancel = 3 };

uint64_t tag(UringSide* s, Op op) {
    return reinterpret_cast<uint64_t>(s) | op;
}

class Uring {
public:
    Uring(int lfd, const BackendAddr& backend) : lfd_(lfd), backend_(backend) {
        io_uring_params p{};
        p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
                  IORING_SETUP_COOP_TASKRUN | IORING_SETUP_CQSIZE;
        p.cq_entries = 16384;
        int rc = io_uring_queue_init_params(4096, &ring_, &p);
        if (rc < 0) {
            die("io_uring_queue_init_params (needs Linux 6.1)", -rc);
        }
        mem_ = static_cast<char*>(aligned_alloc(4096, size_t{kBufs} * kBufSize));
        br_ = static_cast<io_uring_buf_ring*>(aligned_alloc(4096, kBufs * sizeof(io_uring_buf)));
        io_uring_buf_ring_init(br_);
        io_uring_buf_reg reg{};
        reg.ring_addr = reinterpret_cast<uint64_t>(br_);
        reg.ring_entries = kBufs;
        reg.bgid = kGroup;
        rc = io_uring_register_buf_ring(&ring_, &reg, 0);
        if (rc != 0) {
            die("io_uring_register_buf_ring (needs Linux 5.19)", -rc);
        }
        for (unsigned i = 0; i < kBufs; ++i) {
            give_back(static_cast<uint16_t>(i));
        }
        io_uring_sqe* sqe = get_sqe();
        io_uring_prep_multishot_accept(sqe, lfd_, nullptr, nullptr, SOCK_CLOEXEC);
        io_uring_sqe_set_data64(sqe, kAccept);
    }

    [[noreturn]] void run() {
        for (;;) {
            if (returned_ > 0) {
                io_uring_buf_ring_advance(br_, returned_);
                returned_ = 0;
                rearm_starved();
            }
            int rc = io_uring_submit_and_wait(&ring_, 1);
            if (rc < 0 && rc != -EINTR) {
                die("io_uring_submit_and_wait", -rc);
            }
            io_uring_cqe* cqe;
            unsigned head;
            unsigned seen = 0;
            io_uring_for_each_cqe(&ring_, head, cqe) {
                ++seen;
                complete(cqe->user_data, cqe->res, cqe->flags);
            }
            io_uring_cq_advance(&ring_, seen);
        }
    }

private:
    io_uring_sqe* get_sqe() {
        io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
        if (sqe == nullptr) {
            io_uring_submit(&ring_);
            sqe = io_uring_get_sqe(&ring_);
        }
        return sqe;
    }
    char* buf(uint16_t bid) { return mem_ + size_t{bid} * kBufSize; }
    void give_back(uint16_t bid) {
        io_uring_buf_ring_add(br_, buf(bid), kBufSize, bid, io_uring_buf_ring_mask(kBufs),
                              static_cast<int>(returned_++));
    }

    void arm_recv(UringSide* s) {
        io_uring_sqe* sqe = get_sqe();
        io_uring_prep_recv_multishot(sqe, s->fd, nullptr, 0, 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = kGroup;
        io_uring_sqe_set_data64(sqe, tag(s, kRecv));
        s->recv_armed = true;
        ++s->ops;
    }
    // A side stops reading while kHighWater of its buffers wait for its peer (backpressure), and
    // when the buffer ring ran dry (ENOBUFS) until buffers come back.
    void maybe_arm(UringSide* s) {
        if (!s->closing && !s->recv_armed && s->to_peer.size() < kHighWater) {
            arm_recv(s);
        }
    }
    void rearm_starved() {
        std::vector<UringSide*> starved;
        starved.swap(starved_);
        for (UringSide* s : starved) {
            --s->ops;
            maybe_arm(s);
            maybe_free(s);
        }
    }
    void send_next(UringSide* src) {
        if (src->sending || src->to_peer.empty() || src->closing) {
            return;
        }
        const Send& s = src->to_peer.front();
        io_uring_sqe* sqe = get_sqe();
        io_uring_prep_send(sqe, src->peer->fd, buf(s.bid) + s.off, s.len, MSG_NOSIGNAL);
        io_uring_sqe_set_data64(sqe, tag(src, kSend));
        src->sending = true;
        ++src->ops;
    }
    void close_pair(UringSide* s) {
        for (UringSide* x : {s, s->peer}) {
            if (x->closing) {
                continue;
            }
            x->closing = true;
            io_uring_sqe* sqe = get_sqe();
            io_uring_prep_cancel_fd(sqe, x->fd, IORING_ASYNC_CANCEL_ALL);
            io_uring_sqe_set_data64(sqe, tag(x, kCancel));
            ++x->ops;
        }
    }
    // Frees the pair once no SQE names either side.
    void maybe_free(UringSide* s) {
        UringSide* p = s->peer;
        if (s->closing && p->closing && s->ops == 0 && p->ops == 0) {
            for (UringSide* x : {s, p}) {
                for (const Send& q : x->to_peer) {
                    give_back(q.bid);
                }
                close(x->fd);
            }
            delete s;
            delete p;
        }
    }

    void complete(uint64_t data, int res, unsigned flags) {
        auto op = static_cast<Op>(data & 3);
        if (op == kAccept) {
            accepted(res, flags);
            return;
        }
        auto* s = reinterpret_cast<UringSide*>(data & ~uint64_t{3});
        switch (op) {
        case kRecv:
            if ((flags & IORING_CQE_F_MORE) == 0) {
                s->recv_armed = false;
                --s->ops;
            }
            if (res > 0) {
                auto bid = static_cast<uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
                if (s->closing) {
                    give_back(bid);
                    break;
                }
                s->to_peer.push_back({bid, 0, static_cast<uint32_t>(res)});
                send_next(s);
                if (s->recv_armed && s->to_peer.size() >= kHighWater) {
                    cancel_recv(s); // backpressure: stop reading until the peer took some
                }
            } else if (res == -ENOBUFS) {
                ++s->ops; // held by starved_ until buffers come back
                starved_.push_back(s);
                break;
            } else if (res != -ECANCELED && !s->closing) {
                close_pair(s); // EOF or error
                break;
            }
            maybe_arm(s); // a multishot recv that ended (cancelled, or by the kernel) restarts
            break;
        case kSend: {
            --s->ops;
            s->sending = false;
            if (s->closing) {
                break;
            }
            if (res <= 0) {
                close_pair(s);
                break;
            }
            Send& q = s->to_peer.front();
            q.off += static_cast<uint32_t>(res);
            q.len -= static_cast<uint32_t>(res);
            if (q.len == 0) {
                give_back(q.bid);
                s->to_peer.pop_front();
            }
            send_next(s);
            maybe_arm(s);
            break;
        }
        case kCancel:
            --s->ops;
            break;
        case kAccept:
            break;
        }
        maybe_free(s);
    }

    void cancel_recv(UringSide* s) {
        // Stopping a multishot recv: cancel it by its user_data; its last CQE comes without
        // IORING_CQE_F_MORE (and may still carry data, which then waits in to_peer).
        io_uring_sqe* sqe = get_sqe();
        io_uring_prep_cancel64(sqe, tag(s, kRecv), 0);
        io_uring_sqe_set_data64(sqe, tag(s, kCancel));
        ++s->ops;
    }

    void accepted(int c, unsigned flags) {
        if ((flags & IORING_CQE_F_MORE) == 0) { // the multishot accept ended: re-arm it
            io_uring_sqe* sqe = get_sqe();
            io_uring_prep_multishot_accept(sqe, lfd_, nullptr, nullptr, SOCK_CLOEXEC);
            io_uring_sqe_set_data64(sqe, kAccept);
        }
        int u = c < 0 ? -1 : backend_for(c, backend_);
        if (u < 0) {
            return;
        }
        auto [a, b] = make_pair_of<UringSide>(c, u);
        arm_recv(a);
        arm_recv(b);
    }

    io_uring ring_{};
    io_uring_buf_ring* br_ = nullptr;
    char* mem_ = nullptr;
    unsigned returned_ = 0;
    std::vector<UringSide*> starved_;
    int lfd_;
    BackendAddr backend_;
};

} // namespace

int main(int argc, char** argv) {
    CLI::App app{"liege-floor-relay: copies bytes between each client and its own backend "
                 "connection, to measure the kernel's floor for a proxy (not a proxy)"};
    std::string listen = "127.0.0.1:0";
    std::string backend;
    std::string mode = "epoll";
    unsigned threads = 1;
    app.add_option("--listen", listen, "HOST:PORT or [IPv6]:PORT to listen on")->required();
    app.add_option("--backend", backend, "HOST:PORT or [IPv6]:PORT of the backend")->required();
    app.add_option("--mode", mode, "epoll or uring")->check(CLI::IsMember({"epoll", "uring"}));
    app.add_option("--threads", threads, "threads, each with its own listener and loop")
        ->check(CLI::Range(1, 64));
    CLI11_PARSE(app, argc, argv);

    signal(SIGPIPE, SIG_IGN);

    liege::Address la;
    BackendAddr be;
    try {
        la = liege::parse_address(listen);
        liege::Address ba = liege::parse_address(backend);
        if (la.is_unix() || ba.is_unix()) {
            throw std::invalid_argument("TCP addresses only");
        }
        if (int rc = liege::to_sockaddr(ba, be.ss, be.len); rc < 0) {
            die("backend address", -rc);
        }
    } catch (const std::invalid_argument& e) {
        std::fprintf(stderr, "liege-floor-relay: %s\n", e.what());
        return 2;
    }
    // One listener per thread (SO_REUSEPORT), as liege, nginx (`reuseport`) and HAProxy do. Every
    // thread binds before any runs, so a client that finds the port open finds all of them.
    std::vector<int> lfds;
    for (unsigned i = 0; i < threads; ++i) {
        int fd = liege::bind_listening_socket(la, true, 4096);
        if (fd < 0) {
            die("listen", -fd);
        }
        lfds.push_back(fd);
    }
    // The loops never return; the main thread waits for SIGTERM/SIGINT (blocked in every thread,
    // so only sigwait takes them) and ends the process.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
    std::vector<std::thread> loops;
    for (int lfd : lfds) {
        loops.emplace_back([lfd, be, &mode] {
            if (mode == "epoll") {
                run_epoll(lfd, be);
            } else {
                Uring u(lfd, be);
                u.run();
            }
        });
    }
    int sig = 0;
    sigwait(&stop_signals, &sig);
    std::_Exit(0);
}
