//! `taskwire worker`.

use clap::Args;
use std::path::PathBuf;
use taskwire_transport::Address;
use taskwire_worker::Worker;

/// Start workers and register them with a scheduler.
#[derive(Args, Debug)]
pub(crate) struct WorkerArgs {
    /// Scheduler address, e.g. tcp://host:8786.
    scheduler: Option<String>,
    /// Read the scheduler address from this file instead.
    #[arg(long)]
    scheduler_file: Option<PathBuf>,
    /// Task threads per worker (default: CPUs / nworkers).
    #[arg(long)]
    nthreads: Option<usize>,
    /// Workers to start.
    #[arg(long, default_value_t = 1)]
    nworkers: usize,
    /// Worker name (with --nworkers > 1, suffixed with -0, -1, ...).
    #[arg(long)]
    name: Option<String>,
    /// Port for the worker's data server (default: a free port; with --nworkers, consecutive).
    #[arg(long)]
    worker_port: Option<u16>,
    /// Interface the data server listens on (default: derived from the scheduler address).
    #[arg(long)]
    host: Option<String>,
    /// Resources offered, e.g. "GPU=1,MEM=4e9".
    #[arg(long, default_value = "")]
    resources: String,
    /// Memory limit per worker in bytes, or "auto" (machine memory / nworkers).
    #[arg(long, default_value = "auto")]
    memory_limit: String,
    /// Directory for command tasks and spilled data.
    #[arg(long)]
    local_directory: Option<PathBuf>,
    /// Benchmark mode: report tasks finished without running them (measures the scheduler).
    #[arg(long)]
    zero_worker: bool,
}

/// Parse "GPU=1,MEM=4e9".
pub(crate) fn parse_resources(spec: &str) -> Result<Vec<(String, f64)>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (name, amount) = item.split_once('=').ok_or_else(|| {
                format!("resource '{item}' should look like NAME=AMOUNT, e.g. GPU=1")
            })?;
            let amount: f64 = amount
                .trim()
                .parse()
                .map_err(|_| format!("resource '{item}': '{amount}' is not a number"))?;
            if !(amount.is_finite() && amount >= 0.0) {
                return Err(format!(
                    "resource '{item}': amount must be a non-negative number"
                ));
            }
            Ok((name.trim().to_string(), amount))
        })
        .collect()
}

/// Parse a byte size: "auto", plain bytes, or with a suffix (4GB, 512MiB, 4e9).
pub(crate) fn parse_memory(spec: &str, nworkers: usize) -> Result<u64, String> {
    if spec == "auto" {
        return Ok(taskwire_worker::machine_memory() / nworkers.max(1) as u64);
    }
    let s = spec.trim();
    let split = s
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("memory limit '{spec}' is not a size like 4GB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        other => return Err(format!("memory limit '{spec}': unknown unit '{other}'")),
    };
    Ok((num * mult) as u64)
}

pub(crate) fn run(args: WorkerArgs) -> Result<(), String> {
    let scheduler =
        super::scheduler_address(args.scheduler.as_deref(), args.scheduler_file.as_deref())?;
    let resources = parse_resources(&args.resources)?;
    let memory_limit = parse_memory(&args.memory_limit, args.nworkers)?;
    let nthreads = args
        .nthreads
        .unwrap_or_else(|| (taskwire_worker::available_cpus() / args.nworkers.max(1)).max(1));
    super::runtime()?.block_on(async {
        let mut handles = Vec::new();
        for i in 0..args.nworkers.max(1) {
            let mut b = Worker::builder(scheduler.clone())
                .nthreads(nthreads)
                .memory_limit(memory_limit)
                .zero_worker(args.zero_worker);
            if let Some(name) = &args.name {
                b = b.name(if args.nworkers > 1 {
                    format!("{name}-{i}")
                } else {
                    name.clone()
                });
            }
            for (r, a) in &resources {
                b = b.resource(r.clone(), *a);
            }
            if let Some(dir) = &args.local_directory {
                b = b.local_directory(dir.join(format!("worker-{i}")));
            }
            if args.worker_port.is_some() || args.host.is_some() {
                let host = args.host.clone().unwrap_or_else(|| "0.0.0.0".into());
                let port = args.worker_port.map_or(0, |p| p + i as u16);
                b = b.listen(Address::tcp(host, port));
            }
            let w = b
                .start()
                .await
                .map_err(|e| format!("worker failed to start: {e}"))?;
            println!("Start worker at: {}", w.address());
            println!("Registered to: {}", w.scheduler());
            handles.push(w);
        }
        let all_finished = async {
            for h in &handles {
                h.finished().await;
            }
        };
        tokio::select! {
            _ = super::shutdown_signal() => {
                println!("Stopping worker");
            }
            _ = all_finished => {
                return Err("lost the scheduler; worker stopped".to_string());
            }
        }
        for h in handles {
            h.close().await;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_parse_and_complain() {
        assert_eq!(
            parse_resources("GPU=1, MEM=4e9").unwrap(),
            vec![("GPU".into(), 1.0), ("MEM".into(), 4e9)]
        );
        assert!(parse_resources("").unwrap().is_empty());
        assert!(parse_resources("GPU").unwrap_err().contains("NAME=AMOUNT"));
        assert!(
            parse_resources("GPU=x")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(parse_resources("GPU=-1").is_err());
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("4GB", 1).unwrap(), 4_000_000_000);
        assert_eq!(parse_memory("512MiB", 1).unwrap(), 512 << 20);
        assert_eq!(parse_memory("4e9", 1).unwrap(), 4_000_000_000);
        assert_eq!(parse_memory("1000", 1).unwrap(), 1000);
        assert!(parse_memory("4XB", 1).is_err());
        assert!(parse_memory("auto", 2).unwrap() > 0);
    }
}
