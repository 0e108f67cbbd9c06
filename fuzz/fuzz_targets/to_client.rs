//! Attacker bytes as a `ToClient` header (see `taskwire_fuzz::message_round_trip` for what is
//! checked besides "no panic").
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskwire_protocol::ToClient;

fuzz_target!(|data: &[u8]| taskwire_fuzz::message_round_trip::<ToClient>(data));
