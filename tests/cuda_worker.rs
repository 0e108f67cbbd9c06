//! End-to-end: `taskwire cuda-worker` with real processes on 127.0.0.1, on a machine without a
//! GPU. `CUDA_VISIBLE_DEVICES=0,1,2,3` stands for a 4-GPU node whose GPUs NVML cannot verify
//! (the warning path), which is enough to check what each worker is given: its rotated
//! `CUDA_VISIBLE_DEVICES`, `GPU=1`, its name, and the same GPU again after a crash.
//!
//! These tests skip themselves on a machine with an NVIDIA driver (`/proc/driver/nvidia`),
//! where NVML would check the fake GPUs against the real ones. The GPU test is ignored; on a
//! machine with an NVIDIA GPU and driver run it with
//! `cargo test -p taskwire --test cuda_worker -- --ignored --nocapture`.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};
use support::{
    BIN, SOON, connect, cuda_worker, nanny_status, rt, scheduler, signal, workers_until,
};
use taskwire::{Client, ClientError, Task};

fn has_nvidia_driver() -> bool {
    std::path::Path::new("/proc/driver/nvidia").exists()
}

/// A command task needing one GPU that prints what its worker sees.
fn visible_task(key: &str) -> Task {
    Task::command(
        key,
        vec![
            "sh".into(),
            "-c".into(),
            "sleep 0.3; echo \"$CUDA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER\"".into(),
        ],
    )
    .resource("GPU", 1.0)
}

async fn stdout_of(client: &Client, task: Task) -> String {
    let f = client.submit(task).await.unwrap();
    let out = tokio::time::timeout(SOON, f.command_output())
        .await
        .expect("the command ends in time")
        .unwrap();
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

const ROTATIONS: [&str; 4] = ["0,1,2,3", "1,2,3,0", "2,3,0,1", "3,0,1,2"];

#[test]
fn four_gpus_give_four_workers_each_seeing_its_own_gpu_first() {
    if has_nvidia_driver() {
        eprintln!("skipped: this machine has an NVIDIA driver");
        return;
    }
    let (_sched, address) = scheduler(&[]);
    let (node, _control) = cuda_worker(&address, Some("0,1,2,3"), 4, &[]);
    node.log("could not verify the GPUs through NVML");
    rt().block_on(async {
        let client = connect(&address).await;
        let ws = workers_until(&client, "4 GPU workers", |ws| ws.len() == 4).await;
        let mut names: Vec<&str> = ws.iter().map(|w| w.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["ci-gpu0", "ci-gpu1", "ci-gpu2", "ci-gpu3"]);
        let quarter = ws[0].memory_limit;
        for w in &ws {
            assert_eq!(w.nthreads, 1, "{w:?}");
            assert_eq!(w.resources.len(), 1, "{w:?}");
            assert_eq!(
                (w.resources[0].name.as_str(), w.resources[0].amount),
                ("GPU", 1.0)
            );
            assert_eq!(w.memory_limit, quarter, "machine memory / 4 each");
        }
        assert!(quarter > 0);

        // Worker gpuK sees GPU K first, then the others in order.
        for (k, want) in ROTATIONS.iter().enumerate() {
            let name = format!("ci-gpu{k}");
            let got = stdout_of(&client, visible_task(&format!("pinned-{k}")).worker(&name)).await;
            assert_eq!(got, format!("{want} PCI_BUS_ID"), "{name}");
        }

        // Four GPU tasks at once: one per GPU worker, so every rotation shows up once.
        let futures = client
            .submit_graph(
                (0..4)
                    .map(|i| visible_task(&format!("spread-{i}")))
                    .collect(),
            )
            .await
            .unwrap();
        let mut seen = Vec::new();
        for f in &futures {
            let out = tokio::time::timeout(SOON, f.command_output())
                .await
                .expect("in time")
                .unwrap();
            seen.push(String::from_utf8(out.stdout).unwrap().trim().to_string());
        }
        seen.sort();
        let want: Vec<String> = ROTATIONS
            .iter()
            .map(|r| format!("{r} PCI_BUS_ID"))
            .collect();
        assert_eq!(seen, want);

        // gpu-info runs on a GPU worker and says clearly that there is no GPU to use.
        let f = client
            .submit(Task::function("info-1", "gpu-info").resource("GPU", 1.0))
            .await
            .unwrap();
        match tokio::time::timeout(SOON, f.result())
            .await
            .expect("in time")
        {
            Err(ClientError::Task { error, .. }) => {
                assert!(
                    error
                        .message
                        .contains("gpu-info: no GPU usable on this worker"),
                    "{}",
                    error.message
                );
                assert!(
                    ROTATIONS
                        .iter()
                        .any(|r| error.message.contains(&format!("CUDA_VISIBLE_DEVICES={r}"))),
                    "{}",
                    error.message
                );
            }
            other => panic!("gpu-info without a GPU: {other:?}"),
        }
        client.close().await;
    });
}

#[test]
fn no_gpu_and_no_cuda_visible_devices_is_a_clear_error() {
    if has_nvidia_driver() {
        eprintln!("skipped: this machine has an NVIDIA driver");
        return;
    }
    let run = |extra: &[&str], visible: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["cuda-worker", "tcp://127.0.0.1:9"]).args(extra);
        match visible {
            Some(v) => cmd.env("CUDA_VISIBLE_DEVICES", v),
            None => cmd.env_remove("CUDA_VISIBLE_DEVICES"),
        };
        let out = cmd.output().unwrap();
        (out.status, String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (status, stderr) = run(&[], None);
    assert!(!status.success());
    assert!(stderr.contains("error: no NVIDIA GPU found"), "{stderr}");
    assert!(
        stderr.contains("use `taskwire worker` for CPU workers"),
        "{stderr}"
    );
    // An empty list is no GPU either.
    let (status, stderr) = run(&[], Some(""));
    assert!(
        !status.success() && stderr.contains("no NVIDIA GPU found"),
        "{stderr}"
    );
    // UCX is not in this build: said plainly, before looking for GPUs, for --transport ucx
    // and for a fabric flag alike.
    if !cfg!(feature = "ucx") {
        for args in [
            &["--transport", "ucx", "--enable-nvlink"][..],
            &["--enable-infiniband"],
        ] {
            let (status, stderr) = run(args, Some("0"));
            assert!(!status.success());
            assert!(
                stderr.contains(
                    "this build has no UCX support: rebuild with `cargo build --release \
                     --features ucx`"
                ),
                "{stderr}"
            );
        }
    }
    let (status, stderr) = run(&[], Some("0,0"));
    assert!(
        !status.success() && stderr.contains("listed twice"),
        "{stderr}"
    );
}

fn status_pid(control: &str, index: usize) -> (Option<u32>, u64) {
    let w = &nanny_status(control)[index];
    (
        w["pid"].as_u64().map(|p| p as u32),
        w["restarts"].as_u64().unwrap(),
    )
}

fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|b| {
            b.split(|&c| c == 0)
                .map(|s| String::from_utf8_lossy(s).to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn killed_gpu_worker_comes_back_on_the_same_gpu() {
    if has_nvidia_driver() {
        eprintln!("skipped: this machine has an NVIDIA driver");
        return;
    }
    let (_sched, address) = scheduler(&[]);
    let (_node, control) = cuda_worker(&address, Some("0,1"), 2, &[]);
    let (pid, restarts) = status_pid(&control, 1);
    let pid = pid.expect("worker 1 runs");
    assert_eq!(restarts, 0);
    assert!(environ(pid).contains(&"CUDA_VISIBLE_DEVICES=1,0".to_string()));
    signal(pid, "-KILL");
    let deadline = Instant::now() + SOON;
    let new_pid = loop {
        if let (Some(p), 1) = status_pid(&control, 1)
            && p != pid
        {
            break p;
        }
        assert!(Instant::now() < deadline, "worker 1 was not restarted");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        environ(new_pid).contains(&"CUDA_VISIBLE_DEVICES=1,0".to_string()),
        "{:?}",
        environ(new_pid)
    );
    rt().block_on(async {
        let client = connect(&address).await;
        workers_until(&client, "gpu1 back after a restart", |ws| {
            ws.len() == 2 && ws.iter().any(|w| w.name == "ci-gpu1" && w.restarts == 1)
        })
        .await;
        let got = stdout_of(&client, visible_task("after-restart").worker("ci-gpu1")).await;
        assert_eq!(got, "1,0 PCI_BUS_ID");
        client.close().await;
    });
}

/// `LocalCudaCluster` in a process whose `CUDA_VISIBLE_DEVICES` is `0,1,2,3` and which has no
/// NVML: this test runs the next one in a child process with that variable set (setting it in
/// this multi-threaded test process would race other tests).
#[test]
fn local_cuda_cluster_starts_a_worker_per_visible_gpu() {
    if has_nvidia_driver() {
        eprintln!("skipped: this machine has an NVIDIA driver");
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "local_cuda_cluster_in_child",
            "--ignored",
            "--nocapture",
        ])
        .env("CUDA_VISIBLE_DEVICES", "0,1,2,3")
        .env(CHILD_MARK, "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the child test ran: {text}");
}

const CHILD_MARK: &str = "TASKWIRE_TEST_LOCAL_CUDA_CHILD";

#[test]
#[ignore = "run by local_cuda_cluster_starts_a_worker_per_visible_gpu in a child process"]
fn local_cuda_cluster_in_child() {
    if std::env::var_os(CHILD_MARK).is_none() {
        eprintln!("skipped: only meaningful as the child of local_cuda_cluster_starts_...");
        return;
    }
    assert_eq!(std::env::var("CUDA_VISIBLE_DEVICES").unwrap(), "0,1,2,3");
    rt().block_on(async {
        let cluster = taskwire::LocalCudaCluster::builder().start().await.unwrap();
        let gpus = cluster.gpus();
        let lists: Vec<&str> = gpus
            .iter()
            .map(|g| g.cuda_visible_devices.as_str())
            .collect();
        assert_eq!(lists, ROTATIONS);
        let client = cluster.client().await.unwrap();
        let ws = workers_until(&client, "4 local GPU workers", |ws| ws.len() == 4).await;
        let mut names: Vec<&str> = ws.iter().map(|w| w.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["local-gpu0", "local-gpu1", "local-gpu2", "local-gpu3"]
        );
        for w in &ws {
            assert_eq!(w.nthreads, 1);
            assert_eq!(
                (w.resources[0].name.as_str(), w.resources[0].amount),
                ("GPU", 1.0)
            );
        }
        // Each worker's GPU functions are bound to its own GPU: CUDA device k of this process.
        for k in 0..4 {
            let f = client
                .submit(
                    Task::function(format!("info-{k}"), "gpu-info")
                        .resource("GPU", 1.0)
                        .worker(&format!("local-gpu{k}")),
                )
                .await
                .unwrap();
            match tokio::time::timeout(SOON, f.result())
                .await
                .expect("in time")
            {
                Err(ClientError::Task { error, .. }) => assert!(
                    error.message.contains(&format!("wanted CUDA device {k})")),
                    "{}",
                    error.message
                ),
                other => panic!("gpu-info without a GPU: {other:?}"),
            }
        }
        client.close().await;
        cluster.close().await;
    });
}

/// On a real GPU node: every GPU's worker runs `gpu-info` and `gpu-saxpy` on its own GPU and the
/// checksum matches the CPU's. Prints device names and timings for BENCHMARKS.md.
#[test]
#[ignore = "needs an NVIDIA GPU and driver"]
fn real_gpus_run_gpu_functions_on_their_own_device() {
    let (_sched, address) = scheduler(&[]);
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let n_gpus = match &visible {
        Some(v) => v.split(',').count(),
        None => std::fs::read_dir("/proc/driver/nvidia/gpus")
            .expect("an NVIDIA driver")
            .count(),
    };
    let (_node, control) = cuda_worker(&address, visible.as_deref(), n_gpus, &[]);
    rt().block_on(async {
        let client = connect(&address).await;
        // Heartbeats carry the GPU's memory and the recorded limit (80% of it by default).
        let ws = workers_until(
            &client,
            "GPU workers with GPU memory in their heartbeats",
            |ws| ws.len() == n_gpus && ws.iter().all(|w| w.metrics.gpu_memory_total > 0),
        )
        .await;
        let mut uuids = Vec::new();
        // The nanny's worker i is `ci-gpu{i}`; the scheduler lists workers in its own order.
        for i in 0..n_gpus {
            let w = ws
                .iter()
                .find(|w| w.name == format!("ci-gpu{i}"))
                .expect("a worker per GPU, named by its index");
            let m = &w.metrics;
            eprintln!(
                "{}: GPU memory used {} of {} MiB, limit {} MiB; resources {:?}",
                w.name,
                m.gpu_memory_used >> 20,
                m.gpu_memory_total >> 20,
                m.gpu_memory_limit >> 20,
                w.resources
            );
            let default_limit =
                taskwire_cuda_worker::DeviceMemoryLimit::Auto.bytes(Some(m.gpu_memory_total));
            assert_eq!(Some(m.gpu_memory_limit), default_limit, "{m:?}");
            assert!(m.gpu_memory_used <= m.gpu_memory_total, "{m:?}");
            let (pid, _) = status_pid(&control, i);
            let pid = pid.expect("the worker runs");
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let cpus = status
                .lines()
                .find(|l| l.starts_with("Cpus_allowed_list"))
                .unwrap_or("Cpus_allowed_list: ?");
            eprintln!("{} (pid {pid}): {cpus}", w.name);
            let info = gpu_info(&client, &w.name, "first").await;
            uuids.push(info["uuid"].as_str().unwrap().to_string());
            for (n, round) in [(1u64 << 24, "cold"), (1 << 24, "warm"), (1 << 28, "warm")] {
                let got = saxpy(&client, &w.name, n, round).await;
                assert_eq!(
                    got,
                    taskwire_cuda_worker::saxpy_checksum_cpu(n),
                    "{}",
                    w.name
                );
            }
        }
        let mut distinct = uuids.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), n_gpus, "each worker on a GPU of its own");

        // A killed GPU worker comes back on the same GPU and computes there again.
        let (pid, restarts) = status_pid(&control, 0);
        let pid = pid.unwrap();
        signal(pid, "-KILL");
        let t = Instant::now();
        loop {
            if let (Some(p), r) = status_pid(&control, 0)
                && p != pid
                && r == restarts + 1
            {
                break;
            }
            assert!(t.elapsed() < SOON, "worker 0 was not restarted");
            std::thread::sleep(Duration::from_millis(20));
        }
        let name = "ci-gpu0".to_string();
        workers_until(&client, "GPU worker 0 back", |ws| {
            ws.iter()
                .any(|w| w.name == name && w.restarts == restarts as u32 + 1)
        })
        .await;
        eprintln!("{name}: killed and registered again in {:?}", t.elapsed());
        let info = gpu_info(&client, &name, "after-restart").await;
        assert_eq!(
            info["uuid"].as_str().unwrap(),
            uuids[0],
            "the same GPU after a restart"
        );
        let n = 1 << 24;
        let got = saxpy(&client, &name, n, "after-restart").await;
        assert_eq!(got, taskwire_cuda_worker::saxpy_checksum_cpu(n));
        client.close().await;
    });
}

/// `gpu-info` on worker `name`, checked to be on the worker's own GPU (its CUDA device 0).
async fn gpu_info(client: &Client, name: &str, tag: &str) -> serde_json::Value {
    let info = client
        .submit(Task::function(format!("info-{name}-{tag}"), "gpu-info").worker(name))
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    let info = String::from_utf8_lossy(&info).to_string();
    eprintln!("{name} gpu-info ({tag}): {info}");
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(
        v["ordinal"], 0,
        "a worker's own GPU is its CUDA device 0: {info}"
    );
    v
}

/// `gpu-saxpy` of `n` elements on worker `name`: its checksum, with the time printed.
async fn saxpy(client: &Client, name: &str, n: u64, tag: &str) -> u64 {
    let t = Instant::now();
    let out = client
        .submit(
            Task::function(format!("saxpy-{name}-{n}-{tag}"), "gpu-saxpy")
                .arg_u64(n)
                .resource("GPU", 1.0)
                .worker(name),
        )
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    let got = u64::from_le_bytes(out[..].try_into().unwrap());
    eprintln!(
        "{name}: gpu-saxpy n={n} ({tag}): checksum {got:#x}, task round trip {:?}",
        t.elapsed()
    );
    got
}
