//! Security flags: the cluster token (`--auth-token-file`) and the limits a listener puts on
//! its peers. See docs/security.md.

use super::parse_positive_duration;
use clap::Args;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;
use taskwire::ClusterSecret;

/// `--auth-token-file` for processes that connect to a cluster (workers, submit, retire).
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct AuthArgs {
    /// Prove the cluster token in this file to the scheduler and the workers (and require it
    /// of peers on the worker's data port). The file must be readable by its owner only;
    /// `taskwire scheduler --auth-token-file FILE` creates one.
    #[arg(long, value_name = "FILE")]
    pub(crate) auth_token_file: Option<PathBuf>,
}

impl AuthArgs {
    /// The token, when a file is given; an error names the file.
    pub(crate) fn secret(&self) -> Result<Option<ClusterSecret>, String> {
        self.auth_token_file
            .as_deref()
            .map(|f| ClusterSecret::read_file(f).map_err(|e| e.to_string()))
            .transpose()
    }

    /// The token from `--auth-token-file`, else the one the scheduler recorded in its
    /// `--scheduler-file` (if any): a scheduler file alone is enough to join a cluster.
    pub(crate) fn secret_with(
        &self,
        scheduler_file: Option<&Path>,
    ) -> Result<Option<ClusterSecret>, String> {
        match (&self.auth_token_file, scheduler_file) {
            (Some(_), _) => self.secret(),
            (None, Some(f)) => Ok(super::read_scheduler_file(f)?.token),
            (None, None) => Ok(None),
        }
    }

    /// The token for a nanny's control port (see [`secret_with`](Self::secret_with)),
    /// waiting up to 30 s for the file to appear (a scheduler started at the same moment may
    /// be creating it). A scheduler file that is still missing then leaves the control port
    /// without a token, with a warning (its workers wait for the scheduler as before).
    pub(crate) async fn secret_for_nanny(
        &self,
        scheduler_file: Option<&Path>,
    ) -> Result<Option<ClusterSecret>, String> {
        let Some(f) = self.auth_token_file.as_deref().or(scheduler_file) else {
            return Ok(None);
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !f.exists() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if self.auth_token_file.is_none() && !f.exists() {
            eprintln!(
                "warning: scheduler file {} does not exist after 30 s; the nanny's control \
                 port takes commands without a cluster token",
                f.display()
            );
            return Ok(None);
        }
        self.secret_with(scheduler_file)
    }

    /// The token, creating the file with a fresh random one when it does not exist (for the
    /// scheduler and `taskwire local`).
    pub(crate) fn secret_or_create(&self) -> Result<Option<ClusterSecret>, String> {
        let Some(f) = &self.auth_token_file else {
            return Ok(None);
        };
        let (secret, created) = ClusterSecret::read_or_create(f).map_err(|e| e.to_string())?;
        if created {
            println!("Created cluster token file: {} (mode 600)", f.display());
        }
        Ok(Some(secret))
    }
}

/// Limits on the connections to a worker's data port.
#[derive(Args, Debug, Clone)]
pub(crate) struct DataPortArgs {
    /// A connection to the data port that does not finish its handshake in this long is
    /// dropped.
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    pub(crate) handshake_timeout: Duration,
    /// Most connections the data port serves at once (in their handshake or not).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) max_connections: usize,
}

impl DataPortArgs {
    /// Apply to a worker builder.
    pub(crate) fn apply(
        &self,
        auth: Option<ClusterSecret>,
        mut b: taskwire_worker::WorkerBuilder,
    ) -> taskwire_worker::WorkerBuilder {
        if let Some(s) = auth {
            b = b.auth_token(s);
        }
        b.handshake_timeout(self.handshake_timeout)
            .max_connections(self.max_connections)
    }
}

/// The security flags a nanny passes on to its worker children.
pub(crate) fn child_args(auth: &AuthArgs, data: &DataPortArgs) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    if let Some(f) = &auth.auth_token_file {
        a.push("--auth-token-file".into());
        a.push(f.clone().into());
    }
    a.push("--handshake-timeout".into());
    a.push(format!("{}ms", data.handshake_timeout.as_millis()).into());
    a.push("--max-connections".into());
    a.push(data.max_connections.to_string().into());
    a
}

/// The scheduler's token and limits.
#[derive(Args, Debug)]
pub(crate) struct SchedulerSecurityArgs {
    /// Accept only clients and workers that prove the cluster token in this file; the file
    /// is created (mode 600, 32 random bytes as hex) when it does not exist. Give the same
    /// file to workers and clients.
    #[arg(long, value_name = "FILE")]
    auth_token_file: Option<PathBuf>,
    /// A connection that does not finish its handshake in this long is dropped.
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    handshake_timeout: Duration,
    /// Most connections served at once (clients, workers, and connections in their
    /// handshake); more are told so and closed.
    #[arg(long, default_value_t = taskwire_scheduler::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Largest graph one submission may carry, in tasks; a larger one is rejected whole.
    #[arg(long, default_value_t = taskwire_scheduler::DEFAULT_MAX_GRAPH_TASKS)]
    max_graph_tasks: usize,
    /// Most tasks one client may hold at once over all its submissions (graphs and scattered
    /// keys, until the scheduler forgets them); a submission that would go over is rejected.
    #[arg(long, default_value_t = taskwire_scheduler::DEFAULT_MAX_CLIENT_TASKS)]
    max_client_tasks: usize,
    /// Bytes of messages for one client that may wait unread (e.g. 256MiB); a client that
    /// sends requests and does not read the answers is dropped past it.
    #[arg(long, default_value = "256MiB", value_parser = crate::bench::units::parse_size)]
    max_client_backlog: usize,
    /// Once a message from a client or worker has started arriving, the rest must arrive
    /// within this long, or the connection is dropped (silence between messages is fine).
    #[arg(long, default_value = "60s", value_parser = parse_positive_duration)]
    message_timeout: Duration,
}

impl SchedulerSecurityArgs {
    /// `--max-connections`.
    pub(crate) fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Apply to a scheduler builder (creating the token file if needed).
    pub(crate) fn apply(
        &self,
        mut b: taskwire_scheduler::SchedulerBuilder,
    ) -> Result<taskwire_scheduler::SchedulerBuilder, String> {
        let auth = AuthArgs {
            auth_token_file: self.auth_token_file.clone(),
        };
        if let Some(secret) = auth.secret_or_create()? {
            b = b.auth_token(secret);
        }
        Ok(b.handshake_timeout(self.handshake_timeout)
            .max_connections(self.max_connections)
            .max_graph_tasks(self.max_graph_tasks)
            .max_client_tasks(self.max_client_tasks)
            .max_client_backlog(self.max_client_backlog)
            .message_timeout(self.message_timeout))
    }
}
