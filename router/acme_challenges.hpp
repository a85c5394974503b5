// The ACME HTTP-01 challenges the router answers on its plain listeners: GET
// /.well-known/acme-challenge/TOKEN gets the token's key authorisation (text/plain) for the
// tokens the emperor named in its latest acme_challenges message (docs/control-protocol.md).
//
// Written by the control thread, read by every router thread: the set is an immutable map
// swapped under a mutex, so a reader holds a snapshot. Lookups happen only for the challenge
// path, a few requests per certificate, so the lock is never on the hot path.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

namespace liege::router {

// ACME's HTTP-01 challenge paths (RFC 8555 8.3): answered here for known tokens, and left alone
// by a redirect to https.
inline constexpr std::string_view kAcmeChallengePrefix = "/.well-known/acme-challenge/";
inline bool is_acme_challenge(std::string_view path) {
    return path.starts_with(kAcmeChallengePrefix);
}

class AcmeChallenges {
public:
    void set(std::map<std::string, std::string> challenges);
    // The key authorisation for a request path, when it is a challenge path of a known token.
    std::optional<std::string> answer(std::string_view path) const;

private:
    mutable std::mutex mu_;
    std::shared_ptr<const std::map<std::string, std::string, std::less<>>> set_;
};

} // namespace liege::router
