//! Adaptive scaling end to end: `taskwire local --adapt MIN:MAX` grows under a burst of work
//! and shrinks back to its minimum when idle, retiring workers gracefully (nothing recomputed,
//! every result still there); bad `--adapt` values are refused clearly.

mod support;

use std::time::Instant;
use support::{
    Proc, SOON, api_json, check_command_values, child_pids, logged_sleep, rt, tempdir,
    workers_until,
};
use taskwire::Future;

#[test]
fn local_cluster_grows_under_a_burst_and_shrinks_back_when_idle() {
    grow_and_shrink("adaptive-local", &[]);
}

/// The same with every worker its own process: the `taskwire worker` processes come and go.
#[test]
fn local_cluster_of_worker_processes_grows_and_shrinks() {
    grow_and_shrink("adaptive-processes", &["--processes"]);
}

/// Worker processes of `pid` (none when the workers run inside it).
fn worker_processes(pid: u32) -> usize {
    child_pids(pid)
        .into_iter()
        .filter(|&p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).nth(1) == Some(b"worker"))
        })
        .count()
}

fn grow_and_shrink(name: &str, extra: &[&str]) {
    let dir = tempdir(name);
    let log = dir.join("runs.log");
    let mut args = vec![
        "local",
        "--adapt",
        "1:4",
        "--keep-running",
        "--tasks",
        "0",
        "--leaves",
        "2",
        "--dashboard-port",
        "0",
    ];
    args.extend_from_slice(extra);
    let processes = !extra.is_empty();
    let cluster = Proc::start(&args);
    let procs = |n: usize| {
        if processes {
            let deadline = Instant::now() + SOON;
            while worker_processes(cluster.pid()) != n && Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            assert_eq!(worker_processes(cluster.pid()), n, "worker processes");
        } else {
            assert_eq!(worker_processes(cluster.pid()), 0, "worker processes");
        }
    };
    let address = cluster.line("Scheduler at:");
    let dashboard = cluster.line("dashboard at:");
    assert_eq!(cluster.line("Adaptive scaling:"), "1 to 4 workers");
    cluster.line("cluster running");
    rt().block_on(async {
        let client = support::connect(&address).await;
        workers_until(&client, "the minimum of 1", |ws| ws.len() == 1).await;

        // A burst: 24 one-second tasks are ~24 s of work for one worker, far more than the
        // 5 s target, so the cluster grows to its maximum.
        let n = 24;
        let tasks = (0..n)
            .map(|i| logged_sleep("burst", i, 1000, &log))
            .collect();
        let t = Instant::now();
        let futures: Vec<Future> = client.submit_graph(tasks).await.unwrap();
        let ws = workers_until(&client, "grown to 4", |ws| ws.len() == 4).await;
        let grown = t.elapsed();
        procs(4);
        // Never above the maximum.
        assert_eq!(ws.len(), 4);
        tokio::time::timeout(SOON, client.wait(&futures))
            .await
            .expect("burst in time");
        let done = t.elapsed();
        check_command_values(&futures).await;
        let spread = client.workers().await.unwrap();
        assert!(
            spread.iter().filter(|w| w.in_memory > 0).count() > 1,
            "the results should be on several workers: {spread:?}"
        );

        // Idle: back to the minimum, the retired workers' results moved to the one left.
        let t = Instant::now();
        let ws = workers_until(&client, "shrunk to 1", |ws| ws.len() == 1).await;
        let shrunk = t.elapsed();
        procs(1);
        assert_eq!(ws[0].in_memory, n as u64, "{ws:?}");
        check_command_values(&futures).await;
        let runs = std::fs::read_to_string(&log).unwrap();
        assert_eq!(runs.lines().count(), n, "a task ran twice:\n{runs}");

        // The scheduler's own account: three graceful retirements, no loss, no recompute (the
        // dashboard's snapshot trails the scheduler by up to its publishing interval).
        let deadline = Instant::now() + SOON;
        let totals = loop {
            let totals = api_json(&dashboard, "/api/v1/totals");
            if totals["workers"] == 1 || Instant::now() > deadline {
                break totals;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        let r = &totals["recovery"];
        assert_eq!(r["workers_retired"], 3, "{totals}");
        assert_eq!(r["workers_lost"], 0, "{totals}");
        assert_eq!(r["results_recomputed"], 0, "{totals}");
        assert_eq!(r["tasks_rescheduled"], 0, "{totals}");
        eprintln!(
            "adaptive 1:4 {extra:?}: grown to 4 workers {grown:?} after the burst was submitted, burst \
             done in {done:?}, shrunk to 1 in {shrunk:?} after it finished"
        );

        // It grows again for the next burst.
        let tasks = (0..12)
            .map(|i| logged_sleep("again", i, 1000, &dir.join("again.log")))
            .collect();
        let futures: Vec<Future> = client.submit_graph(tasks).await.unwrap();
        workers_until(&client, "grown again", |ws| ws.len() > 1).await;
        tokio::time::timeout(SOON, client.wait(&futures))
            .await
            .expect("second burst in time");
        check_command_values(&futures).await;
        client.close().await;
    });
    let mut cluster = cluster;
    let kids = child_pids(cluster.pid());
    support::signal(cluster.pid(), "-INT");
    let status = cluster.exit_within(SOON);
    assert!(status.success(), "taskwire local exit status {status}");
    support::all_gone_within(&kids, std::time::Duration::from_secs(10));
}

#[test]
fn bad_adapt_ranges_are_refused_clearly() {
    for (value, expected) in [
        ("4:1", "the minimum 4 is above the maximum 1"),
        ("1-4", "is not MIN:MAX worker counts"),
        ("x:3", "is not MIN:MAX worker counts"),
        ("0:0", "the maximum must be at least 1"),
    ] {
        let out = std::process::Command::new(support::BIN)
            .args(["local", "--adapt", value, "--tasks", "0"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "--adapt {value} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "--adapt {value}: {err}");
    }
    // More than the SSH host pool holds: refused before any connection is made.
    let out = std::process::Command::new(support::BIN)
        .args([
            "ssh",
            "127.0.0.1",
            "127.0.0.2",
            "127.0.0.3",
            "--adapt",
            "1:5",
        ])
        .args(["--nworkers", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the maximum 5 is more than the 2 worker hosts hold (4 workers"),
        "{err}"
    );
}
