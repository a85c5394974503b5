// A vassal file (`vassals.d/NAME.toml`, one app each) parsed into a validated `Vassal`.
//
// Parsing is config time: it reads the file, checks every key against DESIGN.md's schema and
// collects *all* problems as diagnostics that name file, line and column, rendered as
// `FILE:LINE:COL: error: MESSAGE` (lines and columns are 1-based; columns count characters).
// Nothing here throws to the caller.
//
// Keys (defaults in brackets):
//   command = ["prog", "arg", ...]   required, non-empty array of strings; placeholders allowed
//   workers = N                      [1] pool size, 1..1024
//   concurrency = N                  [0] requests one worker is sent at once, 0..1024; 0 = no
//                                    limit. The router keeps the rest in the vassal's queue.
//   hosts   = ["a.test", "*.b.test", "*"]   ["*"] Host patterns. A vassal without `hosts` is a
//                                    default vassal: it serves any host that no exact or
//                                    wildcard pattern of another vassal claims.
//   path    = "/api"                 ["/"] path prefix, matched on segment boundaries; a
//                                    trailing "/" is dropped ("/api/" is stored as "/api")
//   cwd     = "dir"                  ["."] relative to the vassal file's directory; placeholders
//   env     = { NAME = "value" }     [{}] extra environment; values take placeholders
//   socket  = "tcp"|"unix"|"inherit" ["tcp"] how a worker gets its listening address:
//                                    tcp: a loopback port in PORT / ${PORT};
//                                    unix: a unix socket path in ${SOCKET};
//                                    inherit: systemd-style socket activation, the emperor binds
//                                    a loopback TCP socket and passes it as fd 3 (LISTEN_FDS=1,
//                                    LISTEN_PID); PORT / ${PORT} still name its port.
//   [queue]  size [100] requests that may wait for a free worker slot (or a first ready
//            worker), 0..100000, 0 = none wait; timeout ["30s"] above zero, a request waiting
//            longer gets 503
//   [health] path ["" = TCP connect], interval ["2s"], timeout ["1s"], start_timeout ["30s"]
//   [reload] strategy "rolling"|"bluegreen" ["rolling"], drain_timeout ["30s"]
//   [tls]    cert ["" = the default certificate] PEM chain, relative to the file's directory,
//            chosen by SNI among the vassal's hosts (a vassal without hosts cannot have one);
//            key [in the cert file]; redirect [false]: plain HTTP for the hosts gets 308 to
//            https; acme [false] is rejected (automatic certificates are not available yet)
//   [stop]   signal ["SIGTERM"] (a name: SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2,
//            SIGKILL, SIGWINCH, SIGABRT, SIGALRM; the "SIG" may be left out), timeout ["10s"]
//
// Placeholders in `command`, `cwd` and `env` values: ${PORT}, ${SOCKET}, ${NAME}, ${WORKER},
// ${env:VAR} and ${env:VAR:-default} (from the emperor's environment). `$${` is a literal `${`;
// a lone `$` (shell's `$$`, `$HOME`) is left alone. ${PORT} is an error with socket = "unix" and
// ${SOCKET} with any other socket kind, since the emperor would have nothing to put there.
#pragma once

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

    // "FILE:LINE:COL: error: MESSAGE"
    std::string str() const;
};

// Looks up a variable of the emperor's environment; nullopt when it is not set.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
EnvLookup process_env();

enum class SocketKind { Tcp, Unix, Inherit };
enum class ReloadStrategy { Rolling, BlueGreen };

std::string_view to_string(SocketKind kind);
std::string_view to_string(ReloadStrategy strategy);
// "SIGTERM" for 15, or the number as text for a signal without a name here.
std::string signal_name(int signo);

// What placeholders stand for when a worker is spawned.
struct PlaceholderValues {
    uint16_t port = 0;  // ${PORT}
    std::string socket; // ${SOCKET}
    std::string name;   // ${NAME}
    int worker = 0;     // ${WORKER}, as the emperor numbers its workers
    EnvLookup env;      // ${env:VAR}; empty = the process environment
};

// Replaces every placeholder in `text`. Meant for text that parse_vassal() validated; anything
// it would have rejected (unknown name, unterminated "${") is copied through unchanged, and an
// unset ${env:VAR} without a default becomes "". Never throws.
std::string expand(std::string_view text, const PlaceholderValues& values);

struct HealthCheck {
    std::string path;             // GET path answering 2xx/3xx; empty = a TCP connect is enough
    Millis interval{2'000};       // liveness check period
    Millis timeout{1'000};        // per check
    Millis start_timeout{30'000}; // a new worker must be ready within this
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

struct StopPolicy {
    int signal = 15;        // SIGTERM; sent to the worker's process group
    Millis timeout{10'000}; // then SIGKILL
};

// [tls]: the certificate served to TLS clients that ask for one of the vassal's hosts (SNI).
struct TlsPolicy {
    std::filesystem::path cert; // PEM chain, absolute; empty = the router's default certificate
    std::filesystem::path key;  // PEM key; empty = in the cert file
    bool redirect = false;      // plain HTTP for the vassal's hosts gets 308 to https
};

struct Vassal {
    std::string name;           // file name without ".toml"
    std::filesystem::path file; // as given to the loader
    std::filesystem::path dir;  // absolute directory of the file; base of a relative `cwd`
    uint64_t content_hash = 0;  // content_hash() of the file's bytes

    std::vector<std::string> command; // unexpanded: placeholders are filled per worker
    int workers = 1;
    int concurrency = 0;                 // requests one worker is sent at once; 0 = no limit
    std::vector<std::string> hosts{"*"}; // lower-cased, no duplicates
    std::string path = "/";
    std::string cwd = ".";                                // as written, unexpanded
    std::vector<std::pair<std::string, std::string>> env; // sorted by name; values unexpanded
    SocketKind socket = SocketKind::Tcp;
    HealthCheck health;
    QueuePolicy queue;
    ReloadPolicy reload;
    StopPolicy stop;
    TlsPolicy tls;

    // Where `hosts` and `path` were written (1:1 when left to their defaults), so that
    // cross-vassal problems such as two vassals claiming the same route can name a place.
    SourcePosition hosts_at;
    SourcePosition path_at;

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

    bool ok() const { return vassal.has_value(); }
};

// 64-bit FNV-1a of the bytes.
uint64_t content_hash(std::string_view bytes);

// Parses and validates TOML text as the vassal file `file` (used for the name, the diagnostics
// and the base of `cwd`; the file itself is not read). `env` resolves ${env:VAR} checks.
VassalLoad parse_vassal(std::string_view text, const std::filesystem::path& file,
                        const EnvLookup& env = process_env());

// Reads and parses one file.
VassalLoad load_vassal_file(const std::filesystem::path& file,
                            const EnvLookup& env = process_env());

// Whether a directory entry with this file name is a vassal file: "*.toml", not starting with
// "." or "_", not an editor leftover ("~" suffix, ".swp").
bool is_vassal_file_name(std::string_view file_name);

// The vassal files of a directory (regular files or symlinks to them), sorted by name.
std::vector<std::filesystem::path> list_vassal_files(const std::filesystem::path& dir,
                                                     std::error_code& ec);

// Loads every vassal file of a directory, sorted by name. `ec` is set when the directory cannot
// be listed; problems with single files are in their VassalLoad.
std::vector<VassalLoad> load_vassal_dir(const std::filesystem::path& dir, std::error_code& ec,
                                        const EnvLookup& env = process_env());

} // namespace liege
