//! Worker lifecycle in the core: paused workers leave placement and come back; graceful
//! retirement copies unique results away before closing, so nothing is recomputed.

mod common;

use common::*;
use taskwire_protocol::{DepMsg, ToClient, ToWorker, WorkerId, WorkerMetricsMsg};
use taskwire_scheduler_core::{Command, CoreConfig, Event};

fn heartbeat(env: &mut Env, w: WorkerId, paused: bool) -> Vec<Command> {
    env.ev(Event::Heartbeat {
        worker: w,
        metrics: WorkerMetricsMsg {
            managed: 100,
            spilled: 7,
            rss: 1 << 20,
            executing: 0,
            paused,
            ..Default::default()
        },
    })
}

fn retire(env: &mut Env, names: &[&str]) -> Vec<Command> {
    env.ev(Event::RetireWorkers {
        client: C1,
        request: 9,
        workers: names.iter().map(|s| s.to_string()).collect(),
    })
}

fn replicas(out: &[Command]) -> Vec<(WorkerId, Vec<DepMsg>)> {
    out.iter()
        .filter_map(|c| match c {
            Command::ToWorker(w, ToWorker::AcquireReplicas(d)) => Some((*w, d.clone())),
            _ => None,
        })
        .collect()
}

fn closed(out: &[Command]) -> Vec<WorkerId> {
    out.iter()
        .filter_map(|c| match c {
            Command::ToWorker(w, ToWorker::Close) => Some(*w),
            _ => None,
        })
        .collect()
}

fn retired(out: &[Command]) -> Vec<Result<Vec<String>, String>> {
    out.iter()
        .filter_map(|c| match c {
            Command::ToClient(_, ToClient::WorkersRetired { request: 9, result }) => {
                Some(result.clone())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn paused_worker_gets_no_new_tasks_and_resumes() {
    let mut env = Env::with(CoreConfig {
        worker_saturation: f64::INFINITY,
        ..Default::default()
    });
    let a = env.join(1, "a", 1);
    let b = env.join(2, "b", 1);
    heartbeat(&mut env, a, true);
    let info = env.core.workers();
    assert!(info[0].metrics.paused && info[0].metrics.spilled == 7);
    let tasks: Vec<_> = (0..6).map(|i| task(&format!("x-{i}"), &[])).collect();
    let out = env.submit(C1, tasks, &["x-0", "x-1", "x-2", "x-3", "x-4", "x-5"]);
    // Every task goes to b while a is paused.
    assert_eq!(compute_on(&out, b).len(), 6);
    // Only paused worker left running nothing: new tasks wait in no-worker.
    heartbeat(&mut env, b, true);
    let out = env.submit(C1, vec![task("y-0", &[])], &["y-0"]);
    assert!(computes(&out).is_empty(), "{out:?}");
    assert_eq!(env.core.counts().no_worker, 1);
    // a resumes and takes the waiting task.
    let out = heartbeat(&mut env, a, false);
    assert_eq!(
        compute_on(&out, a),
        vec![("y-0".to_string(), env_task(&out))]
    );
}

fn env_task(out: &[Command]) -> taskwire_protocol::TaskId {
    computes(out)[0].1[0].task
}

#[test]
fn retirement_copies_unique_results_then_closes_without_recomputing() {
    let mut env = Env::with(CoreConfig {
        worker_saturation: f64::INFINITY,
        ..Default::default()
    });
    let a = env.join(1, "a", 1);
    let out = env.submit(C1, vec![task("x-0", &[])], &["x-0"]);
    let tx = compute_on(&out, a)[0].1;
    env.finish_sized(a, &[tx], 1000);
    let b = env.join(2, "b", 1);

    let out = retire(&mut env, &["a"]);
    assert!(closed(&out).is_empty(), "closed before its data moved");
    let r = replicas(&out);
    assert_eq!(r.len(), 1, "{out:?}");
    assert_eq!(r[0].0, b);
    assert_eq!(r[0].1[0].task, tx);
    assert_eq!(r[0].1[0].holders, vec![addr("a")]);
    // a takes no new work while retiring.
    let out = env.submit(C1, vec![task("y-0", &[])], &["y-0"]);
    let ty = compute_on(&out, b)[0].1;

    // b reports the copy: a is closed, the client hears back, nothing was recomputed.
    let out = env.ev(Event::DataAdded {
        worker: b,
        tasks: vec![(tx, 1000)],
    });
    assert_eq!(closed(&out), vec![a]);
    assert_eq!(retired(&out), vec![Ok(vec!["a".to_string()])]);
    assert!(computes(&out).is_empty(), "{out:?}");
    let names: Vec<String> = env.core.workers().into_iter().map(|w| w.name).collect();
    assert_eq!(names, vec!["b".to_string()]);
    // The connection closing later is a no-op.
    let out = env.ev(Event::WorkerLeft {
        worker: a,
        reason: "closed".into(),
    });
    assert!(computes(&out).is_empty());
    env.finish(b, &[ty]);
    assert_eq!(env.core.counts().memory, 2);
    let story: Vec<String> = env
        .core
        .story("x-0")
        .iter()
        .map(|r| format!("{} -> {}", r.from, r.to))
        .collect();
    assert!(
        !story.iter().any(|s| s.ends_with("-> released")),
        "x-0 was released and recomputed: {story:?}"
    );
}

#[test]
fn retiring_worker_finishes_its_tasks_first() {
    let mut env = Env::with(CoreConfig {
        worker_saturation: f64::INFINITY,
        ..Default::default()
    });
    let a = env.join(1, "a", 1);
    let out = env.submit(C1, vec![task("x-0", &[])], &["x-0"]);
    let tx = compute_on(&out, a)[0].1;
    let b = env.join(2, "b", 1);
    let out = retire(&mut env, &["a"]);
    assert!(
        replicas(&out).is_empty() && closed(&out).is_empty(),
        "{out:?}"
    );
    // The running task finishes on a; its result is then copied to b.
    let out = env.finish(a, &[tx]);
    let r = replicas(&out);
    assert_eq!((r[0].0, r[0].1[0].task), (b, tx), "{out:?}");
    let out = env.ev(Event::DataAdded {
        worker: b,
        tasks: vec![(tx, 8)],
    });
    assert_eq!(closed(&out), vec![a]);
}

#[test]
fn retirement_replans_when_the_receiving_worker_dies() {
    let mut env = Env::with(CoreConfig {
        worker_saturation: f64::INFINITY,
        ..Default::default()
    });
    let a = env.join(1, "a", 1);
    let out = env.submit(C1, vec![task("x-0", &[])], &["x-0"]);
    let tx = compute_on(&out, a)[0].1;
    env.finish(a, &[tx]);
    let b = env.join(2, "b", 1);
    let out = retire(&mut env, &["a"]);
    assert_eq!(replicas(&out)[0].0, b);
    let c = env.join(3, "c", 1);
    let out = env.ev(Event::WorkerLeft {
        worker: b,
        reason: "killed".into(),
    });
    let r = replicas(&out);
    assert_eq!((r[0].0, r[0].1[0].task), (c, tx), "{out:?}");
    let out = env.ev(Event::DataAdded {
        worker: c,
        tasks: vec![(tx, 8)],
    });
    assert_eq!(closed(&out), vec![a]);
    assert_eq!(retired(&out), vec![Ok(vec!["a".to_string()])]);
}

#[test]
fn retirement_refuses_unknown_names_and_losing_the_last_copy() {
    let mut env = Env::new();
    let a = env.join(1, "a", 1);
    let out = retire(&mut env, &["nope"]);
    assert_eq!(retired(&out), vec![Err("no worker named nope".to_string())]);
    let out = env.submit(C1, vec![task("x-0", &[])], &["x-0"]);
    let tx = compute_on(&out, a)[0].1;
    env.finish(a, &[tx]);
    let out = retire(&mut env, &["a"]);
    let r = retired(&out);
    assert!(
        matches!(&r[..], [Err(m)] if m.contains("no other running worker")),
        "{r:?}"
    );
    // Still schedulable: refused means nothing changed.
    let out = env.submit(C1, vec![task("y-0", &[])], &["y-0"]);
    assert_eq!(compute_on(&out, a).len(), 1);
}

#[test]
fn a_worker_asking_to_leave_alone_is_closed_at_once() {
    let mut env = Env::new();
    let a = env.join(1, "a", 1);
    let out = env.submit(C1, vec![task("x-0", &[])], &["x-0"]);
    compute_on(&out, a);
    let out = env.ev(Event::RetireRequested { worker: a });
    assert_eq!(closed(&out), vec![a]);
    assert!(env.core.workers().is_empty());
    // Its task waits for a new worker rather than erring.
    let c = env.core.counts();
    assert_eq!(c.no_worker + c.queued, 1, "{c:?}");
    assert_eq!(c.erred, 0, "{c:?}");
    let b = env.join(2, "b", 1);
    let _ = b;
    assert_eq!(env.core.counts().processing, 1);
}

#[test]
fn a_worker_asking_to_leave_hands_over_its_data() {
    let mut env = Env::with(CoreConfig {
        worker_saturation: f64::INFINITY,
        ..Default::default()
    });
    let a = env.join(1, "a", 1);
    let out = env.submit(C1, vec![task("x-0", &[])], &["x-0"]);
    let tx = compute_on(&out, a)[0].1;
    env.finish(a, &[tx]);
    let b = env.join(2, "b", 1);
    let out = env.ev(Event::RetireRequested { worker: a });
    assert_eq!(replicas(&out)[0].0, b);
    let out = env.ev(Event::DataAdded {
        worker: b,
        tasks: vec![(tx, 8)],
    });
    assert_eq!(closed(&out), vec![a]);
    // No client asked, so no client hears about it.
    assert!(retired(&out).is_empty());
}

#[test]
fn only_tasks_a_dead_worker_could_have_been_running_count_towards_killed_worker() {
    let mut env = Env::with(CoreConfig {
        worker_saturation: f64::INFINITY,
        allowed_failures: 0,
        ..Default::default()
    });
    let w1 = env.join(1, "w1", 1);
    // x-0 is assigned first, so a one-thread worker runs it first; the others queue behind.
    env.submit(C1, vec![task("x-0", &[])], &["x-0"]);
    let later: Vec<_> = (1..4).map(|i| task(&format!("x-{i}"), &[])).collect();
    let out = env.submit(C1, later, &["x-1", "x-2", "x-3"]);
    assert_eq!(compute_on(&out, w1).len(), 3);
    env.join(2, "w2", 1);
    let out = env.ev(Event::WorkerLeft {
        worker: w1,
        reason: "killed".into(),
    });
    let erred: Vec<_> = out
        .iter()
        .filter_map(|c| match c {
            Command::ToClient(_, ToClient::KeysErred(e)) => Some(e.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(erred.len(), 1, "{erred:?}");
    assert_eq!(erred[0].0, "x-0");
    assert!(
        erred[0].1.message.contains("1 workers that died"),
        "{erred:?}"
    );
    // The tasks queued behind it go on elsewhere.
    assert_eq!(computed_keys(&out).len(), 3, "{out:?}");
}
