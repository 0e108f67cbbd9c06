//! TLS over TCP (`tls://host:port`), with mutual authentication against a cluster CA.
//!
//! Every cluster member holds a certificate signed by the cluster's CA and trusts only that
//! CA: a listener requires a client certificate that chains to it, and a connecting side
//! accepts only a server whose certificate chains to it. TLS 1.3 and 1.2 only, on rustls with
//! the `ring` provider.
//!
//! **Host names are not checked**, as in Dask: workers and clients run on whatever hosts a
//! batch system or a user picks, so a cluster certificate cannot name them in advance. What a
//! certificate proves is membership of the cluster (the CA signed it, it is within its
//! validity, its signatures hold), not the identity of one host. Whoever holds a cluster key
//! can act as any member; keep the key files private (`taskwire security generate` writes them
//! with mode 600) and use a new CA per cluster.
//!
//! A plain `tcp://` peer that reaches a TLS listener is answered with a TLS alert, which its
//! framing decoder reports as "the peer speaks TLS" ([`TransportError::PeerSpeaksTls`]), and
//! the listener logs the refusal with the peer's address; a refused certificate gives a line
//! saying whose certificate the CA did not sign.

mod config;
mod generate;

pub use config::{TlsConfig, TlsError, TlsFiles};
pub use generate::{CertFiles, GenerateError, GenerateOptions, Generated, ROLES, generate};

use crate::{bind, net_address, socket_addr_of};
use rustls::pki_types::ServerName;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use taskwire_transport::{
    Address, BoxFuture, Connection, Listener, Scheme, Transport, TransportConfig, TransportError,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::timeout;
use tracing::warn;

/// The first byte of every TLS connection: a handshake record (the ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// A fatal `unexpected_message` alert in a TLS 1.2 record: what a plain peer is told.
const UNEXPECTED_MESSAGE_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0a];

/// The TLS transport: TCP as in [`crate::TcpTransport`], with a TLS session on each
/// connection.
#[derive(Clone, Debug)]
pub struct TlsTransport {
    tls: TlsConfig,
}

impl TlsTransport {
    /// A transport presenting and trusting what `tls` holds.
    pub fn new(tls: TlsConfig) -> TlsTransport {
        TlsTransport { tls }
    }
}

/// A rustls error as one readable phrase, saying which certificate failed and why.
pub(crate) fn describe(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "the peer's certificate is not signed by the cluster CA (--tls-ca-file)".into()
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the peer's certificate has expired".into()
        }
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the peer's certificate is not valid yet (are the clocks right?)".into()
        }
        E::InvalidCertificate(c) => format!("the peer's certificate is invalid: {c:?}"),
        E::NoCertificatesPresented => {
            "the peer presented no certificate (give it --tls-cert and --tls-key)".into()
        }
        E::AlertReceived(
            a @ (A::UnknownCA
            | A::BadCertificate
            | A::CertificateUnknown
            | A::CertificateRequired
            | A::CertificateExpired
            | A::AccessDenied
            | A::UnsupportedCertificate),
        ) => format!(
            "the peer refused our certificate (TLS alert {a:?}): it is not signed by the CA the \
             peer trusts, or has expired"
        ),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            "the peer does not speak TLS (a plain tcp:// peer?)".into()
        }
        other => other.to_string(),
    }
}

/// An I/O error from a TLS stream, with a rustls error inside made readable.
fn explain(e: std::io::Error) -> std::io::Error {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => std::io::Error::new(e.kind(), format!("TLS: {}", describe(tls))),
        None => e,
    }
}

/// The read half of a TLS stream, whose errors say what went wrong in words (a refused
/// certificate surfaces here under TLS 1.3: after the client's handshake, on its first read).
struct Explained<R>(R);

impl<R: AsyncRead + Unpin> AsyncRead for Explained<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            // A peer that went away without TLS's close_notify (a killed process): an end of
            // stream, as over TCP. Truncation cannot hide behind it: the framing decoder
            // reports a message cut short whatever ended the stream.
            Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Poll::Ready(Ok(()))
            }
            other => other.map_err(explain),
        }
    }
}

fn wrap<S>(stream: S, local: Address, peer: Address, cfg: Arc<TransportConfig>) -> Connection
where
    S: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static,
{
    let (read, write) = tokio::io::split(stream);
    taskwire_transport::stream::connection(Explained(read), write, cfg, local, peer)
}

/// Tell a peer that sent plain bytes to a TLS listener so (`refusal`: a TLS alert record for
/// the transport, whose framing decoder recognises it; a text line for a line protocol), then
/// close without a reset: its unread bytes are drained first, or the kernel would answer them
/// with RST and the refusal could be lost.
async fn refuse_plain(mut stream: TcpStream, refusal: &[u8]) {
    let mut sink = vec![0u8; 64 * 1024];
    let _ = timeout(Duration::from_millis(200), stream.read(&mut sink)).await;
    if stream.write_all(refusal).await.is_ok() {
        let _ = stream.shutdown().await;
        let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
        let _ = timeout(Duration::from_secs(2), drain).await;
    }
}

/// A TLS session accepted on a raw TCP connection (see [`accept_stream`]).
pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;
/// A TLS session opened on a raw TCP connection (see [`connect_stream`]).
pub type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// The server side of a TLS session with the cluster's mutual authentication on an accepted
/// TCP connection, for a protocol of its own beside the framed transport (the nanny's control
/// port). A peer whose first bytes are not a TLS handshake is sent `refusal` and refused with
/// an [`std::io::ErrorKind::InvalidData`] error; a failed handshake is
/// [`std::io::ErrorKind::PermissionDenied`]. Every error says why in words (a plain peer, a certificate the CA did not sign, ...). The caller
/// bounds the time it may take.
pub async fn accept_stream(
    tls: &TlsConfig,
    stream: TcpStream,
    refusal: &[u8],
) -> std::io::Result<ServerStream> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await? {
        0 => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before its TLS handshake",
            ));
        }
        _ if first[0] != TLS_HANDSHAKE_RECORD => {
            refuse_plain(stream, refusal).await;
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "it does not speak TLS (a plain client? give it the cluster's certificates)",
            ));
        }
        _ => {}
    }
    tokio_rustls::TlsAcceptor::from(tls.server.clone())
        .accept(stream)
        .await
        .map_err(|e| {
            let e = explain(e);
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("TLS handshake failed: {e}"),
            )
        })
}

/// The client side of a TLS session with the cluster's mutual authentication on a connected
/// TCP stream, for a protocol of its own beside the framed transport. `host` is the name the
/// stream was connected to (not checked: see the module doc). The error says why in words,
/// with a hint when the server closed on us (a plain server, or one that refused our
/// certificate). The caller bounds the time it may take.
pub async fn connect_stream(
    tls: &TlsConfig,
    stream: TcpStream,
    host: Option<&str>,
) -> std::io::Result<ClientStream> {
    // Names are not checked (see the module doc); rustls wants one all the same.
    let name = host
        .and_then(|h| ServerName::try_from(h.to_string()).ok())
        .unwrap_or_else(|| ServerName::try_from("taskwire").expect("a valid name"));
    tokio_rustls::TlsConnector::from(tls.client.clone())
        .connect(name, stream)
        .await
        .map_err(|e| {
            let e = explain(e);
            let hint = match e.kind() {
                std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe => {
                    " (is it a plain listener, or did it refuse our certificate?)"
                }
                _ => "",
            };
            std::io::Error::new(e.kind(), format!("TLS handshake failed: {e}{hint}"))
        })
}

/// The server side of one connection: check that it speaks TLS, run the handshake, and wrap
/// it. An error is the reason for the log.
async fn accept_one(
    stream: TcpStream,
    tls: &TlsConfig,
    cfg: Arc<TransportConfig>,
) -> Result<Connection, String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let local = net_address(Scheme::Tls, stream.local_addr().map_err(|e| e.to_string())?);
    let peer = net_address(Scheme::Tls, stream.peer_addr().map_err(|e| e.to_string())?);
    let tls = accept_stream(tls, stream, &UNEXPECTED_MESSAGE_ALERT)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => {
                "it does not speak TLS (a plain tcp:// client? use the tls:// address and the \
                 cluster's certificates)"
                    .to_string()
            }
            _ => e.to_string(),
        })?;
    Ok(wrap(tls, local, peer, cfg))
}

impl Transport for TlsTransport {
    fn scheme(&self) -> Scheme {
        Scheme::Tls
    }

    fn listen<'a>(
        &'a self,
        addr: &'a Address,
        cfg: Arc<TransportConfig>,
    ) -> BoxFuture<'a, Result<Listener, TransportError>> {
        Box::pin(async move {
            let listener = bind(addr, Scheme::Tls, &cfg).await?;
            let local = net_address(Scheme::Tls, listener.local_addr()?);
            let (tx, rx) = mpsc::channel(cfg.backlog.max(1) as usize);
            let tls = self.tls.clone();
            // Handshakes run beside the accept loop, so a slow or silent peer holds up no one;
            // at most a backlog's worth at once, each within the connect timeout.
            let handshakes = Arc::new(Semaphore::new(cfg.backlog.max(1) as usize));
            let shown = local.clone();
            tokio::spawn(async move {
                loop {
                    let (stream, peer) = tokio::select! {
                        _ = tx.closed() => return,
                        accepted = listener.accept() => match accepted {
                            Ok(a) => a,
                            Err(_) => {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        },
                    };
                    let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                        warn!(
                            "{shown}: refused a connection from {peer}: too many TLS handshakes in progress"
                        );
                        continue;
                    };
                    let (tx, tls, cfg, shown) =
                        (tx.clone(), tls.clone(), cfg.clone(), shown.clone());
                    tokio::spawn(async move {
                        let limit = cfg.connect_timeout;
                        let result = timeout(limit, accept_one(stream, &tls, cfg)).await;
                        drop(permit);
                        match result {
                            Ok(Ok(conn)) => {
                                let _ = tx.send(conn).await;
                            }
                            Ok(Err(why)) => {
                                warn!("{shown}: refused a connection from {peer}: {why}")
                            }
                            Err(_) => warn!(
                                "{shown}: refused a connection from {peer}: no TLS handshake within {limit:?}"
                            ),
                        }
                    });
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
            let target = socket_addr_of(addr, Scheme::Tls)?;
            let failed = |reason: String| TransportError::Connect {
                addr: addr.to_string(),
                reason,
            };
            let attempt = async {
                let stream = TcpStream::connect(&target)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                stream.set_nodelay(true)?;
                let local = net_address(Scheme::Tls, stream.local_addr()?);
                let peer = net_address(Scheme::Tls, stream.peer_addr()?);
                let host = addr.host().map(|h| h.to_string());
                let tls = connect_stream(&self.tls, stream, host.as_deref())
                    .await
                    .map_err(|e| {
                        failed(
                            e.to_string()
                                .replace("plain listener", "plain tcp:// listener"),
                        )
                    })?;
                Ok(wrap(tls, local, peer, cfg.clone()))
            };
            match timeout(cfg.connect_timeout, attempt).await {
                Ok(r) => r,
                Err(_) => Err(TransportError::ConnectTimeout {
                    addr: addr.to_string(),
                    secs: cfg.connect_timeout.as_secs_f64(),
                }),
            }
        })
    }
}
