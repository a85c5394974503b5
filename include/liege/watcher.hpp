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

class DirWatcher {
public:
    using ChangeFn = std::function<void(const std::vector<DirChange>&)>;
    virtual ~DirWatcher() = default;
    // Rescans now (SIGHUP), reporting any change at once (not debounced).
    virtual void rescan() = 0;
};

// Watches `dir` for vassal files (is_vassal_file_name()). The first call of on_change, made from
// the loop soon after the watcher starts (never from inside this function), reports every
// existing file as Added. Afterwards: events are debounced by `debounce` (a save through a temp
// file and rename is one change), and the directory is rescanned every `rescan_every` too. A
// file whose bytes hash the same as last time is not reported, whatever its mtime. A directory
// that does not exist (yet) is not an error: it is rescanned until it appears.
std::unique_ptr<DirWatcher>
watch_directory(uv_loop_t* loop, const std::filesystem::path& dir, DirWatcher::ChangeFn on_change,
                std::chrono::milliseconds debounce = std::chrono::milliseconds(50),
                std::chrono::milliseconds rescan_every = std::chrono::seconds(2));

} // namespace liege
