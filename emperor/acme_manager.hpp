// Automatic certificates for vassals with `[tls] acme = true`: which vassal needs an order, when
// a certificate is renewed, the backoff after a failure, the files under the state directory,
// and the HTTP-01 tokens the router must answer.
//
// Threads. Everything here but the ACME thread runs on the emperor's loop. The thread runs one
// order at a time (AcmeClient, blocking libcurl calls) and talks back only through `events_`,
// a locked queue drained by a uv_async on the loop; the loop answers it through `live_` (the
// tokens the router has confirmed) and `stop_`, under the same mutex. Nothing else is shared.
//
// A challenge is answered only once the router has it: the loop sends the token set to the
// router (acme_challenges), the router confirms the version it applied, and only then does the
// thread tell the server to validate. A restarted router gets the set again after its hello.
//
// Files, under STATE/acme/: account.pem (the account key) and NAME/certificate.pem, the chain
// followed by its key, mode 0600, written to a temporary file and renamed over the old one: one
// rename replaces certificate and key together, so the router (which polls the file) never
// sees a new certificate with an old key.
//
// Schedule: a vassal whose stored certificate names all its exact hosts serves it at once and
// renews it two thirds into its lifetime; one without orders one now. A failed order is tried
// again after acme::backoff_seconds(); the certificate in service (or the default one) serves
// meanwhile.
#pragma once

#include <uv.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "acme_client.hpp"
#include "liege/acme.hpp"
#include "liege/uv.hpp"
#include "router_supervisor.hpp"
#include "vassal_runtime.hpp"

namespace liege::emperor {

class AcmeManager {
public:
    // `settings.directory` empty: ACME is not configured, and a vassal that asks for it is
    // reported (log and /status) and served with the default certificate.
    AcmeManager(uv_loop_t* loop, AcmeSettings settings, std::filesystem::path state_dir,
                RouterSupervisor& router, std::function<void()> certificates_changed);
    ~AcmeManager();
    AcmeManager(const AcmeManager&) = delete;
    AcmeManager& operator=(const AcmeManager&) = delete;

    // Called with every route set: the vassals whose shown generation (the active one, else the
    // next) has [tls] acme = true want a certificate for their exact host names. A new one, or
    // one whose names changed, gets its stored certificate if that covers them, else an order;
    // a vassal that no longer wants one is forgotten (its files stay).
    void update(const std::map<std::string, std::unique_ptr<VassalRt>>& vassals);
    // The certificate file to route for `vassal` (chain and key), or "" while it has none.
    std::string certificate(const std::string& vassal) const;
    // /status: {state, names, not_after, renew_at, serial, failures, next_attempt, last_error}.
    nlohmann::json status(const std::string& vassal) const;

private:
    enum class State { Unconfigured, Obtaining, Valid, Renewing, Backoff };
    static std::string_view to_string(State s);

    struct Entry {
        std::vector<std::string> names;
        State state = State::Obtaining;
        bool busy = false;  // an order is queued or running
        bool stale = false; // the names changed while it was
        std::string file;   // certificate.pem, once there is one
        acme::CertInfo cert;
        int failures = 0;
        int64_t next_attempt = 0; // unix seconds; 0 = none scheduled
        std::string last_error;
    };
    struct Job {
        std::string vassal;
        std::vector<std::string> names;
    };
    // ACME thread → loop.
    struct Event {
        enum class Kind { Publish, Withdraw, Done } kind;
        std::string vassal;
        std::string token;
        std::string key_authorization;
        bool ok = false;
        std::string error;
        acme::CertInfo cert;
    };

    std::filesystem::path dir(const std::string& vassal) const;
    // Uses the stored certificate of `e` if it covers its names; false if there is none.
    bool load_stored(const std::string& vassal, Entry& e);
    void order(const std::string& vassal, Entry& e);
    void tick(); // once a second: due renewals and retries
    void on_events();
    void done(const Event& ev);
    void send_challenges();
    void challenges_applied(uint64_t version);

    // The ACME thread.
    void run();
    void post_event(Event ev);
    acme::Pkey account_key();
    void issue(const Job& job);

    uv_loop_t* loop_;
    AcmeSettings settings_;
    std::filesystem::path state_dir_;
    RouterSupervisor& router_;
    std::function<void()> certificates_changed_;
    std::map<std::string, Entry> entries_;
    UvHandle<uv_timer_t> tick_;
    UvHandle<uv_async_t> async_;
    // The tokens the router is to answer, and the version of the set each joined in.
    std::map<std::string, std::pair<std::string, uint64_t>> challenges_;
    uint64_t challenges_version_ = 0;

    std::mutex mu_; // everything below
    std::condition_variable cv_;
    std::deque<Job> jobs_;
    std::deque<Event> events_;
    std::set<std::string> live_; // tokens the router confirmed
    bool stop_ = false;
    std::thread thread_;
};

} // namespace liege::emperor
