// `liege reload NAME | --all [--admin ADDR]`: reloads one vassal (or every one) through the
// admin API and waits for the outcome. Prints it; exits 1 on a failed reload or an unknown name.
#include <cctype>
#include <cstdio>
#include <memory>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "admin_client.hpp"
#include "commands.hpp"

namespace liege::cli {

namespace {

using namespace std::chrono_literals;

// A reload lasts as long as the new generation takes to start and the old one to drain; the
// emperor bounds both (start_timeout, drain_timeout). This only guards against a hung emperor.
constexpr auto kReloadTimeout = 15min;

// Prints one outcome ({"vassal", "ok", "message"}); returns its ok.
bool report(const nlohmann::json& o) {
    const std::string name = o.value("vassal", std::string("?"));
    const std::string message = o.value("message", std::string());
    if (o.value("ok", false)) {
        std::printf("%s: %s\n", name.c_str(), message.c_str());
        return true;
    }
    std::fprintf(stderr, "liege: %s: reload failed: %s\n", name.c_str(), message.c_str());
    return false;
}

} // namespace

void add_reload_command(CLI::App& app, int& exit_code) {
    struct Args {
        std::string admin; // --admin; see client_admin()
        std::string name;
        bool all = false;
    };
    auto args = std::make_shared<Args>();
    auto* cmd = app.add_subcommand(
        "reload", "Reload a vassal (or --all) and wait until it has finished or failed");
    auto* name = cmd->add_option("name", args->name, "The vassal to reload");
    auto* all = cmd->add_flag("--all", args->all, "Reload every vassal");
    name->excludes(all);
    add_admin_option(*cmd, args->admin);
    cmd->callback([args, &exit_code] {
        args->admin = client_admin(args->admin);
        exit_code = 1;
        if (args->name.empty() && !args->all) {
            std::fprintf(stderr, "liege: reload: name a vassal, or give --all\n");
            return;
        }
        const std::string path =
            args->all ? "/reload" : "/vassals/" + path_segment(args->name) + "/reload";
        AdminReply reply;
        nlohmann::json body;
        try {
            reply = admin_request(args->admin, "POST", path, kReloadTimeout);
            body = nlohmann::json::parse(reply.body);
        } catch (const nlohmann::json::exception& e) {
            std::fprintf(stderr, "liege: the admin API's answer (%d) is not JSON: %s\n",
                         reply.status, e.what());
            return;
        } catch (const std::runtime_error& e) {
            std::fprintf(stderr, "liege: %s\n", e.what());
            return;
        }
        if (reply.status == 404) {
            std::fprintf(stderr, "liege: %s\n",
                         body.value("error", "unknown vassal '" + args->name + "'").c_str());
            return;
        }
        if (reply.status != 200 && reply.status != 500) {
            std::fprintf(stderr, "liege: the admin API answered %d: %s\n", reply.status,
                         body.value("error", reply.body).c_str());
            return;
        }
        bool ok = true;
        if (args->all) {
            const auto& vassals = body.contains("vassals") ? body["vassals"] : nlohmann::json();
            if (!vassals.is_array() || vassals.empty()) {
                std::printf("no vassals to reload\n");
            } else {
                for (const auto& o : vassals) {
                    ok = report(o) && ok;
                }
            }
        } else {
            ok = report(body);
        }
        exit_code = ok && reply.status == 200 ? 0 : 1;
    });
}

} // namespace liege::cli
