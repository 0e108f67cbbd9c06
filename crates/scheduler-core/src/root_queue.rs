//! The root tasks waiting for a worker slot (Dask's `queued`), highest priority first, then
//! in submission order ([`QueueKey`] order), as a `BTreeSet` would keep them.
//!
//! Root tasks nearly always arrive in key order: a graph's root tasks share a priority and
//! get rising task ids. The queue therefore keeps keys that arrive above every key before them
//! in an append-only sorted run (a `VecDeque`: a push, no tree walk), and only keys that arrive
//! out of order in a `BTreeSet`; its head is the smaller of the two heads. A key removed from
//! the middle of the run (a cancelled or rescheduled task) becomes a tombstone that is dropped
//! when it reaches the head, and the run is compacted once tombstones outnumber live keys, so
//! every operation stays amortized `O(log n)` whatever the order of removals.

use std::collections::{BTreeSet, VecDeque};

use crate::task::{NONE, QueueKey};

/// Compact the run only past this many tombstones (and more tombstones than live keys).
const MIN_COMPACT: usize = 64;

#[derive(Default)]
pub(crate) struct RootQueue {
    /// Strictly increasing; a tombstone is a removed key with its slot set to [`NONE`]. Task
    /// ids are unique, so `(priority, id)` alone orders the run and a tombstone keeps its place.
    run: VecDeque<QueueKey>,
    /// Tombstones in `run`; the run's front is never one.
    dead: usize,
    /// Keys that arrived below the run's last key.
    rest: BTreeSet<QueueKey>,
}

impl RootQueue {
    /// Add a key that is not in the queue.
    pub(crate) fn insert(&mut self, key: QueueKey) {
        debug_assert!(key.2 != NONE, "slot NONE marks tombstones");
        debug_assert!(!self.contains(&key), "{key:?} queued twice");
        match self.run.back() {
            Some(last) if key <= *last => {
                self.rest.insert(key);
            }
            _ => self.run.push_back(key),
        }
    }

    /// Remove `key`; false if it was not queued.
    pub(crate) fn remove(&mut self, key: &QueueKey) -> bool {
        if self.rest.remove(key) {
            return true;
        }
        let Ok(i) = self.run.binary_search(key) else {
            return false;
        };
        if i == 0 {
            self.run.pop_front();
            self.drop_front_tombstones();
            return true;
        }
        self.run[i].2 = NONE;
        self.dead += 1;
        if self.dead >= MIN_COMPACT && self.dead > self.run.len() - self.dead {
            self.run.retain(|k| k.2 != NONE);
            self.dead = 0;
        }
        true
    }

    fn drop_front_tombstones(&mut self) {
        while self.run.front().is_some_and(|k| k.2 == NONE) {
            self.run.pop_front();
            self.dead -= 1;
        }
    }

    /// The head: the highest priority, earliest submitted key.
    pub(crate) fn first(&self) -> Option<&QueueKey> {
        match (self.run.front(), self.rest.first()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Take the head out.
    pub(crate) fn pop_first(&mut self) -> Option<QueueKey> {
        let from_run = match (self.run.front(), self.rest.first()) {
            (Some(a), Some(b)) => a < b,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if from_run {
            let key = self.run.pop_front();
            self.drop_front_tombstones();
            key
        } else {
            self.rest.pop_first()
        }
    }

    pub(crate) fn contains(&self, key: &QueueKey) -> bool {
        self.rest.contains(key) || self.run.binary_search(key).is_ok()
    }

    pub(crate) fn len(&self) -> usize {
        self.run.len() - self.dead + self.rest.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys in queue order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &QueueKey> + '_ {
        let mut run = self.run.iter().filter(|k| k.2 != NONE).peekable();
        let mut rest = self.rest.iter().peekable();
        std::iter::from_fn(move || match (run.peek(), rest.peek()) {
            (Some(a), Some(b)) if b < a => rest.next(),
            (Some(_), _) => run.next(),
            (None, _) => rest.next(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::RootQueue;
    use crate::task::QueueKey;
    use std::cmp::Reverse;
    use std::collections::BTreeSet;

    /// The queue answers like a `BTreeSet` for any mix of in-order and out-of-order inserts
    /// and removals from anywhere (a client cancelling part of a queued graph, tasks
    /// rescheduled with a higher priority).
    #[test]
    fn behaves_like_a_btreeset() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for round in 0..40 {
            let mut q = RootQueue::default();
            let mut model: BTreeSet<QueueKey> = BTreeSet::new();
            let mut next_id = 0u64;
            let mut live: Vec<QueueKey> = Vec::new();
            for step in 0..3_000 {
                match rand(10) {
                    0..=4 => {
                        // Mostly in order; sometimes a higher priority or a re-queued old id.
                        let prio = if rand(8) == 0 { rand(3) as i32 } else { 0 };
                        let id = if rand(10) == 0 && next_id > 0 {
                            rand(next_id)
                        } else {
                            next_id += 1;
                            next_id
                        };
                        let key = (Reverse(prio), id, (id % 1_000) as u32);
                        if model.iter().any(|k| k.1 == id) {
                            continue;
                        }
                        q.insert(key);
                        model.insert(key);
                        live.push(key);
                    }
                    5..=6 if !live.is_empty() => {
                        let key = live.swap_remove(rand(live.len() as u64) as usize);
                        assert_eq!(q.remove(&key), model.remove(&key));
                        assert!(!q.remove(&key));
                    }
                    7 => {
                        let got = q.pop_first();
                        assert_eq!(got, model.pop_first(), "round {round} step {step}");
                        if let Some(k) = got {
                            live.retain(|x| *x != k);
                        }
                    }
                    _ => {
                        assert_eq!(q.first(), model.first());
                    }
                }
                assert_eq!(q.len(), model.len());
                assert_eq!(q.is_empty(), model.is_empty());
                if step % 250 == 0 {
                    assert!(q.iter().eq(model.iter()));
                    for k in &live {
                        assert!(q.contains(k));
                    }
                }
            }
            assert!(q.iter().eq(model.iter()));
        }
    }
}
