//! The scheduler's record of one task, kept compact: dense slot indices instead of pointers,
//! rarely used fields boxed, interned prefix and constraint groups.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::sync::Arc;

use taskwire_protocol::{ClientId, ResourceMsg, TaskErrorMsg, TaskId, TaskKindMsg};

use crate::small::SmallList;
use crate::state::TaskState;

/// "No slot" marker for worker and task slot fields.
pub(crate) const NONE: u32 = u32::MAX;

/// The task is scattered data the scheduler expects a `DataAdded` for.
pub(crate) const F_SCATTER: u8 = 1;

/// Estimated duration of a task of a prefix never seen finishing (Dask: 500 ms).
pub(crate) const UNKNOWN_DURATION_US: u64 = 500_000;

/// A reference to a task that may have been forgotten since: the slot is only valid while its
/// generation matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TaskRef {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

/// Ordering of ready tasks: user priority descending, then submission order.
pub(crate) type QueueKey = (Reverse<i32>, u64, u32);

pub(crate) struct Task {
    pub(crate) key: Arc<str>,
    pub(crate) id: TaskId,
    pub(crate) generation: u32,
    pub(crate) state: TaskState,
    pub(crate) flags: u8,
    pub(crate) prefix: u32,
    pub(crate) constraint: u32,
    pub(crate) priority: i32,
    pub(crate) retries_left: u32,
    pub(crate) suspicious: u32,
    /// Dependencies not in memory (only maintained in `waiting`).
    pub(crate) waiting_on: u32,
    /// Dependents in a pending state (they need this task's result).
    pub(crate) waiters: u32,
    /// Live dependents, any state (they keep this task's lineage).
    pub(crate) n_dependents: u32,
    /// Estimated duration, fixed when it was assigned to its worker.
    pub(crate) est_us: u32,
    /// Assignment order (wrapping): workers run same-priority tasks in arrival order.
    pub(crate) assigned_seq: u32,
    pub(crate) processing_on: u32,
    /// Index in its worker's `processing` list (valid while `processing`).
    pub(crate) proc_pos: u32,
    pub(crate) nbytes: u64,
    /// What to run; `None` for scattered data, which has no lineage. Shared by the tasks of
    /// one graph that run the same function with the same arguments (most of a map).
    pub(crate) kind: Option<Arc<TaskKindMsg>>,
    pub(crate) deps: Box<[u32]>,
    /// May hold stale references to forgotten dependents; compacted lazily.
    pub(crate) dependents: Vec<TaskRef>,
    pub(crate) who_has: SmallList<u32, 4>,
    pub(crate) wanted: SmallList<ClientId, 2>,
    /// The client that submitted it, whose task count it is in ([`ClientId`] 0: none).
    pub(crate) owner: ClientId,
    pub(crate) error: Option<Box<TaskErrorMsg>>,
}

impl Task {
    pub(crate) fn vacant(empty: Arc<str>) -> Task {
        Task {
            key: empty,
            id: TaskId(0),
            generation: 0,
            state: TaskState::Forgotten,
            flags: 0,
            prefix: 0,
            constraint: 0,
            priority: 0,
            retries_left: 0,
            suspicious: 0,
            waiting_on: 0,
            waiters: 0,
            n_dependents: 0,
            est_us: 0,
            assigned_seq: 0,
            processing_on: NONE,
            proc_pos: 0,
            nbytes: 0,
            kind: None,
            deps: Box::default(),
            dependents: Vec::new(),
            who_has: SmallList::default(),
            wanted: SmallList::default(),
            owner: ClientId(0),
            error: None,
        }
    }

    /// Some client wants it or some pending dependent needs it.
    pub(crate) fn needed(&self) -> bool {
        !self.wanted.is_empty() || self.waiters > 0
    }

    /// Nothing refers to it any more: it can leave the scheduler.
    pub(crate) fn forgettable(&self) -> bool {
        matches!(self.state, TaskState::Released | TaskState::Erred)
            && !self.needed()
            && self.n_dependents == 0
            && self.flags & F_SCATTER == 0
    }

    /// Dask's root-ish heuristic, simplified: no dependencies and no placement constraints.
    pub(crate) fn rootish(&self) -> bool {
        self.deps.is_empty() && self.constraint == 0 && self.kind.is_some()
    }

    pub(crate) fn queue_key(&self, slot: u32) -> QueueKey {
        (Reverse(self.priority), self.id.0, slot)
    }
}

/// Per key prefix statistics (Dask's TaskPrefix): the duration EWMA.
pub(crate) struct Prefix {
    pub(crate) name: Box<str>,
    pub(crate) duration_us: Option<f64>,
    /// Moving average of the result size, once a task of the prefix has finished.
    pub(crate) nbytes: Option<f64>,
    pub(crate) live: u32,
    /// Its tasks by state (the dashboard's progress bars).
    pub(crate) counts: crate::state::StateCounts,
}

impl Prefix {
    pub(crate) fn estimate_us(&self) -> u64 {
        self.duration_us.map_or(UNKNOWN_DURATION_US, |d| d as u64)
    }
}

/// A placement constraint shared by all tasks with the same resources and restrictions, and
/// the tasks of that kind waiting in `no-worker`. Group 0 is "unconstrained".
pub(crate) struct Constraint {
    pub(crate) resources: Vec<(u16, f64)>,
    pub(crate) resources_msg: Vec<ResourceMsg>,
    pub(crate) workers: Vec<String>,
    pub(crate) no_worker: BTreeSet<QueueKey>,
}

/// Dask's `key_split`, simplified: `inc-3` -> `inc`, `load-file-12` -> `load-file`,
/// `x` -> `x`. Words starting with a digit, or long hex-like words, end the prefix.
/// A key's group (Dask's key prefix): `inc` for `inc-1`, `load-file` for `load-file-12`.
pub fn key_prefix(key: &str) -> &str {
    let mut end = 0;
    for (i, word) in key.split('-').enumerate() {
        let looks_like_index = word.starts_with(|c: char| c.is_ascii_digit())
            || (word.len() >= 8 && word.bytes().all(|b| b.is_ascii_hexdigit()));
        if i > 0 && looks_like_index {
            break;
        }
        end += if i == 0 { word.len() } else { word.len() + 1 };
    }
    if end == 0 { key } else { &key[..end] }
}

#[cfg(test)]
mod tests {
    use super::key_prefix;

    #[test]
    fn prefixes() {
        assert_eq!(key_prefix("inc-3"), "inc");
        assert_eq!(key_prefix("load-file-12"), "load-file");
        assert_eq!(key_prefix("x"), "x");
        assert_eq!(key_prefix("sum-deadbeefcafe"), "sum");
        assert_eq!(key_prefix("3-4"), "3");
        assert_eq!(key_prefix("-3"), "-3");
        assert_eq!(key_prefix("-3-5"), "-3-5");
    }
}
