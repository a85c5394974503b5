#include "acme_manager.hpp"

#include <curl/curl.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>

#include "liege/clock.hpp"
#include "liege/log.hpp"

namespace liege::emperor {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// How long the ACME thread waits for the router to confirm a challenge token.
constexpr auto kPublishTimeout = std::chrono::seconds(10);

std::string read_file(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    if (!in) {
        return "";
    }
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

// Creates `dir` and its missing parents, each one it creates with mode 0700 (what they hold is
// private); one that exists is left as it is.
void make_private_dirs(const fs::path& dir) {
    std::error_code ec;
    if (dir.empty() || fs::exists(dir, ec)) {
        return;
    }
    make_private_dirs(dir.parent_path());
    if (!fs::create_directory(dir, ec) && ec) {
        throw std::runtime_error(fmt::format("{}: cannot create: {}", dir.string(), ec.message()));
    }
    fs::permissions(dir, fs::perms::owner_all, ec);
}

// Writes `text` to `path` with mode 0600: a temporary file beside it, fsync'd, then renamed over
// it, so a reader sees the old file or the new one, never a part.
void write_private(const fs::path& path, const std::string& text) {
    make_private_dirs(path.parent_path());
    const fs::path tmp = path.string() + ".tmp";
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        throw std::runtime_error(fmt::format("{}: {}", tmp.string(), std::strerror(errno)));
    }
    ::fchmod(fd, 0600); // whatever a leftover temporary file had
    size_t off = 0;
    while (off < text.size()) {
        const ssize_t n = ::write(fd, text.data() + off, text.size() - off);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            const int err = errno;
            ::close(fd);
            throw std::runtime_error(fmt::format("{}: {}", tmp.string(), std::strerror(err)));
        }
        off += static_cast<size_t>(n);
    }
    const bool synced = ::fsync(fd) == 0;
    ::close(fd);
    if (!synced || ::rename(tmp.c_str(), path.c_str()) != 0) {
        throw std::runtime_error(fmt::format("{}: {}", path.string(), std::strerror(errno)));
    }
}

} // namespace

std::string_view AcmeManager::to_string(State s) {
    switch (s) {
    case State::Unconfigured:
        return "unconfigured";
    case State::Obtaining:
        return "obtaining";
    case State::Valid:
        return "valid";
    case State::Renewing:
        return "renewing";
    case State::Backoff:
        return "backoff";
    }
    return "?";
}

AcmeManager::AcmeManager(uv_loop_t* loop, AcmeSettings settings, fs::path state_dir,
                         RouterSupervisor& router, std::function<void()> certificates_changed)
    : loop_(loop), settings_(std::move(settings)), state_dir_(std::move(state_dir)),
      router_(router), certificates_changed_(std::move(certificates_changed)) {
    uv_timer_init(loop_, tick_.get());
    tick_->data = this;
    uv_async_init(loop_, async_.get(), [](uv_async_t* a) {
        if (a->data != nullptr) {
            static_cast<AcmeManager*>(a->data)->on_events();
        }
    });
    async_->data = this;
    // Neither keeps the loop alive: the emperor's shutdown ends when its children are gone.
    uv_unref(tick_.base());
    uv_unref(async_.base());
    uv_timer_start(
        tick_.get(),
        [](uv_timer_t* t) {
            if (t->data != nullptr) {
                static_cast<AcmeManager*>(t->data)->tick();
            }
        },
        1000, 1000);
    router_.on_acme_challenges_applied([this](uint64_t v) { challenges_applied(v); });
    if (!settings_.directory.empty()) {
        curl_global_init(CURL_GLOBAL_DEFAULT); // before any thread: it is not thread-safe
        thread_ = std::thread([this] { run(); });
    }
}

AcmeManager::~AcmeManager() {
    router_.on_acme_challenges_applied(nullptr);
    {
        std::lock_guard lock(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) {
        thread_.join(); // a transfer in flight is aborted by its progress callback
        curl_global_cleanup();
    }
}

fs::path AcmeManager::dir(const std::string& vassal) const {
    return state_dir_ / "acme" / vassal;
}

void AcmeManager::update(const std::map<std::string, std::unique_ptr<VassalRt>>& vassals) {
    std::map<std::string, std::vector<std::string>> wanted;
    for (const auto& [name, v] : vassals) {
        const Generation* g = v->active != nullptr ? v->active.get() : v->next.get();
        if (g != nullptr && g->config.tls.acme) {
            wanted[name] = acme::certificate_names(g->config.hosts);
        }
    }
    std::erase_if(entries_, [&](const auto& kv) { return !wanted.contains(kv.first); });
    for (const auto& [vassal, names] : wanted) {
        auto [it, added] = entries_.try_emplace(vassal);
        Entry& e = it->second;
        if (!added && e.names == names) {
            continue;
        }
        e.names = names;
        if (e.busy) {
            e.stale = true; // ordered again for the new names once this order is done
            continue;
        }
        if (settings_.directory.empty()) {
            e.state = State::Unconfigured;
            e.last_error = "tls.acme = true needs liege run --acme-directory URL; serving the "
                           "default certificate";
            spdlog::error("vassal {}: {}", vassal, e.last_error);
            continue;
        }
        if (!load_stored(vassal, e)) {
            order(vassal, e); // a certificate in service for other names serves meanwhile
        }
    }
}

bool AcmeManager::load_stored(const std::string& vassal, Entry& e) {
    const fs::path file = dir(vassal) / "certificate.pem";
    const std::string pem = read_file(file);
    if (pem.empty()) {
        return false;
    }
    try {
        acme::Pkey key = acme::key_from_pem(pem);
        const acme::CertInfo info = acme::cert_info(pem);
        if (!acme::cert_covers(pem, key.get(), e.names) || info.not_after <= unix_now()) {
            spdlog::info("vassal {}: the stored certificate {} does not cover {} now: ordering "
                         "a new one",
                         vassal, file.string(), fmt::join(e.names, ", "));
            return false;
        }
        e.file = file.string();
        e.cert = info;
        e.state = State::Valid;
        e.failures = 0;
        e.next_attempt = acme::renew_at(info);
        spdlog::info("vassal {}: using the stored certificate {} (serial {}), renewed from {}",
                     vassal, file.string(), info.serial, e.next_attempt);
        return true;
    } catch (const std::exception& ex) {
        spdlog::warn("vassal {}: {}: {}; ordering a new certificate", vassal, file.string(),
                     ex.what());
        return false;
    }
}

void AcmeManager::order(const std::string& vassal, Entry& e) {
    if (e.busy) {
        return; // the names are read again when it finishes
    }
    e.busy = true;
    e.state = e.file.empty() ? State::Obtaining : State::Renewing;
    e.next_attempt = 0;
    spdlog::info("vassal {}: ordering a certificate for {} from {}", vassal,
                 fmt::join(e.names, ", "), settings_.directory);
    {
        std::lock_guard lock(mu_);
        jobs_.push_back({vassal, e.names});
    }
    cv_.notify_all();
}

void AcmeManager::tick() {
    const int64_t now = unix_now();
    for (auto& [vassal, e] : entries_) {
        if (e.state != State::Unconfigured && !e.busy && e.next_attempt != 0 &&
            now >= e.next_attempt) {
            order(vassal, e);
        }
    }
}

void AcmeManager::post_event(Event ev) {
    {
        std::lock_guard lock(mu_);
        events_.push_back(std::move(ev));
    }
    uv_async_send(async_.get()); // the handle outlives the thread: joined before it closes
}

void AcmeManager::on_events() {
    std::deque<Event> events;
    {
        std::lock_guard lock(mu_);
        events.swap(events_);
    }
    bool changed = false;
    for (const Event& ev : events) {
        switch (ev.kind) {
        case Event::Kind::Publish:
            challenges_[ev.token] = {ev.key_authorization, challenges_version_ + 1};
            changed = true;
            break;
        case Event::Kind::Withdraw:
            changed |= challenges_.erase(ev.token) != 0;
            break;
        case Event::Kind::Done:
            done(ev);
            break;
        }
    }
    if (changed) {
        send_challenges();
    }
}

void AcmeManager::send_challenges() {
    control::AcmeChallengesMessage m;
    m.version = ++challenges_version_;
    for (const auto& [token, v] : challenges_) {
        m.challenges[token] = v.first;
    }
    router_.send_acme_challenges(m);
}

void AcmeManager::challenges_applied(uint64_t version) {
    {
        std::lock_guard lock(mu_);
        for (const auto& [token, v] : challenges_) {
            if (v.second <= version) {
                live_.insert(token);
            }
        }
    }
    cv_.notify_all();
}

void AcmeManager::done(const Event& ev) {
    auto it = entries_.find(ev.vassal);
    if (it == entries_.end()) {
        return; // the vassal is gone (its files stay for a return)
    }
    Entry& e = it->second;
    e.busy = false;
    if (std::exchange(e.stale, false) && !load_stored(ev.vassal, e)) {
        order(ev.vassal, e);
        return;
    }
    if (ev.ok) {
        e.file = (dir(ev.vassal) / "certificate.pem").string();
        e.cert = ev.cert;
        e.state = State::Valid;
        e.failures = 0;
        e.last_error.clear();
        e.next_attempt = acme::renew_at(ev.cert);
        spdlog::info("vassal {}: certificate issued for {} (serial {}, valid until {}), renewed "
                     "from {}",
                     ev.vassal, fmt::join(e.names, ", "), ev.cert.serial, ev.cert.not_after,
                     e.next_attempt);
        certificates_changed_();
    } else {
        ++e.failures;
        e.last_error = ev.error;
        e.state = State::Backoff;
        const int64_t wait = acme::backoff_seconds(e.failures);
        e.next_attempt = unix_now() + wait;
        spdlog::error("vassal {}: ACME order failed ({} in a row), next attempt in {} s: {}",
                      ev.vassal, e.failures, wait, ev.error);
    }
}

std::string AcmeManager::certificate(const std::string& vassal) const {
    auto it = entries_.find(vassal);
    return it != entries_.end() ? it->second.file : std::string();
}

json AcmeManager::status(const std::string& vassal) const {
    auto it = entries_.find(vassal);
    if (it == entries_.end()) {
        return nullptr;
    }
    const Entry& e = it->second;
    const bool has = !e.file.empty();
    return {{"state", std::string(to_string(e.state))},
            {"names", e.names},
            {"certificate", has ? json(e.file) : json(nullptr)},
            {"serial", has ? json(e.cert.serial) : json(nullptr)},
            {"not_after", has ? json(e.cert.not_after) : json(nullptr)},
            {"renew_at", has ? json(acme::renew_at(e.cert)) : json(nullptr)},
            {"failures", e.failures},
            {"next_attempt", e.next_attempt != 0 ? json(e.next_attempt) : json(nullptr)},
            {"last_error", e.last_error.empty() ? json(nullptr) : json(e.last_error)}};
}

// ---------------------------------------------------------------------------------------------
// The ACME thread

void AcmeManager::run() {
    for (;;) {
        Job job;
        {
            std::unique_lock lock(mu_);
            cv_.wait(lock, [this] { return stop_ || !jobs_.empty(); });
            if (stop_) {
                return;
            }
            job = std::move(jobs_.front());
            jobs_.pop_front();
        }
        issue(job);
    }
}

acme::Pkey AcmeManager::account_key() {
    const fs::path file = state_dir_ / "acme" / "account.pem";
    const std::string pem = read_file(file);
    if (!pem.empty()) {
        return acme::key_from_pem(pem);
    }
    acme::Pkey key = acme::generate_key();
    write_private(file, acme::key_to_pem(key.get()));
    spdlog::info("acme: new account key {}", file.string());
    return key;
}

void AcmeManager::issue(const Job& job) {
    Event ev{Event::Kind::Done, job.vassal, {}, {}, false, {}, {}};
    try {
        acme::Pkey account = account_key();
        AcmeHooks hooks;
        hooks.publish = [this, &job](const std::string& token, const std::string& keyauth) {
            post_event({Event::Kind::Publish, job.vassal, token, keyauth, false, {}, {}});
            std::unique_lock lock(mu_);
            return cv_.wait_for(lock, kPublishTimeout, [&] {
                return stop_ || live_.contains(token);
            }) && !stop_;
        };
        hooks.withdraw = [this, &job](const std::string& token) {
            {
                std::lock_guard lock(mu_);
                live_.erase(token);
            }
            post_event({Event::Kind::Withdraw, job.vassal, token, {}, false, {}, {}});
        };
        hooks.wait = [this](std::chrono::milliseconds d) {
            std::unique_lock lock(mu_);
            return !cv_.wait_for(lock, d, [this] { return stop_; });
        };
        hooks.stopping = [this] {
            std::lock_guard lock(mu_);
            return stop_;
        };
        AcmeClient client(settings_, account.get(), std::move(hooks));
        acme::Pkey key = acme::generate_key();
        const std::string chain = client.issue(job.names, key.get());
        ev.cert = acme::cert_info(chain);
        write_private(dir(job.vassal) / "certificate.pem", chain + acme::key_to_pem(key.get()));
        ev.ok = true;
    } catch (const std::exception& e) {
        ev.error = e.what();
    }
    post_event(std::move(ev));
}

} // namespace liege::emperor
