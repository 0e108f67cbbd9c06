//! Adaptive scaling in the core: the worker count a backlog calls for (Dask's
//! `adaptive_target`) and the workers cheapest to retire (`workers_to_close`).

mod common;

use common::*;
use std::time::Duration;
use taskwire_protocol::{AdaptiveTargetMsg, TaskId, TaskSpecMsg, ToClient, WorkerId};
use taskwire_scheduler_core::{Command, Event};

const FIVE_S: Duration = Duration::from_secs(5);

/// A task restricted to the worker named `on`.
fn on(key: &str, w: &str) -> TaskSpecMsg {
    let mut t = task(key, &[]);
    t.workers = vec![w.to_string()];
    t
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Submit `n` independent tasks `prefix-i`; returns what the core sent.
fn burst(env: &mut Env, prefix: &str, n: usize) -> Vec<Command> {
    let ks = keys(prefix, n);
    let tasks = ks.iter().map(|k| task(k, &[])).collect();
    let wanted: Vec<&str> = ks.iter().map(String::as_str).collect();
    env.submit(C1, tasks, &wanted)
}

fn ask(env: &mut Env, minimum: usize, maximum: usize) -> AdaptiveTargetMsg {
    let out = env.ev(Event::AdaptiveTarget {
        client: C1,
        request: 77,
        target_duration: FIVE_S,
        minimum,
        maximum,
    });
    match &out[..] {
        [
            Command::ToClient(
                c,
                ToClient::AdaptiveTarget {
                    request: 77,
                    target,
                },
            ),
        ] if *c == C1 => target.clone(),
        other => panic!("expected one AdaptiveTarget answer, got {other:?}"),
    }
}

fn ids(out: &[Command], w: WorkerId) -> Vec<TaskId> {
    compute_on(out, w).into_iter().map(|(_, t)| t).collect()
}

#[test]
fn an_empty_cluster_wants_no_workers_and_work_without_workers_wants_one() {
    let mut env = Env::new();
    assert_eq!(env.core.adaptive_target(FIVE_S), 0);
    // Nowhere to run: the root task waits in the queue, a restricted one in no-worker; one
    // worker is the least they need.
    env.submit(C1, vec![task("x-0", &[])], &["x-0"]);
    assert_eq!(env.core.counts().queued, 1);
    assert_eq!(env.core.adaptive_target(FIVE_S), 1);
    env.submit(C1, vec![on("y-0", "w")], &["y-0"]);
    assert_eq!(env.core.counts().no_worker, 1);
    env.ev(Event::CancelKeys {
        client: C1,
        keys: vec!["x-0".into()],
    });
    assert_eq!(env.core.adaptive_target(FIVE_S), 1);
}

#[test]
fn a_backlog_of_unmeasured_tasks_asks_for_enough_workers_to_finish_in_the_target_time() {
    // A burst of 40 tasks of a group never seen finishing: 500 ms each by Dask's default
    // guess, 20 s of work, so four one-thread workers finish it in 5 s.
    let mut env = Env::new();
    env.join(1, "a", 1);
    burst(&mut env, "sleep", 40);
    assert!(env.core.counts().queued > 30, "{:?}", env.core.counts());
    assert_eq!(env.core.adaptive_target(FIVE_S), 4);
    // A longer target duration asks for fewer; a shorter one for more.
    assert_eq!(env.core.adaptive_target(Duration::from_secs(10)), 2);
    assert_eq!(env.core.adaptive_target(Duration::from_secs(1)), 20);
    // Workers with more threads: the thread count is divided among them.
    let mut env = Env::new();
    env.join(1, "a", 4);
    burst(&mut env, "sleep", 40);
    assert_eq!(env.core.adaptive_target(Duration::from_secs(1)), 5);
}

#[test]
fn measured_durations_replace_the_guess() {
    let mut env = Env::new();
    let a = env.join(1, "a", 1);
    let out = burst(&mut env, "quick", 40);
    let first = ids(&out, a);
    // The first ones took 10 ms each: the 40 are 0.4 s of work, one worker is plenty.
    env.finish_timed(a, &first, 8, 10_000);
    assert_eq!(env.core.adaptive_target(FIVE_S), 1);

    // The same count of 2 s tasks is 80 s of work: 16 workers.
    let mut env = Env::new();
    let a = env.join(1, "a", 1);
    let out = burst(&mut env, "slow", 42);
    let first = ids(&out, a);
    assert_eq!(first.len(), 2);
    env.finish_timed(a, &first, 8, 2_000_000);
    assert_eq!(env.core.counts().processing + env.core.counts().queued, 40);
    assert_eq!(env.core.adaptive_target(FIVE_S), 16);
}

#[test]
fn a_few_long_tasks_do_not_ask_for_more_workers_than_tasks() {
    let mut env = Env::new();
    let a = env.join(1, "a", 1);
    let out = burst(&mut env, "long", 2);
    env.finish_timed(a, &ids(&out, a)[..1], 8, 100_000_000);
    // One 100 s task left, and two more submitted: 300 s of work, but only 3 tasks to run.
    let ks = ["long-2", "long-3"];
    env.submit(C1, ks.iter().map(|k| task(k, &[])).collect(), &ks);
    assert_eq!(env.core.adaptive_target(FIVE_S), 3);
}

#[test]
fn results_filling_memory_ask_for_twice_the_workers() {
    let mut env = Env::new();
    let mut info = register("a", 1);
    info.memory_limit = 1000;
    env.join_with(1, info);
    let a = WorkerId(1);
    let out = env.submit(C1, vec![task("big-0", &[])], &["big-0"]);
    env.finish_sized(a, &ids(&out, a), 700);
    // 70 % of the limit is held: two workers.
    assert_eq!(env.core.adaptive_target(FIVE_S), 2);
}

#[test]
fn an_idle_cluster_shrinks_and_a_busy_one_does_not() {
    let mut env = Env::new();
    for (i, n) in ["a", "b", "c", "d"].iter().enumerate() {
        env.join(i as u64 + 1, n, 1);
    }
    // Idle, holding nothing: none is needed (the manager's minimum keeps some).
    assert_eq!(env.core.adaptive_target(FIVE_S), 0);
    // Four long tasks, one per worker: 2 s of guessed work asks for one worker, but no worker
    // is idle, so none is let go.
    burst(&mut env, "busy", 4);
    assert_eq!(env.core.counts().processing, 4);
    assert_eq!(env.core.adaptive_target(FIVE_S), 4);
    assert_eq!(ask(&mut env, 1, 10).to_close, Vec::<String>::new());
}

#[test]
fn idle_workers_holding_the_fewest_unique_bytes_close_first() {
    let mut env = Env::new();
    let names = ["a", "b", "c", "d", "e"];
    let w: Vec<WorkerId> = names
        .iter()
        .enumerate()
        .map(|(i, n)| env.join(i as u64 + 1, n, 1))
        .collect();
    // a holds 1000 bytes only it has; b holds 10; c is running a task; d and e hold nothing.
    let out = env.submit(C1, vec![on("big-0", "a")], &["big-0"]);
    env.finish_sized(w[0], &ids(&out, w[0]), 1000);
    let out = env.submit(C1, vec![on("small-0", "b")], &["small-0"]);
    env.finish_sized(w[1], &ids(&out, w[1]), 10);
    env.submit(C1, vec![on("run-0", "c")], &["run-0"]);
    assert_eq!(env.core.counts().processing, 1);

    // Down to one: every idle worker before the busy one, cheapest first (e, the newer of the
    // two empty ones, first).
    assert_eq!(env.core.workers_to_close(1), ["e", "d", "b", "a"]);
    assert_eq!(env.core.workers_to_close(3), ["e", "d"]);
    assert!(env.core.workers_to_close(5).is_empty());
    assert!(env.core.workers_to_close(9).is_empty());
    // Down to none would take the busy one too, last.
    assert_eq!(env.core.workers_to_close(0), ["e", "d", "b", "a", "c"]);
}

#[test]
fn the_answer_is_clamped_and_names_workers_to_close() {
    let mut env = Env::new();
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        env.join(i as u64 + 1, n, 1);
    }
    let t = ask(&mut env, 1, 4);
    assert_eq!(t.target, 1);
    assert_eq!(t.workers, ["a", "b", "c"]);
    assert_eq!(t.to_close, ["c", "b"]);
    // The minimum holds them all.
    let t = ask(&mut env, 3, 4);
    assert_eq!((t.target, t.to_close.len()), (3, 0));
    // A burst: the maximum caps it, and nothing is to close.
    burst(&mut env, "sleep", 100);
    let t = ask(&mut env, 1, 6);
    assert_eq!((t.target, t.to_close.len()), (6, 0));
    // A maximum below the minimum wins (the manager cannot go above it).
    let t = ask(&mut env, 8, 2);
    assert_eq!(t.target, 2);
}

#[test]
fn retiring_workers_are_not_counted_or_suggested_again() {
    let mut env = Env::new();
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        env.join(i as u64 + 1, n, 1);
    }
    // b holds a result, so its retirement takes a while (the copy to another worker).
    let out = env.submit(C1, vec![on("r-0", "b")], &["r-0"]);
    env.finish(WorkerId(2), &ids(&out, WorkerId(2)));
    env.ev(Event::RetireWorkers {
        client: C1,
        request: 1,
        workers: vec!["b".into()],
    });
    let t = ask(&mut env, 1, 4);
    assert_eq!(t.workers, ["a", "c"]);
    assert_eq!(t.to_close, ["c"], "b is already leaving");
}
