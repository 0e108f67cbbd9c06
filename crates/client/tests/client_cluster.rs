//! The client against a real in-process scheduler and worker, over `inproc://` and TCP on
//! 127.0.0.1, with the stock worker functions.

use bytes::Bytes;
use std::time::Duration;
use taskwire_client::{Address, Client, ClientError, ErrorKindMsg, Status, Task};
use taskwire_scheduler::{Scheduler, SchedulerHandle};
use taskwire_transport::{TransportConfig, mem};
use taskwire_worker::{Worker, WorkerHandle, decode_i64, encode_i64};

struct Cluster {
    scheduler: SchedulerHandle,
    workers: Vec<WorkerHandle>,
}

impl Cluster {
    async fn start(tcp: bool, nworkers: usize) -> Cluster {
        let address = if tcp {
            Address::tcp("127.0.0.1", 0)
        } else {
            mem::unique_address("client-test-scheduler")
        };
        let scheduler = Scheduler::builder()
            .address(address)
            .start()
            .await
            .expect("scheduler starts");
        let mut workers = Vec::new();
        for _ in 0..nworkers {
            workers.push(
                Worker::builder(scheduler.address().clone())
                    .nthreads(2)
                    .start()
                    .await
                    .expect("worker starts"),
            );
        }
        Cluster { scheduler, workers }
    }

    async fn client(&self) -> Client {
        let registry = taskwire_transport_tcp::standard_registry(TransportConfig::default());
        Client::connect_with(self.scheduler.address(), registry, "client-test")
            .await
            .expect("client connects")
    }

    async fn close(self) {
        for w in self.workers {
            w.close().await;
        }
        self.scheduler.close().await;
    }
}

/// Bounded wait, so a hang fails the test instead of the whole run.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than 30 s"))
}

async fn chain_and_fan_in(tcp: bool) {
    let cluster = Cluster::start(tcp, 2).await;
    let client = cluster.client().await;
    within("chain and fan-in", async {
        let a = client
            .submit(Task::function("inc-0", "inc").arg_i64(1))
            .await
            .unwrap();
        let b = client
            .submit(Task::function("inc-1", "inc").dep(&a))
            .await
            .unwrap();
        let c = client
            .submit(Task::function("inc-2", "inc").dep(&b))
            .await
            .unwrap();
        assert_eq!(c.result_i64().await.unwrap(), 4);

        let leaves = client
            .map("inc", (0..20i64).map(|i| encode_i64(i).to_vec()))
            .await
            .unwrap();
        let total = leaves
            .iter()
            .fold(Task::function("add-total", "add"), |t, f| t.dep(f));
        let total = client.submit(total).await.unwrap();
        assert_eq!(total.result_i64().await.unwrap(), (1..=20).sum::<i64>());
        let values = client.gather(&leaves).await.unwrap();
        let values: Vec<i64> = values.iter().map(|b| decode_i64(b).unwrap()).collect();
        assert_eq!(values, (1..=20).collect::<Vec<i64>>());
    })
    .await;
    client.close().await;
    cluster.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_and_fan_in_inproc() {
    chain_and_fan_in(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_and_fan_in_tcp() {
    chain_and_fan_in(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_task_reports_its_message() {
    let cluster = Cluster::start(false, 1).await;
    let client = cluster.client().await;
    within("failing task", async {
        let bad = client
            .submit(Task::function("fail-0", "fail").args(b"boom".to_vec()))
            .await
            .unwrap();
        let after = client
            .submit(Task::function("inc-after", "inc").dep(&bad))
            .await
            .unwrap();
        let err = bad.result().await.unwrap_err();
        assert_eq!(err.to_string(), "task 'fail-0' failed: boom");
        match after.done().await {
            Status::Error(e) => assert!(
                matches!(&e.kind, ErrorKindMsg::Dependency { ancestor } if ancestor == "fail-0"),
                "{e:?}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            client.gather(&[bad, after]).await,
            Err(ClientError::Task { .. })
        ));
    })
    .await;
    cluster.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_a_running_task() {
    let cluster = Cluster::start(false, 1).await;
    let client = cluster.client().await;
    within("cancel", async {
        // Long enough to be cancelled while it runs; short because closing a worker waits for
        // a running function to return (threads cannot be interrupted).
        let slow = client
            .submit(Task::function("sleep-0", "sleep").arg_u64(2_000))
            .await
            .unwrap();
        client.cancel(std::slice::from_ref(&slow)).await.unwrap();
        assert_eq!(slow.done().await, Status::Cancelled);
        assert!(matches!(
            slow.result().await,
            Err(ClientError::Cancelled(k)) if k == "sleep-0"
        ));
        // The cluster still works afterwards.
        let f = client
            .submit(Task::function("inc-x", "inc").arg_i64(1))
            .await
            .unwrap();
        assert_eq!(f.result_i64().await.unwrap(), 2);
    })
    .await;
    cluster.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scattered_data_is_a_dependency() {
    let cluster = Cluster::start(true, 2).await;
    let client = cluster.client().await;
    within("scatter", async {
        let xs = client
            .scatter(vec![
                ("x".into(), encode_i64(41)),
                ("blob".into(), Bytes::from(vec![7u8; 1 << 20])),
            ])
            .await
            .unwrap();
        let y = client
            .submit(Task::function("inc-y", "inc").dep(&xs[0]))
            .await
            .unwrap();
        assert_eq!(y.result_i64().await.unwrap(), 42);
        let n = client
            .submit(Task::function("len-blob", "len").dep(&xs[1]))
            .await
            .unwrap();
        assert_eq!(n.result_i64().await.unwrap(), 1 << 20);
        assert_eq!(xs[1].result().await.unwrap().len(), 1 << 20);
    })
    .await;
    cluster.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_completed_yields_each_future_once() {
    let cluster = Cluster::start(false, 2).await;
    let client = cluster.client().await;
    within("as_completed", async {
        let tasks = (0..8u64)
            .map(|i| Task::function(format!("sleep-{i}"), "sleep").arg_u64((8 - i) * 20))
            .collect();
        let fs = client.submit_graph(tasks).await.unwrap();
        let mut done = client.as_completed(fs);
        let mut n = 0;
        while let Some(f) = done.next().await {
            assert_eq!(f.status(), Status::Finished, "{}", f.key());
            n += 1;
        }
        assert_eq!(n, 8);
    })
    .await;
    cluster.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_futures_are_released_and_the_key_can_be_reused() {
    let cluster = Cluster::start(false, 1).await;
    let client = cluster.client().await;
    within("release", async {
        let f = client
            .submit(Task::function("inc-reused", "inc").arg_i64(1))
            .await
            .unwrap();
        assert_eq!(f.result_i64().await.unwrap(), 2);
        drop(f);
        // Once the scheduler has forgotten the key, the same key is a new task.
        let mut last = None;
        for _ in 0..50 {
            match client
                .submit(Task::function("inc-reused", "inc").arg_i64(10))
                .await
            {
                Ok(g) => match g.result_i64().await {
                    Ok(11) => return,
                    other => last = Some(format!("{other:?}")),
                },
                Err(e) => last = Some(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("key never reusable: {last:?}");
    })
    .await;
    cluster.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_listed_and_commands_run() {
    let cluster = Cluster::start(false, 2).await;
    let client = cluster.client().await;
    within("workers and commands", async {
        let workers = client.workers().await.unwrap();
        assert_eq!(workers.len(), 2);
        let f = client
            .submit(Task::command(
                "echo-0",
                vec!["sh".into(), "-c".into(), "echo hi; echo err >&2".into()],
            ))
            .await
            .unwrap();
        let out = f.command_output().await.unwrap();
        assert_eq!(out.exit_code, 0);
        assert_eq!(out.stdout, b"hi\n");
        assert_eq!(out.stderr, b"err\n");
    })
    .await;
    cluster.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_shutdown_resolves_pending_futures_as_closed() {
    let cluster = Cluster::start(false, 1).await;
    let client = cluster.client().await;
    let slow = client
        .submit(Task::function("sleep-long", "sleep").arg_u64(3_000))
        .await
        .unwrap();
    cluster.close().await;
    within("closed", async {
        assert_eq!(slow.done().await, Status::Closed);
        assert!(matches!(
            client.submit(Task::function("inc-late", "inc")).await,
            Err(ClientError::Closed)
        ));
    })
    .await;
}

/// Small results come with their completion, so reading them needs no worker; larger ones
/// are fetched from the worker that holds them. Seen by taking the worker away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_results_arrive_inline_large_ones_are_fetched() {
    let cluster = Cluster::start(true, 1).await;
    let client = cluster.client().await;
    let small = client
        .submit(Task::function("inline-small", "inc").arg_i64(41))
        .await
        .unwrap();
    let size = taskwire_protocol::MAX_INLINE_RESULT as u64 + 1;
    let large = client
        .submit(Task::function("inline-large", "make-bytes").arg_u64(size))
        .await
        .unwrap();
    within("both finish", async {
        assert_eq!(small.done().await, Status::Finished);
        assert_eq!(large.done().await, Status::Finished);
    })
    .await;
    let Cluster { scheduler, workers } = cluster;
    for w in workers {
        w.close().await;
    }
    assert_eq!(within("inline read", small.result_i64()).await.unwrap(), 42);
    let err = within("fetch from a closed worker", large.result())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Fetch { .. }), "{err}");
    client.close().await;
    scheduler.close().await;
}

/// A graph too big for one message (here about 28 MB, dependents listed before their inputs)
/// goes in parts, in dependency order, and computes the same result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphs_larger_than_one_message_are_sent_in_parts() {
    let cluster = Cluster::start(false, 2).await;
    let client = cluster.client().await;
    let n: i64 = 80_000;
    let pad = "x".repeat(120);
    let keys: Vec<String> = (0..n).map(|i| format!("big-leaf-{pad}-{i}")).collect();
    let root = keys.iter().fold(Task::function("big-sum", "sum"), |t, k| {
        t.dep_key(k.clone())
    });
    let mut tasks = vec![root];
    tasks.extend(
        keys.iter()
            .zip(0..n)
            .map(|(k, i)| Task::function(k.clone(), "inc").arg_i64(i)),
    );
    let futures = within("submit in parts", client.submit_graph(tasks))
        .await
        .unwrap();
    assert_eq!(futures.len(), n as usize + 1);
    assert_eq!(futures[0].key(), "big-sum");
    let total = within("sum", futures[0].result_i64()).await.unwrap();
    assert_eq!(total, (1..=n).sum::<i64>());

    // A cycle in a big graph is refused before anything is sent.
    let mut cyc: Vec<Task> = (0..80_000)
        .map(|i| Task::function(format!("cyc-{pad}-{i}"), "noop"))
        .collect();
    cyc.push(Task::function("cyc-a", "noop").dep_key("cyc-b"));
    cyc.push(Task::function("cyc-b", "noop").dep_key("cyc-a"));
    let err = client.submit_graph(cyc).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::GraphRejected(r) if r.contains("cycle")),
        "{err}"
    );
    drop(futures);
    client.close().await;
    cluster.close().await;
}

/// Gathering thousands of results that are too big to travel inline, all from one worker:
/// bounded multi-task requests (more values than one request carries), every value in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gather_of_many_fetched_results() {
    let cluster = Cluster::start(true, 1).await;
    let client = cluster.client().await;
    let size = taskwire_protocol::MAX_INLINE_RESULT as u64 + 44;
    let tasks: Vec<Task> = (0..5000)
        .map(|i| Task::function(format!("many-{i}"), "make-bytes").arg_u64(size + i % 7))
        .collect();
    let futures = within("submit", client.submit_graph(tasks)).await.unwrap();
    let values = within("gather", client.gather(&futures)).await.unwrap();
    assert_eq!(values.len(), 5000);
    for (i, v) in values.iter().enumerate() {
        assert_eq!(v.len() as u64, size + i as u64 % 7, "value {i}");
    }
    drop(futures);
    client.close().await;
    cluster.close().await;
}
