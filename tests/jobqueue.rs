//! Batch systems: `taskwire jobqueue` and `JobQueueCluster` against a real single-node Slurm,
//! and PBS job scripts run the way a PBS job runs them.
//!
//! The Slurm test starts Debian's `slurm-wlm` daemons (`slurmctld`, `slurmd`) and `munged`
//! (`.ci/run` installs `slurmctld slurmd slurm-client munge`) as children of the test, as root,
//! with a generated munge key, a minimal `slurm.conf` for a node named `localhost` with this
//! machine's CPUs and memory, and every state directory in a temporary directory; the batch
//! commands reach it through `SLURM_CONF`. It skips, saying why, when not run as root or when
//! the packages are missing.
//!
//! There is no PBS in Debian: the PBS test takes the script `taskwire jobqueue pbs --dry-run`
//! prints and runs it with bash and `PBS_JOBID` set, as `pbs_mom` would, then stops it the way
//! `qdel` does (SIGTERM) or lets it reach its lifetime. A second PBS test drives
//! `JobQueueCluster::pbs()` through stand-in `qsub`/`qstat`/`qdel` shell scripts that run each
//! job with bash on this machine and answer in OpenPBS's formats: it checks the manager's own
//! submit, track and cancel logic, not a PBS server.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{
    BIN, Proc, SOON, all_gone_within, api_json, check_command_values, connect, logged_sleep, rt,
    signal, tempdir, tree_sum, workers_until,
};
use taskwire::{Cluster, Future, JobQueueCluster, JobState, Task};

/// A private single-node Slurm (and its munged); on drop its jobs are cancelled and the
/// daemons killed.
struct Slurm {
    procs: Vec<Proc>,
    conf: PathBuf,
}

/// Why the Slurm test cannot run here, if it cannot.
fn slurm_missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (slurmd must run as root)".into());
    }
    let needed = [
        "/usr/sbin/munged",
        "/usr/sbin/mungekey",
        "/usr/sbin/slurmctld",
        "/usr/sbin/slurmd",
        "/usr/bin/sbatch",
        "/usr/bin/squeue",
        "/usr/bin/scancel",
        "/usr/bin/sinfo",
    ];
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|p| !Path::new(p).exists())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} missing: `apt-get install slurmctld slurmd slurm-client munge` (as .ci/run does)",
            missing.join(", ")
        )
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Slurm {
    fn start(dir: &Path) -> Slurm {
        let d = dir.display();
        for sub in ["munge", "state", "spool", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        run_ok(
            Command::new("/usr/sbin/mungekey")
                .args(["--create", &format!("--keyfile={d}/munge/munge.key")]),
        );
        let socket = dir.join("munge/munge.socket");
        let mut munged = Command::new("/usr/sbin/munged");
        munged.args([
            "--foreground".to_string(),
            "--force".into(),
            format!("--key-file={d}/munge/munge.key"),
            format!("--socket={}", socket.display()),
            format!("--pid-file={d}/munge/munged.pid"),
            format!("--seed-file={d}/munge/munged.seed"),
            format!("--log-file={d}/munge/munged.log"),
        ]);
        let mut procs = vec![Proc::start_cmd(munged)];
        let deadline = Instant::now() + SOON;
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "munged did not create its socket"
            );
            assert!(procs[0].running(), "munged exited (see its log above)");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The node as slurmd sees it: a config that promises more is drained.
        let hw = run_ok(Command::new("/usr/sbin/slurmd").arg("-C"));
        let field = |name: &str| -> u64 {
            hw.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in `slurmd -C`: {hw}"))
        };
        let (cpus, memory) = (field("CPUs="), field("RealMemory="));
        // OverSubscribe: up to 4 one-core jobs share a core, so three jobs run on 2 CPUs.
        let conf = dir.join("slurm.conf");
        std::fs::write(
            &conf,
            format!(
                "ClusterName=taskwire-test\nSlurmctldHost=localhost\n\
                 SlurmctldPort={}\nSlurmdPort={}\n\
                 AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={}\n\
                 SlurmUser=root\nSlurmdUser=root\n\
                 StateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n\
                 SlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd.pid\n\
                 SlurmctldLogFile={d}/log/slurmctld.log\nSlurmdLogFile={d}/log/slurmd.log\n\
                 ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
                 JobAcctGatherType=jobacct_gather/none\n\
                 AccountingStorageType=accounting_storage/none\nJobCompType=jobcomp/none\n\
                 SchedulerType=sched/backfill\nSelectType=select/cons_tres\n\
                 SelectTypeParameters=CR_Core_Memory\nReturnToService=2\nMpiDefault=none\n\
                 NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} \
                 State=UNKNOWN\n\
                 PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP \
                 OverSubscribe=FORCE:4\n",
                free_port(),
                free_port(),
                socket.display()
            ),
        )
        .unwrap();
        for (daemon, extra) in [
            ("/usr/sbin/slurmctld", &[][..]),
            ("/usr/sbin/slurmd", &["-N", "localhost"][..]),
        ] {
            let mut c = Command::new(daemon);
            c.arg("-D").args(extra).arg("-f").arg(&conf);
            c.env("SLURM_CONF", &conf);
            procs.push(Proc::start_cmd(c));
        }
        let slurm = Slurm { procs, conf };
        let deadline = Instant::now() + SOON;
        loop {
            let out = slurm
                .cmd("sinfo")
                .args(["-h", "-o", "%T"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).trim() == "idle" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the Slurm node is not idle: {} {} (logs in {d}/log)",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        slurm
    }

    /// A Slurm command for this cluster.
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// `squeue --states=all`: every job slurmctld still knows, with its state.
    fn all_jobs(&self) -> Vec<(String, String)> {
        let out = run_ok(
            self.cmd("squeue")
                .args(["-h", "--states=all", "-o", "%i %T"]),
        );
        out.lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(a, b)| (a.to_string(), b.trim().to_string()))
            .collect()
    }

    fn state_of(&self, id: &str) -> String {
        self.all_jobs()
            .into_iter()
            .find(|(j, _)| j == id)
            .map(|(_, s)| s)
            .unwrap_or_else(|| "unknown".into())
    }

    /// Jobs queued or running (what `squeue` lists by default).
    fn queued(&self) -> Vec<String> {
        run_ok(self.cmd("squeue").args(["-h", "-o", "%i"]))
            .lines()
            .map(|l| l.trim().to_string())
            .collect()
    }

    /// Wait until job `id` is in `state`.
    fn wait_state(&self, id: &str, state: &str, bound: Duration) {
        let deadline = Instant::now() + bound;
        while self.state_of(id) != state {
            assert!(
                Instant::now() < deadline,
                "job {id} is {}, not {state}",
                self.state_of(id)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        // Jobs left by a failing test: cancel them before the daemons go.
        let _ = self.cmd("scancel").args(["--user=root"]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline
            && self
                .cmd("squeue")
                .args(["-h", "-o", "%i"])
                .output()
                .is_ok_and(|o| !o.stdout.is_empty())
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        self.procs.clear();
    }
}

/// The pids of the processes running as part of Slurm job `id` (its environment says so).
fn job_pids(id: &str) -> Vec<u32> {
    let want = format!("SLURM_JOB_ID={id}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == want.as_bytes()))
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("taskwire"))
        })
        .collect()
}

#[test]
fn slurm_jobs_run_workers_and_leave_nothing_behind() {
    if let Some(why) = slurm_missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempdir("slurm");
    let slurm = Slurm::start(&dir);
    let logs = dir.join("jobs");
    std::fs::create_dir_all(&logs).unwrap();

    cli_runs_a_graph_and_ctrl_c_cancels_the_jobs(&slurm, &logs);
    cli_adapts_jobs_to_the_work(&slurm, &logs);
    cli_with_a_token_runs_workers_that_prove_it(&slurm, &logs, &dir);
    cli_with_tls_runs_workers_over_tls(&slurm, &logs, &dir);
    cluster_stops_one_worker_gracefully_and_scales(&slurm, &logs);
    stopping_unregistered_workers(&slurm, &logs);
    workers_leave_before_the_walltime(&slurm, &logs);
    refused_jobs_quote_sbatch(&slurm, &logs);
}

/// `taskwire jobqueue slurm` against this Slurm: one core and 300 MB per job, the scheduler on
/// 127.0.0.1 (any port), the jobs' logs in `logs`; the caller adds the rest.
fn jobqueue_slurm(slurm: &Slurm, logs: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["jobqueue", "slurm", "--cores", "1", "--memory", "300MB"])
        .args(["--host", "127.0.0.1", "--port", "0", "--log-directory"])
        .arg(logs)
        .env("SLURM_CONF", &slurm.conf);
    cmd
}

/// `taskwire jobqueue slurm --jobs 2`: two jobs run a worker each, a graph runs on them, and
/// Ctrl-C cancels the jobs: gone from the queue, and every process they ran gone.
fn cli_runs_a_graph_and_ctrl_c_cancels_the_jobs(slurm: &Slurm, logs: &Path) {
    let mut cmd = jobqueue_slurm(slurm, logs);
    cmd.args([
        "--walltime",
        "00:10:00",
        "--jobs",
        "2",
        "--dashboard-port",
        "0",
    ]);
    let mut jq = Proc::start_cmd(cmd);
    let address = jq.line("Scheduler at:");
    let ids: Vec<String> = (0..2)
        .map(|_| {
            let rest = jq.line("Submitted job");
            rest.split_whitespace().next().unwrap().to_string()
        })
        .collect();
    for _ in 0..2 {
        jq.line("Worker");
    }
    let queued = slurm.queued();
    for id in &ids {
        assert!(queued.contains(id), "job {id} not in squeue: {queued:?}");
        assert_eq!(slurm.state_of(id), "RUNNING");
    }
    let pids: Vec<u32> = ids.iter().flat_map(|id| job_pids(id)).collect();
    // Per job: the nanny (the job script exec'd it) and its worker.
    assert!(pids.len() >= 4, "job processes: {pids:?}");
    rt().block_on(async {
        let client = connect(&address).await;
        let ws = workers_until(&client, "both job workers", |ws| ws.len() == 2).await;
        let mut names: Vec<String> = ws.iter().map(|w| w.name.clone()).collect();
        names.sort();
        let mut want: Vec<String> = ids
            .iter()
            .map(|id| format!("taskwire-worker-{id}"))
            .collect();
        want.sort();
        assert_eq!(names, want);
        for w in &ws {
            assert_eq!(w.nthreads, 1, "{w:?}");
            assert_eq!(w.memory_limit, 300_000_000, "{w:?}");
        }
        assert_eq!(tree_sum(&client, "slurm-cli").await, (1..=32).sum::<i64>());
        client.close().await;
    });
    signal(jq.pid(), "-INT");
    let status = jq.exit_within(SOON);
    assert!(status.success(), "taskwire jobqueue: {status}");
    let queued = slurm.queued();
    assert!(ids.iter().all(|id| !queued.contains(id)), "{queued:?}");
    for id in &ids {
        assert_eq!(slurm.state_of(id), "CANCELLED");
    }
    all_gone_within(&pids, Duration::from_secs(10));
}

/// `JobQueueCluster` through the `Cluster` trait: scale to 3 jobs, compute, stop one worker by
/// name (its results move to the others, nothing runs twice, and its job ends by itself
/// rather than being cancelled), scale down to 1, close.
fn cluster_stops_one_worker_gracefully_and_scales(slurm: &Slurm, logs: &Path) {
    let runs = logs.join("runs.log");
    rt().block_on(async {
        let mut cluster = JobQueueCluster::slurm()
            .cores(1)
            .memory(300_000_000)
            .walltime(Duration::from_secs(600))
            .scheduler_listen("127.0.0.1", 0)
            .dashboard_port(None)
            .taskwire_program(BIN)
            .log_directory(logs)
            .command_env("SLURM_CONF", slurm.conf.display().to_string())
            .jobs(2)
            .start()
            .await
            .unwrap();
        cluster.scale(3).await.unwrap();
        assert_eq!(cluster.workers().len(), 3);
        cluster.wait_for_workers(3, SOON).await.unwrap();
        let ids: Vec<String> = cluster.jobs().iter().map(|j| j.id.clone()).collect();
        let pids: Vec<u32> = ids.iter().flat_map(|id| job_pids(id)).collect();
        let client = cluster.client().await.unwrap();
        let n = 30;
        let tasks = (0..n)
            .map(|i| {
                let script = format!("echo run-{i} >> {}; printf 'value-{i}'", runs.display());
                Task::command(format!("data-{i}"), vec!["sh".into(), "-c".into(), script])
            })
            .collect();
        let futures: Vec<Future> = client.submit_graph(tasks).await.unwrap();
        tokio::time::timeout(SOON, client.wait(&futures))
            .await
            .expect("tasks in time");
        let holders = client.workers().await.unwrap();
        let leaving = holders
            .iter()
            .find(|w| w.in_memory > 0)
            .expect("a worker holds results")
            .name
            .clone();
        let job = cluster.job_of_worker(&leaving).unwrap().to_string();
        cluster.stop_worker(&leaving).await.unwrap();
        assert!(cluster.job_of_worker(&leaving).is_none());
        assert_eq!(slurm.state_of(&job), "COMPLETED", "retired, not cancelled");
        let after = client.workers().await.unwrap();
        assert!(after.iter().all(|w| w.name != leaving), "{after:?}");
        assert_eq!(after.iter().map(|w| w.in_memory).sum::<u64>(), n as u64);
        Cluster::scale(&mut cluster, 1).await.unwrap();
        assert_eq!(cluster.jobs().len(), 1);
        assert_eq!(cluster.jobs()[0].state, JobState::Running);
        let after = client.workers().await.unwrap();
        assert_eq!(after.len(), 1, "{after:?}");
        assert_eq!(after[0].in_memory, n as u64);
        for (i, f) in futures.iter().enumerate() {
            let out = f.command_output().await.unwrap();
            assert_eq!(out.stdout, format!("value-{i}").into_bytes());
        }
        let ran = std::fs::read_to_string(&runs).unwrap();
        assert_eq!(ran.lines().count(), n, "a task ran twice:\n{ran}");
        client.close().await;
        let last = cluster.jobs()[0].id.clone();
        Cluster::close(cluster).await.unwrap();
        assert!(slurm.queued().is_empty(), "{:?}", slurm.queued());
        assert_eq!(slurm.state_of(&last), "CANCELLED");
        all_gone_within(&pids, Duration::from_secs(10));
    });
}

/// The job ids of `taskwire jobqueue`'s "Submitted job ID (worker NAME)" lines among `lines`.
fn submitted(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("Submitted job "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// `taskwire jobqueue slurm --adapt 1:3`: one job at rest; a burst of sleeping command tasks
/// makes it submit two more (no more than that, although they spend a while queued and
/// starting before their workers register); every result is right; idle again, the two extra
/// workers retire (their results move to the one left, nothing runs twice) and their jobs
/// complete by themselves; Ctrl-C cancels the last job and leaves no process behind.
fn cli_adapts_jobs_to_the_work(slurm: &Slurm, logs: &Path) {
    let runs = logs.join("adaptive-runs.log");
    let mut cmd = jobqueue_slurm(slurm, logs);
    cmd.args([
        "--walltime",
        "00:10:00",
        "--adapt",
        "1:3",
        "--dashboard-port",
        "0",
    ]);
    let mut jq = Proc::start_cmd(cmd);
    let address = jq.line("Scheduler at:");
    let dashboard = jq.line("dashboard at:");
    let first = submitted(&[format!("Submitted job {}", jq.line("Submitted job"))]);
    assert_eq!(jq.line("Adaptive scaling:"), "1 to 3 jobs");
    let (ids, grow_one, grow_all, shrink) = rt().block_on(async {
        let client = connect(&address).await;
        workers_until(&client, "the minimum of 1", |ws| ws.len() == 1).await;

        // 30 one-second tasks are 30 s of work for one worker, far more than the 5 s target:
        // the scheduler asks for the maximum.
        let n = 30;
        let tasks = (0..n)
            .map(|i| logged_sleep("jq-burst", i, 1000, &runs))
            .collect();
        let t = Instant::now();
        let futures: Vec<Future> = client.submit_graph(tasks).await.unwrap();
        workers_until(&client, "one more job's worker", |ws| ws.len() >= 2).await;
        let grow_one = t.elapsed();
        let ws = workers_until(&client, "grown to 3", |ws| ws.len() == 3).await;
        let grow_all = t.elapsed();
        let mut ids: Vec<String> = ws
            .iter()
            .map(|w| {
                w.name
                    .strip_prefix("taskwire-worker-")
                    .unwrap_or_else(|| panic!("not a job's worker: {}", w.name))
                    .to_string()
            })
            .collect();
        ids.sort();
        let queued = slurm.queued();
        for id in &ids {
            assert!(queued.contains(id), "job {id} not in squeue: {queued:?}");
            assert_eq!(slurm.state_of(id), "RUNNING");
        }
        assert!(ids.contains(&first[0]), "{ids:?} {first:?}");
        tokio::time::timeout(SOON, client.wait(&futures))
            .await
            .expect("burst in time");
        let done = Instant::now();
        check_command_values(&futures).await;
        let spread = client.workers().await.unwrap();
        assert!(
            spread.iter().filter(|w| w.in_memory > 0).count() > 1,
            "the results should be on several workers: {spread:?}"
        );

        // Idle: back to one job, the others' workers retired and their jobs completed.
        let ws = workers_until(&client, "shrunk to 1", |ws| ws.len() == 1).await;
        let left = ws[0]
            .name
            .strip_prefix("taskwire-worker-")
            .unwrap()
            .to_string();
        let deadline = Instant::now() + SOON;
        while slurm.queued().iter().filter(|id| ids.contains(id)).count() > 1 {
            assert!(Instant::now() < deadline, "jobs: {:?}", slurm.all_jobs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let shrink = done.elapsed();
        assert_eq!(ws[0].in_memory, n as u64, "{ws:?}");
        for id in ids.iter().filter(|id| **id != left) {
            assert_eq!(
                slurm.state_of(id),
                "COMPLETED",
                "job {id}: retired, not cancelled"
            );
        }
        check_command_values(&futures).await;
        let ran = std::fs::read_to_string(&runs).unwrap();
        assert_eq!(ran.lines().count(), n, "a task ran twice:\n{ran}");
        // The scheduler's account: two graceful retirements, nothing lost or recomputed (the
        // dashboard's snapshot trails the scheduler by up to its publishing interval).
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
        assert_eq!(r["tasks_rescheduled"], 0, "{totals}");
        client.close().await;
        (ids, grow_one, grow_all, shrink)
    });
    let pids: Vec<u32> = ids.iter().flat_map(|id| job_pids(id)).collect();
    assert!(pids.len() >= 2, "the last job's nanny and worker: {pids:?}");
    signal(jq.pid(), "-INT");
    let status = jq.exit_within(SOON);
    assert!(status.success(), "taskwire jobqueue: {status}");
    let lines: Vec<String> = jq.stdout.try_iter().collect();
    // The first job plus the two the burst called for: no storm while they were queued.
    let mut all = first;
    all.extend(submitted(&lines));
    all.sort();
    assert_eq!(all, ids, "{lines:?}");
    let queued = slurm.queued();
    assert!(ids.iter().all(|id| !queued.contains(id)), "{queued:?}");
    all_gone_within(&pids, Duration::from_secs(10));
    eprintln!(
        "jobqueue slurm --adapt 1:3: a second job's worker registered {grow_one:?} and the \
         third's {grow_all:?} after the burst was submitted; back to one job {shrink:?} after \
         the burst finished"
    );
}

/// `taskwire jobqueue slurm --auth-token-file FILE`: the file is created (mode 600), the job
/// script Slurm holds names the file and not the token, the job's worker registers with the
/// token, a client with it runs a graph and a client without it is refused.
fn cli_with_a_token_runs_workers_that_prove_it(slurm: &Slurm, logs: &Path, dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let token = dir.join("cluster.token");
    let mut cmd = jobqueue_slurm(slurm, logs);
    cmd.args(["--jobs", "1", "--no-dashboard", "--auth-token-file"])
        .arg(&token);
    let mut jq = Proc::start_cmd(cmd);
    assert_eq!(
        jq.line("Created cluster token file:"),
        format!("{} (mode 600)", token.display())
    );
    let address = jq.line("Scheduler at:");
    let id = jq.line("Submitted job");
    let id = id.split_whitespace().next().unwrap().to_string();
    jq.line("Worker");
    let mode = std::fs::metadata(&token).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let secret_text = std::fs::read_to_string(&token).unwrap();
    let script = run_ok(
        slurm
            .cmd("scontrol")
            .args(["write", "batch_script", &id, "-"]),
    );
    assert!(
        script.contains(&format!("--auth-token-file {}", token.display())),
        "{script}"
    );
    assert!(
        !script.contains(secret_text.trim()),
        "the token is in:\n{script}"
    );
    let pids = job_pids(&id);
    rt().block_on(async {
        let secret = taskwire::ClusterSecret::read_file(&token).unwrap();
        let client = taskwire::Client::builder(address.parse().unwrap())
            .auth_token(secret)
            .connect()
            .await
            .unwrap();
        let ws = workers_until(&client, "the job's worker", |ws| ws.len() == 1).await;
        assert_eq!(ws[0].name, format!("taskwire-worker-{id}"));
        assert_eq!(
            tree_sum(&client, "slurm-token").await,
            (1..=32).sum::<i64>()
        );
        client.close().await;
        let Err(err) = taskwire::Client::connect(&address).await else {
            panic!("a client without the token was accepted");
        };
        assert!(err.to_string().contains("authentication failed"), "{err}");
    });
    signal(jq.pid(), "-INT");
    let status = jq.exit_within(SOON);
    assert!(status.success(), "taskwire jobqueue: {status}");
    assert_eq!(slurm.state_of(&id), "CANCELLED");
    all_gone_within(&pids, Duration::from_secs(10));
}

/// `taskwire jobqueue slurm --security-config FILE`: the scheduler listens on `tls://`, the
/// job script Slurm holds names the certificate and key files (absolute paths) and holds no
/// key, the job's worker registers over TLS, a TLS client runs a graph on it and a plain
/// client is refused; Ctrl-C cancels the job.
fn cli_with_tls_runs_workers_over_tls(slurm: &Slurm, logs: &Path, dir: &Path) {
    let certs = dir.join("certs");
    let out = Command::new(BIN)
        .args(["security", "generate"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut cmd = jobqueue_slurm(slurm, logs);
    cmd.args(["--jobs", "1", "--no-dashboard", "--require-encryption"])
        .arg("--security-config")
        .arg(certs.join("security.json"));
    let mut jq = Proc::start_cmd(cmd);
    let address = jq.line("Scheduler at:");
    assert!(address.starts_with("tls://127.0.0.1:"), "{address}");
    let id = jq.line("Submitted job");
    let id = id.split_whitespace().next().unwrap().to_string();
    jq.line("Worker");
    let script = run_ok(
        slurm
            .cmd("scontrol")
            .args(["write", "batch_script", &id, "-"]),
    );
    for (flag, file) in [
        ("--tls-ca-file", "ca.pem"),
        ("--tls-cert", "cluster.pem"),
        ("--tls-key", "cluster-key.pem"),
    ] {
        let wanted = format!("{flag} {}", certs.join(file).display());
        assert!(script.contains(&wanted), "{wanted} is not in:\n{script}");
    }
    assert!(script.contains("--require-encryption"), "{script}");
    assert!(!script.contains("PRIVATE KEY"), "a key is in:\n{script}");
    let pids = job_pids(&id);
    rt().block_on(async {
        let files = taskwire::TlsFiles {
            ca_file: certs.join("ca.pem"),
            cert: certs.join("cluster.pem"),
            key: certs.join("cluster-key.pem"),
        };
        let security = taskwire::Security::new().tls(taskwire::TlsConfig::load(&files).unwrap());
        let client = taskwire::Client::builder(address.parse().unwrap())
            .security(security)
            .connect()
            .await
            .unwrap();
        let ws = workers_until(&client, "the job's worker", |ws| ws.len() == 1).await;
        assert!(ws[0].address.starts_with("tls://"), "{:?}", ws[0]);
        assert_eq!(tree_sum(&client, "slurm-tls").await, (1..=32).sum::<i64>());
        client.close().await;
        let plain = address.replace("tls://", "tcp://");
        let Err(err) = taskwire::Client::connect(&plain).await else {
            panic!("a plain client was accepted");
        };
        assert!(err.to_string().contains("TLS"), "{err}");
    });
    signal(jq.pid(), "-INT");
    let status = jq.exit_within(SOON);
    assert!(status.success(), "taskwire jobqueue: {status}");
    assert_eq!(slurm.state_of(&id), "CANCELLED");
    all_gone_within(&pids, Duration::from_secs(10));
}

/// Closing a worker that has not registered: a job still waiting in the queue is cancelled at
/// once; a job that has started (its worker takes 3 s to come up, as on a node that loads
/// modules first) is not cancelled under its registering worker: the worker registers, then
/// retires, and the job completes by itself.
fn stopping_unregistered_workers(slurm: &Slurm, logs: &Path) {
    let builder = || {
        JobQueueCluster::slurm()
            .memory(300_000_000)
            .walltime(Duration::from_secs(600))
            .scheduler_listen("127.0.0.1", 0)
            .dashboard_port(None)
            .taskwire_program(BIN)
            .log_directory(logs)
            .command_env("SLURM_CONF", slurm.conf.display().to_string())
    };
    rt().block_on(async {
        // Not eligible to start for two minutes: PENDING.
        let mut queued = builder()
            .job_extra("--begin=now+120")
            .jobs(1)
            .start()
            .await
            .unwrap();
        let job = queued.jobs()[0].clone();
        slurm.wait_state(&job.id, "PENDING", SOON);
        let t = Instant::now();
        queued.stop_worker(&job.worker).await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert_eq!(slurm.state_of(&job.id), "CANCELLED");
        assert!(queued.jobs().is_empty());
        queued.close().await.unwrap();

        let mut starting = builder().prologue("sleep 3").jobs(1).start().await.unwrap();
        let job = starting.jobs()[0].clone();
        slurm.wait_state(&job.id, "RUNNING", SOON);
        let client = starting.client().await.unwrap();
        assert!(client.workers().await.unwrap().is_empty());
        starting.stop_worker(&job.worker).await.unwrap();
        assert_eq!(
            slurm.state_of(&job.id),
            "COMPLETED",
            "the job's worker registered and retired; the job was not cancelled"
        );
        assert!(starting.jobs().is_empty());
        client.close().await;
        starting.close().await.unwrap();
    });
}

/// A job with a 1-minute walltime and a 50 s margin: its worker retires after about 10 s and
/// the job completes by itself, long before Slurm would kill it; `refresh` sees it end.
fn workers_leave_before_the_walltime(slurm: &Slurm, logs: &Path) {
    rt().block_on(async {
        let mut cluster = JobQueueCluster::slurm()
            .memory(300_000_000)
            .walltime(Duration::from_secs(60))
            .lifetime_margin(Duration::from_secs(50))
            .scheduler_listen("127.0.0.1", 0)
            .dashboard_port(None)
            .taskwire_program(BIN)
            .log_directory(logs)
            .command_env("SLURM_CONF", slurm.conf.display().to_string())
            .jobs(1)
            .start()
            .await
            .unwrap();
        cluster.wait_for_workers(1, SOON).await.unwrap();
        let id = cluster.jobs()[0].id.clone();
        let started = Instant::now();
        slurm.wait_state(&id, "COMPLETED", Duration::from_secs(45));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(40), "ended after {took:?}");
        let ended = cluster.refresh().await.unwrap();
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].id, id);
        assert!(cluster.jobs().is_empty());
        cluster.close().await.unwrap();
    });
}

/// A job Slurm cannot run (more memory than the node has): the error quotes sbatch, and
/// nothing is left running.
fn refused_jobs_quote_sbatch(slurm: &Slurm, logs: &Path) {
    let out = Command::new(BIN)
        .args(["jobqueue", "slurm", "--cores", "1", "--memory", "100TB"])
        .args(["--jobs", "1", "--host", "127.0.0.1", "--port", "0"])
        .args(["--no-dashboard", "--log-directory"])
        .arg(logs)
        .env("SLURM_CONF", &slurm.conf)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("error: sbatch: refused the job")
            && stderr.contains("Memory specification can not be satisfied"),
        "{stderr}"
    );
    assert!(slurm.queued().is_empty());
}

#[test]
fn missing_batch_commands_are_a_clear_error() {
    let empty = tempdir("no-batch-commands");
    for (system, command) in [("slurm", "sbatch"), ("pbs", "qsub")] {
        let out = Command::new(BIN)
            .args(["jobqueue", system, "--cores", "1", "--memory", "1GB"])
            .args(["--host", "127.0.0.1", "--port", "0", "--no-dashboard"])
            .env("PATH", &empty)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains(&format!("error: {command}: not found on PATH")),
            "{stderr}"
        );
    }
}

/// The script `taskwire jobqueue pbs --dry-run` prints for a running scheduler.
fn pbs_script(address: &str, dir: &Path) -> PathBuf {
    let out = Command::new(BIN)
        .args(["jobqueue", "pbs", "--cores", "2", "--memory", "300MB"])
        .args(["--walltime", "00:01:00", "--lifetime-margin", "45s"])
        .args([
            "--queue",
            "workq",
            "--account",
            "proj",
            "--job-extra",
            "-l place=excl",
        ])
        .args(["--scheduler", address, "--dry-run"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = String::from_utf8(out.stdout).unwrap();
    for line in [
        "#PBS -N taskwire-worker",
        "#PBS -q workq",
        "#PBS -A proj",
        "#PBS -l select=1:ncpus=2:mem=287mb",
        "#PBS -l walltime=00:01:00",
        "#PBS -l place=excl",
    ] {
        assert!(
            script.lines().any(|l| l == line),
            "no '{line}' in:\n{script}"
        );
    }
    let path = dir.join("job.pbs");
    std::fs::write(&path, script).unwrap();
    path
}

/// Run `script` as PBS would run job `id`.
fn run_as_pbs_job(script: &Path, id: &str) -> Proc {
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .env("PBS_JOBID", id)
        .env("PBS_JOBNAME", "taskwire-worker")
        .env("PBS_ENVIRONMENT", "PBS_BATCH")
        .env("PBS_O_WORKDIR", std::env::temp_dir());
    Proc::start_cmd(cmd)
}

#[test]
fn pbs_job_scripts_run_a_worker_that_leaves_before_the_walltime() {
    let dir = tempdir("pbs");
    let (_scheduler, address) = support::scheduler(&[]);
    let script = pbs_script(&address, &dir);
    rt().block_on(async {
        let client = connect(&address).await;

        // Stopped as qdel stops a job: SIGTERM to the job's shell, which is the nanny.
        let mut job = run_as_pbs_job(&script, "4242.pbs-test");
        let ws = workers_until(&client, "the job's worker", |ws| ws.len() == 1).await;
        assert_eq!(ws[0].name, "taskwire-worker-4242.pbs-test");
        assert_eq!((ws[0].nthreads, ws[0].memory_limit), (2, 300_000_000));
        assert_eq!(tree_sum(&client, "pbs").await, (1..=32).sum::<i64>());
        let pids: Vec<u32> = std::iter::once(job.pid())
            .chain(support::child_pids(job.pid()))
            .collect();
        assert!(pids.len() >= 2, "the nanny and its worker: {pids:?}");
        signal(job.pid(), "-TERM");
        let status = job.exit_within(SOON);
        assert!(status.success(), "{status}");
        all_gone_within(&pids, Duration::from_secs(10));
        workers_until(&client, "the worker gone", |ws| ws.is_empty()).await;

        // Left alone: a 60 s walltime less the 45 s margin is a 15 s lifetime (+- 3 s), after
        // which the worker retires and the job's script ends with status 0.
        let mut job = run_as_pbs_job(&script, "4243.pbs-test");
        let started = Instant::now();
        workers_until(&client, "the second job's worker", |ws| {
            ws.iter().any(|w| w.name == "taskwire-worker-4243.pbs-test")
        })
        .await;
        let status = job.exit_within(Duration::from_secs(50));
        let took = started.elapsed();
        assert!(status.success(), "{status}");
        assert!(
            took >= Duration::from_secs(11) && took < Duration::from_secs(50),
            "the job ended after {took:?}"
        );
        workers_until(&client, "the worker retired", |ws| ws.is_empty()).await;
        client.close().await;
    });
}

/// Stand-ins for OpenPBS's `qsub`, `qstat` and `qdel`: each job runs with bash on this machine
/// in its own session, and the answers (ids, the `qstat` table, `Unknown Job Id` with exit
/// status 153 for finished jobs) follow OpenPBS's formats.
const FAKE_PBS: [(&str, &str); 3] = [
    (
        "qsub",
        r#"#!/bin/bash
set -e
d=$(dirname "$0")/jobs; mkdir -p "$d"
n=$(( $(cat "$d/next" 2>/dev/null || echo 100) + 1 )); echo $n > "$d/next"
id=$n.fakepbs
cat > "$d/$id.sh"
PBS_JOBID=$id setsid bash "$d/$id.sh" > "$d/$id.out" 2>&1 < /dev/null &
echo $! > "$d/$id.pid"
echo $id
"#,
    ),
    (
        "qstat",
        r#"#!/bin/bash
d=$(dirname "$0")/jobs; rc=0; rows=""
for id in "$@"; do
  if [ -f "$d/$id.pid" ] && kill -0 "$(cat "$d/$id.pid")" 2>/dev/null; then
    rows+=$(printf '%-17s %-16s %-17s %8s %s %s' "$id" taskwire-worker root 00:00:01 R workq)$'\n'
  else
    echo "qstat: Unknown Job Id $id" >&2; rc=153
  fi
done
if [ -n "$rows" ]; then
  echo "Job id            Name             User              Time Use S Queue"
  echo "----------------  ---------------- ----------------  -------- - -----"
  printf '%s' "$rows"
fi
exit $rc
"#,
    ),
    (
        "qdel",
        r#"#!/bin/bash
d=$(dirname "$0")/jobs; rc=0
for id in "$@"; do
  if [ -f "$d/$id.pid" ] && kill -0 "$(cat "$d/$id.pid")" 2>/dev/null; then
    kill -TERM -- "-$(cat "$d/$id.pid")"
  else
    echo "qdel: Unknown Job Id $id" >&2; rc=153
  fi
done
exit $rc
"#,
    ),
];

/// Put the [`FAKE_PBS`] commands in `dir`; a `PATH` that finds them first.
fn fake_pbs(dir: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    for (name, text) in FAKE_PBS {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    format!("{}:{}", dir.display(), std::env::var("PATH").unwrap())
}

#[test]
fn pbs_cluster_submits_tracks_and_cancels_through_the_pbs_commands() {
    let dir = tempdir("fake-pbs");
    let path = fake_pbs(&dir);
    rt().block_on(async {
        let mut cluster = JobQueueCluster::pbs()
            .memory(300_000_000)
            .walltime(Duration::from_secs(600))
            .scheduler_listen("127.0.0.1", 0)
            .dashboard_port(None)
            .taskwire_program(BIN)
            .command_env("PATH", &path)
            .jobs(2)
            .start()
            .await
            .unwrap();
        let ids: Vec<String> = cluster.jobs().iter().map(|j| j.id.clone()).collect();
        assert_eq!(ids, ["101.fakepbs", "102.fakepbs"]);
        cluster.wait_for_workers(2, SOON).await.unwrap();
        assert!(cluster.refresh().await.unwrap().is_empty());
        assert!(cluster.jobs().iter().all(|j| j.state == JobState::Running));
        let client = cluster.client().await.unwrap();
        assert_eq!(tree_sum(&client, "fake-pbs").await, (1..=32).sum::<i64>());
        let pid = |id: &str| -> u32 {
            std::fs::read_to_string(dir.join(format!("jobs/{id}.pid")))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let pids: Vec<u32> = ids
            .iter()
            .flat_map(|id| {
                let p = pid(id);
                std::iter::once(p).chain(support::child_pids(p))
            })
            .collect();
        // Retired through the scheduler: the job's script ends by itself, and qstat then
        // says "Unknown Job Id" for it.
        cluster
            .stop_worker("taskwire-worker-101.fakepbs")
            .await
            .unwrap();
        assert_eq!(cluster.workers(), ["taskwire-worker-102.fakepbs"]);
        workers_until(&client, "one worker left", |ws| ws.len() == 1).await;
        client.close().await;
        cluster.close().await.unwrap();
        all_gone_within(&pids, Duration::from_secs(10));
        let out = std::fs::read_to_string(dir.join("jobs/101.fakepbs.out")).unwrap();
        assert!(out.contains("Registered to:"), "{out}");
    });
}

/// Adaptive jobs whose worker cannot start (the taskwire path is wrong on the "compute
/// nodes"): each job ends at once. `taskwire jobqueue --adapt` replaces the first two, then
/// stops after the third in a row with an error saying why, instead of resubmitting a broken
/// job every second.
#[test]
fn adaptive_jobs_that_keep_failing_are_not_resubmitted_forever() {
    let dir = tempdir("fake-pbs-failing");
    let path = fake_pbs(&dir);
    let out = Command::new(BIN)
        .args(["jobqueue", "pbs", "--cores", "1", "--memory", "300MB"])
        .args([
            "--adapt",
            "1:2",
            "--remote-taskwire",
            "/nonexistent/taskwire",
        ])
        .args(["--host", "127.0.0.1", "--port", "0", "--no-dashboard"])
        .env("PATH", &path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("error: 3 jobs in a row ended before their worker registered"),
        "{stderr}"
    );
    let ids = submitted(&stdout.lines().map(str::to_string).collect::<Vec<_>>());
    assert_eq!(
        ids,
        ["101.fakepbs", "102.fakepbs", "103.fakepbs"],
        "{stdout}"
    );
    let next = std::fs::read_to_string(dir.join("jobs/next")).unwrap();
    assert_eq!(next.trim(), "103", "qsub ran more often than reported");
}
