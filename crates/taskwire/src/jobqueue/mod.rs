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
//!
//! Adaptive scaling ([`Cluster::adapt`]) counts a queued job as a worker on its way, so the
//! loop does not submit more while earlier jobs wait in the queue. Closing a worker that has
//! not registered cancels its job only while it is still queued (Slurm checks that itself);
//! a job that has started is given [`JobQueueBuilder::startup_grace`] for its worker to
//! register, and then retires it like any other. Jobs that end by themselves (at the end of
//! their lifetime) are replaced; once
//! [`FAILED_JOBS_LIMIT`](JobQueueCluster::FAILED_JOBS_LIMIT) jobs in a row ended before their
//! worker registered, no more are submitted.
//!
//! With a cluster token ([`JobQueueBuilder::auth_token_file`]) the job script names the token
//! file, never the token: the file must be on a filesystem the compute nodes share, readable
//! by its owner only.

mod script;
mod system;

use crate::cluster::{Cluster, ClusterError};
use script::{JobSpec, SchedulerTarget};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;
use taskwire_client::{Client, ClusterSecret};
use taskwire_scheduler::{Scheduler, SchedulerHandle};
use taskwire_transport::{Address, Scheme};
use taskwire_transport_tcp::Security;
use tokio::time::Instant;

pub use system::{BatchSystem, JobState};

/// How often job states are polled while waiting for jobs to end.
const POLL: Duration = Duration::from_millis(500);

/// How often adaptive scaling asks the batch system about the jobs (it decides every second;
/// batch systems' administrators frown on a `squeue` a second).
const JOB_POLL: Duration = Duration::from_secs(5);

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
    startup_grace: Duration,
    auth_token_file: Option<PathBuf>,
    security: Security,
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

    /// How long a worker being stopped before it registered may take to register when its
    /// job has already started (default 30 s): it is then retired gracefully instead of
    /// having its job cancelled in the middle of registering. A job still queued is
    /// cancelled at once.
    pub fn startup_grace(mut self, t: Duration) -> Self {
        self.startup_grace = t;
        self
    }

    /// Use the cluster token in this file: a scheduler started here requires it (the file is
    /// created, mode 600, when it does not exist), the jobs' workers get `--auth-token-file`
    /// with this path, and this manager's clients prove it. The workers read the file on
    /// the compute nodes, so it must be on a filesystem they share (e.g. the home
    /// directory), readable by its owner only; the token itself never enters the job
    /// script. A relative path is made absolute.
    pub fn auth_token_file(mut self, path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        self.auth_token_file = Some(std::path::absolute(&path).unwrap_or(path));
        self
    }

    /// Transport security: with TLS, a scheduler started here listens on `tls://`, this
    /// manager's clients connect with the certificate, and the jobs' workers get
    /// `--tls-ca-file`, `--tls-cert` and `--tls-key` with the paths the configuration was
    /// loaded from (made absolute; the key never enters the job script), plus
    /// `--require-encryption` when it is required. The files must be on a filesystem the
    /// compute nodes share, the key readable by its owner only.
    pub fn security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// The scheme a scheduler started here listens on.
    fn scheme(&self) -> Scheme {
        if self.security.tls_config().is_some() {
            Scheme::Tls
        } else {
            Scheme::Tcp
        }
    }

    /// The job script as it would be submitted (for `--dry-run`). With a scheduler to be
    /// started here, the address is the one it would get; the job id is the system's
    /// variable, expanded in the job.
    pub fn job_script(&self) -> String {
        let mut spec = self.spec.clone();
        spec.auth_token_file = self.auth_token_file.clone();
        spec.set_security(&self.security);
        spec.scheduler = match &self.scheduler {
            SchedulerChoice::Start { host, port, .. } => {
                let a = taskwire_transport_tcp::contact_address(&Address::Net {
                    scheme: self.scheme(),
                    host: host.clone(),
                    port: *port,
                });
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
        let scheme = self.scheme();
        let mut spec = self.spec;
        spec.set_security(&self.security);
        let token_error = |message: String| ClusterError::Batch {
            command: "taskwire jobqueue".into(),
            message,
        };
        let secret = match (&self.auth_token_file, &self.scheduler) {
            (None, _) => None,
            (Some(f), SchedulerChoice::Start { .. }) => Some(
                ClusterSecret::read_or_create(f)
                    .map_err(|e| token_error(e.to_string()))?
                    .0,
            ),
            (Some(f), _) => {
                Some(ClusterSecret::read_file(f).map_err(|e| token_error(e.to_string()))?)
            }
        };
        spec.auth_token_file = self.auth_token_file.clone();
        let (scheduler, address, dashboard) = match &self.scheduler {
            SchedulerChoice::Start {
                host,
                port,
                dashboard_port,
            } => {
                let mut b = Scheduler::builder()
                    .address(Address::Net {
                        scheme,
                        host: host.clone(),
                        port: *port,
                    })
                    .security(self.security.clone());
                if let Some(p) = dashboard_port {
                    b = b.dashboard(host, *p);
                }
                if let Some(s) = &secret {
                    b = b.auth_token(s.clone());
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
            startup_grace: self.startup_grace,
            secret,
            security: self.security,
            registered_once: BTreeSet::new(),
            failed_in_row: 0,
            last_poll: None,
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

/// The names of the workers registered with the scheduler.
async fn names(client: &Client) -> Result<BTreeSet<String>, ClusterError> {
    Ok(client
        .workers()
        .await?
        .into_iter()
        .map(|w| w.name)
        .collect())
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
    startup_grace: Duration,
    secret: Option<ClusterSecret>,
    security: Security,
    /// Workers of live jobs seen registered (by [`Cluster::observe_workers`] or a stop).
    registered_once: BTreeSet<String>,
    /// Jobs that ended in a row before their worker was seen registered.
    failed_in_row: usize,
    /// When [`Cluster::observe_workers`] last asked the batch system.
    last_poll: Option<Instant>,
}

impl JobQueueCluster {
    /// Jobs that end in a row before their worker registered, after which
    /// [`scale`](Self::scale) submits no more (a broken script or an unreachable scheduler
    /// would otherwise be resubmitted forever).
    pub const FAILED_JOBS_LIMIT: usize = 3;

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
                auth_token_file: None,
                tls: None,
                require_encryption: false,
            },
            scheduler: SchedulerChoice::Start {
                host: "0.0.0.0".into(),
                port: taskwire_scheduler::DEFAULT_PORT,
                dashboard_port: Some(taskwire_scheduler::DEFAULT_DASHBOARD_PORT),
            },
            env: Vec::new(),
            jobs: 0,
            stop_timeout: Duration::from_secs(60),
            startup_grace: Duration::from_secs(30),
            auth_token_file: None,
            security: Security::new(),
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
        let queued: Vec<String> = self
            .jobs
            .iter()
            .filter(|j| ids.contains(&j.id) && j.state == JobState::Pending)
            .map(|j| j.id.clone())
            .collect();
        if !queued.is_empty() {
            // Only while still queued: a job that has just started joins the running ones.
            self.spec.system.cancel_pending(&self.env, &queued).await?;
            self.refresh().await?;
        }
        let leaving: Vec<Job> = self
            .jobs
            .iter()
            .filter(|j| ids.contains(&j.id))
            .cloned()
            .collect();
        let (running, other): (Vec<Job>, Vec<Job>) = leaving
            .into_iter()
            .partition(|j| j.state == JobState::Running);
        // Ending jobs are waited for; one still queued after a PBS `qdel` is cancelled again.
        let (ending, queued): (Vec<Job>, Vec<Job>) =
            other.into_iter().partition(|j| j.state == JobState::Ending);
        let mut cancel: Vec<String> = queued.into_iter().map(|j| j.id).collect();
        let mut gone: Vec<String> = ending.into_iter().map(|j| j.id).collect();
        if !running.is_empty() {
            let client = self.connect().await?;
            let mut registered = names(&client).await?;
            // A job that has started but whose worker never registered is given the grace
            // to register: cancelling it now could kill a worker in the middle of joining
            // (and of taking tasks).
            let deadline = Instant::now() + self.startup_grace;
            while running.iter().any(|j| self.starting(j, &registered)) && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
                registered = names(&client).await?;
            }
            let mut retire: Vec<Job> = Vec::new();
            for j in running {
                if registered.contains(&j.worker) {
                    self.registered_once.insert(j.worker.clone());
                    retire.push(j);
                } else if self.registered_once.contains(&j.worker) {
                    // Retired already (by adaptive scaling) or lost: its job is ending.
                    gone.push(j.id);
                } else {
                    tracing::warn!(
                        "job {}: its worker {} did not register within {:?}; cancelling it",
                        j.id,
                        j.worker,
                        self.startup_grace
                    );
                    cancel.push(j.id);
                }
            }
            if !retire.is_empty() {
                let names: Vec<&str> = retire.iter().map(|j| j.worker.as_str()).collect();
                let retired =
                    tokio::time::timeout(self.stop_timeout, client.retire_workers(&names)).await;
                let ids = retire.iter().map(|j| j.id.clone());
                match retired {
                    // The workers are gone; their nannies and jobs end by themselves.
                    Ok(Ok(_)) => gone.extend(ids),
                    // Refused (e.g. no worker would be left for their results) or too slow:
                    // the jobs are cancelled, and what only they held is recomputed.
                    Ok(Err(e)) => {
                        tracing::warn!("retiring {names:?} failed ({e}); cancelling their jobs");
                        cancel.extend(ids);
                    }
                    Err(_) => cancel.extend(ids),
                }
            }
            client.close().await;
        }
        if !gone.is_empty() && self.wait_gone(&gone, self.stop_timeout).await.is_err() {
            cancel.extend(gone);
        }
        if !cancel.is_empty() {
            self.cancel_jobs(&cancel).await?;
        }
        self.forget(ids);
        Ok(())
    }

    /// Whether `job`'s worker was never seen registered.
    fn starting(&self, job: &Job, registered: &BTreeSet<String>) -> bool {
        !registered.contains(&job.worker) && !self.registered_once.contains(&job.worker)
    }

    /// Drop the jobs `ids` from the account.
    fn forget(&mut self, ids: &[String]) {
        for j in self.jobs.iter().filter(|j| ids.contains(&j.id)) {
            self.registered_once.remove(&j.worker);
        }
        self.jobs.retain(|j| !ids.contains(&j.id));
    }

    /// A client of the scheduler, with the cluster token if there is one.
    async fn connect(&self) -> Result<Client, ClusterError> {
        let address = self
            .address
            .parse()
            .map_err(|e| ClusterError::Client(taskwire_client::ClientError::Address(e)))?;
        let mut b = Client::builder(address).security(self.security.clone());
        if let Some(s) = &self.secret {
            b = b.auth_token(s.clone());
        }
        Ok(b.connect().await?)
    }

    /// Take note of the workers the scheduler has `registered` now, and (at most every 5 s)
    /// ask the batch system which jobs ended, as [`refresh`](Self::refresh) does, returning
    /// them. A job that ended before its worker was ever seen registered counts as failed
    /// (see [`failed_jobs_in_row`](Self::failed_jobs_in_row)); a registration resets the
    /// count. Adaptive scaling calls this before every decision (through
    /// [`Cluster::observe_workers`]).
    pub async fn observe(&mut self, registered: &[String]) -> Result<Vec<Job>, ClusterError> {
        for j in &self.jobs {
            if registered.contains(&j.worker) && self.registered_once.insert(j.worker.clone()) {
                self.failed_in_row = 0;
            }
        }
        if self.last_poll.is_some_and(|t| t.elapsed() < JOB_POLL) {
            return Ok(Vec::new());
        }
        self.last_poll = Some(Instant::now());
        let ended = self.refresh().await?;
        for j in &ended {
            if !self.registered_once.remove(&j.worker) {
                self.failed_in_row += 1;
            }
        }
        Ok(ended)
    }

    /// Jobs that ended in a row before their worker registered, as [`observe`](Self::observe)
    /// saw them. From [`FAILED_JOBS_LIMIT`](Self::FAILED_JOBS_LIMIT) on,
    /// [`scale`](Self::scale) submits no more.
    pub fn failed_jobs_in_row(&self) -> usize {
        self.failed_in_row
    }

    /// Wait until `n` workers of this cluster's jobs are registered, at most `timeout`.
    pub async fn wait_for_workers(&self, n: usize, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        let client = self.connect().await?;
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
            if self.failed_in_row >= Self::FAILED_JOBS_LIMIT {
                return Err(ClusterError::Scale {
                    requested: n,
                    reason: format!(
                        "{} jobs in a row ended before their worker registered; not submitting \
                         more (see the jobs' output, and check that the compute nodes can run \
                         {} and reach {})",
                        self.failed_in_row, self.spec.taskwire, self.address
                    ),
                });
            }
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

    /// A client connected to the scheduler (with the cluster token, if there is one).
    pub async fn client(&self) -> Result<Client, ClusterError> {
        self.connect().await
    }

    /// Cancel every job, wait until they have left the queue, then stop a scheduler started
    /// here.
    pub async fn close(mut self) -> Result<(), ClusterError> {
        let ids: Vec<String> = self.jobs.iter().map(|j| j.id.clone()).collect();
        let cancelled = self.cancel_jobs(&ids).await;
        if cancelled.is_ok() {
            self.jobs.clear();
            self.registered_once.clear();
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

    /// [`observe`](JobQueueCluster::observe): jobs that ended by themselves leave the
    /// account (adaptive scaling then replaces them if the work calls for it).
    async fn observe_workers(&mut self, registered: &[String]) -> Result<(), ClusterError> {
        self.observe(registered).await.map(drop)
    }

    async fn client(&self) -> Result<Client, ClusterError> {
        JobQueueCluster::client(self).await
    }

    async fn close(self) -> Result<(), ClusterError> {
        JobQueueCluster::close(self).await
    }
}
