//! Scheduler memory per task, measured with a counting allocator: a 1,000,000-task graph (in
//! release builds; smaller in debug) must cost at most 1 KiB of scheduler memory per task, and
//! releasing it must give (nearly) everything back.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use taskwire_protocol::{RegisterWorkerMsg, TaskFinishedMsg, TaskSpecMsg, ToWorker, WorkerId};
use taskwire_scheduler_core::{Command, Core, CoreConfig, Event};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[path = "support/zero_time.rs"]
mod zero_time;

use zero_time::CLIENT;

/// Keys like `inc-123456`, 10% roots, others with 1-3 inputs among the previous 64 tasks.
fn graph(n: usize) -> (Vec<TaskSpecMsg>, Vec<String>) {
    zero_time::layered_graph(n, 0x9e37_79b9_7f4a_7c15, "inc", "inc", &[1, 2, 3, 4])
}

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

#[test]
fn a_million_tasks_fit_in_a_kib_each_and_are_given_back() {
    let n = if cfg!(debug_assertions) {
        100_000
    } else {
        1_000_000
    };
    let now = Instant::now();
    let b0 = live();
    let (tasks, wanted) = graph(n);
    let input = live() - b0;
    let release = wanted.clone();
    // Baseline: everything but the submitted graph, which the core consumes.
    let before = live() - input;
    let mut core = Core::new(CoreConfig::default());
    // No workers: the whole graph sits in the scheduler (waiting / queued / no-worker).
    core.handle_event(
        now,
        Event::UpdateGraph {
            client: CLIENT,
            submit_id: 1,
            tasks,
            wanted,
        },
    );
    while core.poll_command().is_some() {}
    assert_eq!(core.counts().total(), n);
    let held = live() - before;
    let per_task = held as f64 / n as f64;
    eprintln!(
        "{n} tasks: {} MiB held, {per_task:.0} bytes per task",
        held >> 20
    );
    assert!(per_task <= 1024.0, "{per_task} bytes per task");

    // Run it all on one zero-time worker, then let go.
    core.handle_event(
        now,
        Event::WorkerJoined {
            worker: WorkerId(1),
            info: RegisterWorkerMsg {
                name: "w".into(),
                address: "tcp://w:1".into(),
                nthreads: 8,
                memory_limit: 0,
                resources: vec![],
                pid: 0,
                restarts: 0,
            },
        },
    );
    let mut pending = Vec::new();
    loop {
        while let Some(c) = core.poll_command() {
            if let Command::ToWorker(w, ToWorker::Compute(batch)) = c {
                let tasks = batch
                    .iter()
                    .map(|m| TaskFinishedMsg {
                        task: m.task,
                        nbytes: 8,
                        duration_us: 1,
                        started_us: 0,
                        thread: 0,
                        inline: None,
                    })
                    .collect();
                pending.push(Event::TasksFinished { worker: w, tasks });
            }
        }
        let Some(e) = pending.pop() else { break };
        core.handle_event(now, e);
    }
    assert_eq!(core.counts().memory, release.len());
    core.handle_event(
        now,
        Event::ReleaseKeys {
            client: CLIENT,
            keys: release,
        },
    );
    while core.poll_command().is_some() {}
    assert_eq!(core.counts().total(), 0);
    let left = live() - before;
    eprintln!(
        "after release: {} KiB still allocated (capacity kept by indexes and the log)",
        left >> 10
    );
    // Forgotten tasks free their memory: what stays is bounded, whatever the graph size:
    // table capacity kept for the next graph (128k slots) and the bounded transition log.
    assert!(left < 64 << 20, "{left} bytes left of {held}");
    drop(core);
    assert!(
        live() - before < 64 * 1024,
        "dropping the core frees everything"
    );
}
