//! Subcommands of the `taskwire` binary.

pub(crate) mod cuda_worker;
pub(crate) mod fabric;
pub(crate) mod local;
pub(crate) mod retire;
pub(crate) mod scheduler;
pub(crate) mod security;
pub(crate) mod ssh;
pub(crate) mod status;
pub(crate) mod submit;
pub(crate) mod worker;

use std::path::Path;
use std::time::Duration;
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
    /// Remove a worker not heard from for this long (e.g. 30s, 500ms, 2m); workers give up
    /// on a scheduler silent for as long.
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration)]
    worker_ttl: Duration,
}

/// Parse a duration: "500ms", "30s", "5m", "2h", "1d", or a number of seconds.
pub(crate) fn parse_duration(spec: &str) -> Result<Duration, String> {
    let s = spec.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{spec}' is not a duration like 30s, 5m or 500ms"))?;
    let secs = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => {
            return Err(format!(
                "duration '{spec}': unknown unit '{other}' (use ms, s, m, h or d)"
            ));
        }
    };
    Duration::try_from_secs_f64(num * secs)
        .map_err(|_| format!("duration '{spec}' must be a non-negative, finite time"))
}

/// [`parse_duration`], refusing zero.
pub(crate) fn parse_positive_duration(spec: &str) -> Result<Duration, String> {
    let d = parse_duration(spec)?;
    if d.is_zero() {
        return Err(format!("duration '{spec}' must be more than zero"));
    }
    Ok(d)
}

impl PolicyArgs {
    pub(crate) fn core_config(&self) -> CoreConfig {
        CoreConfig {
            worker_saturation: self.worker_saturation,
            allowed_failures: self.allowed_failures,
            work_stealing: !self.no_work_stealing,
            worker_ttl: self.worker_ttl,
            ..CoreConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_duration, parse_positive_duration};
    use std::time::Duration;

    #[test]
    fn durations_parse_and_complain() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("-1s").is_err());
        assert!(
            parse_duration("5 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("not a duration")
        );
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_positive_duration("0s").is_err());
    }
}
