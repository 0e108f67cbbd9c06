//! End-to-end: the real `taskwire` binary as a scheduler and two workers on 127.0.0.1, driven by
//! the Rust client and by `taskwire submit`, the way a user runs them in separate terminals.

mod support;

use std::process::Command;
use std::time::Duration;
use support::{BIN, Proc, rt, scheduler, spawn, tempdir, tree_over};
use taskwire::{Client, ClientError, Status, Task};

struct Cluster {
    address: String,
    _procs: Vec<Proc>,
}

fn cluster() -> Cluster {
    let file = tempdir("scheduler-file").join("scheduler.json");
    let file_arg = file.to_str().unwrap();
    let (sched, address) = scheduler(&["--scheduler-file", file_arg]);
    assert!(address.starts_with("tcp://127.0.0.1:"), "{address}");
    let mut procs = vec![sched];
    // One worker is given the address, the other finds it in the scheduler file.
    let (w, lines) = spawn(
        &[
            "worker",
            &address,
            "--nthreads",
            "2",
            "--name",
            "e2e-worker-0",
        ],
        &["Start worker at:", "Registered to:"],
    );
    assert_eq!(lines[1], address);
    procs.push(w);
    let (w, lines) = spawn(
        &[
            "worker",
            "--scheduler-file",
            file_arg,
            "--nthreads",
            "2",
            "--name",
            "e2e-worker-1",
        ],
        &["Start worker at:", "Registered to:"],
    );
    assert_eq!(lines[1], address);
    procs.push(w);
    Cluster {
        address,
        _procs: procs,
    }
}

#[test]
fn graphs_commands_errors_and_cancellation_across_two_worker_processes() {
    let cluster = cluster();
    rt().block_on(async {
        let client =
            tokio::time::timeout(Duration::from_secs(30), Client::connect(&cluster.address))
                .await
                .expect("connect in time")
                .expect("connect");
        let workers = client.workers().await.unwrap();
        assert_eq!(workers.len(), 2, "{workers:?}");
        let mut names: Vec<&str> = workers.iter().map(|w| w.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["e2e-worker-0", "e2e-worker-1"]);

        // Fan-out: 200 independent inc tasks.
        let tasks: Vec<Task> = (0..200)
            .map(|i| Task::function(format!("inc-{i}"), "inc").arg_i64(i))
            .collect();
        let incs = client.submit_graph(tasks).await.unwrap();
        let values = client.gather(&incs).await.unwrap();
        for (i, v) in values.iter().enumerate() {
            assert_eq!(taskwire::decode_i64(v).unwrap(), i as i64 + 1);
        }
        // Both worker processes hold part of the fan-out, so the reduction below moves data.
        let held: Vec<u64> = client
            .workers()
            .await
            .unwrap()
            .iter()
            .map(|w| w.in_memory)
            .collect();
        assert!(
            held.iter().all(|&n| n > 0) && held.iter().sum::<u64>() == 200,
            "{held:?}"
        );

        // Tree reduction over the fan-out: inputs move between the two worker processes.
        let keys = incs.iter().map(|f| f.key().to_string()).collect();
        let (tasks, root_key) = tree_over("sum", keys);
        let tree = client.submit_graph(tasks).await.unwrap();
        let root = tree.iter().find(|f| f.key() == root_key).unwrap();
        assert_eq!(root.result_i64().await.unwrap(), (1..=200).sum::<i64>());

        // Large data made on one worker and consumed where the scheduler puts it.
        let big = client
            .submit(Task::function("bytes-1", "make-bytes").arg_u64(8 << 20))
            .await
            .unwrap();
        let sum = client
            .submit(Task::function("checksum-1", "checksum").dep(&big))
            .await
            .unwrap();
        let got = sum.result().await.unwrap();
        let want = taskwire_worker::fnv1a64(&taskwire_worker::pattern_bytes(8 << 20).unwrap());
        assert_eq!(u64::from_le_bytes(got[..8].try_into().unwrap()), want);

        // An erroring task: readable error, dependents fail naming it, the cluster carries on.
        let bad = client
            .submit(Task::function("bad-1", "fail").args(b"disk on fire".to_vec()))
            .await
            .unwrap();
        let after = client
            .submit(Task::function("after-bad", "inc").dep(&bad))
            .await
            .unwrap();
        let err = bad.result().await.unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        let err = after.result().await.unwrap_err();
        assert!(
            err.to_string().contains("bad-1"),
            "dependent error should name the failed ancestor: {err}"
        );
        let unknown = client
            .submit(Task::function("nope-1", "no-such-function"))
            .await
            .unwrap();
        assert!(
            unknown
                .result()
                .await
                .unwrap_err()
                .to_string()
                .contains("unknown function")
        );

        // A cancelled task: a long sleep, cancelled while it runs or waits.
        let slow = client
            .submit(Task::function("sleep-1", "sleep").arg_u64(60_000))
            .await
            .unwrap();
        client.cancel(std::slice::from_ref(&slow)).await.unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), slow.done())
            .await
            .expect("cancel resolves");
        assert!(
            matches!(status, Status::Cancelled | Status::Error(_)),
            "{status:?}"
        );
        assert!(matches!(
            slow.result().await,
            Err(ClientError::Cancelled(_)) | Err(ClientError::Task { .. })
        ));

        // Bad input from a client: a cyclic graph is refused and nothing else is disturbed.
        let cyc = client
            .submit_graph(vec![
                Task::function("cyc-a", "inc").dep_key("cyc-b"),
                Task::function("cyc-b", "inc").dep_key("cyc-a"),
            ])
            .await;
        assert!(
            matches!(cyc, Err(ClientError::GraphRejected(ref r)) if r.contains("cycle")),
            "{cyc:?}"
        );
        let ok = client
            .submit(Task::function("inc-final", "inc").arg_i64(1))
            .await
            .unwrap();
        assert_eq!(ok.result_i64().await.unwrap(), 2);
        client.close().await;
    });

    // A command array through the CLI, as a user without Rust runs work.
    let out = tempdir("submit-out");
    let status = Command::new(BIN)
        .args([
            "submit",
            "--scheduler",
            &cluster.address,
            "--array",
            "1-20",
            "--wait",
            "--output",
        ])
        .arg(&out)
        .args(["--", "sh", "-c", "echo task {i}; echo err {i} >&2"])
        .status()
        .unwrap();
    assert!(status.success());
    let mut files: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files.iter().filter(|f| f.ends_with(".stdout")).count(),
        20,
        "{files:?}"
    );
    for i in 1..=20 {
        let f = files
            .iter()
            .find(|f| f.ends_with(&format!("-{i}.stdout")))
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join(f)).unwrap(),
            format!("task {i}\n")
        );
    }
    // A failing command: nonzero exit of `taskwire submit`, with the exit status and stderr.
    let output = Command::new(BIN)
        .args([
            "submit",
            "--scheduler",
            &cluster.address,
            "--wait",
            "--",
            "sh",
            "-c",
            "echo broken >&2; exit 3",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("broken") && stderr.contains('3'),
        "{stderr}"
    );
}

/// A busy worker holds finished-task reports for a few milliseconds to batch them. When its
/// queue runs dry, the last task's report carries the held ones: it must not overtake them,
/// or the scheduler (and the client) hear of the later task first and count the earlier one
/// as still running.
#[test]
fn a_task_that_finished_first_is_reported_first() {
    let (sched, address) = scheduler(&[]);
    let (worker, _) = spawn(
        &["worker", &address, "--nthreads", "1", "--name", "order-0"],
        &["Registered to:"],
    );
    let _procs = [sched, worker];
    rt().block_on(async {
        let client = Client::connect(&address).await.unwrap();
        for round in 0..5 {
            // One thread: `first` runs, then `second` (queued behind it while `first` ran),
            // which finishes within the batching delay.
            let tasks = vec![
                Task::function(format!("first-{round}"), "sleep").arg_u64(1),
                Task::function(format!("second-{round}"), "sleep").arg_u64(2),
            ];
            let futures = client.submit_graph(tasks).await.unwrap();
            let status = tokio::time::timeout(Duration::from_secs(30), futures[1].done())
                .await
                .expect("the second task completes within 30 s");
            assert_eq!(status, Status::Finished);
            // Reported with (or before) the second, so already known when the second is.
            assert_eq!(futures[0].status(), Status::Finished, "round {round}");
        }
        client.close().await;
    });
}
