//! The worker's data plane: a server that answers `GetData`/`PutData` on the worker's data
//! address, and a pooled client that fetches inputs from other workers.

use crate::metrics::Counters;
use crate::store::Store;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taskwire_protocol::connection::{accept, connect};
use taskwire_protocol::{
    ClientHandshake, ClusterSecret, FromPeer, Role, ServerHandshake, TaskId, ToPeer, Welcome,
    decode, encode,
};
use taskwire_transport::{
    Address, ConnSender, Connection, Listener, Message, Registry, TransportError,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tracing::{debug, info, warn};

/// Who may use a worker's data port, and how many at once.
#[derive(Clone, Debug)]
pub(crate) struct DataLimits {
    pub(crate) secret: Option<ClusterSecret>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_connections: usize,
}

impl Default for DataLimits {
    fn default() -> Self {
        DataLimits {
            secret: None,
            handshake_timeout: Duration::from_secs(10),
            max_connections: 10_000,
        }
    }
}

/// What every connection to the data port shares.
struct Port {
    store: Arc<Store>,
    /// The worker's name, for the handshake.
    name: String,
    /// Where data put by clients is reported.
    added: mpsc::UnboundedSender<Vec<(TaskId, u64)>>,
    limits: DataLimits,
    counters: Arc<Counters>,
}

/// Serve the data address until `stop`. Data put by clients is reported on `added`.
pub(crate) async fn serve(
    mut listener: Listener,
    store: Arc<Store>,
    name: String,
    added: mpsc::UnboundedSender<Vec<(TaskId, u64)>>,
    mut stop: watch::Receiver<bool>,
    limits: DataLimits,
    counters: Arc<Counters>,
) {
    let peer_stop = stop.clone();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let port = Arc::new(Port {
        store,
        name,
        added,
        limits,
        counters,
    });
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(serve_peer(conn, port.clone(), peer_stop.clone(), permit));
                    }
                    Err(_) => {
                        let limit = port.limits.max_connections;
                        info!("data port: refusing {}: already serving {limit} connections", conn.peer);
                        tokio::spawn(async move {
                            let reason = format!("this worker's data port is serving its maximum of {limit} connections; try again later");
                            let _ = tokio::time::timeout(
                                Duration::from_secs(1),
                                conn.send(Message::new(Welcome::refuse(reason).encode())),
                            )
                            .await;
                        });
                    }
                },
                Err(_) => return,
            }
        }
    }
}

async fn serve_peer(
    mut conn: Connection,
    port: Arc<Port>,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let Port {
        store,
        name,
        added,
        limits,
        counters,
    } = &*port;
    let handshake = ServerHandshake::new(limits.secret.clone());
    let hello = match accept(&mut conn, handshake, limits.handshake_timeout).await {
        Ok(h) => h,
        Err(e) if e.is_auth_failure() => {
            warn!("data port: refusing {}: {e}", conn.peer);
            return;
        }
        Err(e) => {
            debug!("data port: connection from {} ended: {e}", conn.peer);
            return;
        }
    };
    match hello {
        h if h.role == Role::Peer => {}
        h => {
            let reason = format!(
                "this is a worker's data port; role {} is not served here",
                h.role
            );
            let _ = conn
                .send(Message::new(Welcome::refuse(reason).encode()))
                .await;
            return;
        }
    }
    if conn
        .send(Message::new(Welcome::accept(name.clone()).encode()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let msg = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            m = conn.recv() => match m {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(e) => {
                    debug!("peer {} failed: {e}", conn.peer);
                    return;
                }
            }
        };
        let (request, reply) = match decode::<ToPeer>(&msg.header) {
            Ok(ToPeer::GetData { request, tasks }) => {
                let values = if store.any_spilled(&tasks) {
                    // Spilled values are read back from disk: not on the event loop.
                    let (store, tasks) = (store.clone(), tasks.clone());
                    match tokio::task::spawn_blocking(move || store.get_many(&tasks)).await {
                        Ok(values) => values,
                        Err(_) => return,
                    }
                } else {
                    store.get_many(&tasks)
                };
                let mut frames = Vec::with_capacity(tasks.len());
                let found = tasks
                    .iter()
                    .zip(values)
                    .map(|(t, v)| {
                        let hit = v.is_some();
                        frames.extend(v);
                        (*t, hit)
                    })
                    .collect();
                Counters::add(
                    &counters.served_bytes,
                    &counters.served_values,
                    frames.iter().map(Bytes::len),
                );
                let data = encode(&FromPeer::Data {
                    request,
                    tasks: found,
                });
                (request, Message::with_frames(data, frames))
            }
            Ok(ToPeer::PutData { request, tasks }) => {
                let reply = if tasks.len() != msg.frames.len() {
                    let message = format!(
                        "PutData names {} tasks but carries {} frames",
                        tasks.len(),
                        msg.frames.len()
                    );
                    Message::new(encode(&FromPeer::Error { request, message }))
                } else {
                    let mut report = Vec::with_capacity(tasks.len());
                    for (task, frame) in tasks.into_iter().zip(msg.frames) {
                        report.push((task, frame.len() as u64));
                        store.insert(task, frame);
                    }
                    let _ = added.send(report);
                    Message::new(encode(&FromPeer::PutDone { request }))
                };
                (request, reply)
            }
            Err(e) => {
                let message = format!("malformed request: {e}");
                (
                    0,
                    Message::new(encode(&FromPeer::Error {
                        request: 0,
                        message,
                    })),
                )
            }
        };
        match conn.send(reply).await {
            Ok(()) => {}
            // A reply over the transport's limits (too many values for one message): say so,
            // rather than dropping a connection other requests share.
            Err(
                e @ (TransportError::TooManyFrames { .. }
                | TransportError::FrameTooLarge { .. }
                | TransportError::HeaderTooLarge { .. }),
            ) => {
                let message = format!("reply too large: {e}; ask for fewer values per request");
                let err = Message::new(encode(&FromPeer::Error { request, message }));
                if conn.send(err).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// Requests waiting for their answer; `None` once the connection failed, so that a request
/// made after the reader gave up fails at once instead of waiting forever.
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Result<Message, String>>>>>>;

struct PeerConn {
    sender: ConnSender,
    pending: Pending,
}

/// Connections to other workers' data ports, one per address, shared by concurrent fetches.
#[derive(Clone)]
pub(crate) struct PeerPool {
    registry: Registry,
    name: String,
    secret: Option<ClusterSecret>,
    conns: Arc<tokio::sync::Mutex<HashMap<String, Arc<PeerConn>>>>,
    next_request: Arc<AtomicU64>,
    counters: Arc<Counters>,
}

impl PeerPool {
    pub(crate) fn new(
        registry: Registry,
        name: String,
        secret: Option<ClusterSecret>,
        counters: Arc<Counters>,
    ) -> PeerPool {
        PeerPool {
            registry,
            name,
            secret,
            conns: Default::default(),
            next_request: Arc::new(AtomicU64::new(1)),
            counters,
        }
    }

    async fn conn(&self, addr: &str) -> Result<Arc<PeerConn>, String> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(addr)
            && !c.sender.is_closed()
            && c.pending.lock().expect("pending").is_some()
        {
            return Ok(c.clone());
        }
        let address: Address = addr.parse().map_err(|e| format!("{e}"))?;
        let mut conn = self
            .registry
            .connect(&address)
            .await
            .map_err(|e| e.to_string())?;
        let handshake = ClientHandshake::new(Role::Peer, self.name.clone(), self.secret.clone());
        let limit = self
            .registry
            .config()
            .connect_timeout
            .max(Duration::from_secs(1));
        connect(&mut conn, handshake, limit)
            .await
            .map_err(|e| format!("handshake with worker {addr}: {e}"))?;
        let (sender, mut receiver) = conn.split();
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let reader_pending = pending.clone();
        tokio::spawn(async move {
            let failure = loop {
                match receiver.recv().await {
                    Ok(Some(msg)) => {
                        let request = match decode::<FromPeer>(&msg.header) {
                            Ok(
                                FromPeer::Data { request, .. }
                                | FromPeer::PutDone { request }
                                | FromPeer::Error { request, .. },
                            ) => request,
                            Err(e) => break format!("malformed answer: {e}"),
                        };
                        let waiter = reader_pending
                            .lock()
                            .expect("pending")
                            .as_mut()
                            .and_then(|p| p.remove(&request));
                        if let Some(tx) = waiter {
                            let _ = tx.send(Ok(msg));
                        }
                    }
                    Ok(None) => break "peer closed the connection".to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            let waiters = reader_pending.lock().expect("pending").take();
            for (_, tx) in waiters.into_iter().flatten() {
                let _ = tx.send(Err(failure.clone()));
            }
        });
        let c = Arc::new(PeerConn { sender, pending });
        conns.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Fetch `tasks` from the worker at `addr`: one entry per task, `None` where it did not
    /// have it.
    pub(crate) async fn get(
        &self,
        addr: &str,
        tasks: Vec<TaskId>,
    ) -> Result<Vec<(TaskId, Option<Bytes>)>, String> {
        let conn = self.conn(addr).await?;
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match conn.pending.lock().expect("pending").as_mut() {
            Some(p) => {
                p.insert(request, tx);
            }
            None => return Err(format!("connection to {addr} failed")),
        }
        let header = encode(&ToPeer::GetData { request, tasks });
        if let Err(e) = conn.sender.send(Message::new(header)).await {
            if let Some(p) = conn.pending.lock().expect("pending").as_mut() {
                p.remove(&request);
            }
            return Err(e.to_string());
        }
        let msg = rx.await.map_err(|_| "connection dropped".to_string())??;
        match decode::<FromPeer>(&msg.header) {
            Ok(FromPeer::Data { tasks, .. }) => {
                Counters::add(
                    &self.counters.fetched_bytes,
                    &self.counters.fetched_values,
                    msg.frames.iter().map(Bytes::len),
                );
                let mut frames = msg.frames.into_iter();
                let mut out = Vec::with_capacity(tasks.len());
                for (task, found) in tasks {
                    let value = if found {
                        Some(frames.next().ok_or("fewer frames than found tasks")?)
                    } else {
                        None
                    };
                    out.push((task, value));
                }
                Ok(out)
            }
            Ok(FromPeer::Error { message, .. }) => Err(message),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }
}
