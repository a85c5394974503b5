// `liege router`: listening sockets, threads, signals and the graceful drain.
//
// Each thread runs its own libuv loop and accepts on its own SO_REUSEPORT socket, so the kernel
// spreads connections across threads without a shared accept lock. Its hash spreads them
// unevenly, so a thread holding two more than a sibling hands the connection it just accepted
// to the least loaded one (thread_for_connection). Unix sockets and sockets inherited from a
// parent cannot be multiplied that way; each thread polls a dup of the one fd.
#include "liege/router.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cassert>
#include <csignal>
#include <cstring>
#include <memory>
#include <thread>
#include <utility>

#include "control_channel.hpp"
#include "liege/log.hpp"
#include "router_thread.hpp"

namespace liege {

namespace {

std::atomic<int> g_signal_count{0};

// The addresses to bind, plain HTTP first; true: HTTPS.
std::vector<std::pair<Address, bool>> listen_addresses(const RouterOptions& o) {
    std::vector<std::pair<Address, bool>> out;
    for (const auto& a : o.listen) {
        out.emplace_back(a, false);
    }
    for (const auto& a : o.listen_tls) {
        out.emplace_back(a, true);
    }
    return out;
}

} // namespace

int run_router(const RouterOptions& options) {
    using router::RouterThread;
    using router::Shared;

    // TERM, INT and USR1 wait (blocked) until their handlers are in place below: a router told
    // to stop while it starts stops gracefully instead of dying of the default action.
    sigset_t early;
    sigemptyset(&early);
    for (int signo : {SIGTERM, SIGINT, SIGUSR1}) {
        sigaddset(&early, signo);
    }
    pthread_sigmask(SIG_BLOCK, &early, nullptr);
    struct Unblock {
        sigset_t* set;
        ~Unblock() { pthread_sigmask(SIG_UNBLOCK, set, nullptr); }
    } unblock_on_return{&early};

    const bool has_tls = !options.listen_tls.empty() || !options.inherited_tls_fds.empty();
    if (options.listen.empty() && options.inherited_fds.empty() && !has_tls) {
        spdlog::error("router: nothing to listen on");
        return 2;
    }
    auto shared = std::make_unique<Shared>(options);
    unsigned threads =
        options.threads != 0 ? options.threads : std::max(1u, std::thread::hardware_concurrency());
    shared->options.threads = threads;

    // Without an emperor, the command line's backends serve every host and path.
    control::RoutesMessage static_routes;
    if (options.control_fd < 0) {
        control::RouteSpec all;
        all.vassal = "default";
        for (const auto& b : options.backends) {
            if (!Backend(b).resolved) {
                spdlog::error("router: cannot resolve backend {}", b.str());
                return 2;
            }
            all.backends.push_back({b.str(), 0, false});
        }
        if (all.backends.empty()) {
            spdlog::warn("router: no backends; every request will get 503");
        }
        static_routes.routes.push_back(std::move(all));
    }

    int log_fd = -1;
    if (options.access_log == "-") {
        log_fd = STDERR_FILENO;
    } else if (options.access_log != "off" && !options.access_log.empty()) {
        log_fd =
            ::open(options.access_log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (log_fd < 0) {
            spdlog::error("router: cannot open access log {}: {}", options.access_log,
                          std::strerror(errno));
            return 2;
        }
    }

    shared->logs.main_fd = log_fd;
    shared->logs.dir = options.access_log_dir;
    if (log_fd > STDERR_FILENO) {
        shared->logs.main_path = options.access_log;
    }
    std::signal(SIGPIPE, SIG_IGN);
    if (has_tls) {
        shared->tls = std::make_unique<router::TlsStore>();
        if (!shared->tls->init(options.tls_cert, options.tls_key)) {
            return 1; // the reason is logged
        }
    }

    std::vector<std::unique_ptr<RouterThread>> router_threads;
    for (unsigned i = 0; i < threads; ++i) {
        router_threads.push_back(std::make_unique<RouterThread>(i, *shared, log_fd));
        shared->threads.push_back(router_threads.back().get());
    }
    router::RouteBuilder static_builder(options.lb);
    {
        std::vector<std::shared_ptr<Backend>> unused;
        auto snaps = static_builder.build(static_routes, threads, unused);
        for (unsigned i = 0; i < threads; ++i) {
            router_threads[i]->set_routes(std::move(snaps[i]));
        }
    }

    // Listening sockets: one per thread with SO_REUSEPORT for TCP; shared otherwise.
    auto note_https_port = [&](const Address& bound) {
        if (shared->https_port == 0 && !bound.is_unix() && bound.port != 443) {
            shared->https_port = bound.port;
        }
    };
    bool first_https = true;
    for (const auto& [addr, tls] : listen_addresses(options)) {
        Address bound = addr;
        if (addr.is_unix()) {
            int fd = bind_listening_socket(addr, false, 4096);
            if (fd < 0) {
                spdlog::error("router: cannot listen on {}: {}", addr.str(), std::strerror(-fd));
                return 1;
            }
            for (unsigned i = 0; i < threads; ++i) {
                router_threads[i]->add_listener(i == 0 ? fd : ::fcntl(fd, F_DUPFD_CLOEXEC, 0), true,
                                                true, tls);
            }
        } else {
            for (unsigned i = 0; i < threads; ++i) {
                int fd = bind_listening_socket(bound, true, 4096);
                if (fd < 0) {
                    spdlog::error("router: cannot listen on {}: {}", bound.str(),
                                  std::strerror(-fd));
                    return 1;
                }
                if (i == 0) {
                    bound = address_of_socket(fd); // port 0 becomes the chosen port for all
                }
                router_threads[i]->add_listener(fd, true, false, tls);
            }
        }
        if (tls && std::exchange(first_https, false)) {
            note_https_port(bound);
        }
        spdlog::info("listening on {}{}", bound.str(), tls ? " (https)" : "");
    }
    for (const auto& [fds, tls] :
         {std::pair{&options.inherited_fds, false}, std::pair{&options.inherited_tls_fds, true}}) {
        for (int fd : *fds) {
            sockaddr_storage ss{};
            socklen_t len = sizeof(ss);
            getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
            bool is_unix = ss.ss_family == AF_UNIX;
            for (unsigned i = 0; i < threads; ++i) {
                router_threads[i]->add_listener(::fcntl(fd, F_DUPFD_CLOEXEC, 0), true, is_unix,
                                                tls);
            }
            const Address bound = address_of_socket(fd);
            if (tls && std::exchange(first_https, false)) {
                note_https_port(bound);
            }
            spdlog::info("listening on {} (inherited{})", bound.str(), tls ? ", https" : "");
        }
    }

    std::string names;
    for (const auto& b : options.backends) {
        names += (names.empty() ? "" : ", ") + b.str();
    }
    if (options.control_fd < 0) {
        spdlog::info("router: {} thread(s), {} balancing over {} backend(s){}{}", threads,
                     options.lb == LbPolicy::LeastConn ? "least_conn" : "round_robin",
                     options.backends.size(), names.empty() ? "" : ": ", names);
    } else {
        spdlog::info("router: {} thread(s), routes from the emperor", threads);
    }

    // The main thread only waits for signals; the router threads do all the proxying.
    uv_loop_t loop;
    uv_loop_init(&loop);
    // Its handles close in all_done's callback, once every router thread has ended.
    struct Ctx {
        std::vector<std::unique_ptr<RouterThread>>* threads;
        router::Shared* shared;
        UvHandle<uv_signal_t> sigterm, sigint, sigusr1;
        UvHandle<uv_async_t> all_done;
        std::unique_ptr<router::ControlChannel>* channel = nullptr;
        UvHandle<uv_timer_t> tls_files; // certificate files are checked every second
    } ctx{&router_threads, shared.get(), {}, {}, {}, {}, nullptr, {}};
    auto on_signal = [](uv_signal_t* s, int signum) {
        auto* c = static_cast<Ctx*>(s->data);
        int n = ++g_signal_count;
        spdlog::info("router: {} received, {}", strsignal(signum),
                     n == 1 ? "finishing requests in flight" : "closing every connection now");
        for (auto& w : *c->threads) {
            w->request_shutdown(n > 1);
        }
    };
    for (auto* s : {&ctx.sigterm, &ctx.sigint, &ctx.sigusr1}) {
        uv_signal_init(&loop, s->get());
        (*s)->data = &ctx;
    }
    uv_signal_start(ctx.sigterm.get(), on_signal, SIGTERM);
    uv_signal_start(ctx.sigint.get(), on_signal, SIGINT);
    uv_signal_start(
        ctx.sigusr1.get(),
        [](uv_signal_t* s, int) {
            static_cast<Ctx*>(s->data)->shared->logs.reopen();
            spdlog::info("router: SIGUSR1, access logs reopened");
        },
        SIGUSR1);
    pthread_sigmask(SIG_UNBLOCK, &early, nullptr); // what came meanwhile is delivered now
    std::unique_ptr<router::ControlChannel> channel;
    if (options.control_fd >= 0) {
        channel = std::make_unique<router::ControlChannel>(&loop, options.control_fd, *shared,
                                                           router_threads, [&router_threads] {
                                                               for (auto& w : router_threads) {
                                                                   w->request_shutdown(false);
                                                               }
                                                           });
    }
    // Fed by an emperor, a router accepts only once it knows the routes: connections queue in
    // the kernel meanwhile instead of getting 404s from an empty route table.
    for (auto& w : router_threads) {
        w->start(options.control_fd < 0);
    }
    // Wait for the router threads on a helper thread so the signal loop stays responsive.
    uv_async_init(&loop, ctx.all_done.get(), [](uv_async_t* a) {
        auto* c = static_cast<Ctx*>(a->data);
        c->sigterm.reset();
        c->sigint.reset();
        c->sigusr1.reset();
        c->tls_files.reset();
        if (*c->channel != nullptr) {
            (*c->channel)->close();
        }
        c->all_done.reset();
    });
    ctx.all_done->data = &ctx;
    ctx.channel = &channel;
    if (shared->tls != nullptr) {
        // Certificate files changed on disk are picked up within a second.
        uv_timer_init(&loop, ctx.tls_files.get());
        ctx.tls_files->data = shared.get();
        uv_timer_start(
            ctx.tls_files.get(),
            [](uv_timer_t* t) { static_cast<router::Shared*>(t->data)->tls->check_files(); }, 1000,
            1000);
    }
    std::thread joiner([&] {
        for (auto& w : router_threads) {
            w->join();
        }
        uv_async_send(ctx.all_done.get());
    });
    uv_run(&loop, UV_RUN_DEFAULT);
    joiner.join();
    close_loop(&loop, "router control thread");
    router_threads.clear();
    shared->log_refusal_summaries(true); // the refusals of the last second
    if (log_fd > STDERR_FILENO) {
        ::close(log_fd);
    }
    spdlog::info("router: stopped after {} request(s)", shared->requests.load());
    return 0;
}

} // namespace liege
