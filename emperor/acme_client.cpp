#include "acme_client.hpp"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "liege/acme.hpp"
#include "liege/log.hpp"

namespace liege::emperor {

namespace {

using nlohmann::json;

constexpr int kNonceRetries = 5;
// How long an authorisation or an order may take to settle, polled every kPollEvery.
constexpr auto kSettleTimeout = std::chrono::seconds(90);
constexpr auto kPollEvery = std::chrono::milliseconds(500);

size_t collect_body(char* data, size_t size, size_t n, void* out) {
    static_cast<std::string*>(out)->append(data, size * n);
    return size * n;
}

struct Headers {
    std::string nonce;
    std::string location;
};

size_t collect_header(char* data, size_t size, size_t n, void* out) {
    std::string_view line(data, size * n);
    const auto colon = line.find(':');
    if (colon != std::string_view::npos) {
        std::string name(line.substr(0, colon));
        std::transform(name.begin(), name.end(), name.begin(),
                       [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
        std::string_view value = line.substr(colon + 1);
        while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) {
            value.remove_prefix(1);
        }
        while (!value.empty() &&
               (value.back() == '\r' || value.back() == '\n' || value.back() == ' ')) {
            value.remove_suffix(1);
        }
        auto* h = static_cast<Headers*>(out);
        if (name == "replay-nonce") {
            h->nonce = value;
        } else if (name == "location") {
            h->location = value;
        }
    }
    return size * n;
}

int on_progress(void* clientp, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
    const auto* hooks = static_cast<const AcmeHooks*>(clientp);
    return hooks->stopping && hooks->stopping() ? 1 : 0; // non-zero aborts the transfer
}

json parse_json(const std::string& body, const char* what) {
    json j = json::parse(body, nullptr, false);
    if (j.is_discarded()) {
        throw std::runtime_error(fmt::format("{}: the server's answer is not JSON", what));
    }
    return j;
}

} // namespace

AcmeClient::AcmeClient(AcmeSettings settings, EVP_PKEY* account_key, AcmeHooks hooks)
    : settings_(std::move(settings)), key_(account_key), hooks_(std::move(hooks)),
      curl_(curl_easy_init()) {
    if (curl_ == nullptr) {
        throw std::runtime_error("curl_easy_init failed");
    }
}

AcmeClient::~AcmeClient() {
    curl_easy_cleanup(static_cast<CURL*>(curl_));
}

AcmeClient::Response AcmeClient::http(const std::string& method, const std::string& url,
                                      const std::string& body) {
    CURL* c = static_cast<CURL*>(curl_);
    curl_easy_reset(c);
    Response r;
    Headers h;
    char error[CURL_ERROR_SIZE] = {0};
    curl_slist* headers = nullptr;
    curl_easy_setopt(c, CURLOPT_URL, url.c_str());
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, error);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r.body);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, collect_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &h);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, &hooks_);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https,http");
    curl_easy_setopt(c, CURLOPT_USERAGENT, "liege-acme/1");
    if (!settings_.ca_file.empty()) {
        curl_easy_setopt(c, CURLOPT_CAINFO, settings_.ca_file.c_str());
    }
    if (method == "HEAD") {
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    } else if (method == "POST") {
        headers = curl_slist_append(headers, "Content-Type: application/jose+json");
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.c_str());
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    const CURLcode rc = curl_easy_perform(c);
    curl_slist_free_all(headers);
    if (rc != CURLE_OK) {
        throw std::runtime_error(fmt::format("{} {}: {}", method, url,
                                             error[0] != '\0' ? error : curl_easy_strerror(rc)));
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    r.nonce = std::move(h.nonce);
    r.location = std::move(h.location);
    if (!r.nonce.empty()) {
        nonce_ = r.nonce;
    }
    return r;
}

AcmeClient::Response AcmeClient::post(const std::string& url, const std::string& payload) {
    for (int attempt = 0;; ++attempt) {
        if (nonce_.empty()) {
            http("HEAD", new_nonce_url_, "");
            if (nonce_.empty()) {
                throw std::runtime_error("new-nonce: no Replay-Nonce in the answer");
            }
        }
        std::string nonce = std::exchange(nonce_, std::string());
        Response r = http("POST", url, acme::sign_jws(key_, kid_, nonce, url, payload).dump());
        if (r.status >= 400 && acme::is_bad_nonce(r.body) && attempt < kNonceRetries) {
            continue; // the refusal carried a fresh nonce
        }
        if (r.status >= 400) {
            const std::string problem = acme::problem_text(r.body);
            throw std::runtime_error(fmt::format("POST {}: HTTP {}{}{}", url, r.status,
                                                 problem.empty() ? "" : ": ", problem));
        }
        return r;
    }
}

void AcmeClient::discover() {
    Response r = http("GET", settings_.directory, "");
    if (r.status != 200) {
        throw std::runtime_error(
            fmt::format("directory {}: HTTP {}", settings_.directory, r.status));
    }
    acme::Directory d;
    try {
        d = acme::parse_directory(parse_json(r.body, "directory"));
    } catch (const std::invalid_argument& e) {
        throw std::runtime_error(fmt::format("directory {}: {}", settings_.directory, e.what()));
    }
    new_nonce_url_ = d.new_nonce;
    new_account_url_ = d.new_account;
    new_order_url_ = d.new_order;
}

void AcmeClient::new_account() {
    json req = {{"termsOfServiceAgreed", true}};
    if (!settings_.email.empty()) {
        req["contact"] = json::array({"mailto:" + settings_.email});
    }
    kid_.clear(); // signed with the jwk: the server finds (or makes) the account by its key
    Response r = post(new_account_url_, req.dump());
    if (r.location.empty()) {
        throw std::runtime_error("new-account: no Location (account URL) in the answer");
    }
    kid_ = r.location;
}

std::string AcmeClient::poll(const std::string& url, const char* what,
                             const std::vector<std::string>& done) {
    const auto until = std::chrono::steady_clock::now() + kSettleTimeout;
    for (;;) {
        Response r = post(url, "");
        json j = parse_json(r.body, what);
        const std::string status = j.value("status", "");
        if (std::find(done.begin(), done.end(), status) != done.end() || status == "invalid") {
            return r.body;
        }
        if (std::chrono::steady_clock::now() >= until) {
            throw std::runtime_error(fmt::format("{} {} still {} after {} s", what, url, status,
                                                 kSettleTimeout.count()));
        }
        if (!hooks_.wait(kPollEvery)) {
            throw std::runtime_error("stopped");
        }
    }
}

void AcmeClient::authorize(const std::string& url) {
    acme::Authorization a = acme::parse_authorization(parse_json(post(url, "").body, "authz"));
    if (a.status == "valid") {
        return; // validated for this account before
    }
    if (a.status != "pending") {
        throw std::runtime_error(fmt::format("authorization for {} is {}", a.identifier, a.status));
    }
    if (a.challenge_url.empty()) {
        throw std::runtime_error(
            fmt::format("the server offers no http-01 challenge for {}", a.identifier));
    }
    if (!hooks_.publish(a.token, acme::key_authorization(a.token, key_))) {
        throw std::runtime_error(fmt::format(
            "the router did not confirm the http-01 token for {} in time", a.identifier));
    }
    struct Withdraw {
        const AcmeHooks& hooks;
        const std::string& token;
        ~Withdraw() { hooks.withdraw(token); }
    } withdraw{hooks_, a.token};
    spdlog::info("acme: answering the http-01 challenge for {}", a.identifier);
    post(a.challenge_url, "{}");
    a = acme::parse_authorization(parse_json(poll(url, "authorization", {"valid"}), "authz"));
    if (a.status != "valid") {
        throw std::runtime_error(fmt::format("http-01 challenge for {} failed{}{}", a.identifier,
                                             a.error.empty() ? "" : ": ", a.error));
    }
}

std::string AcmeClient::issue(const std::vector<std::string>& names, EVP_PKEY* cert_key) {
    discover();
    new_account();
    json ids = json::array();
    for (const auto& n : names) {
        ids.push_back({{"type", "dns"}, {"value", n}});
    }
    Response r = post(new_order_url_, json{{"identifiers", ids}}.dump());
    const std::string order_url = r.location;
    if (order_url.empty()) {
        throw std::runtime_error("new-order: no Location (order URL) in the answer");
    }
    acme::Order order = acme::parse_order(parse_json(r.body, "order"));
    for (const auto& a : order.authorizations) {
        authorize(a);
    }
    if (order.status == "pending") {
        order =
            acme::parse_order(parse_json(poll(order_url, "order", {"ready", "valid"}), "order"));
    }
    if (order.status == "ready") {
        const std::string csr = acme::make_csr(cert_key, names);
        r = post(order.finalize, json{{"csr", acme::base64url(csr)}}.dump());
        order = acme::parse_order(parse_json(r.body, "order"));
        if (order.status != "valid") {
            order = acme::parse_order(parse_json(poll(order_url, "order", {"valid"}), "order"));
        }
    }
    if (order.status != "valid" || order.certificate.empty()) {
        throw std::runtime_error(fmt::format("order {} is {}", order_url, order.status));
    }
    r = post(order.certificate, "");
    if (r.body.find("-----BEGIN CERTIFICATE-----") == std::string::npos) {
        throw std::runtime_error("the certificate download holds no PEM certificate");
    }
    return r.body;
}

} // namespace liege::emperor
