#include "test_ca.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <stdexcept>

namespace liege::test {

namespace fs = std::filesystem;

std::string tool(const std::string& name) {
    const char* path = std::getenv("PATH");
    std::string dirs = path != nullptr ? path : "/usr/bin:/bin";
    size_t from = 0;
    while (from <= dirs.size()) {
        const size_t to = std::min(dirs.find(':', from), dirs.size());
        const fs::path candidate = fs::path(dirs.substr(from, to - from)) / name;
        if (::access(candidate.c_str(), X_OK) == 0) {
            return candidate.string();
        }
        from = to + 1;
    }
    return name;
}

Ran run(std::vector<std::string> argv, Millis timeout) {
    argv[0] = tool(argv[0]);
    Process p(std::move(argv));
    Ran r;
    auto st = p.wait_exit(timeout);
    if (st && WIFEXITED(*st)) {
        r.code = WEXITSTATUS(*st);
    }
    poll_until([&] { return p.out().closed() && p.err().closed(); }, 2s);
    r.out = p.out().text();
    r.err = p.err().text();
    return r;
}

int connect_loopback(uint16_t port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    timeval tv{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

TestCa::TestCa(fs::path dir) : dir_(std::move(dir)) {
    fs::create_directories(dir_);
    Ran r = run({"openssl", "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:P-256", "-nodes", "-keyout", (dir_ / "ca.key").string(), "-out",
                 ca().string(), "-days", "2", "-subj", "/CN=liege test CA"});
    if (r.code != 0) {
        throw std::runtime_error("openssl req (CA): " + r.err);
    }
}

void TestCa::issue(const std::string& name, const std::string& tag, const fs::path& pem,
                   const fs::path& key, const fs::path& reuse_key) const {
    const fs::path tmp = dir_ / ("tmp-" + tag);
    std::vector<std::string> req = {"openssl",
                                    "req",
                                    "-new",
                                    "-subj",
                                    "/CN=" + name + "/O=" + tag,
                                    "-out",
                                    tmp.string() + ".csr"};
    if (reuse_key.empty()) {
        req.insert(req.end(), {"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                               "-keyout", tmp.string() + ".key"});
    } else {
        fs::copy_file(reuse_key, tmp.string() + ".key", fs::copy_options::overwrite_existing);
        req.insert(req.end(), {"-key", tmp.string() + ".key"});
    }
    Ran r = run(req);
    if (r.code != 0) {
        throw std::runtime_error("openssl req: " + r.err);
    }
    write_file(tmp.string() + ".ext", "subjectAltName=DNS:" + name + "\n");
    r = run({"openssl", "x509", "-req", "-in", tmp.string() + ".csr", "-CA", ca().string(),
             "-CAkey", (dir_ / "ca.key").string(), "-CAcreateserial", "-days", "2", "-extfile",
             tmp.string() + ".ext", "-out", tmp.string() + ".pem"});
    if (r.code != 0) {
        throw std::runtime_error("openssl x509: " + r.err);
    }
    fs::rename(tmp.string() + ".key", key);
    fs::rename(tmp.string() + ".pem", pem);
}

} // namespace liege::test
