//! `taskwire bench ...`: user-facing benchmarks.

use clap::{Args, Subcommand};

mod cluster;
mod report;
mod tasks;
mod transport;
pub(crate) mod units;

/// Benchmarks.
#[derive(Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(Subcommand)]
enum Which {
    /// Latency, message rate and bandwidth of a transport (like ucx_perftest).
    Transport(transport::TransportArgs),
    /// Workloads on a real cluster: noop, tree, roundtrip, transfer, startup, scale, commands.
    Tasks(tasks::TasksArgs),
}

/// Run a benchmark.
pub(crate) fn run(args: BenchArgs) -> Result<(), String> {
    match args.which {
        Which::Transport(t) => transport::run(t),
        Which::Tasks(t) => tasks::run(t),
    }
}
