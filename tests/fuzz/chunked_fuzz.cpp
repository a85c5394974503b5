// Chunked request bodies: what llhttp decodes does not depend on where the input is split, no
// chunk size beyond what the router accepts is taken, and a decoded body chunked again (as the
// router forwards it) decodes to the same bytes.
#include <cstdint>
#include <string>

#include "parse_run.hpp"

using liege::fuzz::check;
using liege::fuzz::ParseRun;

namespace {

const std::string kHead = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";

std::string chunk_again(const std::string& body) {
    static const char kHex[] = "0123456789abcdef";
    std::string out = kHead;
    if (!body.empty()) {
        std::string size;
        for (size_t n = body.size(); n != 0; n >>= 4) {
            size.insert(size.begin(), kHex[n & 15]);
        }
        out += size + "\r\n" + body + "\r\n";
    }
    return out + "0\r\n\r\n";
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) {
        return 0;
    }
    const std::string in = kHead + std::string(reinterpret_cast<const char*>(data) + 1, size - 1);
    const size_t split = kHead.size() + data[0];
    ParseRun whole(HTTP_REQUEST);
    ParseRun pieces(HTTP_REQUEST);
    if (liege::fuzz::parse_split(whole, pieces, in, split) != HPE_PAUSED) {
        return 0;
    }
    ParseRun again(HTTP_REQUEST);
    check(again.run(chunk_again(whole.body), SIZE_MAX) == HPE_PAUSED, "re-chunked body failed");
    check(again.body == whole.body, "re-chunked body differs");
    return 0;
}
