// RAII ownership of libuv handles: the one scheme every handle in liege follows.
//
// Handles. Each uv_*_t has one owner, a UvHandle. libuv forbids freeing a handle's memory before
// its close callback has run, so the owner never deletes directly: destruction (or reset())
// clears handle->data, calls uv_close() and the storage is freed in the close callback. A handle
// that was never initialised (type UV_UNKNOWN_HANDLE) is freed at once. So the object holding a
// UvHandle may be destroyed at any time, from inside one of the handle's own callbacks too: a
// closed handle calls none of its callbacks again, and the memory libuv still uses is not the
// object's.
//
// Requests. On uv_close() libuv does not drop a stream's pending requests (uv_connect_t,
// uv_write_t, uv_shutdown_t): it calls them back with UV_ECANCELED, after uv_close() and before
// the close callback. Requests that belong to one handle therefore live in that handle's block:
// UvHandle<uv_tcp_t, Requests> allocates the handle and a Requests struct together
// (requests()), and the close callback frees both, after any cancelled request callback. Such a
// callback reaches its owner only through request_owner() (the handle's data, null once the
// handle is closing, when the owner may be gone) and returns at once when that is null. The
// bytes a write sends are read only while the handle is open, so they may live in the owner.
//
// post() is how a completion reaches its caller: from the loop, never from inside the function
// that started the operation (the caller may still be iterating what the completion changes).
#pragma once

#include <uv.h>

#include <functional>
#include <string_view>
#include <type_traits>
#include <utility>

namespace liege {

struct NoRequests {};

template <typename T, typename Requests = NoRequests> class UvHandle {
public:
    UvHandle() : block_(new Block{}) {}
    ~UvHandle() { reset(); }
    UvHandle(const UvHandle&) = delete;
    UvHandle& operator=(const UvHandle&) = delete;
    UvHandle(UvHandle&& other) noexcept : block_(std::exchange(other.block_, nullptr)) {}
    UvHandle& operator=(UvHandle&& other) noexcept {
        if (this != &other) {
            reset();
            block_ = std::exchange(other.block_, nullptr);
        }
        return *this;
    }

    // Null after reset() (or a move).
    T* get() const { return block_ != nullptr ? &block_->handle : nullptr; }
    T* operator->() const { return get(); }
    uv_handle_t* base() const { return reinterpret_cast<uv_handle_t*>(get()); }
    uv_stream_t* stream() const { return reinterpret_cast<uv_stream_t*>(get()); }
    // The requests that belong to the handle; freed with it, in its close callback.
    Requests& requests() const { return block_->requests; }

    // Whether there is a handle and a uv_*_init has been called on it.
    bool initialised() const { return block_ != nullptr && base()->type != UV_UNKNOWN_HANDLE; }
    // Whether it is initialised and active (a started timer, a reading stream, ...).
    bool active() const { return initialised() && uv_is_active(base()) != 0; }

    // Closes the handle (if initialised) and frees it once libuv is done with it.
    void reset() {
        Block* block = std::exchange(block_, nullptr);
        if (block == nullptr) {
            return;
        }
        auto* h = reinterpret_cast<uv_handle_t*>(&block->handle);
        if (h->type == UV_UNKNOWN_HANDLE) {
            delete block;
        } else if (!uv_is_closing(h)) {
            h->data = nullptr;
            uv_close(h, [](uv_handle_t* closing) { delete reinterpret_cast<Block*>(closing); });
        }
    }

private:
    struct Block {
        T handle{};
        [[no_unique_address]] Requests requests{};
    };
    // The close callback gets the handle's address and frees the block from it.
    static_assert(std::is_standard_layout_v<Block>, "the handle must be the block's first member");

    Block* block_;
};

// The owner a request's callback reports to (see "Requests" above): its handle's data, which is
// null once the handle is closing.
template <typename Owner, typename Req> Owner* request_owner(const Req* req) {
    return static_cast<Owner*>(req->handle->data);
}

// Closes a loop whose handles have all been closed and their callbacks run. A handle still open
// is a leak (every handle has one owner that closes it): each is logged as critical, naming
// `owner` and the handle's type, which the integration tests catch in every build, and a debug
// build stops on it. Returns whether the loop closed.
bool close_loop(uv_loop_t* loop, std::string_view owner);

// Runs `fn` on `loop` on its next iteration (a zero-delay timer that closes itself).
inline void post(uv_loop_t* loop, std::function<void()> fn) {
    struct Posted {
        UvHandle<uv_timer_t> timer;
        std::function<void()> fn;
    };
    auto* p = new Posted{{}, std::move(fn)};
    uv_timer_init(loop, p->timer.get());
    p->timer->data = p;
    uv_timer_start(
        p->timer.get(),
        [](uv_timer_t* t) {
            auto* posted = static_cast<Posted*>(t->data);
            auto run = std::move(posted->fn);
            delete posted; // closes the timer; its memory goes in the close callback
            run();
        },
        0, 0);
}

} // namespace liege
