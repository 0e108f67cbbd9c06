//! The Taskwire scheduler process.
//!
//! A thin shell around [`taskwire_scheduler_core::Core`]: it accepts connections, runs the
//! handshake, decodes each message into a core [`Event`](taskwire_scheduler_core::Event) on the
//! connection's own tokio task, and hands events to the single thread that owns the core through
//! a lock-free queue. That thread applies events in batches, fires the core's timers, encodes the
//! commands it emits and hands each to the connection it is for. No lock is taken on the hot
//! path and the core never waits on I/O.
//!
//! The scheduler is a library object as well as a process (`taskwire scheduler`):
//!
//! ```no_run
//! # async fn demo() -> Result<(), taskwire_scheduler::SchedulerError> {
//! let scheduler = taskwire_scheduler::Scheduler::builder().port(0).start().await?;
//! println!("Scheduler at: {}", scheduler.address());
//! scheduler.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! It does not schedule anything itself (that is the core's job) and keeps no state on disk
//! beyond the optional scheduler file.

mod core_thread;
mod dashboard;
mod durations;
mod server;
mod snapshot;

pub use durations::{DURATION_BUCKETS_US, GroupDurations, MAX_DURATION_GROUPS, OTHER_GROUP};
pub use snapshot::{Snapshot, TransferTotals};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use taskwire_protocol::ClusterSecret;
use taskwire_scheduler_core::CoreConfig;
use taskwire_transport::{Address, Registry, TransportConfig, TransportError};
use taskwire_transport_tcp::Security;
use tokio::sync::watch;

/// Default scheduler port, as Dask's.
pub const DEFAULT_PORT: u16 = 8786;
/// Default dashboard port, as Dask's.
pub const DEFAULT_DASHBOARD_PORT: u16 = 8787;
/// Default time a new connection has to finish its handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of connections (clients, workers, and connections still in their
/// handshake) the scheduler serves at once; more are refused.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default largest graph one submission may carry, in tasks.
pub const DEFAULT_MAX_GRAPH_TASKS: usize = 10_000_000;
/// Default most tasks one client may hold at once over all its submissions.
pub use taskwire_scheduler_core::DEFAULT_MAX_CLIENT_TASKS;
/// Default bytes of unread messages the scheduler keeps for one client behind the transport's
/// queue before it drops the client.
pub const DEFAULT_MAX_CLIENT_BACKLOG: usize = 256 << 20;
/// Default time a message that has started arriving has to arrive whole (a 64 MiB graph at
/// about 1 MiB/s).
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the scheduler could not start.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// Listening failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The dashboard could not listen.
    #[error("dashboard could not listen on {addr}: {reason}")]
    Dashboard {
        /// Where.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The scheduler file could not be written.
    #[error("could not write scheduler file {path}: {reason}")]
    SchedulerFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Entry point for starting a scheduler.
#[derive(Debug)]
pub struct Scheduler;

impl Scheduler {
    /// A builder with the defaults: `tcp://0.0.0.0:8786`, the standard transports.
    pub fn builder() -> SchedulerBuilder {
        SchedulerBuilder {
            address: Address::tcp("0.0.0.0", DEFAULT_PORT),
            registry: None,
            security: Security::new(),
            core: CoreConfig::default(),
            scheduler_file: None,
            dashboard: None,
            limits: server::Limits {
                secret: None,
                handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
                max_connections: DEFAULT_MAX_CONNECTIONS,
                max_graph_tasks: DEFAULT_MAX_GRAPH_TASKS,
                max_client_tasks: DEFAULT_MAX_CLIENT_TASKS,
                max_client_backlog: DEFAULT_MAX_CLIENT_BACKLOG,
                message_timeout: DEFAULT_MESSAGE_TIMEOUT,
            },
        }
    }
}

/// Options for a scheduler.
#[derive(Debug)]
pub struct SchedulerBuilder {
    address: Address,
    registry: Option<Registry>,
    security: Security,
    core: CoreConfig,
    scheduler_file: Option<PathBuf>,
    dashboard: Option<(String, u16)>,
    limits: server::Limits,
}

impl SchedulerBuilder {
    /// Listen on this address (any scheme the registry knows).
    pub fn address(mut self, address: Address) -> Self {
        self.address = address;
        self
    }

    /// Listen on this port (0 picks a free one).
    pub fn port(mut self, port: u16) -> Self {
        self.address = self.address.with_port(port);
        self
    }

    /// Listen on this host (keeps the scheme and port).
    pub fn host(mut self, host: &str) -> Self {
        if let Address::Net { scheme, port, .. } = self.address {
            self.address = Address::Net {
                scheme,
                host: host.to_string(),
                port,
            };
        }
        self
    }

    /// Use these transports and limits.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// TLS and encryption rules (see [`Security`]). With TLS, a `tcp://` listen address
    /// becomes `tls://`, and the address printed and written to the scheduler file says so.
    pub fn security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// Scheduling policy knobs.
    pub fn core_config(mut self, config: CoreConfig) -> Self {
        self.core = config;
        self
    }

    /// Serve the dashboard, `/metrics` and the JSON API over HTTP on `host:port` (port 0: a
    /// free one; a taken port falls back to a free one with a warning, as in Dask). Off by
    /// default in the library; `taskwire scheduler` turns it on at 8787.
    pub fn dashboard(mut self, host: &str, port: u16) -> Self {
        self.dashboard = Some((host.to_string(), port));
        self
    }

    /// Accept only clients and workers that prove they hold this cluster token (see
    /// `taskwire_protocol::auth`). Without one, anyone who can reach the port may connect.
    pub fn auth_token(mut self, secret: ClusterSecret) -> Self {
        self.limits.secret = Some(secret);
        self
    }

    /// How long a new connection has to finish its handshake before it is dropped
    /// (default [`DEFAULT_HANDSHAKE_TIMEOUT`]).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.limits.handshake_timeout = timeout;
        self
    }

    /// Most connections served at once, those still in their handshake included (default
    /// [`DEFAULT_MAX_CONNECTIONS`]); beyond it a new connection is told so and closed.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.limits.max_connections = n.max(1);
        self
    }

    /// Largest graph one submission may carry, in tasks (default
    /// [`DEFAULT_MAX_GRAPH_TASKS`]); a larger one is rejected as a whole.
    pub fn max_graph_tasks(mut self, n: usize) -> Self {
        self.limits.max_graph_tasks = n;
        self
    }

    /// Most tasks one client may hold in the scheduler at once, over all its graphs and
    /// scattered keys (default [`DEFAULT_MAX_CLIENT_TASKS`]); a submission that would go over
    /// it is rejected whole, naming the limit. (A scheduler built here takes this limit from
    /// here, not from the [`core_config`](Self::core_config) field of the same name.)
    pub fn max_client_tasks(mut self, n: usize) -> Self {
        self.limits.max_client_tasks = n;
        self
    }

    /// Bytes of messages for one client that may wait unread behind the transport's queue
    /// (default [`DEFAULT_MAX_CLIENT_BACKLOG`]); a client that falls further behind (it sends
    /// requests and does not read the answers) is dropped, with a warning in the log.
    pub fn max_client_backlog(mut self, bytes: usize) -> Self {
        self.limits.max_client_backlog = bytes;
        self
    }

    /// Once a message from an established client or worker has started arriving, the rest
    /// must arrive within this long (default [`DEFAULT_MESSAGE_TIMEOUT`]), or the connection
    /// is dropped: a peer that trickles bytes cannot hold it. Silence between messages is not
    /// limited by this.
    pub fn message_timeout(mut self, timeout: Duration) -> Self {
        self.limits.message_timeout = timeout;
        self
    }

    /// Write `{"address": ...}` to this file once listening, for `--scheduler-file`; with a
    /// cluster token, the token too (`"auth_token"`), and the file is then mode 600.
    pub fn scheduler_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.scheduler_file = Some(path.into());
        self
    }

    /// Start listening and scheduling. Returns once the listener is bound.
    pub async fn start(self) -> Result<SchedulerHandle, SchedulerError> {
        let registry = self.security.apply(self.registry.unwrap_or_else(|| {
            taskwire_transport_tcp::standard_registry(TransportConfig::default())
        }));
        let address = match self.address {
            Address::Net { scheme, host, port } => Address::Net {
                scheme: self.security.listen_scheme(scheme),
                host,
                port,
            },
            other => other,
        };
        let listener = registry.listen(&address).await?;
        let address = taskwire_transport_tcp::contact_address(listener.local_addr());
        if let Some(path) = &self.scheduler_file {
            write_scheduler_file(path, &address, self.limits.secret.as_ref()).map_err(
                |reason| SchedulerError::SchedulerFile {
                    path: path.clone(),
                    reason,
                },
            )?;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(false);
        let credential = self.limits.secret.as_ref().map(|s| s.http_credential());
        let dashboard = match &self.dashboard {
            Some((host, port)) => Some(bind_dashboard(host, *port).await?),
            None => None,
        };
        let dashboard_address = dashboard
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| {
                let host = match self.dashboard.as_ref().map(|d| d.0.as_str()) {
                    Some("0.0.0.0") | Some("::") | None => taskwire_transport_tcp::host_ip(),
                    Some(h) => h.to_string(),
                };
                // With a token, the link carries the credential derived from it (never the
                // token): opening it sets the browser's cookie.
                match &credential {
                    Some(c) => format!("http://{host}:{}/?token={c}", a.port()),
                    None => format!("http://{host}:{}/", a.port()),
                }
            });
        let worker_ttl = self.core.worker_ttl;
        let (publisher, snapshots, stream) = snapshot::Publisher::new(dashboard.is_some());
        let core_config = CoreConfig {
            max_client_tasks: self.limits.max_client_tasks,
            ..self.core
        };
        let core = core_thread::spawn(core_config, publisher);
        if let Some(listener) = dashboard {
            tokio::spawn(dashboard::serve(
                listener,
                snapshots.clone(),
                stream,
                core.inputs.clone(),
                stop_rx.clone(),
                credential,
            ));
        }
        let shared = Arc::new(server::Shared::new(
            core.inputs.clone(),
            address.to_string(),
            worker_ttl,
            self.limits,
        ));
        tokio::spawn(server::accept_loop(
            listener, shared, stop_rx, core, done_tx,
        ));
        Ok(SchedulerHandle {
            address,
            dashboard: dashboard_address,
            snapshots,
            stop: stop_tx,
            done: done_rx,
        })
    }
}

/// A running scheduler. Dropping it shuts the scheduler down.
#[derive(Debug)]
pub struct SchedulerHandle {
    address: Address,
    dashboard: Option<String>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
}

impl SchedulerHandle {
    /// The address clients and workers connect to.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The dashboard's URL (`http://host:port/`), when it is on; with a cluster token it ends
    /// in `?token=CREDENTIAL` (see `ClusterSecret::http_credential`).
    pub fn dashboard_link(&self) -> Option<&str> {
        self.dashboard.as_deref()
    }

    /// The latest published view of the cluster (at most a publish interval old).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    /// Resolves when the scheduler has stopped.
    pub async fn finished(&self) {
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }

    /// Stop accepting, close every connection and stop the core.
    pub async fn close(self) {
        let _ = self.stop.send(true);
        self.finished().await;
    }
}

impl Drop for SchedulerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Write the scheduler file: `{"type", "address"}`, and the cluster token as `auth_token` when
/// there is one, so that `--scheduler-file` alone lets a worker or client in. With a token the
/// file is made readable by its owner only (mode 600), as a token file is; readers refuse it
/// otherwise. Written whole to a temporary file, then renamed, so a reader polling for it
/// never sees half of it and an old file's looser mode is not kept.
fn write_scheduler_file(
    path: &std::path::Path,
    address: &Address,
    secret: Option<&ClusterSecret>,
) -> Result<(), String> {
    let mut body = serde_json::json!({ "type": "Scheduler", "address": address.to_string() });
    if let Some(secret) = secret {
        let text = secret.expose_text().ok_or(
            "the cluster token is not UTF-8 text, so it cannot go into the scheduler file; \
             give workers and clients --auth-token-file instead",
        )?;
        body["auth_token"] = text.into();
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret.is_some() { 0o600 } else { 0o644 });
    }
    let written = options.open(&tmp).and_then(|mut f| {
        use std::io::Write;
        #[cfg(unix)]
        if secret.is_some() {
            // A leftover temporary file keeps its mode on open: make sure.
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(format!("{body:#}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    });
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.to_string()
    })
}

/// Bind the dashboard, falling back to a free port when the one asked for is taken.
async fn bind_dashboard(host: &str, port: u16) -> Result<tokio::net::TcpListener, SchedulerError> {
    match taskwire_transport_tcp::http::bind(host, port).await {
        Ok((listener, fell_back)) => {
            if fell_back {
                tracing::warn!("dashboard port {port} is taken; using a free port instead");
            }
            Ok(listener)
        }
        Err(e) => Err(SchedulerError::Dashboard {
            addr: format!("{host}:{port}"),
            reason: e.to_string(),
        }),
    }
}
