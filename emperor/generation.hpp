// One load of a vassal file. Immutable once built: the workers it started share it, and the
// last of them to go frees it, however long after the vassal moved on it drains.
#pragma once

#include <cstdint>
#include <memory>

#include "liege/vassal.hpp"

namespace liege::emperor {

struct Generation {
    uint64_t id = 0;
    Vassal config;
};

using GenerationPtr = std::shared_ptr<const Generation>;

} // namespace liege::emperor
