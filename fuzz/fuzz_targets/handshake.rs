//! Every handshake parser on attacker bytes: the accepting side (with and without a cluster
//! token, first message and the proof after a challenge) and the connecting side (answers and
//! challenges). None may panic; the accepting side must never let an unauthenticated peer in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskwire_protocol::{
    ClientHandshake, ClusterSecret, Role, ServerHandshake, ServerStep, read_hello, read_welcome,
};

fuzz_target!(|data: &[u8]| {
    let _ = read_hello(data);
    let _ = read_welcome(data);
    let secret = ClusterSecret::new("fuzz-token").expect("token");

    // Accepting side without a token: any parse result, no panic.
    let _ = ServerHandshake::new(None).on_message(data);

    // Accepting side with a token: the first message alone never gets a peer in.
    let mut s = ServerHandshake::new(Some(secret.clone()));
    assert!(!matches!(s.on_message(data), ServerStep::Accept(_)));

    // After a genuine challenge, attacker bytes as the proof never get a peer in either.
    let c = ClientHandshake::new(Role::Client, "fuzz", Some(secret.clone()));
    let mut s = ServerHandshake::new(Some(secret.clone()));
    if let ServerStep::Reply(_) = s.on_message(&c.hello()) {
        assert!(!matches!(s.on_message(data), ServerStep::Accept(_)));
    }

    // Connecting side, with and without a token, on attacker answers.
    let _ = ClientHandshake::new(Role::Worker, "w", None).on_message(data);
    let mut c = ClientHandshake::new(Role::Worker, "w", Some(secret));
    let _ = c.on_message(data);
    let _ = c.on_message(data);
});
