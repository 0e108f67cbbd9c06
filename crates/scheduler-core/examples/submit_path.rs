//! The scheduler's cost of taking in a submitted graph, for instruction counting with
//! callgrind: the `bench tasks scale` graph (`noop` leaves plus a fan-in-100 reduction tree,
//! every task wanted through `want_tasks`, as the client sends it) archived as one `FromClient::UpdateGraph`, then
//! validated and handed to a core with 2 workers, and the core's commands drained.
//!
//! ```text
//! cargo build --release -p taskwire-scheduler-core --example submit_path
//! valgrind --tool=callgrind --toggle-collect='*measured*' \
//!   target/release/examples/submit_path archived 200000
//! ```
//!
//! `archived` is the scheduler's path (`access` once, `Event::UpdateGraphArchived`, task records
//! built from the archive); `owned` deserializes the message first (`decode`,
//! `Event::UpdateGraph`), the path before it.

#[path = "../tests/support/zero_time.rs"]
mod zero_time;

use bytes::Bytes;
use std::time::Instant;
use taskwire_protocol::{FromClient, TaskKindMsg, TaskSpecMsg, access, decode, encode};
use taskwire_scheduler_core::{Core, Event};
use zero_time::{CLIENT, cluster};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const FAN_IN: usize = 100;

fn spec(key: String, deps: Vec<String>) -> TaskSpecMsg {
    TaskSpecMsg {
        key,
        deps,
        kind: TaskKindMsg::Function {
            name: "noop".into(),
            args: Vec::new(),
        },
        resources: Vec::new(),
        workers: Vec::new(),
        priority: 0,
        retries: 0,
    }
}

/// About `n` tasks: leaves `s-<i>` and the reduction tree over them.
fn scale_graph(n: usize) -> Vec<TaskSpecMsg> {
    let leaves = n - n / (FAN_IN - 1);
    let mut tasks: Vec<TaskSpecMsg> = (0..leaves)
        .map(|i| spec(format!("s-{i}"), Vec::new()))
        .collect();
    let mut level: Vec<String> = tasks.iter().map(|t| t.key.clone()).collect();
    let mut next_id = leaves;
    while level.len() > 1 {
        let mut next = Vec::new();
        for chunk in level.chunks(FAN_IN) {
            let key = format!("s-{next_id}");
            next_id += 1;
            tasks.push(spec(key.clone(), chunk.to_vec()));
            next.push(key);
        }
        level = next;
    }
    tasks
}

fn drain(core: &mut Core) -> usize {
    let mut n = 0;
    while core.poll_command().is_some() {
        n += 1;
    }
    n
}

/// The counted part (callgrind `--toggle-collect='*measured*'`).
#[inline(never)]
fn measured(core: &mut Core, header: &Bytes, archived: bool) -> usize {
    let event = if archived {
        Event::UpdateGraphArchived {
            client: CLIENT,
            graph: access::<FromClient>(header).expect("valid graph"),
        }
    } else {
        let FromClient::UpdateGraph {
            submit_id, tasks, ..
        } = decode::<FromClient>(header).expect("valid graph")
        else {
            unreachable!("encoded above")
        };
        // The owned event names its wanted keys; the message wants every task.
        let wanted = tasks.iter().map(|t| t.key.clone()).collect();
        Event::UpdateGraph {
            client: CLIENT,
            submit_id,
            tasks,
            wanted,
        }
    };
    core.handle_event(Instant::now(), event);
    drain(core)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let archived = match args.next().as_deref() {
        Some("archived") | None => true,
        Some("owned") => false,
        Some(other) => panic!("mode is archived or owned, not {other}"),
    };
    let n: usize = args.next().map_or(200_000, |a| a.parse().expect("tasks"));
    let tasks = scale_graph(n);
    let count = tasks.len();
    // As the client sends it: every task wanted, no key repeated (`want_tasks`).
    let header = encode(&FromClient::UpdateGraph {
        submit_id: 1,
        tasks,
        wanted: Vec::new(),
        want_tasks: true,
    });
    let mut core = cluster(2);
    let start = Instant::now();
    let commands = measured(&mut core, &header, archived);
    let el = start.elapsed();
    println!(
        "{} path, {count} tasks ({} header bytes): {:.0} ns/task, {commands} commands",
        if archived { "archived" } else { "owned" },
        header.len(),
        el.as_nanos() as f64 / count as f64
    );
}
