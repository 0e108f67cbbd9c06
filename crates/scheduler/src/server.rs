//! Accept loop, handshake and the per-connection tasks that turn messages into core events.

use crate::core_thread::{CoreThread, Input, Peer};
use crossbeam_channel::Sender;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use taskwire_protocol::connection::{AcceptError, accept};
use taskwire_protocol::{
    ArchivedFromClient, ClientId, ClusterSecret, FromClient, FromWorker, Role, ServerHandshake,
    ToClient, ToWorker, Welcome, WorkerId, access, decode, encode,
};
use taskwire_scheduler_core::Event;
use taskwire_transport::{ConnReceiver, ConnSender, Connection, Listener, Message, TransportError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tracing::{debug, info, warn};

/// Who may connect and how much one peer may ask for.
#[derive(Debug)]
pub(crate) struct Limits {
    /// The cluster token peers must prove, if any.
    pub(crate) secret: Option<ClusterSecret>,
    /// A peer that connects and does not finish its handshake is dropped after this long.
    pub(crate) handshake_timeout: Duration,
    /// Connections served at once (in their handshake or not).
    pub(crate) max_connections: usize,
    /// Most tasks in one `UpdateGraph`.
    pub(crate) max_graph_tasks: usize,
    /// Most tasks one client holds over all its submissions (applied by the core).
    pub(crate) max_client_tasks: usize,
    /// Bytes of messages for one client that may wait behind the transport's queue (the
    /// client does not read them fast enough); beyond it the client is dropped.
    pub(crate) max_client_backlog: usize,
    /// Once a message has started arriving on an established connection, the rest must
    /// arrive within this long.
    pub(crate) message_timeout: Duration,
}

/// State shared by every connection task.
pub(crate) struct Shared {
    inputs: Sender<Input>,
    next_client: AtomicU64,
    next_worker: AtomicU64,
    name: String,
    /// A worker silent this long is removed.
    worker_ttl: Duration,
    limits: Limits,
    connections: Arc<Semaphore>,
}

impl Shared {
    pub(crate) fn new(
        inputs: Sender<Input>,
        name: String,
        worker_ttl: Duration,
        limits: Limits,
    ) -> Shared {
        Shared {
            inputs,
            next_client: AtomicU64::new(1),
            next_worker: AtomicU64::new(1),
            name,
            worker_ttl,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
        }
    }

    fn event(&self, event: Event) {
        // Fails only while the scheduler shuts down.
        let _ = self.inputs.send(Input::Event(event));
    }
}

pub(crate) async fn accept_loop(
    mut listener: Listener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    core: CoreThread,
    done: watch::Sender<bool>,
) {
    let (conn_stop_tx, conn_stop) = watch::channel(false);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => match shared.connections.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(serve(conn, shared.clone(), conn_stop.clone(), permit));
                    }
                    Err(_) => {
                        let limit = shared.limits.max_connections;
                        info!("refusing {}: already serving {limit} connections (--max-connections)", conn.peer);
                        tokio::spawn(async move {
                            let reason = format!("the scheduler is serving its maximum of {limit} connections; try again later");
                            let _ = tokio::time::timeout(
                                Duration::from_secs(1),
                                conn.send(Message::new(Welcome::refuse(reason).encode())),
                            )
                            .await;
                        });
                    }
                },
                Err(e) => {
                    warn!("listener stopped: {e}");
                    break;
                }
            }
        }
    }
    drop(listener);
    let _ = conn_stop_tx.send(true);
    let _ = shared.inputs.send(Input::Shutdown);
    let join = core.join;
    let _ = tokio::task::spawn_blocking(move || join.join()).await;
    let _ = done.send(true);
}

/// Where messages for one connection go. The core thread hands a message straight to the
/// transport's queue when it has room and nothing is waiting ahead of it (one hand-off fewer
/// than going through a task); otherwise into an overflow queue that a task drains with
/// back-pressure, in order. The core thread never waits on a slow peer.
///
/// A client's overflow queue is bounded in bytes: a client that sends requests and does not
/// read the answers would otherwise grow it without end. Past the bound the connection is
/// aborted (queued messages dropped) and the client's reader sees it closed.
#[derive(Clone)]
pub(crate) struct Route {
    sender: ConnSender,
    overflow: mpsc::UnboundedSender<Message>,
    /// Messages in the overflow queue not yet handed to the transport.
    waiting: Arc<AtomicUsize>,
    /// Their bytes.
    waiting_bytes: Arc<AtomicUsize>,
    /// The bound on `waiting_bytes` and who the peer is (for the log), for a bounded route.
    bound: Option<Arc<(usize, String)>>,
}

impl Route {
    /// A route whose overflow queue may hold at most `max_backlog` bytes (`None`: unbounded,
    /// for workers, whose backlog is bounded by the tasks the scheduler gives them).
    pub(crate) fn new(sender: ConnSender, max_backlog: Option<(usize, String)>) -> Route {
        let (overflow, mut rx) = mpsc::unbounded_channel::<Message>();
        let waiting = Arc::new(AtomicUsize::new(0));
        let waiting_bytes = Arc::new(AtomicUsize::new(0));
        let drain_sender = sender.clone();
        let (drained, drained_bytes) = (waiting.clone(), waiting_bytes.clone());
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let len = msg.len();
                let sent = drain_sender.send(msg).await;
                drained.fetch_sub(1, Ordering::AcqRel);
                drained_bytes.fetch_sub(len, Ordering::AcqRel);
                if sent.is_err() {
                    return;
                }
            }
        });
        Route {
            sender,
            overflow,
            waiting,
            waiting_bytes,
            bound: max_backlog.map(Arc::new),
        }
    }

    /// Queue `msg` for the peer; dropped when the connection is gone (or being dropped for
    /// not reading).
    pub(crate) fn send(&self, msg: Message) {
        let msg = if self.waiting.load(Ordering::Acquire) == 0 {
            match self.sender.try_send(msg) {
                Ok(None) | Err(_) => return,
                Ok(Some(full)) => full,
            }
        } else {
            msg
        };
        if self.sender.is_closed() {
            return;
        }
        let len = msg.len();
        let backlog = self.waiting_bytes.fetch_add(len, Ordering::AcqRel) + len;
        if let Some(bound) = &self.bound
            && backlog > bound.0
        {
            self.waiting_bytes.fetch_sub(len, Ordering::AcqRel);
            warn!(
                "dropping {}: {backlog} bytes of messages for it are waiting unread, over the \
                 limit of {} (--max-client-backlog)",
                bound.1, bound.0
            );
            self.sender.abort();
            return;
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        if self.overflow.send(msg).is_err() {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.waiting_bytes.fetch_sub(len, Ordering::AcqRel);
        }
    }
}

async fn serve(
    mut conn: Connection,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let peer_addr = conn.peer.to_string();
    let handshake = ServerHandshake::new(shared.limits.secret.clone());
    let hello = match accept(&mut conn, handshake, shared.limits.handshake_timeout).await {
        Ok(h) => h,
        Err(e) if e.is_auth_failure() => {
            warn!("refusing {peer_addr}: {e}");
            return;
        }
        Err(e @ (AcceptError::Timeout(_) | AcceptError::Refused(_))) => {
            info!("refusing {peer_addr}: {e}");
            return;
        }
        Err(e) => {
            debug!("connection from {peer_addr} ended before its handshake: {e}");
            return;
        }
    };
    if conn
        .send(Message::new(Welcome::accept(shared.name.clone()).encode()))
        .await
        .is_err()
    {
        return;
    }
    let (sender, receiver) = conn.split();
    match hello.role {
        Role::Client => serve_client(sender, receiver, shared, stop, peer_addr).await,
        Role::Worker => serve_worker(sender, receiver, shared, stop, peer_addr).await,
        other => info!(
            "closing connection from {peer_addr}: role {other} does not talk to the scheduler"
        ),
    }
}

/// The next message from a peer; `None` when it closed, the scheduler stops, or its
/// connection can no longer send (dropped for not reading). A message that has started
/// arriving must be complete within `limit`.
async fn next_message(
    receiver: &mut ConnReceiver,
    sender: &ConnSender,
    stop: &mut watch::Receiver<bool>,
    limit: Duration,
) -> Option<Result<Message, String>> {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => None,
        _ = sender.closed() => None,
        m = receiver.recv_finishing_within(limit) => match m {
            Ok(Some(m)) => Some(Ok(m)),
            Ok(None) => None,
            Err(e @ TransportError::SlowMessage(_)) => {
                Some(Err(format!("{e} (--message-timeout)")))
            }
            Err(e) => Some(Err(e.to_string())),
        }
    }
}

async fn serve_client(
    sender: ConnSender,
    mut receiver: ConnReceiver,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    peer_addr: String,
) {
    let client = ClientId(shared.next_client.fetch_add(1, Ordering::Relaxed));
    let out = Route::new(
        sender.clone(),
        Some((
            shared.limits.max_client_backlog,
            format!("client {client} ({peer_addr})"),
        )),
    );
    let _ = shared
        .inputs
        .send(Input::Attach(Peer::Client(client), out.clone()));
    shared.event(Event::ClientConnected { client });
    debug!("client {client} connected from {peer_addr}");
    let limit = shared.limits.message_timeout;
    while let Some(msg) = next_message(&mut receiver, &sender, &mut stop, limit).await {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                info!("client {client} ({peer_addr}) connection failed: {e}");
                break;
            }
        };
        // Validated once; a graph goes to the core as it arrived, which reads it in place.
        let decoded = access::<FromClient>(&msg.header).and_then(|archived| {
            let graph = match archived.get() {
                ArchivedFromClient::UpdateGraph {
                    submit_id, tasks, ..
                } => Some((submit_id.to_native(), tasks.len())),
                _ => None,
            };
            Ok(match graph {
                Some(graph) => Err((graph, archived)),
                None => Ok(archived.deserialize()?),
            })
        });
        let event = match decoded {
            Ok(Err(((submit_id, n), _))) if n > shared.limits.max_graph_tasks => {
                let limit = shared.limits.max_graph_tasks;
                warn!(
                    "client {client} ({peer_addr}) submitted {n} tasks at once; the limit is {limit}"
                );
                out.send(Message::new(encode(&ToClient::GraphRejected {
                    submit_id,
                    reason: format!(
                        "graph of {n} tasks is larger than the scheduler's limit of {limit} tasks per submission (--max-graph-tasks)"
                    ),
                })));
                continue;
            }
            Ok(Err((_, graph))) => Event::UpdateGraphArchived { client, graph },
            Ok(Ok(FromClient::UpdateGraph {
                submit_id,
                tasks,
                mut wanted,
                want_tasks,
            })) => {
                if want_tasks {
                    wanted.splice(0..0, tasks.iter().map(|t| t.key.clone()));
                }
                Event::UpdateGraph {
                    client,
                    submit_id,
                    tasks,
                    wanted,
                }
            }
            Ok(Ok(FromClient::ReleaseKeys(keys))) => Event::ReleaseKeys { client, keys },
            Ok(Ok(FromClient::CancelKeys(keys))) => Event::CancelKeys { client, keys },
            Ok(Ok(FromClient::Scatter {
                submit_id,
                keys,
                worker,
            })) => Event::Scatter {
                client,
                submit_id,
                keys,
                worker,
            },
            Ok(Ok(FromClient::GetWorkers)) => Event::GetWorkers { client },
            Ok(Ok(FromClient::RetireWorkers { request, workers })) => Event::RetireWorkers {
                client,
                request,
                workers,
            },
            Ok(Ok(FromClient::AdaptiveTarget {
                request,
                target_duration_ms,
                minimum,
                maximum,
            })) => Event::AdaptiveTarget {
                client,
                request,
                target_duration: Duration::from_millis(target_duration_ms),
                minimum: usize::try_from(minimum).unwrap_or(usize::MAX),
                maximum: usize::try_from(maximum).unwrap_or(usize::MAX),
            },
            Ok(Ok(FromClient::Heartbeat)) => continue,
            Ok(Ok(FromClient::Close)) => break,
            Err(e) => {
                warn!("client {client} ({peer_addr}) sent a malformed message: {e}");
                out.send(Message::new(encode(&ToClient::Error(format!(
                    "malformed message: {e}"
                )))));
                continue;
            }
        };
        shared.event(event);
    }
    shared.event(Event::ClientDisconnected { client });
    debug!("client {client} disconnected");
}

async fn serve_worker(
    sender: ConnSender,
    mut receiver: ConnReceiver,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    peer_addr: String,
) {
    let limit = shared.limits.message_timeout;
    let info = match next_message(&mut receiver, &sender, &mut stop, limit).await {
        Some(Ok(msg)) => match decode::<FromWorker>(&msg.header) {
            Ok(FromWorker::Register(info)) => info,
            Ok(_) => {
                warn!("worker at {peer_addr} sent another message before registering; closing");
                return;
            }
            Err(e) => {
                warn!("worker at {peer_addr} sent a malformed registration: {e}");
                return;
            }
        },
        _ => return,
    };
    let worker = WorkerId(shared.next_worker.fetch_add(1, Ordering::Relaxed));
    let name = info.name.clone();
    let out = Route::new(sender.clone(), None);
    let _ = shared
        .inputs
        .send(Input::Attach(Peer::Worker(worker), out.clone()));
    let ack = Message::new(encode(&ToWorker::HeartbeatAck));
    let ttl = shared.worker_ttl;
    info!(
        "register worker {name} at {} ({} threads)",
        info.address, info.nthreads
    );
    shared.event(Event::WorkerJoined { worker, info });
    let mut reason = String::from("connection closed");
    loop {
        // Anything the worker sends proves it alive; it heartbeats well within the TTL.
        let next = next_message(&mut receiver, &sender, &mut stop, limit);
        let msg = match tokio::time::timeout(ttl, next).await {
            Err(_) => {
                reason = format!("no heartbeat for {ttl:?} (worker TTL)");
                break;
            }
            Ok(None) => break,
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => {
                reason = format!("connection failed: {e}");
                break;
            }
        };
        let event = match decode::<FromWorker>(&msg.header) {
            Ok(FromWorker::TasksFinished(tasks)) => Event::TasksFinished { worker, tasks },
            Ok(FromWorker::TasksErred(errors)) => Event::TasksErred { worker, errors },
            Ok(FromWorker::MissingData { task, missing }) => Event::MissingData {
                worker,
                task,
                missing,
            },
            Ok(FromWorker::DataAdded(tasks)) => Event::DataAdded { worker, tasks },
            Ok(FromWorker::Released(tasks)) => Event::Released { worker, tasks },
            Ok(FromWorker::Heartbeat(metrics)) => {
                out.send(ack.clone());
                Event::Heartbeat { worker, metrics }
            }
            Ok(FromWorker::RequestRetire) => {
                info!("worker {name} asks to retire");
                Event::RetireRequested { worker }
            }
            Ok(FromWorker::Register(_)) => {
                warn!("worker {name} registered twice; ignoring the second registration");
                continue;
            }
            Err(e) => {
                // A worker speaking garbage cannot be trusted with tasks.
                reason = format!("malformed message: {e}");
                break;
            }
        };
        shared.event(event);
    }
    info!("remove worker {name}: {reason}");
    shared.event(Event::WorkerLeft { worker, reason });
}
