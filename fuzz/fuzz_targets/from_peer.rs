//! Attacker bytes as a `FromPeer` header (see `taskwire_fuzz::message_round_trip` for what is
//! checked besides "no panic").
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskwire_protocol::FromPeer;

fuzz_target!(|data: &[u8]| taskwire_fuzz::message_round_trip::<FromPeer>(data));
