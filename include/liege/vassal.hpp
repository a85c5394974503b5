// A vassal file (`vassals.d/NAME.toml`, one app each) parsed into a validated `Vassal`.
//
// Parsing is config time: it reads the file, checks every key against DESIGN.md's schema and
// collects *all* problems as diagnostics that name file, line and column, rendered as
// `FILE:LINE:COL: error: MESSAGE` (lines and columns are 1-based; columns count characters).
// Nothing here throws to the caller.
//
// Keys (defaults in brackets):
//   type    = "web"|"daemon"         ["web"] a daemon is supervised like any worker but gets no
//                                    port and no route: `hosts`, `path`, `socket`,
//                                    `concurrency`, `[queue]`, `health.path`, ${PORT} and
//                                    ${SOCKET} are errors for it
//   command = ["prog", "arg", ...]   required, non-empty array of strings; placeholders allowed
//   workers = N                      [1] pool size, 1..1024
//   workers = { min, max, idle }     instead of a number: the pool scales with demand between
//                                    min (0..1024, [1]; 0 = on demand: no process until the
//                                    first request) and max (required, ≥ min and ≥ 1); a
//                                    worker idle for `idle` ["5m"] is stopped. Web vassals only.
//   concurrency = N                  [0] requests one worker is sent at once, 0..1024; 0 = no
//                                    limit. The router keeps the rest in the vassal's queue.
//   hosts   = ["a.test", "*.b.test", "*"]   required for web vassals: Host patterns. "*" makes
//                                    a default vassal: it serves any host that no exact or
//                                    wildcard pattern of another vassal claims. A host no vassal
//                                    claims gets 404.
//   path    = "/api"                 ["/"] path prefix, matched on segment boundaries; a
//                                    trailing "/" is dropped ("/api/" is stored as "/api")
//   cwd     = "dir"                  ["."] relative to the vassal file's directory; placeholders
//   env     = { NAME = "value" }     [{}] extra environment; values take placeholders
//   socket  = "tcp"|"unix"|"inherit" ["tcp"] how a worker gets its listening address:
//                                    tcp: a loopback port in PORT / ${PORT};
//                                    unix: a unix socket path in ${SOCKET};
//                                    inherit: systemd-style socket activation, the emperor binds
//                                    a loopback TCP socket and passes it as fd 3 (LISTEN_FDS=1,
//                                    LISTEN_PID); PORT / ${PORT} still name its port. A web
//                                    vassal needs health.path or health.notify with it: the
//                                    kernel accepts connects on the emperor's socket whether or
//                                    not the app is up, so a connect proves nothing.
//   after   = ["redis", ...]         [[]] vassals of the directory that must be ready before
//                                    this one starts; it stops before them
//   [queue]  size [100] requests that may wait for a free worker slot (or a first ready
//            worker), 0..100000, 0 = none wait; timeout ["30s"] above zero, a request waiting
//            longer gets 503
//   [health] one check: path ["" = TCP connect to the worker] (web vassals), tcp = "HOST:PORT"
//            (a connect there), or command = [...] (exit 0 = healthy; placeholders allowed);
//            a daemon without one is ready after 1 s up. notify [false]: ready when the worker
//            sends READY=1 to $NOTIFY_SOCKET (sd_notify), whatever the check; the check, if
//            any, is then for liveness only. interval ["2s"], timeout ["1s"],
//            start_timeout ["30s"]
//   [reload] strategy "rolling"|"bluegreen"|"restart" ["rolling"] (restart: stop the old
//            workers, then start the new ones), drain_timeout ["30s"]
//   [watch]  paths [[]] (relative to the working directory), ignore [[]] (globs matched against
//            every component of a changed path), debounce ["300ms"]
//   [tls]    cert ["" = the default certificate] PEM chain, relative to the file's directory,
//            chosen by SNI among the vassal's hosts (a vassal without hosts cannot have one);
//            key [in the cert file]; redirect [false]: plain HTTP for the hosts gets 308 to
//            https; acme [false]: instead of cert and key, obtain and renew a certificate for
//            every exact name of hosts (wildcards and "*" are not covered; at least one exact name
//            is needed) from liege run's --acme-directory
//   user    = "www-shop"|"@owner"    ["" = the emperor's user] whom workers run as: a name or a
//                                    numeric uid; "@owner" is the vassal file's owner
//   group   = "www-shop"             ["" = the user's primary group] a name or a numeric gid
//   no_new_privs = true|false        [true] PR_SET_NO_NEW_PRIVS for every worker
//   [limits] nofile, nproc (integers ≥ 1 or "unlimited"), core (a size like "0" or "1GiB", or
//            "unlimited") as rlimits of every worker process; memory (a size), cpu ("150%" of
//            one CPU), pids (an integer ≥ 1) for the worker's cgroup where cgroups are writable
//   [upstream] request_buffering "auto"|"always"|"off" ["auto"]: whether the router reads a
//            request body in full before a worker is chosen; auto buffers for concurrency ≥ 1
//            (not for WebSocket upgrades); trace [false]: TRACE requests reach the app (else
//            405)
//   [recycle] max_requests [0 = never] replace a worker after about this many requests (each
//            worker draws its own limit within ±10%); max_rss ["" = never] a size like "512MiB",
//            the worker with its child processes; request_timeout ["" = none] a request running
//            longer gets 504 and its worker is replaced. A daemon takes only max_rss.
//   [stop]   signal ["SIGTERM"] (a name: SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2,
//            SIGKILL, SIGWINCH, SIGABRT, SIGALRM; the "SIG" may be left out), timeout ["10s"]
//
// Placeholders in every string value: ${NAME}, ${INSTANCE}, ${PROFILE}, ${env:VAR} and
// ${env:VAR:-default} (from the emperor's environment) anywhere; ${PORT}, ${SOCKET} and ${WORKER},
// which differ per worker, only in `command`, `cwd`, `env` and `health.command`. Outside those
// keys placeholders are filled when the file is loaded, so `workers = "${env:W:-2}"` is a number
// and `hosts = ["${INSTANCE}.shop.localhost"]` a host. `$${` is a literal `${`; a lone `$`
// (shell's `$$`, `$HOME`) is left alone. ${PORT} is an error with socket = "unix" and ${SOCKET}
// with any other socket kind, since the emperor would have nothing to put there.
//
// Layers (DESIGN.md): `_defaults.toml` of the directory, then for NAME@INSTANCE.toml the
// template NAME@.toml, then the file, then its [profile.NAME] for the profile liege runs with;
// later wins, tables merge key by key.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "liege/duration.hpp"

namespace liege {

struct SourcePosition {
    uint32_t line = 1; // 1-based
    uint32_t column = 1;

    bool operator==(const SourcePosition&) const = default;
};

struct Diagnostic {
    std::string file; // the path as it was given (what a user typed or the directory joined)
    SourcePosition at;
    std::string message;
    bool warning = false; // a lint that may be fine (only `liege check` reports lints)

    // "FILE:LINE:COL: error: MESSAGE" (or "warning:")
    std::string str() const;
};

// Looks up a variable of the emperor's environment; nullopt when it is not set.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
EnvLookup process_env();

enum class SocketKind { Tcp, Unix, Inherit };
enum class ReloadStrategy { Rolling, BlueGreen, Restart };
enum class VassalType { Web, Daemon };

std::string_view to_string(SocketKind kind);
std::string_view to_string(ReloadStrategy strategy);
std::string_view to_string(VassalType type);
// "SIGTERM" for 15, or the number as text for a signal without a name here.
std::string signal_name(int signo);

// What placeholders stand for when a worker is spawned.
struct PlaceholderValues {
    uint16_t port = 0;    // ${PORT}
    std::string socket;   // ${SOCKET}
    std::string name;     // ${NAME}
    int worker = 0;       // ${WORKER}, as the emperor numbers its workers
    std::string instance; // ${INSTANCE}: "x" for NAME@x.toml, "" otherwise
    std::string profile;  // ${PROFILE}: the --profile liege runs with, "" for none
    EnvLookup env;        // ${env:VAR}; empty = the process environment
};

// Replaces every placeholder in `text`. Meant for text that parse_vassal() validated; anything
// it would have rejected (unknown name, unterminated "${") is copied through unchanged, and an
// unset ${env:VAR} without a default becomes "". Never throws.
std::string expand(std::string_view text, const PlaceholderValues& values);

// What a check is, the first that is set: `path` (a GET of the worker's address), `tcp` (a
// connect to a fixed address), `command` (exit 0 = healthy). None: a web worker is checked with
// a TCP connect to its address; a daemon is ready once it has stayed up for a second, and alive
// while its process runs.
struct HealthCheck {
    std::string path;                 // GET path answering 2xx/3xx; empty = a TCP connect is enough
    std::string tcp;                  // "HOST:PORT" to connect to, canonical form
    std::vector<std::string> command; // unexpanded, like Vassal::command
    Millis interval{2'000};           // liveness check period
    Millis timeout{1'000};            // per check
    Millis start_timeout{30'000};     // a new worker must be ready within this
    bool notify = false;              // ready on sd_notify READY=1, not on the check
};

// Requests of a vassal waiting in the router for a free worker slot; beyond `size`, or after
// `timeout`, they get 503 with Retry-After.
struct QueuePolicy {
    uint32_t size = 100;
    Millis timeout{30'000};
};

struct ReloadPolicy {
    ReloadStrategy strategy = ReloadStrategy::Rolling;
    Millis drain_timeout{30'000};
};

// [watch]: the vassal reloads (with its strategy) when a file under these paths changes.
struct WatchPolicy {
    std::vector<std::string> paths;  // relative to the working directory (or absolute)
    std::vector<std::string> ignore; // globs matched against each path component ("*.pyc")
    Millis debounce{300};            // quiet time after the last change before the reload
};

// `workers = { min, max, idle }`: the pool scales with demand. A fixed `workers = N` is
// min = max = N, scaled = false.
struct ScalePolicy {
    bool scaled = false;
    int min = 1;
    int max = 1;
    Millis idle{300'000};
};

// [recycle]: when a worker is replaced by a fresh one. Zero = never.
struct RecyclePolicy {
    uint64_t max_requests = 0;
    uint64_t max_rss = 0; // bytes, the worker with its child processes
    Millis request_timeout{0};
};

struct StopPolicy {
    int signal = 15;        // SIGTERM; sent to the worker's process group
    Millis timeout{10'000}; // then SIGKILL
};

// [tls]: the certificate served to TLS clients that ask for one of the vassal's hosts (SNI).
struct TlsPolicy {
    std::filesystem::path cert; // PEM chain, absolute; empty = the router's default certificate
    std::filesystem::path key;  // PEM key; empty = in the cert file
    bool redirect = false;      // plain HTTP for the vassal's hosts gets 308 to https
    bool acme = false;          // cert and key come from ACME, for every exact name of hosts
};

// user, group, no_new_privs: whom a worker runs as.
struct Identity {
    std::string user;         // "" = the emperor's own user; a name, a numeric uid, or "@owner"
    std::string group;        // "" = the user's primary group; a name or a numeric gid
    bool no_new_privs = true; // PR_SET_NO_NEW_PRIVS for every worker
};

// [limits]: rlimits of every worker process, and cgroup limits where cgroups are writable.
struct Limits {
    static constexpr uint64_t kUnlimited = UINT64_MAX;
    std::optional<uint64_t> nofile; // RLIMIT_NOFILE (soft = hard); nullopt = inherited
    std::optional<uint64_t> nproc;  // RLIMIT_NPROC
    std::optional<uint64_t> core;   // RLIMIT_CORE, bytes
    uint64_t memory = 0;            // bytes, cgroup memory.max; 0 = none
    uint32_t cpu = 0;               // percent of one CPU, cgroup cpu.max ("150%"); 0 = none
    uint64_t pids = 0;              // cgroup pids.max; 0 = none

    bool any_cgroup() const { return memory != 0 || cpu != 0 || pids != 0; }
};

enum class RequestBuffering { Auto, Always, Off };
std::string_view to_string(RequestBuffering buffering);

// [upstream]: how the router hands requests to the vassal's workers.
struct UpstreamPolicy {
    RequestBuffering request_buffering = RequestBuffering::Auto;
    bool trace = false; // TRACE reaches the app; otherwise the router answers 405
};

struct Vassal {
    std::string name;           // file name without ".toml"
    std::filesystem::path file; // as given to the loader
    std::filesystem::path dir;  // absolute directory of the file; base of a relative `cwd`
    // content_hash() of the effective configuration (defaults, template, file and profile
    // merged, placeholders of the static keys filled): equal hashes run the same thing.
    uint64_t content_hash = 0;
    std::string instance; // NAME@INSTANCE.toml: INSTANCE
    std::string profile;  // the profile it was loaded for ("" = none)

    VassalType type = VassalType::Web; // a daemon gets no port and no route
    std::vector<std::string> command;  // unexpanded: placeholders are filled per worker
    int workers = 1; // the pool size at start: `workers = N`, or `min` of a scaled pool
    ScalePolicy scale;
    RecyclePolicy recycle;
    int concurrency = 0;            // requests one worker is sent at once; 0 = no limit
    std::vector<std::string> hosts; // lower-cased, no duplicates; empty for a daemon
    std::string path = "/";
    std::string cwd = ".";                                // as written, unexpanded
    std::vector<std::pair<std::string, std::string>> env; // sorted by name; values unexpanded
    SocketKind socket = SocketKind::Tcp;
    HealthCheck health;
    QueuePolicy queue;
    ReloadPolicy reload;
    StopPolicy stop;
    TlsPolicy tls;
    WatchPolicy watch;
    Identity identity;
    Limits limits;
    UpstreamPolicy upstream;
    // The owner of the vassal file itself (of the template for a template's instance without a
    // file), for user = "@owner"; set by load_vassal_file(), nullopt for parsed text.
    std::optional<uint32_t> file_uid;
    std::optional<uint32_t> file_gid;

    // Vassals that must be ready before this one starts (and that stop only after it stopped).
    std::vector<std::string> after;

    // Where `hosts`, `path` and `after` were written (1:1 when left to their defaults), so that
    // cross-vassal problems such as two vassals claiming the same route can name a place.
    SourcePosition hosts_at;
    SourcePosition path_at;
    SourcePosition after_at;
    std::string after_file; // the layer that holds `after` ("" = the file itself)

    bool daemon() const { return type == VassalType::Daemon; }
    // `cwd` expanded and resolved against `dir`, lexically normalised.
    std::filesystem::path working_dir(const PlaceholderValues& values) const;
};

// The result of loading one file: a Vassal when the file is valid, otherwise its diagnostics
// sorted by position. `content_hash` is set whenever the bytes could be read, so a watcher can
// tell a rewrite with equal content (only mtime changed) from a real change, for invalid files
// too.
struct VassalLoad {
    std::filesystem::path file;
    std::optional<Vassal> vassal;
    std::vector<Diagnostic> errors;
    uint64_t content_hash = 0;
    bool readable = false; // false when the file could not be read at all
    // The effective vassal as TOML (what `liege config` prints): the layers merged and the
    // selected profile applied, placeholders as written. Empty when a layer did not parse.
    std::string effective;
    // The [profile.NAME] tables its layers declare, so `liege check` can try each.
    std::vector<std::string> profiles;
    // What `liege check` reports beyond errors, for a valid vassal: a program not found on PATH
    // (error), shell-style "$PORT" in a command no shell runs (error), a web vassal whose command
    // names neither ${PORT} nor ${SOCKET} (warning). The emperor does not act on them: PATH and
    // the app's habits are the user's to know.
    std::vector<Diagnostic> lints;

    bool ok() const { return vassal.has_value(); }
};

// 64-bit FNV-1a of the bytes.
uint64_t content_hash(std::string_view bytes);

// The largest vassal file (or layer: _defaults.toml, a template) liege reads: 1 MiB. A vassal
// is a screenful of TOML; a file beyond this is a mistake (a log or a dump saved under the wrong
// name), and reading and hashing it at every change would stall the emperor's loop.
inline constexpr std::size_t kMaxVassalFileBytes = std::size_t{1} << 20;

// Reads a vassal file or layer, never more than kMaxVassalFileBytes + 1 bytes of it, into
// `bytes` (replacing what it held). Returns 0; a positive errno when it cannot be read; EISDIR
// for a directory; EINVAL for anything else that is no regular file (a FIFO is never waited
// on); or EFBIG when the file is larger than kMaxVassalFileBytes, `bytes` then holding its first
// kMaxVassalFileBytes + 1 bytes.
int read_vassal_bytes(const std::filesystem::path& file, std::string& bytes);

// What read_vassal_bytes()'s error means to a user: "larger than 1 MiB, the limit of a vassal
// file", "a directory, not a file", or strerror() for the rest.
std::string read_error_message(int err);

// Parses and validates TOML text as the vassal file `file` (used for the name, the diagnostics
// and the base of `cwd`; the file itself is not read). `env` resolves ${env:VAR} checks;
// `profile` selects the file's [profile.NAME] table.
VassalLoad parse_vassal(std::string_view text, const std::filesystem::path& file,
                        const EnvLookup& env = process_env(), const std::string& profile = "");

// One file of an effective vassal, as read.
struct VassalLayer {
    std::filesystem::path file;
    std::string text;
};

// Merges `layers` in order (later wins; tables merge key by key, anything else is replaced),
// then applies the merged [profile.NAME] when `profile` names one, and validates the result as
// the vassal `file`. Each diagnostic names the layer that holds the key it is about.
VassalLoad parse_vassal_layers(const std::vector<VassalLayer>& layers,
                               const std::filesystem::path& file,
                               const EnvLookup& env = process_env(),
                               const std::string& profile = "");

// Reads and parses one vassal file with its layers: `_defaults.toml` of its directory when there
// is one, then for an instance NAME@INSTANCE.toml its template NAME@.toml, then the file itself.
VassalLoad load_vassal_file(const std::filesystem::path& file, const EnvLookup& env = process_env(),
                            const std::string& profile = "");

// Loads the instance INSTANCE of the template `tmpl` (NAME@.toml) as if NAME@INSTANCE.toml
// existed and were empty: how liege check sees a template that no instance uses yet.
VassalLoad load_template_instance(const std::filesystem::path& tmpl, std::string_view instance,
                                  const EnvLookup& env = process_env(),
                                  const std::string& profile = "");

// The vassal's name of a vassal file ("shop@x" for "shop@x.toml"), its template's file name
// ("shop@.toml") or "" when it is no instance.
std::string template_file_name(std::string_view vassal_name);

// Whether a file name is a layer other vassals are made from: "_defaults.toml" or a template
// "NAME@.toml". Changing one can change every vassal of the directory (or of the template).
bool is_vassal_layer_file_name(std::string_view file_name);

// Problems of the `after` lists of a directory's vassals, each at the `after` it is about: a name
// that is no vassal of theirs, and every cycle (named in order, "a -> b -> a").
std::vector<Diagnostic> check_start_order(const std::vector<const Vassal*>& vassals);

// Whether a directory entry with this file name is a vassal file: "*.toml", not starting with
// "." or "_", not an editor leftover ("~" suffix, ".swp"), not a template ("NAME@.toml").
bool is_vassal_file_name(std::string_view file_name);

// Whether a file name would be a vassal file's but for the case of its ".toml" ("Shop.TOML"):
// liege does not load it, which is never what its author meant.
bool is_miscased_vassal_file_name(std::string_view file_name);

// The vassal files of a directory (regular files or symlinks to them), sorted by name.
std::vector<std::filesystem::path> list_vassal_files(const std::filesystem::path& dir,
                                                     std::error_code& ec);

// Loads every vassal file of a directory, sorted by name. `ec` is set when the directory cannot
// be listed; problems with single files are in their VassalLoad.
std::vector<VassalLoad> load_vassal_dir(const std::filesystem::path& dir, std::error_code& ec,
                                        const EnvLookup& env = process_env(),
                                        const std::string& profile = "");

} // namespace liege
