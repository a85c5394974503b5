#include "vassal_queue.hpp"

#include <algorithm>

#include "router_thread.hpp"

namespace liege::router {

VassalQueue::VassalQueue(std::string vassal, HandOver hand_over)
    : vassal_(std::move(vassal)), hand_over_(std::move(hand_over)) {
    if (!hand_over_) {
        hand_over_ = [](std::shared_ptr<Waiter> w) {
            RouterThread* t = w->thread;
            t->assign(std::move(w));
        };
    }
}

int64_t VassalQueue::timeout_ms() const {
    std::lock_guard lock(mu_);
    return settings_.timeout_ms;
}

bool VassalQueue::holds() const {
    std::lock_guard lock(mu_);
    return settings_.size > 0;
}

std::string VassalQueue::failure() const {
    std::lock_guard lock(mu_);
    return settings_.failed ? settings_.last_error : std::string();
}

void VassalQueue::update(const QueueSettings& settings, LbPolicy policy,
                         std::vector<std::shared_ptr<Backend>> backends,
                         std::vector<char> draining) {
    std::vector<std::shared_ptr<Waiter>> handed;
    {
        std::lock_guard lock(mu_);
        settings_ = settings;
        balancer_ = std::make_unique<Balancer>(policy, std::move(backends), std::move(draining));
        pump_locked(handed);
    }
    hand_over(handed);
}

void VassalQueue::close() {
    std::vector<std::shared_ptr<Waiter>> handed;
    {
        std::lock_guard lock(mu_);
        settings_.failed = true;
        settings_.last_error = "the vassal was removed";
        balancer_.reset();
        pump_locked(handed);
    }
    hand_over(handed);
}

VassalQueue::Joined VassalQueue::join(const std::shared_ptr<Waiter>& w) {
    std::vector<std::shared_ptr<Waiter>> handed;
    {
        std::lock_guard lock(mu_);
        if (refuses(steady_now_ms())) {
            return Joined::Failed;
        }
        if (q_.size() >= settings_.size) {
            return Joined::Full;
        }
        w->listed = true;
        q_.push_back(w);
        length_.fetch_add(1, std::memory_order_seq_cst);
        pump_locked(handed);
    }
    hand_over(handed);
    return Joined::Waiting;
}

bool VassalQueue::leave(Waiter& w) {
    std::lock_guard lock(mu_);
    if (!w.listed) {
        return false;
    }
    for (auto it = q_.begin(); it != q_.end(); ++it) {
        if (it->get() == &w) {
            q_.erase(it);
            break;
        }
    }
    w.listed = false;
    length_.fetch_sub(1, std::memory_order_seq_cst);
    return true;
}

bool VassalQueue::refuses(int64_t now) const {
    if (!settings_.failed) {
        return false;
    }
    bool busy = false;
    return balancer_ == nullptr || (balancer_->pick(0, now, &busy) < 0 && !busy);
}

bool VassalQueue::pump(const RouterThread* self) {
    if (length() == 0) {
        return false;
    }
    std::vector<std::shared_ptr<Waiter>> handed;
    {
        std::lock_guard lock(mu_);
        pump_locked(handed);
    }
    const bool elsewhere = std::any_of(handed.begin(), handed.end(), [&](const auto& w) {
        return w->backend != nullptr && w->thread != self;
    });
    hand_over(handed);
    return elsewhere;
}

void VassalQueue::pump_locked(std::vector<std::shared_ptr<Waiter>>& handed) {
    const int64_t now = steady_now_ms();
    while (!q_.empty()) {
        std::shared_ptr<Backend> be;
        if (balancer_ != nullptr) {
            if (const Balancer::Claim c = balancer_->claim(0, now); c.index >= 0) {
                be = balancer_->backends()[static_cast<size_t>(c.index)];
            }
        }
        if (be == nullptr && !refuses(now)) {
            return; // no free slot: the next request to leave a worker pumps again
        }
        // A slot, or a refusal: the vassal failed and has no worker left to wait for.
        std::shared_ptr<Waiter> w = std::move(q_.front());
        q_.pop_front();
        length_.fetch_sub(1, std::memory_order_seq_cst);
        w->listed = false;
        w->backend = std::move(be);
        handed.push_back(std::move(w));
    }
}

void VassalQueue::hand_over(std::vector<std::shared_ptr<Waiter>>& handed) {
    for (auto& w : handed) {
        hand_over_(std::move(w));
    }
}

} // namespace liege::router
