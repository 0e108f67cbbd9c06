//! Scheduler core throughput with simulated zero-time workers: every `Compute` is answered at
//! once with `TasksFinished`, so what is measured is the core (and this loop), per task.
//!
//! `cargo bench -p taskwire-scheduler-core --bench core`

use std::collections::VecDeque;
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use taskwire_protocol::{
    ClientId, RegisterWorkerMsg, TaskFinishedMsg, TaskKindMsg, TaskSpecMsg, ToWorker, WorkerId,
};
use taskwire_scheduler_core::{Command, Core, CoreConfig, Event};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLIENT: ClientId = ClientId(1);

/// A layered DAG: 10% roots, the rest with 1-3 inputs from the previous 64 tasks.
fn graph(n: usize) -> (Vec<TaskSpecMsg>, Vec<String>) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
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
                deps.push(format!("t-{j}"));
            }
        }
        tasks.push(TaskSpecMsg {
            key: format!("t-{i}"),
            deps,
            kind: TaskKindMsg::Function {
                name: "noop".into(),
                args: Vec::new(),
            },
            resources: Vec::new(),
            workers: Vec::new(),
            priority: 0,
            retries: 0,
        });
    }
    let wanted = (0..n)
        .filter(|&i| !has_dependent[i])
        .map(|i| format!("t-{i}"))
        .collect();
    (tasks, wanted)
}

fn cluster(nworkers: usize) -> Core {
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
                },
            },
        );
    }
    while core.poll_command().is_some() {}
    core
}

/// Submit, run to completion with zero-time workers, release everything.
fn run(core: &mut Core, tasks: Vec<TaskSpecMsg>, wanted: Vec<String>) {
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

fn bench(c: &mut Criterion) {
    const N: usize = 100_000;
    let mut group = c.benchmark_group("zero-worker");
    group.sample_size(10);
    group.measurement_time(std::time::Duration::from_secs(8));
    group.throughput(Throughput::Elements(N as u64));
    for nworkers in [2usize, 100, 1000, 10_000] {
        let mut core = cluster(nworkers);
        group.bench_function(format!("100k-tasks/{nworkers}-workers"), |b| {
            b.iter_batched(
                || graph(N),
                |(t, w)| run(&mut core, t, w),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
