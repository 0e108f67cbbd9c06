//! Subcommands of the `taskwire` binary.

pub(crate) mod cuda_worker;
pub(crate) mod fabric;
pub(crate) mod jobqueue;
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

pub(crate) use taskwire::read_scheduler_file;

/// The scheduler address from a positional argument or a scheduler file, exactly one of them.
pub(crate) fn scheduler_address(
    addr: Option<&str>,
    file: Option<&Path>,
) -> Result<Address, String> {
    match (addr, file) {
        (Some(a), None) => a.parse().map_err(|e| format!("{e}")),
        (None, Some(f)) => read_scheduler_file(f).map(|f| f.address),
        (Some(_), Some(_)) => {
            Err("give the scheduler address or --scheduler-file, not both".into())
        }
        (None, None) => {
            Err("give the scheduler address (e.g. tcp://host:8786) or --scheduler-file".into())
        }
    }
}

/// Raise this process's open-file limit (`ulimit -n`) from its soft value to the hard one, as
/// Go programs do at start-up: a listener needs a descriptor per connection, and the usual
/// soft limit of 1024 is far below `--max-connections`. Returns the limit now in force.
pub(crate) fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct we pass, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let old = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                lim.rlim_cur = old;
            }
        }
    }
    lim.rlim_cur
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

/// Adaptive scaling flags shared by `taskwire local` and `taskwire ssh`.
#[derive(clap::Args, Debug)]
pub(crate) struct AdaptArgs {
    /// Scale adaptively between MIN and MAX workers (e.g. `1:8`): more when the queued and
    /// running work would take longer than the target duration, fewer (retired gracefully)
    /// when workers sit idle.
    #[arg(long, value_name = "MIN:MAX", value_parser = parse_adapt)]
    pub(crate) adapt: Option<(usize, usize)>,
    /// How often adaptive scaling decides.
    #[arg(long, default_value = "1s", value_parser = parse_positive_duration)]
    adapt_interval: Duration,
    /// Adaptive scaling aims to finish the queued and running work in this long.
    #[arg(long, default_value = "5s", value_parser = parse_positive_duration)]
    adapt_target_duration: Duration,
    /// Decisions in a row that must suggest closing a worker before it is retired.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    adapt_wait_count: u32,
}

/// `MIN:MAX` worker counts for `--adapt`.
pub(crate) fn parse_adapt(spec: &str) -> Result<(usize, usize), String> {
    let bad = || format!("'{spec}' is not MIN:MAX worker counts, e.g. 1:8");
    let (min, max) = spec.split_once(':').ok_or_else(bad)?;
    let min: usize = min.trim().parse().map_err(|_| bad())?;
    let max: usize = max.trim().parse().map_err(|_| bad())?;
    if min > max {
        return Err(format!(
            "'{spec}': the minimum {min} is above the maximum {max}"
        ));
    }
    if max == 0 {
        return Err(format!("'{spec}': the maximum must be at least 1"));
    }
    Ok((min, max))
}

impl AdaptArgs {
    /// The adaptive options, when `--adapt` was given.
    pub(crate) fn options(&self) -> Option<taskwire::AdaptOptions> {
        self.adapt.map(|(min, max)| {
            taskwire::AdaptOptions::new(min, max)
                .interval(self.adapt_interval)
                .target_duration(self.adapt_target_duration)
                .wait_count(self.adapt_wait_count)
        })
    }
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
    use super::{parse_adapt, parse_duration, parse_positive_duration};

    #[test]
    fn adapt_ranges_parse_and_complain() {
        assert_eq!(parse_adapt("1:4").unwrap(), (1, 4));
        assert_eq!(parse_adapt(" 0 : 8 ").unwrap(), (0, 8));
        assert_eq!(parse_adapt("3:3").unwrap(), (3, 3));
        assert!(
            parse_adapt("4:1")
                .unwrap_err()
                .contains("above the maximum")
        );
        assert!(parse_adapt("0:0").unwrap_err().contains("at least 1"));
        for bad in ["4", "1-4", "a:4", "1:", ":4", "-1:4", "1:4:5"] {
            assert!(parse_adapt(bad).unwrap_err().contains("MIN:MAX"), "{bad}");
        }
    }
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
