//! `LocalCluster`: a scheduler and workers in this process, for tests, demos and single-node
//! users (Dask's `LocalCluster`, built from the same library objects a program can start itself).

use taskwire_client::{Client, ClientError, ClusterSecret};
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
        if let Some(s) = &self.secret {
            scheduler = scheduler.auth_token(s.clone());
        }
        let scheduler = scheduler.start().await?;
        let mut workers = Vec::with_capacity(self.workers);
        for i in 0..self.workers {
            let mut b = Worker::builder(scheduler.address().clone())
                .nthreads(self.threads)
                .name(format!("local-worker-{i}"));
            if let Some(f) = &self.functions {
                b = b.functions(f.clone());
            }
            for (r, a) in &self.resources {
                b = b.resource(r.clone(), *a);
            }
            if let Some(s) = &self.secret {
                b = b.auth_token(s.clone());
            }
            workers.push(b.start().await?);
        }
        Ok(LocalCluster {
            scheduler,
            workers,
            secret: self.secret,
        })
    }
}

/// A scheduler and workers running in this process. Dropping it stops them.
#[derive(Debug)]
pub struct LocalCluster {
    scheduler: SchedulerHandle,
    workers: Vec<WorkerHandle>,
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
        let mut b = Client::builder(self.scheduler.address().clone());
        if let Some(s) = &self.secret {
            b = b.auth_token(s.clone());
        }
        b.connect().await
    }

    /// Stop the workers, then the scheduler.
    pub async fn close(self) {
        for w in self.workers {
            w.close().await;
        }
        self.scheduler.close().await;
    }
}
