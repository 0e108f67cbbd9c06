//! Helpers shared by the end-to-end tests: real `taskwire` processes that are killed when a
//! test ends (whatever happens), their stdout and stderr lines, temporary directories, a
//! runtime for the client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `taskwire` binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_taskwire");

/// Generous bound for anything that should happen "soon" on a loaded 2-core machine.
pub(crate) const SOON: Duration = Duration::from_secs(60);

/// A process (and its process group) killed when dropped; its stdout and stderr lines come
/// through channels, and stderr is echoed to ours for failing tests' logs.
pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) stdout: mpsc::Receiver<String>,
    pub(crate) stderr: mpsc::Receiver<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // The whole group (each Proc starts its own), in case it started helpers.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(r: impl Read + Send + 'static, echo: bool) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if echo {
                eprintln!("{line}");
            }
            let _ = tx.send(line);
        }
    });
    rx
}

impl Proc {
    /// Start `taskwire args...`.
    pub(crate) fn start(args: &[&str]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        Proc::start_cmd(cmd)
    }

    /// Start `cmd` (e.g. `ip netns exec NS taskwire ...`) in its own process group.
    pub(crate) fn start_cmd(mut cmd: Command) -> Proc {
        use std::os::unix::process::CommandExt;
        let mut child = cmd
            .env("TASKWIRE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start taskwire");
        let stdout = lines(child.stdout.take().unwrap(), false);
        let stderr = lines(child.stderr.take().unwrap(), true);
        Proc {
            child,
            stdout,
            stderr,
        }
    }

    /// The rest of the next stdout line starting with `prefix`, trimmed.
    pub(crate) fn line(&self, prefix: &str) -> String {
        let deadline = Instant::now() + SOON;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .stdout
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no '{prefix}' line in time"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_string();
            }
        }
    }

    /// Wait for a stderr line containing `text`.
    pub(crate) fn log(&self, text: &str) -> String {
        let deadline = Instant::now() + SOON;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .stderr
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log line with '{text}' in time"));
            if line.contains(text) {
                return line;
            }
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for the process to exit, at most `bound`.
    pub(crate) fn exit_within(&mut self, bound: Duration) -> ExitStatus {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process {} still running after {bound:?}",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

/// Start `taskwire args...` and wait for a stdout line starting with each of `wanted`, in
/// order; returns the process and the rest of those lines.
pub(crate) fn spawn(args: &[&str], wanted: &[&str]) -> (Proc, Vec<String>) {
    let proc = Proc::start(args);
    let found = wanted.iter().map(|w| proc.line(w)).collect();
    (proc, found)
}

/// Start a scheduler on 127.0.0.1 with extra flags; returns it and its address.
pub(crate) fn scheduler(extra: &[&str]) -> (Proc, String) {
    let mut args = vec![
        "scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--dashboard-port",
        "0",
    ];
    args.extend_from_slice(extra);
    let (proc, lines) = spawn(&args, &["Scheduler at:"]);
    (proc, lines[0].clone())
}

/// Send a signal (`-KILL`, `-TERM`, ...) to a process.
pub(crate) fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// A fresh, empty directory under the system temp dir, unique to this test process.
pub(crate) fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("taskwire-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A multi-threaded tokio runtime for the client.
pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Connect a client, within [`SOON`].
pub(crate) async fn connect(address: &str) -> taskwire::Client {
    tokio::time::timeout(SOON, taskwire::Client::connect(address))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Poll the scheduler's worker list until `pred` holds, for at most [`SOON`].
pub(crate) async fn workers_until(
    client: &taskwire::Client,
    what: &str,
    pred: impl Fn(&[taskwire::WorkerInfoMsg]) -> bool,
) -> Vec<taskwire::WorkerInfoMsg> {
    let deadline = Instant::now() + SOON;
    loop {
        let ws = client.workers().await.unwrap();
        if pred(&ws) {
            return ws;
        }
        assert!(Instant::now() < deadline, "{what}: workers are {ws:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Send `request` to a nanny's control port (`host:port`); the answer, read until the nanny
/// closes or `answers` lines arrived.
pub(crate) fn nanny_control(addr: &str, request: &[u8], answers: usize) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the nanny");
    s.set_read_timeout(Some(SOON)).unwrap();
    s.write_all(request).unwrap();
    let mut r = BufReader::new(s);
    let mut out = String::new();
    for _ in 0..answers {
        if r.read_line(&mut out).unwrap() == 0 {
            break;
        }
    }
    out
}

/// [`nanny_control`], over TLS with `tls` when given, answering the token's challenge with
/// `token` when given (the `ok` line is not part of the answer); a failed connection or TLS
/// handshake is the error, in words.
pub(crate) fn nanny_session(
    addr: &str,
    tls: Option<&taskwire::TlsConfig>,
    token: Option<&taskwire::ClusterSecret>,
    request: &[u8],
    answers: usize,
) -> Result<String, String> {
    use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt};
    async fn talk<S: AsyncRead + AsyncWrite>(
        conn: S,
        token: Option<&taskwire::ClusterSecret>,
        request: &[u8],
        answers: usize,
    ) -> std::io::Result<String> {
        let (read, mut write) = tokio::io::split(conn);
        let mut r = tokio::io::BufReader::new(read);
        if let Some(secret) = token {
            let mut line = String::new();
            r.read_line(&mut line).await?;
            let Some(challenge) = line.trim().strip_prefix("challenge ") else {
                return Ok(line);
            };
            let answer = secret.control_response(challenge);
            write
                .write_all(format!("auth {answer}\n").as_bytes())
                .await?;
            line.clear();
            r.read_line(&mut line).await?;
            if line != "ok\n" {
                return Ok(line);
            }
        }
        write.write_all(request).await?;
        let mut out = String::new();
        for _ in 0..answers {
            if r.read_line(&mut out).await? == 0 {
                break;
            }
        }
        Ok(out)
    }
    let session = async {
        let host = addr.rsplit_once(':').map(|(h, _)| h.to_string());
        let s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to the nanny: {e}"))?;
        let answer = match tls {
            None => talk(s, token, request, answers).await,
            Some(tls) => {
                let s = taskwire::transport_tcp::tls::connect_stream(tls, s, host.as_deref())
                    .await
                    .map_err(|e| e.to_string())?;
                talk(s, token, request, answers).await
            }
        };
        answer.map_err(|e| e.to_string())
    };
    // On a thread of its own, so that a test inside a runtime can call it too.
    std::thread::scope(|s| {
        s.spawn(|| {
            rt().block_on(async {
                tokio::time::timeout(SOON, session)
                    .await
                    .map_err(|_| "no answer from the nanny in time".to_string())?
            })
        })
        .join()
        .expect("the nanny session thread")
    })
}

/// The `workers` of a nanny's `status` answer.
pub(crate) fn nanny_status(addr: &str) -> Vec<serde_json::Value> {
    let line = nanny_control(addr, b"status\n", 1);
    let v: serde_json::Value =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{line}: {e}"));
    v["workers"].as_array().expect("workers array").clone()
}

/// The inner tasks of a binary tree reduction (`add` of two children, keys
/// `{prefix}-{depth}-{i}`) over the results of `leaves`; returns them and the root's key.
pub(crate) fn tree_over(prefix: &str, leaves: Vec<String>) -> (Vec<taskwire::Task>, String) {
    let mut tasks = Vec::with_capacity(leaves.len());
    let mut level = leaves;
    let mut depth = 0;
    while level.len() > 1 {
        depth += 1;
        level = level
            .chunks(2)
            .enumerate()
            .map(|(i, pair)| {
                let key = format!("{prefix}-{depth}-{i}");
                let mut t = taskwire::Task::function(key.clone(), "add");
                for k in pair {
                    t = t.dep_key(k.clone());
                }
                tasks.push(t);
                key
            })
            .collect();
    }
    (tasks, level.pop().expect("at least one leaf"))
}

/// 32 `inc` leaves summed by a tree of `add`s ([`tree_over`]): 1 + 2 + ... + 32 = 528.
pub(crate) async fn tree_sum(client: &taskwire::Client, prefix: &str) -> i64 {
    let mut tasks: Vec<taskwire::Task> = (0..32)
        .map(|i| taskwire::Task::function(format!("{prefix}-inc-{i}"), "inc").arg_i64(i))
        .collect();
    let keys = tasks.iter().map(|t| t.key().to_string()).collect();
    let (inner, root) = tree_over(&format!("{prefix}-add"), keys);
    tasks.extend(inner);
    let futures = client.submit_graph(tasks).await.unwrap();
    let root = futures.into_iter().find(|f| f.key() == root).unwrap();
    tokio::time::timeout(SOON, root.result_i64())
        .await
        .expect("tree sum in time")
        .unwrap()
}

/// The pids of `pid`'s child processes.
pub(crate) fn child_pids(pid: u32) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .expect("run pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Whether a process with this pid exists (zombies count as gone).
pub(crate) fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Wait until none of `pids` is alive, for at most `bound`; panics naming the survivors.
pub(crate) fn all_gone_within(pids: &[u32], bound: Duration) {
    let deadline = Instant::now() + bound;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still running after {bound:?}: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A command task that logs its run to `log`, sleeps `ms`, and returns `value-{i}`.
pub(crate) fn logged_sleep(
    prefix: &str,
    i: usize,
    ms: u64,
    log: &std::path::Path,
) -> taskwire::Task {
    let script = format!(
        "echo run-{i} >> {}; sleep {}; printf 'value-{i}'",
        log.display(),
        ms as f64 / 1000.0
    );
    taskwire::Task::command(
        format!("{prefix}-{i}"),
        vec!["sh".into(), "-c".into(), script],
    )
}

/// One JSON document from the dashboard's API (`http://host:port/`; a link ending in
/// `?token=CREDENTIAL`, as a dashboard under a cluster token has, sends the credential).
pub(crate) fn api_json(dashboard: &str, path: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let (link, credential) = match dashboard.split_once("?token=") {
        Some((link, c)) => (link, Some(c)),
        None => (dashboard, None),
    };
    let host = link.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(host).expect("connect to the dashboard");
    s.set_read_timeout(Some(SOON)).unwrap();
    let auth = credential.map_or(String::new(), |c| format!("Authorization: Bearer {c}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {answer}"))
}

/// Every future's command output is `value-{i}` (as [`logged_sleep`] returns).
pub(crate) async fn check_command_values(futures: &[taskwire::Future]) {
    for (i, f) in futures.iter().enumerate() {
        let out = tokio::time::timeout(SOON, f.command_output())
            .await
            .expect("result in time")
            .unwrap();
        assert_eq!(out.stdout, format!("value-{i}").into_bytes(), "{}", f.key());
    }
}

/// `taskwire cuda-worker ADDR --name ci extra...` with `CUDA_VISIBLE_DEVICES=visible` (unset for
/// `None`); returns it with its nanny's control address once its `n` GPU workers registered.
pub(crate) fn cuda_worker(
    address: &str,
    visible: Option<&str>,
    n: usize,
    extra: &[&str],
) -> (Proc, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["cuda-worker", address, "--name", "ci"])
        .args(extra);
    match visible {
        Some(v) => cmd.env("CUDA_VISIBLE_DEVICES", v),
        None => cmd.env_remove("CUDA_VISIBLE_DEVICES"),
    };
    let p = Proc::start_cmd(cmd);
    let control = p.line("Nanny at:");
    let control = control.strip_prefix("tcp://").expect("tcp").to_string();
    let mut registered = 0;
    let deadline = Instant::now() + SOON;
    while registered < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = p
            .stdout
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("{registered} of {n} GPU workers registered"));
        eprintln!("cuda-worker: {line}");
        if line.starts_with("Registered to:") {
            registered += 1;
        }
    }
    (p, control)
}
