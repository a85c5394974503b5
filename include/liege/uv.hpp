// RAII ownership of libuv handles.
//
// libuv forbids freeing a handle's memory before its close callback has run, so the owner below
// never deletes directly: destruction (or reset()) calls uv_close() and the storage is freed in
// the close callback. A handle that was never initialised (type UV_UNKNOWN_HANDLE) is freed at
// once.
//
// post() is how a completion reaches its caller: from the loop, never from inside the function
// that started the operation (the caller may still be iterating what the completion changes).
#pragma once

#include <uv.h>

#include <functional>
#include <string_view>
#include <utility>

namespace liege {

template <typename T> class UvHandle {
public:
    UvHandle() : handle_(new T{}) {}
    ~UvHandle() { reset(); }
    UvHandle(const UvHandle&) = delete;
    UvHandle& operator=(const UvHandle&) = delete;
    UvHandle(UvHandle&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
    UvHandle& operator=(UvHandle&& other) noexcept {
        if (this != &other) {
            reset();
            handle_ = std::exchange(other.handle_, nullptr);
        }
        return *this;
    }

    T* get() const { return handle_; }
    T* operator->() const { return handle_; }
    uv_handle_t* base() const { return reinterpret_cast<uv_handle_t*>(handle_); }
    uv_stream_t* stream() const { return reinterpret_cast<uv_stream_t*>(handle_); }

    // Closes the handle (if initialised) and frees it once libuv is done with it.
    void reset() {
        if (handle_ == nullptr) {
            return;
        }
        auto* h = base();
        if (h->type == UV_UNKNOWN_HANDLE) {
            delete handle_;
        } else if (!uv_is_closing(h)) {
            h->data = nullptr;
            uv_close(h, [](uv_handle_t* closing) { delete reinterpret_cast<T*>(closing); });
        }
        handle_ = nullptr;
    }

private:
    T* handle_;
};

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
