#include "body_spool.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <string>

namespace liege::router {

namespace {

std::string temp_dir() {
    const char* dir = std::getenv("TMPDIR");
    return dir != nullptr && dir[0] == '/' ? dir : "/tmp";
}

} // namespace

int BodySpool::open_file() {
    const std::string dir = temp_dir();
    fd_ = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd_ >= 0) {
        return 0;
    }
    // A file system without O_TMPFILE: a named file, unlinked before anything is written.
    std::string path = dir + "/liege-body-XXXXXX";
    fd_ = ::mkostemp(path.data(), O_CLOEXEC);
    if (fd_ < 0) {
        return errno;
    }
    ::unlink(path.c_str());
    return 0;
}

int BodySpool::write_file(const char* data, size_t len) {
    if (fd_ < 0) {
        if (int err = open_file(); err != 0) {
            return err;
        }
    }
    while (len > 0) {
        const ssize_t n = ::pwrite(fd_, data, len, static_cast<off_t>(file_size_));
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return errno;
        }
        data += n;
        len -= static_cast<size_t>(n);
        file_size_ += static_cast<uint64_t>(n);
    }
    return 0;
}

int BodySpool::flush_gather() {
    if (gather_ == nullptr || gather_->len == 0) {
        return 0;
    }
    const int err = write_file(gather_->data, gather_->len);
    gather_->len = 0;
    return err;
}

int BodySpool::append(const char* data, size_t len, uint64_t memory_max) {
    while (len > 0) {
        Chunk* into = nullptr;
        size_t n = 0;
        if (gather_ == nullptr && mem_size_ < memory_max) {
            if (mem_tail_ == nullptr || mem_tail_->len == Chunk::kSize) {
                Chunk* c = chunks_.get();
                c->next_free = nullptr;
                if (mem_tail_ == nullptr) {
                    mem_head_ = c;
                } else {
                    mem_tail_->next_free = c;
                }
                mem_tail_ = c;
            }
            into = mem_tail_;
            n = static_cast<size_t>(
                std::min<uint64_t>({len, Chunk::kSize - into->len, memory_max - mem_size_}));
            mem_size_ += n;
        } else {
            if (gather_ == nullptr) {
                gather_ = chunks_.get();
            } else if (gather_->len == Chunk::kSize) {
                if (int err = flush_gather(); err != 0) {
                    return err;
                }
            }
            into = gather_;
            n = std::min<size_t>(len, Chunk::kSize - into->len);
        }
        std::copy(data, data + n, into->data + into->len);
        into->len += static_cast<uint32_t>(n);
        size_ += n;
        data += n;
        len -= n;
    }
    return 0;
}

int BodySpool::finish() {
    const int err = flush_gather();
    if (gather_ != nullptr) {
        chunks_.unref(gather_);
        gather_ = nullptr;
    }
    next_mem_ = mem_head_;
    return err;
}

Chunk* BodySpool::take(int& err) {
    err = 0;
    if (next_mem_ != nullptr) {
        Chunk* c = next_mem_;
        next_mem_ = c->next_free;
        chunks_.ref(c);
        taken_ += c->len;
        return c;
    }
    if (file_off_ >= file_size_) {
        return nullptr;
    }
    Chunk* c = chunks_.get();
    const size_t want =
        static_cast<size_t>(std::min<uint64_t>(Chunk::kSize, file_size_ - file_off_));
    ssize_t n = 0;
    do {
        n = ::pread(fd_, c->data, want, static_cast<off_t>(file_off_));
    } while (n < 0 && errno == EINTR);
    if (n <= 0) {
        err = n < 0 ? errno : EIO; // the file was cut short under us
        chunks_.unref(c);
        return nullptr;
    }
    c->len = static_cast<uint32_t>(n);
    file_off_ += static_cast<uint64_t>(n);
    taken_ += static_cast<uint64_t>(n);
    return c;
}

void BodySpool::rewind() {
    next_mem_ = mem_head_;
    file_off_ = 0;
    taken_ = 0;
}

void BodySpool::reset() {
    while (mem_head_ != nullptr) {
        Chunk* next = mem_head_->next_free;
        chunks_.unref(mem_head_);
        mem_head_ = next;
    }
    mem_tail_ = next_mem_ = nullptr;
    if (gather_ != nullptr) {
        chunks_.unref(gather_);
        gather_ = nullptr;
    }
    if (fd_ >= 0) {
        ::close(fd_);
        fd_ = -1;
    }
    mem_size_ = file_size_ = size_ = file_off_ = taken_ = 0;
}

} // namespace liege::router
