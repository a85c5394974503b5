#include "code_watcher.hpp"

#include <fnmatch.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "liege/log.hpp"

namespace liege::emperor {

namespace fs = std::filesystem;

namespace {

constexpr uint32_t kDirMask = IN_CREATE | IN_DELETE | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM |
                              IN_MOVED_TO | IN_ATTRIB | IN_DELETE_SELF | IN_ONLYDIR;

} // namespace

CodeWatcher::CodeWatcher(fs::path base, WatchPolicy policy, ChangeFn on_change)
    : base_(std::move(base)), policy_(std::move(policy)), on_change_(std::move(on_change)) {}

CodeWatcher::~CodeWatcher() {
    poll_.reset(); // stops polling before the descriptor goes
    if (fd_ >= 0) {
        ::close(fd_);
    }
}

std::unique_ptr<CodeWatcher> CodeWatcher::start(uv_loop_t* loop, const fs::path& base,
                                                const WatchPolicy& policy, ChangeFn on_change,
                                                std::string* error) {
    std::unique_ptr<CodeWatcher> w(new CodeWatcher(base, policy, std::move(on_change)));
    w->fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (w->fd_ < 0) {
        *error = std::string("inotify: ") + std::strerror(errno);
        return nullptr;
    }
    for (const std::string& p : policy.paths) {
        fs::path path = fs::path(p).is_absolute() ? fs::path(p) : base / p;
        path = path.lexically_normal();
        std::error_code ec;
        if (fs::is_directory(path, ec)) {
            w->add_tree(path);
        } else {
            w->add_dir(path.parent_path(), path.filename().string());
        }
    }
    uv_poll_init(loop, w->poll_.get(), w->fd_);
    w->poll_->data = w.get();
    uv_poll_start(w->poll_.get(), UV_READABLE, [](uv_poll_t* h, int status, int) {
        if (h->data != nullptr && status == 0) {
            static_cast<CodeWatcher*>(h->data)->on_readable();
        }
    });
    uv_timer_init(loop, w->debounce_.get());
    w->debounce_->data = w.get();
    return w;
}

bool CodeWatcher::ignored(const fs::path& relative) const {
    for (const auto& part : relative) {
        const std::string name = part.string();
        if (name.empty() || name == "." || name == "..") {
            continue;
        }
        for (const std::string& glob : policy_.ignore) {
            if (::fnmatch(glob.c_str(), name.c_str(), 0) == 0) {
                return true;
            }
        }
    }
    return false;
}

void CodeWatcher::add_dir(const fs::path& dir, const std::string& only) {
    int wd = ::inotify_add_watch(fd_, dir.c_str(), kDirMask);
    if (wd < 0) {
        spdlog::warn("watch: cannot watch {}: {}", dir.string(), std::strerror(errno));
        return;
    }
    auto [it, fresh] = watches_.try_emplace(wd, Watch{dir, only});
    if (!fresh && it->second.only != only) {
        it->second.only.clear(); // watched for a file and as a tree: every entry counts
    }
}

void CodeWatcher::add_tree(const fs::path& dir) {
    add_dir(dir, "");
    std::error_code ec;
    for (fs::recursive_directory_iterator
             it(dir, fs::directory_options::skip_permission_denied, ec),
         end;
         !ec && it != end; it.increment(ec)) {
        std::error_code type_ec;
        if (!it->is_directory(type_ec) || it->is_symlink(type_ec)) {
            continue;
        }
        if (ignored(it->path().lexically_relative(base_))) {
            it.disable_recursion_pending();
            continue;
        }
        add_dir(it->path(), "");
    }
}

void CodeWatcher::on_readable() {
    alignas(inotify_event) char buf[16384];
    for (;;) {
        ssize_t n = ::read(fd_, buf, sizeof buf);
        if (n <= 0) {
            return; // EAGAIN: drained
        }
        for (ssize_t at = 0; at < n;) {
            const auto* e = reinterpret_cast<const inotify_event*>(buf + at);
            at += static_cast<ssize_t>(sizeof(inotify_event) + e->len);
            auto it = watches_.find(e->wd);
            if (it == watches_.end()) {
                continue;
            }
            if ((e->mask & IN_IGNORED) != 0) {
                watches_.erase(it); // the directory went
                continue;
            }
            const std::string name = e->len > 0 ? std::string(e->name) : std::string();
            if (!it->second.only.empty() && name != it->second.only) {
                continue;
            }
            const fs::path path = name.empty() ? it->second.dir : it->second.dir / name;
            const fs::path relative = path.lexically_relative(base_);
            if (ignored(relative)) {
                continue;
            }
            if ((e->mask & IN_ISDIR) != 0 && (e->mask & (IN_CREATE | IN_MOVED_TO)) != 0 &&
                it->second.only.empty()) {
                add_tree(path); // a new directory in a watched tree is watched too
            }
            if (changed_.empty()) {
                changed_ = relative.string();
            }
            uv_timer_start(
                debounce_.get(),
                [](uv_timer_t* t) {
                    auto* self = static_cast<CodeWatcher*>(t->data);
                    std::string changed = std::move(self->changed_);
                    self->changed_.clear();
                    auto fn = self->on_change_; // the call may destroy the watcher
                    fn(changed);
                },
                static_cast<uint64_t>(policy_.debounce.count()), 0);
        }
    }
}

} // namespace liege::emperor
