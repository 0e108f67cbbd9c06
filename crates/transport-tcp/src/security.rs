//! What a process demands of its connections: a TLS identity for `tls://`, and whether
//! unencrypted transports are allowed at all.

use crate::tls::{TlsConfig, TlsTransport};
use std::sync::Arc;
use taskwire_transport::{
    Address, BoxFuture, Connection, Listener, Registry, Scheme, Transport, TransportConfig,
    TransportError,
};

/// A process's transport security: with a [`TlsConfig`], `tls://` addresses work (mutual
/// authentication against the cluster CA); with `require_encryption`, `tcp://` and `ucx://`
/// are refused for listening and connecting alike (in-process `inproc://` stays allowed).
#[derive(Clone, Debug, Default)]
pub struct Security {
    tls: Option<TlsConfig>,
    require_encryption: bool,
}

impl Security {
    /// No TLS, plain TCP allowed: what a process has without security options.
    pub fn new() -> Security {
        Security::default()
    }

    /// Present and trust what `tls` holds on `tls://` connections.
    pub fn tls(mut self, tls: TlsConfig) -> Security {
        self.tls = Some(tls);
        self
    }

    /// Refuse to listen on or connect to unencrypted network addresses.
    pub fn require_encryption(mut self, on: bool) -> Security {
        self.require_encryption = on;
        self
    }

    /// The TLS identity, if any.
    pub fn tls_config(&self) -> Option<&TlsConfig> {
        self.tls.as_ref()
    }

    /// Whether unencrypted network addresses are refused.
    pub fn requires_encryption(&self) -> bool {
        self.require_encryption
    }

    /// The scheme to listen on when `scheme` was asked for: `tcp` becomes `tls` when this
    /// process has TLS, so that a secured process never serves plain TCP by default.
    pub fn listen_scheme(&self, scheme: Scheme) -> Scheme {
        match scheme {
            Scheme::Tcp if self.tls.is_some() => Scheme::Tls,
            other => other,
        }
    }

    /// The standard registry ([`crate::standard_registry`]) with these rules applied.
    pub fn registry(&self, cfg: TransportConfig) -> Registry {
        self.apply(crate::standard_registry(cfg))
    }

    /// `registry` with these rules applied: the TLS transport added, and the unencrypted
    /// network transports replaced by ones that refuse with a clear error.
    pub fn apply(&self, mut registry: Registry) -> Registry {
        if let Some(tls) = &self.tls {
            registry = registry.register(Arc::new(TlsTransport::new(tls.clone())));
        }
        if self.require_encryption {
            for scheme in [Scheme::Tcp, Scheme::Ucx] {
                registry = registry.register(Arc::new(Unencrypted(scheme)));
            }
        }
        registry
    }
}

/// Stands in for an unencrypted transport under `require_encryption`.
struct Unencrypted(Scheme);

impl Unencrypted {
    fn reason(&self) -> String {
        format!(
            "{}:// is not encrypted and this process requires encryption \
             (--require-encryption); use a tls:// address",
            self.0
        )
    }
}

impl Transport for Unencrypted {
    fn scheme(&self) -> Scheme {
        self.0
    }

    fn listen<'a>(
        &'a self,
        addr: &'a Address,
        _cfg: Arc<TransportConfig>,
    ) -> BoxFuture<'a, Result<Listener, TransportError>> {
        Box::pin(async move {
            Err(TransportError::Listen {
                addr: addr.to_string(),
                reason: self.reason(),
            })
        })
    }

    fn connect<'a>(
        &'a self,
        addr: &'a Address,
        _cfg: Arc<TransportConfig>,
    ) -> BoxFuture<'a, Result<Connection, TransportError>> {
        Box::pin(async move {
            Err(TransportError::Connect {
                addr: addr.to_string(),
                reason: self.reason(),
            })
        })
    }
}
