//! Taskwire's TCP transports: `tcp://host:port`, and TLS over TCP (`tls://host:port`, see
//! [`tls`]).
//!
//! Built on tokio: `TCP_NODELAY` on every socket, a listen backlog from the config (2048 by
//! default), a connect timeout, and the shared byte-stream connection of
//! [`taskwire_transport::stream`]: queued messages are coalesced into vectored writes (large
//! payload frames are written from where they lie), and reads land in one growing buffer that
//! is split into `Bytes` for the receiver.
//!
//! [`standard_registry`] is the registry every Taskwire process uses: in-memory and TCP, and
//! UCX when built with the `ucx` feature (which the `taskwire` crate's `ucx` feature enables).
//!
//! [`http`] is the small HTTP server the scheduler (dashboard, JSON API) and the worker
//! (`/metrics`) share: plain TCP too, and here so that neither depends on the other.
//! [`Security`] adds TLS to the registry and can refuse the unencrypted transports.

pub mod http;
mod security;
pub mod tls;

pub use security::Security;
pub use tls::{TlsConfig, TlsError, TlsFiles, TlsTransport};

use std::sync::Arc;
use std::time::Duration;
use taskwire_transport::{
    Address, BoxFuture, Connection, Listener, Registry, Scheme, Transport, TransportConfig,
    TransportError,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The TCP transport.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpTransport;

/// In-memory plus TCP (plus UCX when built with the `ucx` feature), with `cfg`'s limits.
pub fn standard_registry(cfg: TransportConfig) -> Registry {
    let registry = Registry::new(cfg).register(Arc::new(TcpTransport));
    #[cfg(feature = "ucx")]
    let registry = taskwire_transport_ucx::register(registry);
    registry
}

/// `host:port` of a network address of `scheme`.
pub(crate) fn socket_addr_of(addr: &Address, scheme: Scheme) -> Result<String, TransportError> {
    match addr {
        Address::Net { scheme: s, .. } if *s == scheme => {
            Ok(addr.socket_str().expect("net address"))
        }
        _ => Err(TransportError::WrongAddress(addr.to_string())),
    }
}

/// A socket address as an address of `scheme`.
pub(crate) fn net_address(scheme: Scheme, sa: std::net::SocketAddr) -> Address {
    Address::Net {
        scheme,
        host: sa.ip().to_string(),
        port: sa.port(),
    }
}

fn to_address(sa: std::net::SocketAddr) -> Address {
    net_address(Scheme::Tcp, sa)
}

fn wrap(stream: TcpStream, cfg: Arc<TransportConfig>) -> Result<Connection, TransportError> {
    stream.set_nodelay(true)?;
    let local = to_address(stream.local_addr()?);
    let peer = to_address(stream.peer_addr()?);
    let (read, write) = stream.into_split();
    Ok(taskwire_transport::stream::connection(
        read, write, cfg, local, peer,
    ))
}

/// A listening socket for `addr` (of `scheme`) with `cfg`'s backlog and `SO_REUSEADDR`.
pub(crate) async fn bind(
    addr: &Address,
    scheme: Scheme,
    cfg: &TransportConfig,
) -> Result<TcpListener, TransportError> {
    let listen_err = |reason: String| TransportError::Listen {
        addr: addr.to_string(),
        reason,
    };
    let target = socket_addr_of(addr, scheme)?;
    let resolved: Vec<std::net::SocketAddr> = tokio::net::lookup_host(&target)
        .await
        .map_err(|e| listen_err(format!("cannot resolve: {e}")))?
        .collect();
    let mut last = String::from("no addresses");
    for sa in resolved {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(sa),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        if let Err(e) = socket.bind(&sa.into()) {
            last = e.to_string();
            continue;
        }
        socket.listen(cfg.backlog.min(i32::MAX as u32) as i32)?;
        return Ok(TcpListener::from_std(socket.into())?);
    }
    Err(listen_err(last))
}

impl Transport for TcpTransport {
    fn scheme(&self) -> Scheme {
        Scheme::Tcp
    }

    fn listen<'a>(
        &'a self,
        addr: &'a Address,
        cfg: Arc<TransportConfig>,
    ) -> BoxFuture<'a, Result<Listener, TransportError>> {
        Box::pin(async move {
            let listener = bind(addr, Scheme::Tcp, &cfg).await?;
            let local = to_address(listener.local_addr()?);
            let (tx, rx) = mpsc::channel(cfg.backlog.max(1) as usize);
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tx.closed() => return,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => match wrap(stream, cfg.clone()) {
                                Ok(conn) => {
                                    if tx.send(conn).await.is_err() {
                                        return;
                                    }
                                }
                                Err(_) => continue,
                            },
                            // Out of file descriptors or a peer that reset before accept: keep
                            // listening, but do not spin.
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        },
                    }
                }
            });
            Ok(Listener::new(local, rx))
        })
    }

    fn connect<'a>(
        &'a self,
        addr: &'a Address,
        cfg: Arc<TransportConfig>,
    ) -> BoxFuture<'a, Result<Connection, TransportError>> {
        Box::pin(async move {
            let target = socket_addr_of(addr, Scheme::Tcp)?;
            let attempt =
                tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(&target)).await;
            match attempt {
                Err(_) => Err(TransportError::ConnectTimeout {
                    addr: addr.to_string(),
                    secs: cfg.connect_timeout.as_secs_f64(),
                }),
                Ok(Err(e)) => Err(TransportError::Connect {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                }),
                Ok(Ok(stream)) => wrap(stream, cfg),
            }
        })
    }
}

/// The address others should use to reach a listener: a wildcard listen address (`0.0.0.0`,
/// `::`) becomes this host's address ([`host_ip`]); anything else is kept.
pub fn contact_address(local: &Address) -> Address {
    match local {
        Address::Net { scheme, host, port } if host == "0.0.0.0" || host == "::" => Address::Net {
            scheme: *scheme,
            host: host_ip(),
            port: *port,
        },
        other => other.clone(),
    }
}

/// This host's first non-loopback IPv4 address, found by resolving its host name; 127.0.0.1
/// when it has none.
pub fn host_ip() -> String {
    use std::net::ToSocketAddrs;
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if !name.is_empty()
        && let Ok(addrs) = (name.as_str(), 0).to_socket_addrs()
    {
        for a in addrs {
            if a.is_ipv4() && !a.ip().is_loopback() {
                return a.ip().to_string();
            }
        }
    }
    "127.0.0.1".to_string()
}

/// True for `localhost` and loopback IPs.
pub fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
