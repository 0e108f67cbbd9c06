//! CPU cost of one whole handshake, both sides, without and with a cluster token (the token
//! adds two nonces from the OS, four HMAC-SHA256 and two more messages; on the wire it adds one
//! round trip).
//!
//! Run with `cargo bench -p taskwire-protocol --bench handshake`.

use criterion::Criterion;
use std::hint::black_box;
use taskwire_protocol::{
    ClientHandshake, ClientStep, ClusterSecret, Role, ServerHandshake, ServerStep, Welcome,
};

/// The `taskwire` binary's allocator, so allocation costs match what users get.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn exchange(secret: Option<&ClusterSecret>) -> String {
    let mut c = ClientHandshake::new(Role::Worker, "worker-12", secret.cloned());
    let mut s = ServerHandshake::new(secret.cloned());
    let mut to_server = c.hello();
    loop {
        let to_client = match s.on_message(&to_server) {
            ServerStep::Accept(_) => Welcome::accept("tcp://10.0.0.5:8786").encode(),
            ServerStep::Reply(b) => b,
            ServerStep::Refuse { reason, .. } => panic!("{reason}"),
        };
        match c.on_message(&to_client).unwrap() {
            ClientStep::Accepted(name) => return name,
            ClientStep::Send(b) => to_server = b,
        }
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let secret = ClusterSecret::generate();
    c.bench_function("handshake/no-token", |b| {
        b.iter(|| black_box(exchange(None)))
    });
    c.bench_function("handshake/token", |b| {
        b.iter(|| black_box(exchange(Some(&secret))))
    });
    c.final_summary();
}
