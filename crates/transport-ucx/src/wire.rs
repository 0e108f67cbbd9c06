//! How a [`Message`] travels as UCP active messages.
//!
//! Every message is one active message. Its AM header carries a sequence number (the receiver
//! delivers in that order even when a rendezvous transfer finishes after a later eager one) and,
//! when it fits, the codec prelude (magic, frame count, header and frame lengths) so that the
//! receiver checks the limits before it allocates anything. The AM data is the message header
//! followed by the payload frames, sent from where they lie (an IOV datatype) and received into
//! one buffer that is then split into `Bytes` without copying.
//!
//! | AM id | AM header | AM data |
//! |---|---|---|
//! | `HELLO` (client → server) | magic `TWU1`, version u32 | – |
//! | `HELLO_ACK` (server → client) | magic, version | – |
//! | `MSG` | seq u64, prelude | header, frames |
//! | `MSG_LONG` (prelude too big for an AM header) | seq u64 | prelude, header, frames |
//! | `CLOSE` (sender dropped: end of stream) | seq u64 = messages sent | – |
//!
//! All integers are little-endian; the prelude is [`taskwire_transport::codec`]'s.

use bytes::{Bytes, BytesMut};
use taskwire_transport::codec;
use taskwire_transport::{Message, TransportConfig, TransportError};

pub(crate) const AM_HELLO: u32 = 0x5457_0001;
pub(crate) const AM_HELLO_ACK: u32 = 0x5457_0002;
pub(crate) const AM_MSG: u32 = 0x5457_0003;
pub(crate) const AM_MSG_LONG: u32 = 0x5457_0004;
pub(crate) const AM_CLOSE: u32 = 0x5457_0005;

/// "TWU1" little-endian, then the protocol version.
const HELLO_MAGIC: u32 = u32::from_le_bytes(*b"TWU1");
const VERSION: u32 = 1;

/// The hello (and its ack) header.
pub(crate) const HELLO: [u8; 8] = {
    let m = HELLO_MAGIC.to_le_bytes();
    let v = VERSION.to_le_bytes();
    [m[0], m[1], m[2], m[3], v[0], v[1], v[2], v[3]]
};

/// Check a peer's hello; the error says what is wrong.
pub(crate) fn check_hello(h: &[u8]) -> Result<(), String> {
    if h.len() != 8 || h[..4] != HELLO_MAGIC.to_le_bytes() {
        return Err("peer is not a Taskwire UCX endpoint (bad hello)".into());
    }
    let v = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
    if v != VERSION {
        return Err(format!(
            "peer speaks Taskwire UCX protocol version {v}, this build speaks {VERSION}"
        ));
    }
    Ok(())
}

/// A message laid out for `ucp_am_send_nbx`: which AM id, the AM header, and the data pieces.
pub(crate) struct Outgoing {
    pub(crate) am_id: u32,
    pub(crate) am_header: Vec<u8>,
    /// For `MSG_LONG`: the prelude, sent as the first data piece.
    pub(crate) data_prelude: Option<Vec<u8>>,
    pub(crate) msg: Message,
}

impl Outgoing {
    /// Lay out `msg` with sequence number `seq`; `max_am_header` is the worker's limit.
    pub(crate) fn new(seq: u64, msg: Message, max_am_header: usize) -> Outgoing {
        let mut prelude = BytesMut::with_capacity(codec::prelude_len(msg.frames.len()));
        codec::put_prelude(&msg, &mut prelude);
        let mut am_header = Vec::with_capacity(8 + prelude.len());
        am_header.extend_from_slice(&seq.to_le_bytes());
        if 8 + prelude.len() <= max_am_header {
            am_header.extend_from_slice(&prelude);
            Outgoing {
                am_id: AM_MSG,
                am_header,
                data_prelude: None,
                msg,
            }
        } else {
            Outgoing {
                am_id: AM_MSG_LONG,
                am_header,
                data_prelude: Some(prelude.to_vec()),
                msg,
            }
        }
    }

    /// The non-empty data pieces, in order, as (pointer, length).
    pub(crate) fn pieces(&self) -> Vec<(*const u8, usize)> {
        let mut v = Vec::with_capacity(2 + self.msg.frames.len());
        if let Some(p) = &self.data_prelude {
            v.push((p.as_ptr(), p.len()));
        }
        for b in std::iter::once(&self.msg.header).chain(&self.msg.frames) {
            if !b.is_empty() {
                v.push((b.as_ptr(), b.len()));
            }
        }
        v
    }

    /// Bytes of data (what the receiver allocates).
    pub(crate) fn data_len(&self) -> usize {
        self.data_prelude.as_ref().map_or(0, Vec::len) + self.msg.len()
    }
}

/// The shape of an incoming message, read from its prelude.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) header_len: usize,
    pub(crate) frame_lens: Vec<usize>,
}

impl Shape {
    pub(crate) fn body_len(&self) -> usize {
        self.header_len + self.frame_lens.iter().sum::<usize>()
    }
}

/// Sequence number of a `MSG`, `MSG_LONG` or `CLOSE` header.
pub(crate) fn seq_of(am_header: &[u8]) -> Result<u64, TransportError> {
    am_header
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| TransportError::Other("ucx: active message header too short".into()))
}

/// Parse and check a prelude against the limits. Returns the shape and the prelude's length.
pub(crate) fn parse_prelude(
    p: &[u8],
    cfg: &TransportConfig,
) -> Result<(Shape, usize), TransportError> {
    let short = || TransportError::Other("ucx: message prelude truncated".into());
    let u32_at = |at: usize| -> Result<u32, TransportError> {
        Ok(u32::from_le_bytes(
            p.get(at..at + 4).ok_or_else(short)?.try_into().expect("4"),
        ))
    };
    let u64_at = |at: usize| -> Result<u64, TransportError> {
        Ok(u64::from_le_bytes(
            p.get(at..at + 8).ok_or_else(short)?.try_into().expect("8"),
        ))
    };
    let magic = u32_at(0)?;
    if magic != codec::MAGIC {
        return Err(TransportError::BadMagic { found: magic });
    }
    let nframes = u32_at(4)? as u64;
    if nframes > cfg.max_frames as u64 {
        return Err(TransportError::TooManyFrames {
            count: nframes,
            max: cfg.max_frames,
        });
    }
    let header_len = u64_at(8)?;
    if header_len > cfg.max_header as u64 {
        return Err(TransportError::HeaderTooLarge {
            len: header_len,
            max: cfg.max_header,
        });
    }
    let mut frame_lens = Vec::with_capacity(nframes as usize);
    for i in 0..nframes as usize {
        let len = u64_at(16 + 8 * i)?;
        if len > cfg.max_frame {
            return Err(TransportError::FrameTooLarge {
                len,
                max: cfg.max_frame,
            });
        }
        frame_lens.push(len as usize);
    }
    let plen = codec::prelude_len(nframes as usize);
    if p.len() < plen {
        return Err(short());
    }
    Ok((
        Shape {
            header_len: header_len as usize,
            frame_lens,
        },
        plen,
    ))
}

/// Split a received body (header then frames, starting at `offset`) into a message; slices
/// share `body`, nothing is copied.
pub(crate) fn split(body: Bytes, offset: usize, shape: &Shape) -> Result<Message, TransportError> {
    if body.len() != offset + shape.body_len() {
        return Err(TransportError::Truncated {
            have: body.len().saturating_sub(offset),
            need: shape.body_len(),
        });
    }
    let mut at = offset;
    let header = body.slice(at..at + shape.header_len);
    at += shape.header_len;
    let mut frames = Vec::with_capacity(shape.frame_lens.len());
    for &len in &shape.frame_lens {
        frames.push(body.slice(at..at + len));
        at += len;
    }
    Ok(Message { header, frames })
}

/// The largest `MSG_LONG` body a receiver accepts before reading its prelude.
pub(crate) fn max_long_len(cfg: &TransportConfig) -> usize {
    let frames = (cfg.max_frames as u64).saturating_mul(cfg.max_frame);
    (codec::prelude_len(cfg.max_frames) as u64)
        .saturating_add(cfg.max_header as u64)
        .saturating_add(frames)
        .min(usize::MAX as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gather(o: &Outgoing) -> Vec<u8> {
        let mut v = Vec::new();
        for (p, n) in o.pieces() {
            // SAFETY: the pieces point into `o`, which is alive and unchanged here.
            v.extend_from_slice(unsafe { std::slice::from_raw_parts(p, n) });
        }
        v
    }

    fn sample(nframes: usize) -> Message {
        Message::with_frames(
            Bytes::from_static(b"header!"),
            (0..nframes)
                .map(|i| Bytes::from(vec![i as u8; i % 5]))
                .collect(),
        )
    }

    #[test]
    fn short_prelude_rides_in_the_am_header() {
        let cfg = TransportConfig::default();
        let msg = sample(3);
        let o = Outgoing::new(7, msg.clone(), 8000);
        assert_eq!(o.am_id, AM_MSG);
        assert_eq!(seq_of(&o.am_header).unwrap(), 7);
        let (shape, _) = parse_prelude(&o.am_header[8..], &cfg).unwrap();
        let data = gather(&o);
        assert_eq!(data.len(), o.data_len());
        assert_eq!(split(Bytes::from(data), 0, &shape).unwrap(), msg);
    }

    #[test]
    fn long_prelude_rides_in_the_data() {
        let cfg = TransportConfig::default();
        let msg = sample(2000);
        let o = Outgoing::new(1, msg.clone(), 8000);
        assert_eq!(o.am_id, AM_MSG_LONG);
        assert_eq!(o.am_header.len(), 8);
        let data = Bytes::from(gather(&o));
        let (shape, plen) = parse_prelude(&data, &cfg).unwrap();
        assert_eq!(split(data, plen, &shape).unwrap(), msg);
    }

    #[test]
    fn limits_are_checked_before_allocating() {
        let cfg = TransportConfig {
            max_header: 4,
            ..Default::default()
        };
        let o = Outgoing::new(0, sample(1), 8000);
        assert!(matches!(
            parse_prelude(&o.am_header[8..], &cfg),
            Err(TransportError::HeaderTooLarge { len: 7, max: 4 })
        ));
        assert!(matches!(
            parse_prelude(b"GET / HTTP/1.1\r\n", &cfg),
            Err(TransportError::BadMagic { .. })
        ));
        assert!(parse_prelude(&o.am_header[8..20], &cfg).is_err());
        let (shape, _) = parse_prelude(&o.am_header[8..], &TransportConfig::default()).unwrap();
        assert!(matches!(
            split(Bytes::from_static(b"short"), 0, &shape),
            Err(TransportError::Truncated { .. })
        ));
    }

    #[test]
    fn hello_is_checked() {
        assert!(check_hello(&HELLO).is_ok());
        assert!(
            check_hello(b"TWU1\x02\0\0\0")
                .unwrap_err()
                .contains("version 2")
        );
        assert!(check_hello(b"nope").is_err());
    }
}
