//! The client: a connection to the scheduler owned by two background tasks, and the
//! operations users call.

use crate::error::ClientError;
use crate::future::{AsCompleted, Future, final_location};
use crate::peer::PeerPool;
use crate::state::{KeyEntry, KeyEvent, KeyState, Outgoing, State, coalesce, wake_all};
use crate::task::Task;
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use taskwire_protocol::connection::{self, ConnectError};
use taskwire_protocol::{
    AdaptiveTargetMsg, ArchivedKeyInMemoryMsg, ArchivedToClient, ClientHandshake, ClusterSecret,
    FromClient, Role, TaskId, TaskSpecMsg, ToClient, WorkerInfoMsg, access, decode, encode,
    encode_with_capacity,
};
use taskwire_transport::{Address, ConnReceiver, ConnSender, Message, Registry, TransportConfig};
use taskwire_transport_tcp::Security;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};

/// Most queued messages the writer merges into one batch.
const WRITE_BATCH: usize = 1024;

/// What every handle of one client shares.
#[derive(Debug)]
pub(crate) struct Shared {
    address: Address,
    state: Mutex<State>,
    pub(crate) peers: PeerPool,
    next_id: AtomicU64,
    reader: Mutex<Option<AbortHandle>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last handle on `entry` is gone.
    pub(crate) fn unused(&self, entry: &Arc<KeyEntry>) {
        self.lock().unused(entry);
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Mark the connection gone and resolve everything waiting on it.
    fn fail_all(&self) {
        self.lock().fail_all();
        if let Some(reader) = self.reader.lock().unwrap_or_else(|p| p.into_inner()).take() {
            reader.abort();
        }
    }

    /// Handle one message from the scheduler. Results, the bulk of the traffic, are read in
    /// place; everything else is decoded.
    fn handle_header(&self, header: &Bytes) {
        match access::<ToClient>(header) {
            Ok(archived) => {
                if let ArchivedToClient::KeysInMemory(keys) = archived.get() {
                    self.keys_in_memory(keys);
                    return;
                }
            }
            Err(e) => {
                let err = ClientError::Protocol(e.to_string());
                tracing::warn!(scheduler = %self.address, "ignoring a message: {err}");
                return;
            }
        }
        match decode::<ToClient>(header) {
            Ok(m) => self.handle_message(m),
            Err(e) => {
                let err = ClientError::Protocol(e.to_string());
                tracing::warn!(scheduler = %self.address, "ignoring a message: {err}");
            }
        }
    }

    fn keys_in_memory(&self, keys: &[ArchivedKeyInMemoryMsg]) {
        let mut wake = Vec::new();
        {
            let mut st = self.lock();
            let mut worker: Option<Arc<str>> = None;
            for k in keys {
                let Some(entry) = st.entry(k.key.as_str()).cloned() else {
                    continue;
                };
                let addr = k.worker.as_str();
                let w = match &worker {
                    Some(w) if &**w == addr => w.clone(),
                    _ => {
                        let w = st.worker(addr);
                        worker = Some(w.clone());
                        w
                    }
                };
                entry.apply_deferred(
                    KeyEvent::InMemory {
                        task: TaskId::from(&k.task),
                        worker: w,
                        nbytes: k.nbytes.to_native(),
                        value: k
                            .inline
                            .as_ref()
                            .map(|v| Bytes::copy_from_slice(v.as_slice())),
                    },
                    &mut wake,
                );
            }
        }
        wake_all(wake);
    }

    fn handle_message(&self, msg: ToClient) {
        let mut wake = Vec::new();
        let mut st = self.lock();
        match msg {
            ToClient::GraphAccepted { submit_id } => match st.submits.remove(&submit_id) {
                Some(reply) => {
                    let _ = reply.send(Ok(()));
                }
                None => tracing::debug!(submit_id, "acceptance of an unknown graph"),
            },
            ToClient::GraphRejected { submit_id, reason } => match st.submits.remove(&submit_id) {
                Some(reply) => {
                    let _ = reply.send(Err(reason));
                }
                None => tracing::debug!(submit_id, "rejection of an unknown graph"),
            },
            ToClient::KeysInMemory(keys) => {
                for k in keys {
                    let worker = st.worker(&k.worker);
                    if let Some(entry) = st.entry(&k.key) {
                        entry.apply_deferred(
                            KeyEvent::InMemory {
                                task: k.task,
                                worker,
                                nbytes: k.nbytes,
                                value: k.inline.map(Bytes::from),
                            },
                            &mut wake,
                        );
                    }
                }
            }
            ToClient::KeysErred(keys) => {
                for (key, error) in keys {
                    if let Some(entry) = st.entry(&key) {
                        entry.apply_deferred(KeyEvent::Erred(error), &mut wake);
                    }
                }
            }
            ToClient::ScatterTargets { submit_id, targets } => {
                match st.scatters.remove(&submit_id) {
                    Some(reply) => {
                        let _ = reply.send(targets);
                    }
                    None => tracing::debug!(submit_id, "targets of an unknown scatter"),
                }
            }
            ToClient::Workers(workers) => match st.workers.pop_front() {
                Some(reply) => {
                    let _ = reply.send(workers);
                }
                None => tracing::debug!("worker list nobody asked for"),
            },
            ToClient::WorkersRetired { request, result } => match st.retires.remove(&request) {
                Some(reply) => {
                    let _ = reply.send(result);
                }
                None => tracing::debug!(request, "answer to an unknown retire request"),
            },
            ToClient::AdaptiveTarget { request, target } => match st.adaptive.remove(&request) {
                Some(reply) => {
                    let _ = reply.send(target);
                }
                None => tracing::debug!(request, "answer to an unknown adaptive request"),
            },
            ToClient::Error(text) => {
                tracing::warn!(scheduler = %self.address, "scheduler could not handle a message: {text}")
            }
        }
        drop(st);
        wake_all(wake);
    }
}

/// A connection to a Taskwire scheduler.
///
/// Cheap to clone: clones share one connection, owned by background tasks on the tokio runtime
/// the client was made on. Results are fetched straight from the workers that hold them, over a
/// pool of worker connections.
#[derive(Clone, Debug)]
pub struct Client {
    shared: Arc<Shared>,
}

/// Options for connecting a [`Client`]: see [`Client::builder`].
#[derive(Debug)]
pub struct ClientBuilder {
    addr: Address,
    registry: Option<Registry>,
    security: Security,
    name: Option<String>,
    secret: Option<ClusterSecret>,
}

impl ClientBuilder {
    /// Use these transports (and their limits) for the scheduler and the workers.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// TLS and encryption rules (see [`Security`]) for the scheduler and the workers: with
    /// TLS, `tls://` addresses work, presenting this client's certificate.
    pub fn security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// The name shown in the scheduler's logs (default `client-PID`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Prove this cluster token to the scheduler and to the workers results are fetched
    /// from. A client with a token refuses a scheduler that does not ask for one.
    pub fn auth_token(mut self, secret: ClusterSecret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// Connect and run the handshake.
    pub async fn connect(self) -> Result<Client, ClientError> {
        Client::open(self).await
    }
}

impl Client {
    /// Connect to the scheduler at `addr` (`tcp://host:port`, `host:port` or `inproc://name`)
    /// with the standard transports.
    pub async fn connect(addr: &str) -> Result<Client, ClientError> {
        let address = Address::from_str(addr)?;
        let registry = taskwire_transport_tcp::standard_registry(TransportConfig::default());
        let name = format!("client-{}", std::process::id());
        Client::connect_with(&address, registry, &name).await
    }

    /// Connect to the scheduler at `addr` with the transports of `registry`, introducing
    /// ourselves as `name` (shown in the scheduler's logs). Workers are reached through the
    /// same registry. For a cluster token, use [`Client::builder`].
    pub async fn connect_with(
        addr: &Address,
        registry: Registry,
        name: &str,
    ) -> Result<Client, ClientError> {
        Client::builder(addr.clone())
            .registry(registry)
            .name(name)
            .connect()
            .await
    }

    /// Options for connecting to the scheduler at `addr`: transports, name, cluster token.
    pub fn builder(addr: Address) -> ClientBuilder {
        ClientBuilder {
            addr,
            registry: None,
            security: Security::new(),
            name: None,
            secret: None,
        }
    }

    async fn open(b: ClientBuilder) -> Result<Client, ClientError> {
        let addr = &b.addr;
        let registry = b.security.apply(b.registry.unwrap_or_else(|| {
            taskwire_transport_tcp::standard_registry(TransportConfig::default())
        }));
        let name = b
            .name
            .unwrap_or_else(|| format!("client-{}", std::process::id()));
        let connect_err = |source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        };
        let mut conn = registry.connect(addr).await.map_err(connect_err)?;
        // Something that accepts the connection but never answers (not a Taskwire scheduler)
        // must not hang us.
        let timeout = registry
            .config()
            .connect_timeout
            .max(Duration::from_secs(1));
        let handshake = ClientHandshake::new(Role::Client, name.clone(), b.secret.clone());
        match connection::connect(&mut conn, handshake, timeout).await {
            Ok(_) => {}
            Err(ConnectError::Transport(e)) => return Err(connect_err(e)),
            Err(ConnectError::Timeout(t)) => {
                return Err(ClientError::Protocol(format!(
                    "no handshake answer from {addr} within {:.1}s",
                    t.as_secs_f64()
                )));
            }
            Err(ConnectError::Handshake(source)) => {
                return Err(ClientError::Handshake {
                    addr: addr.to_string(),
                    source,
                });
            }
        }

        let (sender, receiver) = conn.split();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            address: addr.clone(),
            state: Mutex::new(State::new(out_tx)),
            peers: PeerPool::new(registry, name, b.secret),
            next_id: AtomicU64::new(1),
            reader: Mutex::new(None),
        });
        // The background tasks hold the shared state weakly: once every client and future is
        // gone, the queue closes and the writer says goodbye.
        tokio::spawn(write_loop(out_rx, sender, Arc::downgrade(&shared)));
        let reader = tokio::spawn(read_loop(receiver, Arc::downgrade(&shared)));
        *shared.reader.lock().expect("reader handle") = Some(reader.abort_handle());
        Ok(Client { shared })
    }

    /// The scheduler's address.
    pub fn scheduler_address(&self) -> &Address {
        &self.shared.address
    }

    /// Submit one task.
    pub async fn submit(&self, task: Task) -> Result<Future, ClientError> {
        let mut futures = self.submit_graph(vec![task]).await?;
        futures
            .pop()
            .ok_or_else(|| ClientError::Protocol("submit returned no future".into()))
    }

    /// Submit tasks as one graph (one message); one future per task, in order. The scheduler
    /// accepts or rejects the graph as a whole.
    pub async fn submit_graph(&self, tasks: Vec<Task>) -> Result<Vec<Future>, ClientError> {
        let total: usize = tasks.iter().map(|t| t.spec().archived_size_hint()).sum();
        if total <= GRAPH_CHUNK_BYTES {
            return self.submit_one(tasks, total).await;
        }
        // Too big for one message: send it in dependency order, in parts the scheduler can
        // check one after the other (each part's inputs are in earlier parts or already known).
        let order = dependency_order(&tasks)?;
        let mut slots: Vec<Option<Task>> = tasks.into_iter().map(Some).collect();
        let mut futures: Vec<Option<Future>> = (0..slots.len()).map(|_| None).collect();
        let mut part = Vec::new();
        let mut part_index = Vec::new();
        let mut part_bytes = 0;
        // The parts are pipelined: up to `PARTS_IN_FLIGHT` are sent before the first answer
        // is awaited, so encoding the next part overlaps the scheduler taking in the last.
        // The scheduler answers them in order. After a rejection no further part is sent,
        // the parts in flight are still answered (a rejected one forgets its new keys), and
        // the first rejection in graph order is the error. A part that could not be sent
        // (the connection is gone) ends the sending and takes its place in line, so that the
        // answers to the parts before it come first.
        let mut in_flight: VecDeque<(Vec<usize>, Result<SentPart, ClientError>)> = VecDeque::new();
        let mut failed = None;
        let mut take = |got: Result<Vec<Future>, ClientError>,
                        index: Vec<usize>,
                        failed: &mut Option<ClientError>| match got {
            Ok(got) => {
                for (i, f) in index.into_iter().zip(got) {
                    futures[i] = Some(f);
                }
            }
            Err(e) => {
                failed.get_or_insert(e);
            }
        };
        for (n, &i) in order.iter().enumerate() {
            let task = slots[i].take().expect("each task once");
            part_bytes += task.spec().archived_size_hint();
            part.push(task);
            part_index.push(i);
            if part_bytes >= GRAPH_CHUNK_BYTES || n + 1 == order.len() {
                let sent = self.send_part(std::mem::take(&mut part), part_bytes);
                let unsent = sent.is_err();
                in_flight.push_back((std::mem::take(&mut part_index), sent));
                part_bytes = 0;
                if unsent {
                    break;
                }
                while in_flight.len() >= PARTS_IN_FLIGHT {
                    let (index, sent) = in_flight.pop_front().expect("in flight");
                    take(SentPart::answered(sent).await, index, &mut failed);
                }
            }
            if failed.is_some() {
                break;
            }
        }
        while let Some((index, sent)) = in_flight.pop_front() {
            take(SentPart::answered(sent).await, index, &mut failed);
        }
        if let Some(e) = failed {
            // The futures of the accepted parts drop here and release their keys: nothing of
            // the graph stays behind.
            return Err(e);
        }
        Ok(futures
            .into_iter()
            .map(|f| f.expect("every task submitted"))
            .collect())
    }

    async fn submit_one(&self, tasks: Vec<Task>, size: usize) -> Result<Vec<Future>, ClientError> {
        SentPart::answered(self.send_part(tasks, size)).await
    }

    /// Register the futures of one graph message and queue it; the scheduler's answer is
    /// awaited with [`SentPart::answered`].
    /// `size`: the sum of the tasks' `archived_size_hint`s (already summed by the caller).
    fn send_part(&self, tasks: Vec<Task>, size: usize) -> Result<SentPart, ClientError> {
        let submit_id = self.shared.next_id();
        let (reply, answer) = oneshot::channel();
        let mut held = Vec::new();
        // Collected in place: the specs reuse the tasks' memory rather than fresh pages.
        let specs: Vec<TaskSpecMsg> = tasks
            .into_iter()
            .map(|t| {
                let (spec, h) = t.into_parts();
                held.extend(h);
                spec
            })
            .collect();
        // Every task of the part is wanted (`want_tasks`): the keys go over the wire once.
        // Encoded here, so the keys can then move into the key table instead of being copied.
        let hint = 64 + size;
        let msg = FromClient::UpdateGraph {
            submit_id,
            tasks: specs,
            wanted: Vec::new(),
            want_tasks: true,
        };
        let header = encode_with_capacity(&msg, hint);
        let FromClient::UpdateGraph {
            tasks: mut specs, ..
        } = msg
        else {
            unreachable!("built above")
        };
        let mut created = Vec::new();
        let futures = {
            let mut st = self.shared.lock();
            if st.closed {
                return Err(ClientError::Closed);
            }
            let mut futures = Vec::with_capacity(specs.len());
            st.reserve(specs.len());
            for spec in &mut specs {
                let (entry, new) = st.acquire_owned(std::mem::take(&mut spec.key));
                if new {
                    created.push(futures.len());
                } else {
                    entry.apply(KeyEvent::Resubmitted);
                }
                entry.registered.store(true, Ordering::Relaxed);
                futures.push(Future::new(entry, self.shared.clone()));
            }
            st.submits.insert(submit_id, reply);
            st.send(Outgoing::Encoded(header));
            futures
        };
        // The graph is queued ahead of any release the dependencies' futures could cause now.
        drop(held);
        drop(specs);
        Ok(SentPart {
            futures,
            created,
            answer,
        })
    }

    fn wrap(&self, acquired: Vec<(Arc<KeyEntry>, bool)>) -> Vec<Future> {
        acquired
            .into_iter()
            .map(|(e, _)| Future::new(e, self.shared.clone()))
            .collect()
    }

    /// Call the worker function `function` once per argument, as one graph. Keys are
    /// `<function>-<token>-<i>`, with a token unique to this call.
    pub async fn map(
        &self,
        function: &str,
        args: impl IntoIterator<Item = Vec<u8>>,
    ) -> Result<Vec<Future>, ClientError> {
        let token = unique_token();
        let tasks = args
            .into_iter()
            .enumerate()
            .map(|(i, a)| Task::function(format!("{function}-{token}-{i}"), function).args(a))
            .collect();
        self.submit_graph(tasks).await
    }

    /// Wait for all futures and fetch their results, in order. The first failure (in time)
    /// is returned as soon as it is known; results are fetched concurrently, one request per
    /// worker.
    pub async fn gather(&self, futures: &[Future]) -> Result<Vec<Bytes>, ClientError> {
        // Wait, failing fast.
        let mut waiting = JoinSet::new();
        let mut seen = HashSet::new();
        for f in futures {
            if !seen.insert(f.key()) {
                continue;
            }
            let state = f.entry().current();
            if state.is_done() {
                final_location(f.key(), state)?;
            } else {
                let entry = f.entry().clone();
                waiting.spawn(async move {
                    let state = entry.done().await;
                    final_location(&entry.key, state).map(|_| ())
                });
            }
        }
        while let Some(joined) = waiting.join_next().await {
            joined.map_err(|e| ClientError::Protocol(format!("gather waiter failed: {e}")))??;
        }
        drop(waiting);

        // Small results came with their completion; fetch the rest, one request per worker.
        let mut values: HashMap<String, Bytes> = HashMap::new();
        let mut by_worker: HashMap<Arc<str>, Vec<(String, TaskId)>> = HashMap::new();
        let mut seen = HashSet::new();
        for f in futures {
            if !seen.insert(f.key()) {
                continue;
            }
            let state = f.entry().current();
            if let KeyState::Memory { value: Some(v), .. } = &state {
                values.insert(f.key().to_string(), v.clone());
                continue;
            }
            let (task, worker) = final_location(f.key(), state)?;
            by_worker
                .entry(worker)
                .or_default()
                .push((f.key().to_string(), task));
        }
        let mut fetches = JoinSet::new();
        for (worker, mut items) in by_worker {
            // Bounded requests: each value is one frame of the reply, and replies must stay
            // within the transport's frame limit.
            while !items.is_empty() {
                let rest = items.split_off(items.len().min(MAX_GET_BATCH));
                let part = std::mem::replace(&mut items, rest);
                let shared = self.shared.clone();
                let worker = worker.clone();
                fetches.spawn(async move {
                    let tasks = part.iter().map(|(_, t)| *t).collect();
                    let got = shared.peers.get_data(&worker, tasks).await;
                    (worker, part, got)
                });
            }
        }
        while let Some(joined) = fetches.join_next().await {
            let (worker, items, got) =
                joined.map_err(|e| ClientError::Protocol(format!("gather fetch failed: {e}")))?;
            let got = got.map_err(|reason| ClientError::Fetch {
                key: items[0].0.clone(),
                reason,
            })?;
            for ((key, _), value) in items.into_iter().zip(got) {
                match value {
                    Some(v) => {
                        values.insert(key, v);
                    }
                    None => {
                        return Err(ClientError::Fetch {
                            key,
                            reason: format!("worker {worker} no longer holds it"),
                        });
                    }
                }
            }
        }
        Ok(futures
            .iter()
            .map(|f| values.get(f.key()).cloned().unwrap_or_default())
            .collect())
    }

    /// Wait until every future is finished, failed, cancelled or lost.
    pub async fn wait(&self, futures: &[Future]) {
        // One at a time: a key done meanwhile costs one look, so the waiter is woken about
        // once per batch of results rather than once per key.
        for f in futures {
            f.entry().finished().await;
        }
    }

    /// The futures in the order they finish.
    pub fn as_completed(&self, futures: Vec<Future>) -> AsCompleted {
        AsCompleted::new(futures)
    }

    /// Cancel these keys (and, on the scheduler, what depends on them). Their futures resolve
    /// as cancelled at once.
    pub async fn cancel(&self, futures: &[Future]) -> Result<(), ClientError> {
        let mut keys = Vec::new();
        let mut seen = HashSet::new();
        for f in futures {
            if seen.insert(f.key()) {
                keys.push(f.key().to_string());
            }
        }
        if keys.is_empty() {
            return Ok(());
        }
        let mut st = self.shared.lock();
        if !st.send(Outgoing::Msg(FromClient::CancelKeys(keys))) {
            return Err(ClientError::Closed);
        }
        for f in futures {
            f.entry().apply(KeyEvent::Cancelled);
        }
        Ok(())
    }

    /// Put data on workers the scheduler picks; one future per item, in order, usable as a
    /// dependency at once.
    pub async fn scatter(&self, data: Vec<(String, Bytes)>) -> Result<Vec<Future>, ClientError> {
        let mut seen = HashSet::new();
        if let Some((k, _)) = data.iter().find(|(k, _)| !seen.insert(k.as_str())) {
            return Err(ClientError::Scatter(format!("key '{k}' given twice")));
        }
        let submit_id = self.shared.next_id();
        let (reply, answer) = oneshot::channel();
        let acquired = {
            let mut st = self.shared.lock();
            if st.closed {
                return Err(ClientError::Closed);
            }
            let acquired: Vec<(Arc<KeyEntry>, bool)> =
                data.iter().map(|(k, _)| st.acquire(k)).collect();
            for (entry, _) in &acquired {
                entry.apply(KeyEvent::Resubmitted);
                entry.registered.store(true, Ordering::Relaxed);
            }
            st.scatters.insert(submit_id, reply);
            st.send(Outgoing::Msg(FromClient::Scatter {
                submit_id,
                keys: data
                    .iter()
                    .map(|(k, v)| (k.clone(), v.len() as u64))
                    .collect(),
                worker: None,
            }));
            acquired
        };
        let created: Vec<Arc<KeyEntry>> = acquired
            .iter()
            .filter(|(_, c)| *c)
            .map(|(e, _)| e.clone())
            .collect();
        let futures = self.wrap(acquired);
        let targets = match answer.await {
            Ok(Ok(t)) => t,
            Ok(Err(reason)) => {
                for e in created {
                    e.registered.store(false, Ordering::Relaxed);
                }
                return Err(ClientError::Scatter(reason));
            }
            Err(_) => return Err(ClientError::Closed),
        };
        if targets.len() != data.len()
            || targets
                .iter()
                .zip(&data)
                .any(|((tk, _, _), (k, _))| tk != k)
        {
            return Err(ClientError::Protocol(format!(
                "scatter targets do not match the {} keys asked for",
                data.len()
            )));
        }

        let mut by_worker: HashMap<String, (Vec<TaskId>, Vec<Bytes>)> = HashMap::new();
        for ((_, task, worker), (_, value)) in targets.iter().zip(data) {
            let slot = by_worker.entry(worker.clone()).or_default();
            slot.0.push(*task);
            slot.1.push(value);
        }
        let mut puts = JoinSet::new();
        for (worker, (tasks, frames)) in by_worker {
            let shared = self.shared.clone();
            puts.spawn(async move {
                let r = shared.peers.put_data(&worker, tasks, frames).await;
                r.map_err(ClientError::Scatter)
            });
        }
        while let Some(joined) = puts.join_next().await {
            joined.map_err(|e| ClientError::Protocol(format!("scatter put failed: {e}")))??;
        }
        // The data is where the scheduler said; the scheduler confirms with `KeysInMemory`
        // once the worker has reported it, but it can be fetched from now on.
        for (f, (key, task, worker)) in futures.iter().zip(targets) {
            let nbytes = match f.entry().current() {
                KeyState::Memory { nbytes, .. } => nbytes,
                _ => 0,
            };
            debug_assert_eq!(f.key(), key);
            f.entry().apply(KeyEvent::InMemory {
                task,
                worker: worker.into(),
                nbytes,
                value: None,
            });
        }
        Ok(futures)
    }

    /// The scheduler's list of workers.
    pub async fn workers(&self) -> Result<Vec<WorkerInfoMsg>, ClientError> {
        let (reply, answer) = oneshot::channel();
        {
            let mut st = self.shared.lock();
            if st.closed {
                return Err(ClientError::Closed);
            }
            st.workers.push_back(reply);
            if !st.send(Outgoing::Msg(FromClient::GetWorkers)) {
                return Err(ClientError::Closed);
            }
        }
        answer.await.map_err(|_| ClientError::Closed)
    }

    /// Retire workers gracefully (Dask's `retire_workers`), by name or data address: they take
    /// no new tasks, finish the ones they run, hand the results only they hold to other
    /// workers, and close; nothing is recomputed. Resolves with the names retired once they
    /// are gone. Refused as a whole for an unknown name, or when no running worker would be
    /// left to take their results.
    pub async fn retire_workers(&self, workers: &[&str]) -> Result<Vec<String>, ClientError> {
        let (reply, answer) = oneshot::channel();
        {
            let request = self.shared.next_id();
            let mut st = self.shared.lock();
            if st.closed {
                return Err(ClientError::Closed);
            }
            st.retires.insert(request, reply);
            let msg = FromClient::RetireWorkers {
                request,
                workers: workers.iter().map(|w| w.to_string()).collect(),
            };
            if !st.send(Outgoing::Msg(msg)) {
                return Err(ClientError::Closed);
            }
        }
        answer
            .await
            .map_err(|_| ClientError::Closed)?
            .map_err(ClientError::Retire)
    }

    /// How many workers the scheduler recommends for the work it holds now (Dask's
    /// `adaptive_target`), clamped to `minimum..=maximum` (`maximum` wins), so that the
    /// queued and running work would take about `target_duration` (Dask's default: 5 s); and,
    /// when that is below the workers it counts, which of them to retire, cheapest first.
    /// Adaptive scaling (`taskwire::Cluster::adapt`) asks this once a second.
    pub async fn adaptive_target(
        &self,
        target_duration: Duration,
        minimum: usize,
        maximum: usize,
    ) -> Result<AdaptiveTargetMsg, ClientError> {
        let (reply, answer) = oneshot::channel();
        {
            let request = self.shared.next_id();
            let mut st = self.shared.lock();
            if st.closed {
                return Err(ClientError::Closed);
            }
            st.adaptive.insert(request, reply);
            let msg = FromClient::AdaptiveTarget {
                request,
                target_duration_ms: target_duration.as_millis().min(u64::MAX as u128) as u64,
                minimum: minimum as u64,
                maximum: maximum as u64,
            };
            if !st.send(Outgoing::Msg(msg)) {
                return Err(ClientError::Closed);
            }
        }
        answer.await.map_err(|_| ClientError::Closed)
    }

    /// Say goodbye to the scheduler and close the connection (for every clone of this client).
    /// Futures still pending resolve as closed; results already in memory can still be
    /// fetched from their workers until the scheduler forgets them.
    pub async fn close(self) {
        let (ack, done) = oneshot::channel();
        let queued = self.shared.lock().send(Outgoing::Close(ack));
        if queued {
            let _ = done.await;
        }
        self.shared.fail_all();
        self.shared.peers.clear();
    }
}

/// A token that makes `map` keys unique across calls and processes.
fn unique_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    format!("{:016x}", h.finish())
}

async fn write_loop(
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    sender: ConnSender,
    shared: Weak<Shared>,
) {
    let mut batch = Vec::new();
    loop {
        if queue.recv_many(&mut batch, WRITE_BATCH).await == 0 {
            // Every client and future is gone: say goodbye.
            let _ = sender.send(Message::new(encode(&FromClient::Close))).await;
            return;
        }
        // Releases collected in the state since their marker was queued join the batch there.
        for item in &mut batch {
            if let Outgoing::ReleasesReady(n) = *item
                && let Some(shared) = shared.upgrade()
            {
                *item = Outgoing::Release(shared.lock().take_releases(n));
            }
        }
        for item in coalesce(std::mem::take(&mut batch)) {
            match item {
                Outgoing::Msg(msg) => {
                    if let Err(e) = sender.send(Message::new(encode(&msg))).await {
                        tracing::debug!(error = %e, "scheduler connection failed while sending");
                        if let Some(shared) = shared.upgrade() {
                            shared.fail_all();
                        }
                        return;
                    }
                }
                Outgoing::Close(ack) => {
                    let _ = sender.send(Message::new(encode(&FromClient::Close))).await;
                    let _ = ack.send(());
                    return;
                }
                Outgoing::Encoded(header) => {
                    if let Err(e) = sender.send(Message::new(header)).await {
                        tracing::debug!(error = %e, "scheduler connection failed while sending");
                        if let Some(shared) = shared.upgrade() {
                            shared.fail_all();
                        }
                        return;
                    }
                }
                Outgoing::Release(_) | Outgoing::ReleasesReady(_) => {
                    unreachable!("coalesced into ReleaseKeys")
                }
            }
        }
    }
}

async fn read_loop(mut receiver: ConnReceiver, shared: Weak<Shared>) {
    loop {
        let msg = match receiver.recv().await {
            Ok(Some(msg)) => msg,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "scheduler connection failed");
                break;
            }
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.handle_header(&msg.header);
    }
    if let Some(shared) = shared.upgrade() {
        shared.lock().fail_all();
    }
}

/// Most results asked of one worker in one request.
const MAX_GET_BATCH: usize = 4096;

/// Graphs whose encoded size is above this go to the scheduler in parts of about this size,
/// well below the transport's default 64 MiB header limit.
const GRAPH_CHUNK_BYTES: usize = 16 << 20;

/// Parts of a large graph sent ahead of the scheduler's answer to the earliest of them: enough
/// to keep the client encoding while the scheduler takes a part in, few enough to bound the
/// encoded parts held at once (about 64 MiB).
const PARTS_IN_FLIGHT: usize = 4;

/// A graph message queued for the scheduler: its futures and the scheduler's answer to come.
struct SentPart {
    futures: Vec<Future>,
    /// Indices of the futures whose keys this message made known to the client.
    created: Vec<usize>,
    answer: oneshot::Receiver<Result<(), String>>,
}

impl SentPart {
    /// The futures once the scheduler accepted the graph (or why the part was not sent); on a
    /// rejection the keys it made known are forgotten without a release (the scheduler kept
    /// nothing).
    async fn answered(sent: Result<SentPart, ClientError>) -> Result<Vec<Future>, ClientError> {
        let sent = sent?;
        match sent.answer.await {
            Ok(Ok(())) => Ok(sent.futures),
            Ok(Err(reason)) => {
                for i in sent.created {
                    sent.futures[i]
                        .entry()
                        .registered
                        .store(false, Ordering::Relaxed);
                }
                Err(ClientError::GraphRejected(reason))
            }
            Err(_) => Err(ClientError::Closed),
        }
    }
}

/// Task indices ordered so that every task comes after the tasks of the same graph it depends
/// on (Kahn's algorithm, stable for independent tasks). A cycle is refused here, as the
/// scheduler would refuse it, naming a key on it.
fn dependency_order(tasks: &[Task]) -> Result<Vec<usize>, ClientError> {
    // Fx, not SipHash: the keys are the client's own. A later duplicate key wins, as before.
    let mut index: rustc_hash::FxHashMap<&str, u32> = rustc_hash::FxHashMap::default();
    index.reserve(tasks.len());
    for (i, t) in tasks.iter().enumerate() {
        index.insert(t.key(), i as u32);
    }
    let n = tasks.len();
    let mut pending = vec![0u32; n];
    // Edges (dependency, dependent) within the graph, in dependent order; then the dependents
    // of each task as one flat list (CSR), not a `Vec` per task.
    let mut edges: Vec<(u32, u32)> = Vec::new();
    for (i, t) in tasks.iter().enumerate() {
        for d in &t.spec().deps {
            if let Some(&j) = index.get(d.as_str()) {
                pending[i] += 1;
                edges.push((j, i as u32));
            }
        }
    }
    drop(index);
    let mut start = vec![0u32; n + 1];
    for &(j, _) in &edges {
        start[j as usize + 1] += 1;
    }
    for k in 0..n {
        start[k + 1] += start[k];
    }
    let mut fill = start.clone();
    let mut dependents = vec![0u32; edges.len()];
    for &(j, i) in &edges {
        dependents[fill[j as usize] as usize] = i;
        fill[j as usize] += 1;
    }
    drop(fill);
    drop(edges);
    let mut order: Vec<usize> = (0..n).filter(|&i| pending[i] == 0).collect();
    order.reserve(n - order.len());
    let mut next = 0;
    while next < order.len() {
        let i = order[next];
        next += 1;
        for &k in &dependents[start[i] as usize..start[i + 1] as usize] {
            let k = k as usize;
            pending[k] -= 1;
            if pending[k] == 0 {
                order.push(k);
            }
        }
    }
    if order.len() < tasks.len() {
        let stuck = (0..tasks.len())
            .find(|&i| pending[i] > 0)
            .expect("a task on a cycle");
        return Err(ClientError::GraphRejected(format!(
            "the graph has a cycle: key '{}' waits on dependencies that go round in a cycle",
            tasks[stuck].key()
        )));
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(tasks: &[Task], order: &[usize]) -> Vec<String> {
        order.iter().map(|&i| tasks[i].key().to_string()).collect()
    }

    #[test]
    fn dependency_order_puts_inputs_first_and_keeps_submission_order_otherwise() {
        // c <- a, b; d <- c; e independent; "x" is a key outside the graph.
        let tasks = vec![
            Task::function("d", "noop").dep_key("c"),
            Task::function("c", "noop")
                .dep_key("a")
                .dep_key("b")
                .dep_key("x"),
            Task::function("a", "noop"),
            Task::function("e", "noop"),
            Task::function("b", "noop"),
        ];
        let order = dependency_order(&tasks).unwrap();
        assert_eq!(keys(&tasks, &order), ["a", "e", "b", "c", "d"]);
    }

    #[test]
    fn dependency_order_names_a_key_on_a_cycle() {
        let tasks = vec![
            Task::function("ok", "noop"),
            Task::function("p", "noop").dep_key("q"),
            Task::function("q", "noop").dep_key("p"),
        ];
        match dependency_order(&tasks) {
            Err(ClientError::GraphRejected(r)) => assert!(r.contains("'p'"), "{r}"),
            other => panic!("{other:?}"),
        }
    }
}
