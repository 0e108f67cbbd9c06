//! `taskwire jobqueue slurm|pbs`: workers as batch jobs (Dask-jobqueue from the command line).

use super::parse_duration;
use clap::{Args, ValueEnum};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;
use taskwire::{BatchSystem, Cluster, JobQueueBuilder, JobQueueCluster};

/// Jobs that end in a row before their worker registered, after which no more are submitted.
const FAILED_JOBS_LIMIT: usize = 3;
/// How often the scheduler is asked which workers registered.
const WORKER_POLL: Duration = Duration::from_secs(1);
/// How often the batch system is asked about the jobs.
const JOB_POLL: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, ValueEnum)]
enum System {
    /// Slurm: sbatch, squeue, scancel.
    Slurm,
    /// PBS Pro / OpenPBS: qsub, qstat, qdel.
    Pbs,
}

/// Run workers as batch jobs (Dask-jobqueue): start a scheduler here (or use a running one),
/// submit `--jobs` jobs that each run one worker, keep that many in the queue, and cancel them
/// on Ctrl-C or SIGTERM.
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
    #[arg(long, default_value_t = 1)]
    jobs: usize,
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
            .jobs(self.jobs);
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
    let target = args.jobs;
    super::runtime()?.block_on(async {
        let mut cluster = tokio::select! {
            c = builder.start() => c.map_err(|e| e.to_string())?,
            _ = super::shutdown_signal() => return Err("interrupted while starting".into()),
        };
        println!("Scheduler at: {}", cluster.scheduler_address());
        if let Some(link) = cluster.dashboard_link() {
            println!("dashboard at: {link}");
        }
        for job in cluster.jobs() {
            println!("Submitted job {} (worker {})", job.id, job.worker);
        }
        // The signal is only looked at between batch commands: a submission cut short could
        // leave a job in the queue that no one cancels.
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            super::shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        let outcome = keep_jobs(&mut cluster, target, stop).await;
        let n = cluster.jobs().len();
        println!("Shutting down: cancelling {n} jobs");
        let closed = cluster.close().await.map_err(|e| e.to_string());
        outcome.and(closed)
    })
}

/// Report workers as they register and jobs as they end, and submit replacements for ended
/// jobs, until `stop`; returns an error once [`FAILED_JOBS_LIMIT`] jobs in a row ended before
/// their worker registered.
async fn keep_jobs(
    cluster: &mut JobQueueCluster,
    target: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let client = cluster.client().await.map_err(|e| e.to_string())?;
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut failed_in_row = 0;
    let mut last_refresh = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(WORKER_POLL) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        let registered = client.workers().await.map_err(|e| e.to_string())?;
        for job in cluster.jobs() {
            if registered.iter().any(|w| w.name == job.worker) && seen.insert(job.worker.clone()) {
                println!("Worker {} registered (job {})", job.worker, job.id);
                failed_in_row = 0;
            }
        }
        if last_refresh.elapsed() < JOB_POLL {
            continue;
        }
        last_refresh = tokio::time::Instant::now();
        let ended = match cluster.refresh().await {
            Ok(e) => e,
            Err(e) => {
                eprintln!("warning: {e}");
                continue;
            }
        };
        for job in ended {
            let ok = seen.remove(&job.worker);
            println!("Job {} ended (worker {})", job.id, job.worker);
            if !ok {
                failed_in_row += 1;
            }
        }
        if failed_in_row >= FAILED_JOBS_LIMIT {
            return Err(format!(
                "{failed_in_row} jobs in a row ended before their worker registered; not \
                 submitting more (see the jobs' output, and check that the compute nodes can \
                 run the taskwire binary and reach {})",
                cluster.scheduler_address()
            ));
        }
        let missing = target.saturating_sub(cluster.jobs().len());
        if missing > 0 {
            match cluster.submit_jobs(missing).await {
                Ok(ids) => {
                    for id in ids {
                        let worker = cluster
                            .jobs()
                            .iter()
                            .find(|j| j.id == id)
                            .map(|j| j.worker.clone())
                            .unwrap_or_default();
                        println!("Submitted job {id} (worker {worker})");
                    }
                }
                Err(e) => eprintln!("warning: {e}"),
            }
        }
    }
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
