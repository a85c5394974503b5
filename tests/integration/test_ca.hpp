// Tools and throwaway certificates for the tests that speak TLS: programs found on PATH, run to
// their end, and a test CA made by the openssl command (ECDSA P-256 keys; nothing here is a real
// key).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "harness.hpp"

namespace liege::test {

// The program `name` as found on PATH (Process runs a path, not a name).
std::string tool(const std::string& name);

// Runs a command to its end; its exit code (or -1) and both streams.
struct Ran {
    int code = -1;
    std::string out;
    std::string err;
};
Ran run(std::vector<std::string> argv, Millis timeout = kWait);

// A blocking TCP socket connected to 127.0.0.1:port, reads and writes bounded by 10 s each, for
// a test's own TLS client; -1 (nothing to close) when the connect fails.
int connect_loopback(uint16_t port);

// A throwaway CA in `dir` and certificates it signs.
class TestCa {
public:
    explicit TestCa(std::filesystem::path dir);
    std::filesystem::path ca() const { return dir_ / "ca.pem"; }

    // Writes FILE.pem and FILE.key (FILE = `file` under the CA's directory unless absolute) for
    // `name`, with `tag` as its organisation so a test can tell two certificates apart. The key
    // is new unless `key` names an existing one. Files are written beside and renamed into place,
    // as a deploy tool does.
    void issue(const std::string& name, const std::string& tag, const std::filesystem::path& pem,
               const std::filesystem::path& key, const std::filesystem::path& reuse_key = {}) const;

private:
    std::filesystem::path dir_;
};

} // namespace liege::test
