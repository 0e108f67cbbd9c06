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
    /// Start a scheduler and workers in this process and run a sample graph.
    Local(cli::local::LocalArgs),
    /// Submit command tasks to a running cluster.
    Submit(cli::submit::SubmitArgs),
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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Scheduler(args) => cli::scheduler::run(args),
        Command::Worker(args) => cli::worker::run(args),
        Command::Local(args) => cli::local::run(args),
        Command::Submit(args) => cli::submit::run(args),
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
