//! `SshCluster`: a scheduler on the first host and workers (under their nannies) on the others,
//! started over the system OpenSSH client (Dask's `SSHCluster`).
//!
//! Each remote process runs under a small POSIX `sh` wrapper that prints the process's pid and
//! watches the ssh session's stdin: when the session ends (this side closes it, `close()`, or
//! the local `ssh` dies with us), the wrapper sends the process SIGTERM. A nanny forwards that
//! to its workers, whose processes die with it. Where a process does not stop within the grace
//! period, a second ssh connection sends it SIGKILL by pid.

use crate::cluster::{Cluster, ClusterError};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taskwire_client::{Client, ClusterSecret, Security};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

/// This build's version, as `taskwire --version` prints it.
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The line the remote wrapper prints first.
const PID_MARK: &str = "taskwire-ssh-pid:";
/// How long a stopping nanny may take: it gives its workers 40 s before killing them.
const STOP_GRACE: Duration = Duration::from_secs(45);
/// Stderr lines kept per remote process for error messages.
const STDERR_TAIL: usize = 20;
/// How long a group whose workers were all retired may take to end by itself.
const RETIRED_GRACE: Duration = Duration::from_secs(10);

/// Options for an [`SshCluster`].
#[derive(Debug, Clone)]
pub struct SshClusterBuilder {
    hosts: Vec<String>,
    cfg: Config,
}

#[derive(Debug, Clone)]
struct Config {
    ssh: String,
    ssh_options: Vec<String>,
    nworkers: usize,
    nthreads: Option<usize>,
    remote_taskwire: Option<String>,
    upload: Option<PathBuf>,
    scheduler_port: u16,
    dashboard_port: Option<u16>,
    start_timeout: Duration,
    echo: bool,
    secret: Option<ClusterSecret>,
    initial_workers: Option<usize>,
    security: Security,
    /// The contents of the TLS files (CA, certificate, key), read at start.
    tls_files: Option<[Vec<u8>; 3]>,
}

impl SshClusterBuilder {
    /// `ssh -o OPTION` for every connection, e.g. `Port=2222`, `IdentityFile=~/.ssh/id_x`,
    /// `User=me` (`BatchMode=yes` is always set and cannot be overridden).
    pub fn ssh_option(mut self, option: impl Into<String>) -> Self {
        self.cfg.ssh_options.push(option.into());
        self
    }

    /// The ssh client to run (default `ssh` on `PATH`).
    pub fn ssh_program(mut self, program: impl Into<String>) -> Self {
        self.cfg.ssh = program.into();
        self
    }

    /// Worker processes per worker host (`taskwire worker --nworkers`, default 1).
    pub fn nworkers(mut self, n: usize) -> Self {
        self.cfg.nworkers = n.max(1);
        self
    }

    /// Threads per worker (default: the host's CPUs / nworkers).
    pub fn nthreads(mut self, n: usize) -> Self {
        self.cfg.nthreads = Some(n.max(1));
        self
    }

    /// The `taskwire` binary on the hosts (default `taskwire` on the remote `PATH`; with
    /// [`upload`](Self::upload), where to put it). A leading `~/` is the remote home.
    pub fn remote_taskwire(mut self, path: impl Into<String>) -> Self {
        self.cfg.remote_taskwire = Some(path.into());
        self
    }

    /// Copy `binary` (a `taskwire` build of this version) to every host where the remote
    /// binary is missing or `--version` says another version; it goes to
    /// [`remote_taskwire`](Self::remote_taskwire) or `~/.cache/taskwire/taskwire-VERSION`.
    pub fn upload(mut self, binary: impl Into<PathBuf>) -> Self {
        self.cfg.upload = Some(binary.into());
        self
    }

    /// The scheduler's port (default 8786; 0: a free one).
    pub fn scheduler_port(mut self, port: u16) -> Self {
        self.cfg.scheduler_port = port;
        self
    }

    /// The dashboard's port (default 8787; 0: a free one); `None`: no dashboard.
    pub fn dashboard_port(mut self, port: Option<u16>) -> Self {
        self.cfg.dashboard_port = port;
        self
    }

    /// How long each remote process may take to come up (default 60 s).
    pub fn start_timeout(mut self, t: Duration) -> Self {
        self.cfg.start_timeout = t;
        self
    }

    /// Start this many workers (in whole groups, on the first hosts) instead of a group on
    /// every worker host; the others stay free for [`SshCluster::scale`] and adaptive
    /// scaling.
    pub fn workers(mut self, n: usize) -> Self {
        self.cfg.initial_workers = Some(n);
        self
    }

    /// Require this cluster token of every connection to the scheduler and the workers. Each
    /// remote process gets it through its ssh session's standard input, written to a fresh
    /// mode-600 file (`mktemp`) that is removed when the process ends; it never appears on a
    /// command line. This cluster's own clients hold it.
    pub fn auth_token(mut self, secret: ClusterSecret) -> Self {
        self.cfg.secret = Some(secret);
        self
    }

    /// Transport security. With TLS, the scheduler listens on `tls://` and this cluster's
    /// clients connect with the certificate; each remote process gets the CA, certificate and
    /// key as it gets a token (through its ssh session's standard input, into fresh mode-600
    /// files removed when it ends, never on a command line) and `--tls-ca-file`, `--tls-cert`
    /// and `--tls-key` naming them, plus `--require-encryption` when it is required.
    pub fn security(mut self, security: Security) -> Self {
        self.cfg.security = security;
        self
    }

    /// Copy the remote processes' output to this process's stderr, prefixed with the host
    /// (default off; `taskwire ssh` turns it on).
    pub fn echo_remote_output(mut self, on: bool) -> Self {
        self.cfg.echo = on;
        self
    }

    /// Upload where asked, start the scheduler on the first host and a worker group on every
    /// other host; returns once every worker is registered. On any failure everything already
    /// started is stopped and the error names the host.
    pub async fn start(self) -> Result<SshCluster, ClusterError> {
        if self.hosts.len() < 2 {
            return Err(ClusterError::Scale {
                requested: self.hosts.len().saturating_sub(1),
                reason: "give at least two hosts: the first runs the scheduler, the others \
                         workers (a host may appear more than once, e.g. localhost localhost)"
                    .into(),
            });
        }
        let mut cfg = self.cfg;
        if let Some(tls) = cfg.security.tls_config() {
            let f = tls.files();
            let read = |what: &str, path: &PathBuf| {
                std::fs::read(path).map_err(|e| ClusterError::Host {
                    host: "this host".into(),
                    message: format!(
                        "cannot read the TLS {what} {} to send it to the hosts: {e}",
                        path.display()
                    ),
                })
            };
            cfg.tls_files = Some([
                read("CA file", &f.ca_file)?,
                read("certificate", &f.cert)?,
                read("key", &f.key)?,
            ]);
        }
        let program = match &cfg.upload {
            Some(binary) => {
                let target = cfg
                    .remote_taskwire
                    .clone()
                    .unwrap_or_else(|| format!("~/.cache/taskwire/taskwire-{VERSION}"));
                let cfg = Arc::new(cfg.clone());
                let mut uploads = JoinSet::new();
                let distinct: BTreeSet<&String> = self.hosts.iter().collect();
                for host in distinct {
                    let (cfg, host, target, binary) =
                        (cfg.clone(), host.clone(), target.clone(), binary.clone());
                    uploads
                        .spawn(async move { ensure_binary(&cfg, &host, &target, &binary).await });
                }
                while let Some(r) = uploads.join_next().await {
                    r.expect("upload task")?;
                }
                target
            }
            None => cfg
                .remote_taskwire
                .clone()
                .unwrap_or_else(|| "taskwire".into()),
        };
        cfg.remote_taskwire = Some(program);
        let cfg = Arc::new(cfg);
        let scheduler_host = self.hosts[0].clone();
        let mut args = vec!["scheduler".into(), "--port".into()];
        args.push(cfg.scheduler_port.to_string());
        match cfg.dashboard_port {
            Some(p) => args.extend(["--dashboard-port".into(), p.to_string()]),
            None => args.push("--no-dashboard".into()),
        }
        let mut wanted = vec!["Scheduler at:"];
        if cfg.dashboard_port.is_some() {
            wanted.push("dashboard at:");
        }
        let (scheduler, lines) =
            Remote::start(&cfg, &scheduler_host, "taskwire scheduler", &args, &wanted).await?;
        let connect_host = connect_host(&scheduler_host);
        // `tcp://host:port`, `http://host:port/`, or `http://host:port/?token=CREDENTIAL` (a
        // dashboard under a cluster token).
        let port = |line: &str| {
            line.split('?')
                .next()
                .unwrap_or(line)
                .trim_end_matches('/')
                .rsplit(':')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
        };
        let Some(sched_port) = port(&lines[0]) else {
            let _ = scheduler.stop(&cfg, STOP_GRACE).await;
            return Err(ClusterError::Host {
                host: scheduler_host,
                message: format!("cannot read the scheduler's port from '{}'", lines[0]),
            });
        };
        let scheme = if cfg.tls_files.is_some() {
            "tls"
        } else {
            "tcp"
        };
        let address = format!("{scheme}://{connect_host}:{sched_port}");
        let dashboard = lines.get(1).and_then(|l| {
            let query = l
                .split_once('?')
                .map_or(String::new(), |(_, q)| format!("?{q}"));
            port(l).map(|p| format!("http://{connect_host}:{p}/{query}"))
        });
        let mut cluster = SshCluster {
            cfg,
            scheduler_host,
            scheduler: Some(scheduler),
            address,
            dashboard,
            worker_hosts: self.hosts[1..].to_vec(),
            groups: BTreeMap::new(),
            stopped: BTreeSet::new(),
        };
        let all = cluster.worker_hosts.len() * cluster.cfg.nworkers;
        let initial = cluster.cfg.initial_workers.unwrap_or(all);
        if let Err(e) = cluster.scale(initial).await {
            let _ = cluster.close().await;
            return Err(e);
        }
        Ok(cluster)
    }
}

/// A scheduler and workers started over SSH. Dropping it kills the local `ssh` processes,
/// which makes the remote wrappers stop what they started; [`SshCluster::close`] does that in
/// order (workers first) and waits for it.
#[derive(Debug)]
pub struct SshCluster {
    cfg: Arc<Config>,
    scheduler_host: String,
    scheduler: Option<Remote>,
    address: String,
    dashboard: Option<String>,
    worker_hosts: Vec<String>,
    /// Running worker groups (one `taskwire worker` nanny each), by index into `worker_hosts`.
    groups: BTreeMap<usize, Remote>,
    /// Workers of running groups that were stopped one by one (`stop_workers`).
    stopped: BTreeSet<String>,
}

impl SshCluster {
    /// A builder over `hosts`: the first runs the scheduler, the others a worker group each.
    pub fn builder<S: Into<String>>(hosts: impl IntoIterator<Item = S>) -> SshClusterBuilder {
        SshClusterBuilder {
            hosts: hosts.into_iter().map(Into::into).collect(),
            cfg: Config {
                ssh: "ssh".into(),
                ssh_options: Vec::new(),
                nworkers: 1,
                nthreads: None,
                remote_taskwire: None,
                upload: None,
                scheduler_port: taskwire_scheduler::DEFAULT_PORT,
                dashboard_port: Some(taskwire_scheduler::DEFAULT_DASHBOARD_PORT),
                start_timeout: Duration::from_secs(60),
                echo: false,
                secret: None,
                initial_workers: None,
                security: Security::new(),
                tls_files: None,
            },
        }
    }

    /// The most workers the host pool holds (a group of `nworkers` per worker host).
    pub fn capacity(&self) -> usize {
        self.worker_hosts.len() * self.cfg.nworkers
    }

    /// The host running the scheduler.
    pub fn scheduler_host(&self) -> &str {
        &self.scheduler_host
    }

    /// The remote pids of what this cluster runs: the scheduler's, then each worker group's
    /// nanny, with their hosts.
    pub fn remote_pids(&self) -> Vec<(String, u32)> {
        self.scheduler
            .iter()
            .chain(self.groups.values())
            .map(|r| (r.host.clone(), r.pid))
            .collect()
    }

    /// Resolves when the scheduler's ssh session ends (the scheduler exited or the connection
    /// was lost), with what is known about why.
    pub async fn scheduler_exited(&mut self) -> String {
        match self.scheduler.as_mut() {
            Some(r) => match r.child.wait().await {
                Ok(s) => format!("{s}; {}", r.stderr_tail()),
                Err(e) => e.to_string(),
            },
            None => std::future::pending().await,
        }
    }

    /// The worker names of group `slot`.
    fn group_names(&self, slot: usize) -> Vec<String> {
        let prefix = group_prefix(&self.worker_hosts[slot], slot);
        if self.cfg.nworkers == 1 {
            vec![prefix]
        } else {
            (0..self.cfg.nworkers)
                .map(|i| format!("{prefix}-{i}"))
                .collect()
        }
    }

    /// The workers of group `slot` not stopped one by one.
    fn live_names(&self, slot: usize) -> Vec<String> {
        let mut names = self.group_names(slot);
        names.retain(|n| !self.stopped.contains(n));
        names
    }

    /// Start or retire worker groups until `n` workers run (in whole groups of `nworkers`).
    pub async fn scale(&mut self, n: usize) -> Result<(), ClusterError> {
        let per = self.cfg.nworkers;
        let live: Vec<usize> = self
            .groups
            .keys()
            .map(|&s| self.live_names(s).len())
            .collect();
        let running: usize = live.iter().sum();
        let free_slots = self.worker_hosts.len() - self.groups.len();
        let wanted = n.saturating_sub(running).div_ceil(per);
        if wanted > free_slots {
            return Err(ClusterError::Scale {
                requested: n,
                reason: format!(
                    "there are {} worker hosts with {per} workers each ({running} workers \
                     running, {free_slots} hosts free)",
                    self.worker_hosts.len()
                ),
            });
        }
        if wanted > 0 {
            let free: Vec<usize> = (0..self.worker_hosts.len())
                .filter(|i| !self.groups.contains_key(i))
                .take(wanted)
                .collect();
            let mut starts = JoinSet::new();
            for slot in free {
                let cfg = self.cfg.clone();
                let host = self.worker_hosts[slot].clone();
                let mut args = vec![
                    "worker".to_string(),
                    self.address.clone(),
                    "--nworkers".into(),
                    per.to_string(),
                    "--name".into(),
                    group_prefix(&host, slot),
                ];
                if let Some(t) = cfg.nthreads {
                    args.extend(["--nthreads".into(), t.to_string()]);
                }
                starts.spawn(async move {
                    let wanted = vec!["Registered to:"; per];
                    let r = Remote::start(&cfg, &host, "taskwire worker", &args, &wanted).await;
                    (slot, r)
                });
                // A fresh group on this slot: its names are live again.
                for name in self.group_names(slot) {
                    self.stopped.remove(&name);
                }
            }
            let mut failure = None;
            while let Some(joined) = starts.join_next().await {
                match joined.expect("start task") {
                    (slot, Ok((remote, _))) => {
                        self.groups.insert(slot, remote);
                    }
                    (_, Err(e)) => failure = failure.or(Some(e)),
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
        } else if running > n {
            // The last groups, as long as what stays is still at least `n`.
            let mut leaving = Vec::new();
            let mut left = running;
            for (&slot, &k) in self.groups.keys().zip(&live).rev() {
                if left - k < n {
                    break;
                }
                left -= k;
                leaving.push(slot);
            }
            let names: Vec<String> = leaving.iter().flat_map(|&s| self.live_names(s)).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            if !refs.is_empty() {
                let client = self.client().await?;
                let retired = client.retire_workers(&refs).await;
                client.close().await;
                retired?;
            }
            // Retired workers end their nanny's slots; the nanny, its wrapper and the ssh
            // session end by themselves.
            for slot in leaving {
                self.forget_group(slot);
                if let Some(r) = self.groups.remove(&slot) {
                    r.wait_or_stop(&self.cfg, STOP_GRACE).await;
                }
            }
        }
        Ok(())
    }

    /// Drop the one-by-one stop records of group `slot`.
    fn forget_group(&mut self, slot: usize) {
        for name in self.group_names(slot) {
            self.stopped.remove(&name);
        }
    }

    /// Stop the named workers (retired through the scheduler already, or to be stopped now).
    /// A group whose workers are all stopped ends (its nanny exits once its last worker
    /// retired; otherwise its session is closed, which stops it); names of a group that
    /// keep running are remembered as stopped. Names this cluster does not run are ignored.
    pub async fn stop_workers(&mut self, names: &[String]) -> Result<(), ClusterError> {
        let slots: Vec<usize> = self.groups.keys().copied().collect();
        let mut ending = Vec::new();
        for slot in slots {
            let group = self.group_names(slot);
            let mut hit = false;
            for n in &group {
                if names.contains(n) {
                    hit |= self.stopped.insert(n.clone());
                }
            }
            if hit && group.iter().all(|n| self.stopped.contains(n)) {
                self.forget_group(slot);
                ending.push(self.groups.remove(&slot).expect("running group"));
            }
        }
        let mut stops = JoinSet::new();
        for r in ending {
            let cfg = self.cfg.clone();
            stops.spawn(async move { r.wait_or_stop(&cfg, RETIRED_GRACE).await });
        }
        while stops.join_next().await.is_some() {}
        Ok(())
    }

    /// A client connected to the scheduler (with the cluster token, if it has one).
    pub async fn client(&self) -> Result<Client, ClusterError> {
        let address = self
            .address
            .parse()
            .map_err(|e| ClusterError::Client(taskwire_client::ClientError::Address(e)))?;
        let mut b = Client::builder(address).security(self.cfg.security.clone());
        if let Some(s) = &self.cfg.secret {
            b = b.auth_token(s.clone());
        }
        Ok(b.connect().await?)
    }

    /// Stop the workers (all hosts at once), then the scheduler, and wait until they are gone
    /// (killing by pid what does not stop within the grace period).
    pub async fn close(mut self) -> Result<(), ClusterError> {
        let mut stops = JoinSet::new();
        for (_, r) in std::mem::take(&mut self.groups) {
            let cfg = self.cfg.clone();
            stops.spawn(async move { r.stop(&cfg, STOP_GRACE).await });
        }
        let mut failures = Vec::new();
        while let Some(j) = stops.join_next().await {
            if let Err(e) = j.expect("stop task") {
                failures.push(e);
            }
        }
        if let Some(r) = self.scheduler.take()
            && let Err(e) = r.stop(&self.cfg, STOP_GRACE).await
        {
            failures.push(e);
        }
        failures.into_iter().next().map_or(Ok(()), Err)
    }
}

impl Cluster for SshCluster {
    fn scheduler_address(&self) -> String {
        self.address.clone()
    }

    fn dashboard_link(&self) -> Option<String> {
        self.dashboard.clone()
    }

    fn workers(&self) -> Vec<String> {
        self.groups
            .keys()
            .flat_map(|&s| self.live_names(s))
            .collect()
    }

    async fn scale(&mut self, n: usize) -> Result<(), ClusterError> {
        SshCluster::scale(self, n).await
    }

    async fn stop_workers(&mut self, names: &[String]) -> Result<(), ClusterError> {
        SshCluster::stop_workers(self, names).await
    }

    async fn client(&self) -> Result<Client, ClusterError> {
        SshCluster::client(self).await
    }

    async fn close(self) -> Result<(), ClusterError> {
        SshCluster::close(self).await
    }
}

/// The name prefix of the worker group in slot `slot` on `host`.
fn group_prefix(host: &str, slot: usize) -> String {
    format!("{}-{slot}", bare_host(host))
}

/// `user@host` → `host`.
fn bare_host(host: &str) -> &str {
    host.rsplit_once('@').map_or(host, |(_, h)| h)
}

/// The host others use to reach a process on `host` (`localhost` as IPv4 loopback, since
/// the scheduler listens on IPv4).
fn connect_host(host: &str) -> String {
    match bare_host(host) {
        "localhost" => "127.0.0.1".into(),
        h => h.to_string(),
    }
}

/// Quote `s` for a POSIX shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A remote path as a shell word: a leading `~/` stays the remote home.
fn path_word(path: &str) -> String {
    match path.strip_prefix("~/") {
        Some(rest) => format!("\"$HOME\"/{}", quote(rest)),
        None => quote(path),
    }
}

/// The parent directory of a remote path, as a shell word.
fn parent_word(path: &str) -> Option<String> {
    let (dir, _) = path.rsplit_once('/')?;
    Some(match dir {
        "" => "/".into(),
        "~" => "\"$HOME\"".into(),
        d => path_word(d),
    })
}

/// The ssh command line for `host` running `script` under `sh -c`.
fn ssh_command(cfg: &Config, host: &str, script: &str) -> Command {
    let mut c = Command::new(&cfg.ssh);
    c.args(["-T", "-o", "BatchMode=yes"]);
    for o in &cfg.ssh_options {
        c.arg("-o").arg(o);
    }
    // ssh keeps the first value it gets for an option: these are defaults the user can change.
    c.args([
        "-o",
        "ConnectTimeout=10",
        "-o",
        "ServerAliveInterval=10",
        "-o",
        "ServerAliveCountMax=3",
    ]);
    c.arg("--")
        .arg(host)
        .arg(format!("exec sh -c {}", quote(script)));
    c.kill_on_drop(true);
    c
}

/// Run a short `script` on `host`, feeding it `input` (a file) when given; its output.
async fn run_short(
    cfg: &Config,
    host: &str,
    script: &str,
    input: Option<&std::path::Path>,
) -> Result<std::process::Output, ClusterError> {
    let host_err = |message: String| ClusterError::Host {
        host: host.to_string(),
        message,
    };
    let mut c = ssh_command(cfg, host, script);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let stdin = match input {
        Some(path) => {
            let f = std::fs::File::open(path)
                .map_err(|e| host_err(format!("cannot read {}: {e}", path.display())))?;
            Stdio::from(f)
        }
        None => Stdio::null(),
    };
    c.stdin(stdin);
    let child = c
        .spawn()
        .map_err(|e| host_err(format!("cannot run {}: {e}", cfg.ssh)))?;
    match timeout(Duration::from_secs(600), child.wait_with_output()).await {
        Ok(r) => r.map_err(|e| host_err(format!("ssh: {e}"))),
        Err(_) => Err(host_err(format!(
            "`{script}` did not finish within 10 minutes"
        ))),
    }
}

/// Make sure `target` on `host` is a taskwire of this version, copying `binary` there if not.
async fn ensure_binary(
    cfg: &Config,
    host: &str,
    target: &str,
    binary: &std::path::Path,
) -> Result<(), ClusterError> {
    let host_err = |message: String| ClusterError::Host {
        host: host.to_string(),
        message,
    };
    let want = format!("taskwire {VERSION}");
    let version = format!("{} --version 2>/dev/null || true", path_word(target));
    let out = run_short(cfg, host, &version, None).await?;
    if out.status.code() == Some(255) {
        return Err(host_err(ssh_failure(&out.status, &out.stderr)));
    }
    if String::from_utf8_lossy(&out.stdout).trim() == want {
        return Ok(());
    }
    let dir = parent_word(target)
        .ok_or_else(|| host_err(format!("--upload needs a path, not '{target}'")))?;
    let t = path_word(target);
    let script = format!(
        "mkdir -p {dir} && cat > {t}.part.$$ && chmod 755 {t}.part.$$ && mv -f {t}.part.$$ {t}"
    );
    let out = run_short(cfg, host, &script, Some(binary)).await?;
    if !out.status.success() {
        return Err(host_err(format!(
            "uploading {} to {target} failed: {}",
            binary.display(),
            ssh_failure(&out.status, &out.stderr)
        )));
    }
    let out = run_short(cfg, host, &version, None).await?;
    let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if got != want {
        return Err(host_err(format!(
            "uploaded {} to {target}, but it says '{got}', not '{want}' (another platform?)",
            binary.display()
        )));
    }
    if cfg.echo {
        eprintln!("[{host}] uploaded {} to {target}", binary.display());
    }
    Ok(())
}

/// What a failed ssh run said.
fn ssh_failure(status: &std::process::ExitStatus, stderr: &[u8]) -> String {
    let stderr = String::from_utf8_lossy(stderr);
    let hint = match status.code() {
        Some(255) => " (ssh could not connect or log in)",
        Some(127) => {
            " (command not found: install taskwire there, or use --remote-taskwire \
                       PATH or --upload)"
        }
        _ => "",
    };
    format!("{status}{hint}; stderr: {}", stderr.trim())
}

/// One long-running remote process and its ssh session.
#[derive(Debug)]
struct Remote {
    host: String,
    pid: u32,
    child: Child,
    /// Closing it ends the session's stdin: the remote wrapper then stops the process.
    stdin: Option<ChildStdin>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Remote {
    /// Start `taskwire args...` on `host` and wait for its pid and a stdout line starting with
    /// each of `wanted` (in any order, counted); returns the rest of the first of each.
    async fn start(
        cfg: &Config,
        host: &str,
        what: &str,
        args: &[String],
        wanted: &[&str],
    ) -> Result<(Remote, Vec<String>), ClusterError> {
        let program = path_word(cfg.remote_taskwire.as_deref().unwrap_or("taskwire"));
        let mut cmd: Vec<String> = std::iter::once(program)
            .chain(args.iter().map(|a| quote(a)))
            .collect();
        // The token and the TLS files come first on the session's stdin, each exactly its
        // length, into fresh mode-600 files that go when the process does.
        let token = cfg.secret.as_ref().map(ClusterSecret::file_text);
        let mut forwarded: Vec<(&str, &str, &[u8])> = Vec::new();
        if let Some(t) = &token {
            forwarded.push(("--auth-token-file", "token", t));
        }
        if let Some([ca, cert, key]) = &cfg.tls_files {
            forwarded.push(("--tls-ca-file", "ca", ca));
            forwarded.push(("--tls-cert", "cert", cert));
            forwarded.push(("--tls-key", "key", key));
        }
        if cfg.security.requires_encryption() {
            cmd.push("--require-encryption".into());
        }
        let mut get_files = String::new();
        let mut drop_files = String::new();
        for (i, (flag, name, bytes)) in forwarded.iter().enumerate() {
            drop_files.push_str(&format!(" \"$f{i}\""));
            let cleanup = format!("{{ rm -f{drop_files}; exit 125; }}");
            get_files.push_str(&format!(
                "f{i}=$(umask 077 && mktemp \"${{TMPDIR:-/tmp}}/taskwire-{name}.XXXXXX\") \
                 || {cleanup}; dd bs=1 count={} of=\"$f{i}\" 2>/dev/null || {cleanup}; ",
                bytes.len()
            ));
            cmd.push(format!("{flag} \"$f{i}\""));
        }
        let (get_token, drop_token) = if forwarded.is_empty() {
            (String::new(), String::new())
        } else {
            (get_files, format!(" rm -f{drop_files};"))
        };
        let input: Vec<u8> = forwarded
            .iter()
            .flat_map(|(_, _, b)| b.iter().copied())
            .collect();
        // Background jobs of a non-interactive shell get /dev/null as stdin, so the watcher
        // reads the session's stdin through fd 3.
        let script = format!(
            "{get_token}exec 3<&0; {} </dev/null 3<&- & p=$!; echo \"{PID_MARK} $p\"; \
             (while read -r line; do :; done; kill -TERM $p) <&3 >/dev/null 2>&1 & w=$!; \
             exec 3<&-; wait $p; s=$?; kill $w 2>/dev/null;{drop_token} exit $s",
            cmd.join(" ")
        );
        let host_err = |message: String| ClusterError::Host {
            host: host.to_string(),
            message,
        };
        let mut c = ssh_command(cfg, host, &script);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C in the terminal reaches us, and we stop things
            // in order.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal,
        // so that the ssh session (and with it the remote process) ends if we are killed.
        unsafe {
            c.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = c
            .spawn()
            .map_err(|e| host_err(format!("cannot run {}: {e}", cfg.ssh)))?;
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let err_reader = {
            let pipe = child.stderr.take().expect("piped");
            let tail = stderr.clone();
            let (echo, host) = (cfg.echo, host.to_string());
            tokio::spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if echo {
                        eprintln!("[{host}] {line}");
                    }
                    let mut t = tail.lock().expect("stderr tail");
                    if t.len() == STDERR_TAIL {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            })
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        {
            let pipe = child.stdout.take().expect("piped");
            let (echo, host) = (cfg.echo, host.to_string());
            tokio::spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if echo && !line.starts_with(PID_MARK) {
                        eprintln!("[{host}] {line}");
                    }
                    let _ = tx.send(line);
                }
            });
        }
        let mut stdin = child.stdin.take();
        if let (false, Some(pipe)) = (input.is_empty(), stdin.as_mut()) {
            // Not closed: the session's stdin staying open is what keeps the process running.
            let sent = async {
                pipe.write_all(&input).await?;
                pipe.flush().await
            };
            if let Err(e) = sent.await {
                let _ = child.kill().await;
                return Err(host_err(format!(
                    "could not hand the cluster token or TLS files over ssh: {e}; {}",
                    stderr
                        .lock()
                        .expect("stderr tail")
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n")
                )));
            }
        }
        let mut remote = Remote {
            host: host.to_string(),
            pid: 0,
            stdin,
            child,
            stderr,
        };
        let deadline = Instant::now() + cfg.start_timeout;
        let mut found: Vec<Option<String>> = vec![None; wanted.len()];
        let mut counts = vec![0usize; wanted.len()];
        // A prefix wanted k times counts at its first index.
        let need: Vec<usize> = wanted
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if wanted[..i].contains(w) {
                    0
                } else {
                    wanted.iter().filter(|x| *x == w).count()
                }
            })
            .collect();
        let done = |pid: u32, counts: &[usize], need: &[usize]| {
            pid != 0 && counts.iter().zip(need).all(|(c, n)| c >= n)
        };
        while !done(remote.pid, &counts, &need) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(line)) => {
                    if let Some(pid) = line.strip_prefix(PID_MARK) {
                        remote.pid = pid.trim().parse().unwrap_or(0);
                        continue;
                    }
                    for (i, w) in wanted.iter().enumerate() {
                        if let Some(rest) = line.strip_prefix(w) {
                            counts[i] += 1;
                            found[i].get_or_insert_with(|| rest.trim().to_string());
                            break;
                        }
                    }
                }
                Ok(None) => {
                    let status = timeout(Duration::from_secs(10), remote.child.wait()).await;
                    let _ = timeout(Duration::from_secs(2), err_reader).await;
                    let stderr = remote.stderr_tail();
                    return Err(host_err(match status {
                        Ok(Ok(s)) => format!(
                            "`{what}` ended before it was ready: {}",
                            ssh_failure(&s, stderr.as_bytes())
                        ),
                        _ => format!("`{what}` closed its output before it was ready; {stderr}"),
                    }));
                }
                Err(_) => {
                    let message = format!(
                        "`{what}` was not ready within {:?}; stderr: {}",
                        cfg.start_timeout,
                        remote.stderr_tail()
                    );
                    let _ = remote.stop(cfg, Duration::from_secs(5)).await;
                    return Err(host_err(message));
                }
            }
        }
        let found = found.into_iter().map(Option::unwrap_or_default).collect();
        Ok((remote, found))
    }

    fn stderr_tail(&self) -> String {
        let t = self.stderr.lock().expect("stderr tail");
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Wait up to `grace` for the session to end by itself, then stop it.
    async fn wait_or_stop(mut self, cfg: &Config, grace: Duration) {
        if timeout(grace, self.child.wait()).await.is_err() {
            let _ = self.stop(cfg, Duration::from_secs(5)).await;
        }
    }

    /// End the session (the wrapper sends the process SIGTERM) and wait up to `grace`; past
    /// that, SIGKILL the remote pid over a fresh connection and kill the local ssh.
    async fn stop(mut self, cfg: &Config, grace: Duration) -> Result<(), ClusterError> {
        drop(self.stdin.take());
        if timeout(grace, self.child.wait()).await.is_ok() {
            return Ok(());
        }
        let _ = self.child.kill().await;
        if self.pid == 0 {
            return Ok(());
        }
        let out = run_short(cfg, &self.host, &format!("kill -KILL {}", self.pid), None).await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ClusterError::Host {
                host: self.host.clone(),
                message: format!(
                    "could not kill pid {}: {}",
                    self.pid,
                    ssh_failure(&out.status, &out.stderr)
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{bare_host, connect_host, parent_word, path_word, quote};

    #[test]
    fn shell_words() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(path_word("~/x y/t"), "\"$HOME\"/'x y/t'");
        assert_eq!(path_word("/opt/t"), "'/opt/t'");
        assert_eq!(parent_word("/opt/bin/t").as_deref(), Some("'/opt/bin'"));
        assert_eq!(parent_word("~/t").as_deref(), Some("\"$HOME\""));
        assert_eq!(parent_word("/t").as_deref(), Some("/"));
        assert_eq!(parent_word("taskwire"), None);
        assert_eq!(bare_host("me@node1"), "node1");
        assert_eq!(connect_host("localhost"), "127.0.0.1");
        assert_eq!(connect_host("me@10.0.0.2"), "10.0.0.2");
    }
}
