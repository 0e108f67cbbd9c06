//! Per-connection limits and timeouts.

use std::time::Duration;

/// Limits and timeouts every transport honours. The defaults follow Dask's where it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportConfig {
    /// Largest header accepted or sent (default 64 MiB).
    pub max_header: usize,
    /// Largest single payload frame accepted or sent (default 1 GiB).
    pub max_frame: u64,
    /// Most payload frames in one message (default 65,536).
    pub max_frames: usize,
    /// Messages a sender may queue before `send` waits (back-pressure).
    pub send_queue: usize,
    /// How long `connect` may take before it fails.
    pub connect_timeout: Duration,
    /// Listen backlog (Dask: 2048).
    pub backlog: u32,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_header: 64 << 20,
            max_frame: 1 << 30,
            max_frames: 65_536,
            send_queue: 4096,
            connect_timeout: Duration::from_secs(10),
            backlog: 2048,
        }
    }
}
