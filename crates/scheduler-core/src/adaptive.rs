//! Adaptive scaling, the scheduler's half (Dask's `Scheduler.adaptive_target` and
//! `workers_to_close`): how many workers the work the scheduler holds calls for, and which
//! workers are cheapest to let go. A cluster manager's adaptive loop asks for this once a
//! second and starts or retires workers; the core only recommends.
//!
//! The target is Dask's: the expected run time of the work on the workers (each processing
//! task at its group's measured mean duration, 500 ms while none has finished) plus that of
//! the tasks waiting for a worker (`queued` and `no-worker`, from a sample of 100 scaled to
//! their number), divided by the target duration, is the number of threads that would finish
//! it in that time. It is bounded by the number of tasks that could run at all (a few long
//! tasks do not ask for many workers), turned into workers by the mean threads per worker,
//! and doubled-up when the workers' results fill more than 60 % of their memory limits.
//! Below the current count, the recommendation only drops the workers that are idle and whose
//! departure leaves at least twice the stored bytes in memory limits, so a busy cluster is
//! never asked to shrink.

use std::time::Duration;

use taskwire_protocol::{AdaptiveTargetMsg, ClientId, ToClient};

use crate::core::Core;
use crate::event::Command;
use crate::worker::WorkerStatus;

/// Tasks waiting for a worker whose durations are summed one by one; the rest are
/// extrapolated from them (Dask samples 100 too).
const SAMPLE: usize = 100;

/// Above this fraction of the workers' memory limits held in results, ask for twice the
/// workers (Dask's adaptive memory rule).
const MEMORY_HIGH: f64 = 0.6;

/// What closing one worker would cost, for ordering candidates.
struct Candidate {
    slot: u32,
    busy: bool,
    /// Bytes of results no other (non-retiring) worker holds: what retiring it must move.
    unique: u64,
    nbytes: u64,
    memory_limit: u64,
}

impl Core {
    /// Slots of the workers adaptive scaling counts: registered and not retiring.
    fn adaptive_slots(&self) -> Vec<u32> {
        let mut slots: Vec<u32> = self
            .worker_by_id
            .values()
            .copied()
            .filter(|&w| {
                self.workers[w as usize]
                    .as_ref()
                    .is_some_and(|x| x.status != WorkerStatus::Retiring)
            })
            .collect();
        slots.sort_unstable();
        slots
    }

    /// The number of workers the current work calls for, so that the queued and running work
    /// would finish in about `target_duration` (Dask's `adaptive_target`; its default target
    /// duration is 5 s). See the module docs for the rule. Not clamped to any minimum or
    /// maximum: the caller's cluster manager does that.
    pub fn adaptive_target(&self, target_duration: Duration) -> usize {
        let slots = self.adaptive_slots();
        let target_us = target_duration.as_micros().max(1) as f64;

        // CPU: the expected run time of everything assigned to a worker...
        let mut occupancy_us = 0u64;
        let mut processing = 0usize;
        for &w in self.worker_by_id.values() {
            let Some(worker) = self.workers[w as usize].as_ref() else {
                continue;
            };
            processing += worker.processing.len();
            for &t in &worker.processing {
                let prefix = self.tasks[t as usize].prefix;
                occupancy_us += self.prefixes[prefix as usize].estimate_us();
            }
        }
        // ... and of the tasks waiting for one.
        let waiting = self
            .queued
            .iter()
            .chain(self.constraints.iter().flat_map(|c| c.no_worker.iter()));
        let mut queued_us = 0u64;
        for &(_, _, slot) in waiting.take(SAMPLE) {
            let prefix = self.tasks[slot as usize].prefix;
            queued_us += self.prefixes[prefix as usize].estimate_us();
        }
        let ready = self.counts.queued + self.counts.no_worker;
        let mut queued_us = queued_us as f64;
        if ready > SAMPLE {
            queued_us *= ready as f64 / SAMPLE as f64;
        }
        let mut cpu = ((occupancy_us as f64 + queued_us) / target_us).ceil() as usize;
        // A few long tasks do not ask for more threads than there are tasks to run.
        cpu = cpu.min(ready + processing);
        if !slots.is_empty() {
            let nthreads: u64 = slots
                .iter()
                .map(|&w| self.workers[w as usize].as_ref().expect("live").nthreads as u64)
                .sum();
            cpu = (cpu as f64 / nthreads.max(1) as f64 * slots.len() as f64).ceil() as usize;
        }
        if ready > 0 && slots.is_empty() {
            cpu = cpu.max(1);
        }

        // Memory: results filling the workers call for more of them.
        let (mut limit, mut used) = (0u64, 0u64);
        for &w in &slots {
            let worker = self.workers[w as usize].as_ref().expect("live");
            limit += worker.memory_limit;
            used += worker.nbytes;
        }
        let memory = if limit > 0 && used as f64 > MEMORY_HIGH * limit as f64 {
            2 * slots.len()
        } else {
            0
        };

        let target = cpu.max(memory);
        if target >= slots.len() {
            target
        } else {
            slots.len() - self.idle_workers_to_close(&slots).len()
        }
    }

    /// Which workers to retire to get down to `target` (Dask's `workers_to_close(target=)`):
    /// by name, idle ones first, then those holding the fewest bytes no other worker holds
    /// (what retiring them must move), then the fewest bytes in all. Empty when `target` is
    /// not below the number of workers (retiring ones not counted).
    pub fn workers_to_close(&self, target: usize) -> Vec<String> {
        let slots = self.adaptive_slots();
        let n = slots.len().saturating_sub(target);
        let mut candidates = self.close_candidates(&slots);
        candidates.truncate(n);
        candidates
            .into_iter()
            .map(|c| {
                self.workers[c.slot as usize]
                    .as_ref()
                    .expect("live")
                    .name
                    .clone()
            })
            .collect()
    }

    /// The workers that can go without slowing anything down: idle, cheapest first, while
    /// the memory limits of those left hold at least twice the stored bytes (Dask's
    /// `workers_to_close()` with `memory_ratio=2`). A worker without a memory limit keeps the
    /// limits unbounded.
    fn idle_workers_to_close(&self, slots: &[u32]) -> Vec<u32> {
        let candidates = self.close_candidates(slots);
        let total: u64 = candidates.iter().map(|c| c.nbytes).sum();
        let mut unlimited = candidates.iter().filter(|c| c.memory_limit == 0).count();
        let mut limit: u64 = candidates.iter().map(|c| c.memory_limit).sum();
        let mut close = Vec::new();
        for c in candidates {
            if c.busy {
                break;
            }
            let (l, u) = if c.memory_limit == 0 {
                (limit, unlimited - 1)
            } else {
                (limit - c.memory_limit, unlimited)
            };
            if u == 0 && (l as f64) < 2.0 * total as f64 {
                break;
            }
            (limit, unlimited) = (l, u);
            close.push(c.slot);
        }
        close
    }

    /// Every counted worker with what closing it costs, cheapest first.
    fn close_candidates(&self, slots: &[u32]) -> Vec<Candidate> {
        let mut candidates: Vec<Candidate> = slots
            .iter()
            .map(|&w| {
                let worker = self.workers[w as usize].as_ref().expect("live");
                let unique = worker
                    .has_what
                    .iter()
                    .filter(|&&t| {
                        self.tasks[t as usize].who_has.iter().all(|&h| {
                            h == w
                                || self.workers[h as usize]
                                    .as_ref()
                                    .is_none_or(|x| x.status == WorkerStatus::Retiring)
                        })
                    })
                    .map(|&t| self.tasks[t as usize].nbytes)
                    .sum();
                Candidate {
                    slot: w,
                    busy: !worker.processing.is_empty(),
                    unique,
                    nbytes: worker.nbytes,
                    memory_limit: worker.memory_limit,
                }
            })
            .collect();
        // Ties go to the newest worker (the highest slot), as a manager would pick.
        candidates.sort_by_key(|c| (c.busy, c.unique, c.nbytes, std::cmp::Reverse(c.slot)));
        candidates
    }

    /// Answer a client's `AdaptiveTarget` request.
    pub(crate) fn answer_adaptive_target(
        &mut self,
        client: ClientId,
        request: u64,
        target_duration: Duration,
        minimum: usize,
        maximum: usize,
    ) {
        let target = self
            .adaptive_target(target_duration)
            .max(minimum)
            .min(maximum);
        let slots = self.adaptive_slots();
        let workers = slots
            .iter()
            .map(|&w| {
                self.workers[w as usize]
                    .as_ref()
                    .expect("live")
                    .name
                    .clone()
            })
            .collect();
        let to_close = self.workers_to_close(target);
        self.out.push_back(Command::ToClient(
            client,
            ToClient::AdaptiveTarget {
                request,
                target: AdaptiveTargetMsg {
                    target: target as u64,
                    workers,
                    to_close,
                },
            },
        ));
    }
}
