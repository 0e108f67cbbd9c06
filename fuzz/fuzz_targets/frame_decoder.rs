//! The framing codec on attacker bytes, fed in attacker-chosen chunks, under small limits (and,
//! for half the inputs, capped as in a handshake): it may return messages or an error, never
//! panic; a capped decoder returns no message over its cap; a message it returns re-encodes to
//! bytes it decodes to the same message.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use taskwire_transport::TransportConfig;
use taskwire_transport::codec::{Decoder, encode_into};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    // The high bit of the first byte: decode as a connection in its handshake (capped).
    let cap = (chunk & 0x80 != 0).then_some(256);
    let chunk = usize::from(chunk & 0x7f).max(1);
    let cfg = TransportConfig {
        max_header: 1 << 16,
        max_frame: 1 << 16,
        max_frames: 64,
        ..TransportConfig::default()
    };
    let mut decoder = Decoder::new(cfg.clone());
    decoder.cap_message(cap);
    let mut buf = BytesMut::new();
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(msg)) => {
                    if let Some(cap) = cap {
                        assert!(msg.header.len() <= cap && msg.frames.is_empty());
                    }
                    let mut again = BytesMut::new();
                    encode_into(&msg, &mut again);
                    let mut d2 = Decoder::new(cfg.clone());
                    let back = d2.decode(&mut again).expect("re-decodes").expect("whole");
                    assert_eq!(back, msg);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = decoder.finish(&buf);
});
