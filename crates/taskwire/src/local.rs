//! `LocalCluster`: a scheduler and workers in this process, for tests, demos and single-node
//! users (Dask's `LocalCluster`, built from the same library objects a program can start itself).

use crate::cluster::{Cluster, ClusterError};
use taskwire_client::{Client, ClientError, ClusterSecret, Security};
use taskwire_scheduler::{Scheduler, SchedulerError, SchedulerHandle};
use taskwire_scheduler_core::CoreConfig;
use taskwire_transport::{Address, mem};
use taskwire_worker::{Registry as Functions, Worker, WorkerError, WorkerHandle};

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
    security: Security,
}

impl LocalClusterBuilder {
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
        let address = match self.transport {
            LocalTransport::Inproc => mem::unique_address("scheduler"),
            LocalTransport::Tcp => Address::tcp("127.0.0.1", 0),
        };
        let mut scheduler = Scheduler::builder()
            .address(address)
            .core_config(self.core)
            .security(self.security.clone());
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
            security: Security::new(),
        }
    }

    /// The scheduler's address.
    pub fn scheduler_address(&self) -> &Address {
        self.scheduler.address()
    }

    /// The workers.
    pub fn workers(&self) -> &[WorkerHandle] {
        &self.workers
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
        let mut b = Worker::builder(self.scheduler.address().clone())
            .nthreads(self.spec.threads)
            .name(format!("local-worker-{}", self.started))
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

    async fn client(&self) -> Result<Client, ClusterError> {
        Ok(LocalCluster::client(self).await?)
    }

    async fn close(self) -> Result<(), ClusterError> {
        LocalCluster::close(self).await;
        Ok(())
    }
}
