//! Connections to workers' data ports: one per worker address, shared by all requests, which
//! are told apart by request id.

use bytes::Bytes;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taskwire_protocol::{
    ClientHandshake, ClusterSecret, FromPeer, Role, TaskId, ToPeer, decode, encode,
};
use taskwire_transport::{Address, ConnReceiver, ConnSender, Message, Registry};
use tokio::sync::{OnceCell, oneshot};

type Waiters = HashMap<u64, oneshot::Sender<Result<(FromPeer, Vec<Bytes>), String>>>;

/// Requests waiting for an answer; `None` once the connection is gone.
#[derive(Debug, Default)]
struct Pending(Mutex<Option<Waiters>>);

impl Pending {
    fn fail_all(&self) {
        // Dropping the senders wakes every waiter with "connection closed".
        self.0.lock().expect("peer pending").take();
    }
}

/// One open connection to a worker.
#[derive(Debug)]
struct PeerConn {
    sender: ConnSender,
    pending: Arc<Pending>,
}

impl PeerConn {
    fn is_dead(&self) -> bool {
        self.pending.0.lock().expect("peer pending").is_none() || self.sender.is_closed()
    }
}

/// The pool of worker connections of one client.
#[derive(Debug)]
pub(crate) struct PeerPool {
    registry: Registry,
    name: String,
    secret: Option<ClusterSecret>,
    next_request: AtomicU64,
    conns: Mutex<HashMap<String, Arc<OnceCell<Arc<PeerConn>>>>>,
}

/// A request failed before it was sent; it is safe to try again on a fresh connection.
enum SendFailure {
    Retry(String),
    Fatal(String),
}

impl PeerPool {
    pub(crate) fn new(registry: Registry, name: String, secret: Option<ClusterSecret>) -> PeerPool {
        PeerPool {
            registry,
            name,
            secret,
            next_request: AtomicU64::new(1),
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// Drop every connection.
    pub(crate) fn clear(&self) {
        self.conns.lock().expect("peer pool").clear();
    }

    async fn get(&self, addr: &str) -> Result<Arc<PeerConn>, String> {
        let cell = {
            let mut conns = self.conns.lock().expect("peer pool");
            let cell = conns.entry(addr.to_string()).or_default();
            if cell.get().is_some_and(|c| c.is_dead()) {
                *cell = Arc::default();
            }
            cell.clone()
        };
        // Concurrent requests to a new worker share one connection attempt; a failed attempt
        // leaves the cell empty, so the next request tries again.
        cell.get_or_try_init(|| self.connect(addr))
            .await
            .map(Arc::clone)
    }

    async fn connect(&self, addr: &str) -> Result<Arc<PeerConn>, String> {
        let address = Address::from_str(addr).map_err(|e| e.to_string())?;
        let mut conn = self
            .registry
            .connect(&address)
            .await
            .map_err(|e| e.to_string())?;
        let timeout = self
            .registry
            .config()
            .connect_timeout
            .max(Duration::from_secs(1));
        let handshake = ClientHandshake::new(Role::Peer, self.name.clone(), self.secret.clone());
        taskwire_protocol::connection::connect(&mut conn, handshake, timeout)
            .await
            .map_err(|e| format!("handshake with worker {addr}: {e}"))?;
        let (sender, receiver) = conn.split();
        let pending = Arc::new(Pending(Mutex::new(Some(HashMap::new()))));
        tokio::spawn(read_loop(receiver, pending.clone(), addr.to_string()));
        Ok(Arc::new(PeerConn { sender, pending }))
    }

    async fn try_request(
        &self,
        addr: &str,
        make: &(dyn Fn(u64) -> Message + Sync),
    ) -> Result<oneshot::Receiver<Result<(FromPeer, Vec<Bytes>), String>>, SendFailure> {
        let conn = self.get(addr).await.map_err(SendFailure::Fatal)?;
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match conn.pending.0.lock().expect("peer pending").as_mut() {
            Some(w) => w.insert(request, tx),
            None => return Err(SendFailure::Retry("connection closed".into())),
        };
        if let Err(e) = conn.sender.send(make(request)).await {
            if let Some(w) = conn.pending.0.lock().expect("peer pending").as_mut() {
                w.remove(&request);
            }
            return Err(SendFailure::Retry(e.to_string()));
        }
        Ok(rx)
    }

    /// Send a request and wait for its answer. A pooled connection found broken before the
    /// request left is replaced once.
    async fn request(
        &self,
        addr: &str,
        make: &(dyn Fn(u64) -> Message + Sync),
    ) -> Result<(FromPeer, Vec<Bytes>), String> {
        let rx = match self.try_request(addr, make).await {
            Ok(rx) => rx,
            Err(SendFailure::Fatal(e)) => return Err(e),
            Err(SendFailure::Retry(_)) => match self.try_request(addr, make).await {
                Ok(rx) => rx,
                Err(SendFailure::Fatal(e) | SendFailure::Retry(e)) => return Err(e),
            },
        };
        match rx.await {
            Ok(answer) => answer,
            Err(_) => Err(format!(
                "connection to worker {addr} closed before it answered"
            )),
        }
    }

    /// Fetch results from `addr`: `None` for each task the worker does not hold.
    pub(crate) async fn get_data(
        &self,
        addr: &str,
        tasks: Vec<TaskId>,
    ) -> Result<Vec<Option<Bytes>>, String> {
        let make = |request| {
            Message::new(encode(&ToPeer::GetData {
                request,
                tasks: tasks.clone(),
            }))
        };
        match self.request(addr, &make).await? {
            (FromPeer::Data { tasks: got, .. }, frames) => {
                let found = got.iter().filter(|(_, f)| *f).count();
                if got.len() != tasks.len() || found != frames.len() {
                    return Err(format!(
                        "worker {addr} answered {} of {} tasks with {} frames for {found} found",
                        got.len(),
                        tasks.len(),
                        frames.len()
                    ));
                }
                let mut frames = frames.into_iter();
                Ok(got
                    .into_iter()
                    .map(|(_, f)| if f { frames.next() } else { None })
                    .collect())
            }
            (FromPeer::Error { message, .. }, _) => Err(format!("worker {addr}: {message}")),
            (other, _) => Err(format!("worker {addr} answered GetData with {other:?}")),
        }
    }

    /// Store data on `addr`, one frame per task.
    pub(crate) async fn put_data(
        &self,
        addr: &str,
        tasks: Vec<TaskId>,
        frames: Vec<Bytes>,
    ) -> Result<(), String> {
        let make = |request| {
            Message::with_frames(
                encode(&ToPeer::PutData {
                    request,
                    tasks: tasks.clone(),
                }),
                frames.clone(),
            )
        };
        match self.request(addr, &make).await? {
            (FromPeer::PutDone { .. }, _) => Ok(()),
            (FromPeer::Error { message, .. }, _) => Err(format!("worker {addr}: {message}")),
            (other, _) => Err(format!("worker {addr} answered PutData with {other:?}")),
        }
    }
}

async fn read_loop(mut receiver: ConnReceiver, pending: Arc<Pending>, addr: String) {
    loop {
        let msg = match receiver.recv().await {
            Ok(Some(msg)) => msg,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(worker = %addr, error = %e, "worker connection failed");
                break;
            }
        };
        let answer = match decode::<FromPeer>(&msg.header) {
            Ok(a) => a,
            Err(e) => {
                // We cannot tell which request this answered; the connection is unusable.
                tracing::warn!(worker = %addr, error = %e, "undecodable message from worker");
                break;
            }
        };
        let request = match &answer {
            FromPeer::Data { request, .. }
            | FromPeer::PutDone { request }
            | FromPeer::Error { request, .. } => *request,
        };
        let waiter = pending
            .0
            .lock()
            .expect("peer pending")
            .as_mut()
            .and_then(|w| w.remove(&request));
        match waiter {
            Some(tx) => {
                let _ = tx.send(Ok((answer, msg.frames)));
            }
            None => tracing::debug!(worker = %addr, request, "answer to no pending request"),
        }
    }
    pending.fail_all();
}
