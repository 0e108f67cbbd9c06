//! Scheduler core throughput with simulated zero-time workers: every `Compute` is answered at
//! once with `TasksFinished`, so what is measured is the core (and this loop), per task.
//!
//! `cargo bench -p taskwire-scheduler-core --bench core`

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

#[path = "../tests/support/zero_time.rs"]
mod zero_time;

use zero_time::{cluster, graph, run_graph as run};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
