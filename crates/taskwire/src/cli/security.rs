//! Security flags: the cluster token (`--auth-token-file`), TLS (`--tls-*`,
//! `--require-encryption`, `--security-config`), the limits a listener puts on its peers, and
//! `taskwire security generate`. See docs/security.md.

use super::parse_positive_duration;
use clap::Args;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;
use taskwire::ClusterSecret;
use taskwire::{Security, TlsConfig, TlsFiles};
use taskwire_transport_tcp::tls;

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

/// The security flags a nanny passes on to its worker children: token, data-port limits, TLS.
pub(crate) fn child_args(nanny: &super::worker::NannyArgs) -> Vec<OsString> {
    let (auth, data) = (&nanny.auth, &nanny.data_port);
    let mut a: Vec<OsString> = nanny.tls.child_args();
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

/// TLS flags, on every command that listens or connects: `--tls-ca-file`, `--tls-cert`,
/// `--tls-key`, `--require-encryption`, or the same from a `--security-config` file.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct TlsArgs {
    /// The cluster CA's certificate (PEM): peers must present a certificate it signed. With
    /// --tls-cert and --tls-key, this process speaks TLS (tls:// addresses) with mutual
    /// authentication; `taskwire security generate DIR` makes all three.
    #[arg(long, value_name = "FILE")]
    pub(crate) tls_ca_file: Option<PathBuf>,
    /// This process's certificate (PEM), signed by the cluster CA.
    #[arg(long, value_name = "FILE")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Refuse to listen on or connect to unencrypted addresses (tcp://, ucx://); needs TLS.
    #[arg(long)]
    pub(crate) require_encryption: bool,
    /// Read the TLS settings from this JSON file ({"tls_ca_file", "tls_cert", "tls_key",
    /// "require_encryption"}; relative paths are relative to the file), as `taskwire security
    /// generate` writes it. Flags given as well take precedence.
    #[arg(long, value_name = "FILE")]
    pub(crate) security_config: Option<PathBuf>,
}

/// The settings of a `--security-config` file.
#[derive(serde::Deserialize, serde::Serialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecurityConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tls_ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tls_key: Option<PathBuf>,
    #[serde(default)]
    pub(crate) require_encryption: bool,
}

impl SecurityConfig {
    /// Read `path`; relative paths inside are taken relative to its directory.
    pub(crate) fn read(path: &std::path::Path) -> Result<SecurityConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read security config {}: {e}", path.display()))?;
        let mut c: SecurityConfig = serde_json::from_str(&text)
            .map_err(|e| format!("security config {}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        for p in [&mut c.tls_ca_file, &mut c.tls_cert, &mut c.tls_key]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(c)
    }
}

impl TlsArgs {
    /// The TLS files (flags over the config file) and whether encryption is required.
    fn resolved(&self) -> Result<(Option<TlsFiles>, bool), String> {
        let file = match &self.security_config {
            Some(p) => SecurityConfig::read(p)?,
            None => SecurityConfig::default(),
        };
        let files = TlsFiles::from_parts(
            self.tls_ca_file.clone().or(file.tls_ca_file),
            self.tls_cert.clone().or(file.tls_cert),
            self.tls_key.clone().or(file.tls_key),
        )
        .map_err(|e| e.to_string())?;
        Ok((files, self.require_encryption || file.require_encryption))
    }

    /// The process's transport security: certificates loaded and checked, or a one-line error
    /// naming the file and flag at fault.
    pub(crate) fn security(&self) -> Result<Security, String> {
        let (files, require) = self.resolved()?;
        let mut s = Security::new().require_encryption(require);
        match files {
            Some(f) => s = s.tls(TlsConfig::load(&f).map_err(|e| e.to_string())?),
            None if require => {
                return Err(
                    "--require-encryption needs TLS certificates: give --tls-ca-file, \
                     --tls-cert and --tls-key (or --security-config); `taskwire security \
                     generate DIR` makes them"
                        .into(),
                );
            }
            None => {}
        }
        Ok(s)
    }

    /// The same flags for a nanny's child, as given.
    pub(crate) fn child_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        for (flag, v) in [
            ("--tls-ca-file", &self.tls_ca_file),
            ("--tls-cert", &self.tls_cert),
            ("--tls-key", &self.tls_key),
            ("--security-config", &self.security_config),
        ] {
            if let Some(p) = v {
                a.push(flag.into());
                a.push(p.clone().into());
            }
        }
        if self.require_encryption {
            a.push("--require-encryption".into());
        }
        a
    }
}

/// `taskwire security ...`.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum SecurityCommand {
    /// Create a cluster CA and a certificate and key that the scheduler, the workers and the
    /// clients can all use (and, with --per-role, one per role), plus a security config file;
    /// prints the flags to use.
    Generate(GenerateArgs),
}

/// `taskwire security generate DIR`.
#[derive(Args, Debug)]
pub(crate) struct GenerateArgs {
    /// Directory to write into (created with mode 700; existing files are not overwritten).
    dir: PathBuf,
    /// Days the certificates are valid.
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// Also write scheduler.pem, worker.pem and client.pem with their keys.
    #[arg(long)]
    per_role: bool,
    /// Write `"require_encryption": true` into the security config file.
    #[arg(long)]
    require_encryption: bool,
}

pub(crate) fn run(cmd: SecurityCommand) -> Result<(), String> {
    match cmd {
        SecurityCommand::Generate(args) => generate(args),
    }
}

fn generate(args: GenerateArgs) -> Result<(), String> {
    let config_path = args.dir.join("security.json");
    if config_path.exists() {
        return Err(format!(
            "{} already exists (remove the old files or choose another directory)",
            config_path.display()
        ));
    }
    let g = tls::generate(
        &args.dir,
        &tls::GenerateOptions {
            days: args.days,
            per_role: args.per_role,
        },
    )
    .map_err(|e| e.to_string())?;
    // Absolute paths, so the flags printed work from any directory.
    let abs = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let config = SecurityConfig {
        tls_ca_file: Some(abs(&g.ca_file)),
        tls_cert: Some(abs(&g.cluster.cert)),
        tls_key: Some(abs(&g.cluster.key)),
        require_encryption: args.require_encryption,
    };
    let body = serde_json::to_string_pretty(&config).expect("plain data");
    std::fs::write(&config_path, format!("{body}\n"))
        .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
    println!("CA certificate:  {}", abs(&g.ca_file).display());
    for f in std::iter::once(&g.cluster).chain(&g.roles) {
        println!(
            "{:<16} {} (key {}, mode 600)",
            format!("{} cert:", f.role),
            abs(&f.cert).display(),
            abs(&f.key).display()
        );
    }
    println!("Security config: {}", abs(&config_path).display());
    println!(
        "\nGive the scheduler, every worker and every client these flags:\n  \
         --tls-ca-file {} --tls-cert {} --tls-key {}\nor: --security-config {}",
        abs(&g.ca_file).display(),
        abs(&g.cluster.cert).display(),
        abs(&g.cluster.key).display(),
        abs(&config_path).display()
    );
    println!(
        "The scheduler then listens on tls:// and prints its tls:// address. Certificates are \
         valid for {} days and for any host; keep the key files private.",
        args.days
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{SecurityConfig, TlsArgs};
    use std::path::PathBuf;

    #[test]
    fn security_config_resolves_paths_and_refuses_typos() {
        let dir = std::env::temp_dir().join(format!("taskwire-seccfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("security.json");
        std::fs::write(
            &f,
            r#"{"tls_ca_file": "ca.pem", "tls_cert": "/abs/c.pem", "tls_key": "k.pem",
                "require_encryption": true}"#,
        )
        .unwrap();
        let c = SecurityConfig::read(&f).unwrap();
        assert_eq!(c.tls_ca_file, Some(dir.join("ca.pem")));
        assert_eq!(c.tls_cert, Some(PathBuf::from("/abs/c.pem")));
        assert!(c.require_encryption);
        // Flags win over the file; a missing file is named with the flag that gave it.
        let args = TlsArgs {
            tls_key: Some("/nonexistent/key.pem".into()),
            security_config: Some(f.clone()),
            ..TlsArgs::default()
        };
        let e = args.security().unwrap_err();
        assert!(e.contains("ca.pem") && e.contains("--tls-ca-file"), "{e}");
        std::fs::write(&f, r#"{"tls_ca": "ca.pem"}"#).unwrap();
        let e = SecurityConfig::read(&f).unwrap_err();
        assert!(e.contains("unknown field `tls_ca`"), "{e}");
        let e = TlsArgs {
            require_encryption: true,
            ..TlsArgs::default()
        }
        .security()
        .unwrap_err();
        assert!(e.contains("needs TLS certificates"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
