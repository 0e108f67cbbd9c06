//! `taskwire local`: a scheduler and workers in one process, running a sample graph end to end.

use clap::Args;
use std::time::Instant;
use taskwire::{Cluster, LocalCluster, LocalTransport, Task, decode_i64};

/// Start a local cluster and run a sample graph on it.
#[derive(Args, Debug)]
pub(crate) struct LocalArgs {
    /// Workers to start (default 2; with --adapt, its minimum).
    #[arg(long)]
    workers: Option<usize>,
    /// Threads per worker.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// No-op tasks in the throughput step.
    #[arg(long, default_value_t = 100_000)]
    tasks: usize,
    /// Leaves of the tree reduction.
    #[arg(long, default_value_t = 1024)]
    leaves: usize,
    /// Talk through memory instead of loopback TCP.
    #[arg(long, conflicts_with = "processes")]
    inproc: bool,
    /// Run each worker as its own `taskwire worker --no-nanny` process (default: in this
    /// process).
    #[arg(long)]
    processes: bool,
    /// Keep the cluster running after the sample graph until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
    /// Serve the dashboard and its JSON API on 127.0.0.1 at this port (0: a free one).
    #[arg(long)]
    dashboard_port: Option<u16>,
    #[command(flatten)]
    adapt: super::AdaptArgs,
    #[command(flatten)]
    policy: super::PolicyArgs,
    /// Require this cluster token (created when the file does not exist) of everyone who
    /// connects, e.g. `taskwire submit` against a `--keep-running` cluster.
    #[command(flatten)]
    auth: super::security::AuthArgs,
    /// With TLS, the loopback cluster speaks tls:// (for a `--keep-running` cluster that
    /// others join).
    #[command(flatten)]
    tls: super::security::TlsArgs,
}

pub(crate) fn run(args: LocalArgs) -> Result<(), String> {
    super::runtime()?.block_on(async {
        let t0 = Instant::now();
        let transport = if args.inproc {
            LocalTransport::Inproc
        } else {
            LocalTransport::Tcp
        };
        let mut builder = LocalCluster::builder().security(args.tls.security()?);
        if let Some(secret) = args.auth.secret_or_create()? {
            builder = builder.auth_token(secret);
        }
        if let Some(port) = args.dashboard_port {
            builder = builder.dashboard(port);
        }
        if args.processes {
            let me = std::env::current_exe()
                .map_err(|e| format!("--processes: cannot find this binary: {e}"))?;
            builder = builder.processes(me);
        }
        let workers = args
            .workers
            .unwrap_or_else(|| args.adapt.adapt.map_or(2, |(min, _)| min));
        let cluster = builder
            .workers(workers)
            .threads_per_worker(args.threads)
            .transport(transport)
            .core_config(args.policy.core_config())
            .start()
            .await
            .map_err(|e| e.to_string())?;
        println!("Scheduler at: {}", cluster.scheduler_address());
        if let Some(link) = cluster.dashboard_link() {
            println!("dashboard at: {link}");
        }
        for w in cluster.workers() {
            println!(
                "Worker {} at: {} ({} threads)",
                w.name(),
                w.address(),
                w.nthreads()
            );
        }
        for (name, pid) in cluster.worker_pids() {
            println!("Worker {name}: process {pid}");
        }
        println!("cluster up in {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
        let (client, fixed, adaptive) = match args.adapt.options() {
            Some(options) => {
                let (min, max) = (options.minimum(), options.maximum());
                let adaptive = cluster.adapt_with(options).map_err(|e| e.to_string())?;
                println!("Adaptive scaling: {min} to {max} workers");
                let client = adaptive.client().await.map_err(|e| e.to_string())?;
                (client, None, Some(adaptive))
            }
            None => {
                let client = cluster.client().await.map_err(|e| e.to_string())?;
                (client, Some(cluster), None)
            }
        };
        let result = sample(&client, &args).await;
        if args.keep_running && result.is_ok() {
            println!("cluster running; Ctrl-C to stop");
            super::shutdown_signal().await;
        }
        client.close().await;
        if let Some(adaptive) = adaptive {
            adaptive.close().await.map_err(|e| e.to_string())?;
        }
        if let Some(cluster) = fixed {
            cluster.close().await;
        }
        result
    })
}

async fn sample(client: &taskwire::Client, args: &LocalArgs) -> Result<(), String> {
    let e = |e: taskwire::ClientError| e.to_string();

    // 1. A tree reduction: `leaves` inc tasks, then pairwise adds down to one root.
    let t = Instant::now();
    let leaves = args.leaves.max(1);
    let mut tasks = Vec::new();
    let mut level: Vec<String> = (0..leaves)
        .map(|i| {
            let key = format!("inc-{i}");
            tasks.push(Task::function(key.clone(), "inc").arg_i64(i as i64));
            key
        })
        .collect();
    let mut depth = 0;
    while level.len() > 1 {
        depth += 1;
        level = level
            .chunks(2)
            .enumerate()
            .map(|(j, pair)| {
                let key = format!("add-{depth}-{j}");
                let mut task = Task::function(key.clone(), "add");
                for k in pair {
                    task = task.dep_key(k.clone());
                }
                tasks.push(task);
                key
            })
            .collect();
    }
    let ntasks = tasks.len();
    let root = level[0].clone();
    let futures = client.submit_graph(tasks).await.map_err(e)?;
    let root_future = futures
        .into_iter()
        .find(|f| f.key() == root)
        .expect("root future");
    let total = root_future.result_i64().await.map_err(e)?;
    let expected: i64 = (1..=leaves as i64).sum();
    println!(
        "tree reduction: {ntasks} tasks, sum of inc(0..{leaves}) = {total} (expected {expected}) in {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    if total != expected {
        return Err(format!("tree reduction gave {total}, expected {expected}"));
    }

    // 2. Command tasks, as `taskwire submit` runs them.
    let t = Instant::now();
    let cmds: Vec<Task> = (0..4)
        .map(|i| {
            Task::command(
                format!("echo-{i}"),
                vec!["echo".into(), format!("hello from command {i}")],
            )
        })
        .collect();
    let futures = client.submit_graph(cmds).await.map_err(e)?;
    for f in &futures {
        let out = f.command_output().await.map_err(e)?;
        print!(
            "command {}: exit {} stdout: {}",
            f.key(),
            out.exit_code,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    println!(
        "commands: {} in {:.1} ms",
        futures.len(),
        t.elapsed().as_secs_f64() * 1e3
    );

    // 3. An error, reported with its message; the cluster carries on.
    let bad = client
        .submit(Task::function("fail-demo", "fail").args(b"this task fails on purpose".to_vec()))
        .await
        .map_err(e)?;
    let dependent = client
        .submit(Task::function("inc-after-fail", "inc").dep(&bad))
        .await
        .map_err(e)?;
    match dependent.result().await {
        Err(err) => println!("erroring task: {err}"),
        Ok(_) => return Err("a task depending on a failed task succeeded".into()),
    }

    // 4. Throughput: independent no-op tasks.
    if args.tasks > 0 {
        let t = Instant::now();
        let tasks: Vec<Task> = (0..args.tasks)
            .map(|i| Task::function(format!("noop-{i}"), "noop"))
            .collect();
        let futures = client.submit_graph(tasks).await.map_err(e)?;
        client.wait(&futures).await;
        let secs = t.elapsed().as_secs_f64();
        let failed = futures
            .iter()
            .filter(|f| !matches!(f.status(), taskwire::Status::Finished))
            .count();
        println!(
            "throughput: {} no-op tasks in {:.3} s = {:.0} tasks/s ({failed} failed)",
            args.tasks,
            secs,
            args.tasks as f64 / secs
        );
        if failed > 0 {
            return Err(format!("{failed} no-op tasks did not finish"));
        }
    }
    let check = client
        .submit(Task::function("inc-check", "inc").arg_i64(41))
        .await
        .map_err(e)?;
    let v = decode_i64(&check.result().await.map_err(e)?).map_err(|x| x.to_string())?;
    println!("cluster still healthy: inc(41) = {v}");
    Ok(())
}
