//! Worker memory management against a real in-process scheduler and client: results beyond
//! the memory limit are spilled to the local directory and read back (by tasks on the worker,
//! by the client, by another worker), the spill directory empties when the results are
//! released, and a worker pauses and resumes on memory pressure.
//!
//! Process memory is read from a fake [`MemorySource`]: the test process holds a scheduler,
//! a client and workers, so its real RSS says nothing about one worker.

use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use taskwire_client::{Client, Future, Status, Task};
use taskwire_protocol::WorkerInfoMsg;
use taskwire_scheduler::{Scheduler, SchedulerHandle};
use taskwire_transport::{Address, TransportConfig, mem};
use taskwire_worker::{
    MemoryConfig, MemorySource, Registry, Worker, WorkerHandle, decode_i64, fnv1a64,
};

const MIB: u64 = 1 << 20;

/// `len` bytes that differ from task to task: byte `i` is `(i * 7 + seed) % 256`.
fn seeded(seed: u64, len: u64) -> Bytes {
    (0..len)
        .map(|i| (i.wrapping_mul(7).wrapping_add(seed) % 256) as u8)
        .collect()
}

fn functions() -> Registry {
    let mut r = Registry::stock();
    r.register("seeded-bytes", |_, args, _| {
        let word = |i: usize| u64::from_le_bytes(args[i * 8..i * 8 + 8].try_into().unwrap());
        Ok(seeded(word(0), word(1)))
    });
    r
}

fn seeded_task(key: &str, seed: u64, len: u64) -> Task {
    let mut args = seed.to_le_bytes().to_vec();
    args.extend_from_slice(&len.to_le_bytes());
    Task::function(key, "seeded-bytes").args(args)
}

fn tempdir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("taskwire-memory-it-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn spill_files(local_dir: &Path) -> usize {
    std::fs::read_dir(local_dir.join("spill")).map_or(0, |d| d.count())
}

/// A memory reading the test sets.
fn fake_memory() -> (MemorySource, Arc<AtomicU64>) {
    let value = Arc::new(AtomicU64::new(0));
    let v = value.clone();
    (MemorySource::new(move || v.load(Ordering::Relaxed)), value)
}

async fn scheduler() -> SchedulerHandle {
    start_scheduler(mem::unique_address("memory-test")).await
}

async fn start_scheduler(address: Address) -> SchedulerHandle {
    Scheduler::builder()
        .address(address)
        .start()
        .await
        .expect("scheduler starts")
}

async fn worker(
    scheduler: &SchedulerHandle,
    name: &str,
    limit: u64,
    dir: &Path,
    memory: MemorySource,
) -> WorkerHandle {
    Worker::builder(scheduler.address().clone())
        .name(name)
        .nthreads(2)
        .memory_limit(limit)
        .memory_config(MemoryConfig {
            monitor_interval: Duration::from_millis(10),
            ..MemoryConfig::default()
        })
        .memory_source(memory)
        .local_directory(dir)
        .functions(functions())
        .start()
        .await
        .expect("worker starts")
}

async fn client(scheduler: &SchedulerHandle) -> Client {
    let registry = taskwire_transport_tcp::standard_registry(TransportConfig::default());
    Client::connect_with(scheduler.address(), registry, "memory-test")
        .await
        .expect("client connects")
}

/// Poll the scheduler's view of worker `name` until `f` holds (heartbeats every 500 ms).
async fn wait_for_worker(
    client: &Client,
    name: &str,
    what: &str,
    f: impl Fn(&WorkerInfoMsg) -> bool,
) -> WorkerInfoMsg {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let workers = client.workers().await.expect("workers");
        let w = workers
            .iter()
            .find(|w| w.name == name)
            .expect("the worker is listed");
        if f(w) {
            return w.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last seen {:?}",
            w.metrics
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn checksum(futures: &[Future], key: &str) -> Task {
    futures
        .iter()
        .fold(Task::function(key, "checksum"), |t, f| t.dep(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_beyond_the_limit_are_spilled_and_read_back() {
    let sched = scheduler().await;
    let dir = tempdir("spill");
    let (memory, _) = fake_memory();
    let w = worker(&sched, "spiller", 8 * MIB, &dir, memory).await;
    let client = client(&sched).await;

    // 64 MiB of results on a worker with an 8 MiB limit (target: 4.8 MiB in memory).
    let n = 64;
    let tasks = (0..n)
        .map(|i| seeded_task(&format!("part-{i}"), i, MIB))
        .collect();
    let parts = client.submit_graph(tasks).await.unwrap();
    client.wait(&parts).await;
    for p in &parts {
        assert_eq!(p.status(), Status::Finished, "{}", p.key());
    }
    // Spilling runs on the memory thread, behind the inserts: wait until a heartbeat shows
    // data on disk and managed memory back under the target.
    let info = wait_for_worker(
        &client,
        "spiller",
        "spilled bytes, managed under target",
        |w| w.metrics.spilled > 0 && w.metrics.managed <= 8 * MIB * 6 / 10,
    )
    .await;
    assert!(!info.metrics.paused);
    assert!(spill_files(&dir) > 0);

    // A task on the worker reads every part, spilled or not, in order.
    let expected = {
        let all: Vec<u8> = (0..n).flat_map(|i| seeded(i, MIB)).collect();
        fnv1a64(&all)
    };
    let sum = client.submit(checksum(&parts, "sum-all")).await.unwrap();
    let got = sum.result().await.unwrap();
    assert_eq!(u64::from_le_bytes(got[..].try_into().unwrap()), expected);
    // The client fetches them from the worker's data port too.
    for i in [0, 1, n / 2, n - 1] {
        let value = parts[i as usize].result().await.unwrap();
        assert_eq!(value, seeded(i, MIB), "part {i}");
    }

    // Released: memory and disk are given back.
    drop(sum);
    drop(parts);
    wait_for_worker(&client, "spiller", "everything freed", |w| {
        w.metrics.spilled == 0 && w.metrics.managed == 0
    })
    .await;
    wait_until("an empty spill directory", || spill_files(&dir) == 0).await;

    w.close().await;
    sched.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_fetches_a_spilled_result() {
    // Over loopback TCP, as between machines.
    let sched = start_scheduler(Address::tcp("127.0.0.1", 0)).await;
    let dir_a = tempdir("peer-a");
    let dir_b = tempdir("peer-b");
    let (memory_a, _) = fake_memory();
    let (memory_b, _) = fake_memory();
    let a = worker(&sched, "holder", 8 * MIB, &dir_a, memory_a).await;
    // No limit on B: it keeps what it fetches in memory.
    let b = worker(&sched, "reader", 0, &dir_b, memory_b).await;
    let client = client(&sched).await;

    let n = 16;
    let tasks = (0..n)
        .map(|i| seeded_task(&format!("a-{i}"), 100 + i, MIB).worker("holder"))
        .collect();
    let parts = client.submit_graph(tasks).await.unwrap();
    client.wait(&parts).await;
    // Spilled results stay on disk until read: whatever A has spilled by now, B fetches
    // from its disk.
    let info = wait_for_worker(&client, "holder", "spilled bytes", |w| {
        w.metrics.spilled >= 8 * MIB
    })
    .await;
    assert!(spill_files(&dir_a) >= 8, "{:?}", info.metrics);

    let sum = client
        .submit(checksum(&parts, "sum-on-b").worker("reader"))
        .await
        .unwrap();
    let lens: Vec<Future> = client
        .submit_graph(
            parts
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    Task::function(format!("len-{i}"), "len")
                        .dep(p)
                        .worker("reader")
                })
                .collect(),
        )
        .await
        .unwrap();
    let expected = {
        let all: Vec<u8> = (0..n).flat_map(|i| seeded(100 + i, MIB)).collect();
        fnv1a64(&all)
    };
    let got = sum.result().await.unwrap();
    assert_eq!(u64::from_le_bytes(got[..].try_into().unwrap()), expected);
    for l in &lens {
        assert_eq!(decode_i64(&l.result().await.unwrap()).unwrap(), MIB as i64);
    }
    let b_info = wait_for_worker(&client, "reader", "B's heartbeat", |w| {
        w.metrics.managed > 0
    })
    .await;
    assert_eq!(b_info.memory_limit, 0);
    assert_eq!(b_info.metrics.spilled, 0, "no limit: B never spills");
    assert_eq!(spill_files(&dir_b), 0);

    drop((sum, lens, parts));
    wait_until("A's spill directory to empty", || spill_files(&dir_a) == 0).await;
    a.close().await;
    b.close().await;
    sched.close().await;
    let _ = std::fs::remove_dir_all(&dir_a);
    let _ = std::fs::remove_dir_all(&dir_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_pauses_above_the_threshold_and_resumes_below() {
    let sched = scheduler().await;
    let dir = tempdir("pause");
    let (memory, rss) = fake_memory();
    let limit = 100 * MIB;
    rss.store(10 * MIB, Ordering::Relaxed);
    let w = worker(&sched, "pauser", limit, &dir, memory).await;
    let client = client(&sched).await;

    let before = client
        .submit(Task::function("before", "inc").arg_i64(1))
        .await
        .unwrap();
    assert_eq!(before.result_i64().await.unwrap(), 2);
    let info = wait_for_worker(&client, "pauser", "a heartbeat", |w| {
        w.metrics.rss == 10 * MIB
    })
    .await;
    assert!(!info.metrics.paused);

    // Above 80%: paused, reported at once.
    rss.store(90 * MIB, Ordering::Relaxed);
    wait_for_worker(&client, "pauser", "paused", |w| w.metrics.paused).await;
    let during = client
        .submit(Task::function("during", "inc").arg_i64(41))
        .await
        .unwrap();
    // Nothing runs while it is paused (the only worker: the task waits).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(during.status(), Status::Pending);

    // Below the threshold (and its hysteresis) again: it resumes and runs the task.
    rss.store(50 * MIB, Ordering::Relaxed);
    assert_eq!(during.result_i64().await.unwrap(), 42);
    wait_for_worker(&client, "pauser", "resumed", |w| !w.metrics.paused).await;

    w.close().await;
    sched.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_memory_limit_means_no_spilling() {
    let sched = scheduler().await;
    let dir = tempdir("nolimit");
    // Would be far above every threshold of any limit.
    let (memory, rss) = fake_memory();
    rss.store(u64::MAX / 2, Ordering::Relaxed);
    let w = worker(&sched, "unlimited", 0, &dir, memory).await;
    let client = client(&sched).await;
    let tasks = (0..8)
        .map(|i| seeded_task(&format!("u-{i}"), i, MIB))
        .collect();
    let parts = client.submit_graph(tasks).await.unwrap();
    let sum = client.submit(checksum(&parts, "u-sum")).await.unwrap();
    assert!(sum.result().await.is_ok());
    let info = wait_for_worker(&client, "unlimited", "managed memory", |w| {
        w.metrics.managed >= 8 * MIB
    })
    .await;
    assert_eq!(info.metrics.spilled, 0);
    assert!(!info.metrics.paused);
    assert_eq!(
        info.metrics.rss,
        u64::MAX / 2,
        "the source is still reported"
    );
    assert!(!dir.join("spill").exists());
    drop((parts, sum));
    w.close().await;
    sched.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_memory_from_the_probe_reaches_the_scheduler() {
    let sched = scheduler().await;
    let used = Arc::new(AtomicU64::new(100));
    let u = used.clone();
    let probe: taskwire_worker::GpuMemoryProbe =
        Arc::new(move || Some((u.load(Ordering::Relaxed), 1000)));
    let _w = Worker::builder(sched.address().clone())
        .name("gpu-worker")
        .gpu_memory(probe, 800)
        .local_directory(tempdir("gpu-probe"))
        .start()
        .await
        .expect("worker starts");
    let client = client(&sched).await;
    let info = wait_for_worker(&client, "gpu-worker", "GPU memory", |w| {
        w.metrics.gpu_memory_used == 100
    })
    .await;
    assert_eq!(
        (info.metrics.gpu_memory_total, info.metrics.gpu_memory_limit),
        (1000, 800)
    );
    // Read again for every heartbeat.
    used.store(700, Ordering::Relaxed);
    wait_for_worker(&client, "gpu-worker", "new GPU memory", |w| {
        w.metrics.gpu_memory_used == 700
    })
    .await;
}
