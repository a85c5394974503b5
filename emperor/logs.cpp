#include "liege/logs.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <system_error>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

namespace liege {

namespace fs = std::filesystem;

namespace {

constexpr const char* kPattern = "%Y-%m-%dT%H:%M:%S.%e %l %v";

int open_append(const fs::path& path) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    return fd >= 0 ? fd : -errno;
}

// emperor.log: spdlog formats, the reopenable file writes.
class FileSink final : public spdlog::sinks::base_sink<std::mutex> {
public:
    explicit FileSink(std::shared_ptr<ReopenableFile> file) : file_(std::move(file)) {}

protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
        spdlog::memory_buf_t buf;
        formatter_->format(msg, buf);
        file_->write({buf.data(), buf.size()});
    }
    void flush_() override {} // every line is written through at once

private:
    std::shared_ptr<ReopenableFile> file_;
};

LogFiles* g_files = nullptr;

} // namespace

std::string log_timestamp(std::chrono::system_clock::time_point t) {
    const std::time_t secs = std::chrono::system_clock::to_time_t(t);
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()) %
                    std::chrono::seconds(1);
    std::tm local{};
    ::localtime_r(&secs, &local);
    char buf[32];
    size_t n = std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &local);
    std::snprintf(buf + n, sizeof(buf) - n, ".%03d", static_cast<int>(ms.count()));
    return buf;
}

std::string format_worker_line(std::string_view timestamp, std::string_view tag,
                               std::string_view line, bool is_stderr) {
    std::string out;
    out.reserve(timestamp.size() + tag.size() + line.size() + 12);
    out.append(timestamp);
    out.append(" [");
    out.append(tag);
    out.append(is_stderr ? " stderr] " : "] ");
    out.append(line);
    out.push_back('\n');
    return out;
}

std::string_view vassal_of_tag(std::string_view tag) {
    auto slash = tag.rfind('/');
    return slash == std::string_view::npos ? tag : tag.substr(0, slash);
}

// ---------------------------------------------------------------------------------------------
// ReopenableFile

std::unique_ptr<ReopenableFile> ReopenableFile::open(const fs::path& path, int* err) {
    int fd = open_append(path);
    if (fd < 0) {
        *err = fd;
        return nullptr;
    }
    return std::unique_ptr<ReopenableFile>(new ReopenableFile(path, fd));
}

ReopenableFile::~ReopenableFile() {
    ::close(fd_);
}

int ReopenableFile::write(std::string_view data) {
    std::lock_guard lock(mutex_);
    while (!data.empty()) {
        ssize_t n = ::write(fd_, data.data(), data.size());
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        data.remove_prefix(static_cast<size_t>(n));
    }
    return 0;
}

int ReopenableFile::reopen() {
    // Opened outside the lock: writers wait only for the swap.
    int fd = open_append(path_);
    if (fd < 0) {
        return fd;
    }
    int old = 0;
    {
        std::lock_guard lock(mutex_);
        old = fd_;
        fd_ = fd;
    }
    ::close(old);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// LogFiles

LogFiles::LogFiles(fs::path dir) : dir_(std::move(dir)) {}

LogFiles::~LogFiles() {
    if (emperor_sink_ != nullptr) {
        auto& sinks = spdlog::default_logger()->sinks();
        std::erase(sinks, emperor_sink_);
        for (auto& s : sinks) {
            s->set_level(spdlog::level::trace);
        }
    }
    if (g_files == this) {
        g_files = nullptr;
    }
}

int LogFiles::open() {
    if (dir_.empty()) {
        return 0;
    }
    std::error_code ec;
    fs::create_directories(dir_, ec);
    if (ec) {
        spdlog::error("cannot create the log directory {}: {}", dir_.string(), ec.message());
        return -ec.value();
    }
    int err = 0;
    auto file = ReopenableFile::open(dir_ / "emperor.log", &err);
    if (file == nullptr) {
        spdlog::error("cannot open {}: {}", (dir_ / "emperor.log").string(), std::strerror(-err));
        return err;
    }
    emperor_file_ = std::move(file);
    spdlog::info("logging to {}", fs::absolute(dir_).string());
    auto sink = std::make_shared<FileSink>(emperor_file_);
    sink->set_pattern(kPattern);
    // stderr keeps what needs a person's attention; everything else goes to the file.
    auto logger = spdlog::default_logger();
    for (auto& s : logger->sinks()) {
        s->set_level(spdlog::level::warn);
    }
    logger->sinks().push_back(sink);
    emperor_sink_ = std::move(sink);
    return 0;
}

void LogFiles::worker_line(std::string_view tag, std::string_view line, bool is_stderr) {
    if (dir_.empty()) {
        spdlog::info("[{}] {}", tag, line);
        return;
    }
    const std::string_view vassal = vassal_of_tag(tag);
    auto it = vassal_files_.find(vassal);
    if (it == vassal_files_.end()) {
        int err = 0;
        const fs::path path = dir_ / (std::string(vassal) + ".log");
        auto file = ReopenableFile::open(path, &err);
        if (file == nullptr) {
            // Not lost: the emperor's log takes the line instead.
            spdlog::warn("cannot open {}: {}; [{}] {}", path.string(), std::strerror(-err), tag,
                         line);
            return;
        }
        it = vassal_files_.emplace(std::string(vassal), std::move(file)).first;
    }
    it->second->write(
        format_worker_line(log_timestamp(std::chrono::system_clock::now()), tag, line, is_stderr));
}

int LogFiles::reopen() {
    int failed = 0;
    auto one = [&failed](ReopenableFile& f) {
        if (int rc = f.reopen(); rc != 0) {
            ++failed;
            spdlog::error("cannot reopen {}: {}", f.path().string(), std::strerror(-rc));
        }
    };
    if (emperor_file_ != nullptr) {
        one(*emperor_file_);
    }
    for (auto& [name, f] : vassal_files_) {
        one(*f);
    }
    return failed;
}

void install_log_files(LogFiles* files) {
    g_files = files;
}

void log_worker_line(std::string_view tag, std::string_view line, bool is_stderr) {
    if (g_files != nullptr) {
        g_files->worker_line(tag, line, is_stderr);
    } else {
        spdlog::info("[{}] {}", tag, line);
    }
}

void reopen_log_files() {
    if (g_files != nullptr) {
        g_files->reopen();
    }
}

} // namespace liege
