//! `taskwire bench tasks`: named workloads run against a real cluster, as a user runs them.
//!
//! By default the benchmark starts its own cluster ([`super::cluster`]): one scheduler process
//! and `--workers` worker processes (named `bench-worker-0`, `-1`, ...) with `--threads` task
//! threads each, on loopback TCP; this process is the client. `--scheduler ADDR` uses a
//! running cluster instead (then `startup` is not available and the scheduler's RSS is not
//! read). Each workload runs `--warmup` discarded runs and then `--runs` measured runs; the
//! table shows median, min and max over the measured runs. Every run uses fresh keys, drops
//! its futures at the end, and waits until the cluster holds nothing of it (no task
//! processing, no result more than before the workload) before the next run starts.
//!
//! Timings start *before* the client builds the [`Task`] list (building the graph is part of
//! what a user pays) and stop when the client has seen the last awaited key finish.
//!
//! # Workloads
//!
//! - `noop --n N` (100,000): N independent `noop` tasks in one graph, all awaited (every
//!   future held). Metrics `tasks_per_s`, `us_per_task` (= 10⁶ / tasks_per_s).
//! - `tree --leaves L` (16,384): binary tree reduction, leaves `inc(i)`, inner tasks `add` of
//!   their two children (an odd one out moves up a level unchanged): 2L-1 tasks in one graph.
//!   Only the root's future is kept (the others are dropped right after submission, as Dask
//!   holds only what `compute` returns), so the scheduler may free intermediates. The root's
//!   value L(L+1)/2 is checked after the timing. Metric `tasks_per_s`.
//! - `roundtrip --n N` (1,000): `submit(inc(i))` then `result()` (wait + fetch from the
//!   worker), N times in a row; the value is checked. Metrics `latency_median`,
//!   `latency_p99` (µs; each run gives one median and one p99, summarised over runs).
//! - `transfer --size BYTES` (64MiB): `make-bytes(size)` restricted to the first worker A and
//!   `len` of it restricted to the second worker B (`remote_pair_ms`), and, in the same run,
//!   the same pair with both tasks on A (`local_pair_ms`: same tasks and messages, no data
//!   moved). `transfer_ms` = remote - local per run is the cost of moving the bytes;
//!   `transfer_gb_per_s` = size / transfer_ms (GB = 10⁹ B), `end_to_end_gb_per_s` = size /
//!   remote_pair_ms. The length is checked.
//! - `startup`: a fresh cluster per run, from just before the scheduler is spawned until every
//!   worker printed `Registered to:` (`startup_ms`), and until the scheduler printed
//!   `Scheduler at:` (`scheduler_ready_ms`). Own cluster only.
//! - `scale --n N` (1,000,000): N tasks in one graph: `noop` leaves plus a reduction tree of
//!   `noop` tasks with fan-in 100 (one task with a million dependencies would be one huge
//!   message), leaves chosen so the total is N or a few less (`n` in the output is the real
//!   count). The graph goes out in messages of `--graph-chunk` tasks (250,000; 0 for one
//!   message), each submitted once the previous one was accepted: the transport limits a
//!   message header to 64 MiB, and a million such tasks take about 140 MB. Once all are
//!   accepted only the root is held. Metrics `submit_tasks_per_s` (N / time until the
//!   scheduler accepted the graph), `complete_tasks_per_s` (N / time until the root is done),
//!   `build_ms` (the client building its Task list, included in both), and with an own
//!   cluster the scheduler's memory: `rss_bytes_per_task` = (VmHWM after completion - VmRSS
//!   of the idle scheduler when the cluster came up) / N, and `rss_growth_bytes_per_task` =
//!   (VmHWM - VmRSS just before this run's submission) / N, with `scheduler_peak_rss_mib` and
//!   `scheduler_rss_before_mib`; the peak is reset through `/proc/PID/clear_refs` before each
//!   run. The two differ when the scheduler keeps memory from the previous run (allocator
//!   caches, table capacity): the growth then understates what a graph needs, so the first
//!   is the headline figure.
//! - `commands --n N` (10,000): N `/bin/true` command tasks in one graph, all awaited
//!   (`tasks_per_s`), and in the same run the machine's own limit: N
//!   `std::process::Command` spawn+wait of `/bin/true` (posix_spawn; stdin null, stdout and
//!   stderr piped and drained, as the worker runs commands) laid out like the cluster: one
//!   process per worker (this binary again) with as many threads as that worker has, timed
//!   from telling the ready processes to go until the last is done (`raw_spawns_per_s`);
//!   `ratio` = taskwire / raw, per run. The two halves take turns going first, run by run,
//!   so a load that comes and goes does not always land on the same side.
//!
//! With `--zero-worker` the workers report tasks finished without running them, which
//! isolates the scheduler's own cost per task; only `noop` and `scale` make sense then (results
//! are never stored). Before measuring, the benchmark checks that the workers really are
//! zero-workers (a `fail` task must finish).
//!
//! # Flags
//!
//! `--workers` (2), `--threads` (1), `--runs` (5; 3 for `scale`), `--warmup` (1), `--json`,
//! `--scheduler ADDR`, `--worker-saturation F|inf` and `--no-work-stealing` (passed to the
//! scheduler started here), `--zero-worker`, `--no-nanny` (workers started here run without a
//! nanny; by default each runs under one, as `taskwire worker` does), `--dashboard` (the
//! scheduler serves its dashboard and an observer streams it, polls its task stream every
//! second and scrapes `/metrics` every 250 ms for the whole run), `--n`, `--leaves`, `--size`,
//! `--graph-chunk`. Several workloads may be named at once; they share one cluster.
//!
//! # JSON lines (`--json`)
//!
//! One object per metric and workload, with stable field names:
//!
//! ```text
//! {"bench":"tasks","workload":"noop","n":100000,"metric":"tasks_per_s","unit":"tasks/s",
//!  "median":..,"min":..,"max":..,"runs":[..],"workers":2,"threads":1,
//!  "worker_saturation":"1.1","work_stealing":true,"zero_worker":false,"cluster":"local"}
//! ```
//!
//! - `n`: tasks per run (`transfer`: 2; `startup`: worker count).
//! - `worker_saturation`: as passed to the scheduler (`"inf"` or a number); the scheduler's
//!   default when not given; `"unknown"` with `--scheduler`.
//! - `nanny`: whether the workers started here run under a nanny (absent with `--scheduler`).
//! - `dashboard`: whether a dashboard observer was connected (`--dashboard`).
//! - `cluster`: `"local"` (started here) or `"external"` (`--scheduler`); with `"external"`,
//!   `workers` and `threads` are what the scheduler reported (threads: the largest per worker).
//! - `loadavg`: the machine's 1, 5 and 15 minute load averages when the workload finished.
//! - `leaves` (tree), `size` (transfer, bytes), `fan_in` and `graph_chunk` (scale) appear only
//!   for their workload. A NaN figure (e.g. a transfer time that came out negative) is written `null`.

use super::cluster::{ChildCluster, ClusterSpec, proc_status_bytes, reset_peak_rss};
use super::report::{median, percentile};
use super::units::{format_size, parse_size};
use clap::{Args, ValueEnum};
use serde::Serialize;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskwire::{Client, Future, Status, Task, WorkerInfoMsg};

/// Fan-in of the `scale` reduction tree.
const SCALE_FAN_IN: usize = 100;
/// How long to wait for the cluster to forget a run before going on anyway.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// N independent no-op tasks in one graph.
    Noop,
    /// A binary tree reduction over L leaves.
    Tree,
    /// One task submitted and its result fetched, N times in a row.
    Roundtrip,
    /// Bytes made on one worker and used on another.
    Transfer,
    /// Scheduler and workers started until all are registered.
    Startup,
    /// A million-task graph: submit and completion rates, scheduler memory per task.
    Scale,
    /// N `/bin/true` command tasks, next to the machine's raw spawn rate.
    Commands,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Noop => "noop",
            Workload::Tree => "tree",
            Workload::Roundtrip => "roundtrip",
            Workload::Transfer => "transfer",
            Workload::Startup => "startup",
            Workload::Scale => "scale",
            Workload::Commands => "commands",
        }
    }
}

/// `taskwire bench tasks` options.
#[derive(Args, Debug)]
pub(crate) struct TasksArgs {
    /// Workload(s) to run, in order; they share one cluster.
    #[arg(value_enum, required_unless_present = "raw_spawn_child", num_args = 1..)]
    workload: Vec<Workload>,
    /// Tasks per run [noop: 100000, roundtrip: 1000, scale: 1000000, commands: 10000].
    #[arg(long)]
    n: Option<usize>,
    /// Leaves of the tree reduction.
    #[arg(long, default_value_t = 16_384)]
    leaves: usize,
    /// Bytes moved by `transfer`: 64MiB, 1GiB, 100MB, ...
    #[arg(long, value_parser = parse_size, default_value = "64MiB")]
    size: usize,
    /// Worker processes to start.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Task threads per worker.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Measured runs per workload [default: 5; scale: 3].
    #[arg(long)]
    runs: Option<usize>,
    /// Discarded warm-up runs before the measured ones.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    /// Use the cluster of this scheduler instead of starting one.
    #[arg(long)]
    scheduler: Option<String>,
    /// `--worker-saturation` of the scheduler started here (a number or `inf`) [default: the
    /// scheduler's default].
    #[arg(long)]
    worker_saturation: Option<String>,
    /// Start the scheduler with work stealing off.
    #[arg(long)]
    no_work_stealing: bool,
    /// Workers report tasks finished without running them (measures the scheduler alone).
    #[arg(long)]
    zero_worker: bool,
    /// Start the workers without a nanny (`taskwire worker --no-nanny`); by default each runs
    /// under one, as `taskwire worker` does (and as Dask's `LocalCluster` runs its workers).
    #[arg(long)]
    no_nanny: bool,
    /// Start the scheduler with its dashboard and keep an observer on it for the whole run: a
    /// live event stream open, the task stream polled every second and `/metrics` scraped
    /// every 250 ms (what the dashboard costs).
    #[arg(long)]
    dashboard: bool,
    /// `scale`: submit the graph in messages of at most this many tasks, one after another
    /// (0: one message). A message header is limited to 64 MiB, about 450,000 such tasks.
    #[arg(long, default_value_t = 250_000)]
    graph_chunk: usize,
    /// Internal (`commands`): print `ready`, wait for a line on stdin, spawn+wait `/bin/true`
    /// this many times on --threads threads, print `done`.
    #[arg(long, hide = true)]
    raw_spawn_child: Option<usize>,
}

/// One metric of one workload over all measured runs (one JSON line, one table row).
#[derive(Clone, Debug, Serialize)]
struct TaskRow {
    bench: &'static str,
    workload: &'static str,
    n: u64,
    metric: &'static str,
    unit: &'static str,
    median: f64,
    min: f64,
    max: f64,
    runs: Vec<f64>,
    workers: usize,
    threads: usize,
    worker_saturation: String,
    work_stealing: bool,
    zero_worker: bool,
    /// Workers under a nanny; `None` for an external cluster (not known).
    #[serde(skip_serializing_if = "Option::is_none")]
    nanny: Option<bool>,
    /// A dashboard observer was connected for the run.
    dashboard: bool,
    cluster: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    leaves: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fan_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    graph_chunk: Option<u64>,
    /// `/proc/loadavg` (1, 5, 15 minutes) when the workload finished.
    loadavg: [f64; 3],
}

/// The cluster settings every row repeats.
#[derive(Clone, Debug)]
struct Labels {
    workers: usize,
    threads: usize,
    worker_saturation: String,
    work_stealing: bool,
    zero_worker: bool,
    nanny: Option<bool>,
    dashboard: bool,
    cluster: &'static str,
}

impl Labels {
    /// Labels of a cluster this benchmark starts itself, from its flags.
    fn local(args: &TasksArgs) -> Labels {
        Labels {
            workers: args.workers,
            threads: args.threads,
            worker_saturation: match &args.worker_saturation {
                Some(s) => saturation_label(s.parse().expect("checked")),
                None => saturation_label(taskwire::CoreConfig::default().worker_saturation),
            },
            work_stealing: !args.no_work_stealing,
            zero_worker: args.zero_worker,
            nanny: Some(!args.no_nanny),
            dashboard: args.dashboard,
            cluster: "local",
        }
    }
}

/// One figure of one run.
struct Measure {
    metric: &'static str,
    unit: &'static str,
    value: f64,
}

fn m(metric: &'static str, unit: &'static str, value: f64) -> Measure {
    Measure {
        metric,
        unit,
        value,
    }
}

/// What a workload reports besides its figures.
#[derive(Clone, Copy, Default)]
struct Extra {
    n: u64,
    leaves: Option<u64>,
    size: Option<u64>,
    fan_in: Option<u64>,
    graph_chunk: Option<u64>,
}

/// `1.1` stays `1.1`, infinity is `inf`.
fn saturation_label(v: f64) -> String {
    if v.is_infinite() {
        "inf".into()
    } else {
        format!("{v}")
    }
}

/// Run the benchmark.
pub(crate) fn run(args: TasksArgs) -> Result<(), String> {
    if let Some(n) = args.raw_spawn_child {
        return raw_spawn_child(n, args.threads.max(1));
    }
    if args.runs == Some(0) {
        return Err("--runs must be at least 1".into());
    }
    if args.workers == 0 || args.threads == 0 {
        return Err("--workers and --threads must be at least 1".into());
    }
    if args.leaves == 0 {
        return Err("--leaves must be at least 1".into());
    }
    if args.workload.contains(&Workload::Scale) && args.graph_chunk == 1 {
        return Err("--graph-chunk 1 would submit a million one-task graphs".into());
    }
    if args.n == Some(0) {
        return Err("--n must be at least 1".into());
    }
    if let Some(s) = &args.worker_saturation {
        let v: f64 = s
            .parse()
            .map_err(|_| format!("--worker-saturation '{s}' is not a number or 'inf'"))?;
        if v.is_nan() || v <= 0.0 {
            return Err("--worker-saturation must be positive".into());
        }
    }
    if args.scheduler.is_some() {
        if args.worker_saturation.is_some() || args.no_work_stealing {
            return Err(
                "--worker-saturation and --no-work-stealing configure the scheduler started \
                 here; with --scheduler, start that scheduler with them"
                    .into(),
            );
        }
        if args.workload.contains(&Workload::Startup) {
            return Err("startup needs a cluster started here: drop --scheduler".into());
        }
    }
    if args.zero_worker
        && let Some(w) = args
            .workload
            .iter()
            .find(|w| !matches!(w, Workload::Noop | Workload::Scale))
    {
        return Err(format!(
            "{} needs results that zero-workers never make: with --zero-worker run noop or scale",
            w.name()
        ));
    }
    let rt = crate::cli::runtime()?;
    // The workloads run as a task on the runtime's threads, as in a server that uses the
    // client, not on the thread blocked in `block_on`: that thread is outside the runtime, so
    // each answer the client's reader hands it costs a cross-thread wake-up (and each message
    // it queues wakes a runtime thread), 2-3 more context switches per round trip.
    rt.block_on(async {
        let args = Arc::new(args);
        let workloads = tokio::spawn({
            let args = args.clone();
            async move { run_async(&args).await }
        });
        tokio::select! {
            r = workloads => r.map_err(|e| format!("the benchmark failed: {e}"))?,
            _ = crate::cli::shutdown_signal() => Err("interrupted".into()),
        }
    })
}

/// The scheduler started here and the client, shared by the workloads.
struct Ctx {
    client: Client,
    cluster: Option<ChildCluster>,
    /// Workers sorted by name.
    workers: Vec<WorkerInfoMsg>,
    labels: Labels,
    /// Results the cluster held before we started.
    baseline_in_memory: u64,
    /// The scheduler's RSS when the cluster had just come up (own cluster only).
    idle_rss: Option<u64>,
    next_prefix: u64,
}

impl Ctx {
    /// A key prefix no other run (of this or another benchmark process) uses.
    fn prefix(&mut self, tag: char) -> String {
        self.next_prefix += 1;
        format!("{tag}{}.{:x}-", self.next_prefix, std::process::id())
    }

    /// Where a task restricted to worker `i` may run: its name, else its address.
    fn worker_target(&self, i: usize) -> String {
        let w = &self.workers[i];
        if w.name.is_empty() {
            w.address.clone()
        } else {
            w.name.clone()
        }
    }

    /// Wait until no task is processing and the workers hold no more results than before.
    async fn settle(&self) -> Result<(), String> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let ws = self.client.workers().await.map_err(|e| e.to_string())?;
            let processing: u64 = ws.iter().map(|w| w.processing).sum();
            let in_memory: u64 = ws.iter().map(|w| w.in_memory).sum();
            if processing == 0 && in_memory <= self.baseline_in_memory {
                return Ok(());
            }
            if Instant::now() > deadline {
                eprintln!(
                    "warning: after {}s the cluster still has {processing} tasks processing \
                     and {in_memory} results (before: {}); going on",
                    SETTLE_TIMEOUT.as_secs(),
                    self.baseline_in_memory
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// A dashboard user for the whole run, on threads that end with the process: the live event
/// stream held open, the task stream polled every second as the page polls it (each time for
/// the runs since the last answer), and `/metrics` scraped every 250 ms.
fn observe_dashboard(http: String) {
    use std::io::{Read, Write};
    let stream_addr = http.clone();
    let runs_addr = http.clone();
    std::thread::spawn(move || {
        let mut since = 0u64;
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(&runs_addr) {
                let request = format!(
                    "GET /api/v1/task-stream?since={since} HTTP/1.1\r\nHost: bench\r\n\r\n"
                );
                let _ = s.write_all(request.as_bytes());
                let mut answer = Vec::new();
                let _ = s.read_to_end(&mut answer);
                let body = answer
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(&answer[..0], |i| &answer[i + 4..]);
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
                    since = v["seq"].as_u64().unwrap_or(since);
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    std::thread::spawn(move || {
        let Ok(mut s) = std::net::TcpStream::connect(&stream_addr) else {
            return;
        };
        let _ = s.write_all(b"GET /api/v1/stream HTTP/1.1\r\nHost: bench\r\n\r\n");
        let mut buf = [0u8; 16 * 1024];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    });
    std::thread::spawn(move || {
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(&http) {
                let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n");
                let mut body = Vec::new();
                let _ = s.read_to_end(&mut body);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
}

async fn connect(args: &TasksArgs) -> Result<Ctx, String> {
    let (cluster, address) = match &args.scheduler {
        Some(a) => (None, a.clone()),
        None => {
            let spec = ClusterSpec {
                workers: args.workers,
                threads: args.threads,
                worker_saturation: args.worker_saturation.clone(),
                no_work_stealing: args.no_work_stealing,
                zero_worker: args.zero_worker,
                nanny: !args.no_nanny,
                dashboard: args.dashboard,
            };
            let c = tokio::task::spawn_blocking(move || ChildCluster::start(&spec))
                .await
                .map_err(|e| format!("cluster start: {e}"))??;
            if let Some(http) = &c.dashboard {
                observe_dashboard(http.clone());
            }
            let a = c.address.clone();
            (Some(c), a)
        }
    };
    let client = Client::connect(&address)
        .await
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    let mut workers = client.workers().await.map_err(|e| e.to_string())?;
    if cluster.is_some() {
        // Registered means known to the scheduler; this only guards against surprises.
        let deadline = Instant::now() + Duration::from_secs(10);
        while workers.len() < args.workers && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            workers = client.workers().await.map_err(|e| e.to_string())?;
        }
        if workers.len() != args.workers {
            return Err(format!(
                "the scheduler knows {} workers, {} were started",
                workers.len(),
                args.workers
            ));
        }
    }
    if workers.is_empty() {
        return Err(format!("the scheduler at {address} has no workers"));
    }
    workers.sort_by(|a, b| a.name.cmp(&b.name).then(a.address.cmp(&b.address)));
    let labels = match &cluster {
        Some(_) => Labels::local(args),
        None => Labels {
            workers: workers.len(),
            threads: workers
                .iter()
                .map(|w| w.nthreads as usize)
                .max()
                .unwrap_or(0),
            worker_saturation: "unknown".into(),
            work_stealing: true,
            zero_worker: args.zero_worker,
            nanny: None,
            dashboard: false,
            cluster: "external",
        },
    };
    let baseline_in_memory = workers.iter().map(|w| w.in_memory).sum();
    let idle_rss = match &cluster {
        Some(c) => Some(proc_status_bytes(c.scheduler_pid, "VmRSS")?),
        None => None,
    };
    let mut ctx = Ctx {
        client,
        cluster,
        workers,
        labels,
        baseline_in_memory,
        idle_rss,
        next_prefix: 0,
    };
    if args.zero_worker {
        check_zero_worker(&mut ctx).await?;
    }
    Ok(ctx)
}

/// A `fail` task finishes on zero-workers and fails on real ones.
async fn check_zero_worker(ctx: &mut Ctx) -> Result<(), String> {
    let key = format!("{}probe", ctx.prefix('z'));
    let f = ctx
        .client
        .submit(Task::function(key, "fail").args(b"zero-worker probe".to_vec()))
        .await
        .map_err(|e| e.to_string())?;
    let status = f.done().await;
    drop(f);
    ctx.settle().await?;
    match status {
        Status::Finished => Ok(()),
        Status::Error(_) => Err("--zero-worker: the workers ran a `fail` task instead of \
                                 reporting it finished, so they are not zero-workers"
            .into()),
        other => Err(format!("--zero-worker probe ended as {other:?}")),
    }
}

async fn run_async(args: &TasksArgs) -> Result<(), String> {
    let mut printer = TablePrinter::new(args.json);
    let mut ctx: Option<Ctx> = None;
    for &w in &args.workload {
        let runs = args
            .runs
            .unwrap_or(if w == Workload::Scale { 3 } else { 5 });
        if w == Workload::Startup {
            let labels = Labels::local(args);
            eprintln!(
                "# startup: {} warm-up + {runs} runs, {} workers, load {:?}",
                args.warmup,
                args.workers,
                loadavg()
            );
            let spec = ClusterSpec {
                workers: args.workers,
                threads: args.threads,
                worker_saturation: args.worker_saturation.clone(),
                no_work_stealing: args.no_work_stealing,
                zero_worker: args.zero_worker,
                nanny: !args.no_nanny,
                dashboard: args.dashboard,
            };
            let warmup = args.warmup;
            let per_run = tokio::task::spawn_blocking(move || startup_runs(&spec, warmup, runs))
                .await
                .map_err(|e| format!("startup: {e}"))??;
            let extra = Extra {
                n: args.workers as u64,
                ..Extra::default()
            };
            printer.rows(&summarise(w, &labels, extra, per_run))?;
            continue;
        }
        if ctx.is_none() {
            ctx = Some(connect(args).await?);
        }
        let ctx = ctx.as_mut().expect("just set");
        let (n, extra) = match w {
            Workload::Noop => {
                let n = args.n.unwrap_or(100_000);
                (n, extra_n(n))
            }
            Workload::Roundtrip => {
                let n = args.n.unwrap_or(1_000);
                (n, extra_n(n))
            }
            Workload::Commands => {
                let n = args.n.unwrap_or(10_000);
                (n, extra_n(n))
            }
            Workload::Tree => (
                args.leaves,
                Extra {
                    n: 2 * args.leaves as u64 - 1,
                    leaves: Some(args.leaves as u64),
                    ..Extra::default()
                },
            ),
            Workload::Transfer => {
                if ctx.workers.len() < 2 {
                    return Err("transfer needs at least two workers".into());
                }
                (
                    args.size,
                    Extra {
                        n: 2,
                        size: Some(args.size as u64),
                        ..Extra::default()
                    },
                )
            }
            Workload::Scale => {
                let n = args.n.unwrap_or(1_000_000);
                let leaves = scale_leaves(n);
                (
                    leaves,
                    Extra {
                        n: (leaves + reductions(leaves)) as u64,
                        fan_in: Some(SCALE_FAN_IN as u64),
                        graph_chunk: Some(args.graph_chunk as u64),
                        ..Extra::default()
                    },
                )
            }
            Workload::Startup => unreachable!("handled above"),
        };
        eprintln!(
            "# {}: n={} ({} warm-up + {runs} runs), load {:?}",
            w.name(),
            extra.n,
            args.warmup,
            loadavg()
        );
        let mut per_run = Vec::with_capacity(runs);
        for i in 0..args.warmup + runs {
            let measures = match w {
                Workload::Noop => noop_run(ctx, n).await?,
                Workload::Tree => tree_run(ctx, n).await?,
                Workload::Roundtrip => roundtrip_run(ctx, n).await?,
                Workload::Transfer => transfer_run(ctx, n).await?,
                Workload::Scale => scale_run(ctx, n, args.graph_chunk).await?,
                Workload::Commands => commands_run(ctx, n).await?,
                Workload::Startup => unreachable!("handled above"),
            };
            ctx.settle().await?;
            if i >= args.warmup {
                per_run.push(measures);
            }
        }
        printer.rows(&summarise(w, &ctx.labels, extra, per_run))?;
    }
    if let Some(ctx) = ctx {
        ctx.client.close().await;
        drop(ctx.cluster);
    }
    Ok(())
}

/// The load averages (1, 5, 15 minutes); zeros where `/proc/loadavg` cannot be read.
fn loadavg() -> [f64; 3] {
    let mut out = [0.0; 3];
    if let Ok(text) = std::fs::read_to_string("/proc/loadavg") {
        for (o, v) in out.iter_mut().zip(text.split_whitespace()) {
            *o = v.parse().unwrap_or(0.0);
        }
    }
    out
}

fn extra_n(n: usize) -> Extra {
    Extra {
        n: n as u64,
        ..Extra::default()
    }
}

/// One row per metric, in the order the first run reported them.
fn summarise(
    w: Workload,
    labels: &Labels,
    extra: Extra,
    per_run: Vec<Vec<Measure>>,
) -> Vec<TaskRow> {
    let Some(first) = per_run.first() else {
        return Vec::new();
    };
    let loadavg = loadavg();
    first
        .iter()
        .enumerate()
        .map(|(j, head)| {
            let runs: Vec<f64> = per_run.iter().map(|r| r[j].value).collect();
            let finite = runs.iter().copied().filter(|v| v.is_finite());
            let min = finite.clone().fold(f64::INFINITY, f64::min);
            let max = finite.fold(f64::NEG_INFINITY, f64::max);
            TaskRow {
                bench: "tasks",
                workload: w.name(),
                n: extra.n,
                metric: head.metric,
                unit: head.unit,
                median: median(&runs),
                min,
                max,
                runs,
                workers: labels.workers,
                threads: labels.threads,
                worker_saturation: labels.worker_saturation.clone(),
                work_stealing: labels.work_stealing,
                zero_worker: labels.zero_worker,
                nanny: labels.nanny,
                dashboard: labels.dashboard,
                cluster: labels.cluster,
                leaves: extra.leaves,
                size: extra.size,
                fan_in: extra.fan_in,
                graph_chunk: extra.graph_chunk,
                loadavg,
            }
        })
        .collect()
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Fail if any future did not finish.
fn check_finished(futures: &[Future]) -> Result<(), String> {
    for f in futures {
        match f.status() {
            Status::Finished => {}
            other => return Err(format!("task '{}' ended as {other:?}", f.key())),
        }
    }
    Ok(())
}

async fn noop_run(ctx: &mut Ctx, n: usize) -> Result<Vec<Measure>, String> {
    let p = ctx.prefix('n');
    let t0 = Instant::now();
    let tasks: Vec<Task> = (0..n)
        .map(|i| Task::function(format!("{p}{i}"), "noop"))
        .collect();
    let futures = ctx.client.submit_graph(tasks).await.map_err(err)?;
    ctx.client.wait(&futures).await;
    let secs = t0.elapsed().as_secs_f64();
    check_finished(&futures)?;
    drop(futures);
    let rate = n as f64 / secs;
    Ok(vec![
        m("tasks_per_s", "tasks/s", rate),
        m("us_per_task", "us", 1e6 / rate),
    ])
}

/// The tree's tasks; the root is the last one.
fn tree_tasks(p: &str, leaves: usize) -> Vec<Task> {
    let mut tasks = Vec::with_capacity(2 * leaves);
    let mut level: Vec<String> = (0..leaves)
        .map(|i| {
            let key = format!("{p}{i}");
            tasks.push(Task::function(key.clone(), "inc").arg_i64(i as i64));
            key
        })
        .collect();
    let mut next_id = leaves;
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        for pair in level.chunks(2) {
            if let [a, b] = pair {
                let key = format!("{p}{next_id}");
                next_id += 1;
                tasks.push(Task::function(key.clone(), "add").dep_key(a).dep_key(b));
                next.push(key);
            } else {
                next.push(pair[0].clone());
            }
        }
        level = next;
    }
    tasks
}

async fn tree_run(ctx: &mut Ctx, leaves: usize) -> Result<Vec<Measure>, String> {
    let p = ctx.prefix('t');
    let t0 = Instant::now();
    let tasks = tree_tasks(&p, leaves);
    let count = tasks.len();
    let mut futures = ctx.client.submit_graph(tasks).await.map_err(err)?;
    let root = futures.pop().ok_or("no futures for the tree")?;
    drop(futures);
    let status = root.done().await;
    let secs = t0.elapsed().as_secs_f64();
    if status != Status::Finished {
        return Err(format!("tree root ended as {status:?}"));
    }
    let want = (leaves as i64) * (leaves as i64 + 1) / 2;
    let got = root.result_i64().await.map_err(err)?;
    if got != want {
        return Err(format!("tree root is {got}, expected {want}"));
    }
    Ok(vec![m("tasks_per_s", "tasks/s", count as f64 / secs)])
}

async fn roundtrip_run(ctx: &mut Ctx, n: usize) -> Result<Vec<Measure>, String> {
    let p = ctx.prefix('r');
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let f = ctx
            .client
            .submit(Task::function(format!("{p}{i}"), "inc").arg_i64(i as i64))
            .await
            .map_err(err)?;
        let v = f.result_i64().await.map_err(err)?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        if v != i as i64 + 1 {
            return Err(format!("inc({i}) returned {v}"));
        }
    }
    lat.sort_by(f64::total_cmp);
    Ok(vec![
        m("latency_median", "us", median(&lat)),
        m("latency_p99", "us", percentile(&lat, 99.0)),
    ])
}

/// `make-bytes` on worker `a`, `len` of it on worker `b`: seconds until `len` is done.
async fn transfer_pair(ctx: &mut Ctx, size: usize, a: usize, b: usize) -> Result<f64, String> {
    let p = ctx.prefix('x');
    let (wa, wb) = (ctx.worker_target(a), ctx.worker_target(b));
    let t0 = Instant::now();
    let make = format!("{p}make");
    let tasks = vec![
        Task::function(make.clone(), "make-bytes")
            .arg_u64(size as u64)
            .worker(&wa),
        Task::function(format!("{p}len"), "len")
            .dep_key(make)
            .worker(&wb),
    ];
    let futures = ctx.client.submit_graph(tasks).await.map_err(err)?;
    let status = futures[1].done().await;
    let secs = t0.elapsed().as_secs_f64();
    if status != Status::Finished {
        return Err(format!("transfer: len ended as {status:?}"));
    }
    let got = futures[1].result_i64().await.map_err(err)?;
    if got != size as i64 {
        return Err(format!("transfer: len is {got}, expected {size}"));
    }
    drop(futures);
    ctx.settle().await?;
    Ok(secs)
}

async fn transfer_run(ctx: &mut Ctx, size: usize) -> Result<Vec<Measure>, String> {
    let local = transfer_pair(ctx, size, 0, 0).await?;
    let remote = transfer_pair(ctx, size, 0, 1).await?;
    let moved = remote - local;
    let gbps = if moved > 0.0 {
        size as f64 / moved / 1e9
    } else {
        f64::NAN
    };
    Ok(vec![
        m("remote_pair_ms", "ms", remote * 1e3),
        m("local_pair_ms", "ms", local * 1e3),
        m("transfer_ms", "ms", moved * 1e3),
        m("transfer_gb_per_s", "GB/s", gbps),
        m("end_to_end_gb_per_s", "GB/s", size as f64 / remote / 1e9),
    ])
}

/// Startup runs, each with a fresh cluster (blocking).
fn startup_runs(
    spec: &ClusterSpec,
    warmup: usize,
    runs: usize,
) -> Result<Vec<Vec<Measure>>, String> {
    let mut out = Vec::with_capacity(runs);
    for i in 0..warmup + runs {
        let cluster = ChildCluster::start(spec)?;
        let t = cluster.startup;
        drop(cluster);
        if i >= warmup {
            out.push(vec![
                m("startup_ms", "ms", t.workers_registered.as_secs_f64() * 1e3),
                m(
                    "scheduler_ready_ms",
                    "ms",
                    t.scheduler_ready.as_secs_f64() * 1e3,
                ),
            ]);
        }
        // Let the killed processes' sockets and memory go before the next start.
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(out)
}

/// Reduction tasks over `leaves` leaves with fan-in [`SCALE_FAN_IN`].
fn reductions(leaves: usize) -> usize {
    let mut total = 0;
    let mut level = leaves;
    while level > 1 {
        level = level.div_ceil(SCALE_FAN_IN);
        total += level;
    }
    total
}

/// The most leaves whose tree has at most `n` tasks.
fn scale_leaves(n: usize) -> usize {
    let mut leaves = n;
    let total = leaves + reductions(leaves);
    if total > n {
        // Fewer leaves never mean more reductions, so this lands at or below n.
        leaves -= total - n;
    }
    while leaves + 1 + reductions(leaves + 1) <= n {
        leaves += 1;
    }
    leaves.max(1)
}

/// `noop` leaves and a `noop` reduction tree; the root is the last task.
fn scale_tasks(p: &str, leaves: usize) -> Vec<Task> {
    let mut tasks = Vec::with_capacity(leaves + reductions(leaves));
    // Decimal indices: a hex one such as `abc` reads as part of the name (as in Dask's
    // key_split), giving every such leaf a prefix of its own.
    tasks.extend((0..leaves).map(|i| Task::function(format!("{p}{i}"), "noop")));
    // A level of the tree: the range of its tasks in `tasks`.
    let mut level = 0..leaves;
    while level.len() > 1 {
        let start = tasks.len();
        for chunk in level.clone().step_by(SCALE_FAN_IN) {
            let end = (chunk + SCALE_FAN_IN).min(level.end);
            let mut t = Task::function(format!("{p}{}", tasks.len()), "noop");
            for d in &tasks[chunk..end] {
                t = t.dep_key(d.key());
            }
            tasks.push(t);
        }
        level = start..tasks.len();
    }
    tasks
}

async fn scale_run(ctx: &mut Ctx, leaves: usize, chunk: usize) -> Result<Vec<Measure>, String> {
    let p = ctx.prefix('s');
    let pid = ctx.cluster.as_ref().map(|c| c.scheduler_pid);
    let mut rss_before = 0;
    if let Some(pid) = pid {
        if !reset_peak_rss(pid) {
            eprintln!(
                "warning: cannot reset the scheduler's peak RSS; runs after the first report \
                 the highest peak so far"
            );
        }
        rss_before = proc_status_bytes(pid, "VmRSS")?;
    }
    let t0 = Instant::now();
    let tasks = scale_tasks(&p, leaves);
    let count = tasks.len();
    let built = t0.elapsed().as_secs_f64();
    // Leaves come before the reductions over them, so every chunk depends only on itself and
    // earlier chunks. All futures are held until the last chunk is in, so no key an
    // unsubmitted task needs can be released meanwhile.
    let chunk = if chunk == 0 { count } else { chunk };
    let mut futures = Vec::with_capacity(count);
    let mut tasks = tasks.into_iter().peekable();
    while tasks.peek().is_some() {
        let part: Vec<Task> = tasks.by_ref().take(chunk).collect();
        let len = part.len();
        let got = ctx.client.submit_graph(part).await.map_err(|e| {
            format!(
                "submitting {len} tasks in one graph: {e} (a message header is limited to \
                 64 MiB: try a smaller --graph-chunk)"
            )
        })?;
        futures.extend(got);
    }
    let accepted = t0.elapsed().as_secs_f64();
    let root = futures.pop().ok_or("no futures for the graph")?;
    drop(futures);
    let status = root.done().await;
    let done = t0.elapsed().as_secs_f64();
    if status != Status::Finished {
        return Err(format!("scale root ended as {status:?}"));
    }
    let mut out = vec![
        m("submit_tasks_per_s", "tasks/s", count as f64 / accepted),
        m("complete_tasks_per_s", "tasks/s", count as f64 / done),
        m("build_ms", "ms", built * 1e3),
    ];
    if let (Some(pid), Some(idle)) = (pid, ctx.idle_rss) {
        let hwm = proc_status_bytes(pid, "VmHWM")?;
        let per_task = |base: u64| hwm.saturating_sub(base) as f64 / count as f64;
        let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
        out.push(m("rss_bytes_per_task", "B/task", per_task(idle)));
        out.push(m(
            "rss_growth_bytes_per_task",
            "B/task",
            per_task(rss_before),
        ));
        out.push(m("scheduler_peak_rss_mib", "MiB", mib(hwm)));
        out.push(m("scheduler_rss_before_mib", "MiB", mib(rss_before)));
    }
    drop(root);
    Ok(out)
}

/// `n` spawn+wait of `/bin/true` on `threads` threads; seconds (blocking).
fn raw_spawns(n: usize, threads: usize) -> Result<f64, String> {
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let count = n / threads + usize::from(t < n % threads);
                s.spawn(move || -> Result<(), String> {
                    for _ in 0..count {
                        let out = Command::new("/bin/true")
                            .stdin(Stdio::null())
                            .stdout(Stdio::piped())
                            .stderr(Stdio::piped())
                            .output()
                            .map_err(|e| format!("cannot run /bin/true: {e}"))?;
                        if !out.status.success() {
                            return Err(format!("/bin/true: {}", out.status));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| "spawn thread panicked".to_string())?)
    })?;
    Ok(t0.elapsed().as_secs_f64())
}

/// The raw-spawn side of `commands` in a child process: see [`raw_spawns_like`].
fn raw_spawn_child(n: usize, threads: usize) -> Result<(), String> {
    use std::io::{BufRead, Write};
    let mut out = std::io::stdout();
    writeln!(out, "ready")
        .and_then(|()| out.flush())
        .map_err(err)?;
    let mut go = String::new();
    std::io::stdin().lock().read_line(&mut go).map_err(err)?;
    raw_spawns(n, threads)?;
    writeln!(out, "done")
        .and_then(|()| out.flush())
        .map_err(err)
}

/// `n` spawn+wait of `/bin/true` laid out like the cluster: one process per worker with as
/// many threads as it has, `n` shared out as the tasks would be. Seconds from telling the
/// ready processes to go until the last one is done (blocking).
fn raw_spawns_like(n: usize, threads_per_worker: &[usize]) -> Result<f64, String> {
    use std::io::{BufRead, BufReader, Write};
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let total: usize = threads_per_worker.iter().sum::<usize>().max(1);
    let mut children = Vec::new();
    // Killed on every way out, like the cluster.
    struct Kill(Vec<std::process::Child>);
    impl Drop for Kill {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut given = 0;
    for (i, &t) in threads_per_worker.iter().enumerate() {
        // Proportional to threads; the last process takes the rest.
        let share = if i + 1 == threads_per_worker.len() {
            n - given
        } else {
            n * t / total
        };
        given += share;
        let child = Command::new(&exe)
            .args(["bench", "tasks", "--raw-spawn-child"])
            .arg(share.to_string())
            .args(["--threads", &t.max(1).to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start a raw-spawn process: {e}"))?;
        children.push(child);
    }
    let mut kill = Kill(children);
    let mut readers = Vec::new();
    for c in &mut kill.0 {
        readers.push(BufReader::new(c.stdout.take().expect("piped stdout")));
    }
    let expect = |r: &mut BufReader<std::process::ChildStdout>, what: &str| {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(n) if n > 0 && line.trim() == what => Ok(()),
            _ => Err(format!("a raw-spawn process did not say '{what}'")),
        }
    };
    for r in &mut readers {
        expect(r, "ready")?;
    }
    let t0 = Instant::now();
    for c in &mut kill.0 {
        let stdin = c.stdin.as_mut().expect("piped stdin");
        writeln!(stdin, "go")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("raw-spawn process: {e}"))?;
    }
    for r in &mut readers {
        expect(r, "done")?;
    }
    Ok(t0.elapsed().as_secs_f64())
}

async fn commands_run(ctx: &mut Ctx, n: usize) -> Result<Vec<Measure>, String> {
    let raw_first = ctx.next_prefix % 2 == 1;
    let layout: Vec<usize> = ctx.workers.iter().map(|w| w.nthreads as usize).collect();
    let raw = || {
        let layout = layout.clone();
        async move {
            tokio::task::spawn_blocking(move || raw_spawns_like(n, &layout))
                .await
                .map_err(err)?
        }
    };
    let mut raw_secs = if raw_first { Some(raw().await?) } else { None };

    let p = ctx.prefix('c');
    let t0 = Instant::now();
    let tasks: Vec<Task> = (0..n)
        .map(|i| Task::command(format!("{p}{i}"), vec!["/bin/true".into()]))
        .collect();
    let futures = ctx.client.submit_graph(tasks).await.map_err(err)?;
    ctx.client.wait(&futures).await;
    let secs = t0.elapsed().as_secs_f64();
    check_finished(&futures)?;
    drop(futures);
    ctx.settle().await?;

    if raw_secs.is_none() {
        raw_secs = Some(raw().await?);
    }
    let raw_secs = raw_secs.expect("measured");
    let (tw_rate, raw_rate) = (n as f64 / secs, n as f64 / raw_secs);
    Ok(vec![
        m("tasks_per_s", "tasks/s", tw_rate),
        m("raw_spawns_per_s", "spawns/s", raw_rate),
        m("ratio", "x", tw_rate / raw_rate),
    ])
}

/// Prints rows as a table (header before the first) or as JSON lines.
struct TablePrinter {
    json: bool,
    header_done: bool,
}

/// Four significant figures, without exponent for everyday magnitudes.
fn fmt_fig(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

impl TablePrinter {
    fn new(json: bool) -> TablePrinter {
        TablePrinter {
            json,
            header_done: false,
        }
    }

    fn rows(&mut self, rows: &[TaskRow]) -> Result<(), String> {
        for row in rows {
            self.row(row)?;
        }
        Ok(())
    }

    fn row(&mut self, row: &TaskRow) -> Result<(), String> {
        if self.json {
            let line = serde_json::to_string(row).map_err(|e| format!("json: {e}"))?;
            println!("{line}");
            return Ok(());
        }
        if !self.header_done {
            self.header_done = true;
            println!(
                "{:<9} {:>9}  {:<25} {:>11} {:>11} {:>11}  {:<8} {:>4}  {:<5} {:>4} {:<4}",
                "workload",
                "n",
                "metric",
                "median",
                "min",
                "max",
                "unit",
                "runs",
                "WxT",
                "sat",
                "zero"
            );
        }
        let n = match row.size {
            Some(s) => format_size(s as usize),
            None => row.n.to_string(),
        };
        println!(
            "{:<9} {:>9}  {:<25} {:>11} {:>11} {:>11}  {:<8} {:>4}  {:<5} {:>4} {:<4}",
            row.workload,
            n,
            row.metric,
            fmt_fig(row.median),
            fmt_fig(row.min),
            fmt_fig(row.max),
            row.unit,
            row.runs.len(),
            format!("{}x{}", row.workers, row.threads),
            row.worker_saturation,
            if row.zero_worker { "yes" } else { "no" }
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_has_2l_minus_1_tasks_and_root_last() {
        for leaves in [1usize, 2, 3, 5, 16, 17] {
            let tasks = tree_tasks("t-", leaves);
            assert_eq!(tasks.len(), 2 * leaves - 1, "leaves {leaves}");
            let root = tasks.last().expect("root").clone().into_spec();
            // Nothing depends on the root.
            assert!(
                tasks
                    .iter()
                    .all(|t| !t.clone().into_spec().deps.contains(&root.key))
            );
        }
    }

    #[test]
    fn scale_graph_has_at_most_n_tasks_and_one_root() {
        for n in [1usize, 2, 100, 101, 102, 10_000, 1_000_000] {
            let leaves = scale_leaves(n);
            let total = leaves + reductions(leaves);
            assert!(total <= n || n == 1, "n {n}: {total}");
            assert!(n - total <= 3, "n {n}: {total}");
            let tasks = scale_tasks("s-", leaves);
            assert_eq!(tasks.len(), total);
            assert!(
                tasks
                    .iter()
                    .all(|t| t.clone().into_spec().deps.len() <= SCALE_FAN_IN)
            );
            if n <= 10_000 {
                // A tree: unique keys, each task but the last (the root) an input of exactly
                // one later task.
                let mut uses: std::collections::HashMap<String, (usize, usize)> = tasks
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (t.key().to_string(), (i, 0)))
                    .collect();
                assert_eq!(uses.len(), total);
                for (i, t) in tasks.iter().enumerate() {
                    for d in t.clone().into_spec().deps {
                        let u = uses.get_mut(&d).expect("input in the graph");
                        assert!(u.0 < i, "input '{d}' after its dependent");
                        u.1 += 1;
                    }
                }
                let root = tasks.last().expect("a root").key();
                assert!(uses.iter().all(|(k, u)| u.1 == usize::from(k != root)));
            }
        }
    }

    #[test]
    fn saturation_labels() {
        assert_eq!(saturation_label(1.1), "1.1");
        assert_eq!(saturation_label(f64::INFINITY), "inf");
        assert_eq!(saturation_label("inf".parse().unwrap()), "inf");
    }
}
