//! The executor through the public API, the way the worker process drives it: jobs in,
//! outcomes out of a tokio channel, results of one job fed as inputs to the next.

use bytes::Bytes;
use std::collections::HashMap;
use std::time::Duration;
use taskwire_protocol::{CommandMsg, CommandOutputMsg, ErrorKindMsg, TaskId, TaskKindMsg};
use taskwire_worker::{
    Executor, Job, JobOutcome, Registry, decode_i64, encode_i64, fnv1a64, pattern_bytes,
};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

fn start(nthreads: usize) -> (Executor, UnboundedReceiver<JobOutcome>) {
    let (tx, rx) = unbounded_channel();
    let ex = Executor::start(
        nthreads,
        Registry::stock(),
        "w-test".into(),
        std::env::temp_dir(),
        tx,
    );
    (ex, rx)
}

fn job(task: u64, name: &str, args: Vec<u8>, inputs: Vec<Bytes>) -> Job {
    Job {
        task: TaskId(task),
        key: format!("{name}-{task}"),
        kind: TaskKindMsg::Function {
            name: name.into(),
            args,
        },
        inputs,
    }
}

fn run_one(ex: &Executor, rx: &mut UnboundedReceiver<JobOutcome>, j: Job) -> JobOutcome {
    let task = j.task;
    ex.submit(j);
    let o = rx.blocking_recv().unwrap();
    assert_eq!(o.task, task);
    o
}

#[test]
fn big_data_pipeline_checksums_match() {
    // make-bytes on one "worker", checksum of it on another: what an end-to-end transfer test
    // checks, minus the network.
    let (ex, mut rx) = start(2);
    let n = 64usize << 20;
    let data = run_one(
        &ex,
        &mut rx,
        job(1, "make-bytes", (n as u64).to_le_bytes().to_vec(), vec![]),
    )
    .result
    .unwrap();
    assert_eq!(data.len(), n);
    let half = n / 2;
    let parts = vec![data.slice(..half), data.slice(half..)];
    let sum = run_one(&ex, &mut rx, job(2, "checksum", vec![], parts))
        .result
        .unwrap();
    assert_eq!(sum[..], fnv1a64(&pattern_bytes(n).unwrap()).to_le_bytes());
}

#[test]
fn chained_numbers() {
    let (ex, mut rx) = start(2);
    let a = run_one(&ex, &mut rx, job(1, "inc", encode_i64(1).to_vec(), vec![]))
        .result
        .unwrap();
    let b = run_one(&ex, &mut rx, job(2, "inc", vec![], vec![a.clone()]))
        .result
        .unwrap();
    let s = run_one(
        &ex,
        &mut rx,
        job(3, "sum", encode_i64(100).to_vec(), vec![a, b]),
    )
    .result
    .unwrap();
    assert_eq!(decode_i64(&s).unwrap(), 105);
    let l = run_one(&ex, &mut rx, job(4, "len", vec![], vec![s]))
        .result
        .unwrap();
    assert_eq!(decode_i64(&l).unwrap(), 8);
}

#[test]
fn command_job_output_decodes() {
    let (ex, mut rx) = start(1);
    let cmd = CommandMsg {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "tr a-z A-Z; echo \"$GREETING\" >&2".into(),
        ],
        env: vec![("GREETING".into(), "hi".into())],
        cwd: None,
        stdin: Some(b"shout".to_vec()),
    };
    let o = run_one(
        &ex,
        &mut rx,
        Job {
            task: TaskId(1),
            key: "cmd-1".into(),
            kind: TaskKindMsg::Command(cmd),
            inputs: vec![],
        },
    );
    let out: CommandOutputMsg = taskwire_protocol::decode(&o.result.unwrap()).unwrap();
    assert_eq!(
        out,
        CommandOutputMsg {
            exit_code: 0,
            stdout: b"SHOUT".to_vec(),
            stderr: b"hi\n".to_vec()
        }
    );
}

#[test]
fn sleep_durations_are_measured() {
    let (ex, mut rx) = start(4);
    for i in 0..4 {
        ex.submit(job(i, "sleep", 100u64.to_le_bytes().to_vec(), vec![]));
    }
    let mut durations = HashMap::new();
    for _ in 0..4 {
        let o = rx.blocking_recv().unwrap();
        assert!(o.result.unwrap().is_empty());
        durations.insert(o.task, o.duration);
    }
    assert_eq!(durations.len(), 4);
    assert!(durations.values().all(|d| *d >= Duration::from_millis(100)));
}

/// The dashboard's task stream draws one row per executor thread: each outcome names the
/// thread that ran it. Four jobs that wait for each other can only finish if four threads run
/// them at once, so they must name four different threads.
#[test]
fn outcomes_name_the_thread_that_ran_them() {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
    let mut registry = Registry::stock();
    registry.register("meet", move |_, _, _| {
        barrier.wait();
        Ok(Bytes::new())
    });
    let (tx, mut rx) = unbounded_channel();
    let ex = Executor::start(4, registry, "w-test".into(), std::env::temp_dir(), tx);
    for i in 0..4 {
        ex.submit(job(i, "meet", vec![], vec![]));
    }
    let mut threads: Vec<u32> = (0..4).map(|_| rx.blocking_recv().unwrap().thread).collect();
    threads.sort_unstable();
    assert_eq!(threads, [0, 1, 2, 3]);
    // A failure names its thread too.
    let o = run_one(&ex, &mut rx, job(9, "fail", b"boom".to_vec(), vec![]));
    assert!(o.result.is_err() && o.thread < 4);
}

#[test]
fn errors_of_every_kind_come_back_and_the_pool_keeps_going() {
    let (ex, mut rx) = start(2);
    let jobs = vec![
        job(1, "fail", b"no".to_vec(), vec![]),
        job(2, "panic", b"boom".to_vec(), vec![]),
        job(3, "nope", vec![], vec![]),
        job(4, "inc", b"abc".to_vec(), vec![]),
        Job {
            task: TaskId(5),
            key: "cmd-5".into(),
            kind: TaskKindMsg::Command(CommandMsg {
                argv: vec!["false".into()],
                ..Default::default()
            }),
            inputs: vec![],
        },
        job(6, "noop", vec![], vec![]),
    ];
    ex.submit_all(jobs);
    let mut got: HashMap<TaskId, JobOutcome> = HashMap::new();
    for _ in 0..6 {
        let o = rx.blocking_recv().unwrap();
        got.insert(o.task, o);
    }
    let err = |t: u64| got[&TaskId(t)].result.clone().unwrap_err();
    assert_eq!(err(1).kind, ErrorKindMsg::Failed);
    assert_eq!(err(2).kind, ErrorKindMsg::Panicked);
    assert_eq!(err(2).message, "task panicked: boom");
    assert_eq!(err(3).kind, ErrorKindMsg::UnknownFunction);
    assert!(
        err(3)
            .message
            .starts_with("unknown function 'nope' (this worker has: add, alloc, checksum,")
    );
    assert_eq!(err(4).message, "inc: expected 8-byte i64, got 3 bytes");
    assert!(matches!(
        err(5).kind,
        ErrorKindMsg::Command {
            exit_code: Some(1),
            ..
        }
    ));
    assert!(got[&TaskId(6)].result.is_ok());
}

#[test]
fn a_paused_executor_finishes_running_jobs_and_holds_queued_ones() {
    let (ex, mut rx) = start(2);
    ex.submit(job(1, "sleep", 200u64.to_le_bytes().to_vec(), vec![]));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ex.executing() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sleep never started"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    ex.set_paused(true);
    ex.submit_all((2..5).map(|t| job(t, "inc", encode_i64(t as i64).to_vec(), vec![])));
    // The running job goes on and reports.
    assert_eq!(rx.blocking_recv().unwrap().task, TaskId(1));
    // Both threads are free now, yet nothing queued starts.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!((ex.queued(), ex.executing()), (3, 0));
    assert!(rx.try_recv().is_err());
    // Cancelling still works on held jobs.
    assert!(ex.cancel(TaskId(3)));
    ex.set_paused(false);
    let mut done: Vec<(u64, i64)> = (0..2)
        .map(|_| {
            let o = rx.blocking_recv().unwrap();
            (o.task.0, decode_i64(&o.result.unwrap()).unwrap())
        })
        .collect();
    done.sort();
    assert_eq!(done, vec![(2, 3), (4, 5)]);
    assert_eq!(ex.queued(), 0);
}
