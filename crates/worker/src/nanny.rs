//! The nanny: a supervisor that runs each worker as a child process and restarts it when it
//! dies, runs out of memory, loses the scheduler or reaches the end of its lifetime.
//!
//! The nanny knows nothing about tasks or the scheduler. It runs a program (the `taskwire`
//! binary itself, as `taskwire worker ... --no-nanny`) once per worker slot, appends
//! `--restarts K` to the arguments (K: how many times this slot was restarted, which the worker
//! reports to the scheduler), and reads the child's exit status:
//!
//! | child exit                          | the nanny                                               |
//! |-------------------------------------|---------------------------------------------------------|
//! | 0, unasked (retired by the cluster) | leaves the slot stopped: the cluster wanted it gone     |
//! | 0 or anything, after the nanny asked (lifetime, `restart`) | starts a fresh child at once |
//! | [`EXIT_LOST_SCHEDULER`]             | restarts it with backoff, not counted as a failure      |
//! | [`EXIT_DEATH_TIMEOUT`]              | gives the slot up: the scheduler stayed unreachable     |
//! | other code, killed by a signal, or killed by the nanny for memory | restarts it with backoff, counted as a failure |
//!
//! With [`NannyBuilder::lifetime_restart`] off, a child that reached its lifetime is not
//! replaced: its slot ends as retired.
//!
//! A slot with more than [`RestartPolicy::max_failures`] failures within
//! [`RestartPolicy::window`] is given up; [`NannyHandle::finished`] resolves once every slot
//! has ended. Backoff starts at [`RestartPolicy::initial_backoff`], doubles up to
//! [`RestartPolicy::max_backoff`], and starts over once a child has stayed up for
//! [`RestartPolicy::reset_after`].
//!
//! Memory: every [`NannyBuilder::poll_interval`] the nanny reads each child's resident set size
//! (`VmRSS` in `/proc/PID/status`) and kills (SIGKILL) a child above
//! the `terminate` fraction of its memory limit (Dask's `terminate` threshold).
//!
//! Children run in their own process group (a Ctrl-C in a terminal reaches only the nanny,
//! which forwards SIGTERM so that the workers retire gracefully) and die with the nanny
//! (`PR_SET_PDEATHSIG`), so a nanny killed with SIGKILL leaves no orphan workers behind. The
//! death signal follows the thread that spawned the child: run the nanny on a runtime whose
//! threads live as long as the nanny (any tokio runtime's core threads do).
//!
//! A child's standard output passes through the nanny line by line (which is how the nanny
//! learns that the worker registered: its `Registered to:` line); standard error is inherited.
//!
//! The nanny also serves a tiny line protocol on TCP for operators and tests: `status\n` is
//! answered with one line of JSON, `{"workers":[{"index":0,"pid":123,"restarts":1,
//! "state":"running"}]}`, and `restart\n` restarts every child gracefully and answers `ok\n`
//! once fresh children have been started. Anything else gets a line starting with `error:`.
//!
//! With [`NannyBuilder::control_tls`] the control port speaks TLS with the cluster's mutual
//! authentication (the transport's `tls://` rules: a client certificate signed by the cluster
//! CA, host names not checked); a plain client is answered with one `error:` line saying so and
//! refused. With [`NannyBuilder::control_auth_token`] the token's challenge follows, inside the
//! TLS session when there is one.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taskwire_protocol::{AUTH_FAILED, ClusterSecret, control_challenge};
use taskwire_transport_tcp::TlsConfig;
use taskwire_transport_tcp::tls::accept_stream;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{error, info, warn};

/// Exit code of a worker process that lost its scheduler (it may come back: restart it).
pub const EXIT_LOST_SCHEDULER: i32 = 3;
/// Exit code of a worker process that could not reach its scheduler within its death timeout.
pub const EXIT_DEATH_TIMEOUT: i32 = 4;
/// A child whose resident set size crosses this fraction of its memory limit is killed: the
/// `terminate` threshold of [`MemoryConfig`](crate::MemoryConfig) (Dask's 0.95).
fn terminate_fraction() -> f64 {
    crate::MemoryConfig::default().terminate.unwrap_or(1.0)
}
/// Environment variables set to `1` in every child unless the nanny's environment sets them:
/// a worker already runs one task per thread, so numeric libraries should not start their own
/// thread pools on top (Dask's nanny does the same).
pub const THREAD_LIMIT_ENV: [&str; 3] =
    ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"];

/// Longest control-protocol line, newline included.
const MAX_CONTROL_LINE: usize = 256;
/// A control connection silent this long is closed.
const CONTROL_IDLE: Duration = Duration::from_secs(10);
/// Control connections served at once; more wait to be accepted.
const MAX_CONTROL_CONNECTIONS: usize = 16;

/// When to restart a child and when to give up on it.
#[derive(Clone, Debug, PartialEq)]
pub struct RestartPolicy {
    /// First wait before restarting a child that failed or lost the scheduler.
    pub initial_backoff: Duration,
    /// The wait doubles after each restart up to this.
    pub max_backoff: Duration,
    /// A child that stayed up this long starts the backoff over.
    pub reset_after: Duration,
    /// More failures than this within [`RestartPolicy::window`] give the slot up.
    pub max_failures: u32,
    /// The window for [`RestartPolicy::max_failures`].
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            reset_after: Duration::from_secs(10),
            max_failures: 10,
            window: Duration::from_secs(60),
        }
    }
}

/// Why the nanny could not start.
#[derive(Debug, thiserror::Error)]
pub enum NannyError {
    /// The control port could not be opened.
    #[error("cannot listen for nanny control connections on {addr}: {source}")]
    Control {
        /// Where it tried.
        addr: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The configuration makes no sense (no children, say).
    #[error("{0}")]
    Config(String),
}

/// What a child slot is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildState {
    /// The process runs and has not registered yet.
    Starting,
    /// The process runs and printed `Registered to:`.
    Running,
    /// The nanny asked it to stop (SIGTERM) and waits for it to exit.
    Stopping,
    /// Waiting before the next restart.
    Backoff,
    /// It exited by itself with status 0 (retired by the cluster); not restarted.
    Retired,
    /// Stopped because the nanny shut down.
    Stopped,
    /// Given up: too many failures, or the scheduler stayed unreachable.
    Failed,
}

impl ChildState {
    /// The lowercase name used in the control protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            ChildState::Starting => "starting",
            ChildState::Running => "running",
            ChildState::Stopping => "stopping",
            ChildState::Backoff => "backoff",
            ChildState::Retired => "retired",
            ChildState::Stopped => "stopped",
            ChildState::Failed => "failed",
        }
    }

    fn ended(self) -> bool {
        matches!(
            self,
            ChildState::Retired | ChildState::Stopped | ChildState::Failed
        )
    }
}

/// One child slot, as [`NannyHandle::status`] and the control protocol report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildStatus {
    /// The slot's index (worker `i` of `--nworkers`).
    pub index: usize,
    /// The process id while a process runs.
    pub pid: Option<u32>,
    /// Times this slot was restarted.
    pub restarts: u32,
    /// What it is doing.
    pub state: ChildState,
}

/// How the nanny ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NannyOutcome {
    /// Shut down through [`NannyHandle::shutdown`]; every child stopped.
    Stopped,
    /// Every child was retired by the cluster.
    Retired,
    /// This many slots were given up (the others retired or stopped).
    GaveUp(usize),
}

/// The status line of the control protocol: `{"workers":[...]}` (no newline).
pub fn status_json(status: &[ChildStatus]) -> String {
    let workers: Vec<String> = status
        .iter()
        .map(|s| {
            let pid = s.pid.map_or_else(|| "null".to_string(), |p| p.to_string());
            format!(
                "{{\"index\":{},\"pid\":{pid},\"restarts\":{},\"state\":\"{}\"}}",
                s.index,
                s.restarts,
                s.state.as_str()
            )
        })
        .collect();
    format!("{{\"workers\":[{}]}}", workers.join(","))
}

/// What one child slot gets besides its arguments: environment variables of its own (after the
/// nanny-wide ones of [`NannyBuilder::env`]) and the CPUs it may run on. The cuda-worker uses it
/// to give each worker its rotated `CUDA_VISIBLE_DEVICES` and the CPUs close to its GPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChildOptions {
    /// Environment variables for this child only.
    pub env: Vec<(OsString, OsString)>,
    /// Pin the child (all its threads) to these CPUs, set before it runs (`sched_setaffinity`
    /// between fork and exec); `None` leaves the nanny's own affinity.
    pub cpus: Option<Vec<usize>>,
}

/// Entry point for starting a nanny.
#[derive(Debug)]
pub struct Nanny {
    shared: Arc<Shared>,
    listener: Option<TcpListener>,
    control_auth: ControlAuth,
}

/// What the control port requires of a connection.
#[derive(Debug, Default)]
struct ControlAuth {
    token: Option<ClusterSecret>,
    tls: Option<TlsConfig>,
}

/// What a plain client of a TLS control port is told.
const CONTROL_NEEDS_TLS: &[u8] =
    b"error: this nanny's control port speaks TLS: connect with the cluster's certificates\n";

impl Nanny {
    /// A nanny that runs `program` (usually `std::env::current_exe()`) for each child.
    pub fn builder(program: impl Into<PathBuf>) -> NannyBuilder {
        NannyBuilder {
            program: program.into(),
            children: Vec::new(),
            env: Vec::new(),
            memory_limit: 0,
            lifetime: None,
            lifetime_restart: true,
            policy: RestartPolicy::default(),
            control: None,
            control_auth: ControlAuth::default(),
            stop_timeout: Duration::from_secs(40),
            poll_interval: Duration::from_millis(100),
        }
    }

    /// Where the control protocol listens, when [`NannyBuilder::control`] was set.
    pub fn control_address(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Start every child and the control server.
    pub fn start(self) -> NannyHandle {
        let n = self.shared.children.len();
        let (stop_tx, stop_rx) = watch::channel(Stop::Run);
        let (done_tx, done_rx) = watch::channel(None);
        let mut commands = Vec::with_capacity(n);
        let mut supervisors = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = mpsc::channel(8);
            commands.push(tx);
            supervisors.push(tokio::spawn(supervise(
                i,
                self.shared.clone(),
                rx,
                stop_rx.clone(),
            )));
        }
        let commands = Arc::new(commands);
        if let Some(listener) = self.listener {
            tokio::spawn(serve_control(
                listener,
                self.shared.clone(),
                commands.clone(),
                Arc::new(self.control_auth),
            ));
        }
        tokio::spawn(async move {
            let mut outcome = NannyOutcome::Retired;
            let mut gave_up = 0;
            for s in supervisors {
                match s.await {
                    Ok(ChildState::Retired) => {}
                    Ok(ChildState::Stopped) => outcome = NannyOutcome::Stopped,
                    _ => gave_up += 1,
                }
            }
            if gave_up > 0 {
                outcome = NannyOutcome::GaveUp(gave_up);
            }
            let _ = done_tx.send(Some(outcome));
        });
        NannyHandle {
            shared: self.shared,
            stop: stop_tx,
            commands,
            done: done_rx,
        }
    }
}

/// Options for a nanny.
#[derive(Debug)]
pub struct NannyBuilder {
    program: PathBuf,
    children: Vec<(Vec<OsString>, ChildOptions)>,
    env: Vec<(OsString, OsString)>,
    memory_limit: u64,
    lifetime: Option<(Duration, Duration)>,
    lifetime_restart: bool,
    policy: RestartPolicy,
    control: Option<String>,
    control_auth: ControlAuth,
    stop_timeout: Duration,
    poll_interval: Duration,
}

impl NannyBuilder {
    /// Add a child slot run as `program args... --restarts K`.
    pub fn child<I, S>(self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.child_with(args, ChildOptions::default())
    }

    /// Add a child slot run as `program args... --restarts K` with its own environment and CPU
    /// affinity; every restart of the slot gets the same.
    pub fn child_with<I, S>(mut self, args: I, options: ChildOptions) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.children
            .push((args.into_iter().map(Into::into).collect(), options));
        self
    }

    /// An environment variable for every child (overrides [`THREAD_LIMIT_ENV`] defaults).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Each child's memory limit in bytes; 0 (the default) turns the memory watch off.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// Retire and replace each child after `lifetime`, plus or minus a random part of
    /// `stagger` (Dask's `--lifetime` and `--lifetime-stagger`).
    pub fn lifetime(mut self, lifetime: Duration, stagger: Duration) -> Self {
        self.lifetime = Some((lifetime, stagger));
        self
    }

    /// Whether a child that reached its lifetime is replaced by a fresh one (default true).
    /// With false its slot ends, and the nanny exits once every slot has: what a worker in a
    /// batch job wants, so that the job ends before the batch system's walltime kills it.
    pub fn lifetime_restart(mut self, restart: bool) -> Self {
        self.lifetime_restart = restart;
        self
    }

    /// When to restart and when to give up.
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Serve the control protocol on `host:port` (port 0: any free port).
    pub fn control(mut self, host: impl Into<String>, port: u16) -> Self {
        let host = host.into();
        self.control = Some(if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        });
        self
    }

    /// How long a child asked to stop (SIGTERM) may take before it is killed (default 40 s:
    /// a worker retires within 30 s).
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// How often to read each child's memory use (default 100 ms).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every.max(Duration::from_millis(10));
        self
    }

    /// Require this cluster token on the control port: each connection is greeted with
    /// `challenge HEX` and must answer `auth HEX` (see
    /// [`ClusterSecret::control_response`]) before any command.
    pub fn control_auth_token(mut self, secret: ClusterSecret) -> Self {
        self.control_auth.token = Some(secret);
        self
    }

    /// Serve the control port over TLS with this identity: clients must present a certificate
    /// signed by its CA, and plain connections are refused with an `error:` line.
    pub fn control_tls(mut self, tls: TlsConfig) -> Self {
        self.control_auth.tls = Some(tls);
        self
    }

    /// Open the control port; nothing runs until [`Nanny::start`].
    pub async fn bind(self) -> Result<Nanny, NannyError> {
        if self.children.is_empty() {
            return Err(NannyError::Config(
                "a nanny needs at least one child".into(),
            ));
        }
        let mut children = Vec::with_capacity(self.children.len());
        for (i, (args, options)) in self.children.into_iter().enumerate() {
            let cpus = match &options.cpus {
                Some(cpus) => Some(
                    cpu_set(cpus).map_err(|e| NannyError::Config(format!("worker {i}: {e}")))?,
                ),
                None => None,
            };
            children.push(ChildSpec {
                args,
                env: options.env,
                cpus,
            });
        }
        let listener = match &self.control {
            Some(addr) => Some(TcpListener::bind(addr.as_str()).await.map_err(|source| {
                NannyError::Control {
                    addr: addr.clone(),
                    source,
                }
            })?),
            None => None,
        };
        let mut env: Vec<(OsString, OsString)> = THREAD_LIMIT_ENV
            .iter()
            .filter(|k| std::env::var_os(k).is_none())
            .map(|k| (OsString::from(k), OsString::from("1")))
            .collect();
        env.extend(self.env);
        let status = (0..children.len())
            .map(|index| ChildStatus {
                index,
                pid: None,
                restarts: 0,
                state: ChildState::Starting,
            })
            .collect();
        Ok(Nanny {
            shared: Arc::new(Shared {
                program: self.program,
                children,
                env,
                memory_limit: self.memory_limit,
                lifetime: self.lifetime,
                lifetime_restart: self.lifetime_restart,
                policy: self.policy,
                stop_timeout: self.stop_timeout,
                poll_interval: self.poll_interval,
                status: Mutex::new(status),
            }),
            listener,
            control_auth: self.control_auth,
        })
    }
}

/// A running nanny. Dropping it kills the children.
#[derive(Debug)]
pub struct NannyHandle {
    shared: Arc<Shared>,
    stop: watch::Sender<Stop>,
    commands: Arc<Vec<mpsc::Sender<Command>>>,
    done: watch::Receiver<Option<NannyOutcome>>,
}

impl NannyHandle {
    /// Every slot's state.
    pub fn status(&self) -> Vec<ChildStatus> {
        self.shared.status()
    }

    /// Restart every running child gracefully (SIGTERM, wait, start); returns once fresh
    /// children have been started.
    pub async fn restart_all(&self) {
        restart_all(&self.commands).await;
    }

    /// Stop: the first call asks every child to retire (SIGTERM) and kills those still there
    /// after the stop timeout; a second call kills them now.
    pub fn shutdown(&self) {
        self.stop.send_modify(|s| {
            *s = match *s {
                Stop::Run => Stop::Graceful,
                _ => Stop::Now,
            }
        });
    }

    /// Resolves once every slot has ended.
    pub async fn finished(&self) -> NannyOutcome {
        let mut done = self.done.clone();
        match done.wait_for(Option::is_some).await {
            Ok(o) => o.expect("set"),
            Err(_) => NannyOutcome::Stopped,
        }
    }
}

impl Drop for NannyHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(Stop::Now);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Run,
    Graceful,
    Now,
}

#[derive(Debug)]
enum Command {
    /// Restart the child gracefully; answer once a fresh one was started (or the slot ended).
    Restart(oneshot::Sender<()>),
}

/// A child slot as the nanny runs it.
struct ChildSpec {
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    /// Built before any fork: `pre_exec` may not allocate.
    cpus: Option<libc::cpu_set_t>,
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("args", &self.args)
            .field("env", &self.env)
            .field("pinned", &self.cpus.is_some())
            .finish()
    }
}

/// The affinity mask of `cpus`; refuses an empty list and CPUs the mask cannot hold.
fn cpu_set(cpus: &[usize]) -> Result<libc::cpu_set_t, String> {
    if cpus.is_empty() {
        return Err("an empty CPU list would leave the worker no CPU to run on".into());
    }
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    for &c in cpus {
        if c >= max {
            return Err(format!(
                "CPU {c} is beyond the {max} CPUs an affinity mask holds"
            ));
        }
        // SAFETY: c is below the set's size in bits (checked above).
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    Ok(set)
}

#[derive(Debug)]
struct Shared {
    program: PathBuf,
    children: Vec<ChildSpec>,
    env: Vec<(OsString, OsString)>,
    memory_limit: u64,
    lifetime: Option<(Duration, Duration)>,
    lifetime_restart: bool,
    policy: RestartPolicy,
    stop_timeout: Duration,
    poll_interval: Duration,
    status: Mutex<Vec<ChildStatus>>,
}

impl Shared {
    fn status(&self) -> Vec<ChildStatus> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn update(&self, i: usize, f: impl FnOnce(&mut ChildStatus)) {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut status[i]);
    }
}

/// Why the nanny asked a child to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asked {
    Lifetime,
    Restart,
    Shutdown,
}

/// How a child's run ended, as the restart policy sees it.
#[derive(Debug)]
enum Ended {
    Asked(Asked),
    Retired,
    LostScheduler,
    DeathTimeout,
    Failed(String),
}

fn classify(status: ExitStatus, asked: Option<Asked>, memory_killed: bool) -> Ended {
    use std::os::unix::process::ExitStatusExt;
    if let Some(a) = asked {
        return Ended::Asked(a);
    }
    if memory_killed {
        return Ended::Failed("killed for exceeding its memory limit".into());
    }
    match (status.code(), status.signal()) {
        (Some(0), _) => Ended::Retired,
        (Some(EXIT_LOST_SCHEDULER), _) => Ended::LostScheduler,
        (Some(EXIT_DEATH_TIMEOUT), _) => Ended::DeathTimeout,
        (Some(code), _) => Ended::Failed(format!("exited with code {code}")),
        (None, Some(sig)) => Ended::Failed(format!("killed by signal {sig}")),
        (None, None) => Ended::Failed(format!("ended with {status}")),
    }
}

/// A random duration in `[-stagger, +stagger]`, from the standard library's hasher seed.
fn stagger_offset(stagger: Duration) -> (bool, Duration) {
    use std::hash::{BuildHasher, Hasher};
    if stagger.is_zero() {
        return (true, Duration::ZERO);
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    let r = h.finish();
    let frac = (r >> 11) as f64 / (1u64 << 53) as f64;
    (r & 1 == 0, stagger.mul_f64(frac))
}

/// `lifetime` moved by a random amount within `[-stagger, +stagger]`, at least 100 ms (Dask's
/// `--lifetime-stagger`: workers started together do not all leave together).
pub fn staggered_lifetime(lifetime: Duration, stagger: Duration) -> Duration {
    let (plus, offset) = stagger_offset(stagger);
    let life = if plus {
        lifetime + offset
    } else {
        lifetime.saturating_sub(offset)
    };
    life.max(Duration::from_millis(100))
}

fn lifetime_deadline(now: Instant, lifetime: Option<(Duration, Duration)>) -> Option<Instant> {
    let (life, stagger) = lifetime?;
    Some(now + staggered_lifetime(life, stagger))
}

/// Resident set size of process `pid` in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_of(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers; the pid is our own child, which we have not reaped
    // yet (we only signal before `wait` returned), so it cannot have been reused.
    unsafe {
        libc::kill(pid, sig);
    }
}

fn spawn_child(shared: &Shared, i: usize, restarts: u32) -> std::io::Result<tokio::process::Child> {
    let spec = &shared.children[i];
    let mut cmd = tokio::process::Command::new(&shared.program);
    cmd.args(&spec.args)
        .arg("--restarts")
        .arg(restarts.to_string())
        .envs(shared.env.iter().map(|(k, v)| (k, v)))
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .process_group(0);
    let parent = std::process::id() as libc::pid_t;
    let cpus = spec.cpus;
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (prctl, getppid, sched_setaffinity on a mask built before the fork) without
    // allocating.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(set) = &cpus
                && libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The nanny died between fork and prctl: do not run as an orphan.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Copy a child's standard output to ours line by line, noting its registration.
async fn forward_stdout(
    stdout: tokio::process::ChildStdout,
    shared: Arc<Shared>,
    i: usize,
    pid: u32,
) {
    use std::io::Write;
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.starts_with("Registered to:") {
            shared.update(i, |s| {
                if s.pid == Some(pid) && s.state == ChildState::Starting {
                    s.state = ChildState::Running;
                }
            });
        }
        let mut out = std::io::stdout().lock();
        // Our own standard output closing must not take the nanny down.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Run one child slot until it is retired, stopped or given up; returns its final state.
async fn supervise(
    i: usize,
    shared: Arc<Shared>,
    mut commands: mpsc::Receiver<Command>,
    mut stop: watch::Receiver<Stop>,
) -> ChildState {
    let policy = shared.policy.clone();
    let mut restarts: u32 = 0;
    let mut backoff = policy.initial_backoff;
    let mut failures: VecDeque<Instant> = VecDeque::new();
    let mut acks: Vec<oneshot::Sender<()>> = Vec::new();
    let mut stop_open = true;
    let mut commands_open = true;
    let threshold = (shared.memory_limit as f64 * terminate_fraction()) as u64;
    let final_state = 'slot: loop {
        if *stop.borrow() != Stop::Run {
            break ChildState::Stopped;
        }
        let started = Instant::now();
        let mut child = match spawn_child(&shared, i, restarts) {
            Ok(c) => c,
            Err(e) => {
                error!(
                    "nanny: cannot start worker {i} ({}): {e}",
                    shared.program.display()
                );
                // Counted like a crash: a missing binary gives the slot up after the limit.
                failures.push_back(started);
                while failures
                    .front()
                    .is_some_and(|t| started.duration_since(*t) > policy.window)
                {
                    failures.pop_front();
                }
                if failures.len() > policy.max_failures as usize {
                    break ChildState::Failed;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(policy.max_backoff);
                continue;
            }
        };
        let pid = child.id().unwrap_or(0);
        shared.update(i, |s| {
            s.pid = Some(pid);
            s.restarts = restarts;
            s.state = ChildState::Starting;
        });
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
        info!("nanny: started worker {i} (pid {pid}, restarts {restarts})");
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(forward_stdout(stdout, shared.clone(), i, pid));
        }

        let lifetime_at = lifetime_deadline(started, shared.lifetime);
        let mut asked: Option<Asked> = None;
        let mut kill_at: Option<Instant> = None;
        let mut memory_killed = false;
        let mut poll = tokio::time::interval(shared.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let far = || Instant::now() + Duration::from_secs(86_400 * 365);
        let status = loop {
            tokio::select! {
                st = child.wait() => break st,
                _ = poll.tick(), if threshold > 0 && !memory_killed => {
                    if let Some(rss) = rss_of(pid).filter(|&r| r > threshold) {
                        warn!(
                            "nanny: worker {i} (pid {pid}) uses {rss} bytes, more than {:.0}% of \
                             its memory limit of {} bytes; killing it (SIGKILL) and restarting",
                            terminate_fraction() * 100.0,
                            shared.memory_limit
                        );
                        signal(pid, libc::SIGKILL);
                        memory_killed = true;
                    }
                }
                _ = tokio::time::sleep_until(lifetime_at.unwrap_or_else(far)),
                    if lifetime_at.is_some() && asked.is_none() =>
                {
                    info!("nanny: worker {i} (pid {pid}) reached its lifetime; retiring it");
                    asked = Some(Asked::Lifetime);
                    signal(pid, libc::SIGTERM);
                    kill_at = Some(Instant::now() + shared.stop_timeout);
                    shared.update(i, |s| s.state = ChildState::Stopping);
                }
                cmd = commands.recv(), if commands_open => match cmd {
                    Some(Command::Restart(ack)) => {
                        acks.push(ack);
                        if asked.is_none() {
                            info!("nanny: restarting worker {i} (pid {pid}) on request");
                            asked = Some(Asked::Restart);
                            signal(pid, libc::SIGTERM);
                            kill_at = Some(Instant::now() + shared.stop_timeout);
                            shared.update(i, |s| s.state = ChildState::Stopping);
                        }
                    }
                    // Nobody can ask for anything any more.
                    None => commands_open = false,
                },
                changed = stop.changed(), if stop_open => {
                    let now = if changed.is_err() {
                        stop_open = false;
                        Stop::Now
                    } else {
                        *stop.borrow_and_update()
                    };
                    match now {
                        Stop::Run => {}
                        Stop::Graceful => {
                            if asked != Some(Asked::Shutdown) {
                                asked = Some(Asked::Shutdown);
                                signal(pid, libc::SIGTERM);
                                kill_at = Some(Instant::now() + shared.stop_timeout);
                                shared.update(i, |s| s.state = ChildState::Stopping);
                            }
                        }
                        Stop::Now => {
                            asked = Some(Asked::Shutdown);
                            signal(pid, libc::SIGKILL);
                            kill_at = None;
                        }
                    }
                }
                _ = tokio::time::sleep_until(kill_at.unwrap_or_else(far)), if kill_at.is_some() => {
                    warn!(
                        "nanny: worker {i} (pid {pid}) did not exit within {:?} of SIGTERM; \
                         killing it",
                        shared.stop_timeout
                    );
                    signal(pid, libc::SIGKILL);
                    kill_at = None;
                }
            }
        };
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                error!("nanny: lost track of worker {i} (pid {pid}): {e}");
                break ChildState::Failed;
            }
        };
        let uptime = started.elapsed();
        shared.update(i, |s| s.pid = None);
        if uptime >= policy.reset_after {
            backoff = policy.initial_backoff;
        }
        let delay = match classify(status, asked, memory_killed) {
            Ended::Asked(Asked::Shutdown) => break ChildState::Stopped,
            Ended::Asked(Asked::Lifetime) if !shared.lifetime_restart => {
                info!(
                    "nanny: worker {i} (pid {pid}) exited ({status}) at the end of its lifetime; \
                     not replacing it"
                );
                break ChildState::Retired;
            }
            Ended::Asked(why) => {
                info!(
                    "nanny: worker {i} (pid {pid}) exited ({status}) after {why:?}; starting a fresh one"
                );
                Duration::ZERO
            }
            Ended::Retired => {
                info!(
                    "nanny: worker {i} (pid {pid}) exited with status 0 (retired); not restarting it"
                );
                break ChildState::Retired;
            }
            Ended::DeathTimeout => {
                error!(
                    "nanny: worker {i} (pid {pid}) could not reach the scheduler within its \
                     death timeout; giving up on it"
                );
                break ChildState::Failed;
            }
            Ended::LostScheduler => {
                warn!(
                    "nanny: worker {i} (pid {pid}) lost the scheduler; restarting it in {backoff:?}"
                );
                let d = backoff;
                backoff = (backoff * 2).min(policy.max_backoff);
                d
            }
            Ended::Failed(why) => {
                let now = Instant::now();
                failures.push_back(now);
                while failures
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > policy.window)
                {
                    failures.pop_front();
                }
                if failures.len() > policy.max_failures as usize {
                    error!(
                        "nanny: worker {i} (pid {pid}) {why}: {} failures within {:?}, more \
                         than the limit of {}; giving up on it",
                        failures.len(),
                        policy.window,
                        policy.max_failures
                    );
                    break ChildState::Failed;
                }
                warn!(
                    "nanny: worker {i} (pid {pid}) {why} after {uptime:.1?}; restarting it in \
                     {backoff:?} ({} of at most {} failures within {:?})",
                    failures.len(),
                    policy.max_failures,
                    policy.window
                );
                let d = backoff;
                backoff = (backoff * 2).min(policy.max_backoff);
                d
            }
        };
        restarts += 1;
        shared.update(i, |s| {
            s.restarts = restarts;
            s.state = ChildState::Backoff;
        });
        // Wait out the backoff; a restart request cuts it short, a stop ends the slot.
        let wake = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => break,
                cmd = commands.recv(), if commands_open => match cmd {
                    Some(Command::Restart(ack)) => {
                        acks.push(ack);
                        break;
                    }
                    None => commands_open = false,
                },
                changed = stop.changed(), if stop_open => {
                    if changed.is_err() || *stop.borrow_and_update() != Stop::Run {
                        break 'slot ChildState::Stopped;
                    }
                }
            }
        }
    };
    shared.update(i, |s| {
        s.pid = None;
        s.state = final_state;
    });
    debug_assert!(final_state.ended());
    final_state
}

async fn restart_all(commands: &[mpsc::Sender<Command>]) {
    let mut waits = Vec::with_capacity(commands.len());
    for c in commands {
        let (tx, rx) = oneshot::channel();
        if c.send(Command::Restart(tx)).await.is_ok() {
            waits.push(rx);
        }
    }
    for w in waits {
        // An ended slot drops the sender: nothing to wait for.
        let _ = w.await;
    }
}

async fn serve_control(
    listener: TcpListener,
    shared: Arc<Shared>,
    commands: Arc<Vec<mpsc::Sender<Command>>>,
    auth: Arc<ControlAuth>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONTROL_CONNECTIONS));
    loop {
        // Beyond the limit, connections wait in the kernel's backlog until one ends (at the
        // latest after CONTROL_IDLE): bounded work, and nobody is cut off mid-request.
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // E.g. out of file descriptors: wait a little instead of spinning.
                warn!("nanny: control accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let commands = commands.clone();
        let auth = auth.clone();
        tokio::spawn(async move {
            let token = auth.token.as_ref();
            let served = match &auth.tls {
                None => control_connection(conn, &shared, &commands, token).await,
                Some(tls) => {
                    match tokio::time::timeout(
                        CONTROL_IDLE,
                        accept_stream(tls, conn, CONTROL_NEEDS_TLS),
                    )
                    .await
                    {
                        Ok(Ok(conn)) => control_connection(conn, &shared, &commands, token).await,
                        Ok(Err(e)) => Err(std::io::Error::new(
                            std::io::ErrorKind::PermissionDenied,
                            e.to_string(),
                        )),
                        Err(_) => Err(std::io::Error::new(
                            std::io::ErrorKind::PermissionDenied,
                            format!("no TLS handshake within {CONTROL_IDLE:?}"),
                        )),
                    }
                }
            };
            match served {
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    warn!("nanny: refusing control connection from {peer}: {e}");
                }
                Err(e) => info!("nanny: control connection from {peer}: {e}"),
                Ok(()) => {}
            }
            drop(permit);
        });
    }
}

/// Read one line of at most [`MAX_CONTROL_LINE`] bytes; `None` when the peer closed, went
/// idle, or sent a line too long (after telling it so).
async fn control_line<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    read: &mut BufReader<R>,
    write: &mut W,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = match tokio::time::timeout(
        CONTROL_IDLE,
        read.take(MAX_CONTROL_LINE as u64)
            .read_until(b'\n', &mut line),
    )
    .await
    {
        Ok(r) => r?,
        Err(_) => return Ok(None),
    };
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        if line.len() >= MAX_CONTROL_LINE {
            write
                .write_all(format!("error: line longer than {MAX_CONTROL_LINE} bytes\n").as_bytes())
                .await?;
        }
        // Too long, or the peer closed in the middle of a line.
        return Ok(None);
    }
    Ok(Some(line))
}

/// Answer the commands of one control connection until it closes, goes idle, or misbehaves.
/// With a token the first line must answer the nanny's challenge.
async fn control_connection<S: AsyncRead + AsyncWrite>(
    conn: S,
    shared: &Shared,
    commands: &[mpsc::Sender<Command>],
    token: Option<&ClusterSecret>,
) -> std::io::Result<()> {
    let (read, mut write) = tokio::io::split(conn);
    let mut read = BufReader::new(read);
    if let Some(token) = token {
        let challenge = control_challenge();
        write
            .write_all(format!("challenge {challenge}\n").as_bytes())
            .await?;
        let answered = match control_line(&mut read, &mut write).await? {
            Some(line) => std::str::from_utf8(&line)
                .ok()
                .and_then(|l| l.trim().strip_prefix("auth "))
                .is_some_and(|r| token.verify_control_response(&challenge, r)),
            None => false,
        };
        if !answered {
            let _ = write
                .write_all(format!("error: {AUTH_FAILED}\n").as_bytes())
                .await;
            // Over TLS this says goodbye properly (close_notify), so the client reads the line
            // and a clean end rather than a truncation error.
            let _ = write.shutdown().await;
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                AUTH_FAILED,
            ));
        }
        write.write_all(b"ok\n").await?;
    }
    while let Some(line) = control_line(&mut read, &mut write).await? {
        let answer = match std::str::from_utf8(&line).map(str::trim) {
            Ok("status") => status_json(&shared.status()) + "\n",
            Ok("restart") => {
                restart_all(commands).await;
                "ok\n".to_string()
            }
            Ok("") => continue,
            Ok(other) => format!(
                "error: unknown command \"{}\"; commands: status, restart\n",
                other.chars().take(32).collect::<String>().escape_default()
            ),
            Err(_) => "error: commands are utf-8 text: status, restart\n".to_string(),
        };
        write.write_all(answer.as_bytes()).await?;
    }
    let _ = write.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_is_json() {
        let s = status_json(&[
            ChildStatus {
                index: 0,
                pid: Some(42),
                restarts: 1,
                state: ChildState::Running,
            },
            ChildStatus {
                index: 1,
                pid: None,
                restarts: 0,
                state: ChildState::Backoff,
            },
        ]);
        assert_eq!(
            s,
            r#"{"workers":[{"index":0,"pid":42,"restarts":1,"state":"running"},{"index":1,"pid":null,"restarts":0,"state":"backoff"}]}"#
        );
        assert_eq!(status_json(&[]), r#"{"workers":[]}"#);
    }

    #[test]
    fn exits_are_classified_by_code_signal_and_request() {
        use std::os::unix::process::ExitStatusExt;
        let code = |c: i32| ExitStatus::from_raw(c << 8);
        let sig = |s: i32| ExitStatus::from_raw(s);
        assert!(matches!(classify(code(0), None, false), Ended::Retired));
        assert!(matches!(
            classify(code(EXIT_LOST_SCHEDULER), None, false),
            Ended::LostScheduler
        ));
        assert!(matches!(
            classify(code(EXIT_DEATH_TIMEOUT), None, false),
            Ended::DeathTimeout
        ));
        assert!(matches!(classify(code(1), None, false), Ended::Failed(m) if m.contains("code 1")));
        assert!(
            matches!(classify(sig(9), None, false), Ended::Failed(m) if m.contains("signal 9"))
        );
        assert!(matches!(classify(sig(9), None, true), Ended::Failed(m) if m.contains("memory")));
        assert!(matches!(
            classify(code(0), Some(Asked::Lifetime), false),
            Ended::Asked(Asked::Lifetime)
        ));
    }

    #[test]
    fn stagger_stays_within_bounds() {
        let now = Instant::now();
        for _ in 0..100 {
            let at =
                lifetime_deadline(now, Some((Duration::from_secs(10), Duration::from_secs(2))))
                    .unwrap();
            let d = at - now;
            assert!(
                d >= Duration::from_secs(8) && d <= Duration::from_secs(12),
                "{d:?}"
            );
        }
        assert!(lifetime_deadline(now, None).is_none());
    }

    /// A nanny over `sh -c SCRIPT`; the appended `--restarts K` arrives as `$0 $1`.
    async fn sh_nanny(
        script: &str,
        policy: RestartPolicy,
        f: impl FnOnce(NannyBuilder) -> NannyBuilder,
    ) -> NannyHandle {
        let b = Nanny::builder("/bin/sh")
            .child(["-c", script])
            .restart_policy(policy);
        f(b).bind().await.unwrap().start()
    }

    fn quick(max_failures: u32) -> RestartPolicy {
        RestartPolicy {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            max_failures,
            ..RestartPolicy::default()
        }
    }

    async fn bounded(h: &NannyHandle) -> NannyOutcome {
        tokio::time::timeout(Duration::from_secs(30), h.finished())
            .await
            .expect("the nanny ends in time")
    }

    #[tokio::test]
    async fn crashing_child_is_given_up_after_the_limit() {
        let h = sh_nanny("exit 1", quick(2), |b| b).await;
        assert_eq!(bounded(&h).await, NannyOutcome::GaveUp(1));
        let st = h.status();
        assert_eq!(
            (st[0].restarts, st[0].state, st[0].pid),
            (2, ChildState::Failed, None)
        );
    }

    #[tokio::test]
    async fn retired_child_stays_retired() {
        let h = sh_nanny("exit 0", quick(2), |b| b).await;
        assert_eq!(bounded(&h).await, NannyOutcome::Retired);
        assert_eq!(h.status()[0].restarts, 0);
    }

    #[tokio::test]
    async fn lost_scheduler_restarts_are_not_failures() {
        // Exits "lost the scheduler" three times, then is retired; no failure is allowed.
        let script = format!("[ \"$1\" -lt 3 ] && exit {EXIT_LOST_SCHEDULER}; exit 0");
        let h = sh_nanny(&script, quick(0), |b| b).await;
        assert_eq!(bounded(&h).await, NannyOutcome::Retired);
        assert_eq!(h.status()[0].restarts, 3);
    }

    #[tokio::test]
    async fn death_timeout_gives_the_slot_up_at_once() {
        let script = format!("exit {EXIT_DEATH_TIMEOUT}");
        let h = sh_nanny(&script, quick(10), |b| b).await;
        assert_eq!(bounded(&h).await, NannyOutcome::GaveUp(1));
        assert_eq!(h.status()[0].restarts, 0);
    }

    #[tokio::test]
    async fn child_over_its_memory_limit_is_killed() {
        // Any process is bigger than 1 kB: killed at the first poll, a counted failure.
        let h = sh_nanny("exec sleep 30", quick(0), |b| {
            b.memory_limit(1000)
                .poll_interval(Duration::from_millis(10))
        })
        .await;
        assert_eq!(bounded(&h).await, NannyOutcome::GaveUp(1));
    }

    #[tokio::test]
    async fn lifetime_replaces_and_shutdown_stops() {
        let h = sh_nanny("exec sleep 30", quick(0), |b| {
            b.lifetime(Duration::from_millis(150), Duration::ZERO)
        })
        .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while h.status()[0].restarts < 2 {
            assert!(Instant::now() < deadline, "{:?}", h.status());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pid = loop {
            if let Some(p) = h.status()[0].pid {
                break p;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        h.shutdown();
        assert_eq!(bounded(&h).await, NannyOutcome::Stopped);
        assert!(rss_of(pid).is_none(), "the child is gone");
        assert_eq!(h.status()[0].state, ChildState::Stopped);
    }

    #[tokio::test]
    async fn lifetime_without_restart_ends_the_slot() {
        // A worker in a batch job: at the end of its lifetime it leaves, and the nanny (and
        // with it the job) ends instead of starting a fresh worker.
        let h = sh_nanny("exec sleep 30", quick(0), |b| {
            b.lifetime(Duration::from_millis(150), Duration::ZERO)
                .lifetime_restart(false)
        })
        .await;
        assert_eq!(bounded(&h).await, NannyOutcome::Retired);
        assert_eq!(h.status()[0].restarts, 0);
        assert_eq!(h.status()[0].state, ChildState::Retired);
    }

    #[tokio::test]
    async fn each_child_gets_its_own_env_and_cpus() {
        // Two children report their own variable and CPU list to files (the cuda-worker gives
        // each worker its rotated CUDA_VISIBLE_DEVICES and its GPU's CPUs this way).
        let dir = std::env::temp_dir().join(format!("taskwire-nanny-child-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let script = |i: usize| {
            format!(
                "{{ echo \"$WHO\"; grep Cpus_allowed_list: /proc/self/status; }} > {}/{i}.tmp \
                 && mv {0}/{i}.tmp {0}/{i}; exec sleep 30",
                dir.display()
            )
        };
        let h = Nanny::builder("/bin/sh")
            .env("WHO", "everyone")
            .child_with(
                ["-c".to_string(), script(0)],
                ChildOptions {
                    env: vec![("WHO".into(), "zero".into())],
                    cpus: Some(vec![0]),
                },
            )
            .child(["-c".to_string(), script(1)])
            .restart_policy(quick(0))
            .bind()
            .await
            .unwrap()
            .start();
        let read = |i: usize| {
            let path = dir.join(i.to_string());
            async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    if let Ok(s) = std::fs::read_to_string(&path) {
                        return s;
                    }
                    assert!(Instant::now() < deadline, "child {i} wrote nothing");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let zero = read(0).await;
        let one = read(1).await;
        assert!(zero.starts_with("zero\n"), "{zero}");
        assert!(zero.trim_end().ends_with(":\t0"), "pinned to CPU 0: {zero}");
        assert!(one.starts_with("everyone\n"), "{one}");
        h.shutdown();
        assert_eq!(bounded(&h).await, NannyOutcome::Stopped);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn impossible_cpu_lists_are_refused_at_bind() {
        let bind = |cpus: Vec<usize>| {
            Nanny::builder("/bin/true")
                .child_with(
                    Vec::<String>::new(),
                    ChildOptions {
                        env: Vec::new(),
                        cpus: Some(cpus),
                    },
                )
                .bind()
        };
        let e = bind(Vec::new()).await.unwrap_err().to_string();
        assert!(e.contains("no CPU"), "{e}");
        let e = bind(vec![1 << 20]).await.unwrap_err().to_string();
        assert!(e.contains("beyond"), "{e}");
    }

    #[test]
    fn own_rss_is_readable() {
        let rss = rss_of(std::process::id()).unwrap();
        assert!(rss > 0);
        assert!(rss_of(u32::MAX).is_none());
    }
}
