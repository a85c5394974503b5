// A request body read in full before a backend is chosen ([upstream] request_buffering), so
// that a slow upload holds no worker of a vassal whose workers serve one request at a time. The
// first `memory_max` bytes stay in chunks of the thread's pool; the rest go to a temporary file
// that has no name (O_TMPFILE, or unlinked at once) under $TMPDIR (else /tmp), so nothing is
// left behind whatever happens to the router. Memory does not grow with the body: beyond the
// threshold one chunk gathers file writes.
//
// It holds the body's bytes without chunk framing (a chunked body goes on with a Content-Length),
// sent in pieces handed out by take(); rewind() starts it again for a retry on another backend.
#pragma once

#include <cstddef>
#include <cstdint>

#include "buffers.hpp"

namespace liege::router {

class BodySpool {
public:
    explicit BodySpool(ChunkPool& chunks) : chunks_(chunks) {}
    BodySpool(const BodySpool&) = delete;
    BodySpool& operator=(const BodySpool&) = delete;
    ~BodySpool() { reset(); }

    // Appends bytes; past `memory_max` bytes in memory they go to the file. Returns 0, or the
    // errno of a temporary file that could not be made or written (the disk is full).
    int append(const char* data, size_t len, uint64_t memory_max);
    // The whole body is in: what is gathered for the file is written. 0 or an errno.
    int finish();

    uint64_t size() const { return size_; }
    uint64_t in_file() const { return file_size_; }
    bool empty() const { return size_ == 0; }
    // Everything was handed out by take().
    bool drained() const { return taken_ == size_; }

    // The next piece to send, in a chunk the caller owns one reference to; nullptr when it is
    // drained, or (err set) when the file could not be read.
    Chunk* take(int& err);
    // take() starts from the beginning again.
    void rewind();
    // Frees the memory and closes the file: ready for the next request.
    void reset();

private:
    int open_file();
    int write_file(const char* data, size_t len);
    int flush_gather();

    ChunkPool& chunks_;
    // The memory part, linked through Chunk::next_free (each chunk full but the last).
    Chunk* mem_head_ = nullptr;
    Chunk* mem_tail_ = nullptr;
    uint64_t mem_size_ = 0;
    Chunk* gather_ = nullptr; // bytes on their way to the file
    int fd_ = -1;
    uint64_t file_size_ = 0;
    uint64_t size_ = 0;
    // Where take() is: a memory chunk (null: past the memory part), then a file offset.
    Chunk* next_mem_ = nullptr;
    uint64_t file_off_ = 0;
    uint64_t taken_ = 0;
};

} // namespace liege::router
