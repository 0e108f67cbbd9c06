//! Work stealing, run from the timer: idle workers (fewer tasks than threads) take tasks that
//! wait behind others on saturated workers. Transactional as in Dask: the victim is asked with
//! `StealRequest`, and only the tasks it gives back in `Released` move.

use taskwire_protocol::{TaskId, ToWorker};

use crate::core::{Core, Steal};
use crate::event::Command;
use crate::placement_cost::transfer_us;
use rustc_hash::FxHashMap;

/// Thieves and victims looked at per round, so one round stays cheap on huge clusters.
const MAX_PER_SIDE: usize = 256;

impl Core {
    pub(crate) fn balance(&mut self) {
        let order = self.by_occupancy.sorted();
        let mut thieves = Vec::new();
        for &(_, _, w) in order.iter() {
            let worker = self.workers[w as usize]
                .as_ref()
                .expect("indexed workers live");
            if (worker.processing.len() as u64 + worker.steals_incoming as u64)
                < worker.nthreads as u64
            {
                thieves.push(w);
                if thieves.len() == MAX_PER_SIDE {
                    break;
                }
            } else if !worker.idle() {
                break;
            }
        }
        if thieves.is_empty() {
            return;
        }
        let mut victims = Vec::new();
        for &(_, _, w) in order.iter().rev() {
            let worker = self.workers[w as usize]
                .as_ref()
                .expect("indexed workers live");
            if worker.processing.len() > worker.nthreads as usize {
                victims.push(w);
                if victims.len() == MAX_PER_SIDE {
                    break;
                }
            } else {
                break;
            }
        }
        if victims.is_empty() {
            return;
        }
        let mut outgoing: FxHashMap<u32, usize> = FxHashMap::default();
        let mut requests: Vec<(u32, Vec<TaskId>)> = Vec::new();
        let mut vi = 0usize;
        for thief in thieves {
            let t = self.workers[thief as usize].as_ref().expect("live");
            let mut want = (t.nthreads as usize)
                .saturating_sub(t.processing.len() + t.steals_incoming as usize);
            let mut tries = 0;
            while want > 0 && tries < victims.len() {
                tries += 1;
                let victim = victims[vi % victims.len()];
                vi += 1;
                let v = self.workers[victim as usize].as_ref().expect("live");
                let out = outgoing.get(&victim).copied().unwrap_or(0);
                let surplus = v
                    .processing
                    .len()
                    .saturating_sub(v.nthreads as usize)
                    .saturating_sub(out);
                if surplus == 0 {
                    continue;
                }
                let take = want.min(surplus.div_ceil(2));
                // Workers run their tasks in priority order, so the last in that order are the
                // ones most likely not started yet.
                let mut candidates: Vec<_> = v
                    .processing
                    .iter()
                    .filter(|&&slot| {
                        if self.steals.contains_key(&slot) || !self.can_run_now(slot, thief) {
                            return false;
                        }
                        let task = &self.tasks[slot as usize];
                        task.deps.is_empty()
                            || transfer_us(self, slot, thief) <= 2 * task.est_us as u64
                    })
                    .map(|&slot| {
                        let t = &self.tasks[slot as usize];
                        (t.priority, std::cmp::Reverse(t.assigned_seq), slot)
                    })
                    .collect();
                if candidates.len() > take {
                    candidates.select_nth_unstable(take);
                    candidates.truncate(take);
                }
                candidates.sort_unstable();
                let picked: Vec<u32> = candidates.iter().map(|k| k.2).collect();
                if picked.is_empty() {
                    continue;
                }
                want -= picked.len();
                *outgoing.entry(victim).or_default() += picked.len();
                self.workers[thief as usize]
                    .as_mut()
                    .expect("live")
                    .steals_incoming += picked.len() as u32;
                let ids: Vec<TaskId> = picked.iter().map(|&s| self.tasks[s as usize].id).collect();
                for &slot in &picked {
                    self.steals.insert(slot, Steal { victim, thief });
                }
                match requests.iter_mut().find(|(v, _)| *v == victim) {
                    Some((_, list)) => list.extend(ids),
                    None => requests.push((victim, ids)),
                }
            }
        }
        for (victim, tasks) in requests {
            let id = self.workers[victim as usize].as_ref().expect("live").id;
            self.out
                .push_back(Command::ToWorker(id, ToWorker::StealRequest(tasks)));
        }
    }
}
