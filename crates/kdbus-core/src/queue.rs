//! A connection's receive queue, FIFO with optional priorities.
//!
//! kdbus lets a receiver dequeue in two ways: plain FIFO, or "by priority",
//! where the entry with the numerically lowest priority wins (oldest first
//! among equals) but only if it is at least as urgent as a threshold the
//! receiver names. Both views must stay consistent while entries are also
//! removed out of order (cancelled replies, dropped senders, PEEK/DROP by
//! sequence number).
//!
//! One store and two ordered indexes cover all three access paths in
//! O(log n):
//!
//! * `entries`, keyed by a private insertion counter, *is* the FIFO order.
//!   The caller's `seq` numbers are domain-wide and normally increasing, but
//!   we do not trust that: a queue's order is the order of `push` calls.
//! * `by_priority` holds `(priority, counter)`, so its first element is the
//!   lowest priority's oldest entry.
//! * `by_seq` holds `(seq, counter)` for lookup and removal by sequence
//!   number. It is a set rather than a map so that a duplicate `seq` from a
//!   buggy caller cannot silently orphan an entry; lookups then act on the
//!   oldest entry with that `seq`.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone)]
struct Entry<T> {
    seq: u64,
    priority: i64,
    item: T,
}

/// The receive queue of one connection.
#[derive(Debug, Clone)]
pub struct RecvQueue<T> {
    next: u64,
    entries: BTreeMap<u64, Entry<T>>,
    by_priority: BTreeSet<(i64, u64)>,
    by_seq: BTreeSet<(u64, u64)>,
}

impl<T> Default for RecvQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> RecvQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        RecvQueue {
            next: 0,
            entries: BTreeMap::new(),
            by_priority: BTreeSet::new(),
            by_seq: BTreeSet::new(),
        }
    }

    /// Number of queued entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is queued (BYEBYE succeeds only then: EBUSY otherwise).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Append an entry; it becomes the newest in FIFO order.
    pub fn push(&mut self, seq: u64, priority: i64, item: T) {
        let counter = self.next;
        self.next = self.next.wrapping_add(1);
        self.by_priority.insert((priority, counter));
        self.by_seq.insert((seq, counter));
        self.entries.insert(
            counter,
            Entry {
                seq,
                priority,
                item,
            },
        );
    }

    /// The oldest entry, priority ignored.
    pub fn peek(&self) -> Option<(u64, &T)> {
        self.entries.values().next().map(|e| (e.seq, &e.item))
    }

    /// Remove and return the oldest entry, priority ignored.
    pub fn pop(&mut self) -> Option<(u64, T)> {
        let counter = *self.entries.keys().next()?;
        self.take(counter)
    }

    /// The oldest entry of the lowest priority, if that priority is
    /// `<= max_priority`.
    pub fn peek_priority(&self, max_priority: i64) -> Option<(u64, &T)> {
        let counter = self.first_by_priority(max_priority)?;
        self.entries.get(&counter).map(|e| (e.seq, &e.item))
    }

    /// Remove and return what `peek_priority` would show.
    pub fn pop_priority(&mut self, max_priority: i64) -> Option<(u64, T)> {
        let counter = self.first_by_priority(max_priority)?;
        self.take(counter)
    }

    /// Remove the entry with sequence number `seq`.
    pub fn remove(&mut self, seq: u64) -> Option<T> {
        let counter = self.counter_of(seq)?;
        self.take(counter).map(|(_, item)| item)
    }

    /// The entry with sequence number `seq`.
    pub fn get(&self, seq: u64) -> Option<&T> {
        let counter = self.counter_of(seq)?;
        self.entries.get(&counter).map(|e| &e.item)
    }

    /// The priority the entry `seq` was queued with.
    pub fn priority_of(&self, seq: u64) -> Option<i64> {
        let counter = self.counter_of(seq)?;
        self.entries.get(&counter).map(|e| e.priority)
    }

    /// Empty the queue, yielding the entries in FIFO order. The queue is
    /// empty afterwards even if the iterator is dropped early.
    pub fn drain(&mut self) -> impl Iterator<Item = (u64, T)> + '_ {
        self.by_priority.clear();
        self.by_seq.clear();
        std::mem::take(&mut self.entries)
            .into_values()
            .map(|e| (e.seq, e.item))
    }

    /// All entries in FIFO order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.entries.values().map(|e| (e.seq, &e.item))
    }

    fn first_by_priority(&self, max_priority: i64) -> Option<u64> {
        let &(priority, counter) = self.by_priority.first()?;
        (priority <= max_priority).then_some(counter)
    }

    fn counter_of(&self, seq: u64) -> Option<u64> {
        self.by_seq
            .range((seq, 0)..=(seq, u64::MAX))
            .next()
            .map(|&(_, counter)| counter)
    }

    /// Unlink the entry `counter` from the store and both indexes.
    fn take(&mut self, counter: u64) -> Option<(u64, T)> {
        let entry = self.entries.remove(&counter)?;
        self.by_priority.remove(&(entry.priority, counter));
        self.by_seq.remove(&(entry.seq, counter));
        Some((entry.seq, entry.item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SELFTEST: [i64; 12] = [25, -600, 10, -35, -100, 20, -15, -800, -150, 10, -800, -10];

    /// Queue holding the kdbus priority selftest; item = its priority.
    fn selftest_queue() -> RecvQueue<i64> {
        let mut q = RecvQueue::new();
        for (i, &p) in SELFTEST.iter().enumerate() {
            q.push(100 + i as u64, p, p);
        }
        q
    }

    #[test]
    fn kdbus_priority_selftest() {
        let mut q = selftest_queue();
        assert_eq!(q.len(), 12);
        assert_eq!(q.peek_priority(-200), Some((107, &-800)));
        assert_eq!(q.pop_priority(-200), Some((107, -800)));
        assert_eq!(q.pop_priority(-100), Some((110, -800)));
        assert_eq!(q.pop_priority(-400), Some((101, -600)));
        assert_eq!(q.pop_priority(-400), None);
        assert_eq!(q.peek_priority(-400), None);
        assert_eq!(q.pop_priority(10), Some((108, -150)));
        assert_eq!(q.pop_priority(10), Some((104, -100)));
        assert_eq!(q.len(), 7);
        // The rest in FIFO order.
        let rest: Vec<i64> = q.drain().map(|(_, p)| p).collect();
        assert_eq!(rest, vec![25, 10, -35, 20, -15, 10, -10]);
        assert!(q.is_empty());
    }

    #[test]
    fn fifo_ignores_priority() {
        let mut q = selftest_queue();
        assert_eq!(q.peek(), Some((100, &25)));
        let all: Vec<i64> = std::iter::from_fn(|| q.pop().map(|(_, p)| p)).collect();
        assert_eq!(all, SELFTEST.to_vec());
        assert_eq!(q.pop(), None);
        assert_eq!(q.peek(), None);
        assert_eq!(q.pop_priority(i64::MAX), None);
    }

    #[test]
    fn equal_priorities_are_fifo() {
        let mut q = RecvQueue::new();
        q.push(5, 0, 'a');
        q.push(3, 0, 'b');
        q.push(9, 0, 'c');
        assert_eq!(q.pop_priority(0), Some((5, 'a')));
        assert_eq!(q.pop_priority(0), Some((3, 'b')));
        assert_eq!(q.pop_priority(0), Some((9, 'c')));
    }

    #[test]
    fn fifo_order_is_insertion_order_not_seq() {
        let mut q = RecvQueue::new();
        q.push(30, 0, "x");
        q.push(10, 0, "y");
        q.push(20, 0, "z");
        let seqs: Vec<u64> = q.iter().map(|(s, _)| s).collect();
        assert_eq!(seqs, vec![30, 10, 20]);
    }

    #[test]
    fn remove_and_get_by_seq() {
        let mut q = selftest_queue();
        assert_eq!(q.get(107), Some(&-800));
        assert_eq!(q.priority_of(107), Some(-800));
        assert_eq!(q.remove(107), Some(-800));
        assert_eq!(q.get(107), None);
        assert_eq!(q.remove(107), None);
        assert_eq!(q.remove(9999), None);
        // The other -800 is now the most urgent.
        assert_eq!(q.pop_priority(-800), Some((110, -800)));
        assert_eq!(q.len(), 10);
    }

    #[test]
    fn duplicate_seq_keeps_both_entries() {
        let mut q = RecvQueue::new();
        q.push(1, 5, "old");
        q.push(1, -5, "new");
        assert_eq!(q.len(), 2);
        assert_eq!(q.get(1), Some(&"old"));
        assert_eq!(q.remove(1), Some("old"));
        assert_eq!(q.get(1), Some(&"new"));
        assert_eq!(q.pop_priority(0), Some((1, "new")));
        assert!(q.is_empty());
    }

    #[test]
    fn drain_empties_even_if_dropped() {
        let mut q = selftest_queue();
        assert_eq!(q.drain().next(), Some((100, 25)));
        assert!(q.is_empty());
        assert_eq!(q.peek_priority(i64::MAX), None);
        assert_eq!(q.get(101), None);
        q.push(1, 0, 1);
        assert_eq!(q.pop(), Some((1, 1)));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(u64, i64),
        Pop,
        PopPriority(i64),
        Remove(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..40, -5i64..5).prop_map(|(s, p)| Op::Push(s, p)),
            1 => Just(Op::Pop),
            2 => (-6i64..6).prop_map(Op::PopPriority),
            1 => (0u64..40).prop_map(Op::Remove),
        ]
    }

    /// Reference model: a Vec of `(seq, priority, item)` in push order.
    fn model_pop_priority(m: &mut Vec<(u64, i64, u32)>, max: i64) -> Option<(u64, u32)> {
        let min = m.iter().map(|e| e.1).min()?;
        if min > max {
            return None;
        }
        let i = m.iter().position(|e| e.1 == min)?;
        let (s, _, v) = m.remove(i);
        Some((s, v))
    }

    proptest! {
        #[test]
        fn queue_matches_model(ops in proptest::collection::vec(op(), 0..300)) {
            let mut q = RecvQueue::new();
            let mut m: Vec<(u64, i64, u32)> = Vec::new();
            for (n, op) in ops.into_iter().enumerate() {
                let n = n as u32;
                match op {
                    Op::Push(s, p) => {
                        q.push(s, p, n);
                        m.push((s, p, n));
                    }
                    Op::Pop => {
                        let want = (!m.is_empty()).then(|| m.remove(0)).map(|e| (e.0, e.2));
                        prop_assert_eq!(q.pop(), want);
                    }
                    Op::PopPriority(max) => {
                        let want = model_pop_priority(&mut m, max);
                        prop_assert_eq!(q.pop_priority(max), want);
                    }
                    Op::Remove(s) => {
                        let want = m.iter().position(|e| e.0 == s).map(|i| m.remove(i).2);
                        prop_assert_eq!(q.remove(s), want);
                    }
                }
                prop_assert_eq!(q.len(), m.len());
                prop_assert_eq!(q.peek(), m.first().map(|e| (e.0, &e.2)));
                let got: Vec<(u64, u32)> = q.iter().map(|(s, v)| (s, *v)).collect();
                let want: Vec<(u64, u32)> = m.iter().map(|e| (e.0, e.2)).collect();
                prop_assert_eq!(got, want);
            }
            let drained: Vec<(u64, u32)> = q.drain().collect();
            let want: Vec<(u64, u32)> = m.iter().map(|e| (e.0, e.2)).collect();
            prop_assert_eq!(drained, want);
        }
    }
}
