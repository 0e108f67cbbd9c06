//! Task run times per task group, as Prometheus histograms: fixed log-spaced buckets,
//! cumulative since the scheduler started, filled on the core thread from the core's record of
//! finished tasks (a bucket search and a name comparison per task) and published with each
//! snapshot.

use taskwire_scheduler_core::{Core, key_group};

/// Bucket upper bounds in microseconds: 1, 2.5 and 5 times each power of ten from 10 µs to
/// 1000 s. Fixed, so that histograms of different scrapes, groups and schedulers add up.
pub const DURATION_BUCKETS_US: [u64; 25] = [
    10,
    25,
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// Groups tracked one by one; the tasks of any later group count under [`OTHER_GROUP`] (keys
/// without an index part each make their own group, and a histogram per key would grow
/// without bound).
pub const MAX_DURATION_GROUPS: usize = 1000;
/// Where the tasks of groups past [`MAX_DURATION_GROUPS`] count.
pub const OTHER_GROUP: &str = "(other)";

/// The run times of one task group's finished tasks.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupDurations {
    /// The group (key prefix).
    pub name: String,
    /// Tasks per bucket (not cumulative): `buckets[i]` ran at most
    /// `DURATION_BUCKETS_US[i]` µs and more than the bound before; the last entry counts those
    /// above every bound.
    pub buckets: [u64; DURATION_BUCKETS_US.len() + 1],
    /// Tasks counted.
    pub count: u64,
    /// Their run times added up, in microseconds.
    pub sum_us: u64,
}

impl GroupDurations {
    fn new(name: &str) -> GroupDurations {
        GroupDurations {
            name: name.to_string(),
            buckets: [0; DURATION_BUCKETS_US.len() + 1],
            count: 0,
            sum_us: 0,
        }
    }

    fn record(&mut self, duration_us: u64) {
        let i = DURATION_BUCKETS_US.partition_point(|&b| b < duration_us);
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(duration_us);
    }
}

/// The accumulator the publisher keeps.
#[derive(Default)]
pub(crate) struct Durations {
    /// By first appearance.
    pub(crate) groups: Vec<GroupDurations>,
    index: rustc_hash::FxHashMap<String, usize>,
    /// Tasks finished that were not counted: more finished within one batch of the core
    /// thread than the core keeps a record of.
    pub(crate) unrecorded: u64,
    /// The core's `task_runs_total` when last recorded.
    seen: u64,
    /// The group of the last task recorded: most runs come in runs of one group.
    last: usize,
}

impl Durations {
    /// Count the tasks finished since the last call.
    pub(crate) fn record(&mut self, core: &Core) {
        let total = core.task_runs_total();
        if total == self.seen {
            return;
        }
        let mut counted = 0;
        for run in core.task_runs_since(self.seen) {
            counted += 1;
            if run.erred {
                // The histograms are of the run times of results.
                continue;
            }
            let group = key_group(&run.key);
            let i = match self.groups.get(self.last) {
                Some(g) if g.name == group => self.last,
                _ => self.slot(group),
            };
            self.last = i;
            self.groups[i].record(run.duration_us);
        }
        self.unrecorded += total - self.seen - counted;
        self.seen = total;
    }

    fn slot(&mut self, group: &str) -> usize {
        if let Some(&i) = self.index.get(group) {
            return i;
        }
        let name = if self.groups.len() < MAX_DURATION_GROUPS {
            group
        } else {
            OTHER_GROUP
        };
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        self.groups.push(GroupDurations::new(name));
        self.index.insert(name.to_string(), self.groups.len() - 1);
        self.groups.len() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_upper_bounds() {
        let mut g = GroupDurations::new("x");
        for d in [
            0,
            10,
            11,
            25,
            999_999_999,
            1_000_000_000,
            1_000_000_001,
            u64::MAX,
        ] {
            g.record(d);
        }
        assert_eq!(g.buckets[0], 2, "0 and 10 µs are at most 10 µs");
        assert_eq!(g.buckets[1], 2, "11 and 25 µs");
        assert_eq!(g.buckets[DURATION_BUCKETS_US.len() - 1], 2);
        assert_eq!(g.buckets[DURATION_BUCKETS_US.len()], 2, "above 1000 s");
        assert_eq!(g.count, 8);
        assert_eq!(g.sum_us, u64::MAX, "saturates");
        assert!(DURATION_BUCKETS_US.windows(2).all(|w| w[0] < w[1]));
    }
}
