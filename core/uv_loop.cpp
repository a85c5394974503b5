#include <cassert>

#include "liege/log.hpp"
#include "liege/uv.hpp"

namespace liege {

bool close_loop(uv_loop_t* loop, std::string_view owner) {
    if (uv_loop_close(loop) == 0) {
        return true;
    }
    struct Walk {
        std::string_view owner;
    } walk{owner};
    uv_walk(
        loop,
        [](uv_handle_t* h, void* arg) {
            spdlog::critical("{}: a {} handle is still open at exit{}",
                             static_cast<Walk*>(arg)->owner, uv_handle_type_name(h->type),
                             uv_is_closing(h) != 0 ? " (closing)" : "");
        },
        &walk);
    assert(false && "a libuv handle outlived its owner");
    return false;
}

} // namespace liege
