//! What the core thread publishes for observers (the dashboard, `/metrics`): a copy of the
//! cluster's state taken at a bounded rate, so that looking never holds up the core.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
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

/// The core thread's side: publishes at most every [`PUBLISH_INTERVAL`].
pub(crate) struct Publisher {
    tx: watch::Sender<Arc<Snapshot>>,
    last: Option<Instant>,
}

impl Publisher {
    pub(crate) fn new() -> (Publisher, watch::Receiver<Arc<Snapshot>>) {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::empty()));
        (Publisher { tx, last: None }, rx)
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
        let _ = self.tx.send(Arc::new(Snapshot::take(core)));
        true
    }

    /// When the next publication is due, if one was held back.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.last.map(|t| t + PUBLISH_INTERVAL)
    }
}
