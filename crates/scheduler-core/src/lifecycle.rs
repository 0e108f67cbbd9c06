//! A worker's life between joining and leaving: heartbeats, pausing under memory pressure, and
//! graceful retirement (Dask's `retire_workers`): a retiring worker takes no new tasks,
//! finishes the ones it has, its results that no other worker holds are copied to running
//! workers (`AcquireReplicas`), and only then is it closed, so nothing is recomputed.

use rustc_hash::FxHashMap;
use taskwire_protocol::{ClientId, DepMsg, ToClient, ToWorker, WorkerId, WorkerMetricsMsg};

use crate::core::Core;
use crate::event::Command;
use crate::worker::WorkerStatus;

/// What worker losses have cost so far, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryCounts {
    /// Workers removed without retiring (connection lost, TTL expired, killed).
    pub workers_lost: u64,
    /// Workers retired gracefully.
    pub workers_retired: u64,
    /// Tasks that were processing on a lost worker and went back to be scheduled again.
    pub tasks_rescheduled: u64,
    /// Results whose only copies were on lost workers: recomputed from their lineage.
    pub results_lost: u64,
    /// Tasks that failed with `KilledWorker` (on too many workers that died).
    pub killed_worker_errors: u64,
}

/// One pending retirement: the workers it covers and who wants to hear when they are gone.
pub(crate) struct Retirement {
    /// The client and its request id, or `None` when the worker asked itself.
    pub(crate) requester: Option<(ClientId, u64)>,
    pub(crate) workers: Vec<WorkerId>,
    pub(crate) names: Vec<String>,
}

impl Core {
    pub(crate) fn heartbeat(&mut self, id: WorkerId, metrics: WorkerMetricsMsg) {
        let Some(&w) = self.worker_by_id.get(&id) else {
            return;
        };
        let now = self.now;
        let worker = self.workers[w as usize].as_mut().expect("live");
        worker.last_seen = now;
        let paused = metrics.paused;
        worker.metrics = metrics;
        match (worker.status, paused) {
            (WorkerStatus::Running, true) => {
                worker.status = WorkerStatus::Paused;
                self.set_schedulable(w, false);
            }
            (WorkerStatus::Paused, false) => {
                worker.status = WorkerStatus::Running;
                self.set_schedulable(w, true);
                self.retry_no_worker(None);
            }
            _ => {}
        }
    }

    /// Put a worker into the placement orders, or take it out; idempotent.
    pub(crate) fn set_schedulable(&mut self, w: u32, on: bool) {
        let Some(worker) = self.workers[w as usize].as_mut() else {
            return;
        };
        let present = self.by_occupancy.contains(&worker.occ_key);
        if on && !present {
            let key = worker.compute_key(w);
            worker.occ_key = key;
            self.by_occupancy.insert(key);
            worker.in_free_slots = worker.has_free_slot();
            if worker.in_free_slots {
                self.free_slots.insert(key);
            }
        } else if !on && present {
            self.by_occupancy.remove(&worker.occ_key);
            if worker.in_free_slots {
                self.free_slots.remove(&worker.occ_key);
                worker.in_free_slots = false;
            }
        }
    }

    /// A client's `retire_workers`: refused as a whole when a name is unknown or when no
    /// running worker would be left to take the results.
    pub(crate) fn retire_workers(
        &mut self,
        requester: Option<(ClientId, u64)>,
        names: Vec<String>,
    ) {
        let mut slots = Vec::with_capacity(names.len());
        for name in &names {
            let found = self
                .worker_by_name
                .get(name.as_str())
                .or_else(|| self.worker_by_addr.get(name.as_str()));
            match found {
                Some(&w) => slots.push(w),
                None => {
                    return self.answer_retire(requester, Err(format!("no worker named {name}")));
                }
            }
        }
        slots.sort_unstable();
        slots.dedup();
        let remaining = self.worker_by_id.values().any(|&w| {
            !slots.contains(&w)
                && self.workers[w as usize]
                    .as_ref()
                    .is_some_and(|x| x.status == WorkerStatus::Running)
        });
        let busy = slots.iter().any(|&w| {
            let x = self.workers[w as usize].as_ref().expect("live");
            !x.has_what.is_empty() || !x.processing.is_empty()
        });
        if busy && !remaining {
            return self.answer_retire(
                requester,
                Err(format!(
                    "cannot retire {}: no other running worker would be left to take their \
                     results and tasks",
                    names.join(", ")
                )),
            );
        }
        let mut ids = Vec::with_capacity(slots.len());
        let mut retired = Vec::with_capacity(slots.len());
        for &w in &slots {
            let worker = self.workers[w as usize].as_mut().expect("live");
            worker.status = WorkerStatus::Retiring;
            ids.push(worker.id);
            retired.push(worker.name.clone());
            self.set_schedulable(w, false);
        }
        self.retirements.push(Retirement {
            requester,
            workers: ids,
            names: retired,
        });
    }

    /// A worker asks to leave (SIGTERM, end of its lifetime). With no running worker to take
    /// its results it is closed at once: the user asked it to stop, and what it held is
    /// recomputed from lineage when workers return.
    pub(crate) fn retire_requested(&mut self, id: WorkerId) {
        let Some(&w) = self.worker_by_id.get(&id) else {
            return;
        };
        let worker = self.workers[w as usize].as_ref().expect("live");
        if worker.status == WorkerStatus::Retiring {
            return;
        }
        let name = worker.name.clone();
        let others = self.worker_by_id.values().any(|&x| {
            x != w
                && self.workers[x as usize]
                    .as_ref()
                    .is_some_and(|o| o.status == WorkerStatus::Running)
        });
        if others {
            self.retire_workers(None, vec![name]);
        } else {
            self.close_worker(w);
        }
    }

    /// Move retirements forward: copy unique results off retiring workers, close those with
    /// nothing left, answer requesters whose workers are all gone.
    pub(crate) fn progress_retirements(&mut self) {
        if self.retirements.is_empty() {
            return;
        }
        let retiring: Vec<u32> = self
            .retirements
            .iter()
            .flat_map(|r| r.workers.iter())
            .filter_map(|id| self.worker_by_id.get(id).copied())
            .collect();
        let mut requests: FxHashMap<u32, Vec<DepMsg>> = FxHashMap::default();
        for w in retiring {
            let Some(worker) = self.workers[w as usize].as_ref() else {
                continue;
            };
            if worker.status != WorkerStatus::Retiring {
                continue;
            }
            let address = worker.address.clone();
            let mut unique: Vec<u32> = worker
                .has_what
                .iter()
                .copied()
                .filter(|&slot| {
                    self.tasks[slot as usize].who_has.iter().all(|&h| {
                        self.workers[h as usize]
                            .as_ref()
                            .is_none_or(|x| x.status == WorkerStatus::Retiring)
                    })
                })
                .collect();
            if unique.is_empty() && worker.processing.is_empty() {
                self.close_worker(w);
                continue;
            }
            unique.sort_unstable_by_key(|&s| self.tasks[s as usize].id);
            for slot in unique {
                let in_flight = self.replicas.get(&slot).is_some_and(|&t| {
                    self.workers[t as usize]
                        .as_ref()
                        .is_some_and(|x| x.status == WorkerStatus::Running)
                });
                if in_flight {
                    continue;
                }
                let Some(target) = self.replica_target() else {
                    break;
                };
                self.replicas.insert(slot, target);
                let t = &self.tasks[slot as usize];
                requests.entry(target).or_default().push(DepMsg {
                    task: t.id,
                    nbytes: t.nbytes,
                    holders: vec![address.clone()],
                });
            }
        }
        let mut targets: Vec<(u32, Vec<DepMsg>)> = requests.into_iter().collect();
        targets.sort_unstable_by_key(|(w, _)| *w);
        for (target, deps) in targets {
            let id = self.workers[target as usize].as_ref().expect("live").id;
            self.out
                .push_back(Command::ToWorker(id, ToWorker::AcquireReplicas(deps)));
        }
        let mut i = 0;
        while i < self.retirements.len() {
            let r = &self.retirements[i];
            if r.workers
                .iter()
                .any(|id| self.worker_by_id.contains_key(id))
            {
                i += 1;
                continue;
            }
            let r = self.retirements.swap_remove(i);
            self.answer_retire(r.requester, Ok(r.names));
        }
        if self.retirements.is_empty() {
            self.replicas.clear();
        }
    }

    /// The running worker holding the fewest result bytes (ties: the lower slot).
    fn replica_target(&self) -> Option<u32> {
        self.worker_by_id
            .values()
            .copied()
            .filter(|&w| {
                self.workers[w as usize]
                    .as_ref()
                    .is_some_and(|x| x.status == WorkerStatus::Running)
            })
            .min_by_key(|&w| (self.workers[w as usize].as_ref().expect("live").nbytes, w))
    }

    /// Tell a worker to close and forget it now (its connection closing later is ignored).
    fn close_worker(&mut self, w: u32) {
        let id = self.workers[w as usize].as_ref().expect("live").id;
        self.out.push_back(Command::ToWorker(id, ToWorker::Close));
        self.worker_left(id);
        // Counted as retired, not lost (whatever it held was copied, or nobody could take it).
        self.recovery.workers_lost -= 1;
        self.recovery.workers_retired += 1;
    }

    fn answer_retire(
        &mut self,
        requester: Option<(ClientId, u64)>,
        result: Result<Vec<String>, String>,
    ) {
        if let Some((client, request)) = requester {
            self.out.push_back(Command::ToClient(
                client,
                ToClient::WorkersRetired { request, result },
            ));
        }
    }
}
