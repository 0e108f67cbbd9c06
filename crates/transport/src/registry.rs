//! The transport trait and the registry that picks a transport by scheme.

use crate::address::{Address, Scheme};
use crate::config::TransportConfig;
use crate::connection::{Connection, Listener};
use crate::error::TransportError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed, sendable future (connect and listen are rare enough to box).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A way of moving messages, selected by an address scheme.
pub trait Transport: Send + Sync + 'static {
    /// The scheme this transport serves.
    fn scheme(&self) -> Scheme;

    /// Start listening; port 0 (or a fresh name) picks a free endpoint.
    fn listen<'a>(
        &'a self,
        addr: &'a Address,
        cfg: Arc<TransportConfig>,
    ) -> BoxFuture<'a, Result<Listener, TransportError>>;

    /// Connect, failing within `cfg.connect_timeout`.
    fn connect<'a>(
        &'a self,
        addr: &'a Address,
        cfg: Arc<TransportConfig>,
    ) -> BoxFuture<'a, Result<Connection, TransportError>>;
}

/// The transports a process can use, and the limits they apply.
#[derive(Clone)]
pub struct Registry {
    transports: Vec<Arc<dyn Transport>>,
    cfg: Arc<TransportConfig>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let schemes: Vec<Scheme> = self.transports.iter().map(|t| t.scheme()).collect();
        f.debug_struct("Registry")
            .field("schemes", &schemes)
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl Registry {
    /// A registry with only the in-memory transport.
    pub fn new(cfg: TransportConfig) -> Registry {
        Registry {
            transports: vec![Arc::new(crate::mem::MemTransport)],
            cfg: Arc::new(cfg),
        }
    }

    /// Add (or replace) the transport for its scheme.
    pub fn register(mut self, transport: Arc<dyn Transport>) -> Registry {
        self.transports.retain(|t| t.scheme() != transport.scheme());
        self.transports.push(transport);
        self
    }

    /// The limits in force.
    pub fn config(&self) -> &TransportConfig {
        &self.cfg
    }

    /// Replace the limits.
    pub fn with_config(mut self, cfg: TransportConfig) -> Registry {
        self.cfg = Arc::new(cfg);
        self
    }

    fn pick(&self, scheme: Scheme) -> Result<&Arc<dyn Transport>, TransportError> {
        self.transports.iter().find(|t| t.scheme() == scheme).ok_or_else(|| {
            let hint = match scheme {
                Scheme::Ucx => {
                    " (this build has no UCX support: rebuild with `cargo build --release --features ucx` against libucx-dev)"
                }
                Scheme::Tls => {
                    " (this process has no TLS certificates: give it --tls-ca-file, --tls-cert and --tls-key, or --security-config)"
                }
                _ => "",
            };
            TransportError::UnsupportedScheme { scheme, hint: hint.to_string() }
        })
    }

    /// Listen on `addr` with the transport its scheme names.
    pub async fn listen(&self, addr: &Address) -> Result<Listener, TransportError> {
        self.pick(addr.scheme())?
            .listen(addr, self.cfg.clone())
            .await
    }

    /// Connect to `addr` with the transport its scheme names.
    pub async fn connect(&self, addr: &Address) -> Result<Connection, TransportError> {
        self.pick(addr.scheme())?
            .connect(addr, self.cfg.clone())
            .await
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(TransportConfig::default())
    }
}
