// Watching the vassal directory.
//
// inotify says *that* something happened, not what the directory now holds, and an editor's save
// is a burst of events (temp file, write, rename, chmod). So events only schedule a scan; a scan
// lists the vassal files, hashes their bytes and diffs that against the last reported state.
// What is reported is therefore always the difference between two real states of the directory,
// never a replay of events, and a file rewritten with the same bytes is no change at all.
//
// The inotify watch follows an inode, not a path: a directory that is removed, or replaced by a
// rename, leaves the watch on a dead or foreign inode. Each scan checks the directory's device
// and inode and re-arms the watch when they differ. While the directory does not exist, the
// parent directory is watched for it to appear (and the periodic rescan covers a parent that
// does not exist either).
#include "liege/watcher.hpp"

#include <algorithm>
#include <cerrno>
#include <utility>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "liege/log.hpp"
#include "liege/uv.hpp"
#include "liege/vassal.hpp"

namespace liege {

namespace fs = std::filesystem;

std::vector<DirChange> diff_snapshots(const fs::path& dir, const DirSnapshot& before,
                                      const DirSnapshot& after) {
    auto change = [&dir](DirChange::Kind kind, const std::string& file_name, uint64_t hash) {
        std::string name = file_name;
        if (name.ends_with(".toml")) {
            name.resize(name.size() - 5);
        }
        return DirChange{kind, dir / file_name, std::move(name), hash};
    };
    std::vector<DirChange> changes;
    auto b = before.begin();
    auto a = after.begin();
    while (b != before.end() || a != after.end()) {
        if (a == after.end() || (b != before.end() && b->first < a->first)) {
            changes.push_back(change(DirChange::Kind::Removed, b->first, 0));
            ++b;
        } else if (b == before.end() || a->first < b->first) {
            changes.push_back(change(DirChange::Kind::Added, a->first, a->second));
            ++a;
        } else {
            if (a->second != b->second) {
                changes.push_back(change(DirChange::Kind::Changed, a->first, a->second));
            }
            ++a;
            ++b;
        }
    }
    return changes;
}

namespace {

// Reads a whole file; 0 or a positive errno.
int read_file(const fs::path& file, std::string& out) {
    int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return errno;
    }
    out.clear();
    char buf[16384];
    while (true) {
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            int e = errno;
            ::close(fd);
            return e;
        }
        if (n == 0) {
            break;
        }
        out.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fd);
    return 0;
}

// The directory without a trailing separator, so that its file name and parent are right.
fs::path normalized(const fs::path& dir) {
    fs::path p = fs::absolute(dir).lexically_normal();
    if (p.filename().empty() && p.has_parent_path() && p != p.root_path()) {
        p = p.parent_path();
    }
    return p;
}

class DirWatcherImpl final : public DirWatcher {
public:
    DirWatcherImpl(uv_loop_t* loop, fs::path dir, ChangeFn on_change,
                   std::chrono::milliseconds debounce, std::chrono::milliseconds rescan_every)
        : loop_(loop), dir_(std::move(dir)), watch_path_(normalized(dir_)),
          dir_name_(watch_path_.filename().string()), on_change_(std::move(on_change)),
          debounce_ms_(to_ms(debounce)), max_delay_ms_(std::max<uint64_t>(4 * debounce_ms_, 1)),
          rescan_ms_(std::max<uint64_t>(to_ms(rescan_every), 1)) {
        uv_timer_init(loop_, scan_timer_.get());
        scan_timer_->data = this;
        uv_timer_init(loop_, rescan_timer_.get());
        rescan_timer_->data = this;
        // Watch first, then scan: a change made in between is seen by both, never by neither.
        ensure_watch();
        // The first report comes from the loop, never from inside watch_directory().
        uv_timer_start(scan_timer_.get(), on_scan_timer, 0, 0);
        uv_timer_start(rescan_timer_.get(), on_scan_timer, rescan_ms_, rescan_ms_);
    }
    ~DirWatcherImpl() override = default;
    DirWatcherImpl(const DirWatcherImpl&) = delete;
    DirWatcherImpl& operator=(const DirWatcherImpl&) = delete;

    void rescan() override {
        if (first_reported_) {
            uv_timer_stop(scan_timer_.get());
        }
        scan();
    }

private:
    enum class Target { None, Dir, Parent };

    static uint64_t to_ms(std::chrono::milliseconds d) {
        return static_cast<uint64_t>(std::max<int64_t>(d.count(), 0));
    }

    static void on_scan_timer(uv_timer_t* timer) {
        if (auto* self = static_cast<DirWatcherImpl*>(timer->data)) {
            self->scan();
        }
    }

    // (Re-)arms the inotify watch on the directory, or on its parent while it is missing.
    void ensure_watch() {
        struct stat st;
        if (::stat(watch_path_.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
            if (target_ == Target::Dir && st.st_dev == dev_ && st.st_ino == ino_) {
                return;
            }
            if (watch(watch_path_, Target::Dir)) {
                dev_ = st.st_dev;
                ino_ = st.st_ino;
            }
            return;
        }
        if (target_ == Target::Parent) {
            return;
        }
        if (target_ == Target::Dir) {
            spdlog::warn("vassal directory {} is gone; watching for it to come back",
                         dir_.string());
        }
        if (!watch(watch_path_.parent_path(), Target::Parent)) {
            return; // the parent is missing too: the periodic rescan looks again
        }
        // It may have appeared between the stat above and the parent's watch.
        if (::stat(watch_path_.c_str(), &st) == 0 && S_ISDIR(st.st_mode) &&
            watch(watch_path_, Target::Dir)) {
            dev_ = st.st_dev;
            ino_ = st.st_ino;
        }
    }

    bool watch(const fs::path& path, Target target) {
        event_ = UvHandle<uv_fs_event_t>();
        target_ = Target::None;
        uv_fs_event_init(loop_, event_.get());
        event_->data = this;
        int rc = uv_fs_event_start(
            event_.get(),
            [](uv_fs_event_t* handle, const char* file_name, int, int status) {
                if (auto* self = static_cast<DirWatcherImpl*>(handle->data)) {
                    self->on_event(file_name, status);
                }
            },
            path.c_str(), 0);
        if (rc != 0) {
            if (rc != UV_ENOENT && rc != UV_ENOTDIR) {
                spdlog::warn("cannot watch {}: {}", path.string(), uv_strerror(rc));
            }
            event_.reset();
            return false;
        }
        target_ = target;
        return true;
    }

    void on_event(const char* file_name, int status) {
        std::string_view name = file_name != nullptr ? file_name : "";
        bool relevant = status < 0 || name.empty() || name == dir_name_;
        if (target_ == Target::Dir) {
            relevant = relevant || is_vassal_file_name(name) || is_vassal_layer_file_name(name);
        }
        if (relevant) {
            schedule();
        }
    }

    // Debounces: a scan `debounce` after the last event, but no later than `4 * debounce` after
    // the first one, so a directory that never goes quiet is still scanned.
    void schedule() {
        if (!first_reported_) {
            return; // the first scan is already queued and will see this
        }
        uint64_t now = uv_now(loop_);
        if (uv_is_active(scan_timer_.base()) == 0) {
            pending_since_ = now;
        } else if (now - pending_since_ + debounce_ms_ > max_delay_ms_) {
            return;
        }
        uv_timer_start(scan_timer_.get(), on_scan_timer, debounce_ms_, 0);
    }

    DirSnapshot read_snapshot() {
        std::error_code ec;
        std::vector<fs::path> files = list_vassal_files(dir_, ec);
        if (!ec) {
            // The layers vassals are made from (_defaults.toml, templates) are watched too.
            std::error_code layer_ec;
            for (const auto& entry : fs::directory_iterator(dir_, layer_ec)) {
                std::error_code type_ec;
                if (is_vassal_layer_file_name(entry.path().filename().string()) &&
                    entry.is_regular_file(type_ec)) {
                    files.push_back(entry.path());
                }
            }
        }
        if (ec && ec != std::errc::no_such_file_or_directory && ec != std::errc::not_a_directory) {
            // Unreadable for now (permissions, I/O): report nothing rather than remove all.
            spdlog::warn("cannot list vassal directory {}: {}", dir_.string(), ec.message());
            return snapshot_;
        }
        DirSnapshot now;
        std::string bytes;
        for (const fs::path& file : files) {
            std::string name = file.filename().string();
            int err = read_file(file, bytes);
            if (err == 0) {
                now[name] = content_hash(bytes);
            } else if (err != ENOENT) {
                // Keep what we knew; a new file that cannot be read is reported with hash 0 so
                // that its loader reports why.
                auto known = snapshot_.find(name);
                now[name] = known != snapshot_.end() ? known->second : 0;
            }
        }
        return now;
    }

    void scan() {
        ensure_watch();
        DirSnapshot now = read_snapshot();
        std::vector<DirChange> changes = diff_snapshots(dir_, snapshot_, now);
        snapshot_ = std::move(now);
        bool first = !first_reported_;
        first_reported_ = true;
        if (changes.empty() && !first) {
            return;
        }
        // Last thing we do: the callback may destroy this watcher.
        on_change_(changes);
    }

    uv_loop_t* loop_;
    fs::path dir_;        // as given: DirChange::file is dir_ / name
    fs::path watch_path_; // absolute, without a trailing separator
    std::string dir_name_;
    ChangeFn on_change_;
    uint64_t debounce_ms_;
    uint64_t max_delay_ms_;
    uint64_t rescan_ms_;

    UvHandle<uv_timer_t> scan_timer_;
    UvHandle<uv_timer_t> rescan_timer_;
    UvHandle<uv_fs_event_t> event_;
    Target target_ = Target::None;
    dev_t dev_ = 0;
    ino_t ino_ = 0;
    uint64_t pending_since_ = 0;

    DirSnapshot snapshot_;
    bool first_reported_ = false;
};

} // namespace

std::unique_ptr<DirWatcher> watch_directory(uv_loop_t* loop, const fs::path& dir,
                                            DirWatcher::ChangeFn on_change,
                                            std::chrono::milliseconds debounce,
                                            std::chrono::milliseconds rescan_every) {
    return std::make_unique<DirWatcherImpl>(loop, dir, std::move(on_change), debounce,
                                            rescan_every);
}

} // namespace liege
