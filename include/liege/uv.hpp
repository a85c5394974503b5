// RAII ownership of libuv handles.
//
// libuv forbids freeing a handle's memory before its close callback has run, so the owner below
// never deletes directly: destruction (or reset()) calls uv_close() and the storage is freed in
// the close callback. A handle that was never initialised (type UV_UNKNOWN_HANDLE) is freed at
// once.
#pragma once

#include <uv.h>

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

} // namespace liege
