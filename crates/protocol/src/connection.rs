//! The handshake driven over a [`Connection`] (feature `connection`): what every listener and
//! every connecting side runs before its first message.

use crate::auth::{ClientHandshake, ClientStep, ServerHandshake, ServerStep};
use crate::handshake::{HandshakeError, Hello, MAX_HANDSHAKE_MESSAGE};
use std::time::Duration;
use taskwire_transport::{Connection, Message, TransportError};
use tokio::time::{Instant, timeout_at};

/// Why the accepting side of a handshake ended without a peer.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The peer did not finish its handshake in time (it connected and said nothing, or too
    /// little).
    #[error("no handshake within {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection before its handshake was done.
    #[error("{0}")]
    Closed(&'static str),
    /// The connection failed.
    #[error("connection failed during the handshake: {0}")]
    Transport(#[from] TransportError),
    /// The peer was refused (and told so); why, for the log.
    #[error("{0}")]
    Refused(String),
    /// The peer did not prove the cluster token (and was told so, where it waited to hear);
    /// why, for the log.
    #[error("authentication failed: {0}")]
    AuthFailed(String),
}

impl AcceptError {
    /// Whether the peer failed to authenticate (as opposed to going away or speaking garbage).
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, AcceptError::AuthFailed(_))
    }
}

/// Run the accepting side of the handshake within `limit`. On `Ok` the peer is in and the
/// caller answers with [`Welcome::accept`](crate::Welcome::accept) (or refuses its role); on
/// `Err` any refusal has been sent.
pub async fn accept(
    conn: &mut Connection,
    handshake: ServerHandshake,
    limit: Duration,
) -> Result<Hello, AcceptError> {
    // A peer that has not authenticated may not make us buffer more than a handshake.
    conn.receiver.cap_message(Some(MAX_HANDSHAKE_MESSAGE));
    let r = accept_capped(conn, handshake, limit).await;
    conn.receiver.cap_message(None);
    r
}

async fn accept_capped(
    conn: &mut Connection,
    mut handshake: ServerHandshake,
    limit: Duration,
) -> Result<Hello, AcceptError> {
    let deadline = Instant::now() + limit;
    let mut challenged = false;
    loop {
        let msg = match timeout_at(deadline, conn.recv()).await {
            Err(_) => return Err(AcceptError::Timeout(limit)),
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) if challenged => {
                return Err(AcceptError::AuthFailed(
                    "closed the connection without proving the cluster token (wrong token?)".into(),
                ));
            }
            Ok(Ok(None)) => return Err(AcceptError::Closed("closed before its handshake")),
            Ok(Err(e)) => return Err(e.into()),
        };
        match handshake.on_message(&msg.header) {
            ServerStep::Accept(hello) => return Ok(hello),
            ServerStep::Reply(bytes) => {
                challenged = true;
                match timeout_at(deadline, conn.send(Message::new(bytes))).await {
                    Ok(r) => r?,
                    Err(_) => return Err(AcceptError::Timeout(limit)),
                }
            }
            ServerStep::Refuse {
                reply,
                reason,
                auth_failure,
            } => {
                let _ = timeout_at(deadline, conn.send(Message::new(reply))).await;
                return Err(if auth_failure {
                    AcceptError::AuthFailed(reason)
                } else {
                    AcceptError::Refused(reason)
                });
            }
        }
    }
}

/// Why the connecting side of a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connection failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// No answer in time: whatever listens there is not a Taskwire peer, or is stuck.
    #[error("no handshake answer within {0:.1?}")]
    Timeout(Duration),
    /// Refused, or the exchange failed (authentication included).
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

/// Run the connecting side of the handshake within `limit`; the peer's name on success.
pub async fn connect(
    conn: &mut Connection,
    handshake: ClientHandshake,
    limit: Duration,
) -> Result<String, ConnectError> {
    // Nor may a peer posing as a server.
    conn.receiver.cap_message(Some(MAX_HANDSHAKE_MESSAGE));
    let r = connect_capped(conn, handshake, limit).await;
    conn.receiver.cap_message(None);
    r
}

async fn connect_capped(
    conn: &mut Connection,
    mut handshake: ClientHandshake,
    limit: Duration,
) -> Result<String, ConnectError> {
    let deadline = Instant::now() + limit;
    conn.send(Message::new(handshake.hello())).await?;
    loop {
        let msg = match timeout_at(deadline, conn.recv_msg()).await {
            Err(_) => return Err(ConnectError::Timeout(limit)),
            Ok(m) => m?,
        };
        match handshake.on_message(&msg.header)? {
            ClientStep::Accepted(name) => return Ok(name),
            ClientStep::Send(bytes) => conn.send(Message::new(bytes)).await?,
        }
    }
}
