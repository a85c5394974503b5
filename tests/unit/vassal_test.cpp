#include <gtest/gtest.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "liege/vassal.hpp"

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using liege::Diagnostic;
using liege::Vassal;
using liege::VassalLoad;

namespace {

class TempDir {
public:
    TempDir() {
        std::string tmpl = (fs::temp_directory_path() / "liege-vassal-XXXXXX").string();
        if (::mkdtemp(tmpl.data()) == nullptr) {
            throw std::runtime_error("mkdtemp failed");
        }
        path_ = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    const fs::path& path() const { return path_; }

    fs::path write(const std::string& name, const std::string& text) const {
        fs::path file = path_ / name;
        std::ofstream(file) << text;
        return file;
    }

private:
    fs::path path_;
};

// The emperor's environment as the tests see it: only what a test puts here is set.
liege::EnvLookup fake_env(std::map<std::string, std::string> vars = {}) {
    return [vars = std::move(vars)](const std::string& name) -> std::optional<std::string> {
        auto it = vars.find(name);
        if (it == vars.end()) {
            return std::nullopt;
        }
        return it->second;
    };
}

class VassalParse : public ::testing::Test {
protected:
    // Parses `text` as the vassal file `name`. A web vassal gets `hosts = ["*"]` from a
    // _defaults.toml layer under it (the file's own `hosts` win), so that tests of other keys
    // need not repeat it; parse_alone() has no such layer.
    VassalLoad parse(const std::string& text, const std::string& name = "app.toml") {
        if (text.find("'daemon'") != std::string::npos ||
            text.find("\"daemon\"") != std::string::npos) {
            return parse_alone(text, name);
        }
        return liege::parse_vassal_layers(
            {{dir_.path() / "_defaults.toml", "hosts = [\"*\"]\n"}, {dir_.path() / name, text}},
            dir_.path() / name, fake_env({{"HOME", "/home/me"}}));
    }
    VassalLoad parse_alone(const std::string& text, const std::string& name = "app.toml") {
        return liege::parse_vassal(text, dir_.path() / name, fake_env({{"HOME", "/home/me"}}));
    }

    // The single diagnostic a file produces, as "LINE:COL: MESSAGE".
    std::string only_error(const std::string& text) {
        VassalLoad load = parse(text);
        EXPECT_FALSE(load.ok()) << text;
        if (load.errors.size() != 1) {
            std::string all;
            for (const auto& d : load.errors) {
                all += d.str() + "\n";
            }
            ADD_FAILURE() << "expected one error for:\n" << text << "got:\n" << all;
            return all;
        }
        const Diagnostic& d = load.errors[0];
        return std::to_string(d.at.line) + ":" + std::to_string(d.at.column) + ": " + d.message;
    }

    TempDir dir_;
};

} // namespace

TEST_F(VassalParse, MinimalFileGetsDefaults) {
    VassalLoad load = parse("command = [\"app\"]\n");
    ASSERT_TRUE(load.ok()) << load.errors[0].str();
    const Vassal& v = *load.vassal;
    EXPECT_EQ(v.name, "app");
    EXPECT_EQ(v.file, dir_.path() / "app.toml");
    EXPECT_EQ(v.dir, dir_.path());
    EXPECT_EQ(v.command, std::vector<std::string>{"app"});
    EXPECT_EQ(v.workers, 1);
    EXPECT_EQ(v.concurrency, 0);
    EXPECT_EQ(v.queue.size, 100u);
    EXPECT_EQ(v.queue.timeout, 30s);
    EXPECT_EQ(v.hosts, std::vector<std::string>{"*"});
    EXPECT_EQ(v.path, "/");
    EXPECT_EQ(v.cwd, ".");
    EXPECT_TRUE(v.env.empty());
    EXPECT_EQ(v.socket, liege::SocketKind::Tcp);
    EXPECT_EQ(v.health.path, "");
    EXPECT_EQ(v.health.interval, 2s);
    EXPECT_EQ(v.health.timeout, 1s);
    EXPECT_EQ(v.health.start_timeout, 30s);
    EXPECT_EQ(v.reload.strategy, liege::ReloadStrategy::Rolling);
    EXPECT_EQ(v.reload.drain_timeout, 30s);
    EXPECT_EQ(v.stop.signal, SIGTERM);
    EXPECT_EQ(v.stop.timeout, 10s);
    EXPECT_EQ(v.working_dir({}), dir_.path());
    EXPECT_EQ(load.content_hash, v.content_hash);
    EXPECT_EQ(v.type, liege::VassalType::Web);
    EXPECT_TRUE(v.after.empty());
    EXPECT_TRUE(v.watch.paths.empty());
}

TEST_F(VassalParse, WebVassalMustNameItsHosts) {
    VassalLoad load = parse_alone("command = [\"app\", \"${PORT}\"]\n");
    ASSERT_FALSE(load.ok());
    ASSERT_EQ(load.errors.size(), 1u);
    EXPECT_EQ(load.errors[0].str(),
              (dir_.path() / "app.toml").string() +
                  ":1:1: error: missing required key 'hosts': the hosts this vassal serves, like "
                  "[\"app.localhost\"]; [\"*\"] makes it the default vassal, for every host no "
                  "other vassal claims");
    EXPECT_TRUE(parse_alone("hosts = [\"*\"]\ncommand = [\"app\"]\n").ok());
}

TEST_F(VassalParse, DesignExampleParses) {
    fs::create_directory(dir_.path() / "www");
    VassalLoad load = parse(R"(
command = ["python3", "-m", "http.server", "--bind", "127.0.0.1", "${PORT}"]
workers = 2
hosts   = ["Hello.LOCALHOST", "*.hello.test", "*"]
path    = "/api/"
cwd     = "www"
env     = { GREETING = "hi", HOME_DIR = "${env:HOME}", A = "${NAME}-${WORKER}" }
socket  = "inherit"

[health]
path = "/healthz"
interval = "500ms"
timeout = "250ms"
start_timeout = "1m"

[reload]
strategy = "bluegreen"
drain_timeout = "5s"

[stop]
signal = "SIGQUIT"
timeout = "3s"
)",
                            "hello.toml");
    ASSERT_TRUE(load.ok()) << load.errors[0].str();
    const Vassal& v = *load.vassal;
    EXPECT_EQ(v.name, "hello");
    EXPECT_EQ(v.command.back(), "${PORT}");
    EXPECT_EQ(v.workers, 2);
    EXPECT_EQ(v.hosts, (std::vector<std::string>{"hello.localhost", "*.hello.test", "*"}));
    EXPECT_EQ(v.hosts_at, (liege::SourcePosition{4, 11}));
    EXPECT_EQ(v.path, "/api");
    EXPECT_EQ(v.path_at, (liege::SourcePosition{5, 11}));
    EXPECT_EQ(v.cwd, "www");
    EXPECT_EQ(v.working_dir({}), dir_.path() / "www");
    using Env = std::vector<std::pair<std::string, std::string>>;
    EXPECT_EQ(v.env,
              (Env{{"A", "${NAME}-${WORKER}"}, {"GREETING", "hi"}, {"HOME_DIR", "${env:HOME}"}}));
    EXPECT_EQ(v.socket, liege::SocketKind::Inherit);
    EXPECT_EQ(v.health.path, "/healthz");
    EXPECT_EQ(v.health.interval, 500ms);
    EXPECT_EQ(v.health.timeout, 250ms);
    EXPECT_EQ(v.health.start_timeout, 60s);
    EXPECT_EQ(v.reload.strategy, liege::ReloadStrategy::BlueGreen);
    EXPECT_EQ(v.reload.drain_timeout, 5s);
    EXPECT_EQ(v.stop.signal, SIGQUIT);
    EXPECT_EQ(v.stop.timeout, 3s);
}

TEST_F(VassalParse, DiagnosticFormatIsFileLineColumn) {
    VassalLoad load = parse("command = [\"app\"]\nworkers = \"two\"\n");
    ASSERT_EQ(load.errors.size(), 1u);
    EXPECT_EQ(load.errors[0].str(), (dir_.path() / "app.toml").string() +
                                        ":2:11: error: workers: expected an integer ≥ 1, got "
                                        "the string \"two\"");
}

// Each bad value sits on line 2 (line 3 in a section) after a valid command.
TEST_F(VassalParse, TypeErrorsNameLineColumnAndWhatWasExpected) {
    struct Case {
        std::string toml;
        std::string expected;
    };
    const std::string cmd = "command = [\"app\"]\n";
    const std::vector<Case> cases = {
        {"command = \"python3 app.py\"\n",
         "1:11: command: expected an array of strings, like [\"python3\", \"app.py\"], got string"},
        {"command = []\n", "1:11: command: expected at least the program to run, got an empty "
                           "array"},
        {"command = [\"app\", 8080]\n", "1:19: command[1]: expected a string, got integer"},
        {"command = [\"\"]\n", "1:12: command[0]: expected the program to run, got an empty "
                               "string"},
        {cmd + "workers = \"2x\"\n",
         "2:11: workers: expected an integer ≥ 1, got the string \"2x\""},
        {cmd + "workers = 0\n", "2:11: workers: expected an integer ≥ 1, got 0"},
        {cmd + "workers = 1.5\n", "2:11: workers: expected an integer ≥ 1, got float"},
        {cmd + "workers = 100000\n", "2:11: workers: expected at most 1024 workers, got 100000"},
        {cmd + "concurrency = \"one\"\n",
         "2:15: concurrency: expected an integer from 0 to 1024, got the string \"one\""},
        {cmd + "concurrency = 1.0\n",
         "2:15: concurrency: expected an integer from 0 to 1024, got float"},
        {cmd + "concurrency = -1\n",
         "2:15: concurrency: expected an integer from 0 to 1024, got -1"},
        {cmd + "concurrency = 1025\n",
         "2:15: concurrency: expected an integer from 0 to 1024, got 1025"},
        {cmd + "queue = 100\n",
         "2:9: queue: expected a table ([queue] with size, timeout), got integer"},
        {cmd + "[queue]\nsize = \"\"\n",
         "3:8: queue.size: expected an integer from 0 to 100000, got the string \"\""},
        {cmd + "[queue]\nsize = -1\n",
         "3:8: queue.size: expected an integer from 0 to 100000, got -1"},
        {cmd + "[queue]\nsize = 100001\n",
         "3:8: queue.size: expected an integer from 0 to 100000, got 100001"},
        {cmd + "[queue]\ntimeout = 30\n",
         "3:11: queue.timeout: expected a duration like \"2s\" or \"500ms\", got integer"},
        {cmd + "[queue]\ntimeout = \"0s\"\n",
         "3:11: queue.timeout: expected a duration above zero, got \"0s\""},
        {cmd + "[queue]\ntimeout = \"30\"\n",
         "3:11: queue.timeout: invalid duration '30': expected a number with a unit, like 500ms, "
         "2s, 5m, 1h"},
        {cmd + "hosts = \"a.test\"\n",
         "2:9: hosts: expected an array of host patterns, like [\"app.example.com\", "
         "\"*.example.com\", \"*\"], got string"},
        {cmd + "hosts = []\n", "2:9: hosts: expected at least one host pattern ([\"*\"] serves "
                               "any host)"},
        {cmd + "hosts = [\"a.test\", 5]\n",
         "2:20: hosts[1]: expected a host pattern string, got integer"},
        {cmd + "hosts = [\"a.test:8080\"]\n",
         "2:10: hosts[0]: invalid host pattern \"a.test:8080\": a host pattern has no port (the "
         "port in the Host header is ignored)"},
        {cmd + "hosts = [\"a.*.test\"]\n",
         "2:10: hosts[0]: invalid host pattern \"a.*.test\": '*' is allowed only as \"*\" or as "
         "the first label, as in \"*.example.com\""},
        {cmd + "hosts = [\"http://a.test\"]\n",
         "2:10: hosts[0]: invalid host pattern \"http://a.test\": expected a host name, not a "
         "URL"},
        {cmd + "hosts = [\"a..test\"]\n",
         "2:10: hosts[0]: invalid host pattern \"a..test\": expected dot-separated labels of 1 "
         "to 63 characters"},
        {cmd + "hosts = [\"a.test\", \"A.test\"]\n", "2:20: hosts[1]: \"a.test\" is listed twice"},
        {cmd + "path = 1\n", "2:8: path: expected a path starting with \"/\", got integer"},
        {cmd + "path = \"api\"\n", "2:8: path: expected a path starting with \"/\", got \"api\""},
        {cmd + "path = \"/a b\"\n", "2:8: path: \"/a b\" contains a space; expected a URL path"},
        {cmd + "path = \"/a?b\"\n", "2:8: path: \"/a?b\" contains '?'; expected a URL path"},
        {cmd + "cwd = 1\n", "2:7: cwd: expected a directory path, got integer"},
        {cmd + "cwd = \"\"\n", "2:7: cwd: expected a directory path, got an empty string"},
        {cmd + "env = \"A=1\"\n",
         "2:7: env: expected a table of strings, like { GREETING = \"hi\" }, got string"},
        {cmd + "env = { A = 1 }\n",
         "2:13: env.A: expected a string, got integer (environment values are text: quote it)"},
        {cmd + "env = { PORT = \"1\" }\n", "2:9: env.PORT: PORT is set by liege for every worker"},
        {cmd + "socket = \"unx\"\n",
         "2:10: socket: expected \"tcp\", \"unix\" or \"inherit\", got \"unx\"; did you mean "
         "\"unix\"?"},
        {cmd + "socket = 1\n",
         "2:10: socket: expected \"tcp\", \"unix\" or \"inherit\", got integer"},
        {cmd + "health = \"/healthz\"\n",
         "2:10: health: expected a table ([health] with path, tcp, command, interval, timeout, "
         "start_timeout, notify), got string"},
        {cmd + "[health]\npath = \"healthz\"\n",
         "3:8: health.path: expected a path starting with \"/\", got \"healthz\""},
        {cmd + "[health]\ninterval = 2\n",
         "3:12: health.interval: expected a duration like \"2s\" or \"500ms\", got integer"},
        {cmd + "[health]\ntimeout = \"1 s\"\n",
         "3:11: health.timeout: invalid duration '1 s': expected a number with a unit, like "
         "500ms, 2s, 5m, 1h"},
        {cmd + "[health]\nstart_timeout = \"0s\"\n",
         "3:17: health.start_timeout: expected a duration above zero, got \"0s\""},
        {cmd + "[reload]\nstrategy = \"blue-green\"\n",
         "3:12: reload.strategy: expected \"rolling\", \"bluegreen\" or \"restart\", got "
         "\"blue-green\"; did "
         "you mean \"bluegreen\"?"},
        {cmd + "[reload]\ndrain_timeout = 30\n",
         "3:17: reload.drain_timeout: expected a duration like \"2s\" or \"500ms\", got integer"},
        {cmd + "reload = []\n",
         "2:10: reload: expected a table ([reload] with strategy, drain_timeout), got array"},
        {cmd + "[stop]\nsignal = \"SIGTREM\"\n",
         "3:10: stop.signal: unknown signal \"SIGTREM\"; did you mean \"SIGTERM\"?"},
        {cmd + "[stop]\nsignal = 15\n",
         "3:10: stop.signal: expected a signal name like \"SIGTERM\", got integer"},
        {cmd + "[stop]\nsignal = \"SIGSEGV\"\n",
         "3:10: stop.signal: expected a signal name (SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, "
         "SIGUSR2, SIGKILL, SIGWINCH, SIGABRT, SIGALRM), got \"SIGSEGV\""},
        {cmd + "[stop]\ntimeout = \"10\"\n",
         "3:11: stop.timeout: invalid duration '10': expected a number with a unit, like 500ms, "
         "2s, 5m, 1h"},
    };
    for (const Case& c : cases) {
        EXPECT_EQ(only_error(c.toml), c.expected) << c.toml;
    }
}

TEST_F(VassalParse, ConcurrencyAndQueueBounds) {
    VassalLoad load = parse("command = [\"app\"]\nconcurrency = 1\n"
                            "[queue]\nsize = 0\ntimeout = \"250ms\"\n");
    ASSERT_TRUE(load.ok()) << load.errors[0].str();
    EXPECT_EQ(load.vassal->concurrency, 1);
    EXPECT_EQ(load.vassal->queue.size, 0u); // nothing waits: no free slot is an immediate 503
    EXPECT_EQ(load.vassal->queue.timeout, 250ms);

    load = parse("command = [\"app\"]\nconcurrency = 1024\n[queue]\nsize = 100000\n");
    ASSERT_TRUE(load.ok()) << load.errors[0].str();
    EXPECT_EQ(load.vassal->concurrency, 1024);
    EXPECT_EQ(load.vassal->queue.size, 100000u);
    EXPECT_EQ(load.vassal->queue.timeout, 30s) << "a [queue] without timeout keeps the default";

    load = parse("command = [\"app\"]\nconcurrency = 0\n[queue]\ntimeout = \"2m\"\n");
    ASSERT_TRUE(load.ok()) << load.errors[0].str();
    EXPECT_EQ(load.vassal->concurrency, 0);
    EXPECT_EQ(load.vassal->queue.size, 100u);
    EXPECT_EQ(load.vassal->queue.timeout, 120s);
}

TEST_F(VassalParse, ZeroDurationsAllowedWhereTheyMeanImmediately) {
    VassalLoad load = parse("command = [\"app\"]\n[reload]\ndrain_timeout = \"0s\"\n"
                            "[stop]\ntimeout = \"0ms\"\nsignal = \"int\"\n");
    ASSERT_TRUE(load.ok()) << load.errors[0].str();
    EXPECT_EQ(load.vassal->reload.drain_timeout, 0ms);
    EXPECT_EQ(load.vassal->stop.timeout, 0ms);
    EXPECT_EQ(load.vassal->stop.signal, SIGINT); // case and the "SIG" prefix are optional
    EXPECT_EQ(liege::signal_name(SIGINT), "SIGINT");
}

TEST_F(VassalParse, MissingCommandIsAnErrorAtTheStartOfTheFile) {
    EXPECT_EQ(only_error("workers = 2\n"),
              "1:1: missing required key 'command': expected an array of strings, like "
              "[\"python3\", \"app.py\", \"${PORT}\"]");
}

TEST_F(VassalParse, SyntaxErrorIsReportedWhereTomlSawIt) {
    std::string e = only_error("command = [\"app\"]\nworkers = \n");
    EXPECT_TRUE(e.starts_with("2:")) << e;
    e = only_error("command = [\"app\"]\ncommand = [\"b\"]\n");
    EXPECT_TRUE(e.starts_with("2:")) << e;
    EXPECT_NE(e.find("redefine"), std::string::npos) << e;
}

TEST_F(VassalParse, UnknownKeysSuggestTheClosestOne) {
    const std::string cmd = "command = [\"app\"]\n";
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"workrs = 2\n", "2:1: unknown key 'workrs'; did you mean 'workers'?"},
        {"Hosts = [\"a\"]\n", "2:1: unknown key 'Hosts'; did you mean 'hosts'?"},
        {"concurency = 1\n", "2:1: unknown key 'concurency'; did you mean 'concurrency'?"},
        {"[helth]\npath = \"/\"\n", "2:2: unknown key 'helth'; did you mean 'health'?"},
        {"[health]\nintervall = \"1s\"\n",
         "3:1: unknown key 'intervall' in [health]; did you mean 'interval'?"},
        {"[queue]\nsise = 10\n", "3:1: unknown key 'sise' in [queue]; did you mean 'size'?"},
        {"drain_timeout = \"1s\"\n",
         "2:1: unknown key 'drain_timeout'; did you mean 'drain_timeout' in [reload]?"},
        {"size = 10\n", "2:1: unknown key 'size'; did you mean 'size' in [queue]?"},
        {"frobnicate = true\n",
         "2:1: unknown key 'frobnicate'; expected one of type, command, workers, concurrency, "
         "hosts, path, cwd, env, socket, health, queue, reload, stop, tls, profile, after, watch, "
         "recycle, user, group, no_new_privs, limits, upstream"},
        {"[stop]\nsignal = \"SIGTERM\"\ngrace = \"1s\"\n",
         "4:1: unknown key 'grace' in [stop]; expected one of signal, timeout"},
        {"[queue]\nlength = 10\n",
         "3:1: unknown key 'length' in [queue]; expected one of size, timeout"},
    };
    for (const auto& [toml, expected] : cases) {
        EXPECT_EQ(only_error(cmd + toml), expected) << toml;
    }
}

TEST_F(VassalParse, EveryErrorOfAFileIsReportedInFileOrder) {
    VassalLoad load = parse("workers = \"x\"\n"
                            "zzz = 1\n"
                            "hosts = [1]\n"
                            "[stop]\n"
                            "signal = \"NOPE\"\n");
    ASSERT_EQ(load.errors.size(), 5u);
    std::vector<std::pair<uint32_t, uint32_t>> at;
    for (const auto& d : load.errors) {
        at.emplace_back(d.at.line, d.at.column);
    }
    EXPECT_EQ(at, (std::vector<std::pair<uint32_t, uint32_t>>{
                      {1, 1}, {1, 11}, {2, 1}, {3, 10}, {5, 10}}));
    EXPECT_NE(load.errors[0].message.find("missing required key 'command'"), std::string::npos);
}

TEST_F(VassalParse, PlaceholdersThatAreValid) {
    VassalLoad load = parse(R"(command = ["app", "--port=${PORT}", "--name", "${NAME}-${WORKER}",
  "${env:HOME}", "${env:UNSET_VAR:-fallback}", "$${literal}", "$$", "$HOME"]
env = { X = "${env:UNSET_VAR:-}" }
)");
    ASSERT_TRUE(load.ok()) << load.errors[0].str();
}

TEST_F(VassalParse, PlaceholderErrorsPointAtTheDollar) {
    EXPECT_EQ(only_error("command = [\"app\", \"--port=${PROT}\"]\n"),
              "1:27: command[1]: unknown placeholder '${PROT}'; expected ${PORT}, ${SOCKET}, "
              "${NAME}, ${WORKER}, ${INSTANCE}, ${PROFILE}, ${env:VAR} or ${env:VAR:-default}; "
              "did you mean '${PORT}'?");
    EXPECT_EQ(only_error("command = [\"sh\", \"-c\", \"cd ${HOME}\"]\n"),
              "1:28: command[2]: unknown placeholder '${HOME}'; expected ${PORT}, ${SOCKET}, "
              "${NAME}, ${WORKER}, ${INSTANCE}, ${PROFILE}, ${env:VAR} or ${env:VAR:-default}; "
              "did you mean "
              "'${env:HOME}'? (write $${ for a literal ${)");
    EXPECT_EQ(only_error("command = ['app', '${PORT']\n"),
              "1:20: command[1]: unterminated placeholder: '${' without a closing '}' (write $${ "
              "for a literal ${)");
    EXPECT_EQ(only_error("command = [\"app\"]\ncwd = \"${env:NOT_SET}/x\"\n"),
              "2:8: cwd: environment variable NOT_SET is not set; set it or give a default: "
              "'${env:NOT_SET:-value}'");
    EXPECT_EQ(only_error("command = [\"app\"]\nenv = { A = \"é ${env:1BAD}\" }\n"),
              "2:16: env.A: invalid environment variable name \"1BAD\" in '${env:1BAD}'");
    // An escape before the placeholder: the string's start is the best position there is.
    EXPECT_EQ(only_error("command = [\"a\\tb ${X}\"]\n").substr(0, 5), "1:12:");
}

TEST_F(VassalParse, SocketKindDecidesWhichAddressPlaceholderExists) {
    EXPECT_EQ(only_error("command = [\"app\", \"${SOCKET}\"]\n"),
              "1:20: command[1]: ${SOCKET} is set only with socket = \"unix\"; use ${PORT} or set "
              "socket = \"unix\"");
    EXPECT_EQ(only_error("socket = \"unix\"\ncommand = [\"app\", \"${PORT}\"]\n"),
              "2:20: command[1]: ${PORT} is not set with socket = \"unix\"; use ${SOCKET}");
    EXPECT_TRUE(parse("socket = \"unix\"\ncommand = [\"app\", \"--bind=unix:${SOCKET}\"]\n").ok());
}

TEST_F(VassalParse, EnvUsesTheEmperorsEnvironmentAtParseTime) {
    auto load = liege::parse_vassal("hosts = [\"*\"]\ncommand = [\"app\", \"${env:TOKEN}\"]\n",
                                    dir_.path() / "a.toml", fake_env({{"TOKEN", "t"}}));
    EXPECT_TRUE(load.ok());
    load = liege::parse_vassal("command = [\"app\", \"${env:TOKEN}\"]\n", dir_.path() / "a.toml",
                               fake_env());
    EXPECT_FALSE(load.ok());
}

TEST(Expand, FillsEveryPlaceholder) {
    liege::PlaceholderValues values;
    values.port = 8001;
    values.socket = "/run/app.sock";
    values.name = "hello";
    values.worker = 3;
    values.env = fake_env({{"HOME", "/home/me"}, {"EMPTY", ""}});
    EXPECT_EQ(liege::expand("--port=${PORT}", values), "--port=8001");
    EXPECT_EQ(liege::expand("unix:${SOCKET}", values), "unix:/run/app.sock");
    EXPECT_EQ(liege::expand("${NAME}-${WORKER}.log", values), "hello-3.log");
    EXPECT_EQ(liege::expand("${env:HOME}/app", values), "/home/me/app");
    EXPECT_EQ(liege::expand("${env:NOPE:-/tmp}", values), "/tmp");
    EXPECT_EQ(liege::expand("${env:EMPTY:-x}", values), ""); // set but empty is set
    EXPECT_EQ(liege::expand("${env:NOPE}", values), "");
    EXPECT_EQ(liege::expand("$${PORT} $$ $HOME $", values), "${PORT} $$ $HOME $");
    EXPECT_EQ(liege::expand("${BOGUS} ${PORT", values), "${BOGUS} ${PORT");
    EXPECT_EQ(liege::expand("", values), "");
}

TEST_F(VassalParse, WorkingDirIsResolvedAgainstTheVassalDirectory) {
    fs::create_directories(dir_.path() / "apps" / "hello");
    VassalLoad load = parse("command = [\"app\"]\ncwd = \"apps/${NAME}\"\n", "hello.toml");
    ASSERT_TRUE(load.ok()) << load.errors[0].str();
    liege::PlaceholderValues values;
    values.name = "hello";
    EXPECT_EQ(load.vassal->working_dir(values), dir_.path() / "apps" / "hello");

    load = parse("command = [\"app\"]\ncwd = \"/\"\n");
    ASSERT_TRUE(load.ok());
    EXPECT_EQ(load.vassal->working_dir({}), fs::path("/"));

    EXPECT_EQ(only_error("command = [\"app\"]\ncwd = \"nope\"\n"),
              "2:7: cwd: \"" + (dir_.path() / "nope").string() + "\" does not exist");
    // Per-worker directories can only be checked when the worker starts.
    EXPECT_TRUE(parse("command = [\"app\"]\ncwd = \"w${WORKER}\"\n").ok());
}

TEST_F(VassalParse, HostsAreLowerCasedWithoutTrailingDot) {
    VassalLoad load =
        parse("command = [\"app\"]\nhosts = [\"API.Example.com.\", \"*.Example.COM\", "
              "\"[::1]\", \"127.0.0.1\"]\n");
    ASSERT_TRUE(load.ok()) << load.errors[0].str();
    EXPECT_EQ(load.vassal->hosts,
              (std::vector<std::string>{"api.example.com", "*.example.com", "[::1]", "127.0.0.1"}));
}

TEST_F(VassalParse, FileNameMustMakeAUsableVassalName) {
    VassalLoad load = parse("command = [\"app\"]\n", "my app.toml");
    ASSERT_EQ(load.errors.size(), 1u);
    EXPECT_EQ(
        load.errors[0].message,
        "vassal name \"my app\" (the file name without .toml) may "
        "contain only letters, digits, '.', '_', '-' and one '@' between a template's name and an "
        "instance");
}

TEST(VassalFiles, IgnoredNames) {
    EXPECT_TRUE(liege::is_vassal_file_name("hello.toml"));
    EXPECT_TRUE(liege::is_vassal_file_name("my-app.v2.toml"));
    EXPECT_FALSE(liege::is_vassal_file_name(".hello.toml"));
    EXPECT_FALSE(liege::is_vassal_file_name("_draft.toml"));
    EXPECT_FALSE(liege::is_vassal_file_name("hello.toml~"));
    EXPECT_FALSE(liege::is_vassal_file_name("hello.toml.swp"));
    EXPECT_FALSE(liege::is_vassal_file_name(".hello.toml.swp"));
    EXPECT_FALSE(liege::is_vassal_file_name("#hello.toml#"));
    EXPECT_FALSE(liege::is_vassal_file_name("hello.ini"));
    EXPECT_FALSE(liege::is_vassal_file_name(".toml"));
    EXPECT_FALSE(liege::is_vassal_file_name(""));
}

TEST(VassalFiles, DirectoryListsOnlyVassalFilesSortedByName) {
    TempDir dir;
    const std::string ok = "hosts = [\"*\"]\ncommand = [\"app\"]\n";
    dir.write("zeta.toml", ok);
    dir.write("alpha.toml", ok);
    dir.write("broken.toml", "hosts = [\"*\"]\nworkers = 0\n");
    dir.write(".hidden.toml", ok);
    dir.write("_disabled.toml", ok);
    dir.write("alpha.toml~", ok);
    dir.write(".alpha.toml.swp", ok);
    dir.write("alpha.toml.swp", ok);
    dir.write("README.md", ok);
    fs::create_directory(dir.path() / "sub.toml");
    fs::create_symlink(dir.path() / "zeta.toml", dir.path() / "linked.toml");
    fs::create_symlink(dir.path() / "missing", dir.path() / "dangling.toml");

    std::error_code ec;
    auto files = liege::list_vassal_files(dir.path(), ec);
    ASSERT_FALSE(ec);
    EXPECT_EQ(files, (std::vector<fs::path>{dir.path() / "alpha.toml", dir.path() / "broken.toml",
                                            dir.path() / "linked.toml", dir.path() / "zeta.toml"}));

    auto loads = liege::load_vassal_dir(dir.path(), ec, fake_env());
    ASSERT_FALSE(ec);
    ASSERT_EQ(loads.size(), 4u);
    EXPECT_TRUE(loads[0].ok());
    EXPECT_EQ(loads[0].vassal->name, "alpha");
    EXPECT_FALSE(loads[1].ok());
    ASSERT_EQ(loads[1].errors.size(), 2u); // workers and the missing command
    EXPECT_EQ(loads[1].errors[1].str(),
              (dir.path() / "broken.toml").string() +
                  ":2:11: error: workers: expected an integer ≥ 1, got 0");
    EXPECT_TRUE(loads[1].readable);
    EXPECT_NE(loads[1].content_hash, 0u) << "an invalid file still has a hash of its bytes";
    EXPECT_EQ(loads[2].vassal->name, "linked");
    EXPECT_EQ(loads[3].vassal->name, "zeta");

    liege::list_vassal_files(dir.path() / "nope", ec);
    EXPECT_TRUE(ec);
}

TEST(VassalFiles, UnreadableFileIsADiagnostic) {
    TempDir dir;
    VassalLoad load = liege::load_vassal_file(dir.path() / "gone.toml", fake_env());
    EXPECT_FALSE(load.ok());
    EXPECT_FALSE(load.readable);
    ASSERT_EQ(load.errors.size(), 1u);
    EXPECT_EQ(load.errors[0].str(), (dir.path() / "gone.toml").string() +
                                        ":1:1: error: cannot read file: No such file or directory");
}

TEST(VassalFiles, ContentHashTellsContentFromMtime) {
    TempDir dir;
    fs::path file = dir.write("a.toml", "command = [\"app\"]\n");
    uint64_t before = liege::load_vassal_file(file, fake_env()).content_hash;
    dir.write("a.toml", "command = [\"app\"]\n"); // rewritten, same bytes
    EXPECT_EQ(liege::load_vassal_file(file, fake_env()).content_hash, before);
    dir.write("a.toml", "command = [\"app2\"]\n");
    EXPECT_NE(liege::load_vassal_file(file, fake_env()).content_hash, before);
    EXPECT_NE(liege::content_hash(""), liege::content_hash(" "));
}

// Bytes this process has read with read(2) and its kin so far.
uint64_t bytes_read_so_far() {
    std::ifstream io("/proc/self/io");
    std::string key;
    uint64_t value = 0;
    while (io >> key >> value) {
        if (key == "rchar:") {
            return value;
        }
    }
    ADD_FAILURE() << "no rchar in /proc/self/io";
    return 0;
}

TEST(VassalFiles, AFileOverOneMebibyteIsAnErrorNamingIt) {
    constexpr std::size_t kMiB = std::size_t{1} << 20;
    TempDir dir;
    const std::string head = "command = [\"app\"]\nhosts = [\"a.test\"]\n";
    std::string text = head + "#" + std::string(kMiB - head.size() - 2, 'x') + "\n";
    ASSERT_EQ(text.size(), kMiB);
    fs::path file = dir.write("big.toml", text);
    VassalLoad at_limit = liege::load_vassal_file(file, fake_env());
    EXPECT_TRUE(at_limit.ok()) << (at_limit.errors.empty() ? "" : at_limit.errors[0].str());

    text.insert(text.size() - 1, "x");
    dir.write("big.toml", text);
    VassalLoad over = liege::load_vassal_file(file, fake_env());
    EXPECT_FALSE(over.ok());
    ASSERT_EQ(over.errors.size(), 1u);
    EXPECT_EQ(over.errors[0].str(),
              file.string() + ":1:1: error: larger than 1 MiB, the limit of a vassal file");

    // A layer is held to it too, and named.
    dir.write("_defaults.toml", text);
    dir.write("small.toml", head);
    VassalLoad layered = liege::load_vassal_file(dir.path() / "small.toml", fake_env());
    EXPECT_FALSE(layered.ok());
    ASSERT_EQ(layered.errors.size(), 1u);
    EXPECT_EQ(layered.errors[0].str(), (dir.path() / "_defaults.toml").string() +
                                           ":1:1: error: larger than 1 MiB, the limit of a vassal "
                                           "file");
}

TEST(VassalFiles, AHugeFileIsRefusedAfterReadingOneByteBeyondTheLimit) {
    TempDir dir;
    fs::path file = dir.write("huge.toml", "command = [\"app\"]\n");
    fs::resize_file(file, std::uintmax_t{64} << 20); // sparse: 64 MiB of NUL bytes to read
    const uint64_t before = bytes_read_so_far();
    VassalLoad load = liege::load_vassal_file(file, fake_env());
    const uint64_t read = bytes_read_so_far() - before;
    EXPECT_FALSE(load.ok());
    ASSERT_EQ(load.errors.size(), 1u);
    EXPECT_NE(load.errors[0].message.find("larger than 1 MiB"), std::string::npos)
        << load.errors[0].str();
    EXPECT_LE(read, (uint64_t{1} << 20) + 1 + 4096) << "read beyond the limit";
}

TEST(VassalFiles, AFifoIsRefusedWithoutWaitingForAWriter) {
    TempDir dir;
    fs::path fifo = dir.path() / "pipe.toml";
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    auto loading =
        std::async(std::launch::async, [&] { return liege::load_vassal_file(fifo, fake_env()); });
    if (loading.wait_for(10s) != std::future_status::ready) {
        ADD_FAILURE() << "the loader waits for a writer of the FIFO";
        ::close(::open(fifo.c_str(), O_WRONLY)); // that writer, so that the test ends
    }
    VassalLoad load = loading.get();
    EXPECT_FALSE(load.ok());
    ASSERT_EQ(load.errors.size(), 1u);
    EXPECT_EQ(load.errors[0].str(),
              fifo.string() + ":1:1: error: cannot read file: not a regular file");
}

TEST_F(VassalParse, TlsCertAndKeyAreResolvedAgainstTheVassalDirectory) {
    VassalLoad load = parse("command = [\"app\"]\nhosts = [\"shop.test\"]\n"
                            "[tls]\ncert = \"certs/shop.pem\"\nkey = \"/etc/ssl/shop.key\"\n"
                            "redirect = true\n");
    ASSERT_TRUE(load.ok()) << load.errors[0].str();
    EXPECT_EQ(load.vassal->tls.cert, dir_.path() / "certs/shop.pem");
    EXPECT_EQ(load.vassal->tls.key, fs::path("/etc/ssl/shop.key"));
    EXPECT_TRUE(load.vassal->tls.redirect);
}

TEST_F(VassalParse, TlsWithoutItsTableServesTheDefaultCertificate) {
    VassalLoad load = parse("command = [\"app\"]\nhosts = [\"shop.test\"]\n");
    ASSERT_TRUE(load.ok());
    EXPECT_TRUE(load.vassal->tls.cert.empty());
    EXPECT_TRUE(load.vassal->tls.key.empty());
    EXPECT_FALSE(load.vassal->tls.redirect);
}

TEST_F(VassalParse, TlsMistakesNameTheirPlace) {
    const std::string head = "command = [\"app\"]\nhosts = [\"shop.test\"]\n[tls]\n";
    EXPECT_EQ(only_error(head + "key = \"shop.key\"\n"),
              "4:7: tls.key: needs tls.cert, the certificate it belongs to");
    EXPECT_EQ(only_error(head + "cert = 1\n"), "4:8: tls.cert: expected a file path, got integer");
    EXPECT_EQ(only_error(head + "redirect = \"yes\"\n"),
              "4:12: tls.redirect: expected true or false, got string");
    EXPECT_EQ(only_error(head + "certs = \"a.pem\"\n"),
              "4:1: unknown key 'certs' in [tls]; did you mean 'cert'?");
    EXPECT_EQ(only_error(head + "acme = true\ncert = \"a.pem\"\n"),
              "4:8: tls.acme: obtains the certificate itself; give either acme = true or "
              "tls.cert, not both");
    EXPECT_EQ(only_error("command = [\"app\"]\nhosts = [\"*.shop.test\", \"*\"]\n[tls]\n"
                         "acme = true\n"),
              "4:8: tls.acme: needs an exact name in hosts (like \"shop.example\"): a "
              "certificate authority issues no certificate for \"*\", and wildcards need a DNS "
              "challenge");
    EXPECT_NE(only_error("command = [\"app\"]\n[tls]\ncert = \"a.pem\"\n")
                  .find("tls.cert: is chosen by the names in hosts (SNI)"),
              std::string::npos);
}

TEST_F(VassalParse, TlsAcmeTakesTheExactHosts) {
    VassalLoad load = parse("command = [\"app\"]\nhosts = [\"shop.test\", \"*.shop.test\"]\n"
                            "[tls]\nacme = true\nredirect = true\n");
    ASSERT_TRUE(load.ok()) << load.errors[0].str();
    EXPECT_TRUE(load.vassal->tls.acme);
    EXPECT_TRUE(load.vassal->tls.cert.empty());
}

// ---- isolation and the upstream (issue 13) ----

TEST_F(VassalParse, IdentityAndLimitsDefaultToTheEmperorsAndInherited) {
    VassalLoad load = parse("command = [\"app\"]\nhosts = [\"shop.test\"]\n");
    ASSERT_TRUE(load.ok());
    const liege::Vassal& v = *load.vassal;
    EXPECT_EQ(v.identity.user, "");
    EXPECT_EQ(v.identity.group, "");
    EXPECT_TRUE(v.identity.no_new_privs);
    EXPECT_FALSE(v.limits.nofile || v.limits.nproc || v.limits.core);
    EXPECT_FALSE(v.limits.any_cgroup());
    EXPECT_EQ(v.upstream.request_buffering, liege::RequestBuffering::Auto);
    EXPECT_FALSE(v.upstream.trace);
    EXPECT_FALSE(v.file_uid) << "parsed text has no file owner";
}

TEST_F(VassalParse, IdentityLimitsAndUpstreamParse) {
    VassalLoad load = parse(R"(
command = ["app"]
hosts = ["shop.test"]
user = "www-shop"
group = "33"
no_new_privs = false
[limits]
nofile = 4096
nproc = "unlimited"
core = "1GiB"
memory = "512MiB"
cpu = "150%"
pids = 64
[upstream]
request_buffering = "always"
trace = true
)");
    ASSERT_TRUE(load.ok()) << load.errors[0].str();
    const liege::Vassal& v = *load.vassal;
    EXPECT_EQ(v.identity.user, "www-shop");
    EXPECT_EQ(v.identity.group, "33");
    EXPECT_FALSE(v.identity.no_new_privs);
    EXPECT_EQ(v.limits.nofile, 4096u);
    EXPECT_EQ(v.limits.nproc, liege::Limits::kUnlimited);
    EXPECT_EQ(v.limits.core, uint64_t{1} << 30);
    EXPECT_EQ(v.limits.memory, uint64_t{512} << 20);
    EXPECT_EQ(v.limits.cpu, 150u);
    EXPECT_EQ(v.limits.pids, 64u);
    EXPECT_EQ(v.upstream.request_buffering, liege::RequestBuffering::Always);
    EXPECT_EQ(liege::to_string(v.upstream.request_buffering), "always");
    EXPECT_TRUE(v.upstream.trace);

    load = parse("command = [\"app\"]\nhosts = [\"a.test\"]\nuser = \"@owner\"\n"
                 "[limits]\ncore = 0\n");
    ASSERT_TRUE(load.ok()) << load.errors[0].str();
    EXPECT_EQ(load.vassal->identity.user, "@owner");
    EXPECT_EQ(load.vassal->limits.core, 0u);
}

TEST_F(VassalParse, IdentityLimitsAndUpstreamMistakesNameTheirPlace) {
    const std::string head = "command = [\"app\"]\nhosts = [\"shop.test\"]\n";
    EXPECT_EQ(only_error(head + "user = \"@ownr\"\n"),
              "3:8: user: expected a user name, a numeric uid or \"@owner\", got \"@ownr\"; did "
              "you mean \"@owner\"?");
    EXPECT_EQ(only_error(head + "user = \"a b\"\n"),
              "3:8: user: expected a user name, a numeric uid or \"@owner\", got \"a b\"");
    EXPECT_EQ(only_error(head + "group = \"@owner\"\n"),
              "3:9: group: expected a group name or a numeric gid, got \"@owner\"");
    EXPECT_EQ(only_error(head + "no_new_privs = 1\n"),
              "3:16: no_new_privs: expected true or false, got integer");
    EXPECT_EQ(only_error(head + "[limits]\nnofile = 0\n"),
              "4:10: limits.nofile: expected an integer from 1 to 1073741824, or \"unlimited\", "
              "got 0");
    EXPECT_EQ(only_error(head + "[limits]\ncore = \"lots\"\n"),
              "4:8: limits.core: expected a size like \"0\" or \"1GiB\", or \"unlimited\", got "
              "the string \"lots\"");
    EXPECT_EQ(only_error(head + "[limits]\ncpu = \"1.5\"\n"),
              "4:7: limits.cpu: expected a share of one CPU from \"1%\" to \"102400%\", like "
              "\"50%\", got \"1.5\"");
    EXPECT_EQ(only_error(head + "[limits]\nmemory = \"0\"\n"),
              "4:10: limits.memory: expected a size above zero, got \"0\"");
    EXPECT_EQ(only_error(head + "[limits]\npids = 0\n"),
              "4:8: limits.pids: expected an integer from 1 to 4194304, got 0");
    EXPECT_EQ(only_error(head + "[limits]\nfiles = 10\n"),
              "4:1: unknown key 'files' in [limits]; expected one of nofile, nproc, core, memory, "
              "cpu, pids");
    EXPECT_EQ(only_error(head + "[upstream]\nrequest_buffering = \"on\"\n"),
              "4:21: upstream.request_buffering: expected \"auto\", \"always\" or \"off\", got "
              "\"on\"");
    EXPECT_EQ(only_error(head + "[upstream]\ntrace = \"yes\"\n"),
              "4:9: upstream.trace: expected true or false, got string");
    EXPECT_EQ(only_error("type = \"daemon\"\ncommand = [\"app\"]\n[upstream]\ntrace = true\n"),
              "3:1: upstream: a daemon (type = \"daemon\") gets no requests; remove [upstream] "
              "or make it a web vassal");
}

TEST(VassalFiles, TheFileOwnerIsKnownForAtOwner) {
    TempDir dir;
    const fs::path file = dir.path() / "shop.toml";
    { std::ofstream(file) << "command = [\"app\"]\nhosts = [\"a.test\"]\nuser = \"@owner\"\n"; }
    VassalLoad load = liege::load_vassal_file(file);
    ASSERT_TRUE(load.ok()) << load.errors[0].str();
    EXPECT_EQ(load.vassal->file_uid, ::getuid());
    EXPECT_EQ(load.vassal->file_gid, ::getgid());
}

// ---- daemons, checks, restart (issue 12) ----

TEST_F(VassalParse, DaemonHasNoRouteAndTakesAnyCheck) {
    VassalLoad load = parse(R"(
type = "daemon"
command = ["redis-server", "--port", "6390"]
workers = 2
[health]
tcp = "127.0.0.1:6390"
[reload]
strategy = "restart"
)");
    ASSERT_TRUE(load.ok()) << load.errors[0].str();
    const Vassal& v = *load.vassal;
    EXPECT_TRUE(v.daemon());
    EXPECT_EQ(v.workers, 2);
    EXPECT_TRUE(v.hosts.empty()) << "a daemon is routed to by no host";
    EXPECT_EQ(v.health.tcp, "127.0.0.1:6390");
    EXPECT_TRUE(v.health.command.empty());
    EXPECT_EQ(v.reload.strategy, liege::ReloadStrategy::Restart);
    EXPECT_EQ(liege::to_string(v.reload.strategy), "restart");

    load = parse("type = 'daemon'\ncommand = ['celery', '-A', 'shop', 'worker']\n"
                 "[health]\ncommand = ['celery', 'inspect', 'ping', '-d', '${NAME}@${WORKER}']\n");
    ASSERT_TRUE(load.ok()) << load.errors[0].str();
    EXPECT_EQ(load.vassal->health.command,
              (std::vector<std::string>{"celery", "inspect", "ping", "-d", "${NAME}@${WORKER}"}));
    EXPECT_EQ(load.vassal->type, liege::VassalType::Daemon);

    load = parse("command = ['app', '${PORT}']\n");
    ASSERT_TRUE(load.ok());
    EXPECT_EQ(load.vassal->type, liege::VassalType::Web) << "web is the default";
}

TEST_F(VassalParse, DaemonRejectsWhatOnlyARoutedVassalHas) {
    EXPECT_EQ(only_error("type = 'daemon'\ncommand = ['redis-server']\nhosts = ['a.test']\n"),
              "3:9: hosts: a daemon (type = \"daemon\") gets no port and no route; remove "
              "'hosts' or make it a web vassal");
    EXPECT_EQ(only_error("type = 'daemon'\ncommand = ['x']\n[queue]\nsize = 3\n"),
              "3:1: queue: a daemon (type = \"daemon\") gets no port and no route; remove "
              "'queue' or make it a web vassal");
    EXPECT_EQ(only_error("type = 'daemon'\ncommand = ['redis-server', '--port', '${PORT}']\n"),
              "2:39: command[2]: ${PORT} is not set for a daemon (type = \"daemon\" gets no "
              "port); write the port it listens on");
    EXPECT_EQ(only_error("type = 'daemon'\ncommand = ['x']\n[health]\npath = '/'\n"),
              "4:8: health.path: a daemon serves no HTTP through liege; check it with 'tcp' "
              "(\"HOST:PORT\") or 'command'");
    EXPECT_EQ(only_error("type = 'deamon'\ncommand = ['x']\n"),
              "1:8: type: expected \"web\" or \"daemon\", got \"deamon\"; did you mean "
              "\"daemon\"?");
}

TEST_F(VassalParse, HealthTakesOneCheck) {
    EXPECT_EQ(only_error("command = ['x']\n[health]\npath = '/'\ntcp = '127.0.0.1:80'\n"),
              "4:7: health.tcp: [health] takes one check: 'path', 'tcp' or 'command', not both "
              "'path' and 'tcp'");
    EXPECT_EQ(only_error("command = ['x']\n[health]\ntcp = '127.0.0.1'\n"),
              "3:7: health.tcp: invalid address '127.0.0.1': expected HOST:PORT, [IPv6]:PORT or "
              "unix:PATH");
    EXPECT_EQ(only_error("command = ['x']\n[health]\ntcp = '127.0.0.1:0'\n"),
              "3:7: health.tcp: expected \"HOST:PORT\" with a port above 0, got \"127.0.0.1:0\"");
    EXPECT_EQ(only_error("command = ['x']\n[health]\ncommand = []\n"),
              "3:11: health.command: expected at least the program to run, got an empty array");
    EXPECT_EQ(only_error("command = ['x']\n[health]\ncommand = ['check', '${PROT}']\n"),
              "3:22: health.command[1]: unknown placeholder '${PROT}'; expected ${PORT}, "
              "${SOCKET}, ${NAME}, ${WORKER}, ${INSTANCE}, ${PROFILE}, ${env:VAR} or "
              "${env:VAR:-default}; did you mean '${PORT}'?");
    EXPECT_EQ(only_error("command = ['x']\n[reload]\nstrategy = 'restrat'\n"),
              "3:12: reload.strategy: expected \"rolling\", \"bluegreen\" or \"restart\", got "
              "\"restrat\"; did you mean \"restart\"?");
}

// ---- layers, profiles, templates, placeholders everywhere (issue 12) ----

namespace {

// Parses `layers` (file name → text, in merge order) as the vassal of the last one.
VassalLoad parse_layers(const TempDir& dir,
                        const std::vector<std::pair<std::string, std::string>>& layers,
                        const std::string& profile = "",
                        std::map<std::string, std::string> env = {}) {
    std::vector<liege::VassalLayer> in;
    for (const auto& [name, text] : layers) {
        in.push_back({dir.path() / name, text});
    }
    return liege::parse_vassal_layers(in, in.back().file, fake_env(std::move(env)), profile);
}

std::string all_errors(const VassalLoad& load) {
    std::string out;
    for (const auto& d : load.errors) {
        out += d.str() + "\n";
    }
    return out;
}

} // namespace

TEST_F(VassalParse, DefaultsMergeUnderTheFileKeyByKey) {
    VassalLoad load = parse_layers(
        dir_, {{"_defaults.toml", "workers = 3\nenv = { DATABASE_URL = 'pg', DEBUG = '1' }\n"
                                  "[health]\ninterval = '5s'\ntimeout = '3s'\n"},
               {"shop.toml", "hosts = ['shop.localhost']\ncommand = ['app', '${PORT}']\n"
                             "env = { DEBUG = '0' }\n[health]\ntimeout = '2s'\n"}});
    ASSERT_TRUE(load.ok()) << all_errors(load);
    const Vassal& v = *load.vassal;
    EXPECT_EQ(v.name, "shop");
    EXPECT_EQ(v.workers, 3) << "a key only the defaults set";
    EXPECT_EQ(v.env, (std::vector<std::pair<std::string, std::string>>{{"DATABASE_URL", "pg"},
                                                                       {"DEBUG", "0"}}))
        << "tables merge key by key; the file wins";
    EXPECT_EQ(v.health.interval, 5s);
    EXPECT_EQ(v.health.timeout, 2s);
    EXPECT_NE(load.effective.find("DATABASE_URL"), std::string::npos) << load.effective;
}

TEST_F(VassalParse, ADiagnosticNamesTheLayerThatHoldsTheKey) {
    VassalLoad load = parse_layers(
        dir_, {{"_defaults.toml", "# shared\nworkres = 2\n[health]\ninterval = 'soon'\n"},
               {"shop.toml", "hosts = ['shop.localhost']\ncommand = ['app']\nwokers = 1\n"}});
    ASSERT_FALSE(load.ok());
    ASSERT_EQ(load.errors.size(), 3u) << all_errors(load);
    const std::string all = all_errors(load);
    const std::string defaults = (dir_.path() / "_defaults.toml").string();
    const std::string shop = (dir_.path() / "shop.toml").string();
    EXPECT_NE(all.find(defaults + ":2:1: error: unknown key 'workres'"), std::string::npos) << all;
    EXPECT_NE(all.find(defaults + ":4:12: error: health.interval: "), std::string::npos) << all;
    EXPECT_NE(all.find(shop + ":3:1: error: unknown key 'wokers'"), std::string::npos) << all;

    load = parse_layers(dir_, {{"_defaults.toml", "workers = [\n"}, {"shop.toml", "x = 1\n"}});
    ASSERT_FALSE(load.ok());
    EXPECT_EQ(load.errors[0].file, defaults) << "a syntax error names its own file";
}

TEST_F(VassalParse, ProfileAppliesOverTheFile) {
    const std::string text = "hosts = ['shop.localhost']\ncommand = ['app', '${PROFILE}']\n"
                             "env = { DEBUG = '1', A = 'a' }\n"
                             "[profile.prod]\nworkers = 4\nhosts = ['shop.example.com']\n"
                             "env = { DEBUG = '0' }\n"
                             "[profile.dev]\nworkers = 1\n";
    VassalLoad plain = parse_layers(dir_, {{"shop.toml", text}});
    ASSERT_TRUE(plain.ok()) << all_errors(plain);
    EXPECT_EQ(plain.vassal->workers, 1);
    EXPECT_EQ(plain.vassal->hosts, std::vector<std::string>{"shop.localhost"});

    VassalLoad prod = parse_layers(dir_, {{"shop.toml", text}}, "prod");
    ASSERT_TRUE(prod.ok()) << all_errors(prod);
    EXPECT_EQ(prod.vassal->workers, 4);
    EXPECT_EQ(prod.vassal->hosts, std::vector<std::string>{"shop.example.com"});
    EXPECT_EQ(prod.vassal->env,
              (std::vector<std::pair<std::string, std::string>>{{"A", "a"}, {"DEBUG", "0"}}));
    EXPECT_EQ(prod.vassal->profile, "prod");
    EXPECT_NE(prod.content_hash, plain.content_hash);
    EXPECT_EQ(prod.effective.find("[profile"), std::string::npos)
        << "the effective vassal has its profile applied: " << prod.effective;

    VassalLoad other = parse_layers(dir_, {{"shop.toml", text}}, "staging");
    ASSERT_TRUE(other.ok()) << "a profile a vassal does not have changes nothing";
    EXPECT_EQ(other.vassal->workers, 1);

    EXPECT_EQ(only_error("hosts = ['a']\ncommand = ['x']\nprofile = 'prod'\n"),
              "3:11: profile: expected tables, like [profile.prod] with the keys that profile "
              "changes");
    VassalLoad bad = parse_layers(
        dir_, {{"shop.toml", "hosts = ['a']\ncommand = ['x']\n[profile.prod]\nworkrs = 2\n"}},
        "prod");
    ASSERT_EQ(bad.errors.size(), 1u) << all_errors(bad);
    EXPECT_EQ(bad.errors[0].str(), (dir_.path() / "shop.toml").string() +
                                       ":4:1: error: unknown key 'workrs'; did you mean "
                                       "'workers'?");
}

TEST_F(VassalParse, TemplateInstanceFillsInstance) {
    VassalLoad load = parse_layers(
        dir_, {{"shop@.toml", "hosts = ['${INSTANCE}.shop.localhost']\ncommand = ['app', "
                              "'--branch', '${INSTANCE}', '${PORT}']\n"},
               {"shop@feature-x.toml", ""}});
    ASSERT_TRUE(load.ok()) << all_errors(load);
    const Vassal& v = *load.vassal;
    EXPECT_EQ(v.name, "shop@feature-x");
    EXPECT_EQ(v.instance, "feature-x");
    EXPECT_EQ(v.hosts, std::vector<std::string>{"feature-x.shop.localhost"});
    liege::PlaceholderValues values;
    values.instance = v.instance;
    EXPECT_EQ(liege::expand(v.command[2], values), "feature-x");

    EXPECT_EQ(only_error("hosts = ['${INSTANCE}.a.test']\ncommand = ['x']\n"),
              "1:11: hosts[0]: ${INSTANCE} is set only for an instance of a template "
              "(NAME@INSTANCE.toml made from NAME@.toml)");
}

TEST_F(VassalParse, InstanceWithoutItsTemplateIsAnError) {
    fs::path file = dir_.write("shop@x.toml", "");
    VassalLoad load = liege::load_vassal_file(file, fake_env());
    ASSERT_FALSE(load.ok());
    EXPECT_EQ(load.errors[0].str(),
              file.string() + ":1:1: error: no template shop@.toml for this instance (shop@x.toml "
                              "is an instance of the template shop@.toml)");

    dir_.write("shop@.toml", "hosts = ['${INSTANCE}.shop.test']\ncommand = ['x']\n");
    dir_.write("_defaults.toml", "workers = 2\n");
    load = liege::load_vassal_file(file, fake_env());
    ASSERT_TRUE(load.ok()) << all_errors(load);
    EXPECT_EQ(load.vassal->hosts, std::vector<std::string>{"x.shop.test"});
    EXPECT_EQ(load.vassal->workers, 2);
    EXPECT_FALSE(liege::is_vassal_file_name("shop@.toml")) << "a template runs nothing itself";
    EXPECT_TRUE(liege::is_vassal_file_name("shop@x.toml"));
    EXPECT_TRUE(liege::is_vassal_layer_file_name("shop@.toml"));
    EXPECT_TRUE(liege::is_vassal_layer_file_name("_defaults.toml"));
    EXPECT_FALSE(liege::is_vassal_layer_file_name("shop.toml"));
    EXPECT_EQ(liege::template_file_name("shop@x"), "shop@.toml");
    EXPECT_EQ(liege::template_file_name("shop"), "");
}

TEST_F(VassalParse, PlaceholdersInEveryStringValue) {
    VassalLoad load =
        parse_layers(dir_,
                     {{"app.toml", "hosts = ['${NAME}.${env:DOMAIN:-localhost}']\n"
                                   "path = '/${PROFILE}'\nworkers = '${env:WORKERS:-2}'\n"
                                   "command = ['app', '${PORT}']\n[health]\n"
                                   "start_timeout = '${env:START:-45s}'\n"}},
                     "dev", {{"WORKERS", "3"}});
    ASSERT_TRUE(load.ok()) << all_errors(load);
    EXPECT_EQ(load.vassal->hosts, std::vector<std::string>{"app.localhost"});
    EXPECT_EQ(load.vassal->path, "/dev");
    EXPECT_EQ(load.vassal->workers, 3);
    EXPECT_EQ(load.vassal->health.start_timeout, 45s);
    EXPECT_EQ(load.vassal->command[1], "${PORT}") << "per-worker keys are filled per worker";

    EXPECT_EQ(only_error("hosts = ['a-${PORT}.test']\ncommand = ['x']\n"),
              "1:13: hosts[0]: '${PORT}' differs per worker: it is filled only in command, cwd, "
              "env and health.command");
    EXPECT_EQ(only_error("hosts = ['a']\ncommand = ['x']\nworkers = '${env:NOPE:-many}'\n"),
              "3:11: workers: expected an integer ≥ 1, got the string \"many\"");
}

TEST_F(VassalParse, EffectiveHashIgnoresLayersThatDoNotReachTheVassal) {
    auto hash = [&](const std::string& defaults) {
        VassalLoad load =
            parse_layers(dir_, {{"_defaults.toml", defaults},
                                {"a.toml", "hosts = ['a']\ncommand = ['x']\nworkers = 2\n"}});
        EXPECT_TRUE(load.ok()) << all_errors(load);
        return load.content_hash;
    };
    EXPECT_EQ(hash("workers = 1\n"), hash("workers = 5\n# a comment\n"))
        << "the file sets workers itself";
    EXPECT_NE(hash("workers = 1\n"), hash("workers = 1\nenv = { A = 'b' }\n"));
}

TEST_F(VassalParse, AfterNamesOtherVassals) {
    VassalLoad load = parse("hosts = ['a']\ncommand = ['x']\nafter = ['redis', 'worker']\n");
    ASSERT_TRUE(load.ok()) << all_errors(load);
    EXPECT_EQ(load.vassal->after, (std::vector<std::string>{"redis", "worker"}));
    EXPECT_EQ(load.vassal->after_at, (liege::SourcePosition{3, 9}));
    EXPECT_EQ(only_error("hosts = ['a']\ncommand = ['x']\nafter = ['app']\n"),
              "3:10: after[0]: a vassal cannot start after itself");
    EXPECT_EQ(only_error("hosts = ['a']\ncommand = ['x']\nafter = 'redis'\n"),
              "3:9: after: expected an array of vassal names, like [\"redis\"], got string");
    EXPECT_EQ(only_error("hosts = ['a']\ncommand = ['x']\nafter = ['redis', 'redis']\n"),
              "3:19: after[1]: \"redis\" is listed twice");
}

TEST_F(VassalParse, StartOrderReportsUnknownNamesAndCycles) {
    auto load = [&](const std::string& name, const std::string& after) {
        VassalLoad l =
            parse("type = 'daemon'\ncommand = ['x']\nafter = " + after + "\n", name + ".toml");
        EXPECT_TRUE(l.ok()) << all_errors(l);
        return *l.vassal;
    };
    Vassal a = load("a", "['b']");
    Vassal b = load("b", "['c']");
    Vassal c = load("c", "['a']");
    Vassal d = load("d", "['nope']");
    Vassal e = load("e", "['b']");
    auto problems = liege::check_start_order({&a, &b, &c, &d, &e});
    ASSERT_EQ(problems.size(), 2u);
    EXPECT_EQ(problems[0].str(), (dir_.path() / "d.toml").string() +
                                     ":3:9: error: after: no vassal \"nope\" in this directory");
    EXPECT_EQ(problems[1].str(), (dir_.path() / "a.toml").string() +
                                     ":3:9: error: after: the start order has a cycle: a -> b -> "
                                     "c -> a");
    EXPECT_TRUE(liege::check_start_order({&b, &e}).size() == 1u) << "b's 'c' is unknown here";
    Vassal c2 = load("c", "[]");
    EXPECT_TRUE(liege::check_start_order({&a, &b, &c2, &e}).empty());
}

TEST_F(VassalParse, ScaledWorkersAndRecycle) {
    VassalLoad load = parse("command = [\"app\"]\n"
                            "workers = { min = 0, max = 8, idle = \"5m\" }\n"
                            "[recycle]\nmax_requests = 1000\nmax_rss = \"512MiB\"\n"
                            "request_timeout = \"60s\"\n");
    ASSERT_TRUE(load.ok()) << load.errors[0].str();
    const Vassal& v = *load.vassal;
    EXPECT_TRUE(v.scale.scaled);
    EXPECT_EQ(v.scale.min, 0);
    EXPECT_EQ(v.scale.max, 8);
    EXPECT_EQ(v.scale.idle, 300s);
    EXPECT_EQ(v.workers, 0); // the pool at start: min, none for an on-demand pool
    EXPECT_EQ(v.recycle.max_requests, 1000u);
    EXPECT_EQ(v.recycle.max_rss, 512u * 1024 * 1024);
    EXPECT_EQ(v.recycle.request_timeout, 60s);

    load = parse("command = [\"app\"]\nworkers = { max = 3 }\n");
    ASSERT_TRUE(load.ok()) << load.errors[0].str();
    EXPECT_EQ(load.vassal->scale.min, 1);
    EXPECT_EQ(load.vassal->scale.idle, 300s);
    EXPECT_EQ(load.vassal->workers, 1);

    load = parse("command = [\"app\"]\nworkers = 3\n");
    ASSERT_TRUE(load.ok());
    EXPECT_FALSE(load.vassal->scale.scaled);
    EXPECT_EQ(load.vassal->scale.min, 3);
    EXPECT_EQ(load.vassal->scale.max, 3);
    EXPECT_EQ(load.vassal->recycle.max_requests, 0u);
    EXPECT_EQ(load.vassal->recycle.max_rss, 0u);
    EXPECT_EQ(load.vassal->recycle.request_timeout, 0ms);
}

TEST_F(VassalParse, BadScaledWorkersAndRecycleNameLineColumn) {
    const std::string cmd = "command = [\"app\"]\n";
    EXPECT_EQ(only_error(cmd + "workers = { min = 0 }\n"),
              "2:11: workers: expected 'max', the most workers the pool grows to, like "
              "{ min = 0, max = 8, idle = \"5m\" }");
    EXPECT_EQ(only_error(cmd + "workers = { min = 4, max = 2 }\n"),
              "2:28: workers.max: expected at least min (4), got 2");
    EXPECT_EQ(only_error(cmd + "workers = { min = -1, max = 2 }\n"),
              "2:19: workers.min: expected an integer from 0 to 1024, got -1");
    EXPECT_EQ(only_error(cmd + "workers = { max = 0 }\n"),
              "2:19: workers.max: expected an integer from 1 to 1024, got 0");
    EXPECT_EQ(only_error(cmd + "workers = { max = 2, idle = \"0s\" }\n"),
              "2:29: workers.idle: expected a duration above zero, got \"0s\"");
    EXPECT_EQ(only_error(cmd + "workers = { max = 2, idel = \"1m\" }\n"),
              "2:22: unknown key 'idel' in [workers]; did you mean 'idle'?");
    EXPECT_EQ(only_error(cmd + "[recycle]\nmax_rss = \"lots\"\n"),
              "3:11: recycle.max_rss: invalid size 'lots': expected a number of bytes with an "
              "optional k, M or G");
    EXPECT_EQ(only_error(cmd + "[recycle]\nmax_requests = -5\n"),
              "3:16: recycle.max_requests: expected an integer from 0 to 1000000000, got -5");
    EXPECT_EQ(
        only_error(cmd + "[recycle]\nrequest_timeout = \"soon\"\n"),
        "3:19: recycle.request_timeout: " + [] {
            try {
                liege::parse_duration("soon");
            } catch (const std::invalid_argument& e) {
                return std::string(e.what());
            }
            return std::string();
        }());
    EXPECT_EQ(only_error(cmd + "max_rss = \"1G\"\n"),
              "2:1: unknown key 'max_rss'; did you mean 'max_rss' in [recycle]?");
    EXPECT_EQ(only_error("type = \"daemon\"\n" + cmd + "workers = { max = 2 }\n"),
              "3:11: workers: a daemon (type = \"daemon\") gets no requests to scale with; give "
              "it a number of workers");
    EXPECT_EQ(only_error("type = \"daemon\"\n" + cmd + "[recycle]\nrequest_timeout = \"1s\"\n"),
              "4:19: recycle.request_timeout: a daemon (type = \"daemon\") gets no requests; "
              "only max_rss recycles it");
}

// ---- socket = "inherit" readiness, sd_notify (hardening, defect 9) ----

TEST_F(VassalParse, InheritedSocketNeedsAnHttpCheckOrNotify) {
    const std::string what =
        "socket: with \"inherit\" a connect is answered by the kernel on the emperor's socket "
        "even before the app runs, so it proves nothing; add [health] path = \"/healthz\" (a GET "
        "the app answers) or [health] notify = true (the app sends READY=1 to $NOTIFY_SOCKET)";
    EXPECT_EQ(only_error("command = ['gunicorn', 'app:app']\nsocket = 'inherit'\n"),
              "2:10: " + what);
    // A connect elsewhere or a command says nothing about the app behind the emperor's socket
    // either, as far as liege can tell: only an HTTP answer or READY=1 will do.
    EXPECT_EQ(only_error("command = ['x']\nsocket = 'inherit'\n[health]\ntcp = '127.0.0.1:9'\n"),
              "2:10: " + what);
    EXPECT_EQ(only_error("command = ['x']\nsocket = 'inherit'\n[health]\nstart_timeout = '5s'\n"),
              "2:10: " + what);
    EXPECT_TRUE(parse("command = ['x']\nsocket = 'inherit'\n[health]\npath = '/'\n").ok());
    VassalLoad load = parse("command = ['x']\nsocket = 'inherit'\n[health]\nnotify = true\n");
    ASSERT_TRUE(load.ok()) << load.errors[0].str();
    EXPECT_TRUE(load.vassal->health.notify);
    EXPECT_EQ(load.vassal->socket, liege::SocketKind::Inherit);
    // An invalid health.path is reported as itself, not once more as a missing check.
    EXPECT_EQ(
        only_error("command = ['x']\nsocket = 'inherit'\n[health]\npath = 'x'\n").substr(0, 17),
        "4:8: health.path:");
}

TEST_F(VassalParse, InheritedSocketFromALayerIsReportedWhereItIsWritten) {
    VassalLoad load = liege::parse_vassal_layers(
        {{dir_.path() / "_defaults.toml", "hosts = ['*']\nsocket = 'inherit'\n"},
         {dir_.path() / "app.toml", "command = ['x']\n"}},
        dir_.path() / "app.toml", fake_env({}));
    ASSERT_EQ(load.errors.size(), 1u);
    EXPECT_EQ(load.errors[0].str().substr(0, (dir_.path() / "_defaults.toml").string().size() + 26),
              (dir_.path() / "_defaults.toml").string() + ":2:10: error: socket: with");
}

TEST_F(VassalParse, NotifyIsOfferedToEveryVassal) {
    VassalLoad load = parse("command = ['x', '${PORT}']\n[health]\nnotify = true\n");
    ASSERT_TRUE(load.ok()) << load.errors[0].str();
    EXPECT_TRUE(load.vassal->health.notify);
    EXPECT_TRUE(load.vassal->health.path.empty());

    load = parse("type = 'daemon'\ncommand = ['x']\n[health]\nnotify = true\n"
                 "command = ['x-ping']\n");
    ASSERT_TRUE(load.ok()) << load.errors[0].str();
    EXPECT_TRUE(load.vassal->health.notify) << "notify for readiness, the command for liveness";
    EXPECT_EQ(load.vassal->health.command, (std::vector<std::string>{"x-ping"}));

    load = parse("command = ['x', '${PORT}']\n");
    ASSERT_TRUE(load.ok());
    EXPECT_FALSE(load.vassal->health.notify) << "off by default";

    EXPECT_EQ(only_error("command = ['x']\n[health]\nnotify = 'yes'\n"),
              "3:10: health.notify: expected true or false, got string");
    EXPECT_EQ(only_error("command = ['x']\n[health]\nnotfy = true\n"),
              "3:1: unknown key 'notfy' in [health]; did you mean 'notify'?");
    EXPECT_EQ(only_error("command = ['x']\nenv = { NOTIFY_SOCKET = '/tmp/x' }\n"),
              "2:9: env.NOTIFY_SOCKET: NOTIFY_SOCKET is set by liege for every worker");
}
