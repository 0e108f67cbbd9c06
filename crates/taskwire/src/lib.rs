//! Taskwire: a distributed task runtime in the spirit of dask.distributed, with a Rust core.
//!
//! This facade re-exports the public API of the Taskwire crates; the `taskwire` binary in this
//! crate is the command-line interface (`taskwire scheduler`, `taskwire worker`,
//! `taskwire local`, `taskwire submit`, `taskwire bench ...`).

pub use taskwire_protocol as protocol;
pub use taskwire_transport as transport;
pub use taskwire_transport_tcp as transport_tcp;
