//! The framing codec every byte-stream transport uses.
//!
//! One message on the wire, all integers little-endian (Dask's layout, counts and lengths up
//! front, plus a magic so garbage is caught on the first bytes):
//!
//! ```text
//! magic u32 = "TWM1" | nframes u32 | header_len u64 | frame_len u64 × nframes | zero pad to 16
//! header bytes | payload frames, back to back | zero pad to 16
//! ```
//!
//! Padding keeps every header 16-byte aligned inside a receive buffer that starts aligned, so
//! rkyv can read it in place. Lengths are checked against [`TransportConfig`] before any
//! buffer is sized from them.

use crate::config::TransportConfig;
use crate::connection::Message;
use crate::error::TransportError;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// "TWM1" read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"TWM1");
const ALIGN: usize = 16;
/// Zero bytes used for padding.
pub static PADDING: [u8; ALIGN] = [0; ALIGN];

fn pad(n: usize) -> usize {
    (ALIGN - n % ALIGN) % ALIGN
}

/// Length of the prelude (magic, counts, lengths, padding) for `nframes` payload frames.
pub fn prelude_len(nframes: usize) -> usize {
    let raw = 16 + 8 * nframes;
    raw + pad(raw)
}

/// Bytes the whole message occupies on the wire.
pub fn wire_len(msg: &Message) -> usize {
    let body = msg.header.len() + msg.frames.iter().map(Bytes::len).sum::<usize>();
    let n = prelude_len(msg.frames.len()) + body;
    n + pad(n)
}

/// Padding after the payload so the next message starts aligned.
pub fn trailer_len(msg: &Message) -> usize {
    let body = msg.header.len() + msg.frames.iter().map(Bytes::len).sum::<usize>();
    pad(prelude_len(msg.frames.len()) + body)
}

/// Check a message against the limits before it is queued, so the sender hears of it and not
/// only the receiver.
pub fn check_outgoing(msg: &Message, cfg: &TransportConfig) -> Result<(), TransportError> {
    if msg.header.len() > cfg.max_header {
        return Err(TransportError::HeaderTooLarge {
            len: msg.header.len() as u64,
            max: cfg.max_header,
        });
    }
    if msg.frames.len() > cfg.max_frames {
        return Err(TransportError::TooManyFrames {
            count: msg.frames.len() as u64,
            max: cfg.max_frames,
        });
    }
    for f in &msg.frames {
        if f.len() as u64 > cfg.max_frame {
            return Err(TransportError::FrameTooLarge {
                len: f.len() as u64,
                max: cfg.max_frame,
            });
        }
    }
    Ok(())
}

/// Write the prelude for `msg` into `out`.
pub fn put_prelude(msg: &Message, out: &mut BytesMut) {
    let n = msg.frames.len();
    out.reserve(prelude_len(n));
    out.put_u32_le(MAGIC);
    out.put_u32_le(n as u32);
    out.put_u64_le(msg.header.len() as u64);
    for f in &msg.frames {
        out.put_u64_le(f.len() as u64);
    }
    out.put_slice(&PADDING[..pad(16 + 8 * n)]);
}

/// Encode a whole message into one contiguous buffer (tests, fuzzing, small messages).
pub fn encode_into(msg: &Message, out: &mut BytesMut) {
    put_prelude(msg, out);
    out.put_slice(&msg.header);
    for f in &msg.frames {
        out.put_slice(f);
    }
    out.put_slice(&PADDING[..trailer_len(msg)]);
}

/// The error for a stream that does not start with [`MAGIC`]: a TLS record (content type
/// 20-23, version 3.x) means a TLS peer on a plain connection, which deserves its own words.
fn bad_magic(buf: &[u8], found: u32) -> TransportError {
    if matches!(buf, [0x14..=0x17, 0x03, 0x00..=0x04, ..]) {
        TransportError::PeerSpeaksTls
    } else {
        TransportError::BadMagic { found }
    }
}

#[derive(Debug)]
struct Pending {
    prelude: usize,
    header_len: usize,
    frame_lens: Vec<usize>,
    total: usize,
}

/// Incremental decoder: feed it a buffer that grows as bytes arrive; it splits complete
/// messages off the front without copying payloads.
#[derive(Debug)]
pub struct Decoder {
    cfg: TransportConfig,
    pending: Option<Pending>,
    /// A tighter header limit, and no payload frames, while set (see [`Decoder::cap_message`]).
    cap: Option<usize>,
}

impl Decoder {
    /// A decoder enforcing `cfg`'s limits.
    pub fn new(cfg: TransportConfig) -> Decoder {
        Decoder {
            cfg,
            pending: None,
            cap: None,
        }
    }

    /// While `Some(n)`, messages may carry at most `n` header bytes and no payload frames
    /// (what a connection's handshake needs, so a peer that has not authenticated cannot make
    /// the receiver buffer a large message); `None` restores the configured limits. Applies
    /// from the next message whose prelude is read.
    pub fn cap_message(&mut self, cap: Option<usize>) {
        self.cap = cap;
    }

    /// Total bytes the message being decoded needs, once its prelude has been read.
    pub fn needed(&self) -> Option<usize> {
        self.pending.as_ref().map(|p| p.total)
    }

    /// True while part of a message has been consumed from the stream's point of view.
    pub fn in_message(&self, buf: &BytesMut) -> bool {
        self.pending.is_some() || !buf.is_empty()
    }

    /// Take one complete message off the front of `buf`, if there is one.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, TransportError> {
        if self.pending.is_none() {
            if buf.len() < 16 {
                // Catch garbage as early as possible rather than waiting for 16 bytes.
                if buf.len() >= 4 {
                    let magic = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
                    if magic != MAGIC {
                        return Err(bad_magic(buf, magic));
                    }
                }
                return Ok(None);
            }
            let mut head = &buf[..16];
            let magic = head.get_u32_le();
            if magic != MAGIC {
                return Err(bad_magic(buf, magic));
            }
            let nframes = head.get_u32_le() as usize;
            let header_len = head.get_u64_le();
            let (max_frames, max_header) = match self.cap {
                Some(cap) => (0, cap.min(self.cfg.max_header)),
                None => (self.cfg.max_frames, self.cfg.max_header),
            };
            if nframes > max_frames {
                return Err(TransportError::TooManyFrames {
                    count: nframes as u64,
                    max: max_frames,
                });
            }
            if header_len > max_header as u64 {
                return Err(TransportError::HeaderTooLarge {
                    len: header_len,
                    max: max_header,
                });
            }
            let prelude = prelude_len(nframes);
            if buf.len() < prelude {
                return Ok(None);
            }
            let mut lens = &buf[16..16 + 8 * nframes];
            let mut frame_lens = Vec::with_capacity(nframes);
            let mut body = header_len as usize;
            for _ in 0..nframes {
                let len = lens.get_u64_le();
                if len > self.cfg.max_frame {
                    return Err(TransportError::FrameTooLarge {
                        len,
                        max: self.cfg.max_frame,
                    });
                }
                // Bounded by max_frames * max_frame, far below usize::MAX on 64-bit.
                body += len as usize;
                frame_lens.push(len as usize);
            }
            let unpadded = prelude + body;
            let total = unpadded + pad(unpadded);
            self.pending = Some(Pending {
                prelude,
                header_len: header_len as usize,
                frame_lens,
                total,
            });
        }
        let p = self.pending.as_ref().expect("pending prelude");
        if buf.len() < p.total {
            return Ok(None);
        }
        let p = self.pending.take().expect("pending prelude");
        let whole = buf.split_to(p.total).freeze();
        let mut at = p.prelude;
        let header = whole.slice(at..at + p.header_len);
        at += p.header_len;
        let mut frames = Vec::with_capacity(p.frame_lens.len());
        for len in p.frame_lens {
            frames.push(whole.slice(at..at + len));
            at += len;
        }
        Ok(Some(Message { header, frames }))
    }

    /// Called at end of stream: `Ok(())` when it ended between messages.
    pub fn finish(&self, buf: &BytesMut) -> Result<(), TransportError> {
        match &self.pending {
            None if buf.is_empty() => Ok(()),
            None => Err(TransportError::Truncated {
                have: buf.len(),
                need: prelude_len(0).max(buf.len() + 1),
            }),
            Some(p) => Err(TransportError::Truncated {
                have: buf.len(),
                need: p.total,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(header: &[u8], frames: &[&[u8]]) -> Message {
        Message {
            header: Bytes::copy_from_slice(header),
            frames: frames.iter().map(|f| Bytes::copy_from_slice(f)).collect(),
        }
    }

    fn cfg() -> TransportConfig {
        TransportConfig::default()
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let msgs = [
            msg(b"", &[]),
            msg(b"hello", &[b"a", b"", b"0123456789abcdef0"]),
            msg(&[7; 100], &[&[1; 3]]),
        ];
        let mut wire = BytesMut::new();
        for m in &msgs {
            let before = wire.len();
            encode_into(m, &mut wire);
            assert_eq!(wire.len() - before, wire_len(m));
            assert_eq!(wire.len() % 16, 0);
        }
        let mut dec = Decoder::new(cfg());
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(m) = dec.decode(&mut buf).unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out, msgs);
        dec.finish(&buf).unwrap();
    }

    #[test]
    fn payloads_are_slices_of_the_read_buffer() {
        let m = msg(b"h", &[&[9; 4096]]);
        let mut wire = BytesMut::new();
        encode_into(&m, &mut wire);
        let base = wire.as_ptr() as usize;
        let end = base + wire.len();
        let got = Decoder::new(cfg()).decode(&mut wire).unwrap().unwrap();
        let p = got.frames[0].as_ptr() as usize;
        assert!(p >= base && p < end, "payload was copied");
        assert_eq!(
            got.header.as_ptr() as usize % 16,
            base % 16,
            "header not aligned like the buffer"
        );
    }

    #[test]
    fn limits_and_garbage_are_typed_errors() {
        let mut huge = BytesMut::new();
        huge.put_u32_le(MAGIC);
        huge.put_u32_le(1);
        huge.put_u64_le(0);
        huge.put_u64_le(1 << 63);
        huge.put_u64_le(0);
        assert!(matches!(
            Decoder::new(cfg()).decode(&mut huge),
            Err(TransportError::FrameTooLarge { .. })
        ));

        let mut big_header = BytesMut::new();
        big_header.put_u32_le(MAGIC);
        big_header.put_u32_le(0);
        big_header.put_u64_le(u64::MAX);
        assert!(matches!(
            Decoder::new(cfg()).decode(&mut big_header),
            Err(TransportError::HeaderTooLarge { .. })
        ));

        let mut many = BytesMut::new();
        many.put_u32_le(MAGIC);
        many.put_u32_le(u32::MAX);
        many.put_u64_le(0);
        assert!(matches!(
            Decoder::new(cfg()).decode(&mut many),
            Err(TransportError::TooManyFrames { .. })
        ));

        let mut garbage = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(matches!(
            Decoder::new(cfg()).decode(&mut garbage),
            Err(TransportError::BadMagic { .. })
        ));
        let mut early = BytesMut::from(&b"GET "[..]);
        assert!(matches!(
            Decoder::new(cfg()).decode(&mut early),
            Err(TransportError::BadMagic { .. })
        ));
        // A TLS alert (what a tls:// listener answers a plain peer) and a ClientHello's first
        // bytes (a TLS client at a plain listener) are named as TLS.
        for tls in [
            &[0x15u8, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0a][..],
            &[0x16, 0x03, 0x01, 0x02],
        ] {
            let mut buf = BytesMut::from(tls);
            let e = Decoder::new(cfg()).decode(&mut buf).unwrap_err();
            assert!(matches!(e, TransportError::PeerSpeaksTls), "{e}");
            assert!(e.to_string().contains("tls://"), "{e}");
        }
    }

    #[test]
    fn truncation_is_reported_at_end_of_stream() {
        let mut wire = BytesMut::new();
        encode_into(&msg(b"header", &[b"payload"]), &mut wire);
        for cut in 1..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut dec = Decoder::new(cfg());
            assert!(dec.decode(&mut buf).unwrap().is_none());
            assert!(
                matches!(dec.finish(&buf), Err(TransportError::Truncated { .. })),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn outgoing_limits() {
        let small = TransportConfig {
            max_header: 4,
            max_frame: 4,
            max_frames: 1,
            ..cfg()
        };
        assert!(check_outgoing(&msg(b"12345", &[]), &small).is_err());
        assert!(check_outgoing(&msg(b"", &[b"12345"]), &small).is_err());
        assert!(check_outgoing(&msg(b"", &[b"1", b"2"]), &small).is_err());
        assert!(check_outgoing(&msg(b"1234", &[b"1234"]), &small).is_ok());
    }

    /// While capped (a connection in its handshake), a large header or any payload frame is
    /// refused at the prelude, before the body is read; uncapped, the same messages pass.
    #[test]
    fn a_capped_decoder_refuses_big_messages_at_the_prelude() {
        let big = msg(&[1; 200], &[]);
        let framed = msg(b"x", &[b"frame"]);
        let small = msg(&[2; 100], &[]);
        for (m, ok) in [(&big, false), (&framed, false), (&small, true)] {
            let mut wire = BytesMut::new();
            encode_into(m, &mut wire);
            // The prelude alone decides.
            let mut prelude = BytesMut::from(&wire[..prelude_len(m.frames.len())]);
            let mut dec = Decoder::new(cfg());
            dec.cap_message(Some(128));
            let r = dec.decode(&mut prelude);
            assert_eq!(r.is_ok(), ok, "{r:?}");
            let mut dec = Decoder::new(cfg());
            dec.cap_message(Some(128));
            dec.cap_message(None);
            assert_eq!(dec.decode(&mut wire).unwrap().as_ref(), Some(m));
        }
    }
}
