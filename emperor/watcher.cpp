// Watching the vassal directory.
//
// inotify says *that* something happened, not what the directory now holds, and an editor's save
// is a burst of events (temp file, write, rename, chmod). So events only schedule a scan; a scan
// lists the vassal files, hashes their bytes and diffs that against the last reported state.
// What is reported is therefore always the difference between two real states of the directory,
// never a replay of events, and a file rewritten with the same bytes is no change at all.
//
// Reading is what costs, so a scan reads a file only when it may have changed: an inotify event
// named it (or named nothing: an overflow), or stat() shows another size, mtime or inode than
// at its last read. Anything else keeps its last hash, so the periodic rescan of an idle
// directory is one stat() per file. What stat() cannot tell apart and no event names (a
// symlink's target edited outside the directory to the same size within the mtime tick of the
// last read, or with its mtime put back) waits for SIGHUP, which reads everything. An edit
// through the directory while a file is read raises an event that lands after the scan, so it
// is never lost to the stamp taken before the read.
//
// The inotify watch follows an inode, not a path: a directory that is removed, or replaced by a
// rename, leaves the watch on a dead or foreign inode. Each scan checks the directory's device
// and inode and re-arms the watch when they differ. While the directory does not exist, the
// parent directory is watched for it to appear (and the periodic rescan covers a parent that
// does not exist either).
#include "liege/watcher.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <set>
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

// strerror() as the middle of a sentence: "permission denied".
std::string lowercase_first(std::string text) {
    if (!text.empty() && text[0] >= 'A' && text[0] <= 'Z' &&
        (text.size() < 2 || !(text[1] >= 'A' && text[1] <= 'Z'))) {
        text[0] = static_cast<char>(text[0] - 'A' + 'a');
    }
    return text;
}

} // namespace

std::vector<std::pair<std::string, std::string>> newly_skipped(const SkippedFiles& before,
                                                               const SkippedFiles& now) {
    std::vector<std::pair<std::string, std::string>> news;
    for (const auto& [name, reason] : now) {
        auto was = before.find(name);
        if (was == before.end() || was->second != reason) {
            news.emplace_back(name, reason);
        }
    }
    return news;
}

std::string skip_reason(int stat_err, unsigned mode, bool symlink) {
    switch (stat_err) {
    case 0:
        break;
    case ELOOP:
        return "a symlink that loops";
    case ENOENT:
        return "a dangling symlink";
    default:
        return "cannot stat it: " + lowercase_first(std::strerror(stat_err));
    }
    const char* what = nullptr;
    if (S_ISREG(mode)) {
        return "";
    } else if (S_ISDIR(mode)) {
        what = "a directory";
    } else if (S_ISFIFO(mode)) {
        what = "a FIFO";
    } else if (S_ISSOCK(mode)) {
        what = "a socket";
    } else if (S_ISCHR(mode) || S_ISBLK(mode)) {
        what = "a device";
    } else {
        what = "no regular file";
    }
    return std::string(symlink ? "a symlink to " : "") + what + ", not a file";
}

namespace {

// What stat() says of a file, enough to tell that it was not written since it was last read:
// writing changes its mtime or size; a save through a rename brings another inode.
struct FileStamp {
    dev_t dev = 0;
    ino_t ino = 0;
    off_t size = 0;
    int64_t mtime_ns = 0;

    bool operator==(const FileStamp&) const = default;

    static FileStamp of(const struct stat& st) {
        return {st.st_dev, st.st_ino, st.st_size,
                static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec};
    }
};

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
        read_all_ = true; // SIGHUP: what stat() cannot tell apart is read too
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
        if (target == Target::Dir) {
            read_all_ = true; // maybe another directory than the one last read
        }
        return true;
    }

    void on_event(const char* file_name, int status) {
        std::string_view name = file_name != nullptr ? file_name : "";
        bool relevant = status < 0 || name.empty() || name == dir_name_;
        if (target_ == Target::Dir) {
            relevant = relevant || is_vassal_file_name(name) || is_vassal_layer_file_name(name);
        }
        if (relevant) {
            if (target_ == Target::Dir && status >= 0 && !name.empty() && name != dir_name_) {
                events_.insert(std::string(name));
            } else {
                read_all_ = true; // an overflow, or the directory itself: names say nothing
            }
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

    // The directory's entries by name, or nullopt (with `ec`) when it cannot be listed whole.
    std::optional<std::vector<std::string>> list_names(std::error_code& ec) const {
        std::vector<std::string> names;
        fs::directory_iterator it(dir_, ec);
        for (const fs::directory_iterator end; !ec && it != end; it.increment(ec)) {
            names.push_back(it->path().filename().string());
        }
        if (ec) {
            return std::nullopt;
        }
        return names;
    }

    // Lists the directory, reads what may have changed, and logs what is newly skipped.
    DirSnapshot read_snapshot() {
        const bool read_all = std::exchange(read_all_, false);
        const std::set<std::string> events = std::exchange(events_, {});
        std::error_code ec;
        std::optional<std::vector<std::string>> names = list_names(ec);
        if (!names) {
            if (ec != std::errc::no_such_file_or_directory && ec != std::errc::not_a_directory) {
                // Unreadable for now (permissions, I/O): report nothing rather than remove all.
                spdlog::warn("cannot list vassal directory {}: {}", dir_.string(), ec.message());
                read_all_ = true; // what the events named is still to be read
                return snapshot_;
            }
            names.emplace();
        }
        DirSnapshot now;
        std::map<std::string, FileStamp> stamps;
        SkippedFiles skipped;
        std::string bytes;
        for (const std::string& name : *names) {
            if (!is_vassal_file_name(name) && !is_vassal_layer_file_name(name)) {
                if (is_miscased_vassal_file_name(name)) {
                    skipped[name] = "only names ending in \".toml\" (lower case) are vassal files";
                }
                continue;
            }
            const fs::path file = dir_ / name;
            struct stat st {};
            const int stat_err = ::stat(file.c_str(), &st) == 0 ? 0 : errno;
            // lstat() only to say why an entry is skipped: an unchanged file costs one stat().
            struct stat lst {};
            const bool symlink = (stat_err != 0 || !S_ISREG(st.st_mode)) &&
                                 ::lstat(file.c_str(), &lst) == 0 && S_ISLNK(lst.st_mode);
            if (stat_err == ENOENT && !symlink) {
                continue; // gone since it was listed
            }
            if (std::string why = skip_reason(stat_err, st.st_mode, symlink); !why.empty()) {
                if (stat_err == ENOENT) {
                    std::error_code link_ec;
                    why += " to " + fs::read_symlink(file, link_ec).string();
                }
                skipped[name] = std::move(why);
                continue;
            }
            const FileStamp stamp = FileStamp::of(st);
            auto known = snapshot_.find(name);
            auto last = stamps_.find(name);
            if (!read_all && events.count(name) == 0 && known != snapshot_.end() &&
                last != stamps_.end() && last->second == stamp) {
                now[name] = known->second; // not written since it was read
                stamps[name] = stamp;
                continue;
            }
            // An oversized file is reported like any other: its loader names the limit.
            int err = read_vassal_bytes(file, bytes);
            if (err == 0 || err == EFBIG) {
                now[name] = content_hash(bytes);
                stamps[name] = stamp;
            } else if (err != ENOENT) {
                // Keep what we knew, and read it again at the next scan; a new file that cannot
                // be read is reported with hash 0 so that its loader reports why.
                skipped[name] = "unreadable: " + lowercase_first(read_error_message(err));
                now[name] = known != snapshot_.end() ? known->second : 0;
            }
        }
        for (const auto& [name, why] : newly_skipped(skipped_, skipped)) {
            spdlog::warn("emperor: skipping {}: {}", (dir_ / name).string(), why);
        }
        skipped_ = std::move(skipped);
        stamps_ = std::move(stamps);
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
    std::map<std::string, FileStamp> stamps_; // of the files of snapshot_ at their last read
    SkippedFiles skipped_;                    // as logged
    std::set<std::string> events_;            // files inotify named since the last scan
    bool read_all_ = false;                   // read every file at the next scan
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
