//! A throw-away cluster for benchmarks: a scheduler and worker processes, children of the
//! benchmark process (which is then the client), on loopback TCP.
//!
//! The children are this very binary (`std::env::current_exe()`) run as `taskwire scheduler`
//! and `taskwire worker`, exactly as a user starts them. They are killed when the
//! [`ChildCluster`] is dropped, also when the benchmark fails or panics (unwinding). Their
//! logs go to our standard error at `warn` level unless `TASKWIRE_LOG` says otherwise.
//!
//! By default each worker runs under its nanny, as `taskwire worker` does: the worker child
//! process's `Registered to:` line passes through the nanny's standard output, and killing the
//! nanny takes its worker with it (the nanny's children die with their parent).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a child may take to print its address or registration before we give up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What to start.
#[derive(Clone, Debug)]
pub(crate) struct ClusterSpec {
    /// Worker processes.
    pub(crate) workers: usize,
    /// Threads per worker (`--nthreads`).
    pub(crate) threads: usize,
    /// `--worker-saturation` for the scheduler; `None` leaves its default.
    pub(crate) worker_saturation: Option<String>,
    /// Pass `--no-work-stealing` to the scheduler.
    pub(crate) no_work_stealing: bool,
    /// Start the workers with `--zero-worker`.
    pub(crate) zero_worker: bool,
    /// Run each worker under a nanny (`taskwire worker`'s default); else `--no-nanny`.
    pub(crate) nanny: bool,
    /// Serve the scheduler's dashboard (on a free port); else `--no-dashboard`.
    pub(crate) dashboard: bool,
}

/// When the cluster came up, measured from just before the scheduler was spawned.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StartupTimes {
    /// Until the scheduler printed `Scheduler at:`.
    pub(crate) scheduler_ready: Duration,
    /// Until every worker printed `Registered to:`.
    pub(crate) workers_registered: Duration,
}

/// A line a child printed on standard output, or its end of output.
struct Line {
    child: usize,
    text: Option<String>,
    at: Instant,
}

/// The scheduler and worker processes; dropping this kills them.
pub(crate) struct ChildCluster {
    /// `tcp://127.0.0.1:PORT`.
    pub(crate) address: String,
    /// The scheduler's process id (for `/proc/<pid>/status`).
    pub(crate) scheduler_pid: u32,
    /// `host:port` of the scheduler's dashboard, when started with one.
    pub(crate) dashboard: Option<String>,
    /// How long it took to come up.
    pub(crate) startup: StartupTimes,
    /// Index 0 is the scheduler, then the workers in order.
    children: Vec<Child>,
}

impl Drop for ChildCluster {
    fn drop(&mut self) {
        // Workers first, and gone before the scheduler dies, so none of them logs its death.
        // (A nanny's worker has its SIGKILL pending by the time the nanny can be waited for.)
        let (scheduler, workers) = match self.children.split_first_mut() {
            Some((s, w)) => (Some(s), w),
            None => (None, &mut [][..]),
        };
        for c in workers.iter_mut() {
            let _ = c.kill();
        }
        for c in workers.iter_mut() {
            let _ = c.wait();
        }
        if let Some(s) = scheduler {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

/// The name of worker `i` in a cluster started here.
fn worker_name(i: usize) -> String {
    format!("bench-worker-{i}")
}

impl ChildCluster {
    /// Start the scheduler, then all workers at once; return when every worker has printed
    /// `Registered to:`. Blocking: call it off the async runtime.
    pub(crate) fn start(spec: &ClusterSpec) -> Result<ChildCluster, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
        let (tx, rx) = mpsc::channel::<Line>();
        let mut cluster = ChildCluster {
            address: String::new(),
            scheduler_pid: 0,
            dashboard: None,
            startup: StartupTimes {
                scheduler_ready: Duration::ZERO,
                workers_registered: Duration::ZERO,
            },
            children: Vec::with_capacity(spec.workers + 1),
        };

        let t0 = Instant::now();
        let mut cmd = Command::new(&exe);
        cmd.args(["scheduler", "--host", "127.0.0.1", "--port", "0"]);
        if spec.dashboard {
            cmd.args(["--dashboard-port", "0"]);
        } else {
            cmd.arg("--no-dashboard");
        }
        if let Some(s) = &spec.worker_saturation {
            cmd.args(["--worker-saturation", s]);
        }
        if spec.no_work_stealing {
            cmd.arg("--no-work-stealing");
        }
        cluster.spawn(cmd, "scheduler", &tx)?;
        cluster.scheduler_pid = cluster.children[0].id();
        let (text, at) = wait_for(&rx, 0, "Scheduler at:", "the scheduler")?;
        cluster.startup.scheduler_ready = at - t0;
        cluster.address = text.trim().to_string();
        if spec.dashboard {
            let (link, _) = wait_for(&rx, 0, "dashboard at:", "the scheduler")?;
            let link = link.trim();
            let hostport = link
                .strip_prefix("http://")
                .and_then(|l| l.strip_suffix('/'))
                .ok_or_else(|| format!("unexpected dashboard link {link}"))?;
            cluster.dashboard = Some(hostport.to_string());
        }

        for i in 0..spec.workers {
            let mut cmd = Command::new(&exe);
            cmd.arg("worker")
                .arg(&cluster.address)
                .args(["--nthreads", &spec.threads.to_string()])
                .args(["--name", &worker_name(i)]);
            if spec.zero_worker {
                cmd.arg("--zero-worker");
            }
            if !spec.nanny {
                cmd.arg("--no-nanny");
            }
            cluster.spawn(cmd, "worker", &tx)?;
        }
        let deadline = Instant::now() + START_TIMEOUT;
        let mut registered = vec![false; spec.workers];
        let mut last = cluster.startup.scheduler_ready;
        while registered.iter().any(|r| !r) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).map_err(|_| {
                format!(
                    "only {} of {} workers registered within {}s",
                    registered.iter().filter(|r| **r).count(),
                    spec.workers,
                    START_TIMEOUT.as_secs()
                )
            })?;
            match (line.child, line.text) {
                (0, None) => return Err("the scheduler exited while workers started".into()),
                (c, None) => return Err(format!("worker {} exited before registering", c - 1)),
                (c, Some(t)) if c > 0 && t.starts_with("Registered to:") => {
                    registered[c - 1] = true;
                    last = last.max(line.at - t0);
                }
                _ => {}
            }
        }
        cluster.startup.workers_registered = last;
        Ok(cluster)
    }

    /// Spawn one child with piped stdout, read by a thread that forwards its lines.
    fn spawn(
        &mut self,
        mut cmd: Command,
        what: &str,
        tx: &mpsc::Sender<Line>,
    ) -> Result<(), String> {
        if std::env::var_os("TASKWIRE_LOG").is_none() {
            cmd.env("TASKWIRE_LOG", "warn");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the {what}: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let index = self.children.len();
        self.children.push(child);
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("bench-{what}-out"))
            .spawn(move || {
                // Keep draining until the child is gone, so it never blocks on a full pipe.
                for line in BufReader::new(stdout).lines() {
                    let Ok(text) = line else { break };
                    let _ = tx.send(Line {
                        child: index,
                        text: Some(text),
                        at: Instant::now(),
                    });
                }
                let _ = tx.send(Line {
                    child: index,
                    text: None,
                    at: Instant::now(),
                });
            })
            .map_err(|e| format!("cannot start a reader thread: {e}"))?;
        Ok(())
    }
}

/// Wait for child `child` to print a line starting with `prefix`; the rest of the line and
/// when it arrived.
fn wait_for(
    rx: &mpsc::Receiver<Line>,
    child: usize,
    prefix: &str,
    what: &str,
) -> Result<(String, Instant), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).map_err(|_| {
            format!(
                "{what} did not print '{prefix}' within {}s",
                START_TIMEOUT.as_secs()
            )
        })?;
        if line.child != child {
            continue;
        }
        match line.text {
            None => return Err(format!("{what} exited before printing '{prefix}'")),
            Some(t) => {
                if let Some(rest) = t.strip_prefix(prefix) {
                    return Ok((rest.to_string(), line.at));
                }
            }
        }
    }
}

/// A line of `/proc/<pid>/status` in bytes, e.g. `VmHWM` or `VmRSS`.
pub(crate) fn proc_status_bytes(pid: u32, field: &str) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            let kib: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .map_err(|_| format!("{path}: cannot read '{line}'"))?;
            return Ok(kib * 1024);
        }
    }
    Err(format!("{path} has no {field}"))
}

/// Reset the peak RSS (`VmHWM`) of `pid` to its current RSS (Linux ≥ 4.0, same user).
pub(crate) fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}
