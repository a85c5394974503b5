// The llhttp callbacks both legs' parsers share; each leg adds its start-line ones.
#pragma once

#include <llhttp.h>

namespace liege::router {

inline llhttp_settings_t message_settings(llhttp_cb begin, llhttp_data_cb field,
                                          llhttp_data_cb value, llhttp_cb headers_complete,
                                          llhttp_data_cb body, llhttp_cb complete) {
    llhttp_settings_t v;
    llhttp_settings_init(&v);
    v.on_message_begin = begin;
    v.on_header_field = field;
    v.on_header_value = value;
    v.on_headers_complete = headers_complete;
    v.on_body = body;
    v.on_message_complete = complete;
    return v;
}

} // namespace liege::router
