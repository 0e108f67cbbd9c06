//! `taskwire jobqueue slurm|pbs`: workers as batch jobs (Dask-jobqueue from the command line).

use super::parse_duration;
use clap::{Args, ValueEnum};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;
use taskwire::{AdaptOptions, BatchSystem, Cluster, Job, JobQueueBuilder, JobQueueCluster};

/// How often the scheduler is asked which workers registered.
const WORKER_POLL: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, ValueEnum)]
enum System {
    /// Slurm: sbatch, squeue, scancel.
    Slurm,
    /// PBS Pro / OpenPBS: qsub, qstat, qdel.
    Pbs,
}

/// Run workers as batch jobs (Dask-jobqueue): start a scheduler here (or use a running one),
/// submit `--jobs` jobs that each run one worker and keep that many in the queue (or, with
/// `--adapt MIN:MAX`, as many as the work calls for), and cancel them on Ctrl-C or SIGTERM.
#[derive(Args, Debug)]
pub(crate) struct JobqueueArgs {
    /// The batch system.
    #[arg(value_enum)]
    system: System,
    /// Cores per job (the worker's --nthreads).
    #[arg(long)]
    cores: usize,
    /// Memory per job, e.g. 16GB, 4GiB (the worker's --memory-limit).
    #[arg(long)]
    memory: String,
    /// Walltime per job: HH:MM:SS, D-HH:MM:SS, MM:SS, or a duration like 2h or 90m.
    #[arg(long, default_value = "01:00:00")]
    walltime: String,
    /// Jobs to keep queued or running (jobs that end are replaced).
    #[arg(long, default_value_t = 1, conflicts_with = "adapt")]
    jobs: usize,
    /// With --adapt, jobs (one worker each) are submitted when the work calls for more
    /// workers and retired and ended when workers sit idle; a queued job counts as a worker
    /// on its way.
    #[command(flatten)]
    adapt: super::AdaptArgs,
    /// Require the cluster token in this file of every connection (a scheduler started here
    /// creates it, mode 600, when it does not exist). The jobs' workers get this path, never
    /// the token, so it must be on a filesystem the compute nodes share.
    #[arg(long, value_name = "FILE")]
    auth_token_file: Option<PathBuf>,
    /// TLS for the scheduler started here, this manager's connections and the jobs' workers
    /// (they get the file paths, never a key, so the files must be on a filesystem the
    /// compute nodes share).
    #[command(flatten)]
    tls: super::security::TlsArgs,
    /// Queue (Slurm partition).
    #[arg(long)]
    queue: Option<String>,
    /// Account (project) to charge.
    #[arg(long)]
    account: Option<String>,
    /// One more header directive (`--exclusive`, `-l place=excl`; the #SBATCH/#PBS prefix is
    /// added unless the line starts with #); repeatable.
    #[arg(long = "job-extra", value_name = "LINE", allow_hyphen_values = true)]
    job_extra: Vec<String>,
    /// A shell line run in the job before the worker (e.g. `module load gcc`); repeatable.
    #[arg(long = "job-prologue", value_name = "LINE", allow_hyphen_values = true)]
    job_prologue: Vec<String>,
    /// The jobs' name, which prefixes the worker names (`NAME-JOBID`).
    #[arg(long, default_value = "taskwire-worker")]
    job_name: String,
    /// Directory for the jobs' output (default: the batch system's default).
    #[arg(long)]
    log_directory: Option<PathBuf>,
    /// The workers' --local-directory on the compute nodes ($VARS are expanded in the job).
    #[arg(long)]
    local_directory: Option<String>,
    /// The taskwire binary on the compute nodes (default: this binary's path, for a shared
    /// filesystem).
    #[arg(long, value_name = "PATH")]
    remote_taskwire: Option<String>,
    /// How long before the walltime each worker retires so its job ends by itself.
    #[arg(long, default_value = "5m")]
    lifetime_margin: String,
    /// Use the scheduler running at this address instead of starting one.
    #[arg(long, value_name = "ADDR", conflicts_with = "scheduler_file")]
    scheduler: Option<String>,
    /// Use the running scheduler whose scheduler file this is (on a filesystem the compute
    /// nodes share; the workers read it too).
    #[arg(long)]
    scheduler_file: Option<PathBuf>,
    /// Interface the scheduler started here listens on.
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    /// Port of the scheduler started here (0: a free one).
    #[arg(long, default_value_t = taskwire_scheduler::DEFAULT_PORT)]
    port: u16,
    /// Port of its dashboard (0: a free one).
    #[arg(long, default_value_t = taskwire_scheduler::DEFAULT_DASHBOARD_PORT)]
    dashboard_port: u16,
    /// Do not serve the dashboard.
    #[arg(long)]
    no_dashboard: bool,
    /// Print the job script and exit (nothing is started or submitted).
    #[arg(long)]
    dry_run: bool,
}

/// Parse a walltime: `[D-]HH:MM:SS`, `MM:SS`, or a duration with a unit (`2h`, `90m`).
fn parse_walltime(spec: &str) -> Result<Duration, String> {
    let s = spec.trim();
    let bad = || {
        format!("walltime '{spec}' is not HH:MM:SS, D-HH:MM:SS, MM:SS or a duration like 2h or 90m")
    };
    let d = if s.contains(':') {
        let (days, hms) = match s.split_once('-') {
            Some((d, rest)) => (d.parse::<u64>().map_err(|_| bad())?, rest),
            None => (0, s),
        };
        let parts: Vec<u64> = hms
            .split(':')
            .map(|p| p.parse::<u64>().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        // Both systems read two fields as minutes and seconds.
        let (h, m, sec) = match parts[..] {
            [h, m, s] if m < 60 => (h, m, s),
            [m, s] => (0, m, s),
            _ => return Err(bad()),
        };
        if sec >= 60 {
            return Err(bad());
        }
        Duration::from_secs(((days * 24 + h) * 60 + m) * 60 + sec)
    } else if s.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "walltime '{spec}' needs a unit (Slurm reads a bare number as minutes, PBS as \
             seconds): write e.g. {spec}m or HH:MM:SS"
        ));
    } else {
        parse_duration(s).map_err(|_| bad())?
    };
    if d < Duration::from_secs(60) {
        return Err(format!("walltime '{spec}' is under a minute"));
    }
    Ok(d)
}

impl JobqueueArgs {
    fn builder(&self) -> Result<JobQueueBuilder, String> {
        if self.cores == 0 {
            return Err("--cores must be at least 1".into());
        }
        let memory = super::worker::parse_memory(&self.memory, 1)?;
        if memory == 0 {
            return Err("--memory must be more than 0".into());
        }
        let walltime = parse_walltime(&self.walltime)?;
        let margin =
            parse_duration(&self.lifetime_margin).map_err(|e| format!("--lifetime-margin: {e}"))?;
        if self.job_name.is_empty() || self.job_name.contains(char::is_whitespace) {
            return Err("--job-name must be one word".into());
        }
        let system = match self.system {
            System::Slurm => BatchSystem::Slurm,
            System::Pbs => BatchSystem::Pbs,
        };
        let mut b = JobQueueCluster::builder(system)
            .cores(self.cores)
            .memory(memory)
            .walltime(walltime)
            .lifetime_margin(margin)
            .job_name(&self.job_name)
            .jobs(self.adapt.adapt.map_or(self.jobs, |(min, _)| min));
        if let Some(f) = &self.auth_token_file {
            b = b.auth_token_file(f);
        }
        b = b.security(self.tls.security()?);
        if let Some(q) = &self.queue {
            b = b.queue(q);
        }
        if let Some(a) = &self.account {
            b = b.account(a);
        }
        for l in &self.job_extra {
            b = b.job_extra(l);
        }
        for l in &self.job_prologue {
            b = b.prologue(l);
        }
        if let Some(d) = &self.log_directory {
            let d = std::path::absolute(d)
                .map_err(|e| format!("--log-directory {}: {e}", d.display()))?;
            b = b.log_directory(d);
        }
        if let Some(d) = &self.local_directory {
            b = b.local_directory(d);
        }
        if let Some(p) = &self.remote_taskwire {
            b = b.taskwire_program(p);
        }
        b = match (&self.scheduler, &self.scheduler_file) {
            (Some(a), _) => {
                a.parse::<taskwire_transport::Address>()
                    .map_err(|e| format!("--scheduler: {e}"))?;
                b.scheduler_address(a)
            }
            (None, Some(f)) => {
                let f = std::path::absolute(f)
                    .map_err(|e| format!("--scheduler-file {}: {e}", f.display()))?;
                b.scheduler_file(f)
            }
            (None, None) => b
                .scheduler_listen(&self.host, self.port)
                .dashboard_port((!self.no_dashboard).then_some(self.dashboard_port)),
        };
        Ok(b)
    }
}

pub(crate) fn run(args: JobqueueArgs) -> Result<(), String> {
    let builder = args.builder()?;
    if args.dry_run {
        print!("{}", builder.job_script());
        return Ok(());
    }
    let creates_token = args.scheduler.is_none()
        && args.scheduler_file.is_none()
        && args.auth_token_file.as_ref().is_some_and(|f| !f.exists());
    super::runtime()?.block_on(async {
        let cluster = tokio::select! {
            c = builder.start() => c.map_err(|e| e.to_string())?,
            _ = super::shutdown_signal() => return Err("interrupted while starting".into()),
        };
        if let (true, Some(f)) = (creates_token, &args.auth_token_file) {
            println!("Created cluster token file: {} (mode 600)", f.display());
        }
        println!("Scheduler at: {}", cluster.scheduler_address());
        if let Some(link) = cluster.dashboard_link() {
            println!("dashboard at: {link}");
        }
        let mut report = Report::default();
        report.update(cluster.jobs(), &[]);
        // The signal is only looked at between batch commands: a submission cut short could
        // leave a job in the queue that no one cancels.
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            super::shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        match args.adapt.options() {
            Some(options) => run_adaptive(cluster, options, report, stop).await,
            None => {
                let mut cluster = cluster;
                let outcome = keep_jobs(&mut cluster, args.jobs, report, stop).await;
                let n = cluster.jobs().len();
                println!("Shutting down: cancelling {n} jobs");
                let closed = cluster.close().await.map_err(|e| e.to_string());
                outcome.and(closed)
            }
        }
    })
}

/// What the user is told about the jobs: submitted, their worker registered, ended.
#[derive(Default)]
struct Report {
    jobs: Vec<Job>,
    registered: BTreeSet<String>,
}

impl Report {
    /// Print what changed since the last look: the manager's `jobs` and the worker names
    /// the scheduler has `registered`.
    fn update(&mut self, jobs: &[Job], registered: &[String]) {
        for job in jobs {
            if !self.jobs.iter().any(|j| j.id == job.id) {
                println!("Submitted job {} (worker {})", job.id, job.worker);
            }
        }
        for job in jobs {
            if registered.contains(&job.worker) && self.registered.insert(job.worker.clone()) {
                println!("Worker {} registered (job {})", job.worker, job.id);
            }
        }
        for job in &self.jobs {
            if !jobs.iter().any(|j| j.id == job.id) {
                println!("Job {} ended (worker {})", job.id, job.worker);
                self.registered.remove(&job.worker);
            }
        }
        self.jobs = jobs.to_vec();
    }
}

/// The error once [`JobQueueCluster::FAILED_JOBS_LIMIT`] jobs in a row ended before their
/// worker registered.
fn failing_jobs(failed: usize, address: &str) -> Result<(), String> {
    if failed < JobQueueCluster::FAILED_JOBS_LIMIT {
        return Ok(());
    }
    Err(format!(
        "{failed} jobs in a row ended before their worker registered; not submitting more \
         (see the jobs' output, and check that the compute nodes can run the taskwire binary \
         and reach {address})"
    ))
}

/// The names of the registered workers.
async fn registered(client: &taskwire::Client) -> Result<Vec<String>, String> {
    let ws = client.workers().await.map_err(|e| e.to_string())?;
    Ok(ws.into_iter().map(|w| w.name).collect())
}

/// Report workers as they register and jobs as they end, and submit replacements for ended
/// jobs, until `stop`; returns an error once too many jobs in a row ended before their worker
/// registered.
async fn keep_jobs(
    cluster: &mut JobQueueCluster,
    target: usize,
    mut report: Report,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let client = cluster.client().await.map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(WORKER_POLL) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        let names = registered(&client).await?;
        // Asks the batch system every few seconds only.
        if let Err(e) = cluster.observe(&names).await {
            eprintln!("warning: {e}");
        }
        report.update(cluster.jobs(), &names);
        failing_jobs(cluster.failed_jobs_in_row(), &cluster.scheduler_address())?;
        let missing = target.saturating_sub(cluster.jobs().len());
        if missing > 0 {
            if let Err(e) = cluster.submit_jobs(missing).await {
                eprintln!("warning: {e}");
            }
            report.update(cluster.jobs(), &names);
        }
    }
}

/// Scale adaptively (`--adapt`), reporting the jobs, until `stop`, until the scheduler cannot
/// be reached, or until too many jobs in a row failed; then cancel every job.
async fn run_adaptive(
    cluster: JobQueueCluster,
    options: AdaptOptions,
    mut report: Report,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let (min, max) = (options.minimum(), options.maximum());
    let address = cluster.scheduler_address();
    let adaptive = cluster.adapt_with(options).map_err(|e| e.to_string())?;
    println!("Adaptive scaling: {min} to {max} jobs");
    let outcome = async {
        let client = adaptive.client().await.map_err(|e| e.to_string())?;
        let result = loop {
            tokio::select! {
                _ = tokio::time::sleep(WORKER_POLL) => {}
                _ = stop.wait_for(|s| *s) => break Ok(()),
            }
            let names = match registered(&client).await {
                Ok(n) => n,
                Err(e) => break Err(format!("lost the scheduler: {e}")),
            };
            let (jobs, failed) = adaptive
                .inspect(|c| (c.jobs().to_vec(), c.failed_jobs_in_row()))
                .await;
            report.update(&jobs, &names);
            if let Err(e) = failing_jobs(failed, &address) {
                break Err(e);
            }
        };
        client.close().await;
        result
    }
    .await;
    // Stops after the decision in progress, so no batch command is cut short.
    let cluster = adaptive.stop().await;
    println!("Shutting down: cancelling {} jobs", cluster.jobs().len());
    let closed = cluster.close().await.map_err(|e| e.to_string());
    outcome.and(closed)
}

#[cfg(test)]
mod tests {
    use super::parse_walltime;
    use std::time::Duration;

    #[test]
    fn walltimes() {
        assert_eq!(
            parse_walltime("02:00:00").unwrap(),
            Duration::from_secs(7200)
        );
        assert_eq!(
            parse_walltime("1-00:30:00").unwrap(),
            Duration::from_secs(86400 + 1800)
        );
        assert_eq!(parse_walltime("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_walltime("10:00").unwrap(), Duration::from_secs(600));
        assert!(parse_walltime("90").unwrap_err().contains("needs a unit"));
        assert!(parse_walltime("1:70:00").is_err());
        assert!(
            parse_walltime("30s")
                .unwrap_err()
                .contains("under a minute")
        );
        assert!(parse_walltime("soon").is_err());
    }
}
