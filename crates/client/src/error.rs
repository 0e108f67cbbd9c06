//! The client's error type.

use taskwire_protocol::{HandshakeError, TaskErrorMsg};
use taskwire_transport::{AddressError, TransportError};

/// Everything a client operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The scheduler address could not be parsed.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// The scheduler could not be reached.
    #[error("could not connect to the scheduler at {addr}: {source}")]
    Connect {
        /// Where we tried.
        addr: String,
        /// Why it failed.
        source: TransportError,
    },
    /// The scheduler (or a worker) refused the handshake or does not speak our protocol.
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// Who refused.
        addr: String,
        /// What the handshake said.
        source: HandshakeError,
    },
    /// Sending or receiving on the scheduler connection failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The scheduler refused a submitted graph as a whole.
    #[error("graph rejected by the scheduler: {0}")]
    GraphRejected(String),
    /// The scheduler refused to retire the workers named.
    #[error("retire_workers refused: {0}")]
    Retire(String),
    /// The scheduler refused a scatter, or putting the data on a worker failed.
    #[error("scatter failed: {0}")]
    Scatter(String),
    /// The task (or one of its dependencies) failed.
    #[error("task '{key}' failed: {}", error.message)]
    Task {
        /// The key whose result was asked for.
        key: String,
        /// The error the scheduler reported.
        error: TaskErrorMsg,
    },
    /// The key was cancelled.
    #[error("task '{0}' was cancelled")]
    Cancelled(String),
    /// The result is in memory but could not be fetched from the worker that holds it.
    #[error("could not fetch the result of '{key}': {reason}")]
    Fetch {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The result was fetched but is not of the type asked for.
    #[error("could not decode the result of '{key}': {reason}")]
    Decode {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The connection to the scheduler is closed (by [`Client::close`](crate::Client::close) or
    /// because it dropped).
    #[error("the connection to the scheduler is closed")]
    Closed,
    /// The scheduler sent something this client cannot make sense of.
    #[error("protocol error: {0}")]
    Protocol(String),
}
