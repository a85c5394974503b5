// Intrusive doubly linked list membership, so "close every idle client" is a list walk.
#pragma once

namespace liege::router {

struct ListNode {
    explicit ListNode(void* o = nullptr) : owner(o) {}
    ListNode(const ListNode&) = delete;
    ListNode& operator=(const ListNode&) = delete;
    void* owner;
    ListNode* prev = this;
    ListNode* next = this;
    void unlink() {
        prev->next = next;
        next->prev = prev;
        prev = next = this;
    }
    void push_back(ListNode* n) {
        n->prev = prev;
        n->next = this;
        prev->next = n;
        prev = n;
    }
    bool empty() const { return next == this; }
};

} // namespace liege::router
