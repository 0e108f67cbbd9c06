//! `taskwire ssh`: a scheduler on the first host and workers on the others, over SSH.

use clap::Args;
use std::path::PathBuf;
use taskwire::{AdaptOptions, Cluster, SshCluster};

/// Start a cluster over SSH (Dask's SSHCluster): the first host runs `taskwire scheduler`, every
/// other host `taskwire worker` under its nanny. Ctrl-C or SIGTERM stops everything it started
/// on every host.
#[derive(Args, Debug)]
pub(crate) struct SshArgs {
    /// Hosts (`host` or `user@host`; `localhost` allowed; a host may appear more than once).
    hosts: Vec<String>,
    /// Read more hosts from this file, one per line (`#` comments and blank lines skipped).
    #[arg(long)]
    hostfile: Option<PathBuf>,
    /// An ssh option for every connection, as `ssh -o` takes it (e.g. `Port=2222`,
    /// `IdentityFile=~/.ssh/id_ed25519`); repeatable. `BatchMode=yes` is always set.
    #[arg(long = "ssh-option", value_name = "KEY=VALUE")]
    ssh_options: Vec<String>,
    /// Worker processes per worker host.
    #[arg(long, default_value_t = 1)]
    nworkers: usize,
    /// Threads per worker (default: the host's CPUs / nworkers).
    #[arg(long)]
    nthreads: Option<usize>,
    /// The taskwire binary on the hosts (default: `taskwire` on the remote PATH; with
    /// --upload, where to put it, default ~/.cache/taskwire/taskwire-VERSION).
    #[arg(long, value_name = "PATH")]
    remote_taskwire: Option<String>,
    /// Copy this binary to hosts where the remote one is missing or another version.
    #[arg(long)]
    upload: bool,
    /// The scheduler's port (0: a free one).
    #[arg(long, default_value_t = taskwire_scheduler::DEFAULT_PORT)]
    scheduler_port: u16,
    /// The dashboard's port (0: a free one).
    #[arg(long, default_value_t = taskwire_scheduler::DEFAULT_DASHBOARD_PORT)]
    dashboard_port: u16,
    /// Do not serve the dashboard.
    #[arg(long)]
    no_dashboard: bool,
    /// Require the cluster token in this file (created, mode 600, when it does not exist) of
    /// every connection. Each remote process gets it over its ssh session's standard input,
    /// into a mode-600 temporary file removed when the process ends; never on a command line.
    #[command(flatten)]
    auth: super::security::AuthArgs,
    /// TLS for every process started (the CA, certificate and key go to each host through its
    /// ssh session into mode-600 files, never on a command line) and this command's clients.
    #[command(flatten)]
    tls: super::security::TlsArgs,
    #[command(flatten)]
    adapt: super::AdaptArgs,
}

/// Hosts from a hostfile's text.
fn parse_hostfile(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

pub(crate) fn run(args: SshArgs) -> Result<(), String> {
    let mut hosts = args.hosts.clone();
    if let Some(f) = &args.hostfile {
        let text = std::fs::read_to_string(f)
            .map_err(|e| format!("cannot read hostfile {}: {e}", f.display()))?;
        hosts.extend(parse_hostfile(&text));
    }
    if hosts.len() < 2 {
        return Err(
            "give at least two hosts (or a --hostfile): the first runs the scheduler, \
                    the others workers; e.g. `taskwire ssh localhost localhost`"
                .into(),
        );
    }
    if args.nworkers == 0 {
        return Err("--nworkers must be at least 1".into());
    }
    if args.nthreads == Some(0) {
        return Err("--nthreads must be at least 1".into());
    }
    let capacity = (hosts.len() - 1) * args.nworkers;
    if let Some((_, max)) = args.adapt.adapt
        && max > capacity
    {
        return Err(format!(
            "--adapt: the maximum {max} is more than the {} worker hosts hold ({capacity} \
             workers with --nworkers {})",
            hosts.len() - 1,
            args.nworkers
        ));
    }
    let mut b = SshCluster::builder(hosts.clone())
        .nworkers(args.nworkers)
        .scheduler_port(args.scheduler_port)
        .dashboard_port((!args.no_dashboard).then_some(args.dashboard_port))
        .echo_remote_output(true);
    for o in &args.ssh_options {
        b = b.ssh_option(o);
    }
    if let Some(t) = args.nthreads {
        b = b.nthreads(t);
    }
    b = b.security(args.tls.security()?);
    if let Some(secret) = args.auth.secret_or_create()? {
        b = b.auth_token(secret);
    }
    if let Some((min, _)) = args.adapt.adapt {
        b = b.workers(min);
    }
    if let Some(p) = &args.remote_taskwire {
        b = b.remote_taskwire(p);
    }
    if args.upload {
        let me = std::env::current_exe()
            .map_err(|e| format!("--upload: cannot find this binary: {e}"))?;
        b = b.upload(me);
    }
    super::runtime()?.block_on(async {
        let started = std::time::Instant::now();
        let mut cluster = tokio::select! {
            c = b.start() => c.map_err(|e| e.to_string())?,
            _ = super::shutdown_signal() => return Err("interrupted while starting".into()),
        };
        println!("Scheduler at: {}", cluster.scheduler_address());
        if let Some(link) = cluster.dashboard_link() {
            println!("dashboard at: {link}");
        }
        for (host, pid) in cluster.remote_pids() {
            println!("Remote pid: {host} {pid}");
        }
        let workers = cluster.workers();
        println!(
            "Cluster up: {} workers on {} hosts in {:.2}s",
            workers.len(),
            hosts.len() - 1,
            started.elapsed().as_secs_f64()
        );
        if let Some(options) = args.adapt.options() {
            return run_adaptive(cluster, options).await;
        }
        let ended = tokio::select! {
            _ = super::shutdown_signal() => None,
            why = cluster.scheduler_exited() => Some(why),
        };
        println!("Shutting down the cluster");
        let closed = cluster.close().await.map_err(|e| e.to_string());
        match ended {
            Some(why) => Err(format!("the scheduler's ssh session ended: {why}")),
            None => closed,
        }
    })
}

/// Scale adaptively over the host pool until Ctrl-C, or until the scheduler cannot be
/// reached.
async fn run_adaptive(cluster: SshCluster, options: AdaptOptions) -> Result<(), String> {
    let (min, max) = (options.minimum(), options.maximum());
    let adaptive = cluster.adapt_with(options).map_err(|e| e.to_string())?;
    println!("Adaptive scaling: {min} to {max} workers");
    let client = adaptive.client().await.map_err(|e| e.to_string())?;
    let lost = loop {
        tokio::select! {
            _ = super::shutdown_signal() => break None,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        if let Err(e) = client.workers().await {
            break Some(e);
        }
    };
    println!("Shutting down the cluster");
    client.close().await;
    let closed = adaptive.close().await.map_err(|e| e.to_string());
    match lost {
        Some(e) => Err(format!("lost the scheduler: {e}")),
        None => closed,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hostfiles_skip_comments_and_blanks() {
        let hosts = super::parse_hostfile("# cluster\nnode1\n\n  me@node2  # gpu\n");
        assert_eq!(hosts, vec!["node1", "me@node2"]);
    }
}
