//! Subcommands of the `taskwire` binary.

pub(crate) mod local;
pub(crate) mod scheduler;
pub(crate) mod submit;
pub(crate) mod worker;

use std::path::Path;
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
