//! Batch-system cluster managers (Dask-jobqueue's `SLURMCluster` and `PBSCluster`): workers
//! run as batch jobs, one `taskwire worker` per job, submitted with `sbatch`/`qsub`, tracked
//! with `squeue`/`qstat` and cancelled with `scancel`/`qdel`.
//!
//! [`JobQueueCluster::slurm`] and [`JobQueueCluster::pbs`] give a [`JobQueueBuilder`]; the two
//! systems share everything but the script header and the commands. The scheduler runs in this
//! process (or is one already running, given by address or scheduler file), and the workers
//! reach it from the compute nodes.
//!
//! A job's worker is named `{job name}-{job id}` (e.g. `taskwire-worker-4242`), so a worker the
//! scheduler wants gone maps to the job to cancel ([`JobQueueCluster::job_of_worker`],
//! [`JobQueueCluster::stop_worker`]). Each worker retires a margin before the walltime and its
//! job ends by itself (see [`JobQueueBuilder::lifetime_margin`]).
//!
//! Scaling counts jobs. Unlike the other managers, [`Cluster::scale`] resolves once the new
//! jobs are submitted, not once their workers registered: a job may wait in the queue for
//! hours. [`JobQueueCluster::wait_for_workers`] waits for registrations.

mod script;
mod system;

use crate::cluster::{Cluster, ClusterError};
use script::{JobSpec, SchedulerTarget};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;
use taskwire_client::Client;
use taskwire_scheduler::{Scheduler, SchedulerHandle};
use taskwire_transport::Address;
use tokio::time::Instant;

pub use system::{BatchSystem, JobState};

/// How often job states are polled while waiting for jobs to end.
const POLL: Duration = Duration::from_millis(500);

/// Where the scheduler comes from.
#[derive(Debug, Clone)]
enum SchedulerChoice {
    /// Start one in this process.
    Start {
        host: String,
        port: u16,
        dashboard_port: Option<u16>,
    },
    /// Use a running one at this address.
    Address(String),
    /// Use the running one whose scheduler file this is (on a shared filesystem).
    File(PathBuf),
}

/// Options for a [`JobQueueCluster`].
#[derive(Debug, Clone)]
pub struct JobQueueBuilder {
    spec: JobSpec,
    scheduler: SchedulerChoice,
    env: Vec<(String, String)>,
    jobs: usize,
    stop_timeout: Duration,
}

impl JobQueueBuilder {
    /// Cores per job, which is the worker's `--nthreads` (default 1).
    pub fn cores(mut self, n: usize) -> Self {
        self.spec.cores = n.max(1);
        self
    }

    /// Memory per job in bytes, which is the worker's `--memory-limit` (default 1 GiB).
    pub fn memory(mut self, bytes: u64) -> Self {
        self.spec.memory = bytes.max(1);
        self
    }

    /// The jobs' walltime (default 1 hour; rounded down to whole seconds).
    pub fn walltime(mut self, t: Duration) -> Self {
        self.spec.walltime = Duration::from_secs(t.as_secs().max(1));
        self
    }

    /// The queue (Slurm partition) to submit to.
    pub fn queue(mut self, q: impl Into<String>) -> Self {
        self.spec.queue = Some(q.into());
        self
    }

    /// The account (project) to charge.
    pub fn account(mut self, a: impl Into<String>) -> Self {
        self.spec.account = Some(a.into());
        self
    }

    /// One more header directive, e.g. `--exclusive` (Slurm) or `-l place=excl` (PBS); the
    /// `#SBATCH`/`#PBS` prefix is added unless the line starts with `#`. Repeatable.
    pub fn job_extra(mut self, line: impl Into<String>) -> Self {
        self.spec.job_extra.push(line.into());
        self
    }

    /// A shell line run in the job before the worker starts (`module load ...`). Repeatable.
    pub fn prologue(mut self, line: impl Into<String>) -> Self {
        self.spec.prologue.push(line.into());
        self
    }

    /// The jobs' name, which prefixes the worker names (default `taskwire-worker`).
    pub fn job_name(mut self, name: impl Into<String>) -> Self {
        self.spec.job_name = name.into();
        self
    }

    /// Where the jobs' output goes (default: the batch system's default, e.g. Slurm's
    /// `slurm-ID.out` in the submit directory).
    pub fn log_directory(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spec.log_directory = Some(dir.into());
        self
    }

    /// The workers' `--local-directory` (node-local scratch); shell variables such as
    /// `$TMPDIR` are expanded in the job.
    pub fn local_directory(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spec.local_directory = Some(dir.into());
        self
    }

    /// The `taskwire` binary the jobs run (default: this process's binary, which suits a
    /// filesystem shared with the compute nodes).
    pub fn taskwire_program(mut self, path: impl Into<String>) -> Self {
        self.spec.taskwire = path.into();
        self
    }

    /// How long before the walltime each worker retires, handing its results to the workers
    /// that stay, so that its job ends before the batch system kills it (default 5 minutes,
    /// at most 90% of the walltime; workers leave within a quarter of it either way).
    pub fn lifetime_margin(mut self, margin: Duration) -> Self {
        self.spec.lifetime_margin = margin;
        self
    }

    /// One more `taskwire worker` argument for every job, e.g. `--resources`, `GPU=1`.
    pub fn worker_arg(mut self, arg: impl Into<String>) -> Self {
        self.spec.worker_extra.push(arg.into());
        self
    }

    /// Use the scheduler running at `address` instead of starting one.
    pub fn scheduler_address(mut self, address: impl Into<String>) -> Self {
        self.scheduler = SchedulerChoice::Address(address.into());
        self
    }

    /// Use the running scheduler whose scheduler file this is; the jobs' workers read the
    /// same file, so it must be on a filesystem the compute nodes share.
    pub fn scheduler_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.scheduler = SchedulerChoice::File(path.into());
        self
    }

    /// Start the scheduler here, listening on `host` and `port` (default `0.0.0.0:8786`; port
    /// 0: a free one). Workers get the address of this host's name.
    pub fn scheduler_listen(mut self, host: impl Into<String>, port: u16) -> Self {
        let dashboard_port = match &self.scheduler {
            SchedulerChoice::Start { dashboard_port, .. } => *dashboard_port,
            _ => Some(taskwire_scheduler::DEFAULT_DASHBOARD_PORT),
        };
        self.scheduler = SchedulerChoice::Start {
            host: host.into(),
            port,
            dashboard_port,
        };
        self
    }

    /// The dashboard's port for a scheduler started here (default 8787; 0: a free one;
    /// `None`: no dashboard).
    pub fn dashboard_port(mut self, port: Option<u16>) -> Self {
        if let SchedulerChoice::Start { dashboard_port, .. } = &mut self.scheduler {
            *dashboard_port = port;
        }
        self
    }

    /// An environment variable for the batch commands (e.g. `SLURM_CONF` to reach another
    /// Slurm cluster from this host).
    pub fn command_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Jobs to submit at start (default 0; [`Cluster::scale`] submits more).
    pub fn jobs(mut self, n: usize) -> Self {
        self.jobs = n;
        self
    }

    /// How long a worker being stopped may take to retire and its job to end before the job
    /// is cancelled (default 60 s).
    pub fn stop_timeout(mut self, t: Duration) -> Self {
        self.stop_timeout = t;
        self
    }

    /// The job script as it would be submitted (for `--dry-run`). With a scheduler to be
    /// started here, the address is the one it would get; the job id is the system's
    /// variable, expanded in the job.
    pub fn job_script(&self) -> String {
        let mut spec = self.spec.clone();
        spec.scheduler = match &self.scheduler {
            SchedulerChoice::Start { host, port, .. } => {
                let a = taskwire_transport_tcp::contact_address(&Address::tcp(host.clone(), *port));
                SchedulerTarget::Address(a.to_string())
            }
            SchedulerChoice::Address(a) => SchedulerTarget::Address(a.clone()),
            SchedulerChoice::File(f) => SchedulerTarget::File(f.clone()),
        };
        spec.script()
    }

    /// Start (or find) the scheduler and submit the initial jobs. On a failure, what was
    /// already started is stopped and submitted jobs are cancelled.
    pub async fn start(self) -> Result<JobQueueCluster, ClusterError> {
        let mut spec = self.spec;
        let (scheduler, address, dashboard) = match &self.scheduler {
            SchedulerChoice::Start {
                host,
                port,
                dashboard_port,
            } => {
                let mut b = Scheduler::builder().address(Address::tcp(host.clone(), *port));
                if let Some(p) = dashboard_port {
                    b = b.dashboard(host, *p);
                }
                let s = b.start().await.map_err(|e| ClusterError::Batch {
                    command: "taskwire scheduler".into(),
                    message: e.to_string(),
                })?;
                let address = s.address().to_string();
                let dashboard = s.dashboard_link().map(str::to_string);
                spec.scheduler = SchedulerTarget::Address(address.clone());
                (Some(s), address, dashboard)
            }
            SchedulerChoice::Address(a) => {
                spec.scheduler = SchedulerTarget::Address(a.clone());
                (None, a.clone(), None)
            }
            SchedulerChoice::File(f) => {
                let a = crate::read_scheduler_file(f).map_err(|message| ClusterError::Batch {
                    command: "taskwire jobqueue".into(),
                    message,
                })?;
                spec.scheduler = SchedulerTarget::File(f.clone());
                (None, a.address.to_string(), None)
            }
        };
        let mut cluster = JobQueueCluster {
            spec,
            env: self.env,
            scheduler,
            address,
            dashboard,
            jobs: Vec::new(),
            stop_timeout: self.stop_timeout,
        };
        if let Err(e) = cluster.scale(self.jobs).await {
            let _ = cluster.close().await;
            return Err(e);
        }
        Ok(cluster)
    }
}

/// One job of a [`JobQueueCluster`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The batch system's job id (`4242`, `4242.pbs-server`).
    pub id: String,
    /// The name its worker registers with.
    pub worker: String,
    /// Its state at the last look.
    pub state: JobState,
}

/// Workers as batch jobs on Slurm or PBS. Dropping it cancels its jobs (blocking, best
/// effort) and stops a scheduler it started; [`close`](Self::close) does that and waits until
/// the jobs have left the queue.
#[derive(Debug)]
pub struct JobQueueCluster {
    spec: JobSpec,
    env: Vec<(String, String)>,
    scheduler: Option<SchedulerHandle>,
    address: String,
    dashboard: Option<String>,
    /// In submission order.
    jobs: Vec<Job>,
    stop_timeout: Duration,
}

impl JobQueueCluster {
    /// A builder for `system`.
    pub fn builder(system: BatchSystem) -> JobQueueBuilder {
        JobQueueBuilder {
            spec: JobSpec {
                system,
                job_name: "taskwire-worker".into(),
                cores: 1,
                memory: 1 << 30,
                walltime: Duration::from_secs(3600),
                queue: None,
                account: None,
                job_extra: Vec::new(),
                prologue: Vec::new(),
                log_directory: None,
                local_directory: None,
                taskwire: std::env::current_exe()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "taskwire".into()),
                scheduler: SchedulerTarget::Address(String::new()),
                lifetime_margin: Duration::from_secs(300),
                worker_extra: Vec::new(),
            },
            scheduler: SchedulerChoice::Start {
                host: "0.0.0.0".into(),
                port: taskwire_scheduler::DEFAULT_PORT,
                dashboard_port: Some(taskwire_scheduler::DEFAULT_DASHBOARD_PORT),
            },
            env: Vec::new(),
            jobs: 0,
            stop_timeout: Duration::from_secs(60),
        }
    }

    /// Dask-jobqueue's `SLURMCluster`: a builder for Slurm.
    pub fn slurm() -> JobQueueBuilder {
        Self::builder(BatchSystem::Slurm)
    }

    /// Dask-jobqueue's `PBSCluster`: a builder for PBS.
    pub fn pbs() -> JobQueueBuilder {
        Self::builder(BatchSystem::Pbs)
    }

    /// The batch system.
    pub fn system(&self) -> BatchSystem {
        self.spec.system
    }

    /// The script every job runs.
    pub fn job_script(&self) -> String {
        self.spec.script()
    }

    /// The jobs this manager has submitted and not seen end, oldest first.
    pub fn jobs(&self) -> &[Job] {
        &self.jobs
    }

    /// The job running the worker named `worker`.
    pub fn job_of_worker(&self, worker: &str) -> Option<&str> {
        self.jobs
            .iter()
            .find(|j| j.worker == worker)
            .map(|j| j.id.as_str())
    }

    /// Ask the batch system about every job; jobs that have ended are dropped from
    /// [`jobs`](Self::jobs) and returned.
    pub async fn refresh(&mut self) -> Result<Vec<Job>, ClusterError> {
        let ids: Vec<String> = self.jobs.iter().map(|j| j.id.clone()).collect();
        let states = self.spec.system.states(&self.env, &ids).await?;
        for (job, state) in self.jobs.iter_mut().zip(states) {
            job.state = state;
        }
        let (ended, live): (Vec<Job>, Vec<Job>) = std::mem::take(&mut self.jobs)
            .into_iter()
            .partition(|j| j.state == JobState::Finished);
        self.jobs = live;
        Ok(ended)
    }

    /// Submit `n` more jobs; their ids.
    pub async fn submit_jobs(&mut self, n: usize) -> Result<Vec<String>, ClusterError> {
        let script = self.spec.script();
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.spec.system.submit(&self.env, &script).await?;
            self.jobs.push(Job {
                worker: self.spec.worker_name(&id),
                id: id.clone(),
                state: JobState::Pending,
            });
            ids.push(id);
        }
        Ok(ids)
    }

    /// Cancel jobs by id (`scancel`/`qdel`) and wait until they have left the queue.
    pub async fn cancel_jobs(&mut self, ids: &[String]) -> Result<(), ClusterError> {
        self.spec.system.cancel(&self.env, ids).await?;
        self.wait_gone(ids, self.stop_timeout + Duration::from_secs(60))
            .await
    }

    /// Stop the worker named `worker` and end its job: a running worker retires through the
    /// scheduler (its unique results move to other workers) and its job ends by itself; a
    /// job still queued, or one whose worker has not registered or does not leave within the
    /// stop timeout, is cancelled.
    pub async fn stop_worker(&mut self, worker: &str) -> Result<(), ClusterError> {
        let Some(id) = self.job_of_worker(worker).map(str::to_string) else {
            return Err(ClusterError::Scale {
                requested: self.jobs.len().saturating_sub(1),
                reason: format!("no job of this cluster runs a worker named '{worker}'"),
            });
        };
        self.stop_jobs(&[id]).await
    }

    /// Stop the jobs `ids` as [`stop_worker`](Self::stop_worker) does.
    async fn stop_jobs(&mut self, ids: &[String]) -> Result<(), ClusterError> {
        self.refresh().await?;
        let leaving: Vec<Job> = self
            .jobs
            .iter()
            .filter(|j| ids.contains(&j.id))
            .cloned()
            .collect();
        let registered: BTreeSet<String> = if leaving.iter().any(|j| j.state == JobState::Running) {
            self.registered().await?
        } else {
            BTreeSet::new()
        };
        let (retiring, cancelling): (Vec<Job>, Vec<Job>) = leaving
            .into_iter()
            .partition(|j| j.state == JobState::Running && registered.contains(&j.worker));
        let mut cancel: Vec<String> = cancelling.into_iter().map(|j| j.id).collect();
        if !retiring.is_empty() {
            let names: Vec<&str> = retiring.iter().map(|j| j.worker.as_str()).collect();
            let client = Client::connect(&self.address).await?;
            let retired =
                tokio::time::timeout(self.stop_timeout, client.retire_workers(&names)).await;
            client.close().await;
            let ids: Vec<String> = retiring.iter().map(|j| j.id.clone()).collect();
            match retired {
                // The workers are gone; their nannies and jobs end by themselves.
                Ok(Ok(_)) => {
                    if self.wait_gone(&ids, self.stop_timeout).await.is_err() {
                        cancel.extend(ids);
                    }
                }
                // Refused (e.g. no worker would be left for their results) or too slow:
                // the jobs are cancelled, and what only they held is recomputed.
                Ok(Err(e)) => {
                    tracing::warn!("retiring {names:?} failed ({e}); cancelling their jobs");
                    cancel.extend(ids);
                }
                Err(_) => cancel.extend(ids),
            }
        }
        if !cancel.is_empty() {
            self.cancel_jobs(&cancel).await?;
        }
        self.jobs.retain(|j| !ids.contains(&j.id));
        Ok(())
    }

    /// Names of the workers registered with the scheduler.
    async fn registered(&self) -> Result<BTreeSet<String>, ClusterError> {
        let client = Client::connect(&self.address).await?;
        let ws = client.workers().await;
        client.close().await;
        Ok(ws?.into_iter().map(|w| w.name).collect())
    }

    /// Wait until `n` workers of this cluster's jobs are registered, at most `timeout`.
    pub async fn wait_for_workers(&self, n: usize, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        let client = Client::connect(&self.address).await?;
        let mine: BTreeSet<&str> = self.jobs.iter().map(|j| j.worker.as_str()).collect();
        let result = loop {
            let ws = match client.workers().await {
                Ok(ws) => ws,
                Err(e) => break Err(e.into()),
            };
            let up = ws.iter().filter(|w| mine.contains(w.name.as_str())).count();
            if up >= n {
                break Ok(());
            }
            if Instant::now() >= deadline {
                break Err(ClusterError::Scale {
                    requested: n,
                    reason: format!(
                        "only {up} of the jobs' workers registered within {timeout:?} (jobs \
                         queued, or failing: see their output)"
                    ),
                });
            }
            tokio::time::sleep(POLL).await;
        };
        client.close().await;
        result
    }

    /// Poll until none of `ids` is in the queue, at most `bound`.
    async fn wait_gone(&self, ids: &[String], bound: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + bound;
        loop {
            let states = self.spec.system.states(&self.env, ids).await?;
            let left: Vec<&String> = ids
                .iter()
                .zip(&states)
                .filter(|(_, s)| **s != JobState::Finished)
                .map(|(id, _)| id)
                .collect();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Batch {
                    command: self.spec.system.name().into(),
                    message: format!("jobs {left:?} are still in the queue after {bound:?}"),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Submit jobs or stop them until `n` are queued or running. Scaling up resolves once the
    /// jobs are submitted; scaling down stops queued jobs first (newest first), then running
    /// ones, whose workers retire gracefully.
    pub async fn scale(&mut self, n: usize) -> Result<(), ClusterError> {
        self.refresh().await?;
        let have = self.jobs.len();
        if n > have {
            self.submit_jobs(n - have).await?;
        } else if n < have {
            let mut order: Vec<&Job> = self.jobs.iter().rev().collect();
            // Queued jobs leave first: nothing is lost and no worker has to move data.
            order.sort_by_key(|j| j.state != JobState::Pending);
            let ids: Vec<String> = order
                .into_iter()
                .take(have - n)
                .map(|j| j.id.clone())
                .collect();
            self.stop_jobs(&ids).await?;
        }
        Ok(())
    }

    /// A client connected to the scheduler.
    pub async fn client(&self) -> Result<Client, ClusterError> {
        Ok(Client::connect(&self.address).await?)
    }

    /// Cancel every job, wait until they have left the queue, then stop a scheduler started
    /// here.
    pub async fn close(mut self) -> Result<(), ClusterError> {
        let ids: Vec<String> = self.jobs.iter().map(|j| j.id.clone()).collect();
        let cancelled = self.cancel_jobs(&ids).await;
        if cancelled.is_ok() {
            self.jobs.clear();
        }
        if let Some(s) = self.scheduler.take() {
            s.close().await;
        }
        cancelled
    }
}

impl Drop for JobQueueCluster {
    fn drop(&mut self) {
        let ids: Vec<String> = self.jobs.iter().map(|j| j.id.clone()).collect();
        self.spec.system.cancel_blocking(&self.env, &ids);
    }
}

impl Cluster for JobQueueCluster {
    fn scheduler_address(&self) -> String {
        self.address.clone()
    }

    fn dashboard_link(&self) -> Option<String> {
        self.dashboard.clone()
    }

    /// The worker names of the jobs queued or running (a queued job's worker is not
    /// registered yet).
    fn workers(&self) -> Vec<String> {
        self.jobs.iter().map(|j| j.worker.clone()).collect()
    }

    async fn scale(&mut self, n: usize) -> Result<(), ClusterError> {
        JobQueueCluster::scale(self, n).await
    }

    /// Retire-and-end the jobs of the named workers, as [`stop_worker`](Self::stop_worker)
    /// does; names of no job of this cluster are ignored.
    async fn stop_workers(&mut self, names: &[String]) -> Result<(), ClusterError> {
        let ids: Vec<String> = names
            .iter()
            .filter_map(|n| self.job_of_worker(n).map(str::to_string))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        self.stop_jobs(&ids).await
    }

    async fn client(&self) -> Result<Client, ClusterError> {
        JobQueueCluster::client(self).await
    }

    async fn close(self) -> Result<(), ClusterError> {
        JobQueueCluster::close(self).await
    }
}
