// Vassal files: TOML → validated Vassal, with every problem reported as FILE:LINE:COL.
//
// toml++ stops at the first syntax error, so a file with a syntax error yields exactly that one
// diagnostic. Once the document parses, validation never stops early: every key is checked and
// every problem collected, so a user fixes a file in one round trip. Validation errors point at
// the offending value (or key, for unknown keys); a placeholder error inside a string points at
// its "${" when the string is written on one line without escapes before it, else at the string.
#include "liege/vassal.hpp"

#include "liege/address.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <tuple>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <toml++/toml.h>

namespace liege {

namespace fs = std::filesystem;

std::string Diagnostic::str() const {
    return file + ":" + std::to_string(at.line) + ":" + std::to_string(at.column) +
           (warning ? ": warning: " : ": error: ") + message;
}

EnvLookup process_env() {
    return [](const std::string& name) -> std::optional<std::string> {
        if (const char* value = std::getenv(name.c_str())) {
            return std::string(value);
        }
        return std::nullopt;
    };
}

std::string_view to_string(SocketKind kind) {
    switch (kind) {
    case SocketKind::Tcp:
        return "tcp";
    case SocketKind::Unix:
        return "unix";
    case SocketKind::Inherit:
        return "inherit";
    }
    return "?";
}

std::string_view to_string(ReloadStrategy strategy) {
    switch (strategy) {
    case ReloadStrategy::Rolling:
        return "rolling";
    case ReloadStrategy::BlueGreen:
        return "bluegreen";
    case ReloadStrategy::Restart:
        return "restart";
    }
    return "?";
}

std::string_view to_string(RequestBuffering buffering) {
    switch (buffering) {
    case RequestBuffering::Auto:
        return "auto";
    case RequestBuffering::Always:
        return "always";
    case RequestBuffering::Off:
        return "off";
    }
    return "auto";
}

std::string_view to_string(VassalType type) {
    return type == VassalType::Web ? "web" : "daemon";
}

namespace {

struct SignalName {
    std::string_view name;
    int signo;
};

constexpr std::array kSignals = {
    SignalName{"SIGTERM", SIGTERM}, SignalName{"SIGINT", SIGINT},
    SignalName{"SIGQUIT", SIGQUIT}, SignalName{"SIGHUP", SIGHUP},
    SignalName{"SIGUSR1", SIGUSR1}, SignalName{"SIGUSR2", SIGUSR2},
    SignalName{"SIGKILL", SIGKILL}, SignalName{"SIGWINCH", SIGWINCH},
    SignalName{"SIGABRT", SIGABRT}, SignalName{"SIGALRM", SIGALRM},
};

} // namespace

std::string signal_name(int signo) {
    for (const auto& s : kSignals) {
        if (s.signo == signo) {
            return std::string(s.name);
        }
    }
    return std::to_string(signo);
}

uint64_t content_hash(std::string_view bytes) {
    uint64_t hash = 14695981039346656037ull;
    for (unsigned char c : bytes) {
        hash ^= c;
        hash *= 1099511628211ull;
    }
    return hash;
}

// ---------------------------------------------------------------------------------------------
// Placeholders

namespace {

enum class PlaceholderKind { Port, Socket, Name, Worker, Instance, Profile, Env, Unknown };

struct Placeholder {
    PlaceholderKind kind = PlaceholderKind::Unknown;
    std::string_view var;                     // for Env
    std::optional<std::string_view> fallback; // for Env with ":-"
};

Placeholder classify(std::string_view inner) {
    if (inner == "PORT") {
        return {PlaceholderKind::Port, {}, {}};
    }
    if (inner == "SOCKET") {
        return {PlaceholderKind::Socket, {}, {}};
    }
    if (inner == "NAME") {
        return {PlaceholderKind::Name, {}, {}};
    }
    if (inner == "WORKER") {
        return {PlaceholderKind::Worker, {}, {}};
    }
    if (inner == "INSTANCE") {
        return {PlaceholderKind::Instance, {}, {}};
    }
    if (inner == "PROFILE") {
        return {PlaceholderKind::Profile, {}, {}};
    }
    if (inner.starts_with("env:")) {
        std::string_view rest = inner.substr(4);
        Placeholder p{PlaceholderKind::Env, rest, {}};
        if (auto sep = rest.find(":-"); sep != std::string_view::npos) {
            p.var = rest.substr(0, sep);
            p.fallback = rest.substr(sep + 2);
        }
        return p;
    }
    return {};
}

// Walks `text`, handing plain text to on_literal, each "${...}" to on_placeholder(offset of
// "${", inner text) and an unterminated "${" to on_unterminated(offset). "$${" is a literal "${".
template <typename Literal, typename Found, typename Unterminated>
void walk_placeholders(std::string_view text, Literal on_literal, Found on_placeholder,
                       Unterminated on_unterminated) {
    size_t i = 0;
    while (i < text.size()) {
        size_t dollar = text.find('$', i);
        if (dollar == std::string_view::npos) {
            on_literal(text.substr(i));
            return;
        }
        on_literal(text.substr(i, dollar - i));
        if (text.substr(dollar, 3) == "$${") {
            on_literal("${");
            i = dollar + 3;
            continue;
        }
        if (text.substr(dollar, 2) != "${") {
            on_literal("$");
            i = dollar + 1;
            continue;
        }
        size_t close = text.find('}', dollar + 2);
        if (close == std::string_view::npos) {
            on_unterminated(dollar);
            return;
        }
        on_placeholder(dollar, text.substr(dollar + 2, close - dollar - 2));
        i = close + 1;
    }
}

bool is_env_name(std::string_view name) {
    if (name.empty() || std::isdigit(static_cast<unsigned char>(name[0]))) {
        return false;
    }
    return std::all_of(name.begin(), name.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
    });
}

std::optional<std::string> lookup_env(const EnvLookup& env, std::string_view var) {
    std::string name(var);
    if (env) {
        return env(name);
    }
    return process_env()(name);
}

} // namespace

std::string expand(std::string_view text, const PlaceholderValues& values) {
    std::string out;
    out.reserve(text.size() + 16);
    walk_placeholders(
        text, [&](std::string_view literal) { out.append(literal); },
        [&](size_t offset, std::string_view inner) {
            Placeholder p = classify(inner);
            switch (p.kind) {
            case PlaceholderKind::Port:
                out.append(std::to_string(values.port));
                return;
            case PlaceholderKind::Socket:
                out.append(values.socket);
                return;
            case PlaceholderKind::Name:
                out.append(values.name);
                return;
            case PlaceholderKind::Worker:
                out.append(std::to_string(values.worker));
                return;
            case PlaceholderKind::Instance:
                out.append(values.instance);
                return;
            case PlaceholderKind::Profile:
                out.append(values.profile);
                return;
            case PlaceholderKind::Env:
                if (auto value = lookup_env(values.env, p.var)) {
                    out.append(*value);
                } else if (p.fallback) {
                    out.append(*p.fallback);
                }
                return;
            case PlaceholderKind::Unknown:
                break;
            }
            out.append(text.substr(offset, inner.size() + 3));
        },
        [&](size_t offset) { out.append(text.substr(offset)); });
    return out;
}

fs::path Vassal::working_dir(const PlaceholderValues& values) const {
    fs::path p = expand(cwd, values);
    if (p.is_relative()) {
        p = dir / p;
    }
    p = p.lexically_normal();
    if (!p.has_filename() && p.has_relative_path()) {
        p = p.parent_path(); // "dir/." normalises to "dir/"; keep the plain "dir"
    }
    return p;
}

// ---------------------------------------------------------------------------------------------
// Validation

namespace {

constexpr std::array<std::string_view, 23> kTopKeys = {
    "type",   "command", "workers", "concurrency", "hosts",        "path",   "cwd",     "env",
    "socket", "health",  "queue",   "reload",      "stop",         "tls",    "profile", "after",
    "watch",  "recycle", "user",    "group",       "no_new_privs", "limits", "upstream"};
constexpr std::array<std::string_view, 6> kLimitsKeys = {"nofile", "nproc", "core",
                                                         "memory", "cpu",   "pids"};
constexpr std::array<std::string_view, 2> kUpstreamKeys = {"request_buffering", "trace"};
constexpr std::array<std::string_view, 3> kWorkersKeys = {"min", "max", "idle"};
constexpr std::array<std::string_view, 3> kRecycleKeys = {"max_requests", "max_rss",
                                                          "request_timeout"};
constexpr std::array<std::string_view, 3> kWatchKeys = {"paths", "ignore", "debounce"};
// Keys whose strings are filled per worker (${PORT}, ${SOCKET}, ${WORKER} allowed); every other
// string is filled when the file is loaded.
constexpr std::array<std::string_view, 4> kPerWorkerKeys = {"command", "cwd", "env",
                                                            "health.command"};
constexpr std::array<std::string_view, 7> kHealthKeys = {
    "path", "tcp", "command", "interval", "timeout", "start_timeout", "notify"};
constexpr std::array<std::string_view, 2> kQueueKeys = {"size", "timeout"};
constexpr std::array<std::string_view, 2> kReloadKeys = {"strategy", "drain_timeout"};
constexpr std::array<std::string_view, 2> kStopKeys = {"signal", "timeout"};
constexpr std::array<std::string_view, 4> kTlsKeys = {"cert", "key", "acme", "redirect"};
constexpr std::array<std::string_view, 6> kPlaceholderNames = {"PORT",   "SOCKET",   "NAME",
                                                               "WORKER", "INSTANCE", "PROFILE"};
// Set by the emperor for every worker; a vassal cannot override them.
constexpr std::array<std::string_view, 7> kReservedEnv = {
    "PORT",       "LIEGE_VASSAL",   "LIEGE_WORKER", "LISTEN_FDS",
    "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"};
constexpr int kMaxWorkers = 1024;
constexpr int kMaxConcurrency = 1024;
constexpr int kMaxQueueSize = 100'000;

// Optimal string alignment distance, ignoring case: insertions, deletions, substitutions and
// swaps of neighbours ("PROT" → "PORT") each cost one.
size_t edit_distance(std::string_view a, std::string_view b) {
    auto same = [](char x, char y) {
        return std::tolower(static_cast<unsigned char>(x)) ==
               std::tolower(static_cast<unsigned char>(y));
    };
    std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
    for (size_t i = 0; i <= a.size(); ++i) {
        d[i][0] = i;
    }
    for (size_t j = 0; j <= b.size(); ++j) {
        d[0][j] = j;
    }
    for (size_t i = 1; i <= a.size(); ++i) {
        for (size_t j = 1; j <= b.size(); ++j) {
            size_t cost = same(a[i - 1], b[j - 1]) ? 0 : 1;
            d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
            if (i > 1 && j > 1 && same(a[i - 1], b[j - 2]) && same(a[i - 2], b[j - 1])) {
                d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
            }
        }
    }
    return d[a.size()][b.size()];
}

// The candidate closest to `word` if it is close enough to be a likely typo.
template <typename Range>
std::optional<std::string_view> closest(std::string_view word, const Range& candidates) {
    std::optional<std::string_view> best;
    size_t best_distance = 0;
    for (std::string_view candidate : candidates) {
        size_t d = edit_distance(word, candidate);
        size_t limit = std::clamp<size_t>(candidate.size() / 3, 1, 3);
        if (d <= limit && (!best || d < best_distance)) {
            best = candidate;
            best_distance = d;
        }
    }
    return best;
}

template <typename Range> std::string join(const Range& items, std::string_view sep) {
    std::string out;
    for (std::string_view item : items) {
        if (!out.empty()) {
            out.append(sep);
        }
        out.append(item);
    }
    return out;
}

std::string_view type_name(const toml::node& node) {
    switch (node.type()) {
    case toml::node_type::table:
        return "table";
    case toml::node_type::array:
        return "array";
    case toml::node_type::string:
        return "string";
    case toml::node_type::integer:
        return "integer";
    case toml::node_type::floating_point:
        return "float";
    case toml::node_type::boolean:
        return "boolean";
    case toml::node_type::date:
        return "date";
    case toml::node_type::time:
        return "time";
    case toml::node_type::date_time:
        return "date-time";
    case toml::node_type::none:
        break;
    }
    return "nothing";
}

SourcePosition position_of(const toml::source_region& region) {
    if (region.begin.line == 0) {
        return {};
    }
    return {region.begin.line, region.begin.column};
}

size_t count_chars(std::string_view utf8) {
    return static_cast<size_t>(std::count_if(utf8.begin(), utf8.end(), [](char c) {
        return (static_cast<unsigned char>(c) & 0xC0) != 0x80;
    }));
}

std::string in_quotes(std::string_view s) {
    return "\"" + std::string(s) + "\"";
}

bool is_vassal_name(std::string_view name);

class Validator {
public:
    Validator(std::string file, const EnvLookup& env) : file_(std::move(file)), env_(env) {}

    // A layer's text, for positions inside its strings.
    void add_text(std::string file, std::string_view text) { texts_[std::move(file)] = text; }
    // What ${NAME}, ${INSTANCE} and ${PROFILE} stand for.
    void set_statics(const Vassal& v) {
        statics_.name = v.name;
        statics_.instance = v.instance;
        statics_.profile = v.profile;
        statics_.env = env_;
        instance_ = !v.instance.empty();
    }

    std::vector<Diagnostic> take_errors() {
        std::stable_sort(errors_.begin(), errors_.end(), [](const auto& a, const auto& b) {
            return std::tie(a.at.line, a.at.column) < std::tie(b.at.line, b.at.column);
        });
        return std::move(errors_);
    }

    void error(SourcePosition at, std::string message) {
        errors_.push_back({file_, at, std::move(message)});
    }
    // At a place in whichever layer holds it.
    void error(const toml::source_region& where, std::string message) {
        errors_.push_back({file_of(where), position_of(where), std::move(message)});
    }
    void error(const toml::node& node, std::string message) {
        error(node.source(), std::move(message));
    }

    std::string file_of(const toml::source_region& where) const {
        return where.path != nullptr && !where.path->empty() ? *where.path : file_;
    }

    void validate(toml::table& root, Vassal& v) {
        check_keys(root, "", kTopKeys);
        fill_statics(root, "");

        // `socket` first: it decides which placeholders the other keys may use.
        if (auto* node = root.get("socket")) {
            if (auto s = enum_value(*node, "socket",
                                    std::array<std::string_view, 3>{"tcp", "unix", "inherit"})) {
                v.socket = *s == "tcp" ? SocketKind::Tcp
                                       : (*s == "unix" ? SocketKind::Unix : SocketKind::Inherit);
            }
        }
        socket_ = v.socket;
        // `type` too: a daemon gets no port, so it decides which keys and placeholders apply.
        if (auto* node = root.get("type")) {
            if (auto t =
                    enum_value(*node, "type", std::array<std::string_view, 2>{"web", "daemon"})) {
                v.type = *t == "web" ? VassalType::Web : VassalType::Daemon;
            }
        }
        daemon_ = v.type == VassalType::Daemon;
        if (auto* table = section(root, "watch", kWatchKeys)) {
            if (auto* node = table->get("paths")) {
                watch_list(*node, "watch.paths", "a path", v.watch.paths);
            }
            if (auto* node = table->get("ignore")) {
                watch_list(*node, "watch.ignore", "a glob like \"*.pyc\"", v.watch.ignore);
            }
            duration(*table, "watch.debounce", "debounce", v.watch.debounce, true);
            if (table->get("paths") == nullptr) {
                error(*table, "watch: expected 'paths', the files and directories to watch "
                              "(relative to cwd), like paths = [\"src\"]");
            }
        }
        if (daemon_) {
            for (std::string_view key : {"hosts", "path", "socket", "concurrency", "queue"}) {
                if (auto* node = root.get(key)) {
                    error(*node, std::string(key) +
                                     ": a daemon (type = \"daemon\") gets no port and no "
                                     "route; remove '" +
                                     std::string(key) + "' or make it a web vassal");
                }
            }
        }

        if (auto* node = root.get("command")) {
            string_array(*node, "command", v.command);
        } else {
            error(SourcePosition{}, "missing required key 'command': expected an array of "
                                    "strings, like [\"python3\", \"app.py\", \"${PORT}\"]");
        }
        if (auto* node = root.get("workers")) {
            workers(*node, v);
        }
        if (auto* node = root.get("concurrency")) {
            if (auto n = bounded_integer(*node, "concurrency", 0, kMaxConcurrency)) {
                v.concurrency = static_cast<int>(*n);
            }
        }
        if (auto* node = root.get("hosts")) {
            v.hosts_at = position_of(node->source());
            hosts(*node, v);
        } else if (!daemon_) {
            error(SourcePosition{},
                  "missing required key 'hosts': the hosts this vassal serves, like "
                  "[\"app.localhost\"]; [\"*\"] makes it the default vassal, for every host "
                  "no other vassal claims");
        }
        if (auto* node = root.get("path")) {
            v.path_at = position_of(node->source());
            if (auto p = url_path(*node, "path")) {
                while (p->size() > 1 && p->back() == '/') {
                    p->pop_back();
                }
                v.path = *p;
            }
        }
        if (auto* node = root.get("cwd")) {
            cwd(*node, v);
        }
        if (auto* node = root.get("after")) {
            v.after_at = position_of(node->source());
            v.after_file = file_of(node->source());
            after(*node, v);
        }
        if (auto* node = root.get("env")) {
            env(*node, v);
        }
        if (auto* table = section(root, "health", kHealthKeys)) {
            health_check(*table, v);
            duration(*table, "health.interval", "interval", v.health.interval, false);
            duration(*table, "health.timeout", "timeout", v.health.timeout, false);
            duration(*table, "health.start_timeout", "start_timeout", v.health.start_timeout,
                     false);
            if (auto* node = table->get("notify")) {
                if (auto b = boolean(*node, "health.notify")) {
                    v.health.notify = *b;
                }
            }
        }
        inherit_readiness(root, v);
        if (auto* table = section(root, "queue", kQueueKeys)) {
            if (auto* node = table->get("size")) {
                if (auto n = bounded_integer(*node, "queue.size", 0, kMaxQueueSize)) {
                    v.queue.size = static_cast<uint32_t>(*n);
                }
            }
            duration(*table, "queue.timeout", "timeout", v.queue.timeout, false);
        }
        if (auto* table = section(root, "reload", kReloadKeys)) {
            if (auto* node = table->get("strategy")) {
                if (auto s = enum_value(
                        *node, "reload.strategy",
                        std::array<std::string_view, 3>{"rolling", "bluegreen", "restart"})) {
                    v.reload.strategy = *s == "rolling"     ? ReloadStrategy::Rolling
                                        : *s == "bluegreen" ? ReloadStrategy::BlueGreen
                                                            : ReloadStrategy::Restart;
                }
            }
            duration(*table, "reload.drain_timeout", "drain_timeout", v.reload.drain_timeout, true);
        }
        if (auto* table = section(root, "tls", kTlsKeys)) {
            tls(*table, v);
        }
        if (auto* table = section(root, "recycle", kRecycleKeys)) {
            recycle(*table, v);
        }
        if (auto* table = section(root, "stop", kStopKeys)) {
            if (auto* node = table->get("signal")) {
                stop_signal(*node, v);
            }
            duration(*table, "stop.timeout", "timeout", v.stop.timeout, true);
        }
        identity(root, v);
        if (auto* table = section(root, "limits", kLimitsKeys)) {
            limits(*table, v);
        }
        if (auto* table = section(root, "upstream", kUpstreamKeys)) {
            upstream(*table, v);
        }
    }

private:
    // [tls]: the vassal's certificate (a path relative to the file's directory) and whether
    // plain HTTP for its hosts is redirected.
    void tls(const toml::table& table, Vassal& v) {
        auto path_key = [&](std::string_view local, std::filesystem::path& out) {
            const toml::node* node = table.get(local);
            if (node == nullptr) {
                return;
            }
            const std::string key = "tls." + std::string(local);
            if (auto s = string_value(*node, key, "a file path")) {
                if (s->empty()) {
                    error(*node, key + ": expected a file path, got \"\"");
                } else {
                    out = (v.dir / *s).lexically_normal();
                }
            }
        };
        path_key("cert", v.tls.cert);
        path_key("key", v.tls.key);
        if (const toml::node* node = table.get("key"); node != nullptr && v.tls.cert.empty()) {
            error(*node, "tls.key: needs tls.cert, the certificate it belongs to");
        }
        if (const toml::node* node = table.get("redirect")) {
            if (auto b = boolean(*node, "tls.redirect")) {
                v.tls.redirect = *b;
            }
        }
        if (const toml::node* node = table.get("acme")) {
            if (auto b = boolean(*node, "tls.acme")) {
                v.tls.acme = *b;
            }
            if (v.tls.acme && !v.tls.cert.empty()) {
                error(*node, "tls.acme: obtains the certificate itself; give either acme = true "
                             "or tls.cert, not both");
            } else if (v.tls.acme && std::none_of(v.hosts.begin(), v.hosts.end(),
                                                  [](auto& h) { return !h.starts_with("*"); })) {
                error(*node, "tls.acme: needs an exact name in hosts (like \"shop.example\"): "
                             "a certificate authority issues no certificate for \"*\", and "
                             "wildcards need a DNS challenge");
            }
        }
        if (!v.tls.cert.empty() &&
            std::all_of(v.hosts.begin(), v.hosts.end(), [](const auto& h) { return h == "*"; })) {
            error(position_of(table.source()),
                  "tls.cert: is chosen by the names in hosts (SNI), and this vassal has none; "
                  "the certificate for any other name is liege run --tls-cert");
        }
    }

    template <size_t N>
    void check_keys(const toml::table& table, std::string_view section,
                    const std::array<std::string_view, N>& known) {
        for (auto&& [key, node] : table) {
            std::string_view k = key.str();
            if (std::find(known.begin(), known.end(), k) != known.end()) {
                continue;
            }
            std::string message = "unknown key '" + std::string(k) + "'";
            if (!section.empty()) {
                message += " in [" + std::string(section) + "]";
            }
            if (auto near = closest(k, known)) {
                message += "; did you mean '" + std::string(*near) + "'?";
            } else if (auto home = section_of(k); section.empty() && home) {
                message +=
                    "; did you mean '" + std::string(k) + "' in [" + std::string(*home) + "]?";
            } else {
                message += "; expected one of " + join(known, ", ");
            }
            error(key.source(), std::move(message));
        }
    }

    // The section a misplaced top-level key belongs to ("interval" → "health").
    static std::optional<std::string_view> section_of(std::string_view key) {
        auto in = [&](const auto& keys) {
            return std::find(keys.begin(), keys.end(), key) != keys.end();
        };
        if (in(kHealthKeys)) {
            return "health";
        }
        if (in(kReloadKeys)) {
            return "reload";
        }
        if (in(kStopKeys)) {
            return "stop";
        }
        if (in(kQueueKeys)) {
            return "queue";
        }
        if (in(kRecycleKeys)) {
            return "recycle";
        }
        return std::nullopt;
    }

    template <size_t N>
    const toml::table* section(const toml::table& root, std::string_view name,
                               const std::array<std::string_view, N>& known) {
        const toml::node* node = root.get(name);
        if (!node) {
            return nullptr;
        }
        const toml::table* table = node->as_table();
        if (!table) {
            error(*node, std::string(name) + ": expected a table ([" + std::string(name) +
                             "] with " + join(known, ", ") + "), got " +
                             std::string(type_name(*node)));
            return nullptr;
        }
        check_keys(*table, name, known);
        return table;
    }

    std::optional<std::string> string_value(const toml::node& node, std::string_view key,
                                            std::string_view expected) {
        if (reported_.count(&node) != 0) {
            return std::nullopt; // a placeholder problem, reported already
        }
        if (auto* s = node.as_string()) {
            return s->get();
        }
        error(node, std::string(key) + ": expected " + std::string(expected) + ", got " +
                        std::string(type_name(node)));
        return std::nullopt;
    }

    template <size_t N>
    std::optional<std::string_view> enum_value(const toml::node& node, std::string_view key,
                                               const std::array<std::string_view, N>& choices) {
        std::string expected;
        for (size_t i = 0; i < N; ++i) {
            expected += (i == 0 ? "" : (i + 1 == N ? " or " : ", ")) + in_quotes(choices[i]);
        }
        auto s = string_value(node, key, expected);
        if (!s) {
            return std::nullopt;
        }
        for (std::string_view choice : choices) {
            if (*s == choice) {
                return choice;
            }
        }
        std::string message =
            std::string(key) + ": expected " + expected + ", got " + in_quotes(*s);
        if (auto near = closest(*s, choices)) {
            message += "; did you mean " + in_quotes(*near) + "?";
        }
        error(node, std::move(message));
        return std::nullopt;
    }

    void duration(const toml::table& table, std::string_view key, std::string_view local,
                  Millis& out, bool zero_ok) {
        const toml::node* node = table.get(local);
        if (!node) {
            return;
        }
        auto s = string_value(*node, key, "a duration like \"2s\" or \"500ms\"");
        if (!s) {
            return;
        }
        try {
            Millis d = parse_duration(*s);
            if (d.count() == 0 && !zero_ok) {
                error(*node,
                      std::string(key) + ": expected a duration above zero, got " + in_quotes(*s));
                return;
            }
            out = d;
        } catch (const std::invalid_argument& e) {
            error(*node, std::string(key) + ": " + e.what());
        }
    }

    // An integer from `min` to `max`; anything else is an error naming what was expected.
    std::optional<int64_t> bounded_integer(const toml::node& node, std::string_view key,
                                           int64_t min, int64_t max) {
        const std::string expected = std::string(key) + ": expected an integer from " +
                                     std::to_string(min) + " to " + std::to_string(max) + ", got ";
        if (reported_.count(&node) != 0) {
            return std::nullopt;
        }
        auto n = integer_of(node);
        if (!n) {
            error(node, expected + shown(node));
            return std::nullopt;
        }
        if (*n < min || *n > max) {
            error(node, expected + std::to_string(*n));
            return std::nullopt;
        }
        return n;
    }

    // An integer, or a string that is one once its placeholders are filled ("${env:W:-2}").
    static std::optional<int64_t> integer_of(const toml::node& node) {
        if (const auto* n = node.as_integer()) {
            return n->get();
        }
        if (const auto* s = node.as_string()) {
            const std::string& text = s->get();
            int64_t value = 0;
            auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
            if (ec == std::errc() && end == text.data() + text.size() && !text.empty()) {
                return value;
            }
        }
        return std::nullopt;
    }

    // What a value that is not the integer expected is, for the message.
    static std::string shown(const toml::node& node) {
        if (const auto* s = node.as_string()) {
            return "the string " + in_quotes(s->get());
        }
        return std::string(type_name(node));
    }

    // A command line (`command`, `health.command`): a non-empty array of strings whose first one
    // names the program; placeholders are checked. `out` stays empty unless all are strings.
    void string_array(const toml::node& node, std::string_view name,
                      std::vector<std::string>& out) {
        const std::string what(name);
        const toml::array* array = node.as_array();
        if (!array) {
            error(node, what +
                            ": expected an array of strings, like [\"python3\", \"app.py\"], "
                            "got " +
                            std::string(type_name(node)));
            return;
        }
        if (array->empty()) {
            error(node, what + ": expected at least the program to run, got an empty array");
            return;
        }
        bool all_strings = true;
        for (size_t i = 0; i < array->size(); ++i) {
            const toml::node& item = *array->get(i);
            std::string key = what + "[" + std::to_string(i) + "]";
            auto s = string_value(item, key, "a string");
            if (!s) {
                all_strings = false;
                continue;
            }
            if (i == 0 && s->empty()) {
                error(item, key + ": expected the program to run, got an empty string");
            }
            placeholders(item, key, *s);
            out.push_back(std::move(*s));
        }
        if (!all_strings) {
            out.clear();
        }
    }

    void watch_list(const toml::node& node, std::string_view key, std::string_view what,
                    std::vector<std::string>& out) {
        const toml::array* array = node.as_array();
        if (!array) {
            error(node, std::string(key) + ": expected an array of strings, got " +
                            std::string(type_name(node)));
            return;
        }
        for (size_t i = 0; i < array->size(); ++i) {
            const std::string item_key = std::string(key) + "[" + std::to_string(i) + "]";
            auto s = string_value(*array->get(i), item_key, what);
            if (!s) {
                continue;
            }
            if (s->empty()) {
                error(*array->get(i),
                      item_key + ": expected " + std::string(what) + ", got an empty string");
                continue;
            }
            out.push_back(std::move(*s));
        }
    }

    void after(const toml::node& node, Vassal& v) {
        const toml::array* array = node.as_array();
        if (!array) {
            error(node, "after: expected an array of vassal names, like [\"redis\"], got " +
                            std::string(type_name(node)));
            return;
        }
        for (size_t i = 0; i < array->size(); ++i) {
            const toml::node& item = *array->get(i);
            const std::string key = "after[" + std::to_string(i) + "]";
            auto s = string_value(item, key, "a vassal name");
            if (!s) {
                continue;
            }
            if (!is_vassal_name(*s)) {
                error(item, key + ": " + in_quotes(*s) +
                                " is no vassal name (a file name without .toml)");
            } else if (*s == v.name) {
                error(item, key + ": a vassal cannot start after itself");
            } else if (std::find(v.after.begin(), v.after.end(), *s) != v.after.end()) {
                error(item, key + ": " + in_quotes(*s) + " is listed twice");
            } else {
                v.after.push_back(std::move(*s));
            }
        }
    }

    // [health]: at most one of path (web vassals), tcp and command says what a check is.
    void health_check(const toml::table& table, Vassal& v) {
        std::vector<std::string_view> given;
        for (std::string_view key : {"path", "tcp", "command"}) {
            if (table.get(key) != nullptr) {
                given.push_back(key);
            }
        }
        if (given.size() > 1) {
            error(*table.get(given[1]), "health." + std::string(given[1]) +
                                            ": [health] takes one "
                                            "check: 'path', 'tcp' or 'command', not both '" +
                                            std::string(given[0]) + "' and '" +
                                            std::string(given[1]) + "'");
        }
        if (auto* node = table.get("path")) {
            if (daemon_) {
                error(*node, "health.path: a daemon serves no HTTP through liege; check it "
                             "with 'tcp' (\"HOST:PORT\") or 'command'");
            } else if (auto p = url_path(*node, "health.path")) {
                v.health.path = *p;
            }
        }
        if (auto* node = table.get("tcp")) {
            if (auto s = string_value(*node, "health.tcp", "an address \"HOST:PORT\"")) {
                try {
                    Address a = parse_address(*s);
                    if (a.is_unix() || a.port == 0) {
                        error(*node, "health.tcp: expected \"HOST:PORT\" with a port above 0, "
                                     "got " +
                                         in_quotes(*s));
                    } else {
                        v.health.tcp = a.str();
                    }
                } catch (const std::invalid_argument& e) {
                    error(*node, "health.tcp: " + std::string(e.what()));
                }
            }
        }
        if (auto* node = table.get("command")) {
            string_array(*node, "health.command", v.health.command);
        }
    }

    // socket = "inherit": the emperor's socket is listening before the app is, so the kernel
    // completes a connect to it whether or not the app ever starts. Readiness must come from
    // the app: an HTTP answer (health.path) or its READY=1 (health.notify).
    void inherit_readiness(const toml::table& root, const Vassal& v) {
        const toml::node* node = root.get("socket");
        if (daemon_ || v.socket != SocketKind::Inherit || node == nullptr ||
            !v.health.path.empty() || v.health.notify) {
            return;
        }
        if (const toml::node* health = root.get("health");
            health != nullptr && health->is_table() && health->as_table()->get("path")) {
            return; // an invalid health.path, reported already
        }
        error(*node, "socket: with \"inherit\" a connect is answered by the kernel on the "
                     "emperor's socket even before the app runs, so it proves nothing; add "
                     "[health] path = \"/healthz\" (a GET the app answers) or [health] "
                     "notify = true (the app sends READY=1 to $NOTIFY_SOCKET)");
    }

    // [recycle]: max_requests a count, max_rss a size, request_timeout a duration.
    // A size above zero ("512MiB") at `local` of `table`, when it is there.
    void positive_size(const toml::table& table, std::string_view key, std::string_view local,
                       std::string_view example, uint64_t& out) {
        const toml::node* node = table.get(local);
        if (node == nullptr) {
            return;
        }
        auto s = string_value(*node, key, "a size like \"" + std::string(example) + "\"");
        if (!s) {
            return;
        }
        try {
            out = parse_size(*s);
            if (out == 0) {
                error(*node,
                      std::string(key) + ": expected a size above zero, got " + in_quotes(*s));
            }
        } catch (const std::invalid_argument& e) {
            error(*node, std::string(key) + ": " + e.what());
        }
    }

    std::optional<bool> boolean(const toml::node& node, std::string_view key) {
        if (auto b = node.as_boolean()) {
            return b->get();
        }
        error(node,
              std::string(key) + ": expected true or false, got " + std::string(type_name(node)));
        return std::nullopt;
    }

    // user, group, no_new_privs. Whether the user exists, and whether this emperor may become
    // it, is the spawner's to know: here only the spelling.
    void identity(const toml::table& root, Vassal& v) {
        auto name = [&](std::string_view key, std::string& out, bool owner_ok) {
            const toml::node* node = root.get(key);
            if (node == nullptr) {
                return;
            }
            const std::string what = owner_ok ? "a user name, a numeric uid or \"@owner\""
                                              : "a group name or a numeric gid";
            auto s = string_value(*node, key, what);
            if (!s) {
                return;
            }
            if (owner_ok && *s == "@owner") {
                out = *s;
                return;
            }
            // POSIX portable names, and the '$' of machine accounts at the end.
            const bool ok = !s->empty() && s->size() <= 32 && (*s)[0] != '-' &&
                            std::all_of(s->begin(), s->end(),
                                        [](char c) {
                                            return std::isalnum(static_cast<unsigned char>(c)) ||
                                                   c == '_' || c == '-' || c == '.' || c == '$';
                                        }) &&
                            s->find('$') >= s->size() - 1;
            if (!ok) {
                std::string message =
                    std::string(key) + ": expected " + what + ", got " + in_quotes(*s);
                if (owner_ok && s->starts_with("@")) {
                    message += "; did you mean \"@owner\"?";
                }
                error(*node, std::move(message));
                return;
            }
            out = *s;
        };
        name("user", v.identity.user, true);
        name("group", v.identity.group, false);
        if (const toml::node* node = root.get("no_new_privs")) {
            if (auto b = boolean(*node, "no_new_privs")) {
                v.identity.no_new_privs = *b;
            }
        }
    }

    // [limits]: rlimits (integers or "unlimited") and cgroup limits.
    void limits(const toml::table& table, Vassal& v) {
        auto rlimit = [&](std::string_view local, std::optional<uint64_t>& out, bool size) {
            const toml::node* node = table.get(local);
            if (node == nullptr || reported_.count(node) != 0) {
                return;
            }
            const std::string key = "limits." + std::string(local);
            const std::string expected = size ? "a size like \"0\" or \"1GiB\", or \"unlimited\""
                                              : "an integer from 1 to 1073741824, or \"unlimited\"";
            const auto* text = node->as_string();
            if (text != nullptr && text->get() == "unlimited") {
                out = Limits::kUnlimited;
                return;
            }
            const auto n = integer_of(*node);
            if (n && *n >= (size ? 0 : 1) && *n <= (1 << 30)) {
                out = static_cast<uint64_t>(*n);
                return;
            }
            if (text != nullptr && size) {
                try {
                    out = parse_size(text->get());
                    return;
                } catch (const std::invalid_argument&) {
                }
            }
            error(*node, key + ": expected " + expected + ", got " +
                             (n ? std::to_string(*n) : shown(*node)));
        };
        rlimit("nofile", v.limits.nofile, false);
        rlimit("nproc", v.limits.nproc, false);
        rlimit("core", v.limits.core, true);
        positive_size(table, "limits.memory", "memory", "1GiB", v.limits.memory);
        if (auto* node = table.get("cpu")) {
            if (auto s = string_value(*node, "limits.cpu",
                                      "a share of one CPU like \"50%\" or \"200%\"")) {
                uint32_t percent = 0;
                const bool digits = s->size() >= 2 && s->back() == '%' &&
                                    std::all_of(s->begin(), s->end() - 1, [](char c) {
                                        return std::isdigit(static_cast<unsigned char>(c));
                                    });
                if (digits && s->size() <= 7) {
                    percent = static_cast<uint32_t>(std::stoul(s->substr(0, s->size() - 1)));
                }
                if (percent == 0 || percent > 102'400) {
                    error(*node, "limits.cpu: expected a share of one CPU from \"1%\" to "
                                 "\"102400%\", like \"50%\", got " +
                                     in_quotes(*s));
                } else {
                    v.limits.cpu = percent;
                }
            }
        }
        if (auto* node = table.get("pids")) {
            if (auto n = bounded_integer(*node, "limits.pids", 1, 4'194'304)) {
                v.limits.pids = static_cast<uint64_t>(*n);
            }
        }
    }

    // [upstream]: how requests reach the workers.
    void upstream(const toml::table& table, Vassal& v) {
        if (daemon_) {
            error(table, "upstream: a daemon (type = \"daemon\") gets no requests; remove "
                         "[upstream] or make it a web vassal");
            return;
        }
        if (auto* node = table.get("request_buffering")) {
            if (auto s = enum_value(*node, "upstream.request_buffering",
                                    std::array<std::string_view, 3>{"auto", "always", "off"})) {
                v.upstream.request_buffering = *s == "auto"     ? RequestBuffering::Auto
                                               : *s == "always" ? RequestBuffering::Always
                                                                : RequestBuffering::Off;
            }
        }
        if (auto* node = table.get("trace")) {
            if (auto b = boolean(*node, "upstream.trace")) {
                v.upstream.trace = *b;
            }
        }
    }

    void recycle(const toml::table& table, Vassal& v) {
        if (auto* node = table.get("max_requests")) {
            if (auto n = bounded_integer(*node, "recycle.max_requests", 0, 1'000'000'000)) {
                v.recycle.max_requests = static_cast<uint64_t>(*n);
            }
        }
        positive_size(table, "recycle.max_rss", "max_rss", "512MiB", v.recycle.max_rss);
        duration(table, "recycle.request_timeout", "request_timeout", v.recycle.request_timeout,
                 false);
        if (daemon_) {
            for (std::string_view key : {"max_requests", "request_timeout"}) {
                if (auto* node = table.get(key)) {
                    error(*node, "recycle." + std::string(key) +
                                     ": a daemon (type = \"daemon\") gets no requests; only "
                                     "max_rss recycles it");
                }
            }
        }
    }

    // `workers = { min, max, idle }`: a pool that scales with demand.
    void scaled_workers(const toml::table& table, Vassal& v) {
        check_keys(table, "workers", kWorkersKeys);
        if (daemon_) {
            error(table, "workers: a daemon (type = \"daemon\") gets no requests to scale "
                         "with; give it a number of workers");
            return;
        }
        ScalePolicy scale;
        scale.scaled = true;
        bool ok = true;
        if (auto* node = table.get("min")) {
            if (auto n = bounded_integer(*node, "workers.min", 0, kMaxWorkers)) {
                scale.min = static_cast<int>(*n);
            } else {
                ok = false;
            }
        }
        if (auto* node = table.get("max")) {
            if (auto n = bounded_integer(*node, "workers.max", 1, kMaxWorkers)) {
                scale.max = static_cast<int>(*n);
                if (ok && scale.max < scale.min) {
                    error(*node, "workers.max: expected at least min (" +
                                     std::to_string(scale.min) + "), got " +
                                     std::to_string(scale.max));
                    ok = false;
                }
            } else {
                ok = false;
            }
        } else {
            error(table, "workers: expected 'max', the most workers the pool grows to, like "
                         "{ min = 0, max = 8, idle = \"5m\" }");
            ok = false;
        }
        duration(table, "workers.idle", "idle", scale.idle, false);
        if (ok) {
            v.scale = scale;
            v.workers = scale.min; // the pool at start; the emperor grows it with demand
        }
    }

    void workers(const toml::node& node, Vassal& v) {
        if (reported_.count(&node) != 0) {
            return;
        }
        if (const auto* table = node.as_table()) {
            scaled_workers(*table, v);
            return;
        }
        auto n = integer_of(node);
        if (!n) {
            error(node, "workers: expected an integer ≥ 1, got " + shown(node));
            return;
        }
        int64_t count = *n;
        if (count < 1) {
            error(node, "workers: expected an integer ≥ 1, got " + std::to_string(count));
        } else if (count > kMaxWorkers) {
            error(node, "workers: expected at most " + std::to_string(kMaxWorkers) +
                            " workers, got " + std::to_string(count));
        } else {
            v.workers = static_cast<int>(count);
            v.scale.min = v.scale.max = v.workers;
        }
    }

    // A host pattern as written → lower-cased pattern, or an explanation of what is wrong.
    static std::string check_host(std::string& host) {
        std::transform(host.begin(), host.end(), host.begin(),
                       [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
        if (host.size() > 1 && host.back() == '.') {
            host.pop_back(); // "example.com." is the same name
        }
        if (host == "*") {
            return {};
        }
        if (host.find("://") != std::string::npos || host.find('/') != std::string::npos) {
            return "expected a host name, not a URL";
        }
        if (host.front() == '[') {
            bool ok = host.back() == ']' && host.size() > 2 &&
                      std::all_of(host.begin() + 1, host.end() - 1, [](unsigned char c) {
                          return std::isxdigit(c) || c == ':' || c == '.';
                      });
            return ok ? std::string() : "expected a bracketed IPv6 address like \"[::1]\"";
        }
        if (host.find(':') != std::string::npos) {
            return "a host pattern has no port (the port in the Host header is ignored)";
        }
        std::string_view name = host;
        if (name.starts_with("*.")) {
            name.remove_prefix(2);
        }
        if (name.find('*') != std::string_view::npos) {
            return "'*' is allowed only as \"*\" or as the first label, as in \"*.example.com\"";
        }
        if (name.empty() || name.size() > 253) {
            return "expected a host name of 1 to 253 characters";
        }
        size_t start = 0;
        while (start <= name.size()) {
            size_t dot = name.find('.', start);
            std::string_view label = name.substr(
                start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
            if (label.empty() || label.size() > 63) {
                return "expected dot-separated labels of 1 to 63 characters";
            }
            for (unsigned char c : label) {
                if (!std::isalnum(c) && c != '-' && c != '_') {
                    return std::string("invalid character '") + static_cast<char>(c) +
                           "'; expected letters, digits, '-', '_' and '.'";
                }
            }
            if (dot == std::string_view::npos) {
                break;
            }
            start = dot + 1;
        }
        return {};
    }

    void hosts(const toml::node& node, Vassal& v) {
        const toml::array* array = node.as_array();
        if (!array) {
            error(node, "hosts: expected an array of host patterns, like [\"app.example.com\", "
                        "\"*.example.com\", \"*\"], got " +
                            std::string(type_name(node)));
            return;
        }
        if (array->empty()) {
            error(node, "hosts: expected at least one host pattern ([\"*\"] serves any host)");
            return;
        }
        std::vector<std::string> out;
        bool ok = true;
        for (size_t i = 0; i < array->size(); ++i) {
            const toml::node& item = *array->get(i);
            std::string key = "hosts[" + std::to_string(i) + "]";
            auto s = string_value(item, key, "a host pattern string");
            if (!s) {
                ok = false;
                continue;
            }
            if (s->empty()) {
                error(item, key + ": expected a host pattern, got an empty string");
                ok = false;
                continue;
            }
            std::string written = *s;
            if (std::string problem = check_host(*s); !problem.empty()) {
                error(item, key + ": invalid host pattern " + in_quotes(written) + ": " + problem);
                ok = false;
                continue;
            }
            if (std::find(out.begin(), out.end(), *s) != out.end()) {
                error(item, key + ": " + in_quotes(*s) + " is listed twice");
                ok = false;
                continue;
            }
            out.push_back(std::move(*s));
        }
        if (ok) {
            v.hosts = std::move(out);
        }
    }

    std::optional<std::string> url_path(const toml::node& node, std::string_view key) {
        auto s = string_value(node, key, "a path starting with \"/\"");
        if (!s) {
            return std::nullopt;
        }
        if (s->empty() || s->front() != '/') {
            error(node,
                  std::string(key) + ": expected a path starting with \"/\", got " + in_quotes(*s));
            return std::nullopt;
        }
        for (unsigned char c : *s) {
            if (c <= ' ' || c == 0x7f || c == '#' || (key == "path" && c == '?')) {
                std::string shown = c == ' ' ? "a space" : "'" + std::string(1, c) + "'";
                if (c < ' ' || c == 0x7f) {
                    shown = "a control character";
                }
                error(node, std::string(key) + ": " + in_quotes(*s) + " contains " + shown +
                                "; expected a URL path");
                return std::nullopt;
            }
        }
        return s;
    }

    void cwd(const toml::node& node, Vassal& v) {
        auto s = string_value(node, "cwd", "a directory path");
        if (!s) {
            return;
        }
        if (s->empty()) {
            error(node, "cwd: expected a directory path, got an empty string");
            return;
        }
        if (!placeholders(node, "cwd", *s)) {
            return;
        }
        v.cwd = *s;
        check_directory(node, v);
    }

    // A working directory that does not depend on the worker must exist now; one that uses
    // ${PORT}, ${SOCKET} or ${WORKER} can only be checked at spawn time.
    void check_directory(const toml::node& at, const Vassal& v) {
        bool per_worker = false;
        walk_placeholders(
            v.cwd, [](std::string_view) {},
            [&](size_t, std::string_view inner) {
                auto kind = classify(inner).kind;
                per_worker = per_worker || kind == PlaceholderKind::Port ||
                             kind == PlaceholderKind::Socket || kind == PlaceholderKind::Worker;
            },
            [](size_t) {});
        if (per_worker) {
            return;
        }
        fs::path dir = v.working_dir(statics_);
        std::error_code ec;
        if (!fs::is_directory(dir, ec)) {
            std::string why = fs::exists(dir, ec) ? "is not a directory" : "does not exist";
            error(at, "cwd: " + in_quotes(dir.string()) + " " + why);
        }
    }

    void env(const toml::node& node, Vassal& v) {
        const toml::table* table = node.as_table();
        if (!table) {
            error(node, "env: expected a table of strings, like { GREETING = \"hi\" }, got " +
                            std::string(type_name(node)));
            return;
        }
        for (auto&& [key, value] : *table) {
            std::string name(key.str());
            std::string where = "env." + name;
            bool name_ok = true;
            if (name.empty() || name.find('=') != std::string::npos ||
                name.find('\0') != std::string::npos) {
                error(key.source(),
                      where + ": invalid environment variable name " + in_quotes(name));
                name_ok = false;
            } else if (std::find(kReservedEnv.begin(), kReservedEnv.end(), name) !=
                           kReservedEnv.end() ||
                       name.starts_with("LIEGE_")) {
                error(key.source(), where + ": " + name + " is set by liege for every worker");
                name_ok = false;
            }
            const auto* s = value.as_string();
            if (!s) {
                std::string message =
                    where + ": expected a string, got " + std::string(type_name(value));
                if (value.is_integer() || value.is_floating_point() || value.is_boolean()) {
                    message += " (environment values are text: quote it)";
                }
                error(value, std::move(message));
                continue;
            }
            if (placeholders(value, where, s->get()) && name_ok) {
                v.env.emplace_back(std::move(name), s->get());
            }
        }
    }

    void stop_signal(const toml::node& node, Vassal& v) {
        auto s = string_value(node, "stop.signal", "a signal name like \"SIGTERM\"");
        if (!s) {
            return;
        }
        std::string name = *s;
        std::transform(name.begin(), name.end(), name.begin(),
                       [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
        if (!name.starts_with("SIG")) {
            name = "SIG" + name;
        }
        std::vector<std::string_view> names;
        for (const auto& sig : kSignals) {
            if (sig.name == name) {
                v.stop.signal = sig.signo;
                return;
            }
            names.push_back(sig.name);
        }
        std::string message =
            "stop.signal: expected a signal name (" + join(names, ", ") + "), got " + in_quotes(*s);
        if (auto near = closest(name, names)) {
            message = "stop.signal: unknown signal " + in_quotes(*s) + "; did you mean " +
                      in_quotes(*near) + "?";
        }
        error(node, std::move(message));
    }

    // Where byte `offset` of the string value `value` of `node` is in the file: exact when the
    // string is written on one line and its raw text up to there equals the value (no escape
    // sequences before it), otherwise the start of the string.
    SourcePosition position_in_string(const toml::node& node, std::string_view value,
                                      size_t offset) {
        SourcePosition start = position_of(node.source());
        auto text_it = texts_.find(file_of(node.source()));
        if (text_it == texts_.end()) {
            return start;
        }
        const std::string_view text_ = text_it->second;
        size_t line_start = 0;
        for (uint32_t line = 1; line < start.line; ++line) {
            line_start = text_.find('\n', line_start);
            if (line_start == std::string_view::npos) {
                return start;
            }
            ++line_start;
        }
        std::string_view line = text_.substr(line_start);
        line = line.substr(0, line.find('\n'));
        size_t byte = 0;
        for (uint32_t col = 1; col < start.column && byte < line.size(); ++col) {
            ++byte;
            while (byte < line.size() && (static_cast<unsigned char>(line[byte]) & 0xC0) == 0x80) {
                ++byte;
            }
        }
        std::string_view raw = line.substr(byte);
        if (raw.empty() || (raw[0] != '"' && raw[0] != '\'') || raw.starts_with("\"\"\"") ||
            raw.starts_with("'''")) {
            return start;
        }
        raw.remove_prefix(1);
        std::string_view before = value.substr(0, offset);
        if (!raw.starts_with(before)) {
            return start;
        }
        return {start.line, start.column + 1 + static_cast<uint32_t>(count_chars(before))};
    }

    // Checks the placeholders of a string value; returns whether all were fine.
    bool placeholders(const toml::node& node, std::string_view key, std::string_view value,
                      bool per_worker = true) {
        bool ok = true;
        auto fail = [&](size_t offset, std::string message) {
            error(position_in_string(node, value, offset), std::string(key) + ": " + message);
            ok = false;
        };
        walk_placeholders(
            value, [](std::string_view) {},
            [&](size_t offset, std::string_view inner) {
                std::string written = "'${" + std::string(inner) + "}'";
                Placeholder p = classify(inner);
                const bool worker_kind = p.kind == PlaceholderKind::Port ||
                                         p.kind == PlaceholderKind::Socket ||
                                         p.kind == PlaceholderKind::Worker;
                if (worker_kind && !per_worker) {
                    fail(offset, written + " differs per worker: it is filled only in command, "
                                           "cwd, env and health.command");
                    return;
                }
                switch (p.kind) {
                case PlaceholderKind::Port:
                    if (daemon_) {
                        fail(offset, "${PORT} is not set for a daemon (type = \"daemon\" gets no "
                                     "port); write the port it listens on");
                    } else if (socket_ == SocketKind::Unix) {
                        fail(offset, "${PORT} is not set with socket = \"unix\"; use ${SOCKET}");
                    }
                    return;
                case PlaceholderKind::Socket:
                    if (daemon_) {
                        fail(offset, "${SOCKET} is not set for a daemon (type = \"daemon\" gets "
                                     "no socket)");
                    } else if (socket_ != SocketKind::Unix) {
                        fail(offset, "${SOCKET} is set only with socket = \"unix\"; use ${PORT} "
                                     "or set socket = \"unix\"");
                    }
                    return;
                case PlaceholderKind::Name:
                case PlaceholderKind::Worker:
                case PlaceholderKind::Profile:
                    return;
                case PlaceholderKind::Instance:
                    if (!instance_) {
                        fail(offset, "${INSTANCE} is set only for an instance of a template "
                                     "(NAME@INSTANCE.toml made from NAME@.toml)");
                    }
                    return;
                case PlaceholderKind::Env:
                    if (!is_env_name(p.var)) {
                        fail(offset, "invalid environment variable name " + in_quotes(p.var) +
                                         " in " + written);
                    } else if (p.fallback && p.fallback->find("${") != std::string_view::npos) {
                        fail(offset, "placeholders do not nest: the default in " + written +
                                         " cannot hold another placeholder");
                    } else if (!p.fallback && !lookup_env(env_, p.var)) {
                        fail(offset, "environment variable " + std::string(p.var) +
                                         " is not set; set it or give a default: '${env:" +
                                         std::string(p.var) + ":-value}'");
                    }
                    return;
                case PlaceholderKind::Unknown:
                    break;
                }
                std::string message = "unknown placeholder " + written +
                                      "; expected ${PORT}, ${SOCKET}, ${NAME}, ${WORKER}, "
                                      "${INSTANCE}, ${PROFILE}, ${env:VAR} or ${env:VAR:-default}";
                if (auto near = closest(inner, kPlaceholderNames)) {
                    message += "; did you mean '${" + std::string(*near) + "}'?";
                } else if (is_env_name(inner)) {
                    message += "; did you mean '${env:" + std::string(inner) +
                               "}'? (write $${ for a literal ${)";
                }
                fail(offset, std::move(message));
            },
            [&](size_t offset) {
                fail(offset, "unterminated placeholder: '${' without a closing '}' (write $${ "
                             "for a literal ${)");
            });
        return ok;
    }

    // Every string outside the per-worker keys: placeholders checked, then filled in place, so
    // the keys read afterwards see plain values. A string with a bad placeholder is left as
    // written (its key reports nothing more of it than what is wrong with the text).
    void fill_statics(toml::node& node, const std::string& path) {
        if (std::find(kPerWorkerKeys.begin(), kPerWorkerKeys.end(), path) != kPerWorkerKeys.end()) {
            return;
        }
        if (auto* table = node.as_table()) {
            for (auto&& [key, child] : *table) {
                fill_statics(child, path.empty() ? std::string(key.str())
                                                 : path + "." + std::string(key.str()));
            }
        } else if (auto* array = node.as_array()) {
            for (size_t i = 0; i < array->size(); ++i) {
                fill_statics(*array->get(i), path + "[" + std::to_string(i) + "]");
            }
        } else if (auto* str = node.as_string()) {
            if (str->get().find('$') == std::string::npos) {
                return;
            }
            if (placeholders(node, path, str->get(), false)) {
                str->get() = expand(str->get(), statics_);
            } else {
                reported_.insert(&node); // its key says nothing more of it
            }
        }
    }

public:
    // What `liege check` says beyond errors (VassalLoad::lints), for a vassal that validated.
    void lint(const toml::table& root, const Vassal& v, std::vector<Diagnostic>& out) {
        const toml::array* command =
            root.get("command") ? root.get("command")->as_array() : nullptr;
        if (command == nullptr || command->empty() || v.command.empty()) {
            return;
        }
        auto add = [&](const toml::node& node, SourcePosition at, std::string message,
                       bool warning) {
            out.push_back({file_of(node.source()), at, std::move(message), warning});
        };
        const toml::node& first = *command->get(0);
        const std::string program = v.command[0];
        const std::string base = fs::path(program).filename().string();
        static constexpr std::array<std::string_view, 8> kShells = {
            "sh", "bash", "dash", "zsh", "ksh", "ash", "mksh", "busybox"};
        const bool shell = std::find(kShells.begin(), kShells.end(), base) != kShells.end();
        if (program.find('$') == std::string::npos) {
            if (auto problem = program_problem(program, v)) {
                add(first, position_of(first.source()), "command[0]: " + *problem, false);
            }
        }
        bool names_port = false;
        for (size_t i = 0; i < command->size(); ++i) {
            const toml::node& item = *command->get(i);
            const std::string& arg = v.command[i];
            names_port = names_port || arg.find("${PORT}") != std::string::npos ||
                         arg.find("${SOCKET}") != std::string::npos;
            if (shell) {
                continue; // the shell expands $VAR itself
            }
            for (size_t at = arg.find('$'); at != std::string::npos; at = arg.find('$', at + 1)) {
                if (at > 0 && arg[at - 1] == '$') {
                    continue;
                }
                size_t end = at + 1;
                while (end < arg.size() &&
                       (std::isalnum(static_cast<unsigned char>(arg[end])) || arg[end] == '_')) {
                    ++end;
                }
                const std::string name = arg.substr(at + 1, end - at - 1);
                if (name.empty() || std::isdigit(static_cast<unsigned char>(name[0]))) {
                    continue;
                }
                const bool ours = std::find(kPlaceholderNames.begin(), kPlaceholderNames.end(),
                                            name) != kPlaceholderNames.end();
                add(item, position_in_string(item, arg, at),
                    "command[" + std::to_string(i) + "]: '$" + name +
                        "' is passed as it is: no shell runs this command; did you mean '" +
                        (ours ? "${" + name + "}" : "${env:" + name + "}") + "'?",
                    false);
            }
        }
        for (const auto& [key, value] : v.env) {
            names_port = names_port || value.find("${PORT}") != std::string::npos ||
                         value.find("${SOCKET}") != std::string::npos;
        }
        if (!v.daemon() && v.socket != SocketKind::Inherit && !names_port) {
            add(*root.get("command"), position_of(root.get("command")->source()),
                "command: names neither ${PORT} nor ${SOCKET}: the worker must listen where "
                "liege says, which works only if the app reads PORT from its environment",
                true);
        }
    }

private:
    // Why `program` cannot be started, if it cannot: not found on PATH (with a likely typo's
    // fix), or a path that is no executable file.
    std::optional<std::string> program_problem(const std::string& program, const Vassal& v) {
        if (program.find('/') != std::string::npos) {
            fs::path path = program;
            if (path.is_relative()) {
                path = v.working_dir(statics_) / path;
            }
            if (::access(path.c_str(), X_OK) == 0 && !fs::is_directory(path)) {
                return std::nullopt;
            }
            return in_quotes(program) + " (" + path.lexically_normal().string() +
                   ") is not an executable file";
        }
        const std::string path_var = lookup_env(env_, "PATH").value_or("/usr/bin:/bin");
        std::vector<std::string> dirs;
        for (size_t start = 0; start <= path_var.size();) {
            size_t colon = path_var.find(':', start);
            std::string dir = path_var.substr(start, colon == std::string::npos ? std::string::npos
                                                                                : colon - start);
            dirs.push_back(dir.empty() ? "." : dir);
            if (colon == std::string::npos) {
                break;
            }
            start = colon + 1;
        }
        for (const auto& dir : dirs) {
            const fs::path candidate = fs::path(dir) / program;
            if (::access(candidate.c_str(), X_OK) == 0 && !fs::is_directory(candidate)) {
                return std::nullopt;
            }
        }
        std::string message = in_quotes(program) + " is not found on PATH";
        std::vector<std::string> names;
        for (const auto& dir : dirs) {
            std::error_code ec;
            for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
                names.push_back(it->path().filename().string());
            }
        }
        std::erase_if(names, [](const std::string& n) { return n.size() < 3; }); // "[", "ls"
        if (auto near = program.size() >= 3 ? closest(program, names) : std::nullopt) {
            message += "; did you mean " + in_quotes(*near) + "?";
        }
        return message;
    }

    std::string file_;
    std::map<std::string, std::string_view> texts_;
    const EnvLookup& env_;
    PlaceholderValues statics_;
    bool instance_ = false;
    std::set<const toml::node*> reported_; // strings whose placeholders were wrong
    SocketKind socket_ = SocketKind::Tcp;
    bool daemon_ = false;
    std::vector<Diagnostic> errors_;
};

bool is_vassal_name(std::string_view name) {
    // One '@' at most, between a template's name and an instance's.
    const size_t at = name.find('@');
    if (at != std::string_view::npos &&
        (at == 0 || at + 1 == name.size() || name.find('@', at + 1) != std::string_view::npos)) {
        return false;
    }
    return !name.empty() && std::all_of(name.begin(), name.end(), [](unsigned char c) {
        return std::isalnum(c) || c == '.' || c == '_' || c == '-' || c == '@';
    });
}

// Later layers win: a table merges key by key into a table, anything else replaces. Nodes are
// moved, which keeps their source regions (a copy would drop them), so a diagnostic names the
// layer a key came from.
void merge_into(toml::table& dst, toml::table&& src) {
    for (auto&& [key, node] : src) {
        if (auto* from = node.as_table()) {
            if (auto* into = dst.get_as<toml::table>(key.str())) {
                merge_into(*into, std::move(*from));
                continue;
            }
        }
        dst.erase(key.str());
        dst.insert(key, std::move(node));
    }
}

std::string to_toml(const toml::table& table) {
    std::ostringstream out;
    out << toml::toml_formatter(table, toml::format_flags::none);
    return out.str();
}

// Takes the [profile.*] tables out of `root` and merges the selected one back in. Problems with
// the profile tables themselves are reported whichever profile is selected.
void apply_profile(toml::table& root, const std::string& profile, Validator& validator) {
    toml::node* node = root.get("profile");
    if (node == nullptr) {
        return;
    }
    std::optional<toml::table> selected;
    if (auto* profiles = node->as_table()) {
        for (auto&& [name, table] : *profiles) {
            if (auto* t = table.as_table()) {
                if (name.str() == profile) {
                    selected = std::move(*t);
                }
                if (t->contains("profile")) {
                    validator.error(*t->get("profile"), "profile." + std::string(name.str()) +
                                                            ": profiles do not nest");
                }
            } else {
                validator.error(table, "profile." + std::string(name.str()) +
                                           ": expected a table ([profile." +
                                           std::string(name.str()) + "] with the keys it changes)");
            }
        }
    } else {
        validator.error(*node, "profile: expected tables, like [profile.prod] with the keys "
                               "that profile changes");
    }
    root.erase("profile");
    if (selected) {
        selected->erase("profile");
        merge_into(root, std::move(*selected));
    }
}

} // namespace

VassalLoad parse_vassal_layers(const std::vector<VassalLayer>& layers, const fs::path& file,
                               const EnvLookup& env, const std::string& profile) {
    VassalLoad out;
    out.file = file;
    out.readable = true;
    std::string all_bytes;
    for (const auto& layer : layers) {
        all_bytes += layer.file.string() + '\0' + layer.text + '\0';
    }
    out.content_hash = content_hash(all_bytes);

    std::string file_str = file.string();
    Validator validator(file_str, env);

    Vassal v;
    v.file = file;
    v.profile = profile;
    std::string stem = file.filename().string();
    if (stem.ends_with(".toml")) {
        stem.resize(stem.size() - 5);
    }
    v.name = stem;
    if (auto at = stem.find('@'); at != std::string::npos) {
        v.instance = stem.substr(at + 1);
    }
    std::error_code ec;
    fs::path absolute = fs::absolute(file, ec);
    v.dir = (ec ? file : absolute).parent_path().lexically_normal();
    if (!is_vassal_name(v.name)) {
        validator.error(SourcePosition{},
                        "vassal name " + in_quotes(v.name) +
                            " (the file name without .toml) may contain only letters, digits, "
                            "'.', '_', '-' and one '@' between a template's name and an instance");
    }
    validator.set_statics(v);

    toml::table root;
    bool parsed = true;
    for (const auto& layer : layers) {
        const std::string layer_file = layer.file.string();
        validator.add_text(layer_file, layer.text);
        try {
            merge_into(root, toml::parse(layer.text, std::string_view(layer_file)));
        } catch (const toml::parse_error& e) {
            validator.error(e.source(), std::string(e.description()));
            parsed = false;
        }
    }
    if (parsed) {
        if (auto* profiles = root.get_as<toml::table>("profile")) {
            for (auto&& [name, table] : *profiles) {
                out.profiles.emplace_back(name.str());
            }
        }
        apply_profile(root, profile, validator);
        out.effective = to_toml(root);
        validator.validate(root, v);
        // What runs, not how it is spread over files: an edit of a layer that leaves this
        // vassal's merged keys alone leaves the hash alone too.
        v.content_hash = content_hash(to_toml(root) + '\0' + v.profile + '\0' + v.dir.string());
        out.content_hash = v.content_hash;
    }

    out.errors = validator.take_errors();
    if (out.errors.empty()) {
        std::sort(v.env.begin(), v.env.end());
        validator.lint(root, v, out.lints);
        out.vassal = std::move(v);
    }
    return out;
}

VassalLoad parse_vassal(std::string_view text, const fs::path& file, const EnvLookup& env,
                        const std::string& profile) {
    return parse_vassal_layers({{file, std::string(text)}}, file, env, profile);
}

int read_vassal_bytes(const fs::path& file, std::string& bytes) {
    bytes.clear();
    // O_NONBLOCK: a FIFO under a vassal's name must not hang the emperor until a writer comes.
    int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        return errno;
    }
    int err = 0;
    struct stat st;
    if (::fstat(fd, &st) != 0) {
        err = errno;
    } else if (S_ISDIR(st.st_mode)) {
        err = EISDIR;
    } else if (!S_ISREG(st.st_mode)) {
        err = EINVAL;
    }
    // Reads up to one byte past the limit: that byte tells a file of exactly the limit from a
    // larger one without trusting st_size (a file may grow while it is read).
    char buf[16384];
    while (err == 0 && bytes.size() <= kMaxVassalFileBytes) {
        std::size_t want = std::min(sizeof buf, kMaxVassalFileBytes + 1 - bytes.size());
        ssize_t n = ::read(fd, buf, want);
        if (n > 0) {
            bytes.append(buf, static_cast<size_t>(n));
        } else if (n == 0) {
            break;
        } else if (errno != EINTR) {
            err = errno;
        }
    }
    ::close(fd);
    if (err == 0 && bytes.size() > kMaxVassalFileBytes) {
        err = EFBIG;
    }
    return err;
}

std::string read_error_message(int err) {
    switch (err) {
    case EFBIG:
        return "larger than " + std::to_string(kMaxVassalFileBytes >> 20) +
               " MiB, the limit of a vassal file";
    case EISDIR:
        return "a directory, not a file";
    case EINVAL:
        return "not a regular file";
    default:
        return strerror(err);
    }
}

std::vector<Diagnostic> check_start_order(const std::vector<const Vassal*>& vassals) {
    std::map<std::string, const Vassal*> by_name;
    for (const Vassal* v : vassals) {
        by_name[v->name] = v;
    }
    auto at = [](const Vassal& v) { return v.after_file.empty() ? v.file.string() : v.after_file; };
    std::vector<Diagnostic> out;
    for (const Vassal* v : vassals) {
        for (const std::string& dep : v->after) {
            if (by_name.count(dep) == 0) {
                out.push_back({at(*v), v->after_at,
                               "after: no vassal " + in_quotes(dep) + " in this directory"});
            }
        }
    }
    // Cycles: a depth-first walk; a vassal met again while on the path closes one. Each cycle
    // is reported once, at its first member in name order.
    enum class Mark { None, OnPath, Done };
    std::map<std::string, Mark> mark;
    std::vector<std::string> path;
    std::function<void(const Vassal&)> visit = [&](const Vassal& v) {
        mark[v.name] = Mark::OnPath;
        path.push_back(v.name);
        for (const std::string& dep : v.after) {
            auto it = by_name.find(dep);
            if (it == by_name.end()) {
                continue;
            }
            if (mark[dep] == Mark::OnPath) {
                auto from = std::find(path.begin(), path.end(), dep);
                std::vector<std::string> cycle(from, path.end());
                auto first = std::min_element(cycle.begin(), cycle.end());
                std::rotate(cycle.begin(), first, cycle.end());
                cycle.push_back(cycle.front());
                const Vassal& owner = *by_name.at(cycle.front());
                out.push_back({at(owner), owner.after_at,
                               "after: the start order has a cycle: " + join(cycle, " -> ")});
            } else if (mark[dep] == Mark::None) {
                visit(*it->second);
            }
        }
        path.pop_back();
        mark[v.name] = Mark::Done;
    };
    for (const auto& [name, v] : by_name) {
        if (mark[name] == Mark::None) {
            visit(*v);
        }
    }
    return out;
}

std::string template_file_name(std::string_view vassal_name) {
    auto at = vassal_name.find('@');
    if (at == std::string_view::npos || at == 0 || at + 1 == vassal_name.size()) {
        return {};
    }
    return std::string(vassal_name.substr(0, at + 1)) + ".toml";
}

namespace {

// load_vassal_file(), and with `own_text` false for a file not written yet (empty).
VassalLoad load_with_layers(const fs::path& file, bool own_text, const EnvLookup& env,
                            const std::string& profile) {
    std::vector<VassalLayer> layers;
    std::vector<Diagnostic> problems;
    auto add = [&](const fs::path& path, bool optional) {
        std::string bytes;
        std::error_code ec;
        if (optional && !fs::exists(path, ec)) {
            return;
        }
        if (int err = read_vassal_bytes(path, bytes); err != 0) {
            problems.push_back({path.string(), SourcePosition{},
                                err == EFBIG ? read_error_message(err)
                                             : "cannot read file: " + read_error_message(err)});
            return;
        }
        layers.push_back({path, std::move(bytes)});
    };
    const fs::path dir = file.parent_path();
    add(dir / "_defaults.toml", true);
    std::string name = file.filename().string();
    if (name.ends_with(".toml")) {
        name.resize(name.size() - 5);
    }
    if (std::string tmpl = template_file_name(name); !tmpl.empty()) {
        std::error_code ec;
        if (fs::exists(dir / tmpl, ec)) {
            add(dir / tmpl, false);
        } else {
            problems.push_back({file.string(), SourcePosition{},
                                "no template " + tmpl + " for this instance (" + name +
                                    ".toml is an instance of the template " + tmpl + ")"});
        }
    }
    if (own_text) {
        add(file, false);
    } else {
        layers.push_back({file, ""});
    }
    if (!problems.empty()) {
        VassalLoad out;
        out.file = file;
        out.errors = std::move(problems);
        if (!layers.empty() && layers.back().file == file) {
            out.readable = true;
            out.content_hash = content_hash(layers.back().text);
        }
        return out;
    }
    VassalLoad out = parse_vassal_layers(layers, file, env, profile);
    if (out.vassal) {
        // The owner of the file itself, or of its template when the instance has no file.
        const fs::path& owned =
            own_text || layers.size() < 2 ? file : layers[layers.size() - 2].file;
        struct stat st {};
        if (::stat(owned.c_str(), &st) == 0) {
            out.vassal->file_uid = st.st_uid;
            out.vassal->file_gid = st.st_gid;
        }
    }
    return out;
}

} // namespace

VassalLoad load_vassal_file(const fs::path& file, const EnvLookup& env,
                            const std::string& profile) {
    return load_with_layers(file, true, env, profile);
}

VassalLoad load_template_instance(const fs::path& tmpl, std::string_view instance,
                                  const EnvLookup& env, const std::string& profile) {
    std::string name = tmpl.filename().string(); // "shop@.toml"
    name.insert(name.size() - 5, instance);
    return load_with_layers(tmpl.parent_path() / name, false, env, profile);
}

bool is_vassal_file_name(std::string_view name) {
    if (name.empty() || name.front() == '.' || name.front() == '_' || name.back() == '~' ||
        name.ends_with(".swp") || name.ends_with("@.toml")) {
        return false;
    }
    return name.size() > 5 && name.ends_with(".toml");
}

bool is_vassal_layer_file_name(std::string_view name) {
    if (name == "_defaults.toml") {
        return true;
    }
    return name.size() > 6 && name.ends_with("@.toml") && name.front() != '.' &&
           name.front() != '_';
}

bool is_miscased_vassal_file_name(std::string_view name) {
    if (name.size() <= 5 || name.front() == '.' || name.front() == '_' || name.ends_with(".toml")) {
        return false;
    }
    std::string_view suffix = name.substr(name.size() - 5);
    return std::equal(suffix.begin(), suffix.end(), ".toml", [](char a, char b) {
        return std::tolower(static_cast<unsigned char>(a)) == b;
    });
}

std::vector<fs::path> list_vassal_files(const fs::path& dir, std::error_code& ec) {
    std::vector<fs::path> files;
    ec.clear();
    fs::directory_iterator it(dir, ec);
    if (ec) {
        return files;
    }
    for (const fs::directory_iterator end; it != end; it.increment(ec)) {
        if (ec) {
            return files;
        }
        std::string name = it->path().filename().string();
        std::error_code type_ec;
        if (is_vassal_file_name(name) && it->is_regular_file(type_ec)) {
            files.push_back(dir / name);
        }
    }
    std::sort(files.begin(), files.end());
    return files;
}

std::vector<VassalLoad> load_vassal_dir(const fs::path& dir, std::error_code& ec,
                                        const EnvLookup& env, const std::string& profile) {
    std::vector<VassalLoad> loads;
    for (const fs::path& file : list_vassal_files(dir, ec)) {
        loads.push_back(load_vassal_file(file, env, profile));
    }
    return loads;
}

} // namespace liege
