// The router's timeouts and limits as `KEY=VALUE` settings: `liege run --router-opt KEY=VALUE`
// (passed on to the router it starts), `liege router --router-opt`, and the "settings" object of
// /status. One table names every key, its kind and the RouterOptions field it sets, so the
// three can never disagree.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "liege/router.hpp"

namespace liege {

// Every key, in the order /status and the help text list them.
std::vector<std::string_view> router_setting_keys();

// Applies one "KEY=VALUE" to `o`. Throws std::invalid_argument naming the setting and what is
// wrong: an unknown key (with the known ones), a value that does not parse, or one out of range.
void apply_router_setting(RouterOptions& o, std::string_view key_value);

// Every setting's value in `o`, as /status reports it: durations as text ("10s"), sizes in
// bytes, counts as numbers.
nlohmann::json router_settings_json(const RouterOptions& o);

} // namespace liege
