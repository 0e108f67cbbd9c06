//! rkyv cost of a realistic `ToWorker::Compute` batch of 10,000 tasks: `encode`, `access`
//! (validate, zero copy) and `decode` (validate and deserialize). The target is decode and
//! validate in under 1 ms.
//!
//! Run with `cargo bench -p taskwire-protocol --bench batch`.

use criterion::{Criterion, Throughput};
use std::hint::black_box;
use taskwire_protocol::{
    ComputeTaskMsg, DepMsg, TaskId, TaskKindMsg, ToWorker, access, decode, encode,
};

/// The `taskwire` binary's allocator, so allocation costs match what users get.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TASKS: u64 = 10_000;

/// What the scheduler sends when it hands a worker 10,000 `inc` tasks, each needing one input
/// held by another worker.
fn batch(n: u64) -> ToWorker {
    ToWorker::Compute(
        (0..n)
            .map(|i| ComputeTaskMsg {
                task: TaskId(i),
                key: format!("inc-{i}"),
                kind: TaskKindMsg::Function {
                    name: "inc".into(),
                    args: i.to_le_bytes().to_vec(),
                },
                deps: vec![DepMsg {
                    task: TaskId(i + 1_000_000),
                    nbytes: 8,
                    holders: vec!["tcp://127.0.0.1:4000".into()],
                }],
                resources: vec![],
                priority: 0,
            })
            .collect(),
    )
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let msg = batch(TASKS);
    let header = encode(&msg);
    eprintln!("10,000-task batch: {} header bytes", header.len());
    let mut g = c.benchmark_group("protocol/compute_10k");
    g.throughput(Throughput::Elements(TASKS));
    g.bench_function("encode", |b| b.iter(|| black_box(encode(black_box(&msg)))));
    g.bench_function("access", |b| {
        b.iter(|| {
            let a = access::<ToWorker>(black_box(&header)).expect("valid");
            black_box(a.bytes().len())
        })
    });
    g.bench_function("decode", |b| {
        b.iter(|| black_box(decode::<ToWorker>(black_box(&header)).expect("valid")))
    });
    g.finish();
    c.final_summary();
}
