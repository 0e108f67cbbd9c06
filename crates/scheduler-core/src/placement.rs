//! Where ready tasks go: worker choice (locality, occupancy, resources, restrictions), the
//! root-task queue, `no-worker` groups and the per-worker occupancy order. Nothing here scans
//! all workers per task: candidates come from the inputs' holders, the head of the occupancy
//! order, the named workers of a restriction, or the (short) list offering a resource.

/// Work each worker thread may hold in short root tasks (see `adapt_root_slots`).
const ROOT_BUDGET_US: f64 = 20_000.0;
/// Result bytes each worker thread may hold in root tasks it has not finished.
const ROOT_BUDGET_BYTES: f64 = 64.0 * 1024.0 * 1024.0;
/// Upper bound on root tasks per thread, whatever the estimates say.
const MAX_ROOT_PER_THREAD: u64 = 4096;

use taskwire_protocol::{ComputeTaskMsg, DepMsg, TaskKindMsg};

use crate::core::Core;
use crate::state::TaskState;
use crate::task::NONE;

/// Dask's `scheduler.bandwidth`: 100 MB/s, in bytes per microsecond.
const BANDWIDTH_BYTES_PER_US: u64 = 100;

/// Resource lists longer than this are not scanned; the occupancy order is walked instead.
const SCAN_LIMIT: usize = 64;

impl Core {
    /// Re-sort a worker after its processing set or occupancy changed.
    pub(crate) fn reindex_worker(&mut self, w: u32) {
        let Some(worker) = self.workers[w as usize].as_mut() else {
            return;
        };
        if !worker.schedulable() {
            return;
        }
        let new = worker.compute_key(w);
        let old = worker.occ_key;
        if new != old {
            self.by_occupancy.update(new);
        }
        let free = worker.has_free_slot();
        match (worker.in_free_slots, free) {
            (true, true) if new != old => self.free_slots.update(new),
            (true, false) => self.free_slots.remove(&old),
            (false, true) => self.free_slots.insert(new),
            _ => {}
        }
        worker.in_free_slots = free;
        worker.occ_key = new;
    }

    /// Assign to `w` and queue the `Compute` message.
    pub(crate) fn add_to_processing(&mut self, slot: u32, w: u32) {
        let t = &self.tasks[slot as usize];
        let est = self.prefixes[t.prefix as usize].estimate_us();
        let c = &self.constraints[t.constraint as usize];
        let deps = t
            .deps
            .iter()
            .map(|&d| {
                let dt = &self.tasks[d as usize];
                let holders = if dt.who_has.contains(&w) {
                    Vec::new()
                } else {
                    dt.who_has
                        .iter()
                        .filter_map(|&h| self.workers[h as usize].as_ref())
                        .map(|x| x.address.clone())
                        .collect()
                };
                DepMsg {
                    task: dt.id,
                    nbytes: dt.nbytes,
                    holders,
                }
            })
            .collect();
        let msg = ComputeTaskMsg {
            task: t.id,
            key: String::from(&*t.key),
            kind: TaskKindMsg::clone(t.kind.as_deref().expect("computed tasks have a kind")),
            deps,
            resources: c.resources_msg.clone(),
            priority: t.priority,
        };
        let worker = self.workers[w as usize].as_mut().expect("live worker");
        let pos = worker.processing.len() as u32;
        worker.processing.push(slot);
        worker.occupancy_us += est;
        worker.consume(&c.resources, 1.0);
        worker.out_compute.push(msg);
        let t = &mut self.tasks[slot as usize];
        t.processing_on = w;
        t.proc_pos = pos;
        t.est_us = est.min(u32::MAX as u64) as u32;
        self.assign_seq = self.assign_seq.wrapping_add(1);
        t.assigned_seq = self.assign_seq;
        t.waiting_on = 0;
        Self::mark_worker_dirty(&mut self.workers, &mut self.dirty_workers, w);
        self.reindex_worker(w);
    }

    /// Undo [`add_to_processing`](Self::add_to_processing); `free` tells the worker to drop it.
    pub(crate) fn remove_from_processing(&mut self, slot: u32, free: bool) {
        let t = &mut self.tasks[slot as usize];
        let w = t.processing_on;
        t.processing_on = NONE;
        let (est, c, id, pos) = (t.est_us as u64, t.constraint as usize, t.id, t.proc_pos);
        if !self.steals.is_empty()
            && let Some(s) = self.steals.remove(&slot)
            && let Some(thief) = self.workers[s.thief as usize].as_mut()
        {
            thief.steals_incoming -= 1;
        }
        let Some(worker) = self.workers[w as usize].as_mut() else {
            return;
        };
        debug_assert_eq!(worker.processing[pos as usize], slot);
        worker.processing.swap_remove(pos as usize);
        if let Some(&moved) = worker.processing.get(pos as usize) {
            self.tasks[moved as usize].proc_pos = pos;
        }
        worker.occupancy_us -= est;
        let need = &self.constraints[c].resources;
        if !need.is_empty() {
            worker.consume(need, -1.0);
            self.res_freed.push(w);
        }
        if free {
            self.send_free(w, id);
        }
        self.reindex_worker(w);
    }

    /// Move a stolen task to the thief (or anywhere, if the thief cannot take it now).
    pub(crate) fn move_stolen(&mut self, slot: u32, thief: u32) {
        self.remove_from_processing(slot, false);
        if self.can_run_now(slot, thief) {
            self.set_state(slot, TaskState::Processing);
            self.add_to_processing(slot, thief);
        } else {
            self.set_state(slot, TaskState::Waiting);
            self.rec(slot, TaskState::Processing);
        }
    }

    /// `w` is alive, allowed by the task's restrictions and has its resources free now.
    pub(crate) fn can_run_now(&self, slot: u32, w: u32) -> bool {
        let Some(worker) = self.workers[w as usize].as_ref() else {
            return false;
        };
        let c = &self.constraints[self.tasks[slot as usize].constraint as usize];
        worker.schedulable() && worker.matches(&c.workers) && worker.fits(&c.resources)
    }

    /// Pick a worker for a ready task, or `None` when no worker can run it now.
    pub(crate) fn decide_worker(&mut self, slot: u32) -> Option<u32> {
        if self.worker_by_id.is_empty() {
            return None;
        }
        // Bytes of the inputs each holder has.
        let mut touched = std::mem::take(&mut self.scratch_touched);
        touched.clear();
        let mut total = 0u64;
        let t = &self.tasks[slot as usize];
        for &d in t.deps.iter() {
            let dt = &self.tasks[d as usize];
            total += dt.nbytes;
            for &h in dt.who_has.iter() {
                let h = h as usize;
                if !self.scratch_seen[h] {
                    self.scratch_seen[h] = true;
                    touched.push(h as u32);
                }
                self.scratch_bytes[h] += dt.nbytes;
            }
        }
        let c = &self.constraints[t.constraint as usize];
        let mut best: Option<((u64, u64, u32), u32)> = None;
        let consider = |w: u32, best: &mut Option<((u64, u64, u32), u32)>| {
            let Some(worker) = self.workers[w as usize].as_ref() else {
                return;
            };
            if !worker.schedulable() {
                return;
            }
            let local = self.scratch_bytes[w as usize];
            let comm = total.saturating_sub(local) / BANDWIDTH_BYTES_PER_US;
            let (occ, load, _) = worker.occ_key;
            let score = (occ + comm, load, w);
            if best.is_none_or(|(b, _)| score < b) {
                *best = Some((score, w));
            }
        };
        if t.constraint == 0 {
            for &w in &touched {
                consider(w, &mut best);
            }
            if let Some(&(_, _, w)) = self.by_occupancy.first() {
                consider(w, &mut best);
            }
        } else if !c.workers.is_empty() {
            for name in &c.workers {
                let w = self
                    .worker_by_name
                    .get(name.as_str())
                    .or_else(|| self.worker_by_addr.get(name.as_str()));
                if let Some(&w) = w
                    && self.workers[w as usize]
                        .as_ref()
                        .is_some_and(|x| x.fits(&c.resources))
                {
                    consider(w, &mut best);
                }
            }
        } else {
            let offering = &self.res_workers[c.resources[0].0 as usize];
            if offering.len() <= SCAN_LIMIT {
                for &w in offering {
                    if self.workers[w as usize]
                        .as_ref()
                        .is_some_and(|x| x.fits(&c.resources))
                    {
                        consider(w, &mut best);
                    }
                }
            } else {
                for &w in &touched {
                    if self.workers[w as usize]
                        .as_ref()
                        .is_some_and(|x| x.fits(&c.resources))
                    {
                        consider(w, &mut best);
                    }
                }
                let first = self.by_occupancy.min_where(|&(_, _, w)| {
                    self.workers[w as usize]
                        .as_ref()
                        .is_some_and(|x| x.fits(&c.resources))
                });
                if let Some((_, _, w)) = first {
                    consider(w, &mut best);
                }
            }
        }
        for &w in &touched {
            self.scratch_seen[w as usize] = false;
            self.scratch_bytes[w as usize] = 0;
        }
        self.scratch_touched = touched;
        best.map(|(_, w)| w)
    }

    /// Root-task slots of a worker with `nthreads` threads: Dask's `ceil(saturation *
    /// nthreads)`, raised to [`Core::root_per_thread`] per thread while the queued tasks are
    /// known to be short and small.
    pub(crate) fn root_slots(&self, nthreads: u32) -> u64 {
        if !self.config.worker_saturation.is_finite() {
            return u64::MAX;
        }
        let dask = ((self.config.worker_saturation * nthreads as f64).ceil() as u64).max(1);
        dask.max(nthreads as u64 * self.root_per_thread)
    }

    /// Dask's saturation counts tasks, so a worker holds about one root task per thread and
    /// every tiny task costs a full scheduler round trip: a 2-thread cluster then runs no-op
    /// tasks at a fraction of its speed. Once the prefix at the head of the queue has measured
    /// durations and result sizes, let each thread hold up to [`ROOT_BUDGET_US`] of its work
    /// and [`ROOT_BUDGET_BYTES`] of its results; unknown or slow tasks keep Dask's behaviour,
    /// which is what protects memory from a flood of data-loading root tasks.
    pub(crate) fn adapt_root_slots(&mut self) {
        if !self.config.worker_saturation.is_finite() {
            return;
        }
        let Some(&q) = self.queued.first() else {
            return;
        };
        let p = &self.prefixes[self.tasks[q.2 as usize].prefix as usize];
        let per_thread = match (p.duration_us, p.nbytes) {
            (Some(d), Some(b)) => {
                let by_time = ROOT_BUDGET_US / d.max(1.0);
                let by_bytes = ROOT_BUDGET_BYTES / b.max(1.0);
                (by_time.min(by_bytes) as u64).min(MAX_ROOT_PER_THREAD)
            }
            _ => 0,
        };
        let cur = self.root_per_thread;
        // Resize only on a real change, so a jittery estimate does not revisit every worker.
        let similar = cur > 0 && per_thread > cur / 2 && per_thread < cur.saturating_mul(2);
        if per_thread == cur || similar {
            return;
        }
        self.root_per_thread = per_thread;
        for w in 0..self.workers.len() as u32 {
            let Some(nthreads) = self.workers[w as usize]
                .as_ref()
                .filter(|x| x.alive)
                .map(|x| x.nthreads)
            else {
                continue;
            };
            let slots = self.root_slots(nthreads);
            if let Some(worker) = self.workers[w as usize].as_mut() {
                worker.slots = slots;
            }
            self.reindex_worker(w);
        }
    }

    /// Give queued root tasks to workers with free slots, highest priority first.
    pub(crate) fn drain_queue(&mut self) -> bool {
        let mut moved = false;
        while let (Some(&q), Some(&(_, _, w))) = (self.queued.first(), self.free_slots.first()) {
            self.queued.pop_first();
            let slot = q.2;
            self.set_state(slot, TaskState::Processing);
            self.add_to_processing(slot, w);
            moved = true;
        }
        moved
    }

    /// Retry `no-worker` tasks: all groups when a worker joined (`only == None`), or the
    /// groups needing resources on the one worker that just freed some.
    pub(crate) fn retry_no_worker(&mut self, only: Option<u32>) -> bool {
        let mut moved = false;
        let queuing = self.config.worker_saturation.is_finite();
        for c in 0..self.constraints.len() {
            if self.constraints[c].no_worker.is_empty() {
                continue;
            }
            if only.is_some() && self.constraints[c].resources.is_empty() {
                continue;
            }
            while let Some(&q) = self.constraints[c].no_worker.first() {
                let slot = q.2;
                if queuing && self.tasks[slot as usize].rootish() {
                    self.constraints[c].no_worker.pop_first();
                    self.queued.insert(q);
                    self.set_state(slot, TaskState::Queued);
                    moved = true;
                    continue;
                }
                let target = match only {
                    Some(w) => self.can_run_now(slot, w).then_some(w),
                    None => self.decide_worker(slot),
                };
                let Some(w) = target else { break };
                self.constraints[c].no_worker.pop_first();
                self.set_state(slot, TaskState::Processing);
                self.add_to_processing(slot, w);
                moved = true;
            }
        }
        moved
    }
}
