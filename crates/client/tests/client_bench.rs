//! A client-only micro-benchmark: submit N no-op tasks to a scripted scheduler in this process
//! (inproc transport, one thread), receive `KeysInMemory` for all of them, wait, drop the
//! futures (one batched release) and close. Ignored by default; run it with
//!
//! ```text
//! BENCH_TASKS=100000 cargo test --release -p taskwire-client --test client_bench -- --ignored --nocapture
//! ```
//!
//! or under `valgrind --tool=callgrind` for instruction counts. The scripted scheduler's own
//! work lives in `fake_scheduler`, so its inclusive cost can be subtracted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use taskwire_client::{Address, Client, Status, Task};
use taskwire_protocol::{
    FromClient, KeyInMemoryMsg, TaskId, ToClient, Welcome, decode, encode, read_hello,
};
use taskwire_transport::{Connection, Message, Registry, TransportConfig, mem};

/// The system allocator, counting allocations (for allocations per task).
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Keys per `KeysInMemory` message.
const CHUNK: usize = 500;

#[inline(never)]
async fn fake_scheduler(mut conn: Connection) -> usize {
    let hello = conn.recv_msg().await.expect("hello");
    read_hello(&hello.header).expect("hello");
    conn.send(Message::new(Welcome::accept("fake").encode()))
        .await
        .expect("welcome");
    let mut released = 0;
    let mut next_task = 1u64;
    while let Ok(msg) = conn.recv_msg().await {
        match decode::<FromClient>(&msg.header).expect("client message") {
            FromClient::UpdateGraph {
                submit_id, tasks, ..
            } => {
                let accepted = ToClient::GraphAccepted { submit_id };
                conn.send(Message::new(encode(&accepted)))
                    .await
                    .expect("send");
                for chunk in tasks.chunks(CHUNK) {
                    let keys = chunk
                        .iter()
                        .map(|t| {
                            next_task += 1;
                            KeyInMemoryMsg {
                                key: t.key.clone(),
                                task: TaskId(next_task),
                                worker: "inproc://fake-worker".into(),
                                nbytes: 8,
                                inline: None,
                            }
                        })
                        .collect();
                    let msg = Message::new(encode(&ToClient::KeysInMemory(keys)));
                    conn.send(msg).await.expect("send");
                    tokio::task::yield_now().await;
                }
            }
            FromClient::ReleaseKeys(keys) => released += keys.len(),
            FromClient::Close => break,
            _ => {}
        }
    }
    released
}

#[inline(never)]
fn make_tasks(n: usize) -> Vec<Task> {
    (0..n)
        .map(|i| Task::function(format!("noop-{i}"), "noop"))
        .collect()
}

#[test]
#[ignore = "benchmark"]
fn submit_wait_release() {
    let n: usize = std::env::var("BENCH_TASKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let registry: Registry =
            taskwire_transport_tcp::standard_registry(TransportConfig::default());
        let at: Address = mem::unique_address("bench-sched");
        let mut listener = registry.listen(&at).await.expect("listen");
        let server = tokio::spawn(async move {
            let conn = listener.accept().await.expect("accept");
            fake_scheduler(conn).await
        });
        let client = Client::connect_with(&at, registry.clone(), "bench")
            .await
            .expect("connect");
        for _ in 0..rounds {
            let tasks = make_tasks(n);
            let allocs = ALLOCS.load(Ordering::Relaxed);
            let t = Instant::now();
            let futures = client.submit_graph(tasks).await.expect("submit");
            client.wait(&futures).await;
            let waited = t.elapsed();
            assert!(futures.iter().all(|f| f.status() == Status::Finished));
            drop(futures);
            let total = t.elapsed();
            // Includes the scripted scheduler's (about 3 per task: decoding the graph,
            // building the results).
            let allocs = ALLOCS.load(Ordering::Relaxed) - allocs;
            println!(
                "{n} tasks: submit+wait {:.1} ms ({:.0} tasks/s), +release {:.1} ms, {:.2} allocations/task",
                waited.as_secs_f64() * 1e3,
                n as f64 / waited.as_secs_f64(),
                total.as_secs_f64() * 1e3,
                allocs as f64 / n as f64
            );
        }
        client.close().await;
        let released = server.await.expect("fake scheduler");
        assert_eq!(released, n * rounds);
    });
}
