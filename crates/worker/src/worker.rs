//! The worker process: registration with the scheduler, the event loop that turns `Compute`
//! messages into executor jobs (fetching missing inputs from peers first), and batched reports.

use crate::executor::{DirectReport, Executor, Job, JobOutcome};
use crate::memory::{MemoryConfig, MemoryRelease, MemorySource, Monitor, threshold};
use crate::metrics::{self, Counters};
use crate::peer::{self, PeerPool};
use crate::registry::Registry as Functions;
use crate::store::{Lookup, SpillSettings, Store};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use taskwire_protocol::connection::ConnectError;
use taskwire_protocol::{
    ClientHandshake, ClusterSecret, ComputeTaskMsg, ErrorKindMsg, FromWorker, MAX_INLINE_RESULT,
    RegisterWorkerMsg, ResourceMsg, Role, TaskErredMsg, TaskErrorMsg, TaskFinishedMsg, TaskId,
    ToWorker, WorkerId, WorkerMetricsMsg, decode, encode,
};
use taskwire_transport::{
    Address, ConnReceiver, ConnSender, Message, Registry, TransportConfig, TransportError,
};
use taskwire_transport_tcp::Security;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// How long a busy worker may hold finished-task reports to send them together.
const REPORT_DELAY: Duration = Duration::from_millis(5);
/// ... and never holds more than this many.
const MAX_HELD_REPORTS: usize = 4096;
/// Values asked of one peer in one request (well under the transport's frame limit).
const MAX_FETCH_BATCH: usize = 4096;
/// Bytes asked of one peer in one request, unless a single value is larger.
const MAX_FETCH_BYTES: u64 = 64 << 20;

/// Why a worker could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A transport failure (listen, connect).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The scheduler refused the handshake or the registration.
    #[error("scheduler refused this worker: {0}")]
    Refused(String),
    /// The scheduler spoke something unexpected.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Local setup failed (e.g. the local directory).
    #[error("{0}")]
    Setup(String),
}

/// Reads (used, total) bytes of a worker's GPU memory; `None` when it cannot be read now.
pub type GpuMemoryProbe = Arc<dyn Fn() -> Option<(u64, u64)> + Send + Sync>;

/// A worker's GPU memory reporting.
struct GpuMemory {
    probe: GpuMemoryProbe,
    limit: u64,
}

/// Why a worker stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Closed locally (`close`, or the handle dropped).
    Closed,
    /// The scheduler closed it: retired, or told to leave.
    ClosedByScheduler,
    /// The scheduler went away, or was silent longer than the worker TTL.
    LostScheduler(String),
    /// Something inside the worker failed.
    Failed(String),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Closed => f.write_str("closed"),
            StopReason::ClosedByScheduler => f.write_str("the scheduler closed this worker"),
            StopReason::LostScheduler(why) => write!(f, "lost the scheduler: {why}"),
            StopReason::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// Entry point for starting a worker.
#[derive(Debug)]
pub struct Worker;

impl Worker {
    /// A builder for a worker that registers with the scheduler at `scheduler`.
    pub fn builder(scheduler: Address) -> WorkerBuilder {
        WorkerBuilder {
            scheduler,
            name: None,
            nthreads: None,
            memory_limit: None,
            resources: Vec::new(),
            listen: None,
            transports: None,
            security: Security::new(),
            functions: Functions::stock(),
            local_directory: None,
            zero_worker: false,
            restarts: 0,
            gpu: None,
            memory: MemoryConfig::default(),
            memory_source: None,
            memory_release: None,
            data: peer::DataLimits::default(),
            metrics: None,
        }
    }
}

/// Options for a worker.
pub struct WorkerBuilder {
    scheduler: Address,
    name: Option<String>,
    nthreads: Option<usize>,
    memory_limit: Option<u64>,
    resources: Vec<(String, f64)>,
    listen: Option<Address>,
    transports: Option<Registry>,
    security: Security,
    functions: Functions,
    local_directory: Option<PathBuf>,
    zero_worker: bool,
    restarts: u32,
    gpu: Option<GpuMemory>,
    memory: MemoryConfig,
    memory_source: Option<MemorySource>,
    memory_release: Option<MemoryRelease>,
    data: peer::DataLimits,
    metrics: Option<(String, u16)>,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("scheduler", &self.scheduler)
            .field("name", &self.name)
            .finish()
    }
}

impl WorkerBuilder {
    /// Worker name (unique in the cluster); defaults to its data address.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Threads for tasks; defaults to the CPUs available.
    pub fn nthreads(mut self, n: usize) -> Self {
        self.nthreads = Some(n.max(1));
        self
    }

    /// Memory limit in bytes (reported to the scheduler); defaults to the machine's memory.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// A resource this worker offers, e.g. `("GPU", 1.0)`.
    pub fn resource(mut self, name: impl Into<String>, amount: f64) -> Self {
        self.resources.push((name.into(), amount));
        self
    }

    /// Where to serve data to peers; defaults to a free port next to the scheduler's network
    /// (or a fresh `inproc://` name for an in-process scheduler).
    pub fn listen(mut self, address: Address) -> Self {
        self.listen = Some(address);
        self
    }

    /// Transports and limits.
    pub fn transports(mut self, registry: Registry) -> Self {
        self.transports = Some(registry);
        self
    }

    /// TLS and encryption rules (see [`Security`]), for the connection to the scheduler, the
    /// data port and peer transfers alike. With TLS, a `tcp://` data port becomes `tls://`.
    pub fn security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// The functions this worker can run (default: [`Functions::stock`]).
    pub fn functions(mut self, functions: Functions) -> Self {
        self.functions = functions;
        self
    }

    /// Directory for command tasks' working directory and spilled data.
    pub fn local_directory(mut self, dir: impl Into<PathBuf>) -> Self {
        self.local_directory = Some(dir.into());
        self
    }

    /// Zero-worker mode (a benchmark tool, after RSDS and HyperQueue): report every task
    /// finished the moment it arrives, without running it or fetching its inputs, so that a
    /// benchmark measures the scheduler's own cost per task. Results are not stored.
    pub fn zero_worker(mut self, on: bool) -> Self {
        self.zero_worker = on;
        self
    }

    /// Memory thresholds: when to spill results to the local directory and when to pause
    /// (default [`MemoryConfig::default`]: Dask's 60% / 70% / 80% of the memory limit).
    pub fn memory_config(mut self, config: MemoryConfig) -> Self {
        self.memory = config;
        self
    }

    /// Where the worker reads its process memory (default [`MemorySource::process`], the
    /// resident set size). For tests, and for programs that embed a worker and account its
    /// memory themselves.
    pub fn memory_source(mut self, source: MemorySource) -> Self {
        self.memory_source = Some(source);
        self
    }

    /// How to make the allocator return freed memory to the OS now; the memory thread calls it
    /// after each sample while memory is above the spill threshold or the worker is paused.
    /// Without it, memory freed by spilling shows only when the allocator returns it by itself
    /// (mimalloc with a 1 s purge delay: some 10 s), and the worker stays paused meanwhile. A
    /// program with mimalloc passes `mi_collect(true)`; with glibc, `malloc_trim(0)`. Defaults
    /// to [`MemoryRelease::set_process_default`]'s, if any.
    pub fn memory_release(mut self, release: MemoryRelease) -> Self {
        self.memory_release = Some(release);
        self
    }

    /// Report GPU memory in heartbeats: `probe` returns (used, total) bytes of this worker's
    /// GPU (`None` when it cannot be read now); `limit` is its device memory limit (0: none).
    pub fn gpu_memory(mut self, probe: GpuMemoryProbe, limit: u64) -> Self {
        self.gpu = Some(GpuMemory { probe, limit });
        self
    }

    /// Prove this cluster token to the scheduler and to other workers, and require it of every
    /// peer that connects to this worker's data port.
    pub fn auth_token(mut self, secret: ClusterSecret) -> Self {
        self.data.secret = Some(secret);
        self
    }

    /// How long a connection to the data port has to finish its handshake (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.data.handshake_timeout = timeout;
        self
    }

    /// Most connections the data port serves at once, those in their handshake included
    /// (default 10,000); beyond it a new connection is told so and closed.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.data.max_connections = n.max(1);
        self
    }

    /// Serve Prometheus metrics (`/metrics`) and a liveness check (`/health`) over HTTP on
    /// `host:port` (port 0: a free one; a taken port falls back to a free one with a warning).
    /// With a cluster token, `/metrics` needs its HTTP credential. Off by default.
    pub fn metrics_port(mut self, host: &str, port: u16) -> Self {
        self.metrics = Some((host.to_string(), port));
        self
    }

    /// How many times a nanny has restarted this worker (reported to the scheduler).
    pub fn restarts(mut self, n: u32) -> Self {
        self.restarts = n;
        self
    }

    /// Listen, connect, register; returns once the scheduler has accepted the worker.
    pub async fn start(self) -> Result<WorkerHandle, WorkerError> {
        let transports = self.security.apply(self.transports.unwrap_or_else(|| {
            taskwire_transport_tcp::standard_registry(TransportConfig::default())
        }));
        let listen = match self
            .listen
            .unwrap_or_else(|| default_listen(&self.scheduler))
        {
            Address::Net { scheme, host, port } => Address::Net {
                scheme: self.security.listen_scheme(scheme),
                host,
                port,
            },
            other => other,
        };
        let listener = transports.listen(&listen).await?;
        let address = taskwire_transport_tcp::contact_address(listener.local_addr());
        let name = self.name.unwrap_or_else(|| address.to_string());
        let nthreads = self.nthreads.unwrap_or_else(available_cpus);
        let memory_limit = self.memory_limit.unwrap_or_else(machine_memory);
        let local_dir = match self.local_directory {
            Some(d) => d,
            None => std::env::temp_dir().join(format!("taskwire-worker-{}", sanitize(&name))),
        };
        std::fs::create_dir_all(&local_dir).map_err(|e| {
            WorkerError::Setup(format!(
                "cannot create local directory {}: {e}",
                local_dir.display()
            ))
        })?;

        let mut conn = transports.connect(&self.scheduler).await?;
        let handshake = ClientHandshake::new(Role::Worker, name.clone(), self.data.secret.clone());
        let limit = transports
            .config()
            .connect_timeout
            .max(Duration::from_secs(1));
        match taskwire_protocol::connection::connect(&mut conn, handshake, limit).await {
            Ok(_) => {}
            Err(ConnectError::Transport(e)) => return Err(e.into()),
            Err(e) => return Err(WorkerError::Refused(e.to_string())),
        }
        let register = RegisterWorkerMsg {
            name: name.clone(),
            address: address.to_string(),
            nthreads: nthreads as u32,
            memory_limit,
            resources: self
                .resources
                .iter()
                .map(|(n, a)| ResourceMsg {
                    name: n.clone(),
                    amount: *a,
                })
                .collect(),
            pid: std::process::id(),
            restarts: self.restarts,
        };
        conn.send(Message::new(encode(&FromWorker::Register(register))))
            .await?;
        let (id, heartbeat_ms, ttl_ms) = match decode::<ToWorker>(&conn.recv_msg().await?.header) {
            Ok(ToWorker::Registered {
                id,
                heartbeat_ms,
                ttl_ms,
            }) => (id, heartbeat_ms, ttl_ms),
            Ok(ToWorker::Refused(reason)) => return Err(WorkerError::Refused(reason)),
            Ok(other) => {
                return Err(WorkerError::Protocol(format!(
                    "expected Registered, got {other:?}"
                )));
            }
            Err(e) => return Err(WorkerError::Protocol(e.to_string())),
        };
        let (sender, receiver) = conn.split();

        let spill_dir = local_dir.join("spill");
        let spilling = threshold(memory_limit, self.memory.target).is_some()
            || threshold(memory_limit, self.memory.spill).is_some();
        let store = Arc::new(Store::new(spilling.then(|| {
            Store::clean_stale(&spill_dir);
            SpillSettings {
                dir: spill_dir,
                target: threshold(memory_limit, self.memory.target),
            }
        })));
        let (paused_tx, paused_rx) = watch::channel(false);
        let memory = Monitor::start(
            store.clone(),
            memory_limit,
            &self.memory,
            (
                self.memory_source.unwrap_or_else(MemorySource::process),
                self.memory_release.or_else(MemoryRelease::process_default),
            ),
            paused_tx,
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let (heartbeat_tx, heartbeat_rx) = watch::channel(WorkerMetricsMsg::default());
        let metrics_link = match &self.metrics {
            Some((host, port)) => {
                let (listener, fell_back) = taskwire_transport_tcp::http::bind(host, *port)
                    .await
                    .map_err(|e| {
                    WorkerError::Setup(format!("metrics port {host}:{port}: {e}"))
                })?;
                if fell_back {
                    warn!("metrics port {port} is taken; using a free port instead");
                }
                let bound = listener
                    .local_addr()
                    .map_err(|e| WorkerError::Setup(format!("metrics port: {e}")))?;
                let shown_host = match host.as_str() {
                    "0.0.0.0" | "::" => taskwire_transport_tcp::host_ip(),
                    h => h.to_string(),
                };
                tokio::spawn(metrics::serve(
                    listener,
                    metrics::Shown {
                        name: name.clone(),
                        nthreads,
                        memory_limit,
                        heartbeat: heartbeat_rx,
                        counters: counters.clone(),
                    },
                    stop_rx.clone(),
                    self.data.secret.as_ref().map(|s| s.http_credential()),
                ));
                Some(format!("http://{shown_host}:{}/metrics", bound.port()))
            }
            None => None,
        };
        let (done_tx, done_rx) = watch::channel(None);
        let (retire_tx, retire_rx) = watch::channel(false);
        let (added_tx, added_rx) = mpsc::unbounded_channel();
        let secret = self.data.secret.clone();
        tokio::spawn(peer::serve(
            listener,
            store.clone(),
            name.clone(),
            added_tx,
            stop_rx.clone(),
            self.data,
            counters.clone(),
        ));
        let (outcome_tx, outcome_rx) = mpsc::unbounded_channel();
        let reporter = Arc::new(Reporter {
            running: Mutex::new(HashSet::new()),
            held: Mutex::new(Vec::new()),
            held_ready: tokio::sync::Notify::new(),
            store: store.clone(),
            counters: counters.clone(),
            sender: sender.clone(),
            runtime: tokio::runtime::Handle::current(),
            clock: std::time::Instant::now(),
        });
        let direct: DirectReport = {
            let reporter = reporter.clone();
            Arc::new(move |outcome, queued| reporter.report(outcome, queued))
        };
        let executor = Executor::start_reporting(
            nthreads,
            self.functions,
            name.clone(),
            local_dir,
            outcome_tx,
            // Not in zero-worker mode: nothing runs there.
            (!self.zero_worker).then_some(direct),
        );
        let (fetch_tx, fetch_rx) = mpsc::unbounded_channel();
        let state = State {
            gpu: self.gpu,
            id,
            store,
            executor,
            peers: PeerPool::new(transports, name.clone(), secret, counters.clone()),
            counters,
            published: heartbeat_tx,
            sender,
            waiting: HashMap::new(),
            fetching: HashMap::new(),
            fetched: HashMap::new(),
            reporter,
            finished: Vec::new(),
            erred: Vec::new(),
            fetch_tx,
            zero_worker: self.zero_worker,
            outgoing: Vec::new(),
            fetch_queue: HashMap::new(),
            memory,
            paused: paused_rx,
        };
        let scheduler = self.scheduler.clone();
        tokio::spawn(async move {
            let reason = state
                .run(
                    receiver,
                    outcome_rx,
                    fetch_rx,
                    added_rx,
                    Timers {
                        heartbeat: Duration::from_millis(heartbeat_ms.max(10)),
                        ttl: Duration::from_millis(ttl_ms.max(100)),
                    },
                    Controls {
                        stop: stop_rx,
                        retire: retire_rx,
                    },
                )
                .await;
            info!("worker stopped: {reason}");
            let _ = done_tx.send(Some(reason));
        });
        Ok(WorkerHandle {
            id,
            name,
            metrics: metrics_link,
            address,
            scheduler,
            nthreads,
            stop: stop_tx,
            retire: retire_tx,
            done: done_rx,
        })
    }
}

/// A running worker. Dropping it stops the worker.
#[derive(Debug)]
pub struct WorkerHandle {
    id: WorkerId,
    name: String,
    metrics: Option<String>,
    address: Address,
    scheduler: Address,
    nthreads: usize,
    stop: watch::Sender<bool>,
    retire: watch::Sender<bool>,
    done: watch::Receiver<Option<StopReason>>,
}

impl WorkerHandle {
    /// The worker's data address.
    pub fn address(&self) -> &Address {
        &self.address
    }
    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The id the scheduler gave it.
    pub fn id(&self) -> WorkerId {
        self.id
    }
    /// The scheduler it is registered to.
    pub fn scheduler(&self) -> &Address {
        &self.scheduler
    }
    /// Its task threads.
    pub fn nthreads(&self) -> usize {
        self.nthreads
    }
    /// Where its metrics are served (`http://host:port/metrics`), when
    /// [`WorkerBuilder::metrics_port`] turned them on.
    pub fn metrics_link(&self) -> Option<&str> {
        self.metrics.as_deref()
    }
    /// Resolves when the worker has stopped, with the reason.
    pub async fn finished(&self) -> StopReason {
        let mut done = self.done.clone();
        match done.wait_for(|d| d.is_some()).await {
            Ok(reason) => reason.clone().expect("set"),
            Err(_) => StopReason::Failed("the worker task ended without a reason".into()),
        }
    }
    /// Leave gracefully: ask the scheduler to move this worker's unique results to other
    /// workers, finish the tasks it is running, and wait until the scheduler closes it.
    pub async fn retire(&self) {
        let _ = self.retire.send(true);
        self.finished().await;
    }
    /// Stop the worker now (results it alone holds are recomputed elsewhere).
    pub async fn close(self) {
        let _ = self.stop.send(true);
        self.finished().await;
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn default_listen(scheduler: &Address) -> Address {
    match scheduler {
        Address::Inproc(_) => Address::inproc(""),
        Address::Net { scheme, host, .. } if taskwire_transport_tcp::is_loopback_host(host) => {
            Address::Net {
                scheme: *scheme,
                host: "127.0.0.1".into(),
                port: 0,
            }
        }
        Address::Net { scheme, .. } => Address::Net {
            scheme: *scheme,
            host: "0.0.0.0".into(),
            port: 0,
        },
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// CPUs this process may use.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Resident set size of this process in bytes, 0 when unknown: the same reading the nanny
/// takes of its children ([`rss_of`](crate::rss_of)), so that both judge one number.
pub fn process_rss() -> u64 {
    crate::rss_of(std::process::id()).unwrap_or(0)
}

/// Total machine memory in bytes (from /proc/meminfo), 0 when unknown.
pub fn machine_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The worker's clocks, from the scheduler's `Registered` answer.
struct Timers {
    /// How often to heartbeat.
    heartbeat: Duration,
    /// A scheduler silent for this long is considered lost.
    ttl: Duration,
}

/// What the handle tells the worker's loop.
struct Controls {
    /// Stop now.
    stop: watch::Receiver<bool>,
    /// Retire gracefully.
    retire: watch::Receiver<bool>,
}

/// A task waiting for inputs to arrive from peers.
struct Waiting {
    msg: ComputeTaskMsg,
    missing: usize,
}

/// Result of fetching inputs from one holder.
struct Fetched {
    from: String,
    asked: Vec<TaskId>,
    result: Result<Vec<(TaskId, Option<Bytes>)>, String>,
}

/// The fetch of one input: which holders are left to try, which tasks wait for it.
struct Fetch {
    holders: Vec<String>,
    waiters: Vec<TaskId>,
    /// Keep the value in the store and report it (a replica the scheduler asked for).
    keep: bool,
}

/// What an executor thread needs to report a task it finished itself, with no hand-off to the
/// worker loop: when the result is small (it travels inline with the report) and the worker is
/// not busy (a busy worker's reports are held and batched by the loop, see [`REPORT_DELAY`]).
/// Errors and large results go through the loop's channel as before; outcomes of a busy worker
/// wait in `held` for the loop's next report, which wakes the loop once per report rather than
/// once per task.
struct Reporter {
    /// Tasks handed to the executor and not finished. Its lock also makes "still wanted?
    /// then store the result" (here) atomic with "forget the task" (the loop's `Free`): a
    /// result never lands in the store after its task was freed.
    running: Mutex<HashSet<TaskId>>,
    /// Outcomes of a busy worker, for the loop's next report.
    held: Mutex<Vec<JobOutcome>>,
    /// Told when `held` gets its first outcome (the loop then times the report) and when it
    /// reaches [`MAX_HELD_REPORTS`] (the loop then reports at once).
    held_ready: tokio::sync::Notify,
    store: Arc<Store>,
    counters: Arc<Counters>,
    sender: ConnSender,
    /// To wait for room in the connection's queue from an executor thread.
    runtime: tokio::runtime::Handle,
    /// The origin of the worker's clock: reports give start times in µs since then.
    clock: std::time::Instant,
}

impl Reporter {
    fn running(&self) -> MutexGuard<'_, HashSet<TaskId>> {
        // Nothing panics while holding it; carry on if something did.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `t` on the worker's clock, in µs, as reports give start times.
    fn micros(&self, t: std::time::Instant) -> u64 {
        t.saturating_duration_since(self.clock).as_micros() as u64
    }

    /// Report `outcome` now from this executor thread, hold it for the loop's next report
    /// (`queued`: the worker is busy), or hand it back to go to the loop.
    fn report(&self, outcome: JobOutcome, queued: bool) -> Option<JobOutcome> {
        if queued {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            held.push(outcome);
            if held.len() == 1 || held.len() == MAX_HELD_REPORTS {
                self.held_ready.notify_one();
            }
            return None;
        }
        let small = matches!(&outcome.result, Ok(v) if v.len() <= MAX_INLINE_RESULT);
        // Outcomes held while the worker was busy go first: the loop reports them with this
        // one at once. Sent alone from here, this task would overtake them by up to
        // REPORT_DELAY, and the scheduler would meanwhile count them as still running.
        if !small || !self.held.lock().map_or(true, |h| h.is_empty()) {
            return Some(outcome);
        }
        let Ok(value) = outcome.result else {
            unreachable!("checked above")
        };
        let nbytes = value.len() as u64;
        {
            let mut running = self.running();
            if !running.remove(&outcome.task) {
                // Freed or stolen while it ran: the scheduler no longer wants it.
                return None;
            }
            self.store.insert(outcome.task, value.clone());
        }
        self.counters
            .tasks_finished
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let report = FromWorker::TasksFinished(vec![TaskFinishedMsg {
            task: outcome.task,
            nbytes,
            duration_us: outcome.duration.as_micros() as u64,
            started_us: self.micros(outcome.started),
            thread: outcome.thread,
            inline: Some(value.to_vec()),
        }]);
        // Written at once when nothing is queued on the connection; a full queue is waited
        // for. An error means the connection is gone, which the loop sees and acts on.
        if let Ok(Some(msg)) = self.sender.try_send(Message::new(encode(&report))) {
            let _ = self.runtime.block_on(self.sender.send(msg));
        }
        None
    }
}

struct State {
    /// The worker's GPU memory, read for each heartbeat.
    gpu: Option<GpuMemory>,
    id: WorkerId,
    store: Arc<Store>,
    executor: Executor,
    peers: PeerPool,
    /// Transfers and tasks run, for heartbeats and the metrics port.
    counters: Arc<Counters>,
    /// The latest heartbeat, for the metrics port.
    published: watch::Sender<WorkerMetricsMsg>,
    sender: ConnSender,
    waiting: HashMap<TaskId, Waiting>,
    /// Inputs being fetched.
    fetching: HashMap<TaskId, Fetch>,
    /// Fetched inputs, held only until the tasks that wait for them have started.
    fetched: HashMap<TaskId, (Bytes, usize)>,
    /// Tasks handed to the executor and not finished, and the executor threads' own reports.
    reporter: Arc<Reporter>,
    finished: Vec<TaskFinishedMsg>,
    erred: Vec<TaskErredMsg>,
    fetch_tx: mpsc::UnboundedSender<Fetched>,
    zero_worker: bool,
    /// Other reports (released, missing data, data added), sent in order at the next flush.
    outgoing: Vec<FromWorker>,
    /// Inputs to fetch, by the holder asked first; sent by `flush_fetches` after each batch.
    fetch_queue: HashMap<String, Vec<(TaskId, u64)>>,
    /// The memory thread (spilling, pause decisions) and the latest memory sample.
    memory: Monitor,
    /// Paused by the memory thread: the executor starts no new task.
    paused: watch::Receiver<bool>,
}

impl State {
    async fn run(
        mut self,
        mut scheduler: ConnReceiver,
        mut outcomes: mpsc::UnboundedReceiver<JobOutcome>,
        mut fetches: mpsc::UnboundedReceiver<Fetched>,
        mut added: mpsc::UnboundedReceiver<Vec<(TaskId, u64)>>,
        timers: Timers,
        controls: Controls,
    ) -> StopReason {
        let Controls {
            mut stop,
            mut retire,
        } = controls;
        let mut tick = tokio::time::interval(timers.heartbeat);
        let mut last_heard = tokio::time::Instant::now();
        let mut retiring = false;
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut outcome_batch = Vec::with_capacity(256);
        // While the executor has queued work, finished tasks are reported at most every
        // REPORT_DELAY: the scheduler already gave this worker its next tasks, so an earlier
        // report changes nothing but costs a message (and wake-ups) per task on every hop.
        let mut report_at: Option<tokio::time::Instant> = None;
        let reporter = self.reporter.clone();
        let reason = loop {
            // Report the held outcomes now rather than at `report_at`.
            let mut report_now = false;
            let deferred = async {
                match report_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break StopReason::Closed,
                _ = retire.wait_for(|r| *r), if !retiring => {
                    retiring = true;
                    info!("worker {}: retiring; asking the scheduler to move its data", self.id);
                    self.outgoing.push(FromWorker::RequestRetire);
                }
                // Due: flush below, whatever the executor holds.
                _ = deferred => {}
                msg = scheduler.recv() => match msg {
                    Ok(Some(msg)) => {
                        last_heard = tokio::time::Instant::now();
                        match decode::<ToWorker>(&msg.header) {
                            Ok(ToWorker::Close) => break StopReason::ClosedByScheduler,
                            Ok(m) => self.handle_scheduler(m),
                            Err(e) => warn!("malformed message from the scheduler: {e}"),
                        }
                    }
                    Ok(None) => break StopReason::LostScheduler("the scheduler closed the connection".into()),
                    Err(e) => break StopReason::LostScheduler(e.to_string()),
                },
                n = outcomes.recv_many(&mut outcome_batch, 1024) => {
                    if n == 0 {
                        break StopReason::Failed("the executor stopped".into());
                    }
                    // In the order they finished: held outcomes came before these.
                    let held = std::mem::take(
                        &mut *reporter.held.lock().unwrap_or_else(|p| p.into_inner()),
                    );
                    for outcome in held.into_iter().chain(outcome_batch.drain(..)) {
                        self.finish(outcome);
                    }
                    // The executor ran dry: nothing will run before the scheduler hears of
                    // these, so they go now, not at `report_at`.
                    if self.executor.queued() == 0 {
                        report_now = true;
                    }
                }
                () = reporter.held_ready.notified() => {
                    if reporter.held.lock().map_or(true, |h| h.len() >= MAX_HELD_REPORTS) {
                        report_now = true;
                    } else if report_at.is_none() {
                        report_at = Some(tokio::time::Instant::now() + REPORT_DELAY);
                    }
                }
                Some(f) = fetches.recv() => self.fetched(f),
                Ok(()) = self.paused.changed() => {
                    let paused = *self.paused.borrow_and_update();
                    self.executor.set_paused(paused);
                    // The memory thread logs why.
                    debug!("worker {}: {}", self.id, if paused { "paused" } else { "resumed" });
                    // Now, not at the next tick: the scheduler stops (or resumes) placing tasks
                    // here.
                    self.outgoing.push(self.heartbeat());
                }
                Some(report) = added.recv() => {
                    self.outgoing.push(FromWorker::DataAdded(report));
                }
                _ = tick.tick() => {
                    let silent = last_heard.elapsed();
                    if silent > timers.ttl {
                        break StopReason::LostScheduler(format!("nothing heard for {silent:?}"));
                    }
                    let _ = self.sender.try_send(Message::new(encode(&self.heartbeat())));
                }
            }
            if report_at.is_none()
                && !self.finished.is_empty()
                && self.finished.len() < MAX_HELD_REPORTS
                && self.executor.queued() > 0
            {
                report_at = Some(tokio::time::Instant::now() + REPORT_DELAY);
            }
            if !report_now
                && report_at.is_some_and(|at| at > tokio::time::Instant::now())
                && self.finished.len() < MAX_HELD_REPORTS
            {
                // Only the finished-task report waits; everything else goes out now.
                let finished = std::mem::take(&mut self.finished);
                let sent = self.flush().await;
                self.finished = finished;
                if sent.is_err() {
                    break StopReason::LostScheduler(
                        "the connection failed while reporting".into(),
                    );
                }
                continue;
            }
            report_at = None;
            let held =
                std::mem::take(&mut *reporter.held.lock().unwrap_or_else(|p| p.into_inner()));
            for outcome in held {
                self.finish(outcome);
            }
            if self.flush().await.is_err() {
                break StopReason::LostScheduler("the connection failed while reporting".into());
            }
        };
        // Joining the executor waits for running tasks, which may take long and cannot be
        // interrupted: do it off the async runtime and do not hold up the worker's shutdown.
        let executor = self.executor;
        tokio::task::spawn_blocking(move || executor.shutdown());
        // Dropping the monitor (with the rest of the state) stops the memory thread; the store,
        // and with it the spill files, goes once the data server lets go of it.
        reason
    }

    fn handle_scheduler(&mut self, msg: ToWorker) {
        match msg {
            ToWorker::Compute(tasks) if self.zero_worker => {
                let now = self.reporter.micros(std::time::Instant::now());
                self.finished.extend(tasks.iter().map(|t| TaskFinishedMsg {
                    task: t.task,
                    nbytes: 8,
                    duration_us: 0,
                    started_us: now,
                    thread: 0,
                    inline: None,
                }));
            }
            ToWorker::Compute(tasks) => {
                let mut jobs = Vec::with_capacity(tasks.len());
                for t in tasks {
                    if let Some(job) = self.prepare(t) {
                        jobs.push(job);
                    }
                }
                self.flush_fetches();
                // A lone quick task on an idle worker runs here, without waking a thread;
                // it is reported by the flush that follows this message.
                if let [job] = &jobs[..]
                    && let Some(outcome) = self.executor.run_here(job)
                {
                    jobs.clear();
                    self.finish(outcome);
                }
                self.executor.submit_all(jobs);
            }
            ToWorker::Free(tasks) => {
                let reporter = self.reporter.clone();
                for t in tasks {
                    // Held throughout: an executor thread finishing `t` now either stored its
                    // result before (removed here) or finds it no longer running.
                    let mut running = reporter.running();
                    if !self.store.remove(t) && !self.executor.cancel(t) {
                        self.drop_waiting(t);
                    }
                    running.remove(&t);
                }
            }
            ToWorker::StealRequest(tasks) => {
                let released: Vec<TaskId> = tasks
                    .into_iter()
                    .filter(|t| {
                        if self.drop_waiting(*t) {
                            return true;
                        }
                        if self.executor.cancel(*t) {
                            self.reporter.running().remove(t);
                            return true;
                        }
                        false
                    })
                    .collect();
                self.outgoing.push(FromWorker::Released(released));
            }
            ToWorker::AcquireReplicas(deps) => {
                for dep in deps {
                    if let Some(nbytes) = self.store.len_of(dep.task) {
                        self.outgoing
                            .push(FromWorker::DataAdded(vec![(dep.task, nbytes)]));
                        continue;
                    }
                    if let Some(f) = self.fetching.get_mut(&dep.task) {
                        f.keep = true;
                        continue;
                    }
                    let mut holders = dep.holders;
                    if holders.is_empty() {
                        continue;
                    }
                    let first = holders.remove(0);
                    self.fetching.insert(
                        dep.task,
                        Fetch {
                            holders,
                            waiters: Vec::new(),
                            keep: true,
                        },
                    );
                    self.fetch_queue
                        .entry(first)
                        .or_default()
                        .push((dep.task, dep.nbytes));
                }
                self.flush_fetches();
            }
            ToWorker::HeartbeatAck => {}
            ToWorker::Registered { .. } | ToWorker::Refused(_) => {
                debug!(
                    "worker {}: ignoring a repeated registration answer",
                    self.id
                );
            }
            ToWorker::Close => {}
        }
    }

    /// A job ready to run now, or `None` when inputs must be fetched first (or are missing).
    fn prepare(&mut self, msg: ComputeTaskMsg) -> Option<Job> {
        let mut missing = 0;
        // Inputs in memory, held for the task if it has to wait for others (so that a spill
        // meanwhile does not make `job` read them from disk on the event loop).
        let mut local = Vec::new();
        for dep in &msg.deps {
            if self.fetched.contains_key(&dep.task) {
                continue;
            }
            if let Some(f) = self.fetching.get_mut(&dep.task) {
                // Being fetched from a peer, or read back from this worker's disk.
                f.waiters.push(msg.task);
                missing += 1;
                continue;
            }
            match self.store.lookup(dep.task) {
                Lookup::Memory(value) => {
                    local.push((dep.task, value));
                    continue;
                }
                Lookup::Disk => {
                    // Spilled: read back off the event loop, like a fetch from a peer.
                    missing += 1;
                    self.fetching.insert(
                        dep.task,
                        Fetch {
                            holders: Vec::new(),
                            waiters: vec![msg.task],
                            keep: false,
                        },
                    );
                    self.start_unspill(dep.task);
                    continue;
                }
                Lookup::Absent => {}
            }
            if dep.holders.is_empty() {
                self.erred.push(TaskErredMsg {
                    task: msg.task,
                    error: TaskErrorMsg {
                        kind: ErrorKindMsg::MissingInput,
                        message: format!(
                            "input {} of '{}' is not on this worker and no holder was named",
                            dep.task, msg.key
                        ),
                    },
                    duration_us: 0,
                    started_us: 0,
                    thread: None,
                });
                return None;
            }
            missing += 1;
            let mut holders = dep.holders.clone();
            let first = holders.remove(0);
            self.fetching.insert(
                dep.task,
                Fetch {
                    holders,
                    waiters: vec![msg.task],
                    keep: false,
                },
            );
            self.fetch_queue
                .entry(first)
                .or_default()
                .push((dep.task, dep.nbytes));
        }
        if missing > 0 {
            for (task, value) in local {
                self.fetched.entry(task).or_insert((value, 0));
            }
        }
        for dep in &msg.deps {
            if let Some((_, refs)) = self.fetched.get_mut(&dep.task) {
                *refs += 1;
            }
        }
        if missing > 0 {
            self.waiting.insert(msg.task, Waiting { msg, missing });
            return None;
        }
        self.job(msg)
    }

    fn job(&mut self, msg: ComputeTaskMsg) -> Option<Job> {
        let vanished = msg.deps.iter().find(|d| {
            !self.fetched.contains_key(&d.task)
                && matches!(self.store.lookup(d.task), Lookup::Absent)
        });
        if let Some(dep) = vanished {
            // Never run a task on made-up input: say the input is missing, and the scheduler
            // refetches or recomputes it.
            warn!(
                "input {} of '{}' vanished before the task started",
                dep.task, msg.key
            );
            let missing = vec![dep.task];
            for d in &msg.deps {
                self.release_fetched(d.task);
            }
            self.outgoing.push(FromWorker::MissingData {
                task: msg.task,
                missing,
            });
            return None;
        }
        let mut inputs = Vec::with_capacity(msg.deps.len());
        for dep in &msg.deps {
            let value = match self.fetched.get_mut(&dep.task) {
                Some((bytes, refs)) => {
                    let v = bytes.clone();
                    *refs -= 1;
                    if *refs == 0 {
                        self.fetched.remove(&dep.task);
                    }
                    v
                }
                // Checked above: in memory or on disk.
                None => self.store.get(dep.task).unwrap_or_default(),
            };
            inputs.push(value);
        }
        self.reporter.running().insert(msg.task);
        Some(Job {
            task: msg.task,
            key: msg.key,
            kind: msg.kind,
            inputs,
        })
    }

    /// Read a spilled input back from this worker's disk on a blocking thread; the value
    /// arrives like a fetched one.
    fn start_unspill(&self, task: TaskId) {
        let store = self.store.clone();
        let tx = self.fetch_tx.clone();
        tokio::task::spawn_blocking(move || {
            let value = store.get(task);
            let _ = tx.send(Fetched {
                from: "this worker's spill directory".into(),
                asked: vec![task],
                result: Ok(vec![(task, value)]),
            });
        });
    }

    /// Send the fetches queued by a batch: one request per holder (of at most
    /// [`MAX_FETCH_BATCH`] values and about [`MAX_FETCH_BYTES`]), not one per input — a task
    /// with 100 inputs on one peer costs one round trip, not 100.
    fn flush_fetches(&mut self) {
        let queue = std::mem::take(&mut self.fetch_queue);
        for (holder, deps) in queue {
            let mut batch = Vec::new();
            let mut bytes = 0u64;
            for (task, nbytes) in deps {
                if !batch.is_empty()
                    && (batch.len() == MAX_FETCH_BATCH || bytes + nbytes > MAX_FETCH_BYTES)
                {
                    self.start_fetch(holder.clone(), std::mem::take(&mut batch));
                    bytes = 0;
                }
                batch.push(task);
                bytes += nbytes;
            }
            if !batch.is_empty() {
                self.start_fetch(holder, batch);
            }
        }
    }

    fn start_fetch(&self, from: String, tasks: Vec<TaskId>) {
        let peers = self.peers.clone();
        let tx = self.fetch_tx.clone();
        tokio::spawn(async move {
            let result = peers.get(&from, tasks.clone()).await;
            let _ = tx.send(Fetched {
                from,
                asked: tasks,
                result,
            });
        });
    }

    fn fetched(&mut self, f: Fetched) {
        let values = match f.result {
            Ok(v) => v,
            Err(e) => {
                debug!("fetch from {} failed: {e}", f.from);
                return self.retry_or_give_up(&f.asked, &e);
            }
        };
        let mut ready = Vec::new();
        for (dep, value) in values {
            match value {
                Some(bytes) => {
                    let Some(fetch) = self.fetching.remove(&dep) else {
                        continue;
                    };
                    if fetch.keep {
                        // A replica: stored like a result, so waiters read it from the store.
                        self.outgoing
                            .push(FromWorker::DataAdded(vec![(dep, bytes.len() as u64)]));
                        self.store.insert(dep, bytes);
                    } else {
                        self.fetched.insert(dep, (bytes, fetch.waiters.len()));
                    }
                    for waiter in fetch.waiters {
                        if let Some(w) = self.waiting.get_mut(&waiter) {
                            w.missing -= 1;
                            if w.missing == 0 {
                                ready.push(waiter);
                            }
                        } else if !fetch.keep {
                            self.release_fetched(dep);
                        }
                    }
                }
                None => self.retry_or_give_up(&[dep], &format!("{} does not hold it", f.from)),
            }
        }
        let mut jobs = Vec::with_capacity(ready.len());
        for t in ready {
            if let Some(w) = self.waiting.remove(&t) {
                jobs.extend(self.job(w.msg));
            }
        }
        self.executor.submit_all(jobs);
    }

    /// Forget a task that waits for inputs, releasing the inputs it already holds.
    fn drop_waiting(&mut self, task: TaskId) -> bool {
        let Some(w) = self.waiting.remove(&task) else {
            return false;
        };
        self.forget_waiter(&w.msg, None);
        true
    }

    /// A waiting task is gone: release the inputs it holds and take it off the fetches it
    /// waits for (all but `except`). Without the latter, the task sent here again would be a
    /// waiter twice, and the first arrival would count for both.
    fn forget_waiter(&mut self, msg: &ComputeTaskMsg, except: Option<TaskId>) {
        for d in &msg.deps {
            if Some(d.task) == except {
                continue;
            }
            self.release_fetched(d.task);
            if let Some(f) = self.fetching.get_mut(&d.task) {
                f.waiters.retain(|&x| x != msg.task);
            }
        }
    }

    fn release_fetched(&mut self, dep: TaskId) {
        if let Some((_, refs)) = self.fetched.get_mut(&dep) {
            *refs = refs.saturating_sub(1);
            if *refs == 0 {
                self.fetched.remove(&dep);
            }
        }
    }

    /// Fetching `deps` from one holder failed: try each from its next holder, or report the
    /// tasks waiting for it as missing data so the scheduler can recompute it.
    fn retry_or_give_up(&mut self, deps: &[TaskId], reason: &str) {
        for &dep in deps {
            self.retry_or_give_up_one(dep, reason);
        }
    }

    fn retry_or_give_up_one(&mut self, dep: TaskId, reason: &str) {
        let Some(fetch) = self.fetching.get_mut(&dep) else {
            return;
        };
        if !fetch.holders.is_empty() {
            let next = fetch.holders.remove(0);
            self.start_fetch(next, vec![dep]);
            return;
        }
        let fetch = self.fetching.remove(&dep).expect("fetch entry");
        debug!("input {dep} could not be fetched: {reason}");
        for waiter in fetch.waiters {
            if let Some(w) = self.waiting.remove(&waiter) {
                self.forget_waiter(&w.msg, Some(dep));
                let msg = FromWorker::MissingData {
                    task: waiter,
                    missing: vec![dep],
                };
                self.outgoing.push(msg);
            }
        }
    }

    fn finish(&mut self, outcome: JobOutcome) {
        if !self.reporter.running().remove(&outcome.task) {
            // Freed or stolen while it ran: the scheduler no longer wants it.
            return;
        }
        match outcome.result {
            Ok(value) => {
                let nbytes = value.len() as u64;
                let inline = (value.len() <= MAX_INLINE_RESULT).then(|| value.to_vec());
                self.store.insert(outcome.task, value);
                self.counters
                    .tasks_finished
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.finished.push(TaskFinishedMsg {
                    task: outcome.task,
                    nbytes,
                    duration_us: outcome.duration.as_micros() as u64,
                    started_us: self.reporter.micros(outcome.started),
                    thread: outcome.thread,
                    inline,
                });
            }
            Err(e) => {
                self.counters
                    .tasks_erred
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.erred.push(TaskErredMsg {
                    task: outcome.task,
                    error: e,
                    duration_us: outcome.duration.as_micros() as u64,
                    started_us: self.reporter.micros(outcome.started),
                    thread: Some(outcome.thread),
                });
            }
        }
    }

    fn heartbeat(&self) -> FromWorker {
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        let metrics = WorkerMetricsMsg {
            managed: self.store.managed(),
            spilled: self.store.spilled(),
            rss: self.memory.rss(),
            executing: self.executor.executing() as u32,
            paused: *self.paused.borrow(),
            fetched_bytes: self.counters.fetched_bytes.load(relaxed),
            served_bytes: self.counters.served_bytes.load(relaxed),
            ..self.gpu_metrics()
        };
        self.published.send_replace(metrics.clone());
        FromWorker::Heartbeat(metrics)
    }

    fn gpu_metrics(&self) -> WorkerMetricsMsg {
        let Some(gpu) = &self.gpu else {
            return WorkerMetricsMsg::default();
        };
        let (used, total) = (gpu.probe)().unwrap_or((0, 0));
        WorkerMetricsMsg {
            gpu_memory_used: used,
            gpu_memory_total: total,
            gpu_memory_limit: gpu.limit,
            ..WorkerMetricsMsg::default()
        }
    }

    async fn flush(&mut self) -> Result<(), TransportError> {
        for msg in std::mem::take(&mut self.outgoing) {
            self.sender.send(Message::new(encode(&msg))).await?;
        }
        if !self.finished.is_empty() {
            let batch = std::mem::take(&mut self.finished);
            self.sender
                .send(Message::new(encode(&FromWorker::TasksFinished(batch))))
                .await?;
        }
        if !self.erred.is_empty() {
            let batch = std::mem::take(&mut self.erred);
            self.sender
                .send(Message::new(encode(&FromWorker::TasksErred(batch))))
                .await?;
        }
        Ok(())
    }
}
