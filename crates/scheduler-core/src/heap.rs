//! An indexed binary min-heap of workers by [`OccKey`]: the least occupied worker in O(1),
//! a worker's key changed in O(log n) (usually a step or two), no allocation per update.
//! Only the minimum is needed per task; the rare full orderings (work stealing) sort a copy.

use crate::task::NONE;
use crate::worker::OccKey;

#[derive(Default)]
pub(crate) struct WorkerHeap {
    heap: Vec<OccKey>,
    /// Index in `heap` per worker slot, `NONE` when absent.
    pos: Vec<u32>,
}

impl WorkerHeap {
    #[inline]
    pub(crate) fn first(&self) -> Option<&OccKey> {
        self.heap.first()
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub(crate) fn contains(&self, key: &OccKey) -> bool {
        self.pos
            .get(key.2 as usize)
            .is_some_and(|&p| p != NONE && self.heap[p as usize] == *key)
    }

    /// The keys in ascending order.
    pub(crate) fn sorted(&self) -> Vec<OccKey> {
        let mut v = self.heap.clone();
        v.sort_unstable();
        v
    }

    /// The smallest key for which `pred` holds.
    pub(crate) fn min_where(&self, mut pred: impl FnMut(&OccKey) -> bool) -> Option<OccKey> {
        self.heap.iter().filter(|k| pred(k)).min().copied()
    }

    pub(crate) fn insert(&mut self, key: OccKey) {
        let w = key.2 as usize;
        if self.pos.len() <= w {
            self.pos.resize(w + 1, NONE);
        }
        debug_assert_eq!(self.pos[w], NONE);
        let i = self.heap.len();
        self.heap.push(key);
        self.pos[w] = i as u32;
        self.sift_up(i);
    }

    /// Remove the worker of `key` (which must be its current key).
    pub(crate) fn remove(&mut self, key: &OccKey) {
        let w = key.2 as usize;
        let i = self.pos[w] as usize;
        debug_assert_eq!(self.heap[i], *key);
        self.pos[w] = NONE;
        let last = self.heap.pop().expect("present");
        if i < self.heap.len() {
            self.heap[i] = last;
            self.pos[last.2 as usize] = i as u32;
            self.fix(i);
        }
    }

    /// The worker of `new` (present) has a new key.
    #[inline]
    pub(crate) fn update(&mut self, new: OccKey) {
        let i = self.pos[new.2 as usize] as usize;
        self.heap[i] = new;
        self.fix(i);
    }

    #[inline]
    fn fix(&mut self, i: usize) {
        if i > 0 && self.heap[i] < self.heap[(i - 1) / 2] {
            self.sift_up(i);
        } else {
            self.sift_down(i);
        }
    }

    fn sift_up(&mut self, mut i: usize) {
        let key = self.heap[i];
        while i > 0 {
            let parent = (i - 1) / 2;
            let p = self.heap[parent];
            if key >= p {
                break;
            }
            self.heap[i] = p;
            self.pos[p.2 as usize] = i as u32;
            i = parent;
        }
        self.heap[i] = key;
        self.pos[key.2 as usize] = i as u32;
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        let key = self.heap[i];
        loop {
            let l = 2 * i + 1;
            if l >= n {
                break;
            }
            let r = l + 1;
            let c = if r < n && self.heap[r] < self.heap[l] {
                r
            } else {
                l
            };
            let ck = self.heap[c];
            if ck >= key {
                break;
            }
            self.heap[i] = ck;
            self.pos[ck.2 as usize] = i as u32;
            i = c;
        }
        self.heap[i] = key;
        self.pos[key.2 as usize] = i as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::WorkerHeap;

    #[test]
    fn keeps_the_minimum_through_updates() {
        let mut h = WorkerHeap::default();
        let mut keys: Vec<(u64, u64, u32)> =
            (0..50u32).map(|w| ((w as u64 * 37) % 11, 0, w)).collect();
        for &k in &keys {
            h.insert(k);
        }
        let mut s = 12345u64;
        for step in 0..2000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let w = (s % 50) as usize;
            if step % 7 == 0 && h.contains(&keys[w]) {
                h.remove(&keys[w]);
                keys[w].0 = u64::MAX;
            } else if keys[w].0 == u64::MAX {
                keys[w].0 = s % 100;
                h.insert(keys[w]);
            } else {
                keys[w].0 = s % 100;
                h.update(keys[w]);
            }
            let mut live: Vec<_> = keys.iter().copied().filter(|k| k.0 != u64::MAX).collect();
            live.sort_unstable();
            assert_eq!(h.sorted(), live);
            assert_eq!(h.first().copied(), live.first().copied());
        }
    }
}
