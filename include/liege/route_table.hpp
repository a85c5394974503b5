// Which vassal serves a request: matching the Host header and path against every vassal's
// `hosts` and `path`.
//
// Precedence, most specific first:
//   1. host tier: an exact name ("app.example.com") beats a wildcard ("*.example.com", which
//      matches any name ending in ".example.com" but not "example.com" itself; the longest
//      suffix wins), which beats "*" (the default vassal);
//   2. within a tier, the longest `path` prefix wins; prefixes match on segment boundaries
//      ("/api" matches "/api", "/api/x" and "/api?q" but not "/apix"; "/" matches every path).
// A tier with no matching path falls through to the next, less specific one, so a default
// vassal serves whatever the more specific vassals leave out. Host matching ignores case, a
// port ("host:8080", "[::1]:8080") and a trailing dot; paths are compared byte for byte.
// Two entries with the same host pattern and path: the one listed first wins, and the other
// is reported by shadowed().
//
// A RouteTable is immutable once built and is shared between router threads as a
// std::shared_ptr<const RouteTable>; match() allocates nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace liege {

struct RouteEntry {
    std::string vassal;
    uint64_t generation = 0;
    std::vector<std::string> hosts{"*"}; // exact names, "*.suffix" wildcards, "*"
    std::string path = "/";              // prefix; a trailing "/" is ignored
    size_t index = 0;                    // opaque to the table: the caller's handle
};

class RouteTable {
public:
    RouteTable() = default;
    explicit RouteTable(std::vector<RouteEntry> entries);

    // The entry serving `host_header` (the raw Host header value) and `path` (the request
    // target's path, a query string allowed); nullptr when no entry matches.
    const RouteEntry* match(std::string_view host_header, std::string_view path) const;

    const std::vector<RouteEntry>& entries() const { return entries_; }

    // A route that can never be chosen: `loser` (an index into entries()) claims `host` and
    // `path` exactly as `winner` does, and `winner` is listed first.
    struct Shadowed {
        size_t winner;
        size_t loser;
        std::string host;
        std::string path;
    };
    const std::vector<Shadowed>& shadowed() const { return shadowed_; }

    // Host header → the lower-case name matched against patterns, without port or trailing dot,
    // written into `buf`; returns an empty view when it does not fit.
    static std::string_view normalize_host(std::string_view host_header, char* buf,
                                           size_t buf_size);

private:
    struct Candidate {
        std::string path; // normalised prefix
        size_t entry;
    };
    // Candidates of one host pattern, longest path first.
    using Bucket = std::vector<Candidate>;

    struct Hash {
        using is_transparent = void;
        size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
    };
    using BucketMap = std::unordered_map<std::string, Bucket, Hash, std::equal_to<>>;

    void add(Bucket& bucket, const std::string& pattern, std::string path, size_t entry);
    const RouteEntry* match_in(const Bucket& bucket, std::string_view path) const;

    std::vector<RouteEntry> entries_;
    BucketMap exact_;    // "app.example.com"
    BucketMap wildcard_; // "example.com" for "*.example.com"
    Bucket default_;     // "*"
    std::vector<Shadowed> shadowed_;
};

} // namespace liege
