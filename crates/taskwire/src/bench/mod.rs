//! `taskwire bench ...`: user-facing benchmarks.

use clap::{Args, Subcommand};

/// Benchmarks.
#[derive(Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(Subcommand)]
enum Which {
    /// Placeholder until the transport benchmark lands.
    Transport,
}

/// Run a benchmark.
pub(crate) fn run(args: BenchArgs) -> Result<(), String> {
    match args.which {
        Which::Transport => Err("not built yet".into()),
    }
}
