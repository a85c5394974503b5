// `--router-opt max_conns_per_ip=N`: how many connections one client address may hold open at
// once, across every router thread (off, 0, by default). A flood of idle keep-alive connections
// from one host then takes at most N of the router's descriptors, and the clients of every
// other address keep getting in (nginx's limit_conn, HAProxy's src_conn_cur). A connection over
// the cap is closed as soon as it is accepted, before anything is read from it.
//
// Shared by the threads under one lock, taken only when the cap is on: twice per connection
// (accept and close), never per request.
#pragma once

#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

namespace liege::router {

class ConnsPerAddress {
public:
    explicit ConnsPerAddress(unsigned limit) : limit_(limit) {}
    bool enabled() const { return limit_ != 0; }

    enum class Admit {
        Yes,
        No,      // at the cap
        NoFirst, // at the cap, the first refusal since the address last held fewer: log it
    };
    // A connection from `address` opens: counted, unless the address holds `limit` already.
    Admit admit(std::string_view address) {
        std::lock_guard lock(mu_);
        Entry& e = open_[std::string(address)];
        if (e.open < limit_) {
            ++e.open;
            return Admit::Yes;
        }
        return std::exchange(e.reported, true) ? Admit::No : Admit::NoFirst;
    }
    // A connection admit() counted has closed.
    void release(std::string_view address) {
        std::lock_guard lock(mu_);
        auto it = open_.find(std::string(address));
        if (it == open_.end()) {
            return;
        }
        it->second.reported = false;
        if (--it->second.open == 0) {
            open_.erase(it);
        }
    }
    // Addresses holding a connection now (for tests).
    std::size_t addresses() const {
        std::lock_guard lock(mu_);
        return open_.size();
    }

private:
    struct Entry {
        unsigned open = 0;
        bool reported = false;
    };
    const unsigned limit_;
    mutable std::mutex mu_;
    std::unordered_map<std::string, Entry> open_;
};

} // namespace liege::router
