//! Attacker bytes as a `FromClient` header (see `taskwire_fuzz::message_round_trip` for what is
//! checked besides "no panic").
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskwire_protocol::FromClient;

fuzz_target!(|data: &[u8]| taskwire_fuzz::message_round_trip::<FromClient>(data));
