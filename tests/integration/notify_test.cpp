// Readiness that means something with socket = "inherit" (hardening, defect 9), and readiness by
// sd_notify.
//
// With socket activation the emperor binds the worker's listening socket and passes it as fd 3,
// so the kernel completes a connect to it whether or not the app is up: a TCP connect proves
// nothing. These tests pin what a user sees: such a vassal is refused unless it names an HTTP
// health path or `[health] notify = true`; an app that dies before it serves is never reported
// ready and backs off; a notify worker is ready when, and only when, it sends READY=1 to
// $NOTIFY_SOCKET (systemd's protocol, STATUS= and other keys ignored), within start_timeout; and
// real app servers run over the inherited socket as the README tells users to run them.
//
// The fixture is the harness's LiegeRunFixture (tear-down: exit 0, nothing of the instance left,
// no error-level line but those a test declares). Every wait is a bounded poll; an app that has
// to wait for the test waits for a file the test writes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <stdlib.h>

#include <nlohmann/json.hpp>

#include "harness.hpp"

using namespace liege::test;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// An app for socket = "inherit" and/or notify: serves HTTP on fd 3 (LISTEN_FDS=1) or on $PORT at
// once, tells NOTIFY_SOCKET (when set) STATUS=waiting, waits for the file $GO (when set), then
// sends READY=1 amid other keys (unless $NEVER_READY). GET / answers `pid=P notify=PATH`;
// GET /healthz prints "health check".
constexpr const char* kNotifyApp = R"PY(import http.server, os, signal, socket, threading, time

def notify(message):
    path = os.environ.get("NOTIFY_SOCKET")
    if path:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.connect(path)
        s.send(message.encode())
        s.close()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            print("health check", flush=True)
        body = ("pid=%d notify=%s" % (os.getpid(), os.environ.get("NOTIFY_SOCKET", ""))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler,
                                bind_and_activate=False)
if os.environ.get("LISTEN_FDS") == "1" and os.environ.get("LISTEN_PID") == str(os.getpid()):
    server.socket.close()
    server.socket = socket.socket(fileno=3)
else:
    server.server_bind()
    server.server_activate()
threading.Thread(target=server.serve_forever, daemon=True).start()
notify("STATUS=waiting for go")
print("waiting for go", flush=True)
go = os.environ.get("GO")
while go and not os.path.exists(go):
    time.sleep(0.01)
if not os.environ.get("NEVER_READY"):
    notify("STATUS=serving\nMAINPID=%d\nREADY=1\n" % os.getpid())
    print("sent READY=1", flush=True)
while True:
    signal.pause()  # serve until stopped
)PY";

// An app that dies on start, like one whose import fails: up for a moment, never accepting.
constexpr const char* kCrashingApp = R"PY(import sys, time
time.sleep(0.3)
print("cannot import the app", flush=True)
sys.exit(3)
)PY";

// The WSGI app of the app-server test.
constexpr const char* kWsgiApp = R"PY(import os

def application(environ, start_response):
    body = ("pid=%d listen_fds=%s" % (os.getpid(), os.environ.get("LISTEN_FDS"))).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
)PY";

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

// A process's environment, from /proc.
std::map<std::string, std::string> environment_of(int pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/environ", std::ios::binary);
    std::map<std::string, std::string> env;
    for (std::string entry; std::getline(in, entry, '\0');) {
        if (auto eq = entry.find('='); eq != std::string::npos) {
            env[entry.substr(0, eq)] = entry.substr(eq + 1);
        }
    }
    return env;
}

class Notify : public LiegeRunFixture {
protected:
    void SetUp() override {
        LiegeRunFixture::SetUp();
        write_file(vassals_ / "notify_app.py", kNotifyApp);
        write_file(vassals_ / "crash.py", kCrashingApp);
        write_file(vassals_ / "app.py", kWsgiApp);
    }

    void start() { start_liege({}); }

    // The first worker of a vassal in /status, or null.
    json worker(const std::string& name) const {
        json v = vassal(name);
        if (v.is_null() || !v["workers"].is_array() || v["workers"].empty()) {
            return json();
        }
        return v["workers"][0];
    }

    std::string go_file() const { return (root_ / "go").string(); }
};

// ---- socket = "inherit" needs a check the app answers
// --------------------------------------------

TEST_F(Notify, InheritedSocketWithoutAnHttpCheckOrNotifyIsRefused) {
    const std::string text = kAnyHost + "command = ['python3', 'crash.py']\nsocket = 'inherit'\n";
    write_file(root_ / "app.toml", text);
    Cli c = run_cli({"check", (root_ / "app.toml").string()});
    EXPECT_EQ(c.exit_code, 1) << c.out << c.err;
    EXPECT_TRUE(contains(c.err, (root_ / "app.toml").string() +
                                    ":3:10: error: socket: with \"inherit\" a connect is "
                                    "answered by the kernel"))
        << c.err;
    EXPECT_TRUE(contains(c.err, "add [health] path = \"/healthz\"")) << c.err;
    EXPECT_TRUE(contains(c.err, "or [health] notify = true")) << c.err;

    // The emperor refuses it too, naming the place: nothing is started, nothing reported ready.
    expect_error_line({"vassals.d/app.toml:3:10: error: socket: with \"inherit\""});
    write_vassal("app", text);
    ASSERT_NO_FATAL_FAILURE(start());
    json v = wait_vassal("app", [](const json& j) { return j["last_error"].is_string(); });
    ASSERT_FALSE(v.is_null());
    EXPECT_EQ(v["state"], "failed") << v.dump(2);
    EXPECT_TRUE(contains(v["last_error"].get<std::string>(), "notify = true")) << v.dump(2);
    EXPECT_EQ(count_log("vassal app: worker 1 started"), 0u) << log();
    EXPECT_EQ(count_log("vassal app: worker 1 ready in"), 0u) << log();
}

TEST_F(Notify, AnInheritedSocketAppThatDiesBeforeServingIsNeverReadyAndBacksOff) {
    // The same app twice: checked by READY=1, and by an HTTP health path. Both die at start,
    // with the emperor's socket listening for them all along.
    write_vassal("bynotify", "hosts = ['n.test']\ncommand = ['python3', 'crash.py']\n"
                             "socket = 'inherit'\n[health]\nnotify = true\n");
    write_vassal("bypath", "hosts = ['p.test']\ncommand = ['python3', 'crash.py']\n"
                           "socket = 'inherit'\n[health]\npath = '/healthz'\n");
    expect_error_line({"vassal bynotify: worker 1 (pid ", "exited unexpectedly: exit code 3"});
    expect_error_line({"vassal bypath: worker 1 (pid ", "exited unexpectedly: exit code 3"});
    ASSERT_NO_FATAL_FAILURE(start());
    for (const std::string name : {"bynotify", "bypath"}) {
        json w = wait_vassal(name, [](const json& j) { return j.value("restarts", 0) >= 2; });
        ASSERT_FALSE(w.is_null()) << name;
        EXPECT_GE(w.value("restarts", 0), 2) << name << " never backed off: " << w.dump(2);
        EXPECT_TRUE(wait_log("vassal " + name + ": worker 1 (pid ")) << name;
        EXPECT_EQ(count_log("vassal " + name + ": worker 1 ready in"), 0u)
            << name << " was reported ready although its app never served:\n"
            << log();
        EXPECT_NE(w.value("workers_ready", -1), 1) << w.dump(2);
    }
}

// ---- readiness by sd_notify ---------------------------------------------------------------------

TEST_F(Notify, ANotifyWorkerIsReadyOnlyOnceItSendsReady1) {
    write_vassal("app", kAnyHost +
                            "command = ['python3', 'notify_app.py']\nsocket = 'inherit'\n"
                            "env = { GO = '" +
                            go_file() + "' }\n[health]\nnotify = true\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_log("[app/1] waiting for go"));
    // It has told NOTIFY_SOCKET its STATUS, and the emperor's socket has been listening for it
    // since the spawn: still starting, for as long as it does not say READY=1.
    json w = worker("app");
    ASSERT_FALSE(w.is_null());
    EXPECT_EQ(w.value("state", ""), "starting") << w.dump(2);
    const int pid = w.value("pid", 0);
    ASSERT_GT(pid, 0);
    auto env = environment_of(pid);
    ASSERT_EQ(env.count("NOTIFY_SOCKET"), 1u);
    const std::string notify_socket = env["NOTIFY_SOCKET"];
    EXPECT_TRUE(fs::is_socket(notify_socket)) << notify_socket;
    EXPECT_EQ(env["LISTEN_FDS"], "1");
    EXPECT_EQ(env["LISTEN_PID"], std::to_string(pid));
    // Status again after the app has had every chance to be taken for ready: the emperor logs a
    // worker's readiness before /status shows it, so a line-by-line view is enough.
    EXPECT_EQ(count_log("vassal app: worker 1 ready in"), 0u) << log();
    EXPECT_EQ(worker("app").value("state", ""), "starting");

    write_file(go_file(), "");
    auto ready = wait_log("vassal app: worker 1 ready in");
    ASSERT_TRUE(ready) << log();
    EXPECT_TRUE(contains(*ready, "(READY=1)")) << *ready;
    EXPECT_TRUE(wait_log("[app/1] sent READY=1"));
    std::optional<Response> r;
    ASSERT_TRUE(poll_until([&] {
        r = get_once("app.test", "/");
        return r && r->status == 200;
    }));
    EXPECT_EQ(r->body, "pid=" + std::to_string(pid) + " notify=" + notify_socket);
    EXPECT_EQ(worker("app").value("restarts", -1), 0);
}

TEST_F(Notify, WithACheckNotifyDecidesReadinessAndTheCheckLiveness) {
    // The app answers its health path from the start; it is ready when it says READY=1.
    write_vassal("app", kAnyHost +
                            "command = ['python3', 'notify_app.py']\nsocket = 'inherit'\n"
                            "env = { GO = '" +
                            go_file() +
                            "' }\n[health]\nnotify = true\npath = '/healthz'\n"
                            "interval = '100ms'\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_log("[app/1] waiting for go"));
    // Serving on fd 3 already (the router's path there is the emperor's socket), not ready.
    EXPECT_EQ(worker("app").value("state", ""), "starting");
    EXPECT_EQ(count_log("[app/1] health check"), 0u) << "no readiness check with notify";

    write_file(go_file(), "");
    auto ready = wait_log("vassal app: worker 1 ready in");
    ASSERT_TRUE(ready) << log();
    EXPECT_TRUE(contains(*ready, "(READY=1)")) << *ready;
    const auto from = mark();
    EXPECT_TRUE(poll_until([&] { return count_log("[app/1] health check", from) >= 3; }))
        << "the health path is the liveness check once it is ready:\n"
        << log();
}

TEST_F(Notify, TheEmperorsOwnNotifySocketReachesNoWorker) {
    // Under systemd the emperor may have a NOTIFY_SOCKET of its own: it is not its workers' to
    // write to (gunicorn would tell systemd it is ready), notify or not.
    struct EmperorNotifySocket {
        EmperorNotifySocket() {
            ::setenv("NOTIFY_SOCKET", "/run/systemd/notify-of-the-emperor", 1);
        }
        ~EmperorNotifySocket() { ::unsetenv("NOTIFY_SOCKET"); }
    };
    std::optional<EmperorNotifySocket> emperor_env(std::in_place);
    write_vassal("plain", "hosts = ['plain.test']\ncommand = ['python3', 'notify_app.py']\n");
    write_vassal("app", "hosts = ['app.test']\ncommand = ['python3', 'notify_app.py']\n"
                        "[health]\nnotify = true\n");
    ASSERT_NO_FATAL_FAILURE(start());
    emperor_env.reset(); // the emperor has it; the rest of the test binary must not
    for (const std::string name : {"plain", "app"}) {
        json v = wait_vassal(name, [](const json& j) { return j.value("workers_ready", 0) == 1; });
        ASSERT_EQ(v.value("workers_ready", 0), 1) << name << ": " << v.dump(2);
        auto env = environment_of(v["workers"][0].value("pid", 0));
        ASSERT_EQ(env.count("LIEGE_VASSAL"), 1u) << name << ": the environment was not read";
        auto it = env.find("NOTIFY_SOCKET");
        if (name == "plain") {
            EXPECT_TRUE(it == env.end()) << name << ": " << it->second;
        } else {
            ASSERT_TRUE(it != env.end());
            EXPECT_NE(it->second, "/run/systemd/notify-of-the-emperor") << "its own, not that";
            EXPECT_TRUE(it->second.ends_with(".notify")) << it->second;
        }
    }
}

TEST_F(Notify, ANotifyWorkerWithoutReady1WithinStartTimeoutFails) {
    // It listens (on its own port, where a TCP connect would call it ready) but never says so.
    write_vassal("app", kAnyHost + "command = ['python3', 'notify_app.py']\n"
                                   "env = { NEVER_READY = '1' }\n"
                                   "[health]\nnotify = true\nstart_timeout = '1s'\n");
    expect_error_line({"vassal app: worker 1: not ready after 1s (no READY=1 on NOTIFY_SOCKET)"});
    ASSERT_NO_FATAL_FAILURE(start());
    EXPECT_TRUE(wait_log("vassal app: worker 1: not ready after 1s (no READY=1 on NOTIFY_SOCKET)"));
    json v = wait_vassal("app", [](const json& j) { return j.value("restarts", 0) >= 1; });
    EXPECT_GE(v.value("restarts", 0), 1) << v.dump(2);
    EXPECT_EQ(count_log("vassal app: worker 1 ready in"), 0u) << log();
}

TEST_F(Notify, ADaemonIsReadyOnSystemdNotifyNotAfterASecondUp) {
    if (!fs::exists("/usr/bin/systemd-notify")) {
        GTEST_SKIP() << "no systemd-notify on this box";
    }
    // systemd-notify is a child of the shell: its READY=1 comes from another pid than the
    // worker's, as systemd's NotifyAccess=all allows.
    write_vassal("bg", "type = 'daemon'\ncommand = ['sh', '-c', 'echo waiting for go; "
                       "while [ ! -e " +
                           go_file() +
                           " ]; do sleep 0.01; done; "
                           "systemd-notify --ready --status=up && echo notified; "
                           "exec sleep 600']\n[health]\nnotify = true\n");
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_TRUE(wait_log("[bg/1] waiting for go"));
    const auto waiting_since = Clock::now();
    // A daemon without notify would be ready after a second up; this one keeps starting.
    ASSERT_TRUE(poll_until([&] { return Clock::now() - waiting_since >= 1500ms; }, 5s, 50ms));
    EXPECT_EQ(worker("bg").value("state", ""), "starting") << vassal("bg").dump(2);
    EXPECT_EQ(count_log("vassal bg: worker 1 ready in"), 0u) << log();

    write_file(go_file(), "");
    EXPECT_TRUE(wait_log("[bg/1] notified")) << log();
    auto ready = wait_log("vassal bg: worker 1 ready in");
    ASSERT_TRUE(ready) << log();
    EXPECT_TRUE(contains(*ready, "(READY=1)")) << *ready;
    json w = wait_vassal("bg", [](const json& j) { return j.value("workers_ready", 0) == 1; });
    EXPECT_EQ(w.value("workers_ready", 0), 1) << w.dump(2);
}

// ---- real app servers over the inherited socket
// ---------------------------------------------------

TEST_F(Notify, GunicornAndUwsgiServeOverTheInheritedSocket) {
    // gunicorn reads LISTEN_FDS itself and must be given no -b (`-b fd://3` crashes: it has
    // taken fd 3 over by then); its arbiter sends READY=1 when NOTIFY_SOCKET is set. uWSGI picks
    // up LISTEN_FDS too and needs only to be told the protocol.
    write_vassal("gpath", "hosts = ['gpath.test']\n"
                          "command = ['gunicorn', 'app:application']\nsocket = 'inherit'\n"
                          "env = { PYTHONDONTWRITEBYTECODE = '1' }\n"
                          "[health]\npath = '/healthz'\n");
    write_vassal("gnotify", "hosts = ['gnotify.test']\n"
                            "command = ['gunicorn', 'app:application']\nsocket = 'inherit'\n"
                            "env = { PYTHONDONTWRITEBYTECODE = '1' }\n"
                            "[health]\nnotify = true\n");
    write_vassal("uwsgi", "hosts = ['uwsgi.test']\n"
                          "command = ['uwsgi', '--plugin', 'python3', '--protocol', 'http11', "
                          "'--wsgi-file', 'app.py', '--disable-logging']\nsocket = 'inherit'\n"
                          "[health]\npath = '/healthz'\n");
    ASSERT_NO_FATAL_FAILURE(start());
    for (const std::string name : {"gpath", "gnotify", "uwsgi"}) {
        json v = wait_vassal(name, [](const json& j) { return j.value("workers_ready", 0) == 1; });
        ASSERT_EQ(v.value("workers_ready", 0), 1) << name << ": " << v.dump(2) << log();
        std::optional<Response> r;
        EXPECT_TRUE(poll_until([&] {
            r = get_once(name + ".test", "/");
            return r && r->status == 200;
        })) << name;
        ASSERT_TRUE(r) << name;
        EXPECT_TRUE(contains(r->body, "listen_fds=")) << name << ": " << r->body;
        EXPECT_EQ(v["workers"][0].value("restarts", -1), 0) << name << ": " << v.dump(2);
    }
    EXPECT_TRUE(wait_log("vassal gnotify: worker 1 ready in"));
    EXPECT_TRUE(contains(*wait_log("vassal gnotify: worker 1 ready in"), "(READY=1)"));
    // The gunicorn arbiter listens on what it inherited (the worker's address in /status), not
    // on an address of its own (its default is 127.0.0.1:8000).
    const std::string address = worker("gpath").value("address", "");
    ASSERT_FALSE(address.empty()) << vassal("gpath").dump(2);
    EXPECT_TRUE(wait_log("Listening at: http://" + address + " (")) << address << "\n" << log();
    EXPECT_EQ(count_log("Listening at: http://127.0.0.1:8000"), 0u) << log();
}

} // namespace
