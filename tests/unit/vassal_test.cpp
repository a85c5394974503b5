#include <gtest/gtest.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

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
    VassalLoad parse(const std::string& text, const std::string& name = "app.toml") {
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
    EXPECT_EQ(v.content_hash, liege::content_hash("command = [\"app\"]\n"));
    EXPECT_EQ(load.content_hash, v.content_hash);
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
                                        "string");
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
        {cmd + "workers = \"2\"\n", "2:11: workers: expected an integer ≥ 1, got string"},
        {cmd + "workers = 0\n", "2:11: workers: expected an integer ≥ 1, got 0"},
        {cmd + "workers = 1.5\n", "2:11: workers: expected an integer ≥ 1, got float"},
        {cmd + "workers = 100000\n", "2:11: workers: expected at most 1024 workers, got 100000"},
        {cmd + "concurrency = \"1\"\n",
         "2:15: concurrency: expected an integer from 0 to 1024, got string"},
        {cmd + "concurrency = 1.0\n",
         "2:15: concurrency: expected an integer from 0 to 1024, got float"},
        {cmd + "concurrency = -1\n",
         "2:15: concurrency: expected an integer from 0 to 1024, got -1"},
        {cmd + "concurrency = 1025\n",
         "2:15: concurrency: expected an integer from 0 to 1024, got 1025"},
        {cmd + "queue = 100\n",
         "2:9: queue: expected a table ([queue] with size, timeout), got integer"},
        {cmd + "[queue]\nsize = \"100\"\n",
         "3:8: queue.size: expected an integer from 0 to 100000, got string"},
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
        {cmd + "hosts = []\n", "2:9: hosts: expected at least one host pattern (leave 'hosts' "
                               "out to serve any host)"},
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
         "2:10: health: expected a table ([health] with path, interval, timeout, "
         "start_timeout), got string"},
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
         "3:12: reload.strategy: expected \"rolling\" or \"bluegreen\", got \"blue-green\"; did "
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
         "2:1: unknown key 'frobnicate'; expected one of command, workers, concurrency, hosts, "
         "path, cwd, env, socket, health, queue, reload, stop, tls"},
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
              "${NAME}, ${WORKER}, ${env:VAR} or ${env:VAR:-default}; did you mean '${PORT}'?");
    EXPECT_EQ(only_error("command = [\"sh\", \"-c\", \"cd ${HOME}\"]\n"),
              "1:28: command[2]: unknown placeholder '${HOME}'; expected ${PORT}, ${SOCKET}, "
              "${NAME}, ${WORKER}, ${env:VAR} or ${env:VAR:-default}; did you mean "
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
    auto load = liege::parse_vassal("command = [\"app\", \"${env:TOKEN}\"]\n",
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
    EXPECT_EQ(load.errors[0].message, "vassal name \"my app\" (the file name without .toml) may "
                                      "contain only letters, digits, '.', '_' and '-'");
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
    const std::string ok = "command = [\"app\"]\n";
    dir.write("zeta.toml", ok);
    dir.write("alpha.toml", ok);
    dir.write("broken.toml", "workers = 0\n");
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
                  ":1:11: error: workers: expected an integer ≥ 1, got 0");
    EXPECT_TRUE(loads[1].readable);
    EXPECT_EQ(loads[1].content_hash, liege::content_hash("workers = 0\n"));
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
    EXPECT_NE(only_error(head + "acme = true\n").find("tls.acme: automatic certificates are not"),
              std::string::npos);
    EXPECT_NE(only_error("command = [\"app\"]\n[tls]\ncert = \"a.pem\"\n")
                  .find("tls.cert: is chosen by the names in hosts (SNI)"),
              std::string::npos);
}
