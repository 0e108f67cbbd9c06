//! The scheduler's record of one worker: what it runs, what it holds, what it offers.

use std::time::Instant;
use taskwire_protocol::{ComputeTaskMsg, ResourceMsg, TaskId, WorkerId, WorkerMetricsMsg};

use rustc_hash::FxHashSet;

/// Position of a worker in the occupancy order: occupancy per thread (µs), processing tasks
/// per thread (×1024), slot.
pub(crate) type OccKey = (u64, u64, u32);

/// Whether a worker takes new tasks (Dask's `Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WorkerStatus {
    /// Takes new tasks.
    Running,
    /// Over its memory pause threshold: keeps its tasks and data, takes nothing new.
    Paused,
    /// Leaving gracefully: finishes its tasks, hands its unique results to other workers,
    /// then is closed.
    Retiring,
}

pub(crate) struct Worker {
    pub(crate) id: WorkerId,
    pub(crate) name: String,
    pub(crate) address: String,
    pub(crate) nthreads: u32,
    pub(crate) memory_limit: u64,
    pub(crate) resources_msg: Vec<ResourceMsg>,
    /// (resource, total, in use).
    pub(crate) res: Vec<(u16, f64, f64)>,
    /// How many tasks it may run at once before root tasks queue.
    pub(crate) slots: u64,
    pub(crate) alive: bool,
    /// Task slots assigned to it, any order; each task knows its index (`proc_pos`).
    pub(crate) processing: Vec<u32>,
    pub(crate) occupancy_us: u64,
    pub(crate) has_what: FxHashSet<u32>,
    pub(crate) nbytes: u64,
    pub(crate) status: WorkerStatus,
    /// Its last heartbeat's report.
    pub(crate) metrics: WorkerMetricsMsg,
    /// Nanny restarts before this registration.
    pub(crate) restarts: u32,
    /// When the core last heard from it.
    pub(crate) last_seen: Option<Instant>,
    pub(crate) occ_key: OccKey,
    pub(crate) in_free_slots: bool,
    pub(crate) steals_incoming: u32,
    pub(crate) out_compute: Vec<ComputeTaskMsg>,
    pub(crate) out_free: Vec<TaskId>,
    pub(crate) dirty: bool,
}

impl Worker {
    pub(crate) fn compute_key(&self, slot: u32) -> OccKey {
        let n = self.nthreads.max(1) as u64;
        (
            self.occupancy_us / n,
            self.processing.len() as u64 * 1024 / n,
            slot,
        )
    }

    /// Placement may give it tasks: live and running (not paused, not retiring). Only such
    /// workers are in the occupancy and free-slot orders.
    pub(crate) fn schedulable(&self) -> bool {
        self.alive && self.status == WorkerStatus::Running
    }

    pub(crate) fn has_free_slot(&self) -> bool {
        (self.processing.len() as u64) < self.slots
    }

    pub(crate) fn idle(&self) -> bool {
        (self.processing.len() as u64) < self.nthreads as u64
    }

    /// All of `need` is available now.
    pub(crate) fn fits(&self, need: &[(u16, f64)]) -> bool {
        need.iter().all(|&(r, amount)| {
            self.res
                .iter()
                .any(|&(wr, total, used)| wr == r && total - used >= amount - 1e-9)
        })
    }

    pub(crate) fn consume(&mut self, need: &[(u16, f64)], sign: f64) {
        for &(r, amount) in need {
            if let Some(e) = self.res.iter_mut().find(|e| e.0 == r) {
                e.2 += sign * amount;
                if e.2.abs() < 1e-9 {
                    e.2 = 0.0;
                }
            }
        }
    }

    pub(crate) fn matches(&self, names: &[String]) -> bool {
        names.is_empty() || names.iter().any(|n| *n == self.name || *n == self.address)
    }
}

/// Dask's `heartbeat_interval`: no more than ~200 heartbeats a second across the cluster.
pub(crate) fn heartbeat_ms(nworkers: usize) -> u64 {
    match nworkers {
        0..=10 => 500,
        11..=49 => 1000,
        50..=199 => 2000,
        n => (n as u64 / 200 + 1) * 1000,
    }
}
