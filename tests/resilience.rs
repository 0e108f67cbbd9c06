//! Chaos tests with real processes: graceful retirement, a worker killed with SIGKILL in the
//! middle of a tree reduction, a worker cut off the network (a network namespace and a veth
//! pair), and a soak with workers killed at random. Every result is checked; each test is
//! bounded in time.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};
use support::{
    BIN, Proc, child_pids, rt, scheduler, signal, spawn, tempdir, tree_over, workers_until,
};
use taskwire::{Client, Future, Task};

/// Start a worker; `extra` adds flags (e.g. `--no-nanny`).
fn worker(address: &str, name: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["worker", address, "--nthreads", "1", "--name", name];
    args.extend_from_slice(extra);
    spawn(&args, &["Start worker at:", "Registered to:"]).0
}

/// A binary tree reduction over `leaves` leaf tasks made by `leaf(i)`; returns the root's
/// future.
async fn tree(
    client: &Client,
    prefix: &str,
    leaves: usize,
    leaf: impl Fn(usize) -> Task,
) -> Future {
    let mut tasks: Vec<Task> = (0..leaves).map(leaf).collect();
    let keys = tasks.iter().map(|t| t.key().to_string()).collect();
    let (inner, root) = tree_over(&format!("{prefix}-add"), keys);
    tasks.extend(inner);
    let futures = client.submit_graph(tasks).await.unwrap();
    futures.into_iter().find(|f| f.key() == root).expect("root")
}

#[test]
fn retiring_a_worker_moves_its_results_and_recomputes_nothing() {
    let (_sched, address) = scheduler(&[]);
    let mut w0 = worker(&address, "retire-0", &["--no-nanny"]);
    let _w1 = worker(&address, "retire-1", &["--no-nanny"]);
    let dir = tempdir("retire");
    let log = dir.join("runs.log");
    let rt = rt();
    let client = rt.block_on(Client::connect(&address)).unwrap();
    // Each task appends a line to the log when it runs, so a recomputation would show.
    let n = 40;
    let futures: Vec<Future> = rt.block_on(async {
        let tasks = (0..n)
            .map(|i| {
                let script = format!("echo run-{i} >> {}; printf 'value-{i}'", log.display());
                Task::command(format!("data-{i}"), vec!["sh".into(), "-c".into(), script])
            })
            .collect();
        let futures = client.submit_graph(tasks).await.unwrap();
        client.wait(&futures).await;
        futures
    });
    let before = rt.block_on(client.workers()).unwrap();
    let held0 = before
        .iter()
        .find(|w| w.name == "retire-0")
        .unwrap()
        .in_memory;
    assert!(held0 > 0, "retire-0 holds nothing to move: {before:?}");

    let out = Command::new(BIN)
        .args(["retire", "--scheduler", &address, "retire-0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("retired retire-0"), "{stdout}");
    let status = w0.exit_within(Duration::from_secs(30));
    assert!(status.success(), "retired worker exit status {status}");

    let after = rt.block_on(client.workers()).unwrap();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].in_memory, n as u64, "{after:?}");
    rt.block_on(async {
        for (i, f) in futures.iter().enumerate() {
            let out = f.command_output().await.unwrap();
            assert_eq!(out.stdout, format!("value-{i}").into_bytes());
        }
    });
    let runs = std::fs::read_to_string(&log).unwrap();
    assert_eq!(runs.lines().count(), n, "a task ran twice:\n{runs}");

    // Unknown names are refused with a clear error, and nothing changes.
    let out = Command::new(BIN)
        .args(["retire", "--scheduler", &address, "no-such-worker"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no worker named no-such-worker"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rt.block_on(client.close());
}

/// The pids of a nanny's worker processes.
fn children(nanny: &Proc) -> Vec<u32> {
    child_pids(nanny.pid())
}

fn kill9(pid: u32) {
    signal(pid, "-KILL");
}

/// Wait until the nanny has a worker process, returning its pid.
fn child_of(nanny: &Proc) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(&pid) = children(nanny).first() {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "nanny {} has no worker",
            nanny.pid()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn killing_a_worker_mid_tree_reduction_still_gives_the_right_answer() {
    let (_sched, address) = scheduler(&[]);
    let nanny = worker(&address, "kill-0", &[]);
    let _other = worker(&address, "kill-1", &[]);
    let rt = rt();
    let client = rt.block_on(Client::connect(&address)).unwrap();
    let leaves = 10_000;
    // Each leaf holds 8 bytes for 1 ms and returns 8: the tree takes seconds on two threads.
    let mut args = 8u64.to_le_bytes().to_vec();
    args.extend_from_slice(&1u64.to_le_bytes());
    let root = rt.block_on(tree(&client, "kt", leaves, |i| {
        Task::function(format!("kt-leaf-{i}"), "alloc").args(args.clone())
    }));
    std::thread::sleep(Duration::from_millis(1500));
    let victim = child_of(&nanny);
    kill9(victim);
    let value = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(120), root.result_i64()).await })
        .expect("the tree finishes")
        .unwrap();
    assert_eq!(value, 8 * leaves as i64);
    // The nanny brought the worker back, and the scheduler knows it was restarted.
    let list = rt.block_on(workers_until(&client, "kill-0 back", |l| {
        l.iter().any(|w| w.name == "kill-0" && w.restarts >= 1)
    }));
    assert_eq!(list.len(), 2, "{list:?}");
    assert_ne!(child_of(&nanny), victim);
    rt.block_on(client.close());
}

#[test]
fn soak_with_workers_killed_at_random() {
    let (_sched, address) = scheduler(&[]);
    let nannies = [
        worker(&address, "soak-0", &[]),
        worker(&address, "soak-1", &[]),
    ];
    let rt = rt();
    let client = rt.block_on(Client::connect(&address)).unwrap();
    // Ten rounds of 100 groups of 199 leaves and their sum (200,000 tasks in all, every sum
    // known in advance); a random worker is killed with SIGKILL at a random moment of each.
    let (rounds, groups, per) = (10, 100, 199);
    let mut state = (std::process::id() as u64 | 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let started = Instant::now();
    let mut kills = 0;
    for r in 0..rounds {
        let mut tasks = Vec::with_capacity(groups * (per + 1));
        let mut expected = Vec::with_capacity(groups);
        for g in 0..groups {
            let mut sum = Task::function(format!("soak-{r}-sum-{g}"), "sum");
            let mut want = 0i64;
            for i in 0..per {
                let v = ((r * groups + g) * per + i) as i64;
                let key = format!("soak-{r}-{g}-{i}");
                tasks.push(Task::function(key.clone(), "inc").arg_i64(v));
                sum = sum.dep_key(key);
                want += v + 1;
            }
            tasks.push(sum);
            expected.push(want);
        }
        let delay = Duration::from_millis(rand() % 150);
        let nanny = &nannies[(rand() >> 8) as usize % nannies.len()];
        let got = rt.block_on(async {
            let futures = client.submit_graph(tasks).await.unwrap();
            tokio::time::sleep(delay).await;
            if let Some(&pid) = children(nanny).first() {
                kill9(pid);
                kills += 1;
            }
            let mut got = Vec::with_capacity(groups);
            for f in futures.iter().filter(|f| f.key().contains("-sum-")) {
                let v = match tokio::time::timeout(Duration::from_secs(120), f.result_i64()).await {
                    Ok(v) => v.unwrap_or_else(|e| panic!("{}: {e}", f.key())),
                    Err(_) => panic!(
                        "round {r}: {} not done after 120 s; workers: {:?}",
                        f.key(),
                        client.workers().await
                    ),
                };
                got.push(v);
            }
            got
        });
        assert_eq!(got, expected, "round {r}");
    }
    eprintln!(
        "soak: {} tasks in {:?} with {kills} workers killed",
        rounds * groups * (per + 1),
        started.elapsed()
    );
    assert!(kills >= rounds / 2, "only {kills} kills landed");
    rt.block_on(client.close());
}

/// A network namespace joined to this one by a veth pair: 10.213.N.1 here, 10.213.N.2 there.
/// Needs root and iproute2 (CI has both).
struct NetNs {
    name: String,
    veth: String,
    here: String,
    there: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip (iproute2) {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed (this test needs root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    fn create() -> NetNs {
        let pid = std::process::id();
        let n = pid % 250 + 1;
        let ns = NetNs {
            name: format!("tw-{pid}"),
            veth: format!("twa{}", pid % 100_000),
            here: format!("10.213.{n}.1"),
            there: format!("10.213.{n}.2"),
        };
        let peer = format!("twb{}", pid % 100_000);
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link", "add", &ns.veth, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &ns.name]);
        ip(&["addr", "add", &format!("{}/24", ns.here), "dev", &ns.veth]);
        ip(&["link", "set", &ns.veth, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{}/24", ns.there), "dev", &peer]);
        inside(&["link", "set", &peer, "up"]);
        inside(&["link", "set", "lo", "up"]);
        ns
    }

    /// Cut or restore the link.
    fn link(&self, up: bool) {
        ip(&["link", "set", &self.veth, if up { "up" } else { "down" }]);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn a_partitioned_worker_is_dropped_by_its_ttl_and_rejoins_cleanly() {
    let ns = NetNs::create();
    let (_sched, address) = {
        let (p, lines) = spawn(
            &[
                "scheduler",
                "--host",
                &ns.here,
                "--port",
                "0",
                "--worker-ttl",
                "2s",
            ],
            &["Scheduler at:"],
        );
        (p, lines[0].clone())
    };
    let _near = worker(&address, "part-near", &["--host", &ns.here, "--no-nanny"]);
    let far = {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name, BIN, "worker", &address])
            .args(["--nthreads", "1", "--name", "part-far", "--host", &ns.there]);
        let p = Proc::start_cmd(cmd);
        p.line("Registered to:");
        p
    };
    let rt = rt();
    let client = rt.block_on(Client::connect(&address)).unwrap();
    let inc_graph = |prefix: &str, n: i64, far_only: bool| -> Vec<Task> {
        (0..n)
            .map(|i| {
                let t = Task::function(format!("{prefix}-{i}"), "inc").arg_i64(i);
                if far_only { t.worker("part-far") } else { t }
            })
            .collect()
    };
    let check = |futures: &[Future], n: i64| {
        rt.block_on(async {
            for (i, f) in futures.iter().enumerate().take(n as usize) {
                let v = tokio::time::timeout(Duration::from_secs(60), f.result_i64())
                    .await
                    .unwrap_or_else(|_| panic!("{} never finished", f.key()))
                    .unwrap();
                assert_eq!(v, i as i64 + 1, "{}", f.key());
            }
        })
    };
    // Results on both sides before the cut.
    let before = rt
        .block_on(client.submit_graph(inc_graph("before", 200, false)))
        .unwrap();
    check(&before, 200);

    ns.link(false);
    let cut = Instant::now();
    // Work submitted now may land on the far worker until the scheduler gives up on it.
    let during = rt
        .block_on(client.submit_graph(inc_graph("during", 200, false)))
        .unwrap();
    rt.block_on(workers_until(&client, "part-far removed", |l| {
        !l.iter().any(|w| w.name == "part-far")
    }));
    let detected = cut.elapsed();
    check(&during, 200);
    // Results the far worker held were recomputed on the near one.
    check(&before, 200);
    eprintln!("partition detected after {detected:?} (worker TTL 2 s, heartbeat 500 ms)");

    ns.link(true);
    let healed = Instant::now();
    let list = rt.block_on(workers_until(&client, "part-far back", |l| {
        l.iter().any(|w| w.name == "part-far")
    }));
    eprintln!(
        "far worker registered again {:?} after the link came back",
        healed.elapsed()
    );
    assert_eq!(list.len(), 2, "one registration per worker: {list:?}");
    let far_info = list.iter().find(|w| w.name == "part-far").unwrap();
    assert!(
        far_info.restarts >= 1,
        "a fresh process, not the stale one: {far_info:?}"
    );
    assert_eq!(
        far_info.in_memory, 0,
        "came back holding stale results: {far_info:?}"
    );
    // The rejoined worker computes again.
    let after = rt
        .block_on(client.submit_graph(inc_graph("after", 50, true)))
        .unwrap();
    check(&after, 50);
    drop(far);
    rt.block_on(client.close());
}

#[test]
fn results_larger_than_memory_spill_to_disk_and_come_back_intact() {
    let (_sched, address) = scheduler(&[]);
    let dir = tempdir("spill");
    let dir_arg = dir.to_str().unwrap().to_string();
    let _w = worker(
        &address,
        "spill-0",
        &["--memory-limit", "256MiB", "--local-directory", &dir_arg],
    );
    let rt = rt();
    let client = rt.block_on(Client::connect(&address)).unwrap();
    // 40 results of 8 MiB (320 MiB) on a worker allowed 256 MiB (the process itself takes
    // some tens of MiB), then a checksum of each.
    let n = 40;
    let size = 8u64 << 20;
    let want = taskwire_worker::fnv1a64(&taskwire_worker::pattern_bytes(size as usize).unwrap());
    let (sums, data) = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..n {
            tasks.push(Task::function(format!("big-{i}"), "make-bytes").arg_u64(size));
        }
        let data = client.submit_graph(tasks).await.unwrap();
        let mut tasks = Vec::new();
        for (i, d) in data.iter().enumerate() {
            tasks.push(Task::function(format!("sum-{i}"), "checksum").dep(d));
        }
        let sums = client.submit_graph(tasks).await.unwrap();
        let mut got = Vec::new();
        for s in &sums {
            let v = tokio::time::timeout(Duration::from_secs(120), s.result())
                .await
                .expect("checksums finish")
                .unwrap();
            got.push(u64::from_le_bytes(v[..8].try_into().unwrap()));
        }
        (got, data)
    });
    assert!(
        sums.iter().all(|&s| s == want),
        "a spilled result came back changed"
    );
    // The worker reported spilling, and a spilled result is served to the client intact.
    let list = rt.block_on(workers_until(&client, "a heartbeat", |l| {
        l.iter().any(|w| w.metrics.spilled > 0)
    }));
    assert!(list[0].metrics.managed <= 256 << 20, "{list:?}");
    assert_eq!(list[0].restarts, 0, "the worker was restarted: {list:?}");
    let first = rt.block_on(data[0].result()).unwrap();
    assert_eq!(taskwire_worker::fnv1a64(&first), want);
    assert!(
        std::fs::read_dir(dir.join("worker-0").join("spill"))
            .unwrap()
            .count()
            > 0,
        "no spill files"
    );
    rt.block_on(client.close());
}
