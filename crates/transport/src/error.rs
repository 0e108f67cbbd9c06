//! The transport error type.

use crate::address::{AddressError, Scheme};

/// Everything that can go wrong moving messages. A peer's bad bytes are values here, never
/// panics, and they close only the connection they arrived on.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The address could not be parsed.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// No transport is registered for the scheme.
    #[error("no transport for scheme '{scheme}'{hint}")]
    UnsupportedScheme {
        /// The scheme asked for.
        scheme: Scheme,
        /// How to get one (e.g. build with a feature).
        hint: String,
    },
    /// The address is not one this transport can use.
    #[error("transport cannot use address '{0}'")]
    WrongAddress(String),
    /// Connecting failed.
    #[error("could not connect to {addr}: {reason}")]
    Connect {
        /// Where to.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Connecting took longer than the configured timeout.
    #[error("timed out connecting to {addr} after {secs:.1}s")]
    ConnectTimeout {
        /// Where to.
        addr: String,
        /// The timeout.
        secs: f64,
    },
    /// Listening failed.
    #[error("could not listen on {addr}: {reason}")]
    Listen {
        /// Where.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The stream does not start with a message prelude: not a Taskwire peer, or corrupted.
    #[error("garbage on the connection (bad frame magic {found:#010x})")]
    BadMagic {
        /// What was there instead.
        found: u32,
    },
    /// The peer answered with TLS records: a `tls://` endpoint reached with plain `tcp://`, or
    /// a TLS client at a plain listener.
    #[error(
        "the peer speaks TLS: use its tls:// address, with the cluster's certificates \
         (--tls-ca-file, --tls-cert, --tls-key)"
    )]
    PeerSpeaksTls,
    /// A header longer than allowed.
    #[error("message header of {len} bytes exceeds the limit of {max} bytes")]
    HeaderTooLarge {
        /// Announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A payload frame longer than allowed.
    #[error("payload frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Announced length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// More payload frames than allowed.
    #[error("message with {count} payload frames exceeds the limit of {max}")]
    TooManyFrames {
        /// Announced count.
        count: u64,
        /// The limit.
        max: usize,
    },
    /// The peer closed the stream in the middle of a message.
    #[error("connection closed in the middle of a message ({have} of {need} bytes received)")]
    Truncated {
        /// Bytes of the message received.
        have: usize,
        /// Bytes the message announced.
        need: usize,
    },
    /// The connection is closed (by us, the peer, or an earlier error).
    #[error("connection closed")]
    Closed,
    /// A message started arriving and was not finished within the receiver's time limit (a
    /// peer trickling bytes to hold the connection).
    #[error("a message started arriving and was not finished within {0:?}")]
    SlowMessage(std::time::Duration),
    /// An I/O error from the operating system.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A transport-specific failure (e.g. a UCX status).
    #[error("{0}")]
    Other(String),
}
