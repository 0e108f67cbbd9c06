//! `taskwire cuda-worker ADDR`: one worker per GPU under one nanny, as dask-cuda's
//! `dask cuda worker` runs them.
//!
//! The nanny runs each worker as `taskwire worker --no-nanny ...` (the same worker processes as
//! `taskwire worker`), with its own environment (the rotated `CUDA_VISIBLE_DEVICES`,
//! `CUDA_DEVICE_ORDER=PCI_BUS_ID`, the device memory limit, UCX variables) and pinned to the
//! CPUs near its GPU; a worker that dies is restarted with the same GPU, environment and CPUs.
//! What is started is decided by `taskwire_cuda_worker` (discovery and plans).

use super::worker::{
    CHILD_STOP_TIMEOUT, ChildLine, NannyArgs, Signals, parse_memory, parse_resources,
};
use clap::Args;
use std::ffi::OsString;
use std::path::PathBuf;
use taskwire_cuda_worker::{
    DeviceMemoryLimit, GpuWorkerPlan, WorkerOptions, allowed_cpus, find_gpus, plan_workers,
};
use taskwire_transport::Address;
use taskwire_worker::{ChildOptions, Nanny, NannyOutcome};
use tracing::{info, warn};

/// `--transport`: how workers talk to each other and to the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Transport {
    /// TCP, built in.
    Tcp,
    /// UCX (NVLink, InfiniBand, shared memory, TCP), when the binary was built with it.
    Ucx,
}

/// Start one worker per GPU (dask-cuda's `dask cuda worker`).
#[derive(Args, Debug)]
pub(crate) struct CudaWorkerArgs {
    /// Scheduler address, e.g. tcp://host:8786.
    scheduler: Option<String>,
    /// Read the scheduler address from this file instead.
    #[arg(long)]
    scheduler_file: Option<PathBuf>,
    /// GPUs to use, e.g. "0,1" or "GPU-8a1c...,GPU-77aa..." (default: CUDA_VISIBLE_DEVICES,
    /// else every GPU NVML finds).
    #[arg(long)]
    cuda_visible_devices: Option<String>,
    /// Device memory limit per worker: "auto" (80% of the GPU's memory), a fraction such as
    /// 0.5, a size such as 16GB, or 0 for none. Recorded (gpu-info shows it), not enforced.
    #[arg(long, default_value = "auto")]
    device_memory_limit: String,
    /// Task threads per worker.
    #[arg(long, default_value_t = 1)]
    nthreads: usize,
    /// Host memory limit per worker in bytes, or "auto" (machine memory / GPUs); 0: no limit.
    #[arg(long, default_value = "auto")]
    memory_limit: String,
    /// Worker name prefix (default: the host name); workers are named PREFIX-gpu0, ...
    #[arg(long)]
    name: Option<String>,
    /// Resources offered besides GPU=1, e.g. "MEM=4e9".
    #[arg(long, default_value = "")]
    resources: String,
    /// Address the workers' data servers and the nanny listen on.
    #[arg(long, conflicts_with = "interface")]
    host: Option<String>,
    /// Port of worker 0's data server; worker i uses the port + i (default: free ports).
    #[arg(long)]
    worker_port: Option<u16>,
    /// Directory for command tasks and spilled data (worker i uses worker-i under it).
    #[arg(long)]
    local_directory: Option<PathBuf>,
    #[command(flatten)]
    nanny: NannyArgs,
    /// Do not pin workers to the CPUs near their GPU.
    #[arg(long)]
    no_cpu_affinity: bool,
    /// Transport between workers: tcp, or ucx (NVLink, InfiniBand) where built with UCX.
    #[arg(long, value_enum, default_value = "tcp")]
    transport: Transport,
    #[command(flatten)]
    fabric: super::fabric::FabricArgs,
}

/// Everything decided before anything starts.
struct Plan {
    workers: Vec<GpuWorkerPlan>,
    ucx_env: Vec<(String, String)>,
    host: Option<String>,
    lifetime: Option<(std::time::Duration, std::time::Duration)>,
}

fn plan(args: &CudaWorkerArgs) -> Result<Plan, String> {
    match (&args.scheduler, &args.scheduler_file) {
        (Some(a), None) => {
            a.parse::<Address>().map_err(|e| format!("{e}"))?;
        }
        (None, Some(_)) => {}
        (Some(_), Some(_)) => {
            return Err("give the scheduler address or --scheduler-file, not both".into());
        }
        (None, None) => {
            return Err(
                "give the scheduler address (e.g. tcp://host:8786) or --scheduler-file".into(),
            );
        }
    }
    if args.nthreads == 0 {
        return Err("--nthreads must be at least 1".into());
    }
    // Flags first: a typo should not wait for GPU discovery, nor hide behind "no GPU".
    let uses_ucx = args.transport == Transport::Ucx;
    let ucx = args.fabric.ucx_env(uses_ucx, "--transport ucx")?;
    if uses_ucx {
        info!("{}", ucx.describe(&args.fabric.fabric()));
    }
    let ucx_env = ucx.set;
    let device_memory_limit =
        DeviceMemoryLimit::parse(&args.device_memory_limit, |s| parse_memory(s, 1))?;
    let extra_resources = parse_resources(&args.resources)?;
    let lifetime = args.nanny.lifetime()?;
    // Each worker child loads the certificates itself; a bad file is one error here instead.
    args.nanny.tls.security()?;
    let host = match &args.host {
        Some(h) => Some(h.clone()),
        None => args.fabric.interface_host()?,
    };

    let discovery = find_gpus(args.cuda_visible_devices.as_deref()).map_err(|e| e.to_string())?;
    for w in &discovery.warnings {
        warn!("{w}");
    }
    let n = discovery.gpus.len();
    if let Some(p) = args.worker_port
        && usize::from(p) + n - 1 > usize::from(u16::MAX)
    {
        return Err(format!(
            "--worker-port {p} with {n} GPUs goes past port 65535"
        ));
    }
    args.nanny.dashboard_port(n.saturating_sub(1))?;
    let options = WorkerOptions {
        name: args.name.clone(),
        nthreads: args.nthreads,
        memory_limit: Some(parse_memory(&args.memory_limit, n)?),
        device_memory_limit,
        extra_resources,
        pin_cpus: !args.no_cpu_affinity,
    };
    let cpus = allowed_cpus();
    let (workers, warnings) = plan_workers(
        &discovery,
        &options,
        taskwire_worker::machine_memory(),
        cpus.as_deref(),
    )?;
    for w in &warnings {
        warn!("{w}");
    }
    Ok(Plan {
        workers,
        ucx_env,
        host,
        lifetime,
    })
}

/// Worker `w`'s command line: this binary as one `--no-nanny` worker (the nanny appends
/// `--restarts K`).
fn child_args(args: &CudaWorkerArgs, plan: &Plan, w: &GpuWorkerPlan) -> Vec<OsString> {
    let mut a = ChildLine {
        scheduler: args.scheduler.as_deref(),
        scheduler_file: args.scheduler_file.as_deref(),
        nthreads: w.nthreads,
        memory_limit: w.memory_limit,
        resources: w.resources_spec(),
        death_timeout: &args.nanny.death_timeout,
        index: w.index,
        port: args.worker_port.map(|p| usize::from(p) + w.index),
        host: plan.host.as_deref(),
        local_directory: args.local_directory.as_deref(),
        dashboard_port: args.nanny.dashboard_port(w.index).ok().flatten(),
        security: super::security::child_args(&args.nanny),
    }
    .args();
    a.push("--name".into());
    a.push(w.name.clone().into());
    a
}

fn child_options(plan: &Plan, w: &GpuWorkerPlan) -> ChildOptions {
    let mut env: Vec<(OsString, OsString)> = w
        .env()
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    env.extend(plan.ucx_env.iter().map(|(k, v)| (k.into(), v.into())));
    ChildOptions {
        env,
        cpus: w.cpus.clone(),
    }
}

/// The nanny's control host: the workers' host, else loopback for a loopback scheduler, else
/// all interfaces.
fn control_host(args: &CudaWorkerArgs, plan: &Plan) -> String {
    super::worker::control_host(
        plan.host.as_deref(),
        args.scheduler.as_deref(),
        args.scheduler_file.as_deref(),
    )
}

pub(crate) fn run(args: CudaWorkerArgs) -> Result<(), String> {
    let plan = plan(&args)?;
    // One thread: the children's death signal follows the thread that spawned them.
    let code = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?
        .block_on(run_nanny(&args, &plan))?;
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

async fn run_nanny(args: &CudaWorkerArgs, plan: &Plan) -> Result<i32, String> {
    let mut signals = Signals::new()?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let memory_limit = plan.workers[0].memory_limit;
    let mut b = Nanny::builder(exe)
        .memory_limit(memory_limit)
        .restart_policy(args.nanny.restart_policy()?)
        .stop_timeout(CHILD_STOP_TIMEOUT)
        .control(control_host(args, plan), args.nanny.nanny_port);
    if let Some((life, stagger)) = plan.lifetime {
        b = b
            .lifetime(life, stagger)
            .lifetime_restart(!args.nanny.no_lifetime_restart);
    }
    for w in &plan.workers {
        info!("GPU worker {}", w.describe());
        b = b.child_with(child_args(args, plan, w), child_options(plan, w));
    }
    if let Some(secret) = args
        .nanny
        .auth
        .secret_for_nanny(args.scheduler_file.as_deref())
        .await?
    {
        b = b.control_auth_token(secret);
    }
    let security = args.nanny.tls.security()?;
    if let Some(tls) = security.tls_config() {
        b = b.control_tls(tls.clone());
    }
    let nanny = b.bind().await.map_err(|e| e.to_string())?;
    let control = nanny.control_address().expect("control port requested");
    println!(
        "Nanny at: {}",
        super::worker::nanny_address(control, security.tls_config().is_some())
    );
    let handle = nanny.start();
    let outcome = tokio::select! {
        _ = signals.recv() => None,
        o = handle.finished() => Some(o),
    };
    match outcome {
        Some(NannyOutcome::GaveUp(n)) => Err(format!(
            "the nanny gave up on {n} of {} GPU worker(s); see the log above",
            plan.workers.len()
        )),
        Some(NannyOutcome::Retired | NannyOutcome::Stopped) => Ok(0),
        None => {
            println!("Stopping nanny");
            info!("nanny: asking the GPU workers to retire (a second signal kills them)");
            handle.shutdown();
            tokio::select! {
                _ = handle.finished() => {}
                _ = signals.recv() => {
                    handle.shutdown();
                    handle.finished().await;
                }
            }
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        a: CudaWorkerArgs,
    }

    fn args(line: &[&str]) -> CudaWorkerArgs {
        use clap::Parser;
        Cli::parse_from(std::iter::once("cuda-worker").chain(line.iter().copied())).a
    }

    use super::super::fabric::UCX_BUILT;

    fn plan_err(line: &[&str]) -> String {
        match plan(&args(line)) {
            Ok(_) => panic!("{line:?} was accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn flags_are_checked_before_gpus_are_looked_for() {
        let a = "tcp://127.0.0.1:8786";
        let nv_ib = [
            a,
            "--transport",
            "ucx",
            "--enable-nvlink",
            "--enable-infiniband",
        ];
        if UCX_BUILT {
            // Fabric flags on a TCP cuda-worker name the flags and the way to UCX.
            let e = plan_err(&[a, "--enable-nvlink", "--enable-rdmacm"]);
            assert!(
                e.contains("--enable-nvlink, --enable-rdmacm needs the UCX transport"),
                "{e}"
            );
        } else {
            for line in [
                &[a, "--transport", "ucx"][..],
                &nv_ib,
                &[a, "--enable-nvlink"],
            ] {
                let e = plan_err(line);
                assert!(
                    e.contains("rebuild with `cargo build --release --features ucx`"),
                    "{line:?}: {e}"
                );
            }
        }
        assert!(plan_err(&[a, "--nthreads", "0"]).contains("--nthreads"));
        assert!(plan_err(&[a, "--device-memory-limit", "lots"]).contains("--device-memory-limit"));
        assert!(plan_err(&[a, "--interface", "nosuch0"]).contains("no such interface"));
        assert!(plan_err(&[a, "--lifetime", "0"]).contains("--lifetime"));
        assert!(plan_err(&[]).contains("scheduler address"));
        assert!(plan_err(&[a, "--cuda-visible-devices", "0,0"]).contains("listed twice"));
    }

    #[test]
    fn each_child_is_a_gpu_worker_with_its_own_environment() {
        if std::path::Path::new("/proc/driver/nvidia").exists() {
            eprintln!("skipped: NVML would check GPUs 4,5,6 against this machine's real GPUs");
            return;
        }
        let a = args(&[
            "tcp://127.0.0.1:8786",
            "--cuda-visible-devices",
            "4,5,6",
            "--name",
            "n1",
            "--worker-port",
            "9000",
            "--memory-limit",
            "3GB",
            "--device-memory-limit",
            "2GB",
            "--interface",
            "lo",
            "--auth-token-file",
            "/run/tw/token",
            "--handshake-timeout",
            "3s",
            "--max-connections",
            "7",
        ]);
        let p = plan(&a).unwrap();
        assert_eq!(p.workers.len(), 3);
        let w = &p.workers[1];
        let line: Vec<String> = child_args(&a, &p, w)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let line = line.join(" ");
        assert!(line.starts_with("worker tcp://127.0.0.1:8786 "), "{line}");
        for want in [
            "--nthreads 1",
            "--memory-limit 3000000000",
            "--resources GPU=1",
            "--name n1-gpu5",
            "--worker-port 9001",
            "--worker-index 1",
            "--host 127.0.0.1",
            "--auth-token-file /run/tw/token",
            "--handshake-timeout 3000ms",
            "--max-connections 7",
            "--no-nanny",
        ] {
            assert!(line.contains(want), "{want}: {line}");
        }
        let opts = child_options(&p, w);
        let env: Vec<(String, String)> = opts
            .env
            .iter()
            .map(|(k, v)| {
                (
                    k.clone().into_string().unwrap(),
                    v.clone().into_string().unwrap(),
                )
            })
            .collect();
        assert!(
            env.contains(&("CUDA_VISIBLE_DEVICES".into(), "5,6,4".into())),
            "{env:?}"
        );
        assert!(env.contains(&("TASKWIRE_DEVICE_MEMORY_LIMIT".into(), "2000000000".into())));
        assert_eq!(control_host(&a, &p), "127.0.0.1");
    }
}
