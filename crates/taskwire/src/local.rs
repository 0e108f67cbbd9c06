//! `LocalCluster`: a scheduler and workers in this process, for tests, demos and single-node
//! users (Dask's `LocalCluster`, built from the same library objects a program can start itself).

use crate::cluster::{Cluster, ClusterError};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use taskwire_client::{Client, ClientError, ClusterSecret, Security};
use taskwire_scheduler::{Scheduler, SchedulerError, SchedulerHandle};
use taskwire_scheduler_core::CoreConfig;
use taskwire_transport::{Address, mem};
use taskwire_worker::{Registry as Functions, Worker, WorkerError, WorkerHandle};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a worker told to stop may take to end by itself before it is closed.
const RETIRED_GRACE: Duration = Duration::from_secs(10);
/// How long a worker process may take to register.
const PROCESS_START: Duration = Duration::from_secs(60);

/// Why a local cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    /// The scheduler did not start.
    #[error("scheduler: {0}")]
    Scheduler(#[from] SchedulerError),
    /// A worker did not start.
    #[error("worker: {0}")]
    Worker(#[from] WorkerError),
    /// A worker process did not start, or these options cannot go together.
    #[error("worker process: {0}")]
    Process(String),
}

/// How the processes of a local cluster talk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalTransport {
    /// Through memory (`inproc://`): no sockets at all.
    Inproc,
    /// Over loopback TCP, exactly as separate machines would.
    Tcp,
}

/// Options for a [`LocalCluster`].
#[derive(Debug)]
pub struct LocalClusterBuilder {
    workers: usize,
    threads: usize,
    transport: LocalTransport,
    functions: Option<Functions>,
    resources: Vec<(String, f64)>,
    core: CoreConfig,
    secret: Option<ClusterSecret>,
    dashboard: Option<u16>,
    processes: Option<PathBuf>,
    security: Security,
}

impl LocalClusterBuilder {
    /// Run each worker as its own process, `BINARY worker ADDRESS --no-nanny ...`, where
    /// `BINARY` is a `taskwire` build (e.g. `std::env::current_exe()` in the `taskwire`
    /// binary). The workers then have that binary's functions; needs TCP. Default: workers
    /// in this process.
    pub fn processes(mut self, binary: impl Into<PathBuf>) -> Self {
        self.processes = Some(binary.into());
        self
    }

    /// Serve the scheduler's dashboard, `/metrics` and JSON API on 127.0.0.1:`port` (0: a
    /// free port); off by default.
    pub fn dashboard(mut self, port: u16) -> Self {
        self.dashboard = Some(port);
        self
    }

    /// Scheduling policy (worker saturation, stealing, ...).
    pub fn core_config(mut self, core: CoreConfig) -> Self {
        self.core = core;
        self
    }

    /// Number of workers (default 2).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Threads per worker (default 1).
    pub fn threads_per_worker(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }

    /// In-memory or loopback TCP (default TCP).
    pub fn transport(mut self, t: LocalTransport) -> Self {
        self.transport = t;
        self
    }

    /// The functions workers can run (default: the stock set).
    pub fn functions(mut self, f: Functions) -> Self {
        self.functions = Some(f);
        self
    }

    /// Require this cluster token of every connection; the cluster's own workers and
    /// [`LocalCluster::client`] hold it.
    pub fn auth_token(mut self, secret: ClusterSecret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// TLS and encryption rules for the scheduler, the workers and [`LocalCluster::client`]
    /// (see [`Security`]); with TLS, the loopback transport is `tls://`.
    pub fn security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// A resource every worker offers, e.g. `("GPU", 1.0)`.
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        self.resources.push((name.to_string(), amount));
        self
    }

    /// Start the scheduler and the workers; returns once every worker is registered.
    pub async fn start(self) -> Result<LocalCluster, LocalClusterError> {
        if self.processes.is_some() {
            if self.transport == LocalTransport::Inproc {
                return Err(LocalClusterError::Process(
                    "worker processes need TCP, not the in-memory transport".into(),
                ));
            }
            if self.security.tls_config().is_some() || self.security.requires_encryption() {
                return Err(LocalClusterError::Process(
                    "worker processes do not take TLS settings from a local cluster yet: run \
                     the workers in this process, or start them with `taskwire worker \
                     --tls-ca-file ... --tls-cert ... --tls-key ...`"
                        .into(),
                ));
            }
            if self.functions.is_some() {
                return Err(LocalClusterError::Process(
                    "worker processes run their binary's functions: give a binary built with \
                     them, or run the workers in this process"
                        .into(),
                ));
            }
        }
        let address = match self.transport {
            LocalTransport::Inproc => mem::unique_address("scheduler"),
            LocalTransport::Tcp => Address::tcp("127.0.0.1", 0),
        };
        let mut scheduler = Scheduler::builder()
            .address(address)
            .core_config(self.core)
            .security(self.security.clone());
        if let Some(port) = self.dashboard {
            scheduler = scheduler.dashboard("127.0.0.1", port);
        }
        if let Some(s) = &self.secret {
            scheduler = scheduler.auth_token(s.clone());
        }
        let scheduler = scheduler.start().await?;
        let processes = match self.processes {
            Some(binary) => {
                let token = match &self.secret {
                    Some(s) => Some(TokenFile::write(s).map_err(LocalClusterError::Process)?),
                    None => None,
                };
                Some(Processes {
                    binary,
                    token,
                    children: Vec::new(),
                })
            }
            None => None,
        };
        let spec = WorkerSpec {
            threads: self.threads,
            functions: self.functions,
            resources: self.resources,
        };
        let mut cluster = LocalCluster {
            scheduler,
            workers: Vec::with_capacity(self.workers),
            spec,
            started: 0,
            secret: self.secret,
            processes,
            security: self.security,
        };
        for _ in 0..self.workers {
            cluster.start_worker().await?;
        }
        Ok(cluster)
    }
}

/// What every worker of a [`LocalCluster`] gets, kept for scaling up.
#[derive(Debug)]
struct WorkerSpec {
    threads: usize,
    functions: Option<Functions>,
    resources: Vec<(String, f64)>,
}

/// A scheduler and workers running in this process. Dropping it stops them.
#[derive(Debug)]
pub struct LocalCluster {
    scheduler: SchedulerHandle,
    workers: Vec<WorkerHandle>,
    spec: WorkerSpec,
    /// Workers started so far (names are never reused).
    started: usize,
    secret: Option<ClusterSecret>,
    security: Security,
    /// Worker processes, when the workers run as processes (`workers` is empty then).
    processes: Option<Processes>,
}

/// The worker processes of a [`LocalCluster`] and what starting more takes.
#[derive(Debug)]
struct Processes {
    binary: PathBuf,
    /// The cluster token, for `--auth-token-file`.
    token: Option<TokenFile>,
    children: Vec<ProcessWorker>,
}

/// One `taskwire worker --no-nanny` child process (killed if the cluster is dropped).
#[derive(Debug)]
struct ProcessWorker {
    name: String,
    child: Child,
}

/// A mode-600 file holding the cluster token for worker processes; removed on drop.
#[derive(Debug)]
struct TokenFile(PathBuf);

impl TokenFile {
    fn write(secret: &ClusterSecret) -> Result<TokenFile, String> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("taskwire-local-{}-{n}.token", std::process::id()));
        secret
            .write_new_file(&path)
            .map_err(|e| format!("cannot write the token file {}: {e}", path.display()))?;
        Ok(TokenFile(path))
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Ask a process to stop with SIGTERM; past `grace`, kill it.
async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a pid we own (the child is not reaped until `wait` below).
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

impl LocalCluster {
    /// A builder: 2 workers × 1 thread over loopback TCP by default.
    pub fn builder() -> LocalClusterBuilder {
        LocalClusterBuilder {
            workers: 2,
            threads: 1,
            transport: LocalTransport::Tcp,
            functions: None,
            resources: Vec::new(),
            core: CoreConfig::default(),
            secret: None,
            dashboard: None,
            processes: None,
            security: Security::new(),
        }
    }

    /// The scheduler's address.
    pub fn scheduler_address(&self) -> &Address {
        self.scheduler.address()
    }

    /// The dashboard's URL, when it was asked for.
    pub fn dashboard_link(&self) -> Option<&str> {
        self.scheduler.dashboard_link()
    }

    /// The workers running in this process (none when they run as processes).
    pub fn workers(&self) -> &[WorkerHandle] {
        &self.workers
    }

    /// The names of all workers, oldest first.
    pub fn worker_names(&self) -> Vec<String> {
        match &self.processes {
            Some(p) => p.children.iter().map(|c| c.name.clone()).collect(),
            None => self.workers.iter().map(|w| w.name().to_string()).collect(),
        }
    }

    /// The worker processes' names and pids (empty when the workers run in this process).
    pub fn worker_pids(&self) -> Vec<(String, u32)> {
        self.processes
            .iter()
            .flat_map(|p| &p.children)
            .filter_map(|c| Some((c.name.clone(), c.child.id()?)))
            .collect()
    }

    /// A client connected to this cluster.
    pub async fn client(&self) -> Result<Client, ClientError> {
        let mut b =
            Client::builder(self.scheduler.address().clone()).security(self.security.clone());
        if let Some(s) = &self.secret {
            b = b.auth_token(s.clone());
        }
        b.connect().await
    }

    /// Start one more worker, named `local-worker-{i}` with `i` counting every worker this
    /// cluster started.
    async fn start_worker(&mut self) -> Result<(), LocalClusterError> {
        let name = format!("local-worker-{}", self.started);
        if let Some(p) = &mut self.processes {
            let child =
                start_process(p, &self.scheduler.address().to_string(), &name, &self.spec).await?;
            p.children.push(ProcessWorker { name, child });
            self.started += 1;
            return Ok(());
        }
        let mut b = Worker::builder(self.scheduler.address().clone())
            .nthreads(self.spec.threads)
            .name(name)
            .security(self.security.clone());
        if let Some(f) = &self.spec.functions {
            b = b.functions(f.clone());
        }
        for (r, a) in &self.spec.resources {
            b = b.resource(r.clone(), *a);
        }
        if let Some(s) = &self.secret {
            b = b.auth_token(s.clone());
        }
        self.workers.push(b.start().await?);
        self.started += 1;
        Ok(())
    }

    /// Start workers, or retire the newest ones gracefully (through the scheduler: their
    /// unique results move to the workers that stay, nothing is recomputed), until `n` run.
    pub async fn scale(&mut self, n: usize) -> Result<(), ClusterError> {
        while self.worker_names().len() < n {
            self.start_worker().await?;
        }
        let names = self.worker_names();
        if names.len() > n {
            let leaving = &names[n..];
            let refs: Vec<&str> = leaving.iter().map(String::as_str).collect();
            let client = self.client().await?;
            let retired = client.retire_workers(&refs).await;
            client.close().await;
            // Refused: nothing was retired, they are all still ours.
            retired?;
            self.stop_workers(leaving).await;
        }
        Ok(())
    }

    /// Stop the named workers (already retired through the scheduler, or to be stopped
    /// now) and forget them; names not in this cluster are ignored.
    pub async fn stop_workers(&mut self, names: &[String]) {
        let named = |n: &str| names.iter().any(|x| x == n);
        if let Some(p) = &mut self.processes {
            let (leaving, staying): (Vec<ProcessWorker>, _) = std::mem::take(&mut p.children)
                .into_iter()
                .partition(|c| named(&c.name));
            p.children = staying;
            for mut c in leaving {
                // A retired worker process exits by itself.
                if tokio::time::timeout(RETIRED_GRACE, c.child.wait())
                    .await
                    .is_err()
                {
                    terminate(&mut c.child, RETIRED_GRACE).await;
                }
            }
            return;
        }
        let (leaving, staying) = std::mem::take(&mut self.workers)
            .into_iter()
            .partition(|w| named(w.name()));
        self.workers = staying;
        for w in leaving {
            // A retired worker closes by itself; one that was not retired is closed here.
            if tokio::time::timeout(RETIRED_GRACE, w.finished())
                .await
                .is_err()
            {
                w.close().await;
            }
        }
    }

    /// Stop the workers, then the scheduler.
    pub async fn close(self) {
        for w in self.workers {
            w.close().await;
        }
        if let Some(mut p) = self.processes {
            for c in &mut p.children {
                terminate(&mut c.child, RETIRED_GRACE).await;
            }
        }
        self.scheduler.close().await;
    }
}

impl Cluster for LocalCluster {
    fn scheduler_address(&self) -> String {
        self.scheduler.address().to_string()
    }

    fn dashboard_link(&self) -> Option<String> {
        self.scheduler.dashboard_link().map(str::to_string)
    }

    fn workers(&self) -> Vec<String> {
        self.worker_names()
    }

    async fn scale(&mut self, n: usize) -> Result<(), ClusterError> {
        LocalCluster::scale(self, n).await
    }

    async fn stop_workers(&mut self, names: &[String]) -> Result<(), ClusterError> {
        LocalCluster::stop_workers(self, names).await;
        Ok(())
    }

    async fn client(&self) -> Result<Client, ClusterError> {
        Ok(LocalCluster::client(self).await?)
    }

    async fn close(self) -> Result<(), ClusterError> {
        LocalCluster::close(self).await;
        Ok(())
    }
}

/// Start `taskwire worker --no-nanny` for the scheduler at `address`; returns once it printed
/// that it registered.
async fn start_process(
    p: &Processes,
    address: &str,
    name: &str,
    spec: &WorkerSpec,
) -> Result<Child, LocalClusterError> {
    let err = |m: String| LocalClusterError::Process(format!("{name}: {m}"));
    let mut c = Command::new(&p.binary);
    c.arg("worker")
        .arg(address)
        .args(["--no-nanny", "--name", name, "--memory-limit", "0"])
        .arg("--nthreads")
        .arg(spec.threads.to_string());
    if !spec.resources.is_empty() {
        let r: Vec<String> = spec
            .resources
            .iter()
            .map(|(r, a)| format!("{r}={a}"))
            .collect();
        c.arg("--resources").arg(r.join(","));
    }
    if let Some(t) = &p.token {
        c.arg("--auth-token-file").arg(&t.0);
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = c
        .spawn()
        .map_err(|e| err(format!("cannot run {}: {e}", p.binary.display())))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let registered = tokio::time::timeout(PROCESS_START, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("Registered to:") {
                return true;
            }
        }
        false
    })
    .await;
    match registered {
        Ok(true) => {
            // Keep reading, so that the worker never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Ok(child)
        }
        Ok(false) => {
            let status = child
                .wait()
                .await
                .map(|s| s.to_string())
                .unwrap_or_default();
            Err(err(format!("exited before it registered ({status})")))
        }
        Err(_) => {
            let _ = child.kill().await;
            Err(err(format!("did not register within {PROCESS_START:?}")))
        }
    }
}
