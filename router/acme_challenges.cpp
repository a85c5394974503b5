#include "acme_challenges.hpp"

#include "client.hpp"
#include "router_thread.hpp"

namespace liege::router {

void AcmeChallenges::set(std::map<std::string, std::string> challenges) {
    auto next = std::make_shared<const std::map<std::string, std::string, std::less<>>>(
        std::make_move_iterator(challenges.begin()), std::make_move_iterator(challenges.end()));
    std::lock_guard lock(mu_);
    set_ = std::move(next);
}

std::optional<std::string> AcmeChallenges::answer(std::string_view path) const {
    if (!is_acme_challenge(path)) {
        return std::nullopt;
    }
    const std::string_view token = path.substr(kAcmeChallengePrefix.size());
    std::shared_ptr<const std::map<std::string, std::string, std::less<>>> set;
    {
        std::lock_guard lock(mu_);
        set = set_;
    }
    if (set == nullptr) {
        return std::nullopt;
    }
    auto it = set->find(token);
    return it != set->end() ? std::optional<std::string>(it->second) : std::nullopt;
}

bool ClientConn::answer_acme_challenge(std::string_view path) {
    const std::optional<std::string> key_authorization =
        thread_.shared().acme_challenges.answer(path);
    if (!key_authorization) {
        return false; // routed as any request: the app may answer its own challenges
    }
    // The key authorisation alone as the body (one line; RFC 8555 8.3 lets the server ignore
    // the trailing newline), and the connection closed after it.
    ex_.text.error_body.assign(*key_authorization);
    respond_error(200, *key_authorization, /*detail_only=*/true);
    return true;
}

} // namespace liege::router
