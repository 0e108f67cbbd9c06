//! [`Core`]: the state and the event handlers.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use taskwire_protocol::{
    ArchivedFromClient, ArchivedTaskSpecMsg, ClientId, ErrorKindMsg, KeyInMemoryMsg,
    RegisterWorkerMsg, ResourceMsg, TaskErredMsg, TaskErrorMsg, TaskFinishedMsg, TaskId,
    TaskKindMsg, ToClient, ToWorker, WorkerId, WorkerInfoMsg, WorkerMetricsMsg,
};

use crate::config::CoreConfig;
use crate::event::{Command, Event};
use crate::graph::GraphTask;
// Fx: a fast, deterministic hash (the simulator's runs repeat from their seed).
use crate::heap::WorkerHeap;
use crate::lifecycle::{RecoveryCounts, Retirement};
use crate::root_queue::RootQueue;
use crate::state::{
    GroupInfo, StateCounts, StimulusId, TaskRun, TaskState, TransitionLog, TransitionRecord,
};

/// Finished tasks the core remembers for the task stream.
pub const MAX_TASK_RUNS: usize = 16_384;
use crate::task::{Constraint, F_SCATTER, Prefix, Task, TaskRef, key_prefix};
use crate::worker::{Worker, WorkerStatus, heartbeat_ms};
use rustc_hash::{FxHashMap, FxHashSet};

/// A pending recommendation: move the task in `slot` (if still of `generation`) to a state.
pub(crate) type Rec = (u32, u32, TaskState);

/// An in-flight steal: the victim was asked to give the task back for the thief.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Steal {
    pub(crate) victim: u32,
    pub(crate) thief: u32,
}

#[derive(Default)]
pub(crate) struct Client {
    pub(crate) wants: FxHashSet<u32>,
    pub(crate) out_memory: Vec<KeyInMemoryMsg>,
    pub(crate) out_erred: Vec<(String, TaskErrorMsg)>,
    pub(crate) dirty: bool,
    /// Tasks it submitted that the scheduler still holds (see `CoreConfig::max_client_tasks`).
    pub(crate) held: usize,
}

/// The scheduler as a state machine: it owns every task, worker and client record, takes
/// events and timeouts in, and hands out commands and its next deadline. See the crate docs
/// for the calling order.
pub struct Core {
    pub(crate) config: CoreConfig,
    pub(crate) now: Option<Instant>,
    pub(crate) stimulus: StimulusId,
    pub(crate) stimulus_seq: u64,

    pub(crate) tasks: Vec<Task>,
    pub(crate) free_tasks: Vec<u32>,
    pub(crate) by_id: FxHashMap<u64, u32>,
    pub(crate) by_key: FxHashMap<Arc<str>, u32>,
    pub(crate) next_task_id: u64,
    pub(crate) empty_key: Arc<str>,

    pub(crate) prefixes: Vec<Prefix>,
    pub(crate) prefix_free: Vec<u32>,
    pub(crate) prefix_map: FxHashMap<Box<str>, u32>,
    pub(crate) last_prefix: u32,
    pub(crate) constraints: Vec<Constraint>,
    pub(crate) constraint_map: FxHashMap<String, u32>,
    pub(crate) res_map: FxHashMap<String, u16>,
    pub(crate) res_workers: Vec<Vec<u32>>,

    pub(crate) workers: Vec<Option<Worker>>,
    pub(crate) free_workers: Vec<u32>,
    pub(crate) worker_by_id: FxHashMap<WorkerId, u32>,
    pub(crate) worker_by_name: FxHashMap<String, u32>,
    pub(crate) worker_by_addr: FxHashMap<String, u32>,
    pub(crate) by_occupancy: WorkerHeap,
    pub(crate) free_slots: WorkerHeap,
    pub(crate) queued: RootQueue,
    /// Root tasks per worker thread allowed beyond Dask's saturation count, from the measured
    /// cost of the tasks at the head of the queue (see `adapt_root_slots`).
    pub(crate) root_per_thread: u64,
    /// The small result carried by the `TasksFinished` entry being applied, passed on to the
    /// clients that want the key (see `MAX_INLINE_RESULT`); never kept past that entry.
    pending_inline: Option<Vec<u8>>,
    pub(crate) steals: FxHashMap<u32, Steal>,
    /// Workers being retired, by request.
    pub(crate) retirements: Vec<Retirement>,
    /// Results of retiring workers being copied: task slot -> the worker fetching it.
    pub(crate) replicas: FxHashMap<u32, u32>,
    pub(crate) recovery: RecoveryCounts,
    /// Tasks that finished on a worker (processing -> memory), since the core started.
    pub(crate) finished_total: u64,
    /// Tasks that ran to an end on a worker (finished or failed), since the core started.
    pub(crate) runs_total: u64,
    /// The latest of those (at most [`MAX_TASK_RUNS`]), for the task stream; the last one is
    /// number `runs_total`.
    pub(crate) runs: VecDeque<TaskRun>,
    pub(crate) next_steal: Option<Instant>,
    pub(crate) rr_cursor: usize,
    pub(crate) assign_seq: u32,

    pub(crate) clients: FxHashMap<ClientId, Client>,
    pub(crate) dirty_clients: Vec<ClientId>,
    pub(crate) dirty_workers: Vec<u32>,
    pub(crate) out: VecDeque<Command>,

    pub(crate) recs: Vec<Rec>,
    pub(crate) res_freed: Vec<u32>,
    pub(crate) log: TransitionLog,
    pub(crate) counts: StateCounts,
    pub(crate) errors: Vec<String>,
    pub(crate) scratch_bytes: Vec<u64>,
    pub(crate) scratch_seen: Vec<bool>,
    pub(crate) scratch_touched: Vec<u32>,
}

impl Core {
    /// A core with no tasks, workers or clients.
    pub fn new(config: CoreConfig) -> Core {
        let empty_key: Arc<str> = Arc::from("");
        Core {
            log: TransitionLog::new(config.transition_log_len),
            config,
            now: None,
            stimulus: StimulusId::new(0, "init"),
            stimulus_seq: 0,
            tasks: Vec::new(),
            free_tasks: Vec::new(),
            by_id: FxHashMap::default(),
            by_key: FxHashMap::default(),
            next_task_id: 1,
            empty_key,
            prefixes: Vec::new(),
            prefix_free: Vec::new(),
            prefix_map: FxHashMap::default(),
            last_prefix: 0,
            constraints: vec![Constraint {
                resources: Vec::new(),
                resources_msg: Vec::new(),
                workers: Vec::new(),
                no_worker: BTreeSet::new(),
            }],
            constraint_map: FxHashMap::default(),
            res_map: FxHashMap::default(),
            res_workers: Vec::new(),
            workers: Vec::new(),
            free_workers: Vec::new(),
            worker_by_id: FxHashMap::default(),
            worker_by_name: FxHashMap::default(),
            worker_by_addr: FxHashMap::default(),
            by_occupancy: WorkerHeap::default(),
            free_slots: WorkerHeap::default(),
            queued: RootQueue::default(),
            root_per_thread: 0,
            pending_inline: None,
            steals: FxHashMap::default(),
            retirements: Vec::new(),
            replicas: FxHashMap::default(),
            recovery: RecoveryCounts::default(),
            finished_total: 0,
            runs_total: 0,
            runs: VecDeque::new(),
            next_steal: None,
            rr_cursor: 0,
            assign_seq: 0,
            clients: FxHashMap::default(),
            dirty_clients: Vec::new(),
            dirty_workers: Vec::new(),
            out: VecDeque::new(),
            recs: Vec::new(),
            res_freed: Vec::new(),
            counts: StateCounts::default(),
            errors: Vec::new(),
            scratch_bytes: Vec::new(),
            scratch_seen: Vec::new(),
            scratch_touched: Vec::new(),
        }
    }

    /// Feed one event. Afterwards drain [`poll_command`](Self::poll_command) and re-read
    /// [`poll_timeout`](Self::poll_timeout).
    pub fn handle_event(&mut self, now: Instant, event: Event) {
        self.begin(now, event.kind());
        match event {
            Event::ClientConnected { client } => {
                self.clients.entry(client).or_default();
            }
            Event::ClientDisconnected { client } => self.client_disconnected(client),
            Event::UpdateGraph {
                client,
                submit_id,
                mut tasks,
                wanted,
            } => self.update_graph(client, submit_id, &mut tasks, &wanted, false),
            Event::UpdateGraphArchived { client, graph } => {
                if let ArchivedFromClient::UpdateGraph {
                    submit_id,
                    tasks,
                    wanted,
                    want_tasks,
                } = graph.get()
                {
                    let mut specs: Vec<&ArchivedTaskSpecMsg> = tasks.iter().collect();
                    self.update_graph(
                        client,
                        submit_id.to_native(),
                        &mut specs,
                        wanted,
                        *want_tasks,
                    );
                }
            }
            Event::ReleaseKeys { client, keys } => {
                for key in &keys {
                    if let Some(&slot) = self.by_key.get(key.as_str()) {
                        self.remove_want(client, slot);
                    }
                }
            }
            Event::CancelKeys { client, keys } => self.cancel_keys(client, keys),
            Event::Scatter {
                client,
                submit_id,
                keys,
                worker,
            } => self.scatter(client, submit_id, keys, worker),
            Event::GetWorkers { client } => {
                let list = self.workers();
                self.out
                    .push_back(Command::ToClient(client, ToClient::Workers(list)));
            }
            Event::WorkerJoined { worker, info } => self.worker_joined(worker, info),
            Event::WorkerLeft { worker, reason: _ } => self.worker_left(worker),
            Event::TasksFinished { worker, tasks } => self.tasks_finished(worker, tasks),
            Event::TasksErred { worker, errors } => self.tasks_erred(worker, errors),
            Event::MissingData {
                worker,
                task,
                missing,
            } => self.missing_data(worker, task, missing),
            Event::DataAdded { worker, tasks } => self.data_added(worker, tasks),
            Event::Released { worker, tasks } => self.released(worker, tasks),
            Event::Heartbeat { worker, metrics } => self.heartbeat(worker, metrics),
            Event::RetireWorkers {
                client,
                request,
                workers,
            } => self.retire_workers(Some((client, request)), workers),
            Event::RetireRequested { worker } => self.retire_requested(worker),
            Event::AdaptiveTarget {
                client,
                request,
                target_duration,
                minimum,
                maximum,
            } => self.answer_adaptive_target(client, request, target_duration, minimum, maximum),
        }
        self.finish(now);
    }

    /// Tell the core that time has passed; runs work stealing when its timer is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.next_steal {
            Some(at) if at <= now => {}
            _ => return,
        }
        self.begin(now, "steal");
        self.next_steal = None;
        if self.config.work_stealing {
            self.balance();
        }
        self.finish(now);
    }

    /// The next command to send, if any.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_steal
    }

    /// The transitions of `key` still in the log, oldest first (also for forgotten keys).
    pub fn story(&self, key: &str) -> Vec<TransitionRecord> {
        let live = self.by_key.get(key).map(|&slot| {
            let t = &self.tasks[slot as usize];
            (slot, t.generation, &t.key)
        });
        self.log.story(key, live)
    }

    /// The registered workers, by id.
    pub fn workers(&self) -> Vec<WorkerInfoMsg> {
        let mut list: Vec<WorkerInfoMsg> = self
            .workers
            .iter()
            .flatten()
            .map(|w| WorkerInfoMsg {
                id: w.id,
                name: w.name.clone(),
                address: w.address.clone(),
                nthreads: w.nthreads,
                memory_limit: w.memory_limit,
                resources: w.resources_msg.clone(),
                processing: w.processing.len() as u64,
                in_memory: w.has_what.len() as u64,
                metrics: w.metrics.clone(),
                restarts: w.restarts,
                last_seen_ms: match (self.now, w.last_seen) {
                    (Some(now), Some(seen)) => {
                        now.saturating_duration_since(seen).as_millis() as u64
                    }
                    _ => 0,
                },
            })
            .collect();
        list.sort_by_key(|w| w.id);
        list
    }

    /// How many tasks are in each state.
    pub fn counts(&self) -> StateCounts {
        self.counts
    }

    /// Task groups (Dask's task prefixes: `inc` for `inc-1`, `inc-2`) with tasks now: name,
    /// tasks by state, mean duration in µs once measured. Sorted by name.
    pub fn groups(&self) -> Vec<GroupInfo> {
        let mut groups: Vec<GroupInfo> = self
            .prefixes
            .iter()
            .filter(|p| p.counts.total() > 0)
            .map(|p| GroupInfo {
                name: p.name.to_string(),
                counts: p.counts,
                duration_us: p.duration_us,
            })
            .collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        groups
    }

    /// The tasks that ran to an end (finished or failed) after the `since`-th (counting from
    /// 1, as [`task_runs_total`](Self::task_runs_total) does), oldest first; at most the last
    /// [`MAX_TASK_RUNS`].
    pub fn task_runs_since(&self, since: u64) -> impl Iterator<Item = &TaskRun> {
        let new = self.runs_total.saturating_sub(since) as usize;
        let skip = self.runs.len().saturating_sub(new);
        self.runs.iter().skip(skip)
    }

    /// Tasks that ran to an end on a worker (finished or failed) since the core started: the
    /// number of the latest [`TaskRun`].
    pub fn task_runs_total(&self) -> u64 {
        self.runs_total
    }

    /// Remember a run for the task stream.
    fn record_run(&mut self, run: TaskRun) {
        self.runs_total += 1;
        if self.runs.len() == MAX_TASK_RUNS {
            self.runs.pop_front();
        }
        self.runs.push_back(run);
    }

    /// Clients connected.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Tasks that finished on a worker since the core started (a throughput counter).
    pub fn finished_total(&self) -> u64 {
        self.finished_total
    }

    /// What worker losses and retirements have cost since the core started.
    pub fn recovery(&self) -> RecoveryCounts {
        self.recovery
    }

    // -----------------------------------------------------------------------------------------
    // Event plumbing

    fn begin(&mut self, now: Instant, kind: &'static str) {
        self.now = Some(now);
        self.stimulus_seq += 1;
        self.stimulus = StimulusId::new(self.stimulus_seq, kind);
    }

    fn finish(&mut self, now: Instant) {
        self.adapt_root_slots();
        self.progress_retirements();
        self.settle();
        self.flush();
        self.shrink();
        let want_timer =
            self.config.work_stealing && self.worker_by_id.len() >= 2 && self.counts.processing > 0;
        if !want_timer {
            self.next_steal = None;
        } else if self.next_steal.is_none() {
            self.next_steal = Some(now + self.config.steal_interval);
        }
    }

    /// Give back table capacity after a big graph is gone. Slots cannot move while tasks
    /// refer to them, so the task table is only reset once it is empty; the indexes shrink
    /// whenever they are mostly empty (amortized: only after they emptied to a quarter).
    fn shrink(&mut self) {
        // Below this many slots the capacity is kept for the next graph.
        const KEEP: usize = 1 << 17;
        if self.counts.total() == 0 && self.tasks.capacity() > KEEP {
            self.tasks.clear();
            self.tasks.shrink_to(KEEP);
            self.free_tasks.clear();
            self.free_tasks.shrink_to(KEEP);
            for w in self.workers.iter_mut().flatten() {
                w.processing.shrink_to_fit();
                w.has_what.shrink_to_fit();
            }
            for c in self.clients.values_mut() {
                c.wants.shrink_to_fit();
            }
        }
        if self.by_id.capacity() > 2 * KEEP && self.by_id.len() * 4 < self.by_id.capacity() {
            self.by_id.shrink_to(KEEP.max(2 * self.by_id.len()));
            self.by_key.shrink_to(KEEP.max(2 * self.by_key.len()));
        }
    }

    /// Emit the batches built while handling one event: per worker `Free` then `Compute`, per
    /// client `KeysInMemory` then `KeysErred`.
    fn flush(&mut self) {
        for w in std::mem::take(&mut self.dirty_workers) {
            let Some(worker) = self.workers[w as usize].as_mut() else {
                continue;
            };
            worker.dirty = false;
            if !worker.out_free.is_empty() {
                let free = std::mem::take(&mut worker.out_free);
                self.out
                    .push_back(Command::ToWorker(worker.id, ToWorker::Free(free)));
            }
            if !worker.out_compute.is_empty() {
                let compute = take_sized(&mut worker.out_compute);
                self.out
                    .push_back(Command::ToWorker(worker.id, ToWorker::Compute(compute)));
            }
        }
        for c in std::mem::take(&mut self.dirty_clients) {
            let Some(client) = self.clients.get_mut(&c) else {
                continue;
            };
            client.dirty = false;
            if !client.out_memory.is_empty() {
                let m = take_sized(&mut client.out_memory);
                self.out
                    .push_back(Command::ToClient(c, ToClient::KeysInMemory(m)));
            }
            if !client.out_erred.is_empty() {
                let e = std::mem::take(&mut client.out_erred);
                self.out
                    .push_back(Command::ToClient(c, ToClient::KeysErred(e)));
            }
        }
    }

    pub(crate) fn task_slot(&self, id: TaskId) -> Option<u32> {
        self.by_id.get(&id.0).copied()
    }

    pub(crate) fn rec(&mut self, slot: u32, to: TaskState) {
        let g = self.tasks[slot as usize].generation;
        self.recs.push((slot, g, to));
    }

    pub(crate) fn fail(&mut self, message: String) {
        debug_assert!(false, "{message}");
        self.errors.push(message);
    }

    pub(crate) fn mark_worker_dirty(workers: &mut [Option<Worker>], dirty: &mut Vec<u32>, w: u32) {
        if let Some(worker) = workers[w as usize].as_mut()
            && !worker.dirty
        {
            worker.dirty = true;
            dirty.push(w);
        }
    }

    pub(crate) fn send_free(&mut self, w: u32, id: TaskId) {
        if let Some(worker) = self.workers[w as usize].as_mut() {
            if !worker.alive {
                return;
            }
            worker.out_free.push(id);
        }
        Self::mark_worker_dirty(&mut self.workers, &mut self.dirty_workers, w);
    }

    pub(crate) fn client_mut(&mut self, c: ClientId) -> &mut Client {
        let client = self.clients.entry(c).or_default();
        if !client.dirty {
            client.dirty = true;
            self.dirty_clients.push(c);
        }
        client
    }

    pub(crate) fn notify_memory(&mut self, slot: u32) {
        let t = &self.tasks[slot as usize];
        if t.wanted.is_empty() {
            return;
        }
        let holder = t.who_has[0];
        let address = self.workers[holder as usize]
            .as_ref()
            .map(|w| w.address.clone());
        let (key, id, nbytes) = (t.key.clone(), t.id, t.nbytes);
        for i in 0..self.tasks[slot as usize].wanted.len() {
            let c = self.tasks[slot as usize].wanted[i];
            let msg = KeyInMemoryMsg {
                key: String::from(&*key),
                task: id,
                worker: address.clone().unwrap_or_default(),
                nbytes,
                inline: self.pending_inline.clone(),
            };
            self.client_mut(c).out_memory.push(msg);
        }
    }

    pub(crate) fn notify_erred(&mut self, slot: u32) {
        let t = &self.tasks[slot as usize];
        if t.wanted.is_empty() {
            return;
        }
        let key = t.key.clone();
        let error = t.error.as_deref().cloned().unwrap_or(TaskErrorMsg {
            kind: ErrorKindMsg::Failed,
            message: "unknown error".into(),
        });
        for i in 0..self.tasks[slot as usize].wanted.len() {
            let c = self.tasks[slot as usize].wanted[i];
            self.client_mut(c)
                .out_erred
                .push((String::from(&*key), error.clone()));
        }
    }

    // -----------------------------------------------------------------------------------------
    // Clients

    pub(crate) fn add_want(&mut self, client: ClientId, slot: u32) -> bool {
        let c = self.clients.entry(client).or_default();
        if !c.wants.insert(slot) {
            return false;
        }
        self.tasks[slot as usize].wanted.push(client);
        true
    }

    pub(crate) fn remove_want(&mut self, client: ClientId, slot: u32) {
        let Some(c) = self.clients.get_mut(&client) else {
            return;
        };
        if !c.wants.remove(&slot) {
            return;
        }
        let t = &mut self.tasks[slot as usize];
        t.wanted.retain(|&x| x != client);
        if !t.needed() {
            self.rec(slot, TaskState::Released);
        }
    }

    fn client_disconnected(&mut self, client: ClientId) {
        let Some(c) = self.clients.remove(&client) else {
            return;
        };
        let mut wants: Vec<u32> = c.wants.into_iter().collect();
        wants.sort_unstable();
        for slot in wants {
            let t = &mut self.tasks[slot as usize];
            t.wanted.retain(|&x| x != client);
            if !t.needed() {
                self.rec(slot, TaskState::Released);
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Tasks: creation and submission

    fn intern_prefix(&mut self, key: &str) -> u32 {
        // Graphs come in runs of one prefix: try the last one before parsing and hashing.
        // `name-<digit>...` has the prefix `name` when `name` is itself a prefix (its first word
        // is not empty, the later ones are not index-like, and the digit word ends it).
        let last = self.last_prefix as usize;
        if let Some(lp) = self.prefixes.get(last)
            && lp.live > 0
        {
            let (k, n) = (key.as_bytes(), lp.name.as_bytes());
            // (A name starting with '-' is a whole key: its first word is empty.)
            if n.first().is_some_and(|&b| b != b'-')
                && k.len() > n.len() + 1
                && k.starts_with(n)
                && k[n.len()] == b'-'
                && k[n.len() + 1].is_ascii_digit()
            {
                debug_assert_eq!(key_prefix(key), &*lp.name);
                self.prefixes[last].live += 1;
                return last as u32;
            }
        }
        let p = key_prefix(key);
        if let Some(lp) = self.prefixes.get(last)
            && lp.live > 0
            && *lp.name == *p
        {
            self.prefixes[last].live += 1;
            return last as u32;
        }
        if let Some(&i) = self.prefix_map.get(p) {
            self.last_prefix = i;
            self.prefixes[i as usize].live += 1;
            return i;
        }
        let prefix = Prefix {
            name: p.into(),
            duration_us: None,
            nbytes: None,
            live: 1,
            counts: StateCounts::default(),
        };
        let i = match self.prefix_free.pop() {
            Some(i) => {
                self.prefixes[i as usize] = prefix;
                i
            }
            None => {
                self.prefixes.push(prefix);
                (self.prefixes.len() - 1) as u32
            }
        };
        self.prefix_map.insert(p.into(), i);
        self.last_prefix = i;
        i
    }

    pub(crate) fn release_prefix(&mut self, i: u32) {
        let p = &mut self.prefixes[i as usize];
        p.live -= 1;
        // Keep durations of prefixes that come back, unless there are very many.
        if p.live == 0 && self.prefix_map.len() > 10_000 {
            let name = std::mem::take(&mut p.name);
            self.prefix_map.remove(&name);
            self.prefix_free.push(i);
        }
    }

    fn resource_index(&mut self, name: &str) -> u16 {
        if let Some(&r) = self.res_map.get(name) {
            return r;
        }
        let r = self.res_workers.len() as u16;
        self.res_map.insert(name.to_string(), r);
        self.res_workers.push(Vec::new());
        r
    }

    fn intern_constraint(&mut self, resources: &[ResourceMsg], workers: &[String]) -> u32 {
        if resources.is_empty() && workers.is_empty() {
            return 0;
        }
        let mut sig = String::new();
        for r in resources {
            sig.push_str(&format!(
                "r{}:{}={};",
                r.name.len(),
                r.name,
                r.amount.to_bits()
            ));
        }
        for w in workers {
            sig.push_str(&format!("w{}:{};", w.len(), w));
        }
        if let Some(&c) = self.constraint_map.get(&sig) {
            return c;
        }
        let res = resources
            .iter()
            .map(|r| (self.resource_index(&r.name), r.amount))
            .collect();
        self.constraints.push(Constraint {
            resources: res,
            resources_msg: resources.to_vec(),
            workers: workers.to_vec(),
            no_worker: BTreeSet::new(),
        });
        let c = (self.constraints.len() - 1) as u32;
        self.constraint_map.insert(sig, c);
        c
    }

    /// Why `client` may not add `n` tasks now, if it may not.
    fn over_client_limit(&self, client: ClientId, n: usize) -> Option<String> {
        let held = self.clients.get(&client).map_or(0, |c| c.held);
        let limit = self.config.max_client_tasks;
        (held.saturating_add(n) > limit).then(|| {
            format!(
                "this client holds {held} tasks and asks for {n} more: over the scheduler's \
                 limit of {limit} tasks per client (--max-client-tasks); wait for results \
                 or release keys first"
            )
        })
    }

    /// A new task in `Released`, counted for `owner`.
    fn alloc_task(&mut self, key: Arc<str>, prefix: u32, owner: ClientId) -> u32 {
        let id = TaskId(self.next_task_id);
        self.next_task_id += 1;
        let slot = match self.free_tasks.pop() {
            Some(s) => s,
            None => {
                self.tasks.push(Task::vacant(self.empty_key.clone()));
                (self.tasks.len() - 1) as u32
            }
        };
        let t = &mut self.tasks[slot as usize];
        t.key = key.clone();
        t.id = id;
        t.state = TaskState::Released;
        t.prefix = prefix;
        t.owner = owner;
        if let Some(c) = self.clients.get_mut(&owner) {
            c.held += 1;
        }
        self.counts.released += 1;
        self.prefixes[prefix as usize].counts.released += 1;
        self.by_id.insert(id.0, slot);
        self.by_key.insert(key, slot);
        slot
    }

    fn update_graph<S: GraphTask, W: std::ops::Deref<Target = str>>(
        &mut self,
        client: ClientId,
        submit_id: u64,
        specs: &mut [S],
        wanted: &[W],
        want_tasks: bool,
    ) {
        self.clients.entry(client).or_default();
        if let Some(reason) = self.over_client_limit(client, specs.len()) {
            self.out.push_back(Command::ToClient(
                client,
                ToClient::GraphRejected { submit_id, reason },
            ));
            return;
        }
        let (resolved, offsets, wanted_at) = match self.validate_graph(specs, wanted, want_tasks) {
            Ok(r) => r,
            Err(reason) => {
                self.out.push_back(Command::ToClient(
                    client,
                    ToClient::GraphRejected { submit_id, reason },
                ));
                return;
            }
        };
        // One growth of the key and id tables for the whole graph, not a rehash every doubling.
        self.by_key.reserve(specs.len());
        self.by_id.reserve(specs.len());
        let new_slots = specs.len().saturating_sub(self.free_tasks.len());
        self.tasks.reserve(new_slots);
        let mut slots = Vec::with_capacity(specs.len());
        let mut last_kind: Option<Arc<TaskKindMsg>> = None;
        for spec in specs.iter_mut() {
            let prefix = self.intern_prefix(spec.key());
            let constraint = if spec.unconstrained() {
                0
            } else {
                let (resources, workers) = spec.constraint_owned();
                self.intern_constraint(&resources, &workers)
            };
            let slot = self.alloc_task(spec.take_key(), prefix, client);
            let kind = match &last_kind {
                Some(k) if spec.same_kind(k) => k.clone(),
                _ => last_kind.insert(Arc::new(spec.take_kind())).clone(),
            };
            let t = &mut self.tasks[slot as usize];
            t.kind = Some(kind);
            t.constraint = constraint;
            t.priority = spec.priority();
            t.retries_left = spec.retries();
            slots.push(slot);
        }
        // Size each new task's dependents list once.
        let mut n_dependents = vec![0u32; slots.len()];
        for &e in &resolved {
            if e & IN_GRAPH != 0 {
                n_dependents[(e & !IN_GRAPH) as usize] += 1;
            }
        }
        for (&slot, &n) in slots.iter().zip(&n_dependents) {
            if n > 0 {
                self.tasks[slot as usize]
                    .dependents
                    .reserve_exact(n as usize);
            }
        }
        drop(n_dependents);
        for (i, &slot) in slots.iter().enumerate() {
            let deps: Box<[u32]> = resolved[offsets[i] as usize..offsets[i + 1] as usize]
                .iter()
                .map(|&e| {
                    if e & IN_GRAPH != 0 {
                        slots[(e & !IN_GRAPH) as usize]
                    } else {
                        e
                    }
                })
                .collect();
            let r = TaskRef {
                slot,
                generation: self.tasks[slot as usize].generation,
            };
            for &d in deps.iter() {
                let dt = &mut self.tasks[d as usize];
                dt.dependents.push(r);
                dt.n_dependents += 1;
            }
            self.tasks[slot as usize].deps = deps;
        }
        self.out.push_back(Command::ToClient(
            client,
            ToClient::GraphAccepted { submit_id },
        ));
        // The client's want set grows once, and is looked up once for the whole graph.
        let wants = &mut self
            .clients
            .get_mut(&client)
            .expect("entered at the start")
            .wants;
        wants.reserve(wanted_at.len());
        let mut newly = Vec::with_capacity(wanted_at.len());
        for &e in &wanted_at {
            let slot = if e & IN_GRAPH != 0 {
                slots[(e & !IN_GRAPH) as usize]
            } else {
                e
            };
            // As `add_want`.
            if wants.insert(slot) {
                self.tasks[slot as usize].wanted.push(client);
                newly.push(slot);
            }
        }
        for slot in newly {
            match self.tasks[slot as usize].state {
                TaskState::Memory => self.notify_one_memory(client, slot),
                TaskState::Erred => self.notify_one_erred(client, slot),
                TaskState::Released => self.rec(slot, TaskState::Waiting),
                _ => {}
            }
        }
        // Recommendations pop last-in first; push in reverse so the first wanted keys are
        // considered first.
        self.recs.reverse();
        self.settle();
        for &slot in &slots {
            if self.tasks[slot as usize].forgettable() {
                self.rec(slot, TaskState::Forgotten);
            }
        }
    }

    fn notify_one_memory(&mut self, client: ClientId, slot: u32) {
        let t = &self.tasks[slot as usize];
        let address = self.workers[t.who_has[0] as usize]
            .as_ref()
            .map(|w| w.address.clone())
            .unwrap_or_default();
        let msg = KeyInMemoryMsg {
            key: String::from(&*t.key),
            task: t.id,
            worker: address,
            nbytes: t.nbytes,
            inline: None,
        };
        self.client_mut(client).out_memory.push(msg);
    }

    fn notify_one_erred(&mut self, client: ClientId, slot: u32) {
        let t = &self.tasks[slot as usize];
        let key = String::from(&*t.key);
        let err = t.error.as_deref().cloned().unwrap_or(TaskErrorMsg {
            kind: ErrorKindMsg::Failed,
            message: "unknown error".into(),
        });
        self.client_mut(client).out_erred.push((key, err));
    }

    /// All-or-nothing validation. Returns the dependencies resolved to existing slots or, with
    /// [`IN_GRAPH`] set, to indices in the submitted list (CSR: `offsets[i]..offsets[i+1]`),
    /// and the wanted keys resolved the same way (with `want_tasks` every task first, in
    /// submission order, then `wanted`).
    fn validate_graph<S: GraphTask, W: std::ops::Deref<Target = str>>(
        &self,
        specs: &[S],
        wanted: &[W],
        want_tasks: bool,
    ) -> Result<ResolvedGraph, String> {
        let mut local: FxHashMap<&str, u32> = FxHashMap::default();
        local.reserve(specs.len());
        for (i, t) in specs.iter().enumerate() {
            let key = t.key();
            if key.is_empty() {
                return Err(format!("task #{i} has an empty key"));
            }
            if local.insert(key, i as u32).is_some() {
                return Err(format!("duplicate key '{key}' in graph"));
            }
            if !self.by_key.is_empty() && self.by_key.contains_key(key) {
                return Err(format!("key '{key}' already exists"));
            }
            for r in 0..t.n_resources() {
                let (name, amount) = t.resource(r);
                if name.is_empty() || !amount.is_finite() || amount < 0.0 {
                    return Err(format!(
                        "task '{key}' asks for an invalid resource '{name}={amount}'"
                    ));
                }
            }
        }
        let mut resolved = Vec::with_capacity(specs.len());
        let mut offsets = Vec::with_capacity(specs.len() + 1);
        offsets.push(0u32);
        for t in specs {
            for i in 0..t.n_deps() {
                let d = t.dep(i);
                if let Some(&j) = local.get(d) {
                    resolved.push(j | IN_GRAPH);
                } else if let Some(&s) = self.by_key.get(d) {
                    resolved.push(s);
                } else {
                    return Err(format!("task '{}' depends on unknown key '{d}'", t.key()));
                }
            }
            offsets.push(resolved.len() as u32);
        }
        let mut wanted_at =
            Vec::with_capacity(wanted.len() + if want_tasks { specs.len() } else { 0 });
        if want_tasks {
            wanted_at.extend((0..specs.len() as u32).map(|i| i | IN_GRAPH));
        }
        for k in wanted {
            let k: &str = k;
            if let Some(&j) = local.get(k) {
                wanted_at.push(j | IN_GRAPH);
            } else if let Some(&s) = self.by_key.get(k) {
                wanted_at.push(s);
            } else {
                return Err(format!("wanted key '{k}' is unknown"));
            }
        }
        // Cycles can only run through new tasks: existing ones never depend on new ones.
        let n = specs.len();
        let mut color = vec![0u8; n];
        let mut stack: Vec<(u32, u32)> = Vec::new();
        for root in 0..n {
            if color[root] != 0 {
                continue;
            }
            color[root] = 1;
            stack.push((root as u32, offsets[root]));
            while let Some(top) = stack.last_mut() {
                let v = top.0 as usize;
                if top.1 < offsets[v + 1] {
                    let e = resolved[top.1 as usize];
                    top.1 += 1;
                    if e & IN_GRAPH != 0 {
                        let u = (e & !IN_GRAPH) as usize;
                        match color[u] {
                            0 => {
                                color[u] = 1;
                                stack.push((u as u32, offsets[u]));
                            }
                            1 => {
                                return Err(format!(
                                    "cycle detected involving key '{}'",
                                    specs[u].key()
                                ));
                            }
                            _ => {}
                        }
                    }
                } else {
                    color[v] = 2;
                    stack.pop();
                }
            }
        }
        Ok((resolved, offsets, wanted_at))
    }

    fn cancel_keys(&mut self, client: ClientId, keys: Vec<String>) {
        let mut stack: Vec<u32> = keys
            .iter()
            .filter_map(|k| self.by_key.get(k.as_str()).copied())
            .collect();
        let named = stack.clone();
        let mut seen: FxHashSet<u32> = FxHashSet::default();
        let mut to_cancel = Vec::new();
        while let Some(slot) = stack.pop() {
            if !seen.insert(slot) {
                continue;
            }
            let t = &self.tasks[slot as usize];
            if t.state.is_pending() {
                to_cancel.push(slot);
            }
            for r in &t.dependents {
                let d = &self.tasks[r.slot as usize];
                if d.generation == r.generation && d.state.is_pending() {
                    stack.push(r.slot);
                }
            }
        }
        for &slot in &to_cancel {
            let t = &mut self.tasks[slot as usize];
            t.error = Some(Box::new(TaskErrorMsg {
                kind: ErrorKindMsg::Cancelled,
                message: format!("'{}' was cancelled", t.key),
            }));
            self.rec(slot, TaskState::Erred);
        }
        self.settle();
        for slot in named {
            self.remove_want(client, slot);
        }
    }

    fn scatter(
        &mut self,
        client: ClientId,
        submit_id: u64,
        keys: Vec<(String, u64)>,
        worker: Option<String>,
    ) {
        self.clients.entry(client).or_default();
        let targets = self.scatter_inner(client, keys, worker);
        self.out.push_back(Command::ToClient(
            client,
            ToClient::ScatterTargets { submit_id, targets },
        ));
    }

    fn scatter_inner(
        &mut self,
        client: ClientId,
        keys: Vec<(String, u64)>,
        worker: Option<String>,
    ) -> Result<Vec<(String, TaskId, String)>, String> {
        if self.worker_by_id.is_empty() {
            return Err("no workers to scatter to".into());
        }
        if let Some(reason) = self.over_client_limit(client, keys.len()) {
            return Err(reason);
        }
        let mut seen: FxHashSet<&str> = FxHashSet::default();
        for (k, _) in &keys {
            if k.is_empty() {
                return Err("empty key".into());
            }
            if !seen.insert(k.as_str()) {
                return Err(format!("duplicate key '{k}'"));
            }
            if self.by_key.contains_key(k.as_str()) {
                return Err(format!("key '{k}' already exists"));
            }
        }
        let fixed = match &worker {
            Some(name) => match self
                .worker_by_name
                .get(name.as_str())
                .or_else(|| self.worker_by_addr.get(name.as_str()))
            {
                Some(&w) => Some(w),
                None => return Err(format!("unknown worker '{name}'")),
            },
            None => None,
        };
        let mut targets = Vec::with_capacity(keys.len());
        for (key, nbytes) in keys {
            let w = fixed.unwrap_or_else(|| self.next_round_robin());
            let prefix = self.intern_prefix(&key);
            let slot = self.alloc_task(Arc::from(key.as_str()), prefix, client);
            let t = &mut self.tasks[slot as usize];
            t.flags |= F_SCATTER;
            t.nbytes = nbytes;
            let id = t.id;
            self.set_state(slot, TaskState::Waiting);
            self.add_want(client, slot);
            let address = self.workers[w as usize]
                .as_ref()
                .expect("live")
                .address
                .clone();
            targets.push((key, id, address));
        }
        Ok(targets)
    }

    fn next_round_robin(&mut self) -> u32 {
        let n = self.workers.len();
        for _ in 0..n {
            self.rr_cursor = (self.rr_cursor + 1) % n;
            if self.workers[self.rr_cursor]
                .as_ref()
                .is_some_and(|w| w.alive)
            {
                return self.rr_cursor as u32;
            }
        }
        unreachable!("scatter checked there are workers")
    }

    // -----------------------------------------------------------------------------------------
    // Workers

    fn worker_joined(&mut self, id: WorkerId, info: RegisterWorkerMsg) {
        let refuse = if self.worker_by_name.contains_key(&info.name) {
            Some(format!(
                "a worker named {} is already registered",
                info.name
            ))
        } else if self.worker_by_id.contains_key(&id) {
            Some(format!("worker id {id} is already registered"))
        } else if self.worker_by_addr.contains_key(&info.address) {
            Some(format!(
                "a worker at {} is already registered",
                info.address
            ))
        } else if info.nthreads == 0 {
            Some("a worker needs at least one thread".to_string())
        } else {
            None
        };
        if let Some(reason) = refuse {
            self.out
                .push_back(Command::ToWorker(id, ToWorker::Refused(reason)));
            return;
        }
        let slot = match self.free_workers.pop() {
            Some(s) => s,
            None => {
                self.workers.push(None);
                self.scratch_bytes.push(0);
                self.scratch_seen.push(false);
                (self.workers.len() - 1) as u32
            }
        };
        let res: Vec<(u16, f64, f64)> = info
            .resources
            .iter()
            .map(|r| (self.resource_index(&r.name), r.amount, 0.0))
            .collect();
        for &(r, _, _) in &res {
            self.res_workers[r as usize].push(slot);
        }
        let slots = self.root_slots(info.nthreads);
        let worker = Worker {
            id,
            name: info.name.clone(),
            address: info.address.clone(),
            nthreads: info.nthreads,
            memory_limit: info.memory_limit,
            resources_msg: info.resources,
            res,
            slots,
            alive: true,
            processing: Vec::new(),
            occupancy_us: 0,
            has_what: FxHashSet::default(),
            nbytes: 0,
            status: WorkerStatus::Running,
            metrics: WorkerMetricsMsg::default(),
            restarts: info.restarts,
            last_seen: self.now,
            occ_key: (0, 0, slot),
            in_free_slots: true,
            steals_incoming: 0,
            out_compute: Vec::new(),
            out_free: Vec::new(),
            dirty: false,
        };
        self.by_occupancy.insert(worker.occ_key);
        self.free_slots.insert(worker.occ_key);
        self.workers[slot as usize] = Some(worker);
        self.worker_by_id.insert(id, slot);
        self.worker_by_name.insert(info.name, slot);
        self.worker_by_addr.insert(info.address, slot);
        let heartbeat_ms = heartbeat_ms(self.worker_by_id.len());
        self.out.push_back(Command::ToWorker(
            id,
            ToWorker::Registered {
                id,
                heartbeat_ms,
                ttl_ms: self.config.worker_ttl.as_millis() as u64,
            },
        ));
        self.retry_no_worker(None);
    }

    pub(crate) fn worker_left(&mut self, id: WorkerId) {
        let Some(&w) = self.worker_by_id.get(&id) else {
            return;
        };
        // Take it out of every placement index first so nothing rescheduled lands on it.
        self.set_schedulable(w, false);
        {
            let worker = self.workers[w as usize].as_mut().expect("live");
            worker.alive = false;
            self.worker_by_name.remove(&worker.name);
            self.worker_by_addr.remove(&worker.address);
            for &(r, _, _) in &worker.res {
                self.res_workers[r as usize].retain(|&x| x != w);
            }
        }
        self.worker_by_id.remove(&id);
        let stale: Vec<u32> = self
            .steals
            .iter()
            .filter(|(_, s)| s.victim == w || s.thief == w)
            .map(|(&t, _)| t)
            .collect();
        for t in stale {
            let s = self.steals.remove(&t).expect("present");
            if let Some(thief) = self.workers[s.thief as usize].as_mut() {
                thief.steals_incoming -= 1;
            }
        }
        let worker = self.workers[w as usize].as_ref().expect("live");
        let mut processing: Vec<u32> = worker.processing.to_vec();
        let mut held: Vec<u32> = worker.has_what.iter().copied().collect();
        processing.sort_unstable_by_key(|&s| self.tasks[s as usize].id);
        held.sort_unstable_by_key(|&s| self.tasks[s as usize].id);
        self.recovery.workers_lost += 1;
        // Only tasks the worker may have been executing are suspects: it runs its tasks in
        // the order they were assigned, so those are the `nthreads` oldest assignments. The
        // rest were queued behind them (with root-task batching, thousands of tiny tasks) and
        // cannot have killed it; counting them would fail innocent tasks after a few crashes.
        let suspects: Vec<u32> = {
            let now = self.assign_seq;
            let mut by_age = processing.clone();
            by_age.sort_unstable_by_key(|&s| {
                std::cmp::Reverse(now.wrapping_sub(self.tasks[s as usize].assigned_seq))
            });
            by_age.truncate(worker.nthreads as usize);
            by_age
        };
        for slot in processing {
            let allowed = self.config.allowed_failures;
            let t = &mut self.tasks[slot as usize];
            if suspects.contains(&slot) {
                t.suspicious += 1;
            }
            if t.suspicious > allowed {
                t.error = Some(Box::new(TaskErrorMsg {
                    kind: ErrorKindMsg::KilledWorker,
                    message: format!(
                        "task '{}' was running on {} workers that died",
                        t.key, t.suspicious
                    ),
                }));
                self.transition_to_erred(slot);
                self.recovery.killed_worker_errors += 1;
            } else {
                self.reschedule(slot, false);
                self.recovery.tasks_rescheduled += 1;
            }
        }
        for slot in held {
            let t = &mut self.tasks[slot as usize];
            // Clients were told the first holder; if that was this worker, tell them the next.
            let told = t.who_has.first() == Some(&w);
            t.who_has.retain(|&h| h != w);
            if t.who_has.is_empty() {
                self.memory_released(slot);
                self.recovery.results_lost += 1;
            } else if told {
                self.notify_memory(slot);
            }
        }
        let worker = self.workers[w as usize].take().expect("live");
        debug_assert!(worker.processing.is_empty());
        self.free_workers.push(w);
    }

    fn tasks_finished(&mut self, id: WorkerId, finished: Vec<TaskFinishedMsg>) {
        let Some(&w) = self.worker_by_id.get(&id) else {
            return;
        };
        for f in finished {
            let Some(slot) = self.task_slot(f.task) else {
                self.send_free(w, f.task);
                continue;
            };
            let t = &self.tasks[slot as usize];
            match t.state {
                TaskState::Processing => {
                    let on = t.processing_on;
                    self.finished_total += 1;
                    let run = TaskRun {
                        key: t.key.clone(),
                        worker: id,
                        thread: f.thread,
                        finished: self.now.expect("inside handle_event"),
                        duration_us: f.duration_us,
                        started_us: f.started_us,
                        erred: false,
                    };
                    self.record_run(run);
                    self.pending_inline = f.inline.filter(|v| v.len() as u64 == f.nbytes);
                    if on != w {
                        // Another worker was given the task (a steal, a reschedule) but this
                        // one ran it anyway: keep the result, cancel the other copy.
                        self.remove_from_processing(slot, true);
                        self.finish_task(slot, w, f.nbytes, f.duration_us, false);
                    } else {
                        self.finish_task(slot, w, f.nbytes, f.duration_us, true);
                    }
                    self.pending_inline = None;
                }
                TaskState::Memory => {
                    if !t.who_has.contains(&w) {
                        self.add_holder(slot, w);
                    }
                }
                _ => self.send_free(w, f.task),
            }
        }
    }

    fn tasks_erred(&mut self, id: WorkerId, errors: Vec<TaskErredMsg>) {
        let Some(&w) = self.worker_by_id.get(&id) else {
            return;
        };
        for e in errors {
            let Some(slot) = self.task_slot(e.task) else {
                continue;
            };
            let t = &self.tasks[slot as usize];
            if t.state != TaskState::Processing || t.processing_on != w {
                continue;
            }
            if let Some(thread) = e.thread {
                let run = TaskRun {
                    key: t.key.clone(),
                    worker: id,
                    thread,
                    finished: self.now.expect("inside handle_event"),
                    duration_us: e.duration_us,
                    started_us: e.started_us,
                    erred: true,
                };
                self.record_run(run);
            }
            let error = e.error;
            let t = &mut self.tasks[slot as usize];
            if t.retries_left > 0 {
                t.retries_left -= 1;
                self.reschedule(slot, false);
            } else {
                t.error = Some(Box::new(error));
                self.transition_to_erred(slot);
            }
        }
    }

    fn missing_data(&mut self, id: WorkerId, task: TaskId, missing: Vec<TaskId>) {
        let Some(&w) = self.worker_by_id.get(&id) else {
            return;
        };
        for m in missing {
            let Some(slot) = self.task_slot(m) else {
                continue;
            };
            if self.tasks[slot as usize].state != TaskState::Memory {
                continue;
            }
            let holders = if self.tasks[slot as usize].who_has.contains(&w) {
                // We told it "you have it", and it did not.
                vec![w]
            } else {
                // It tried every holder we named: none of them could serve it.
                self.tasks[slot as usize].who_has.to_vec()
            };
            // Free even on the reporter: if it did get a copy meanwhile (a replica from a
            // retiring worker), nothing would free it later.
            for h in holders {
                self.remove_holder(slot, h, true);
            }
            if self.tasks[slot as usize].who_has.is_empty() {
                self.memory_released(slot);
            }
        }
        if let Some(slot) = self.task_slot(task) {
            let t = &self.tasks[slot as usize];
            if t.state == TaskState::Processing && t.processing_on == w {
                self.reschedule(slot, false);
            }
        }
    }

    fn data_added(&mut self, id: WorkerId, added: Vec<(TaskId, u64)>) {
        let Some(&w) = self.worker_by_id.get(&id) else {
            return;
        };
        for (task, nbytes) in added {
            let Some(slot) = self.task_slot(task) else {
                self.send_free(w, task);
                continue;
            };
            let t = &self.tasks[slot as usize];
            match t.state {
                TaskState::Waiting if t.flags & F_SCATTER != 0 => {
                    self.tasks[slot as usize].flags &= !F_SCATTER;
                    self.enter_memory(slot, w, nbytes);
                }
                TaskState::Memory => {
                    if !t.who_has.contains(&w) {
                        self.add_holder(slot, w);
                    }
                }
                _ => self.send_free(w, task),
            }
        }
    }

    fn released(&mut self, id: WorkerId, tasks: Vec<TaskId>) {
        let Some(&w) = self.worker_by_id.get(&id) else {
            return;
        };
        for task in tasks {
            let Some(slot) = self.task_slot(task) else {
                continue;
            };
            let t = &self.tasks[slot as usize];
            if t.state != TaskState::Processing || t.processing_on != w {
                continue;
            }
            match self.steals.get(&slot).copied() {
                Some(s) if s.victim == w => self.move_stolen(slot, s.thief),
                _ => self.reschedule(slot, false),
            }
        }
    }

    pub(crate) fn add_holder(&mut self, slot: u32, w: u32) {
        let t = &mut self.tasks[slot as usize];
        t.who_has.push(w);
        let nbytes = t.nbytes;
        let worker = self.workers[w as usize].as_mut().expect("live");
        worker.has_what.insert(slot);
        worker.nbytes += nbytes;
    }

    pub(crate) fn remove_holder(&mut self, slot: u32, w: u32, free: bool) {
        self.tasks[slot as usize].who_has.retain(|&h| h != w);
        self.detach_holder(slot, w, free);
    }

    /// The worker side of [`remove_holder`](Self::remove_holder): `w` no longer holds it.
    pub(crate) fn detach_holder(&mut self, slot: u32, w: u32, free: bool) {
        let t = &self.tasks[slot as usize];
        let (nbytes, id) = (t.nbytes, t.id);
        if let Some(worker) = self.workers[w as usize].as_mut() {
            worker.has_what.remove(&slot);
            worker.nbytes -= nbytes;
        }
        if free {
            self.send_free(w, id);
        }
    }
}

/// Dependencies in CSR form (flat list, offsets per task) and the wanted keys, each a slot or,
/// with [`IN_GRAPH`], an index into the submitted list.
type ResolvedGraph = (Vec<u32>, Vec<u32>, Vec<u32>);

/// Marks a resolved dependency as an index into the submitted list rather than a slot.
const IN_GRAPH: u32 = 1 << 31;

/// Batches this long or longer leave their successor this much room up front.
const KEEP_BATCH: usize = 65_536;

/// Take a batch and leave an empty one sized like it (up to [`KEEP_BATCH`]): a burst fills
/// batches of similar size, and a batch that starts empty doubles about log2(n) times, each
/// time copying every message so far into fresh memory.
fn take_sized<T>(batch: &mut Vec<T>) -> Vec<T> {
    let n = batch.len().min(KEEP_BATCH);
    std::mem::replace(batch, Vec::with_capacity(n))
}

#[cfg(test)]
mod tests {
    use super::{Core, CoreConfig};
    use crate::task::key_prefix;

    #[test]
    fn interned_prefix_matches_key_prefix() {
        let mut core = Core::new(CoreConfig::default());
        let keys = [
            "-3",
            "-3-5",
            "t-1",
            "t-2",
            "t-x-3",
            "t-x-4",
            "t-x",
            "a--b-1",
            "a--b-2",
            "a--1",
            "inc-deadbeefcafe-1",
            "inc-2",
            "x",
            "x-1",
            "x-1-2",
            "3-4",
            "3-5",
        ];
        for key in keys {
            let p = core.intern_prefix(key);
            assert_eq!(&*core.prefixes[p as usize].name, key_prefix(key), "{key}");
        }
    }
}
