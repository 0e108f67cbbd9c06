//! What the core thread publishes for observers (the dashboard, `/metrics`): a copy of the
//! cluster's state taken at a bounded rate, so that looking never holds up the core.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use taskwire_protocol::WorkerInfoMsg;
use taskwire_scheduler_core::{Core, GroupInfo, RecoveryCounts, StateCounts};
use tokio::sync::watch;

/// At most this many snapshots a second.
pub(crate) const PUBLISH_INTERVAL: Duration = Duration::from_millis(250);

/// The cluster as the core saw it at `taken`.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// When it was taken.
    pub taken: SystemTime,
    /// Tasks by state.
    pub counts: StateCounts,
    /// Workers, by id.
    pub workers: Vec<WorkerInfoMsg>,
    /// Task groups with tasks, by name.
    pub groups: Vec<GroupInfo>,
    /// Worker losses and retirements so far.
    pub recovery: RecoveryCounts,
    /// Tasks finished since the scheduler started.
    pub finished_total: u64,
    /// Clients connected.
    pub clients: usize,
}

impl Snapshot {
    fn take(core: &Core) -> Snapshot {
        Snapshot {
            taken: SystemTime::now(),
            counts: core.counts(),
            workers: core.workers(),
            groups: core.groups(),
            recovery: core.recovery(),
            finished_total: core.finished_total(),
            clients: core.client_count(),
        }
    }

    /// An empty cluster (before the core published anything).
    pub(crate) fn empty() -> Snapshot {
        Snapshot {
            taken: SystemTime::now(),
            counts: StateCounts::default(),
            workers: Vec::new(),
            groups: Vec::new(),
            recovery: RecoveryCounts::default(),
            finished_total: 0,
            clients: 0,
        }
    }
}

/// How far back the task stream goes.
pub(crate) const STREAM_WINDOW: Duration = Duration::from_secs(60);

/// A finished task in the task stream.
#[derive(Clone, Debug)]
pub(crate) struct StreamRun {
    /// Its number among all finished tasks (from 1).
    pub(crate) seq: u64,
    pub(crate) key: Arc<str>,
    pub(crate) worker: u64,
    /// Start and end, in milliseconds since the Unix epoch (the start is the end less the
    /// run time the worker measured).
    pub(crate) start_ms: f64,
    pub(crate) end_ms: f64,
}

/// The task stream of the last [`STREAM_WINDOW`] (at most `MAX_TASK_RUNS` tasks), filled by
/// the publisher, read by the dashboard.
pub(crate) type TaskStream = Arc<Mutex<VecDeque<StreamRun>>>;

/// The core thread's side: publishes at most every [`PUBLISH_INTERVAL`].
pub(crate) struct Publisher {
    tx: watch::Sender<Arc<Snapshot>>,
    last: Option<Instant>,
    stream: TaskStream,
    stream_seq: u64,
}

impl Publisher {
    pub(crate) fn new() -> (Publisher, watch::Receiver<Arc<Snapshot>>, TaskStream) {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::empty()));
        let stream = TaskStream::default();
        let publisher = Publisher {
            tx,
            last: None,
            stream: stream.clone(),
            stream_seq: 0,
        };
        (publisher, rx, stream)
    }

    /// Move the tasks finished since the last publication into the stream window.
    fn extend_stream(&mut self, core: &Core, now: Instant) {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3);
        let new: Vec<_> = core.task_runs_since(self.stream_seq).collect();
        // The last one is number `finished_total`.
        let first = core.finished_total() + 1 - new.len() as u64;
        let mut stream = self.stream.lock().expect("task stream");
        for (seq, run) in (first..).zip(new) {
            let end_ms = wall - now.saturating_duration_since(run.finished).as_secs_f64() * 1e3;
            stream.push_back(StreamRun {
                seq,
                key: run.key.clone(),
                worker: run.worker.0,
                start_ms: end_ms - run.duration_us as f64 / 1e3,
                end_ms,
            });
        }
        self.stream_seq = core.finished_total();
        let oldest = wall - STREAM_WINDOW.as_secs_f64() * 1e3;
        while stream.front().is_some_and(|r| r.end_ms < oldest)
            || stream.len() > taskwire_scheduler_core::MAX_TASK_RUNS
        {
            stream.pop_front();
        }
    }

    /// Publish if the last snapshot is older than the interval; false if held back.
    pub(crate) fn maybe_publish(&mut self, core: &Core, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < PUBLISH_INTERVAL)
        {
            return false;
        }
        self.last = Some(now);
        self.extend_stream(core, now);
        let _ = self.tx.send(Arc::new(Snapshot::take(core)));
        true
    }

    /// When the next publication is due, if one was held back.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.last.map(|t| t + PUBLISH_INTERVAL)
    }
}
