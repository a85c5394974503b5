// Per-thread pools of the memory the data path uses, so steady-state proxying allocates nothing.
//
// A Chunk is a reference-counted read buffer. Parsed views (header pieces, body slices) point
// into it; a write that forwards a slice holds a reference until libuv reports the write done.
// A WriteOp is one uv_write: its iovecs, the chunks they reference, and a little scratch space
// for chunked-encoding framing. Idle connections hold neither, which keeps 10k idle clients cheap.
#pragma once

#include <uv.h>

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

namespace liege::router {

struct Chunk {
    static constexpr uint32_t kSize = 64 * 1024 - 64;
    Chunk* next_free = nullptr;
    uint32_t refs = 0;
    uint32_t len = 0;
    char data[kSize];

    static Chunk* from_data(char* p) { return reinterpret_cast<Chunk*>(p - offsetof(Chunk, data)); }
};

class ChunkPool {
public:
    ChunkPool() = default;
    ChunkPool(const ChunkPool&) = delete;
    ChunkPool& operator=(const ChunkPool&) = delete;
    ~ChunkPool() {
        while (free_ != nullptr) {
            Chunk* c = free_;
            free_ = c->next_free;
            delete c;
        }
    }

    Chunk* get() {
        Chunk* c = free_;
        if (c != nullptr) {
            free_ = c->next_free;
            --free_count_;
        } else {
            c = new Chunk;
        }
        c->refs = 1;
        c->len = 0;
        return c;
    }
    void ref(Chunk* c) { ++c->refs; }
    void unref(Chunk* c) {
        assert(c->refs > 0);
        if (--c->refs == 0) {
            if (free_count_ >= kMaxFree) {
                delete c;
                released_ += sizeof(Chunk);
                return;
            }
            c->next_free = free_;
            free_ = c;
            ++free_count_;
        }
    }

    // Bytes of chunks freed beyond the pool since the last call: the heap may keep them from
    // the system until it is trimmed.
    size_t take_released() { return std::exchange(released_, 0); }

private:
    static constexpr size_t kMaxFree = 64;
    Chunk* free_ = nullptr;
    size_t free_count_ = 0;
    size_t released_ = 0;
};

struct WriteOp {
    static constexpr unsigned kMaxBufs = 16;
    static constexpr unsigned kScratch = 512;

    uv_write_t req;
    WriteOp* next = nullptr; // free list, or a connection's queue of writes not yet started
    void* owner = nullptr;
    unsigned nbufs = 0;
    unsigned nrefs = 0;
    unsigned scratch_len = 0;
    size_t bytes = 0;
    uv_buf_t bufs[kMaxBufs];
    Chunk* refs[kMaxBufs];
    char scratch[kScratch];

    bool full() const { return nbufs + 3 > kMaxBufs || scratch_len + 32 > kScratch; }
};

class WriteOpPool {
public:
    WriteOpPool() = default;
    WriteOpPool(const WriteOpPool&) = delete;
    WriteOpPool& operator=(const WriteOpPool&) = delete;
    ~WriteOpPool() {
        while (free_ != nullptr) {
            WriteOp* op = free_;
            free_ = op->next;
            delete op;
        }
    }
    WriteOp* get() {
        WriteOp* op = free_;
        if (op != nullptr) {
            free_ = op->next;
            --free_count_;
        } else {
            op = new WriteOp;
        }
        op->next = nullptr;
        op->nbufs = op->nrefs = op->scratch_len = 0;
        op->bytes = 0;
        return op;
    }
    // Drops the op's chunk references and recycles it.
    void put(WriteOp* op, ChunkPool& chunks) {
        for (unsigned i = 0; i < op->nrefs; ++i) {
            chunks.unref(op->refs[i]);
        }
        op->nrefs = 0;
        if (free_count_ >= kMaxFree) {
            delete op;
            return;
        }
        op->next = free_;
        free_ = op;
        ++free_count_;
    }

    // Recycles a list of ops (linked through WriteOp::next) that will never be written.
    void put_list(WriteOp* op, ChunkPool& chunks) {
        while (op != nullptr) {
            WriteOp* next = op->next;
            put(op, chunks);
            op = next;
        }
    }

private:
    static constexpr size_t kMaxFree = 256;
    WriteOp* free_ = nullptr;
    size_t free_count_ = 0;
};

// Writes a chunked transfer-coding size line for `len` ("1a2b\r\n") into `out` (at least 20
// bytes); returns its length.
inline size_t chunk_size_line(size_t len, char* out) {
    char hex[16];
    int k = 0;
    do {
        hex[k++] = "0123456789abcdef"[len & 15];
        len >>= 4;
    } while (len != 0);
    size_t n = 0;
    while (k > 0) {
        out[n++] = hex[--k];
    }
    out[n++] = '\r';
    out[n++] = '\n';
    return n;
}

// Gathers the bytes one parse pass produces for one destination into as few writes as possible.
class Output {
public:
    Output(WriteOpPool& ops, ChunkPool& chunks) : ops_(ops), chunks_(chunks) {}

    // Pieces up to this size are copied into an op's scratch space instead of referenced: a
    // reference costs an iovec and pins a 64 KiB Chunk, so a body of tiny chunks (1-byte chunks
    // of a chunked stream) would cost far more memory than the bytes it carries.
    static constexpr size_t kCopyMax = 128;

    // Forwards data[0..len) of `c`: small pieces are copied, larger ones referenced (the op
    // keeps a reference to `c`).
    void add(Chunk* c, const char* data, size_t len) {
        if (len == 0) {
            return;
        }
        if (len <= kCopyMax) {
            add_copy(data, len);
            return;
        }
        add_ref(c, data, len);
    }
    // Forwards data[0..len) of `c` by reference, whatever its size.
    void add_ref(Chunk* c, const char* data, size_t len) {
        if (len == 0) {
            return;
        }
        WriteOp* op = current();
        chunks_.ref(c);
        op->refs[op->nrefs++] = c;
        push(op, data, len);
    }
    // Copies a few bytes (chunk framing, small pieces) into the op's scratch space.
    void add_copy(const char* data, size_t len) {
        assert(len <= kCopyMax);
        WriteOp* op = current(len);
        assert(op->scratch_len + len <= WriteOp::kScratch);
        char* dst = op->scratch + op->scratch_len;
        std::memcpy(dst, data, len);
        op->scratch_len += static_cast<unsigned>(len);
        // Merge with the previous buffer when it ends right where this one starts.
        if (op->nbufs > 0 && op->bufs[op->nbufs - 1].base + op->bufs[op->nbufs - 1].len == dst) {
            op->bufs[op->nbufs - 1].len += len;
            op->bytes += len;
            return;
        }
        push(op, dst, len);
    }
    // Chunked transfer-coding framing around a body piece.
    void add_chunk(Chunk* c, const char* data, size_t len) {
        if (len == 0) {
            return;
        }
        char line[24];
        add_copy(line, chunk_size_line(len, line));
        add(c, data, len);
        add_copy("\r\n", 2);
    }

    bool empty() const { return head_ == nullptr; }
    // Hands over the ops gathered so far (a linked list through WriteOp::next).
    WriteOp* take() {
        WriteOp* h = head_;
        head_ = tail_ = nullptr;
        return h;
    }

private:
    // The op to add to: the last one, unless it lacks an iovec or `scratch` bytes of scratch.
    WriteOp* current(size_t scratch = 0) {
        if (tail_ == nullptr || tail_->full() || tail_->scratch_len + scratch > WriteOp::kScratch) {
            WriteOp* op = ops_.get();
            if (tail_ == nullptr) {
                head_ = op;
            } else {
                tail_->next = op;
            }
            tail_ = op;
        }
        return tail_;
    }
    void push(WriteOp* op, const char* data, size_t len) {
        op->bufs[op->nbufs++] = uv_buf_init(const_cast<char*>(data), static_cast<unsigned>(len));
        op->bytes += len;
    }

    WriteOpPool& ops_;
    ChunkPool& chunks_;
    WriteOp* head_ = nullptr;
    WriteOp* tail_ = nullptr;
};

// Deadlines that move on every request phase, kept cheap: moving one later only updates a field;
// the timer heap is touched only when a deadline moves earlier, and a timer that fires before the
// current deadline re-arms for the rest. deadline == 0 means disarmed.
struct LazyDeadline {
    uint64_t deadline = 0;  // loop time, ms
    uint64_t armed_for = 0; // when the uv timer fires; 0 = not running

    void set(uv_timer_t* t, uint64_t ms, uv_timer_cb cb) {
        deadline = uv_now(t->loop) + ms;
        if (armed_for == 0 || deadline < armed_for) {
            uv_timer_start(t, cb, ms, 0);
            armed_for = deadline;
        }
    }
    void clear() { deadline = 0; }
    // Call first in the timer callback: true when the deadline has really passed (it is then
    // cleared); false when it was cleared or moved later (the timer is re-armed for it).
    bool expired(uv_timer_t* t, uv_timer_cb cb) {
        armed_for = 0;
        if (deadline == 0) {
            return false;
        }
        uint64_t now = uv_now(t->loop);
        if (now < deadline) {
            uv_timer_start(t, cb, deadline - now, 0);
            armed_for = deadline;
            return false;
        }
        deadline = 0;
        return true;
    }
};

} // namespace liege::router
