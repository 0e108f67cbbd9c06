//! Taskwire's transport layer.
//!
//! Everything that moves bytes between Taskwire processes goes through here:
//!
//! - [`Address`]: `tcp://host:port`, `tls://host:port`, `inproc://name`, `ucx://host:port`;
//! - [`Message`]: an opaque header (the protocol crate's rkyv archive) plus zero or more payload
//!   frames (`bytes::Bytes`). Payload frames are never copied into the header, and receivers get
//!   them as slices of their read buffer;
//! - [`Transport`], [`Listener`] and [`Connection`]: the one way every transport is driven. A
//!   connection is a [`ConnSender`] (cloneable, bounded queue, back-pressure) and a
//!   [`ConnReceiver`]; a transport supplies the halves ([`SendHalf`] is a queue drained by the
//!   transport's writer, [`RecvHalf`] a poll-based reader), so no transport boxes a future per
//!   message;
//! - the framing codec ([`codec`]) used by every byte-stream transport, with limits
//!   ([`TransportConfig`]) that turn oversized, truncated or garbage input into a typed error
//!   that closes only that connection;
//! - [`Registry`]: picks the transport from an address's scheme;
//! - [`mem`]: an in-memory transport for tests and in-process clusters;
//! - [`fabric`]: dask-cuda's fabric flags (`--enable-infiniband`, ...) mapped to the UCX
//!   environment, shared by every command that takes them (needs no UCX);
//! - `conformance` (feature `conformance`): the test suite every transport must pass.
//!
//! It does not know what the messages mean (that is `taskwire-protocol`) and holds no sockets
//! itself (those are `taskwire-transport-tcp` and `taskwire-transport-ucx`).

mod address;
pub mod codec;
mod config;
mod connection;
mod error;
pub mod fabric;
pub mod mem;
mod registry;
pub mod stream;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use address::{Address, AddressError, Scheme};
pub use config::TransportConfig;
pub use connection::{ConnReceiver, ConnSender, Connection, Listener, Message, Outbox, RecvHalf};
pub use error::TransportError;
pub use registry::{BoxFuture, Registry, Transport};
