//! One 100k-task zero-time simulation, for instruction counting with callgrind:
//!
//! `valgrind --tool=callgrind --toggle-collect='*measured*' target/release/examples/zero_worker [WORKERS] [TASKS]`
//!
//! Same graph and loop as `benches/core.rs`; only the second run (submit, run, release) is counted.

#[path = "../tests/support/zero_time.rs"]
mod zero_time;

use std::time::Instant;
use taskwire_protocol::TaskSpecMsg;
use taskwire_scheduler_core::Core;
use zero_time::{cluster, graph, run_graph};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The counted run (callgrind `--toggle-collect='*measured*'`).
#[inline(never)]
fn measured(core: &mut Core, tasks: Vec<TaskSpecMsg>, wanted: Vec<String>) {
    // Distinct from `run_graph`, so the two are not merged into one function.
    std::hint::black_box(core.counts());
    run_graph(core, tasks, wanted);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let nworkers: usize = args.next().map_or(2, |a| a.parse().expect("workers"));
    let n: usize = args.next().map_or(100_000, |a| a.parse().expect("tasks"));
    let mut core = cluster(nworkers);
    // Warm up once (table capacity kept for the next graph, as in the bench's later iterations).
    let (t, w) = graph(n);
    run_graph(&mut core, t, w);
    let (t, w) = graph(n);
    let start = Instant::now();
    measured(&mut core, t, w);
    let el = start.elapsed();
    println!(
        "{nworkers} workers, {n} tasks: {:.0} ns/task",
        el.as_nanos() as f64 / n as f64
    );
}
