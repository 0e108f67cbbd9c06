//! `check_invariants`: a full consistency check of the core's state, O(tasks + workers).
//! Tests and the simulator call it after every event.

use crate::core::Core;
use crate::state::{StateCounts, TaskState};
use crate::task::{F_SCATTER, NONE};

macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        let ok: bool = $cond;
        if !ok {
            return Err(format!($($arg)*));
        }
    };
}

impl Core {
    /// Check that every index agrees with every task, worker and client record. `Err` names
    /// the first inconsistency found (or an impossible transition seen earlier).
    pub fn check_invariants(&self) -> Result<(), String> {
        if let Some(e) = self.errors.first() {
            return Err(e.clone());
        }
        ensure!(self.recs.is_empty(), "recommendations left over");
        let mut counts = StateCounts::default();
        let mut live = 0usize;
        let mut owned: rustc_hash::FxHashMap<taskwire_protocol::ClientId, usize> =
            Default::default();
        for (slot, t) in self.tasks.iter().enumerate() {
            let slot = slot as u32;
            let key = &t.key;
            if t.state == TaskState::Forgotten {
                ensure!(
                    t.deps.is_empty() && t.wanted.is_empty(),
                    "vacant slot {slot} holds data"
                );
                continue;
            }
            live += 1;
            *owned.entry(t.owner).or_default() += 1;
            *counts.slot(t.state).expect("live state") += 1;
            ensure!(
                self.by_key.get(&**key) == Some(&slot),
                "'{key}' missing from key index"
            );
            ensure!(
                self.by_id.get(&t.id.0) == Some(&slot),
                "'{key}' missing from id index"
            );
            // Dependents bookkeeping, from the dependencies' side.
            let mut n_dep = 0u32;
            let mut waiters = 0u32;
            let mut not_in_memory = 0u32;
            for r in &t.dependents {
                let d = &self.tasks[r.slot as usize];
                if d.generation != r.generation || d.state == TaskState::Forgotten {
                    continue;
                }
                n_dep += 1;
                if d.state.is_pending() {
                    waiters += 1;
                }
            }
            ensure!(
                n_dep == t.n_dependents,
                "'{key}': n_dependents {} != {n_dep}",
                t.n_dependents
            );
            ensure!(
                waiters == t.waiters,
                "'{key}': waiters {} != {waiters}",
                t.waiters
            );
            for &d in t.deps.iter() {
                let dt = &self.tasks[d as usize];
                ensure!(
                    dt.state != TaskState::Forgotten,
                    "'{key}' depends on a forgotten task"
                );
                let back = dt
                    .dependents
                    .iter()
                    .any(|r| r.slot == slot && r.generation == t.generation);
                ensure!(back, "'{key}' missing from dependents of '{}'", dt.key);
                if dt.state != TaskState::Memory {
                    not_in_memory += 1;
                }
            }
            for c in t.wanted.iter() {
                let ok = self
                    .clients
                    .get(c)
                    .is_some_and(|cl| cl.wants.contains(&slot));
                ensure!(ok, "'{key}' wanted by {c} but the client does not know");
            }
            ensure!(
                t.state == TaskState::Processing || t.processing_on == NONE,
                "'{key}' is {} but has processing_on",
                t.state
            );
            ensure!(
                t.state == TaskState::Memory || t.who_has.is_empty(),
                "'{key}' is {} but has holders",
                t.state
            );
            ensure!(
                t.state == TaskState::Waiting || t.flags & F_SCATTER == 0,
                "'{key}' is {} with a scatter flag",
                t.state
            );
            ensure!(
                (t.state == TaskState::Erred) == t.error.is_some(),
                "'{key}' is {} and error is {:?}",
                t.state,
                t.error
            );
            if t.state.is_pending() || t.state == TaskState::Memory {
                ensure!(t.needed(), "'{key}' is {} but nobody needs it", t.state);
            }
            if matches!(t.state, TaskState::Released | TaskState::Erred) {
                ensure!(
                    !t.forgettable(),
                    "'{key}' is {} and should be forgotten",
                    t.state
                );
            }
            let qkey = t.queue_key(slot);
            ensure!(
                (t.state == TaskState::Queued) == self.queued.contains(&qkey),
                "'{key}' is {} and queue membership disagrees",
                t.state
            );
            let in_nw = self.constraints[t.constraint as usize]
                .no_worker
                .contains(&qkey);
            ensure!(
                (t.state == TaskState::NoWorker) == in_nw,
                "'{key}' is {} and no-worker membership disagrees",
                t.state
            );
            match t.state {
                TaskState::Waiting => {
                    if t.flags & F_SCATTER != 0 {
                        ensure!(t.deps.is_empty(), "scattered '{key}' has dependencies");
                    } else {
                        ensure!(
                            t.waiting_on == not_in_memory && not_in_memory > 0,
                            "'{key}' waits on {} but {not_in_memory} inputs are missing",
                            t.waiting_on
                        );
                    }
                }
                TaskState::Processing | TaskState::Queued | TaskState::NoWorker => {
                    ensure!(
                        not_in_memory == 0,
                        "'{key}' is {} with inputs missing",
                        t.state
                    );
                    if t.state == TaskState::Processing {
                        let w = self
                            .workers
                            .get(t.processing_on as usize)
                            .and_then(|w| w.as_ref());
                        ensure!(
                            w.is_some_and(
                                |w| w.alive && w.processing.get(t.proc_pos as usize) == Some(&slot)
                            ),
                            "'{key}' processing on a worker that does not know it"
                        );
                    }
                }
                TaskState::Memory => {
                    ensure!(!t.who_has.is_empty(), "'{key}' in memory nowhere");
                    for &h in t.who_has.iter() {
                        let w = self.workers.get(h as usize).and_then(|w| w.as_ref());
                        ensure!(
                            w.is_some_and(|w| w.alive && w.has_what.contains(&slot)),
                            "'{key}' held by a worker that does not know it"
                        );
                    }
                }
                _ => {}
            }
        }
        ensure!(
            counts == self.counts,
            "state counts {:?} != {:?}",
            self.counts,
            counts
        );
        let mut by_group = vec![StateCounts::default(); self.prefixes.len()];
        for t in self
            .tasks
            .iter()
            .filter(|t| t.state != TaskState::Forgotten)
        {
            *by_group[t.prefix as usize]
                .slot(t.state)
                .expect("live state") += 1;
        }
        for (p, counted) in self.prefixes.iter().zip(&by_group) {
            ensure!(
                p.counts == *counted,
                "group '{}' counts {:?} != {:?}",
                p.name,
                p.counts,
                counted
            );
        }
        for (id, c) in &self.clients {
            let n = owned.get(id).copied().unwrap_or(0);
            ensure!(
                c.held == n,
                "client {id} is counted as holding {} tasks; it submitted {n} live ones",
                c.held
            );
        }
        ensure!(
            live == self.by_key.len(),
            "key index has {} entries, {live} tasks",
            self.by_key.len()
        );
        ensure!(
            live == self.by_id.len(),
            "id index has {} entries, {live} tasks",
            self.by_id.len()
        );
        let mut nworkers = 0;
        let mut nschedulable = 0;
        for (w, worker) in self.workers.iter().enumerate() {
            let Some(worker) = worker else { continue };
            let w = w as u32;
            nworkers += 1;
            ensure!(worker.alive, "dead worker {} still registered", worker.id);
            ensure!(
                self.worker_by_id.get(&worker.id) == Some(&w),
                "worker id index"
            );
            ensure!(
                self.worker_by_name.get(&worker.name) == Some(&w),
                "worker name index"
            );
            if worker.schedulable() {
                ensure!(
                    worker.occ_key == worker.compute_key(w),
                    "stale occupancy key"
                );
                ensure!(
                    self.by_occupancy.contains(&worker.occ_key),
                    "worker not in occupancy order"
                );
                ensure!(
                    worker.in_free_slots == worker.has_free_slot()
                        && self.free_slots.contains(&worker.occ_key) == worker.in_free_slots,
                    "free-slot index disagrees for {}",
                    worker.id
                );
                nschedulable += 1;
            } else {
                ensure!(
                    !worker.in_free_slots && !self.by_occupancy.contains(&worker.occ_key),
                    "paused or retiring worker {} is still offered to placement",
                    worker.id
                );
            }
            let mut occ = 0u64;
            for (i, &s) in worker.processing.iter().enumerate() {
                let t = &self.tasks[s as usize];
                ensure!(
                    t.state == TaskState::Processing
                        && t.processing_on == w
                        && t.proc_pos as usize == i,
                    "worker {} lists '{}' ({}) as processing",
                    worker.id,
                    t.key,
                    t.state
                );
                occ += t.est_us as u64;
            }
            ensure!(
                occ == worker.occupancy_us,
                "occupancy of {} drifted",
                worker.id
            );
            let mut nbytes = 0u64;
            for &s in &worker.has_what {
                let t = &self.tasks[s as usize];
                ensure!(
                    t.state == TaskState::Memory && t.who_has.contains(&w),
                    "worker {} lists '{}' ({}) as held",
                    worker.id,
                    t.key,
                    t.state
                );
                nbytes += t.nbytes;
            }
            ensure!(
                nbytes == worker.nbytes,
                "held bytes of {} drifted",
                worker.id
            );
            for &(r, total, used) in &worker.res {
                let mut sum = 0.0;
                for &s in &worker.processing {
                    let c = &self.constraints[self.tasks[s as usize].constraint as usize];
                    sum += c
                        .resources
                        .iter()
                        .filter(|x| x.0 == r)
                        .map(|x| x.1)
                        .sum::<f64>();
                }
                ensure!(
                    (sum - used).abs() < 1e-6,
                    "resource use of {} drifted",
                    worker.id
                );
                ensure!(used <= total + 1e-6, "worker {} over-committed", worker.id);
            }
        }
        ensure!(nworkers == self.worker_by_id.len(), "worker id index size");
        ensure!(
            nschedulable == self.by_occupancy.len(),
            "occupancy order size"
        );
        ensure!(
            self.queued.len() == self.counts.queued,
            "{} tasks in the queue, {} queued",
            self.queued.len(),
            self.counts.queued
        );
        if !self.queued.is_empty() {
            ensure!(
                self.free_slots.is_empty(),
                "tasks queued while a worker has free slots"
            );
        }
        for (&slot, s) in &self.steals {
            let t = &self.tasks[slot as usize];
            ensure!(
                t.state == TaskState::Processing && t.processing_on == s.victim,
                "steal of '{}' from a worker not running it",
                t.key
            );
        }
        for (c, client) in &self.clients {
            for &slot in &client.wants {
                let t = &self.tasks[slot as usize];
                ensure!(
                    t.wanted.contains(c),
                    "client {c} wants a task that does not know"
                );
            }
        }
        Ok(())
    }
}
