//! Task states, stimulus ids and the bounded transition log behind `story`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

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

/// Ring buffer of the most recent transitions.
pub(crate) struct TransitionLog {
    cap: usize,
    records: VecDeque<TransitionRecord>,
}

impl TransitionLog {
    pub(crate) fn new(cap: usize) -> TransitionLog {
        TransitionLog {
            cap,
            records: VecDeque::new(),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.cap > 0
    }

    pub(crate) fn push(&mut self, record: TransitionRecord) {
        if self.records.len() == self.cap {
            self.records.pop_front();
        }
        self.records.push_back(record);
    }

    pub(crate) fn story(&self, key: &str) -> Vec<TransitionRecord> {
        self.records
            .iter()
            .filter(|r| &*r.key == key)
            .cloned()
            .collect()
    }
}
