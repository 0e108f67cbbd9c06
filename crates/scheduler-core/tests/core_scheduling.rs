//! Unit-style tests of the scheduler core: drive events, assert on exactly what comes out.

mod common;

use std::time::Duration;

use common::*;
use taskwire_protocol::{
    ErrorKindMsg, RegisterWorkerMsg, ResourceMsg, TaskErredMsg, TaskErrorMsg, TaskFinishedMsg,
    TaskId, ToClient, ToWorker, WorkerId,
};
use taskwire_scheduler_core::{Command, CoreConfig, Event, TaskState};

#[test]
fn chain_runs_in_order_frees_intermediates_and_forgets_everything() {
    let mut env = Env::new();
    let w = env.join(1, "a", 1);
    let out = env.submit(
        C1,
        vec![
            task("x-1", &[]),
            task("x-2", &["x-1"]),
            task("x-3", &["x-2"]),
        ],
        &["x-3"],
    );
    assert_eq!(
        out[0],
        Command::ToClient(C1, ToClient::GraphAccepted { submit_id: 1 })
    );
    let c = compute_on(&out, w);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].0, "x-1");
    assert_eq!(out.len(), 2, "{out:?}");
    let t1 = c[0].1;

    let out = env.finish(w, &[t1]);
    let c = compute_on(&out, w);
    assert_eq!(c[0].0, "x-2");
    let t2 = c[0].1;
    // The input is local: holders are empty.
    let msg = &computes(&out)[0].1[0];
    assert_eq!(msg.deps.len(), 1);
    assert_eq!(msg.deps[0].task, t1);
    assert!(msg.deps[0].holders.is_empty());
    assert_eq!(out.len(), 1, "{out:?}");

    let out = env.finish(w, &[t2]);
    // x-1 is no longer needed by anyone: freed; x-3 starts.
    assert_eq!(out[0], Command::ToWorker(w, ToWorker::Free(vec![t1])));
    let t3 = compute_on(&out, w)[0].1;
    assert_eq!(out.len(), 2);

    let out = env.finish(w, &[t3]);
    assert_eq!(out[0], Command::ToWorker(w, ToWorker::Free(vec![t2])));
    assert_eq!(in_memory(&out), vec![(C1, "x-3".to_string())]);
    assert_eq!(out.len(), 2);
    // Lineage is kept while x-3 is held.
    assert_eq!(env.core.counts().memory, 1);
    assert_eq!(env.core.counts().released, 2);

    let out = env.ev(Event::ReleaseKeys {
        client: C1,
        keys: vec!["x-3".into()],
    });
    assert_eq!(out, vec![Command::ToWorker(w, ToWorker::Free(vec![t3]))]);
    assert_eq!(env.core.counts().total(), 0);
}

#[test]
fn fan_out_fan_in_spreads_and_gathers() {
    let mut env = Env::with(CoreConfig {
        worker_saturation: f64::INFINITY,
        ..Default::default()
    });
    let a = env.join(1, "a", 2);
    let b = env.join(2, "b", 2);
    let mut tasks = vec![task("root-0", &[])];
    let mids: Vec<String> = (0..10).map(|i| format!("mid-{i}")).collect();
    for m in &mids {
        tasks.push(task(m, &["root-0"]));
    }
    let mid_refs: Vec<&str> = mids.iter().map(|s| s.as_str()).collect();
    tasks.push(task("sum-0", &mid_refs));
    let out = env.submit(C1, tasks, &["sum-0"]);
    let c = computes(&out);
    assert_eq!(c.len(), 1);
    let (rw, rc) = &c[0];
    let out = env.finish(*rw, &[rc[0].task]);
    let batches = computes(&out);
    let total: usize = batches.iter().map(|(_, v)| v.len()).sum();
    assert_eq!(total, 10);
    // Both workers get some of them: with 8-byte inputs, occupancy dominates.
    assert_eq!(batches.len(), 2, "{batches:?}");
    for (w, v) in &batches {
        for m in v {
            let holders = &m.deps[0].holders;
            if w == rw {
                assert!(holders.is_empty());
            } else {
                assert_eq!(holders, &vec![if *rw == a { addr("a") } else { addr("b") }]);
            }
        }
    }
    let mut sum_batch = vec![];
    for (w, v) in batches {
        let ids: Vec<TaskId> = v.iter().map(|m| m.task).collect();
        sum_batch.extend(env.finish(w, &ids));
    }
    let c = computed_keys(&sum_batch);
    assert_eq!(c, vec!["sum-0"]);
    let s = computes(&sum_batch)[0].1[0].clone();
    assert_eq!(s.deps.len(), 10);
    let _ = b;
}

#[test]
fn locality_prefers_the_worker_with_most_input_bytes() {
    let mut env = Env::with(CoreConfig {
        worker_saturation: f64::INFINITY,
        ..Default::default()
    });
    let a = env.join(1, "a", 1);
    let b = env.join(2, "b", 1);
    let out = env.submit(
        C1,
        vec![task("big-0", &[]), task("small-0", &[])],
        &["big-0", "small-0"],
    );
    let c = computes(&out);
    assert_eq!(c.len(), 2, "roots spread over idle workers: {out:?}");
    let on = |k: &str| {
        c.iter()
            .find(|(_, v)| v[0].key == k)
            .map(|(w, v)| (*w, v[0].task))
            .unwrap()
    };
    let (bw, bt) = on("big-0");
    let (sw, st) = on("small-0");
    env.finish_sized(bw, &[bt], 50_000_000);
    env.finish_sized(sw, &[st], 10);
    let out = env.submit(C1, vec![task("z-0", &["big-0", "small-0"])], &["z-0"]);
    let c = computes(&out);
    assert_eq!(c[0].0, bw, "z goes where the 50 MB are");
    let deps = &c[0].1[0].deps;
    assert!(
        deps.iter()
            .find(|d| d.task == bt)
            .unwrap()
            .holders
            .is_empty()
    );
    let other = if bw == a { "b" } else { "a" };
    assert_eq!(
        deps.iter().find(|d| d.task == st).unwrap().holders,
        vec![addr(other)]
    );
    let _ = b;
}

#[test]
fn gpu_tasks_wait_in_no_worker_until_a_gpu_worker_joins_and_share_its_gpu() {
    let mut env = Env::new();
    env.join(1, "cpu", 4);
    let out = env.submit(
        C1,
        vec![
            with_resource(task("train-0", &[]), "GPU", 1.0),
            with_resource(task("train-1", &[]), "GPU", 1.0),
        ],
        &["train-0", "train-1"],
    );
    assert_eq!(out.len(), 1, "only GraphAccepted: {out:?}");
    assert_eq!(env.core.counts().no_worker, 2);
    let mut info = register("gpu", 4);
    info.resources.push(taskwire_protocol::ResourceMsg {
        name: "GPU".into(),
        amount: 1.0,
    });
    let g = WorkerId(2);
    let out = env.ev(Event::WorkerJoined { worker: g, info });
    assert!(matches!(
        out[0],
        Command::ToWorker(_, ToWorker::Registered { .. })
    ));
    // One GPU: one task at a time, even though the worker has 4 threads.
    let c = compute_on(&out, g);
    assert_eq!(c, vec![("train-0".to_string(), c[0].1)]);
    assert_eq!(computes(&out)[0].1[0].resources[0].name, "GPU");
    assert_eq!(env.core.counts().no_worker, 1);
    let out = env.finish(g, &[c[0].1]);
    assert_eq!(compute_on(&out, g)[0].0, "train-1");
    assert_eq!(in_memory(&out), vec![(C1, "train-0".to_string())]);
}

#[test]
fn restricted_tasks_go_only_to_named_workers() {
    let mut env = Env::new();
    env.join(1, "a", 8);
    let b = env.join(2, "b", 1);
    let mut t = task("r-0", &[]);
    t.workers = vec!["b".into()];
    let mut u = task("r-1", &[]);
    u.workers = vec![addr("b")];
    let mut v = task("r-2", &[]);
    v.workers = vec!["nobody".into()];
    let out = env.submit(C1, vec![t, u, v], &["r-0", "r-1", "r-2"]);
    let c = compute_on(&out, b);
    assert_eq!(c.len(), 2);
    assert_eq!(env.core.counts().no_worker, 1);
    let out = env.join(3, "nobody", 1);
    let _ = out;
    assert_eq!(env.core.counts().no_worker, 0);
    assert_eq!(env.core.counts().processing, 3);
}

#[test]
fn root_tasks_queue_when_workers_are_saturated() {
    let mut env = Env::new();
    let a = env.join(1, "a", 1);
    let b = env.join(2, "b", 1);
    let tasks: Vec<_> = (0..1000).map(|i| task(&format!("load-{i}"), &[])).collect();
    let keys: Vec<String> = (0..1000).map(|i| format!("load-{i}")).collect();
    let wanted: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
    let out = env.submit(C1, tasks, &wanted);
    // ceil(1.1 * 1) = 2 per worker.
    let c = computes(&out);
    assert_eq!(c.len(), 2);
    assert!(c.iter().all(|(_, v)| v.len() == 2), "{c:?}");
    let mut first = computed_keys(&out);
    first.sort();
    assert_eq!(first, vec!["load-0", "load-1", "load-2", "load-3"]);
    assert_eq!(env.core.counts().queued, 996);
    // A slow task (1 s) keeps Dask's count: one freed slot, one task sent.
    let first_a = c.iter().find(|(w, _)| *w == a).unwrap().1[0].task;
    let out = env.finish_timed(a, &[first_a], 8, 1_000_000);
    assert_eq!(compute_on(&out, a).len(), 1);
    assert_eq!(env.core.counts().queued, 995);
    let _ = b;
}

#[test]
fn short_root_tasks_fill_a_time_budget_but_big_results_keep_dask_saturation() {
    // Each no-op-sized task would otherwise cost a full round trip per thread.
    let mut env = Env::new();
    let a = env.join(1, "a", 1);
    let b = env.join(2, "b", 1);
    let tasks: Vec<_> = (0..100_000)
        .map(|i| task(&format!("tiny-{i}"), &[]))
        .collect();
    let keys: Vec<String> = (0..100_000).map(|i| format!("tiny-{i}")).collect();
    let wanted: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
    let out = env.submit(C1, tasks, &wanted);
    let first = computes(&out);
    assert!(
        first.iter().all(|(_, v)| v.len() == 2),
        "unknown cost: Dask's count first"
    );
    // 10 us per task, 8-byte results: 20 ms of work per thread is 2,000 tasks.
    let done_a = first.iter().find(|(w, _)| *w == a).unwrap().1[0].task;
    let out = env.finish_timed(a, &[done_a], 8, 10);
    let sent: usize = computes(&out).iter().map(|(_, v)| v.len()).sum();
    assert_eq!(sent, 2 * 2000 - 3, "both workers topped up to 2,000 slots");
    assert_eq!(env.core.counts().processing, 2 * 2000);
    let _ = b;

    // Root tasks whose results are 64 MiB each stay at Dask's count however fast they are.
    let mut env = Env::new();
    let a = env.join(1, "a", 1);
    env.join(2, "b", 1);
    let tasks: Vec<_> = (0..1000).map(|i| task(&format!("load-{i}"), &[])).collect();
    let keys: Vec<String> = (0..1000).map(|i| format!("load-{i}")).collect();
    let wanted: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
    let out = env.submit(C1, tasks, &wanted);
    let done_a = computes(&out).iter().find(|(w, _)| *w == a).unwrap().1[0].task;
    let out = env.finish_timed(a, &[done_a], 64 << 20, 10);
    assert_eq!(compute_on(&out, a).len(), 1);
    assert_eq!(env.core.counts().processing, 4);
}

#[test]
fn queued_tasks_leave_in_priority_then_submission_order() {
    let mut env = Env::new();
    let w = env.join(1, "a", 1);
    let mut tasks = Vec::new();
    for (i, p) in [0, 5, 1, 5, -3, 9].iter().enumerate() {
        let mut t = task(&format!("p-{i}"), &[]);
        t.priority = *p;
        tasks.push(t);
    }
    let out = env.submit(C1, tasks, &["p-0", "p-1", "p-2", "p-3", "p-4", "p-5"]);
    let c = compute_on(&out, w);
    assert_eq!(
        c.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
        vec!["p-5", "p-1"]
    );
    let mut order = vec![];
    let mut running: Vec<TaskId> = c.iter().map(|x| x.1).collect();
    while let Some(t) = running.pop() {
        let out = env.finish(w, &[t]);
        for (k, id) in computes(&out)
            .into_iter()
            .flat_map(|(_, v)| v)
            .map(|m| (m.key, m.task))
        {
            order.push(k);
            running.insert(0, id);
        }
    }
    assert_eq!(order, vec!["p-3", "p-2", "p-0", "p-4"]);
}

#[test]
fn idle_worker_steals_from_a_backlogged_one_and_late_results_are_accepted() {
    let mut env = Env::with(CoreConfig {
        worker_saturation: f64::INFINITY,
        ..Default::default()
    });
    let a = env.join(1, "a", 1);
    let tasks: Vec<_> = (0..10).map(|i| task(&format!("s-{i}"), &[])).collect();
    let keys: Vec<String> = (0..10).map(|i| format!("s-{i}")).collect();
    let wanted: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
    let out = env.submit(C1, tasks, &wanted);
    assert_eq!(compute_on(&out, a).len(), 10);
    assert_eq!(env.core.poll_timeout(), None, "no stealing with one worker");
    let b = env.join(2, "b", 2);
    let deadline = env.core.poll_timeout().expect("steal timer armed");
    let out = env.advance(deadline - env.now);
    assert_eq!(out.len(), 1, "{out:?}");
    let Command::ToWorker(victim, ToWorker::StealRequest(stolen)) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(*victim, a);
    assert_eq!(stolen.len(), 2, "the thief has two idle threads");
    // The victim had already started one of them: it only gives back the other.
    let out = env.ev(Event::Released {
        worker: a,
        tasks: vec![stolen[1]],
    });
    let c = compute_on(&out, b);
    assert_eq!(c[0].1, stolen[1]);
    let out = env.finish(a, &[stolen[0]]);
    assert_eq!(in_memory(&out).len(), 1);
    // The stolen one finishing on the victim anyway (a race) is accepted too; the thief's
    // copy is cancelled.
    let out = env.finish(a, &[stolen[1]]);
    assert_eq!(frees(&out), vec![(b, vec![stolen[1]])]);
    assert_eq!(in_memory(&out).len(), 1);
    let out = env.finish(b, &[stolen[1]]);
    assert!(
        out.is_empty(),
        "a duplicate result just adds a replica: {out:?}"
    );
}

#[test]
fn shared_keys_are_freed_only_when_the_last_client_lets_go() {
    let mut env = Env::new();
    let w = env.join(1, "a", 1);
    let out = env.submit(C1, vec![task("k-0", &[])], &["k-0"]);
    let t = compute_on(&out, w)[0].1;
    env.ev(Event::ClientConnected { client: C2 });
    let out = env.ev(Event::UpdateGraph {
        client: C2,
        submit_id: 9,
        tasks: vec![],
        wanted: vec!["k-0".into()],
    });
    assert_eq!(
        out,
        vec![Command::ToClient(
            C2,
            ToClient::GraphAccepted { submit_id: 9 }
        )]
    );
    let out = env.finish(w, &[t]);
    assert_eq!(
        in_memory(&out),
        vec![(C1, "k-0".to_string()), (C2, "k-0".to_string())]
    );
    let out = env.ev(Event::ReleaseKeys {
        client: C1,
        keys: vec!["k-0".into()],
    });
    assert!(out.is_empty());
    // A third request for a key already in memory is answered at once.
    let out = env.ev(Event::UpdateGraph {
        client: C1,
        submit_id: 10,
        tasks: vec![],
        wanted: vec!["k-0".into()],
    });
    assert_eq!(in_memory(&out), vec![(C1, "k-0".to_string())]);
    env.ev(Event::ReleaseKeys {
        client: C1,
        keys: vec!["k-0".into()],
    });
    let out = env.ev(Event::ClientDisconnected { client: C2 });
    assert_eq!(out, vec![Command::ToWorker(w, ToWorker::Free(vec![t]))]);
    assert_eq!(env.core.counts().total(), 0);
}

#[test]
fn errors_propagate_to_dependents_with_the_ancestor_named() {
    let mut env = Env::new();
    let w = env.join(1, "a", 1);
    let out = env.submit(
        C1,
        vec![
            task("x-3", &[]),
            task("y-0", &["x-3"]),
            task("z-0", &["y-0"]),
            task("ok-0", &[]),
        ],
        &["z-0", "ok-0"],
    );
    let c = compute_on(&out, w);
    let x = c.iter().find(|k| k.0 == "x-3").unwrap().1;
    let out = env.err(w, x, "boom");
    let e = erred(&out);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].1, "z-0");
    assert_eq!(
        e[0].2.kind,
        ErrorKindMsg::Dependency {
            ancestor: "x-3".into()
        }
    );
    assert_eq!(e[0].2.message, "dependency 'x-3' failed: boom");
    // The rest carries on.
    let ok = c.iter().find(|k| k.0 == "ok-0").unwrap().1;
    let out = env.finish(w, &[ok]);
    assert_eq!(in_memory(&out), vec![(C1, "ok-0".to_string())]);
    // A new task on the erred key errs at once.
    let out = env.submit(C1, vec![task("late-0", &["z-0"])], &["late-0"]);
    let e = erred(&out);
    assert_eq!(
        e[0].2.kind,
        ErrorKindMsg::Dependency {
            ancestor: "x-3".into()
        }
    );
    env.ev(Event::ReleaseKeys {
        client: C1,
        keys: vec!["z-0".into(), "late-0".into(), "ok-0".into()],
    });
    assert_eq!(env.core.counts().total(), 0);
}

#[test]
fn retries_rerun_a_failed_task_before_it_errs() {
    let mut env = Env::new();
    let w = env.join(1, "a", 1);
    let mut t = task("flaky-0", &[]);
    t.retries = 1;
    let out = env.submit(C1, vec![t], &["flaky-0"]);
    let id = compute_on(&out, w)[0].1;
    let out = env.err(w, id, "first");
    assert_eq!(compute_on(&out, w)[0].1, id, "retried");
    assert!(erred(&out).is_empty());
    let out = env.err(w, id, "second");
    assert_eq!(erred(&out)[0].2.message, "second");
    assert_eq!(erred(&out)[0].2.kind, ErrorKindMsg::Failed);
}

#[test]
fn cancel_stops_running_and_waiting_dependents() {
    let mut env = Env::new();
    let w = env.join(1, "a", 1);
    env.ev(Event::ClientConnected { client: C2 });
    let out = env.submit(C1, vec![task("a-0", &[])], &["a-0"]);
    let a = compute_on(&out, w)[0].1;
    env.ev(Event::UpdateGraph {
        client: C2,
        submit_id: 2,
        tasks: vec![task("b-0", &["a-0"])],
        wanted: vec!["b-0".into()],
    });
    let out = env.ev(Event::CancelKeys {
        client: C1,
        keys: vec!["a-0".into()],
    });
    assert_eq!(frees(&out), vec![(w, vec![a])]);
    let e = erred(&out);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e.iter().all(|x| x.2.kind == ErrorKindMsg::Cancelled));
    assert!(e.iter().any(|x| x.0 == C1 && x.1 == "a-0"));
    assert!(e.iter().any(|x| x.0 == C2 && x.1 == "b-0"));
    // C2 still holds b-0 (erred); once it lets go, nothing is left.
    assert_eq!(env.core.counts().erred, 1);
    assert_eq!(env.core.counts().total(), 2, "a-0 stays as b-0's lineage");
    env.ev(Event::ReleaseKeys {
        client: C2,
        keys: vec!["b-0".into()],
    });
    assert_eq!(env.core.counts().total(), 0);
    // A late result for the cancelled task is dropped.
    let out = env.finish(w, &[a]);
    assert_eq!(out, vec![Command::ToWorker(w, ToWorker::Free(vec![a]))]);
}

#[test]
fn scatter_then_compute_on_scattered_data() {
    let mut env = Env::new();
    let w = env.join(1, "a", 1);
    env.join(2, "b", 1);
    let out = env.ev(Event::Scatter {
        client: C1,
        submit_id: 3,
        keys: vec![("data-0".into(), 100)],
        worker: Some("a".into()),
    });
    let Command::ToClient(
        _,
        ToClient::ScatterTargets {
            submit_id: 3,
            targets: Ok(t),
        },
    ) = &out[0]
    else {
        panic!("{out:?}")
    };
    assert_eq!(t[0].0, "data-0");
    assert_eq!(t[0].2, addr("a"));
    let d = t[0].1;
    let out = env.submit(C1, vec![task("use-0", &["data-0"])], &["use-0"]);
    assert_eq!(out.len(), 1, "waits for the data: {out:?}");
    let out = env.ev(Event::DataAdded {
        worker: w,
        tasks: vec![(d, 100)],
    });
    assert_eq!(in_memory(&out), vec![(C1, "data-0".to_string())]);
    let c = computes(&out);
    assert_eq!(c[0].0, w);
    assert!(c[0].1[0].deps[0].holders.is_empty());
    // Refusals.
    let out = env.ev(Event::Scatter {
        client: C1,
        submit_id: 4,
        keys: vec![("data-0".into(), 1)],
        worker: None,
    });
    assert!(
        matches!(&out[0], Command::ToClient(_, ToClient::ScatterTargets { targets: Err(r), .. }) if r.contains("already exists"))
    );
    let mut empty = Env::new();
    let out = empty.ev(Event::Scatter {
        client: C1,
        submit_id: 4,
        keys: vec![("q".into(), 1)],
        worker: None,
    });
    assert!(matches!(
        &out[0],
        Command::ToClient(
            _,
            ToClient::ScatterTargets {
                targets: Err(_),
                ..
            }
        )
    ));
}

#[test]
fn lost_worker_reschedules_and_recomputes_from_lineage() {
    let mut env = Env::with(CoreConfig {
        worker_saturation: f64::INFINITY,
        ..Default::default()
    });
    let a = env.join(1, "a", 1);
    let out = env.submit(C1, vec![task("a-0", &[]), task("b-0", &["a-0"])], &["b-0"]);
    let t_a = compute_on(&out, a)[0].1;
    let out = env.finish(a, &[t_a]);
    let t_b = compute_on(&out, a)[0].1;
    let b = env.join(2, "b", 1);
    let out = env.ev(Event::WorkerLeft {
        worker: a,
        reason: "killed".into(),
    });
    // a-0's only copy died with the worker: recompute it on b, then b-0.
    assert_eq!(compute_on(&out, b), vec![("a-0".to_string(), t_a)]);
    let out = env.finish(b, &[t_a]);
    assert_eq!(compute_on(&out, b), vec![("b-0".to_string(), t_b)]);
    let out = env.finish(b, &[t_b]);
    assert_eq!(in_memory(&out), vec![(C1, "b-0".to_string())]);
    let story: Vec<String> = env
        .core
        .story("a-0")
        .iter()
        .map(|r| format!("{} -> {}", r.from, r.to))
        .collect();
    assert!(
        story.contains(&"memory -> released".to_string()),
        "{story:?}"
    );
    // No workers at all: b-0 is lost again; a-0 is ready but has nowhere to run.
    env.ev(Event::WorkerLeft {
        worker: b,
        reason: "gone".into(),
    });
    assert_eq!(env.core.counts().no_worker, 1, "{:?}", env.core.counts());
    assert_eq!(env.core.counts().waiting, 1, "{:?}", env.core.counts());
    let c = env.join(3, "c", 1);
    let out = env.drain();
    assert!(out.is_empty());
    let _ = c;
    assert_eq!(env.core.counts().processing, 1);
}

#[test]
fn lost_scattered_data_errs_its_dependents() {
    let mut env = Env::new();
    let a = env.join(1, "a", 1);
    env.join(2, "b", 1);
    let out = env.ev(Event::Scatter {
        client: C1,
        submit_id: 1,
        keys: vec![("s-0".into(), 10)],
        worker: Some("a".into()),
    });
    let Command::ToClient(_, ToClient::ScatterTargets { targets: Ok(t), .. }) = &out[0] else {
        panic!()
    };
    let d = t[0].1;
    env.ev(Event::DataAdded {
        worker: a,
        tasks: vec![(d, 10)],
    });
    env.submit(
        C2,
        vec![task("u-0", &["s-0"]), task("v-0", &["u-0"])],
        &["v-0"],
    );
    let out = env.ev(Event::WorkerLeft {
        worker: a,
        reason: "x".into(),
    });
    let e = erred(&out);
    assert!(
        e.iter()
            .any(|(c, k, err)| *c == C1 && k == "s-0" && err.kind == ErrorKindMsg::MissingInput),
        "{e:?}"
    );
    assert!(e.iter().any(|(c, k, err)| *c == C2
        && k == "v-0"
        && err.kind
            == ErrorKindMsg::Dependency {
                ancestor: "s-0".into()
            }));
}

#[test]
fn killed_worker_after_more_than_allowed_failures() {
    let mut env = Env::new();
    let first = env.join(1, "w1", 1);
    let out = env.submit(C1, vec![task("bad-0", &[])], &["bad-0"]);
    compute_on(&out, first);
    let mut current = first;
    // allowed_failures = 3: three deaths reschedule, the fourth kills the task.
    for i in 2..=4u64 {
        let next = env.join(i, &format!("w{i}"), 1);
        let out = env.ev(Event::WorkerLeft {
            worker: current,
            reason: "oom".into(),
        });
        assert_eq!(compute_on(&out, next)[0].0, "bad-0");
        current = next;
    }
    env.join(5, "w5", 1);
    let out = env.ev(Event::WorkerLeft {
        worker: current,
        reason: "oom".into(),
    });
    let e = erred(&out);
    assert_eq!(e[0].2.kind, ErrorKindMsg::KilledWorker);
    assert_eq!(
        e[0].2.message,
        "task 'bad-0' was running on 4 workers that died"
    );
    assert!(computes(&out).is_empty());
}

#[test]
fn rejected_graphs_leave_nothing_behind() {
    rejected_graphs_leave_nothing_behind_on(false);
}

#[test]
fn rejected_archived_graphs_leave_nothing_behind() {
    rejected_graphs_leave_nothing_behind_on(true);
}

/// The scheduler's path (the graph read in place from the client's message) and the owned one
/// give the same commands for the same graph: dependencies within the graph and on existing
/// keys, resources, worker restrictions, priorities and retries.
#[test]
fn archived_and_owned_graphs_schedule_alike() {
    let graph = || {
        let mut hi = task("x-2", &["x-0", "x-1"]);
        hi.priority = 5;
        hi.retries = 2;
        let mut pinned = task("x-3", &["old-0"]);
        pinned.workers = vec![addr("b")];
        vec![
            task("x-0", &[]),
            with_resource(task("x-1", &[]), "GPU", 1.0),
            hi,
            pinned,
        ]
    };
    let mut outs = Vec::new();
    for archived in [false, true] {
        let mut env = Env::new();
        env.join(1, "a", 2);
        env.join_with(
            2,
            RegisterWorkerMsg {
                resources: vec![ResourceMsg {
                    name: "GPU".into(),
                    amount: 1.0,
                }],
                ..register("b", 2)
            },
        );
        env.submit(C1, vec![task("old-0", &[])], &["old-0"]);
        let wanted = vec!["x-2".to_string(), "x-3".to_string()];
        let out = env.ev(update_graph(archived, C1, 3, graph(), wanted));
        assert!(
            matches!(
                &out[0],
                Command::ToClient(C1, ToClient::GraphAccepted { submit_id: 3 })
            ),
            "{out:?}"
        );
        outs.push((out, env.core.counts()));
    }
    assert_eq!(outs[0], outs[1]);
}

fn rejected_graphs_leave_nothing_behind_on(archived: bool) {
    let mut env = Env::new();
    env.join(1, "a", 1);
    env.submit(C1, vec![task("e-0", &[])], &["e-0"]);
    let before = env.core.counts();
    let cases: Vec<(Vec<_>, &str)> = vec![
        (
            vec![task("a", &["b"]), task("b", &["c"]), task("c", &["a"])],
            "cycle detected involving key",
        ),
        (vec![task("s", &["s"])], "cycle detected involving key 's'"),
        (
            vec![task("d", &[]), task("d", &[])],
            "duplicate key 'd' in graph",
        ),
        (
            vec![task("u", &["nope"])],
            "task 'u' depends on unknown key 'nope'",
        ),
        (vec![task("e-0", &[])], "key 'e-0' already exists"),
        (vec![task("", &[])], "empty key"),
        (
            vec![with_resource(task("r", &[]), "GPU", -1.0)],
            "invalid resource",
        ),
    ];
    for (tasks, reason) in cases {
        let out = env.ev(update_graph(archived, C1, 7, tasks, vec![]));
        let [
            Command::ToClient(
                _,
                ToClient::GraphRejected {
                    submit_id: 7,
                    reason: r,
                },
            ),
        ] = &out[..]
        else {
            panic!("{out:?}")
        };
        assert!(r.contains(reason), "{r:?} should mention {reason:?}");
        assert_eq!(env.core.counts(), before);
    }
    let out = env.ev(update_graph(archived, C1, 8, vec![], vec!["ghost".into()]));
    assert!(matches!(
        &out[0],
        Command::ToClient(_, ToClient::GraphRejected { .. })
    ));
}

#[test]
fn duplicate_worker_name_is_refused() {
    let mut env = Env::new();
    env.join(1, "alice", 1);
    let out = env.ev(Event::WorkerJoined {
        worker: WorkerId(2),
        info: register("alice", 1),
    });
    assert_eq!(
        out,
        vec![Command::ToWorker(
            WorkerId(2),
            ToWorker::Refused("a worker named alice is already registered".into())
        )]
    );
    assert_eq!(env.core.workers().len(), 1);
}

#[test]
fn story_tells_a_tasks_history_with_stimulus_ids() {
    let mut env = Env::new();
    let w = env.join(1, "a", 1);
    let out = env.submit(C1, vec![task("s-0", &[])], &["s-0"]);
    let t = compute_on(&out, w)[0].1;
    env.finish(w, &[t]);
    env.ev(Event::ReleaseKeys {
        client: C1,
        keys: vec!["s-0".into()],
    });
    let story = env.core.story("s-0");
    let lines: Vec<String> = story.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        lines,
        vec![
            "s-0: released -> waiting (update-graph-2)",
            "s-0: waiting -> queued (update-graph-2)",
            "s-0: queued -> processing (update-graph-2)",
            "s-0: processing -> memory (tasks-finished-3)",
            "s-0: memory -> released (release-keys-4)",
            "s-0: released -> forgotten (release-keys-4)",
        ]
    );
    assert!(env.core.story("other").is_empty());
}

#[test]
fn missing_data_recomputes_when_no_holder_is_left() {
    let mut env = Env::with(CoreConfig {
        worker_saturation: f64::INFINITY,
        ..Default::default()
    });
    let a = env.join(1, "a", 1);
    let out = env.submit(C1, vec![task("a-0", &[])], &["a-0"]);
    let t_a = compute_on(&out, a)[0].1;
    env.finish(a, &[t_a]);
    let b = env.join(2, "b", 1);
    let mut t = task("b-0", &["a-0"]);
    t.workers = vec!["b".into()];
    let out = env.submit(C1, vec![t], &["b-0"]);
    let t_b = compute_on(&out, b)[0].1;
    let out = env.ev(Event::MissingData {
        worker: b,
        task: t_b,
        missing: vec![t_a],
    });
    // a's copy is declared gone (and freed there), a-0 is recomputed, b-0 waits for it.
    // b is told to drop b-0 too (it gave up on it anyway).
    assert_eq!(frees(&out), vec![(a, vec![t_a]), (b, vec![t_b])]);
    assert_eq!(computed_keys(&out), vec!["a-0"]);
    assert_eq!(env.core.counts().waiting, 1);
}

#[test]
fn heartbeat_interval_grows_with_the_cluster() {
    let mut env = Env::new();
    for i in 0..60u64 {
        let out = env.ev(Event::WorkerJoined {
            worker: WorkerId(i),
            info: register(&format!("w{i}"), 1),
        });
        let Command::ToWorker(_, ToWorker::Registered { heartbeat_ms, .. }) = out[0] else {
            panic!()
        };
        let n = i + 1;
        let expect = if n <= 10 {
            500
        } else if n < 50 {
            1000
        } else {
            2000
        };
        assert_eq!(heartbeat_ms, expect, "{n} workers");
    }
    let out = env.ev(Event::GetWorkers { client: C1 });
    let Command::ToClient(_, ToClient::Workers(list)) = &out[0] else {
        panic!()
    };
    assert_eq!(list.len(), 60);
}

#[test]
fn stealing_timer_fires_only_when_useful() {
    let mut env = Env::new();
    env.join(1, "a", 1);
    assert_eq!(env.core.poll_timeout(), None);
    let out = env.advance(Duration::from_secs(1));
    assert!(out.is_empty());
    let _ = TaskState::Memory;
}

/// A client that keeps submitting without letting results go is stopped at
/// `max_client_tasks` tasks held, counted over all its graphs (and scattered keys); another
/// client is not affected, and the count falls as tasks are forgotten.
#[test]
fn tasks_held_per_client_are_capped_across_submissions() {
    let mut env = Env::with(CoreConfig {
        max_client_tasks: 5,
        worker_saturation: f64::INFINITY,
        ..Default::default()
    });
    let w = env.join(1, "a", 1);
    for c in [C1, C2] {
        env.ev(Event::ClientConnected { client: c });
    }
    let graph = |prefix: &str, n: usize| -> Vec<_> {
        (0..n)
            .map(|i| task(&format!("{prefix}-{i}"), &[]))
            .collect()
    };
    let first = env.submit(C1, graph("a", 3), &["a-0", "a-1", "a-2"]);
    assert!(matches!(
        &first[0],
        Command::ToClient(_, ToClient::GraphAccepted { .. })
    ));
    let out = env.submit(C1, graph("b", 3), &["b-0"]);
    let [Command::ToClient(_, ToClient::GraphRejected { reason, .. })] = &out[..] else {
        panic!("{out:?}")
    };
    assert!(
        reason.contains("holds 3 tasks and asks for 3 more")
            && reason.contains("limit of 5 tasks per client (--max-client-tasks)"),
        "{reason}"
    );
    // Scattered keys count too.
    let out = env.ev(Event::Scatter {
        client: C1,
        submit_id: 9,
        keys: vec![("s-0".into(), 8), ("s-1".into(), 8), ("s-2".into(), 8)],
        worker: None,
    });
    assert!(
        matches!(&out[..], [Command::ToClient(_, ToClient::ScatterTargets { targets: Err(r), .. })] if r.contains("--max-client-tasks")),
        "{out:?}"
    );
    // Another client has its own count.
    let out = env.submit(C2, graph("c", 5), &["c-4"]);
    assert!(matches!(
        &out[0],
        Command::ToClient(_, ToClient::GraphAccepted { .. })
    ));
    // Once C1's results are computed and released, its tasks are forgotten and it may submit
    // again.
    let done: Vec<TaskId> = compute_on(&first, w).into_iter().map(|(_, t)| t).collect();
    env.finish(w, &done);
    env.ev(Event::ReleaseKeys {
        client: C1,
        keys: vec!["a-0".into(), "a-1".into(), "a-2".into()],
    });
    let out = env.submit(C1, graph("b", 3), &["b-0"]);
    assert!(
        matches!(
            &out[0],
            Command::ToClient(_, ToClient::GraphAccepted { .. })
        ),
        "{out:?}"
    );
}

/// The dashboard's task stream: each task that ran is remembered with the executor thread
/// that ran it, failures included (drawn outlined); one that failed before it ran (an input
/// that could not be found) took no thread's time and is not.
#[test]
fn task_runs_remember_the_thread_and_failures() {
    let mut env = Env::new();
    let w = env.join(1, "a", 2);
    let out = env.submit(
        C1,
        vec![task("x-1", &[]), task("x-2", &[])],
        &["x-1", "x-2"],
    );
    let c = compute_on(&out, w);
    assert_eq!(c.len(), 2, "{out:?}");
    let (t1, t2) = (c[0].1, c[1].1);
    env.ev(Event::TasksFinished {
        worker: w,
        tasks: vec![TaskFinishedMsg {
            task: t1,
            nbytes: 8,
            duration_us: 30,
            started_us: 500,
            thread: 1,
            inline: None,
        }],
    });
    let out = env.err(w, t2, "boom");
    assert_eq!(erred(&out).len(), 1);
    assert_eq!(
        env.core.finished_total(),
        1,
        "a failure is no finished task"
    );
    assert_eq!(env.core.task_runs_total(), 2);
    let runs: Vec<_> = env
        .core
        .task_runs_since(0)
        .map(|r| {
            (
                r.key.to_string(),
                r.worker,
                r.thread,
                r.started_us,
                r.duration_us,
                r.erred,
            )
        })
        .collect();
    assert_eq!(
        runs,
        [
            ("x-1".to_string(), w, 1, 500, 30, false),
            ("x-2".to_string(), w, 0, 0, 10, true)
        ]
    );
    assert_eq!(env.core.task_runs_since(1).count(), 1);

    let out = env.submit(C1, vec![task("y-1", &[])], &["y-1"]);
    let (_, t3) = compute_on(&out, w)[0].clone();
    let out = env.ev(Event::TasksErred {
        worker: w,
        errors: vec![TaskErredMsg {
            task: t3,
            error: TaskErrorMsg {
                kind: ErrorKindMsg::MissingInput,
                message: "gone".into(),
            },
            duration_us: 0,
            started_us: 0,
            thread: None,
        }],
    });
    assert_eq!(erred(&out).len(), 1);
    assert_eq!(env.core.task_runs_total(), 2, "it never ran");
}

/// A graph sent as the client sends it: `want_tasks` and no key repeated in `wanted`.
fn archived_graph(tasks: Vec<taskwire_protocol::TaskSpecMsg>, wanted: &[&str]) -> Event {
    let header = taskwire_protocol::encode(&taskwire_protocol::FromClient::UpdateGraph {
        submit_id: 9,
        tasks,
        wanted: wanted.iter().map(|s| s.to_string()).collect(),
        want_tasks: true,
    });
    Event::UpdateGraphArchived {
        client: C1,
        graph: taskwire_protocol::access(&header).expect("a graph we encoded"),
    }
}

#[test]
fn want_tasks_wants_every_task_of_the_graph_and_the_named_keys() {
    let mut env = Env::new();
    let w = env.join(1, "a", 2);
    let out = env.ev(archived_graph(
        vec![task("x-1", &[]), task("x-2", &["x-1"])],
        &[],
    ));
    assert!(
        matches!(
            &out[0],
            Command::ToClient(C1, ToClient::GraphAccepted { submit_id: 9 })
        ),
        "{out:?}"
    );
    let started = compute_on(&out, w);
    assert_eq!(
        started.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["x-1"]
    );
    // x-1 is wanted in its own right: reported, and kept after x-2 ran.
    let out = env.finish(w, &[started[0].1]);
    assert_eq!(in_memory(&out), [(C1, "x-1".to_string())]);
    let next = compute_on(&out, w);
    let out = env.finish(w, &[next[0].1]);
    assert_eq!(in_memory(&out), [(C1, "x-2".to_string())]);
    assert!(frees(&out).is_empty(), "x-1 is still wanted: {out:?}");
    assert_eq!(env.core.counts().memory, 2);

    // An existing key named besides the new tasks (and a new one named twice) is fine; an
    // unknown one still rejects the whole graph.
    let out = env.ev(archived_graph(vec![task("y-1", &["x-2"])], &["x-1", "y-1"]));
    assert!(
        matches!(
            &out[0],
            Command::ToClient(C1, ToClient::GraphAccepted { .. })
        ),
        "{out:?}"
    );
    let before = env.core.counts().total();
    let out = env.ev(archived_graph(vec![task("z-1", &[])], &["nope"]));
    assert!(
        matches!(&out[0], Command::ToClient(C1, ToClient::GraphRejected { reason, .. }) if reason.contains("nope")),
        "{out:?}"
    );
    assert_eq!(env.core.counts().total(), before);
}
