// `liege top [--admin ADDR]`: the `liege status` table, redrawn every second until q or ^C, like
// uwsgitop. On a terminal it draws on the alternate screen (cleared with ANSI codes each time)
// and reads keys without waiting for Enter; into a pipe it prints one table after another.
//
// Signals are turned into bytes on a pipe (the self-pipe trick), so the wait between refreshes
// wakes at once on ^C instead of racing a flag against poll().
#include <fcntl.h>
#include <poll.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "commands.hpp"
#include "liege/status_table.hpp"

namespace liege::cli {

namespace {

int g_signal_pipe[2] = {-1, -1};

void on_signal(int) {
    const int saved = errno;
    char byte = 1;
    [[maybe_unused]] ssize_t n = ::write(g_signal_pipe[1], &byte, 1);
    errno = saved;
}

void write_all(std::string_view s) {
    while (!s.empty()) {
        ssize_t n = ::write(STDOUT_FILENO, s.data(), s.size());
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return;
        }
        s.remove_prefix(static_cast<size_t>(n));
    }
}

// Puts the terminal in non-canonical mode without echo, and back as it was.
class RawTerminal {
public:
    RawTerminal() {
        if (::isatty(STDIN_FILENO) != 1 || ::tcgetattr(STDIN_FILENO, &saved_) != 0) {
            return;
        }
        termios raw = saved_;
        raw.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO);
        raw.c_cc[VMIN] = 0;
        raw.c_cc[VTIME] = 0;
        active_ = ::tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
    }
    RawTerminal(const RawTerminal&) = delete;
    RawTerminal& operator=(const RawTerminal&) = delete;
    ~RawTerminal() {
        if (active_) {
            ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
        }
    }
    bool active() const { return active_; }

private:
    termios saved_{};
    bool active_ = false;
};

std::string clock_now() {
    std::time_t t = std::time(nullptr);
    std::tm local{};
    ::localtime_r(&t, &local);
    char buf[16];
    std::strftime(buf, sizeof(buf), "%H:%M:%S", &local);
    return buf;
}

// Waits up to `ms` for a quit key or a signal; true when it is time to go.
bool wait_for_quit(int ms, bool keys) {
    pollfd fds[2] = {{g_signal_pipe[0], POLLIN, 0}, {STDIN_FILENO, POLLIN, 0}};
    int n = 0;
    do {
        // After EINTR the handler's byte is in the pipe: poll again to see it.
        n = ::poll(fds, keys ? 2 : 1, ms);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) {
        return false;
    }
    if ((fds[0].revents & POLLIN) != 0) {
        return true;
    }
    if (keys && (fds[1].revents & POLLIN) != 0) {
        char c = 0;
        ssize_t got = ::read(STDIN_FILENO, &c, 1);
        return got == 0 || c == 'q' || c == 'Q' || c == 3 /* ^C with ISIG off */;
    }
    return false;
}

} // namespace

void add_top_command(CLI::App& app, int& exit_code) {
    struct Args {
        std::string admin; // --admin; see client_admin()
    };
    auto args = std::make_shared<Args>();
    auto* cmd = app.add_subcommand("top", "The status table, refreshed every second (q quits)");
    add_admin_option(*cmd, args->admin);
    cmd->callback([args, &exit_code] {
        args->admin = client_admin(args->admin);
        std::string error;
        auto status = fetch_status(args->admin, &error);
        if (!status) {
            std::fprintf(stderr, "liege: %s\n", error.c_str());
            exit_code = 1;
            return;
        }
        if (::pipe2(g_signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
            std::fprintf(stderr, "liege: pipe: %s\n", std::strerror(errno));
            exit_code = 1;
            return;
        }
        struct sigaction sa {};
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        for (int signo : {SIGINT, SIGTERM, SIGHUP}) {
            ::sigaction(signo, &sa, nullptr);
        }
        const bool tty = ::isatty(STDOUT_FILENO) == 1;
        const bool colour = use_colour(STDOUT_FILENO);
        RawTerminal terminal;
        if (tty) {
            write_all("\033[?1049h\033[?25l"); // alternate screen, cursor hidden
        }
        for (;;) {
            std::string frame = tty ? "\033[H\033[2J" : "";
            frame += fmt::format("liege top - {} - {}{}\n\n", args->admin, clock_now(),
                                 terminal.active() ? " - q quits" : "");
            if (status) {
                frame += format_status(*status, {colour, std::time(nullptr)});
            } else {
                // The emperor may be restarting: keep trying rather than leave.
                frame += "liege: " + error + "\n";
            }
            if (!tty) {
                frame += "\n";
            }
            write_all(frame);
            if (wait_for_quit(1000, terminal.active())) {
                break;
            }
            status = fetch_status(args->admin, &error);
        }
        if (tty) {
            write_all("\033[?25h\033[?1049l");
        }
        exit_code = 0;
    });
}

} // namespace liege::cli
