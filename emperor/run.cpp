// `liege run`: the emperor's loop and signals.
#include <cassert>
#include <csignal>

#include "emperor.hpp"
#include "liege/admin.hpp"
#include "liege/containment.hpp"
#include "liege/log.hpp"
#include "liege/logs.hpp"

namespace liege {

int run_emperor(const EmperorOptions& options) {
    // Outlives the loop, so the last lines still reach emperor.log.
    LogFiles logs(options.log_dir);
    if (logs.open() != 0) {
        return 1;
    }
    install_log_files(&logs);
    // Before any child (and any thread): the guard is a fork of this process.
    auto containment = Containment::install();
    uv_loop_t loop;
    uv_loop_init(&loop);
    std::signal(SIGPIPE, SIG_IGN);
    int exit_code = 0;
    {
        emperor::Emperor emperor(&loop, options);
        AdminServer admin(emperor);
        // Signal handlers first: a SIGHUP that arrives while we start (a deploy tool reloading
        // as soon as the socket answers) must not kill us; libuv delivers it once the loop runs.
        struct SignalCtx {
            emperor::Emperor* emperor;
            AdminServer* admin;
            std::vector<UvHandle<uv_signal_t>>* signals;
            int count = 0;
        };
        std::vector<UvHandle<uv_signal_t>> signals;
        SignalCtx ctx{&emperor, &admin, &signals};
        auto stop_all = [](SignalCtx* c) {
            for (auto& s : *c->signals) {
                uv_signal_stop(s.get());
            }
            c->admin->close();
        };
        for (int signo : {SIGTERM, SIGINT, SIGHUP, SIGUSR1}) {
            signals.emplace_back();
            uv_signal_init(&loop, signals.back().get());
            signals.back()->data = &ctx;
            uv_signal_start(
                signals.back().get(),
                [](uv_signal_t* s, int signum) {
                    auto* c = static_cast<SignalCtx*>(s->data);
                    if (signum == SIGHUP) {
                        spdlog::info("emperor: SIGHUP, rescanning the vassal directory");
                        c->emperor->rescan();
                        return;
                    }
                    if (signum == SIGUSR1) {
                        c->emperor->reopen_logs();
                        return;
                    }
                    if (++c->count > 1) {
                        spdlog::warn("emperor: second {}, still stopping", strsignal(signum));
                        return;
                    }
                    spdlog::info("emperor: {} received, stopping gracefully", strsignal(signum));
                    // The admin API answers until everything has stopped.
                    c->emperor->shutdown([c] {
                        for (auto& sig : *c->signals) {
                            uv_signal_stop(sig.get());
                        }
                        c->admin->close();
                    });
                },
                signo);
        }
        // Bound before anything starts, so a second `liege run` on the same socket stops here.
        if (admin.start(options.admin, options.admin_token) != 0) {
            exit_code = 1;
            emperor.shutdown([] {});
        } else if (int rc = emperor.start(); rc != 0) {
            exit_code = rc;
            emperor.shutdown([] {});
        }
        if (exit_code != 0) {
            stop_all(&ctx);
        }
        // Runs until shutdown stops the signal handlers and the last child is gone.
        while (uv_run(&loop, UV_RUN_DEFAULT) != 0) {
        }
        signals.clear();
    }
    // Let the handles closed by destructors finish closing.
    uv_run(&loop, UV_RUN_DEFAULT);
    close_loop(&loop, "emperor");
    containment.reset(); // stops what was re-parented to us and is still there; the guard goes
    spdlog::info("emperor: stopped");
    install_log_files(nullptr);
    return exit_code;
}

} // namespace liege
