//! The client against a scripted scheduler and worker that speak the real protocol over real
//! transports (inproc and TCP), computing the stock functions `inc`, `add` and `fail`
//! themselves. This pins the client's side of the protocol without depending on the real
//! scheduler; `client_cluster.rs` runs the same kinds of scenario against the real one.

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taskwire_client::{Address, Client, ClientError, ErrorKindMsg, Status, Task, TaskErrorMsg};
use taskwire_protocol::{
    CommandOutputMsg, FromClient, FromPeer, KeyInMemoryMsg, TaskId, TaskKindMsg, TaskSpecMsg,
    ToClient, ToPeer, Welcome, WorkerId, WorkerInfoMsg, decode, encode, read_hello,
};
use taskwire_transport::{Connection, Message, Registry, TransportConfig, mem};
use tokio::sync::Notify;

type Store = Arc<Mutex<HashMap<TaskId, Bytes>>>;

struct Fake {
    scheduler: Address,
    worker: Address,
    /// Everything the scheduler received, in order.
    log: Arc<Mutex<Vec<FromClient>>>,
    /// Drop every scheduler connection now.
    kill: Arc<Notify>,
    registry: Registry,
}

fn i64_of(b: &[u8]) -> i64 {
    i64::from_le_bytes(b.try_into().expect("8 bytes"))
}

fn error(kind: ErrorKindMsg, message: &str) -> TaskErrorMsg {
    TaskErrorMsg {
        kind,
        message: message.into(),
    }
}

/// Run one task of the fake's tiny function set.
fn compute(spec: &TaskSpecMsg, inputs: &[Bytes]) -> Result<Option<Bytes>, TaskErrorMsg> {
    let num = |v: i64| Ok(Some(Bytes::copy_from_slice(&v.to_le_bytes())));
    match &spec.kind {
        TaskKindMsg::Function { name, args } => match name.as_str() {
            "inc" => num(inputs.first().map_or_else(|| i64_of(args), |b| i64_of(b)) + 1),
            "add" => {
                let extra = if args.is_empty() { 0 } else { i64_of(args) };
                num(inputs.iter().map(|b| i64_of(b)).sum::<i64>() + extra)
            }
            "fail" => Err(error(ErrorKindMsg::Failed, &String::from_utf8_lossy(args))),
            // Never finishes: for cancellation and connection-loss tests.
            "hold" => Ok(None),
            other => Err(error(
                ErrorKindMsg::UnknownFunction,
                &format!("no function '{other}'"),
            )),
        },
        TaskKindMsg::Command(c) => Ok(Some(encode(&CommandOutputMsg {
            exit_code: 0,
            stdout: c.argv.join(" ").into_bytes(),
            stderr: Vec::new(),
        }))),
    }
}

async fn accept_handshake(conn: &mut Connection) -> bool {
    let Ok(hello) = conn.recv_msg().await else {
        return false;
    };
    read_hello(&hello.header).expect("hello");
    conn.send(Message::new(Welcome::accept("fake").encode()))
        .await
        .is_ok()
}

async fn send(conn: &Connection, msg: &ToClient) {
    let _ = conn.send(Message::new(encode(msg))).await;
}

async fn serve_client(
    mut conn: Connection,
    worker: String,
    store: Store,
    log: Arc<Mutex<Vec<FromClient>>>,
    kill: Arc<Notify>,
) {
    if !accept_handshake(&mut conn).await {
        return;
    }
    // key -> (task id, outcome); None while running forever.
    let mut keys: HashMap<String, (TaskId, Option<Result<(), TaskErrorMsg>>)> = HashMap::new();
    let mut next_task = 1u64;
    loop {
        let msg = tokio::select! {
            _ = kill.notified() => return,
            m = conn.recv_msg() => match m { Ok(m) => m, Err(_) => return },
        };
        let msg: FromClient = decode(&msg.header).expect("client message");
        log.lock().unwrap().push(msg.clone());
        match msg {
            FromClient::UpdateGraph {
                submit_id,
                tasks,
                mut wanted,
                want_tasks,
            } => {
                if want_tasks {
                    wanted.extend(tasks.iter().map(|t| t.key.clone()));
                }
                let in_graph: Vec<&str> = tasks.iter().map(|t| t.key.as_str()).collect();
                if let Some(missing) = tasks
                    .iter()
                    .flat_map(|t| &t.deps)
                    .find(|d| !keys.contains_key(*d) && !in_graph.contains(&d.as_str()))
                {
                    let reason = format!("unknown dependency '{missing}'");
                    send(&conn, &ToClient::GraphRejected { submit_id, reason }).await;
                    continue;
                }
                send(&conn, &ToClient::GraphAccepted { submit_id }).await;
                // Tasks may come in any order: run whatever is ready until nothing is.
                let mut todo = tasks;
                let mut in_memory = Vec::new();
                let mut erred = Vec::new();
                while !todo.is_empty() {
                    let ready = todo.iter().position(|t| {
                        t.deps
                            .iter()
                            .all(|d| keys.get(d).is_some_and(|(_, o)| o.is_some()))
                    });
                    let Some(i) = ready else {
                        for t in todo.drain(..) {
                            keys.insert(t.key.clone(), (TaskId(next_task), None));
                            next_task += 1;
                        }
                        break;
                    };
                    let spec = todo.remove(i);
                    let id = TaskId(next_task);
                    next_task += 1;
                    let failed_dep = spec.deps.iter().find_map(|d| match &keys[d].1 {
                        Some(Err(e)) => Some(match &e.kind {
                            ErrorKindMsg::Dependency { .. } => e.clone(),
                            _ => error(
                                ErrorKindMsg::Dependency {
                                    ancestor: d.clone(),
                                },
                                &e.message,
                            ),
                        }),
                        _ => None,
                    });
                    let outcome = match failed_dep {
                        Some(e) => Err(e),
                        None => {
                            let inputs: Vec<Bytes> = {
                                let s = store.lock().unwrap();
                                spec.deps.iter().map(|d| s[&keys[d].0].clone()).collect()
                            };
                            match compute(&spec, &inputs) {
                                Ok(Some(v)) => {
                                    store.lock().unwrap().insert(id, v);
                                    Ok(())
                                }
                                Ok(None) => {
                                    keys.insert(spec.key.clone(), (id, None));
                                    continue;
                                }
                                Err(e) => Err(e),
                            }
                        }
                    };
                    if wanted.contains(&spec.key) {
                        match &outcome {
                            Ok(()) => in_memory.push(KeyInMemoryMsg {
                                key: spec.key.clone(),
                                task: id,
                                worker: worker.clone(),
                                nbytes: 8,
                                inline: None,
                            }),
                            Err(e) => erred.push((spec.key.clone(), e.clone())),
                        }
                    }
                    keys.insert(spec.key.clone(), (id, Some(outcome)));
                }
                if !in_memory.is_empty() {
                    send(&conn, &ToClient::KeysInMemory(in_memory)).await;
                }
                if !erred.is_empty() {
                    send(&conn, &ToClient::KeysErred(erred)).await;
                }
            }
            FromClient::Scatter {
                submit_id, keys: k, ..
            } => {
                let targets = k
                    .into_iter()
                    .map(|(key, _)| {
                        let id = TaskId(next_task);
                        next_task += 1;
                        keys.insert(key.clone(), (id, Some(Ok(()))));
                        (key, id, worker.clone())
                    })
                    .collect();
                send(
                    &conn,
                    &ToClient::ScatterTargets {
                        submit_id,
                        targets: Ok(targets),
                    },
                )
                .await;
            }
            FromClient::GetWorkers => {
                let info = WorkerInfoMsg {
                    id: WorkerId(1),
                    name: "fake-worker".into(),
                    address: worker.clone(),
                    nthreads: 2,
                    memory_limit: 0,
                    resources: vec![],
                    processing: 0,
                    in_memory: store.lock().unwrap().len() as u64,
                    metrics: Default::default(),
                    restarts: 0,
                    last_seen_ms: 0,
                };
                // Garbage first: the client must shrug it off and still get the answer.
                let _ = conn
                    .send(Message::new(Bytes::from_static(b"not an rkyv archive")))
                    .await;
                send(&conn, &ToClient::Workers(vec![info])).await;
            }
            FromClient::CancelKeys(ks) => {
                let erred = ks
                    .into_iter()
                    .map(|k| (k, error(ErrorKindMsg::Cancelled, "cancelled")))
                    .collect();
                send(&conn, &ToClient::KeysErred(erred)).await;
            }
            FromClient::ReleaseKeys(ks) => {
                for k in ks {
                    keys.remove(&k);
                }
            }
            FromClient::RetireWorkers { request, .. } => {
                let result = Err("the fake cluster retires nobody".to_string());
                send(&conn, &ToClient::WorkersRetired { request, result }).await;
            }
            FromClient::AdaptiveTarget {
                request,
                target_duration_ms,
                minimum,
                maximum,
            } => {
                // Echoes what it was asked, so the test sees the request arrive intact.
                let target = taskwire_protocol::AdaptiveTargetMsg {
                    target: minimum,
                    workers: vec!["fake-worker".into()],
                    to_close: vec![format!("{target_duration_ms}ms"), maximum.to_string()],
                };
                send(&conn, &ToClient::AdaptiveTarget { request, target }).await;
            }
            FromClient::Heartbeat => {}
            FromClient::Close => return,
        }
    }
}

async fn serve_peer(mut conn: Connection, store: Store) {
    if !accept_handshake(&mut conn).await {
        return;
    }
    while let Ok(msg) = conn.recv_msg().await {
        let reply = match decode::<ToPeer>(&msg.header).expect("peer message") {
            ToPeer::GetData { request, tasks } => {
                let s = store.lock().unwrap();
                let mut frames = Vec::new();
                let tasks = tasks
                    .into_iter()
                    .map(|t| match s.get(&t) {
                        Some(v) => {
                            frames.push(v.clone());
                            (t, true)
                        }
                        None => (t, false),
                    })
                    .collect();
                Message::with_frames(encode(&FromPeer::Data { request, tasks }), frames)
            }
            ToPeer::PutData { request, tasks } => {
                let mut s = store.lock().unwrap();
                for (t, f) in tasks.into_iter().zip(msg.frames) {
                    s.insert(t, f);
                }
                Message::new(encode(&FromPeer::PutDone { request }))
            }
        };
        if conn.send(reply).await.is_err() {
            return;
        }
    }
}

async fn start(tcp: bool) -> Fake {
    let registry = taskwire_transport_tcp::standard_registry(TransportConfig::default());
    let (sched_at, worker_at) = if tcp {
        (Address::tcp("127.0.0.1", 0), Address::tcp("127.0.0.1", 0))
    } else {
        (
            mem::unique_address("fake-sched"),
            mem::unique_address("fake-worker"),
        )
    };
    let mut sched = registry.listen(&sched_at).await.expect("listen");
    let mut work = registry.listen(&worker_at).await.expect("listen");
    let fake = Fake {
        scheduler: sched.local_addr().clone(),
        worker: work.local_addr().clone(),
        log: Arc::default(),
        kill: Arc::default(),
        registry: registry.clone(),
    };
    let store: Store = Arc::default();
    let (worker, log, kill, s2) = (
        fake.worker.to_string(),
        fake.log.clone(),
        fake.kill.clone(),
        store.clone(),
    );
    tokio::spawn(async move {
        while let Ok(conn) = sched.accept().await {
            tokio::spawn(serve_client(
                conn,
                worker.clone(),
                s2.clone(),
                log.clone(),
                kill.clone(),
            ));
        }
    });
    tokio::spawn(async move {
        while let Ok(conn) = work.accept().await {
            tokio::spawn(serve_peer(conn, store.clone()));
        }
    });
    fake
}

impl Fake {
    async fn client(&self) -> Client {
        Client::connect_with(&self.scheduler, self.registry.clone(), "test-client")
            .await
            .expect("connect")
    }

    /// Wait until the scheduler has received a message matching `pred`.
    async fn received(&self, pred: impl Fn(&FromClient) -> bool) -> FromClient {
        for _ in 0..500 {
            if let Some(m) = self.log.lock().unwrap().iter().find(|m| pred(m)) {
                return m.clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "scheduler never received the message; log: {:?}",
            self.log.lock().unwrap()
        );
    }

    fn releases(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|m| match m {
                FromClient::ReleaseKeys(k) => Some(k.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }
}

async fn chain_and_fan_in(tcp: bool) {
    let fake = start(tcp).await;
    let client = fake.client().await;
    let a = Task::function("inc-a", "inc").arg_i64(1);
    let b = Task::function("inc-b", "inc").dep_key("inc-a");
    let c = Task::function("inc-c", "inc").dep_key("inc-b");
    // Submitted out of order: the graph is a set.
    let futures = client.submit_graph(vec![c, a, b]).await.unwrap();
    let values: Vec<i64> = client
        .gather(&futures)
        .await
        .unwrap()
        .iter()
        .map(|b| i64_of(b))
        .collect();
    assert_eq!(values, vec![4, 2, 3]);

    let leaves = client
        .map("inc", (0..10i64).map(|i| i.to_le_bytes().to_vec()))
        .await
        .unwrap();
    assert!(leaves[3].key().starts_with("inc-") && leaves[3].key().ends_with("-3"));
    let total = leaves
        .iter()
        .fold(Task::function("sum-0", "add").arg_i64(1000), |t, f| {
            t.dep(f)
        });
    let total = client.submit(total).await.unwrap();
    assert_eq!(
        total.result_i64().await.unwrap(),
        1000 + (1..=10).sum::<i64>()
    );
    assert_eq!(total.status(), Status::Finished);
    client.close().await;
}

#[tokio::test]
async fn chain_and_fan_in_inproc() {
    chain_and_fan_in(false).await;
}

#[tokio::test]
async fn chain_and_fan_in_tcp() {
    chain_and_fan_in(true).await;
}

#[tokio::test]
async fn failing_task_and_its_dependents_report_the_error() {
    let fake = start(false).await;
    let client = fake.client().await;
    let bad = Task::function("fail-0", "fail").args(b"boom".to_vec());
    let after = Task::function("inc-after", "inc").dep_key("fail-0");
    let ok = Task::function("inc-ok", "inc").arg_i64(1);
    let fs = client.submit_graph(vec![bad, after, ok]).await.unwrap();
    let err = fs[0].result().await.unwrap_err();
    assert_eq!(err.to_string(), "task 'fail-0' failed: boom");
    match fs[1].done().await {
        Status::Error(e) => assert_eq!(
            e.kind,
            ErrorKindMsg::Dependency {
                ancestor: "fail-0".into()
            }
        ),
        other => panic!("{other:?}"),
    }
    // Gather: the first error wins even though a later future succeeded.
    let err = client.gather(&fs).await.unwrap_err();
    assert!(matches!(err, ClientError::Task { .. }), "{err}");
    assert_eq!(fs[2].result_i64().await.unwrap(), 2);
}

#[tokio::test]
async fn rejected_graph_is_an_error_and_releases_nothing() {
    let fake = start(false).await;
    let client = fake.client().await;
    let t = Task::function("inc-orphan", "inc").dep_key("nowhere");
    let err = client.submit(t).await.unwrap_err();
    match &err {
        ClientError::GraphRejected(reason) => assert!(reason.contains("nowhere"), "{reason}"),
        other => panic!("{other}"),
    }
    // The client still works, and never released the rejected key.
    let f = client
        .submit(Task::function("inc-1", "inc").arg_i64(1))
        .await
        .unwrap();
    drop(f);
    fake.received(|m| matches!(m, FromClient::ReleaseKeys(_)))
        .await;
    assert_eq!(fake.releases(), vec!["inc-1".to_string()]);
}

/// A graph too big for one message goes in parts, several sent before the first answer. When
/// the scheduler rejects the first part, the submission fails with that part's reason, the
/// parts sent with it and accepted are released again, and the rejected keys never are.
#[tokio::test]
async fn rejected_part_of_a_big_graph_fails_it_and_releases_the_accepted_parts() {
    let fake = start(false).await;
    let client = fake.client().await;
    // 48 tasks with 1 MiB of arguments each: three parts of about 16 MiB.
    let mut tasks = vec![
        Task::function("big-0", "hold")
            .args(vec![0u8; 1 << 20])
            .dep_key("nowhere"),
    ];
    tasks.extend(
        (1..48).map(|i| Task::function(format!("big-{i}"), "hold").args(vec![0u8; 1 << 20])),
    );
    let err = client.submit_graph(tasks).await.unwrap_err();
    match &err {
        ClientError::GraphRejected(reason) => assert!(reason.contains("nowhere"), "{reason}"),
        other => panic!("{other}"),
    }
    let parts: Vec<Vec<String>> = fake
        .log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            FromClient::UpdateGraph { tasks, .. } => {
                Some(tasks.iter().map(|t| t.key.clone()).collect())
            }
            _ => None,
        })
        .collect();
    assert!(parts.len() >= 2, "sent in {} parts", parts.len());
    assert!(parts[0].contains(&"big-0".to_string()));
    let mut expected: Vec<String> = parts[1..].concat();
    expected.sort();
    let mut released = Vec::new();
    for _ in 0..500 {
        released = fake.releases();
        released.sort();
        if released.len() >= expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(released, expected);
    // The client still works.
    let f = client
        .submit(Task::function("inc-1", "inc").arg_i64(1))
        .await
        .unwrap();
    assert_eq!(f.result_i64().await.unwrap(), 2);
}

#[tokio::test]
async fn cancel_resolves_futures_and_tells_the_scheduler() {
    let fake = start(false).await;
    let client = fake.client().await;
    let f = client
        .submit(Task::function("hold-0", "hold"))
        .await
        .unwrap();
    assert_eq!(f.status(), Status::Pending);
    let waiter = {
        let f = f.clone();
        tokio::spawn(async move { f.result().await })
    };
    client.cancel(std::slice::from_ref(&f)).await.unwrap();
    assert_eq!(f.done().await, Status::Cancelled);
    assert!(matches!(
        waiter.await.unwrap(),
        Err(ClientError::Cancelled(k)) if k == "hold-0"
    ));
    fake.received(|m| matches!(m, FromClient::CancelKeys(k) if k == &["hold-0"]))
        .await;
}

#[tokio::test]
async fn scattered_data_is_a_dependency() {
    let fake = start(false).await;
    let client = fake.client().await;
    let data = vec![
        (
            "x".to_string(),
            Bytes::copy_from_slice(&41i64.to_le_bytes()),
        ),
        ("y".to_string(), Bytes::copy_from_slice(&1i64.to_le_bytes())),
    ];
    let scattered = client.scatter(data).await.unwrap();
    assert_eq!(scattered[0].status(), Status::Finished);
    assert_eq!(scattered[1].result_i64().await.unwrap(), 1);
    let f = client
        .submit(
            Task::function("add-xy", "add")
                .dep(&scattered[0])
                .dep(&scattered[1]),
        )
        .await
        .unwrap();
    assert_eq!(f.result_i64().await.unwrap(), 42);
    let dup = client
        .scatter(vec![("z".into(), Bytes::new()), ("z".into(), Bytes::new())])
        .await
        .unwrap_err();
    assert!(matches!(dup, ClientError::Scatter(_)), "{dup}");
}

#[tokio::test]
async fn as_completed_yields_every_future_once() {
    let fake = start(false).await;
    let client = fake.client().await;
    let fs = client
        .map("inc", (0..20i64).map(|i| i.to_le_bytes().to_vec()))
        .await
        .unwrap();
    let mut done = client.as_completed(fs);
    assert_eq!(done.len(), 20);
    let mut seen = Vec::new();
    while let Some(f) = done.next().await {
        assert_eq!(f.status(), Status::Finished);
        seen.push(f.result_i64().await.unwrap());
    }
    seen.sort();
    assert_eq!(seen, (1..=20).collect::<Vec<i64>>());
    assert!(done.is_empty());
}

#[tokio::test]
async fn dropping_the_last_handle_releases_the_key() {
    let fake = start(false).await;
    let client = fake.client().await;
    let a = client
        .submit(Task::function("inc-a", "inc").arg_i64(1))
        .await
        .unwrap();
    // A second future for the same key (the user submitted it twice) shares the state.
    let a2 = client
        .submit(Task::function("inc-a", "inc").arg_i64(1))
        .await
        .unwrap();
    let a3 = a.clone();
    a2.wait_for_test().await;
    drop(a);
    drop(a2);
    // Submit something so that any queued release would have been written before it.
    let b = client
        .submit(Task::function("inc-b", "inc").arg_i64(1))
        .await
        .unwrap();
    assert!(fake.releases().is_empty(), "{:?}", fake.releases());
    assert_eq!(a3.result_i64().await.unwrap(), 2);
    drop(a3);
    drop(b);
    fake.received(|m| matches!(m, FromClient::ReleaseKeys(k) if k.contains(&"inc-b".to_string())))
        .await;
    let mut released = fake.releases();
    released.sort();
    assert_eq!(released, vec!["inc-a".to_string(), "inc-b".to_string()]);
}

/// Lets the test above say what it waits for.
trait WaitForTest {
    async fn wait_for_test(&self);
}

impl WaitForTest for taskwire_client::Future {
    async fn wait_for_test(&self) {
        assert_eq!(self.done().await, Status::Finished);
    }
}

#[tokio::test]
async fn lost_scheduler_resolves_pending_futures_as_closed() {
    let fake = start(false).await;
    let client = fake.client().await;
    let done = client
        .submit(Task::function("inc-1", "inc").arg_i64(1))
        .await
        .unwrap();
    let held = client
        .submit(Task::function("hold-1", "hold"))
        .await
        .unwrap();
    fake.kill.notify_waiters();
    assert_eq!(held.done().await, Status::Closed);
    assert!(matches!(held.result().await, Err(ClientError::Closed)));
    // A result already in memory is still fetched from its worker.
    assert_eq!(done.result_i64().await.unwrap(), 2);
    let err = client
        .submit(Task::function("inc-2", "inc"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err}");
    assert!(matches!(client.workers().await, Err(ClientError::Closed)));
}

#[tokio::test]
async fn workers_list_survives_a_garbage_message() {
    let fake = start(false).await;
    let client = fake.client().await;
    let workers = client.workers().await.unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].address, fake.worker.to_string());
    assert_eq!(client.scheduler_address(), &fake.scheduler);
}

#[tokio::test]
async fn adaptive_target_request_and_answer() {
    let fake = start(false).await;
    let client = fake.client().await;
    let t = client
        .adaptive_target(std::time::Duration::from_millis(2500), 2, 7)
        .await
        .unwrap();
    assert_eq!(t.target, 2);
    assert_eq!(t.workers, ["fake-worker"]);
    assert_eq!(t.to_close, ["2500ms", "7"]);
}

#[tokio::test]
async fn command_output_decodes() {
    let fake = start(false).await;
    let client = fake.client().await;
    let f = client
        .submit(Task::command("run-0", vec!["echo".into(), "hello".into()]))
        .await
        .unwrap();
    let out = f.command_output().await.unwrap();
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stdout, b"echo hello");
    // A command output is not a number.
    assert!(matches!(
        f.result_i64().await,
        Err(ClientError::Decode { .. })
    ));
}

#[tokio::test]
async fn close_says_goodbye() {
    let fake = start(false).await;
    let client = fake.client().await;
    let other = client.clone();
    client.close().await;
    fake.received(|m| matches!(m, FromClient::Close)).await;
    assert!(matches!(
        other.submit(Task::function("x", "inc")).await,
        Err(ClientError::Closed)
    ));
}

#[tokio::test]
async fn refused_handshake_shows_the_reason() {
    let registry = taskwire_transport_tcp::standard_registry(TransportConfig::default());
    let mut listener = registry
        .listen(&mem::unique_address("refuser"))
        .await
        .unwrap();
    let addr = listener.local_addr().clone();
    tokio::spawn(async move {
        let mut conn = listener.accept().await.unwrap();
        let _ = conn.recv_msg().await;
        let _ = conn
            .send(Message::new(Welcome::refuse("bad token").encode()))
            .await;
        // Keep the connection open until the client has read the refusal.
        let _ = conn.recv().await;
    });
    let err = Client::connect_with(&addr, registry, "c")
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Handshake { .. }), "{err}");
    assert!(err.to_string().contains("bad token"), "{err}");
}

#[tokio::test]
async fn unreachable_scheduler_is_a_connect_error() {
    let err = Client::connect("inproc://nobody-listens-here")
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    let err = Client::connect("bogus://x").await.unwrap_err();
    assert!(matches!(err, ClientError::Address(_)), "{err}");
}
