//! A cluster over UCX with real processes (built with `--features ucx`): the scheduler listens
//! on `ucx://`, workers register over UCX and serve their data over UCX, and a graph moves data
//! from one worker to the other; `taskwire cuda-worker --transport ucx` starts its GPU workers
//! over UCX. Run with
//! `cargo test -p taskwire --features ucx --test ucx_cluster`.

mod support;

use std::time::Duration;
use support::{Proc, cuda_worker, rt, spawn, tree_over};
use taskwire::{Client, Task};

/// A scheduler listening on `ucx://127.0.0.1:PORT`; returns it with its address.
fn ucx_scheduler() -> (Proc, String) {
    let (sched, lines) = spawn(
        &[
            "scheduler",
            "--transport",
            "ucx",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
        ],
        &["Scheduler at:"],
    );
    let address = lines[0].clone();
    assert!(address.starts_with("ucx://127.0.0.1:"), "{address}");
    (sched, address)
}

#[test]
fn a_graph_with_worker_to_worker_transfers_runs_over_ucx() {
    let (_sched, address) = ucx_scheduler();
    let mut workers = Vec::new();
    for name in ["ucx-0", "ucx-1"] {
        let (w, lines) = spawn(
            &[
                "worker",
                &address,
                "--nthreads",
                "1",
                "--name",
                name,
                "--no-nanny",
            ],
            &["Start worker at:", "Registered to:"],
        );
        assert!(lines[0].starts_with("ucx://"), "data address {}", lines[0]);
        workers.push(w);
    }
    let rt = rt();
    rt.block_on(async {
        let client = Client::connect(&address).await.unwrap();
        // 8 MiB made on one worker and checksummed on the other: a worker-to-worker transfer.
        let size = 8u64 << 20;
        let big = client
            .submit(
                Task::function("ucx-bytes", "make-bytes")
                    .arg_u64(size)
                    .worker("ucx-0"),
            )
            .await
            .unwrap();
        let sum = client
            .submit(
                Task::function("ucx-sum", "checksum")
                    .dep(&big)
                    .worker("ucx-1"),
            )
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(60), sum.result())
            .await
            .expect("checksum in time")
            .unwrap();
        let want =
            taskwire_worker::fnv1a64(&taskwire_worker::pattern_bytes(size as usize).unwrap());
        assert_eq!(u64::from_le_bytes(got[..8].try_into().unwrap()), want);
        // The client fetches a result from a worker over UCX too.
        let bytes = big.result().await.unwrap();
        assert_eq!(bytes.len() as u64, size);

        // A tree reduction spread over both workers.
        let leaves: Vec<Task> = (0..200)
            .map(|i| Task::function(format!("ucx-inc-{i}"), "inc").arg_i64(i))
            .collect();
        let keys = leaves.iter().map(|t| t.key().to_string()).collect();
        let (inner, root) = tree_over("ucx-add", keys);
        let mut tasks = leaves;
        tasks.extend(inner);
        let futures = client.submit_graph(tasks).await.unwrap();
        let root = futures.iter().find(|f| f.key() == root).unwrap();
        let total = tokio::time::timeout(Duration::from_secs(60), root.result_i64())
            .await
            .expect("tree in time")
            .unwrap();
        assert_eq!(total, (1..=200).sum::<i64>());
        let ws = client.workers().await.unwrap();
        assert!(ws.iter().all(|w| w.address.starts_with("ucx://")), "{ws:?}");
        client.close().await;
    });
}

/// `taskwire cuda-worker ADDR --transport ucx --enable-tcp-over-ucx` on two GPUs that NVML
/// cannot verify (`CUDA_VISIBLE_DEVICES=0,1`): it prints the UCX settings the flag chose, its
/// GPU workers register over UCX with `GPU=1`, and GPU tasks see their own GPU first and the
/// fabric's environment. Skipped on a machine with an NVIDIA driver, where NVML would check the
/// fake GPUs.
#[test]
fn cuda_workers_register_over_ucx_with_the_fabric_flags() {
    if std::path::Path::new("/proc/driver/nvidia").exists() {
        eprintln!("skipped: this machine has an NVIDIA driver");
        return;
    }
    let (_sched, address) = ucx_scheduler();
    let (node, _control) = cuda_worker(
        &address,
        Some("0,1"),
        2,
        &["--transport", "ucx", "--enable-tcp-over-ucx"],
    );
    let fabric = node.log("UCX fabric:");
    assert!(
        fabric.contains("UCX_TLS=tcp UCX_SOCKADDR_TLS_PRIORITY=tcp (from --enable-tcp-over-ucx)"),
        "{fabric}"
    );
    rt().block_on(async {
        let client = Client::connect(&address).await.unwrap();
        let mut ws = client.workers().await.unwrap();
        ws.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<&str> = ws.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["ci-gpu0", "ci-gpu1"]);
        for w in &ws {
            assert!(w.address.starts_with("ucx://"), "{w:?}");
            assert_eq!(
                (w.resources[0].name.as_str(), w.resources[0].amount),
                ("GPU", 1.0)
            );
        }
        for (k, want) in ["0,1 tcp", "1,0 tcp"].iter().enumerate() {
            let task = Task::command(
                format!("ucx-gpu-{k}"),
                vec![
                    "sh".into(),
                    "-c".into(),
                    "echo \"$CUDA_VISIBLE_DEVICES $UCX_TLS\"".into(),
                ],
            )
            .resource("GPU", 1.0)
            .worker(&format!("ci-gpu{k}"));
            let f = client.submit(task).await.unwrap();
            let out = tokio::time::timeout(Duration::from_secs(60), f.command_output())
                .await
                .expect("the command ends in time")
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), *want);
        }
        client.close().await;
    });
}
