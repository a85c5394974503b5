// `liege stop NAME`, `liege start NAME` and `liege logs NAME [-f] [-n N]`: one vassal through the
// admin API. stop and start wait for the outcome (the vassal gone, or ready) and exit 1 when it
// failed; logs prints its workers' last lines from the emperor's ring and, with -f, follows them.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "admin_client.hpp"
#include "commands.hpp"

namespace liege::cli {

namespace {

using namespace std::chrono_literals;

// As long as a drain (stop) or a start may take; the emperor bounds both.
constexpr auto kOutcomeTimeout = 15min;
constexpr auto kRequestTimeout = 10s;

// One request and its JSON answer (with the status in *status), or nullopt after telling the
// user what went wrong.
std::optional<nlohmann::json> request(const std::string& admin, std::string_view method,
                                      const std::string& path, std::chrono::milliseconds timeout,
                                      int* status) {
    AdminReply reply;
    try {
        reply = admin_request(admin, method, path, timeout);
    } catch (const std::runtime_error& e) {
        std::fprintf(stderr, "liege: %s\n", e.what());
        return std::nullopt;
    }
    *status = reply.status;
    try {
        return nlohmann::json::parse(reply.body);
    } catch (const nlohmann::json::exception&) {
        std::fprintf(stderr, "liege: the admin API's answer (%d) is not JSON: %s\n", reply.status,
                     reply.body.c_str());
        return std::nullopt;
    }
}

void add_stop_or_start(CLI::App& app, int& exit_code, bool stop) {
    struct Args {
        std::string admin;
        std::string name;
    };
    auto args = std::make_shared<Args>();
    auto* cmd = app.add_subcommand(
        stop ? "stop" : "start",
        stop ? "Take a vassal out of service (drain, stop), its file untouched, until start"
             : "Bring a vassal stopped with `liege stop` back from its file");
    cmd->add_option("name", args->name, "The vassal")->required();
    add_admin_option(*cmd, args->admin);
    cmd->callback([args, &exit_code, stop] {
        args->admin = client_admin(args->admin);
        const std::string path =
            "/vassals/" + path_segment(args->name) + (stop ? "/stop" : "/start");
        int status = 0;
        auto o = request(args->admin, "POST", path, kOutcomeTimeout, &status);
        if (!o) {
            exit_code = 1;
            return;
        }
        const std::string message = o->value("message", o->value("error", std::string()));
        if (status == 200 && o->value("ok", false)) {
            std::printf("%s: %s\n", args->name.c_str(), message.c_str());
            exit_code = 0;
            return;
        }
        std::fprintf(stderr, "liege: %s: %s failed: %s\n", args->name.c_str(),
                     stop ? "stop" : "start", message.c_str());
        exit_code = 1;
    });
}

// Prints the lines of a /logs answer; returns its "next".
uint64_t print_lines(const nlohmann::json& o) {
    for (const auto& l : o["lines"]) {
        const std::string worker = l.value("worker", std::string());
        const std::string text = l.value("text", std::string());
        std::FILE* to = l.value("stream", std::string()) == "stderr" ? stderr : stdout;
        std::fprintf(to, "[%s] %s\n", worker.c_str(), text.c_str());
    }
    std::fflush(stdout);
    std::fflush(stderr);
    return o.value("next", uint64_t{0});
}

void add_logs(CLI::App& app, int& exit_code) {
    struct Args {
        std::string admin;
        std::string name;
        bool follow = false;
        unsigned lines = 20;
    };
    auto args = std::make_shared<Args>();
    auto* cmd = app.add_subcommand("logs", "Print a vassal's last worker output lines");
    cmd->add_option("name", args->name, "The vassal")->required();
    cmd->add_flag("-f,--follow", args->follow, "Keep printing new lines until interrupted");
    cmd->add_option("-n,--lines", args->lines, "How many of the last lines (at most 1000)")
        ->capture_default_str();
    add_admin_option(*cmd, args->admin);
    cmd->callback([args, &exit_code] {
        args->admin = client_admin(args->admin);
        const std::string base = "/vassals/" + path_segment(args->name) + "/logs";
        uint64_t after = 0;
        size_t n = args->lines;
        for (;;) {
            int status = 0;
            auto o = request(args->admin, "GET",
                             base + "?n=" + std::to_string(n) + "&after=" + std::to_string(after),
                             kRequestTimeout, &status);
            if (!o) {
                exit_code = 1;
                return;
            }
            if (status != 200) {
                std::fprintf(stderr, "liege: %s\n",
                             o->value("error", std::string("no such vassal")).c_str());
                exit_code = 1;
                return;
            }
            after = print_lines(*o);
            if (!args->follow) {
                exit_code = 0;
                return;
            }
            n = 1000;                           // following: everything new since the last answer
            std::this_thread::sleep_for(250ms); // the emperor pushes nothing: poll it
        }
    });
}

} // namespace

void add_vassal_commands(CLI::App& app, int& exit_code) {
    add_stop_or_start(app, exit_code, true);
    add_stop_or_start(app, exit_code, false);
    add_logs(app, exit_code);
}

} // namespace liege::cli
