//! Helpers shared by the end-to-end tests: real `taskwire` processes that are killed when a
//! test ends (whatever happens), their stdout lines, temporary directories, a runtime.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The `taskwire` binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_taskwire");

/// How long to wait for an expected line before failing the test.
pub(crate) const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// A child process (and its process group) killed when dropped, with its stdout as lines.
pub(crate) struct Proc {
    pub(crate) child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Wait for the next stdout line starting with `prefix`; returns the rest, trimmed.
    pub(crate) fn wait_line(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                }
                Err(_) => panic!("no '{prefix}' line within {timeout:?}"),
            }
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal to the process (not its group).
    pub(crate) fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.pid());
    }

    /// Wait for the process to exit, up to `timeout`; `None` if it is still running.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // The whole group: a nanny's worker children go too.
        let pgid = self.child.id() as i32;
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `cmd` (stdout piped, in its own process group) and wait for a stdout line starting
/// with each of `wanted`, in order; returns the process and the rest of those lines.
pub(crate) fn spawn_cmd(mut cmd: Command, wanted: &[&str]) -> (Proc, Vec<String>) {
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .expect("start taskwire");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let proc = Proc { child, lines: rx };
    let found = wanted
        .iter()
        .map(|w| proc.wait_line(w, LINE_TIMEOUT))
        .collect();
    (proc, found)
}

/// Start `taskwire args...`; see [`spawn_cmd`].
pub(crate) fn spawn(args: &[&str], wanted: &[&str]) -> (Proc, Vec<String>) {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    spawn_cmd(cmd, wanted)
}

/// Start a scheduler on 127.0.0.1 with extra flags; returns it and its address.
pub(crate) fn scheduler(extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["scheduler", "--host", "127.0.0.1", "--port", "0"];
    args.extend_from_slice(extra);
    let (proc, lines) = spawn(&args, &["Scheduler at:"]);
    let address = lines[0].clone();
    assert!(address.starts_with("tcp://127.0.0.1:"), "{address}");
    (proc, address)
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
        .enable_all()
        .build()
        .unwrap()
}
