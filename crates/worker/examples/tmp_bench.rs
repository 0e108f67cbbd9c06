//! temporary
use std::time::Instant;
use taskwire_protocol::{CommandMsg, TaskId, TaskKindMsg};
use taskwire_worker::*;

fn main() {
    for nthreads in [1, 2] {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let ex = Executor::start(
            nthreads,
            Registry::stock(),
            "w".into(),
            std::env::temp_dir(),
            tx,
        );
        let n = 300_000u64;
        let t = Instant::now();
        for i in 0..n {
            ex.submit(Job {
                task: TaskId(i),
                key: String::new(),
                kind: TaskKindMsg::Function {
                    name: "noop".into(),
                    args: vec![],
                },
                inputs: vec![],
            });
        }
        for _ in 0..n {
            rx.blocking_recv().unwrap();
        }
        let e = t.elapsed();
        println!(
            "noop x{n} on {nthreads} threads: {:?} = {:.0}/s",
            e,
            n as f64 / e.as_secs_f64()
        );
        // trickle: submit one, wait for it (latency-bound)
        let t = Instant::now();
        let m = 20_000u64;
        for i in 0..m {
            ex.submit(Job {
                task: TaskId(i),
                key: String::new(),
                kind: TaskKindMsg::Function {
                    name: "noop".into(),
                    args: vec![],
                },
                inputs: vec![],
            });
            rx.blocking_recv().unwrap();
        }
        println!("  round trip: {:?}/job", t.elapsed() / m as u32);
    }
    let dir = std::env::temp_dir();
    let c = CommandMsg {
        argv: vec!["/bin/true".into()],
        ..Default::default()
    };
    let t = Instant::now();
    let n = 2000;
    for _ in 0..n {
        run_command(&c, &dir).unwrap();
    }
    println!("run_command /bin/true: {:?}/spawn", t.elapsed() / n);
    let t = Instant::now();
    for _ in 0..n {
        std::process::Command::new("/bin/true").status().unwrap();
    }
    println!(
        "Command::status /bin/true (no pipes, no cwd): {:?}/spawn",
        t.elapsed() / n
    );
    let t = Instant::now();
    let b = pattern_bytes(64 << 20).unwrap();
    println!("pattern 64MiB: {:?}", t.elapsed());
    let t = Instant::now();
    let h = fnv1a64(&b);
    println!("fnv 64MiB: {:?} {h}", t.elapsed());
}
