//! What the core thread publishes for observers (the dashboard, `/metrics`): a copy of the
//! cluster's state taken at a bounded rate, so that looking never holds up the core.

use crate::durations::{Durations, GroupDurations};
use std::collections::{HashMap, VecDeque};
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
    /// When it started on the worker's own clock, and for how long it ran, in µs.
    pub(crate) started_us: u64,
    pub(crate) duration_us: u64,
}

/// The task stream of the last [`STREAM_WINDOW`] (at most `MAX_TASK_RUNS` tasks), filled by
/// the publisher, read by the dashboard.
#[derive(Debug, Default)]
pub(crate) struct StreamWindow {
    runs: VecDeque<StreamRun>,
    /// Per worker, when its clock started, in ms since the Unix epoch on the scheduler's
    /// clock: the earliest that any of its reports allows (the report that arrived with the
    /// least delay). One offset for all of a worker's runs keeps them in the order and with
    /// the gaps its own clock measured, so that runs on one thread never overlap.
    origins: HashMap<u64, f64>,
}

impl StreamWindow {
    /// Start and end of `run` in ms since the Unix epoch.
    pub(crate) fn times(&self, run: &StreamRun) -> (f64, f64) {
        let origin = self.origins.get(&run.worker).copied().unwrap_or(0.0);
        let start = origin + run.started_us as f64 / 1e3;
        (start, start + run.duration_us as f64 / 1e3)
    }

    /// Add `run`, which the core heard of at `heard` (ms since the Unix epoch).
    pub(crate) fn push(&mut self, run: StreamRun, heard: f64) {
        // When the worker's clock started is at most the time the core heard of the run less
        // the worker's time since then; the quickest report gives the tightest bound.
        let origin = heard - run.started_us.saturating_add(run.duration_us) as f64 / 1e3;
        self.origins
            .entry(run.worker)
            .and_modify(|o| *o = o.min(origin))
            .or_insert(origin);
        self.runs.push_back(run);
    }

    /// Drop the runs that ended before `oldest` (ms since the Unix epoch) and any beyond the
    /// `MAX_TASK_RUNS` latest.
    fn prune(&mut self, oldest: f64) {
        while self.runs.len() > taskwire_scheduler_core::MAX_TASK_RUNS
            || self.runs.front().is_some_and(|r| self.times(r).1 < oldest)
        {
            self.runs.pop_front();
        }
    }

    /// The runs after number `since`, with their times, and the number of the last run.
    pub(crate) fn since(&self, since: u64) -> (Vec<(StreamRun, f64, f64)>, u64) {
        let last = self.runs.back().map_or(since, |r| r.seq.max(since));
        // Numbers grow along the queue: skip the old ones without looking at each.
        let first = self.runs.partition_point(|r| r.seq <= since);
        let runs = self
            .runs
            .range(first..)
            .map(|r| {
                let (start, end) = self.times(r);
                (r.clone(), start, end)
            })
            .collect();
        (runs, last)
    }
}

/// [`StreamWindow`] as the publisher and the dashboard share it.
pub(crate) type TaskStream = Arc<Mutex<StreamWindow>>;

/// The core thread's side: publishes at most every [`PUBLISH_INTERVAL`].
pub(crate) struct Publisher {
    tx: watch::Sender<Arc<Snapshot>>,
    last: Option<Instant>,
    stream: TaskStream,
    stream_seq: u64,
    /// When to forget the clocks of workers gone from the stream.
    origins_limit: usize,
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
            origins_limit: 64,
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
            let heard = wall - now.saturating_duration_since(run.finished).as_secs_f64() * 1e3;
            let run = StreamRun {
                seq,
                key: run.key.clone(),
                worker: run.worker.0,
                thread: run.thread,
                erred: run.erred,
                started_us: run.started_us,
                duration_us: run.duration_us,
            };
            stream.push(run, heard);
        }
        self.stream_seq = core.task_runs_total();
        stream.prune(wall - STREAM_WINDOW.as_secs_f64() * 1e3);
        // Forget the clocks of workers gone from the window, now and then: each time there
        // are twice as many as after the last clean-up (it looks at every run).
        if stream.origins.len() > self.origins_limit {
            let StreamWindow { runs, origins } = &mut *stream;
            let present: std::collections::HashSet<u64> = runs.iter().map(|r| r.worker).collect();
            origins.retain(|w, _| present.contains(w));
            self.origins_limit = (2 * origins.len()).max(64);
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

    fn run(seq: u64, worker: u64, thread: u32, started_us: u64, duration_us: u64) -> StreamRun {
        StreamRun {
            seq,
            key: format!("t-{seq}").into(),
            worker,
            thread,
            erred: false,
            started_us,
            duration_us,
        }
    }

    /// Two runs back to back on one thread, reported in one batch (both heard at the same
    /// moment): placed by the worker's clock, they keep their order and do not overlap,
    /// where "heard less run time" would have drawn them on top of each other.
    #[test]
    fn runs_of_one_worker_share_its_clock() {
        let mut w = StreamWindow::default();
        w.push(run(1, 7, 0, 1_000, 2_000), 10_000.0);
        w.push(run(2, 7, 0, 3_000, 2_000), 10_000.0);
        // Heard at 10 s, it ended 5 ms after the worker's clock started.
        assert_eq!(w.times(&w.runs[0]), (9_996.0, 9_998.0));
        assert_eq!(w.times(&w.runs[1]), (9_998.0, 10_000.0));
        // A quicker report moves the whole worker earlier, all its runs together.
        w.push(run(3, 7, 1, 10_000, 1_000), 10_005.0);
        assert_eq!(w.times(&w.runs[0]), (9_995.0, 9_997.0));
        assert_eq!(w.times(&w.runs[2]), (10_004.0, 10_005.0));
        // Another worker has its own clock.
        w.push(run(4, 8, 0, 0, 1_000), 10_001.0);
        assert_eq!(w.times(&w.runs[3]), (10_000.0, 10_001.0));
        let (after, last) = w.since(2);
        assert_eq!(last, 4);
        let seqs: Vec<u64> = after.iter().map(|(r, _, _)| r.seq).collect();
        assert_eq!(seqs, [3, 4]);
        assert_eq!(w.since(4).0.len(), 0);
        w.prune(9_997.5);
        assert_eq!(
            w.runs.front().map(|r| r.seq),
            Some(2),
            "ended before the window"
        );
    }
}
