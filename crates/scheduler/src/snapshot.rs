//! What the core thread publishes for observers (the dashboard, `/metrics`): a copy of the
//! cluster's state taken at a bounded rate, so that looking never holds up the core.

use crate::durations::{Durations, GroupDurations};
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
    /// Run times of the tasks finished since the scheduler started, per task group (kept when
    /// the dashboard is on).
    pub durations: Vec<GroupDurations>,
    /// Tasks finished whose run time is not in `durations` (more finished in one batch of the
    /// core thread than the core keeps a record of).
    pub durations_unrecorded: u64,
    /// Bytes moved between workers since the scheduler started.
    pub transfers: TransferTotals,
}

/// Bytes moved between workers, added up over the workers' heartbeats (including workers that
/// have left since).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferTotals {
    /// Bytes workers fetched from other workers.
    pub fetched_bytes: u64,
    /// Bytes workers served from their data ports, to other workers and to clients.
    pub served_bytes: u64,
}

/// Adds up the workers' transfer counters: each heartbeat carries a worker's own totals since
/// it started, so the cluster's total grows by what each counter grew since last seen.
#[derive(Default)]
struct TransferCounter {
    totals: TransferTotals,
    /// (fetched, served) as last seen, by worker id.
    last: rustc_hash::FxHashMap<u64, (u64, u64)>,
}

impl TransferCounter {
    fn update(&mut self, workers: &[WorkerInfoMsg]) -> TransferTotals {
        let mut last = rustc_hash::FxHashMap::default();
        for w in workers {
            let now = (w.metrics.fetched_bytes, w.metrics.served_bytes);
            let before = self.last.get(&w.id.0).copied().unwrap_or((0, 0));
            self.totals.fetched_bytes += now.0.saturating_sub(before.0);
            self.totals.served_bytes += now.1.saturating_sub(before.1);
            last.insert(w.id.0, now);
        }
        self.last = last;
        self.totals
    }
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
            durations: Vec::new(),
            durations_unrecorded: 0,
            transfers: TransferTotals::default(),
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
            durations: Vec::new(),
            durations_unrecorded: 0,
            transfers: TransferTotals::default(),
        }
    }
}

/// How far back the task stream goes.
pub(crate) const STREAM_WINDOW: Duration = Duration::from_secs(60);

/// A task that ran (finished or failed) in the task stream.
#[derive(Clone, Debug)]
pub(crate) struct StreamRun {
    /// Its number among all tasks that ran (from 1).
    pub(crate) seq: u64,
    pub(crate) key: Arc<str>,
    pub(crate) worker: u64,
    /// The worker's executor thread that ran it.
    pub(crate) thread: u32,
    pub(crate) erred: bool,
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
    durations: Option<Durations>,
    transfers: TransferCounter,
}

impl Publisher {
    /// `durations`: keep the run-time histograms (only the dashboard shows them, and they
    /// cost a bucket search per finished task on the core thread).
    pub(crate) fn new(durations: bool) -> (Publisher, watch::Receiver<Arc<Snapshot>>, TaskStream) {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::empty()));
        let stream = TaskStream::default();
        let publisher = Publisher {
            tx,
            last: None,
            stream: stream.clone(),
            stream_seq: 0,
            durations: durations.then(Durations::default),
            transfers: TransferCounter::default(),
        };
        (publisher, rx, stream)
    }

    /// Move the tasks finished since the last publication into the stream window.
    fn extend_stream(&mut self, core: &Core, now: Instant) {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3);
        let new: Vec<_> = core.task_runs_since(self.stream_seq).collect();
        // The last one is number `task_runs_total`.
        let first = core.task_runs_total() + 1 - new.len() as u64;
        let mut stream = self.stream.lock().expect("task stream");
        for (seq, run) in (first..).zip(new) {
            let end_ms = wall - now.saturating_duration_since(run.finished).as_secs_f64() * 1e3;
            stream.push_back(StreamRun {
                seq,
                key: run.key.clone(),
                worker: run.worker.0,
                thread: run.thread,
                erred: run.erred,
                start_ms: end_ms - run.duration_us as f64 / 1e3,
                end_ms,
            });
        }
        self.stream_seq = core.task_runs_total();
        let oldest = wall - STREAM_WINDOW.as_secs_f64() * 1e3;
        while stream.front().is_some_and(|r| r.end_ms < oldest)
            || stream.len() > taskwire_scheduler_core::MAX_TASK_RUNS
        {
            stream.pop_front();
        }
    }

    /// Count the run times of the tasks finished since the last call; called after every
    /// batch of events, before the core's record of finished tasks wraps around.
    pub(crate) fn record_durations(&mut self, core: &Core) {
        if let Some(d) = &mut self.durations {
            d.record(core);
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
        self.record_durations(core);
        let mut snapshot = Snapshot::take(core);
        if let Some(d) = &self.durations {
            snapshot.durations = d.groups.clone();
            snapshot.durations_unrecorded = d.unrecorded;
        }
        snapshot.transfers = self.transfers.update(&snapshot.workers);
        let _ = self.tx.send(Arc::new(snapshot));
        true
    }

    /// When the next publication is due, if one was held back.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.last.map(|t| t + PUBLISH_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskwire_protocol::{WorkerId, WorkerMetricsMsg};

    fn worker(id: u64, fetched: u64, served: u64) -> WorkerInfoMsg {
        WorkerInfoMsg {
            id: WorkerId(id),
            name: format!("w{id}"),
            address: String::new(),
            nthreads: 1,
            memory_limit: 0,
            resources: vec![],
            processing: 0,
            in_memory: 0,
            metrics: WorkerMetricsMsg {
                fetched_bytes: fetched,
                served_bytes: served,
                ..Default::default()
            },
            restarts: 0,
            last_seen_ms: 0,
        }
    }

    #[test]
    fn transfer_totals_keep_what_departed_and_restarted_workers_moved() {
        let mut c = TransferCounter::default();
        assert_eq!(
            c.update(&[worker(1, 100, 5), worker(2, 0, 100)])
                .fetched_bytes,
            100
        );
        // Worker 1 moves 50 more, then leaves; its bytes stay counted.
        assert_eq!(
            c.update(&[worker(1, 150, 5), worker(2, 0, 150)])
                .fetched_bytes,
            150
        );
        let t = c.update(&[worker(2, 0, 150)]);
        assert_eq!((t.fetched_bytes, t.served_bytes), (150, 155));
        // Its replacement (a new id) counts from zero again.
        let t = c.update(&[worker(2, 0, 150), worker(3, 10, 0)]);
        assert_eq!((t.fetched_bytes, t.served_bytes), (160, 155));
        assert_eq!(c.last.len(), 2, "departed workers are forgotten");
    }
}
