// A vassal's [watch]: its source files, watched recursively with inotify so that editing the
// app's code reloads it (PM2's `watch`, uWSGI's --py-autoreload).
//
// Every listed path is resolved against the vassal's working directory. A directory is watched
// with all its subdirectories, including ones created later; a file is watched through its
// parent directory, so an editor that saves by renaming a new file over it is seen too. A change
// whose path (relative to the working directory) has a component matching an ignore glob
// (fnmatch: "*.pyc", "__pycache__", ".git") is dropped; a directory matching one is not
// descended into. The first change that counts starts the debounce: once nothing has changed
// for `debounce`, the callback gets that path, from the loop.
#pragma once

#include <uv.h>

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "liege/uv.hpp"
#include "liege/vassal.hpp"

namespace liege::emperor {

class CodeWatcher {
public:
    using ChangeFn = std::function<void(const std::string& changed)>;

    // Watches `policy.paths` under `base`. nullptr and *error set when inotify cannot be had; a
    // listed path that does not exist (yet) is watched for through its parent when that exists.
    static std::unique_ptr<CodeWatcher> start(uv_loop_t* loop, const std::filesystem::path& base,
                                              const WatchPolicy& policy, ChangeFn on_change,
                                              std::string* error);
    ~CodeWatcher();
    CodeWatcher(const CodeWatcher&) = delete;
    CodeWatcher& operator=(const CodeWatcher&) = delete;

    // Whether `relative` (a path under the base) is ignored.
    bool ignored(const std::filesystem::path& relative) const;

private:
    CodeWatcher(std::filesystem::path base, WatchPolicy policy, ChangeFn on_change);
    // Watches `dir` and, unless ignored, every directory below it.
    void add_tree(const std::filesystem::path& dir);
    // Watches `dir` for the entry `only` ("" = every entry).
    void add_dir(const std::filesystem::path& dir, const std::string& only);
    void on_readable();

    std::filesystem::path base_;
    WatchPolicy policy_;
    ChangeFn on_change_;
    int fd_ = -1;
    struct Watch {
        std::filesystem::path dir;
        std::string only; // the one entry of interest, for a watched file; "" for a tree
    };
    std::map<int, Watch> watches_;
    std::string changed_; // the first change of the current debounce window
    UvHandle<uv_poll_t> poll_;
    UvHandle<uv_timer_t> debounce_;
};

} // namespace liege::emperor
