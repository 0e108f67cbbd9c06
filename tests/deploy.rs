//! Deployment: cluster managers through the [`Cluster`] trait, and `taskwire ssh` /
//! `SshCluster` against a real OpenSSH server.
//!
//! The SSH tests start `/usr/sbin/sshd` (Debian's `openssh-server`; `.ci/run` installs it) on a
//! free port of 127.0.0.1, 127.0.0.2 and 127.0.0.3 with a generated host key and an authorized
//! key in a temporary directory, and use those three addresses as hosts. Where sshd is not
//! installed they fail, unless `TASKWIRE_SKIP_SSHD_TESTS=1` says to skip them.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{
    BIN, Proc, SOON, alive, all_gone_within, api_json, check_command_values, child_pids,
    logged_sleep, rt, signal, tempdir, tree_sum, workers_until,
};
use taskwire::{AdaptOptions, Cluster, ClusterSecret, Future, LocalCluster, SshCluster, Task};

const SSHD: &str = "/usr/sbin/sshd";

/// A private sshd on 127.0.0.{1,2,3}, killed (with its temporary directory removed) on drop.
struct Sshd {
    _proc: Proc,
    dir: PathBuf,
    port: u16,
}

/// A port free on 127.0.0.1, .2 and .3 (the listeners close again at once).
fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let others = ["127.0.0.2", "127.0.0.3"]
            .iter()
            .all(|h| std::net::TcpListener::bind((*h, port)).is_ok());
        if others {
            return port;
        }
    }
}

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("run ssh-keygen")
        .success();
    assert!(ok, "ssh-keygen {}", path.display());
}

impl Sshd {
    /// Start sshd; `None` when it is not installed and the environment says to skip.
    fn start(name: &str) -> Option<Sshd> {
        if !Path::new(SSHD).exists() {
            if std::env::var_os("TASKWIRE_SKIP_SSHD_TESTS").is_some() {
                eprintln!("skipped: {SSHD} is not installed");
                return None;
            }
            panic!(
                "{SSHD} is missing: `apt-get install openssh-server` (as .ci/run does), or set \
                 TASKWIRE_SKIP_SSHD_TESTS=1 to skip the SSH tests"
            );
        }
        let dir = tempdir(&format!("sshd-{name}"));
        keygen(&dir.join("host_key"));
        keygen(&dir.join("id"));
        std::fs::copy(dir.join("id.pub"), dir.join("authorized_keys")).unwrap();
        // Privilege separation needs this directory when sshd runs as root.
        let _ = std::fs::create_dir_all("/run/sshd");
        for _attempt in 0..5 {
            let port = free_port();
            let config = dir.join("sshd_config");
            let d = dir.display();
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nListenAddress 127.0.0.2\n\
                     ListenAddress 127.0.0.3\nHostKey {d}/host_key\n\
                     AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\nUsePAM no\n\
                     StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     PermitRootLogin prohibit-password\n"
                ),
            )
            .unwrap();
            let mut cmd = Command::new(SSHD);
            cmd.arg("-D").arg("-e").arg("-f").arg(&config);
            let mut proc = Proc::start_cmd(cmd);
            // sshd logs one line per address once it listens, or exits when a port is taken.
            let deadline = Instant::now() + SOON;
            let mut listening = 0;
            while listening < 3 && Instant::now() < deadline && proc.running() {
                if let Ok(line) = proc.stderr.recv_timeout(Duration::from_millis(100))
                    && line.contains("Server listening on")
                {
                    listening += 1;
                }
            }
            if listening == 3 {
                return Some(Sshd {
                    _proc: proc,
                    dir,
                    port,
                });
            }
        }
        panic!("sshd did not start (see its log above)");
    }

    /// `-o` options to reach it as root with the generated key.
    fn options(&self) -> Vec<String> {
        vec![
            format!("Port={}", self.port),
            format!("IdentityFile={}", self.dir.join("id").display()),
            "StrictHostKeyChecking=no".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "LogLevel=ERROR".into(),
        ]
    }

    /// The same as `taskwire ssh` flags.
    fn flags(&self) -> Vec<String> {
        self.options()
            .into_iter()
            .flat_map(|o| ["--ssh-option".to_string(), o])
            .collect()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `pid` runs under an sshd session (some ancestor is `sshd`).
fn under_sshd(pid: u32) -> bool {
    let mut p = pid;
    for _ in 0..10 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            return false;
        };
        let (head, rest) = stat.rsplit_once(')').unwrap();
        if head.ends_with("(sshd") || head.contains("(sshd") {
            return true;
        }
        p = rest.split_whitespace().nth(1).unwrap().parse().unwrap();
        if p <= 1 {
            return false;
        }
    }
    false
}

/// `taskwire ssh` with the sshd's options and `extra` flags.
fn taskwire_ssh(sshd: &Sshd, hosts: &[&str], extra: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("ssh")
        .args(hosts)
        .args(sshd.flags())
        .args(["--scheduler-port", "0", "--dashboard-port", "0"])
        .args(extra);
    cmd
}

#[test]
fn taskwire_ssh_uploads_runs_a_graph_and_ctrl_c_stops_everything() {
    let Some(sshd) = Sshd::start("cli") else {
        return;
    };
    let dir = tempdir("ssh-cli");
    // Not there yet on any "host": --upload must put it there.
    let remote = dir.join("remote/bin/taskwire");
    let remote_s = remote.display().to_string();
    let started = Instant::now();
    let cluster = Proc::start_cmd(taskwire_ssh(
        &sshd,
        &["127.0.0.1", "127.0.0.2", "127.0.0.3"],
        &[
            "--upload",
            "--remote-taskwire",
            &remote_s,
            "--nworkers",
            "2",
            "--nthreads",
            "1",
        ],
    ));
    let address = cluster.line("Scheduler at:");
    let dashboard = cluster.line("dashboard at:");
    let mut pids = Vec::new();
    for _ in 0..3 {
        let line = cluster.line("Remote pid:");
        let (host, pid) = line.split_once(' ').unwrap();
        pids.push((host.to_string(), pid.parse::<u32>().unwrap()));
    }
    let up = cluster.line("Cluster up:");
    eprintln!(
        "taskwire ssh: {up} ({:?} including the test's waits)",
        started.elapsed()
    );
    assert!(up.starts_with("4 workers on 2 hosts"), "{up}");
    assert!(address.starts_with("tcp://127.0.0.1:"), "{address}");
    assert!(dashboard.starts_with("http://127.0.0.1:"), "{dashboard}");

    // The uploaded binary is there and is this version.
    let out = Command::new(&remote).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(version, format!("taskwire {}", env!("CARGO_PKG_VERSION")));

    // Every process runs in an sshd session, from the uploaded binary.
    assert_eq!(
        pids.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(),
        ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    );
    let mut all = Vec::new();
    for (host, pid) in &pids {
        assert!(under_sshd(*pid), "{host}: pid {pid} is not under sshd");
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert_eq!(exe, remote, "{host}: pid {pid}");
        all.push(*pid);
    }

    let rt = rt();
    rt.block_on(async {
        let client = support::connect(&address).await;
        let ws = workers_until(&client, "4 workers", |ws| ws.len() == 4).await;
        let mut names: Vec<&str> = ws.iter().map(|w| w.name.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "127.0.0.2-0-0",
                "127.0.0.2-0-1",
                "127.0.0.3-1-0",
                "127.0.0.3-1-1"
            ]
        );
        assert_eq!(tree_sum(&client, "ssh").await, (1..=32).sum::<i64>());
        client.close().await;
    });
    // The worker processes under the nannies.
    for (_, nanny) in &pids[1..] {
        let kids = child_pids(*nanny);
        assert_eq!(kids.len(), 2, "nanny {nanny} children {kids:?}");
        all.extend(kids);
    }
    let http = std::net::TcpStream::connect(
        dashboard
            .trim_start_matches("http://")
            .trim_end_matches('/'),
    );
    assert!(http.is_ok(), "dashboard {dashboard}: {http:?}");

    let mut cluster = cluster;
    let t = Instant::now();
    signal(cluster.pid(), "-INT");
    let status = cluster.exit_within(SOON);
    assert!(status.success(), "taskwire ssh exit status {status}");
    all_gone_within(&all, Duration::from_secs(10));
    eprintln!("Ctrl-C to every remote process gone: {:?}", t.elapsed());
}

#[test]
fn killing_taskwire_ssh_still_stops_the_remote_processes() {
    let Some(sshd) = Sshd::start("kill") else {
        return;
    };
    let mut cluster = Proc::start_cmd(taskwire_ssh(
        &sshd,
        &["127.0.0.1", "127.0.0.2"],
        &["--remote-taskwire", BIN, "--nthreads", "1"],
    ));
    let mut all = Vec::new();
    for _ in 0..2 {
        let line = cluster.line("Remote pid:");
        all.push(line.split_once(' ').unwrap().1.parse::<u32>().unwrap());
    }
    cluster.line("Cluster up:");
    all.extend(child_pids(all[1]));
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(all.iter().all(|&p| alive(p)));
    // No chance to clean up: its ssh children die with it, and the remote wrappers see the
    // sessions end.
    signal(cluster.pid(), "-KILL");
    cluster.exit_within(SOON);
    all_gone_within(&all, Duration::from_secs(30));
}

#[test]
fn ssh_failures_name_the_host_and_show_ssh_stderr() {
    let Some(sshd) = Sshd::start("errors") else {
        return;
    };
    let dir = tempdir("ssh-errors");
    // A unique path for the binary, so that leftovers can be looked for.
    let bin = dir.join("bin/taskwire");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(BIN, &bin).unwrap();
    let bin_s = bin.display().to_string();
    let run = |cmd: &mut Command| {
        let out = tokio_free_timeout(cmd);
        assert!(!out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };

    // No sshd on 127.0.0.4: the scheduler starts on 127.0.0.1, the worker host is refused, and
    // the scheduler is stopped again.
    let err = run(&mut taskwire_ssh(
        &sshd,
        &["127.0.0.1", "127.0.0.4"],
        &["--remote-taskwire", &bin_s],
    ));
    assert!(err.contains("error: 127.0.0.4:"), "{err}");
    assert!(err.contains("Connection refused"), "{err}");
    let left = Command::new("pgrep").args(["-f", &bin_s]).output().unwrap();
    assert!(
        left.stdout.is_empty(),
        "left running: {}",
        String::from_utf8_lossy(&left.stdout)
    );

    // A key the server does not accept.
    let stranger = dir.join("stranger");
    keygen(&stranger);
    // Only that key (IdentityFile adds up, so not the sshd's options).
    let mut cmd = Command::new(BIN);
    cmd.args(["ssh", "127.0.0.1", "127.0.0.2", "--remote-taskwire", &bin_s]);
    for o in [
        format!("Port={}", sshd.port),
        format!("IdentityFile={}", stranger.display()),
        "IdentitiesOnly=yes".into(),
        "StrictHostKeyChecking=no".into(),
        "UserKnownHostsFile=/dev/null".into(),
    ] {
        cmd.arg("--ssh-option").arg(o);
    }
    let err = run(&mut cmd);
    assert!(err.contains("error: 127.0.0.1:"), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(err.contains("could not connect or log in"), "{err}");

    // No taskwire at that path, and no --upload.
    let err = run(&mut taskwire_ssh(
        &sshd,
        &["127.0.0.1", "127.0.0.2"],
        &["--remote-taskwire", "/nonexistent/taskwire"],
    ));
    assert!(err.contains("error: 127.0.0.1:"), "{err}");
    assert!(err.contains("not found"), "{err}");
    assert!(err.contains("--upload"), "{err}");
}

/// Run `cmd` to completion within [`SOON`], killing it past that.
fn tokio_free_timeout(cmd: &mut Command) -> std::process::Output {
    use std::process::Stdio;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(SOON) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            signal(pid, "-KILL");
            panic!("`taskwire ssh` did not finish within {SOON:?}");
        }
    }
}

/// Scale `cluster` to `up` workers, compute, scale to `down`: the retired workers' results
/// are still there and nothing ran twice (each task appends a line to `log` when it runs).
async fn scale_up_then_down<C: Cluster>(cluster: &mut C, up: usize, down: usize, log: &Path) {
    tokio::time::timeout(SOON, cluster.scale(up))
        .await
        .expect("scale up in time")
        .unwrap();
    assert_eq!(cluster.workers().len(), up, "{:?}", cluster.workers());
    let client = cluster.client().await.unwrap();
    workers_until(&client, "scaled up", |ws| ws.len() == up).await;
    let n = 30;
    let tasks = (0..n)
        .map(|i| {
            let script = format!("echo run-{i} >> {}; printf 'value-{i}'", log.display());
            Task::command(format!("data-{i}"), vec!["sh".into(), "-c".into(), script])
        })
        .collect();
    let futures: Vec<Future> = client.submit_graph(tasks).await.unwrap();
    tokio::time::timeout(SOON, client.wait(&futures))
        .await
        .expect("tasks in time");
    let before = client.workers().await.unwrap();
    assert!(
        before.iter().filter(|w| w.in_memory > 0).count() > down,
        "results should be spread over more than {down} workers: {before:?}"
    );

    tokio::time::timeout(SOON, cluster.scale(down))
        .await
        .expect("scale down in time")
        .unwrap();
    let names = cluster.workers();
    assert_eq!(names.len(), down, "{names:?}");
    let after = client.workers().await.unwrap();
    let mut registered: Vec<&str> = after.iter().map(|w| w.name.as_str()).collect();
    registered.sort();
    let mut expected: Vec<&str> = names.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(registered, expected);
    assert_eq!(
        after.iter().map(|w| w.in_memory).sum::<u64>(),
        n as u64,
        "{after:?}"
    );
    for (i, f) in futures.iter().enumerate() {
        let out = f.command_output().await.unwrap();
        assert_eq!(out.stdout, format!("value-{i}").into_bytes());
    }
    let runs = std::fs::read_to_string(log).unwrap();
    assert_eq!(runs.lines().count(), n, "a task ran twice:\n{runs}");
    client.close().await;
}

#[test]
fn local_cluster_scales_through_the_cluster_trait() {
    let dir = tempdir("local-scale");
    rt().block_on(async {
        let mut cluster = LocalCluster::builder().workers(1).start().await.unwrap();
        scale_up_then_down(&mut cluster, 3, 1, &dir.join("runs.log")).await;
        assert_eq!(Cluster::workers(&cluster), ["local-worker-0"]);
        // Back up: fresh names, never reused.
        cluster.scale(2).await.unwrap();
        assert_eq!(
            Cluster::workers(&cluster),
            ["local-worker-0", "local-worker-3"]
        );
        Cluster::close(cluster).await.unwrap();
    });
}

#[test]
fn local_cluster_of_worker_processes_scales_through_the_cluster_trait() {
    let dir = tempdir("local-process-scale");
    rt().block_on(async {
        let mut cluster = LocalCluster::builder()
            .processes(BIN)
            .workers(1)
            .start()
            .await
            .unwrap();
        let first: Vec<u32> = cluster.worker_pids().iter().map(|p| p.1).collect();
        assert_eq!(first.len(), 1);
        scale_up_then_down(&mut cluster, 3, 1, &dir.join("runs.log")).await;
        assert_eq!(cluster.worker_pids().len(), 1);
        let all: Vec<u32> = cluster.worker_pids().iter().map(|p| p.1).collect();
        assert_eq!(all, first, "the first worker stays");
        Cluster::close(cluster).await.unwrap();
        all_gone_within(&all, Duration::from_secs(10));
    });
}

#[test]
fn ssh_cluster_scales_through_the_cluster_trait() {
    let Some(sshd) = Sshd::start("scale") else {
        return;
    };
    let dir = tempdir("ssh-scale");
    rt().block_on(async {
        let mut b = SshCluster::builder(["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.2"])
            .remote_taskwire(BIN)
            .nthreads(1)
            .scheduler_port(0)
            .dashboard_port(None);
        for o in sshd.options() {
            b = b.ssh_option(o);
        }
        let mut cluster = tokio::time::timeout(SOON, b.start())
            .await
            .expect("start in time")
            .unwrap();
        assert_eq!(cluster.dashboard_link(), None);
        let nannies: Vec<u32> = cluster.remote_pids()[1..].iter().map(|p| p.1).collect();
        assert_eq!(nannies.len(), 3);
        scale_up_then_down(&mut cluster, 3, 1, &dir.join("runs.log")).await;
        assert_eq!(Cluster::workers(&cluster), ["127.0.0.2-0"]);
        // The retired groups' nannies exited.
        all_gone_within(&nannies[1..], Duration::from_secs(10));
        // More than the host pool holds is refused; back up to 2 reuses a free slot.
        let err = cluster.scale(4).await.unwrap_err().to_string();
        assert!(err.contains("3 worker hosts"), "{err}");
        cluster.scale(2).await.unwrap();
        assert_eq!(Cluster::workers(&cluster), ["127.0.0.2-0", "127.0.0.3-1"]);
        close_and_check_gone(cluster).await;
    });
}

/// The `--auth-token-file` argument of process `pid`, if it has one.
fn token_file_of(pid: u32) -> Option<PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let i = args.iter().position(|a| *a == b"--auth-token-file")?;
    Some(PathBuf::from(
        String::from_utf8_lossy(args.get(i + 1)?).to_string(),
    ))
}

/// Whether any process's command line contains `needle`.
fn any_cmdline_contains(needle: &[u8]) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
    })
}

#[test]
fn ssh_cluster_adapts_over_its_hosts_with_a_forwarded_token() {
    use std::os::unix::fs::PermissionsExt;
    let Some(sshd) = Sshd::start("adapt") else {
        return;
    };
    let dir = tempdir("ssh-adapt");
    let secret = ClusterSecret::generate();
    let token = secret.file_text();
    rt().block_on(async {
        let mut b = SshCluster::builder(["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.2"])
            .remote_taskwire(BIN)
            .nthreads(1)
            .scheduler_port(0)
            .dashboard_port(Some(0))
            .auth_token(secret)
            .workers(1);
        for o in sshd.options() {
            b = b.ssh_option(o);
        }
        let cluster = tokio::time::timeout(SOON, b.start())
            .await
            .expect("start in time")
            .unwrap();
        assert_eq!(cluster.capacity(), 3);
        assert_eq!(Cluster::workers(&cluster), ["127.0.0.2-0"]);

        // The token reached the scheduler and the nanny as a mode-600 file, and no command
        // line anywhere holds it.
        let mut token_files = Vec::new();
        for (host, pid) in cluster.remote_pids() {
            let f = token_file_of(pid).unwrap_or_else(|| panic!("{host}: pid {pid} has no token"));
            assert_eq!(std::fs::read(&f).unwrap(), token, "{}", f.display());
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
            token_files.push(f);
        }
        assert!(!any_cmdline_contains(&token[..token.len() - 1]));
        // A client without it is refused.
        let refused = taskwire::Client::connect(&cluster.scheduler_address()).await;
        assert!(refused.is_err(), "connected without the token");

        let adaptive = cluster
            .adapt_with(AdaptOptions::new(1, 3).interval(Duration::from_millis(500)))
            .unwrap();
        let dashboard = adaptive.dashboard_link().expect("dashboard").to_string();
        let client = adaptive.client().await.unwrap();
        let log = dir.join("runs.log");
        let n = 18;
        let tasks = (0..n)
            .map(|i| logged_sleep("ssh-burst", i, 1000, &log))
            .collect();
        let t = Instant::now();
        let futures: Vec<Future> = client.submit_graph(tasks).await.unwrap();
        workers_until(&client, "grown to 3", |ws| ws.len() == 3).await;
        let grown = t.elapsed();
        tokio::time::timeout(SOON, client.wait(&futures))
            .await
            .expect("burst in time");
        check_command_values(&futures).await;
        let t = Instant::now();
        let ws = workers_until(&client, "shrunk to 1", |ws| ws.len() == 1).await;
        let shrunk = t.elapsed();
        assert_eq!(ws[0].in_memory, n as u64, "{ws:?}");
        check_command_values(&futures).await;
        let runs = std::fs::read_to_string(&log).unwrap();
        assert_eq!(runs.lines().count(), n, "a task ran twice:\n{runs}");
        let deadline = Instant::now() + SOON;
        let totals = loop {
            let totals = api_json(&dashboard, "/api/v1/totals");
            if totals["workers"] == 1 || Instant::now() > deadline {
                break totals;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let r = &totals["recovery"];
        assert_eq!(r["workers_retired"], 2, "{totals}");
        assert_eq!(r["workers_lost"], 0, "{totals}");
        assert_eq!(r["results_recomputed"], 0, "{totals}");
        eprintln!("ssh adaptive 1:3: grown to 3 in {grown:?}, shrunk to 1 in {shrunk:?}");
        assert_eq!(adaptive.workers().await.len(), 1);
        client.close().await;

        let cluster = adaptive.stop().await;
        close_and_check_gone(cluster).await;
        // Each token file went with its process (the wrappers remove them).
        removed_within_10s(&token_files).await;
    });
}

#[test]
fn taskwire_ssh_adapts_with_a_token_file_and_ctrl_c_stops_everything() {
    let Some(sshd) = Sshd::start("adapt-cli") else {
        return;
    };
    let dir = tempdir("ssh-adapt-cli");
    let token = dir.join("token");
    let token_s = token.display().to_string();
    let mut cluster = Proc::start_cmd(taskwire_ssh(
        &sshd,
        &["127.0.0.1", "127.0.0.2", "127.0.0.3"],
        &[
            "--remote-taskwire",
            BIN,
            "--nthreads",
            "1",
            "--adapt",
            "1:2",
            "--adapt-interval",
            "500ms",
            "--auth-token-file",
            &token_s,
        ],
    ));
    assert!(
        cluster
            .line("Created cluster token file:")
            .starts_with(&token_s)
    );
    let address = cluster.line("Scheduler at:");
    let mut pids = Vec::new();
    for _ in 0..2 {
        let line = cluster.line("Remote pid:");
        pids.push(line.split_once(' ').unwrap().1.parse::<u32>().unwrap());
    }
    assert!(
        cluster
            .line("Cluster up:")
            .starts_with("1 workers on 2 hosts")
    );
    assert_eq!(cluster.line("Adaptive scaling:"), "1 to 2 workers");
    let secret = ClusterSecret::read_file(&token).unwrap();
    rt().block_on(async {
        let client = taskwire::Client::builder(address.parse().unwrap())
            .auth_token(secret)
            .connect()
            .await
            .unwrap();
        let log = dir.join("runs.log");
        let tasks = (0..12)
            .map(|i| logged_sleep("cli-burst", i, 1000, &log))
            .collect();
        let futures: Vec<Future> = client.submit_graph(tasks).await.unwrap();
        workers_until(&client, "grown to 2", |ws| ws.len() == 2).await;
        tokio::time::timeout(SOON, client.wait(&futures))
            .await
            .expect("burst in time");
        workers_until(&client, "shrunk to 1", |ws| ws.len() == 1).await;
        check_command_values(&futures).await;
        let runs = std::fs::read_to_string(&log).unwrap();
        assert_eq!(runs.lines().count(), 12, "a task ran twice:\n{runs}");
        client.close().await;
    });
    let mut all = pids.clone();
    all.extend(child_pids(pids[1]));
    signal(cluster.pid(), "-INT");
    let status = cluster.exit_within(SOON);
    assert!(status.success(), "taskwire ssh exit status {status}");
    all_gone_within(&all, Duration::from_secs(10));
}

/// Adaptive scaling closes workers one by one; with `--nworkers 2` a host's group keeps
/// running until its last worker is stopped, and its slot is then free for a new group.
#[test]
fn ssh_cluster_stops_workers_one_by_one_within_groups() {
    let Some(sshd) = Sshd::start("groups") else {
        return;
    };
    rt().block_on(async {
        let mut b = SshCluster::builder(["127.0.0.1", "127.0.0.2", "127.0.0.3"])
            .remote_taskwire(BIN)
            .nworkers(2)
            .nthreads(1)
            .scheduler_port(0)
            .dashboard_port(None)
            .workers(2);
        for o in sshd.options() {
            b = b.ssh_option(o);
        }
        let mut cluster = tokio::time::timeout(SOON, b.start())
            .await
            .expect("start in time")
            .unwrap();
        assert_eq!(cluster.capacity(), 4);
        assert_eq!(
            Cluster::workers(&cluster),
            ["127.0.0.2-0-0", "127.0.0.2-0-1"]
        );
        let nanny0 = cluster.remote_pids()[1].1;
        let client = cluster.client().await.unwrap();
        let retire_and_stop = |name: &'static str| {
            let client = client.clone();
            async move {
                client.retire_workers(&[name]).await.unwrap();
                vec![name.to_string()]
            }
        };
        // One worker of the group goes: the nanny keeps the other.
        let names = retire_and_stop("127.0.0.2-0-1").await;
        cluster.stop_workers(&names).await.unwrap();
        assert_eq!(Cluster::workers(&cluster), ["127.0.0.2-0-0"]);
        assert!(alive(nanny0));
        // Up to 3: one more group on the free host.
        cluster.scale(3).await.unwrap();
        assert_eq!(
            Cluster::workers(&cluster),
            ["127.0.0.2-0-0", "127.0.0.3-1-0", "127.0.0.3-1-1"]
        );
        // The group's last worker goes: its nanny exits and the host is free again.
        let names = retire_and_stop("127.0.0.2-0-0").await;
        cluster.stop_workers(&names).await.unwrap();
        assert_eq!(
            Cluster::workers(&cluster),
            ["127.0.0.3-1-0", "127.0.0.3-1-1"]
        );
        all_gone_within(&[nanny0], Duration::from_secs(10));
        cluster.scale(4).await.unwrap();
        assert_eq!(Cluster::workers(&cluster).len(), 4);
        workers_until(&client, "4 registered", |ws| ws.len() == 4).await;
        assert_eq!(tree_sum(&client, "groups").await, (1..=32).sum::<i64>());
        client.close().await;
        close_and_check_gone(cluster).await;
    });
}

/// Close `cluster` in time and check that every process it started remotely, and their
/// children, are gone within 10 s.
async fn close_and_check_gone(cluster: SshCluster) {
    let mut all: Vec<u32> = cluster.remote_pids().iter().map(|p| p.1).collect();
    for &p in &all.clone()[1..] {
        all.extend(child_pids(p));
    }
    tokio::time::timeout(SOON, Cluster::close(cluster))
        .await
        .expect("close in time")
        .unwrap();
    all_gone_within(&all, Duration::from_secs(10));
}

/// Every one of `files` is removed within 10 s.
async fn removed_within_10s(files: &[PathBuf]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while files.iter().any(|f| f.exists()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for f in files {
        assert!(!f.exists(), "{} left behind", f.display());
    }
}

/// The `--FLAG` argument of process `pid`, if it has one.
fn flag_of(pid: u32, flag: &str) -> Option<PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let i = args.iter().position(|a| *a == flag.as_bytes())?;
    Some(PathBuf::from(
        String::from_utf8_lossy(args.get(i + 1)?).to_string(),
    ))
}

/// A TLS SshCluster with a token over the real sshd: the scheduler is `tls://`, every remote
/// process (the scheduler and each worker nanny) got the CA, certificate and key and the token
/// as mode-600 files through its ssh session (no command line anywhere holds key material),
/// the workers register over TLS and a graph runs; a plain client is refused; the files go
/// with their processes.
#[test]
fn ssh_cluster_with_tls_forwards_the_certificates() {
    use std::os::unix::fs::PermissionsExt;
    let Some(sshd) = Sshd::start("tls") else {
        return;
    };
    let dir = tempdir("ssh-tls");
    let certs = dir.join("certs");
    let out = Command::new(BIN)
        .args(["security", "generate"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let files = taskwire::TlsFiles {
        ca_file: certs.join("ca.pem"),
        cert: certs.join("cluster.pem"),
        key: certs.join("cluster-key.pem"),
    };
    let key = std::fs::read(&files.key).unwrap();
    let secret = ClusterSecret::generate();
    rt().block_on(async {
        let security = taskwire::Security::new()
            .tls(taskwire::TlsConfig::load(&files).unwrap())
            .require_encryption(true);
        let mut b = SshCluster::builder(["127.0.0.1", "127.0.0.2", "127.0.0.3"])
            .remote_taskwire(BIN)
            .nthreads(1)
            .scheduler_port(0)
            .dashboard_port(None)
            .auth_token(secret)
            .security(security);
        for o in sshd.options() {
            b = b.ssh_option(o);
        }
        let cluster = tokio::time::timeout(SOON, b.start())
            .await
            .expect("start in time")
            .unwrap();
        let address = cluster.scheduler_address();
        assert!(address.starts_with("tls://"), "{address}");

        let mut forwarded = Vec::new();
        for (host, pid) in cluster.remote_pids() {
            for (flag, original) in [
                ("--tls-ca-file", &files.ca_file),
                ("--tls-cert", &files.cert),
                ("--tls-key", &files.key),
                ("--auth-token-file", &dir.join("none")),
            ] {
                let f =
                    flag_of(pid, flag).unwrap_or_else(|| panic!("{host}: pid {pid}: no {flag}"));
                assert_ne!(&f, original, "{host}: the original file was named");
                if flag != "--auth-token-file" {
                    assert_eq!(std::fs::read(&f).unwrap(), std::fs::read(original).unwrap());
                }
                let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", f.display());
                forwarded.push(f);
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
            assert!(
                cmdline.windows(9).any(|w| w == b"--require"),
                "{host}: no --require-encryption"
            );
        }
        assert!(!any_cmdline_contains(b"PRIVATE KEY"));
        assert!(!any_cmdline_contains(&key[40..80]));

        let client = cluster.client().await.unwrap();
        let ws = workers_until(&client, "two TLS workers", |ws| ws.len() == 2).await;
        for w in &ws {
            assert!(w.address.starts_with("tls://"), "{w:?}");
        }
        assert_eq!(tree_sum(&client, "ssh-tls").await, (1..=32).sum::<i64>());
        client.close().await;
        let plain = address.replace("tls://", "tcp://");
        let refused = taskwire::Client::connect(&plain).await;
        assert!(refused.is_err(), "a plain client was accepted");

        close_and_check_gone(cluster).await;
        removed_within_10s(&forwarded).await;
    });
}
