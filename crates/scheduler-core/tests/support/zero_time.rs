//! A zero-time simulated cluster for the core's benchmark, its callgrind example and its
//! memory test: a layered random DAG, workers that finish every task the moment it arrives,
//! and a driver loop. Included with `#[path]`; each target uses part of it.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::time::Instant;

use taskwire_protocol::{
    ClientId, RegisterWorkerMsg, TaskFinishedMsg, TaskKindMsg, TaskSpecMsg, ToWorker, WorkerId,
};
use taskwire_scheduler_core::{Command, Core, CoreConfig, Event};

pub(crate) const CLIENT: ClientId = ClientId(1);

/// Keys `<prefix>-<i>`: 10% roots, the rest with 1-3 inputs among the previous 64 tasks, all
/// calling `function` with `args`. Returns the tasks and the keys nothing depends on.
pub(crate) fn layered_graph(
    n: usize,
    seed: u64,
    prefix: &str,
    function: &str,
    args: &[u8],
) -> (Vec<TaskSpecMsg>, Vec<String>) {
    let mut state = seed;
    let mut rnd = move |m: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % m as u64) as usize
    };
    let mut has_dependent = vec![false; n];
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let mut deps = Vec::new();
        if i >= 10 && rnd(10) != 0 {
            for _ in 0..1 + rnd(3) {
                let j = i - 1 - rnd(i.min(64));
                has_dependent[j] = true;
                deps.push(format!("{prefix}-{j}"));
            }
        }
        tasks.push(TaskSpecMsg {
            key: format!("{prefix}-{i}"),
            deps,
            kind: TaskKindMsg::Function {
                name: function.into(),
                args: args.to_vec(),
            },
            resources: Vec::new(),
            workers: Vec::new(),
            priority: 0,
            retries: 0,
        });
    }
    let wanted = (0..n)
        .filter(|&i| !has_dependent[i])
        .map(|i| format!("{prefix}-{i}"))
        .collect();
    (tasks, wanted)
}

/// The graph the benchmark and the callgrind example run.
pub(crate) fn graph(n: usize) -> (Vec<TaskSpecMsg>, Vec<String>) {
    layered_graph(n, 0x2545_f491_4f6c_dd1d, "t", "noop", &[])
}

pub(crate) fn cluster(nworkers: usize) -> Core {
    let mut core = Core::new(CoreConfig::default());
    let now = Instant::now();
    core.handle_event(now, Event::ClientConnected { client: CLIENT });
    for i in 0..nworkers {
        core.handle_event(
            now,
            Event::WorkerJoined {
                worker: WorkerId(i as u64),
                info: RegisterWorkerMsg {
                    name: format!("w{i}"),
                    address: format!("tcp://10.0.{}.{}:9000", i / 256, i % 256),
                    nthreads: 4,
                    memory_limit: 0,
                    resources: Vec::new(),
                    pid: 0,
                    restarts: 0,
                },
            },
        );
    }
    while core.poll_command().is_some() {}
    core
}

/// Submit, run to completion with zero-time workers, release everything.
#[inline(never)]
pub(crate) fn run_graph(core: &mut Core, tasks: Vec<TaskSpecMsg>, wanted: Vec<String>) {
    let now = Instant::now();
    let release = wanted.clone();
    let mut events = VecDeque::new();
    events.push_back(Event::UpdateGraph {
        client: CLIENT,
        submit_id: 1,
        tasks,
        wanted,
    });
    while let Some(e) = events.pop_front() {
        core.handle_event(now, e);
        while let Some(c) = core.poll_command() {
            if let Command::ToWorker(w, ToWorker::Compute(batch)) = c {
                let tasks = batch
                    .iter()
                    .map(|m| TaskFinishedMsg {
                        task: m.task,
                        nbytes: 8,
                        duration_us: 0,
                        started_us: 0,
                        thread: 0,
                        inline: None,
                    })
                    .collect();
                events.push_back(Event::TasksFinished { worker: w, tasks });
            }
        }
    }
    core.handle_event(
        now,
        Event::ReleaseKeys {
            client: CLIENT,
            keys: release,
        },
    );
    while core.poll_command().is_some() {}
    assert_eq!(core.counts().total(), 0);
}
