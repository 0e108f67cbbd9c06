//! Taskwire's wire protocol.
//!
//! This crate defines what crosses the wire between a client, the scheduler, workers and peers:
//! id newtypes, the handshake that opens every connection, and one message enum per direction
//! (`FromClient`/`ToClient`, `FromWorker`/`ToWorker`, `ToPeer`/`FromPeer`). Messages are archived
//! with rkyv and validated with bytecheck on receive ([`decode`], [`access`]); a header that
//! fails validation is an error value, never undefined behaviour.
//!
//! It deliberately does no I/O: framing, sockets and payload frames live in
//! `taskwire-transport`. Large data (task results, scattered inputs) never goes into a header:
//! messages that carry data say so, and the data travels as the message's payload frames.

pub mod auth;
mod codec;
#[cfg(feature = "connection")]
pub mod connection;
mod handshake;
mod ids;
// rkyv's derive emits resolver types for enum variants without docs; every type written
// here is documented by hand.
#[allow(missing_docs)]
mod messages;

pub use auth::{
    AUTH_FAILED, ClientHandshake, ClientStep, ClusterSecret, SecretError, ServerHandshake,
    ServerStep, control_challenge,
};
pub use codec::{Archived, DecodeError, access, decode, encode, encode_with_capacity};
pub use handshake::{
    HANDSHAKE_MAGIC, HandshakeError, Hello, PROTOCOL_VERSION, Role, Welcome, read_hello,
    read_welcome,
};
pub use ids::{ClientId, TaskId, WorkerId};
pub use messages::*;
