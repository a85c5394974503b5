// Watching the vassal directory: inotify through libuv's fs events, debounced, with a periodic
// rescan as a safety net. Reports changes of content, not of mtime.
#pragma once

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace liege {

struct DirChange {
    enum class Kind { Added, Changed, Removed };
    Kind kind;
    std::filesystem::path file; // dir / name
    std::string name;           // the vassal name: the file name without ".toml"
    uint64_t content_hash = 0;  // content_hash() of the new bytes (0 for Removed)
};

// What a scan found: file name ("hello.toml") → content_hash() of its bytes.
using DirSnapshot = std::map<std::string, uint64_t>;

// The changes that turn `before` into `after`, sorted by file name: Added and Changed carry the
// new hash, Removed carries 0.
std::vector<DirChange> diff_snapshots(const std::filesystem::path& dir, const DirSnapshot& before,
                                      const DirSnapshot& after);

// Entries of the vassal directory named like vassal files (or layers) that are not loaded, each
// with why: file name ("x.toml") → reason ("a directory, not a file").
using SkippedFiles = std::map<std::string, std::string>;

// What of `now` is news after `before`, sorted by file name: a file skipped that was not
// skipped at the scan before, or was for another reason. A file skipped at every scan for the
// same reason is logged once; once it is valid or gone, skipping it again is news again.
std::vector<std::pair<std::string, std::string>> newly_skipped(const SkippedFiles& before,
                                                               const SkippedFiles& now);

// Why a directory entry is no file a vassal can be read from, given what stat() said of it
// (`stat_err` its errno, else 0 and `mode` its st_mode) and whether lstat() found a symlink:
// "" for a regular file or a symlink to one. A dangling symlink (ENOENT) is "a dangling
// symlink"; the caller tells one from an entry that is simply gone.
std::string skip_reason(int stat_err, unsigned mode, bool symlink);

class DirWatcher {
public:
    using ChangeFn = std::function<void(const std::vector<DirChange>&)>;
    virtual ~DirWatcher() = default;
    // Rescans now (SIGHUP), reporting any change at once (not debounced).
    virtual void rescan() = 0;
};

// Watches `dir` for vassal files (is_vassal_file_name()) and layers (is_vassal_layer_file_name()).
// The first call of on_change, made from the loop soon after the watcher starts (never from
// inside this function), reports every existing file as Added. Afterwards: events are debounced
// by `debounce` (a save through a temp file and rename is one change), and the directory is
// rescanned every `rescan_every` too. A file whose bytes hash the same as last time is not
// reported, whatever its mtime. A directory that does not exist (yet) is not an error: it is
// rescanned until it appears.
//
// A file is read (at most kMaxVassalFileBytes + 1 bytes) only when an inotify event named it,
// or when stat() shows another size, mtime or inode than at its last read; the periodic rescan
// costs one stat() per unchanged file. rescan() (SIGHUP) reads every file again. Entries named
// like vassal files that cannot be loaded (a directory, a symlink that loops or dangles, a
// FIFO, an unreadable file, a name whose ".toml" is not lower case) are logged as warnings
// once per file and reason (newly_skipped()); an unreadable file that was read before keeps
// its last hash, so what runs of it is left alone.
std::unique_ptr<DirWatcher>
watch_directory(uv_loop_t* loop, const std::filesystem::path& dir, DirWatcher::ChangeFn on_change,
                std::chrono::milliseconds debounce = std::chrono::milliseconds(50),
                std::chrono::milliseconds rescan_every = std::chrono::seconds(2));

} // namespace liege
