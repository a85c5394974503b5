#include "liege/route_table.hpp"

#include "liege/ascii.hpp"

#include <algorithm>

namespace liege {

namespace {

constexpr size_t kMaxHost = 256; // a DNS name is at most 253 characters

std::string lower_pattern(std::string_view pattern) {
    std::string out(pattern);
    std::transform(out.begin(), out.end(), out.begin(), ascii_lower);
    if (out.size() > 1 && out.back() == '.') {
        out.pop_back();
    }
    return out;
}

std::string normalize_prefix(std::string_view path) {
    std::string out(path.empty() ? "/" : path);
    while (out.size() > 1 && out.back() == '/') {
        out.pop_back();
    }
    return out;
}

// Whether `prefix` (normalised) matches `path` (query already cut off) on a segment boundary.
bool prefix_matches(std::string_view prefix, std::string_view path) {
    if (prefix == "/") {
        return true;
    }
    return path.starts_with(prefix) && (path.size() == prefix.size() || path[prefix.size()] == '/');
}

} // namespace

RouteTable::RouteTable(std::vector<RouteEntry> entries) : entries_(std::move(entries)) {
    for (size_t i = 0; i < entries_.size(); ++i) {
        const RouteEntry& e = entries_[i];
        std::string path = normalize_prefix(e.path);
        for (const std::string& host : e.hosts) {
            std::string pattern = lower_pattern(host);
            if (pattern == "*") {
                add(default_, pattern, path, i);
            } else if (pattern.starts_with("*.")) {
                add(wildcard_[pattern.substr(2)], pattern, path, i);
            } else {
                add(exact_[pattern], pattern, path, i);
            }
        }
    }
}

void RouteTable::add(Bucket& bucket, const std::string& pattern, std::string path, size_t entry) {
    for (const Candidate& c : bucket) {
        if (c.path == path) {
            if (c.entry != entry) {
                shadowed_.push_back({c.entry, entry, pattern, path});
            }
            return;
        }
    }
    // Keep longest paths first; among equal lengths, earlier entries first.
    auto at = std::find_if(bucket.begin(), bucket.end(),
                           [&](const Candidate& c) { return c.path.size() < path.size(); });
    bucket.insert(at, Candidate{std::move(path), entry});
}

const RouteEntry* RouteTable::match_in(const Bucket& bucket, std::string_view path) const {
    for (const Candidate& c : bucket) {
        if (prefix_matches(c.path, path)) {
            return &entries_[c.entry];
        }
    }
    return nullptr;
}

std::string_view RouteTable::normalize_host(std::string_view host, char* buf, size_t buf_size) {
    while (!host.empty() && (host.front() == ' ' || host.front() == '\t')) {
        host.remove_prefix(1);
    }
    while (!host.empty() && (host.back() == ' ' || host.back() == '\t')) {
        host.remove_suffix(1);
    }
    if (host.starts_with('[')) {
        size_t close = host.find(']');
        host = host.substr(0, close == std::string_view::npos ? host.size() : close + 1);
    } else {
        host = host.substr(0, host.find(':'));
    }
    if (host.size() > 1 && host.back() == '.') {
        host.remove_suffix(1);
    }
    if (host.size() > buf_size) {
        return {};
    }
    std::transform(host.begin(), host.end(), buf, ascii_lower);
    return {buf, host.size()};
}

const RouteEntry* RouteTable::match(std::string_view host_header, std::string_view path) const {
    path = path.substr(0, path.find_first_of("?#"));

    char buf[kMaxHost];
    std::string_view host = normalize_host(host_header, buf, sizeof buf);
    if (!host.empty()) {
        if (!exact_.empty()) {
            if (auto it = exact_.find(host); it != exact_.end()) {
                if (const RouteEntry* e = match_in(it->second, path)) {
                    return e;
                }
            }
        }
        if (!wildcard_.empty()) {
            // Longest suffix first: "a.b.example.com" tries "b.example.com", "example.com",
            // then "com".
            for (size_t dot = host.find('.'); dot != std::string_view::npos;
                 dot = host.find('.', dot + 1)) {
                if (auto it = wildcard_.find(host.substr(dot + 1)); it != wildcard_.end()) {
                    if (const RouteEntry* e = match_in(it->second, path)) {
                        return e;
                    }
                }
            }
        }
    }
    return match_in(default_, path);
}

} // namespace liege
