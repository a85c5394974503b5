#include "liege/router.hpp"

#include "liege/log.hpp"

namespace liege {

int run_router(const RouterOptions&) {
    spdlog::error("router: not built yet");
    return 1;
}

} // namespace liege
