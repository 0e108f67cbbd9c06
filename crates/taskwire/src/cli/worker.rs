//! `taskwire worker`: by default a nanny process that runs each worker as a child process
//! (this binary again, with `--no-nanny`) and restarts it; with `--no-nanny` the workers run in
//! this process.
//!
//! Exit status of a `--no-nanny` worker process, which its nanny reads: 0 when it was closed
//! by the scheduler (retired), by a signal or by its `--lifetime`; [`EXIT_LOST_SCHEDULER`] when
//! it lost the scheduler; [`EXIT_DEATH_TIMEOUT`] when it could not reach the scheduler within
//! `--death-timeout`; 1 for any other failure.

use super::parse_duration;
use clap::Args;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;
use taskwire_transport::Address;
use taskwire_worker::{
    EXIT_DEATH_TIMEOUT, EXIT_LOST_SCHEDULER, Nanny, NannyOutcome, RestartPolicy, StopReason,
    Worker, WorkerError, WorkerHandle,
};
use tokio::signal::unix::{Signal, SignalKind};
use tokio::time::Instant;
use tracing::{info, warn};

/// How long a worker asked to leave (signal, lifetime) may take to hand its results to other
/// workers before it closes anyway.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the nanny waits for a child it sent SIGTERM before killing it.
pub(super) const CHILD_STOP_TIMEOUT: Duration = Duration::from_secs(40);
/// Connection attempts to an unreachable scheduler: first wait, and the most.
const CONNECT_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// One attempt to connect and register may take this long.
const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Start workers and register them with a scheduler.
#[derive(Args, Debug)]
pub(crate) struct WorkerArgs {
    /// Scheduler address, e.g. tcp://host:8786.
    scheduler: Option<String>,
    /// Read the scheduler address from this file instead (re-read on every connection attempt).
    #[arg(long)]
    scheduler_file: Option<PathBuf>,
    /// Task threads per worker (default: CPUs / nworkers).
    #[arg(long)]
    nthreads: Option<usize>,
    /// Workers to start (each in its own process under the nanny).
    #[arg(long, default_value_t = 1)]
    nworkers: usize,
    /// Worker name (with --nworkers > 1, suffixed with -0, -1, ...).
    #[arg(long)]
    name: Option<String>,
    /// Port for the worker's data server (default: a free port; with --nworkers, consecutive).
    #[arg(long)]
    worker_port: Option<u16>,
    /// Address the data server and the nanny listen on (default: derived from the scheduler
    /// address).
    #[arg(long, conflicts_with = "interface")]
    host: Option<String>,
    /// Resources offered, e.g. "GPU=1,MEM=4e9".
    #[arg(long, default_value = "")]
    resources: String,
    /// Memory limit per worker in bytes, or "auto" (machine memory / nworkers); the nanny
    /// restarts a worker whose RSS crosses 95% of it; 0: no limit.
    #[arg(long, default_value = "auto")]
    memory_limit: String,
    /// Directory for command tasks and spilled data (worker i uses its subdirectory worker-i).
    #[arg(long)]
    local_directory: Option<PathBuf>,
    /// Benchmark mode: report tasks finished without running them (measures the scheduler).
    #[arg(long)]
    zero_worker: bool,
    /// Run the workers in this process, without a nanny to restart them.
    #[arg(long)]
    no_nanny: bool,
    #[command(flatten)]
    pub(crate) nanny: NannyArgs,
    #[command(flatten)]
    fabric: super::fabric::FabricArgs,
    /// Times a nanny restarted this worker (set by the nanny, reported to the scheduler).
    #[arg(long, hide = true, default_value_t = 0)]
    restarts: u32,
    /// Index of the first worker in this process (set by the nanny; names the local
    /// subdirectory).
    #[arg(long, hide = true, default_value_t = 0)]
    worker_index: usize,
}

/// `--death-timeout`: `None` for "inf" or 0 (keep trying).
fn parse_death_timeout(spec: &str) -> Result<Option<Duration>, String> {
    if spec.trim().eq_ignore_ascii_case("inf") {
        return Ok(None);
    }
    let d = parse_duration(spec).map_err(|e| format!("--death-timeout: {e}"))?;
    Ok((!d.is_zero()).then_some(d))
}

/// Nanny flags shared by `taskwire worker` and `taskwire cuda-worker`.
#[derive(Args, Debug)]
pub(crate) struct NannyArgs {
    /// Port of the nanny's control protocol ("status" and "restart" lines); 0: any free port.
    #[arg(long, default_value_t = 0)]
    pub(crate) nanny_port: u16,
    /// Give up when the scheduler cannot be reached for this long at start, e.g. 60s, 5m; "inf"
    /// or 0: keep trying.
    #[arg(long, default_value = "60s")]
    pub(crate) death_timeout: String,
    /// Retire each worker after this long (e.g. 1h); under a nanny a fresh worker replaces it.
    #[arg(long)]
    pub(crate) lifetime: Option<String>,
    /// Move each --lifetime by a random amount up to this much either way.
    #[arg(long, default_value = "0s")]
    pub(crate) lifetime_stagger: String,
    /// At the end of its --lifetime a worker is not replaced: the nanny exits once all its
    /// workers have left (a worker in a batch job, which should end before its walltime).
    #[arg(long)]
    pub(crate) no_lifetime_restart: bool,
    /// The nanny gives a worker up after more than this many crashes within --restart-window
    /// (exits because it lost the scheduler, retirements and lifetimes do not count).
    #[arg(long, default_value_t = 10)]
    pub(crate) restart_limit: u32,
    /// The window for --restart-limit.
    #[arg(long, default_value = "60s")]
    pub(crate) restart_window: String,
    #[command(flatten)]
    pub(crate) auth: super::security::AuthArgs,
    #[command(flatten)]
    pub(crate) data_port: super::security::DataPortArgs,
    /// Serve each worker's Prometheus metrics (`/metrics`, `/health`) over HTTP on this port,
    /// worker i on PORT+i (0: any free port for each); printed as `worker metrics at:`. Off
    /// unless given.
    #[arg(long, value_name = "PORT")]
    pub(crate) dashboard_port: Option<u16>,
    #[command(flatten)]
    pub(crate) tls: super::security::TlsArgs,
}

impl NannyArgs {
    /// Check every flag; the lifetime and its stagger, if any.
    pub(crate) fn lifetime(&self) -> Result<Option<(Duration, Duration)>, String> {
        parse_death_timeout(&self.death_timeout)?;
        parse_duration(&self.restart_window).map_err(|e| format!("--restart-window: {e}"))?;
        let Some(l) = &self.lifetime else {
            return Ok(None);
        };
        let life = parse_duration(l).map_err(|e| format!("--lifetime: {e}"))?;
        if life.is_zero() {
            return Err("--lifetime must be longer than 0".into());
        }
        let stagger = parse_duration(&self.lifetime_stagger)
            .map_err(|e| format!("--lifetime-stagger: {e}"))?;
        Ok(Some((life, stagger)))
    }

    /// Worker `i`'s metrics port: `--dashboard-port` plus `i` (0 stays 0: any free port).
    pub(crate) fn dashboard_port(&self, i: usize) -> Result<Option<u16>, String> {
        let Some(p) = self.dashboard_port else {
            return Ok(None);
        };
        if p == 0 {
            return Ok(Some(0));
        }
        u16::try_from(usize::from(p) + i)
            .map(Some)
            .map_err(|_| format!("--dashboard-port {p} for worker {i} goes past port 65535"))
    }

    /// The nanny's restart policy from `--restart-limit` and `--restart-window`.
    pub(crate) fn restart_policy(&self) -> Result<RestartPolicy, String> {
        Ok(RestartPolicy {
            max_failures: self.restart_limit,
            window: parse_duration(&self.restart_window)
                .map_err(|e| format!("--restart-window: {e}"))?,
            ..RestartPolicy::default()
        })
    }
}

/// What every nanny child's command line says: this binary as one `--no-nanny` worker.
pub(super) struct ChildLine<'a> {
    pub(super) scheduler: Option<&'a str>,
    pub(super) scheduler_file: Option<&'a Path>,
    pub(super) nthreads: usize,
    pub(super) memory_limit: u64,
    pub(super) resources: String,
    pub(super) death_timeout: &'a str,
    /// Names the child's local subdirectory.
    pub(super) index: usize,
    pub(super) port: Option<usize>,
    pub(super) host: Option<&'a str>,
    pub(super) local_directory: Option<&'a Path>,
    /// The worker's metrics port, if any.
    pub(super) dashboard_port: Option<u16>,
    /// Token file and data-port limits.
    pub(super) security: Vec<OsString>,
}

impl ChildLine<'_> {
    pub(super) fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["worker".into()];
        if let Some(s) = self.scheduler {
            a.push(s.into());
        }
        let mut opt = |flag: &str, value: &OsStr| {
            a.push(flag.into());
            a.push(value.into());
        };
        if let Some(f) = self.scheduler_file {
            opt("--scheduler-file", f.as_os_str());
        }
        opt("--nworkers", "1".as_ref());
        opt("--nthreads", self.nthreads.to_string().as_ref());
        opt("--memory-limit", self.memory_limit.to_string().as_ref());
        opt("--resources", self.resources.as_ref());
        opt("--death-timeout", self.death_timeout.as_ref());
        opt("--worker-index", self.index.to_string().as_ref());
        if let Some(p) = self.port {
            opt("--worker-port", p.to_string().as_ref());
        }
        if let Some(h) = self.host {
            opt("--host", h.as_ref());
        }
        if let Some(d) = self.local_directory {
            opt("--local-directory", d.as_os_str());
        }
        if let Some(p) = self.dashboard_port {
            opt("--dashboard-port", p.to_string().as_ref());
        }
        a.extend(self.security.iter().cloned());
        a.push("--no-nanny".into());
        a
    }
}

/// Parse "GPU=1,MEM=4e9".
pub(crate) fn parse_resources(spec: &str) -> Result<Vec<(String, f64)>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (name, amount) = item.split_once('=').ok_or_else(|| {
                format!("resource '{item}' should look like NAME=AMOUNT, e.g. GPU=1")
            })?;
            let amount: f64 = amount
                .trim()
                .parse()
                .map_err(|_| format!("resource '{item}': '{amount}' is not a number"))?;
            if !(amount.is_finite() && amount >= 0.0) {
                return Err(format!(
                    "resource '{item}': amount must be a non-negative number"
                ));
            }
            Ok((name.trim().to_string(), amount))
        })
        .collect()
}

/// Parse a byte size: "auto", plain bytes, or with a suffix (4GB, 512MiB, 4e9).
pub(crate) fn parse_memory(spec: &str, nworkers: usize) -> Result<u64, String> {
    if spec == "auto" {
        return Ok(taskwire_worker::machine_memory() / nworkers.max(1) as u64);
    }
    let s = spec.trim();
    let split = s
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("memory limit '{spec}' is not a size like 4GB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        other => return Err(format!("memory limit '{spec}': unknown unit '{other}'")),
    };
    Ok((num * mult) as u64)
}

/// Everything `taskwire worker` needs, checked before anything starts.
#[derive(Debug)]
struct Plan {
    nworkers: usize,
    nthreads: usize,
    memory_limit: u64,
    resources: Vec<(String, f64)>,
    death_timeout: Option<Duration>,
    lifetime: Option<(Duration, Duration)>,
    /// TLS, loaded and checked here so that a bad file is one error, not a restart loop.
    security: taskwire::Security,
}

fn plan(args: &WorkerArgs) -> Result<Plan, String> {
    if args.nworkers == 0 {
        return Err("--nworkers must be at least 1".into());
    }
    if args.nthreads == Some(0) {
        return Err("--nthreads must be at least 1".into());
    }
    if let Some(p) = args.worker_port
        && usize::from(p) + args.nworkers - 1 > usize::from(u16::MAX)
    {
        return Err(format!(
            "--worker-port {p} with --nworkers {} goes past port 65535",
            args.nworkers
        ));
    }
    if let Some(a) = &args.scheduler {
        a.parse::<Address>().map_err(|e| format!("{e}"))?;
    }
    match (&args.scheduler, &args.scheduler_file) {
        (Some(_), Some(_)) => {
            return Err("give the scheduler address or --scheduler-file, not both".into());
        }
        (None, None) => {
            return Err(
                "give the scheduler address (e.g. tcp://host:8786) or --scheduler-file".into(),
            );
        }
        _ => {}
    }
    let lifetime = args.nanny.lifetime()?;
    args.nanny.dashboard_port(args.nworkers - 1)?;
    let security = args.nanny.tls.security()?;
    Ok(Plan {
        security,
        nworkers: args.nworkers,
        nthreads: args
            .nthreads
            .unwrap_or_else(|| (taskwire_worker::available_cpus() / args.nworkers).max(1)),
        memory_limit: parse_memory(&args.memory_limit, args.nworkers)?,
        resources: parse_resources(&args.resources)?,
        death_timeout: parse_death_timeout(&args.nanny.death_timeout)?,
        lifetime,
    })
}

pub(crate) fn run(mut args: WorkerArgs) -> Result<(), String> {
    let plan = plan(&args)?;
    // The worker speaks what its scheduler speaks; a scheduler file that is not written yet
    // counts as UCX when fabric flags ask for it.
    let uses_ucx = match scheduler_now(&args) {
        Ok(a) => a.scheme() == taskwire_transport::Scheme::Ucx,
        Err(_) => !args.fabric.fabric().is_automatic(),
    };
    args.fabric.apply(uses_ucx, "a ucx:// scheduler address")?;
    if let Some(host) = args.fabric.interface_host()? {
        args.host = Some(host);
    }
    let code = if args.no_nanny {
        super::runtime()?.block_on(run_workers(&args, &plan))?
    } else {
        // One thread is plenty for a supervisor, and the children's death signal follows the
        // thread that spawned them (see the nanny's docs): this one lives as long as we do.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?
            .block_on(run_nanny(&args, &plan))?
    };
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// SIGTERM and SIGINT, as one stream.
pub(super) struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub(super) fn new() -> Result<Signals, String> {
        let install = |kind| {
            tokio::signal::unix::signal(kind)
                .map_err(|e| format!("cannot install a signal handler: {e}"))
        };
        Ok(Signals {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
        })
    }

    pub(super) async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Nanny

/// How others reach a nanny's control port: `tls://` when it speaks TLS, else `tcp://`.
pub(super) fn nanny_address(control: std::net::SocketAddr, tls: bool) -> Address {
    let scheme = if tls {
        taskwire_transport::Scheme::Tls
    } else {
        taskwire_transport::Scheme::Tcp
    };
    taskwire_transport_tcp::contact_address(&Address::Net {
        scheme,
        host: control.ip().to_string(),
        port: control.port(),
    })
}

/// The host the nanny's control port listens on: `--host`, else loopback for a loopback
/// scheduler and all interfaces otherwise (as the worker's data server does).
fn nanny_host(args: &WorkerArgs) -> String {
    control_host(
        args.host.as_deref(),
        args.scheduler.as_deref(),
        args.scheduler_file.as_deref(),
    )
}

/// The host a nanny's control port listens on: `host` when given, else loopback for a
/// loopback scheduler and all interfaces otherwise. Shared with `taskwire cuda-worker`.
pub(super) fn control_host(
    host: Option<&str>,
    scheduler: Option<&str>,
    scheduler_file: Option<&Path>,
) -> String {
    if let Some(h) = host {
        return h.to_string();
    }
    let scheduler = match (scheduler, scheduler_file) {
        (Some(a), _) => a.parse::<Address>().ok(),
        (None, Some(f)) => super::read_scheduler_file(f).ok().map(|f| f.address),
        (None, None) => None,
    };
    match scheduler {
        Some(Address::Net { host, .. }) if taskwire_transport_tcp::is_loopback_host(&host) => {
            "127.0.0.1".into()
        }
        _ => "0.0.0.0".into(),
    }
}

/// The command line of child `i`: this binary as one `--no-nanny` worker with the options
/// given to the nanny (the nanny appends `--restarts K`).
fn child_args(args: &WorkerArgs, plan: &Plan, i: usize) -> Vec<OsString> {
    let mut a = ChildLine {
        scheduler: args.scheduler.as_deref(),
        scheduler_file: args.scheduler_file.as_deref(),
        nthreads: plan.nthreads,
        memory_limit: plan.memory_limit,
        resources: args.resources.clone(),
        death_timeout: &args.nanny.death_timeout,
        index: args.worker_index + i,
        port: args.worker_port.map(|p| usize::from(p) + i),
        host: args.host.as_deref(),
        local_directory: args.local_directory.as_deref(),
        dashboard_port: args.nanny.dashboard_port(i).ok().flatten(),
        security: super::security::child_args(&args.nanny),
    }
    .args();
    let mut opt = |flag: &str, value: String| {
        a.push(flag.into());
        a.push(value.into());
    };
    if let Some(name) = &args.name {
        opt(
            "--name",
            if plan.nworkers > 1 {
                format!("{name}-{i}")
            } else {
                name.clone()
            },
        );
    }
    if args.zero_worker {
        a.push("--zero-worker".into());
    }
    a
}

async fn run_nanny(args: &WorkerArgs, plan: &Plan) -> Result<i32, String> {
    // Before any child exists: from here on a SIGTERM is forwarded, never fatal to us alone.
    let mut signals = Signals::new()?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let mut b = Nanny::builder(exe)
        .memory_limit(plan.memory_limit)
        .restart_policy(args.nanny.restart_policy()?)
        .stop_timeout(CHILD_STOP_TIMEOUT)
        .control(nanny_host(args), args.nanny.nanny_port);
    if let Some((life, stagger)) = plan.lifetime {
        b = b
            .lifetime(life, stagger)
            .lifetime_restart(!args.nanny.no_lifetime_restart);
    }
    for i in 0..plan.nworkers {
        b = b.child(child_args(args, plan, i));
    }
    if let Some(secret) = args
        .nanny
        .auth
        .secret_for_nanny(args.scheduler_file.as_deref())
        .await?
    {
        b = b.control_auth_token(secret);
    }
    if let Some(tls) = plan.security.tls_config() {
        b = b.control_tls(tls.clone());
    }
    let nanny = b.bind().await.map_err(|e| e.to_string())?;
    let control = nanny.control_address().expect("control port requested");
    let shown = nanny_address(control, plan.security.tls_config().is_some());
    println!("Nanny at: {shown}");
    let handle = nanny.start();
    let outcome = tokio::select! {
        _ = signals.recv() => None,
        o = handle.finished() => Some(o),
    };
    match outcome {
        Some(NannyOutcome::GaveUp(n)) => Err(format!(
            "the nanny gave up on {n} of {} worker(s); see the log above",
            plan.nworkers
        )),
        Some(NannyOutcome::Retired) => {
            info!("every worker was retired by the scheduler; the nanny stops");
            Ok(0)
        }
        Some(NannyOutcome::Stopped) => Ok(0),
        None => {
            println!("Stopping nanny");
            info!("nanny: asking the workers to retire (a second signal kills them)");
            handle.shutdown();
            tokio::select! {
                _ = handle.finished() => {}
                _ = signals.recv() => {
                    handle.shutdown();
                    handle.finished().await;
                }
            }
            Ok(0)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Workers in this process

/// Why a worker did not start.
enum StartFailure {
    /// A signal arrived while it waited for the scheduler.
    Interrupted,
    /// The scheduler stayed unreachable past `--death-timeout`.
    DeathTimeout(String),
    /// Retrying will not help.
    Fatal(String),
}

/// Resolve the scheduler's address (re-reading `--scheduler-file`, which a restarted
/// scheduler may have rewritten).
fn scheduler_now(args: &WorkerArgs) -> Result<Address, String> {
    super::scheduler_address(args.scheduler.as_deref(), args.scheduler_file.as_deref())
}

fn local_directory(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("worker-{index}"))
}

/// Start worker `i` of this process, retrying with backoff while the scheduler cannot be
/// reached, until `deadline`.
async fn start_worker(
    args: &WorkerArgs,
    plan: &Plan,
    i: usize,
    deadline: Option<Instant>,
    signals: &mut Signals,
) -> Result<WorkerHandle, StartFailure> {
    let mut delay = CONNECT_BACKOFF.0;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let attempt_timeout = deadline.map_or(CONNECT_ATTEMPT_TIMEOUT, |d| {
            d.saturating_duration_since(Instant::now())
                .clamp(Duration::from_secs(1), CONNECT_ATTEMPT_TIMEOUT)
        });
        let attempt = async {
            // A missing or half-written scheduler file may be fixed by a scheduler starting.
            let scheduler = scheduler_now(args).map_err(|e| {
                if e.contains("chmod 600") {
                    Err(e)
                } else {
                    Ok(e)
                }
            })?;
            // Read on every attempt too: the scheduler may be creating the token file now.
            // A file that others can read does not fix itself (and its token may have leaked):
            // say so and stop; a missing or half-written one may be fixed by a scheduler
            // starting.
            let secret = args
                .nanny
                .auth
                .secret_with(args.scheduler_file.as_deref())
                .map_err(|e| {
                    if e.contains("chmod 600") {
                        Err(e)
                    } else {
                        Ok(e)
                    }
                })?;
            let b = args
                .nanny
                .data_port
                .apply(secret, builder(args, plan, i, scheduler));
            match tokio::time::timeout(attempt_timeout, b.start()).await {
                Ok(Ok(h)) => Ok(h),
                Ok(Err(WorkerError::Setup(e))) => Err(Err(e)),
                // A wrong or missing token does not fix itself: say so and stop.
                Ok(Err(e @ WorkerError::Refused(_)))
                    if e.to_string().contains("authentication failed") =>
                {
                    Err(Err(e.to_string()))
                }
                // Nor does a certificate the other side refuses, or a scheme that does not fit.
                Ok(Err(e)) if tls_mismatch(&e.to_string()) => Err(Err(e.to_string())),
                Ok(Err(e)) => Err(Ok(e.to_string())),
                Err(_) => Err(Ok(format!("no answer within {attempt_timeout:?}"))),
            }
        };
        let why = tokio::select! {
            r = attempt => match r {
                Ok(h) => return Ok(h),
                Err(Ok(retryable)) => retryable,
                Err(Err(fatal)) => return Err(StartFailure::Fatal(fatal)),
            },
            _ = signals.recv() => return Err(StartFailure::Interrupted),
        };
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Err(StartFailure::DeathTimeout(format!(
                "could not reach the scheduler within --death-timeout {} ({attempts} attempts); \
                 last error: {why}",
                args.nanny.death_timeout
            )));
        }
        let wait = deadline.map_or(delay, |d| delay.min(d - now));
        warn!("cannot register with the scheduler yet ({why}); retrying in {wait:?}");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = signals.recv() => return Err(StartFailure::Interrupted),
        }
        delay = (delay * 2).min(CONNECT_BACKOFF.1);
    }
}

/// Whether a failure to reach the scheduler is a TLS mismatch that retrying cannot fix: a
/// certificate refused either way, TLS against plain TCP, or an unencrypted address under
/// `--require-encryption`.
fn tls_mismatch(error: &str) -> bool {
    [
        "not signed by the cluster CA",
        "refused our certificate",
        "presented no certificate",
        "speaks TLS",
        "does not speak TLS",
        "--require-encryption",
        "has no TLS certificates",
    ]
    .iter()
    .any(|m| error.contains(m))
}

fn builder(
    args: &WorkerArgs,
    plan: &Plan,
    i: usize,
    scheduler: Address,
) -> taskwire_worker::WorkerBuilder {
    // The data server speaks what the scheduler speaks (tcp://, ucx://).
    let scheme = match &scheduler {
        Address::Net { scheme, .. } => *scheme,
        Address::Inproc(_) => taskwire_transport::Scheme::Tcp,
    };
    let mut b = Worker::builder(scheduler)
        .security(plan.security.clone())
        // The stock functions and the GPU ones (`gpu-info`, `gpu-saxpy`) on CUDA device 0, which
        // a cuda-worker child's rotated CUDA_VISIBLE_DEVICES makes its own GPU.
        .functions(taskwire_cuda_worker::worker_functions())
        .nthreads(plan.nthreads)
        .memory_limit(plan.memory_limit)
        .zero_worker(args.zero_worker)
        .restarts(args.restarts);
    if let Some(name) = &args.name {
        b = b.name(if plan.nworkers > 1 {
            format!("{name}-{i}")
        } else {
            name.clone()
        });
    }
    for (r, a) in &plan.resources {
        b = b.resource(r.clone(), *a);
    }
    if let Some(dir) = &args.local_directory {
        b = b.local_directory(local_directory(dir, args.worker_index + i));
    }
    if let Some((probe, limit)) = gpu_memory_probe() {
        b = b.gpu_memory(probe, limit);
    }
    if let Ok(Some(port)) = args.nanny.dashboard_port(i) {
        b = b.metrics_port(&nanny_host(args), port);
    }
    if args.worker_port.is_some() || args.host.is_some() {
        let host = args.host.clone().unwrap_or_else(|| "0.0.0.0".into());
        let port = args.worker_port.map_or(0, |p| p + i as u16);
        b = b.listen(Address::Net { scheme, host, port });
    }
    b
}

/// A cuda-worker child (its nanny set the device memory limit in its environment) reports its
/// GPU's memory in heartbeats, read through NVML; `None` for CPU workers, or with a warning when
/// NVML cannot read the GPU.
fn gpu_memory_probe() -> Option<(taskwire_worker::GpuMemoryProbe, u64)> {
    let limit: u64 = std::env::var(taskwire_cuda_worker::DEVICE_MEMORY_LIMIT_ENV)
        .ok()?
        .parse()
        .ok()?;
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    match taskwire_cuda_worker::DeviceMemoryReader::for_worker(visible.as_deref()) {
        Ok(reader) => {
            let reader = std::sync::Mutex::new(reader);
            let probe: taskwire_worker::GpuMemoryProbe = std::sync::Arc::new(move || {
                let m = reader.lock().ok()?.read().ok()?;
                Some((m.used, m.total))
            });
            Some((probe, limit))
        }
        Err(e) => {
            warn!("GPU memory will not be reported: {e}");
            None
        }
    }
}

/// Retire every worker at once (each hands its results to other workers), closing any that
/// take longer than [`RETIRE_TIMEOUT`]; a signal meanwhile closes them all now.
async fn retire_all(handles: Vec<WorkerHandle>, signals: &mut Signals) {
    let mut set = tokio::task::JoinSet::new();
    for h in handles {
        set.spawn(async move {
            if tokio::time::timeout(RETIRE_TIMEOUT, h.retire())
                .await
                .is_err()
            {
                warn!(
                    "worker {} did not retire within {RETIRE_TIMEOUT:?}; closing it",
                    h.name()
                );
            }
            h.close().await;
        });
    }
    tokio::select! {
        _ = async { while set.join_next().await.is_some() {} } => {}
        _ = signals.recv() => {
            warn!("second signal: closing the workers without waiting for retirement");
            // Dropping the handles stops the workers.
            set.shutdown().await;
        }
    }
}

/// What ended a `--no-nanny` worker process's wait.
enum Ending {
    Signal,
    Lifetime,
    Finished(Vec<StopReason>),
}

async fn run_workers(args: &WorkerArgs, plan: &Plan) -> Result<i32, String> {
    let mut signals = Signals::new()?;
    let deadline = plan.death_timeout.map(|d| Instant::now() + d);
    let mut handles = Vec::with_capacity(plan.nworkers);
    for i in 0..plan.nworkers {
        match start_worker(args, plan, i, deadline, &mut signals).await {
            Ok(w) => {
                println!("Start worker at: {}", w.address());
                println!("Registered to: {}", w.scheduler());
                if let Some(link) = w.metrics_link() {
                    println!("worker metrics at: {link}");
                }
                handles.push(w);
            }
            Err(StartFailure::Interrupted) => {
                println!("Stopping worker");
                return Ok(0);
            }
            Err(StartFailure::DeathTimeout(why)) => {
                eprintln!("error: {why}");
                return Ok(EXIT_DEATH_TIMEOUT);
            }
            Err(StartFailure::Fatal(why)) => return Err(format!("worker failed to start: {why}")),
        }
    }
    let lifetime_at = plan
        .lifetime
        .map(|(l, s)| Instant::now() + taskwire_worker::staggered_lifetime(l, s));
    let ending = tokio::select! {
        _ = signals.recv() => Ending::Signal,
        _ = tokio::time::sleep_until(lifetime_at.unwrap_or_else(Instant::now)),
            if lifetime_at.is_some() => Ending::Lifetime,
        reasons = async {
            let mut reasons = Vec::with_capacity(handles.len());
            for h in &handles {
                reasons.push(h.finished().await);
            }
            reasons
        } => Ending::Finished(reasons),
    };
    match ending {
        Ending::Signal => {
            println!("Stopping worker");
            info!("retiring: handing results to other workers (a second signal closes now)");
            retire_all(handles, &mut signals).await;
            Ok(0)
        }
        Ending::Lifetime => {
            info!(
                "--lifetime {} reached; retiring",
                args.nanny.lifetime.as_deref().unwrap_or("")
            );
            retire_all(handles, &mut signals).await;
            Ok(0)
        }
        Ending::Finished(reasons) => {
            if let Some(r) = reasons
                .iter()
                .find(|r| matches!(r, StopReason::LostScheduler(_)))
            {
                eprintln!("error: worker stopped: {r}");
                return Ok(EXIT_LOST_SCHEDULER);
            }
            if let Some(r) = reasons.iter().find(|r| matches!(r, StopReason::Failed(_))) {
                return Err(format!("worker stopped: {r}"));
            }
            info!("the scheduler closed the worker(s); exiting");
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_parse_and_complain() {
        assert_eq!(
            parse_resources("GPU=1, MEM=4e9").unwrap(),
            vec![("GPU".into(), 1.0), ("MEM".into(), 4e9)]
        );
        assert!(parse_resources("").unwrap().is_empty());
        assert!(parse_resources("GPU").unwrap_err().contains("NAME=AMOUNT"));
        assert!(
            parse_resources("GPU=x")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(parse_resources("GPU=-1").is_err());
    }

    #[test]
    fn death_timeouts() {
        assert_eq!(parse_death_timeout("inf").unwrap(), None);
        assert_eq!(parse_death_timeout("0").unwrap(), None);
        assert_eq!(
            parse_death_timeout("60s").unwrap(),
            Some(Duration::from_secs(60))
        );
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        worker: WorkerArgs,
    }

    fn args(line: &[&str]) -> WorkerArgs {
        use clap::Parser;
        Cli::parse_from(std::iter::once("worker").chain(line.iter().copied())).worker
    }

    #[test]
    fn children_get_their_own_name_port_and_directory() {
        let a = args(&[
            "tcp://127.0.0.1:8786",
            "--nworkers",
            "2",
            "--name",
            "w",
            "--worker-port",
            "9000",
            "--memory-limit",
            "1GB",
            "--local-directory",
            "/scratch",
            "--lifetime",
            "1h",
        ]);
        let p = plan(&a).unwrap();
        let child: Vec<String> = child_args(&a, &p, 1)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let line = child.join(" ");
        assert!(line.starts_with("worker tcp://127.0.0.1:8786 "), "{line}");
        for want in [
            "--nworkers 1",
            "--memory-limit 1000000000",
            "--name w-1",
            "--worker-port 9001",
            "--worker-index 1",
            "--local-directory /scratch",
            "--no-nanny",
        ] {
            assert!(line.contains(want), "{want}: {line}");
        }
        // The nanny retires and replaces the child itself.
        assert!(!line.contains("--lifetime"), "{line}");
        let again = args(&child[1..].iter().map(String::as_str).collect::<Vec<_>>());
        assert!(again.no_nanny && plan(&again).is_ok());
    }

    #[test]
    fn plans_refuse_nonsense() {
        let bad = |line: &[&str]| plan(&args(line)).unwrap_err();
        assert!(bad(&["tcp://h:1", "--nworkers", "0"]).contains("--nworkers"));
        assert!(bad(&["tcp://h:1", "--nworkers", "3", "--worker-port", "65534"]).contains("65535"));
        assert!(bad(&[]).contains("scheduler address"));
        assert!(bad(&["tcp://h:1", "--lifetime", "0s"]).contains("--lifetime"));
        assert!(bad(&["tcp://h:1", "--death-timeout", "later"]).contains("--death-timeout"));
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("4GB", 1).unwrap(), 4_000_000_000);
        assert_eq!(parse_memory("512MiB", 1).unwrap(), 512 << 20);
        assert_eq!(parse_memory("4e9", 1).unwrap(), 4_000_000_000);
        assert_eq!(parse_memory("1000", 1).unwrap(), 1000);
        assert!(parse_memory("4XB", 1).is_err());
        assert!(parse_memory("auto", 2).unwrap() > 0);
    }
}
