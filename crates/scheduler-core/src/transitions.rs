//! The transition table. Every state change goes through [`Core::set_state`], which checks the
//! `(from, to)` pair against Dask's table and logs it; handlers call the small transition
//! functions below directly, or push recommendations that [`Core::settle`] applies until none
//! are left (Dask's `transitions(recommendations)` loop).

use taskwire_protocol::{ClientId, ErrorKindMsg, TaskErrorMsg};

use crate::core::Core;
use crate::state::TaskState;
use crate::task::{F_SCATTER, NONE};

use TaskState::*;

/// Pairs that exist. Anything else is a bug, reported with its stimulus.
fn allowed(from: TaskState, to: TaskState) -> bool {
    matches!(
        (from, to),
        (Released, Waiting | Erred | Forgotten)
            | (
                Waiting,
                Processing | Queued | NoWorker | Memory | Released | Erred
            )
            | (Queued, Processing | NoWorker | Released | Erred | Waiting)
            | (NoWorker, Processing | Queued | Released | Erred | Waiting)
            | (Processing, Memory | Released | Erred | Waiting | Processing)
            | (Memory, Released)
            | (Erred, Released)
    )
}

impl Core {
    /// Apply recommendations, hand freed slots to queued tasks and freed resources to
    /// `no-worker` tasks, until nothing moves.
    pub(crate) fn settle(&mut self) {
        loop {
            while let Some((slot, generation, to)) = self.recs.pop() {
                self.apply_rec(slot, generation, to);
            }
            let mut moved = false;
            if !self.res_freed.is_empty() {
                let mut freed = std::mem::take(&mut self.res_freed);
                freed.sort_unstable();
                freed.dedup();
                for w in freed {
                    if self.workers[w as usize].as_ref().is_some_and(|x| x.alive) {
                        moved |= self.retry_no_worker(Some(w));
                    }
                }
            }
            moved |= self.drain_queue();
            if !moved && self.recs.is_empty() {
                break;
            }
        }
    }

    /// Recommendations are intents checked against the task's state now: a stale one (the
    /// task moved on since) is dropped; a nonsensical one is an error.
    fn apply_rec(&mut self, slot: u32, generation: u32, to: TaskState) {
        let t = &self.tasks[slot as usize];
        if t.generation != generation || t.state == Forgotten || t.state == to {
            return;
        }
        let from = t.state;
        match to {
            Released => {
                if t.needed() {
                    return;
                }
                match from {
                    Released => {
                        if t.forgettable() {
                            self.released_forgotten(slot);
                        }
                    }
                    Memory => self.memory_released(slot),
                    Erred => self.erred_released(slot),
                    _ => self.pending_released(slot),
                }
            }
            Forgotten => {
                if t.forgettable() {
                    if from == Erred {
                        self.erred_released(slot);
                    } else {
                        self.released_forgotten(slot);
                    }
                }
            }
            Waiting => {
                if from == Released && t.needed() {
                    self.released_waiting(slot);
                }
            }
            Processing => {
                if from == Waiting && t.waiting_on == 0 && t.flags & F_SCATTER == 0 {
                    self.waiting_processing(slot);
                }
            }
            Erred => {
                if (from == Released || from.is_pending()) && t.error.is_some() {
                    self.transition_to_erred(slot);
                }
            }
            _ => {
                let msg = format!(
                    "impossible recommendation {} -> {} for '{}' ({})",
                    from, to, t.key, self.stimulus
                );
                self.fail(msg);
            }
        }
    }

    /// The one place a task's state changes: checks the pair, keeps counts, logs.
    pub(crate) fn set_state(&mut self, slot: u32, to: TaskState) {
        let t = &mut self.tasks[slot as usize];
        let from = t.state;
        t.state = to;
        self.counts.shift(from, to);
        self.prefixes[t.prefix as usize].counts.shift(from, to);
        if self.log.enabled() {
            let at = self.now.expect("transitions happen inside handle_*");
            self.log
                .push(slot, t.generation, from, to, self.stimulus, at);
        }
        if !allowed(from, to) {
            let msg = format!(
                "impossible transition {} -> {} for '{}' ({})",
                from, to, self.tasks[slot as usize].key, self.stimulus
            );
            self.fail(msg);
        }
    }

    fn deps_waiters_inc(&mut self, slot: u32) {
        let deps = std::mem::take(&mut self.tasks[slot as usize].deps);
        for &d in deps.iter() {
            self.tasks[d as usize].waiters += 1;
        }
        self.tasks[slot as usize].deps = deps;
    }

    fn deps_waiters_dec(&mut self, slot: u32) {
        let deps = std::mem::take(&mut self.tasks[slot as usize].deps);
        for &d in deps.iter() {
            let dt = &mut self.tasks[d as usize];
            dt.waiters -= 1;
            if !dt.needed() {
                self.rec(d, Released);
            }
        }
        self.tasks[slot as usize].deps = deps;
    }

    /// Count the dependencies not in memory, asking for released ones to be recomputed; err
    /// at once if one has erred; recommend `processing` when all are there.
    fn count_waiting(&mut self, slot: u32) {
        let deps = std::mem::take(&mut self.tasks[slot as usize].deps);
        let mut n = 0;
        let mut erred = None;
        for &d in deps.iter() {
            match self.tasks[d as usize].state {
                Memory => {}
                Erred => erred = erred.or(Some(d)),
                Released => {
                    n += 1;
                    self.rec(d, Waiting);
                }
                _ => n += 1,
            }
        }
        self.tasks[slot as usize].deps = deps;
        self.tasks[slot as usize].waiting_on = n;
        if let Some(d) = erred {
            let err = self.dependency_error(d);
            let t = &mut self.tasks[slot as usize];
            if t.error.is_none() {
                t.error = Some(Box::new(err));
            }
            self.rec(slot, Erred);
        } else if n == 0 {
            self.rec(slot, Processing);
        }
    }

    /// The error a dependent of the erred task `slot` gets.
    fn dependency_error(&self, slot: u32) -> TaskErrorMsg {
        let t = &self.tasks[slot as usize];
        match t.error.as_deref() {
            Some(
                e @ TaskErrorMsg {
                    kind: ErrorKindMsg::Dependency { .. },
                    ..
                },
            ) => e.clone(),
            Some(e) => TaskErrorMsg {
                kind: ErrorKindMsg::Dependency {
                    ancestor: String::from(&*t.key),
                },
                message: format!("dependency '{}' failed: {}", t.key, e.message),
            },
            None => TaskErrorMsg {
                kind: ErrorKindMsg::Dependency {
                    ancestor: String::from(&*t.key),
                },
                message: format!("dependency '{}' failed", t.key),
            },
        }
    }

    /// released -> waiting: the task is needed (again).
    pub(crate) fn released_waiting(&mut self, slot: u32) {
        let t = &mut self.tasks[slot as usize];
        if t.kind.is_none() {
            t.error = Some(Box::new(TaskErrorMsg {
                kind: ErrorKindMsg::MissingInput,
                message: format!(
                    "the data of '{}' was lost with its workers and it has no lineage \
                     (scattered data) to recompute it from",
                    t.key
                ),
            }));
            self.transition_to_erred(slot);
            return;
        }
        self.set_state(slot, Waiting);
        self.deps_waiters_inc(slot);
        self.count_waiting(slot);
    }

    /// waiting -> processing, or queued / no-worker when it cannot go to a worker now.
    pub(crate) fn waiting_processing(&mut self, slot: u32) {
        let t = &self.tasks[slot as usize];
        if self.config.worker_saturation.is_finite() && t.rootish() {
            let key = t.queue_key(slot);
            self.queued.insert(key);
            self.set_state(slot, Queued);
            return;
        }
        match self.decide_worker(slot) {
            Some(w) => {
                self.set_state(slot, Processing);
                self.add_to_processing(slot, w);
            }
            None => {
                let t = &self.tasks[slot as usize];
                let key = t.queue_key(slot);
                let c = t.constraint as usize;
                self.constraints[c].no_worker.insert(key);
                self.set_state(slot, NoWorker);
            }
        }
    }

    /// Take a ready task out of the queue or no-worker set it is in.
    pub(crate) fn leave_ready_sets(&mut self, slot: u32) {
        let t = &self.tasks[slot as usize];
        let key = t.queue_key(slot);
        match t.state {
            Queued => {
                self.queued.remove(&key);
            }
            NoWorker => {
                self.constraints[t.constraint as usize]
                    .no_worker
                    .remove(&key);
            }
            _ => {}
        }
    }

    /// A pending task goes back to waiting (worker lost, retry, lost input, steal answered
    /// without a thief): it stays needed, so its dependencies stay needed too.
    pub(crate) fn reschedule(&mut self, slot: u32, free: bool) {
        match self.tasks[slot as usize].state {
            Processing => self.remove_from_processing(slot, free),
            Queued | NoWorker => self.leave_ready_sets(slot),
            _ => {}
        }
        if self.tasks[slot as usize].state != Waiting {
            self.set_state(slot, Waiting);
        }
        self.count_waiting(slot);
    }

    /// waiting/no-worker/queued/processing -> released: nobody needs it any more.
    pub(crate) fn pending_released(&mut self, slot: u32) {
        match self.tasks[slot as usize].state {
            Processing => self.remove_from_processing(slot, true),
            Queued | NoWorker => self.leave_ready_sets(slot),
            _ => {}
        }
        let t = &mut self.tasks[slot as usize];
        t.flags &= !F_SCATTER;
        t.waiting_on = 0;
        self.set_state(slot, Released);
        self.deps_waiters_dec(slot);
        if self.tasks[slot as usize].forgettable() {
            self.rec(slot, Forgotten);
        }
    }

    /// released/pending -> erred; `error` is set. Pending dependents err with it.
    pub(crate) fn transition_to_erred(&mut self, slot: u32) {
        let from = self.tasks[slot as usize].state;
        match from {
            Processing => {
                let cancelled = matches!(
                    self.tasks[slot as usize].error.as_deref(),
                    Some(TaskErrorMsg {
                        kind: ErrorKindMsg::Cancelled,
                        ..
                    })
                );
                self.remove_from_processing(slot, cancelled);
            }
            Queued | NoWorker => self.leave_ready_sets(slot),
            _ => {}
        }
        let t = &mut self.tasks[slot as usize];
        t.flags &= !F_SCATTER;
        t.waiting_on = 0;
        self.set_state(slot, Erred);
        if from.is_pending() {
            self.deps_waiters_dec(slot);
        }
        let err = self.dependency_error(slot);
        let dependents = std::mem::take(&mut self.tasks[slot as usize].dependents);
        for r in &dependents {
            let d = &mut self.tasks[r.slot as usize];
            if d.generation == r.generation && d.state.is_pending() {
                if d.error.is_none() {
                    d.error = Some(Box::new(err.clone()));
                }
                self.recs.push((r.slot, r.generation, Erred));
            }
        }
        self.tasks[slot as usize].dependents = dependents;
        self.notify_erred(slot);
        if self.tasks[slot as usize].forgettable() {
            self.rec(slot, Forgotten);
        }
    }

    /// memory -> released: drop (or, when its holders are already gone, forget about) the
    /// data. Dependents that counted on it wait again; recompute it if it is still needed.
    pub(crate) fn memory_released(&mut self, slot: u32) {
        let holders = std::mem::take(&mut self.tasks[slot as usize].who_has);
        for &h in holders.iter() {
            self.detach_holder(slot, h, true);
        }
        self.set_state(slot, Released);
        let dependents = std::mem::take(&mut self.tasks[slot as usize].dependents);
        // Two passes: a task listing this one twice is counted once per listing, and one
        // rescheduled by the second pass has been counted afresh.
        for r in &dependents {
            let d = &mut self.tasks[r.slot as usize];
            if d.generation == r.generation && d.state == Waiting {
                d.waiting_on += 1;
            }
        }
        for r in &dependents {
            let d = &self.tasks[r.slot as usize];
            if d.generation == r.generation && matches!(d.state, Processing | Queued | NoWorker) {
                self.reschedule(r.slot, true);
            }
        }
        self.tasks[slot as usize].dependents = dependents;
        let t = &self.tasks[slot as usize];
        if t.needed() {
            self.rec(slot, Waiting);
        } else if t.forgettable() {
            self.rec(slot, Forgotten);
        }
    }

    /// erred -> released (on the way to forgotten, or to a fresh try).
    pub(crate) fn erred_released(&mut self, slot: u32) {
        self.tasks[slot as usize].error = None;
        self.set_state(slot, Released);
        let t = &self.tasks[slot as usize];
        if t.needed() {
            self.rec(slot, Waiting);
        } else if t.forgettable() {
            self.released_forgotten(slot);
        }
    }

    /// released -> forgotten: drop every trace of the task and let its dependencies go.
    pub(crate) fn released_forgotten(&mut self, slot: u32) {
        self.set_state(slot, Forgotten);
        let t = &mut self.tasks[slot as usize];
        let key = std::mem::replace(&mut t.key, self.empty_key.clone());
        let (id, prefix, generation) = (t.id, t.prefix, t.generation);
        let deps = std::mem::take(&mut t.deps);
        t.generation = t.generation.wrapping_add(1);
        t.kind = None;
        t.dependents = Vec::new();
        t.who_has.clear();
        t.wanted.clear();
        let owner = std::mem::replace(&mut t.owner, ClientId(0));
        t.error = None;
        t.flags = 0;
        t.waiters = 0;
        t.n_dependents = 0;
        t.waiting_on = 0;
        t.suspicious = 0;
        t.processing_on = NONE;
        t.constraint = 0;
        if let Some(c) = self.clients.get_mut(&owner) {
            c.held -= 1;
        }
        self.by_key.remove(&key);
        self.by_id.remove(&id.0);
        self.log.forget(slot, generation, key);
        self.release_prefix(prefix);
        for &d in deps.iter() {
            let dt = &mut self.tasks[d as usize];
            dt.n_dependents -= 1;
            // Drop stale references now and then so long-lived tasks do not accumulate them.
            if dt.dependents.len() > 2 * dt.n_dependents as usize + 8 {
                let mut list = std::mem::take(&mut self.tasks[d as usize].dependents);
                let tasks = &self.tasks;
                list.retain(|r| {
                    r.slot != slot
                        && tasks
                            .get(r.slot as usize)
                            .is_some_and(|x| x.generation == r.generation)
                });
                self.tasks[d as usize].dependents = list;
            }
            if self.tasks[d as usize].forgettable() {
                self.rec(d, Forgotten);
            }
        }
        self.free_tasks.push(slot);
    }

    /// processing -> memory.
    pub(crate) fn finish_task(
        &mut self,
        slot: u32,
        w: u32,
        nbytes: u64,
        duration_us: u64,
        remove: bool,
    ) {
        if remove {
            self.remove_from_processing(slot, false);
        }
        let p = &mut self.prefixes[self.tasks[slot as usize].prefix as usize];
        let d = duration_us as f64;
        p.duration_us = Some(match p.duration_us {
            None => d,
            Some(old) => 0.5 * old + 0.5 * d,
        });
        let b = nbytes as f64;
        p.nbytes = Some(match p.nbytes {
            None => b,
            Some(old) => 0.5 * old + 0.5 * b,
        });
        self.deps_waiters_dec(slot);
        self.enter_memory(slot, w, nbytes);
    }

    /// (processing | scattered waiting) -> memory on `w`.
    pub(crate) fn enter_memory(&mut self, slot: u32, w: u32, nbytes: u64) {
        self.set_state(slot, Memory);
        self.tasks[slot as usize].nbytes = nbytes;
        self.add_holder(slot, w);
        let dependents = std::mem::take(&mut self.tasks[slot as usize].dependents);
        for r in &dependents {
            let d = &mut self.tasks[r.slot as usize];
            if d.generation == r.generation && d.state == Waiting {
                d.waiting_on -= 1;
                if d.waiting_on == 0 {
                    self.recs.push((r.slot, r.generation, Processing));
                }
            }
        }
        self.tasks[slot as usize].dependents = dependents;
        self.notify_memory(slot);
        if !self.tasks[slot as usize].needed() {
            self.rec(slot, Released);
        }
    }
}
