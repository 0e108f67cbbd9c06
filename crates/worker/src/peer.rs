//! The worker's data plane: a server that answers `GetData`/`PutData` on the worker's data
//! address, and a pooled client that fetches inputs from other workers.

use crate::store::Store;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taskwire_protocol::{
    FromPeer, Hello, Role, TaskId, ToPeer, Welcome, decode, encode, read_hello, read_welcome,
};
use taskwire_transport::{
    Address, ConnSender, Connection, Listener, Message, Registry, TransportError,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::debug;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve the data address until `stop`. Data put by clients is reported on `added`.
pub(crate) async fn serve(
    mut listener: Listener,
    store: Arc<Store>,
    name: String,
    added: mpsc::UnboundedSender<Vec<(TaskId, u64)>>,
    mut stop: watch::Receiver<bool>,
) {
    let peer_stop = stop.clone();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => {
                    tokio::spawn(serve_peer(conn, store.clone(), name.clone(), added.clone(), peer_stop.clone()));
                }
                Err(_) => return,
            }
        }
    }
}

async fn serve_peer(
    mut conn: Connection,
    store: Arc<Store>,
    name: String,
    added: mpsc::UnboundedSender<Vec<(TaskId, u64)>>,
    mut stop: watch::Receiver<bool>,
) {
    let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.recv()).await {
        Ok(Ok(Some(m))) => read_hello(&m.header),
        _ => return,
    };
    match hello {
        Ok(h) if h.role == Role::Peer => {}
        Ok(h) => {
            let reason = format!(
                "this is a worker's data port; role {} is not served here",
                h.role
            );
            let _ = conn
                .send(Message::new(Welcome::refuse(reason).encode()))
                .await;
            return;
        }
        Err(e) => {
            let _ = conn
                .send(Message::new(Welcome::refuse(e.to_string()).encode()))
                .await;
            return;
        }
    }
    if conn
        .send(Message::new(Welcome::accept(name).encode()))
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
    conns: Arc<tokio::sync::Mutex<HashMap<String, Arc<PeerConn>>>>,
    next_request: Arc<AtomicU64>,
}

impl PeerPool {
    pub(crate) fn new(registry: Registry, name: String) -> PeerPool {
        PeerPool {
            registry,
            name,
            conns: Default::default(),
            next_request: Arc::new(AtomicU64::new(1)),
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
        conn.send(Message::new(
            Hello::new(Role::Peer, self.name.clone()).encode(),
        ))
        .await
        .map_err(|e| e.to_string())?;
        let welcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.recv_msg())
            .await
            .map_err(|_| format!("no handshake answer from {addr}"))?
            .map_err(|e| e.to_string())?;
        read_welcome(&welcome.header).map_err(|e| e.to_string())?;
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
