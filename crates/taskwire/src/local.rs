//! `LocalCluster`: a scheduler and workers in this process, for tests, demos and single-node
//! users (Dask's `LocalCluster`, built from the same library objects a program can start itself).

use crate::cluster::{Cluster, ClusterError};
use taskwire_client::{Client, ClientError, ClusterSecret};
use taskwire_scheduler::{Scheduler, SchedulerError, SchedulerHandle};
use taskwire_scheduler_core::CoreConfig;
use taskwire_transport::{Address, mem};
use taskwire_worker::{Registry as Functions, Worker, WorkerError, WorkerHandle};

/// How long a worker told to stop may take to end by itself before it is closed.
const RETIRED_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a local cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    /// The scheduler did not start.
    #[error("scheduler: {0}")]
    Scheduler(#[from] SchedulerError),
    /// A worker did not start.
    #[error("worker: {0}")]
    Worker(#[from] WorkerError),
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
}

impl LocalClusterBuilder {
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

    /// A resource every worker offers, e.g. `("GPU", 1.0)`.
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        self.resources.push((name.to_string(), amount));
        self
    }

    /// Start the scheduler and the workers; returns once every worker is registered.
    pub async fn start(self) -> Result<LocalCluster, LocalClusterError> {
        let address = match self.transport {
            LocalTransport::Inproc => mem::unique_address("scheduler"),
            LocalTransport::Tcp => Address::tcp("127.0.0.1", 0),
        };
        let mut scheduler = Scheduler::builder().address(address).core_config(self.core);
        if let Some(port) = self.dashboard {
            scheduler = scheduler.dashboard("127.0.0.1", port);
        }
        if let Some(s) = &self.secret {
            scheduler = scheduler.auth_token(s.clone());
        }
        let scheduler = scheduler.start().await?;
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

    /// The workers.
    pub fn workers(&self) -> &[WorkerHandle] {
        &self.workers
    }

    /// A client connected to this cluster.
    pub async fn client(&self) -> Result<Client, ClientError> {
        let mut b = Client::builder(self.scheduler.address().clone());
        if let Some(s) = &self.secret {
            b = b.auth_token(s.clone());
        }
        b.connect().await
    }

    /// Start one more worker, named `local-worker-{i}` with `i` counting every worker this
    /// cluster started.
    async fn start_worker(&mut self) -> Result<(), LocalClusterError> {
        let mut b = Worker::builder(self.scheduler.address().clone())
            .nthreads(self.spec.threads)
            .name(format!("local-worker-{}", self.started));
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
        while self.workers.len() < n {
            self.start_worker().await?;
        }
        if self.workers.len() > n {
            let leaving = self.workers.split_off(n);
            let names: Vec<&str> = leaving.iter().map(|w| w.name()).collect();
            let client = self.client().await?;
            let retired = client.retire_workers(&names).await;
            client.close().await;
            if let Err(e) = retired {
                // Nothing was retired: they are still ours.
                self.workers.extend(leaving);
                return Err(e.into());
            }
            for w in leaving {
                w.finished().await;
            }
        }
        Ok(())
    }

    /// Stop the named workers (already retired through the scheduler, or to be stopped
    /// now) and forget them; names not in this cluster are ignored.
    pub async fn stop_workers(&mut self, names: &[String]) {
        let (leaving, staying) = std::mem::take(&mut self.workers)
            .into_iter()
            .partition(|w| names.iter().any(|n| n == w.name()));
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
        self.workers.iter().map(|w| w.name().to_string()).collect()
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
