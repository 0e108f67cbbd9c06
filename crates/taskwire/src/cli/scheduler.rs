//! `taskwire scheduler`.

use clap::Args;
use std::path::PathBuf;
use taskwire_scheduler::Scheduler;
use taskwire_transport::{Address, Scheme};

/// `--transport`: tcp, or ucx where this binary has it.
fn parse_transport(s: &str) -> Result<Scheme, String> {
    match s {
        "tcp" => Ok(Scheme::Tcp),
        "ucx" if cfg!(feature = "ucx") => Ok(Scheme::Ucx),
        "ucx" => Err(taskwire_transport::fabric::NO_UCX.into()),
        other => Err(format!("unknown transport '{other}': use tcp or ucx")),
    }
}

/// Start a scheduler.
#[derive(Args, Debug)]
pub(crate) struct SchedulerArgs {
    /// Address to listen on (default: all interfaces).
    #[arg(long, default_value = "0.0.0.0", conflicts_with = "interface")]
    host: String,
    /// Port to listen on; 0 picks a free port.
    #[arg(long, default_value_t = taskwire_scheduler::DEFAULT_PORT)]
    port: u16,
    /// Write the scheduler's address to this JSON file (for `--scheduler-file` elsewhere).
    #[arg(long)]
    scheduler_file: Option<PathBuf>,
    /// Port of the dashboard, `/metrics` and the JSON API (0: a free port; a taken port falls
    /// back to a free one).
    #[arg(long, default_value_t = taskwire_scheduler::DEFAULT_DASHBOARD_PORT)]
    dashboard_port: u16,
    /// Do not serve the dashboard.
    #[arg(long)]
    no_dashboard: bool,
    /// Transport for clients and workers: tcp, or ucx (shared memory, InfiniBand, NVLink) in a
    /// build with `--features ucx`. Workers and clients then use the `ucx://` address printed.
    /// With the --tls-* flags, tcp means TLS over TCP (tls://).
    #[arg(long, default_value = "tcp", value_parser = parse_transport)]
    transport: Scheme,
    #[command(flatten)]
    fabric: super::fabric::FabricArgs,
    #[command(flatten)]
    policy: super::PolicyArgs,
    #[command(flatten)]
    security: super::security::SchedulerSecurityArgs,
    #[command(flatten)]
    tls: super::security::TlsArgs,
}

pub(crate) fn run(args: SchedulerArgs) -> Result<(), String> {
    let host = args.fabric.interface_host()?.unwrap_or(args.host.clone());
    args.fabric
        .apply(args.transport == Scheme::Ucx, "--transport ucx")?;
    let fds = super::raise_fd_limit();
    let wanted = args.security.max_connections() as u64 + 64;
    if fds < wanted {
        tracing::warn!(
            "this process may open {fds} files (ulimit -n), fewer than --max-connections \
             needs; connections past that are refused by the system"
        );
    }
    super::runtime()?.block_on(async {
        let mut builder = Scheduler::builder()
            .address(Address::Net {
                scheme: args.transport,
                host: host.clone(),
                port: args.port,
            })
            .core_config(args.policy.core_config());
        if let Some(f) = &args.scheduler_file {
            builder = builder.scheduler_file(f);
        }
        if !args.no_dashboard {
            builder = builder.dashboard(&host, args.dashboard_port);
        }
        // With TLS, the tcp:// listener becomes tls:// (and the address printed says so).
        builder = args.security.apply(builder)?.security(args.tls.security()?);
        let scheduler = builder.start().await.map_err(|e| e.to_string())?;
        println!("Scheduler at: {}", scheduler.address());
        if let Some(link) = scheduler.dashboard_link() {
            println!("dashboard at: {link}");
        }
        tokio::select! {
            _ = super::shutdown_signal() => {
                println!("Shutting down scheduler");
                scheduler.close().await;
            }
            _ = scheduler.finished() => {}
        }
        if let Some(f) = &args.scheduler_file {
            let _ = std::fs::remove_file(f);
        }
        Ok(())
    })
}
