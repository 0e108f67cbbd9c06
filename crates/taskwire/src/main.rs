//! The `taskwire` command-line interface.

use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

mod bench;
mod cli;

/// Taskwire: a fast distributed task runtime.
#[derive(Parser)]
#[command(name = "taskwire", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a scheduler (prints `Scheduler at: ...`).
    Scheduler(cli::scheduler::SchedulerArgs),
    /// Start workers that register with a scheduler.
    Worker(cli::worker::WorkerArgs),
    /// Start one worker per GPU (like dask-cuda's `dask cuda worker`).
    CudaWorker(cli::cuda_worker::CudaWorkerArgs),
    /// Start a scheduler and workers in this process and run a sample graph.
    Local(cli::local::LocalArgs),
    /// Submit command tasks to a running cluster.
    Submit(cli::submit::SubmitArgs),
    /// Retire workers gracefully (their unique results move to other workers first).
    Retire(cli::retire::RetireArgs),
    /// The cluster's overview (tasks by state, task groups, workers) from the dashboard's API.
    Status(cli::status::StatusArgs),
    /// Cluster certificates for TLS: `taskwire security generate DIR`.
    #[command(subcommand)]
    Security(cli::security::SecurityCommand),
    /// Start a scheduler and workers over SSH (the first host runs the scheduler).
    Ssh(cli::ssh::SshArgs),
    /// Run workers as Slurm or PBS batch jobs (`taskwire jobqueue slurm --cores 8 ...`).
    Jobqueue(cli::jobqueue::JobqueueArgs),
    /// Benchmarks: `taskwire bench transport ...`.
    Bench(bench::BenchArgs),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TASKWIRE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// mimalloc's `purge_delay` option (see mimalloc.h, `mi_option_e`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// mimalloc's `allow_thp` option (mimalloc v3's mimalloc.h, `mi_option_e`).
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Keep freed memory for a second before returning it to the OS. With mimalloc's default of
/// 10 ms, every burst of tasks re-faults (and the kernel re-zeroes) the memory the previous
/// burst freed: a third of a no-op run's time went to page faults.
///
/// The other side of that delay: memory freed by a worker's spilling would show only some 10 s
/// later (mimalloc purges its arenas after 10 purge delays), and a paused worker would stay
/// paused that long. Workers under memory pressure make mimalloc return it at once.
///
/// No transparent huge pages: every 2 MiB page mimalloc touches first (or again after a purge)
/// is zeroed whole by the kernel; with them, 30-45% of the scheduler's and the client's time on
/// a 1M-task graph went to `clear_page`, and submission ran at half the rate (91-119k vs
/// 166-191k tasks/s, `bench tasks scale --n 500000`, alternating runs).
fn tune_allocator() {
    // SAFETY: setting an option is thread-safe and takes plain integers.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1000);
    }
    taskwire_worker::MemoryRelease::set_process_default(taskwire_worker::MemoryRelease::new(
        || {
            // SAFETY: mi_collect may be called from any thread at any time.
            unsafe { libmimalloc_sys::mi_collect(true) }
        },
    ));
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Scheduler(args) => cli::scheduler::run(args),
        Command::Worker(args) => cli::worker::run(args),
        Command::CudaWorker(args) => cli::cuda_worker::run(args),
        Command::Local(args) => cli::local::run(args),
        Command::Submit(args) => cli::submit::run(args),
        Command::Retire(args) => cli::retire::run(args),
        Command::Status(args) => cli::status::run(args),
        Command::Ssh(args) => cli::ssh::run(args),
        Command::Jobqueue(args) => cli::jobqueue::run(args),
        Command::Security(cmd) => cli::security::run(cmd),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
