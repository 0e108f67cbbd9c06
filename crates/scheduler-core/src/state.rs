//! Task states, stimulus ids and the bounded transition log behind `story`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;
use taskwire_protocol::WorkerId;

/// A task's state in the scheduler, with Dask's names and meanings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Known, not needed now or not yet considered; holds no data.
    Released,
    /// Needed; waits for its dependencies (or, for scattered data, for the data to arrive).
    Waiting,
    /// Ready, but no connected worker can run it now (restrictions, resources, no workers).
    NoWorker,
    /// A ready root task held back because every worker is saturated.
    Queued,
    /// Assigned to a worker.
    Processing,
    /// Its result is held by at least one worker.
    Memory,
    /// It failed, or a dependency failed, or it was cancelled.
    Erred,
    /// Gone; nothing of it is kept.
    Forgotten,
}

impl TaskState {
    /// Dask's name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Released => "released",
            TaskState::Waiting => "waiting",
            TaskState::NoWorker => "no-worker",
            TaskState::Queued => "queued",
            TaskState::Processing => "processing",
            TaskState::Memory => "memory",
            TaskState::Erred => "erred",
            TaskState::Forgotten => "forgotten",
        }
    }

    /// Waiting for or on its way to a result: the task keeps its dependencies needed.
    pub(crate) fn is_pending(self) -> bool {
        matches!(
            self,
            TaskState::Waiting | TaskState::NoWorker | TaskState::Queued | TaskState::Processing
        )
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names the external event (or timer) that caused a transition, e.g. `update-graph-42`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StimulusId {
    seq: u64,
    kind: &'static str,
}

impl StimulusId {
    pub(crate) fn new(seq: u64, kind: &'static str) -> StimulusId {
        StimulusId { seq, kind }
    }

    /// Sequence number: one per event or timeout handled, starting at 1.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The kind of event, e.g. `tasks-finished`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

impl fmt::Display for StimulusId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.kind, self.seq)
    }
}

/// One state change of one task.
#[derive(Clone, Debug, PartialEq)]
pub struct TransitionRecord {
    /// The task's key.
    pub key: Arc<str>,
    /// State before.
    pub from: TaskState,
    /// State after.
    pub to: TaskState,
    /// The event that caused it.
    pub stimulus: StimulusId,
    /// When the event was handled.
    pub at: Instant,
}

impl fmt::Display for TransitionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} -> {} ({})",
            self.key, self.from, self.to, self.stimulus
        )
    }
}

/// A task that ran to an end (finished or failed) on a worker, for the dashboard's task
/// stream.
#[derive(Clone, Debug)]
pub struct TaskRun {
    /// The task's key.
    pub key: Arc<str>,
    /// The worker that ran it.
    pub worker: WorkerId,
    /// The worker's executor thread that ran it (`0..nthreads`).
    pub thread: u32,
    /// When the core learnt it ended.
    pub finished: Instant,
    /// How long it ran, as the worker measured it.
    pub duration_us: u64,
    /// When it started, in µs on the worker's own clock (see
    /// [`TaskFinishedMsg::started_us`](taskwire_protocol::TaskFinishedMsg::started_us)).
    pub started_us: u64,
    /// It failed (its error is the task's, unless it is retried).
    pub erred: bool,
}

/// A task group (key prefix) as [`Core::groups`](crate::Core::groups) reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupInfo {
    /// The prefix, e.g. `inc` for `inc-1`.
    pub name: String,
    /// Its tasks by state.
    pub counts: StateCounts,
    /// Mean run time in µs (moving average), once one finished.
    pub duration_us: Option<f64>,
}

/// How many tasks are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// `released`.
    pub released: usize,
    /// `waiting`.
    pub waiting: usize,
    /// `no-worker`.
    pub no_worker: usize,
    /// `queued`.
    pub queued: usize,
    /// `processing`.
    pub processing: usize,
    /// `memory`.
    pub memory: usize,
    /// `erred`.
    pub erred: usize,
}

impl StateCounts {
    /// Tasks the scheduler holds, all states together.
    pub fn total(&self) -> usize {
        self.released
            + self.waiting
            + self.no_worker
            + self.queued
            + self.processing
            + self.memory
            + self.erred
    }

    /// The count for one state (`Forgotten` is always 0).
    pub fn get(&self, state: TaskState) -> usize {
        match state {
            TaskState::Released => self.released,
            TaskState::Waiting => self.waiting,
            TaskState::NoWorker => self.no_worker,
            TaskState::Queued => self.queued,
            TaskState::Processing => self.processing,
            TaskState::Memory => self.memory,
            TaskState::Erred => self.erred,
            TaskState::Forgotten => 0,
        }
    }

    /// One task moved from `from` to `to`.
    pub(crate) fn shift(&mut self, from: TaskState, to: TaskState) {
        if let Some(c) = self.slot(from) {
            *c -= 1;
        }
        if let Some(c) = self.slot(to) {
            *c += 1;
        }
    }

    pub(crate) fn slot(&mut self, state: TaskState) -> Option<&mut usize> {
        Some(match state {
            TaskState::Released => &mut self.released,
            TaskState::Waiting => &mut self.waiting,
            TaskState::NoWorker => &mut self.no_worker,
            TaskState::Queued => &mut self.queued,
            TaskState::Processing => &mut self.processing,
            TaskState::Memory => &mut self.memory,
            TaskState::Erred => &mut self.erred,
            TaskState::Forgotten => return None,
        })
    }
}

/// One logged transition, `Copy` and fixed-size: the task is named by its slot and
/// generation; its key is looked up only in `story`.
#[derive(Clone, Copy)]
struct Entry {
    slot: u32,
    generation: u32,
    from: TaskState,
    to: TaskState,
    stimulus: StimulusId,
    at: Instant,
}

/// Ring buffer of the most recent transitions. Writing one is a copy of a small record; keys
/// are not copied: live tasks are found by slot and generation, and the keys of forgotten
/// tasks (whose slot may hold another task since) are kept in `graves` until their last entry
/// is overwritten.
pub(crate) struct TransitionLog {
    cap: usize,
    entries: Vec<Entry>,
    /// Next position to overwrite once `entries` is full.
    head: usize,
    /// Entries ever written.
    written: u64,
    /// (position of its last entry, slot, generation, key) of forgotten tasks, oldest first.
    graves: VecDeque<(u64, u32, u32, Arc<str>)>,
    /// Position of the oldest grave's last entry (`u64::MAX` when there is none).
    first_grave: u64,
}

impl TransitionLog {
    pub(crate) fn new(cap: usize) -> TransitionLog {
        TransitionLog {
            cap,
            entries: Vec::new(),
            head: 0,
            written: 0,
            graves: VecDeque::new(),
            first_grave: u64::MAX,
        }
    }

    #[inline]
    pub(crate) fn enabled(&self) -> bool {
        self.cap > 0
    }

    #[inline]
    pub(crate) fn push(
        &mut self,
        slot: u32,
        generation: u32,
        from: TaskState,
        to: TaskState,
        stimulus: StimulusId,
        at: Instant,
    ) {
        let entry = Entry {
            slot,
            generation,
            from,
            to,
            stimulus,
            at,
        };
        self.written += 1;
        if self.entries.len() < self.cap {
            self.entries.push(entry);
            return;
        }
        self.entries[self.head] = entry;
        self.head += 1;
        if self.head == self.cap {
            self.head = 0;
        }
        // Positions below this have been overwritten.
        let first_pos = self.written - self.cap as u64;
        if self.first_grave < first_pos {
            self.bury(first_pos);
        }
    }

    /// Drop the keys of forgotten tasks whose entries are all overwritten.
    #[cold]
    fn bury(&mut self, first_pos: u64) {
        while self.graves.front().is_some_and(|g| g.0 < first_pos) {
            self.graves.pop_front();
        }
        self.first_grave = self.graves.front().map_or(u64::MAX, |g| g.0);
    }

    /// The task in `slot` of `generation`, named `key`, was just forgotten (its last entry is
    /// the newest): keep its key while entries refer to it.
    pub(crate) fn forget(&mut self, slot: u32, generation: u32, key: Arc<str>) {
        if self.enabled() && self.written > 0 {
            let pos = self.written - 1;
            if self.graves.is_empty() {
                self.first_grave = pos;
            }
            self.graves.push_back((pos, slot, generation, key));
        }
    }

    /// The entries of `key`, oldest first. `live` is the live task of that key, if any
    /// (slot, generation, key).
    pub(crate) fn story(
        &self,
        key: &str,
        live: Option<(u32, u32, &Arc<str>)>,
    ) -> Vec<TransitionRecord> {
        let mut who: Vec<(u32, u32, &Arc<str>)> = self
            .graves
            .iter()
            .filter(|g| &*g.3 == key)
            .map(|g| (g.1, g.2, &g.3))
            .collect();
        who.extend(live);
        if who.is_empty() {
            return Vec::new();
        }
        let (newer, older) = self.entries.split_at(self.head);
        older
            .iter()
            .chain(newer)
            .filter_map(|e| {
                let &(_, _, k) = who.iter().find(|w| w.0 == e.slot && w.1 == e.generation)?;
                Some(TransitionRecord {
                    key: k.clone(),
                    from: e.from,
                    to: e.to,
                    stimulus: e.stimulus,
                    at: e.at,
                })
            })
            .collect()
    }
}
