//! Subcommands of the `taskwire` binary.

pub(crate) mod local;
pub(crate) mod scheduler;
pub(crate) mod submit;
pub(crate) mod worker;

use std::path::Path;
use taskwire::CoreConfig;
use taskwire_transport::Address;

/// Read the scheduler address from a `--scheduler-file` written by `taskwire scheduler`.
pub(crate) fn read_scheduler_file(path: &Path) -> Result<Address, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read scheduler file {}: {e}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("scheduler file {} is not JSON: {e}", path.display()))?;
    let addr = json
        .get("address")
        .and_then(|a| a.as_str())
        .ok_or_else(|| format!("scheduler file {} has no \"address\"", path.display()))?;
    addr.parse().map_err(|e| format!("{e}"))
}

/// The scheduler address from a positional argument or a scheduler file, exactly one of them.
pub(crate) fn scheduler_address(
    addr: Option<&str>,
    file: Option<&Path>,
) -> Result<Address, String> {
    match (addr, file) {
        (Some(a), None) => a.parse().map_err(|e| format!("{e}")),
        (None, Some(f)) => read_scheduler_file(f),
        (Some(_), Some(_)) => {
            Err("give the scheduler address or --scheduler-file, not both".into())
        }
        (None, None) => {
            Err("give the scheduler address (e.g. tcp://host:8786) or --scheduler-file".into())
        }
    }
}

/// Build a multi-threaded tokio runtime for a subcommand.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// Wait for Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Scheduling policy flags shared by `taskwire scheduler` and `taskwire local`.
#[derive(clap::Args, Debug)]
pub(crate) struct PolicyArgs {
    /// Root tasks in flight per worker thread before the rest wait in `queued` (Dask's
    /// worker-saturation); `inf` sends everything at once.
    #[arg(long, default_value_t = CoreConfig::default().worker_saturation)]
    worker_saturation: f64,
    /// Times a task may be on a worker that dies before it fails with "killed worker".
    #[arg(long, default_value_t = CoreConfig::default().allowed_failures)]
    allowed_failures: u32,
    /// Turn work stealing off.
    #[arg(long)]
    no_work_stealing: bool,
}

impl PolicyArgs {
    pub(crate) fn core_config(&self) -> CoreConfig {
        CoreConfig {
            worker_saturation: self.worker_saturation,
            allowed_failures: self.allowed_failures,
            work_stealing: !self.no_work_stealing,
            ..CoreConfig::default()
        }
    }
}
